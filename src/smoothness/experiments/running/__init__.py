"""Doing the work: training and measuring a list of configurations (pipeline, evaluate), running a grid into a
store here or on a Ray cluster (runner, distributed), and its progress output (progress)."""

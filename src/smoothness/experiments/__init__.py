"""Experiments: a model's configuration and key (config), grids of them (grid, gridvalues, staging), the results
store (store, salvage), training and measuring (pipeline, evaluate, modelfile), and running a grid into a store,
here or on a Ray cluster, with progress output (runner, distributed, progress)."""
from smoothness.experiments.config import RunConfig, config_key
from smoothness.experiments.grid import PRESETS, Grid, load, parse, preset, resolve
from smoothness.experiments.progress import GridProgress
from smoothness.experiments.runner import (
                                           RunSummary,
                                           check_data,
                                           claim_store,
                                           dry_run,
                                           interrupted_note,
                                           run_grid,
                                           work_left,
                                           work_note,
)
from smoothness.experiments.store import Store

__all__ = ["RunConfig", "config_key", "PRESETS", "Grid", "load", "parse", "preset", "resolve", "GridProgress",
           "RunSummary", "check_data", "claim_store", "dry_run", "interrupted_note", "run_grid", "work_left",
           "work_note", "Store"]

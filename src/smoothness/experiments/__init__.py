"""Experiments, in three jobs, each importing only the ones before it (tests/project/test_architecture.py):

    configuration   a model's configuration and key (config), grids of them (grid, gridvalues, staging)
    storage         the results store (store, opening, storefile, records, claim, salvage), model files
                    (modelfile), snapshots
    running         training and measuring (pipeline, evaluate), running a grid into a store here or on a Ray
                    cluster (runner, distributed), progress output (progress)
"""
from smoothness.experiments.configuration.config import RunConfig, config_key
from smoothness.experiments.configuration.grid import PRESETS, Grid, load, parse, preset, resolve
from smoothness.experiments.running.progress import GridProgress
from smoothness.experiments.running.runner import (
                                           RunSummary,
                                           check_data,
                                           claim_store,
                                           dry_run,
                                           interrupted_note,
                                           run_grid,
                                           work_left,
                                           work_note,
)
from smoothness.experiments.storage.store import Store

__all__ = ["RunConfig", "config_key", "PRESETS", "Grid", "load", "parse", "preset", "resolve", "GridProgress",
           "RunSummary", "check_data", "claim_store", "dry_run", "interrupted_note", "run_grid", "work_left",
           "work_note", "Store"]


def __getattr__(name):
    """`smoothness.experiments.grid` and the other module paths of version 0.1 (DeprecationWarning)."""
    import smoothness
    if f"{__name__}.{name}" in smoothness.MOVED:   # warned once: from then on an attribute
        globals()[name] = smoothness.moved(f"{__name__}.{name}")
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""smoothness: does SGD implicitly make neural networks smooth, and in which sense?

The package follows the data flow, each layer importing only the ones before it (tests/project/test_architecture.py):

    errors, runtime   errors; random numbers, matmul precision, devices, signals
    models            ReLU networks as stacks of M models, the paper's initializer
    data              MNIST-binary tasks (MNIST, Fashion-MNIST) and 1-D tasks on the line
    measures          the smoothness measures of any torch module, and the parameter-space ones
    training          many networks trained as one batched program; optimizers; regularizers (eq. 15)
    experiments       configurations, grids, the results store, running a grid (here or on Ray)
    analysis          Tables 1 and 2, the verdict, optimality in 1-D, optimizers compared
    report            tables, figures, report.md / report.html, two stores compared
    cli               the `smoothness` command

`import smoothness` does not import PyTorch: the subpackages load on first use, so that `python -m smoothness` handles
Ctrl-C and SIGTERM before PyTorch is imported (__main__.py). The import paths of version 0.1 (short names such as
`smoothness.grid`, and experiments' modules before it was split into configuration/, storage/ and running/) still
import the module they name, with a DeprecationWarning naming the new path; they go in version 0.3.
"""
import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from importlib import metadata

from smoothness.errors import ConfigError, DataError, SmoothnessError

try:
    __version__ = metadata.version("smoothness")   # the one version: pyproject.toml's, as installed
except metadata.PackageNotFoundError:   # run from a source tree that is not installed
    __version__ = "0+unknown"

_SUBPACKAGES = ("analysis", "cli", "data", "experiments", "measures", "models", "report", "runtime", "training")
_EXPERIMENTS = {"configuration": ("config", "grid", "gridvalues", "staging"),
                "storage": ("store", "storefile", "claim", "salvage", "records", "modelfile", "snapshots"),
                "running": ("runner", "pipeline", "evaluate", "distributed", "progress")}
# The import paths of version 0.1 -> the module's path now (DeprecationWarning; removed in version 0.3).
MOVED = {**{f"{__name__}.experiments.{m}": f"{__name__}.experiments.{job}.{m}"
            for job, ms in _EXPERIMENTS.items() for m in ms},
         **{f"{__name__}.{short}": f"{__name__}.{path}" for short, path in {
             "curvature": "measures.curvature", "registry": "measures.registry",
             "grid": "experiments.configuration.grid", "store": "experiments.storage.store",
             "pipeline": "experiments.running.pipeline", "optimizers": "training.optimizers",
             "regularizers": "training.regularizers", "precision": "runtime.precision",
             "compare": "report.compare", "salvage": "experiments.storage.salvage"}.items()}}
__all__ = [*_SUBPACKAGES, "SmoothnessError", "DataError", "ConfigError", "__version__"]


def moved(old: str):
    """The module that the old import path `old` (a key of MOVED) names now, with a DeprecationWarning."""
    new = MOVED[old]
    warnings.warn(f"{old} is deprecated: import {new} (the old path goes in smoothness 0.3)", DeprecationWarning,
                  stacklevel=3)
    return importlib.import_module(new)


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import smoothness.store`, `from smoothness.experiments.grid import preset`: an old path imports the module
    it names (the same module object, under both names), with a DeprecationWarning."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return moved(spec.name)

    def exec_module(self, module):
        pass   # the module ran when it was imported under its own name


sys.meta_path.append(_MovedFinder())


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if f"{__name__}.{name}" in MOVED:   # warned once: from then on an attribute
        globals()[name] = moved(f"{__name__}.{name}")
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_SUBPACKAGES})

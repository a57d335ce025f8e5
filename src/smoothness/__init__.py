"""smoothness: does SGD implicitly make neural networks smooth, and in which sense?

The package follows the data flow, each layer importing only the ones before it (tests/test_architecture.py):

    errors, runtime   errors; random numbers, matmul precision, devices, signals
    models            ReLU networks as stacks of M models, the paper's initializer
    data              MNIST-binary tasks (MNIST, Fashion-MNIST) and 1-D tasks on the line
    measures          the smoothness measures of any torch module, and the parameter-space ones
    training          many networks trained as one batched program; optimizers; regularizers (eq. 15)
    experiments       configurations, grids, the results store, running a grid (here or on Ray)
    analysis          Tables 1 and 2, the verdict, optimality in 1-D, optimizers compared
    report            tables, figures, report.md / report.html, two stores compared
    cli               the `smoothness` command

`import smoothness` does not import PyTorch: the subpackages, and the short names below (`smoothness.grid` for
smoothness.experiments.grid, and so on), load on first use, so that `python -m smoothness` handles Ctrl-C and
SIGTERM before PyTorch is imported (__main__.py).
"""
import importlib
import importlib.abc
import importlib.util
import sys
from importlib import metadata

from smoothness.errors import ConfigError, DataError, SmoothnessError

try:
    __version__ = metadata.version("smoothness")   # the one version: pyproject.toml's, as installed
except metadata.PackageNotFoundError:   # run from a source tree that is not installed
    __version__ = "0+unknown"

_SUBPACKAGES = ("analysis", "cli", "data", "experiments", "measures", "models", "report", "runtime", "training")
# Short names of modules inside the subpackages (the import paths of earlier versions, kept for the user's code).
_SHORT = {"curvature": "measures.curvature", "registry": "measures.registry", "grid": "experiments.grid",
          "store": "experiments.store", "pipeline": "experiments.pipeline", "optimizers": "training.optimizers",
          "regularizers": "training.regularizers", "precision": "runtime.precision", "compare": "report.compare",
          "salvage": "experiments.salvage"}
__all__ = [*_SUBPACKAGES, *_SHORT, "SmoothnessError", "DataError", "ConfigError", "__version__"]


class _ShortNameFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import smoothness.store`, `from smoothness.grid import preset`: a short name imports the module it names
    (the same module object, under both names)."""

    def find_spec(self, name, path=None, target=None):
        package, _, short = name.partition(".")
        if package == __name__ and short in _SHORT:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{_SHORT[spec.name.partition('.')[2]]}")

    def exec_module(self, module):
        pass   # the module ran when it was imported under its own name


sys.meta_path.append(_ShortNameFinder())


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _SHORT:
        return importlib.import_module(f"{__name__}.{_SHORT[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_SUBPACKAGES, *_SHORT})

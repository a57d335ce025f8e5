"""smoothness: does SGD implicitly make neural networks smooth, and in which sense?

Measures of Volhejn & Lampert (2020) for any PyTorch model f: R^d -> R (`smoothness.measures`),
ReLU networks with the paper's initializer (`smoothness.models`), a batched trainer that trains
many networks as one tensor program (`smoothness.training`; optimizers in `smoothness.optimizers`,
regularizers in `smoothness.regularizers`), parameter-space measures such as sharpness
(`smoothness.curvature`), MNIST-binary data (`smoothness.data`),
the matmul precision of training (`smoothness.precision`: fp32, TF32, TF32 emulated),
experiment grids (`smoothness.grid`, `smoothness.experiments`; on a Ray cluster with
`smoothness.distributed`), the results store (`smoothness.store`),
Tables 1 and 2 (`smoothness.analysis`), the report (`smoothness.report`) and the comparison of two
stores (`smoothness.compare`; these three need pandas, SciPy and matplotlib and are imported on use).
"""
__version__ = "0.1.0"

import importlib  # noqa: E402

from .errors import ConfigError, DataError, SmoothnessError  # noqa: E402

# Submodules load on first use (`smoothness.grid`, `from smoothness import grid`): `import smoothness` does not
# import PyTorch, so `python -m smoothness` can handle Ctrl-C and SIGTERM before it does (__main__.py).
_SUBMODULES = ("curvature", "data", "experiments", "grid", "measures", "models", "optimizers", "precision", "registry",
               "store", "training")
__all__ = [*_SUBMODULES, "SmoothnessError", "DataError", "ConfigError", "__version__"]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_SUBMODULES})

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

from . import curvature, data, experiments, grid, measures, models, optimizers, precision, store, training  # noqa: E402
from .errors import ConfigError, DataError, SmoothnessError  # noqa: E402

__all__ = ["curvature", "data", "experiments", "grid", "measures", "models", "optimizers", "precision", "store",
           "training",
           "SmoothnessError", "DataError", "ConfigError", "__version__"]

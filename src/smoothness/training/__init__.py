"""Training many networks of one family as one batched tensor program: the loop (trainer), one step and the end of
an epoch (step; how each family takes its step: engines), what the trainer is given and gives back (spec), its
per-model state (state), with SGD and the other optimizers (optimizers) on the loss L + lambda * S (eq. 15;
regularizers)."""
from smoothness.training.spec import (
    DEFAULT_BATCH,
    DEFAULT_LR,
    DEFAULT_MAX_EPOCHS,
    DEFAULT_THRESHOLD,
    Snapshot,
    TrainResult,
    TrainSpec,
    family_bytes,
    model_bytes,
)
from smoothness.training.trainer import CONVERGED, DIVERGED, NOT_CONVERGED, BatchedTrainer, train_models

__all__ = ["CONVERGED", "DEFAULT_BATCH", "DEFAULT_LR", "DEFAULT_MAX_EPOCHS", "DEFAULT_THRESHOLD", "DIVERGED",
           "NOT_CONVERGED", "BatchedTrainer", "Snapshot", "TrainResult", "TrainSpec", "family_bytes", "model_bytes",
           "train_models"]


def __getattr__(name):
    """training.mse, the name of version 0.1 of models.dataset_mse (DeprecationWarning; removed in version 0.3)."""
    if name == "mse":
        import warnings

        from smoothness.models import dataset_mse
        warnings.warn("training.mse is now models.dataset_mse (models.mse is the differentiable batch loss); the old "
                      "name goes in smoothness 0.3", DeprecationWarning, stacklevel=2)
        return dataset_mse
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

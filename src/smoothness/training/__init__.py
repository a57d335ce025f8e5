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
from smoothness.training.trainer import CONVERGED, DIVERGED, NOT_CONVERGED, BatchedTrainer, mse, train_models

__all__ = ["CONVERGED", "DEFAULT_BATCH", "DEFAULT_LR", "DEFAULT_MAX_EPOCHS", "DEFAULT_THRESHOLD", "DIVERGED",
           "NOT_CONVERGED", "BatchedTrainer", "Snapshot", "TrainResult", "TrainSpec", "family_bytes", "model_bytes",
           "mse", "train_models"]

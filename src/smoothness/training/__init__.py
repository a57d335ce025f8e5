"""Training many networks as one batched tensor program (trainer; what it is given and gives back: spec; its
per-model state: state), with SGD and the other optimizers (optimizers) on the loss L + lambda * S (eq. 15;
regularizers)."""
from smoothness.training.spec import (
                                      DEFAULT_BATCH,
                                      DEFAULT_LR,
                                      DEFAULT_MAX_EPOCHS,
                                      DEFAULT_THRESHOLD,
                                      Snapshot,
                                      TrainResult,
                                      TrainSpec,
                                      model_bytes,
)
from smoothness.training.trainer import CONVERGED, DIVERGED, NOT_CONVERGED, BatchedTrainer, mse, train_models

__all__ = ["CONVERGED", "DEFAULT_BATCH", "DEFAULT_LR", "DEFAULT_MAX_EPOCHS", "DEFAULT_THRESHOLD", "DIVERGED",
           "NOT_CONVERGED", "BatchedTrainer", "Snapshot", "TrainResult", "TrainSpec", "model_bytes", "mse",
           "train_models"]

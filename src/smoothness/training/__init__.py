"""Training many networks as one batched tensor program (trainer; its per-model state: state), with SGD and the
other optimizers (optimizers) on the loss L + lambda * S (eq. 15; regularizers)."""
from smoothness.training.trainer import (CONVERGED, DEFAULT_BATCH, DEFAULT_LR, DEFAULT_MAX_EPOCHS, DEFAULT_THRESHOLD,
                                         DIVERGED, NOT_CONVERGED, BatchedTrainer, TrainResult, TrainSpec, model_bytes,
                                         mse, train_models)

__all__ = ["CONVERGED", "DEFAULT_BATCH", "DEFAULT_LR", "DEFAULT_MAX_EPOCHS", "DEFAULT_THRESHOLD", "DIVERGED",
           "NOT_CONVERGED", "BatchedTrainer", "TrainResult", "TrainSpec", "model_bytes", "mse", "train_models"]

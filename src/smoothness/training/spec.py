"""What the batched trainer is given and gives back: one model to train (TrainSpec, with the paper's defaults) and
its outcome (TrainResult); and what one model costs the batch in memory (model_bytes)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from smoothness import paper
from smoothness.models import DEFAULT_ALPHA, Stack, losses
from smoothness.models.stack import TRAINING_COPIES, params_bytes
from smoothness.runtime import rng
from smoothness.training import optimizers, regularizers

DEFAULT_LR = paper.LR
DEFAULT_BATCH = paper.BATCH
DEFAULT_MAX_EPOCHS = paper.MAX_EPOCHS
DEFAULT_THRESHOLD = paper.THRESHOLD


@dataclass
class Snapshot:
    """A model part way through training, at the end of an epoch: enough to go on from there exactly as if it had
    not stopped (the shuffle of every epoch follows from the seed and the epoch, rng.py). `params` is a stack of
    one model and `opt_state` the optimizer's buffers of that model ([1, ...] each, optimizers.init_state), both
    on the CPU; `seconds` is the training time spent so far."""

    epoch: int
    steps: int
    params: Stack = field(repr=False)
    opt_state: list = field(default_factory=list, repr=False)
    seconds: float = 0.0


@dataclass
class TrainSpec:
    """One model to train: its training rows (indices into the pool) and targets, and its settings."""

    indices: torch.Tensor
    targets: torch.Tensor
    seed: int = 0
    lr: float | None = None     # None: the paper's rate for the regularizer, Adam's 1e-3 (optimizers.default_lr)
    alpha: float = DEFAULT_ALPHA
    max_epochs: int = DEFAULT_MAX_EPOCHS
    threshold: float = DEFAULT_THRESHOLD
    regularizer: str = "none"   # see regularizers.py; trains on L + lam * S (eq. 15)
    lam: float = 0.0
    penalty_points: int = regularizers.SEGMENT_POINTS   # points per segment of a path-length penalty
    optimizer: str = "sgd"      # sgd, momentum, adam or sam (optimizers.py); full-batch GD: batch_size >= N
    rho: float | None = None    # SAM's radius (None: optimizers.SAM_RHO); only with optimizer 'sam'
    loss: str = "mse"           # mse (eq. 2; the paper's) or cross_entropy (models/losses.py)
    resume: Snapshot | None = field(default=None, repr=False)   # go on from this snapshot instead of the start

    def __post_init__(self):
        self.seed = rng.check_seed(self.seed)   # 0 <= seed < 2**32: the generator uses 32 bits
        regularizers.check(self.regularizer)
        self.penalty_points = regularizers.check_points(self.penalty_points)
        if optimizers.check(self.optimizer) == "gd":
            raise ValueError("optimizer 'gd' is sgd with the trainer's batch_size set to the training size")
        self.rho = optimizers.resolve_rho(self.rho, self.optimizer)
        losses.check(self.loss)
        self.lr = optimizers.resolve_lr(self.lr, self.optimizer, self.regularizer)
        self.indices = torch.as_tensor(self.indices, dtype=torch.long).reshape(-1)
        self.targets = torch.as_tensor(self.targets, dtype=torch.float32).reshape(-1)
        if self.indices.numel() == 0 or self.indices.shape != self.targets.shape:
            raise ValueError("a model needs a non-empty training set with one target per index")
        if self.resume is not None and not 0 <= self.resume.epoch < self.max_epochs:
            raise ValueError(f"a snapshot at epoch {self.resume.epoch} cannot resume a model whose cap is "
                             f"{self.max_epochs} epochs")


@dataclass
class TrainResult:
    """The outcome of training one model; params is a stack of one model on the trainer's device (a copy of the
    frozen row: nothing is copied to the host when a model finishes; store and modelfile move it when writing)."""

    index: int
    status: str
    epochs: int
    steps: int
    loss_epoch: float
    params: Stack = field(repr=False)
    seconds: float = 0.0


def model_bytes(widths, n_max: int, batch_size: int = DEFAULT_BATCH, optimizer: str = "sgd",
                regularizer: str = "none", penalty_points: int = regularizers.SEGMENT_POINTS) -> int:
    """About how many bytes one model takes in a batched program (for splitting a large grid into batches that fit,
    pipeline.iter_train_and_measure): its weights with a gradient, a finished copy and the optimizer's state, its
    training set's indices, targets and shuffles, and the activations of its minibatch (with a path-length penalty,
    those of its segment points)."""
    params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    state = {"sgd": 0, "gd": 0, "momentum": 1, "adam": 2, "sam": 2}.get(optimizer, 2)
    activations = batch_size * sum(widths) * 4 * 6
    if regularizer in regularizers.PATH_LENGTH:   # the points of batch_size / 2 segments
        activations += batch_size // 2 * penalty_points * sum(widths) * 4 * 6
    return params_bytes(params, TRAINING_COPIES + state) + 40 * n_max + activations


def family_bytes(family, n_max: int, batch_size: int = DEFAULT_BATCH, optimizer: str = "sgd",
                 regularizer: str = "none", penalty_points: int = regularizers.SEGMENT_POINTS) -> int:
    """model_bytes for a model of any family (models.Family): an MLP's by its widths, another's from its parameter
    count and the values one example's forward pass holds (Family.activation_elements)."""
    widths = getattr(family, "widths", None)
    if widths is not None:
        return model_bytes(widths, n_max, batch_size, optimizer, regularizer, penalty_points)
    state = {"sgd": 0, "gd": 0, "momentum": 1, "adam": 2, "sam": 2}.get(optimizer, 2)
    per_example = (family.input_dim + family.outputs + family.activation_elements()) * 4 * 6
    activations = batch_size * per_example
    if regularizer in regularizers.PATH_LENGTH:
        activations += batch_size // 2 * penalty_points * per_example
    return params_bytes(family.n_params(), TRAINING_COPIES + state) + 40 * n_max + activations

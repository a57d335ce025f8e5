"""One trained model's configuration (RunConfig, defaults from the paper) and its key in the results store.

ADDED_FIELDS is the one table of the configuration fields added after the first stored models: the key omits
each of them at its default (so that the keys of earlier models do not change), and records stored without
them are read as having that default (store.frame, the analyses, compare).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import TypedDict

from smoothness import paper
from smoothness.data import classes, images, lines
from smoothness.errors import ConfigError, DataError
from smoothness.models import families, losses
from smoothness.runtime import precision, rng
from smoothness.training import optimizers, regularizers

_DEFAULT_PAIR = (3, 8)

# Upper limits of a configuration's sizes: a larger value is a typo or asks for work no machine finishes, and is
# refused before any work (docs/cli.md). The paper's values are far below them.
_POSITIVE, _NONNEG = "a finite number > 0", "a finite number >= 0"
LIMITS = {"n_train": 1_000_000, "hidden": 65_536, "hidden_layers": 64, "batch_size": 1_000_000,
          "max_epochs": 10_000_000, "measure_points": 1_000_000, "segments": 10_000_000, "points": 100_000,
          "sharpness_iters": 1_000_000, "trace_probes": 100_000, "penalty_points": 10_000}


def _part(name: str, default, doc: str = ""):
    """A RunConfig field of one part of the configuration (PARTS)."""
    return field(default=default, metadata={"part": name, "doc": doc})


@dataclass
class RunConfig:
    """Everything that defines one trained model, in four parts: its data (what it is trained on), its model, its
    optimizer (how it is trained) and its measurement. Every default is the paper's (smoothness.paper) or an
    option's off value, and each is set here once; the field names are the records' and the key's."""

    # -- data: the task and the training set ------------------------------------------------------------------
    data: str = _part("data", "mnist5k", "data source: mnist5k, mnist, fashion-mnist, or a 1-D task line-...")
    pair: tuple[int, int] = _part("data", _DEFAULT_PAIR, "digits a < b: a -> -1, b -> +1 (1-D tasks: (0, 1))")
    n_train: int = _part("data", 128, "training points, balanced and nested in N for a seed")
    seed: int = _part("data", 0, "draws the training set; also the initial weights and shuffles unless train_seed")
    classes: tuple[int, ...] = _part("data", (), "a classification task of these classes instead of the binary pair "
                                     "(k outputs, labels 0..k-1; data/classes.py); (): the pair's +-1 task")
    # -- model ----------------------------------------------------------------------------------------------------
    hidden: tuple[int, ...] = _part("model", (paper.HIDDEN,), "hidden-layer widths (the mlp family)")
    alpha: float = _part("model", paper.ALPHA, "initialization scale")
    model: dict | None = _part("model", None, "the model family and its settings, e.g. {family: cnn, channels: [8, 16]}"
                               " (models/families.py); None: the paper's MLP with `hidden`")
    # -- optimizer: how it is trained ---------------------------------------------------------------------------
    optimizer: str = _part("optimizer", "sgd", "sgd (paper), gd (batch_size becomes n_train), momentum, adam, sam")
    lr: float | None = _part("optimizer", None, "None: optimizers.default_lr (the paper's rates; Adam 1e-3)")
    batch_size: int = _part("optimizer", paper.BATCH)
    max_epochs: int = _part("optimizer", paper.MAX_EPOCHS, "epoch cap")
    threshold: float | None = _part("optimizer", None, "the loss threshold of the interpolation rule (models/losses"
                                    ".py); None: 1e-5 for mse (the paper's), 1e-3 for cross_entropy")
    loss: str = _part("optimizer", "mse", "the training loss: mse (eq. 2, the paper's) or cross_entropy")
    regularizer: str = _part("optimizer", "none", "trains on L + lam * S (eq. 15; regularizers.py)")
    lam: float = _part("optimizer", 0.0)
    penalty_points: int = _part("optimizer", paper.PENALTY_POINTS, "points per segment of a path-length penalty")
    rho: float | None = _part("optimizer", None, "SAM's radius (optimizers.resolve_rho); only with optimizer sam")
    matmul_precision: str = _part("optimizer", "fp32", "of the training steps: fp32, tf32 (CUDA), tf32-emulated")
    train_seed: int | None = _part("optimizer", None, "initial weights and shuffles; None: seed")
    # -- measurement --------------------------------------------------------------------------------------------
    measure_points: int = _part("measurement", paper.MEASURE_POINTS, "held-out points of the sampled measures")
    segments: int = _part("measurement", paper.SEGMENTS, "random segments of FPL and GPL")
    points: int = _part("measurement", paper.POINTS_PER_SEGMENT, "points per segment of FPL and GPL")
    measure_seed: int = _part("measurement", 0, "draws the segments")
    sharpness_iters: int = _part("measurement", 0, "power iterations for the sharpness (0: not computed)")
    trace_probes: int = _part("measurement", 0, "Hutchinson probes for the Hessian trace (0: not computed)")

    def __post_init__(self):
        self._check_data()
        self._check_model()
        self._check_optimizer()
        self._check_measurement()
        sizes = {k: getattr(self, k) for k in LIMITS if hasattr(self, k)}
        sizes["hidden"], sizes["hidden_layers"] = max(self.hidden), len(self.hidden)
        for name, v in sizes.items():
            if v > LIMITS[name]:
                raise ConfigError(f"{name} {v:,} is more than the limit of {LIMITS[name]:,}: a typo, or more work "
                                  "than any run can finish (limits: docs/cli.md)")

    @staticmethod
    def _require(checks) -> None:
        for name, value, ok, rule in checks:
            if not ok:
                raise ConfigError(f"invalid {name}: {value!r} (must be {rule})")

    def _check_data(self) -> None:
        try:
            self.data = images.check_source(self.data)
        except DataError as e:
            raise ConfigError(str(e)) from None
        self.pair = lines.PAIR if lines.is_line(self.data) else tuple(int(v) for v in self.pair)
        images.check_pair(*self.pair)   # a 1-D task has no digit pair: it carries PAIR
        if self.classes:
            if lines.is_line(self.data):
                raise ConfigError(f"classes: a 1-D task ({self.data}) is a regression on the line, not a "
                                  "classification")
            self.classes = classes.check_classes(self.classes)
            self.pair = _DEFAULT_PAIR   # the classes define the task; the pair is not used
        else:
            self.classes = ()
        self.seed = rng.check_seed(self.seed, "seed")

    def _check_model(self) -> None:
        self.hidden = tuple(int(v) for v in self.hidden)
        self.model = families.canonical(self.model)
        if self.model is not None and self.hidden != (paper.HIDDEN,):
            raise ConfigError(f"hidden {list(self.hidden)} is the mlp family's setting; the {self.model['family']} "
                              "family takes its settings in `model`")
        self._require([("hidden", self.hidden, len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden),
                        "widths >= 1"),
                       ("alpha", self.alpha, math.isfinite(self.alpha) and self.alpha > 0, _POSITIVE)])

    def _check_optimizer(self) -> None:
        try:
            regularizers.check(self.regularizer)
            optimizers.check(self.optimizer)
            losses.check(self.loss)
            losses.check_outputs(self.loss, self.outputs)
            precision.check(self.matmul_precision)
            self.lr = optimizers.resolve_lr(self.lr, self.optimizer, self.regularizer)
            self.rho = optimizers.resolve_rho(self.rho, self.optimizer)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.threshold is None:
            self.threshold = losses.default_threshold(self.loss)
        if self.optimizer == "gd":
            self.batch_size = self.n_train   # full-batch gradient descent: one step per epoch
        if isinstance(self.penalty_points, bool) or not isinstance(self.penalty_points, int) \
                or self.penalty_points < 2:
            raise ConfigError(f"invalid penalty_points: {self.penalty_points!r} (must be an integer >= 2)")
        if self.regularizer not in regularizers.PATH_LENGTH and self.penalty_points != paper.PENALTY_POINTS:
            raise ConfigError(f"penalty_points {self.penalty_points} is the points per segment of a path-length "
                              f"penalty: it needs regularizer function_path_length or gradient_path_length, "
                              f"not {self.regularizer}")
        if self.train_seed is not None:
            self.train_seed = rng.check_seed(self.train_seed, "train_seed")
        if self.regularizer in ("weights_product", "path_norm") and self.model is not None:
            raise ConfigError(f"the {self.regularizer} regularizer is of the mlp family; the "
                              f"{self.model['family']} family's weight-norm penalty is norm_product")
        if self.regularizer == "weights_product" and len(self.hidden) != 1:
            raise ConfigError("the weights_product regularizer needs one hidden layer")
        if self.regularizer == "none" and self.lam != 0:
            raise ConfigError(f"lam {self.lam!r} needs a regularizer: with regularizer 'none' lam must be 0")
        self._require([("lr", self.lr, math.isfinite(self.lr) and self.lr > 0, _POSITIVE),
                       ("batch_size", self.batch_size, self.batch_size >= 1, ">= 1"),
                       ("max_epochs", self.max_epochs, self.max_epochs >= 1, ">= 1"),
                       ("threshold", self.threshold, math.isfinite(self.threshold) and self.threshold > 0, _POSITIVE),
                       ("lam", self.lam, math.isfinite(self.lam) and self.lam >= 0, _NONNEG)])

    def _check_measurement(self) -> None:
        self.measure_seed = rng.check_seed(self.measure_seed, "measure_seed")
        self._require([("measure_points", self.measure_points, self.measure_points >= 2, ">= 2"),
                       ("segments", self.segments, self.segments >= 1, ">= 1"),
                       ("points", self.points, self.points >= 2, ">= 2"),
                       ("sharpness_iters", self.sharpness_iters, self.sharpness_iters >= 0, ">= 0"),
                       ("trace_probes", self.trace_probes, self.trace_probes >= 0, ">= 0")])

    def parts(self) -> dict[str, dict]:
        """The configuration by part (PARTS): {'data': {...}, 'model': {...}, 'optimizer': {...},
        'measurement': {...}}."""
        return {p: {f: getattr(self, f) for f in names} for p, names in PARTS.items()}

    @property
    def widths(self) -> tuple[int, ...]:
        """(d, *hidden, K) of an MLP: d = 784 for the image sources, 1 for the 1-D tasks; K outputs."""
        return (images.input_dim(self.data), *self.hidden, self.outputs)

    @property
    def outputs(self) -> int:
        """K, the model's outputs: one for a binary task with +-1 targets, one per class for a classification."""
        return len(self.classes) if self.classes else 1

    @property
    def task_id(self) -> tuple:
        """What identifies the task (and its data): the source and the pair, or the source and the classes."""
        return (self.data, self.classes) if self.classes else (self.data, self.pair)

    def task(self, data_dir=None):
        """The task this model trains on (a binary pair, a classification of classes, or a 1-D task)."""
        if self.classes:
            return classes.class_task(self.data, self.classes, data_dir=data_dir)
        return images.task(self.data, self.pair, data_dir=data_dir)

    @property
    def family_name(self) -> str:
        """The model family's name (mlp, cnn, factory)."""
        return families.name_of(self.model)

    def family(self):
        """The model family (models.Family) that trains and measures this model."""
        return families.build(self.model, self.hidden, images.input_shape(self.data), self.outputs)

    def architecture(self) -> tuple:
        """What models must share to train as one stack: the family and its settings, the inputs and outputs."""
        return (json.dumps(self.model, sort_keys=True), self.hidden, images.input_dim(self.data), self.outputs)

    @property
    def init_seed(self) -> int:
        """The seed of the initial weights and of the shuffles: train_seed, or seed when that is unset."""
        return self.seed if self.train_seed is None else self.train_seed

    def batch_key(self) -> tuple:
        """Models with equal keys can share one batched program."""
        return (self.data, self.architecture(), self.batch_size, self.regularizer, self.optimizer,
                self.matmul_precision, self.penalty_points, self.loss)


# The fields of each part of a RunConfig, in order.
PARTS = {p: tuple(f.name for f in fields(RunConfig) if f.metadata["part"] == p)
         for p in ("data", "model", "optimizer", "measurement")}

# Fields added after the first stored models, with the value that records without them had.
ADDED_FIELDS = {"sharpness_iters": 0, "trace_probes": 0, "optimizer": "sgd", "matmul_precision": "fp32", "rho": 0.0,
                "penalty_points": paper.PENALTY_POINTS, "train_seed": None, "model": None, "loss": "mse", "classes": ()}


def config_key(c: RunConfig) -> str:
    """A stable identifier of one model's full configuration (the results store's primary key)."""
    d = asdict(c)
    d["pair"], d["hidden"], d["classes"] = list(c.pair), list(c.hidden), list(c.classes)
    d["lr"], d["alpha"], d["threshold"], d["lam"], d["rho"] = (float(d[k]) for k in ("lr", "alpha", "threshold",
                                                                                     "lam", "rho"))
    for k, default in ADDED_FIELDS.items():
        if d[k] == default or (isinstance(default, tuple) and d[k] == list(default)):
            del d[k]
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _record_fields() -> dict:
    """Every key a stored record may hold, with its type, derived from where each is declared: the configuration
    (RunConfig's fields, pair, hidden and classes as lists), the outcome of training, the losses, the measures
    (registry.REGISTRY's columns, and those of the sampled measures at the training points), the exact measures of
    the 1-D tasks (oned.py), and provenance."""
    from smoothness.measures import oned, registry
    config = {f.name: (list if f.name in ("pair", "hidden", "classes") else f.type) for f in fields(RunConfig)}
    training = {"status": str, "epochs": int, "steps": int, "loss_epoch": float, "train_seconds": float,
                "resumed_at_epoch": int}
    measured = {"loss_train": float, "loss_test": float, "fpl_lower_bound": float}
    for m in registry.REGISTRY:
        for col in registry.columns(m):
            measured[col] = int if col.endswith("_iterations") else float
            if m.sampled:
                measured[registry.on_points(col, "_train")] = float
    measured.update(dict.fromkeys(oned.RECORD_KEYS, float))
    provenance = {"measure_seconds": float, "measure_batch": int, "device": str, "versions": dict}
    return {**config, **training, **measured, **provenance}


# One trained and measured model, as pipeline yields it and the results store keeps it (as JSON): every key declared
# once where it is computed (_record_fields); tests check that every stored key is declared here.
Record = TypedDict("Record", _record_fields(), total=False)

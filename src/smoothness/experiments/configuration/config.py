"""One trained model's configuration (RunConfig, defaults from the paper) and its key in the results store.

ADDED_FIELDS is the one table of the configuration fields added after the first stored models: the key omits
each of them at its default (so that the keys of earlier models do not change), and records stored without
them are read as having that default (store.frame, the analyses, compare).
"""
from __future__ import annotations

import hashlib
import json
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import TypedDict

from smoothness import paper
from smoothness.data import classes, images, lines
from smoothness.errors import ConfigError, DataError
from smoothness.models import families, losses
from smoothness.runtime import precision, rng
from smoothness.runtime.values import is_integer
from smoothness.training import optimizers, regularizers

DEFAULT_PAIR = (3, 8)   # a binary task's default pair (ours; the paper uses all 45)

_POSITIVE, _NONNEG = "a finite number > 0", "a finite number >= 0"
# How the analyses treat a field (GROUPS): part of a training setting (the report's setting columns and group keys),
# the dataset (pair or classes aside), the training size, a seed, the regularization, or an extra measurement.
GROUPS = ("setting", "pair", "size", "seed", "regularization", "extra")


def _field(part: str, default, doc: str, *, group: str = "setting", grid: str | None = "", option=None,
           limit: int | None = None, choices: tuple | None = None):
    """A RunConfig field, declared once: its part of the configuration (PARTS), default, doc (the help text of its
    option), how the analyses treat it (GROUPS), its key in a grid file ('': the field's name; None: not a top-level
    key), its option of `smoothness train` (None: none; 'one': one value; 'axis': several values, one model each;
    'list': one value that is a list) with its choices, and its upper limit (LIMITS)."""
    assert group in GROUPS and option in (None, "one", "axis", "list")
    return field(default=default, metadata={"part": part, "doc": doc, "group": group, "option": option,
                                            "grid": grid, "limit": limit, "choices": choices})


@dataclass
class RunConfig:
    """Everything that defines one trained model, in four parts: its data (what it is trained on), its model, its
    optimizer (how it is trained) and its measurement. Every default is the paper's (smoothness.paper) or an
    option's off value, and each is set here once, with its doc, its `smoothness train` option, its grid key and its
    limit (_field); the field names are the records' and the key's."""

    # -- data: the task and the training set ------------------------------------------------------------------
    data: str = _field("data", "mnist5k", "data source: mnist5k, mnist, fashion-mnist, or a 1-D task line-...",
                       grid="data")
    pair: tuple[int, int] = _field("data", DEFAULT_PAIR, "digits a < b: a -> -1, b -> +1 (1-D tasks: (0, 1))",
                                   group="pair", grid="pairs")
    n_train: int = _field("data", 128, "training set size(s): even for a pair, a multiple of K for K classes; "
                          "balanced, and nested in N for a seed",
                          group="size", option="axis", limit=1_000_000)
    seed: int = _field("data", 0, "seed(s) of the training subset, and of the initial weights and shuffles unless "
                       "train_seed; integers 0 <= seed < 2**32", group="seed", grid="seeds", option="axis")
    classes: tuple[int, ...] = _field("data", (), "a classification task of these classes instead of the binary pair "
                                      "(k outputs, labels 0..k-1; data/classes.py); (): the pair's +-1 task")
    # -- model ----------------------------------------------------------------------------------------------------
    hidden: tuple[int, ...] = _field("model", (paper.HIDDEN,), "hidden-layer widths of the MLP, one per layer",
                                     option="list", limit=65_536)
    alpha: float = _field("model", paper.ALPHA, "initialization scale alpha", option="one")
    model: dict | None = _field("model", None, "the model family and its settings, e.g. {family: cnn, channels: "
                                "[8, 16]} (models/families.py); None: the paper's MLP with `hidden`")
    # -- optimizer: how it is trained ---------------------------------------------------------------------------
    optimizer: str = _field("optimizer", "sgd", "sgd (the paper's), gd (full batch: batch size = N), momentum (0.9), "
                            "adam, or sam (sharpness-aware, radius rho)", option="one",
                            choices=optimizers.OPTIMIZERS)
    lr: float | None = _field("optimizer", None, "learning rate; unset: the paper's, 0.01, or 0.1 with a "
                              "path-length regularizer; 1e-3 with adam (optimizers.default_lr)", option="one")
    batch_size: int = _field("optimizer", paper.BATCH, "minibatch size", option="one", limit=1_000_000)
    max_epochs: int = _field("optimizer", paper.MAX_EPOCHS, "epoch cap; a model that reaches it is not converged",
                             option="one", limit=10_000_000)
    threshold: float | None = _field("optimizer", None, "stop when the epoch's training loss is below this; unset: "
                                     "1e-5 for mse (the paper's), 1e-3 for cross_entropy (models/losses.py)",
                                     option="one")
    loss: str = _field("optimizer", "mse", "the training loss: mse (eq. 2, the paper's) or cross_entropy")
    regularizer: str = _field("optimizer", "none", "train on L + lam * S with the minibatch variant of this measure "
                              "(eq. 15; training/regularizers.py)", group="regularization", grid=None, option="one",
                              choices=regularizers.REGULARIZERS)
    lam: float = _field("optimizer", 0.0, "regularization coefficient(s) lambda", group="regularization", grid=None,
                        option="axis")
    penalty_points: int = _field("optimizer", paper.PENALTY_POINTS, "points per segment of a path-length penalty "
                                 "(function_path_length, gradient_path_length)", group="regularization", grid=None,
                                 option="one", limit=10_000)
    rho: float | None = _field("optimizer", None, "SAM's radius, with optimizer sam; unset: "
                               f"{optimizers.SAM_RHO} (optimizers.resolve_rho)", option="one")
    matmul_precision: str = _field("optimizer", "fp32", "matmuls of the training steps: fp32, tf32 (CUDA) or "
                                   "tf32-emulated")
    train_seed: int | None = _field("optimizer", None, "the initial weights and shuffles; unset: seed", group="seed",
                                    grid=None)
    # -- measurement (a grid's `measure:` block) -----------------------------------------------------------------
    measure_points: int = _field("measurement", paper.MEASURE_POINTS, "held-out points for the measures (or all "
                                 "there are)", option="one", limit=1_000_000)
    segments: int = _field("measurement", paper.SEGMENTS, "random segments of FPL and GPL", option="one",
                           limit=10_000_000)
    points: int = _field("measurement", paper.POINTS_PER_SEGMENT, "equally spaced points per segment of FPL and GPL",
                         grid="points_per_segment", option="one", limit=100_000)
    measure_seed: int = _field("measurement", 0, "seed of the segment sampling, an integer 0 <= seed < 2**32",
                               option="one")
    sharpness_iters: int = _field("measurement", 0, "power iterations for the sharpness (top eigenvalue of the "
                                  "training-loss Hessian); 0: not computed", group="extra", option="one",
                                  limit=1_000_000)
    trace_probes: int = _field("measurement", 0, "Hutchinson probes for the trace of the training-loss Hessian; 0: "
                               "not computed", group="extra", option="one", limit=100_000)

    def __post_init__(self):
        for f in fields(self):   # a NumPy integer as the int it is (the key is JSON; f"{v:,}" words it)
            if is_integer(v := getattr(self, f.name)):
                setattr(self, f.name, int(v))
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
            k = len(self.classes)
            if is_integer(self.n_train) and (self.n_train < k or self.n_train % k):
                raise ConfigError(f"n_train {self.n_train:,}: a task of {k} classes trains on n_train/{k} images of "
                                  f"each class, so n_train must be a multiple of {k}")
            self.pair = DEFAULT_PAIR   # the classes define the task; the pair is not used
        else:
            self.classes = ()
            if not lines.is_line(self.data) and is_integer(self.n_train) and (self.n_train < 2 or self.n_train % 2):
                raise ConfigError(f"n_train {self.n_train:,}: a task of a digit pair trains on n_train/2 images of "
                                  "each digit, so n_train must be an even number >= 2")
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
        if not is_integer(self.penalty_points) or self.penalty_points < 2:
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
        if self.regularizer in ("weights_product", "path_norm") and self.outputs > 1:
            raise ConfigError(f"the {self.regularizer} regularizer is defined for one output; a task of "
                              f"{self.outputs} classes has {self.outputs}: its weight-norm penalty is norm_product")
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
# The fields of each group (GROUPS), in order: SETTING_FIELDS are the columns that define a training setting.
GROUP_FIELDS = {g: tuple(f.name for f in fields(RunConfig) if f.metadata["group"] == g) for g in GROUPS}
SETTING_FIELDS = GROUP_FIELDS["setting"]
# Upper limits of a configuration's sizes: a larger value is a typo or asks for work no machine finishes, and is
# refused before any work (docs/cli.md). The paper's values are far below them. `hidden` limits each width,
# hidden_layers their number.
LIMITS = {**{f.name: f.metadata["limit"] for f in fields(RunConfig) if f.metadata["limit"] is not None},
          "hidden_layers": 64}


# Each RunConfig field's annotation, resolved once (the `train` options and the grid's axes read them).
HINTS = typing.get_type_hints(RunConfig)


def number_type(name: str):
    """int or float for a RunConfig field that holds one number (unset allowed: `float | None`), else None."""
    hint = HINTS[name]
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (int, float) else None


def grid_keys(part: str | None = None) -> dict[str, str]:
    """{key in a grid file: RunConfig field}: of the measurement part (a grid's `measure:` block) with
    part='measurement', else the top-level keys of the other parts."""
    return {f.metadata["grid"] or f.name: f.name for f in fields(RunConfig) if f.metadata["grid"] is not None
            and (f.metadata["part"] == "measurement") == (part == "measurement")}


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
    (RunConfig's fields, pair, hidden and classes as lists), the outcome of training (with the model's parameter
    count, the fingerprint of its tensor shapes, models.shapes_digest, and the outputs of its family's seed-0 model at
    fixed points, Family.init_outputs), the losses, the measures
    (registry.REGISTRY's columns, and those of the sampled measures at the training points), the exact measures of
    the 1-D tasks (oned.py), and provenance."""
    from smoothness.measures import oned, registry
    config = {f.name: (list if f.name in ("pair", "hidden", "classes") else f.type) for f in fields(RunConfig)}
    training = {"status": str, "epochs": int, "steps": int, "loss_epoch": float, "train_seconds": float,
                "resumed_at_epoch": int, "parameters": int, "shapes_digest": str, "init_outputs": list}
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

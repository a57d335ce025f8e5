"""Experiment grids: YAML configs, validation, expansion into RunConfigs, and the shipped presets.

A grid file is a mapping; every axis takes one value or a list of values:

    name: my-grid
    data: mnist5k                 # mnist5k | mnist | fashion-mnist | a 1-D task: line-gp, line-sine, line-sign
                                  # with settings, e.g. line-gp:length_scale=0.1 (lines.py)
    pairs: all                    # or [[3, 8], [4, 9]]
    n_train: [64, 128, 256, 512]
    seeds: [0, 1, 2]              # integers 0 <= seed < 2**32 (rng.check_seed), also measure.seed
    hidden: 256                   # one architecture: 256 or [256, 256]; an axis: [[256], [256, 256]] (the MLP's
                                  # widths: crossed with the mlp entries of the model axis only)
    model: mlp                    # the model family (models/families.py): mlp (the default, with `hidden`), cnn or
                                  # {family: cnn, channels: [8, 16], kernel: 3, pool: max}, or any nn.Module:
                                  # {factory: package.module:function, kwargs: {...}}; a list is an axis
    loss: mse                     # mse (eq. 2, the paper's) | cross_entropy; an axis
    classes: all                  # instead of pairs: one classification task of these classes (all: the ten;
                                  # or e.g. [0, 1, 2]), k outputs, labels 0..k-1 (data/classes.py)
    alpha: 0.01
    lr: null                      # null: 0.01, or 0.1 with a path-length regularizer (paper)
    batch_size: 64
    max_epochs: 25000
    threshold: 1.0e-5
    regularizers:                 # default: [{name: none}]
      - {name: gradient_norm, lam: [0, 1.0e-5, 1.0e-4], lr: 0.01}   # optional per entry: lr, alpha,
                                                                    # max_epochs, n_train, seeds, pairs
      - {name: weights_product, lam: {start: 1.0e-5, factor: 3, end: 1.0e-2}}   # a ladder: 0, 1e-5, 3e-5, ...
      - {name: function_path_length, lam: [1.0e-4], penalty_points: 100}   # points per segment of a path-length
                                                                          # penalty (default 10)
    independent_seeds: false      # true: each regularized model gets its own training seed (initial weights and
                                  # shuffles, rng.derived_seed), independent of its baseline's; same training set
    table2_lambdas: paper         # also show Table 2 at these fixed lambdas: 'paper' (regularizers.PAPER_LAMBDAS)
                                  # or a mapping {gradient_norm: 1.0e-3, ...}
    optimizer: sgd                # sgd | gd (full batch) | momentum | adam | sam; an axis like the others
    rho: 0.05                     # SAM's radius, an axis; used by optimizer sam only (others get 0)
    matmul_precision: fp32        # training matmuls: fp32 | tf32 (CUDA only) | tf32-emulated (one value)
    ladder: staged                # staged: a lambda rung is trained only if the rung below reached the
                                  # threshold (staging.py); all: every rung at once
    measure: {measure_points: 1000, segments: 1000, points_per_segment: 100, measure_seed: 0,
              sharpness_iters: 0, trace_probes: 0}

A regularizer entry with lam 0 is plain SGD (stored as regularizer 'none' at that entry's lr), so a
baseline shared by several entries is trained once.
"""
from __future__ import annotations

import difflib
import itertools
import math
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

from smoothness.data import classes as classtasks
from smoothness.data import images, lines
from smoothness.errors import ConfigError, DataError
from smoothness.experiments.configuration import config, gridvalues
from smoothness.experiments.configuration.config import RunConfig, config_key  # noqa: F401 (config_key: part of grid's API)
from smoothness.models import families
from smoothness.runtime import rng
from smoothness.training import optimizers, regularizers

PRESETS = (
    "smoke", "quick", "paper-table1", "paper-table2", "lr-sweep", "depth", "fashion-table1", "fashion-table2",
    "fashion-large-n", "fashion-large-n-table2", "fashion-table2-10k", "cnn-fashion", "oned", "sam",
)

MAX_MODELS = 100_000        # models of one grid (the paper's two experiments together are about 2,500)
MAX_GRID_BYTES = 1 << 20   # a grid file is a few hundred bytes of YAML
MAX_YAML_NODES = 100_000   # YAML nodes of a grid file once its aliases are expanded
_DEFAULT = {f.name: f.default for f in fields(RunConfig)}   # the paper's defaults, defined once in RunConfig
# grid key under `measure` -> RunConfig field, and the top-level keys: RunConfig's (config.grid_keys: each field's
# grid key is declared with it) and the grid's own
_MEASURE_FIELDS = config.grid_keys("measurement")
_TOP = {*config.grid_keys(), "name", "description", "regularizers", "measure", "ladder", "independent_seeds",
        "table2_lambdas"}
# the numeric axes: each top-level key of a RunConfig field of one int or float, read alike (gridvalues.axis: one
# value or a list, > 0, unset allowed where the default is unset); the seeds and SAM's radius have rules of their own
_AXES = {key: (name, kind) for key, name in config.grid_keys().items()
         if (kind := config.number_type(name)) is not None and name not in ("seed", "rho")}
# the spelling of earlier versions, still read (stored grids, older files): `points` was the held-out points
_MEASURE_LEGACY = {"points": "measure_points", "seed": "measure_seed"}
# 0 allowed where it is the default (a seed; 0 iterations or probes: not computed)
_MEASURE_NONNEG = {k for k, f in _MEASURE_FIELDS.items() if _DEFAULT[f] == 0}
_MEASURE = set(_MEASURE_FIELDS)


def _measure_defaults() -> dict:
    return {k: _DEFAULT[f] for k, f in _MEASURE_FIELDS.items()}


@dataclass
class Grid:
    """A validated grid: every axis is a list."""

    name: str
    data: str
    pairs: list[tuple[int, int]]
    n_train: list[int]
    seeds: list[int]
    hidden: list[tuple[int, ...]]
    alpha: list[float]
    lr: list[float | None]
    batch_size: list[int]
    max_epochs: list[int]
    threshold: list[float]
    regularizers: list[dict] = field(default_factory=lambda: gridvalues.regularizer_entries(None))
    optimizer: list[str] = field(default_factory=lambda: ["sgd"])
    rho: list[float | None] = field(default_factory=lambda: [None])   # None: optimizers.SAM_RHO
    measure: dict = field(default_factory=_measure_defaults)
    description: str = ""
    matmul_precision: str = "fp32"
    ladder: str = "staged"
    independent_seeds: bool = False
    table2_lambdas: dict = field(default_factory=dict)
    model: list = field(default_factory=lambda: [None])     # canonical family specs (models.canonical)
    loss: list[str] = field(default_factory=lambda: ["mse"])
    classes: tuple[int, ...] = ()   # a classification task of these classes instead of the pairs

    def size_bound(self) -> int:
        """The number of combinations the grid's axes make (before duplicates are dropped), computed without
        expanding them."""
        total = 0
        for reg in self.regularizers:
            total += math.prod(len(v) for v in (
                self.model, self.loss, self.optimizer, self.rho, reg["lam"],
                [reg["lr"]] if reg["lr"] is not None else self.lr,
                self.hidden, reg.get("alpha") or self.alpha, self.batch_size,
                [reg["max_epochs"]] if reg.get("max_epochs") is not None else self.max_epochs, self.threshold,
                reg.get("pairs") or self.pairs, reg.get("n_train") or self.n_train, reg.get("seeds") or self.seeds))
        return total

    def configs(self) -> list[RunConfig]:
        """Every model of the grid, without duplicates, in a stable order."""
        bound = self.size_bound()
        if bound > MAX_MODELS:
            raise ConfigError(f"grid {self.name!r} has {bound:,} combinations of its axes, more than the limit of "
                              f"{MAX_MODELS:,} models: split it into several grids (limits: docs/cli.md)")
        widths = tuple(_DEFAULT["hidden"])
        if None not in self.model and self.hidden != [widths]:
            raise ConfigError(f"grid {self.name!r}: key 'hidden' sets the mlp family's widths, and the model axis "
                              "has no mlp entry; give another family's settings in `model`")
        out, seen = [], set()
        for reg in self.regularizers:
            lrs = [reg["lr"]] if reg["lr"] is not None else self.lr
            caps = [reg["max_epochs"]] if reg.get("max_epochs") is not None else self.max_epochs
            sizes = reg.get("n_train") or self.n_train
            seeds = reg.get("seeds") or self.seeds
            pairs = reg.get("pairs") or self.pairs
            alphas = reg.get("alpha") or self.alpha
            for model, loss, opt, rho, lam, lr, h, al, bs, me, th, pair, n, s in itertools.product(
                    self.model, self.loss, self.optimizer, self.rho, reg["lam"], lrs, self.hidden, alphas,
                    self.batch_size, caps, self.threshold, pairs, sizes, seeds):
                name = reg["name"] if lam > 0 else "none"
                h = h if model is None else widths   # the hidden axis crosses the mlp entries of the model axis only
                # the paper's rate of this entry's regularizer, also for its lambda = 0 baseline
                lr = optimizers.resolve_lr(lr, opt, reg["name"])
                extra = {}
                if name in regularizers.PATH_LENGTH and reg.get("penalty_points"):
                    extra["penalty_points"] = reg["penalty_points"]
                if self.independent_seeds and name != "none":
                    extra["train_seed"] = rng.derived_seed(s, name, lam)
                try:
                    c = RunConfig(data=self.data, pair=pair, n_train=n, seed=s, hidden=h, alpha=al, lr=lr,
                                  batch_size=bs, max_epochs=me, threshold=th,
                                  **{f: self.measure[k] for k, f in _MEASURE_FIELDS.items()},
                                  regularizer=name, lam=float(lam) if lam > 0 else 0.0, optimizer=opt,
                                  model=model, loss=loss, classes=self.classes,
                                  matmul_precision=self.matmul_precision, rho=rho if opt == "sam" else None, **extra)
                except ConfigError as e:
                    raise ConfigError(f"grid {self.name!r}: {e}") from None
                k = config_key(c)
                if k not in seen:
                    seen.add(k)
                    out.append(c)
        return out

    def _with_overrides(self, axis: str) -> list[int]:
        return sorted({*getattr(self, axis), *(v for r in self.regularizers for v in (r.get(axis) or []))})

    def sizes(self) -> list[int]:
        """Every training size of the grid (the n_train axis and the regularizer entries' own)."""
        return self._with_overrides("n_train")

    def all_seeds(self) -> list[int]:
        """Every seed of the grid (the seeds axis and the regularizer entries' own)."""
        return self._with_overrides("seeds")

    def all_pairs(self) -> list[tuple[int, int]]:
        """Every pair of the grid (the pairs axis and the regularizer entries' own), in order of appearance."""
        return list(dict.fromkeys([*self.pairs, *(p for r in self.regularizers for p in (r.get("pairs") or []))]))

    def to_dict(self) -> dict:
        """The grid as plain data (lists instead of tuples), as stored in the results store's metadata."""
        d = asdict(self)
        d["pairs"] = [list(p) for p in self.pairs]
        for r in d["regularizers"]:
            if r.get("pairs"):
                r["pairs"] = [list(p) for p in r["pairs"]]
        d["hidden"] = [list(h) for h in self.hidden]
        d["classes"] = list(self.classes)
        return d


# -- parsing and validation --------------------------------------------------------------------------
def parse(raw: dict, name: str | None = None) -> Grid:
    """Validate a grid mapping (as loaded from YAML) and return a Grid; errors name the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a grid must be a mapping of keys to values, got {type(raw).__name__}")
    gridvalues.unknown_keys(raw, _TOP, "grid")
    data = raw.get("data", _DEFAULT["data"])
    try:
        data = images.check_source(data)
    except DataError as e:
        raise ConfigError(f"key 'data': {e}") from None
    line = lines.is_line(data)
    classes = ()
    if raw.get("classes") not in (None, [], ()):   # [] is how a stored grid of pairs writes "no classes"
        if "pairs" in raw or any("pairs" in r for r in raw.get("regularizers") or [] if isinstance(r, dict)):
            raise ConfigError("key 'classes': a classification task of classes has no pairs; give one or the other")
        try:
            classes = classtasks.check_classes(raw["classes"])
        except DataError as e:
            raise ConfigError(f"key {e}") from None
    if line and ("pairs" in raw or any("pairs" in r for r in raw.get("regularizers") or [] if isinstance(r, dict))):
        raise ConfigError(f"key 'pairs': a 1-D task ({data}) has no digit pairs; leave 'pairs' out")
    measure = _measure_defaults()
    m = raw.get("measure") or {}
    if not isinstance(m, dict):
        raise ConfigError(f"key 'measure': expected a mapping, got {m!r}")
    gridvalues.unknown_keys(m, _MEASURE | set(_MEASURE_LEGACY), "measure")
    for old, new in _MEASURE_LEGACY.items():
        if old in m:
            if new in m:
                raise ConfigError(f"key 'measure': {old!r} (the earlier spelling) and {new!r} given together")
            m = {**{k: v for k, v in m.items() if k != old}, new: m[old]}
    for k in _MEASURE:
        if k == "measure_seed" and k in m:
            measure[k] = rng.check_seed(m[k], "key 'measure.measure_seed'")
        elif k in m:
            measure[k] = gridvalues.number(m[k], int, f"measure.{k}", nonneg=k in _MEASURE_NONNEG,
                              positive=k not in _MEASURE_NONNEG)
    seeds = gridvalues.seed_list(raw.get("seeds", _DEFAULT["seed"]), "seeds")
    if not seeds:
        raise ConfigError("key 'seeds': needs at least one value")
    from_file = not raw.get("name") and name is not None
    g = Grid(name=gridvalues.grid_name(raw.get("name") or name or "grid", from_file=from_file),
             data=data,
             pairs=[lines.PAIR] if line else gridvalues.pair_list(raw.get("pairs", [list(_DEFAULT["pair"])])),
             **{name: gridvalues.axis(raw, key, kind, _DEFAULT[name], positive=True,
                                      allow_none=_DEFAULT[name] is None) for key, (name, kind) in _AXES.items()},
             seeds=seeds, hidden=gridvalues.hidden_list(raw.get("hidden", list(_DEFAULT["hidden"]))),
             regularizers=gridvalues.regularizer_entries(raw.get("regularizers")),
             optimizer=gridvalues.optimizer_list(raw.get("optimizer", "sgd")),
             # SAM's radius matters only where the optimizer axis holds sam (a stored grid may carry a value)
             rho=(gridvalues.axis(raw, "rho", float, None, positive=True, allow_none=True)
                  if "sam" in gridvalues.as_list(raw.get("optimizer", "sgd")) else [None]),
             measure=measure, matmul_precision=gridvalues.matmul_precision(raw.get("matmul_precision", "fp32")),
             ladder=gridvalues.ladder_mode(raw.get("ladder", "staged")),
             independent_seeds=gridvalues.flag(raw.get("independent_seeds", False), "independent_seeds"),
             table2_lambdas=gridvalues.table2_lambdas(raw.get("table2_lambdas")),
             description=str(raw.get("description") or ""),
             model=gridvalues.model_list(raw.get("model")), loss=gridvalues.loss_list(raw.get("loss", "mse")),
             classes=classes)
    _check_models(g.configs())  # the remaining checks (e.g. weights_product needs one hidden layer)
    return g


def _check_models(configs: list[RunConfig]) -> None:
    """Each model of the grid against its task's inputs (a cnn's kernel and pooling blocks against the images), once
    per architecture, so that what would fail the first build fails the reading of the grid."""
    for c in {c.architecture(): c for c in configs}.values():
        families.check(c.model, images.input_shape(c.data), c.outputs)


def load(path) -> Grid:
    """Read and validate a grid YAML file."""
    import yaml
    path = Path(path)
    try:
        if path.exists() and not path.is_file():
            raise ConfigError(f"{path} is not a regular file: a grid is a YAML file")
        with open(path, "rb") as f:
            blob = f.read(MAX_GRID_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"no such grid file: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read grid file {path}: {e.strerror}") from None
    if len(blob) > MAX_GRID_BYTES:
        raise ConfigError(f"{path} is larger than {MAX_GRID_BYTES // 1024} KB: not a grid file")
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte 0x{blob[e.start]:02x} at offset {e.start}); "
                          "a grid is YAML saved as UTF-8") from None
    try:
        raw = _yaml_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    try:
        return parse(raw, name=path.stem)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def preset_path(name: str):
    """The YAML file of a shipped preset."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; presets: {', '.join(PRESETS)}")
    return resources.files("smoothness") / "presets" / f"{name}.yaml"


def preset(name: str) -> Grid:
    """A grid shipped with the package (one of PRESETS)."""
    return parse(_yaml_load(preset_path(name).read_text(encoding="utf-8")), name=name)


def _yaml_load(text: str):
    """yaml.safe_load, except that a key given twice in one mapping is a ConfigError naming it (safe_load
    would silently keep the last value)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                first: dict = {}
                for k, _ in node.value:
                    if k.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(k, deep=True)
                    try:
                        seen = key in first
                    except TypeError:   # an unhashable key: SafeLoader's own error follows
                        continue
                    if seen:
                        a, b = first[key] + 1, k.start_mark.line + 1
                        where = f"line {a}" if a == b else f"lines {a} and {b}"
                        raise ConfigError(f"duplicate key {key!r} ({where}); each key may appear once")
                    first[key] = k.start_mark.line
            return super().construct_mapping(node, deep)

        def compose_document(self):
            node = super().compose_document()
            _check_size(node)
            return node

    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except RecursionError:
        raise ConfigError("the YAML is nested too deeply to be a grid") from None


def _check_size(root) -> None:
    """A ConfigError if the YAML node tree holds more than MAX_YAML_NODES nodes once its aliases are expanded (a
    few lines of nested aliases can stand for billions), counted without expanding them; and if it nests deeper
    than a grid could."""
    import yaml
    sizes: dict[int, int] = {}
    stack = [(root, False, 0)]
    while stack:
        node, done, depth = stack.pop()
        if id(node) in sizes:
            continue
        kids = ([x for kv in node.value for x in kv] if isinstance(node, yaml.MappingNode) else
                list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        if depth > 64:
            raise ConfigError("the YAML is nested too deeply to be a grid")
        if done:
            sizes[id(node)] = min(1 + sum(sizes[id(k)] for k in kids), MAX_YAML_NODES + 1)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise ConfigError(f"the YAML expands to more than {MAX_YAML_NODES:,} values (through its aliases): "
                                  "not a grid")
        else:
            stack.append((node, True, depth))
            stack += [(k, False, depth + 1) for k in kids if id(k) not in sizes]


def resolve(name) -> Grid:
    """A grid YAML file if `name` is one (or ends in .yaml/.yml), otherwise the preset of that name. A folder
    is never a grid: one named like a preset (a run's output folder, say) does not hide the preset."""
    p = Path(name)
    if p.is_dir() and str(name) not in PRESETS:
        raise ConfigError(f"{name} is a folder, not a grid YAML file or a preset name")
    if not p.is_dir() and (p.exists() or p.suffix in (".yaml", ".yml")):
        return load(p)
    try:
        return preset(str(name))
    except ConfigError as e:
        raise ConfigError(f"no grid file {str(name)!r}, and {e}") from None

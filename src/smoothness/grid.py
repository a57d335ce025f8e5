"""Experiment grids: YAML configs, validation, expansion into RunConfigs, and the shipped presets.

A grid file is a mapping; every axis takes one value or a list of values:

    name: my-grid
    data: mnist5k                 # mnist5k | mnist | fashion-mnist
    pairs: all                    # or [[3, 8], [4, 9]]
    n_train: [64, 128, 256, 512]
    seeds: [0, 1, 2]              # integers 0 <= seed < 2**32 (rng.check_seed), also measure.seed
    hidden: 256                   # one architecture: 256 or [256, 256]; an axis: [[256], [256, 256]]
    alpha: 0.01
    lr: null                      # null: 0.01, or 0.1 with a path-length regularizer (paper)
    batch_size: 64
    max_epochs: 25000
    threshold: 1.0e-5
    regularizers:                 # default: [{name: none}]
      - {name: gradient_norm, lam: [0, 1.0e-5, 1.0e-4], lr: 0.01}   # optional per entry: lr, max_epochs, n_train, seeds
    optimizer: sgd                # sgd | gd (full batch) | momentum | adam; an axis like the others
    matmul_precision: fp32        # training matmuls: fp32 | tf32 (CUDA only) | tf32-emulated (one value)
    measure: {points: 1000, segments: 1000, points_per_segment: 100, seed: 0,
              sharpness_iters: 0, trace_probes: 0}

A regularizer entry with lam 0 is plain SGD (stored as regularizer 'none' at that entry's lr), so a
baseline shared by several entries is trained once.
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

from . import data as datasets
from . import optimizers, precision, regularizers, rng
from .errors import ConfigError
from .pipeline import RunConfig

PRESETS = ("smoke", "quick", "paper-table1", "paper-table2", "lr-sweep", "depth", "fashion-table1")

_TOP = {"name", "description", "data", "pairs", "n_train", "seeds", "hidden", "alpha", "lr", "batch_size",
        "max_epochs", "threshold", "regularizers", "measure", "optimizer", "matmul_precision"}
_REG = {"name", "lam", "lr", "max_epochs", "n_train", "seeds"}
_DEFAULT = {f.name: f.default for f in fields(RunConfig)}   # the paper's defaults, defined once in RunConfig
# grid key under `measure` -> RunConfig field
_MEASURE_FIELDS = {"points": "measure_points", "segments": "segments", "points_per_segment": "points",
                   "seed": "measure_seed", "sharpness_iters": "sharpness_iters", "trace_probes": "trace_probes"}
_MEASURE_NONNEG = {"seed", "sharpness_iters", "trace_probes"}   # 0 allowed (0 iterations/probes: not computed)
# RunConfig fields added after the first store format: left out of the key while at their default, so
# that the keys of earlier stores stay valid.
_KEY_OPTIONAL = ("sharpness_iters", "trace_probes", "optimizer", "matmul_precision")
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
    regularizers: list[dict] = field(default_factory=lambda: _regularizers(None))
    optimizer: list[str] = field(default_factory=lambda: ["sgd"])
    measure: dict = field(default_factory=_measure_defaults)
    description: str = ""
    matmul_precision: str = "fp32"

    def configs(self) -> list[RunConfig]:
        """Every model of the grid, without duplicates, in a stable order."""
        out, seen = [], set()
        for reg in self.regularizers:
            lrs = [reg["lr"]] if reg["lr"] is not None else self.lr
            caps = [reg["max_epochs"]] if reg.get("max_epochs") is not None else self.max_epochs
            sizes = reg.get("n_train") or self.n_train
            seeds = reg.get("seeds") or self.seeds
            for opt, lam, lr, h, al, bs, me, th, pair, n, s in itertools.product(
                    self.optimizer, reg["lam"], lrs, self.hidden, self.alpha, self.batch_size, caps, self.threshold,
                    self.pairs, sizes, seeds):
                name = reg["name"] if lam > 0 else "none"
                if lr is None:  # the paper's rate for this regularizer also for its lambda = 0 baseline
                    lr = optimizers.default_lr(opt, reg["name"])
                try:
                    c = RunConfig(data=self.data, pair=pair, n_train=n, seed=s, hidden=h, alpha=al, lr=lr,
                                  batch_size=bs, max_epochs=me, threshold=th,
                                  **{f: self.measure[k] for k, f in _MEASURE_FIELDS.items()},
                                  regularizer=name, lam=float(lam) if lam > 0 else 0.0, optimizer=opt,
                                  matmul_precision=self.matmul_precision)
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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pairs"] = [list(p) for p in self.pairs]
        d["hidden"] = [list(h) for h in self.hidden]
        return d


def config_key(c: RunConfig) -> str:
    """A stable identifier of one model's full configuration (the results store's primary key)."""
    d = asdict(c)
    d["pair"], d["hidden"] = list(c.pair), list(c.hidden)
    d["lr"], d["alpha"], d["threshold"], d["lam"] = (float(d[k]) for k in ("lr", "alpha", "threshold", "lam"))
    for k in _KEY_OPTIONAL:
        if d[k] == _DEFAULT[k]:
            del d[k]
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


# -- parsing and validation --------------------------------------------------------------------------
def _unknown(keys, known, where):
    for k in keys:
        if k not in known:
            close = difflib.get_close_matches(str(k), sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {k!r}{hint}; known keys: {', '.join(sorted(known))}")


def _as_list(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _num(v, kind, key, *, positive=False, nonneg=False, allow_none=False):
    """One number of type kind (int/float); strings such as '1e-5' (YAML 1.1) are accepted for floats."""
    if v is None and allow_none:
        return None
    if kind is float and isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or isinstance(v, int))
    if not ok:
        want = "an integer" if kind is int else "a number"
        raise ConfigError(f"key {key!r}: expected {want}, got {v!r}")
    v = kind(v)
    if kind is float and not math.isfinite(v):
        raise ConfigError(f"key {key!r}: must be a finite number, got {v!r}")
    if positive and not v > 0:
        raise ConfigError(f"key {key!r}: must be positive, got {v!r}")
    if nonneg and not v >= 0:
        raise ConfigError(f"key {key!r}: must be non-negative, got {v!r}")
    return v


MAX_RUNGS = 40


def _ladder(v: dict) -> list[float]:
    """A lambda ladder {start, factor, end}: 0 (the baseline), then start, start * factor, ... up to end (within
    rounding), each rounded to 6 significant digits so that it reads and keys as written (3 * 1e-5 = 3e-05)."""
    _unknown(v, ("start", "factor", "end"), "lam ladder")
    if set(v) != {"start", "factor", "end"}:
        raise ConfigError("key 'lam': a ladder needs start, factor and end, e.g. {start: 1.0e-5, factor: 3, end: 1.0e-2}")
    start = _num(v["start"], float, "lam.start", positive=True)
    factor = _num(v["factor"], float, "lam.factor", positive=True)
    end = _num(v["end"], float, "lam.end", positive=True)
    if factor <= 1 or end < start:
        raise ConfigError(f"key 'lam': a ladder needs factor > 1 and end >= start, got factor {factor:g}, "
                          f"start {start:g}, end {end:g}")
    rungs = math.floor(math.log(end / start) / math.log(factor) + 1e-9) + 1
    if rungs > MAX_RUNGS:
        raise ConfigError(f"key 'lam': the ladder has {rungs} values, more than {MAX_RUNGS}: raise the factor")
    return [0.0] + [float(f"{start * factor ** k:.6g}") for k in range(rungs)]


def _seeds(v, key: str) -> list[int]:
    """One seed or a list: integers 0 <= seed < 2**32, the rule of RunConfig and the CLI (rng.check_seed)."""
    return [rng.check_seed(s, f"key {key!r}") for s in _as_list(v)]


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def _name(v, from_file: bool) -> str:
    """A grid name (the folder runs/NAME): letters, digits and _ . + -, not starting with a dot, no '..'."""
    v = str(v)
    if not _NAME.fullmatch(v) or ".." in v:
        where = " (taken from the file name; set one with name:)" if from_file else ""
        raise ConfigError(f"key 'name': {v!r}{where} is not a valid grid name: use up to 100 letters, digits and "
                          "_ . + -, starting with a letter or digit, without '..' or path separators")
    return v


def _axis(raw, key, kind, default, **kw):
    vals = _as_list(raw.get(key, default))
    if not vals:
        raise ConfigError(f"key {key!r}: needs at least one value")
    return [_num(v, kind, key, **kw) for v in vals]


def _pairs(v):
    if v == "all":
        return list(datasets.ALL_PAIRS)
    if not isinstance(v, list) or not v:
        raise ConfigError(f"key 'pairs': expected 'all' or a list of digit pairs such as [[3, 8]], got {v!r}")
    if len(v) == 2 and all(isinstance(d, int) for d in v):
        v = [v]
    out = []
    for p in v:
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(d, int) for d in p)):
            raise ConfigError(f"key 'pairs': each pair must be two digits such as [3, 8], got {p!r}")
        try:
            datasets.check_pair(*p)
        except Exception as e:
            raise ConfigError(f"key 'pairs': {e}") from None
        out.append(tuple(p))
    return out


def _hidden(v):
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list) or not v:
        raise ConfigError(f"key 'hidden': expected a width, a list of widths or a list of such lists, got {v!r}")
    archs = [v] if all(not isinstance(h, list) for h in v) else v
    out = []
    for a in archs:
        a = _as_list(a)
        if not a:
            raise ConfigError("key 'hidden': an architecture needs at least one hidden layer")
        out.append(tuple(_num(h, int, "hidden", positive=True) for h in a))
    return out


def _regularizers(v):
    if v is None:
        return [{"name": "none", "lam": [0.0], "lr": None, "max_epochs": None, "n_train": None, "seeds": None}]
    if not isinstance(v, list) or not v:
        raise ConfigError("key 'regularizers': expected a list of entries such as "
                          "{name: gradient_norm, lam: [0, 1e-4]}")
    out = []
    for e in v:
        if isinstance(e, str):
            e = {"name": e}
        if not isinstance(e, dict):
            raise ConfigError(f"key 'regularizers': each entry must be a mapping, got {e!r}")
        _unknown(e, _REG, "regularizers entry")
        name = e.get("name", "none")
        try:
            regularizers.check(name)
        except ValueError as err:
            raise ConfigError(f"key 'regularizers': {err}") from None
        lam = _ladder(e["lam"]) if isinstance(e.get("lam"), dict) else \
            [_num(x, float, "lam", nonneg=True) for x in _as_list(e.get("lam", 0.0))]
        if name == "none" and any(x > 0 for x in lam):
            raise ConfigError("key 'regularizers': the entry 'none' takes no lam > 0")
        lr = _num(e.get("lr"), float, "lr", positive=True, allow_none=True)
        cap = _num(e.get("max_epochs"), int, "max_epochs", positive=True, allow_none=True)
        sizes = [_num(n, int, "n_train", positive=True) for n in _as_list(e["n_train"])] if "n_train" in e else None
        seeds = _seeds(e["seeds"], "seeds") if "seeds" in e else None
        out.append({"name": name, "lam": lam, "lr": lr, "max_epochs": cap, "n_train": sizes, "seeds": seeds})
    return out


def _optimizers(v):
    out = _as_list(v)
    if not out:
        raise ConfigError("key 'optimizer': needs at least one value")
    for o in out:
        try:
            optimizers.check(o)
        except ValueError as err:
            raise ConfigError(f"key 'optimizer': {err}") from None
    return out


def _precision(v) -> str:
    try:
        return precision.check(v)
    except ValueError as e:
        raise ConfigError(f"key 'matmul_precision': {e}") from None


def parse(raw: dict, name: str | None = None) -> Grid:
    """Validate a grid mapping (as loaded from YAML) and return a Grid; errors name the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a grid must be a mapping of keys to values, got {type(raw).__name__}")
    _unknown(raw, _TOP, "grid")
    data = raw.get("data", _DEFAULT["data"])
    if data not in datasets.SOURCES:
        raise ConfigError(f"key 'data': unknown data source {data!r}; choose one of: {', '.join(datasets.SOURCES)}")
    measure = _measure_defaults()
    m = raw.get("measure") or {}
    if not isinstance(m, dict):
        raise ConfigError(f"key 'measure': expected a mapping, got {m!r}")
    _unknown(m, _MEASURE, "measure")
    for k in _MEASURE:
        if k == "seed" and k in m:
            measure[k] = rng.check_seed(m[k], "key 'measure.seed'")
        elif k in m:
            measure[k] = _num(m[k], int, f"measure.{k}", nonneg=k in _MEASURE_NONNEG,
                              positive=k not in _MEASURE_NONNEG)
    seeds = _seeds(raw.get("seeds", _DEFAULT["seed"]), "seeds")
    if not seeds:
        raise ConfigError("key 'seeds': needs at least one value")
    g = Grid(name=_name(raw.get("name") or name or "grid", from_file=not raw.get("name") and name is not None),
             data=data, pairs=_pairs(raw.get("pairs", [list(_DEFAULT["pair"])])),
             n_train=_axis(raw, "n_train", int, _DEFAULT["n_train"], positive=True), seeds=seeds,
             hidden=_hidden(raw.get("hidden", list(_DEFAULT["hidden"]))),
             alpha=_axis(raw, "alpha", float, _DEFAULT["alpha"], positive=True),
             lr=_axis(raw, "lr", float, _DEFAULT["lr"], positive=True, allow_none=True),
             batch_size=_axis(raw, "batch_size", int, _DEFAULT["batch_size"], positive=True),
             max_epochs=_axis(raw, "max_epochs", int, _DEFAULT["max_epochs"], positive=True),
             threshold=_axis(raw, "threshold", float, _DEFAULT["threshold"], positive=True),
             regularizers=_regularizers(raw.get("regularizers")), optimizer=_optimizers(raw.get("optimizer", "sgd")),
             measure=measure, matmul_precision=_precision(raw.get("matmul_precision", "fp32")),
             description=str(raw.get("description") or ""))
    g.configs()  # the remaining checks (e.g. weights_product needs one hidden layer)
    return g


def load(path) -> Grid:
    """Read and validate a grid YAML file."""
    import yaml
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no such grid file: {path}") from None
    except OSError as e:
        raise ConfigError(f"cannot read grid file {path}: {e.strerror}") from None
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

    return yaml.load(text, Loader=UniqueKeyLoader)


def resolve(name) -> Grid:
    """A grid YAML file if `name` is one (or ends in .yaml/.yml), otherwise the preset of that name."""
    p = Path(name)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return load(p)
    try:
        return preset(str(name))
    except ConfigError as e:
        raise ConfigError(f"no grid file {str(name)!r}, and {e}") from None

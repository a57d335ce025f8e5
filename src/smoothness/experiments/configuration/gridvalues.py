"""The values of a grid file, one checker per key: each returns the parsed value or raises a ConfigError that
names the key (grid.parse puts them together)."""
from __future__ import annotations

import difflib
import math
import re

from smoothness.data import images
from smoothness.errors import ConfigError
from smoothness.experiments.configuration.staging import MODES as LADDER_MODES
from smoothness.models import canonical, family_of_setting, losses
from smoothness.runtime import precision, rng
from smoothness.runtime.values import is_integer
from smoothness.training import optimizers, regularizers

REGULARIZER_KEYS = {"name", "lam", "lr", "alpha", "max_epochs", "n_train", "seeds", "pairs", "penalty_points"}


def unknown_keys(keys, known, where):
    """A ConfigError naming the first key of `keys` not in `known`, with the closest known one, or the model
    family whose setting it is."""
    for k in keys:
        if k not in known:
            close = difflib.get_close_matches(str(k), sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            family = family_of_setting(str(k)) if "model" in known else None
            if family:
                hint = f" (a setting of the {family} family: write model: {{family: {family}, {k}: ...}})"
            raise ConfigError(f"{where}: unknown key {k!r}{hint}; known keys: {', '.join(sorted(known))}")


def as_list(v):
    """v as a list: a scalar becomes a list of one."""
    return list(v) if isinstance(v, (list, tuple)) else [v]


def number(v, kind, key, *, positive=False, nonneg=False, allow_none=False):
    """One number of type kind (int/float); strings such as '1e-5' (YAML 1.1) are accepted for floats."""
    if v is None and allow_none:
        return None
    if kind is float and isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    ok = is_integer(v) or (kind is float and isinstance(v, float))
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


def ladder(v: dict) -> list[float]:
    """A lambda ladder {start, factor, end}: 0 (the baseline), then start, start * factor, ... up to end (within
    rounding), each rounded to 6 significant digits so that it reads and keys as written (3 * 1e-5 = 3e-05)."""
    unknown_keys(v, ("start", "factor", "end"), "lam ladder")
    if set(v) != {"start", "factor", "end"}:
        raise ConfigError("key 'lam': a ladder needs start, factor and end, e.g. "
                          "{start: 1.0e-5, factor: 3, end: 1.0e-2}")
    start = number(v["start"], float, "lam.start", positive=True)
    factor = number(v["factor"], float, "lam.factor", positive=True)
    end = number(v["end"], float, "lam.end", positive=True)
    if factor <= 1 or end < start:
        raise ConfigError(f"key 'lam': a ladder needs factor > 1 and end >= start, got factor {factor:g}, "
                          f"start {start:g}, end {end:g}")
    rungs = math.floor(math.log(end / start) / math.log(factor) + 1e-9) + 1
    if rungs > MAX_RUNGS:
        raise ConfigError(f"key 'lam': the ladder has {rungs} values, more than {MAX_RUNGS}: raise the factor")
    return [0.0] + [float(f"{start * factor ** k:.6g}") for k in range(rungs)]


def seed_list(v, key: str) -> list[int]:
    """One seed or a list: integers 0 <= seed < 2**32, the rule of RunConfig and the CLI (rng.check_seed)."""
    return [rng.check_seed(s, f"key {key!r}") for s in as_list(v)]


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def grid_name(v, from_file: bool) -> str:
    """A grid name (the folder runs/NAME): letters, digits and _ . + -, not starting with a dot, no '..'."""
    v = str(v)
    if not _NAME_RE.fullmatch(v) or ".." in v:
        where = " (taken from the file name; set one with name:)" if from_file else ""
        raise ConfigError(f"key 'name': {v!r}{where} is not a valid grid name: use up to 100 letters, digits and "
                          "_ . + -, starting with a letter or digit, without '..' or path separators")
    return v


def axis(raw, key, kind, default, **kw):
    """The grid axis `key` of raw as a checked list of `kind` (default when absent)."""
    vals = as_list(raw.get(key, default))
    if not vals:
        raise ConfigError(f"key {key!r}: needs at least one value")
    return [number(v, kind, key, **kw) for v in vals]


def pair_list(v):
    """The pairs axis: a list of two different digits 0..9 each, or 'all' for the 45 pairs."""
    if v == "all":
        return list(images.ALL_PAIRS)
    if not isinstance(v, list) or not v:
        raise ConfigError(f"key 'pairs': expected 'all' or a list of digit pairs such as [[3, 8]], got {v!r}")
    if len(v) == 2 and all(is_integer(d) for d in v):
        v = [v]
    out = []
    for p in v:
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(is_integer(d) for d in p)):
            raise ConfigError(f"key 'pairs': each pair must be two digits such as [3, 8], got {p!r}")
        try:
            images.check_pair(*p)
        except Exception as e:
            raise ConfigError(f"key 'pairs': {e}") from None
        out.append(tuple(int(d) for d in p))
    return out


def hidden_list(v):
    """The hidden axis: one width list, or a list of them."""
    if is_integer(v):
        v = [v]
    if not isinstance(v, list) or not v:
        raise ConfigError(f"key 'hidden': expected a width, a list of widths or a list of such lists, got {v!r}")
    archs = [v] if all(not isinstance(h, list) for h in v) else v
    out = []
    for a in archs:
        a = as_list(a)
        if not a:
            raise ConfigError("key 'hidden': an architecture needs at least one hidden layer")
        out.append(tuple(number(h, int, "hidden", positive=True) for h in a))
    return out


def regularizer_entries(v):
    """The regularizers key: entries {name, lam (a list or a ladder) and optionally lr, alpha, max_epochs, n_train,
    pairs, seeds}, checked; absent: the unregularized baseline only."""
    if v is None:
        return [{"name": "none", "lam": [0.0], "lr": None, "alpha": None, "max_epochs": None, "n_train": None,
                 "seeds": None, "pairs": None, "penalty_points": None}]
    if not isinstance(v, list) or not v:
        raise ConfigError("key 'regularizers': expected a list of entries such as "
                          "{name: gradient_norm, lam: [0, 1e-4]}")
    out = []
    for e in v:
        if isinstance(e, str):
            e = {"name": e}
        if not isinstance(e, dict):
            raise ConfigError(f"key 'regularizers': each entry must be a mapping, got {e!r}")
        unknown_keys(e, REGULARIZER_KEYS, "regularizers entry")
        e = {k: v for k, v in e.items() if v is not None or k in ("name", "lam")}   # None: unset (as to_dict writes)
        name = e.get("name", "none")
        try:
            regularizers.check(name)
        except ValueError as err:
            raise ConfigError(f"key 'regularizers': {err}") from None
        lam = ladder(e["lam"]) if isinstance(e.get("lam"), dict) else \
            [number(x, float, "lam", nonneg=True) for x in as_list(e.get("lam", 0.0))]
        if name == "none" and any(x > 0 for x in lam):
            raise ConfigError("key 'regularizers': the entry 'none' takes no lam > 0")
        if name != "none" and not any(x > 0 for x in lam):
            raise ConfigError(f"key 'regularizers': the entry {name!r} has no lam > 0, so it would train the "
                              f"unregularized baseline only; give its values (lam: [1.0e-4], or a ladder)")
        lr = number(e.get("lr"), float, "lr", positive=True, allow_none=True)
        alphas = [number(a, float, "alpha", positive=True) for a in as_list(e["alpha"])] if "alpha" in e else None
        cap = number(e.get("max_epochs"), int, "max_epochs", positive=True, allow_none=True)
        sizes = [number(n, int, "n_train", positive=True) for n in as_list(e["n_train"])] if "n_train" in e else None
        seeds = seed_list(e["seeds"], "seeds") if "seeds" in e else None
        pairs = pair_list(e["pairs"]) if "pairs" in e else None
        points = number(e.get("penalty_points"), int, "penalty_points", allow_none=True)
        if points is not None:
            if name not in regularizers.PATH_LENGTH:
                raise ConfigError(f"key 'penalty_points': the points per segment of a path-length penalty; entry "
                                  f"{name!r} has none (use it with {' or '.join(regularizers.PATH_LENGTH)})")
            if points < 2:
                raise ConfigError(f"key 'penalty_points': must be an integer >= 2, got {points!r}")
        out.append({"name": name, "lam": lam, "lr": lr, "alpha": alphas, "max_epochs": cap, "n_train": sizes,
                    "seeds": seeds, "pairs": pairs, "penalty_points": points})
    return out


def table2_lambdas(v) -> dict[str, float]:
    """The table2_lambdas key: 'paper' (the paper's lambda per regularizer, regularizers.PAPER_LAMBDAS), or a
    mapping {regularizer: lambda > 0}; absent or null: none."""
    if v is None:
        return {}
    if v == "paper":
        return dict(regularizers.PAPER_LAMBDAS)
    if not isinstance(v, dict) or not v:
        raise ConfigError(f"key 'table2_lambdas': expected 'paper' or a mapping such as {{gradient_norm: 1.0e-3}}, "
                          f"got {v!r}")
    out = {}
    for name, lam in v.items():
        try:
            regularizers.check(name)
        except ValueError as err:
            raise ConfigError(f"key 'table2_lambdas': {err}") from None
        if name == "none":
            raise ConfigError("key 'table2_lambdas': 'none' has no lambda")
        out[name] = number(lam, float, f"table2_lambdas.{name}", positive=True)
    return out


def flag(v, key: str) -> bool:
    """A true/false key."""
    if not isinstance(v, bool):
        raise ConfigError(f"key {key!r}: expected true or false, got {v!r}")
    return v


def optimizer_list(v):
    """The optimizer axis: one name or a list of them, each a known optimizer."""
    out = as_list(v)
    if not out:
        raise ConfigError("key 'optimizer': needs at least one value")
    for o in out:
        try:
            optimizers.check(o)
        except ValueError as err:
            raise ConfigError(f"key 'optimizer': {err}") from None
    return out


def ladder_mode(v) -> str:
    """The ladder key: 'staged' (rung by rung) or 'all'."""
    if v not in LADDER_MODES:
        raise ConfigError(f"key 'ladder': expected one of {', '.join(LADDER_MODES)}, got {v!r}")
    return v


def matmul_precision(v) -> str:
    """The matmul_precision key: fp32, tf32 or tf32-emulated."""
    try:
        return precision.check(v)
    except ValueError as e:
        raise ConfigError(f"key 'matmul_precision': {e}") from None


def model_list(v) -> list:
    """The model axis: one family spec or a list of them (models.canonical), each canonical (None: the MLP)."""
    specs = v if isinstance(v, list) else [v]
    if not specs:
        raise ConfigError("key 'model': needs at least one value")
    out = []
    for spec in specs:
        c = canonical(spec)
        if c not in out:
            out.append(c)
    return out


def loss_list(v) -> list[str]:
    """The loss axis: mse or cross_entropy (models/losses.py), one or a list."""
    out = []
    for x in as_list(v):
        try:
            out.append(losses.check(x))
        except ValueError as e:
            raise ConfigError(f"key 'loss': {e}") from None
    if not out:
        raise ConfigError("key 'loss': needs at least one value")
    return out

"""All the measures of one model in one call, each with its cost: the input-space smoothness measures (GN, GN^2,
FPL, GPL, the Lipschitz bracket) on the points, and, given targets, the loss and its curvature (sharpness, the
Hessian trace, the eigenvalue density). What `smoothness measure` prints for a checkpoint; a dict of Estimates."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from smoothness.measures import curvature, single, stream
from smoothness.measures import inputspace as ins

INPUT_SPACE = ("gradient_norm", "gradient_norm_squared", "path_lengths", "lipschitz")
CURVATURE = ("loss", "sharpness", "hessian_trace", "density")
DEFAULT = ("gradient_norm", "path_lengths", "lipschitz", "loss", "sharpness", "hessian_trace")
ALL = INPUT_SPACE + CURVATURE


@dataclass
class Settings:
    """The sampling of each measure (the paper's and this package's defaults)."""

    segments: int = ins.DEFAULT_SEGMENTS
    points: int = ins.DEFAULT_POINTS
    seed: int = 0
    output: int | str | None = None
    loss: str | None = None
    probes: int = curvature.DEFAULT_PROBES
    steps: int = curvature.DEFAULT_STEPS
    runs: int = curvature.DEFAULT_RUNS
    batch_size: int | None = None


@dataclass
class ModelMeasures:
    """values: {name: Estimate} ('fpl', 'gpl', 'lipschitz_lower', 'lipschitz_upper', 'sharpness', ...); seconds:
    {measure: wall seconds}; density: the curvature.Density when asked for."""

    values: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    density: curvature.Density | None = None

    def seconds_of(self, key: str) -> float:
        """The seconds of the measure that computed the value `key` (FPL and GPL share one pass, as do the two
        Lipschitz bounds); NaN if it was not timed."""
        return self.seconds.get(_MEASURE_OF.get(key, key), float("nan"))

    def record(self) -> dict:
        """A flat JSON-able record: each value, its '_se' and '_n' (and '_residual' of eigenvalues), and the
        seconds of each measure as 'seconds_<measure>'."""
        out = {}
        for k, v in self.values.items():
            d = v.as_dict()
            out[k] = d.pop("value")
            out.update({f"{k}_{name}": x for name, x in d.items()})
        out.update({f"seconds_{k}": round(s, 3) for k, s in self.seconds.items()})
        return out


_MEASURE_OF = {"fpl": "path_lengths", "gpl": "path_lengths", "lipschitz_lower": "lipschitz",
               "lipschitz_upper": "lipschitz", "density_trace": "density"}   # value key -> the measure giving it


def check(which) -> tuple[str, ...]:
    """The measures named, in ALL's order; a ValueError naming an unknown one."""
    which = tuple(which)
    bad = [w for w in which if w not in ALL]
    if bad:
        raise ValueError(f"unknown measure {', '.join(bad)}: choose from {', '.join(ALL)}")
    return tuple(w for w in ALL if w in which)


def measure_model(model, x, y=None, which=DEFAULT, settings: Settings | None = None, *, progress=None) -> ModelMeasures:
    """Measure `model` on the points x (a tensor or a DataLoader / iterable of batches; (x, y) batches carry the
    targets) and targets y: the measures in `which` (see ALL; the curvature ones need targets and are skipped
    without them), timed one by one."""
    s = settings or Settings()
    which = check(which)
    has_targets = y is not None or _batches_have_targets(x)
    out = ModelMeasures()

    def timed(name, fn):
        t = time.perf_counter()
        got = fn()
        out.seconds[name] = time.perf_counter() - t
        return got

    o = s.output
    for name in which:
        if name in CURVATURE and not has_targets:
            continue
        if name == "gradient_norm":
            out.values["gradient_norm"] = timed(name, lambda: single.gradient_norm(model, x, o, progress=progress))
        elif name == "gradient_norm_squared":
            out.values[name] = timed(name, lambda: single.gradient_norm_squared(model, x, o, progress=progress))
        elif name == "path_lengths":
            out.values.update(timed(name, lambda: single.path_lengths(model, x, s.segments, s.points, s.seed, o,
                                                                      progress=progress)))
        elif name == "lipschitz":
            lo, up = timed(name, lambda: single.lipschitz_bounds(model, x, single.scalar_output(model, x, o),
                                                                 progress=progress))
            out.values.update(lipschitz_lower=lo, lipschitz_upper=up)
        elif name == "loss":
            out.values["loss"] = timed(name, lambda: curvature.loss_value(model, x, y, s.loss,
                                                                          batch_size=s.batch_size))
        elif name == "sharpness":
            out.values["sharpness"] = timed(name, lambda: curvature.sharpness(
                model, x, y, s.loss, steps=s.steps, seed=s.seed, batch_size=s.batch_size, progress=progress))
        elif name == "hessian_trace":
            out.values["hessian_trace"] = timed(name, lambda: curvature.hessian_trace(
                model, x, y, s.loss, probes=s.probes, seed=s.seed, batch_size=s.batch_size, progress=progress))
        elif name == "density":
            out.density = timed(name, lambda: curvature.eigenvalue_density(
                model, x, y, s.loss, runs=s.runs, steps=s.steps, seed=s.seed, batch_size=s.batch_size,
                progress=progress))
            out.values["density_trace"] = out.density.trace()
    return out


def _batches_have_targets(data) -> bool:
    if not stream.is_stream(data):
        return False
    for _, y in stream.batches(data, with_targets=True):
        return y is not None
    return False

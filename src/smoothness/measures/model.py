"""All the measures of one model in one call, each with its cost: the registry's measures of a module (registry.py,
rows with `one`: the input-space smoothness measures GN, GN^2, FPL, GPL and the Lipschitz bracket on the points, the
weight norms, and, given targets, the curvature of the loss: sharpness, Hessian trace), and, given targets, the loss
and the eigenvalue density. What `smoothness measure` prints for a checkpoint; a dict of Estimates keyed by the
registry's keys.

Everything is checked before the first measure (plan, precheck): the data, the model's output on it, the targets
against the loss, the memory of the path lengths and of the Lanczos basis. A measure that does not apply to the
model or the data is left out (plan says which and why); a model with non-finite parameters gets NaN for every
measure, with one warning."""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import torch

from smoothness.errors import MeasureError
from smoothness.measures import checks, curvature, inputspace, losses, ofmodule, registry, single, spectrum, stream
from smoothness.models import MLPStack
from smoothness.runtime.values import counted


def _rows() -> dict[str, tuple]:
    """{choice: the registry rows it computes}, in registry order: every row with a computation for a module
    (Measure.one), but those that need the initial weights, which a checkpoint does not have."""
    out: dict[str, tuple] = {}
    for m in registry.REGISTRY:
        if m.one is not None and not m.from_init:
            c = m.choice or m.key
            out[c] = (*out.get(c, ()), m)
    return out


ROWS = _rows()
LOSS = ("loss", "density")   # measured here, not registry rows: the loss, and the Hessian's eigenvalue density
INPUT_SPACE = tuple(c for c, ms in ROWS.items() if ms[0].space == registry.INPUT)
WEIGHTS = tuple(c for c, ms in ROWS.items() if ms[0].space == registry.PARAMETER and not ms[0].targets)
CURVATURE = ("loss", *(c for c, ms in ROWS.items() if ms[0].targets), "density")   # need targets y
ALL = INPUT_SPACE + WEIGHTS + CURVATURE
DEFAULT = tuple(c for c in ALL if c == "loss" or (c in ROWS and ROWS[c][0].default))
# The names of version 0.1 of values that are now the registry's keys (ModelMeasures.values reads them, warning).
OLD_KEYS = {"fpl": "function_path_length", "gpl": "gradient_path_length"}


class Values(dict):
    """{key: Estimate}; an old key (OLD_KEYS) reads the value under its new key, with a DeprecationWarning."""

    def __missing__(self, key):
        if key in OLD_KEYS and OLD_KEYS[key] in self:
            warnings.warn(f"measure_model's value {key!r} is now {OLD_KEYS[key]!r} (the registry's key); the old "
                          "key goes in smoothness 0.3", DeprecationWarning, stacklevel=2)
            return self[OLD_KEYS[key]]
        raise KeyError(key)


@dataclass
class Settings:
    """The sampling of each measure (the paper's and this package's defaults)."""

    segments: int = inputspace.DEFAULT_SEGMENTS
    points: int = inputspace.DEFAULT_POINTS
    seed: int = 0
    output: int | str | None = None
    loss: str | None = None
    probes: int = curvature.DEFAULT_PROBES
    steps: int = curvature.DEFAULT_STEPS
    runs: int = curvature.DEFAULT_RUNS
    batch_size: int | None = None


@dataclass
class ModelMeasures:
    """values: {key: Estimate} ('gradient_norm', 'function_path_length', 'lipschitz_lower', 'sharpness', ...: the
    registry's keys; 'loss', 'density_trace'); seconds:
    {measure: wall seconds}; density: the curvature.Density when asked for; about: what was measured, in words
    ('output': the output of the input-space measures, 'lipschitz_output': that of the Lipschitz bracket,
    'loss': the loss of the curvature measures)."""

    values: dict = field(default_factory=Values)
    seconds: dict = field(default_factory=dict)
    density: curvature.Density | None = None
    about: dict = field(default_factory=dict)

    def seconds_of(self, key: str) -> float:
        """The seconds of the measure that computed the value `key` (FPL and GPL share one pass, as do the two
        Lipschitz bounds); NaN if it was not timed."""
        return self.seconds.get(_MEASURE_OF.get(key, key), float("nan"))

    def record(self) -> dict:
        """A flat JSON-able record: what was measured ('loss_function', 'output_measured', 'lipschitz_of'), each
        value with its '_error' in words (error_of) and, where it has them, '_se' and '_n' (an estimate's standard
        error and samples; an eigenvalue's '_n' Lanczos steps, '_residual' and '_bound'; a lower bound's '_n'
        points; an exact value has neither), and the seconds of each measure as 'seconds_<measure>'."""
        names = {"loss": "loss_function", "output": "output_measured", "lipschitz_output": "lipschitz_of"}
        out = {names[k]: v for k, v in self.about.items()}
        for k, v in self.values.items():
            d = v.as_dict()
            out[k] = d.pop("value")
            out[f"{k}_error"] = error_of(k, v)
            if not exact_or_missing(v):
                m = registry.BY_KEY.get(k)
                if (m is not None and m.bound) or isinstance(v, curvature.Eigenvalue):
                    d.pop("se")
                out.update({f"{k}_{name}": x for name, x in d.items()})
        out.update({f"seconds_{k}": round(s, 3) for k, s in self.seconds.items()})
        return out


def exact_or_missing(v) -> bool:
    """Whether the value v is exact (se 0 and no samples) or was not computed (NaN without samples)."""
    return v.n == 0 and (v.se == 0 or math.isnan(float(v)))


def error_of(key: str, v) -> str:
    """The error of the value `key` in words: a standard error over what, a Lanczos error bound, a bound, exact,
    or not computed."""
    if v.n == 0 and math.isnan(float(v)):
        return "not computed (see the warning)"
    if isinstance(v, curvature.Eigenvalue):
        if math.isnan(v.residual):
            return f"no error bound (power iteration, {v.n} steps)"
        return f"Lanczos error bound {v.bound:.2g} (residual {v.residual:.2g}, {v.n} steps)"
    m = registry.BY_KEY.get(key)
    if m is not None and m.bound:
        return m.bound.format(points=counted(v.n, "point"))
    if exact_or_missing(v):
        return "exact"
    samples = m.samples if m is not None else "Lanczos runs" if key == "density_trace" else "points"
    return f"standard error over {counted(v.n, samples.removesuffix('s'))}"


# value key -> the measure (choice) giving it
_MEASURE_OF = {**{m.key: c for c, ms in ROWS.items() for m in ms}, "density_trace": "density"}


def check(which) -> tuple[str, ...]:
    """The measures named, in ALL's order; a MeasureError naming an unknown one, or for none."""
    which = tuple(which)
    bad = [w for w in which if w not in ALL]
    if bad:
        raise MeasureError(f"unknown measure {', '.join(bad)}: choose from {', '.join(ALL)}")
    if not which:
        raise MeasureError(f"no measure named: choose from {', '.join(ALL)}")
    return tuple(w for w in ALL if w in which)


def plan(which, model, x, y=None) -> tuple[tuple[str, ...], list[str]]:
    """(the measures of `which` that apply to model and data, a line for each group left out): the loss and
    curvature measures without targets, or of a TorchScript module (it cannot take its parameters as inputs); the
    input-space measures of integer points (token ids: nothing to move along); the path lengths of fewer than 2
    points. A MeasureError if nothing is left."""
    which = check(which)
    first = next((b for b in stream.batches(x) if b.shape[0]), None)
    if first is None:
        raise MeasureError("the data holds no points")
    left, notes = list(which), []

    def drop(names, why):
        gone = [w for w in left if w in names]
        if gone:
            notes.append(why.format(", ".join(gone)))
            left[:] = [w for w in left if w not in gone]

    if y is None and not _batches_have_targets(x):
        drop(CURVATURE, "no targets y: the loss and curvature measures are skipped ({})")
    if not isinstance(model, (torch.nn.Module, MLPStack)):
        drop(CURVATURE + WEIGHTS, "a callable that is no nn.Module has no parameters: the measures of its weights, "
                                  "its loss and curvature are skipped ({})")
    if isinstance(model, torch.jit.ScriptModule):
        drop(CURVATURE, "a TorchScript module cannot take its parameters as inputs (torch.func): the curvature "
                        "measures are skipped ({}); save the model with torch.export or as a state dict for them")
    if not first.is_floating_point():
        drop(INPUT_SPACE, f"the points hold integers ({str(first.dtype).replace('torch.', '')}): the input-space "
                          "measures are skipped ({}), as they move along segments between points")
    if "path_lengths" in left and stream.count(x) < 2:
        drop(("path_lengths",), "one point: the path lengths are skipped, as their segments join pairs of points")
    if not left:
        raise MeasureError(f"nothing to measure: {'; '.join(notes)}")
    return tuple(left), notes


def precheck(model, x, y, which, settings: Settings | None = None) -> dict:
    """The checks of measure_model before any measure: the model's output on the first point (and for the
    Lipschitz bracket, one output or the margin), the targets against the loss, the memory of the path lengths and
    of the Lanczos basis. A MeasureError names the first problem. Returns ModelMeasures.about: the output and the
    loss measured, in words."""
    s = settings or Settings()
    about = {}
    if any(w in INPUT_SPACE for w in which):
        r = single.Reader(model, s.output)
        r.start(x)
        about["output"] = _output_words(s.output, r.ev.outputs)
        if "lipschitz" in which:
            k = r.ev.outputs if s.output is None else 1
            about["lipschitz_output"] = _output_words("margin" if k > 1 else s.output, k)
        if "path_lengths" in which:
            single.check_path_work(s.segments, s.points, r.example[0].numel(), r.ev.outputs, r.ev.dtype,
                                   r.ev.device)
    if any(w in CURVATURE for w in which):
        op = curvature.HessianOperator(curvature.module_of(model), x, y, s.loss, batch_size=s.batch_size)
        if "sharpness" in which or "density" in which:
            spectrum.prepare(op, min(s.steps, op.dim))
        else:
            op.check()
        about["loss"] = losses.describe(s.loss, op.loss_fn, op.one_hot)
    return about


def _output_words(output, outputs: int) -> str:
    """The output measured, in words."""
    if output == "margin":
        return "the margin (the largest output minus the runner-up)"
    if output is not None:
        return f"output {output}"
    if outputs == 1:
        return "the model's one output"
    return (f"all {outputs} outputs (the Frobenius norm of the Jacobian, the 2-norm of the outputs' change along "
            "segments)")


def _not_computed(which) -> ModelMeasures:
    """NaN for every measure of `which` (a model with non-finite parameters)."""
    out = ModelMeasures()
    for name in which:
        for key in [m.key for m in ROWS.get(name, ())] or (["density_trace"] if name == "density" else [name]):
            out.values[key] = curvature.Eigenvalue(math.nan, math.nan, 0) if key == "sharpness" else \
                checks.not_computed()
    return out


def measure_model(model, x, y=None, which=DEFAULT, settings: Settings | None = None, *, progress=None) -> ModelMeasures:
    """Measure `model` on the points x (a tensor or a DataLoader / iterable of batches; (x, y) batches carry the
    targets) and targets y: the measures in `which` (see ALL) that apply (plan: the curvature ones need targets and
    are skipped without them; the others skipped are named in a warning), timed one by one, after every check
    (precheck). A model with non-finite parameters: one warning, and NaN for every measure."""
    s = settings or Settings()
    stream.check_reiterable(x, "measure_model")
    x = stream.checked(x, "x")
    if y is not None:
        y = checks.values(stream.as_tensor(y), "y")
    which, notes = plan(which, model, x, y)
    for note in notes:
        if not note.startswith("no targets"):
            warnings.warn(note, stacklevel=2)
    if not checks.parameters_finite(model):
        return _not_computed(which)
    out = ModelMeasures(about=precheck(model, x, y, which, s))

    def timed(name, fn):
        t = time.perf_counter()
        got = fn()
        out.seconds[name] = time.perf_counter() - t
        return got

    ctx = ofmodule.ModuleContext(model, x, y, output=s.output, loss=s.loss, segments=s.segments, points=s.points,
                                 seed=s.seed, steps=s.steps, probes=s.probes, batch_size=s.batch_size,
                                 progress=progress)
    for name in which:
        if name == "loss":
            out.values["loss"] = timed(name, lambda: curvature.loss_value(model, x, y, s.loss,
                                                                          batch_size=s.batch_size))
        elif name == "density":
            out.density = timed(name, lambda: curvature.eigenvalue_density(
                model, x, y, s.loss, runs=s.runs, steps=s.steps, seed=s.seed, batch_size=s.batch_size,
                progress=progress))
            out.values["density_trace"] = out.density.trace()
        else:   # a registry row's measure (rows of one pass share their work through ctx)
            out.values.update(timed(name, lambda rows=ROWS[name]: {k: v for m in rows for k, v in m.one(ctx).items()}))
    return out


def _batches_have_targets(data) -> bool:
    if not stream.is_stream(data):
        return False
    for _, y in stream.batches(data, with_targets=True):
        return y is not None
    return False

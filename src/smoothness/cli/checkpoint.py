"""`smoothness measure` on a checkpoint of one's own: the model from a TorchScript file, a torch.export program
(.pt2), or a factory (package.module:function) and a state dict; the points (and targets) from an .npz or .pt file
holding x and, optionally, y. Every bad input gets one line naming the file, before any measure is computed: the
options and their products (LIMITS, PRODUCTS), the --density file, the files, the data (finite real numbers), the
model's output on it and the targets against the loss."""
from __future__ import annotations

import inspect
import json
import logging
import math
import os
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from smoothness.cli import console
from smoothness.errors import ConfigError, DataError, MeasureError, SmoothnessError, first_line
from smoothness.experiments.storage import modelfile
from smoothness.measures import checks, curvature
from smoothness.measures import model as measures_model
from smoothness.models.family import failure, load_callable
from smoothness.report import figures
from smoothness.runtime import devices, rng
from smoothness.runtime.values import counted


def _exists(path: str) -> Path:
    """path as a regular file; what it is otherwise (a folder, a pipe or a device is never opened)."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        raise DataError(f"{path}: is a folder, not a file")
    if p.exists():
        raise DataError(f"{path}: is not a regular file (a pipe, a device or a socket): save it to a file first")
    raise DataError(f"no such file: {path}")


def load_factory(spec: str):
    """The callable named by 'package.module:function' (models.family.load_callable: the current directory is
    importable, as with python -m), callable without arguments."""
    fn = load_callable(spec, "--factory")
    name = spec.partition(":")[2]
    try:
        needed = [p.name for p in inspect.signature(fn).parameters.values()
                  if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):   # a callable without a signature (a builtin): it is called and answers itself
        needed = []
    if needed:
        raise ConfigError(f"--factory {spec!r}: {name} takes the arguments {', '.join(needed)}, and the factory is "
                          "called with none: name a function without arguments that builds the module")
    return fn


def build(factory: str) -> nn.Module:
    """The module that the factory returns; its failure (an exception, sys.exit) is one line."""
    fn = load_factory(factory)
    try:
        model = fn()
    except (Exception, SystemExit) as e:
        raise ConfigError(f"--factory {factory!r} {failure(e)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--factory {factory!r} returned a value of type {type(model).__name__}, not an nn.Module")
    return model


def _intact(path: Path) -> None:
    """A DataError where path is a zip archive with a damaged member (modelfile.zip_damage): torch.load does not
    check the archive's CRCs, and would read flipped bits as valid numbers."""
    if why := modelfile.zip_damage(path):
        raise DataError(f"{path}: the file is corrupt: {why}")


def _state_dict(path: Path) -> dict:
    _intact(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # never PyTorch's advice to load arbitrary pickles
        raise DataError(f"{path}: not a state dict that loads safely ({type(e).__name__})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise DataError(f"{path}: expected a state dict (names -> tensors), or a dict holding one under "
                        "'state_dict' or 'model_state_dict'")
    return sd


class _Reasons(logging.Handler):
    """The first lines of the exceptions logged to it."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:   # its first sentence: PyTorch's advice follows
            self.lines.append(first_line(record.exc_info[1], 200).split(". ")[0])


def _program(p: Path):
    """torch.export.load(p); a file it cannot read is one DataError with the reason, which torch.export logs as a
    traceback on stderr (its logger is kept from stderr while it loads)."""
    log = logging.getLogger("torch.export")
    reasons, handlers = _Reasons(), log.handlers[:]
    log.handlers = [reasons]
    try:
        return torch.export.load(p)
    except Exception as e:
        why = reasons.lines[-1] if reasons.lines else f"{type(e).__name__}: {first_line(e, 200)}"
        raise DataError(f"{p}: not a torch.export program ({why}); a .pt2 file is read as one, so a TorchScript "
                        "file needs another name, such as .pt") from None
    finally:
        log.handlers = handlers


def load_model(path: str, factory: str | None, device: torch.device):
    """The model to measure, on the device and (where it has a mode) in eval mode; a second value says what it is."""
    p = _exists(path)
    if factory is not None:
        model = build(factory)
        try:
            model.load_state_dict(_state_dict(p))
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise DataError(f"{path}: the state dict does not fit {factory}: "
                            f"{' '.join(s.strip() for s in first[1:3]) or first[0]}") from None
        return model.to(device).eval(), f"{factory} with {p.name}"
    if not zipfile.is_zipfile(p):
        raise DataError(f"{path}: not a TorchScript or torch.export file (a zip archive); a state dict needs "
                        "--factory package.module:function")
    _intact(p)
    if p.suffix == ".pt2":
        return _program(p).module().to(device), f"torch.export program {p.name}"
    try:
        model = torch.jit.load(p, map_location=device)
    except Exception:
        raise DataError(f"{path}: not a TorchScript module; a .pt2 file is read as a torch.export program, and a "
                        "state dict needs --factory package.module:function") from None
    return model.eval(), f"TorchScript {p.name}"


def _array(v, what: str, path) -> torch.Tensor:
    try:
        t = torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {what} is not an array of numbers") from None
    if t.dtype == torch.bool or t.dim() == 0:
        raise DataError(f"{path}: {what} must be an array of numbers with one row per point")
    return t


def load_inputs(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x, y or None) from an .npz (arrays x, optional y) or a .pt file (a dict with x, optional y; a tuple (x, y);
    or a tensor x), each checked (dense real numbers, all finite: checks.values). Floating inputs are read as
    float32."""
    p = _exists(path)
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                got = {k: z[k] for k in z.files}
        except Exception as e:
            raise DataError(f"{path}: not a readable .npz file ({type(e).__name__})") from None
    elif p.suffix in (".pt", ".pth"):
        _intact(p)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise DataError(f"{path}: not a tensor file that loads safely ({type(e).__name__})") from None
        if torch.is_tensor(got):
            got = {"x": got}
        elif isinstance(got, (tuple, list)) and 1 <= len(got) <= 2:
            got = dict(zip(("x", "y"), got))
    else:
        raise DataError(f"{path}: the points come from an .npz or .pt file holding x (and optionally y)")
    if not isinstance(got, dict) or "x" not in got:
        raise DataError(f"{path}: no array named x (the points, one row per point)")
    x = _array(got["x"], "x", path)
    y = None if got.get("y") is None else _array(got["y"], "y", path)
    try:
        for t, what in ((x, "x"), (y, "y")):
            if t is not None:
                checks.values(t, what)
    except MeasureError as e:
        raise DataError(f"{path}: {e}") from None
    if x.is_floating_point():
        x = x.float()
    if y is not None and y.shape[0] != x.shape[0]:
        raise DataError(f"{path}: x holds {x.shape[0]} points and y {y.shape[0]} targets")
    if y is not None and y.is_floating_point():
        y = y.float()
    return x, y


def _output(v: str | None):
    if v is None or v == "margin":
        return v
    try:
        k = int(v)
    except ValueError:
        raise ConfigError(f"--output {v!r}: an output index (0, 1, ...) or margin") from None
    if k < 0:
        raise ConfigError(f"--output {v}: an output index must be >= 0")
    return k


LIMITS = {"segments": 10_000_000, "points": 100_000, "probes": 100_000, "steps": 100_000, "runs": 10_000,
          "batch_size": 10_000_000}   # refused before any work: beyond these a run would not end or not fit
# Products of two options that bound one measure's work, refused before any work as a grid's size is (the paper's
# values: 1,000 x 100 points along segments; the default density 4 x 100 Hessian-vector products).
PRODUCTS = (("path_lengths", "segments", "points", 100_000_000, "points along the segments"),
            ("density", "runs", "steps", 100_000, "Hessian-vector products"))


def _positive(a, *names) -> None:
    for name in names:
        v = getattr(a, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1; got {v}")
        if v is not None and v > LIMITS[name]:
            raise ConfigError(f"--{name.replace('_', '-')} {v} is beyond the {LIMITS[name]:,} this command accepts")


def _products(a, which) -> None:
    for measure, p, q, limit, what in PRODUCTS:
        got = getattr(a, p) * getattr(a, q)
        if measure in which and got > limit:
            raise ConfigError(f"--{p} {getattr(a, p):,} x --{q} {getattr(a, q):,} = {got:,} {what}, beyond the "
                              f"{limit:,} this command accepts for {measure}: lower one of them")


def _which(a) -> tuple[str, ...]:
    """The measures asked for by --measures (and --density)."""
    names = [w.strip() for w in a.measures.split(",") if w.strip()]
    if not names and a.density is None:
        raise ConfigError(f"--measures {a.measures!r}: name at least one of {', '.join(measures_model.ALL)}")
    try:
        return measures_model.check((*names, *(("density",) if a.density is not None else ())))
    except MeasureError as e:
        raise ConfigError(f"--measures: {e}") from None


def check_new_file(value: str, option: str, kind: str, example: str, suffix: str | None = None) -> Path:
    """The new file an output will be written to, checked before any work: a name (ending in suffix where one is
    given), in a writable folder, where no file is yet (an existing file is never replaced). kind says what the file
    is (`PNG file`), example names a file to suggest in a folder given instead."""
    if not value.strip():
        raise ConfigError(f"{option} '': name the {kind} to write to")
    p = Path(value)
    if value.endswith(("/", os.sep)) or p.is_dir():
        raise ConfigError(f"{option} {value}: is a folder; name a {kind} in it, e.g. {p / example}")
    if suffix and p.suffix.lower() != suffix:
        raise ConfigError(f"{option} {value}: the output is a {kind}; name a file ending in {suffix}")
    if p.exists() or p.is_symlink():
        raise ConfigError(f"{option} {value}: exists, and is never replaced; remove it or name another file")
    parent = p.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {value}: the folder {parent} "
                          f"{'is not a folder' if parent.exists() else 'does not exist'}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {value}: the folder {parent} is not writable")
    if why := modelfile.cannot_create(p):
        raise ConfigError(f"{option} {value}: cannot create it: {why}")
    return p


def check_new_png(value: str, option: str = "--density") -> Path:
    """The PNG file a figure will be drawn to (check_new_file)."""
    return check_new_file(value, option, "PNG file", "density.png", ".png")


def _draw(density, path: Path, loss: str | None, points: int) -> str | None:
    """Draw the density to path, labelled with the loss and the points; what went wrong (one line), or None."""
    if density is None:
        return "the model's parameters are not finite (see the warning above), so there is no density"
    try:
        if not figures.density_figure(density, path, loss=loss, points=points):
            return "the density is not finite (see the warning above), so there is nothing to draw"
    except FileExistsError:
        return "the file appeared while the measures ran, and is never replaced"
    except (OSError, RuntimeError, ValueError) as e:   # a full disk, a folder gone: the measures stand
        return f"cannot write it: {getattr(e, 'strerror', None) or first_line(e, 200)}"
    return None


def error_cell(key: str, v) -> str:
    """The error of a value for the table: ± the standard error or the Lanczos error bound, and what it is."""
    words = measures_model.error_of(key, v)
    if isinstance(v, curvature.Eigenvalue) and not math.isnan(v.residual) and not math.isnan(float(v)):
        return f"± {v.bound:.2g} Lanczos bound (residual {v.residual:.2g}, {v.n} steps)"
    if words.startswith("standard error"):
        if math.isnan(v.se):   # one sample: no spread to estimate the error from
            return f"no standard error ({words.removeprefix('standard error ')}: one sample has no spread)"
        return f"± {v.se:.3g} {words.replace('standard error', 'se')}"
    return words


def measure(a) -> int:
    """`smoothness measure PATH --inputs FILE`: measure one checkpoint of any kind, print the record. Every check
    comes before the first measure; a figure that cannot be written after them leaves the printed measures and
    one error line."""
    rng.check_seed(a.measure_seed, "--measure-seed")
    _positive(a, "segments", "points", "probes", "steps", "runs", "batch_size")
    which = _which(a)
    _products(a, which)
    density_png = None if a.density is None else check_new_png(a.density)
    output = _output(a.output)
    device = devices.resolve_device(a.device, allow_mps=True)
    x, y = load_inputs(a.inputs)
    model, what = load_model(a.path, a.factory, device)
    settings = measures_model.Settings(segments=a.segments, points=a.points, seed=a.measure_seed, output=output,
                                loss=a.loss, probes=a.probes, steps=a.steps, runs=a.runs, batch_size=a.batch_size)
    x, y = x.to(device), None if y is None else y.to(device)
    try:
        which, notes = measures_model.plan(which, model, x, y)
    except MeasureError as e:
        raise ConfigError(f"{a.inputs}: {e}") from None
    if density_png is not None and "density" not in which:
        raise ConfigError(f"--density {a.density}: cannot be drawn: "
                          f"{next((n for n in notes if 'density' in n), 'the density is not computed')}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            got = measures_model.measure_model(model, x, y, which, settings)
        for note in notes:   # after the checks of measure_model: an error there stays the one line
            print(f"smoothness: {note}", file=sys.stderr)
        for message in dict.fromkeys(str(w.message) for w in caught):   # each once, in order
            print(console.warning_line(message), file=sys.stderr)
    except (ValueError, TypeError, AssertionError) as e:   # the measures' own checks, one line each
        guard = e if isinstance(e, AssertionError) else e.__cause__   # the model's own failure on the first point
        if isinstance(guard, AssertionError) and "Guard failed" in str(guard):
            if "size()[0]" not in str(guard):   # a guard on a dimension other than the batch's
                raise ConfigError(f"{a.path}: the points' shape {list(x.shape[1:])} is not the one the torch.export "
                                  f"program was exported for ({first_line(guard)}); give points of that "
                                  "shape") from None
            raise ConfigError(f"{a.path}: the torch.export program holds only inputs of the shape it was exported "
                              f"with ({first_line(guard)}); export it with a dynamic batch dimension, e.g. "
                              "dynamic_shapes=({0: torch.export.Dim('batch')},)") from None
        if isinstance(e, AssertionError):
            raise
        raise ConfigError(f"{a.path}: {first_line(e)}") from None
    rec = {"model": what, "points": int(x.shape[0]), "input_shape": list(x.shape[1:]), **got.record()}
    failed = None if density_png is None else _draw(got.density, density_png, got.about.get("loss"), rec["points"])
    if density_png is not None and failed is None:
        rec["density_png"] = a.density
    if a.json:
        print(json.dumps(console.json_safe(rec), allow_nan=False), flush=True)
    else:
        print(f"{what}: {counted(rec['points'], 'point')} of shape {tuple(x.shape[1:])}")
        for key, words in (("output", "output measured"), ("lipschitz_output", "Lipschitz bracket of"),
                           ("loss", "loss")):
            if key in got.about:
                print(f"{words}: {got.about[key]}")
        rows = [[k, f"{float(v):.6g}", error_cell(k, v), f"{got.seconds_of(k):.2f}"] for k, v in got.values.items()]
        console.print_aligned(["measure", "value", "error", "seconds"], rows)
        if "density_png" in rec:
            print(f"density: {a.density}")
    if failed is not None:
        sys.stdout.flush()
        raise SmoothnessError(f"--density {a.density}: not drawn: {failed}; the measures above are complete")
    return 0


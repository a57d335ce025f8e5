"""`smoothness measure` on a checkpoint of one's own: the model from a TorchScript file, a torch.export program
(.pt2), or a factory (package.module:function) and a state dict; the points (and targets) from an .npz or .pt file
holding x and, optionally, y. Every bad input gets one line naming the file."""
from __future__ import annotations

import importlib
import json
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from smoothness.cli import console
from smoothness.errors import ConfigError, DataError
from smoothness.measures import model as measures_model
from smoothness.report import figures
from smoothness.runtime import devices, rng


def _exists(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"no such file: {path}")
    return p


def load_factory(spec: str):
    """The callable named by 'package.module:function' (the current directory is importable, as with python -m)."""
    mod, sep, name = spec.partition(":")
    if not sep or not mod or not name:
        raise ConfigError(f"--factory {spec!r}: write it as package.module:function")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise ConfigError(f"--factory {spec!r}: cannot import {mod}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"--factory {spec!r}: {mod} has no callable {name}")
    return fn


def _state_dict(path: Path) -> dict:
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


def load_model(path: str, factory: str | None, device: torch.device):
    """The model to measure, on the device and (where it has a mode) in eval mode; a second value says what it is."""
    p = _exists(path)
    if factory is not None:
        model = load_factory(factory)()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"--factory {factory!r} returned a {type(model).__name__}, not an nn.Module")
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
    if p.suffix == ".pt2":
        try:
            program = torch.export.load(p)
        except Exception as e:
            raise DataError(f"{path}: not a torch.export program ({type(e).__name__}: {e})") from None
        return program.module().to(device), f"torch.export program {p.name}"
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
    or a tensor x). Floating inputs are read as float32."""
    p = _exists(path)
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                got = {k: z[k] for k in z.files}
        except Exception as e:
            raise DataError(f"{path}: not a readable .npz file ({type(e).__name__})") from None
    elif p.suffix in (".pt", ".pth"):
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
    if x.is_floating_point():
        x = x.float()
    y = None if got.get("y") is None else _array(got["y"], "y", path)
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


def _positive(a, *names) -> None:
    for name in names:
        v = getattr(a, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1; got {v}")
        if v is not None and v > LIMITS[name]:
            raise ConfigError(f"--{name.replace('_', '-')} {v} is beyond the {LIMITS[name]:,} this command accepts")


def measure(a) -> int:
    """`smoothness measure PATH --inputs FILE`: measure one checkpoint of any kind, print the record."""
    rng.check_seed(a.measure_seed, "--measure-seed")
    _positive(a, "segments", "points", "probes", "steps", "runs", "batch_size")
    try:
        which = measures_model.check(w.strip() for w in a.measures.split(",") if w.strip())
    except ValueError as e:
        raise ConfigError(f"--measures: {e}") from None
    if a.density:
        which = measures_model.check((*which, "density"))
    output = _output(a.output)
    device = devices.resolve_device(a.device, allow_mps=True)
    x, y = load_inputs(a.inputs)
    model, what = load_model(a.path, a.factory, device)
    wants_curvature = any(w in measures_model.CURVATURE for w in which)
    if isinstance(model, torch.jit.ScriptModule) and y is not None and wants_curvature:
        print("smoothness: a TorchScript module cannot take its parameters as inputs (torch.func): the curvature "
              "measures are skipped; save the model with torch.export or as a state dict for them", file=sys.stderr)
        y = None
    elif y is None and wants_curvature:
        print(f"smoothness: {a.inputs} holds no targets y: the loss and curvature measures are skipped",
              file=sys.stderr)
    settings = measures_model.Settings(segments=a.segments, points=a.points, seed=a.measure_seed, output=output,
                                loss=a.loss, probes=a.probes, steps=a.steps, runs=a.runs, batch_size=a.batch_size)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            got = measures_model.measure_model(model, x.to(device), None if y is None else y.to(device), which,
                                               settings)
        for w in caught:
            print(f"smoothness: warning: {w.message}", file=sys.stderr)
    except (ValueError, TypeError) as e:   # the measures' own checks of the model and data, one line each
        raise ConfigError(f"{a.path}: {e}") from None
    except AssertionError as e:
        if "Guard failed" not in str(e):
            raise
        raise ConfigError(f"{a.path}: the torch.export program holds only inputs of the shape it was exported "
                          f"with ({e}); export it with a dynamic batch dimension, e.g. "
                          "dynamic_shapes=({0: torch.export.Dim('batch')},)") from None
    rec = {"model": what, "points": int(x.shape[0]), "input_shape": list(x.shape[1:]), **got.record()}
    if a.density and got.density is not None:
        figures.density_figure(got.density, Path(a.density))
        rec["density_png"] = a.density
    if a.json:
        print(json.dumps(console.json_safe(rec), allow_nan=False), flush=True)
        return 0
    print(f"{what}: {rec['points']} points of shape {tuple(x.shape[1:])}")
    rows = [[k, f"{float(v):.6g}", "" if v.se == 0 else f"{v.se:.3g}", str(v.n) if v.n else "exact",
             f"{got.seconds_of(k):.2f}"] for k, v in got.values.items()]
    console.print_aligned(["measure", "value", "± se", "n", "seconds"], rows)
    if a.density:
        print(f"density: {a.density}")
    return 0


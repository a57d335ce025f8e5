"""The model files of `smoothness train --save` and `smoothness measure`: writing them safely, and loading
them with torch.load(weights_only=True) into validated records, with one-line errors for anything else."""
from __future__ import annotations

import io
import os
import re
import warnings
import zipfile
import zlib
from pathlib import Path

import torch

from smoothness.data import images
from smoothness.errors import ConfigError, DataError, SmoothnessError, first_line
from smoothness.models import MLPStack
from smoothness.runtime.values import is_integer

SAVE_FORMAT = "smoothness-models/1"
_REQUIRED = {"data": str, "pair": list, "n_train": int, "seed": int, "hidden": list}
_OPTIONAL = {"alpha": float, "lr": float, "batch_size": int, "max_epochs": int, "threshold": float,
             "regularizer": str, "lam": float, "optimizer": str, "rho": float, "status": str, "epochs": int,
             "steps": int}


def check_save_path(path, overwrite: bool = False) -> Path:
    """The file to save to, checked before any training: a name is given, its folder exists and is writable, it
    is not a folder or another non-regular file, and an existing file is replaced only with overwrite=True.
    Raises ConfigError."""
    if path is None or not str(path).strip():
        raise ConfigError("--save: an empty file name; give one, e.g. --save models.pt")
    p = Path(path)
    if str(path).endswith(("/", os.sep)) or p.is_dir():
        raise ConfigError(f"--save {path}: is a folder; name a file in it, e.g. {p / 'models.pt'}")
    if p.exists() and not p.is_file():
        raise ConfigError(f"--save {path}: exists and is not a regular file")
    if p.exists() and not overwrite:
        raise ConfigError(f"--save {path}: the file exists; pass --overwrite to replace it, or choose another name")
    parent = p.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise ConfigError(f"--save {path}: the folder {parent} {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--save {path}: the folder {parent} is not writable")
    if why := cannot_create(part_file(p)):
        raise ConfigError(f"--save {path}: cannot create a file in {parent}: {why}")
    return p


def part_file(path: Path) -> Path:
    """The temporary file beside path that save_models writes before renaming it to path."""
    return path.with_name(f".{path.name}.part-{os.getpid()}")


def cannot_create(path: Path) -> str | None:
    """Why a new file cannot be created at path (the system's reason), or None; found by creating it empty and
    removing it again, as permissions alone do not tell (root, a read-only or special file system, a name too
    long). Only for a path where no file is."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return None   # there already: made by someone else meanwhile, which the writer handles
    except OSError as e:
        return os_reason(e)
    os.close(fd)
    path.unlink(missing_ok=True)
    return None


def save_models(path, records: list[dict], overwrite: bool = False) -> None:
    """Save trained models with their configs and results (torch.save; loadable with weights_only); an existing
    file is replaced only with overwrite=True (check_save_path).

    Serialized in memory, then written to a temporary file beside path, synced and renamed: path never holds a
    half-written file, the temporary file is removed on any failure, and a failure to write (a full disk) is one
    SmoothnessError with the system's reason."""
    path = check_save_path(path, overwrite)
    out = [{"meta": {k: v for k, v in r.items() if k != "params"}, "params": r["params"].state_dict()}
           for r in records]
    tmp = part_file(path)
    try:
        buf = io.BytesIO()
        torch.save({"format": SAVE_FORMAT, "models": out}, buf)
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        if not overwrite and path.exists():   # made by someone else while the models trained
            raise ConfigError(f"--save {path}: the file was created while the models trained; pass --overwrite "
                              "to replace it, or choose another name")
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, (OSError, RuntimeError)):
            why = os_reason(e) if isinstance(e, OSError) else first_line(e, 200)
            raise SmoothnessError(f"cannot write {path}: {why}") from None
        raise


def os_reason(e: OSError) -> str:
    """The system's reason for an OSError in lower case ("no space left on device"), or its message."""
    why = e.strerror or first_line(e, 200)
    return why[:1].lower() + why[1:]


def load_models(path) -> list[dict]:
    """Records saved by save_models, each with 'meta' (dict) and 'params' (MLPStack of one), validated:
    DataError (one line, naming the file) for anything that is not such a file."""
    return validate(_load(path), path)


def _load(path):
    p = Path(path)
    if not p.exists():
        raise DataError(f"no such file: {path}")
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if not head:
        raise DataError(f"{path} is not a smoothness model file: it is empty")
    if head != b"PK\x03\x04":   # torch.save writes a zip archive
        raise DataError(f"{path} is not a smoothness model file: not a PyTorch archive")
    if why := zip_damage(p):
        raise DataError(f"{path} is corrupt: {why}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # never PyTorch's text, which advises weights_only=False
        if not zipfile.is_zipfile(p):
            why = "a truncated or corrupt PyTorch archive"
        elif m := re.search(r"GLOBAL ([\w.]+)", str(e)):
            why = f"it holds a Python object of type {m.group(1)}, which safe loading refuses"
        elif "weights only" in str(e).lower() or "weights_only" in str(e):
            why = "it holds data other than tensors and plain values, which safe loading refuses"
        else:
            why = f"a corrupt PyTorch archive ({type(e).__name__})"
        raise DataError(f"{path} is not a smoothness model file: {why}") from None


def zip_damage(path, chunk: int = 1 << 20) -> str | None:
    """Why the zip archive at path is damaged, or None: the first member whose bytes do not match the CRC-32 that
    the archive records for it, or that cannot be read at all. torch.load does not check these, so a flipped bit
    in a tensor is otherwise read as a valid weight. A member recorded with CRC 0 (torch.save with compute_crc32
    off) cannot be checked and is passed; a file that is no zip archive is left to its loader (None)."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.CRC == 0:   # none recorded (or an empty member): nothing to check
                    continue
                try:
                    with z.open(info) as member:
                        while member.read(chunk):
                            pass
                except zipfile.BadZipFile as e:
                    return (f"the member {info.filename} does not match its CRC-32" if "CRC" in str(e)
                            else f"the member {info.filename} cannot be read ({first_line(e, 120)})")
                except (OSError, EOFError, ValueError, NotImplementedError, zlib.error) as e:
                    return f"the member {info.filename} cannot be read ({type(e).__name__}: {first_line(e, 120)})"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f"its zip directory cannot be read ({type(e).__name__}: {first_line(e, 120)})"
    return None


def _typed(v, t) -> bool:
    if isinstance(v, bool):
        return False
    if t is float:
        return isinstance(v, (int, float))
    if t is list:
        return isinstance(v, (list, tuple)) and all(is_integer(x) for x in v)
    return isinstance(v, t)


def _check_meta(meta, where: str) -> None:
    if not isinstance(meta, dict):
        raise DataError(f"{where}: 'meta' is a {type(meta).__name__}, not a dict")
    for k in _REQUIRED:
        if k not in meta:
            raise DataError(f"{where}: the record lacks '{k}'")
    for k, t in {**_REQUIRED, **_OPTIONAL}.items():
        if k in meta and not _typed(meta[k], t):
            want = "a list of integers" if t is list else {float: "a number"}.get(t, f"a {t.__name__}")
            raise DataError(f"{where}: '{k}' is {meta[k]!r}, expected {want}")
    if len(meta["pair"]) != 2:
        raise DataError(f"{where}: 'pair' is {meta['pair']!r}, expected two digits")
    if not images.is_source(meta["data"]):
        raise DataError(f"{where}: unknown data source {meta['data']!r}")


def _check_params(params, where: str, n_in: int = 784) -> MLPStack:
    if not isinstance(params, dict) or not all(isinstance(params.get(k), (list, tuple)) for k in ("weights", "biases")):
        raise DataError(f"{where}: 'params' is not a dict with lists 'weights' and 'biases'")
    ws, bs = list(params["weights"]), list(params["biases"])
    if len(ws) < 2 or len(ws) != len(bs):
        raise DataError(f"{where}: {len(ws)} weight and {len(bs)} bias tensors, expected as many of each, "
                        f"at least 2")
    for l, (w, b) in enumerate(zip(ws, bs)):
        for name, t, dims in (("weights", w, 3), ("biases", b, 2)):
            if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
                raise DataError(f"{where}: {name}[{l}] is a {type(t).__name__}, not a dense tensor")
            if t.dtype != torch.float32:
                raise DataError(f"{where}: {name}[{l}] has dtype {str(t.dtype).removeprefix('torch.')}, "
                                f"expected float32")
            if t.dim() != dims or t.shape[0] != 1:
                raise DataError(f"{where}: {name}[{l}] has shape {list(t.shape)}, expected "
                                f"[1, n_out{', n_in' if dims == 3 else ''}]")
        if w.shape[2] != n_in or b.shape[1] != w.shape[1]:
            raise DataError(f"{where}: layer {l} has weights {list(w.shape)} and biases {list(b.shape)}, "
                            f"expected [1, n_out, {n_in}] and [1, n_out]")
        n_in = w.shape[1]
    if n_in != 1:
        raise DataError(f"{where}: the last layer has {n_in} outputs, expected 1")
    return MLPStack(ws, bs)


def validate(blob, path) -> list[dict]:
    """The records of a loaded model file, checked: format, one dict per model with 'meta' (the config:
    data, pair, n_train, seed, hidden, ...) and 'params' (float32 weights [1, n_out, n_in] and biases
    [1, n_out] of a 784-...-1 network whose hidden widths match the meta). NaN weights are allowed."""
    if not isinstance(blob, dict) or blob.get("format") != SAVE_FORMAT:
        raise DataError(f"{path} is not a smoothness model file (expected format {SAVE_FORMAT})")
    models = blob.get("models")
    if not isinstance(models, (list, tuple)) or not models:
        raise DataError(f"{path}: 'models' is not a non-empty list")
    out = []
    for i, rec in enumerate(models):
        where = f"{path}: model {i + 1} of {len(models)}"
        if not isinstance(rec, dict) or "meta" not in rec or "params" not in rec:
            raise DataError(f"{where}: not a dict with 'meta' and 'params'")
        _check_meta(rec["meta"], where)
        p = _check_params(rec["params"], where, images.input_dim(rec["meta"]["data"]))
        if list(p.widths[1:-1]) != list(rec["meta"]["hidden"]):
            raise DataError(f"{where}: weights of widths {list(p.widths)} do not match the recorded hidden "
                            f"widths {list(rec['meta']['hidden'])}")
        out.append({"meta": rec["meta"], "params": p})
    return out

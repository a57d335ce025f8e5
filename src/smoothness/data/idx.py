"""The IDX file format of MNIST and Fashion-MNIST: reading, writing, checksums and download.

Checksums are MD5 digests of the *decompressed* files, so a re-gzipped copy (as Debian ships
Fashion-MNIST, or as some mirrors serve MNIST) still verifies.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import struct
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from smoothness.errors import DataError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# MD5 of the decompressed files of the official releases (MNIST: LeCun, Cortes & Burges;
# Fashion-MNIST: Xiao, Rasul & Vollgraf, 2017). The tests check them against genuine copies where those are found
# (tests/data/test_data.py: the MNIST test split in $SMOOTHNESS_MNIST_DIR, Debian's dataset-fashion-mnist).
CHECKSUMS = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}

_MAGIC = {2049: 1, 2051: 3}  # labels: 1 dimension; images: 3 dimensions (unsigned bytes)


def find_file(directory: Path, name: str) -> Path | None:
    """The file `name` or `name.gz` in directory (also the torchvision-style `name` with dots)."""
    for cand in (name, name + ".gz", name.replace("-idx", ".idx"), name.replace("-idx", ".idx") + ".gz"):
        p = directory / cand
        if p.is_file():
            return p
    return None


def read_bytes(path: Path) -> bytes:
    """The decompressed content of an IDX file, gzipped or not."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: corrupt or truncated file ({e})") from None


def parse(data: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """An IDX array of unsigned bytes: labels [n] or images [n, rows, cols]."""
    if len(data) < 8:
        raise DataError(f"{path}: not an IDX file (only {len(data)} bytes)")
    magic, n = struct.unpack(">II", data[:8])
    if magic not in _MAGIC:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (magic number {magic}, "
                        f"expected 2049 for labels or 2051 for images)")
    ndim = _MAGIC[magic]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: corrupt IDX file: {len(data)} bytes, shorter than the {header}-byte header of "
                        f"{'images' if ndim == 3 else 'labels'}")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    size = math.prod(dims)   # Python integers: no overflow for absurd dimensions
    if len(data) != header + size:
        raise DataError(f"{path}: corrupt IDX file: header announces {dims} "
                        f"({header + size} bytes) but the file has {len(data)} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def write(path: Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write uint8 labels [n] or images [n, r, c] as IDX (gzipped if path ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 2049 if array.ndim == 1 else 2051
    data = struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()
    compress = str(path).endswith(".gz") if compress is None else compress
    Path(path).write_bytes(gzip.compress(data, mtime=0) if compress else data)


def md5(data: bytes) -> str:
    """The hex MD5 digest of data."""
    return hashlib.md5(data).hexdigest()


def download(source: str, dest: Path, mirrors: list[str] | None = None,
             checksums: dict[str, str] | None = None, timeout: float = 60.0, log=print) -> Path:
    """Download the four IDX files of `source` into dest, verifying each against its checksum.

    A file already present and verified is kept. A file whose checksum does not match is
    rejected (never written to dest), and the next mirror is tried; if none delivers a verified
    file, DataError is raised.
    """
    if source not in CHECKSUMS and checksums is None:
        raise DataError(f"no download is defined for data source {source!r}; "
                        f"downloadable: {', '.join(sorted(CHECKSUMS))}")
    mirrors = mirrors or MIRRORS[source]
    checksums = checksums or CHECKSUMS[source]
    for m in mirrors:
        parts = urllib.parse.urlsplit(m)
        if parts.scheme not in ("http", "https", "file") or not (parts.netloc or parts.path.strip("/")):
            raise DataError(f"mirror {m!r} is not an http(s) or file URL (e.g. https://example.org/mnist/)")
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise DataError(f"{dest} is a file, not a folder: give --dir a folder for the IDX files")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the folder {dest} ({e.strerror or e})") from None
    for name in FILES.values():
        existing = find_file(dest, name)
        if existing is not None:
            try:
                ok = md5(read_bytes(existing)) == checksums[name]
            except DataError:
                ok = False
            if ok:
                log(f"{existing}: present, checksum ok")
                continue
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name + ".gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    raw = r.read()
            except (urllib.error.URLError, OSError) as e:
                errors.append(f"{url}: {getattr(e, 'reason', e)}")
                continue
            try:
                content = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
            except (OSError, EOFError, zlib.error) as e:
                errors.append(f"{url}: corrupt gzip data ({e})")
                continue
            digest = md5(content)
            if digest != checksums[name]:
                errors.append(f"{url}: checksum mismatch (md5 {digest}, expected {checksums[name]})")
                continue
            parse(content, url)
            target = dest / (name + ".gz" if raw[:2] == b"\x1f\x8b" else name)
            tmp = None
            try:
                fd, tmp = tempfile.mkstemp(dir=dest, prefix=".part-")
                with os.fdopen(fd, "wb") as fh:
                    fh.write(raw)
                    fh.flush()
                    os.fsync(fh.fileno())
                shutil.move(tmp, target)
            except OSError as e:
                if tmp is not None:
                    Path(tmp).unlink(missing_ok=True)
                raise DataError(f"cannot write {target} ({e.strerror or e}); the files downloaded before are "
                                "kept") from None
            log(f"{target}: downloaded from {url}, checksum ok")
            break
        else:
            raise DataError(f"could not download {name}: " + "; ".join(errors))
    return dest

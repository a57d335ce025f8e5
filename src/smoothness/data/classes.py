"""Classification tasks of the image sources (beyond the paper's binary regression): the images of k >= 2 classes
(all ten, or a subset such as a pair), each labelled by its class's position in the task's list of classes, for a
model with k outputs trained with cross-entropy or with the MSE against one-hot targets (models/losses.py).

Training subsets are balanced (n/k images of each class) and nested in n for a seed, drawn as the binary tasks'
(images.balanced_subset): a two-class task of digits a < b trains on the same images as the binary task of that
pair. Measures use up to 1,000 held-out points, the first n/k of each class in file order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from smoothness.data import images
from smoothness.errors import DataError
from smoothness.runtime import rng
from smoothness.runtime.values import is_integer

ALL = tuple(range(10))


def check_classes(classes) -> tuple[int, ...]:
    """The classes as a sorted tuple of k >= 2 different classes 0..9 ('all': the ten); a DataError otherwise."""
    if classes == "all":
        return ALL
    try:
        given = [] if isinstance(classes, (str, bytes)) else list(classes)
    except TypeError:
        given = []
    if not given or not all(is_integer(c) for c in given):
        # 0.7 or True is not a class, though int() would make one
        raise DataError(f"classes: expected 'all' or a list of classes 0..9, got {classes!r}")
    out = tuple(int(c) for c in given)
    if len(out) < 2 or len(set(out)) != len(out) or not all(0 <= c <= 9 for c in out) or list(out) != sorted(out):
        raise DataError(f"classes: expected two or more different classes 0..9 in increasing order, got {list(out)}")
    return out


@dataclass
class ClassTask:
    """A k-class classification problem: training pool and held-out points of the classes, labels 0..k-1 (floats)."""

    source: str
    classes: tuple[int, ...]
    pool_x: torch.Tensor      # [P, 784] float32 in [0, 1]
    pool_y: torch.Tensor      # [P] float32 class positions 0..k-1
    heldout_x: torch.Tensor
    heldout_y: torch.Tensor

    @property
    def pair(self) -> tuple[int, ...]:
        return self.classes

    def subset(self, n: int, seed: int) -> torch.Tensor:
        """Indices into the pool of the balanced training set of size n (n/k per class; nested across n)."""
        k = len(self.classes)
        if n < k or n % k:
            raise DataError(f"training size must be a multiple of the {k} classes (balanced), got {n}")
        out = []
        for cls in range(k):
            members = torch.nonzero(self.pool_y == cls).reshape(-1)
            if members.numel() < n // k:
                raise DataError(f"training size {n} needs {n // k} images per class, but the {self.source} pool holds "
                                f"{members.numel()} of class {self.classes[cls]}")
            order = rng.permutation_keys(torch.tensor([members.numel()]), members.numel(), int(seed),
                                         rng.STREAM_SUBSET, cls)[0]
            out.append(members[order[: n // k]])
        return torch.cat(out)

    def _prefix(self, y: torch.Tensor, n: int) -> torch.Tensor:
        k = len(self.classes)
        parts = [torch.nonzero(y == c).reshape(-1)[: max(1, n // k)] for c in range(k)]
        return torch.sort(torch.cat(parts)).values

    def measure_points(self, n: int = images.DEFAULT_MEASURE_POINTS) -> torch.Tensor:
        """Up to n held-out points, balanced: the first n/k of each class in file order."""
        return self.heldout_x[self._prefix(self.heldout_y, n)]

    def train_points(self, train_idx: torch.Tensor, n: int) -> torch.Tensor:
        """Up to n points of the training set train_idx, balanced as above."""
        return self.pool_x[train_idx[self._prefix(self.pool_y[train_idx], n)]]


def class_task(source: str, classes, data_dir=None) -> ClassTask:
    """The classification task of these classes of an image source (pixels scaled to [0, 1])."""
    classes = check_classes(classes)
    s = images.load_source(source, data_dir)
    pos = np.full(10, -1, np.int64)
    pos[list(classes)] = np.arange(len(classes))

    def split(imgs, labels):
        keep = np.flatnonzero(pos[labels] >= 0)
        return (torch.from_numpy(imgs[keep].astype(np.float32) / 255.0),
                torch.from_numpy(pos[labels[keep]].astype(np.float32)))

    px, py = split(s.train_images, s.train_labels)
    hx, hy = split(s.test_images, s.test_labels)
    for name, y in (("training pool", py), ("held-out set", hy)):
        for i, c in enumerate(classes):
            if int((y == i).sum()) == 0:
                raise DataError(f"{source}: the {name} has no images of class {c}")
    return ClassTask(source, classes, px, py, hx, hy)

"""The points a measure reads, from whatever holds them: a tensor or NumPy array [n, ...], a torch DataLoader, or any
iterable of batches (a batch is a tensor of inputs, or a tuple/list/dict whose first element, or its 'x', 'input' or
'inputs' entry, is the inputs; the rest, such as labels, is ignored or, for the loss-based measures, read as targets).
A list of tensors or arrays is a list of batches; a list of numbers, or of lists of numbers, is an array. Every
batch is checked as it is read (checks.values: dense real numbers, all finite).

A measure over streamed data holds one batch at a time (small ones read together: joined): sums over points are
accumulated batch by batch, and the
segments of the path lengths, drawn by index from the whole set (the count comes first, from one pass), have their
end points gathered in a second pass (2 x segments points, whatever the size of the data). So a DataLoader gives
the same values as the tensor of all its points, in its order (tested); a loader that shuffles gives other segments
each time it is read, so pass one that does not.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from smoothness.errors import MeasureError, MeasureTypeError
from smoothness.measures import checks

_X_KEYS = ("x", "input", "inputs")
_Y_KEYS = ("y", "target", "targets", "label", "labels")
JOIN_ELEMENTS = 2 ** 18   # joined(): consecutive small batches read together up to this many input numbers (1 MiB)


def as_tensor(a) -> torch.Tensor:
    """a as a tensor (a tensor as it is; an array or nested list of numbers converted)."""
    if torch.is_tensor(a):
        return a
    arr = np.asarray(a)
    if arr.dtype == object:
        raise MeasureTypeError(f"cannot read points from an array of Python objects (dtype object, shape "
                               f"{arr.shape}): pass a tensor, an array of numbers, or a DataLoader / iterable of "
                               "batches")
    return torch.as_tensor(arr)


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(inputs, targets or None) of one batch (see the module docstring)."""
    if isinstance(batch, dict):
        x = next((batch[k] for k in _X_KEYS if k in batch), None)
        if x is None:
            raise MeasureTypeError(f"a batch given as a mapping needs one of the keys {', '.join(_X_KEYS)}; got "
                                   f"{', '.join(map(str, batch))}")
        y = next((batch[k] for k in _Y_KEYS if k in batch), None)
        return as_tensor(x), None if y is None else as_tensor(y)
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise MeasureTypeError("an empty batch")
        return as_tensor(batch[0]), as_tensor(batch[1]) if len(batch) > 1 else None
    return as_tensor(batch), None


def is_stream(data) -> bool:
    """Whether data is read batch by batch (a DataLoader or another iterable that is not an array of points)."""
    if torch.is_tensor(data) or isinstance(data, np.ndarray):
        return False
    if isinstance(data, (list, tuple)):   # a list of numbers or of points is an array; a list of batches is not
        if any(_holds_tensors(b) for b in data):
            return True
        try:
            np.asarray(data, dtype=np.float64)
            return False
        except (ValueError, TypeError):
            return True
    return isinstance(data, Iterable)


def _holds_tensors(b) -> bool:
    """Whether b, an element of a list, is a batch: a tensor, an array, a mapping, or a tuple/list holding one."""
    if torch.is_tensor(b) or isinstance(b, (np.ndarray, dict)):
        return True
    return isinstance(b, (tuple, list)) and any(torch.is_tensor(v) or isinstance(v, np.ndarray) for v in b)


def checked(data, what: str = "the points"):
    """data for a measure: an array of points as a tensor, checked at once (checks.values); a stream as it is, its
    batches checked as they are read."""
    if is_stream(data):
        return data
    return checks.values(as_tensor(data), what)


def batches(data, with_targets: bool = False):
    """Yield the inputs of each batch (or (inputs, targets) with with_targets); an array of points is one batch.
    The batches of a stream are checked (checks.values) as they are read."""
    if not is_stream(data):
        x = as_tensor(data)
        yield (x, None) if with_targets else x
        return
    for i, batch in enumerate(data):
        x, y = split_batch(batch)
        checks.values(x, f"batch {i}'s points")
        if y is not None and with_targets:
            checks.values(y, f"batch {i}'s targets")
        yield (x, y) if with_targets else x


def joined(pairs, max_points: int | None = None, elements: int = JOIN_ELEMENTS):
    """Consecutive (x, y) batches (y may be None) read together: yields (x, y, k), the concatenation of k batches
    holding at most max_points points (default: as many as hold `elements` input numbers, from the first batch's
    points), a batch larger than that on its own; batches of other shapes or dtypes are never joined. Each
    product, forward or backward pass over a batch costs a fixed overhead besides its points, which small batches
    pay many times over; the measures' sums over points are the same over the batches read together (up to float
    rounding)."""
    held, n, cap = [], 0, max_points
    for x, y in pairs:
        if cap is None:
            cap = max(1, elements // max(1, x[0].numel())) if x.shape[0] else None
        if held and (n + x.shape[0] > (cap or 0) or not _alike(held[-1], (x, y))):
            yield _cat(held)
            held, n = [], 0
        held.append((x, y))
        n += x.shape[0]
    if held:
        yield _cat(held)


def _alike(a, b) -> bool:
    """Whether two (x, y) batches can be read as one: the same points' and targets' shapes, dtypes and devices."""
    return all((u is None and v is None) or (u is not None and v is not None and u.shape[1:] == v.shape[1:]
                                             and u.dtype == v.dtype and u.device == v.device) for u, v in zip(a, b))


def _cat(held):
    if len(held) == 1:
        return held[0][0], held[0][1], 1
    xs, ys = zip(*held)
    return torch.cat(xs), None if ys[0] is None else torch.cat(ys), len(held)


def check_reiterable(data, what: str) -> None:
    """A MeasureTypeError if data is a one-shot iterator (a generator): `what` reads the data more than once."""
    if is_stream(data) and iter(data) is data:
        raise MeasureTypeError(f"{what} reads the data more than once, and a generator or iterator can be read only "
                               "once: pass a DataLoader, a list of batches or a tensor")


def count(data) -> int:
    """The number of points: a tensor's rows, a DataLoader's (from its sampler, when it batches automatically and
    keeps the last partial batch), else by one pass over the data."""
    if not is_stream(data):
        return int(as_tensor(data).shape[0])
    sampler = getattr(data, "sampler", None)
    if (getattr(data, "batch_size", None) is not None and getattr(data, "drop_last", True) is False
            and hasattr(sampler, "__len__")):
        return len(sampler)
    return sum(int(x.shape[0]) for x in batches(data))


def gather(data, index: torch.Tensor) -> torch.Tensor:
    """The points at the given positions (in the order of `index`), in one pass over the data: memory for
    len(index) points and one batch."""
    index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
    if not is_stream(data):
        return as_tensor(data)[index]
    out, start = None, 0
    for x in batches(data):
        stop = start + x.shape[0]
        hit = (index >= start) & (index < stop)
        if bool(hit.any()):
            if out is None:
                out = x.new_empty((len(index), *x.shape[1:]))
            out[hit] = x[index[hit] - start]
        start = stop
    if out is None or start <= int(index.max()):
        raise MeasureError(f"the data holds {start} points; index {int(index.max())} is past its end")
    return out

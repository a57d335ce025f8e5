"""Checks of plain values shared by every layer."""
from __future__ import annotations

import numbers


def is_integer(v) -> bool:
    """Whether v is an integer: an int or a NumPy integer, not a bool (True is no count, seed or size, and 2.5 is
    no integer, though int() would make one of either)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)

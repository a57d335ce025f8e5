"""Plain values shared by every layer: the integer check, and a count in words."""
from __future__ import annotations

import numbers


def is_integer(v) -> bool:
    """Whether v is an integer: an int or a NumPy integer, not a bool (True is no count, seed or size, and 2.5 is
    no integer, though int() would make one of either)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def counted(n: int, noun: str) -> str:
    """'1 model', '3 models', '1,000 points': n with the noun (singular, with a plain -s plural) in its number."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"

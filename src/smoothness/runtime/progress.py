"""The progress bar of a long measurement: a tqdm bar on stderr that appears only once the work has taken more than
a few seconds (DELAY), so quick calls print nothing.

progress=None (the default of the measures): a bar when stderr is a terminal; True: always; False: never; a
callable: called with the number of units done since the last call, instead of a bar.
"""
from __future__ import annotations

import sys

DELAY = 2.0   # seconds before a bar appears


class Bar:
    """bar.update(k) after k more units; bar.close() at the end (also as a context manager)."""

    def __init__(self, total: int | None, desc: str, unit: str, progress=None):
        self._call = progress if callable(progress) else None
        self._bar = None
        if self._call is None and progress is not False:
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, delay=DELAY, leave=False,
                             disable=None if progress is None else False, dynamic_ncols=True)

    def update(self, k: int = 1) -> None:
        """k more units done."""
        if self._call is not None:
            self._call(k)
        elif self._bar is not None:
            self._bar.update(k)

    def close(self) -> None:
        """Remove the bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

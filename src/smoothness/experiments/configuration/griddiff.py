"""One grid or another: whether a grid definition stored in a results store (Grid.to_dict(), of this or an earlier
version) is the grid a run is given, compared field by field (the store's claim uses it, storage/claim.py)."""
from __future__ import annotations

from smoothness.data import lines
from smoothness.errors import ConfigError, DataError
from smoothness.experiments.configuration import grid

NEUTRAL = ("name", "description", "table2_lambdas")   # fields of a grid definition that change no model


def _definition(d: dict) -> tuple[dict, bool]:
    """A grid definition (Grid.to_dict(), as stored by this or an earlier version) as this version writes it,
    without the NEUTRAL fields; and whether it could be read as a grid (else the stored dict as it is)."""
    raw = {k: v for k, v in d.items() if k not in NEUTRAL}
    data = raw.get("data")
    if isinstance(data, str) and lines.is_line(data):
        raw.pop("pairs", None)   # a 1-D task's grid is stored with its stand-in pair, which a grid file may not give
    if raw.get("classes"):
        raw.pop("pairs", None)   # so is a classification task's (classes and pairs exclude each other in a grid file)
    if isinstance(raw.get("regularizers"), list):   # an entry's unset keys are stored as None
        raw["regularizers"] = [{k: v for k, v in r.items() if v is not None} if isinstance(r, dict) else r
                               for r in raw["regularizers"]]
    try:
        g = grid.parse(raw, name="grid")
    except (ConfigError, DataError, TypeError, ValueError):
        return raw, False
    return {k: v for k, v in g.to_dict().items() if k not in NEUTRAL}, True


def differences(stored: dict, g: grid.Grid) -> list[str]:
    """The fields in which a grid definition stored in a results store (Grid.to_dict() of this or an earlier
    version) differs from grid g; [] for the same grid. Fields that change no model (NEUTRAL: name,
    description, table2_lambdas) are not compared; a stored definition that cannot be read as a grid any more is
    compared on the fields it has."""
    old, readable = _definition(stored if isinstance(stored, dict) else {})
    new, _ = _definition(g.to_dict())
    keys = new.keys() | old.keys() if readable else new.keys() & old.keys()
    return sorted(k for k in keys if old.get(k) != new.get(k))

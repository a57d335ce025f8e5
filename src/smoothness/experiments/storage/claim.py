"""Which grid a results store belongs to: the grid recorded in its meta and the process that claimed it (its
owner), and the check that keeps one grid's models out of another grid's store (unless merged)."""
from __future__ import annotations

import os

from smoothness.errors import ConfigError
from smoothness.experiments.configuration.grid import Grid
from smoothness.experiments.configuration.griddiff import differences
from smoothness.experiments.storage.store import Store
from smoothness.experiments.storage.storefile import model_count


def other_grid(store: Store, grid: Grid) -> tuple[str, list[str]] | None:
    """The grid the store was made for, if that is not `grid` and the store holds models or a run of that grid may
    be writing to it now (its owner, see claim_store): (its name, the fields in which a grid of the same name is
    defined otherwise (griddiff.differences); [] for another name)."""
    held = store.meta("grid") or {}
    name = held.get("name") if isinstance(held, dict) else None
    if not name:
        return None
    diff = [] if name != grid.name else differences(held, grid)
    if name == grid.name and not diff:
        return None
    return (name, diff) if model_count(store.db) or owner_alive(store.meta("owner")) else None


def other_note(other: tuple[str, list[str]]) -> str:
    """The store's own grid in words, for a refusal: grid 'NAME', or grid 'NAME' of another definition."""
    name, diff = other
    return f"grid '{name}'" + (f" defined otherwise (its {', '.join(diff)} differ{'s' if len(diff) == 1 else ''})"
                               if diff else "")


def owner_alive(owner) -> bool:
    """Whether the process that claimed a store (meta 'owner': host and pid) may still run: on this host, whether
    the pid exists; on another host it cannot be told, so yes."""
    import socket
    if not isinstance(owner, dict) or "pid" not in owner:
        return False
    if owner.get("host") != socket.gethostname():
        return True
    pid = owner["pid"]
    if pid == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, ValueError, TypeError):
        return True
    return True


def claim_store(store: Store, grid: Grid, merge: bool) -> None:
    """Record the grid (and this process as the store's owner) in the store's meta, in one transaction with the
    check: a store that holds another grid's models (another name, or the same name defined otherwise: see
    griddiff.differences), or that another grid's run claimed and may be writing to now, is refused unless merge. Two
    runs of different grids started at the same moment into one --out cannot both pass the check. With merge the
    store keeps its own grid, and this one is listed beside it under 'merged'."""
    import socket
    with store.transaction():
        other = other_grid(store, grid)
        if other is not None and not merge:
            n = model_count(store.db)
            busy = "" if n else ", being written by a run that is still going"
            raise ConfigError(f"{store.path} holds {other_note(other)} ({n} models{busy}); grid '{grid.name}' would "
                              "mix its models into it: choose another --out, or pass --merge to add them to this "
                              "store")
        if other is None:
            store.set_meta("grid", grid.to_dict())
        else:   # the store keeps its own grid; the grids merged into it are listed beside it
            merged = store.meta("merged", []) or []
            store.set_meta("merged", [g for g in merged if not isinstance(g, dict) or g.get("name") != grid.name
                                      or differences(g, grid)] + [grid.to_dict()])
        store.set_meta("owner", {"host": socket.gethostname(), "pid": os.getpid(), "grid": grid.name})

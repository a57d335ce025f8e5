"""λ ladders trained rung by rung: the models of a rung are trained only when the rung below reached the loss
threshold, so that a ladder stops at its edge instead of training every λ above it to the epoch cap.

The paper's Table 2 needs, per regularizer and setting, the largest λ at which at least half of the models
still reach the threshold (sec. 4.3; analysis._largest_lambda) and, to know it is the largest, one failing λ
above it. Models above the first failing rung add nothing to that answer, yet each costs the full epoch cap:
on a CPU they dominate a ladder's cost. A grid with `ladder: staged` (the default) therefore trains in waves:
wave 0 holds every model outside a ladder and the lowest rung of each ladder; each later wave holds the next
rung of every ladder whose rungs so far all passed. This assumes what the paper's rule assumes, that a λ above
a failing one does not pass again. `ladder: all` trains every rung at once (on a large GPU the critical path,
not the work, may be what counts).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

MODES = ("staged", "all")


def group_of(c) -> tuple | None:
    """The ladder a RunConfig belongs to: every field but lam, pair and the seeds (the models pooled by the edge
    rule); None for an unregularized model (lam = 0), which is never staged."""
    if c.regularizer == "none":
        return None
    d = asdict(c)
    for k in ("lam", "pair", "seed", "train_seed"):
        del d[k]
    return tuple(sorted((k, _hashable(v)) for k, v in d.items()))


def _hashable(v):
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return tuple(v) if isinstance(v, (list, tuple)) else v


def has_ladder(regularizers: list[dict]) -> bool:
    """Whether a grid's regularizer entries (grid.Grid.regularizers) hold a ladder: an entry with more than one
    lambda > 0, whose upper rungs staging may skip."""
    return any(sum(x > 0 for x in r["lam"]) > 1 for r in regularizers)


def passed(converged: int, total: int) -> bool:
    """The edge rule (paper sec. 4.3; also analysis._largest_lambda): at least half of the models reached the
    loss threshold."""
    return total > 0 and 2 * converged >= total


@dataclass
class Wave:
    """One wave of a grid: the keys to train now, those never to train (above an edge), how many wait."""
    train: list[str]     # keys to train now
    skipped: list[str]   # keys never to train: rungs above a failing rung of their ladder
    waiting: int         # keys whose rung below is not finished yet


def next_wave(configs: dict, status: dict[str, str], mode: str = "staged") -> Wave:
    """What to train next. configs: key -> RunConfig of every model of the grid; status: key -> status of the
    models the store holds. Keys in `status` are neither trained nor skipped."""
    todo = [k for k in configs if k not in status]
    if mode == "all":
        return Wave(todo, [], 0)
    ladders: dict[tuple, dict[float, list[str]]] = {}
    train = []
    for k, c in configs.items():
        g = group_of(c)
        if g is not None:
            ladders.setdefault(g, {}).setdefault(c.lam, []).append(k)
        elif k not in status:
            train.append(k)
    skipped, waiting = [], 0
    for rungs in ladders.values():
        below_done = True     # every rung below this one is finished and passed
        for lam in sorted(rungs):
            keys = rungs[lam]
            open_ = [k for k in keys if k not in status]
            if below_done:
                train += open_
                done = not open_
                below_done = done and passed(sum(status[k] == "converged" for k in keys), len(keys))
                if done and not below_done:   # this rung failed: everything above it is skipped
                    skipped += [k for lam2 in sorted(rungs) if lam2 > lam for k in rungs[lam2] if k not in status]
                    break
                if not done:
                    waiting += sum(k not in status for lam2 in rungs if lam2 > lam for k in rungs[lam2])
                    break
    order = {k: i for i, k in enumerate(configs)}
    return Wave(sorted(train, key=order.get), sorted(skipped, key=order.get), waiting)

"""What the `train` and `measure` commands print: one model in full, several as a table with Kendall's tau,
JSON lines, and the epoch progress bar."""
from __future__ import annotations

import json
import math
import os
import sys
import warnings
from contextlib import contextmanager

from smoothness.data import lines
from smoothness.measures import oned, registry
from smoothness.runtime.values import counted

MEASURE_KEYS = registry.keys(paper=True)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def json_safe(v):
    """v with every number that is missing or not finite (NaN, ±inf: a value that could not be computed) as None,
    JSON's null, at any depth; NumPy scalars as Python numbers. `train --json` and `measure --json` write their
    records through it, so that neither ever writes the bare NaN, which is not JSON."""
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if hasattr(v, "item") and getattr(v, "ndim", None) == 0:   # a NumPy or PyTorch scalar
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def emit_record(rec: dict, as_json: bool) -> None:
    """Print one model's record: in full as text, or as one JSON line (json_safe: a missing value is null)."""
    shown = {k: v for k, v in rec.items() if k != "params"}
    if as_json:
        print(json.dumps(json_safe(shown), allow_nan=False), flush=True)
        return
    pair = lines.pair_label(rec["data"], rec["pair"], " pair {a} {b}")
    head = f"{rec['data']}{pair}, n_train {rec['n_train']}, seed {rec['seed']}: {rec.get('status', 'no status')}"
    if "epochs" in rec:
        took = [f"{rec['steps']} steps" if "steps" in rec else None,   # measure: no training time
                f"{rec['train_seconds']:.1f} s" if rec.get("train_seconds") is not None else None]
        took = ", ".join(t for t in took if t)
        head += f" after {rec['epochs']} epochs" + (f" ({took})" if took else "")
    print(head)
    keys = ["loss_train", "loss_test", *MEASURE_KEYS,
            *(c for m in registry.REGISTRY if m.key not in MEASURE_KEYS for c in registry.columns(m)),
            *(k + "_train" for k in registry.keys(paper=True, sampled=True)),
            *oned.EXACT.values(), *oned.THROUGH.values(), *oned.SMALLEST.values(),
            "min_" + oned.LOWER, "min_through_" + oned.LOWER]
    for k in keys:
        if k in rec and not (k.endswith("_se") and registry.on_points(k[:-3], "") in rec):
            se = rec.get(f"{k[:-len('_train')]}_train_se" if k.endswith("_train") else f"{k}_se")
            print(f"  {k:<28} {_fmt(rec[k])}" + (f" ± {se:.2g}" if se is not None and se == se else ""))


TABLE_COLUMNS = (("lam", "lambda"), ("n_train", "N"), ("seed", "seed"), ("status", "status"), ("epochs", "epochs"),
                 ("loss_test", "test loss"), *registry.shorts(paper=True).items())


def print_aligned(heads: list[str], rows: list[list[str]]) -> None:
    """Columns of text right-aligned under their heads."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]
    print("  ".join(h.rjust(w) for h, w in zip(heads, widths)))
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def print_table(records: list[dict]) -> None:
    """One row per model, then Kendall's tau between N and each measure per (lambda, seed), converged only."""
    from scipy.stats import kendalltau

    reg = records[0]["regularizer"]
    present = {m.key: any(_finite(r.get(m.key)) for r in records) for m in registry.REGISTRY}

    def column(k, h):   # a measure without values (WP of a deeper net) gives its place to its stand-in (PN)
        if k not in registry.BY_KEY or registry.shown(k, present):
            return k, h
        s = next((s for s in registry.stand_ins(k) if registry.shown(s, present)), None)
        return (s, registry.get(s).short) if s else (k, h)
    table = [column(k, h) for k, h in TABLE_COLUMNS]
    cols = [c for c in table if reg != "none" or c[0] != "lam"]
    rows = [[_fmt(r[k]) for k, _ in cols] for r in records]
    heads = [h for _, h in cols]
    r0 = records[0]
    print(f"{r0['data']}{lines.pair_label(r0['data'], r0['pair'], ' pair {a} {b}')}, {len(records)} models"
          + (f", regularizer {reg}" if reg != "none" else "")
          + (f", optimizer {r0['optimizer']}" if r0.get("optimizer", "sgd") != "sgd" else ""))
    print_aligned(heads, rows)
    for lam, seed in sorted({(r["lam"], r["seed"]) for r in records}):
        ok = [r for r in records if (r["lam"], r["seed"]) == (lam, seed) and r["status"] == "converged"]
        if len({r["n_train"] for r in ok}) < 2:
            continue
        taus = [f"{head} {kendalltau([r['n_train'] for r in ok], [r[key] for r in ok]).statistic:+.2f}"
                for key, head in table if key in registry.keys(table1=True)]
        where = f"seed {seed}" + (f", lambda {lam:g}" if reg != "none" else "")
        print(f"Kendall tau(N, measure), {where}, {len(ok)} converged models: " + ", ".join(taus))


def warning_line(message) -> str:
    """A warning as the command line prints it: one line `smoothness: warning: ...`."""
    return f"smoothness: warning: {message}"


@contextmanager
def warnings_as_lines():
    """Inside, each warning is printed as it comes, each message once, as one line (warning_line) on stderr, instead
    of Python's `FILE:LINE: UserWarning: ...` and the source line it points at."""
    seen = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if str(message) not in seen:
            seen.add(str(message))
            print(warning_line(message), file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def stdout_closed() -> bool:
    """After a BrokenPipeError: whether it was stdout, closed by its reader (`smoothness ... | head -1`).
    If so, stdout is pointed at /dev/null, so that nothing more (the final flush) fails, and True is
    returned; the command then ends quietly, as the end of a pipe is a normal end (exit status 141,
    128 + SIGPIPE, as a shell reports for `cat` or `yes` in the same place)."""
    import select
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):   # captured output: the broken pipe was something else
        return False
    if hasattr(select, "poll"):   # a pipe without readers polls POLLERR; a broken socket elsewhere does not
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if not any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0)):
            return False
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)
    return True


class EpochProgress:
    """A tqdm bar over epochs of the slowest-to-finish model, shown only on a terminal."""

    def __init__(self, enabled: bool, total_epochs: int, n_models: int):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            try:
                cols = os.get_terminal_size(sys.stderr.fileno()).columns
            except OSError:
                cols = 0
            self.bar = tqdm(total=total_epochs, unit="epoch", file=sys.stderr, ncols=cols if cols >= 40 else 100,
                            desc=f"training {counted(n_models, 'model')}",
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} epochs "
                                       "[{elapsed}<{remaining} to cap, {rate_fmt}{postfix}]")
        self.n = 0

    def __call__(self, info: dict) -> None:
        if self.bar is None:
            return
        if info["epoch"] > self.n:
            self.bar.update(info["epoch"] - self.n)
            self.n = info["epoch"]
        loss = info["loss"]
        self.loss = loss if loss == loss else getattr(self, "loss", loss)   # the last finite loss (none: all done)
        self.bar.set_postfix_str(f"loss {self.loss:.2e}, done {info['done']}/{info['total']}", refresh=False)
        if info["done"] >= info["total"]:   # every model finished: the bar ends full, at the last epoch
            self.bar.total = max(self.n, 1)
            self.bar.refresh()

    def close(self):
        """End the progress line."""
        if self.bar is not None:
            self.bar.close()


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and v == v and abs(v) != float("inf")

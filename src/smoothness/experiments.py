"""Run a grid into a results store: skip what is stored, train the rest batched, commit each model at once."""
from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import data as datasets
from . import pipeline
from .grid import Grid, config_key
from .store import Store, versions


@dataclass
class RunSummary:
    grid: str
    total: int
    stored_before: int
    trained: int = 0
    statuses: Counter = field(default_factory=Counter)   # over all models of the grid in the store
    seconds: float = 0.0
    store: str = ""

    def line(self) -> str:
        s = self.statuses
        return (f"grid {self.grid}: {self.total} models, {self.trained} trained now, {self.stored_before} already "
                f"stored; converged {s['converged']}, not converged {s['not_converged']}, diverged {s['diverged']}; "
                f"{_hms(self.seconds)}; store {self.store}")


def _hms(sec: float) -> str:
    sec = int(round(sec))
    h, m, s = sec // 3600, sec // 60 % 60, sec % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class GridProgress:
    """Models done/total, models running, ETA: a tqdm bar on a terminal, otherwise one line per model."""

    def __init__(self, total: int, enabled: bool = True, stream=None):
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.bar = None
        self.running, self.shown = 0, 0.0
        if self.enabled and self.stream.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="model", file=self.stream, dynamic_ncols=True, desc="training",
                            bar_format="{desc}: {n}/{total} models |{bar}| [{elapsed}<{remaining}{postfix}]")

    def trainer(self, info: dict) -> None:
        """Called by the batched trainer after epoch ends: how many models are running."""
        self.running = info["active"]
        if self.bar is not None and time.perf_counter() - self.shown > 0.5:
            self.bar.set_postfix_str(f"running {self.running}, epoch {info['epoch']}")
            self.shown = time.perf_counter()

    def model_done(self, rec: dict) -> None:
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            return
        el = time.perf_counter() - self.t0
        eta = el / self.done * (self.total - self.done)
        lam = f" {rec['regularizer']} lam={rec['lam']:g}" if rec["regularizer"] != "none" else ""
        print(f"[{self.done}/{self.total}] {rec['data']} {rec['pair'][0]}/{rec['pair'][1]} N={rec['n_train']} "
              f"seed={rec['seed']}{lam}: {rec['status']} after {rec['epochs']} epochs; running {self.running}; "
              f"elapsed {_hms(el)}, ETA {_hms(eta)}", file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def check_data(grid: Grid, data_dir=None) -> None:
    """Fail before any training when a data file is missing or a training size exceeds a pair's pool."""
    for pair in grid.pairs:
        task = datasets.binary_task(grid.data, *pair, data_dir=data_dir)
        for s in grid.all_seeds():
            task.subset(max(grid.sizes()), s)


def run_grid(grid: Grid, out, *, device=None, data_dir=None, progress: bool = True, save_weights: bool = True,
             stream=None) -> RunSummary:
    """Train every model of the grid that the store under `out` does not hold yet; returns a summary."""
    t0 = time.perf_counter()
    configs = grid.configs()
    keys = [config_key(c) for c in configs]
    dev = pipeline.resolve_device(device)
    out = Path(out)
    with Store(out) as store:
        stored = store.keys()
        todo = [(k, c) for k, c in zip(keys, configs) if k not in stored]
        summary = RunSummary(grid.name, len(configs), len(configs) - len(todo), store=str(store.path))
        if todo:
            check_data(grid, data_dir)
        store.set_meta("grid", grid.to_dict())
        store.set_meta("versions", versions())
        bar = GridProgress(len(todo), progress, stream)
        todo_keys = [k for k, _ in todo]

        def on_result(i: int, rec: dict):
            params = rec.pop("params")
            if store.add(todo_keys[i], rec, params if save_weights else None):
                summary.trained += 1
            bar.model_done(rec)

        try:
            if todo:
                pipeline.train_and_measure([c for _, c in todo], device=dev, data_dir=data_dir,
                                           progress=bar.trainer, on_result=on_result)
        finally:
            bar.close()
            status = store.statuses()
            summary.statuses = Counter(status[k] for k in keys if k in status)
            summary.seconds = time.perf_counter() - t0
    return summary

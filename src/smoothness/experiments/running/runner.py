"""Run a grid into a results store: skip what is stored, train the rest batched, commit each model at once."""
from __future__ import annotations

import os
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from smoothness.errors import ConfigError, StoreError
from smoothness.experiments.configuration import staging
from smoothness.experiments.configuration.config import RunConfig
from smoothness.experiments.configuration.grid import Grid, config_key
from smoothness.experiments.running import pipeline
from smoothness.experiments.running.distributed import CONNECT_TIMEOUT, DEFAULT_RETRIES, expected_steps
from smoothness.experiments.running.progress import HEARTBEAT, GridProgress, hms, snapshot_note, varying
from smoothness.experiments.storage import snapshots
from smoothness.experiments.storage.claim import claim_store, other_grid, other_note, owner_alive
from smoothness.experiments.storage.opening import check_writable, store_path
from smoothness.experiments.storage.store import Store, versions, warn
from smoothness.experiments.storage.storefile import model_count
from smoothness.runtime.values import counted, is_integer


@dataclass
class RunSummary:
    """What a grid run did with each model of the grid: trained now, stored before it started, stored meanwhile by
    another run, skipped (above a ladder's edge), or left untrained; and the grid's models by status."""
    grid: str
    total: int
    stored_before: int
    trained: int = 0
    statuses: Counter = field(default_factory=Counter)   # over all models of the grid in the store
    seconds: float = 0.0
    store: str = ""
    backend: str = "local"
    where: str = ""           # ray: the cluster used
    chunks: int = 0           # ray: chunks planned (first attempts; a chunk another run stored is not submitted)
    retried: int = 0          # ray: chunks resubmitted after a worker or node died
    skipped: int = 0          # lambda rungs above a ladder's edge, not trained (staging.py)
    elsewhere: int = 0        # models another run stored meanwhile (also those this run trained too, but later)

    @property
    def left(self) -> int:
        """Models of the grid none of the above: not trained (the run was stopped, or a wave stored nothing)."""
        return self.total - self.trained - self.stored_before - self.elsewhere - self.skipped

    def line(self) -> str:
        """The summary as one line of text; its counts add up to the grid's models."""
        s = self.statuses
        ray = (f"; ray backend, {self.where}, {self.chunks} chunks, {self.retried} retried"
               if self.backend == "ray" else "")
        skip = (f", {self.skipped} above a lambda ladder's edge not trained (ladder: staged)"
                if self.skipped else "") + (f", {self.elsewhere} stored meanwhile by another run"
                                            if self.elsewhere else "") + (f", {self.left} left untrained"
                                                                          if self.left else "")
        return (f"grid {self.grid}: {counted(self.total, 'model')}, {self.trained} trained now, "
                f"{self.stored_before} already stored{skip}; converged {s['converged']}, "
                f"not converged {s['not_converged']}, diverged {s['diverged']}; "
                f"{hms(self.seconds)}; store {self.store}{ray}")


def check_data(grid: Grid, data_dir=None) -> None:
    """Fail before any training when a data file is missing, a training size exceeds a task's pool (the largest
    size, at every seed) or does not fit the task (every size; a classification's sizes that do not split evenly
    by class are refused when the grid is read, and checked here once more)."""
    tasks: dict[tuple, tuple] = {}
    for c in grid.configs():
        sizes, seeds, cfg = tasks.get(c.task_id, (set(), set(), c))
        tasks[c.task_id] = (sizes | {c.n_train}, seeds | {c.seed}, cfg)
    for sizes, seeds, cfg in tasks.values():
        task = cfg.task(data_dir)
        for s in sorted(seeds):
            task.subset(max(sizes), s)
        for n in sorted(sizes):
            task.subset(n, min(seeds))


def data_checked_here(backend: str, address: str | None) -> bool:
    """Whether a run checks the data on this machine before training (check_data): always, except on a remote Ray
    cluster, whose workers check their own data."""
    return backend == "local" or not (address or os.environ.get("RAY_ADDRESS"))


def check_options(grid: Grid, *, device=None, backend: str = "local", retries: int = DEFAULT_RETRIES,
                  measure_batch: int | None = None, chunk_size: int | None = None,
                  ray_timeout: float = CONNECT_TIMEOUT):
    """The checks of a run's options before any work (run_grid and the dry run make the same): the backend, the
    device and the matmul precision it allows, the measure batch, and the Ray settings. Returns (device: resolved
    for the local backend, a name for Ray's workers to resolve; measure batch)."""
    if backend not in ("local", "ray"):
        raise ConfigError(f"unknown backend {backend!r}; use local or ray")
    if not is_integer(retries) or retries < 0:
        raise ConfigError(f"--retries must be 0 or more (times a chunk is resubmitted), got {retries!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"--chunk-size must be at least 1, got {chunk_size}")
    if not 0 < ray_timeout < float("inf"):
        raise ConfigError(f"--ray-timeout must be a positive number of seconds, got {ray_timeout!r}")
    if backend == "local":
        device = pipeline.resolve_device(device)
        measure_batch = pipeline.measure_batch_size(measure_batch, device)
        pipeline.check_matmul_precision({grid.matmul_precision}, device)
    else:
        device = str(device or "auto")  # resolved on each worker
        if device.split(":")[0] not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"unknown device {device!r}; use cpu, cuda or auto")
        pipeline.measure_batch_size(measure_batch, "cpu")  # checked only: workers use their device's default
    return device, measure_batch


def run_grid(grid: Grid, out, *, device=None, data_dir=None, progress: bool = True, save_weights: bool = True,
             stream=None, backend: str = "local", address: str | None = None, chunk_size: int | None = None,
             retries: int = DEFAULT_RETRIES, ray_cpus: int | None = None,
             measure_batch: int | None = None, merge: bool = False,
             snapshot_every: float | None = snapshots.DEFAULT_EVERY,
             ray_timeout: float = CONNECT_TIMEOUT) -> RunSummary:
    """Train every model of the grid that the store under `out` does not hold yet; returns a summary.

    backend "local" trains in this process; "ray" runs chunks of models as Ray tasks (see distributed.py)
    on the cluster at `address` (or RAY_ADDRESS; given up with one error if it cannot be reached within
    ray_timeout seconds), or on a local Ray instance with `ray_cpus` CPUs.
    Either way each model is committed to the store the moment it comes back. Locally, trained models
    are measured measure_batch at a time (pipeline.measure_batch_size: 1 on CPU, 128 on a GPU); when
    that is more than one, each model is stored as trained the moment it finishes training, and a
    resumed grid measures the trained models it finds instead of training them again.

    `out` is always a directory (the store is out/results.sqlite). A store that holds another grid's models
    is refused unless merge=True. A run that fails or is interrupted before storing anything removes the
    store (and the directories) it created, but not the snapshots of models in training: every snapshot_every
    seconds each model still training is saved in out/snapshots, and the next run goes on from there
    (snapshots.py; None or 0: no snapshots).
    """
    t0 = time.perf_counter()
    device, measure_batch = check_options(grid, device=device, backend=backend, retries=retries,
                                          measure_batch=measure_batch, chunk_size=chunk_size, ray_timeout=ray_timeout)
    configs = grid.configs()
    keys = [config_key(c) for c in configs]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StoreError(f"{out} is a file, not a directory: the experiment directory (--out) must be a directory")
    made = [p for p in (out, *out.parents) if not p.exists()]   # what this run creates, deepest first
    fresh = not (out / Store.FILENAME).exists()
    try:
        return _run_grid(grid, out, configs, keys, t0, device=device, data_dir=data_dir, progress=progress,
                         save_weights=save_weights, stream=stream, backend=backend, address=address,
                         chunk_size=chunk_size, retries=retries, ray_cpus=ray_cpus, measure_batch=measure_batch,
                         merge=merge, snaps=snapshots.SnapshotDir(out / snapshots.FOLDER, snapshot_every),
                         ray_timeout=ray_timeout)
    except BaseException:
        if fresh:
            _remove_if_empty(out / Store.FILENAME, made)
        raise


def _store_view(grid: Grid, out: Path) -> tuple[dict, dict, set, str | None] | None:
    """Read-only: (the grid's configs by key, the stored statuses, the keys of rungs above a ladder's edge that
    those statuses rule out, the other grid the store was made for, if any (see other_grid)), or None when `out`
    holds no store."""
    if not (Path(out) / Store.FILENAME).exists():
        return None
    by_key = {config_key(c): c for c in grid.configs()}
    with Store(Path(out) / Store.FILENAME, create=False) as st:
        status, other = st.statuses(), other_grid(st, grid)
    return by_key, status, set(staging.next_wave(by_key, status, grid.ladder).skipped), other


def _stored(grid: Grid, out: Path) -> tuple[int, int, str | None, int] | None:
    """Read-only: (models of the grid, how many of them the store in `out` holds, the other grid the store was
    made for, how many rungs above a ladder's edge the stored statuses already rule out), or None when `out`
    holds no store."""
    view = _store_view(grid, out)
    if view is None:
        return None
    by_key, status, skipped, other = view
    return len(by_key), len(by_key.keys() & status.keys()), other, len(skipped)


def work_left(grid: Grid, out: Path) -> list[tuple[RunConfig, float]]:
    """Read-only: each model of the grid still to train, with the plain SGD steps it needs at most: to its epoch
    cap, from its snapshot's epoch if it has one (distributed.expected_steps: a step with a penalty counts as the
    plain steps it costs, by the MLP's table; `retimed` rescales them by a family's timed costs). Rungs above a
    ladder's edge that the stored statuses rule out are left out; rungs not decided yet are counted."""
    by_key, status, skipped, _ = (_store_view(grid, out)
                                  or ({config_key(c): c for c in grid.configs()}, {}, set(), None))
    started = snapshots.SnapshotDir(Path(out) / snapshots.FOLDER).epochs(list(by_key))
    return [(c, expected_steps(c) * max(0, c.max_epochs - started.get(k, 0)) / c.max_epochs)
            for k, c in by_key.items() if k not in status and k not in skipped]


def retimed(work: list[tuple[RunConfig, float]], costs: dict) -> list[tuple[RunConfig, float]]:
    """work_left's list with each penalized step counted at `costs`, {(regularizer, points): cost in plain steps}
    as bench.step_costs times them for a family, instead of the MLP's table (pairs it lacks keep the table's)."""
    return [(c, w * expected_steps(c, costs.get((c.regularizer, c.penalty_points))) / expected_steps(c))
            for c, w in work]


def _rate(rate: float) -> str:
    """A rate in steps/s as read: whole numbers from 10 on, two significant digits below."""
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"


def work_note(work: list[tuple[RunConfig, float]], rate: float | None = None, shape: str = "",
              timed: bool = False) -> str:
    """One line on work_left's total, and with a measured rate (plain steps per second of one model of `shape`),
    the time it means for one process ('' when nothing is left). timed: the penalties' costs were timed now."""
    if not work:
        return ""
    steps = sum(w for _, w in work)
    count = f"{steps / 1e6:,.1f} million" if steps >= 1e6 else f"{steps:,.0f}"
    how = "timed now for this family" if timed else "counted as the plain steps it costs"
    line = (f"work left, every model to its epoch cap: at most {count} plain SGD steps "
            f"({counted(len(work), 'model')}; a step with a penalty {how})")
    if rate:
        sec = steps / rate
        took = f"{sec / 3600:,.1f} h" if sec >= 3600 else f"{sec / 60:.0f} min" if sec >= 60 else f"{sec:.0f} s"
        line += (f"; at the {_rate(rate)} plain steps/s of one {shape} model measured now, at most {took} for one "
                 "process")
    return line + "; a model stops sooner when it reaches the loss threshold"


def dry_run(grid: Grid, out: Path, merge: bool = False) -> str:
    """One line: the grid's size and how many of its models the store in `out` holds (read-only; a store that the
    run could not create or write there is refused as the run refuses it)."""
    check_writable(store_path(out))
    _check_built(grid, Path(out))
    total, stored, other, skipped = _stored(grid, out) or (len(grid.configs()), 0, None, 0)
    note = f" (the store holds {other_note(other)}: run refuses it without --merge)" if other and not merge else ""
    left = total - stored - skipped
    skip = f", {skipped} above a lambda ladder's edge not to be trained" if skipped else ""
    snap = snapshot_note(snapshots.SnapshotDir(Path(out) / snapshots.FOLDER), [config_key(c) for c in grid.configs()],
                         "of them from a snapshot")   # models to train that go on from their snapshot
    snap = f", {snap}" if snap else ""
    staged = (" at most (lambda rungs above a ladder's edge will not be trained)"
              if grid.ladder == "staged" and staging.has_ladder(grid.regularizers) and left else "")
    pairs = (f"classes {', '.join(map(str, grid.classes))}" if grid.classes
             else counted(len(grid.all_pairs()), "pair"))
    return (f"grid {grid.name}: {counted(total, 'model')} ({pairs}, sizes {grid.sizes()}, seeds "
            f"{grid.seeds}); {stored} stored in {out}{skip}, {left} to train{staged}{snap}{note}")


def _check_built(grid: Grid, out: Path) -> None:
    """Read-only, the run's check_architectures: the families of the models left to train build the tensors, and
    compute the functions, of the grid's stored models and snapshots in `out`."""
    by_key, snaps = {config_key(c): c for c in grid.configs()}, snapshots.SnapshotDir(out / snapshots.FOLDER)
    if not (out / Store.FILENAME).exists():
        pipeline.check_architectures(by_key, list(by_key), _built(None, snaps, list(by_key)))
        return
    with Store(out / Store.FILENAME, create=False) as st:
        todo = [k for k in by_key if k not in st.keys()]
        if todo:
            pipeline.check_architectures(by_key, todo, _built(st, snaps, todo))


def _built(store: Store | None, snaps: snapshots.SnapshotDir, todo: list[str]) -> pipeline.Built:
    """What the store's records (None: no store) and the snapshots of the models to train say they were built as."""
    return pipeline.Built(store.values_of("shapes_digest") if store else {},
                          store.values_of("init_outputs") if store else {}, snaps.shapes(todo),
                          snaps.init_outputs(todo))


def _check_built_remote(by_key: dict[str, RunConfig], todo: list[str], built: pipeline.Built) -> None:
    """On a remote Ray cluster, whose workers build the models: check_architectures where the store or the snapshots
    hold something of the grid's to check against; a warning instead of the check where a family cannot be built on
    this machine (a factory importable on the workers only)."""
    if not (built.digests.keys() & by_key.keys() or built.snapshot_shapes):
        return
    try:
        families = {a: c.family() for a, c in {by_key[k].architecture(): by_key[k] for k in todo}.items()}
    except ConfigError as e:
        warn(f"the models to train were not checked here against the stored ones and the snapshots (their family "
             f"cannot be built on this machine: {e}); the workers build them")
        return
    pipeline.check_architectures(by_key, todo, built, families)


def interrupted_note(grid: Grid, out: Path) -> str:
    """For an interrupted `run`: how many of the grid's models the store in `out` holds, how many more are kept in
    snapshots (at which epochs), and how to resume."""
    held = _stored(grid, out)
    folder = Path(out) / snapshots.FOLDER
    kept = snapshot_note(snapshots.SnapshotDir(folder), [config_key(c) for c in grid.configs()], "more in training")
    kept = f"{kept} kept in {folder}" if kept else ""
    if held is None:
        return (f"; nothing is stored in {out} yet" if not kept
                else f"; no model is stored yet, {kept}; run the same command again to go on from them")
    total, stored, _, _ = held
    return (f"; {stored} of {total} models of grid {grid.name} are stored in {out}{', ' + kept if kept else ''}; "
            "run the same command again to resume")


def _remove_if_empty(path: Path, made: list[Path]) -> None:
    """Remove a store this run created if it holds no model, then the directories the run created, if empty."""
    import json
    import sqlite3
    try:
        if path.exists():
            db = sqlite3.connect(str(path))
            try:
                n = model_count(db)
                row = db.execute("SELECT value FROM meta WHERE name='owner'").fetchone()
                owner = json.loads(row[0]) if row else None
            except (sqlite3.DatabaseError, ValueError):
                n, owner = (0 if path.stat().st_size == 0 else 1), None
            finally:
                db.close()
            if n or owner_alive(owner):   # another run claimed it (and may store into it any moment)
                return
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
        for d in made:
            d.rmdir()
    except OSError:
        pass


def _run_grid(grid: Grid, out: Path, configs, keys, t0, *, device, data_dir, progress, save_weights, stream,
              backend, address, chunk_size, retries, ray_cpus, measure_batch, merge, snaps,
              ray_timeout) -> RunSummary:
    with Store(out / Store.FILENAME) as store, ExitStack() as stack:
        stored = store.keys()
        todo = [(k, c) for k, c in zip(keys, configs) if k not in stored]
        ours = set(keys)
        bad = [(k, why) for k, why in store.damaged() if k in ours]
        if bad:
            warn(f"{store.path}: {len(bad)} damaged model row(s) of this grid (first: {bad[0][0]}: {bad[0][1]}) are "
                 "not counted as stored: their models are trained again and replace them (`smoothness salvage "
                 f"{store.path} NEWDIR` copies the sound rows into a new store instead)")
        summary = RunSummary(grid.name, len(configs), len(configs) - len(todo), store=str(store.path),
                             backend=backend)
        by_key, todo_keys = dict(zip(keys, configs)), [k for k, _ in todo]
        if todo and data_checked_here(backend, address):
            check_data(grid, data_dir)  # on a remote cluster the workers' data is checked by the workers
            pipeline.check_architectures(by_key, todo_keys, _built(store, snaps, todo_keys))
            if backend == "local":   # a Ray worker checks its own device's memory
                pipeline.check_memory([c for _, c in todo], device)
        elif todo:
            _check_built_remote(by_key, todo_keys, _built(store, snaps, todo_keys))
        claim_store(store, grid, merge)
        store.set_meta("versions", versions())
        bar = GridProgress(len(todo), progress, stream, every=snaps.every or HEARTBEAT,
                           in_training=lambda: snapshot_note(snaps, keys), fields=varying(configs))
        stack.callback(bar.close)
        ray = _RayBackend(stack, summary, address, ray_cpus, chunk_size, ray_timeout, dict(
            device=device, data_dir=data_dir, save_weights=save_weights, retries=retries, progress=bar.trainer,
            snapshots=(str(snaps.path), snaps.every)))
        added = set()   # the models this run stored (another run may store a model this one trains, first)
        try:
            last, delivered = None, set()
            while True:   # waves: a lambda rung starts when the rung below has passed (staging.py)
                status = store.statuses()
                wave = staging.next_wave(by_key, status, grid.ladder)
                summary.skipped = len(wave.skipped)
                if backend == "local":   # the Ray backend also checks before each chunk and counts in track()
                    summary.elsewhere = sum(k in status and k not in delivered for k, _ in todo)
                bar.set_total(len(todo) - summary.skipped - summary.elsewhere)
                if not wave.train or wave.train == last:   # nothing left, or a wave that stored nothing
                    break
                last = wave.train
                wave_todo = [(k, by_key[k]) for k in wave.train]
                results = (_local_results(store, wave_todo, device, data_dir, measure_batch, bar.trainer, snaps)
                           if backend == "local" else ray.results(wave_todo, store.keys))
                for key, rec, params in results:
                    if store.add(key, rec, params if save_weights else None):
                        added.add(key)
                        summary.trained += 1
                    snaps.remove(key)
                    delivered.add(key)
                    bar.set_total(len(todo) - summary.skipped - summary.elsewhere)
                    bar.model_done(rec)
        finally:
            status = store.statuses()
            summary.statuses = Counter(status[k] for k in keys if k in status)
            # every model of the grid counted once: a model this run trained but another stored first is theirs
            summary.elsewhere = sum(k in status and k not in added for k, _ in todo)
            summary.skipped = len(staging.next_wave(by_key, status, grid.ladder).skipped)
            summary.seconds = time.perf_counter() - t0
    return summary


def _local_results(store: Store, todo, device, data_dir, measure_batch: int, progress, snaps):
    """(key, record, params) of every model of todo: first those the store holds as trained but not measured
    (a grid stopped between training and measuring them), then the rest, trained here."""
    config = dict(todo)
    pending = [(k, rec, params) for k, rec, params in store.trained() if k in config]
    for j, rec in pipeline.iter_measure_trained([(config[k], rec, params) for k, rec, params in pending],
                                                device=device, data_dir=data_dir, measure_batch=measure_batch):
        yield pending[j][0], rec, rec.pop("params")
    done = {k for k, _, _ in pending}
    rest = [(k, c) for k, c in todo if k not in done]
    keys = [k for k, _ in rest]
    on_trained = None
    if measure_batch > 1:
        def on_trained(i, rec, params):
            store.add_trained(keys[i], rec, params)
            snaps.remove(keys[i])
    for i, rec in pipeline.iter_train_and_measure([c for _, c in rest], device=device, data_dir=data_dir,
                                                  progress=progress, measure_batch=measure_batch,
                                                  on_trained=on_trained, snapshots=snaps):
        yield keys[i], rec, rec.pop("params")


class _RayBackend:
    """The Ray side of a run: one RayRunner (started on first use) for all waves of the grid."""

    def __init__(self, stack: ExitStack, summary: RunSummary, address, ray_cpus, chunk_size, timeout, kw):
        self.stack, self.summary, self.timeout = stack, summary, timeout
        self.address, self.ray_cpus, self.chunk_size, self.kw = address, ray_cpus, chunk_size, dict(kw)
        self.runner = None

    def results(self, todo, stored=None):
        """Yield (key, record, params) for every (key, config) of todo as it is trained and measured; stored():
        the keys in the store now, so that a model another run stored meanwhile is not trained again."""
        from smoothness.experiments.running.distributed import RayRunner, default_chunk_size, make_chunks
        if self.runner is None:
            self.runner = self.stack.enter_context(RayRunner(self.address, num_cpus=self.ray_cpus,
                                                             timeout=self.timeout))
            self.summary.where = self.runner.describe()
        chunks = make_chunks(todo, self.chunk_size or default_chunk_size(len(todo), self.runner.slots))
        self.summary.chunks += len(chunks)
        kw = dict(self.kw)
        progress = kw.pop("progress")
        retried0, elsewhere0 = self.summary.retried, self.summary.elsewhere

        def track(info):
            self.summary.retried = retried0 + info["retried"]
            self.summary.elsewhere = elsewhere0 + info["elsewhere"]
            progress(info)
        results = self.runner.results(chunks, progress=track, stored=stored, **kw)
        self.stack.callback(results.close)  # cancels the chunks still running if the driver stops early
        return results

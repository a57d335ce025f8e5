"""The Ray backend: a grid's models as Ray tasks, each chunk trained as one batched program on a worker.

The driver (experiments.run_grid) splits the models still missing from the store into chunks of models
that can share one batched program (same data, architecture, batch size and regularizer kind). Each
chunk is a Ray generator task: the worker trains the chunk batched on its device (one GPU per task
where the cluster has GPUs) and streams every model back the moment it is trained and measured, and
the driver commits it to the store at once. When a worker or node dies, the chunk's models that did
not come back are resubmitted as a new chunk (up to `retries` times per chunk); models that did come
back are never trained again, and the store's primary key makes a duplicate delivery a no-op. Chunks are
submitted as slots free up, not all at once, and each is checked against the store just before: a model that
another run into the same store (a grid run with --merge, or a second driver) stored meanwhile is not trained again.
Application errors on a worker (missing data, bad config) stop the run with their message.
"""
from __future__ import annotations

import logging
import math
import os
from collections import deque
from dataclasses import dataclass

from smoothness.errors import SmoothnessError
from smoothness.runtime import interrupt
from smoothness.training import regularizers

DEFAULT_RETRIES = 3
TICK = 30.0          # seconds the driver waits for a result before it reports progress again


def import_ray():
    """Import Ray, or fail with how to install it."""
    try:
        import ray
    except ImportError:
        raise SmoothnessError("the ray backend needs Ray, which is not installed; install it with "
                              "`pip install 'smoothness[ray]'` (or `pip install ray`)") from None
    return ray


@dataclass
class Chunk:
    """Models trained by one Ray task: (key, RunConfig) pairs sharing a batch key; attempt counts from 1."""

    items: list
    attempt: int = 1


def expected_steps(cfg) -> float:
    """A model's step count at its epoch cap, ceil(N / batch) * max_epochs, in plain SGD steps (a step with a penalty
    costs several, regularizers.step_cost): the order of its training time."""
    return (math.ceil(cfg.n_train / cfg.batch_size) * cfg.max_epochs
            * regularizers.step_cost(cfg.regularizer, cfg.penalty_points))


def make_chunks(todo: list, chunk_size: int) -> list[Chunk]:
    """Group (key, config) pairs by batch key (first-seen order) and cut each group into chunk_size pieces, the
    longest models (expected_steps) first: chunks are submitted in this order, so the models on the critical
    path start at once on separate slots, instead of a slot running two chunks that each hold one (which made
    the critical path of Table 1's grid twice its slowest model)."""
    if chunk_size < 1:
        raise SmoothnessError(f"--chunk-size must be at least 1, got {chunk_size}")
    groups: dict[tuple, list] = {}
    for key, cfg in todo:
        groups.setdefault(cfg.batch_key(), []).append((key, cfg))
    chunks = []
    for g in groups.values():
        g = sorted(g, key=lambda item: -expected_steps(item[1]))   # stable: ties keep the grid's order
        chunks += [Chunk(g[i:i + chunk_size]) for i in range(0, len(g), chunk_size)]
    return sorted(chunks, key=lambda c: -expected_steps(c.items[0][1]))


def default_chunk_size(n_models: int, slots: int) -> int:
    """About two chunks per task slot, so that slots finishing early take a second chunk."""
    return max(1, math.ceil(n_models / (2 * max(1, slots))))


def train_chunk(items: list, device: str, data_dir, save_weights: bool, snapshots=None):
    """The body of a Ray task: train the chunk batched; yield (key, record, params or None) per model. snapshots:
    (folder, seconds between two) of the snapshots of models in training (snapshots.py), or None; the folder is
    the run's, so a worker on another machine keeps its snapshots only where that folder is shared."""
    from smoothness.experiments import pipeline
    from smoothness.experiments.snapshots import SnapshotDir
    configs = [c for _, c in items]
    snaps = SnapshotDir(*snapshots) if snapshots is not None else None
    for i, rec in pipeline.iter_train_and_measure(configs, device=device, data_dir=data_dir, snapshots=snaps):
        params = rec.pop("params")
        rec["worker"] = f"{os.uname().nodename}:{os.getpid()}"
        yield items[i][0], rec, (params if save_weights else None)


class RayRunner:
    """Connects to (or starts) Ray, and streams a grid's missing models back from chunk tasks."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None):
        ray = self.ray = import_ray()
        self.started = not ray.is_initialized()
        self.address = address = address or os.environ.get("RAY_ADDRESS") or None
        if self.started:
            kw = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                      configure_logging=True)
            if address is None and num_cpus is not None:
                kw["num_cpus"] = num_cpus
            handlers = interrupt.ours()
            try:
                ray.init(address=address, **kw)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise SmoothnessError(f"could not connect to the Ray cluster at {address!r}: {e}") from None
            interrupt.reinstall(handlers)   # ray.init puts its own SIGTERM handler in place of ours
        res = ray.cluster_resources()
        self.gpus = int(res.get("GPU", 0))
        self.cpus = int(res.get("CPU", 0))

    @property
    def slots(self) -> int:
        """How many chunk tasks the cluster runs at once: one per GPU, else one per CPU."""
        return self.gpus or self.cpus or 1

    def describe(self) -> str:
        """The cluster in words (address, CPUs, GPUs) for the progress output."""
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
        return f"{where} ({self.cpus} CPUs, {self.gpus} GPUs)"

    def close(self):
        """Shut down the Ray connection this runner started."""
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def results(self, chunks: list[Chunk], *, device: str = "auto", data_dir=None, save_weights: bool = True,
                retries: int = DEFAULT_RETRIES, progress=None, snapshots=None, stored=None):
        """Yield (key, record, params) for every model of the chunks, in the order they finish.

        Chunks go to the cluster in their order, one per free slot (self.slots). stored(), if given, returns the
        keys the store holds now; a chunk's models found there when it is about to be submitted are dropped (another
        run stored them) and counted in info["elsewhere"].
        progress(info), if given, is called as chunks come and go, and every TICK seconds otherwise, with
        info = {active: models not yet returned, chunks: chunks not yet done, retried: chunks resubmitted so far,
        elsewhere: models dropped because another run stored them}.
        """
        ray = self.ray
        opts = dict(num_cpus=1, max_retries=0)
        if self.gpus:
            opts["num_gpus"] = 1
        task = ray.remote(**opts)(train_chunk)
        data_dir = str(data_dir) if data_dir is not None else None
        running: dict = {}      # generator -> (chunk, keys not yet returned)
        waiting = deque(chunks)  # not submitted yet, in order
        retried = elsewhere = 0

        def submit(chunk: Chunk):
            gen = task.remote(chunk.items, device, data_dir, save_weights, snapshots)
            running[gen] = (chunk, {k for k, _ in chunk.items})

        def fill():
            nonlocal elsewhere
            done = stored() if stored is not None and waiting else set()   # one look at the store per fill
            while waiting and len(running) < max(1, self.slots):
                chunk = waiting.popleft()
                if stored is not None:
                    items = [(k, c) for k, c in chunk.items if k not in done]
                    elsewhere += len(chunk.items) - len(items)
                    if not items:
                        continue
                    chunk = Chunk(items, chunk.attempt)
                submit(chunk)

        def report():
            if progress is not None:
                progress(dict(active=sum(len(left) for _, left in running.values())
                              + sum(len(c.items) for c in waiting), chunks=len(running) + len(waiting),
                              retried=retried, elsewhere=elsewhere, label="queued or running"))

        fill()
        report()
        try:
            while running:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=TICK)
                if not ready:   # nothing came back for a while: progress(info) again, for its periodic lines
                    report()
                    continue
                gen = ready[0]
                chunk, left = running[gen]
                try:
                    ref = next(gen)
                except StopIteration:
                    del running[gen]
                    fill()
                    report()
                    continue
                try:
                    key, rec, params = ray.get(ref)
                except ray.exceptions.RayTaskError as e:   # raised by our code on the worker
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, SmoothnessError):
                        raise type(cause)(str(cause)) from None
                    raise
                except ray.exceptions.RayError as e:       # the worker or its node died
                    del running[gen]
                    if not left:                           # died after its last model came back
                        fill()
                        report()
                        continue
                    if chunk.attempt > retries:
                        raise SmoothnessError(f"a chunk of {len(chunk.items)} models failed {chunk.attempt} times "
                                              f"(last: {type(e).__name__}); {len(left)} of its models are not "
                                              "stored. Run the same command again to resume.") from None
                    retried += 1
                    submit(Chunk([(k, c) for k, c in chunk.items if k in left], chunk.attempt + 1))
                    report()
                    continue
                left.discard(key)
                yield key, rec, params
                report()
        finally:
            for gen in running:
                try:
                    ray.cancel(gen, force=True)
                except Exception:  # best effort: the task may be gone already
                    pass

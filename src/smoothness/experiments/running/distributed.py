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

import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass

from smoothness.errors import SmoothnessError
from smoothness.runtime import interrupt
from smoothness.training import regularizers

DEFAULT_RETRIES = 3
CONNECT_TIMEOUT = 60.0   # seconds to reach a Ray cluster at --address before giving up (--ray-timeout)
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


def expected_steps(cfg, cost: float | None = None) -> float:
    """A model's step count at its epoch cap, ceil(N / batch) * max_epochs, in plain SGD steps (a step with a penalty
    costs several: `cost` where it was timed for the model's family, else regularizers.step_cost, the MLP's): the
    order of its training time."""
    if cost is None:
        cost = regularizers.step_cost(cfg.regularizer, cfg.penalty_points)
    return math.ceil(cfg.n_train / cfg.batch_size) * cfg.max_epochs * cost


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
    from smoothness.experiments.running import pipeline
    from smoothness.experiments.storage.snapshots import SnapshotDir
    configs = [c for _, c in items]
    snaps = SnapshotDir(*snapshots) if snapshots is not None else None
    for i, rec in pipeline.iter_train_and_measure(configs, device=device, data_dir=data_dir, snapshots=snaps):
        params = rec.pop("params")
        rec["worker"] = f"{os.uname().nodename}:{os.getpid()}"
        yield items[i][0], rec, (params if save_weights else None)


def _init(ray, address, kw) -> None:
    """ray.init, with the SystemExit of Ray's own SIGTERM handler (which it installs in place of ours) turned into
    our Terminated."""
    try:
        ray.init(address=address, **kw)
    except SystemExit as e:
        if e.code == signal.SIGTERM:
            raise interrupt.Terminated() from None
        raise


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray address HOST:PORT or ray://HOST:PORT; None for another form ('auto', a host alone)."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class _Held:
    text = ""        # what was written to stderr in the block
    silence = False  # set in the block: after it, file descriptor 2 goes to /dev/null, and sys.stderr elsewhere


@contextlib.contextmanager
def _stderr_held():
    """File descriptor 2 (stderr, also of C++ code) into a temporary file for the block; its text is in .text after.
    With .silence set in the block, a thread still writing to descriptor 2 (Ray's core, connecting without end) is
    silenced for the rest of the process: descriptor 2 then leads to /dev/null, and sys.stderr to the real stderr."""
    import tempfile
    held = _Held()
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass
    try:
        saved = os.dup(2)
    except OSError:   # no stderr to hold
        yield held
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield held
        finally:
            if held.silence:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 2)
                os.close(null)
                sys.stderr = open(saved, "w", encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                                  errors=getattr(sys.stderr, "errors", None) or "backslashreplace", buffering=1)
            else:
                os.dup2(saved, 2)
                os.close(saved)
            tmp.seek(0)
            held.text = tmp.read(1 << 16).decode(errors="replace")


class _Drop(logging.Filter):
    """Drops the log records whose message starts with `start`."""

    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def connect(ray, address: str, kw: dict, timeout: float) -> None:
    """ray.init(address) within `timeout` seconds, else a SmoothnessError: first until something accepts a TCP
    connection at the address's port (Ray itself retries a port where nothing listens without end), then ray.init
    in a helper thread while this one waits, so that SIGTERM and Ctrl-C are handled at once and a listener that is no
    Ray cluster cannot hold the command (the thread is left behind when the command ends)."""
    import socket
    import threading
    deadline = time.monotonic() + timeout
    target = host_port(address)
    why = ""
    while target is not None:
        try:
            with socket.create_connection(target, timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                break
        except OSError as e:
            why = e.strerror or ("no answer" if isinstance(e, TimeoutError) else type(e).__name__)
        if time.monotonic() >= deadline:
            raise SmoothnessError(f"could not reach the Ray cluster at {address} within {timeout:g} s "
                                  f"({why[:1].lower() + why[1:]}): is it running? Check --address (or RAY_ADDRESS), "
                                  "or wait longer with --ray-timeout SECONDS")
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    done: dict = {}

    def init():
        try:
            ray.init(address=address, **kw)
            done["ok"] = True
        except BaseException as e:   # handed to the waiting thread
            done["error"] = e

    # Ray warns that it sets no SIGTERM handler outside the main thread: ours stays in place, as wanted
    quiet = logging.getLogger("ray._private.worker")
    no_handler = _Drop("SIGTERM handler is not set")
    quiet.addFilter(no_handler)
    helper = threading.Thread(target=init, name="smoothness-ray-connect", daemon=True)
    with _stderr_held() as held:   # Ray's C++ core logs each failed try to stderr: shown only if it connects
        helper.start()
        try:
            while helper.is_alive() and time.monotonic() < deadline:
                helper.join(min(0.2, max(0.0, deadline - time.monotonic())))
        finally:
            if not helper.is_alive():
                quiet.removeFilter(no_handler)
            else:   # given up (or interrupted): the command ends, Ray's core would go on logging its tries,
                held.silence = True   # and Ray's exit handler would wait for the connection that does not come
                import atexit
                atexit.unregister(ray.shutdown)
                interrupt.leave_thread_behind()   # the command ends by os._exit, not by finalization
    if "ok" in done:
        if held.text.strip():
            print(held.text.rstrip(), file=sys.stderr, flush=True)
        return
    if "error" in done:
        raise done["error"]
    raise SmoothnessError(f"could not connect to the Ray cluster at {address} within {timeout:g} s: something "
                              "listens there but does not answer as a Ray cluster; check --address (or RAY_ADDRESS), "
                              "or wait longer with --ray-timeout SECONDS")


class RayRunner:
    """Connects to (or starts) Ray, and streams a grid's missing models back from chunk tasks."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 timeout: float = CONNECT_TIMEOUT):
        """Start a local Ray instance (address None and no RAY_ADDRESS), or connect to the cluster at `address`:
        a SmoothnessError if that does not answer within `timeout` seconds. While it connects, SIGTERM and Ctrl-C
        end the command as at any other moment (runtime/interrupt.py)."""
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
                if address is None:   # starts Ray's processes: in this thread, which they must not outlive
                    _init(ray, None, kw)
                else:
                    connect(ray, address, kw, timeout)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise SmoothnessError(f"could not connect to the Ray cluster at {address!r}: {e}") from None
            finally:
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

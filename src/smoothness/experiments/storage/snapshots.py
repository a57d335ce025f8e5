"""Snapshots of models part way through training, so that a long grid stopped at any moment (a crash, a kill, a
machine taken away) goes on where its models were instead of from their first epoch.

While a grid runs, every model still training is written to `<out>/snapshots/<key>.pt` at the end of an epoch
every `every` seconds (default ten minutes): its weights, optimizer state, epoch and step counts and the training
time so far. The file is written to a temporary name, flushed to the disk and renamed over the old one, so that
a kill at any moment leaves the old snapshot or the new one, never half of one. The next run of the grid admits the
model from its snapshot (training.Snapshot) and it goes on bit for bit as it would have without the stop (the
shuffle of each epoch follows from the seed and the epoch). A snapshot is removed once its model is in the store.
A snapshot that cannot be read, whose zip archive fails its CRC check, or whose key or shapes do not fit, is set
aside with a warning and the model starts again from its first epoch; results never depend on a snapshot being
there.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from smoothness.experiments.configuration.config import RunConfig, config_key
from smoothness.experiments.storage.modelfile import zip_damage
from smoothness.experiments.storage.store import versions, warn
from smoothness.models import shapes_of, stack_from_state
from smoothness.training import Snapshot

FORMAT = "smoothness-snapshot-1"
DEFAULT_EVERY = 600.0   # seconds between two snapshots of a model still training
FOLDER = "snapshots"


class SnapshotDir:
    """The snapshots of one experiment directory's models in training (`<out>/snapshots`)."""

    def __init__(self, path, every: float | None = DEFAULT_EVERY):
        self.path = Path(path)
        self.every = float(every) if every is not None and every > 0 else None   # None or 0: no snapshots

    def file(self, key: str) -> Path:
        return self.path / f"{key}.pt"

    def _read(self, keys, pick) -> dict:
        """key -> pick(key, state) for each snapshot among `keys` that can be read, its tensors memory-mapped, not
        read; one being replaced or unreadable, or that pick finds wanting (None or an error), is passed over (load()
        deals with it when the model is admitted)."""
        out = {}
        for key in sorted(self.keys() & set(keys)):
            try:
                value = pick(key, torch.load(self.file(key), map_location="cpu", weights_only=True, mmap=True))
            except Exception:   # noqa: BLE001 - whatever a damaged or half-replaced file makes torch.load raise
                continue
            if value is not None:
                out[key] = value
        return out

    def epochs(self, keys) -> dict[str, int]:
        """The epoch of each snapshot among `keys` that can be read (the weights are not read: memory-mapped)."""
        return self._read(keys, lambda key, state: int(state["epoch"]))

    def shapes(self, keys) -> dict[str, list[tuple[int, ...]]]:
        """The tensor shapes of the model in each snapshot among `keys` that can be read as one (the others are left
        to load(), which sets them aside)."""
        return self._read(keys, lambda key, state: shapes_of(stack_from_state(state["params"]))
                          if state.get("format") == FORMAT and state.get("key") == key else None)

    def init_outputs(self, keys) -> dict[str, list[float]]:
        """The init_outputs (models.Family.init_outputs) that each snapshot among `keys` was written with, where it
        holds them (earlier snapshots do not)."""
        return self._read(keys, lambda key, state: state.get("init_outputs")
                          if state.get("format") == FORMAT and state.get("key") == key else None)

    def keys(self) -> set[str]:
        """The keys of the models that have a snapshot."""
        if not self.path.is_dir():
            return set()
        return {p.name[:-3] for p in self.path.glob("*.pt")}

    def save(self, cfg: RunConfig, snap: Snapshot, init_outputs: list[float] | None = None) -> None:
        """Write the snapshot of cfg's model durably, in place of the one before (write, fsync, rename), with its
        family's init_outputs if given (so that a change of the family's code is noticed before it goes on)."""
        key = config_key(cfg)
        self.path.mkdir(parents=True, exist_ok=True)
        dest, tmp = self.file(key), self.path / f".{key}.{os.getpid()}.tmp"
        state = {"format": FORMAT, "key": key, "epoch": snap.epoch, "steps": snap.steps, "seconds": snap.seconds,
                 "params": snap.params.state_dict(), "opt_state": [t.detach().cpu() for t in snap.opt_state],
                 "versions": {k: str(v) for k, v in versions().items()}}
        if init_outputs is not None:
            state["init_outputs"] = [float(v) for v in init_outputs]
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
            _sync_dir(self.path)
        except OSError as e:   # a full disk: training goes on; only this snapshot is missing
            tmp.unlink(missing_ok=True)
            warn(f"could not write the snapshot {dest} ({e.strerror or e}); the model goes on training, and a stop "
                 "now would restart it from its last snapshot")
        except BaseException:   # an interrupt while writing: the last complete snapshot stays
            tmp.unlink(missing_ok=True)
            raise

    def load(self, cfg: RunConfig) -> Snapshot | None:
        """The snapshot of cfg's model, or None (none there; one that cannot be used is set aside, with a warning)."""
        key = config_key(cfg)
        path = self.file(key)
        if not path.is_file():
            return None
        try:
            if why := zip_damage(path):   # torch.load would read flipped bits as weights
                raise ValueError(why)
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("format") != FORMAT or state.get("key") != key:
                raise ValueError(f"not the snapshot of model {key}")
            params = stack_from_state(state["params"])
            if shapes_of(params) != cfg.family().shapes() or params.n_models != 1:
                raise ValueError(f"a model of tensors {shapes_of(params)}, not {cfg.family().describe()}")
            snap = Snapshot(int(state["epoch"]), int(state["steps"]), params, list(state["opt_state"]),
                            float(state["seconds"]))
            if not 0 <= snap.epoch < cfg.max_epochs:
                raise ValueError(f"epoch {snap.epoch} is outside 0..{cfg.max_epochs - 1}")
        except Exception as e:  # noqa: BLE001 - whatever a damaged file makes torch.load raise
            why = f"{type(e).__name__}: {e}".splitlines()[0][:160]
            bad = path.with_name(path.name + ".unreadable")
            try:
                os.replace(path, bad)
                where = f"moved to {bad.name}"
            except OSError:
                where = "left in place"
            warn(f"snapshot {path} not used ({why}; {where}): the model starts from its first epoch")
            return None
        return snap

    def remove(self, key: str) -> None:
        """Remove the snapshot of a model that is now in the store, with what a killed writer left of its temporary
        files, and the folder once empty."""
        self.file(key).unlink(missing_ok=True)
        for tmp in self.path.glob(f".{key}.*.tmp"):
            tmp.unlink(missing_ok=True)
        try:
            self.path.rmdir()
        except OSError:   # not empty, or not there
            pass


def _sync_dir(path: Path) -> None:
    """Make a rename in `path` durable (fsync of the directory, where the system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

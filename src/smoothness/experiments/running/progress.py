"""Progress of a grid run: models done of total with an ETA, as a tqdm bar on a terminal or one line per model
otherwise, with a line every so often on the models still training (and their snapshots' epochs)."""
from __future__ import annotations

import math
import sys
import time

from smoothness.data import lines
from smoothness.experiments.storage import snapshots
from smoothness.experiments.storage.records import model_label

# the settings beside the task, size, seed and lambda that a progress line names where they vary within the run
VARYING = ("model", "hidden", "loss", "optimizer", "rho", "lr", "alpha", "batch_size", "max_epochs", "threshold",
           "penalty_points", "train_seed")


def varying(configs) -> tuple[str, ...]:
    """The fields of VARYING that take more than one value among these RunConfigs (a progress line names them)."""
    return tuple(f for f in VARYING if len({repr(getattr(c, f, None)) for c in configs}) > 1)


def settings_words(rec: dict, fields) -> str:
    """A model's values of these fields, as a progress line shows them: ' mlp hidden=16 lr=0.05' (a family other
    than the MLP has no hidden widths: ' cnn 8-16 3 max lr=0.05')."""
    words = []
    for f in fields:
        v = rec.get(f)
        if f == "model":
            words.append(model_label(v))
        elif f == "hidden":
            if isinstance(rec.get("model"), dict):
                continue   # another family's widths are its settings, not the MLP's hidden
            words.append("hidden=" + "-".join(map(str, v)) if isinstance(v, (list, tuple)) else f"hidden={v}")
        else:
            words.append(f"{f}={v:g}" if isinstance(v, float) else f"{f}={v}")
    return "".join(" " + w for w in words)


def hms(sec: float) -> str:
    """Seconds as 1h02m03s, or 2m03s under an hour."""
    sec = int(round(sec))
    h, m, s = sec // 3600, sec // 60 % 60, sec % 60
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


HEARTBEAT = 600.0   # seconds without a finished model before a line says what is still training (no terminal)


def snapshot_note(snaps: snapshots.SnapshotDir, keys, what: str = "in snapshots") -> str:
    """Words on the snapshots of the models in training among `keys`: how many, at which epochs ('' if none)."""
    epochs = sorted(snaps.epochs(keys).values())
    if not epochs:
        return ""
    shown = [f"{e:,}" for e in epochs]
    at = (f"epoch {shown[0]}" if len(epochs) == 1 else f"epochs {', '.join(shown[:-1])} and {shown[-1]}"
          if len(epochs) <= 4 else f"epochs {shown[0]} to {shown[-1]}")
    return f"{len(epochs)} {what} ({at})"


def where_now(info: dict) -> str:
    """Words on a batched program now, from the trainer's progress info: its epoch (the furthest model's) and the
    lowest training loss of an epoch just ended (the stopping rule's quantity); '' where the info has neither
    (the Ray driver's)."""
    words = []
    if "epoch" in info:
        words.append(f"at epoch {info['epoch']:,}")
    if math.isfinite(info.get("loss", math.nan)):
        words.append(f"lowest epoch loss {info['loss']:.3g}")
    return f" ({', '.join(words)})" if words else ""


class GridProgress:
    """Models done/total, models running, ETA: a tqdm bar on a terminal, otherwise one line per model."""

    def __init__(self, total: int, enabled: bool = True, stream=None, *, every: float = HEARTBEAT,
                 in_training=None, fields: tuple[str, ...] = ()):
        self.total, self.done, self.t0 = total, 0, time.perf_counter()
        self.fields = fields   # settings a line names besides task, N, seed and lambda (varying())
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.bar = None
        self.running, self.shown, self.label = 0, 0.0, "running"
        # without a terminal: a line every `every` seconds without a finished model, with in_training()'s words
        self.every, self.in_training, self.last_line = every, in_training, self.t0
        if self.enabled and self.stream.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="model", file=self.stream, dynamic_ncols=True, desc="training",
                            bar_format="{desc}: {n}/{total} models |{bar}| [{elapsed}<{remaining}{postfix}]")

    def trainer(self, info: dict) -> None:
        """Called by the batched trainer after epoch ends (or by the Ray driver): how many models run."""
        self.running = info["active"]
        self.label = info.get("label", "running")
        now = time.perf_counter()
        if self.bar is not None and now - self.shown > 0.5:
            extra = f", epoch {info['epoch']}" if "epoch" in info else f", chunks {info['chunks']}"
            self.bar.set_postfix_str(f"{self.label} {self.running}{extra}")
            self.shown = now
        elif self.bar is None and self.enabled and self.running and now - self.last_line >= self.every:
            note = self.in_training() if self.in_training is not None else ""
            print(f"[{self.done}/{self.total}] no model finished in the last {hms(now - self.last_line)}; "
                  f"{self.label} {self.running}{where_now(info)}{'; ' + note if note else ''}; "
                  f"elapsed {hms(now - self.t0)}", file=self.stream, flush=True)
            self.last_line = now

    def set_total(self, total: int) -> None:
        """A new total (rungs above a ladder's edge and models another run stored meanwhile drop out of the run)."""
        self.total = total
        if self.bar is not None and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()

    def model_done(self, rec: dict) -> None:
        """Count a stored model and redraw the progress line."""
        self.done += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            return
        self.last_line = time.perf_counter()
        el = self.last_line - self.t0
        eta = el / self.done * (self.total - self.done)
        lam = f" {rec['regularizer']} lam={rec['lam']:g}" if rec["regularizer"] != "none" else ""
        classes = rec.get("classes")   # a classification task is stored with a stand-in pair: name its classes
        pair = f" classes {','.join(map(str, classes))}" if classes else lines.pair_label(rec["data"], rec["pair"])
        print(f"[{self.done}/{self.total}] {rec['data']}{pair}{settings_words(rec, self.fields)} N={rec['n_train']} "
              f"seed={rec['seed']}{lam}: {rec['status']} after {rec['epochs']} epochs; {self.label} {self.running}; "
              f"elapsed {hms(el)}, ETA {hms(eta)}", file=self.stream, flush=True)

    def close(self):
        """End the progress line."""
        if self.bar is not None:
            self.bar.close()

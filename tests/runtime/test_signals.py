"""Ctrl-C and SIGTERM: one line saying what is kept, exit status 130 / 143, no traceback, at any moment."""
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import run_cli
from smoothness.cli import commands
from smoothness.experiments.running import pipeline
from smoothness.runtime import interrupt

TINY = ["--hidden", "8", "--n-train", "16", "--max-epochs", "3", "--segments", "5", "--points", "5",
        "--measure-points", "20", "--device", "cpu"]
# 2 models stop after 1 epoch and are stored within seconds; 2 train for 200 epochs: time to be stopped
GRID = """name: sig
pairs: [[3, 8]]
n_train: 16
seeds: [0, 1]
hidden: 8
threshold: 1.0e-12
max_epochs: [1, 200]
measure: {points: 20, segments: 5, points_per_segment: 5}
"""


class Lines:
    """The lines a child writes to a pipe, read by a thread, so that waiting for one can time out."""

    def __init__(self, pipe):
        self.q, self.lines = queue.Queue(), []
        self.t = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self.t.start()

    def _read(self, pipe):
        for line in pipe:
            self.q.put(line)
        self.q.put(None)

    def wait_for(self, pred, timeout: float):
        """The first line for which pred holds, or None at the end of the output or after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if line is None:
                self.q.put(None)
                return None
            self.lines.append(line)
            if pred(line):
                return line

    def all(self, timeout: float = 120) -> list[str]:
        self.wait_for(lambda _: False, timeout)
        return self.lines


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(*args):
    # SIGINT back to its default in the child: a suite started in the background by a non-interactive shell
    # (`cmd &`) inherits SIGINT ignored, and the command rightly leaves an ignored SIGINT ignored
    return subprocess.Popen([sys.executable, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_sigint)


@pytest.mark.parametrize("exc, code, head", [(KeyboardInterrupt, 130, "interrupted"),
                                             (interrupt.Terminated, 143, "terminated (SIGTERM)")])
def test_interrupted_train_says_nothing_was_saved(exc, code, head, tmp_path, capsys, monkeypatch):
    def stop(*a, **k):
        raise exc()
    monkeypatch.setattr(pipeline, "train_and_measure", stop)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert commands.main(["train", *TINY, "--save", str(tmp_path / "m.pt")]) == code
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"smoothness: {head}; nothing was saved") and "stored" not in err
    assert not (tmp_path / "m.pt").exists()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before   # handlers restored


def test_sigterm_mid_grid_is_one_line_and_the_same_command_resumes(tmp_path):
    f = tmp_path / "sig.yaml"
    f.write_text(GRID)
    out = tmp_path / "exp"
    p = _start("-m", "smoothness", "run", f, "--out", out, "--device", "cpu")
    try:
        err = Lines(p.stderr)
        first = err.wait_for(lambda line: line.startswith("[1/4]"), timeout=300)   # a model is stored
        assert first, "".join(err.lines)
        assert p.poll() is None, "the grid finished before it could be stopped"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=120) == 143
        lines = err.all()
        stdout = p.stdout.read()
    finally:
        p.kill()
        p.wait()
    text = "".join(lines)
    assert "Traceback" not in text and stdout == ""   # no summary line either
    message = [line for line in lines if not line.startswith("[")]
    assert len(message) == 1, text
    m = re.fullmatch(rf"smoothness: terminated \(SIGTERM\); (\d) of 4 models of grid sig are stored in "
                     rf"{re.escape(str(out))}; run the same command again to resume\n", message[0])
    assert m, message[0]
    kept = int(m.group(1))
    assert 1 <= kept < 4
    r = run_cli("run", f, "--out", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert f"grid sig: 4 models, {4 - kept} trained now, {kept} already stored" in r.stdout


@pytest.mark.parametrize("sig, code, head", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_a_signal_while_pytorch_is_imported_is_one_line(sig, code, head, tmp_path):
    # -X importtime writes a line as each import ends: a torch.* line means PyTorch is being imported. The
    # training asked for would take minutes, so that a reader thread slowed by a loaded machine still signals
    # a running process (whether it is still importing or already training, the answer must be one line).
    slow = [*TINY[:4], "--max-epochs", "100000", "--lr", "1e-6", *TINY[6:]]   # cannot converge
    p = _start("-X", "importtime", "-m", "smoothness", "train", *slow, "--save", tmp_path / "m.pt")
    try:
        err = Lines(p.stderr)
        seen = err.wait_for(lambda line: line.split("|")[-1].strip().startswith("torch"), timeout=300)
        assert seen, "".join(err.lines)
        p.send_signal(sig)
        assert p.wait(timeout=120) == code
        lines = err.all()
    finally:
        p.kill()
        p.wait()
    message = [line for line in lines if not line.startswith("import time:")]
    assert len(message) == 1 and message[0].startswith(f"smoothness: {head}"), "".join(message)
    assert not (tmp_path / "m.pt").exists()


def test_a_signal_whose_exception_was_swallowed_stops_training_at_the_next_epoch_end(monkeypatch):
    # CPython drops an exception raised while a weakref callback or __del__ runs ("Exception ignored"); the
    # handler has noted the signal, and the trainer raises it at the next epoch end instead of running on
    from conftest import spec
    from smoothness.data import images
    from smoothness.training import trainer as training
    monkeypatch.setattr(interrupt, "_received", [signal.SIGINT])
    monkeypatch.setattr(interrupt, "reported", None)
    task = images.binary_task("mnist5k", 3, 8)
    trainer = training.BatchedTrainer(task.pool_x, widths=(784, 8, 1), device="cpu")
    with pytest.raises(KeyboardInterrupt):
        list(trainer.iter_train([spec(task, 16, 0, max_epochs=50)]))
    monkeypatch.setattr(interrupt, "_received", [])
    assert len(list(trainer.iter_train([spec(task, 16, 0, max_epochs=50)]))) == 1   # nothing noted: to the end

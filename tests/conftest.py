import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Genuine MNIST files outside the repository (the test split and the training labels), for the loader tests:
# $SMOOTHNESS_MNIST_DIR, which .ci/run sets where it has them; without it those tests are skipped.
MNIST_DIR = Path(os.environ["SMOOTHNESS_MNIST_DIR"]) if os.environ.get("SMOOTHNESS_MNIST_DIR") else None


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def fake_source(root: Path, n_train=300, n_test=120, gz=True, seed=0):
    """Write the four IDX files of a small synthetic ten-class data set; return the arrays."""
    import numpy as np

    from smoothness.data import idx
    rng = np.random.default_rng(seed)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
              "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_labels": np.arange(n_test, dtype=np.uint8) % 10}
    root.mkdir(parents=True, exist_ok=True)
    for key, name in idx.FILES.items():
        idx.write(root / (name + (".gz" if gz else "")), arrays[key])
    return arrays


def spec(task, n, seed, **kw):
    """A TrainSpec for the balanced training subset of size n and the given seed of a data.BinaryTask."""
    from smoothness.training import trainer
    idx = task.subset(n, seed)
    return trainer.TrainSpec(idx, task.pool_y[idx], seed=seed, **kw)


def run_cli(*args, env=None, timeout=600):
    """Run `python -m smoothness ARGS` and return the CompletedProcess (text mode)."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "smoothness", *map(str, args)], capture_output=True,
                          text=True, env=e, timeout=timeout)


def run_cli_tty(*args, timeout=300):
    """Run `python -m smoothness ARGS` with stderr on a pseudo-terminal (120 columns), as a user sees it.

    Returns (returncode, stdout, what the terminal received)."""
    import fcntl
    import pty
    import struct
    import termios
    import threading
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "smoothness", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=slave, text=True)
    os.close(slave)
    chunks = []

    def drain():  # read while the child writes, so a full terminal buffer never blocks it
        while True:
            try:
                b = os.read(master, 4096)
            except OSError:
                return
            if not b:
                return
            chunks.append(b)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    out, _ = p.communicate(timeout=timeout)
    t.join(timeout=10)
    os.close(master)
    return p.returncode, out, b"".join(chunks).decode(errors="replace")


def grid_run(tmp_path_factory, raw: dict):
    """Run the grid `raw` (a mapping) into a fresh folder, quietly; returns the folder (for module fixtures)."""
    from smoothness.experiments.configuration import grid
    from smoothness.experiments.running import runner
    out = tmp_path_factory.mktemp(raw["name"]) / "run"
    runner.run_grid(grid.parse(raw), out, device="cpu", progress=False)
    return out


def stored_frame(out):
    """The store of a run folder as a DataFrame (Store.frame)."""
    from smoothness.experiments.storage.store import Store
    with Store(out, create=False) as st:
        return st.frame()


TINY = {"name": "tiny", "description": "Two tiny models.", "data": "mnist5k", "pairs": [[3, 8]], "n_train": [16, 32],
        "seeds": [0], "hidden": 8, "lr": 0.05, "batch_size": 16, "max_epochs": 20, "threshold": 1.0e-3,
        "measure": {"points": 50, "segments": 5, "points_per_segment": 5}}


def corrupt_member(path, member: str | None = None, n: int = 16) -> str:
    """Overwrite n bytes inside one member of the zip archive at path (the largest one stored uncompressed, or the
    one whose name ends in member, such as 'data/2'), leaving the archive's structure and recorded CRCs as they
    were; the member's name."""
    import struct
    import zipfile
    with zipfile.ZipFile(path) as z:
        infos = [i for i in z.infolist() if i.compress_type == zipfile.ZIP_STORED and i.file_size >= n
                 and (member is None or i.filename.endswith(member))]
    info = max(infos, key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        start = info.header_offset + 30 + name_len + extra_len + (info.file_size - n) // 2
        f.seek(start)
        old = f.read(n)
        f.seek(start)
        f.write(bytes(b ^ 0x5A for b in old))
    return info.filename


def count_rows(path, table: str = "runs") -> int:
    """The rows of a table of the SQLite file at path."""
    import sqlite3
    db = sqlite3.connect(str(path))
    try:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        db.close()


def damage_store(path, whole: bool = False) -> None:
    """Damage the SQLite store at path: overwrite the link of an overflow page (damage deep in the file, which reading
    the records never visits), or with whole the b-tree root page of table runs."""
    import sqlite3
    data = bytearray(path.read_bytes())
    size = 4096
    n = len(data) // size
    if whole:
        db = sqlite3.connect(str(path))
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name='runs'").fetchone()
        db.close()
        data[(root - 1) * size:root * size] = b"\xff" * size
    else:
        page = next(p for p in range(2, n + 1) if data[(p - 1) * size] not in (2, 5, 10, 13)
                    and 1 < int.from_bytes(data[(p - 1) * size:(p - 1) * size + 4], "big") <= n)
        data[(page - 1) * size:(page - 1) * size + 4] = b"\xff" * 4
    path.write_bytes(bytes(data))


def tiny(**kw):
    """The tiny grid (two small models on mnist5k), with fields replaced."""
    from smoothness.experiments.configuration import grid
    return grid.parse({**TINY, **kw})


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A store of the tiny grid (2 models with weights), to copy."""
    from smoothness.experiments.running import runner
    out = tmp_path_factory.mktemp("made") / "exp"
    runner.run_grid(tiny(), out, device="cpu", progress=False)
    return out


@pytest.fixture
def exp(made, tmp_path):
    """A fresh copy of the tiny grid's experiment directory."""
    import shutil
    return shutil.copytree(made, tmp_path / "exp")

import gzip
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import MNIST_DIR, fake_source, run_cli
from smoothness.data import idx
from smoothness.data import images as data
from smoothness.errors import DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _no_cache(monkeypatch, tmp_path):
    data._load_files.cache_clear()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SMOOTHNESS_DATA", raising=False)
    yield
    data._load_files.cache_clear()


# -- real files ---------------------------------------------------------------------------------

@pytest.mark.skipif(MNIST_DIR is None or not MNIST_DIR.is_dir(), reason="SMOOTHNESS_MNIST_DIR not set")
def test_genuine_mnist_test_split_reads_correctly():
    images = idx.parse(idx.read_bytes(MNIST_DIR / "t10k-images-idx3-ubyte.gz"))
    labels = idx.parse(idx.read_bytes(MNIST_DIR / "t10k-labels-idx1-ubyte.gz"))
    assert images.shape == (10000, 28, 28)
    assert float(images.mean()) == pytest.approx(33.79, abs=0.01)
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    train_labels = idx.parse(idx.read_bytes(MNIST_DIR / "train-labels-idx1-ubyte.gz"))
    assert np.bincount(train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-labels-idx1-ubyte"):
        content = idx.read_bytes(idx.find_file(MNIST_DIR, name))
        assert idx.md5(content) == idx.CHECKSUMS["mnist"][name]


@pytest.mark.skipif(MNIST_DIR is None or not MNIST_DIR.is_dir(), reason="SMOOTHNESS_MNIST_DIR not set")
def test_mnist_source_with_genuine_test_split(tmp_path):
    # Genuine test split and training labels plus synthetic training images of matching count.
    d = tmp_path / "mnist"
    d.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(MNIST_DIR / name, d / name)
    idx.write(d / "train-images-idx3-ubyte", np.zeros((60000, 28, 28), np.uint8))
    t = data.binary_task("mnist", 3, 8, data_dir=d)
    assert t.heldout_x.shape == (1010 + 974, 784)
    assert int((t.heldout_y == -1).sum()) == 1010 and int((t.heldout_y == 1).sum()) == 974
    assert t.pool_x.shape[0] == 6131 + 5851
    assert float(t.heldout_x.max()) == 1.0 and float(t.heldout_x.min()) == 0.0
    assert t.measure_points().shape == (1000, 784)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    s = data.load_source("fashion-mnist")
    assert s.train_images.shape == (60000, 784) and s.test_images.shape == (10000, 784)
    assert np.bincount(s.train_labels).tolist() == [6000] * 10
    t = data.binary_task("fashion-mnist", 0, 9)
    assert t.pool_x.shape == (12000, 784) and t.heldout_x.shape == (2000, 784)


def test_mnist5k_split_is_fixed_and_balanced():
    s = data.load_source("mnist5k")
    assert np.bincount(s.train_labels).tolist() == [400] * 10
    assert np.bincount(s.test_labels).tolist() == [100] * 10
    t = data.binary_task("mnist5k", 3, 8)
    assert t.pool_x.shape == (800, 784) and t.heldout_x.shape == (200, 784)
    assert float(t.pool_x.min()) >= 0.0 and float(t.pool_x.max()) <= 1.0
    assert set(t.pool_y.tolist()) == {-1.0, 1.0}
    # train and held-out images are disjoint
    train = {bytes(r) for r in s.train_images}
    assert not any(bytes(r) in train for r in s.test_images[:200])


# -- layouts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_flat_directory_gzipped_or_not(tmp_path, gz):
    arrays = fake_source(tmp_path / "m", gz=gz)
    s = data.load_source("mnist", tmp_path / "m")
    assert np.array_equal(s.train_images, arrays["train_images"].reshape(-1, 784))


def test_torchvision_layout_and_env_variable(tmp_path, monkeypatch):
    fake_source(tmp_path / "root" / "MNIST" / "raw", gz=False)
    assert data.load_source("mnist", tmp_path / "root").train_images.shape == (300, 784)
    data._load_files.cache_clear()
    monkeypatch.setenv("SMOOTHNESS_DATA", str(tmp_path / "root"))
    assert data.load_source("mnist").test_images.shape == (120, 784)


def test_keras_npz_layout(tmp_path):
    a = fake_source(tmp_path / "tmp")
    np.savez(tmp_path / "mnist.npz", x_train=a["train_images"], y_train=a["train_labels"],
             x_test=a["test_images"], y_test=a["test_labels"])
    assert data.load_source("mnist", tmp_path).test_labels.shape == (120,)
    data._load_files.cache_clear()
    assert data.load_source("mnist", tmp_path / "mnist.npz").train_labels.shape == (300,)


def test_fashion_layout(tmp_path):
    fake_source(tmp_path / "FashionMNIST" / "raw")
    assert data.load_source("fashion-mnist", tmp_path).train_images.shape == (300, 784)


# -- subsets ------------------------------------------------------------------------------------

def test_subsets_are_balanced_and_nested():
    t = data.binary_task("mnist5k", 2, 7)
    prev = None
    for n in (64, 128, 256, 512, 800):
        sub = t.subset(n, seed=4)
        assert sub.numel() == n and len(set(sub.tolist())) == n
        assert int((t.pool_y[sub] == 1).sum()) == n // 2
        if prev is not None:
            assert set(prev.tolist()) <= set(sub.tolist())
        prev = sub
    assert not torch.equal(t.subset(64, 0).sort().values, t.subset(64, 1).sort().values)
    assert torch.equal(t.subset(64, 3), t.subset(64, 3))


# -- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("pair, msg", [((3, 3), "a < b"), ((8, 3), "a < b"), ((3, 11), "0..9"), ((-1, 2), "0..9")])
def test_invalid_pairs(pair, msg):
    with pytest.raises(DataError, match=msg):
        data.binary_task("mnist5k", *pair)


def test_too_many_training_points_and_odd_sizes():
    t = data.binary_task("mnist5k", 0, 1)
    with pytest.raises(DataError, match="needs 500 images per digit"):
        t.subset(1000, 0)
    with pytest.raises(DataError, match="even"):
        t.subset(63, 0)


def test_unknown_source():
    with pytest.raises(DataError, match="unknown data source"):
        data.load_source("cifar")


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        data.load_source("mnist", tmp_path)
    fake_source(tmp_path / "p")
    (tmp_path / "p" / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        data.load_source("mnist", tmp_path / "p")


@pytest.mark.parametrize("damage", ["truncate_gz", "bad_magic", "short_body", "label_count"])
def test_corrupt_files(tmp_path, damage):
    fake_source(tmp_path, gz=damage == "truncate_gz")
    if damage == "truncate_gz":
        p = tmp_path / "train-images-idx3-ubyte.gz"
        p.write_bytes(p.read_bytes()[:500])
        match = "corrupt or truncated"
    elif damage == "bad_magic":
        p = tmp_path / "t10k-images-idx3-ubyte"
        p.write_bytes(b"\x00\x00\x09\x99" + p.read_bytes()[4:])
        match = "magic"
    elif damage == "short_body":
        p = tmp_path / "t10k-images-idx3-ubyte"
        p.write_bytes(p.read_bytes()[:-10])
        match = "corrupt IDX"
    else:
        idx.write(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(7, np.uint8))
        match = "labels"
    with pytest.raises(DataError, match=match):
        data.load_source("mnist", tmp_path)


@pytest.mark.parametrize("content, msg", [
    (b"\x00\x00\x08\x03" + b"\x00\x00\x00\x0a" * 2, "12 bytes, shorter than the 16-byte header"),
    (b"\x00\x00\x08\x03" + b"\xff\xff\xff\xff" * 3, "header announces"),
])
def test_short_or_absurd_idx_header_is_a_data_error_naming_the_file(tmp_path, content, msg):
    fake_source(tmp_path, gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(content)
    with pytest.raises(DataError, match=msg) as e:
        data.load_source("mnist", tmp_path)
    assert str(e.value).startswith(str(p))


def _npz(tmp_path, **change):
    a = fake_source(tmp_path / "src")
    z = {"x_train": a["train_images"], "y_train": a["train_labels"], "x_test": a["test_images"],
         "y_test": a["test_labels"], **change}
    np.savez(tmp_path / "mnist.npz", **z)
    return tmp_path / "mnist.npz"


_NAN_LABELS = np.where(np.arange(120) == 5, np.nan, np.arange(120) % 10)


@pytest.mark.parametrize("change, msg", [
    ({"y_test": _NAN_LABELS}, "test labels contain NaN"),
    ({"y_train": np.full(300, 10)}, r"train labels outside 0\.\.9"),
    ({"y_train": np.full(300, -1)}, r"train labels outside 0\.\.9"),
    ({"y_train": np.full(300, 2.5)}, "train labels are not all integers"),
    ({"y_test": np.array(["3"] * 120)}, "test labels have dtype"),
    ({"y_test": np.zeros((120, 1))}, "labels of shape"),
    ({"x_train": np.zeros((300, 784), np.uint8)}, r"train images have shape \[300, 784\]"),
    ({"x_test": np.full((120, 28, 28), np.nan)}, "test images contain NaN"),
    ({"x_test": np.full((120, 28, 28), 0.5)}, "test images are not all integers"),
    ({"x_train": np.full((300, 28, 28), 256.0)}, r"train images outside 0\.\.255"),
])
def test_npz_contents_are_validated(tmp_path, change, msg):
    p = _npz(tmp_path, **change)
    with pytest.raises(DataError, match=msg) as e:
        data.load_source("mnist", p)
    assert str(e.value).startswith(str(p)) and "\n" not in str(e.value)


def test_npz_with_float_labels_that_are_digits_is_accepted(tmp_path):
    p = _npz(tmp_path, y_train=(np.arange(300) % 10).astype(np.float32))
    assert np.bincount(data.load_source("mnist", p).train_labels).tolist() == [30] * 10


def test_bad_data_files_are_one_line_from_the_command_line(tmp_path):
    p = _npz(tmp_path, y_test=_NAN_LABELS)
    r = run_cli("data", "mnist", "--data-dir", p)
    assert r.returncode == 2 and r.stderr.strip() == f"smoothness: error: {p}: test labels contain NaN or infinite values"
    d = tmp_path / "idx"
    fake_source(d, gz=False)
    (d / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00\x00\x00\x0a" * 2)
    r = run_cli("data", "mnist", "--data-dir", d)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert f"{d / 'train-labels-idx1-ubyte'}: corrupt IDX file" in r.stderr


@pytest.mark.parametrize("args, msg", [
    (["--pair", "3", "3"], "a < b"),
    (["--pair", "3", "11"], "0..9"),
    (["--n-train", "2048"], "needs 1024 images per digit"),
    (["--data", "mnist", "--data-dir", "/nonexistent"], "not found"),
])
def test_cli_errors_are_one_line_with_nonzero_exit(args, msg):
    r = run_cli("train", *args, "--json")
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0] and lines[0].startswith("smoothness: error:")


def test_cli_unknown_dataset_is_rejected():
    r = run_cli("train", "--data", "cifar")
    assert r.returncode != 0 and "unknown data source 'cifar'" in r.stderr and "Traceback" not in r.stderr
    assert "line-gp" in r.stderr   # the 1-D tasks are named among the choices


# -- download -----------------------------------------------------------------------------------

class _Server:
    """A static HTTP server on 127.0.0.1 serving a folder, in a thread."""

    def __init__(self, root: Path):
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a, **k: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _served(tmp_path):
    good = tmp_path / "good"
    fake_source(good)
    sums = {name: idx.md5(gzip.decompress((good / (name + ".gz")).read_bytes())) for name in idx.FILES.values()}
    return good, sums


def test_download_from_local_server_verifies_and_loads(tmp_path):
    good, sums = _served(tmp_path)
    with _Server(good) as srv:
        dest = idx.download("mnist", tmp_path / "dl", mirrors=[srv.url], checksums=sums, log=lambda s: None)
    s = data.load_source("mnist", dest)
    assert s.train_images.shape == (300, 784)
    # A second call finds the verified files and fetches nothing (the server is gone now).
    idx.download("mnist", dest, mirrors=["http://127.0.0.1:9/"], checksums=sums, log=lambda s: None)


def test_download_rejects_corrupted_file_and_falls_back_to_next_mirror(tmp_path):
    good, sums = _served(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    raw = bytearray(gzip.decompress((bad / "t10k-images-idx3-ubyte.gz").read_bytes()))
    raw[1000] ^= 0xFF  # one flipped byte: a valid gzip with the wrong content
    (bad / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    with _Server(bad) as srv_bad:
        with pytest.raises(DataError, match="checksum mismatch"):
            idx.download("mnist", tmp_path / "dl1", mirrors=[srv_bad.url], checksums=sums, log=lambda s: None)
        assert idx.find_file(tmp_path / "dl1", "t10k-images-idx3-ubyte") is None
        with _Server(good) as srv_good:
            dest = idx.download("mnist", tmp_path / "dl2", mirrors=[srv_bad.url, srv_good.url], checksums=sums,
                                log=lambda s: None)
    assert data.load_source("mnist", dest).test_images.shape == (120, 784)


def test_download_with_official_checksums_rejects_other_files(tmp_path):
    good, _ = _served(tmp_path)
    with _Server(good) as srv:
        r = run_cli("download", "mnist", "--dir", tmp_path / "dl", "--mirror", srv.url)
    assert r.returncode == 2 and "checksum mismatch" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_download_reports_unreachable_mirror(tmp_path):
    with pytest.raises(DataError, match="could not download"):
        idx.download("mnist", tmp_path / "dl", mirrors=["http://127.0.0.1:9/"], log=lambda s: None, timeout=5)

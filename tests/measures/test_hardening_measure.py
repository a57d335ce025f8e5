"""Hardening of `smoothness measure` and of the measures' Python API: bad data, models and options get one clear
error (a SmoothnessError) before any work, never a traceback from deep inside; a number that cannot be computed is
NaN with a warning saying why; the --density file is checked before the measures and never replaces a file."""
import errno
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from conftest import corrupt_member
from smoothness import measures
from smoothness.cli import commands
from smoothness.errors import MeasureError, MeasureTypeError, SmoothnessError
from smoothness.measures import checks, curvature
from smoothness.measures import model as measures_model
from smoothness.report import figures

FAST = ("--segments", 5, "--points", 5, "--probes", 3, "--steps", 5)
NET = '''
from torch import nn

def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

def needs(k):
    return build()

def raises():
    raise RuntimeError("boom")

def exits():
    raise SystemExit(0)
'''


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).eval()


def points(n=10):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _nan_at(x, value=float("nan")):
    x = x.clone()
    x[2, 1] = value
    return x


# -- the Python API ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_points_are_refused_by_every_measure(value):
    f, (x, y) = net(), points()
    bad = _nan_at(x, value)
    calls = [lambda: measures.gradient_norm(f, bad), lambda: measures.path_lengths(f, bad, 5, 5),
             lambda: measures.lipschitz_bounds(f, bad, output="margin"),
             lambda: curvature.hessian_trace(f, bad, y, probes=2), lambda: curvature.sharpness(f, bad, y, steps=3),
             lambda: measures.measure_model(f, bad, y),
             lambda: measures.gradient_norm(f, [x[5:], bad[:5]])]      # a streamed batch, when it is read
    for call in calls:
        with pytest.raises(MeasureError, match=r"non-finite values in .*(NaN|infinite).*first in row 2"):
            call()


def test_non_finite_float_targets_are_refused():
    f, (x, _) = net(), points()
    y = torch.randn(10, 3)
    y[3, 0] = float("nan")
    with pytest.raises(MeasureError, match=r"non-finite values in y \(1 NaN, the first in row 3\)"):
        curvature.hessian_trace(f, x, y, probes=2)
    with pytest.raises(MeasureError, match="non-finite"):
        measures.fpl_lower_bound(y[:, 0])


def test_non_finite_parameters_give_nan_with_a_warning_that_names_them():
    f, (x, y) = net(), points()
    with torch.no_grad():
        f[1].weight[0, 0] = float("nan")
    calls = {"gn": lambda: [measures.gradient_norm(f, x)],
             "paths": lambda: list(measures.path_lengths(f, x, 5, 5).values()),
             "lipschitz": lambda: list(measures.lipschitz_bounds(f, x, output="margin")),   # was an SVD failure
             "sharpness": lambda: [curvature.sharpness(f, x, y, steps=5)],                    # was an eigh failure
             "trace": lambda: [curvature.hessian_trace(f, x, y, probes=3)],
             "density": lambda: [curvature.eigenvalue_density(f, x, y, steps=5, runs=2).trace()],
             "model": lambda: list(measures.measure_model(f, x, y).values.values())}
    for name, call in calls.items():
        with pytest.warns(UserWarning, match=r"non-finite parameters \(1\.weight: 1 NaN\)"):
            got = call()
        assert got and all(math.isnan(v) for v in got), name
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        mlp[0].bias[1] = float("inf")
    with pytest.warns(UserWarning, match=r"0\.bias: 1 infinite"):
        assert all(math.isnan(v) for v in measures.lipschitz_bounds(mlp, x))


def test_a_hessian_vector_product_that_overflows_is_nan_with_a_warning():
    torch.manual_seed(0)
    f, (x, _) = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1)), points()
    with torch.no_grad():
        for m in f:
            m.weight.fill_(1e25)                 # finite, but the curvature overflows float32
    y = torch.zeros(10)
    for call in (lambda: curvature.sharpness(f, x, y, steps=5), lambda: curvature.hessian_trace(f, x, y, probes=3),
                 lambda: curvature.eigenvalue_density(f, x, y, steps=3, runs=2).trace()):
        with pytest.warns(UserWarning, match="matrix-vector product is not finite"):
            assert math.isnan(call())


def test_one_point_has_no_path_lengths():
    f, (x, y) = net(), points()
    with pytest.raises(MeasureError, match="at least 2 points"):
        measures.path_lengths(f, x[:1], 5, 5)
    with pytest.warns(UserWarning, match="one point: the path lengths are skipped"):
        got = measures.measure_model(f, x[:1], y[:1], ("gradient_norm", "path_lengths"))
    assert list(got.values) == ["gradient_norm"] and math.isnan(got.values["gradient_norm"].se)


class _Tuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x), x


class _Dict(_Tuple):
    def forward(self, x):
        return {"logits": self.lin(x)}


class _Sum(_Tuple):
    def forward(self, x):
        return self.lin(x).sum()


@pytest.mark.parametrize("model, error, words", [(_Tuple, MeasureTypeError, "returns a tuple of 2 items"),
                                                (_Dict, MeasureTypeError, "model(x)['logits']"),
                                                (_Sum, MeasureError, "returns a 0-d tensor")])
def test_a_model_that_returns_no_tensor_per_point_is_named(model, error, words):
    f, (x, y) = model(), points()
    for call in (lambda: measures.gradient_norm(f, x), lambda: measures.path_lengths(f, x, 3, 3),
                 lambda: measures.lipschitz_bounds(f, x), lambda: curvature.hessian_trace(f, x, y, probes=2),
                 lambda: measures.measure_model(f, x, y)):
        with pytest.raises(error) as e:
            call()
        assert words in str(e.value) and isinstance(e.value, SmoothnessError)


def test_integer_points_of_an_embedding_have_the_curvature_only():
    torch.manual_seed(0)
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2)).eval()
    x, y = torch.randint(0, 10, (8, 3)), torch.randint(0, 2, (8,))
    for call in (lambda: measures.gradient_norm(emb, x), lambda: measures.path_lengths(emb, x, 3, 3)):
        with pytest.raises(MeasureError, match=r"x holds integers \(int64\).*floating-point"):
            call()
    with pytest.warns(UserWarning, match="input-space measures are skipped"):
        got = measures.measure_model(emb, x, y, settings=measures.Settings(probes=2, steps=3))
    assert set(got.values) == {"loss", "sharpness", "hessian_trace"}
    assert got.values["hessian_trace"] == pytest.approx(float(curvature.hessian_trace(emb, x, y, probes=2)))
    with pytest.raises(MeasureError, match="nothing to measure"):
        measures.measure_model(emb, x, y, ("gradient_norm",))
    # a float model given integer points: its own error as one line naming the points
    with pytest.raises(MeasureError, match=r"model fails on points of shape \[1, 4\] \(int64\): RuntimeError"):
        curvature.hessian_trace(net(), torch.randint(0, 3, (5, 4)), torch.randint(0, 3, (5,)), probes=2)


def test_a_list_of_tensors_is_a_list_of_batches():
    f, (x, _) = net(), points()
    batches = [x[:5], x[5:]]                   # equal sizes: once read as one array of 2 points of shape [5, 4]
    assert float(measures.gradient_norm(f, batches)) == pytest.approx(float(measures.gradient_norm(f, x)), rel=1e-6)
    got, want = measures.path_lengths(f, batches, 5, 5), measures.path_lengths(f, x, 5, 5)
    assert {k: float(v) for k, v in got.items()} == pytest.approx({k: float(v) for k, v in want.items()}, rel=1e-6)
    assert float(measures.gradient_norm(f, [[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])) > 0   # lists of numbers


def test_points_of_one_dimension_are_refused_with_the_fix():
    f, (x, _) = net(), points()
    for call in (lambda: measures.gradient_norm(f, x[0]), lambda: measures.path_lengths(f, x[0], 3, 3),
                 lambda: measures.gradient_norm(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)), x[0])):
        with pytest.raises(MeasureError, match=r"x has shape \(4,\).*x\[None\] is one point"):
            call()


@pytest.mark.parametrize("layout", ["sparse", "complex", "bool"])
def test_sparse_complex_and_boolean_data_are_refused(layout):
    f, (x, y) = net(), points()
    bad = {"sparse": x.to_sparse(), "complex": x.to(torch.complex64), "bool": x > 0}[layout]
    for call in (lambda: measures.gradient_norm(f, bad), lambda: curvature.hessian_trace(f, bad, y, probes=2)):
        with pytest.raises(MeasureTypeError, match=layout if layout != "bool" else "booleans"):
            call()


@pytest.mark.parametrize("targets, loss, words", [
    (torch.randn(10), None, r"mse loss \(the default for these targets and outputs\) compares each point's 3"),
    (torch.randint(0, 2, (10, 2)), "mse", r"mse loss compares each point's 3 output\(s\)"),
    (torch.arange(10) % 3 + 1, "mse", r"labels from 1 to 3, .* of the mse loss \(against one-hot targets\)"),
    (torch.arange(10) % 3 + 5, None, "class labels from 5 to 7, but the model has 3 outputs"),
    (torch.arange(10) % 3 - 5, "cross_entropy", "class labels from -5 to -3"),
    (torch.rand(10, 2), "cross_entropy", r"class probabilities \[n, 3\]"),
])
def test_targets_that_do_not_fit_the_loss_are_named(targets, loss, words):
    f, (x, _) = net(), points()
    for call in (lambda: curvature.hessian_trace(f, x, targets, loss, probes=2),
                 lambda: curvature.sharpness(f, x, targets, loss, steps=3),
                 lambda: curvature.hessian_trace(f, x, targets, loss, probes=2, batch_size=4)):
        with pytest.raises(MeasureError, match=words):
            call()


def test_float_targets_with_as_many_outputs_as_points_are_refused_not_broadcast():
    f, (x, _) = nn.Linear(4, 10), points(10)   # out [10, 10] - y [10] broadcast silently before
    with pytest.raises(MeasureError, match="compares each point's 10 output"):
        curvature.loss_value(f, x, torch.randn(10))


def test_the_mse_compares_each_points_outputs_with_its_targets_in_order():
    f, (x, _) = nn.Linear(4, 1), points(6)
    y = torch.randn(6, 1)
    g = nn.Sequential(f, nn.Flatten(0))         # output [n] against targets [n, 1]: once an [n, n] broadcast
    with torch.no_grad():
        want = float(((f(x) - y) ** 2).mean())
    assert float(curvature.loss_value(g, x, y)) == pytest.approx(want, rel=1e-6)
    assert float(curvature.loss_value(f, x, y[:, 0])) == pytest.approx(want, rel=1e-6)


def test_a_program_exported_in_training_mode_is_refused():
    net_ = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 3))
    x, y = points()
    batch = torch.export.Dim("batch")
    program = torch.export.export(net_, (x[:2],), dynamic_shapes=({0: batch},)).module()
    for call in (lambda: measures.gradient_norm(program, x), lambda: curvature.hessian_trace(program, x, y, probes=2)):
        with pytest.raises(MeasureError, match=r"runs batch_norm and dropout in training mode.*after model.eval\(\)"):
            call()
    ok = torch.export.export(net_.eval(), (x[:2],), dynamic_shapes=({0: batch},)).module()
    assert math.isfinite(measures.gradient_norm(ok, x))


def test_work_beyond_the_memory_is_refused_before_it_starts(monkeypatch):
    f, (x, y) = net(), points()
    t = time.perf_counter()
    with pytest.raises(MeasureError, match=r"10,000,000 segments of 100,000 points.*GB.*fewer segments"):
        measures.path_lengths(nn.Linear(784, 1), torch.randn(10, 784), 10**7, 10**5)   # 63 GB of end points
    assert time.perf_counter() - t < 5
    monkeypatch.setattr(checks.devices, "memory_budget", lambda device: 8_000)   # 8 kB to spare
    with pytest.raises(MeasureError, match=r"Lanczos basis of 67 steps x 67 parameters"):
        curvature.sharpness(f, x, y, steps=100)
    with pytest.raises(MeasureError, match="Lanczos basis"):
        measures.measure_model(f, x, y, ("gradient_norm", "sharpness"))


def test_measure_model_checks_everything_before_the_first_measure(monkeypatch):
    f, (x, y) = net(), points()
    called = []
    monkeypatch.setattr(measures_model.single, "gradient_norm", lambda *a, **k: called.append(1))
    with pytest.raises(MeasureError, match="class labels from 5"):
        measures.measure_model(f, x, y + 5)
    assert not called
    with pytest.raises(MeasureError, match="no measure named"):
        measures.measure_model(f, x, y, ())
    with pytest.raises(MeasureError, match="nothing to measure: no targets y"):
        measures.measure_model(f, x, None, ("loss", "sharpness"))


def test_the_training_mode_message_names_the_layers_and_what_to_do():
    f = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    with pytest.raises(MeasureError, match=r"training mode, with the layers 1 \(BatchNorm1d\).*call model.eval\(\)"):
        measures.gradient_norm(f, points()[0])
    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    with pytest.raises(MeasureError, match=r"1 \(BatchNorm1d\)"):
        measures.gradient_norm(scripted, points()[0])


def test_a_density_that_is_not_finite_is_not_drawn(tmp_path):
    d = curvature.Density(np.full((2, 3), np.nan), np.full((2, 3), np.nan), 10)
    assert figures.density_figure(d, tmp_path / "d.png") is False and not (tmp_path / "d.png").exists()
    good = curvature.Density(np.array([[1.0, 2.0]]), np.array([[0.5, 0.5]]), 2)
    (tmp_path / "old.png").write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        figures.density_figure(good, tmp_path / "old.png")
    assert (tmp_path / "old.png").read_bytes() == b"keep"
    assert figures.density_figure(good, tmp_path / "old.png", replace=True)
    assert (tmp_path / "old.png").read_bytes()[:4] == b"\x89PNG"


# -- the command line ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    d = tmp_path_factory.mktemp("measure")
    (d / "hardnet.py").write_text(NET)
    (d / "hardsyntax.py").write_text("def build(:\n")
    f = net()
    torch.save(f.state_dict(), d / "w.pt")
    with torch.no_grad():
        f[1].weight[0, 0] = float("nan")
    torch.save(f.state_dict(), d / "nanw.pt")
    x, y = points(12)
    np.savez(d / "ok.npz", x=x.numpy(), y=y.numpy())
    np.savez(d / "nox.npz", x=x.numpy())
    np.savez(d / "nan.npz", x=_nan_at(x).numpy(), y=y.numpy())
    np.savez(d / "inf.npz", x=_nan_at(x, float("inf")).numpy(), y=y.numpy())
    np.savez(d / "nany.npz", x=x.numpy(), y=np.where(np.arange(12) == 3, np.nan, 1.0))
    np.savez(d / "oob.npz", x=x.numpy(), y=(y + 5).numpy())
    np.savez(d / "floaty.npz", x=x.numpy(), y=np.random.default_rng(0).normal(size=12).astype("float32"))
    np.savez(d / "int.npz", x=np.arange(48).reshape(12, 4), y=y.numpy())
    np.savez(d / "complex.npz", x=x.numpy().astype("complex64"), y=y.numpy())
    torch.save({"x": x.to_sparse(), "y": y}, d / "sparse.pt")
    np.savez(d / "one.npz", x=x[:1].numpy(), y=y[:1].numpy())
    trained = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    torch.export.save(torch.export.export(trained, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},)),
                      d / "train.pt2")
    torch.export.save(torch.export.export(net(), (x[:3],)), d / "fixed.pt2")   # for batches of 3 points only
    torch.export.save(torch.export.export(net(), (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},)),
                      d / "dyn.pt2")
    np.savez(d / "wide.npz", x=np.zeros((12, 5), dtype="float32"), y=y.numpy())
    return d


def _main(capsys, monkeypatch, d, *args):
    monkeypatch.chdir(d)
    code = commands.main(["measure", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(code, out, err, *words, before_work=True):
    assert code == 2 and "Traceback" not in err, err
    lines = [s for s in err.strip().splitlines() if s.startswith("smoothness: error:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    for w in words:
        assert w in lines[0], (w, lines[0])
    if before_work:
        assert out == "", out   # nothing was measured before the error
        assert err.strip() == lines[0], err   # nor a note on measures skipped
    return lines[0]


@pytest.mark.parametrize("inputs, words", [
    ("nan.npz", ["nan.npz: non-finite values in x (1 NaN, the first in row 2)"]),
    ("inf.npz", ["inf.npz: non-finite values in x (1 infinite"]),
    ("nany.npz", ["nany.npz: non-finite values in y (1 NaN, the first in row 3)"]),
    ("oob.npz", ["y holds class labels from", "to 7, but the model has 3 outputs"]),
    ("floaty.npz", ["mse loss", "3 output(s)", "integer class labels"]),
    ("complex.npz", ["complex numbers (complex64) in x"]),
    ("sparse.pt", ["sparse tensor (sparse_coo) for x"]),
    ("int.npz", ["model fails on points of shape [1, 4] (int64)"]),
])
def test_bad_data_is_one_line_before_any_measure(ck, capsys, monkeypatch, inputs, words):
    code, out, err = _main(capsys, monkeypatch, ck, "w.pt", "--factory", "hardnet:build", "--inputs", inputs, *FAST)
    _one_line(code, out, err, *words)


def test_mse_with_several_outputs_is_one_line(ck, capsys, monkeypatch):
    code, out, err = _main(capsys, monkeypatch, ck, "w.pt", "--factory", "hardnet:build", "--inputs", "floaty.npz",
                           "--loss", "mse", *FAST)
    _one_line(code, out, err, "mse loss compares each point's 3 output(s)", "or integer class labels [n]")


def test_mse_with_integer_labels_of_several_outputs_is_measured_against_one_hot_targets(ck, capsys, monkeypatch):
    code, out, err = _main(capsys, monkeypatch, ck, "w.pt", "--factory", "hardnet:build", "--inputs", "ok.npz",
                           "--loss", "mse", "--measures", "loss,hessian_trace", *FAST)
    assert code == 0 and "Traceback" not in err, err
    assert "mse (against one-hot targets: integer class labels)" in out and "nan" not in out.lower(), out


@pytest.mark.parametrize("measures_, inputs, words", [
    ("", "ok.npz", ["--measures '': name at least one of"]),
    ("loss,sharpness", "nox.npz", ["nothing to measure: no targets y"]),
    ("gradient_norm", "int.npz", ["nothing to measure: the points hold integers (int64)"]),
])
def test_nothing_left_to_measure_is_one_line(ck, capsys, monkeypatch, measures_, inputs, words):
    code, out, err = _main(capsys, monkeypatch, ck, "w.pt", "--factory", "hardnet:build", "--inputs", inputs,
                           "--measures", measures_, *FAST)
    _one_line(code, out, err, *words)


@pytest.mark.parametrize("factory, words", [
    ("hardnet:raises", ["--factory 'hardnet:raises' raised RuntimeError: boom"]),
    ("hardnet:needs", ["takes the arguments k", "called with none"]),
    ("hardnet:exits", ["called sys.exit(0)"]),
    ("hardsyntax:build", ["importing hardsyntax raised SyntaxError"]),
])
def test_a_factory_that_fails_is_one_line(ck, capsys, monkeypatch, factory, words):
    code, out, err = _main(capsys, monkeypatch, ck, "w.pt", "--factory", factory, "--inputs", "ok.npz", *FAST)
    _one_line(code, out, err, *words)


def test_a_saved_mlp_measured_on_data_of_another_size_is_one_line(tmp_path, capsys, monkeypatch):
    """Also: a saved file without the optional status, and a diverged (NaN) model in it, are measured."""
    from smoothness.experiments.storage import modelfile
    from smoothness.models import MLPStack
    g = torch.Generator().manual_seed(0)
    p = MLPStack([torch.randn(1, 8, 784, generator=g), torch.randn(1, 1, 8, generator=g)],
                 [torch.zeros(1, 8), torch.zeros(1, 1)])
    modelfile.save_models(tmp_path / "m.pt", [{"params": p, "data": "mnist5k", "pair": [3, 8], "n_train": 16,
                                              "seed": 0, "hidden": [8]}])
    code, out, err = _main(capsys, monkeypatch, tmp_path, "m.pt", "--data", "line-sine")
    _one_line(code, out, err, "model 1 takes 784 inputs", "line-sine have 1")
    code, out, err = _main(capsys, monkeypatch, tmp_path, "m.pt", "--density", "d.png")
    _one_line(code, out, err, "--density: for a checkpoint measured on --inputs")
    code, out, err = _main(capsys, monkeypatch, tmp_path, "m.pt", "--measures", "gradient_norm", "--runs", "2")
    _one_line(code, out, err, "--measures, --runs: for a checkpoint measured on --inputs")
    with torch.no_grad():
        p.weights[0][0, 0, 0] = float("nan")
    modelfile.save_models(tmp_path / "nan.pt", [{"params": p, "data": "mnist5k", "pair": [3, 8], "n_train": 16,
                                                "seed": 0, "hidden": [8]}])
    code, out, err = _main(capsys, monkeypatch, tmp_path, "nan.pt", "--segments", 5, "--points", 5,
                           "--measure-points", 20)
    assert code == 0 and "Traceback" not in err, err
    assert "no status" in out and "lipschitz_upper" in out


def test_inputs_that_are_no_regular_file_are_named_and_a_fifo_is_not_opened(ck, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for inputs, words in ((fifo, "is not a regular file (a pipe, a device or a socket)"),
                          (tmp_path, "is a folder, not a file"), ("/dev/zero", "is not a regular file"),
                          (tmp_path / "gone.npz", "no such file")):
        r = subprocess.run([sys.executable, "-m", "smoothness", "measure", "w.pt", "--factory", "hardnet:build",
                            "--inputs", str(inputs)], capture_output=True, text=True, cwd=ck, timeout=120)
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("damaged", ["w.pt", "dyn.pt2", "script.pt", "pts.pt"])
def test_a_zip_file_with_a_damaged_member_is_refused_naming_it(ck, tmp_path, capsys, monkeypatch, damaged):
    """torch.load does not check the zip archive's CRCs: flipped bits in a tensor would be measured as weights."""
    x, y = points(12)
    torch.save({"x": x, "y": y}, tmp_path / "pts.pt")
    torch.jit.save(torch.jit.script(net()), tmp_path / "script.pt")
    for name in ("w.pt", "dyn.pt2"):
        (tmp_path / name).write_bytes((ck / name).read_bytes())
    member = corrupt_member(tmp_path / damaged)
    model = "w.pt" if damaged == "pts.pt" else damaged
    factory = ("--factory", "hardnet:build") if model == "w.pt" else ()
    code, out, err = _main(capsys, monkeypatch, ck, tmp_path / model, *factory, "--inputs", tmp_path / "pts.pt",
                           *FAST)
    _one_line(code, out, err, f"{tmp_path / damaged}: the file is corrupt: the member {member} does not match "
                              "its CRC-32")


def test_a_torchscript_file_named_pt2_is_one_line_without_torch_exports_logged_traceback(ck, tmp_path):
    torch.jit.save(torch.jit.script(net()), tmp_path / "s_as.pt2")
    r = subprocess.run([sys.executable, "-m", "smoothness", "measure", str(tmp_path / "s_as.pt2"), "--inputs",
                        "ok.npz"], capture_output=True, text=True, cwd=ck, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "not a torch.export program (PytorchStreamReader failed locating file archive_format" in r.stderr
    assert "needs another name, such as .pt" in r.stderr and "warnings above" not in r.stderr


def test_the_training_mode_of_an_exported_program_is_one_line(ck, capsys, monkeypatch):
    code, out, err = _main(capsys, monkeypatch, ck, "train.pt2", "--inputs", "ok.npz", *FAST)
    _one_line(code, out, err, "runs batch_norm in training mode", "export the model after model.eval()")


def test_a_program_exported_for_one_batch_size_says_how_to_export_it(ck, capsys, monkeypatch):
    code, out, err = _main(capsys, monkeypatch, ck, "fixed.pt2", "--inputs", "ok.npz", *FAST)
    _one_line(code, out, err, "holds only inputs of the shape it was exported with", "dynamic_shapes=")


def test_points_of_another_shape_than_a_programs_say_so(ck, capsys, monkeypatch):
    code, out, err = _main(capsys, monkeypatch, ck, "dyn.pt2", "--inputs", "wide.npz", *FAST)
    _one_line(code, out, err, "the points' shape [5] is not the one the torch.export program was exported for")
    assert "dynamic_shapes" not in err


def test_one_point_skips_the_path_lengths_with_a_line(ck, capsys, monkeypatch):
    code, out, err = _main(capsys, monkeypatch, ck, "w.pt", "--factory", "hardnet:build", "--inputs", "one.npz",
                           "--measures", "gradient_norm,path_lengths", *FAST)
    assert code == 0 and "one point: the path lengths are skipped" in err
    assert "gradient_norm" in out and "path_length" not in out


def test_non_finite_weights_give_a_warning_and_nan(ck, capsys, monkeypatch):
    code, out, err = _main(capsys, monkeypatch, ck, "nanw.pt", "--factory", "hardnet:build", "--inputs", "ok.npz",
                           *FAST)
    assert code == 0 and "Traceback" not in err
    assert err.count("non-finite parameters (1.weight: 1 NaN)") == 1       # once, not once per measure
    assert "hessian_trace" in out and "nan" in out


def _png(d):
    return sorted(p.name for p in d.iterdir() if p.suffix == ".png")


@pytest.mark.parametrize("density, words", [
    ("", ["--density '': name the PNG file"]),
    (".", ["is a folder; name a PNG file in it"]),
    ("d.txt", ["the output is a PNG file; name a file ending in .png"]),
    ("/dev/full", ["the output is a PNG file"]),
    ("missing/d.png", ["the folder missing does not exist"]),
    ("old.png", ["exists, and is never replaced"]),
])
def test_the_density_file_is_checked_before_any_measure(ck, capsys, monkeypatch, density, words):
    (ck / "old.png").write_bytes(b"keep")
    code, out, err = _main(capsys, monkeypatch, ck, "w.pt", "--factory", "hardnet:build", "--inputs", "ok.npz",
                           "--density", density, *FAST)
    _one_line(code, out, err, *words)
    assert _png(ck) == ["old.png"] and (ck / "old.png").read_bytes() == b"keep"
    assert not os.path.exists("/dev/full.png")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_density_file_in_a_read_only_folder_is_refused_first(ck, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, out, err = _main(capsys, monkeypatch, ck, "w.pt", "--factory", "hardnet:build", "--inputs", "ok.npz",
                               "--density", ro / "d.png", *FAST)
    finally:
        ro.chmod(0o755)
    _one_line(code, out, err, "is not writable")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc, where no file can be created")
def test_a_density_file_that_cannot_be_created_is_refused_first(ck, capsys, monkeypatch):
    """Permissions say yes (as for root, or on a mount that refuses writes), but no file can be created there."""
    monkeypatch.setattr(os, "access", lambda *a, **k: True)
    for density, words in (("/proc/d.png", "cannot create it: no such file or directory"),
                           ("a" * 300 + ".png", "the file name is too long")):
        code, out, err = _main(capsys, monkeypatch, ck, "w.pt", "--factory", "hardnet:build", "--inputs", "ok.npz",
                               "--density", density, *FAST)
        _one_line(code, out, err, words)
    assert not os.path.exists("/proc/d.png")


def test_a_density_without_targets_is_refused_and_nothing_claims_to_be_drawn(ck, capsys, monkeypatch):
    code, out, err = _main(capsys, monkeypatch, ck, "w.pt", "--factory", "hardnet:build", "--inputs", "nox.npz",
                           "--density", "d2.png", *FAST)
    _one_line(code, out, err, "--density d2.png: cannot be drawn: no targets y")
    assert not (ck / "d2.png").exists()


def test_a_figure_that_cannot_be_written_keeps_the_measures(ck, tmp_path, capsys, monkeypatch):
    def full(density, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(figures, "density_figure", full)
    code, out, err = _main(capsys, monkeypatch, ck, "w.pt", "--factory", "hardnet:build", "--inputs", "ok.npz",
                           "--density", tmp_path / "d.png", "--runs", 2, *FAST)
    line = _one_line(code, out, err, "not drawn: cannot write it: No space left on device",
                     "the measures above are complete", before_work=False)
    assert "density_trace" in out and "hessian_trace" in out and "density:" not in out, line
    code, out, err = _main(capsys, monkeypatch, ck, "nanw.pt", "--factory", "hardnet:build", "--inputs", "ok.npz",
                           "--density", tmp_path / "n.png", "--runs", 2, *FAST)
    _one_line(code, out, err, "parameters are not finite", before_work=False)
    assert "density_trace" in out


def test_a_density_is_drawn_to_a_new_file(ck, tmp_path, capsys, monkeypatch):
    code, out, err = _main(capsys, monkeypatch, ck, "w.pt", "--factory", "hardnet:build", "--inputs", "ok.npz",
                           "--measures", "loss", "--density", tmp_path / "d.png", "--runs", 2, *FAST)
    assert code == 0, err
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG" and f"density: {tmp_path / 'd.png'}" in out


@pytest.mark.parametrize("args, words", [
    (("--segments", 10_000_000, "--points", 100_000), ["--segments 10,000,000 x --points 100,000",
                                                       "beyond the 100,000,000"]),
    (("--runs", 10_000, "--steps", 1_000, "--density", "r.png"), ["--runs 10,000 x --steps 1,000",
                                                                  "Hessian-vector products"]),
])
def test_the_product_of_two_limits_is_bounded_at_once(ck, capsys, monkeypatch, args, words):
    t = time.perf_counter()
    code, out, err = _main(capsys, monkeypatch, ck, "w.pt", "--factory", "hardnet:build", "--inputs", "ok.npz",
                           *args)
    _one_line(code, out, err, *words)
    assert time.perf_counter() - t < 10



def test_a_diverged_model_in_a_stack_gets_a_nan_bound_and_the_others_theirs():
    from smoothness.measures import lipschitz
    from smoothness.models import MLPStack
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(2, 8, 4, generator=g), torch.randn(2, 1, 8, generator=g)]
    b = [torch.zeros(2, 8), torch.zeros(2, 1)]
    w[0][0, 3, 1] = float("nan")                  # model 0 diverged: once an SVD failure for the whole stack
    got = lipschitz.spectral_products(MLPStack(w, b))
    alone = lipschitz.spectral_products(MLPStack([v[1:] for v in w], [v[1:] for v in b]))
    assert math.isnan(got[0]) and float(got[1]) == pytest.approx(float(alone[0]), rel=1e-6)

"""`smoothness measure` on checkpoints of one's own: a factory and a state dict, a torch.export program, a
TorchScript file; points from .npz and .pt files; the record carries every standard error; bad input gets one line."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

FACTORY = '''
from torch import nn

def build():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 4))
'''


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "smoothness", "measure", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    (d / "mynet.py").write_text(FACTORY)
    sys.path.insert(0, str(d))
    import mynet
    sys.path.remove(str(d))
    torch.manual_seed(0)
    net = mynet.build().eval()
    with torch.no_grad():
        net[1].running_var.uniform_(0.5, 2.0)
    torch.save({"model_state_dict": net.state_dict(), "epoch": 3}, d / "ck.pt")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 1, 8, 8, generator=g), torch.randint(0, 4, (24,), generator=g)
    np.savez(d / "data.npz", x=x.numpy(), y=y.numpy())
    torch.save({"x": x}, d / "points.pt")
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net, (x[:2],), dynamic_shapes=({0: batch},)), d / "net.pt2")
    torch.jit.save(torch.jit.trace(net, x[:1]), d / "net.ts")
    return d, net, x, y


FAST = ("--segments", 20, "--points", 10, "--probes", 8, "--steps", 30, "--json")


def test_a_factory_and_a_state_dict_measured_as_the_api_does(files):
    from smoothness import measures
    from smoothness.measures import curvature
    d, net, x, y = files
    r = cli("ck.pt", "--factory", "mynet:build", "--inputs", "data.npz", *FAST, cwd=d)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["points"] == 24 and rec["input_shape"] == [1, 8, 8]
    assert rec["gradient_norm"] == pytest.approx(float(measures.gradient_norm(net, x)), rel=1e-5)
    assert rec["gradient_norm_se"] > 0 and rec["gradient_norm_n"] == 24
    fpl = measures.function_path_length(net, x, segments=20, points=10)
    assert rec["function_path_length"] == pytest.approx(float(fpl), rel=1e-5)
    assert rec["function_path_length_se"] == pytest.approx(fpl.se, rel=1e-4)
    assert 0 < rec["lipschitz_lower"] <= rec["lipschitz_upper"] < float("inf")
    tr = curvature.hessian_trace(net, x, y, probes=8)
    assert rec["hessian_trace"] == pytest.approx(float(tr), rel=1e-4) and rec["hessian_trace_n"] == 8
    assert rec["sharpness"] > 0 and rec["sharpness_residual"] >= 0
    assert all(rec[f"seconds_{k}"] >= 0 for k in ("gradient_norm", "path_lengths", "lipschitz", "sharpness"))


def test_the_export_program_gives_the_same_record_and_torchscript_the_input_space_part(files):
    d, *_ = files
    a = json.loads(cli("ck.pt", "--factory", "mynet:build", "--inputs", "data.npz", *FAST, cwd=d).stdout)
    r = cli("net.pt2", "--inputs", "data.npz", *FAST, cwd=d)
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)
    for k in ("gradient_norm", "function_path_length", "gradient_path_length", "lipschitz_lower", "lipschitz_upper",
              "sharpness", "hessian_trace"):
        assert b[k] == pytest.approx(a[k], rel=1e-4), k
    r = cli("net.ts", "--inputs", "data.npz", *FAST, cwd=d)
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)
    assert c["gradient_norm"] == pytest.approx(a["gradient_norm"], rel=1e-5) and "sharpness" not in c
    assert "curvature measures are skipped" in r.stderr and "no Lipschitz upper bound" in r.stderr


def test_the_table_and_the_density_figure(files):
    d, *_ = files
    r = cli("ck.pt", "--factory", "mynet:build", "--inputs", "points.pt", "--segments", 20, "--points", 10,
            "--measures", "gradient_norm,path_lengths", cwd=d)
    assert r.returncode == 0, r.stderr
    assert "se over 24 points" in r.stdout and "se over 20 segments" in r.stdout
    assert "output measured: all 4 outputs" in r.stdout and "loss:" not in r.stdout
    r = cli("net.pt2", "--inputs", "data.npz", "--measures", "loss", "--density", "dens.png", "--steps", 20, "--runs",
            2, cwd=d)
    assert r.returncode == 0, r.stderr
    assert (d / "dens.png").read_bytes()[:4] == b"\x89PNG" and "density_trace" in r.stdout
    assert "loss: cross_entropy (the default for integer targets and K > 1 outputs)" in r.stdout
    assert "se over 2 Lanczos runs" in r.stdout
    r = cli("net.pt2", "--inputs", "data.npz", "--measures", "lipschitz,loss,sharpness", "--steps", 30, cwd=d)
    lines = {ln.split()[0]: ln for ln in r.stdout.splitlines() if ln.strip()}
    assert "Lanczos bound (residual" in lines["sharpness"] and "steps)" in lines["sharpness"], r.stdout
    assert lines["loss"].split()[2] == "exact" and "exact (an upper bound)" in lines["lipschitz_upper"]
    assert "Lipschitz bracket of: the margin" in r.stdout


def test_the_record_names_the_loss_the_output_and_each_error(files):
    d, *_ = files
    r = cli("net.pt2", "--inputs", "data.npz", *FAST, "--loss", "mse", "--output", "margin", cwd=d)
    assert r.returncode == 0, r.stderr                      # the labels of 4 outputs are the mse's one-hot targets
    assert json.loads(r.stdout)["loss_function"] == "mse (against one-hot targets: integer class labels)"
    rec = json.loads(cli("net.pt2", "--inputs", "data.npz", *FAST, cwd=d).stdout)
    assert rec["loss_function"].startswith("cross_entropy (the default") and rec["lipschitz_of"].startswith("the margin")
    assert rec["output_measured"].startswith("all 4 outputs")
    assert rec["loss_error"] == "exact" and "loss_n" not in rec and "loss_se" not in rec
    assert rec["lipschitz_upper_error"] == "exact (an upper bound)" and "lipschitz_upper_n" not in rec
    assert rec["gradient_norm_error"] == "standard error over 24 points"
    assert rec["hessian_trace_error"] == "standard error over 8 probe vectors"
    assert rec["sharpness_error"].startswith("Lanczos error bound") and 0 <= rec["sharpness_bound"]
    assert rec["sharpness_bound"] <= rec["sharpness_residual"] + 1e-3 * rec["sharpness"] and "sharpness_se" not in rec


def test_the_density_figure_is_labelled_with_the_loss_the_points_and_the_kernel_width():
    import numpy as np

    from smoothness.measures import curvature
    from smoothness.report import figures
    d = curvature.Density(np.array([[0.0, 1.0, 3.0]]), np.array([[0.5, 0.25, 0.25]]), 1234)
    title, label = figures.density_labels(d, loss="cross_entropy (the default ...)", points=400)
    assert "cross_entropy loss, 400 points, 1,234 parameters" in title
    assert label == "mean of 1 runs, Gaussian kernel σ = 0.03" and d.sigma() == pytest.approx(0.03)


@pytest.mark.parametrize("args,message", [
    (("ck.pt", "--inputs", "data.npz"), "needs --factory"),
    (("ck.pt", "--factory", "mynet:nothing", "--inputs", "data.npz"), "no callable nothing"),
    (("ck.pt", "--factory", "mynet", "--inputs", "data.npz"), "package.module:function"),
    (("net.pt2", "--inputs", "missing.npz"), "no such file"),
    (("net.pt2", "--inputs", "mynet.py"), ".npz or .pt"),
    (("net.pt2", "--inputs", "data.npz", "--measures", "gn"), "unknown measure gn"),
    (("net.pt2", "--inputs", "data.npz", "--device", "mps"), "mps"),
    (("net.pt2", "--inputs", "data.npz", "--output", "x"), "--output"),
    (("net.pt2", "--inputs", "data.npz", "--probes", 0), "--probes must be >= 1"),
    (("net.pt2", "--inputs", "data.npz", "--segments", 10**12), "--segments 1000000000000 is beyond"),
    (("data.npz", "--inputs", "data.npz"), "not a TorchScript module"),
    (("mynet.py", "--inputs", "data.npz"), "not a TorchScript or torch.export file"),
    (("net.pt2", "--inputs", "data.npz", "--trace-probes", 5), "--trace-probes is not an option of `smoothness "
                                                                 "measure`: it is --probes there (--probes 5)"),
    (("net.pt2", "--sharpness-iters", 5), "--sharpness-iters is not an option of `smoothness measure`: it is "
                                          "--steps there (--steps 5)"),
    (("net.pt2", "--inputs", "data.npz", "--data", "mnist5k"), "--data: for models saved by `train --save`"),
    (("net.pt2", "--inputs", "data.npz", "--measure-points", 5), "--measure-points: for models saved by `train "
                                                                  "--save`; a checkpoint is measured on --inputs"),
])
def test_bad_input_gets_one_line(files, args, message):
    d, *_ = files
    r = cli(*args, cwd=d)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_one_point_has_no_standard_error_and_is_one_point():
    import math

    from smoothness.cli import checkpoint
    from smoothness.measures import model as measures_model
    from smoothness.measures.estimate import Estimate
    v = Estimate(0.5, float("nan"), 1)
    assert measures_model.error_of("gradient_norm", v) == "standard error over 1 point"
    assert checkpoint.error_cell("gradient_norm", v) == "no standard error (over 1 point: one sample has no spread)"
    assert not math.isnan(Estimate(0.5, 0.1, 2).se) and "± 0.1 se over 2 points" == checkpoint.error_cell(
        "gradient_norm", Estimate(0.5, 0.1, 2))


def test_a_bound_at_one_point_says_point():
    from smoothness.measures import model as measures_model
    from smoothness.measures.estimate import Estimate
    assert measures_model.error_of("lipschitz_lower", Estimate(2.0, 0.0, 1)).endswith("at 1 point)")
    assert measures_model.error_of("lipschitz_lower", Estimate(2.0, 0.0, 1_000)).endswith("at 1,000 points)")

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
    from smoothness import curvature, measures
    d, net, x, y = files
    r = cli("ck.pt", "--factory", "mynet:build", "--inputs", "data.npz", *FAST, cwd=d)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["points"] == 24 and rec["input_shape"] == [1, 8, 8]
    assert rec["gradient_norm"] == pytest.approx(float(measures.gradient_norm(net, x)), rel=1e-5)
    assert rec["gradient_norm_se"] > 0 and rec["gradient_norm_n"] == 24
    fpl = measures.function_path_length(net, x, segments=20, points=10)
    assert rec["fpl"] == pytest.approx(float(fpl), rel=1e-5) and rec["fpl_se"] == pytest.approx(fpl.se, rel=1e-4)
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
    for k in ("gradient_norm", "fpl", "gpl", "lipschitz_lower", "lipschitz_upper", "sharpness", "hessian_trace"):
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
    assert "± se" in r.stdout and "fpl" in r.stdout and "gradient_norm" in r.stdout
    r = cli("net.pt2", "--inputs", "data.npz", "--measures", "loss", "--density", "dens.png", "--steps", 20, "--runs",
            2, cwd=d)
    assert r.returncode == 0, r.stderr
    assert (d / "dens.png").read_bytes()[:4] == b"\x89PNG" and "density_trace" in r.stdout


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
    (("net.pt2", "--inputs", "data.npz", "--trace-probes", 5), "--trace-probes: for models saved by"),
])
def test_bad_input_gets_one_line(files, args, message):
    d, *_ = files
    r = cli(*args, cwd=d)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1

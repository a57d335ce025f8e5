"""A measure added in one place, a registry row (registered from a module named in $SMOOTHNESS_MEASURES), is one
of the `measure` command's choices and computed there for any module, computed and stored by a grid run, and
shown by the report: nothing else is written for it."""
import json
import sqlite3

import pytest
import torch

from conftest import run_cli

TOY = '''
import torch
from smoothness.measures import registry
from smoothness.measures.estimate import exact


def stack(c):   # each model of a stack: the sum of its squared parameters
    return sum(t.double().pow(2).flatten(1).sum(1) for t in c.p.tensors()).to(c.x.dtype)


def one(c):     # one model given as a module
    return {"toy_square_norm": exact(float(sum(t.detach().double().pow(2).sum() for t in c.weights())))}


registry.register(registry.Measure(
    "toy_square_norm", "TOY", "the sum of the squared parameters", registry.PARAMETER, registry.ANY_DEPTH, None,
    "toy", stack, table1=True, one=one, default=False))
'''

NET = '''
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 1))
'''

GRID = '''name: toy
data: mnist5k
pairs: [[3, 8], [4, 9]]
n_train: [16, 32, 64]
seeds: [0]
hidden: 16
lr: 0.05
batch_size: 16
max_epochs: 300
threshold: 1.0e-3
measure: {measure_points: 100, segments: 20, points_per_segment: 5}
'''


@pytest.fixture
def toy(tmp_path):
    (tmp_path / "toy_measure.py").write_text(TOY)
    (tmp_path / "toynet.py").write_text(NET)
    return tmp_path, {"SMOOTHNESS_MEASURES": "toy_measure", "PYTHONPATH": str(tmp_path)}


def test_a_registered_measure_is_a_choice_of_measure_and_computed_for_any_module(toy):
    d, env = toy
    r = run_cli("measure", "--help", env=env)
    assert r.returncode == 0 and "toy_square_norm" in r.stdout.replace("\n", "").replace(" ", "")
    exec(NET, ns := {})
    net = ns["build"]()
    torch.save(net.state_dict(), d / "w.pt")
    torch.save({"x": torch.randn(10, 4)}, d / "x.pt")
    r = run_cli("measure", d / "w.pt", "--factory", "toynet:build", "--inputs", d / "x.pt", "--measures",
                "toy_square_norm", "--json", env=env)
    assert r.returncode == 0, r.stderr
    want = float(sum(p.detach().double().pow(2).sum() for p in net.parameters()))
    assert json.loads(r.stdout)["toy_square_norm"] == pytest.approx(want, rel=1e-12)
    assert run_cli("measure", "--help").stdout.find("toy_square_norm") == -1   # only where registered


def test_a_registered_measure_is_stored_by_a_grid_run_and_shown_by_the_report(toy):
    d, env = toy
    (d / "toy.yaml").write_text(GRID)
    r = run_cli("run", d / "toy.yaml", "--out", d / "runs", "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    with sqlite3.connect(d / "runs" / "results.sqlite") as db:
        recs = [json.loads(v) for (v,) in db.execute("SELECT record FROM runs")]
    assert len(recs) == 6 and all(rec["toy_square_norm"] > 0 for rec in recs)
    r = run_cli("report", d / "runs", env=env)
    assert r.returncode == 0, r.stderr
    table1 = (d / "runs" / "report" / "table1.md").read_text()
    assert "TOY" in table1
    bad = run_cli("measure", "--help", env={"SMOOTHNESS_MEASURES": "no_such_module"})
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "smoothness: error: $SMOOTHNESS_MEASURES: cannot import no_such_module: ModuleNotFoundError: No module "
        "named 'no_such_module'"]


def test_register_refuses_a_key_twice_and_a_row_that_computes_nothing():
    from smoothness.measures import registry
    with pytest.raises(ValueError, match="registered already"):
        registry.register(registry.BY_KEY["gradient_norm"])
    with pytest.raises(ValueError, match="computes nothing"):
        registry.register(registry.Measure("nothing", "N", "", registry.PARAMETER, registry.ANY_DEPTH, None, "n"))

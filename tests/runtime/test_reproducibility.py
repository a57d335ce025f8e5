"""The reproducibility guarantee of docs/reproducibility.md, checked across kernel choices that this CPU can make.

MKL_CBWR=COMPATIBLE makes MKL take its generic code path and ATEN_CPU_CAPABILITY=default turns off
PyTorch's vectorized kernels: a child process with both rounds its matmuls differently from this one
(checked below), as another CPU would. The random draws must still be identical bit for bit, and the
trained models must agree within the tolerances of tests/tolerance.py.
"""
import os
import subprocess
import sys

import pytest
import torch

from conftest import spec
from smoothness import models, training
from smoothness.data import images
from smoothness.runtime import rng
from tolerance import assert_same_outcome, assert_same_trajectory

OTHER_KERNELS = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"}

CHILD = r"""
import sys, torch
from smoothness import data, models, training
from smoothness.runtime import rng
task = data.binary_task("mnist5k", 4, 9)
def spec(n, seed, **kw):
    rows = task.subset(n, seed)
    return training.TrainSpec(rows, task.pool_y[rows], seed=seed, **kw)
out = {"init": models.init_mlp([7, 8], (784, 32, 1), 0.01).tensors(),
       "perm": rng.permutation_keys(torch.tensor([50, 64]), 64, torch.tensor([[3], [4]]), rng.STREAM_SHUFFLE, 5),
       "subset": task.subset(128, 3),
       "product": torch.bmm(torch.linspace(-1, 1, 784 * 64).reshape(1, 64, 784),
                            torch.linspace(1, -2, 784 * 32).reshape(1, 784, 32))}
out["short"] = training.train_models(task.pool_x, [spec(96, 0, max_epochs=30)], widths=(784, 32, 1))[0]
out["whole"] = training.train_models(task.pool_x, [spec(64, 1, lr=0.05, threshold=1e-3)], widths=(784, 32, 1))[0]
torch.save(out, sys.argv[1])
"""


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    path = tmp_path_factory.mktemp("kernels") / "other.pt"
    env = {**os.environ, **OTHER_KERNELS}
    r = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr
    return torch.load(path, weights_only=False)


@pytest.fixture(scope="module")
def task():
    return images.binary_task("mnist5k", 4, 9)


@pytest.mark.invariance
def test_the_other_kernels_really_round_differently(other):
    here = torch.bmm(torch.linspace(-1, 1, 784 * 64).reshape(1, 64, 784),
                     torch.linspace(1, -2, 784 * 32).reshape(1, 784, 32))
    if torch.equal(here, other["product"]):
        pytest.skip("this process already runs the generic kernels (the suite runs under MKL_CBWR=COMPATIBLE)")
    assert torch.allclose(here, other["product"], rtol=1e-5, atol=1e-4)


@pytest.mark.invariance
def test_random_draws_are_bit_for_bit_the_same_under_other_kernels(other, task):
    assert all(torch.equal(a, b) for a, b in zip(models.init_mlp([7, 8], (784, 32, 1), 0.01).tensors(), other["init"]))
    perm = rng.permutation_keys(torch.tensor([50, 64]), 64, torch.tensor([[3], [4]]), rng.STREAM_SHUFFLE, 5)
    assert torch.equal(perm, other["perm"])
    assert torch.equal(task.subset(128, 3), other["subset"])


@pytest.mark.invariance
def test_training_under_other_kernels_stays_within_the_stated_tolerances(other, task):
    short = training.train_models(task.pool_x, [spec(task, 96, 0, max_epochs=30)], widths=(784, 32, 1))[0]
    assert_same_trajectory(short, other["short"])
    whole = training.train_models(task.pool_x, [spec(task, 64, 1, lr=0.05, threshold=1e-3)],
                                  widths=(784, 32, 1))[0]
    assert whole.status == training.CONVERGED
    assert_same_outcome(vars(whole), vars(other["whole"]), ["loss_epoch"])


def test_the_docs_state_the_tested_guarantee():
    from conftest import ROOT
    readme, page = (ROOT / "README.md").read_text(), (ROOT / "docs" / "reproducibility.md").read_text()
    assert "bit for bit (tested)" not in readme + page
    assert "(docs/reproducibility.md)" in readme
    assert page.startswith("# Reproducibility") and "tests/tolerance.py" in page and "MKL_CBWR" in page

"""Matmul precision of training: TF32 rounding (emulated on CPU), the CUDA-only tf32 mode, keys and settings."""
import dataclasses
import math

import pytest
import torch
import yaml

from conftest import run_cli
from smoothness import training
from smoothness.errors import ConfigError
from smoothness.experiments.configuration import grid
from smoothness.experiments.running import pipeline
from smoothness.models import init_mlp
from smoothness.runtime import precision
from tolerance import assert_same_outcome, assert_same_trajectory, kernel_noise

# A last-bit difference that moves a value across a TF32 rounding boundary becomes a TF32 unit (2^-11).
TF32_TRAJECTORY_REL = 1e-2   # measured: 3.7e-3 after 30 epochs with one-ulp noise; 10 epochs here


def test_round_to_tf32_keeps_ten_mantissa_bits_with_ties_to_even():
    e = 2.0 ** -10                                   # TF32's unit in the last place at 1
    x = torch.tensor([1.0, 1 + e / 2, 1 + 3 * e / 2, 1 + e / 2 + 2 ** -20, 1 + e / 2 - 2 ** -20, -(1 + 3 * e / 2),
                      3.0, 0.0, -0.0, 1e-40], dtype=torch.float32)
    want = [1.0, 1.0, 1 + 2 * e, 1 + e, 1.0, -(1 + 2 * e), 3.0, 0.0, -0.0]
    r = precision.round_to_tf32(x)
    assert r[:9].tolist() == want
    special = torch.tensor([math.inf, -math.inf, math.nan])
    r2 = precision.round_to_tf32(special)
    assert r2[:2].tolist() == [math.inf, -math.inf] and math.isnan(r2[2])
    y = torch.randn(100_000) * 10.0 ** torch.randint(-20, 20, (100_000,))
    ry = precision.round_to_tf32(y)
    assert torch.all((ry.view(torch.int32) & 0x1FFF) == 0)          # the 13 dropped bits are zero
    rel = ((ry.double() - y.double()).abs() / y.double().abs()).max().item()
    assert 2 ** -12 < rel <= 2 ** -11                                # at most half a TF32 unit
    with pytest.raises(ValueError, match="unknown matmul precision"):
        precision.check("bf16")


def test_ulp_noise_moves_each_matmul_result_by_at_most_one_unit_in_the_last_place():
    g = torch.Generator().manual_seed(0)
    a, b, c = torch.randn(2, 30, 40, generator=g), torch.randn(2, 40, 20, generator=g), torch.randn(2, 30, 20, generator=g)
    exact = [torch.bmm(a, b), torch.baddbmm(c, a, b), c.clone().baddbmm_(a, b, alpha=-1.0)]
    with precision.ulp_noise(3):
        noisy = [torch.bmm(a, b), torch.baddbmm(c, a, b), c.clone().baddbmm_(a, b, alpha=-1.0)]
    for e, n in zip(exact, noisy):
        ulp = (torch.nextafter(e.abs(), torch.tensor(float("inf"))) - e.abs())
        assert torch.all((n - e).abs() <= ulp) and not torch.equal(n, e)   # at most one unit in the last place
        assert (n == e).float().mean().item() > 0.2            # about a third of the elements unchanged
    assert torch.equal(torch.bmm(a, b), exact[0])              # switched off after the block


def test_emulation_rounds_the_factors_of_every_batched_matmul_and_is_undone_after():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(3, 5, 7, generator=g), torch.randn(3, 7, 4, generator=g), torch.randn(3, 5, 4, generator=g))
    r = precision.round_to_tf32
    exact = torch.bmm(a, b)
    want_bmm, want_add = torch.bmm(r(a), r(b)), torch.baddbmm(c, r(a), r(b))   # float32 on rounded factors
    want_sub = c.clone().baddbmm_(r(a), r(b), alpha=-1.0)
    with precision.emulated_tf32():
        assert torch.equal(torch.bmm(a, b), want_bmm) and not torch.equal(want_bmm, exact)
        assert torch.equal(torch.baddbmm(c, a, b), want_add)
        assert torch.equal(c.clone().baddbmm_(a, b, alpha=-1.0), want_sub)
        w = a.clone().requires_grad_()
        torch.bmm(w, b).sum().backward()                              # straight-through gradient
        assert torch.allclose(w.grad, torch.ones(3, 5, 4) @ r(b).transpose(1, 2))
    assert torch.equal(torch.bmm(a, b), exact)


def _task_specs(n_models=3):
    task = __import__("smoothness.data", fromlist=["binary_task"]).binary_task("mnist5k", 3, 8)
    specs = []
    for s in range(n_models):
        sub = task.subset(32, s)
        specs.append(training.TrainSpec(sub, task.pool_y[sub], seed=s, lr=0.05, max_epochs=400, threshold=1e-4))
    return task, specs


@pytest.mark.invariance
def test_emulated_tf32_training_changes_the_trajectory_but_not_the_outcome_and_is_batch_invariant():
    task, specs = _task_specs()
    kw = dict(widths=(784, 32, 1), batch_size=16)
    fp32 = training.train_models(task.pool_x, specs, **kw)
    tf32 = training.train_models(task.pool_x, specs, matmul_precision="tf32-emulated", **kw)
    alone = training.train_models(task.pool_x, specs[1:2], matmul_precision="tf32-emulated", **kw)
    assert [r.status for r in fp32] == [r.status for r in tf32] == ["converged"] * 3
    assert all(not torch.equal(a.params.weights[0], b.params.weights[0]) for a, b in zip(fp32, tf32))
    for a, b in zip(fp32, tf32):   # close, not equal: rounding errors of 2^-11 over a few hundred epochs
        assert (a.params.weights[1] - b.params.weights[1]).norm() < 0.05 * a.params.weights[1].norm()
    assert_same_outcome(vars(alone[0]), vars(tf32[1]), ["loss_epoch"])
    # Batch invariance over a short run, also when the batch's matmuls round differently (another CPU).
    short = [dataclasses.replace(s, max_epochs=10) for s in specs]
    alone = training.train_models(task.pool_x, short[1:2], matmul_precision="tf32-emulated", **kw)[0]
    batch = training.train_models(task.pool_x, short, matmul_precision="tf32-emulated", **kw)[1]
    assert_same_trajectory(alone, batch)
    with kernel_noise():
        noisy = training.train_models(task.pool_x, short, matmul_precision="tf32-emulated", **kw)[1]
    assert_same_trajectory(alone, noisy, rel=TF32_TRAJECTORY_REL)
    assert torch.equal(torch.bmm(torch.ones(1, 1, 1), torch.full((1, 1, 1), 1 + 2 ** -12)),
                       torch.full((1, 1, 1), 1 + 2 ** -12))           # emulation switched off afterwards


def test_precision_is_part_of_the_key_only_when_not_fp32_and_tf32_needs_cuda(tmp_path):
    raw = yaml.safe_load("{name: p, pairs: [[3, 8]], n_train: 16, hidden: 8, max_epochs: 5}")
    base = grid.parse(raw).configs()[0]
    emulated = grid.parse({**raw, "matmul_precision": "tf32-emulated"}).configs()[0]
    explicit = grid.parse({**raw, "matmul_precision": "fp32"}).configs()[0]
    assert grid.config_key(base) == grid.config_key(explicit) != grid.config_key(emulated)
    assert emulated.matmul_precision == "tf32-emulated" and base.batch_key() != emulated.batch_key()
    with pytest.raises(ConfigError, match="matmul_precision"):
        grid.parse({**raw, "matmul_precision": "fp16"})
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        pipeline.check_matmul_precision({"tf32"}, "cpu")
    r = run_cli("run", "smoke", "--out", tmp_path / "s", "--device", "cpu", "--tf32")
    assert r.returncode == 2 and "needs a CUDA device" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s").exists()
    r = run_cli("train", "--n-train", "16", "--hidden", "8", "--max-epochs", "3", "--segments", "5", "--points", "5",
                "--measure-points", "20", "--device", "cpu", "--matmul-precision", "tf32-emulated", "--json")
    assert r.returncode == 0, r.stderr
    assert '"matmul_precision": "tf32-emulated"' in r.stdout


@pytest.fixture
def default_flags():
    """PyTorch's default fp32 flags before and after the test (the tests below change them on purpose)."""
    def reset():
        torch.backends.fp32_precision = "none"
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = True
        precision._set_new_flags({k: "none" for k in precision.flags()})
        precision._set_new_flags({"cudnn.conv": "tf32"})
    reset()
    yield
    reset()


def _state():
    """The legacy reads (or 'mixed' where they raise) and the new API's flags."""
    return precision._legacy_flags() or "mixed", precision.flags()


def _user_high():
    torch.set_float32_matmul_precision("high")


def _user_medium():
    torch.set_float32_matmul_precision("medium")


def _user_new_tf32():   # the new API alone: legacy reads raise afterwards
    torch.backends.cuda.matmul.fp32_precision = "tf32"


def _user_new_bf16():
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"


def _user_cudnn_off():
    torch.backends.cudnn.allow_tf32 = False


@pytest.mark.parametrize("user", [lambda: None, _user_high, _user_medium, _user_new_tf32, _user_new_bf16,
                                  _user_cudnn_off])
def test_fp32_and_tf32_contexts_set_consistent_flags_and_restore_any_user_state(default_flags, user):
    user()
    before = _state()
    with precision.strict_fp32():
        # consistent: the legacy reads (torch.compile's inductor makes them) do not raise
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
        assert precision.flags()["cuda.matmul"] == precision.flags()["mkldnn.matmul"] == "ieee"
        with precision.cuda_tf32(True):
            assert torch.backends.cuda.matmul.allow_tf32 and precision.flags()["cuda.matmul"] == "tf32"
            assert torch.get_float32_matmul_precision() == "high"
        assert precision.flags()["cuda.matmul"] == "ieee"
    assert _state() == before
    with precision.matmuls("tf32", torch.device("cpu")):   # no TF32 on a CPU: full float32
        assert precision.flags()["mkldnn.matmul"] == "ieee"
    assert _state() == before


def test_measures_and_training_run_in_float32_whatever_the_user_set_globally(default_flags):
    from smoothness import measures
    from smoothness.measures import registry
    from smoothness.training import trainer as training
    seen = []

    def f(x):   # any model: records the flags it runs under
        seen.append((torch.get_float32_matmul_precision(), precision.flags()["mkldnn.matmul"]))
        return x.sum(1)

    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    p = init_mlp(torch.tensor([0, 1]), (784, 256, 1), torch.tensor([1.0, 1.0], dtype=torch.float64))
    xs = torch.randn(200, 784, generator=torch.Generator().manual_seed(1))
    pool = torch.randn(40, 784, generator=torch.Generator().manual_seed(2))
    spec = training.TrainSpec(torch.arange(40), torch.randn(40, generator=torch.Generator().manual_seed(3)),
                              max_epochs=3, threshold=0.0)

    def run():
        seen.clear()
        measures.gradient_norm(f, x)
        measures.function_path_length(f, x, segments=4, points=5)
        flags = set(seen)
        stats = registry.measure_stack(p, xs, segments=20, points=10)
        trained = training.train_models(pool, [spec], batch_size=16)[0].params
        return flags, stats, trained

    ref_flags, ref, ref_trained = run()
    torch.set_float32_matmul_precision("medium")   # bfloat16 matmuls through oneDNN on CPUs with AVX-512 BF16/AMX
    flags, got, trained = run()
    assert torch.get_float32_matmul_precision() == "medium"   # the user's setting is back
    assert flags == ref_flags == {("highest", "ieee")}
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    assert all(torch.equal(a, b) for a, b in zip(trained.tensors(), ref_trained.tensors()))


def test_cuda_tf32_setting_is_set_inside_and_restored_after():
    m = torch.backends.cuda.matmul
    before = m.fp32_precision
    with precision.cuda_tf32(True):
        assert m.fp32_precision == "tf32"
        with precision.cuda_tf32(False):
            assert m.fp32_precision == "ieee"
        assert m.fp32_precision == "tf32"
    assert m.fp32_precision == before

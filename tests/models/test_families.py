"""Model families (models/family.py, cnn.py, families.py): stacks against their modules, initialization independent of
M, input gradients against autograd of the module, the factory family's checks, and training any family as one
batched program (the autograd engine against the MLP's closed forms, a model alone against the same in a batch)."""
import math

import pytest
import torch
from torch import nn

from smoothness import models, training
from smoothness.errors import ConfigError
from smoothness.models import losses
from smoothness.training import engines
from smoothness.training.state import StepSettings

CNN = models.canonical({"family": "cnn", "channels": [3, 4], "kernel": 3})


def tiny_cnn(**kw):
    return models.build(models.canonical({"family": "cnn", "channels": [3, 4], **kw}), None, (1, 28, 28), 1)


def test_the_canonical_spec_fills_every_setting_and_the_mlp_is_none():
    assert models.canonical("cnn") == {"family": "cnn", "channels": [8, 16], "kernel": 3, "pool": "max"}
    assert models.canonical(None) is None and models.canonical("mlp") is None
    with pytest.raises(ConfigError, match="unknown family 'resnet'"):
        models.canonical("resnet")
    with pytest.raises(ConfigError, match="unknown setting"):
        models.canonical({"family": "cnn", "width": 3})
    with pytest.raises(ConfigError, match="odd"):
        models.build(models.canonical({"family": "cnn", "kernel": 4}), None, (1, 28, 28), 1)
    # absurd sizes are one line before anything is allocated
    with pytest.raises(ConfigError, match="at most 4,096 per block"):
        models.canonical({"family": "cnn", "channels": [100_000_000]})
    with pytest.raises(ConfigError, match="a list of positive integers"):
        models.canonical({"family": "cnn", "channels": 8})
    with pytest.raises(ConfigError, match=r"kernel 99 is wider than the inputs \(28x28\)"):
        models.build(models.canonical({"family": "cnn", "kernel": 99}), None, (1, 28, 28), 1)
    with pytest.raises(ConfigError, match=r"make 12,233,785,345 parameters per model, more than the limit"):
        models.build(models.canonical({"family": "cnn", "channels": [4096, 4096], "kernel": 27}), None,
                     (1, 28, 28), 1)
    # a value of the wrong shape is shown as written, not in its frozen form ([(8,)])
    for bad, shown in (({"channels": [[8]]}, "got [[8]]"), ({"channels": {"a": 1}}, "a list of positive integers, "
                       "one per block, got {'a': 1}"), ({"kernel": [3]}, "got [3]"), ({"pool": ["max"]}, "got ['max']")):
        with pytest.raises(ConfigError) as e:
            models.canonical({"family": "cnn", **bad})
        assert str(e.value).endswith(shown), str(e.value)
    # a wrong type is refused, not rounded: 2.5 channels are not 2, True is not 1
    for bad in ({"channels": [2.5]}, {"channels": [True]}, {"kernel": True}, {"kernel": 3.0}):
        with pytest.raises(ConfigError, match="integer"):
            models.canonical({"family": "cnn", **bad})


def test_the_parameter_count_of_a_cnn_is_known_before_it_is_built():
    from smoothness.models import cnn
    for channels, kernel in (((3, 4), 3), ((16, 32), 3), ((5,), 5), ((2, 3, 4), 1)):
        s = cnn.CNNSettings(channels, kernel)
        assert cnn.n_params(s, (1, 28, 28), 3) == sum(t.numel() for t in cnn.build(s, (1, 28, 28), 3).parameters())


def test_a_cnn_stack_evaluates_as_its_modules_and_its_input_gradients_are_the_modules():
    fam = tiny_cnn()
    p = fam.init([0, 1, 2], 0.5)
    x = torch.rand(3, 5, 784)
    out = fam.values(p, x)
    g = fam.input_grads(p, x)
    for m in range(3):
        mod = fam.module(p, m)
        assert torch.allclose(mod(x[m]), out[m], atol=1e-6)
        xm = x[m].clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(mod(xm).sum(), xm)
        assert torch.allclose(g[m], ref, atol=1e-6)
    assert fam.n_params() == sum(t[0].numel() for t in p.tensors())
    back = fam.stack_of([fam.module(p, m) for m in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(back.tensors(), p.tensors()))


def test_cnn_initialization_is_the_alpha_scaled_glorot_bound_and_independent_of_m():
    fam = tiny_cnn()
    alone = fam.init([7], 0.01)
    many = fam.init([3, 7, 9], [1.0, 0.01, 0.5])
    assert all(torch.equal(a[0], b[1]) for a, b in zip(alone.tensors(), many.tensors()))
    conv = alone.tensors()[0][0]                        # [3, 1, 3, 3]: fan_in 9, fan_out 27
    bound = math.sqrt(6 * 0.01 / (9 + 27))
    assert conv.abs().max() <= bound and conv.abs().max() > 0.8 * bound
    assert all(float(t.abs().max()) == 0.0 for t in alone.tensors() if t.dim() == 2)   # biases 0


def test_init_outputs_tell_another_function_from_the_same_one_computed_with_other_threads():
    """The seed-0 model's outputs at fixed points are the same function's under another thread count (float32
    rounding, within same_outputs' tolerance) and another function's for another activation or pooling, whose
    tensor shapes are the same."""
    fam = tiny_cnn()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = tiny_cnn().init_outputs()
        torch.set_num_threads(2)
        two = tiny_cnn().init_outputs()
    finally:
        torch.set_num_threads(before)
    assert len(one) == models.family.PROBE_POINTS and models.same_outputs(one, two)
    other = tiny_cnn(pool="avg")
    assert other.shapes() == fam.shapes() and not models.same_outputs(other.init_outputs(), fam.init_outputs())
    assert models.same_outputs([1.0, -2.0], [1.0 + 1e-6, -2.0]) and not models.same_outputs([1.0, -2.0], [1.01, -2.0])
    assert not models.same_outputs([1.0], [1.0, 2.0]) and models.same_outputs([0.0, 0.0], [0.0, 0.0])
    nan, inf = float("nan"), float("inf")
    assert models.same_outputs([nan, 1.0, inf], [nan, 1.0, inf]) and not models.same_outputs([nan, 1.0], [0.0, 1.0])
    assert not models.same_outputs([inf, 1.0], [-inf, 1.0]) and not models.same_outputs([1.0, inf], [1.0, 2.0])


def test_the_weight_norm_is_the_product_of_the_weight_tensors_norms_and_bounds_wp():
    fam = models.build(None, (16,), (10,), 1)
    p = fam.init([0, 1], 1.0)
    expect = p.weights[0].flatten(1).norm(dim=1) * p.weights[1].flatten(1).norm(dim=1)
    assert torch.allclose(fam.weight_norm(p), expect)
    assert bool((models.weights_products(p) <= fam.weight_norm(p) + 1e-6).all())


def bn_net():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def wrong_outputs():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 3))


def needs_width(width):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, 1))


def not_a_module():
    return 3


def raises():
    raise RuntimeError("no GPU here")


def lazy():
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(1))


class Thresholded(nn.Module):
    def __init__(self, cut=None):
        super().__init__()
        self.lin, self.cut = nn.Linear(784, 1), cut

    def forward(self, x):
        y = self.lin(x.flatten(1))
        if self.cut == "integer":
            return (y > 0).long()
        if self.cut == "branch":
            return y if y.sum() > 0 else -y          # data-dependent control flow
        if self.cut == "item":
            return y * y.mean().item()
        if self.cut == "detached":
            return y.detach()
        return y


def thresholded(cut=None):
    return Thresholded(cut)


def tied():
    shared = nn.Linear(784, 784)
    return nn.Sequential(nn.Flatten(), shared, nn.ReLU(), shared, nn.Linear(784, 1))


class Complex(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(784, dtype=torch.complex64))

    def forward(self, x):
        return (x.flatten(1).to(torch.complex64) @ self.w).real


def complex_weights():
    return Complex()


def wide(width=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, 1))


def typo_inside(width=4):
    return nn.Linear(784, width, bias_=False)   # a TypeError raised in the body, not by the call


def nested(cfg, widths):
    assert isinstance(cfg, dict) and isinstance(widths, list), (cfg, widths)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, cfg["width"] * widths[0]), nn.ReLU(),
                         nn.Linear(cfg["width"] * widths[0], 1))


@pytest.mark.parametrize("factory, kwargs, message", [
    ("test_families:bn_net", {}, "BatchNorm1d"),
    ("test_families:wrong_outputs", {}, r"outputs of shape \[2, 3\]; the task needs \[n, 1\]"),
    ("test_families:needs_width", {}, "cannot be called with no arguments"),
    ("test_families:needs_width", {"depth": 2}, "cannot be called with"),
    ("test_families:not_a_module", {}, "returned a value of type int, not an nn.Module"),
    ("test_families:raises", {}, "raised RuntimeError: no GPU here"),
    ("test_families:missing", {}, "has no callable missing"),
    ("no_such_module_here:f", {}, "cannot import no_such_module_here"),
    ("test_families:lazy", {}, "lazy modules"),
    ("test_families:thresholded", {"cut": "integer"}, "returns torch.int64 outputs"),
    ("test_families:thresholded", {"cut": "branch"}, "cannot train as M stacked copies"),
    ("test_families:thresholded", {"cut": "item"}, "cannot train as M stacked copies"),
    ("test_families:thresholded", {"cut": "detached"}, "do not depend on its parameters"),
    ("test_families:complex_weights", {}, r"has a torch.complex64 parameter \(w\)"),
    ("test_families:tied", {}, r"shares parameters between submodules \(1.weight is also 3.weight\)"),
])
def test_a_factory_that_cannot_give_a_stackable_model_is_one_line_before_any_training(factory, kwargs, message):
    spec = models.canonical({"factory": factory, "kwargs": kwargs})
    with pytest.raises(ConfigError, match=message):
        models.build(spec, None, (1, 28, 28), 1)


def test_the_stacking_check_leaves_the_template_as_the_factory_built_it(monkeypatch):
    from smoothness.models import family
    monkeypatch.setattr(family, "shared_parameters", lambda m: [], raising=False)   # let tied weights reach the stacking check
    fam = models.build(models.canonical({"factory": "test_families:tied"}), None, (1, 28, 28), 1)
    assert all(type(t) is nn.Parameter for t in fam.template.parameters())
    net = fam.module(fam.init([0], 1.0), 0)   # a copy of the template, as the memory estimate and measures take it
    assert net(torch.zeros(2, 784)).shape == (2,)


def test_a_factory_model_too_large_for_the_memory_is_refused_before_any_copy_is_made(monkeypatch):
    from smoothness.models import family
    n = 784 * 5 + 5 + 5 + 1
    monkeypatch.setattr(family, "memory_budget", lambda device: 4 * n * 4, raising=False)   # room for 4 copies
    monkeypatch.setattr(family.FactoryFamily, "init", lambda *a, **k: pytest.fail("a copy was made"))
    spec = models.canonical({"factory": "test_families:needs_width", "kwargs": {"width": 5}})
    with pytest.raises(ConfigError, match=f"the module has {n:,} parameters .* hold 6 copies of them"):
        models.build(spec, None, (1, 28, 28), 1)


@pytest.mark.parametrize("factory, kwargs, message", [
    ("test_families:wide", {"width": 10 ** 23}, "factory test_families:wide raised TypeError: empty(): "),
    ("test_families:typo_inside", {}, "factory test_families:typo_inside raised TypeError: "),
    ("test_families:wide", {"widht": 8}, "wide: cannot be called with {'widht': 8}: got an unexpected keyword "
                                          "argument 'widht'"),
])
def test_a_type_error_in_a_factorys_body_is_its_first_line_not_a_call_that_does_not_fit(factory, kwargs, message):
    spec = models.canonical({"factory": factory, "kwargs": kwargs})
    with pytest.raises(ConfigError) as e:
        models.build(spec, None, (1, 28, 28), 1)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_factorys_nested_arguments_arrive_as_mappings_and_lists_and_keep_their_key():
    from smoothness.experiments.configuration.config import RunConfig, config_key
    spec = {"factory": "test_families:nested", "kwargs": {"cfg": {"width": 3}, "widths": [1, 2]}}
    fam = models.build(models.canonical(spec), None, (1, 28, 28), 1)
    assert fam.n_params() == 784 * 3 + 3 + 3 + 1
    assert models.canonical(spec)["kwargs"] == {"cfg": {"width": 3}, "widths": [1, 2]}
    # the key of such a model is the one it had when nested mappings were frozen as plain tuples
    assert config_key(RunConfig(n_train=16, model=models.canonical(spec))) == "1b2523531d92b7e3c8bb821e"
    assert models.build(models.canonical(spec), None, (1, 28, 28), 1).kwargs["cfg"] == {"width": 3}


def test_a_factory_family_initializes_from_the_seed_scaled_by_alpha_and_trains():
    fam = models.build(models.canonical({"factory": "test_families:needs_width", "kwargs": {"width": 5}}), None,
                       (1, 28, 28), 1)
    a, b = fam.init([4], 1.0), fam.init([2, 4], 0.25)
    assert all(torch.allclose(u[0] * 0.5, v[1]) for u, v in zip(a.tensors(), b.tensors()))
    torch.manual_seed(4)
    ref = needs_width(5)
    assert torch.equal(a.tensors()[0][0], ref[1].weight.detach())


def _specs(n=24, models_=(0, 1, 2), lr=0.05, epochs=6, **kw):
    g = torch.Generator().manual_seed(0)
    pool = torch.rand(64, 784, generator=g)
    y = torch.where(torch.arange(64) % 2 == 0, -1.0, 1.0)
    specs = [training.TrainSpec(torch.arange(s, s + n), y[s:s + n], seed=s, lr=lr, max_epochs=epochs, threshold=0.0,
                                alpha=1.0, **kw) for s in models_]
    return pool, specs


@pytest.mark.parametrize("regularizer", ["none", "gradient_norm", "function_path_length", "gradient_path_length"])
def test_the_autograd_engine_follows_the_mlp_closed_forms(regularizer, monkeypatch):
    fam = models.build(None, (8,), (784,), 1)
    lam = 0.0 if regularizer == "none" else 1e-2
    pool, specs = _specs(regularizer=regularizer, lam=lam)
    fast = training.BatchedTrainer(pool, fam, batch_size=8).train(specs)
    monkeypatch.setattr(engines, "engine_for", lambda st, f, b: engines.AutogradEngine(st, f, b))
    slow = training.BatchedTrainer(pool, fam, batch_size=8).train(specs)
    for a, b in zip(fast, slow):
        assert (a.status, a.epochs, a.steps) == (b.status, b.epochs, b.steps)
        assert a.loss_epoch == pytest.approx(b.loss_epoch, rel=1e-4)
        assert all(torch.allclose(u, v, atol=1e-5) for u, v in zip(a.params.tensors(), b.params.tensors()))


@pytest.mark.parametrize("regularizer", ["none", "gradient_norm", "norm_product"])
def test_a_cnn_alone_and_in_a_batch_follow_the_same_trajectory(regularizer):
    fam = tiny_cnn()
    lam = 0.0 if regularizer == "none" else 1e-3
    pool, specs = _specs(regularizer=regularizer, lam=lam, epochs=4)
    batch = training.BatchedTrainer(pool, fam, batch_size=8).train(specs)
    alone = training.BatchedTrainer(pool, fam, batch_size=8).train(specs[1:2])[0]
    assert (alone.status, alone.epochs, alone.steps) == (batch[1].status, batch[1].epochs, batch[1].steps)
    assert all(torch.allclose(u, v, atol=1e-5) for u, v in zip(alone.params.tensors(), batch[1].params.tensors()))
    before = fam.init([1], 1.0)
    assert any(not torch.equal(u, v) for u, v in zip(before.tensors(), alone.params.tensors()))


def test_sgd_on_a_cnn_stack_is_torch_sgd_on_each_module():
    fam = tiny_cnn()
    pool, specs = _specs(n=8, epochs=3, lr=0.1)
    got = training.BatchedTrainer(pool, fam, batch_size=8).train(specs[:2])
    for m, s in enumerate(specs[:2]):
        mod = fam.module(fam.init([s.seed], 1.0), 0)
        opt = torch.optim.SGD(mod.parameters(), lr=0.1)
        x, y = pool[s.indices], s.targets
        for _ in range(3):   # N = batch: one full step per epoch, the order does not matter
            opt.zero_grad()
            (mod(x) - y).square().mean().backward()
            opt.step()
        ref = fam.stack_of([mod])
        assert all(torch.allclose(u, v, atol=1e-5) for u, v in zip(ref.tensors(), got[m].params.tensors()))


def test_cross_entropy_stops_on_zero_training_error_and_a_small_loss():
    fam = models.build(None, (32,), (784,), 3)
    g = torch.Generator().manual_seed(1)
    pool = torch.rand(30, 784, generator=g)
    y = (torch.arange(30) % 3).float()
    spec = training.TrainSpec(torch.arange(30), y, seed=0, lr=0.05, alpha=1.0, max_epochs=3000, threshold=0.05,
                              loss="cross_entropy")
    (r,) = training.BatchedTrainer(pool, fam, batch_size=10).train([spec])
    assert r.status == "converged" and r.loss_epoch < 0.05
    out = fam.values(r.params, pool)
    assert bool((out[0].argmax(-1) == y.long()).all())
    assert float(losses.per_example(out, y[None], "cross_entropy").mean()) < 0.05


def test_cross_entropy_needs_several_outputs():
    with pytest.raises(ValueError, match="K >= 2 classes, one output each"):
        pool, specs = _specs(loss="cross_entropy")
        training.BatchedTrainer(pool, models.build(None, (4,), (784,), 1), batch_size=8).train(specs)


def test_the_step_settings_pick_the_closed_forms_only_for_an_mlp_under_mse():
    mlp, cnn = models.build(None, (4,), (784,), 1), tiny_cnn()
    assert isinstance(engines.engine_for(StepSettings(), mlp, 8), engines.ClosedFormEngine)
    assert isinstance(engines.engine_for(StepSettings(), cnn, 8), engines.AutogradEngine)
    assert isinstance(engines.engine_for(StepSettings(loss="cross_entropy"), models.build(None, (4,), (784,), 3), 8),
                      engines.AutogradEngine)


def test_a_grid_of_cnns_and_a_classification_runs_into_a_store_with_every_measure(tmp_path):
    from smoothness.experiments.configuration import grid
    from smoothness.experiments.running import runner
    from smoothness.experiments.storage.store import Store
    g = grid.parse({"name": "families", "data": "mnist5k", "pairs": [[3, 8]], "n_train": [16], "seeds": 0,
                        "model": [{"family": "cnn", "channels": [2, 3]}], "alpha": 1.0, "lr": 0.05,
                        "max_epochs": 3, "regularizers": [{"name": "gradient_norm", "lam": [0, 1e-3]}],
                        "measure": {"measure_points": 20, "segments": 5, "points_per_segment": 4}})
    c = grid.parse({"name": "classes", "data": "mnist5k", "classes": [0, 1, 2], "n_train": [12], "seeds": 0,
                        "hidden": 8, "alpha": 1.0, "lr": 0.05, "loss": "cross_entropy", "max_epochs": 3,
                        "measure": {"measure_points": 20, "segments": 5, "points_per_segment": 4}})
    assert [cfg.outputs for cfg in c.configs()] == [3]
    runner.run_grid(g, tmp_path / "g", progress=False)
    runner.run_grid(c, tmp_path / "c", progress=False)
    with Store(tmp_path / "g" / Store.FILENAME) as st:
        df = st.frame()
    assert len(df) == 2 and set(df["regularizer"]) == {"none", "gradient_norm"}
    for col in ("gradient_norm", "function_path_length", "gradient_path_length", "norm_product", "lipschitz_upper",
                "gradient_norm_train", "loss_test"):
        assert df[col].notna().all() and (df[col] > 0).all(), col
    with Store(tmp_path / "c" / Store.FILENAME) as st:
        rec = st.frame().iloc[0]
    assert rec["loss"] == "cross_entropy" and rec["classes"] == "0-1-2" and rec["gradient_norm"] > 0
    assert rec["model"] == "mlp" and df["model"].tolist() == ["cnn 2-3 3 max"] * 2


def test_a_classification_grid_trained_with_mse_measures_its_curvature_against_the_one_hot_targets(tmp_path):
    """The labels of a task of classes are stored as floats; the curvature measures read them as the mse's one-hot
    targets, so the Hessian's trace and sharpness of such a grid are numbers, and the loss they see is the training
    loss."""
    from smoothness.experiments.configuration import grid
    from smoothness.experiments.running import runner
    from smoothness.experiments.storage.store import Store
    c = grid.parse({"name": "classes", "data": "mnist5k", "classes": [0, 1, 2], "n_train": [12], "seeds": 0,
                    "hidden": 8, "alpha": 1.0, "lr": 0.05, "loss": "mse", "max_epochs": 3,
                    "measure": {"measure_points": 20, "segments": 5, "points_per_segment": 4,
                                "sharpness_iters": 3, "trace_probes": 2}})
    runner.run_grid(c, tmp_path / "c", progress=False)
    with Store(tmp_path / "c" / Store.FILENAME) as st:
        rec = st.frame().iloc[0]
    assert rec["loss"] == "mse" and rec["sharpness"] > 0 and math.isfinite(rec["hessian_trace"]), rec.to_dict()


def pairs(items):
    assert isinstance(items, list) and all(isinstance(x, list) for x in items), items
    return nn.Sequential(nn.Flatten(), nn.Linear(784, sum(v for _, v in items)), nn.ReLU(),
                         nn.Linear(sum(v for _, v in items), 1))


@pytest.mark.parametrize("kwargs, where, value", [({"width": float("nan")}, "kwargs.width", "nan"),
                                                  ({"cfg": {"scale": [1.0, float("-inf")]}}, r"kwargs.cfg.scale\[1\]",
                                                   "-inf")])
def test_a_non_finite_number_in_a_factorys_kwargs_is_refused_when_the_grid_is_read(kwargs, where, value):
    message = f"model: {where} of factory test_families:needs_width is {value}: "
    with pytest.raises(ConfigError, match=message):
        models.canonical({"factory": "test_families:needs_width", "kwargs": kwargs})
    from smoothness.experiments.configuration import grid
    with pytest.raises(ConfigError, match=message):
        grid.parse({"name": "t", "pairs": [[3, 8]], "n_train": [16], "seeds": 0,
                    "model": {"factory": "test_families:needs_width", "kwargs": kwargs}})


def test_a_list_of_name_value_pairs_in_kwargs_is_keyed_and_recorded_as_a_list_not_a_mapping():
    spec = models.canonical({"factory": "test_families:pairs", "kwargs": {"items": [["a", 2], ["b", 3]]}})
    assert spec["kwargs"] == {"items": [["a", 2], ["b", 3]]}
    fam = models.build(spec, None, (1, 28, 28), 1)
    assert fam.key()["kwargs"] == {"items": [["a", 2], ["b", 3]]}
    assert fam.n_params() == 784 * 5 + 5 + 5 + 1
    # the mapping of the same names is another model, with another key
    other = models.canonical({"factory": "test_families:pairs", "kwargs": {"items": {"a": 2, "b": 3}}})
    assert other["kwargs"] == {"items": {"a": 2, "b": 3}} and other != spec


def test_a_factory_without_kwargs_keeps_its_key_whether_kwargs_is_absent_empty_or_null():
    from smoothness.experiments.configuration.config import RunConfig, config_key
    a = models.canonical({"factory": "test_families:needs_width"})
    b = models.canonical({"factory": "test_families:needs_width", "kwargs": {}})
    c = models.canonical({"factory": "test_families:needs_width", "kwargs": None})   # kwargs: null in YAML
    assert a == b == c and a["kwargs"] == []
    assert config_key(RunConfig(n_train=16, model=a)) == config_key(RunConfig(n_train=16, model=b)) \
        == "9060a6c756e9fe980638b01a"   # as before mappings were told apart from lists

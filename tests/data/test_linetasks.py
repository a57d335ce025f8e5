"""1-D tasks as data sources: spec strings, the targets, nested training sets, and the engine end to end."""
import math

import numpy as np
import pytest
import torch

from smoothness.data import images, lines
from smoothness.errors import ConfigError, DataError
from smoothness.experiments.configuration import grid
from smoothness.experiments.configuration.config import RunConfig, config_key
from smoothness.experiments.running import pipeline


def test_spec_canonical_form_drops_defaults_and_orders_settings():
    assert lines.canonical("line-gp") == "line-gp"
    assert lines.canonical("line-gp:length_scale=1.0,density=uniform") == "line-gp"
    s = lines.canonical("line-gp: task_seed=2 , length_scale=0.10,density=gaussian")
    assert s == "line-gp:density=gaussian,length_scale=0.1,task_seed=2"
    assert lines.parse(s) == lines.LineSpec("gp", "gaussian", 0.1, task_seed=2)
    assert lines.canonical("line-gp:length_scale=1") == "line-gp"
    assert lines.with_settings("line-sine", freq=2.0) == "line-sine:freq=2.0"


@pytest.mark.parametrize("spec, words", [
    ("line-cubic", "unknown 1-D task line-cubic"),
    ("line-gp:density=laplace", "density must be one of"),
    ("line-gp:length_scale=-1", "length_scale must be a finite number > 0"),
    ("line-gp:length_scale=nan", "length_scale must be a finite number > 0"),
    ("line-gp:width=3", "bad setting 'width=3'"),
    ("line-gp:pool", "bad setting 'pool'"),
    ("line-gp:pool=1e3", "pool='1e3' is not a int"),
    ("line-gp:pool=10,pool=20", "pool given twice"),
    ("line-gp:pool=1", "pool and heldout must be >= 2"),
])
def test_bad_specs_get_one_clear_error(spec, words):
    with pytest.raises(DataError, match=words.replace("(", r"\(")):
        lines.parse(spec)


def test_unknown_source_names_the_choices():
    with pytest.raises(DataError, match="line-gp, line-sine, line-sign"):
        images.check_source("mnist-3d")
    with pytest.raises(ConfigError, match="unknown 1-D task"):
        RunConfig(data="line-cubic")


def test_targets_and_shapes():
    t = lines.line_task("line-sine:pool=300,heldout=200")
    assert t.pool_x.shape == (300, 1) and t.heldout_x.shape == (200, 1) and t.pool_y.shape == (300,)
    assert t.pool_x.dtype == torch.float32
    assert torch.allclose(t.pool_y, torch.sin(math.pi * t.pool_x[:, 0].double()).float(), atol=1e-6)
    assert float(t.pool_x.min()) >= -1 and float(t.pool_x.max()) <= 1      # uniform on [-1, 1]
    s = lines.line_task("line-sign:freq=2,pool=300")
    x, y = s.pool_x[:, 0].double(), s.pool_y
    assert set(y.tolist()) == {-1.0, 1.0}
    assert torch.equal(y > 0, torch.sin(2 * math.pi * x) >= 0)
    g = lines.line_task("line-sine:density=gaussian,pool=4000")
    assert abs(float(g.pool_x.mean())) < 0.03 and abs(float(g.pool_x.std()) - 0.5) < 0.03
    # the pool and the held-out points are different draws
    assert not set(t.pool_x[:, 0].tolist()) & set(t.heldout_x[:, 0].tolist())


def test_task_is_reproducible_and_depends_on_task_seed():
    a = lines._task.__wrapped__("line-gp:pool=64,heldout=16")
    b = lines._task.__wrapped__("line-gp:pool=64,heldout=16")
    c = lines._task.__wrapped__("line-gp:pool=64,heldout=16,task_seed=1")
    assert torch.equal(a.pool_x, b.pool_x) and torch.equal(a.pool_y, b.pool_y)
    assert not torch.equal(a.pool_y, c.pool_y)


def test_gp_samples_have_the_rbf_covariance():
    # E[y_i y_j] = exp(-(t_i - t_j)^2 / (2 l^2)) over independent tasks; checked within 5 standard errors.
    ell, prods, kern = 0.2, [], []
    for s in range(300):
        t = lines._task.__wrapped__(f"line-gp:length_scale={ell},pool=6,heldout=2,task_seed={s}")
        x, y = t.pool_x[:, 0].double().numpy(), t.pool_y.double().numpy()
        prods.append([y[0] * y[0], y[0] * y[1], y[2] * y[3]])
        kern.append([1.0, math.exp(-(x[0] - x[1]) ** 2 / (2 * ell ** 2)), math.exp(-(x[2] - x[3]) ** 2 / (2 * ell ** 2))])
    d = np.asarray(prods) - np.asarray(kern)
    se = d.std(0, ddof=1) / math.sqrt(len(d))
    assert np.all(np.abs(d.mean(0)) < 5 * se + 1e-3), (d.mean(0), se)


def test_training_sets_are_nested_and_seeded():
    t = lines.line_task("line-gp")
    a, b = t.subset(16, seed=3), t.subset(64, seed=3)
    assert torch.equal(b[:16], a) and len(set(b.tolist())) == 64
    assert not torch.equal(t.subset(16, seed=4), a)
    with pytest.raises(DataError, match="between 2 and the pool size 1024"):
        t.subset(2000, 0)
    assert torch.equal(t.train_points(b, 10), t.pool_x[b[:10]])
    assert torch.equal(t.measure_points(5), t.heldout_x[:5])


def test_runconfig_and_grid_for_a_line_task():
    c = RunConfig(data="line-gp:length_scale=1.00", pair=(4, 9))
    assert c.data == "line-gp" and c.pair == lines.PAIR and c.widths == (1, 256, 1)
    assert config_key(c) == config_key(RunConfig(data="line-gp"))
    assert RunConfig().widths == (784, 256, 1)
    g = grid.parse({"data": "line-sine:freq=2", "n_train": [8, 16], "seeds": [0, 1]})
    assert g.data == "line-sine:freq=2.0" and {c.pair for c in g.configs()} == {(0, 1)} and len(g.configs()) == 4
    with pytest.raises(ConfigError, match="has no digit pairs"):
        grid.parse({"data": "line-gp", "pairs": [[3, 8]]})
    with pytest.raises(ConfigError, match="key 'data': unknown 1-D task"):
        grid.parse({"data": "line-gp2"})


def test_the_engine_trains_and_measures_a_line_task():
    cfgs = [RunConfig(data="line-sine:pool=64,heldout=50", n_train=n, seed=0, alpha=1.0, lr=0.1, max_epochs=200,
                      measure_points=50, segments=20, points=20) for n in (8, 16)]
    recs = pipeline.train_and_measure(cfgs, device="cpu")
    for r, c in zip(recs, cfgs):
        assert r["data"] == "line-sine:pool=64,heldout=50" and r["pair"] == [0, 1]
        assert r["params"].widths == (1, 256, 1)
        for k in ("loss_train", "loss_test", "gradient_norm", "function_path_length", "gradient_path_length",
                  "weights_product", "gradient_norm_train", "path_norm", "minibatch_gradient_norm"):
            assert math.isfinite(r[k]), k
        # the training loss is the MSE of the model on its training set
        t = lines.line_task(c.data)
        idx = t.subset(c.n_train, c.seed)
        assert r["loss_train"] < float((t.pool_y[idx] ** 2).mean())   # it learned something


def test_modelfile_round_trip_of_a_line_model(tmp_path):
    c = RunConfig(data="line-sign:pool=32,heldout=20", n_train=8, max_epochs=5, measure_points=20, segments=4,
                  points=4)
    recs = pipeline.train_and_measure([c], device="cpu")
    path = tmp_path / "m.pt"
    pipeline.save_models(path, recs)
    back = pipeline.load_models(path)
    assert back[0]["meta"]["data"] == c.data and back[0]["params"].widths == (1, 256, 1)


def test_records_of_line_tasks_carry_exact_measures_and_smallest_values():
    from smoothness.measures import oned
    c = RunConfig(data="line-gp:pool=64,heldout=400", n_train=12, seed=1, alpha=1.0, lr=0.1, max_epochs=300,
                  measure_points=400, segments=400, points=50)
    r = pipeline.train_and_measure([c], device="cpu")[0]
    t = lines.line_task(c.data)
    idx = t.subset(c.n_train, c.seed)
    x, y = t.pool_x[idx, 0].double().numpy(), t.pool_y[idx].double().numpy()
    p = r["params"]
    want = oned.exact_measures(p.weights[1][0, 0].double(), p.weights[0][0, :, 0].double(), p.biases[0][0].double(),
                               float(p.biases[1][0, 0]), t.density)
    for k, v in want.items():
        assert r["exact_" + k] == pytest.approx(v, rel=1e-12), k
    assert r["exact_weights_product"] == pytest.approx(r["weights_product"], rel=1e-5)   # the same sum twice
    # the sampled estimators on 400 held-out points agree with the exact values within their sampling error
    assert r["gradient_norm"] == pytest.approx(r["exact_gradient_norm"], rel=0.1)
    assert r["gradient_path_length"] == pytest.approx(r["exact_gradient_path_length"], rel=0.2)
    assert r["min_gradient_norm"] == pytest.approx(oned.smallest_gradient_norm(x, y, t.density))
    assert r["min_function_path_length"] == pytest.approx(oned.smallest_function_path_length(x, y, t.density))
    assert r["min_weights_product"] == pytest.approx(oned.smallest_weights_product(x, y))
    spline = oned.linear_spline(x, y)
    assert r["min_gradient_path_length"] <= oned.gradient_path_length(spline, t.density) + 1e-9
    assert 0 < r["min_gradient_path_length"]


def test_min_through_uses_the_nets_own_values_at_the_training_inputs():
    from smoothness.measures import oned
    c = RunConfig(data="line-gp:pool=64,heldout=100", n_train=6, seed=2, alpha=1.0, lr=0.1, max_epochs=50,
                  measure_points=100, segments=10, points=10)
    r = pipeline.train_and_measure([c], device="cpu")[0]   # far from interpolating after 50 epochs
    t = lines.line_task(c.data)
    x = t.pool_x[t.subset(6, 2), 0].double().numpy()
    p = r["params"]
    f = oned.PiecewiseLinear.from_net(p.weights[1][0, 0].double(), p.weights[0][0, :, 0].double(),
                                      p.biases[0][0].double(), float(p.biases[1][0, 0]))
    want = oned.smallest_values(x, f(x), t.density)
    for k, v in want.items():
        assert r["min_through_" + k] == pytest.approx(v, rel=1e-9)
    for k in oned.MEASURES_1D:
        assert r["exact_" + k] >= want[k] * (1 - 1e-6)      # the net itself passes through those values
    assert r["min_through_gradient_path_length_lower"] == r["min_through_gradient_path_length"]   # uniform: exact
    assert r["min_through_gradient_norm"] != pytest.approx(r["min_gradient_norm"], rel=1e-3)

"""Measuring many trained models at once gives each model the numbers it gets alone."""
import math

import numpy as np
import pytest
import torch

from smoothness import training
from smoothness.data import images
from smoothness.errors import ConfigError
from smoothness.experiments.running import pipeline
from smoothness.runtime import rng


def test_measuring_models_together_gives_the_numbers_each_gets_alone():
    tasks = {pair: images.binary_task("mnist5k", *pair) for pair in ((3, 8), (4, 9))}
    cfgs = [pipeline.RunConfig(pair=pair, n_train=n, seed=s, hidden=(16,), lr=0.05, max_epochs=40,
                               measure_points=40, segments=12, points=9, sharpness_iters=30, trace_probes=3)
            for pair in tasks for n in (32, 48) for s in (0, 1)]
    items = []
    for c in cfgs:
        t = tasks[c.pair]
        idx = t.subset(c.n_train, c.seed)
        (r,) = training.train_models(t.pool_x, [training.TrainSpec(idx, t.pool_y[idx], seed=c.seed, lr=c.lr,
                                                                    max_epochs=c.max_epochs)], widths=c.widths)
        items.append((r.params, t, idx, c))
    broken = items[1][0].clone()
    broken.weights[0][0, 0, 0] = float("nan")         # a diverged model in the same group
    items.append((broken, *items[1][1:]))
    together = pipeline.measure_models(items)
    alone = [pipeline.measure_trained(*it) for it in items]
    assert len(together) == len(items) == 9
    for a, b in zip(alone, together):
        assert a.keys() == b.keys() and len(a) >= 21
        for k in a:
            if math.isnan(a[k]):
                assert math.isnan(b[k]), k
            else:
                assert b[k] == torch.tensor(a[k]).item() or abs(a[k] - b[k]) <= 1e-4 * abs(a[k]) + 1e-6, k
    nan_rec = together[-1]
    assert math.isnan(nan_rec["gradient_norm"]) and math.isnan(nan_rec["sharpness"])
    assert not math.isnan(together[1]["sharpness"]) and together[1]["sharpness_iterations"] >= 1
    # the models really differ, so the comparison above is not trivial
    assert len({round(r["gradient_norm"], 6) for r in together[:-1]}) == 8


def test_run_config_seeds_are_integers_below_2_to_the_32():
    """The generator keeps 32 bits of a seed (rng.hash_words): 2**32 would train the model of seed 0 under
    another configuration key, so seeds outside 0 <= seed < 2**32 are errors, as in grids and on the CLI."""
    assert torch.equal(rng.hash_words(2**32, 1), rng.hash_words(0, 1))   # why: the hash would alias them
    c = pipeline.RunConfig(seed=2**32 - 1, measure_seed=np.int64(7))
    assert c.seed == 2**32 - 1 and c.measure_seed == 7 and type(c.measure_seed) is int
    for bad in (2**32, -1, 99999999999999999999999, 1.0, True, "3"):
        with pytest.raises(ConfigError, match=r"^seed: expected an integer 0 <= seed < 2\*\*32"):
            pipeline.RunConfig(seed=bad)
        with pytest.raises(ConfigError, match=r"^measure_seed: expected an integer 0 <= seed < 2\*\*32"):
            pipeline.RunConfig(measure_seed=bad)


def test_run_config_numbers_are_finite_and_lam_needs_a_regularizer():
    for kw, words in (({"lr": math.inf}, "invalid lr: inf"), ({"alpha": math.inf}, "invalid alpha: inf"),
                      ({"lr": math.nan}, "invalid lr: nan"), ({"threshold": math.inf}, "invalid threshold"),
                      ({"regularizer": "gradient_norm", "lam": math.inf}, "invalid lam: inf"),
                      ({"regularizer": "none", "lam": 0.1}, "lam 0.1 needs a regularizer")):
        with pytest.raises(ConfigError, match=words):
            pipeline.RunConfig(**kw)
    assert pipeline.RunConfig(regularizer="gradient_norm", lam=0.1).lam == 0.1

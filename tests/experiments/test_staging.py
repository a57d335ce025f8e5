"""λ ladders trained rung by rung (staging.py): the wave rule on its own, and a real grid that stops at its edge."""
import pytest

from smoothness.analysis import tables
from smoothness.errors import ConfigError
from smoothness.experiments.configuration import grid, staging
from smoothness.experiments.configuration.grid import config_key
from smoothness.experiments.running import runner
from smoothness.experiments.running.pipeline import RunConfig
from smoothness.experiments.storage.store import Store
from smoothness.training import regularizers


def _configs(lams=(1e-3, 1e-2, 1e-1), pairs=((3, 8), (4, 9)), reg="gradient_norm"):
    cs = [RunConfig(pair=p) for p in pairs]                                        # the lambda = 0 baselines
    cs += [RunConfig(pair=p, regularizer=reg, lam=lam) for lam in lams for p in pairs]
    return {config_key(c): c for c in cs}


def _keys(by_key, lam):
    return [k for k, c in by_key.items() if c.lam == lam]


def test_first_wave_is_the_baselines_and_the_lowest_rung():
    by = _configs()
    w = staging.next_wave(by, {})
    assert w.train == _keys(by, 0.0) + _keys(by, 1e-3)
    assert w.skipped == [] and w.waiting == 4


@pytest.mark.parametrize("converged, next_trained", [(2, True), (1, True), (0, False)])
def test_a_rung_passes_when_at_least_half_of_its_models_converge(converged, next_trained):
    by = _configs()
    low = _keys(by, 1e-3)
    status = {k: "converged" for k in _keys(by, 0.0)}
    status.update({k: "converged" if i < converged else "not_converged" for i, k in enumerate(low)})
    w = staging.next_wave(by, status)
    if next_trained:
        assert w.train == _keys(by, 1e-2) and w.skipped == []
    else:   # the edge: the rungs above are never trained
        assert w.train == [] and w.skipped == _keys(by, 1e-2) + _keys(by, 1e-1)


def test_a_rung_with_models_still_open_holds_the_rungs_above():
    by = _configs()
    status = {k: "converged" for k in _keys(by, 0.0)}
    status[_keys(by, 1e-3)[0]] = "converged"
    w = staging.next_wave(by, status)
    assert w.train == _keys(by, 1e-3)[1:] and w.waiting == 4 and w.skipped == []


def test_diverged_counts_as_failed_and_ladders_are_independent():
    by = {**_configs(), **_configs(lams=(1e-5, 1e-4), reg="weights_product")}
    status = {k: "converged" for k in _keys(by, 0.0)}
    status.update({k: "diverged" for k in _keys(by, 1e-3)})       # GN's lowest rung fails
    status.update({k: "converged" for k in _keys(by, 1e-5)})      # WP's passes
    w = staging.next_wave(by, status)
    assert w.train == _keys(by, 1e-4) and set(w.skipped) == set(_keys(by, 1e-2) + _keys(by, 1e-1))


def test_ladder_all_trains_every_rung_at_once():
    by = _configs()
    assert staging.next_wave(by, {}, "all").train == list(by)


def test_the_ladder_key_is_checked():
    raw = {"regularizers": [{"name": "gradient_norm", "lam": [0, 1e-3]}]}
    assert grid.parse(raw, name="g").ladder == "staged"
    assert grid.parse({**raw, "ladder": "all"}, name="g").ladder == "all"
    with pytest.raises(ConfigError, match="key 'ladder'"):
        grid.parse({**raw, "ladder": "every"}, name="g")


LADDER = {"name": "ladder", "data": "mnist5k", "pairs": [[3, 8], [4, 9]], "n_train": 16, "seeds": 0,
          "hidden": 16, "lr": 0.05, "batch_size": 16, "max_epochs": 150, "threshold": 1.0e-3,
          "regularizers": [{"name": "gradient_norm", "lam": {"start": 1.0e-3, "factor": 300, "end": 100}}],
          "measure": {"points": 50, "segments": 20, "points_per_segment": 10, "seed": 0}}


def test_a_staged_grid_stops_one_rung_above_its_edge_and_resumes_so(tmp_path):
    g = grid.parse(LADDER)
    assert [c.lam for c in g.configs()] == [0.0, 0.0, 1e-3, 1e-3, 0.3, 0.3, 90.0, 90.0]
    # before: every model to its cap of 150 epochs of one step (N = batch = 16), a GN step as 2.4 plain steps
    work = runner.work_left(g, tmp_path)
    gn = regularizers.step_cost("gradient_norm")
    assert len(work) == 8 and sum(w for _, w in work) == pytest.approx(2 * 150 + 6 * 150 * gn)
    note = runner.work_note(work, rate=300 + 900 * gn, shape="784-16-1, batch 16")
    assert f"at most {300 + 900 * gn:,.0f} plain SGD steps (8 models" in note and "at most 1 s for one process" in note
    s = runner.run_grid(g, tmp_path, device="cpu", progress=False)
    # lambda = 1e-3 hardly acts (both converge); lambda = 0.3 keeps GN's penalty above the loss threshold
    assert (s.trained, s.skipped) == (6, 2)
    assert "2 above a lambda ladder's edge not trained" in s.line()
    with Store(tmp_path / Store.FILENAME) as st:
        df = st.frame()
    assert sorted(df["lam"].unique()) == [0.0, 1e-3, 0.3]
    assert set(df[df["lam"] == 0.3]["status"]) == {"not_converged"}
    t2 = tables.table2(df).iloc[0]
    assert (t2["lam"], t2["lam_above"], bool(t2["ladder_short"])) == (1e-3, 0.3, False)
    again = runner.run_grid(g, tmp_path, device="cpu", progress=False)
    assert (again.trained, again.skipped, again.stored_before) == (0, 2, 6)
    assert runner.work_left(g, tmp_path) == [] and runner.work_note([]) == ""   # the skipped rungs too
    line = runner.dry_run(g, tmp_path)
    assert "6 stored" in line and "2 above a lambda ladder's edge not to be trained, 0 to train" in line


def test_a_rung_another_run_stored_meanwhile_is_counted_not_trained(tmp_path, monkeypatch):
    """Local backend: a model that another run into the same store stores between two waves is not trained, the
    summary line counts it, and the progress total drops it: the last line reads [5/7] (8 models, 1 stored by
    the other run; the 2 rungs above the edge are known to be skipped only once the last rung-0.3 model is back)."""
    import io

    from smoothness.experiments.running import pipeline
    g = grid.parse(LADDER)
    runner.run_grid(g, tmp_path / "ref", device="cpu", progress=False)
    with Store(tmp_path / "ref" / Store.FILENAME) as ref:
        late = next(r for r in ref.records() if r["lam"] == 0.3)
        late_params = ref.params(late["key"])
    out = tmp_path / "exp"
    train, calls = pipeline.iter_train_and_measure, []

    def first_wave_then_another_run(*args, **kw):
        calls.append(len(args[0]))
        yield from train(*args, **kw)
        if len(calls) == 1:   # the other run stores one model of the second wave
            with Store(out / Store.FILENAME) as other:
                other.add(late["key"], {k: v for k, v in late.items() if k != "key"}, late_params)
    monkeypatch.setattr(pipeline, "iter_train_and_measure", first_wave_then_another_run)
    stream = io.StringIO()
    s = runner.run_grid(g, out, device="cpu", stream=stream)
    assert calls == [4, 1]   # baselines and the lowest rung, then the one rung-0.3 model left
    assert (s.trained, s.skipped, s.elsewhere, s.stored_before) == (5, 2, 1, 0)
    assert "1 stored meanwhile by another run" in s.line()
    done = [line for line in stream.getvalue().splitlines() if " after " in line]
    assert len(done) == 5 and done[-1].startswith("[5/7]")
    with Store(out / Store.FILENAME) as st:
        assert len(st) == 6 and st.statuses()[late["key"]] == late["status"]

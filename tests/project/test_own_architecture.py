"""A model family of one's own from the shell (docs/your-architecture.md): the example grid with its factory runs end
to end into a store and a report, and every way a factory can fail is one line before any training, nothing stored."""
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli
from smoothness.experiments.storage.store import Store

EXAMPLES = ROOT / "examples"


def _grid(tmp_path, **changes) -> Path:
    g = yaml.safe_load((EXAMPLES / "own-architecture.yaml").read_text())
    g.update(n_train=[16, 32], max_epochs=300, threshold=0.05, measure={"measure_points": 40, "segments": 10, "points_per_segment": 5})
    g["regularizers"] = [{"name": "none"}, {"name": "gradient_norm", "lam": [1e-3], "n_train": [32]}]
    g.update(changes)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(g))
    return path


def test_the_example_grid_of_a_factory_runs_and_reports_from_the_shell(tmp_path):
    env = {"PYTHONPATH": str(EXAMPLES), "OMP_NUM_THREADS": "1"}
    r = run_cli("run", _grid(tmp_path), "--out", tmp_path / "out", "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    assert "grid own-architecture: 6 models, 6 trained now" in r.stdout
    with Store(tmp_path / "out") as st:
        df = st.frame()
    assert set(df["model"]) == {"factory my_architecture:small_convnet width=4"}
    assert df["gradient_norm"].notna().all() and df["norm_product"].notna().all()
    rep = run_cli("report", tmp_path / "out", env=env)
    assert rep.returncode == 0, rep.stderr
    assert (tmp_path / "out" / "report" / "report.html").is_file()
    assert "factory my_architecture:small_convnet width=4" in (tmp_path / "out" / "report" / "report.md").read_text()


@pytest.mark.parametrize("model, message", [
    ({"factory": "my_architecture:small_convnet", "kwargs": {"depth": 3}}, "cannot be called with {'depth': 3}"),
    ({"factory": "my_architecture:no_such_function"}, "has no callable no_such_function"),
    ({"factory": "not_a_module_anywhere:f"}, "cannot import not_a_module_anywhere"),
    ({"factory": "torch.nn:BatchNorm1d", "kwargs": {"num_features": 4}}, "holds BatchNorm1d"),
    ({"factory": "torch.nn:Identity"}, "has no trainable parameters"),
    ({"factory": "my_architecture"}, "write it as package.module:function"),
    ({"family": "cnn", "channels": [4], "width": 2}, "unknown setting"),
])
def test_a_factory_that_fails_is_one_line_before_any_training_and_nothing_is_stored(tmp_path, model, message):
    r = run_cli("run", _grid(tmp_path, model=model), "--out", tmp_path / "out",
                env={"PYTHONPATH": str(EXAMPLES), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_the_python_example_of_the_guide_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "your-architecture.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("## From Python", 1)[1].split("```python\n")[1:]]
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    exec(compile(blocks[0], "your-architecture.md", "exec"), {})
    out = capsys.readouterr().out
    assert "factory my_architecture:small_convnet width=4" in out and "32" in out
    exec(compile(blocks[1], "your-architecture.md", "exec"), {})
    assert capsys.readouterr().out.splitlines() == ["torch.Size([3, 5, 1])", "True"]
    with Store(tmp_path / "runs" / "mine") as st:
        (rec,) = st.records()
    assert rec["status"] in ("converged", "not_converged") and rec["gradient_norm"] > 0


def test_the_dry_run_times_a_model_of_the_grids_own_family(tmp_path):
    r = run_cli("run", _grid(tmp_path), "--out", tmp_path / "out", "--dry-run",
                env={"PYTHONPATH": str(EXAMPLES), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "plain steps/s of one factory (factory my_architecture:small_convnet" in r.stdout, r.stdout
    assert not (tmp_path / "out").exists()

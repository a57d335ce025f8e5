"""The analysis scripts of scripts/ on small inputs: the cost of the GPL penalty's two forms, the state of a
snapshot (loss, sharpness, gradients) and the sharpness trajectory of a grid model."""
import pytest

from conftest import ROOT


def test_the_gpl_cost_script_times_both_forms_on_real_images(tmp_path):
    import subprocess
    import sys
    script = ROOT / "scripts" / "gpl_penalty_cost.py"
    r = subprocess.run([sys.executable, str(script), "--data", "mnist5k", "--pair", "3", "8", "--batches", "2",
                        "--repeats", "1", "--points", "10"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    row = r.stdout.strip().splitlines()[-1].split()
    assert row[0] == "10" and 0 < float(row[1].rstrip("%")) < 100 and float(row[2]) > 0 and float(row[3]) > 0


def test_the_snapshot_state_script_reports_a_snapshots_loss_sharpness_and_gradients(tmp_path):
    # A snapshot of a GPL model of a small grid on real images: the script's training MSE is that of the snapshot's
    # weights on the model's own training set, its sharpness is positive and its penalty gradient is there.
    import subprocess
    import sys

    from smoothness import experiments, models, training
    from smoothness.experiments.configuration import grid as grids
    from smoothness.experiments.running.pipeline import load_tasks
    from smoothness.experiments.storage import snapshots
    from smoothness.models import init_mlp

    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndata: mnist5k\npairs: [[3, 8]]\nn_train: 128\nseeds: 0\nhidden: 32\n"
                    "regularizers:\n  - {name: gradient_path_length, lam: [1.0e-3], lr: 0.1}\n")
    cfg = grids.load(grid).configs()[0]
    params = init_mlp([7], tuple(cfg.widths), alpha=1.0)
    snapshots.SnapshotDir(tmp_path / "run" / snapshots.FOLDER).save(cfg, training.Snapshot(5, 10, params, [], 1.0))
    script = ROOT / "scripts" / "snapshot_state.py"
    r = subprocess.run([sys.executable, str(script), str(grid), str(tmp_path / "run"), "--batches", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    row = r.stdout.strip().splitlines()[-1].split()
    assert row[0] == experiments.config_key(cfg) and row[6] == "5"
    task = load_tasks([cfg])[(cfg.data, cfg.pair)]
    sub = task.subset(cfg.n_train, cfg.seed)
    assert float(row[7]) == pytest.approx(float(models.dataset_mse(params, task.pool_x[sub], task.pool_y[sub])[0]), rel=1e-3)
    assert float(row[8]) > 0 and float(row[9]) == 20 and float(row[10]) > 0 and float(row[11]) > 0
    assert -1 <= float(row[12]) <= 1


def test_the_snapshot_state_script_reads_a_cnn_snapshot(tmp_path):
    # Any family: a CNN's snapshot with FPL, its training loss that of the snapshot's weights, read as the run does.
    import subprocess
    import sys

    from smoothness import experiments, training
    from smoothness.experiments.configuration import grid as grids
    from smoothness.experiments.running.evaluate import family_of_config
    from smoothness.experiments.running.pipeline import load_tasks
    from smoothness.experiments.storage import snapshots
    from smoothness.models import losses

    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndata: mnist5k\npairs: [[3, 8]]\nn_train: 64\nseeds: 0\n"
                    "model: {family: cnn, channels: [2, 3]}\n"
                    "regularizers:\n  - {name: function_path_length, lam: [1.0e-3], lr: 0.05}\n")
    cfg = grids.load(grid).configs()[0]
    fam = family_of_config(cfg)
    params = fam.init([7], 1.0)
    snapshots.SnapshotDir(tmp_path / "run" / snapshots.FOLDER).save(cfg, training.Snapshot(4, 10, params, [], 1.0))
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "snapshot_state.py"), str(grid), str(tmp_path / "run"),
                        "--batches", "1", "--steps", "5"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    row = r.stdout.strip().splitlines()[-1].split()
    assert row[0] == experiments.config_key(cfg) and row[6] == "4"
    task = load_tasks([cfg])[cfg.task_id]
    sub = task.subset(cfg.n_train, cfg.seed)
    want = float(losses.dataset_loss(lambda xb: fam.values(params, xb), task.pool_x[sub], task.pool_y[sub])[0])
    assert float(row[7]) == pytest.approx(want, rel=1e-3)
    assert float(row[8]) > 0 and float(row[10]) > 0 and float(row[11]) > 0 and -1 <= float(row[12]) <= 1


def test_the_sharpness_trajectory_script_follows_a_grid_model_through_training(tmp_path):
    # A small grid's model trained from its first epoch: a reading every 5 epochs until the cap, then its outcome.
    import subprocess
    import sys

    from smoothness import experiments
    from smoothness.experiments.configuration import grid as grids

    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\ndata: mnist5k\npairs: [[3, 8]]\nn_train: 128\nseeds: 0\nhidden: 32\nmax_epochs: 20\n"
                    "regularizers:\n  - {name: gradient_path_length, lam: [1.0e-3], lr: 0.1}\n")
    key = experiments.config_key(grids.load(grid).configs()[0])
    script = ROOT / "scripts" / "sharpness_trajectory.py"
    r = subprocess.run([sys.executable, str(script), str(grid), key, "--every", "5"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert "2/lr = 20" in lines[0]
    rows = [line.split() for line in lines[2:-1]]
    assert [row[0] for row in rows] == ["5", "10", "15"]
    assert all(float(row[1]) > 0 and float(row[2]) > 0 and float(row[3]) > 0 for row in rows)
    assert lines[-1].startswith(("not_converged after 20 epochs", "converged after"))
    r = subprocess.run([sys.executable, str(script), str(grid), "0" * 24], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "not a model of grid" in r.stderr

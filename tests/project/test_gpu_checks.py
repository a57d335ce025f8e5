"""scripts/gpu-checks.sh, the prepared GPU checks, runs end to end (DEVICE=cpu: toy sizes on a CPU)."""
import os
import re
import sqlite3
import subprocess
import sys

from conftest import ROOT


def test_the_gpu_check_script_runs_every_step_and_returns_few_small_files(tmp_path):
    env = dict(os.environ, DEVICE="cpu", PY=sys.executable, OUT=str(tmp_path / "out"))
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-checks.sh")], capture_output=True, text=True, env=env,
                       timeout=1800)
    assert r.returncode == 0, r.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text()
    steps = re.findall(r"^== (\S+) ", summary, re.M)
    assert steps == ["tests", "bench-fp32", "smoke-cpu", "smoke-dev", "smoke-compare", "fashion-table1"]
    assert re.findall(r"exit (\d+) after", summary) == ["0"] * len(steps), summary
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in (tmp_path / "out").iterdir())   # five files, a few small stores
    assert "model-steps/s" in (tmp_path / "out" / "steps.log").read_text()
    db = sqlite3.connect(str(tmp_path / "out" / "smoke-dev.sqlite"))
    assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] > 0
    assert db.execute("SELECT COUNT(*) FROM weights").fetchone()[0] == 0

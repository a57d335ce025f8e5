import re
import subprocess
import sys

from conftest import ROOT


def python_blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_examples_run(tmp_path):
    blocks = python_blocks()
    assert len(blocks) == 3, "README should have the any-model example, the measures example and the experiments one"
    outs = []
    for code in blocks:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout.splitlines())
    first = outs[0]   # value ± se; {'fpl': ..., 'gpl': ...}; (lower, upper); sharpness and trace ± se
    assert " ± " in first[0] and "'fpl'" in first[1] and "'gpl'" in first[1]
    lower, upper = (float(v) for v in re.findall(r"Estimate\(([0-9.e+-]+)", first[2]))
    assert 0 < lower <= upper < float("inf")
    assert " ± " in first[3]
    assert float(outs[1][0]) == 4.0 and float(outs[1][1]) == 4.0
    assert outs[2][0].startswith("grid smoke: 24 models, 24 trained now")
    assert any("report.html" in line for line in outs[2])
    assert (tmp_path / "runs" / "smoke" / "report" / "figure2.png").exists()
    assert "matched 24 models on every configuration field except matmul_precision" in outs[2]   # compare
    assert "status equal for 24 of 24" in outs[2]


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).strip().splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["bash scripts/quick.sh", "bash scripts/test.sh"]
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_every_relative_link_of_the_readme_exists():
    text = (ROOT / "README.md").read_text()
    links = [t.split("#")[0] for t in re.findall(r"\]\(([^)]+)\)", text) if "://" not in t and not t.startswith("#")]
    assert links and [t for t in links if not (ROOT / t).exists()] == []

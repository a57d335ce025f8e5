"""The docs build strictly with MkDocs (a broken link or a page left out of the navigation fails), and the
module table of docs/index.md lists exactly the package's modules."""
import re
import shutil
import subprocess
import sys

from conftest import ROOT


def build(root, site):
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(root / "mkdocs.yml"),
                           "-d", str(site)], capture_output=True, text=True, timeout=300, cwd=root)


def test_docs_build_strictly_with_the_api_pages(tmp_path):
    r = build(ROOT, tmp_path / "site")
    assert r.returncode == 0, r.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "measure_stack" in api and "REGISTRY" in api     # generated from the docstrings


def test_a_broken_link_or_an_orphan_page_fails_the_build(tmp_path):
    for bad in ("link", "orphan"):
        root = tmp_path / bad
        shutil.copytree(ROOT / "docs", root / "docs")
        shutil.copy(ROOT / "mkdocs.yml", root / "mkdocs.yml")
        shutil.copytree(ROOT / "src", root / "src")
        if bad == "link":
            with open(root / "docs" / "data.md", "a") as f:
                f.write("\n[gone](no-such-page.md)\n")
        else:
            (root / "docs" / "extra.md").write_text("# not in the navigation\n")
        r = build(root, tmp_path / f"site-{bad}")
        assert r.returncode != 0, bad
        assert ("no-such-page.md" if bad == "link" else "extra.md") in r.stderr


def test_the_module_table_matches_the_package():
    listed = set()
    for row in re.findall(r"^\| (`[^|]*`) \|", (ROOT / "docs" / "index.md").read_text(), flags=re.M):
        listed |= set(re.findall(r"`([a-z_]+)\.py`", row))
    modules = {p.stem for p in (ROOT / "src" / "smoothness").glob("*.py") if not p.stem.startswith("__")}
    assert listed == modules

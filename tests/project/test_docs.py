"""The docs build strictly with MkDocs (a broken link or a page left out of the navigation fails), the
module table of docs/index.md lists exactly the package's modules, each result grid file matches its store, and
every file under results/ that the docs name is in the repository."""
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
    api = (tmp_path / "site" / "api" / "measures" / "index.html").read_text()
    assert "measure_stack" in api and "REGISTRY" in api     # generated from the docstrings
    assert "_two_layer_path_lengths" not in api and "_Evaluator" not in api   # the public API only


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
        listed |= set(re.findall(r"`([a-z_/]+\.py)`", row))
    src = ROOT / "src" / "smoothness"
    modules = {p.relative_to(src).as_posix() for p in src.rglob("*.py") if not p.name.startswith("__")}
    assert listed == modules


def test_the_option_table_of_the_cli_page_lists_each_commands_options():
    """docs/cli.md's table "Every option, by command" names every command once, and in each row exactly the
    options of its commands' parsers (a row of two commands: the options of either)."""
    from smoothness.cli.args import build_parser, options_by_command
    options = options_by_command(build_parser())
    text = (ROOT / "docs" / "cli.md").read_text()
    table = text[text.index("## Every option, by command"):].split("\n## ")[0]
    rows = re.findall(r"^\| ((?:`[a-z]+`(?:, )?)+) \| (.*) \|$", table, flags=re.M)
    named = [name for names, _ in rows for name in re.findall(r"`([a-z]+)`", names)]
    assert sorted(named) == sorted(options)
    for names, cell in rows:
        expected = set().union(*(options[n] for n in re.findall(r"`([a-z]+)`", names)))
        assert set(re.findall(r"`(--[a-z0-9-]+)", cell)) == expected, names


def test_each_result_grid_file_is_the_design_of_its_store(tmp_path):
    """results/X.yaml rebuilds the grid recorded in X.sqlite (all but the description), so `smoothness run`
    on it reproduces or resumes that store even after the preset of the same name has changed."""
    import json
    import sqlite3

    from smoothness.experiments.configuration import grid
    pairs = [(y, y.with_suffix(".sqlite")) for y in sorted((ROOT / "results").glob("*.yaml"))]
    pairs = [(y, db) for y, db in pairs if db.exists()]
    assert len(pairs) >= 2
    for y, db in pairs:
        copy = tmp_path / db.name
        shutil.copy(db, copy)
        with sqlite3.connect(copy) as c:
            stored = json.loads(c.execute("select value from meta where name = 'grid'").fetchone()[0])
        # read through today's parser, which fills in the fields added since (None in an entry means unset)
        stored["regularizers"] = [{k: v for k, v in e.items() if v is not None} for e in stored["regularizers"]]
        then, now = grid.parse(stored, name=stored["name"]).to_dict(), grid.load(y).to_dict()
        assert {k: v for k, v in now.items() if k != "description"} == \
            {k: v for k, v in then.items() if k != "description"}, y.name


def named_results(text: str) -> set[str]:
    """The paths under results/ that a Markdown text names in code spans (globs and the bare folder left out)."""
    return {m.rstrip("/.,;:") for m in re.findall(r"`(results/[^`\s]*)", text)
            if "*" not in m and "..." not in m and m.rstrip("/") != "results"}


def test_named_results_is_what_a_page_names():
    text = "the store `results/a.sqlite`, its snapshots in `results/a-snapshots/` and `results/2026-*.yaml`, `results/`"
    assert named_results(text) == {"results/a.sqlite", "results/a-snapshots"}


def test_every_results_file_the_docs_name_is_tracked():
    """A results page that says a store, a grid or snapshots are committed names files git holds: a file the
    .gitignore hides (such as *.pt snapshots) would be on the writer's disk only, and a fresh clone could not resume."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    named = set().union(*(named_results(p.read_text(encoding="utf-8")) for p in pages))
    assert len(named) >= 10
    tracked = subprocess.run(["git", "ls-files", "results"], capture_output=True, text=True, cwd=ROOT, check=True)
    files = set(tracked.stdout.split())
    missing = sorted(n for n in named if n not in files and not any(f.startswith(n + "/") for f in files))
    assert not missing, f"named in the docs but not in git: {missing}"


def test_every_file_a_preset_description_names_exists():
    """A preset's description (shown by `smoothness presets`) that points to a results file or page names one that
    is in the repository."""
    named = set()
    for y in (ROOT / "src" / "smoothness" / "presets").glob("*.yaml"):
        named |= {(y.name, m.rstrip(".,;:)")) for m in re.findall(r"(?:docs/)?results/[\w.-]+", y.read_text())}
    assert named
    assert not [(y, m) for y, m in named if not (ROOT / m).exists()]

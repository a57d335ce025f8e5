"""The tests mirror the package: each test file is in tests/FOLDER/, where FOLDER is a folder of src/smoothness/
(the part it tests) or project (the repository as a whole: layering, docs, README, examples, scripts); only the
shared conftest.py and tolerance.py stay at tests/. Test file names are unique across the folders (pytest imports
each test file by its name), and every test file that the docs, scripts or sources name exists."""
import re

from conftest import ROOT

TESTS = ROOT / "tests"
SHARED = {"conftest.py", "tolerance.py"}


def allowed_folders() -> set[str]:
    """The folders of the package (any depth, relative to src/smoothness/), and project."""
    src = ROOT / "src" / "smoothness"
    return {p.parent.relative_to(src).as_posix() for p in src.rglob("__init__.py") if p.parent != src} | {"project"}


def test_every_test_file_is_in_a_folder_of_the_package_or_in_project():
    allowed = allowed_folders()
    misplaced = []
    for p in sorted(TESTS.rglob("*.py")):
        rel = p.relative_to(TESTS)
        if rel.parent.as_posix() == "." and rel.name in SHARED:
            continue
        if rel.parent.as_posix() not in allowed:
            misplaced.append(rel.as_posix())
    assert misplaced == [], (f"test files outside the mirrored folders ({', '.join(sorted(allowed))}) "
                             f"of tests/: {misplaced}")


def test_test_file_names_are_unique_across_the_folders():
    seen: dict[str, list[str]] = {}
    for p in TESTS.rglob("*.py"):
        seen.setdefault(p.name, []).append(p.relative_to(TESTS).as_posix())
    assert {n: sorted(ps) for n, ps in seen.items() if len(ps) > 1} == {}


def test_every_test_file_named_in_the_repository_exists():
    texts = [ROOT / "README.md", ROOT / ".ci" / "run", *(ROOT / "docs").rglob("*.md"), *(ROOT / "scripts").rglob("*"),
             *(ROOT / "src").rglob("*.py"), *(ROOT / "examples").rglob("*.py"), *TESTS.rglob("*.py")]
    named, gone = 0, []
    for p in texts:
        if not p.is_file() or "__pycache__" in p.parts:
            continue
        for m in re.findall(r"\btests/[\w/]+\.py\b", p.read_text(errors="replace")):
            named += 1
            if not (ROOT / m).is_file():
                gone.append(f"{p.relative_to(ROOT)}: {m}")
    assert named > 0 and gone == [], gone


def test_no_test_module_imports_another():
    # Test files sit in folders that are not packages, so one can import another only when pytest happened to put
    # its folder on the path first: shared helpers go in tests/conftest.py.
    bad = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in (ROOT / "tests").rglob("test_*.py")
           for m in re.finditer(r"^\s*(from|import) test_\w+", p.read_text(), re.M)]
    assert not bad, "\n".join(bad)

"""The package's layering, read from the source: each layer imports only the layers below it, no module imports
itself back through others, and no private name (`_x`) is used outside the module that defines it."""
import ast
from pathlib import Path

from conftest import ROOT

SRC = ROOT / "src" / "smoothness"
# Lowest first: a module may import its own layer and the ones before it.
LAYERS = ["errors", "paper", "runtime", "models", "data", "measures", "training", "experiments", "analysis", "report",
          "cli"]


def modules() -> dict[str, Path]:
    out = {}
    for f in SRC.rglob("*.py"):
        parts = f.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


MODULES = modules()


def imports(name: str) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) of every smoothness import in module `name`, at any depth."""
    out = []
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "smoothness":
            assert node.level == 0, f"{name}: relative import"
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((sub, "", node.lineno) if sub in MODULES else (node.module, a.name, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "smoothness"]
    return out


def layer(name: str) -> int:
    parts = name.split(".")
    if len(parts) == 1:   # the package itself: its __init__ only names the others
        return len(LAYERS)
    return LAYERS.index(parts[1])


def test_every_module_belongs_to_a_layer():
    for name in MODULES:
        if name not in ("smoothness", "smoothness.__main__"):
            assert name.split(".")[1] in LAYERS, f"{name} is in no layer of tests/project/test_architecture.py"


def test_no_layer_imports_a_higher_one():
    bad = []
    for name in MODULES:
        if name in ("smoothness", "smoothness.__main__"):
            continue
        for mod, _, line in imports(name):
            if mod != "smoothness" and layer(mod) > layer(name):
                bad.append(f"{MODULES[name].relative_to(SRC.parent)}:{line} ({LAYERS[layer(name)]}) imports {mod}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph = {n: {m for m, _, _ in imports(n) if m in MODULES and m != n and not MODULES[m].name == "__init__.py"}
             for n in MODULES}
    state: dict[str, int] = {}

    def visit(n, path):
        state[n] = 1
        for m in graph[n]:
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [n, m]))
            if m not in state:
                visit(m, path + [n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])


def test_no_private_name_is_used_across_modules():
    bad = []
    for name in MODULES:
        tree = ast.parse(MODULES[name].read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("smoothness"):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        bad.append(f"{name}: from {node.module} import {a.name}")
                    if f"{node.module}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


def test_modules_stay_readable():
    long = [f"{MODULES[n].relative_to(SRC.parent)}: {len(MODULES[n].read_text().splitlines())} lines"
            for n in MODULES if len(MODULES[n].read_text().splitlines()) > 450]
    assert not long, "split these modules:\n" + "\n".join(long)


def test_the_import_paths_of_earlier_versions_warn_and_import_the_same_modules_and_import_smoothness_is_light():
    import subprocess
    import sys
    code = ("import sys, warnings, smoothness\n"
            "assert 'torch' not in sys.modules\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    from smoothness.store import Store\n"
            "    from smoothness import grid, curvature, compare\n"
            "    from smoothness.experiments import runner\n"
            "    import smoothness.experiments.snapshots as snaps\n"
            "msgs = [str(x.message) for x in w if x.category is DeprecationWarning]\n"
            "assert len(msgs) == 6, msgs   # one each\n"
            "assert 'smoothness.store is deprecated: import smoothness.experiments.storage.store' in msgs[0], msgs\n"
            "assert any('smoothness.experiments.runner is deprecated: import smoothness.experiments.running.runner'"
            " in m for m in msgs), msgs\n"
            "import smoothness.experiments.storage.store as real\n"
            "assert Store is real.Store and grid.__name__ == 'smoothness.experiments.configuration.grid'\n"
            "assert curvature.__name__ == 'smoothness.measures.curvature'\n"
            "assert compare.__name__ == 'smoothness.report.compare'\n"
            "assert runner.__name__ == 'smoothness.experiments.running.runner'\n"
            "assert snaps.__name__ == 'smoothness.experiments.storage.snapshots'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_the_jobs_of_experiments_import_only_the_ones_before_them():
    jobs = ["configuration", "storage", "running"]
    bad = []
    for name in MODULES:
        parts = name.split(".")
        if len(parts) < 4 or parts[1] != "experiments":
            continue
        for mod, _, line in imports(name):
            m = mod.split(".")
            if len(m) >= 3 and m[1] == "experiments" and m[2] in jobs and jobs.index(m[2]) > jobs.index(parts[2]):
                bad.append(f"{MODULES[name].relative_to(SRC.parent)}:{line} ({parts[2]}) imports {mod}")
    assert not bad, "\n".join(bad)

"""The smoke preset end to end: grid -> store -> analyses -> report, and the report rendered in Chromium."""
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from smoothness.experiments.configuration import grid
from smoothness.experiments.storage.store import Store
from smoothness.measures import registry

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "exp"
    r = run_cli("reproduce", "--preset", "smoke", "--out", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    return out, r


def test_reproduce_stores_every_model_of_the_grid_with_versions(smoke):
    out, r = smoke
    configs = grid.preset("smoke").configs()
    with Store(out) as st:
        recs = st.records()
        assert {x["key"] for x in recs} == {grid.config_key(c) for c in configs}
        for x in recs:
            assert x["status"] in ("converged", "not_converged", "diverged")
            assert {"loss_train", "loss_test", "gradient_norm", "gradient_norm_train", "function_path_length",
                    "train_seconds", "device", "versions", "fpl_lower_bound"} <= set(x)
        assert len(st.params(recs[0]["key"]).widths) == 3
    assert re.search(rf"grid smoke: {len(configs)} models, {len(configs)} trained now, 0 already stored; "
                     r"converged \d+, not converged \d+, diverged \d+", r.stdout)
    # progress: one line per finished model with done/total, running models and the ETA
    assert f"[{len(configs)}/{len(configs)}]" in r.stderr and "ETA" in r.stderr and "running" in r.stderr


def test_report_files_and_tables(smoke):
    out, r = smoke
    rep = out / "report"
    for f in ("table1.md", "table2.md", "table1.csv", "table2.csv", "table1_taus.csv", "table2_ratios.csv",
              "status_counts.csv", "runs.csv", "report.md", "report.html"):
        assert (rep / f).stat().st_size > 0, f
    for f in ("figure2.png", "measures_vs_n.png", "test_loss_vs_n.png"):
        assert (rep / f).read_bytes()[:8] == PNG and (rep / f).stat().st_size > 10_000, f
    t1 = (rep / "table1.md").read_text()
    assert "Kendall's τ (ours)" in t1 and "0.16 ± 0.32" in t1         # ours beside the paper's
    t2 = (rep / "table2.md").read_text()
    assert "r_norm (paper)" in t2 and "0.31 ± 0.13" in t2 and "gradient_norm" in t2 and "weights_product" in t2
    taus = pd.read_csv(rep / "table1_taus.csv")
    assert len(taus) == 4 and taus["gradient_norm"].between(-1, 1).all()   # 2 pairs x 2 seeds
    runs = pd.read_csv(rep / "runs.csv")
    assert len(runs) == len(grid.preset("smoke").configs())
    # the curves behind Table 1 as numbers: per N, the mean GN of the converged unregularized models
    by_n = pd.read_csv(rep / "measures_by_n.csv").set_index("n_train")
    base = runs[(runs["regularizer"] == "none") & (runs["status"] == "converged")]
    assert sorted(by_n.index) == sorted(base["n_train"].unique())
    for n, g in base.groupby("n_train"):
        assert by_n.loc[n, "gradient_norm_mean"] == pytest.approx(g["gradient_norm"].mean())
        assert by_n.loc[n, "gradient_norm_count"] == len(g)
    assert "Measures by training size" in (rep / "measures_by_n.md").read_text()
    # the report opens with the verdict: one row per measure, ours and the paper's, from this store's tables
    md = (rep / "report.md").read_text()
    assert md.index("## Verdict") < md.index("## Table 1")
    v = pd.read_csv(rep / "verdict.csv")
    assert list(v["measure"]) == ["GN", "FPL", "GPL", "WP"]
    assert list(v["paper_reading"]) == ["SGD does not optimize it"] * 2 + ["consistent with SGD optimizing it"] * 2
    t1s = pd.read_csv(rep / "table1.csv").set_index("measure")
    assert v.set_index("measure").loc["GN", "tau"] == pytest.approx(t1s.loc["GN", "tau_mean"])
    assert "Verdict: does SGD optimize each measure?" in (rep / "report.html").read_text()
    # the grid's table2_lambdas: Table 2 at those λ beside the edge's
    fixed = pd.read_csv(rep / "table2_fixed.csv")
    assert set(fixed["rule"]) == {"fixed"} and set(fixed["lam"]) == {1e-3}
    assert set(fixed["measure"]) == {"GN", "WP"} and (fixed["models_at_lam"] == 4).all()   # 2 pairs x 2 seeds
    assert "Table 2 at fixed λ" in t2 and "Fixed λ" in t2 and not (rep / "r_norm_by_n.csv").exists()
    assert "Table 1" in r.stdout and "Table 2" in r.stdout and "report.html" in r.stdout
    # the sampling error of the estimated measures, from each model's standard errors
    err = pd.read_csv(rep / "sampling_error.csv").set_index("column")
    for col in ("gradient_norm", "function_path_length", "gradient_path_length", "gradient_norm_train"):
        rel = runs[f"{col}_se" if not col.endswith("_train") else col[:-6] + "_train_se"] / runs[col].abs()
        assert err.loc[col, "models"] == rel.notna().sum() and err.loc[col, "rel_se_max"] == pytest.approx(rel.max())
        assert 0 < err.loc[col, "rel_se_median"] <= err.loc[col, "rel_se_max"]
    assert "## Sampling error" in md and "median se/value" in (rep / "sampling_error.md").read_text()


def test_no_measure_of_the_registry_is_left_out(smoke):
    """Every measure of registry.REGISTRY (those with an option: when the grid asks for them, as the curvature test
    of test_curvature.py does) is in every record, in runs.csv and, where it enters Table 1, in Table 1 and the per-N
    table of a one-hidden-layer grid (PN stands in for WP only in deeper nets)."""
    out, _ = smoke
    rep = out / "report"
    runs = pd.read_csv(rep / "runs.csv")
    t1 = pd.read_csv(rep / "table1.csv")
    by_n = pd.read_csv(rep / "measures_by_n.csv")
    for m in registry.REGISTRY:
        if m.option:
            assert not any(c in runs for c in registry.columns(m)), m.key
            continue
        cols = [*registry.columns(m)] + ([registry.on_points(c, "_train") for c in registry.columns(m)]
                                         if m.sampled else [])
        for c in cols:
            assert c in runs and runs[c].notna().all(), c
        if m.table1 and not m.stands_in_for:
            assert m.short in set(t1["measure"]), m.key
            assert f"{m.key}_mean" in by_n, m.key


def test_every_record_key_is_declared_in_the_record_type(smoke):
    from smoothness.experiments.configuration.config import Record
    out, _ = smoke
    declared = set(Record.__annotations__)
    with Store(out) as st:
        for rec in st.records():
            assert set(rec) - {"key"} <= declared
    for m in registry.REGISTRY:
        assert set(registry.columns(m)) <= declared, m.key
        assert not m.sampled or {registry.on_points(c, "_train") for c in registry.columns(m)} <= declared, m.key


def test_content_is_computed_without_writing_and_rendered_anywhere(smoke, tmp_path):
    from smoothness.report import document
    out, _ = smoke
    with Store(out, create=False) as st:
        df = st.frame()
    c = document.compute_content(df, {"name": "smoke"}, [], {}, out / "results.sqlite", [])
    assert list(tmp_path.iterdir()) == []
    assert list(c.verdict["measure"]) == ["GN", "FPL", "GPL", "WP"] and c.title == "smoothness report: smoke"
    written = document.render(c, tmp_path)
    assert {"report.md", "report.html", "verdict.csv", "table1.md"} <= set(written)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "table1.csv"), pd.read_csv(out / "report" / "table1.csv"))


def test_the_intro_names_the_reports_version_and_the_versions_that_trained_the_models(smoke):
    import smoothness
    from smoothness.report import document
    out, _ = smoke
    with Store(out, create=False) as st:
        df = st.frame()
    df["versions"] = [{"smoothness": "0.0.1" if i % 2 else "0.0.2", "torch": "2.0"} for i in range(len(df))]
    c = document.compute_content(df, {"name": "smoke"}, [], {"smoothness": "9.9"}, out / "results.sqlite", [])
    assert f"by smoothness {smoothness.__version__} (torch " in c.intro
    assert "trained by smoothness 0.0.2 (torch 2.0), smoothness 0.0.1 (torch 2.0)." in c.intro
    c = document.compute_content(df.drop(columns="versions"), {"name": "smoke"}, [], {"smoothness": "9.9"},
                                 out / "results.sqlite", [])
    assert "trained by smoothness 9.9 (torch ?)." in c.intro   # records without versions: the store's


def test_html_is_self_contained(smoke):
    html = (smoke[0] / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert not re.search(r"""(src|href)=['"](?!data:)""", html)   # no external file or URL


def test_reproduce_again_trains_nothing_and_report_is_rebuilt(smoke, tmp_path):
    out, _ = smoke
    n = sqlite3.connect(str(out / Store.FILENAME)).execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    r = run_cli("reproduce", "--preset", "smoke", "--out", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert f"0 trained now, {n} already stored" in r.stdout
    r = run_cli("report", out / Store.FILENAME, "--out", tmp_path / "rep")
    assert r.returncode == 0 and (tmp_path / "rep" / "report.html").exists()


def test_a_report_replaces_only_a_reports_files(smoke, tmp_path):
    """--out may be a new or empty folder or one a report was written to (by this version: its mark; by an earlier
    one: its report.html); a folder of the user's own files is refused before any work, its files untouched."""
    from smoothness.errors import StoreError
    from smoothness.report import document
    out, _ = smoke
    rep = tmp_path / "rep"
    document.write_report(out, rep)
    assert (rep / document.REPORT_MARK).exists()
    assert "report.html" in document.write_report(out, rep)            # again: the same folder is the report's
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(rep / "report.html", legacy / "report.html")
    assert "report.md" in document.write_report(out, legacy)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    with pytest.raises(StoreError, match="holds files that smoothness report did not write"):
        document.write_report(out, mine)
    assert (mine / "report.md").read_text() == "my notes" and sorted(p.name for p in mine.iterdir()) == ["report.md"]
    r = run_cli("report", out, "--out", "")
    assert r.returncode != 0 and "--out: an empty path" in r.stderr and "Traceback" not in r.stderr


def test_several_stores_give_one_report_each_model_once(smoke, tmp_path):
    """Table 1 from one store and Table 2 from another (here: the smoke store split in two, with overlap)."""
    out, _ = smoke
    src = out / Store.FILENAME
    keys = [k for (k,) in sqlite3.connect(str(src)).execute("SELECT key FROM runs ORDER BY key")]
    parts = []
    for name, drop in (("a", keys[: len(keys) // 3]), ("b", keys[len(keys) // 2:])):   # the middle in both
        d = tmp_path / name
        d.mkdir()
        shutil.copy(src, d / Store.FILENAME)
        db = sqlite3.connect(str(d / Store.FILENAME))
        db.executemany("DELETE FROM runs WHERE key = ?", [(k,) for k in drop])
        db.commit()
        db.close()
        parts.append(d)
    r = run_cli("report", *parts, "--out", tmp_path / "both")
    assert r.returncode == 0, r.stderr
    runs = pd.read_csv(tmp_path / "both" / "runs.csv")
    assert sorted(runs["key"]) == keys
    assert (tmp_path / "both" / "table1.md").read_text() == (out / "report" / "table1.md").read_text()
    md = (tmp_path / "both" / "report.md").read_text()
    assert f"{len(keys)} models in 2 stores" in md and "held by more than one store are counted once" in md
    r = run_cli("report", parts[0], tmp_path / "nowhere", "--out", tmp_path / "x")
    assert r.returncode != 0 and "Traceback" not in r.stderr and "nowhere" in r.stderr


def _chromium():
    for b in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(b):
            return shutil.which(b)
    return None


@pytest.mark.skipif(_chromium() is None or shutil.which("chromedriver") is None,
                    reason="needs Debian's chromium and chromium-driver (installed by .ci/run)")
def test_report_renders_in_headless_chromium(smoke):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = _chromium()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    drv = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    try:
        drv.get(Path(smoke[0] / "report" / "report.html").resolve().as_uri())
        drv.execute_script("return document.readyState")
        imgs = drv.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
                                  "i.naturalHeight, i.alt])")
        assert len(imgs) == 3 and all(c and w > 300 and h > 200 for c, w, h, _ in imgs), imgs
        heads = drv.execute_script("return Array.from(document.querySelectorAll('h2,h3')).map(h => h.textContent)")
        assert any(h.startswith("Table 1") for h in heads) and any(h.startswith("Table 2") for h in heads)
        cells = drv.execute_script("return Array.from(document.querySelectorAll('td')).map(t => t.textContent)")
        assert "Kendall's τ (ours)" in cells and "r_norm (paper)" in cells
        assert drv.execute_script("return document.querySelectorAll('table').length") >= 3
    finally:
        drv.quit()


def run_and_report(tmp_path, grid_yaml: str) -> Path:
    """Run a small grid from YAML text through the CLI, build its report; returns the report folder."""
    f = tmp_path / "grid.yaml"
    f.write_text(grid_yaml)
    r = run_cli("run", f, "--out", tmp_path / "exp", "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run_cli("report", tmp_path / "exp")
    assert r.returncode == 0, r.stderr
    return tmp_path / "exp" / "report"


def test_a_store_of_cnns_regularized_by_the_minibatch_gradient_norm_records_it_and_reports(tmp_path):
    rep = run_and_report(tmp_path, "name: t\ndata: mnist5k\npairs: [[3, 8]]\nn_train: [16, 32]\nseeds: 0\n"
                         "alpha: 1.0\nlr: 0.05\nthreshold: 0.9\nmax_epochs: 3\nmodel: {family: cnn, channels: [2]}\n"
                         "regularizers: [{name: none}, {name: minibatch_gradient_norm, lam: [1.0e-3]}]\n"
                         "measure: {measure_points: 20, segments: 4, points_per_segment: 4}\n")
    with Store(tmp_path / "exp") as s:
        df = s.frame()
    assert len(df) == 4 and bool((df["minibatch_gradient_norm"] > 0).all())
    assert "MGN" in (rep / "report.md").read_text()
    # records without the measure (a store written before the CNN's models had it): NaN, no values to show
    from smoothness.analysis import tables
    old = df.drop(columns=[c for c in df if c.startswith("minibatch_gradient_norm")])
    figs, rows = tables.figure2_data(old), tables.table2(old)
    assert len(figs) == len(rows) == 2   # N = 16 and 32
    assert all(f["measure"] == "MGN" and all(len(v) == 0 for v in f["values"].values()) for f in figs)
    assert rows["unreg_mean"].isna().all() and rows["reg_mean"].isna().all()


def test_table2_at_fixed_lambdas_over_several_n_gets_r_norm_against_n(tmp_path):
    rep = run_and_report(tmp_path, "name: grow\npairs: [[3, 8], [4, 9]]\nn_train: [16, 32]\nhidden: 16\nlr: 0.05\n"
                         "threshold: 1.0e-3\nmax_epochs: 2000\nbatch_size: 16\ntable2_lambdas: paper\n"
                         "regularizers: [{name: gradient_norm, lam: [0, 1.0e-3]}]\n"
                         "measure: {points: 32, segments: 8, points_per_segment: 16}\n")
    ratios = pd.read_csv(rep / "table2_fixed_ratios.csv")
    rbn = pd.read_csv(rep / "r_norm_by_n.csv")
    assert set(rbn["measure"]) == {"GN"} and sorted(rbn["n_train"]) == [16, 32] and set(rbn["lam"]) == {1e-3}
    for n, g in ratios.groupby("n_train"):
        assert rbn.set_index("n_train").loc[n, "r_norm_mean"] == pytest.approx(g["r"].mean())
    assert (rep / "r_norm_vs_n.png").read_bytes().startswith(PNG)
    assert "r_norm against N at fixed λ" in (rep / "report.md").read_text()


def test_a_learning_rate_sweep_gets_its_table_and_figure(tmp_path):
    rep = run_and_report(tmp_path, "name: sweep\npairs: [[3, 8]]\nn_train: 32\nseeds: [0, 1]\nhidden: 16\n"
                         "lr: [0.02, 0.1]\nthreshold: 1.0e-3\nmax_epochs: 3000\nmeasure: {points: 32, segments: 8, "
                         "points_per_segment: 16, sharpness_iters: 50, trace_probes: 4}\n")
    sweep = pd.read_csv(rep / "lr_sweep.csv")
    assert list(sweep["lr"]) == [0.02, 0.1] and list(sweep["models"]) == [2, 2]
    all_conv = sweep["converged"] == sweep["models"]
    assert sweep["final_loss_median"].notna().all() and (sweep["final_loss_median"][all_conv] < 1e-3).all()
    assert (sweep["converged"] >= 1).all()
    assert list(sweep[["converged", "not_converged", "diverged"]].sum(axis=1)) == [2, 2]
    assert (sweep["sharpness_mean"] > 0).all() and sweep["hessian_trace_mean"].notna().all()
    md = (rep / "lr_sweep.md").read_text()
    assert "Learning-rate sweep" in md and re.search(r"\| 0\.1 \| \d/2 \| \d \| [0-9.e-]+ \| 20 \|", md)
    assert (rep / "lr_sweep.png").read_bytes().startswith(PNG)
    assert "lr_sweep.png" in (rep / "report.md").read_text()


def test_a_depth_grid_gets_table1_per_depth_with_the_path_norm(tmp_path):
    rep = run_and_report(tmp_path, "name: d\npairs: [[3, 8]]\nn_train: [16, 32, 48]\nseeds: [0, 1]\n"
                         "hidden: [[16], [16, 16]]\nalpha: 1.0\nlr: 0.05\nthreshold: 1.0e-3\nmax_epochs: 3000\n"
                         "measure: {points: 32, segments: 8, points_per_segment: 16}\n")
    runs = pd.read_csv(rep / "runs.csv")
    one, two = runs[runs["hidden"] == "16"], runs[runs["hidden"] == "16-16"]
    assert len(one) == len(two) == 6 and (runs["status"] == "converged").all()
    assert np.allclose(one["path_norm"], one["weights_product"], rtol=1e-5) and two["weights_product"].isna().all()
    assert two["gradient_path_length"].notna().all() and two["path_norm"].notna().all()
    depth = pd.read_csv(rep / "depth.csv")
    assert sorted(depth["depth"].unique()) == [1, 2] and (depth["datasets"] == 2).all()
    t1 = (rep / "table1.md").read_text()
    assert "hidden 16-16" in t1 and "| PN |" in t1 and "| WP |" in t1
    md = (rep / "depth.md").read_text()
    assert "Table 1 by depth" in md and "hidden 16-16" in md
    assert (rep / "depth.png").read_bytes().startswith(PNG) and "depth.png" in (rep / "report.md").read_text()


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist not installed")
def test_a_fashion_mnist_grid_with_two_optimizers_and_depths_runs_and_reports(tmp_path):
    rep = run_and_report(tmp_path, "name: fash\ndata: fashion-mnist\npairs: [[0, 6], [7, 9]]\nn_train: [32, 64]\n"
                         "hidden: [[16], [16, 16]]\noptimizer: [sgd, adam]\nalpha: 1.0\nthreshold: 1.0e-3\n"
                         "max_epochs: 3000\nmeasure: {points: 64, segments: 16, points_per_segment: 16, "
                         "sharpness_iters: 20}\n")
    runs = pd.read_csv(rep / "runs.csv")
    assert len(runs) == 16 and set(runs["data"]) == {"fashion-mnist"}
    assert set(zip(runs["optimizer"], runs["lr"])) == {("sgd", 0.01), ("adam", 0.001)}
    assert runs["sharpness"].notna().all() and runs["path_norm"].notna().all()
    t1 = (rep / "table1.md").read_text()
    assert t1.count("**Table 1") == 4 and "fashion-mnist, adam, hidden 16-16" in t1

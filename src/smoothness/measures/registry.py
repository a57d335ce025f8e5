"""The one table of measures, and what computes from it: every list of measure names in the package (the CLI's
output, the regularizers, the records, Table 1, Table 2, the verdict, the figures, compare) is derived from
REGISTRY, and so is the computing: a row holds the function that computes its measure for a stack of models
(measure_stack for the measures at points, parameter_measures for those of the weights and the training set) and
for one model given as a module (Measure.one, ofmodule.py), and names the regularizer that penalizes it (whose
minibatch variant, gradient and cost are training's: training/regularizers.py).

A measure's key is its column in every record and results table. Adding a measure means adding a row here with its
function; the common tests in tests/measures/test_registry.py then check that it is batched, chunk- and
order-independent, sign-invariant where it should be, recorded and reported.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from smoothness.errors import ConfigError
from smoothness.measures import inputspace, lipschitz, ofmodule, paramspace
from smoothness.models import MLPStack, family_of
from smoothness.runtime import precision

INPUT, PARAMETER = "input", "parameter"
ANY_DEPTH, ONE_HIDDEN = "any", "one hidden layer"
SWEEP, FLATNESS = "sweep", "flatness"   # views: the learning-rate sweep's columns; the optimizer comparison's


class Context:
    """What the measures of one call read: the stack p, its evaluator, the points x [M, n, d] (held-out or training
    points) and, for those of the training loss, their targets y [M, n]; the estimators' settings; and intermediate
    results that several measures share (both path lengths come from one pass over the segments)."""

    def __init__(self, p: MLPStack, x: torch.Tensor, y: torch.Tensor | None = None, *,
                 segments: int = inputspace.DEFAULT_SEGMENTS, points: int = inputspace.DEFAULT_POINTS, seed: int = 0,
                 batch_size: int = 64, init_seeds=None, alphas=None, options: dict | None = None, which=()):
        self.p, self.x, self.y = p, x, y
        self.fam = family_of(p) if isinstance(p, MLPStack) else None
        self.segments, self.points, self.seed, self.batch_size = segments, points, seed, batch_size
        self.init_seeds, self.alphas = init_seeds, alphas
        self.options = dict(options or {})   # {option: value} of the rows with an option (Measure.option)
        self.which = tuple(which)
        self._ev, self._paths = None, None

    @property
    def ev(self):
        if self._ev is None:
            self._ev = inputspace.evaluator(self.p)
        return self._ev

    def path_lengths(self) -> dict[str, torch.Tensor]:
        """FPL and GPL (eqs. 9-11) of the requested ones, in one pass over the segments."""
        if self._paths is None:
            want = tuple(k for k, m in (("fpl", "function_path_length"), ("gpl", "gradient_path_length"))
                         if m in self.which)
            self._paths = inputspace.path_lengths(self.ev, self.x, self.segments, self.points, self.seed, want)
        return self._paths

    def nan(self) -> torch.Tensor:
        return torch.full((self.p.n_models,), float("nan"), dtype=self.x.dtype, device=self.x.device)


@dataclass(frozen=True)
class Measure:
    """One measure: its key, names, where it is defined, what it is a property of, how it is shown, and how it is
    computed."""
    key: str                    # column of records and tables
    short: str                  # name in tables (the paper's abbreviation where it has one)
    equation: str               # where it is defined
    space: str                  # INPUT: a property of the function x -> f(x); PARAMETER: of the weights
    depth: str                  # networks it is defined for: ANY_DEPTH or ONE_HIDDEN
    regularizer: str | None     # the regularizer name of loss L + lambda * S (eq. 15) that penalizes it
    label: str                  # title of its panel in figures
    compute: Callable = field(repr=False, default=None)   # Context -> [M], or {column: [M]} for several columns
    paper: bool = False         # one of the paper's four measures (Tables 1 and 2, the verdict)
    table1: bool = False        # Kendall's tau(N, S) is reported in Table 1
    sampled: bool = False       # estimated at points (held-out and training: the record also has key_train)
    stack: bool = False         # computed by measure_stack at points (else by parameter_measures on the training set)
    sign_invariant: bool = True  # unchanged when f is replaced by -f (else: when f and the labels both are)
    from_init: bool = False     # measured from the initial weights (regenerated from the seed), not f alone
    point_order: bool = False   # depends on the order of the points (segments or batches are drawn by index)
    log_scale: bool = False     # plotted on a log axis
    stands_in_for: str | None = None  # shown in this measure's place for networks it is not defined for
    equals: str | None = None   # what it coincides with, said in tables across depths
    option: str | None = None   # the setting (RunConfig field) that asks for it; unset: always computed
    columns: tuple[str, ...] = ()   # the record's columns beside its key (a standard error, how an iteration ended)
    views: tuple[str, ...] = ()     # the analyses that show it beside the paper's four (SWEEP, FLATNESS)
    # -- one model given as a module (any family; ofmodule.py): measure_model, the `measure` command, and a grid's
    # models that are no MLP
    one: Callable | None = field(repr=False, default=None)   # ofmodule.ModuleContext -> {key: Estimate}
    choice: str | None = None   # its name among measure_model's measures (rows of one pass share it); unset: the key
    targets: bool = False       # needs targets y (the loss's curvature): skipped without them
    default: bool = True        # measured by measure_model unless the measures are named
    samples: str = "points"     # what its standard error is over, in words
    bound: str | None = None    # what it is where it is a bound, in words ({points}: '1,000 points')


def _sharpness(c: Context) -> dict[str, torch.Tensor]:
    sh = paramspace.stack_sharpness(c.p, c.x, c.y, iters=c.options["sharpness_iters"], seed=c.seed)
    return {"sharpness": sh.value, "sharpness_rel_change": sh.rel_change, "sharpness_iterations": sh.iterations}


def _hessian_trace(c: Context) -> dict[str, torch.Tensor]:
    value, se = paramspace.stack_hessian_trace(c.p, c.x, c.y, probes=c.options["trace_probes"], seed=c.seed)
    return {"hessian_trace": value, "hessian_trace_se": se}


def _gradient_norms(power: int, key: str) -> Callable:
    def compute(c: Context) -> dict[str, torch.Tensor]:
        mean, se = inputspace.gradient_norms(c.ev, c.x, power, with_se=True)
        return {key: mean, key + "_se": se}
    return compute


def _path_length(which: str, key: str) -> Callable:
    def compute(c: Context) -> dict[str, torch.Tensor]:
        got = c.path_lengths()
        return {key: got[which], key + "_se": got[which + "_se"]}
    return compute


REGISTRY: tuple[Measure, ...] = (
    Measure("gradient_norm", "GN", "eq. 4", INPUT, ANY_DEPTH, "gradient_norm", "GN",
            _gradient_norms(1, "gradient_norm"), columns=("gradient_norm_se",),
            paper=True, table1=True, sampled=True, stack=True, views=(SWEEP, FLATNESS),
            one=ofmodule.gradient_norm(1, "gradient_norm")),
    Measure("gradient_norm_squared", "GN²", "eq. 4 with the squared norm", INPUT, ANY_DEPTH,
            "gradient_norm_squared", "GN²", _gradient_norms(2, "gradient_norm_squared"),
            columns=("gradient_norm_squared_se",), sampled=True, stack=True,
            one=ofmodule.gradient_norm(2, "gradient_norm_squared"), default=False),
    Measure("function_path_length", "FPL", "eq. 10", INPUT, ANY_DEPTH, "function_path_length", "FPL",
            _path_length("fpl", "function_path_length"), columns=("function_path_length_se",),
            paper=True, table1=True, sampled=True, stack=True, point_order=True, views=(SWEEP, FLATNESS),
            one=ofmodule.path_length("fpl", "function_path_length"), choice="path_lengths", samples="segments"),
    Measure("gradient_path_length", "GPL", "eq. 11", INPUT, ANY_DEPTH, "gradient_path_length", "GPL",
            _path_length("gpl", "gradient_path_length"), columns=("gradient_path_length_se",),
            paper=True, table1=True, sampled=True, stack=True, point_order=True, views=(SWEEP, FLATNESS),
            one=ofmodule.path_length("gpl", "gradient_path_length"), choice="path_lengths", samples="segments"),
    Measure("weights_product", "WP", "eq. 13", PARAMETER, ONE_HIDDEN, "weights_product", "WP",
            lambda c: inputspace.weights_products(c.p) if c.p.depth == 1 else c.nan(), paper=True, table1=True,
            stack=True, views=(FLATNESS,)),
    Measure("path_norm", "PN", "eq. 13 generalized to any depth (inputspace.path_norms)", PARAMETER, ANY_DEPTH,
            "path_norm", "PN", lambda c: inputspace.path_norms(c.p), table1=True,
            stands_in_for="weights_product", equals="WP for one hidden layer", views=(SWEEP,)),
    Measure("norm_product", "NP", "the product of the weight tensors' Frobenius norms (models.Family.weight_norm), "
            "which bounds WP for one hidden layer", PARAMETER, ANY_DEPTH, "norm_product", "∏‖W‖_F",
            lambda c: c.fam.weight_norm(c.p), log_scale=True, table1=True,
            stands_in_for="weights_product", equals="an upper bound of WP for one hidden layer",
            one=ofmodule.norm_product, default=False),
    Measure("lipschitz_lower", "LipLB", "max ||grad f|| over the held-out points, raised by projected gradient "
            "ascent in their box (lipschitz.lower_bounds)", INPUT, ANY_DEPTH, None, "Lipschitz lower bound",
            lambda c: inputspace.lipschitz_lower_bounds(c.ev, c.x), stack=True, views=(FLATNESS,),
            one=ofmodule.lipschitz_bound(0, "lipschitz_lower"), choice="lipschitz",
            bound="a lower bound (the largest gradient norm at {points})"),
    Measure("lipschitz_upper", "LipUB", "product of the layers' spectral norms (lipschitz.spectral_products)",
            PARAMETER, ANY_DEPTH, None, "Lipschitz upper bound", lambda c: lipschitz.spectral_products(c.p),
            stack=True, log_scale=True, views=(FLATNESS,),
            one=ofmodule.lipschitz_bound(1, "lipschitz_upper"), choice="lipschitz", bound="exact (an upper bound)"),
    Measure("minibatch_gradient_norm", "MGN",
            "Smith et al. (2021): mean over an epoch's batches of ||grad_theta L_b||^2", PARAMETER, ANY_DEPTH,
            "minibatch_gradient_norm", "mean ‖∇L_b‖²",
            lambda c: paramspace.minibatch_gradient_norm(c.p, c.x, c.y, batch_size=c.batch_size, seed=c.seed),
            sign_invariant=False, point_order=True, log_scale=True, views=(SWEEP,)),
    Measure("parameter_norm", "‖θ‖", "the Euclidean norm of all weights and biases", PARAMETER, ANY_DEPTH, None,
            "‖θ‖", lambda c: paramspace.parameter_norm(c.p), views=(SWEEP,), one=ofmodule.parameter_norm,
            default=False),
    Measure("distance_from_init", "‖θ−θ₀‖", "the distance from the initial weights (regenerated from the seed)",
            PARAMETER, ANY_DEPTH, None, "‖θ−θ₀‖",
            lambda c: paramspace.distance_from_init(c.p, c.init_seeds, c.alphas), from_init=True, views=(SWEEP,),
            one=ofmodule.distance_from_init, default=False),
    Measure("sharpness", "sharpness", "the top eigenvalue of the training loss's Hessian (power iteration)",
            PARAMETER, ANY_DEPTH, None, "sharpness", _sharpness, sign_invariant=False, log_scale=True,
            option="sharpness_iters", columns=("sharpness_rel_change", "sharpness_iterations"),
            views=(SWEEP, FLATNESS), one=ofmodule.sharpness, targets=True),
    Measure("hessian_trace", "tr H", "the trace of the training loss's Hessian (Hutchinson's estimator)",
            PARAMETER, ANY_DEPTH, None, "tr H", _hessian_trace, sign_invariant=False, log_scale=True,
            option="trace_probes", columns=("hessian_trace_se",), views=(SWEEP, FLATNESS), one=ofmodule.hessian_trace,
            targets=True, samples="probe vectors"),
)
BY_KEY = {m.key: m for m in REGISTRY}
PLUGINS_ENV = "SMOOTHNESS_MEASURES"   # modules that register measures of their own, imported with the registry


def register(m: Measure) -> Measure:
    """Add measure m as the last row of REGISTRY; every list of measures (records, tables, the `measure` command's
    choices) then has it. Register before those are made, when the package's other modules are imported: from a
    module named in $SMOOTHNESS_MEASURES (comma-separated), which the registry imports with itself, for the command
    line; or in Python before importing the rest (docs/architecture.md)."""
    global REGISTRY, MEASURES, SAMPLED
    if m.key in BY_KEY:
        raise ValueError(f"a measure {m.key!r} is registered already")
    if m.compute is None and m.one is None:
        raise ValueError(f"measure {m.key!r} computes nothing: give compute (a stack of MLPs) or one (a module)")
    REGISTRY = (*REGISTRY, m)
    BY_KEY[m.key] = m
    MEASURES, SAMPLED = keys(stack=True), keys(stack=True, sampled=True)
    return m


def get(key: str) -> Measure:
    """The measure with this key; a ValueError naming the known keys otherwise."""
    if key not in BY_KEY:
        raise ValueError(f"unknown measure {key!r}; known: {', '.join(BY_KEY)}")
    return BY_KEY[key]


def by_short(short: str) -> Measure:
    """The measure with this short name (GN, FPL, ...)."""
    for m in REGISTRY:
        if m.short == short:
            return m
    raise ValueError(f"unknown measure {short!r}; known: {', '.join(m.short for m in REGISTRY)}")


def keys(**where) -> tuple[str, ...]:
    """Keys of the measures whose fields equal the given values, in registry order: keys(paper=True)."""
    return tuple(m.key for m in REGISTRY if all(getattr(m, f) == v for f, v in where.items()))


def shorts(**where) -> dict[str, str]:
    """{key: short name} of the measures selected as in keys()."""
    return {k: BY_KEY[k].short for k in keys(**where)}


def regularized_measure() -> dict[str, str]:
    """{regularizer name: key of the measure it penalizes}."""
    return {m.regularizer: m.key for m in REGISTRY if m.regularizer}


def depth_label(m: Measure) -> str:
    """The measure's name in tables across depths: 'PN (= WP for one hidden layer)'."""
    return f"{m.short} (= {m.equals})" if m.equals else m.short


def stand_ins(key: str) -> tuple[str, ...]:
    """The measures shown in key's place where it has no values, in order of preference (WP: the path norm of a
    deeper MLP, then the norm product of any other family)."""
    return tuple(s.key for s in REGISTRY if s.stands_in_for == key)


def shown(key: str, present: dict[str, bool]) -> bool:
    """Whether a table shows measure key, given which measures have values (present): a stand-in (PN, NP) only
    where the measure it stands in for (WP) and every stand-in before it have none, and that measure is then left
    out."""
    m = BY_KEY[key]
    if m.stands_in_for:
        earlier = stand_ins(m.stands_in_for)
        earlier = earlier[:earlier.index(key)]
        return (present.get(key, False) and not present.get(m.stands_in_for, False)
                and not any(present.get(k, False) for k in earlier))
    return present.get(key, False) or not any(present.get(k, False) for k in stand_ins(key))


def by_regularizer(name: str) -> Measure:
    """The measure that regularizer `name` penalizes."""
    for m in REGISTRY:
        if m.regularizer == name:
            return m
    raise ValueError(f"no measure is penalized by regularizer {name!r}")


def view(name: str) -> tuple[str, ...]:
    """Keys of the measures an analysis shows beside the paper's four (SWEEP, FLATNESS), in registry order."""
    return tuple(m.key for m in REGISTRY if name in m.views)


def columns(m: Measure) -> tuple[str, ...]:
    """The record's columns of measure m: its key, then its own further columns."""
    return (m.key, *m.columns)


def on_points(column: str, suffix: str) -> str:
    """The record column of a measure's column estimated on other points (suffix '_train'): the suffix goes after
    the key, before '_se' (gradient_norm_se -> gradient_norm_train_se)."""
    if suffix and column.endswith("_se"):
        return column[:-3] + suffix + "_se"
    return column + suffix


MEASURES = keys(stack=True)          # what measure_stack computes
SAMPLED = keys(stack=True, sampled=True)  # those estimated at points (also on the training points)


@torch.no_grad()
@precision.strict_fp32()
def measure_stack(p: MLPStack, x, *, segments: int = inputspace.DEFAULT_SEGMENTS,
                  points: int = inputspace.DEFAULT_POINTS,
                  seed: int = 0, which=None) -> dict[str, torch.Tensor]:
    """All requested measures of M models at once (the rows with stack=True; which=None: all of them); x is [n, d]
    (shared) or [M, n, d]. {column: [M]}: each measure's key and its further columns (the standard errors of GN,
    GN^2, FPL and GPL)."""
    which = MEASURES if which is None else which
    unknown = set(which) - set(MEASURES)
    if unknown:
        raise ValueError(f"unknown measure(s) {sorted(unknown)}; known: {', '.join(MEASURES)}")
    ev = inputspace.evaluator(p)
    c = Context(p, inputspace.as_points(x, ev), segments=segments, points=points, seed=seed, which=which)
    out = {}
    for m in REGISTRY:
        if m.stack and m.key in which:
            v = m.compute(c)
            out.update(v if isinstance(v, dict) else {m.key: v})
    return out


def options_of(settings) -> dict:
    """{option: value} of every row's option (Measure.option), read from settings (a RunConfig or any object with
    those attributes): what asks for the measures that are computed only when asked."""
    return {m.option: getattr(settings, m.option) for m in REGISTRY if m.option}


def parameter_measures(p: MLPStack, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, seed: int, init_seeds,
                       alphas, options: dict | None = None) -> dict[str, torch.Tensor]:
    """The measures of the weights and the training set (the rows with stack=False) of M models: x [M, n, d] and
    y [M, n] each model's training points; those with an option (sharpness, the Hessian trace) only when options
    asks for them ({option: value}, options_of). {column: [M]}."""
    options = dict(options or {})
    c = Context(p, x, y, batch_size=batch_size, seed=seed, init_seeds=init_seeds, alphas=alphas, options=options)
    out = {}
    for m in REGISTRY:
        if m.stack or (m.option and not options.get(m.option)):
            continue
        v = m.compute(c)
        out.update(v if isinstance(v, dict) else {m.key: v})
    return out


def parameter_columns(options: dict | None = None) -> tuple[str, ...]:
    """The columns parameter_measures fills with these options."""
    options = options or {}
    return tuple(col for m in REGISTRY if not m.stack and (not m.option or options.get(m.option))
                 for col in columns(m))


def _load_plugins() -> None:
    """Import the modules named in $SMOOTHNESS_MEASURES (they call register); one that fails is a ConfigError."""
    for name in filter(None, (s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as e:   # anything the user's module raises, said in one line
            raise ConfigError(f"${PLUGINS_ENV}: cannot import {name}: {type(e).__name__}: {e}") from None


_load_plugins()

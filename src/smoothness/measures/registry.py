"""The one table of measures: every list of measure names in the package (the CLI's output, the regularizers,
the records, Table 1, Table 2, the verdict, the figures, compare) is derived from REGISTRY.

A measure's key is its column in every record and results table. Adding a measure means adding a row here,
computing it in measures.py (or evaluate.parameter_measures for the parameter-space ones), and the
common tests in tests/test_registry.py then check it is batched, chunk- and order-independent, sign-invariant
where it should be, recorded and reported.
"""
from __future__ import annotations

from dataclasses import dataclass

INPUT, PARAMETER = "input", "parameter"
ANY_DEPTH, ONE_HIDDEN = "any", "one hidden layer"


@dataclass(frozen=True)
class Measure:
    """One measure: its key, names, where it is defined, what it is a property of, and how it is shown."""
    key: str                    # column of records and tables
    short: str                  # name in tables (the paper's abbreviation where it has one)
    equation: str               # where it is defined
    space: str                  # INPUT: a property of the function x -> f(x); PARAMETER: of the weights
    depth: str                  # networks it is defined for: ANY_DEPTH or ONE_HIDDEN
    regularizer: str | None     # the regularizer name of loss L + lambda * S (eq. 15) that penalizes it
    label: str                  # title of its panel in figures
    paper: bool = False         # one of the paper's four measures (Tables 1 and 2, the verdict)
    table1: bool = False        # Kendall's tau(N, S) is reported in Table 1
    sampled: bool = False       # estimated at points (held-out and training: the record also has key_train)
    stack: bool = False         # computed by measures.measure_stack (else by evaluate.parameter_measures)
    sign_invariant: bool = True  # unchanged when f is replaced by -f (else: when f and the labels both are)
    point_order: bool = False   # depends on the order of the points (segments or batches are drawn by index)
    log_scale: bool = False     # plotted on a log axis
    stands_in_for: str | None = None  # shown in this measure's place for networks it is not defined for
    equals: str | None = None   # what it coincides with, said in tables across depths


REGISTRY: tuple[Measure, ...] = (
    Measure("gradient_norm", "GN", "eq. 4", INPUT, ANY_DEPTH, "gradient_norm", "GN",
            paper=True, table1=True, sampled=True, stack=True),
    Measure("gradient_norm_squared", "GN²", "eq. 4 with the squared norm", INPUT, ANY_DEPTH,
            "gradient_norm_squared", "GN²", sampled=True, stack=True),
    Measure("function_path_length", "FPL", "eq. 10", INPUT, ANY_DEPTH, "function_path_length", "FPL",
            paper=True, table1=True, sampled=True, stack=True, point_order=True),
    Measure("gradient_path_length", "GPL", "eq. 11", INPUT, ANY_DEPTH, "gradient_path_length", "GPL",
            paper=True, table1=True, sampled=True, stack=True, point_order=True),
    Measure("weights_product", "WP", "eq. 13", PARAMETER, ONE_HIDDEN, "weights_product", "WP",
            paper=True, table1=True, stack=True),
    Measure("path_norm", "PN", "eq. 13 generalized to any depth (measures.path_norms)", PARAMETER, ANY_DEPTH,
            "path_norm", "PN", table1=True, stands_in_for="weights_product", equals="WP for one hidden layer"),
    Measure("lipschitz_lower", "LipLB", "max ||grad f|| over the held-out points, raised by projected gradient "
            "ascent in their box (lipschitz.lower_bounds)", INPUT, ANY_DEPTH, None, "Lipschitz lower bound",
            stack=True),
    Measure("lipschitz_upper", "LipUB", "product of the layers' spectral norms (lipschitz.spectral_products)",
            PARAMETER, ANY_DEPTH, None, "Lipschitz upper bound", stack=True, log_scale=True),
    Measure("minibatch_grad_norm", "MGN", "Smith et al. (2021): mean over an epoch's batches of ||grad_theta L_b||^2",
            PARAMETER, ANY_DEPTH, "minibatch_gradient_norm", "mean ‖∇L_b‖²", sign_invariant=False,
            point_order=True, log_scale=True),
)
BY_KEY = {m.key: m for m in REGISTRY}


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


def shown(key: str, present: dict[str, bool]) -> bool:
    """Whether a table shows measure key, given which measures have values (present): a stand-in (PN) only
    where the measure it stands in for (WP) has none, and that measure is then left out."""
    m = BY_KEY[key]
    if m.stands_in_for:
        return present.get(key, False) and not present.get(m.stands_in_for, False)
    stand_in = next((s.key for s in REGISTRY if s.stands_in_for == key), None)
    return not (stand_in and present.get(stand_in, False) and not present.get(key, False))

"""The model families, declared once: FAMILIES maps a name to its class and settings (models/family.py). A model's
configuration names its family by a spec, which canonical() turns into the plain form that its key and record hold
(None: the paper's MLP, whose one setting, the hidden widths, is the configuration's `hidden`), and build() into the
Family object that trains and measures it."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, fields

from smoothness.errors import ConfigError
from smoothness.models.cnn import CNNFamily, CNNSettings
from smoothness.models.cnn import check as cnn_check
from smoothness.models.family import FactoryFamily, FactorySettings, Family, FrozenMapping, plain
from smoothness.models.mlp import MLPFamily, MLPSettings, MLPStack
from smoothness.models.stack import ParamStack

FAMILIES = {"mlp": (MLPFamily, MLPSettings), "cnn": (CNNFamily, CNNSettings),
            "factory": (FactoryFamily, FactorySettings)}
DEFAULT = "mlp"
SHAPE_CHECKS = {"cnn": cnn_check}   # a family's settings against the task's inputs, without building a model


def _frozen(v):
    """JSON-like data as hashable values: lists as tuples, mappings as sorted tuples of pairs."""
    if isinstance(v, dict):
        return FrozenMapping((str(k), _frozen(x)) for k, x in sorted(v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(x) for x in v)
    return v


def _settings(name: str, given: dict):
    cls = FAMILIES[name][1]
    known = {f.name for f in fields(cls)}
    unknown = set(given) - known
    if unknown:
        raise ConfigError(f"model: unknown setting(s) {', '.join(sorted(unknown))} of the {name} family; it takes "
                          f"{', '.join(sorted(known))}")
    try:
        json.dumps(given)
    except (TypeError, ValueError):
        raise ConfigError(f"model: the settings of the {name} family must be plain values (numbers, strings, lists, "
                          "mappings)") from None
    try:
        return cls(**{k: _frozen(v) for k, v in given.items()})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {name} family: {e}") from None


def canonical(spec) -> dict | None:
    """The canonical form of a family spec: None for the MLP (the default), otherwise {'family': name, **settings}
    with every setting filled in. A spec is a family name ('cnn'), a mapping {'family': 'cnn', 'channels': [8, 16]},
    or {'factory': 'package.module:function', 'kwargs': {...}}; a ConfigError names what is wrong."""
    if spec is None or spec == DEFAULT:
        return None
    if isinstance(spec, str):
        spec = {"family": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"model: expected a family name ({', '.join(FAMILIES)}) or a mapping, got {spec!r}")
    spec = dict(spec)
    name = spec.pop("family", "factory" if "factory" in spec else None)
    if name not in FAMILIES:
        raise ConfigError(f"model: unknown family {name!r}; choose one of {', '.join(FAMILIES)} (a factory is "
                          "written {factory: package.module:function, kwargs: {...}})")
    if name == DEFAULT:
        if spec:
            raise ConfigError("model: the mlp family's one setting is `hidden`, given beside `model`, not in it")
        return None
    if name == "factory":
        if not isinstance(spec.get("factory"), str) or not spec["factory"]:
            raise ConfigError("model: a factory family needs factory: package.module:function")
        if spec.get("kwargs", {}) is None:   # `kwargs: null` is no arguments, keyed as absent kwargs are
            del spec["kwargs"]
        kwargs = spec.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ConfigError(f"model: kwargs of a factory must be a mapping, got {kwargs!r}")
        bad = non_finite(kwargs, "kwargs")
        if bad:
            raise ConfigError(f"model: {bad[0]} of factory {spec['factory']} is {bad[1]}: a keyword argument must "
                              "be a finite number (a model's key and record hold it, and NaN equals nothing)")
    s = _settings(name, spec)
    return {"family": name, **plain(asdict(s))}


def non_finite(v, path: str) -> tuple[str, float] | None:
    """(where, value) of the first float in v, at any depth of mappings and lists, that is NaN or infinite (where:
    `kwargs.a[1].b`); None if there is none."""
    if isinstance(v, float) and not math.isfinite(v):
        return path, v
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, (list, tuple)) else ()
    for k, x in items:
        bad = non_finite(x, f"{path}.{k}" if isinstance(v, dict) else f"{path}[{k}]")
        if bad:
            return bad
    return None


def family_of_setting(name: str) -> str | None:
    """The built-in family (other than the MLP and a factory) that has a setting of this name, if any."""
    for family, (_, settings) in FAMILIES.items():
        if family not in (DEFAULT, "factory") and name in {f.name for f in fields(settings)}:
            return family
    return None


def build(spec: dict | None, hidden, input_shape, outputs: int = 1) -> Family:
    """The Family of a canonical spec (None: the MLP with these hidden widths) for inputs of input_shape and K
    outputs."""
    if spec is None:
        return MLPFamily(MLPSettings(tuple(hidden)), (math.prod(input_shape),), outputs)
    spec = dict(spec)
    name = spec.pop("family")
    try:
        return FAMILIES[name][0](_settings(name, spec), tuple(input_shape), outputs)
    except ValueError as e:
        raise ConfigError(f"model: {name} family: {e}") from None


def check(spec: dict | None, input_shape, outputs: int = 1) -> None:
    """What build() would refuse about a built-in family's settings for these inputs, found without building it (a
    factory is not called: its module is imported only when a run builds it)."""
    if spec is None or spec["family"] not in SHAPE_CHECKS:
        return
    spec = dict(spec)
    name = spec.pop("family")
    try:
        SHAPE_CHECKS[name](_settings(name, spec), tuple(input_shape), outputs)
    except ValueError as e:
        raise ConfigError(f"model: {name} family: {e}") from None


def name_of(spec: dict | None) -> str:
    """The family's name of a canonical spec."""
    return DEFAULT if spec is None else spec["family"]


def stack_from_state(state: dict):
    """The stack saved by a stack's state_dict(): an MLPStack (weights, biases) or a ParamStack (names, values)."""
    return ParamStack.from_state_dict(state) if "names" in state else MLPStack.from_state_dict(state)


def shapes_of(p) -> list[tuple[int, ...]]:
    """The shapes of one model's tensors in a stack (what a stack of one family and architecture has)."""
    return [tuple(t.shape[1:]) for t in p.tensors()]


def shapes_digest(shapes) -> str:
    """A short fingerprint of one model's tensor shapes (Family.shapes(), shapes_of): equal for equal shapes in
    order. A stored record keeps it, so that a family that builds other tensors under the same settings (a factory
    whose code changed) is noticed before its models are mixed with the stored ones."""
    return hashlib.sha256(json.dumps([list(s) for s in shapes]).encode()).hexdigest()[:16]


def same_outputs(a, b, rel: float = 1e-3) -> bool:
    """Whether two lists of a family's init_outputs() are the same function's, up to the rounding of float32 kernels
    (other instruction sets, thread counts, versions of PyTorch): every finite value within rel of the largest finite
    one, and the same non-finite values (NaN, inf) in the same places. None is a non-finite value as a stored record
    holds it (JSON null: which one is not kept), the same as any."""
    if len(a) != len(b):
        return False
    scale = max((abs(v) for v in [*a, *b] if _finite(v)), default=0.0)

    def same(x, y) -> bool:
        if _finite(x) and _finite(y):
            return abs(x - y) <= rel * max(scale, 1e-12)
        if _finite(x) or _finite(y):
            return False
        return x is None or y is None or x == y or (math.isnan(x) and math.isnan(y))
    return all(same(x, y) for x, y in zip(a, b))


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)

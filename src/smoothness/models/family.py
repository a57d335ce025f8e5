"""Model families: how M models of one architecture are initialized, held as one stack, evaluated batched, and turned
into ordinary nn.Modules. Every family is declared once, in FAMILIES; the configuration, the grids, the command line
and the stored records take their names and settings from there.

  mlp       the paper's fully connected ReLU nets (mlp.py), with closed-form gradients: the fast path
  cnn       a small convolutional family (cnn.py)
  factory   any nn.Module a function builds (package.module:function with keyword arguments), evaluated through
            torch.func (functional_call under vmap over the model axis)

A family maps flattened inputs x [M, n, d] to outputs [M, n, K] (forward); values() drops K = 1, and
input_grads() gives the input gradients (the flattened Jacobians for K > 1) by autograd, differentiable in the
parameters where the regularizers need it. The MLP overrides both with its closed forms.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import math
import sys
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call

from smoothness.errors import ConfigError, first_line
from smoothness.models.stack import TRAINING_COPIES, ParamStack, params_bytes
from smoothness.runtime.devices import memory_budget
from smoothness.runtime.precision import strict_fp32

# The fixed points at which init_outputs() evaluates a family's seed-0 model.
PROBE_POINTS = 4

# Copies of a factory's parameters its checks hold at once: the template, and the stacking check's two models (as
# modules, then as a stack with its gradient) with a copy of the template.
CHECK_COPIES = 6


class Family:
    """One architecture, for stacks of M models of it. Subclasses set `name` and implement init, forward, module and
    stack_of; `settings` is a frozen dataclass of what defines the architecture (its part of a model's key)."""

    name: ClassVar[str] = ""
    closed_form: ClassVar[bool] = False   # the MLP engine's closed forms apply (training/engines.py)

    def __init__(self, settings, input_shape: tuple[int, ...], outputs: int):
        self.settings = settings
        self.input_shape = tuple(int(s) for s in input_shape)
        self.input_dim = math.prod(self.input_shape)
        self.outputs = int(outputs)

    # -- what a family implements -------------------------------------------------------------------------------
    def init(self, seeds, alpha, device=None):
        """M freshly initialized models (one per seed; alpha: one value or one per model), as a stack. A model's
        initial weights depend on its seed and alpha only, not on M."""
        raise NotImplementedError

    def forward(self, p, x: torch.Tensor) -> torch.Tensor:
        """Outputs [M, n, K] of the stack p at flattened inputs x [M, n, d] (or [n, d], shared); differentiable."""
        raise NotImplementedError

    def module(self, p, m: int = 0) -> nn.Module:
        """Model m of the stack as an nn.Module mapping inputs [n, *input_shape] (or [n, d]) to [n] or [n, K]."""
        raise NotImplementedError

    def stack_of(self, modules: list[nn.Module]):
        """The stack of these modules (as built by module())."""
        raise NotImplementedError

    # -- derived ------------------------------------------------------------------------------------------------
    def describe(self) -> str:
        """The family and its settings in a few words."""
        kw = ", ".join(f"{k} {_short(v)}" for k, v in asdict(self.settings).items())
        return f"{self.name} ({kw})" if kw else self.name

    def key(self) -> dict:
        """The family's part of a model's key and record: its name and settings, as plain data."""
        return {"family": self.name, **plain(asdict(self.settings))}

    def points(self, p, x: torch.Tensor) -> torch.Tensor:
        """x as float points [M, n, d] of p's dtype and device (an [n, d] tensor is shared by all models)."""
        t = p.tensors()[0]
        x = torch.as_tensor(x).to(device=t.device, dtype=t.dtype)
        if x.dim() == 2:
            x = x.expand(p.n_models, *x.shape)
        return x

    def values(self, p, x: torch.Tensor) -> torch.Tensor:
        """f(x): [M, n] for one output, [M, n, K] for several."""
        out = self.forward(p, x)
        return out[..., 0] if self.outputs == 1 else out

    def input_grads(self, p, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """The input gradient at each point, [M, n, d] (K = 1), or the flattened Jacobian [M, n, K d]: by autograd
        of the sum over the points (each output depends on its own input only: no batch statistics), differentiable
        in p's tensors with create_graph."""
        x = self.points(p, x).detach().requires_grad_(True)
        with torch.enable_grad():
            out = self.forward(p, x)
            grads = [torch.autograd.grad(out[..., k].sum(), x, create_graph=create_graph,
                                         retain_graph=create_graph or k < out.shape[-1] - 1)[0]
                     for k in range(out.shape[-1])]
        return grads[0] if len(grads) == 1 else torch.stack(grads, 2).reshape(x.shape[0], x.shape[1], -1)

    def weight_norm(self, p) -> torch.Tensor:
        """The product over the weight tensors (those with two or more axes per model) of their Frobenius norms,
        per model [M]: the weight-norm measure of a family without the paper's WP (eq. 13 bounds WP of a two-layer
        net by it, sum_i |w2_i| ||w1_i|| <= ||w2|| ||W1||_F)."""
        out = None
        for t in p.tensors():
            if t.dim() >= 3:
                v = t.flatten(1).norm(dim=1)
                out = v if out is None else out * v
        return out

    def shapes(self) -> list[tuple[int, ...]]:
        """The shapes of one model's tensors, in the stack's order."""
        if not hasattr(self, "_shapes"):
            self._shapes = [tuple(t.shape[1:]) for t in self.init([0], 1.0).tensors()]
        return self._shapes

    def init_outputs(self) -> list[float] | None:
        """The outputs of the model of seed 0 (alpha 1) at PROBE_POINTS fixed points (standard normal, seed 0), as
        floats: with shapes(), what tells the function a family builds from what it built (a changed activation
        keeps every shape, not these; same_outputs compares them). None, with a warning, when two builds after the
        same seed give other weights: the family's initial weights are not reproducible from the seed."""
        if not hasattr(self, "_init_outputs"):
            p, again = self.init([0], 1.0), self.init([0], 1.0)
            same = all(torch.equal(a, b) for a, b in zip(p.tensors(), again.tensors()))
            x = torch.randn(PROBE_POINTS, self.input_dim, generator=torch.Generator().manual_seed(0))
            with torch.no_grad(), strict_fp32():
                self._init_outputs = [float(v) for v in self.values(p, x).reshape(-1)] if same else None
            if not same:
                warnings.warn(f"{self.describe()} builds other weights after the same torch.manual_seed: its models' "
                              "initial weights are not reproducible from their seed (does the function draw from its "
                              "own unseeded generator?), and a change of its code cannot be told from its outputs",
                              stacklevel=2)
        return self._init_outputs

    def n_params(self) -> int:
        """Parameters of one model."""
        return sum(math.prod(s) for s in self.shapes())

    def activation_elements(self) -> int:
        """About how many values one example's forward pass holds (every module's output, counted by hooks on one
        example); the memory estimate of a batched program (training.model_bytes) scales it by the batch."""
        if not hasattr(self, "_activations"):
            p = self.init([0], 1.0)
            mod = self.module(p, 0)
            count = [0]
            hooks = [m.register_forward_hook(lambda _m, _i, out: count.__setitem__(0, count[0] + (
                out.numel() if torch.is_tensor(out) else 0))) for m in mod.modules()]
            try:
                with torch.no_grad():
                    mod(torch.zeros(1, self.input_dim))
            finally:
                for h in hooks:
                    h.remove()
            self._activations = count[0]
        return self._activations


# -- families of modules evaluated through torch.func ------------------------------------------------------------------
def check_module(m, what: str) -> nn.Module:
    """m if it is an nn.Module that M stacked copies can train as one program; a ConfigError naming the problem."""
    if not isinstance(m, nn.Module):
        raise ConfigError(f"{what} returned a value of type {type(m).__name__}, not an nn.Module")
    for name, sub in m.named_modules():
        if isinstance(sub, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)):
            raise ConfigError(f"{what} holds {type(sub).__name__} ({name or 'the module'}): batch statistics and "
                              "dropout are per batch, not per model, when M models train as one stack; use a model "
                              "without them (LayerNorm and GroupNorm act per example and are fine)")
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in m.parameters()):
        raise ConfigError(f"{what} holds lazy modules whose parameters are not built yet (such as nn.LazyLinear): "
                          "give their sizes, or run one forward pass on an input of the task's shape in the factory")
    if not any(p.requires_grad for p in m.parameters()):
        raise ConfigError(f"{what} has no trainable parameters")
    odd = next(((n, p.dtype) for n, p in m.named_parameters() if not p.is_floating_point()), None)
    if odd:
        raise ConfigError(f"{what} has a {odd[1]} parameter ({odd[0]}): models train and are measured with real "
                          "floating-point parameters (float32)")
    tied = shared_parameters(m)
    if tied:
        raise ConfigError(f"{what} shares parameters between submodules ({' is also '.join(tied)}): the stack holds "
                          "one tensor per parameter name, so build each submodule with weights of its own")
    if any(True for _ in m.buffers()):
        names = ", ".join(n for n, _ in m.named_buffers())
        raise ConfigError(f"{what} holds buffers ({names}): state that is not a parameter cannot be stacked per model")
    return m


def shared_parameters(m: nn.Module) -> list[str]:
    """The names of the first parameter that m reaches under several names (tied weights), or []."""
    names: dict[int, list[str]] = {}
    for name, p in m.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return next((n for n in names.values() if len(n) > 1), [])


class ModuleFamily(Family):
    """A family given by a template nn.Module: M models are M sets of its parameters, a ParamStack, evaluated by
    functional_call under vmap over the model axis."""

    def __init__(self, settings, input_shape, outputs, template: nn.Module):
        super().__init__(settings, input_shape, outputs)
        self.template = template
        self.names = tuple(n for n, _ in template.named_parameters())

    def forward(self, p: ParamStack, x: torch.Tensor) -> torch.Tensor:
        return self._forward_of(self.template, p, x)

    def _forward_of(self, template: nn.Module, p: ParamStack, x: torch.Tensor) -> torch.Tensor:
        """forward() of the stack p through this template module (functional_call under vmap)."""
        x = self.points(p, x)
        m, n = x.shape[0], x.shape[1]
        xs = x.reshape(m, n, *self.input_shape)

        def one(params, xi):
            return functional_call(template, params, (xi,))
        out = torch.vmap(one)(dict(zip(p.names, p.values)), xs)
        return out.reshape(m, n, -1)

    def module(self, p: ParamStack, m: int = 0) -> nn.Module:
        mod = copy.deepcopy(self.template)
        with torch.no_grad():
            for t, v in zip(mod.parameters(), p.values):
                t.copy_(v[m])
        return Flattened(mod, self.input_shape, self.outputs).eval()

    def stack_of(self, modules: list[nn.Module]) -> ParamStack:
        inner = [m.inner if isinstance(m, Flattened) else m for m in modules]
        return ParamStack(self.names, [torch.stack([dict(m.named_parameters())[n].detach() for m in inner])
                                       for n in self.names])


class Flattened(nn.Module):
    """A module of a family as the measures take it: inputs [n, *input_shape] or flattened [n, d]; outputs [n] for one
    output, [n, K] otherwise."""

    def __init__(self, inner: nn.Module, input_shape: tuple[int, ...], outputs: int):
        super().__init__()
        self.inner, self.input_shape, self.outputs = inner, tuple(input_shape), outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x.reshape(x.shape[0], *self.input_shape))
        out = out.reshape(x.shape[0], -1)
        return out[:, 0] if self.outputs == 1 else out


class FrozenMapping(tuple):
    """A mapping among a family's settings, frozen (hashable) as a tuple of (key, value) pairs sorted by key; equal to
    that tuple, so keys and records are as before, but it thaws back into a mapping (thawed)."""


def thawed(v):
    """Frozen settings as the function that takes them expects: mappings as dicts, tuples as lists."""
    if isinstance(v, FrozenMapping):
        return {k: thawed(x) for k, x in v}
    if isinstance(v, (list, tuple)):
        return [thawed(x) for x in v]
    return v


@dataclass(frozen=True)
class FactorySettings:
    """A user's family: the function that builds one model, and its keyword arguments."""
    factory: str = field(default="", metadata={"doc": "package.module:function returning an nn.Module"})
    kwargs: tuple = field(default=(), metadata={"doc": "keyword arguments of the function (a mapping)"})


def load_callable(spec: str, what: str = "factory"):
    """The callable named by 'package.module:function' (the current directory is importable, as with python -m);
    a ConfigError with one line for anything that goes wrong on the way (the module's own failure while it is
    imported, a syntax error or sys.exit included)."""
    mod, sep, name = str(spec).partition(":")
    if not sep or not mod or not name:
        raise ConfigError(f"{what} {spec!r}: write it as package.module:function")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(mod)
    except ImportError as e:
        raise ConfigError(f"{what} {spec!r}: cannot import {mod}: {first_line(e, 300)}") from None
    except (Exception, SystemExit) as e:   # the module's own code failed while importing
        raise ConfigError(f"{what} {spec!r}: importing {mod} {failure(e)}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"{what} {spec!r}: {mod} has no callable {name}")
    return fn


def failure(e: BaseException) -> str:
    """How code of the user's failed, for one line: 'called sys.exit(...)' or 'raised Type: first line'."""
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r})"
    return f"raised {type(e).__name__}: {first_line(e, 300)}"


def check_memory(template: nn.Module, what: str) -> None:
    """A ConfigError when the copies of the template's parameters that the checks and the training of one model
    hold (beside the template, built already) do not fit the memory this machine has for them
    (runtime.devices.memory_budget of the CPU, where the checks run)."""
    n = sum(p.numel() for p in template.parameters())
    copies = max(CHECK_COPIES, 1 + TRAINING_COPIES)
    need, budget = params_bytes(n, copies - 1), memory_budget("cpu")
    if need > budget:
        raise ConfigError(f"{what}: the module has {n:,} parameters ({params_bytes(n) / 2**20:,.0f} MB in float32); "
                          f"its checks and training hold {copies} copies of them: about {need / 2**20:,.0f} MB beside "
                          f"the template, more than the {budget / 2**20:,.0f} MB this machine has for them")


def unbound(fn, kwargs: dict) -> str | None:
    """Why fn's signature does not take kwargs (inspect's words, e.g. "missing a required argument: 'width'"), or
    None: it does, or fn has no signature to tell (a builtin, which then answers for itself)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(**kwargs)
    except TypeError as e:
        return first_line(e, 300)
    return None


def call_factory(fn, kwargs: dict, what: str) -> nn.Module:
    """fn(**kwargs) checked (check_module): arguments its signature does not take, and whatever its body raises,
    each one ConfigError line."""
    if why := unbound(fn, kwargs):
        raise ConfigError(f"{what}: cannot be called with {kwargs or 'no arguments'}: {why}")
    try:
        m = fn(**kwargs)
    except (Exception, SystemExit) as e:
        raise ConfigError(f"{what} {failure(e)}") from None
    return check_module(m, what)


class FactoryFamily(ModuleFamily):
    """Any nn.Module built by a function. Model m's initial weights are those of factory(**kwargs) right after
    torch.manual_seed(seed) (the function's own initialization), every parameter times sqrt(alpha) (so alpha scales
    the variance as for the MLP; alpha = 1 keeps the function's initialization)."""

    name = "factory"

    def __init__(self, settings: FactorySettings, input_shape, outputs):
        self.fn = load_callable(settings.factory)
        self.kwargs = {k: thawed(v) for k, v in settings.kwargs}   # nested mappings and lists as YAML gave them
        self.what = f"factory {settings.factory}"
        with torch.random.fork_rng(devices=[]):   # seeded: tensors the module holds beside its parameters (fixed
            torch.manual_seed(0)                  # random features, say) are the same in every process
            template = call_factory(self.fn, self.kwargs, self.what)
        check_memory(template, self.what)
        super().__init__(settings, input_shape, outputs, template.float())
        self._check_shape()

    def _check_shape(self) -> None:
        """One line before any training when the module does not take the task's inputs or gives another number of
        outputs than the task needs."""
        x = torch.zeros(2, *self.input_shape)
        try:
            with torch.no_grad():
                out = self.template(x)
        except Exception as e:   # noqa: BLE001 (the user's module: any error is reported in one line)
            raise ConfigError(f"{self.what}: the module does not take inputs of shape [n, "
                              f"{', '.join(map(str, self.input_shape))}] ({type(e).__name__}: {e})") from None
        if not torch.is_tensor(out):
            raise ConfigError(f"{self.what}: the module returns a {type(out).__name__}, not a tensor of outputs")
        got = out.reshape(2, -1).shape[1] if out.dim() else 0
        if out.dim() == 0 or out.shape[0] != 2 or got != self.outputs:
            raise ConfigError(f"{self.what}: the module maps [2, {', '.join(map(str, self.input_shape))}] inputs to "
                              f"outputs of shape {list(out.shape)}; the task needs [n, {self.outputs}]"
                              + (" or [n]" if self.outputs == 1 else ""))
        if not out.is_floating_point():
            raise ConfigError(f"{self.what}: the module returns {out.dtype} outputs; training needs floating-point "
                              "outputs that depend on its parameters")
        self._check_stacked()

    def _check_stacked(self) -> None:
        """One line before any training when two stacked copies of the module cannot run as training runs them:
        functional_call under vmap, differentiated with respect to the parameters (data-dependent control flow,
        .item() or outputs cut off from the parameters fail here, not in the first step). It runs through a copy of
        the template, so that nothing functional_call or the module does under vmap stays in the template."""
        p = self.init([0, 1], 1.0)
        values = [v.detach().requires_grad_(True) for v in p.values]
        try:
            out = self._forward_of(copy.deepcopy(self.template), ParamStack(p.names, values),
                                   torch.zeros(2, 2, self.input_dim))
            if not out.requires_grad:
                raise ConfigError(f"{self.what}: the module's outputs do not depend on its parameters, so SGD cannot "
                                  "train it")
            torch.autograd.grad(out.sum(), values, allow_unused=True)
        except ConfigError:
            raise
        except Exception as e:   # noqa: BLE001 (the user's module: any error is reported in one line)
            raise ConfigError(f"{self.what}: the module cannot train as M stacked copies (torch.func.functional_call "
                              f"under torch.vmap): {type(e).__name__}: {first_line(e, 300)}; data-dependent control "
                              "flow (if on a tensor's value) and .item() are not allowed in forward") from None

    def init(self, seeds, alpha, device=None) -> ParamStack:
        seeds = [int(s) for s in torch.as_tensor(seeds).reshape(-1).tolist()]
        alphas = torch.as_tensor(alpha, dtype=torch.float64).expand(len(seeds)).tolist()
        mods = []
        for s, a in zip(seeds, alphas):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                m = self.fn(**self.kwargs).float()
            with torch.no_grad():
                for t in m.parameters():
                    t.mul_(math.sqrt(a))
            mods.append(m)
        return self.stack_of(mods).to(device or "cpu")


# -- helpers ---------------------------------------------------------------------------------------------------------
def plain(v):
    """Settings as plain JSON data, as keys and records hold them: tuples as lists, mappings (dicts and non-empty
    FrozenMappings) as dicts sorted by key. An empty mapping is an empty list, as it was keyed before mappings were
    told apart from lists; a list of [name, value] pairs stays a list."""
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in sorted(v.items())}
    if isinstance(v, FrozenMapping) and v:
        return {k: plain(x) for k, x in sorted(v)}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def _short(v) -> str:
    if isinstance(v, FrozenMapping) and v:
        return "{" + ", ".join(f"{k}={_short(x)}" for k, x in v) + "}"
    if isinstance(v, (list, tuple)):
        return "-".join(map(str, v)) if v else "()"
    return str(v)


def settings_fields(settings_type) -> dict:
    """{name: (default, doc)} of a family's settings dataclass, for the configuration, grids and docs."""
    return {f.name: (f.default, f.metadata.get("doc", "")) for f in fields(settings_type)}

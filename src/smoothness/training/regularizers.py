"""Explicit smoothness regularization, L_reg = L + lambda * S (paper eq. 15), batched over models of any family.

Each regularizer is one row of TABLE: the registry's measure it penalizes (named by the measure's row, registry.py:
Measure.regularizer), its stochastic variant S on the current minibatch, as in the original code (penalties.py; with
the points per segment of the path-length penalties a setting, `penalty_points`, default 10 as in the original code's
final version, 100 in an earlier one), for two-layer ReLU nets (the paper's) the closed form of its gradient, which
the trainer adds to the data term's hand-written backward pass, and what one of its steps costs (used to order
work). Parameter gradients otherwise come from autograd through the family's input gradient (double
backpropagation; the MLP's in closed form). Both give the same objective (tested against each other). A program
looks its regularizer up once (get), not at every step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from smoothness import paper
from smoothness.measures import registry
from smoothness.models import MLPStack, family_of, forward, losses, mse_scale, parameter_grads, residuals
from smoothness.runtime.values import is_integer
from smoothness.training import penalties
from smoothness.training.penalties import PenaltyGrads


@dataclass(frozen=True)
class Regularizer:
    """One regularizer (see the module docstring)."""
    name: str                    # RunConfig.regularizer, and Measure.regularizer of the measure it penalizes
    batch: Callable              # S on the batch: fn(fam, p, xb, yb, valid, points, loss) -> [M], differentiable
    step_cost: float             # one step, in plain SGD steps (784-256-1 net, batch 64, one model, 10 points per
    #                              penalty segment; `smoothness bench --regularizers 1`, docs/performance.md)
    grad: Callable | None = None   # lam * S's gradient for two-layer MLPs, closed form: fn(p, lam, z, valid, points)
    path_length: bool = False    # a penalty along segments between batch points (penalty_points; the paper's lr 0.1)
    cost_per_point: float = 0.0  # a further point per penalty segment, in plain SGD steps

    @property
    def measure(self) -> registry.Measure:
        """The registry's row of the measure this regularizer penalizes."""
        return registry.by_regularizer(self.name)


TABLE: tuple[Regularizer, ...] = (
    Regularizer("gradient_norm", penalties.batch_gradient_norm, 2.4, penalties.penalty_grad_gradient_norm),
    Regularizer("gradient_norm_squared", penalties.batch_gradient_norm_squared, 2.4,
                penalties.penalty_grad_gradient_norm_squared),
    Regularizer("function_path_length", penalties.batch_function_path_length, 2.0,
                penalties.penalty_grad_function_path_length, path_length=True, cost_per_point=0.035),
    Regularizer("gradient_path_length", penalties.batch_gradient_path_length, 3.3,
                penalties.penalty_grad_gradient_path_length, path_length=True, cost_per_point=0.15),
    Regularizer("weights_product", penalties.batch_weights_product, 1.5, penalties.penalty_grad_weights_product),
    Regularizer("path_norm", penalties.batch_path_norm, 2.0),
    Regularizer("norm_product", penalties.batch_norm_product, 1.2),
    Regularizer("minibatch_gradient_norm", penalties.batch_minibatch_gradient_norm, 6.0),
)
BY_NAME = {r.name: r for r in TABLE}
REGULARIZERS = ("none", *BY_NAME)
PATH_LENGTH = tuple(r.name for r in TABLE if r.path_length)
TWO_LAYER = tuple(r.name for r in TABLE if r.grad is not None)   # with a closed form for two-layer nets
SEGMENT_POINTS = paper.PENALTY_POINTS   # points per segment of the path-length penalties (`penalty_points`)
PAPER_LAMBDAS = paper.LAMBDAS   # the coefficients of the paper's Table 2
STEP_COST = {"none": 1.0, **{r.name: r.step_cost for r in TABLE}}   # as TABLE says, by name


def get(regularizer: str) -> Regularizer | None:
    """The regularizer of this name (None for 'none'); a ValueError listing the known ones otherwise. A program
    looks it up once."""
    return None if check(regularizer) == "none" else BY_NAME[regularizer]


def step_cost(regularizer: str, points: int = SEGMENT_POINTS) -> float:
    """The cost of a step with this penalty in plain SGD steps (TABLE)."""
    r = get(regularizer)
    return 1.0 if r is None else r.step_cost + r.cost_per_point * (points - SEGMENT_POINTS)


def default_lr(regularizer: str) -> float:
    """The paper's learning rate: 0.01, or 0.1 for the path-length regularizers (sec. 4.3)."""
    return paper.LR_PATH_LENGTH if regularizer in PATH_LENGTH else paper.LR


def check(regularizer: str) -> str:
    """regularizer if it is known; a ValueError listing the known ones otherwise."""
    if regularizer not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {regularizer!r}; choose one of: {', '.join(REGULARIZERS)}")
    return regularizer


def check_points(points: int) -> int:
    """points per segment of a path-length penalty if it is an integer >= 2; a ValueError otherwise."""
    if not is_integer(points) or points < 2:
        raise ValueError(f"points per segment of a path-length penalty must be an integer >= 2, got {points!r}")
    return int(points)


def _row(regularizer) -> Regularizer:
    return regularizer if isinstance(regularizer, Regularizer) else BY_NAME[regularizer]


def penalty(regularizer: str):
    """The minibatch variant of the measure a regularizer penalizes (its row's batch): fn(fam, p, xb, yb, valid,
    points, loss) -> [M]."""
    return _row(regularizer).batch


def batch_measure(p, regularizer: str, xb: torch.Tensor, valid: torch.Tensor, points: int = SEGMENT_POINTS,
                  yb: torch.Tensor | None = None, *, fam=None, loss: str = "mse") -> torch.Tensor:
    """The stochastic variant of S on the batch xb [M, B, d] (valid [M, B]), differentiable; yb [M, B], the batch's
    targets, for a variant of the training loss. fam: the stack's family (default: the MLP of an MLPStack). [M]."""
    fam = fam or family_of(p)
    return penalty(regularizer)(fam, p, xb, yb, valid, points, loss)


def regularized_loss(p, regularizer, lam: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                     valid: torch.Tensor, points: int = SEGMENT_POINTS, *, fam=None, loss: str = "mse"):
    """Per-model objective L + lam * S on the batch (eq. 15), and the batch errors (f - y for one output; for K
    outputs the per-example losses). [M] and [M, B]."""
    fam = fam or family_of(p)
    out = fam.values(p, xb)
    data, per = losses.mean_loss(out, yb, loss, valid)
    err = residuals(out, yb, valid) if (loss == "mse" and out.dim() == 2) else per
    if regularizer in ("none", None):
        return data, err
    return data + lam * penalty(regularizer)(fam, p, xb, yb, valid, points, loss), err


def regularized_grads(p, regularizer, lam: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                      valid: torch.Tensor, points: int = SEGMENT_POINTS, *, fam=None, loss: str = "mse"):
    """Every model's gradient of L + lam * S on its batch (in p.tensors() order), and the batch errors [M, B]."""
    fam = fam or family_of(p)
    if fam.closed_form and loss == "mse" and p.depth == 1 and _row(regularizer).grad is not None:
        return _two_layer_grads(p, regularizer, lam, xb, yb, valid, points)
    q = p.as_leaves()
    with torch.enable_grad():
        obj, err = regularized_loss(q, regularizer, lam, xb, yb, valid, points, fam=fam, loss=loss)
        grads = torch.autograd.grad(obj.sum(), q.tensors())  # models are independent: sum gives each its own
    return list(grads), err.detach()


def _two_layer_grads(p: MLPStack, regularizer, lam: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                     valid: torch.Tensor, points: int):
    """regularized_grads for two-layer nets in closed form (module docstring): the same objective, eq. 15."""
    out, acts, pres = forward(p, xb, cache=True)
    err = residuals(out, yb, valid)
    pen = penalty_grads(p, regularizer, lam, pres[0], valid, points)
    grads = parameter_grads(p, acts, pres, err * mse_scale(valid, xb.shape[1], dtype=err.dtype)[:, None], dpre=[pen.dz])
    if pen.dW1 is not None:
        grads[0] = grads[0] + pen.dW1
    grads[1] = grads[1] + pen.dw2
    return grads, err


def penalty_grads(p: MLPStack, regularizer, lam: torch.Tensor, z: torch.Tensor, valid: torch.Tensor,
                  points: int = SEGMENT_POINTS) -> PenaltyGrads:
    """The gradient of lam * S for two-layer nets (p.depth == 1, regularizer in TWO_LAYER) from the batch's
    first-layer pre-activations z [M, B, h], in closed form (the registry row's penalty_grad); the data term is not
    included."""
    return _row(regularizer).grad(p, lam, z, valid, points)

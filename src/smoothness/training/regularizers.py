"""Explicit smoothness regularization, L_reg = L + lambda * S (paper eq. 15), batched over models of any family.

During training S is the stochastic variant on the current minibatch, as in the original code: the registry row of
the measure that a regularizer penalizes holds it (registry.Measure.batch; the variants are in measures/penalties.py,
with the points per segment of the path-length penalties a setting, `penalty_points`, default 10 as in the original
code's final version, 100 in an earlier one). Parameter gradients come from autograd through the family's input
gradient (double backpropagation; the MLP's in closed form); for two-layer ReLU nets (the paper's) a row may hold the
gradient in closed form (registry.Measure.penalty_grad), which the trainer adds to the data term's hand-written
backward pass. Both give the same objective (tested against each other).

Each regularizer is declared once, by the registry row of the measure it penalizes; what one of its steps costs
(STEP_COST, used to order work) must be given for every one of them (tests/training/test_regularizers.py checks it).
"""
from __future__ import annotations

import torch

from smoothness import paper
from smoothness.measures import registry
from smoothness.measures.penalties import PenaltyGrads
from smoothness.models import MLPStack, family_of, forward, losses, mse_scale, parameter_grads, residuals

REGULARIZERS = ("none", *(m.regularizer for m in registry.REGISTRY if m.regularizer))
PATH_LENGTH = tuple(m.regularizer for m in registry.REGISTRY if m.regularizer and m.key in
                    ("function_path_length", "gradient_path_length"))
SEGMENT_POINTS = paper.PENALTY_POINTS   # points per segment of the path-length penalties (`penalty_points`)
PAPER_LAMBDAS = paper.LAMBDAS   # the coefficients of the paper's Table 2
# What one training step with each penalty costs, in plain SGD steps (784-256-1 net, batch 64, one model, 10 points
# per penalty segment; `smoothness bench --regularizers 1`, docs/performance.md), and per further point per segment.
# Used to order work (distributed.expected_steps), not to decide anything about a model.
STEP_COST = {"none": 1.0, "gradient_norm": 2.4, "gradient_norm_squared": 2.4, "weights_product": 1.5,
             "path_norm": 2.0, "norm_product": 1.2, "function_path_length": 2.0, "gradient_path_length": 3.3,
             "minibatch_gradient_norm": 6.0}
STEP_COST_PER_POINT = {"function_path_length": 0.035, "gradient_path_length": 0.15}


def step_cost(regularizer: str, points: int = SEGMENT_POINTS) -> float:
    """The cost of a step with this penalty in plain SGD steps (STEP_COST); a KeyError for a regularizer without
    one (every regularizer has one: a test checks it)."""
    return STEP_COST[regularizer] + STEP_COST_PER_POINT.get(regularizer, 0.0) * (points - SEGMENT_POINTS)


# The regularizers with a closed form for two-layer nets (_two_layer_grads).
TWO_LAYER = tuple(m.regularizer for m in registry.REGISTRY if m.regularizer and m.penalty_grad)


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
    if isinstance(points, bool) or int(points) != points or points < 2:
        raise ValueError(f"points per segment of a path-length penalty must be an integer >= 2, got {points!r}")
    return int(points)


def penalty(regularizer: str):
    """The minibatch variant of the measure a regularizer penalizes (registry row's batch), looked up once per
    program: fn(fam, p, xb, yb, valid, points, loss) -> [M]."""
    return registry.by_regularizer(regularizer).batch


def batch_measure(p, regularizer: str, xb: torch.Tensor, valid: torch.Tensor, points: int = SEGMENT_POINTS,
                  yb: torch.Tensor | None = None, *, fam=None, loss: str = "mse") -> torch.Tensor:
    """The stochastic variant of S on the batch xb [M, B, d] (valid [M, B]), differentiable; yb [M, B], the batch's
    targets, for a variant of the training loss. fam: the stack's family (default: the MLP of an MLPStack). [M]."""
    fam = fam or family_of(p)
    return penalty(regularizer)(fam, p, xb, yb, valid, points, loss)


def regularized_loss(p, regularizer: str, lam: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                     valid: torch.Tensor, points: int = SEGMENT_POINTS, *, fam=None, loss: str = "mse"):
    """Per-model objective L + lam * S on the batch (eq. 15), and the batch errors (f - y for one output; for K
    outputs the per-example losses). [M] and [M, B]."""
    fam = fam or family_of(p)
    out = fam.values(p, xb)
    data, per = losses.mean_loss(out, yb, loss, valid)
    err = residuals(out, yb, valid) if (loss == "mse" and out.dim() == 2) else per
    if regularizer == "none":
        return data, err
    return data + lam * penalty(regularizer)(fam, p, xb, yb, valid, points, loss), err


def regularized_grads(p, regularizer: str, lam: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                      valid: torch.Tensor, points: int = SEGMENT_POINTS, *, fam=None, loss: str = "mse"):
    """Every model's gradient of L + lam * S on its batch (in p.tensors() order), and the batch errors [M, B]."""
    fam = fam or family_of(p)
    if fam.closed_form and loss == "mse" and p.depth == 1 and regularizer in TWO_LAYER:
        return _two_layer_grads(p, regularizer, lam, xb, yb, valid, points)
    q = p.as_leaves()
    with torch.enable_grad():
        obj, err = regularized_loss(q, regularizer, lam, xb, yb, valid, points, fam=fam, loss=loss)
        grads = torch.autograd.grad(obj.sum(), q.tensors())  # models are independent: sum gives each its own
    return list(grads), err.detach()


def _two_layer_grads(p: MLPStack, regularizer: str, lam: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
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


def penalty_grads(p: MLPStack, regularizer: str, lam: torch.Tensor, z: torch.Tensor, valid: torch.Tensor,
                  points: int = SEGMENT_POINTS) -> PenaltyGrads:
    """The gradient of lam * S for two-layer nets (p.depth == 1, regularizer in TWO_LAYER) from the batch's
    first-layer pre-activations z [M, B, h], in closed form (the registry row's penalty_grad); the data term is not
    included."""
    return registry.by_regularizer(regularizer).penalty_grad(p, lam, z, valid, points)

"""The Gauss-Newton family of curvature matrices of the loss over the data, as operators (operators.py has the
interface and the Hessian). Each is (1/N) sum_n J_n^T M_n J_n, with J_n the Jacobian of the model's output at point
n w.r.t. the parameters and M_n a positive semi-definite matrix in output space, so each is positive
semi-definite; a product is one forward-mode pass (J v) and one reverse-mode pass (J^T u) through torch.func:

- GGNOperator, the generalized Gauss-Newton matrix: M the Hessian of the loss w.r.t. the outputs (any loss; for
  the batch as a whole, so a loss that couples points is allowed). The Hessian without the term of the model's
  second derivatives.
- FisherOperator, the Fisher information of the model's predictive distribution (the exact, "type-2" Fisher):
  M_n = E_{y ~ p(y | f(x_n))} [g g^T] with g the gradient of the point's loss w.r.t. the output at target y. It
  needs a loss that is the negative log-likelihood of a known distribution: cross-entropy (F.cross_entropy,
  nn.CrossEntropyLoss() with its defaults, 'cross_entropy': categorical, M_n = diag(p) - p p^T for p =
  softmax(f)), or the squared error ('mse', eq. 2: s = 1, or nn.MSELoss(), the mean over the K outputs too:
  s = 1/K), a point's loss s ||f - y||^2 being the Gaussian's with variance 1/(2s): M_n = 2 s I. For these losses the
  exact Fisher equals the GGN (computed here in closed form, independently of the GGN's autodiff).
- SampledFisherOperator: M_n = (1/m) sum_s g_s g_s^T at m = mc_samples targets drawn per point from the model's
  predictive distribution, by generators seeded from (seed, batch index): one fixed matrix, the same at every
  product (a DataLoader must give its batches in the same order each pass), an unbiased estimate of the Fisher.
- EmpiricalFisherOperator: M_n = g_n g_n^T at the true targets, i.e. (1/N) sum_n grad l_n grad l_n^T; it reads
  the batch loss as the mean of per-point losses (true of every loss named above).

The Fisher, sampled Fisher and empirical Fisher read each point's output as depending on its own input only (a
model in eval mode). operator(kind, ...) builds any of them, or the Hessian, by name (KINDS).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import grad, jvp, vjp
from torch.nn import functional as F

from smoothness.errors import MeasureError
from smoothness.measures.losses import LOSSES
from smoothness.measures.operators import CurvatureOperator, HessianOperator, hessian_product


def _per_point(a: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The dot product of a and u over each point's output, shaped to broadcast against them."""
    return (a * u).reshape(a.shape[0], -1).sum(1).reshape((a.shape[0],) + (1,) * (a.dim() - 1))


class OutputSpaceOperator(CurvatureOperator):
    """(1/N) sum_n J_n^T M_n J_n; a subclass gives output_product, the product of the batch-mean M of one batch."""

    def output_product(self, b: int, out: torch.Tensor, y: torch.Tensor):
        """A function u [outputs of the batch] -> (1/n_b) M u (M block diagonal over the batch's points)."""
        raise NotImplementedError

    def batch_product(self, b, x, y):
        f = lambda params: self.forward(x, params)
        out, pullback = vjp(f, self.params)
        m = self.output_product(b, out.detach(), y)

        def prod(v):
            _, ju = jvp(f, (self.params,), (self.unflatten(v),))
            return self.flatten(pullback(m(ju))[0])
        return prod


class GGNOperator(OutputSpaceOperator):
    """The generalized Gauss-Newton matrix J^T (d^2 L / d f^2) J of the loss over the data (any loss)."""

    kind = "GGN"

    def output_product(self, b, out, y):
        return hessian_product(lambda o: self._loss(o, y), out, self.forward_ad)


def likelihood(loss, out: torch.Tensor) -> tuple[str, float]:
    """('categorical', 1.0) or ('gaussian', s) for a loss that is the negative log-likelihood of that distribution
    (see the module docstring); a MeasureError for any other."""
    if loss is F.cross_entropy or (isinstance(loss, nn.CrossEntropyLoss) and loss.reduction == "mean"
                                   and loss.weight is None and loss.label_smoothing == 0.0):
        if out.dim() != 2:
            raise MeasureError(f"the Fisher of the cross-entropy takes outputs [n, classes]; got {list(out.shape)}")
        return "categorical", 1.0
    if loss is LOSSES["mse"]:
        return "gaussian", 1.0
    if isinstance(loss, nn.MSELoss) and loss.reduction == "mean":
        return "gaussian", 1.0 / out[0].numel()
    raise MeasureError("the Fisher needs a loss that is the negative log-likelihood of a known distribution: "
                     "'cross_entropy' (F.cross_entropy, nn.CrossEntropyLoss()) or 'mse' (nn.MSELoss()); the GGN and "
                     "the empirical Fisher take any loss")


class FisherOperator(OutputSpaceOperator):
    """The exact (type-2) Fisher of the model's predictive distribution, for cross-entropy and squared-error
    losses (see the module docstring); equal to the GGN for them."""

    kind = "Fisher"

    def output_product(self, b, out, y):
        dist, s = likelihood(self._loss, out)
        n = out.shape[0]
        if dist == "gaussian":
            return lambda u: (2 * s / n) * u
        p = torch.softmax(out, 1)
        return lambda u: (p * u - p * (p * u).sum(1, keepdim=True)) / n


class SampledFisherOperator(OutputSpaceOperator):
    """The Fisher estimated with mc_samples targets per point drawn from the model's predictive distribution (a
    fixed draw per seed; see the module docstring)."""

    kind = "sampled Fisher"
    join = False   # its draws are seeded by the batch index: a loader's batches as they come

    def __init__(self, model, data, targets=None, loss=None, *, mc_samples: int = 1, seed: int = 0, **kw):
        if mc_samples < 1:
            raise MeasureError(f"mc_samples must be >= 1; got {mc_samples}")
        super().__init__(model, data, targets, loss, **kw)
        self.mc_samples, self.seed = mc_samples, seed

    def output_gradients(self, b: int, out: torch.Tensor) -> torch.Tensor:
        """[mc_samples, *out.shape]: the gradients of each point's loss w.r.t. its output at sampled targets."""
        dist, s = likelihood(self._loss, out)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + b)
        m = self.mc_samples
        if dist == "gaussian":   # y = f + sigma e, sigma^2 = 1 / (2 s): 2 s (f - y) = -sqrt(2 s) e
            e = torch.randn((m, *out.shape), generator=g, dtype=torch.float64)
            return (-(2 * s) ** 0.5 * e).to(out.device, out.dtype)
        p = torch.softmax(out.double(), 1).cpu()
        drawn = torch.multinomial(p, m, replacement=True, generator=g).T           # [m, n]
        onehot = F.one_hot(drawn, out.shape[1]).double()
        return (p[None] - onehot).to(out.device, out.dtype)

    def output_product(self, b, out, y):
        grads = self.output_gradients(b, out)
        m, n = grads.shape[:2]
        flat = grads.reshape(m, n, -1)

        def prod(u):
            dots = (flat * u.reshape(1, n, -1)).sum(2)                  # [m, n]: each sample's g . u per point
            return torch.einsum("snk,sn->nk", flat, dots).reshape(u.shape) / (m * n)
        return prod


class EmpiricalFisherOperator(OutputSpaceOperator):
    """The empirical Fisher (1/N) sum_n grad l_n grad l_n^T at the true targets (any loss that is a mean of
    per-point losses)."""

    kind = "empirical Fisher"

    def output_product(self, b, out, y):
        n = out.shape[0]
        gs = grad(lambda o: self._loss(o, y))(out) * n      # each point's gradient of its own loss
        return lambda u: gs * _per_point(gs, u) / n


KINDS = {"hessian": HessianOperator, "ggn": GGNOperator, "fisher": FisherOperator,
         "sampled_fisher": SampledFisherOperator, "empirical_fisher": EmpiricalFisherOperator}


def operator(kind: str, model: nn.Module, data, targets=None, loss=None, **kw) -> CurvatureOperator:
    """The curvature operator of that kind ('hessian', 'ggn', 'fisher', 'sampled_fisher', 'empirical_fisher'):
    keyword arguments batch_size, params (a block: see operators.select), chunk, and for the sampled Fisher
    mc_samples and seed."""
    if kind not in KINDS:
        raise MeasureError(f"unknown curvature {kind!r}: choose one of {', '.join(KINDS)}")
    return KINDS[kind](model, data, targets, loss, **kw)

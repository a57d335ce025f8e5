"""How a family's models take one optimizer step on their minibatches (what step.py asks of a family): the gradient
of every model's objective L + lambda * S (eq. 15) and the update, batched over the models.

  ClosedFormEngine   the paper's ReLU MLPs with one output and the MSE: hand-written backward passes; plain SGD folds
                     the update into the gradient GEMMs (models.sgd_update_), and for one hidden layer the penalties'
                     gradients come in closed form (regularizers.Regularizer.grad). The fast path.
  AutogradEngine     any family and loss: autograd through the family's batched forward (and, for a penalty on the
                     input gradient, through its input gradient: double backpropagation).

Both return each model's per-example losses on its batch from before the update (0 where a point is not in the
batch), which the epoch's stopping rule adds up, and for cross-entropy which points were misclassified.
"""
from __future__ import annotations

import torch

from smoothness.models import Family, forward, losses, mse_scale, parameter_grads, residuals, sgd_update_
from smoothness.training import optimizers, regularizers
from smoothness.training.state import StepSettings


class ClosedFormEngine:
    """The MLP's engine (module docstring)."""

    def __init__(self, st: StepSettings, family: Family, batch_size: int):
        self.st, self.family, self.batch_size = st, family, batch_size
        self.reg = regularizers.get(st.regularizer)   # looked up once for the program; None: no penalty
        # the regularizer's gradient has the two-layer closed form that SGD folds into its fused update
        self.fused = self.reg is None or (len(family.widths) == 3 and self.reg.grad is not None)

    def update_(self, p, opt_state, xb, yb, valid, lr, lam, rho, t):
        """One optimizer step of the stack p (views: updated in place) on its batch; (per-example losses, None)."""
        st = self.st
        grads = None
        if st.optimizer == "sgd" and self.fused:   # fused: the update is folded into the gradient GEMMs
            out, acts, pres = forward(p, xb, cache=True)
            err = residuals(out, yb, valid)
            scale = mse_scale(valid, self.batch_size, lr, err.dtype)   # dL/dout of eq. 2 on the batch, times lr
            pen = None
            if self.reg is not None:   # eq. 15: lam * S's gradient, from the weights before the update
                pen = self.reg.grad(p, lam, pres[0], valid, st.penalty_points)
            rate = lr[:, None, None]
            sgd_update_(p, acts, pres, err * scale[:, None],
                        dpre=[pen.dz * rate] if pen is not None and pen.dz is not None else None)
            if pen is not None:
                if pen.dW1 is not None:
                    p.weights[0].sub_(pen.dW1 * rate)
                p.weights[1].sub_(pen.dw2 * rate)
        else:
            grads, err = self._grads(p, lam, xb, yb, valid)
            if st.optimizer == "sam":   # the gradient again, at theta + e on the same minibatch
                moved = [u + e for u, e in zip(p.tensors(), optimizers.sam_perturbation(grads, rho))]
                grads, _ = self._grads(p.with_tensors(moved), lam, xb, yb, valid)
        if grads is not None:
            optimizers.step_(p.tensors(), grads, opt_state, st.optimizer, lr, t)
        return err.square(), None   # errors from before the update, as Keras logs them

    def _grads(self, p, lam, xb, yb, valid):
        """Every model's gradient of its minibatch objective (eq. 2, or eq. 15 with a regularizer), in p.tensors()
        order, and the batch errors [M, B]."""
        st = self.st
        if self.reg is not None:
            return regularizers.regularized_grads(p, self.reg, lam, xb, yb, valid, st.penalty_points)
        out, acts, pres = forward(p, xb, cache=True)
        err = residuals(out, yb, valid)
        scale = mse_scale(valid, self.batch_size, dtype=err.dtype)
        return parameter_grads(p, acts, pres, err * (scale if valid is None else scale[:, None])), err


class AutogradEngine:
    """Any family's engine (module docstring)."""

    def __init__(self, st: StepSettings, family: Family, batch_size: int):
        self.st, self.family, self.batch_size = st, family, batch_size
        reg = regularizers.get(st.regularizer)   # looked up once for the program
        self.penalty = None if reg is None else reg.batch

    def objective_grads(self, p, lam, xb, yb, valid):
        """Every model's gradient of L + lam * S on its batch (p.tensors() order), its outputs and per-example
        losses on the batch."""
        st, fam = self.st, self.family
        q = p.as_leaves()
        with torch.enable_grad():
            out = fam.values(q, xb)
            data, per = losses.mean_loss(out, yb, st.loss, valid)
            obj = data if self.penalty is None else \
                data + lam * self.penalty(fam, q, xb, yb, valid, st.penalty_points, st.loss)
            grads = torch.autograd.grad(obj.sum(), q.tensors())   # models are independent: the sum gives each its own
        return list(grads), out.detach(), per.detach()

    def update_(self, p, opt_state, xb, yb, valid, lr, lam, rho, t):
        """One optimizer step of the stack p (views: updated in place) on its batch; (per-example losses, the
        misclassified points for cross-entropy else None)."""
        st = self.st
        grads, out, per = self.objective_grads(p, lam, xb, yb, valid)
        if st.optimizer == "sam":   # the gradient again, at theta + e on the same minibatch
            moved = [u + e for u, e in zip(p.tensors(), optimizers.sam_perturbation(grads, rho))]
            grads = self.objective_grads(p.with_tensors(moved), lam, xb, yb, valid)[0]
        optimizers.step_(p.tensors(), grads, opt_state, st.optimizer, lr, t)
        wrong = None
        if st.loss == "cross_entropy":
            wrong = losses.misclassified(out, yb)
            wrong = wrong if valid is None else wrong & valid
        return per, wrong


def engine_for(st: StepSettings, family: Family, batch_size: int):
    """The fast closed-form engine where it applies (MLPs with one output under the MSE), else the autograd one."""
    if getattr(family, "closed_form", False) and st.loss == "mse":
        return ClosedFormEngine(st, family, batch_size)
    return AutogradEngine(st, family, batch_size)

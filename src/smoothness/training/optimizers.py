"""Optimizers as an experiment axis, batched over a stack of models (beyond the paper, which uses plain SGD).

  sgd       theta <- theta - lr g                                    (the paper; the default)
  gd        full-batch gradient descent: sgd with the batch size set to each model's training size N
  momentum  heavy ball as torch.optim.SGD(momentum=0.9): v <- 0.9 v + g; theta <- theta - lr v
  adam      Adam (Kingma & Ba, 2015) as torch.optim.Adam with betas (0.9, 0.999), eps 1e-8:
            m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
            theta <- theta - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
  sam       sharpness-aware minimization (Foret, Kleiner, Mobahi & Neyshabur, ICLR 2021) with radius rho:
            e <- rho g / ||g|| (g on the model's minibatch, ||.|| over all its parameters);
            theta <- theta - lr g(theta + e), g(theta + e) on the same minibatch

g is the gradient of the model's minibatch objective (eq. 2, or eq. 15 with a regularizer). Every
model keeps its own state and step count t, so a model follows the same trajectory alone and in a batch.
"""
from __future__ import annotations

import torch

OPTIMIZERS = ("sgd", "gd", "momentum", "adam", "sam")
MOMENTUM = 0.9
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
ADAM_LR = 1e-3   # Adam's default learning rate (the SGD rates of the paper make it diverge or stall)
SAM_RHO = 0.05   # SAM's default radius (Foret et al., 2021)


def default_lr(optimizer: str, regularizer: str = "none") -> float:
    """Adam's 1e-3; otherwise the paper's rate for the regularizer (regularizers.default_lr)."""
    from smoothness.training.regularizers import default_lr as paper_lr
    return ADAM_LR if optimizer == "adam" else paper_lr(regularizer)


def resolve_lr(lr, optimizer: str, regularizer: str = "none") -> float:
    """A model's learning rate: lr, or default_lr when it is None (the one place where that default is applied:
    TrainSpec, RunConfig and grids all come here)."""
    return default_lr(optimizer, regularizer) if lr is None else float(lr)


def resolve_rho(rho, optimizer: str) -> float:
    """A model's SAM radius: for optimizer sam, rho or SAM_RHO when it is None or 0 (0 is how earlier versions wrote
    'unset'); for the others 0, and a ValueError if they are given one. The one place of that default."""
    if optimizer != "sam":
        if rho:
            raise ValueError(f"rho {rho!r} is SAM's radius: it needs optimizer sam, not {optimizer}")
        return 0.0
    rho = SAM_RHO if not rho else float(rho)
    if not (rho > 0 and rho < float("inf")):
        raise ValueError(f"SAM's radius rho must be a finite number > 0, got {rho!r}")
    return rho


def check(name: str) -> str:
    """name if it is a known optimizer; a ValueError listing them otherwise."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    return name


def state_size(optimizer: str) -> int:
    """Buffers per parameter tensor: 1 for momentum, 2 for Adam (first and second moments), else 0."""
    return {"momentum": 1, "adam": 2}.get(optimizer, 0)


def init_state(tensors: list[torch.Tensor], optimizer: str) -> list[torch.Tensor]:
    """Zero buffers for a stack's tensors ([M, ...] each): state_size(optimizer) per tensor, tensor-major."""
    return [torch.zeros_like(t) for t in tensors for _ in range(state_size(optimizer))]


def sam_perturbation(grads: list[torch.Tensor], rho: torch.Tensor) -> list[torch.Tensor]:
    """SAM's ascent step e = rho g / ||g|| for every model (||g|| over all of its tensors; e = 0 where g = 0),
    grads [M, ...] each, rho [M]."""
    sq = sum(g.square().flatten(1).sum(1) for g in grads)
    norm = sq.sqrt()
    scale = torch.where(norm > 0, rho.to(norm.dtype) / torch.where(norm > 0, norm, 1.0), 0.0)
    return [_per_model(scale, g) * g for g in grads]


def _per_model(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v [M] broadcast against t [M, ...]."""
    return v.to(t.dtype).view(-1, *([1] * (t.dim() - 1)))


@torch.no_grad()
def step_(tensors: list[torch.Tensor], grads: list[torch.Tensor], state: list[torch.Tensor], optimizer: str,
          lr: torch.Tensor, t: torch.Tensor) -> None:
    """One update in place of every model's tensors given their gradients; lr [M], t [M] the 1-based step."""
    k = state_size(optimizer)
    for i, (p, g) in enumerate(zip(tensors, grads)):
        rate = _per_model(lr, p)
        if optimizer in ("sgd", "gd", "sam"):   # sam: g is the gradient at the perturbed weights
            p.sub_(rate * g)
        elif optimizer == "momentum":
            buf = state[i * k]
            buf.mul_(MOMENTUM).add_(g)
            p.sub_(rate * buf)
        elif optimizer == "adam":
            m, v = state[i * k], state[i * k + 1]
            b1, b2 = ADAM_BETAS
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            tt = _per_model(t, p)
            denom = (v / (1 - b2 ** tt)).sqrt_().add_(ADAM_EPS)
            p.sub_(rate * (m / (1 - b1 ** tt)) / denom)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}")

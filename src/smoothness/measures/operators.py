"""Curvature matrices of the training loss of any module as linear operators on flat parameter vectors, read batch
by batch from a tensor pair (x, y) or a DataLoader: the Hessian here, the Gauss-Newton family (the generalized
Gauss-Newton matrix, the Fisher, exact or sampled, and the empirical Fisher) in gaussnewton.py.

The loss over the data is the mean over all points, L(theta) = sum_b (n_b / N) L_b(theta) for batches b of n_b
points with mean-reduced batch losses L_b, so a DataLoader gives the matrix of the tensor of its points (memory:
one batch; under a named loss its small batches are read together, stream.joined, up to batch_size points).
loss: a callable loss(outputs, targets) -> scalar mean over the batch (torch.nn.CrossEntropyLoss(), F.cross_entropy,
...), or 'mse' (eq. 2 of Volhejn & Lampert: mean (f(x) - y)^2, f's [n, 1] output read as [n]) or
'cross_entropy'; None picks cross_entropy for integer targets and K > 1 outputs, else mse (losses.py).

Before any work (checks.py): x and y are dense, real and finite; the model's output on the first point is one
tensor per point; for the named losses the targets fit the outputs (the mse: as many values per point as outputs;
the cross-entropy: labels 0 to K - 1, or probabilities [n, K]), checked on every batch.

Every operator A has `dim` (the number of parameters it acts on), `matvec(v)` ([dim] -> [dim]) and `matmat(V)`
([dim, k] -> [dim, k]: the k products in one pass over the data, vectorized over the columns by torch.func.vmap in
chunks of `chunk` columns, about twice as fast per product as k matvecs on a small CNN), `A @ v`, `to_scipy()`
(a scipy.sparse.linalg.LinearOperator, float64 NumPy in and out by default), `dense()` (column by column, for small
models), and `restrict(...)`, the block of the matrix on a subset of the parameters (a layer, or parameters by
name). Products are computed in the model's dtype; the loss's gradients through torch.func, forward-over-reverse.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from smoothness.errors import MeasureError, MeasureTypeError
from smoothness.measures import anymodule, checks, stream
from smoothness.measures.losses import check_targets, one_hot_targets, resolve_loss
from smoothness.runtime import precision

MATMAT_CHUNK = 16        # columns of one vectorized product (memory: that many copies of a batch's activations)
DENSE_MAX_DIM = 20_000   # dense() and the exact diagonal refuse larger operators (dim^2 floats, dim products)


def batches(data, targets, batch_size):
    """(x, y) batches of the data: tensors split in batch_size points (all at once for None), or a loader's."""
    if stream.is_stream(data):
        if targets is not None:
            raise MeasureError("targets are given with the batches of a DataLoader: pass (x, y) batches instead")
        for x, y in stream.batches(data, with_targets=True):
            if y is None:
                raise MeasureError("the curvature of a loss needs targets: the batches must be (x, y)")
            yield x, y
        return
    if targets is None:
        raise MeasureError("the curvature of a loss needs targets y: pass x and y, or a DataLoader of (x, y)")
    x, y = stream.as_tensor(data), stream.as_tensor(targets)
    if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise MeasureError(f"x has shape {tuple(x.shape)} and y {tuple(y.shape)}: the numbers of points and targets "
                           "must match (one row each, at least one)")
    step = batch_size or x.shape[0]
    for i in range(0, x.shape[0], step):
        yield x[i:i + step], y[i:i + step]


def checked(data, targets):
    """data and targets checked before any work: stream.checked (a tensor's points dense, real and finite, a
    stream's batches as they are read); the targets alike."""
    data = stream.checked(data, "x")
    if targets is not None:
        targets = checks.values(stream.as_tensor(targets), "y")
    return data, targets


def probes(dim: int, seeds, rademacher: bool, dtype, device) -> torch.Tensor:
    """[dim, len(seeds)]: column j a Rademacher (or standard normal) vector drawn from a generator seeded seeds[j]
    on the CPU, so that the same seeds give the same vectors on every device."""
    cols = []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        cols.append(torch.randint(0, 2, (dim,), generator=g).double() * 2 - 1 if rademacher
                    else torch.randn(dim, generator=g, dtype=torch.float64))
    return torch.stack(cols, 1).to(device=device, dtype=dtype)


def select(names: list[str], params) -> list[str]:
    """The names among `names` that `params` picks: None picks all; else a name or a list of names, each an exact
    parameter name ('0.weight') or a module's name ('0', 'features.conv1') picking all of its parameters."""
    if params is None:
        return list(names)
    wanted = [params] if isinstance(params, str) else list(params)
    picked = set()
    for w in wanted:
        hit = [n for n in names if n == w or n.startswith(f"{w}.")]
        if not hit:
            layers = sorted({n.rpartition(".")[0] or n for n in names})
            raise MeasureError(f"no trainable parameter is named {w!r} or lies in a module of that name; the modules "
                             f"with trainable parameters are: {', '.join(layers)}")
        picked.update(hit)
    return [n for n in names if n in picked]


class CurvatureOperator:
    """A curvature matrix of the loss over the data w.r.t. the model's trainable parameters (or the subset
    `params` picks, see select(): the others held fixed), as a symmetric linear operator on flat vectors. A subclass
    gives batch_matmat, the product of the batch-mean matrix of one batch."""

    kind = "curvature"
    join = True   # a DataLoader's small batches are read together (stream.joined) under a named loss, a mean over
    # points, whose products are the same over the batches joined; a loss of one's own sees the loader's batches

    def __init__(self, model: nn.Module, data, targets=None, loss=None, *, batch_size: int | None = None,
                 params=None, chunk: int = MATMAT_CHUNK):
        if not isinstance(model, nn.Module):
            raise MeasureTypeError(f"the curvature is of an nn.Module's parameters; got {type(model).__name__}")
        if isinstance(model, torch.jit.ScriptModule):
            raise MeasureTypeError("the curvature takes the parameters as inputs (torch.func), which a TorchScript "
                                   "module cannot: save the model with torch.export, or as a state dict for its "
                                   "nn.Module")
        if chunk < 1:
            raise MeasureError(f"chunk must be >= 1; got {chunk}")
        anymodule.check_mode(model)
        stream.check_reiterable(data, f"the {self.kind} operator")
        data, targets = checked(data, targets)
        self.model, self.data, self.targets, self.batch_size, self.chunk = model, data, targets, batch_size, chunk
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise MeasureError("the model has no trainable parameters")
        self._loss_spec, self._loss, self._row, self.forward_ad = loss, None, None, True
        self.one_hot = False   # the named mse reads integer class labels as one-hot targets (set on the first batch)
        self._pick(select(trainable, params))

    def _pick(self, names: list[str]) -> None:
        all_params = dict(self.model.named_parameters())
        self.names = names
        self.params = {n: all_params[n].detach() for n in names}
        self.frozen = {n: p.detach() for n, p in all_params.items() if n not in self.params}
        self.buffers = {n: b.detach() for n, b in self.model.named_buffers()}
        self.shapes = [self.params[n].shape for n in names]
        self.sizes = [self.params[n].numel() for n in names]
        self.dim = sum(self.sizes)
        self.shape = (self.dim, self.dim)
        first = self.params[names[0]]
        self.dtype, self.device = first.dtype, first.device

    def restrict(self, params) -> CurvatureOperator:
        """The same matrix's diagonal block on the parameters `params` picks among this operator's (a layer's
        name, parameter names: see select()), the others held fixed; the same data, loss (and Fisher samples)."""
        op = copy.copy(self)
        op._pick(select(self.names, params))
        return op

    def layers(self) -> list[str]:
        """The names of the modules that own this operator's parameters, in order (for restrict)."""
        return list(dict.fromkeys(n.rpartition(".")[0] or n for n in self.names))

    def unflatten(self, v: torch.Tensor) -> dict:
        """A flat vector [dim] as {parameter name: tensor of the parameter's shape}."""
        return {n: t.reshape(s) for n, t, s in zip(self.names, v.split(self.sizes), self.shapes)}

    def flatten(self, d: dict) -> torch.Tensor:
        """{parameter name: tensor} (this operator's parameters) as one flat vector [dim]."""
        return torch.cat([d[n].reshape(-1) for n in self.names])

    def forward(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """The model's outputs on x with this operator's parameters set to params (the others as they are)."""
        return functional_call(self.model, ({**params, **self.frozen}, self.buffers), (x,))

    @property
    def loss_fn(self):
        """The loss callable (resolved on the first batch read)."""
        if self._loss is None:
            next(self._each(), None)
        return self._loss

    def _each(self):
        read = batches(self.data, self.targets, self.batch_size)
        if self.join and stream.is_stream(self.data) and (self._loss_spec is None or isinstance(self._loss_spec, str)):
            read = ((x, y) for x, y, _ in stream.joined(read, self.batch_size))
        for x, y in read:
            x = x.to(self.device, self.dtype if x.is_floating_point() else x.dtype)
            y = y.to(self.device)
            if self._loss is None:
                self._resolve(x, y)   # checks this first batch's targets too
            elif self._row is not None:
                check_targets(self._loss, self._row, y, chosen=self._loss_spec is None)
            yield x, y

    def _resolve(self, x, y) -> None:
        """The loss, from the model's output on the first point (the model's failure there is one line); for a
        named loss the output must be one tensor per point, whose shape the targets are checked against."""
        with torch.no_grad():
            out = checks.call(self.model, x[:1])
        if self._loss_spec is None or isinstance(self._loss_spec, str):
            self._row = tuple(checks.output(out, 1).shape[1:])
        loss = resolve_loss(self._loss_spec, out, y[:1])
        if self._row is not None:
            check_targets(loss, self._row, y, chosen=self._loss_spec is None)
            self.one_hot = one_hot_targets(loss, self._row, y)
        self.forward_ad = forward_ad_works(loss, out, y[:1])
        self._loss = loss

    def check(self) -> None:
        """The checks of the data before any work: the loss resolved on the first point, and the targets of every
        batch of a tensor (of a DataLoader: its first batch; the others are checked as they are read)."""
        for i, _ in enumerate(self._each()):
            if stream.is_stream(self.data) and i == 0:
                return

    def mean_over_batches(self, fn) -> torch.Tensor:
        """sum_b (n_b / N) fn(b, x_b, y_b) over the batches b of the data (fn of the batch index and its points)."""
        total, n = None, 0
        for b, (x, y) in enumerate(self._each()):
            part = fn(b, x, y).detach() * x.shape[0]
            total = part if total is None else total + part
            n += x.shape[0]
        if n == 0:
            raise MeasureError("the data holds no points")
        return total / n

    def batch_product(self, b: int, x: torch.Tensor, y: torch.Tensor):
        """A function v [dim] -> (batch-mean matrix of batch b) v [dim] for the batch's points x, y."""
        raise NotImplementedError

    def _batch_matmat(self, b, x, y, V: torch.Tensor) -> torch.Tensor:
        prod = self.batch_product(b, x, y)
        if V.shape[1] == 1:
            return prod(V[:, 0])[:, None]
        return torch.cat([vmap(prod, in_dims=1, out_dims=1)(c) for c in V.split(self.chunk, dim=1)], 1)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """A V for V [dim, k], in one pass over the data."""
        if V.dim() != 2 or V.shape[0] != self.dim:
            raise MeasureError(f"matmat takes a matrix [{self.dim}, k]; got shape {list(V.shape)}")
        V = V.to(self.device, self.dtype)
        with torch.no_grad(), precision.strict_fp32():
            return self.mean_over_batches(lambda b, x, y: self._batch_matmat(b, x, y, V))

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """A v for a flat vector v [dim]."""
        if v.dim() != 1:
            raise MeasureError(f"matvec takes a vector [{self.dim}]; got shape {list(v.shape)}")
        return self.matmat(v[:, None])[:, 0]

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matvec(v) if v.dim() == 1 else self.matmat(v)

    def to_scipy(self, dtype=np.float64):
        """This operator as a scipy.sparse.linalg.LinearOperator (symmetric): NumPy vectors and matrices in and out
        in `dtype` (float64 by default), the products in the model's dtype on its device."""
        from scipy.sparse.linalg import LinearOperator

        def mm(a):
            a = np.asarray(a)
            out = self.matmat(torch.as_tensor(a.reshape(self.dim, -1).astype(np.float64)))
            return out.detach().cpu().double().numpy().astype(dtype).reshape(a.shape)
        return LinearOperator(self.shape, matvec=mm, rmatvec=mm, matmat=mm, rmatmat=mm, dtype=dtype)

    def dense(self, chunk: int = 64) -> torch.Tensor:
        """The full matrix [dim, dim] (float64), column by column: dim products in passes of `chunk` columns.
        Refused above DENSE_MAX_DIM parameters."""
        check_dense(self.dim)
        eye = torch.eye(self.dim, dtype=torch.float64)
        cols = [self.matmat(eye[:, i:i + chunk]).double().cpu() for i in range(0, self.dim, chunk)]
        return torch.cat(cols, 1)

    def gradient(self) -> torch.Tensor:
        """The gradient of the loss over the data, flat [dim]."""
        with torch.no_grad():
            return self.mean_over_batches(lambda b, x, y: self.flatten(grad(self._batch_loss(x, y))(self.params)))

    def loss(self) -> float:
        """The loss over the data."""
        with torch.no_grad():
            return float(self.mean_over_batches(lambda b, x, y: self._batch_loss(x, y)(self.params)))

    def _batch_loss(self, x, y):
        return lambda params: self._loss(self.forward(x, params), y)


def forward_ad_works(loss, out: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether forward-mode AD runs through the loss's gradient: it does not through F.mse_loss in torch 2.13
    ('ZeroTensors are immutable'), and the products then take reverse-over-reverse AD instead (slower for one
    vector, the same for many)."""
    try:
        jvp(grad(lambda o: loss(o, y)), (out,), (torch.ones_like(out),))
        return True
    except RuntimeError:
        return False


def hessian_product(f, primal, forward: bool = True):
    """A function t -> (the Hessian of the scalar function f at primal) t, primal and t alike (tensors or dicts of
    them): forward-over-reverse (the jvp of the gradient), or reverse-over-reverse (the vjp of the gradient, its
    graph built once) with forward=False."""
    g = grad(f)
    if forward:
        return lambda t: jvp(g, (primal,), (t,))[1]
    _, pull = vjp(g, primal)
    return lambda t: pull(t)[0]


def check_dense(dim: int) -> None:
    """A MeasureError before any work if a dense [dim, dim] matrix (dim products) is too large to be meant."""
    if dim > DENSE_MAX_DIM:
        raise MeasureError(f"a dense matrix of {dim} parameters would take {dim} products and "
                           f"{dim * dim * 8 / 2**30:.1f} GiB; the exact forms are for models of at most "
                           f"{DENSE_MAX_DIM} parameters (restrict the operator to a layer, or use the estimators)")


class HessianOperator(CurvatureOperator):
    """The Hessian of the loss over the data: products by torch.func (the jvp of the gradient)."""

    kind = "Hessian"

    def batch_product(self, b, x, y):
        hvp = hessian_product(self._batch_loss(x, y), self.params, self.forward_ad)
        return lambda v: self.flatten(hvp(self.unflatten(v)))


class MatrixOperator:
    """A given symmetric matrix (a torch tensor, a NumPy array or anything with matmat, such as a
    scipy.sparse.linalg.LinearOperator) behind the same interface as the curvature operators (dim, matvec,
    matmat, @), for the estimators of spectrum.py and trace.py."""

    kind = "matrix"

    def __init__(self, a, dtype=torch.float64):
        self.a = torch.as_tensor(a, dtype=dtype) if isinstance(a, (np.ndarray, torch.Tensor)) else a
        self.dim = int(a.shape[0])
        self.shape = (self.dim, self.dim)
        self.dtype, self.device = dtype, torch.device("cpu")

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        if torch.is_tensor(self.a):
            return self.a @ V.to(self.a.dtype)
        return torch.as_tensor(self.a.matmat(V.double().numpy()), dtype=self.dtype)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v[:, None])[:, 0]

    def __matmul__(self, v):
        return self.matvec(v) if v.dim() == 1 else self.matmat(v)

    def dense(self) -> torch.Tensor:
        check_dense(self.dim)
        return self.matmat(torch.eye(self.dim, dtype=torch.float64)).double()

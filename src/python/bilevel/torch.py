"""PyTorch adapters: a drop-in for qpth's ``QPFunction`` with exact one-sided derivatives.

Import this module only with PyTorch installed; ``import bilevel`` does not need it.

:func:`QPFunction` has qpth's interface: ``QPFunction(...)(Q, p, G, h, A, b)`` solves, for every
item of a batch,

    z* = argmin_z ½ zᵀQz + pᵀz   subject to   Gz ≤ h,  Az = b,

each input either batched (a leading batch axis) or shared by the batch, an empty tensor meaning
"absent" (no rows; its gradient is ``None``), and returns ``z*`` of shape ``(nBatch, nz)``. The
backward pass gives the gradient of every input that requires one, computed in Rust (float64,
on the CPU, the items on all cores) from the exact derivative of Prop. 2 of "Bilevel Programs
Meet Deep Learning" (arXiv 2105.07231): where a constraint is weakly active (active with a zero
multiplier) it is the one-sided derivative along the descent direction, with the branch each row
took, where qpth and other layers return an average of the two sides.

Results and gradients come back on the input's device and in its dtype (``z*`` in ``Q``'s, or
float64 for an integer ``Q``). A shared input's gradient is the sum over the batch (autograd's
rule); ``reduce="mean"`` divides it by the batch size, as qpth does.

``Q``, ``G`` and ``A`` may be sparse tensors (COO, CSR or CSC, 2-D shared; COO 3-D batched; no
dense dimensions; a SciPy sparse matrix is taken as a constant COO tensor): the call then takes
the sparse path of the Rust layer (Clarabel's identification, a sparse ``LDLᵀ`` of the working
set's KKT system refined to rounding, the same factor for the derivative), nothing ``n × n`` is
formed, and each sparse input's gradient lives on its pattern (the gradient with respect to its
stored values), in its layout (COO and CSR; a CSC input's gradient is COO, since autograd
accumulates no CSC gradients). Dense inputs in such a call keep dense gradients. Every ``mode``
runs on the sparse path (the finite-``beta`` ones on its offset problem).

The Fenchel-BP activations (:func:`fenchel_relu`, :func:`fenchel_hard_sigmoid`,
:func:`fenchel_hard_tanh`, :func:`fenchel_box`, :func:`fenchel_softmax`) are
``torch.autograd.Function``s whose backward pass is Fenchel back-propagation's quotient
``(f(u) − f(u − βg))/β`` (Eq. 51, the paper's Appendix C) instead of the chain rule: the same
rule as :mod:`bilevel.jax` and the Rust ``Activation.fenchel_vjp`` (exact at a bound), in pure
torch (any device).

Example::

    import torch
    from bilevel.torch import QPFunction
    Q = torch.eye(3, dtype=torch.float64)
    p = torch.tensor([[-1.0, 0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    G, h = -torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    e = torch.empty(0, dtype=torch.float64)
    z = QPFunction()(Q, p, G, h, e, e)     # projection of −p onto z ≥ 0: [[1, 0, 0]]
    z.sum().backward()
    p.grad                                 # one-sided at the tie z₃ = 0
"""

import numpy as np
import torch

from ._bilevel import qp_solve
from .errors import _complex_error, _dimension_error, _input_error
from .sparse import _Entries
from .sparse import _solve as _solve_sparse

__all__ = [
    "QPFunction",
    "fenchel_relu",
    "fenchel_hard_sigmoid",
    "fenchel_hard_tanh",
    "fenchel_box",
    "fenchel_softmax",
]

_BASE = (2, 1, 2, 1, 2, 1)  # dimensions of Q, p, G, h, A, b when shared
_NAMES = ("Q", "p", "G", "h", "A", "b")


def _mode(mode):
    if mode == "limit":
        return "limit"
    if isinstance(mode, tuple) and len(mode) == 2 and mode[0] in ("contrastive", "centered"):
        beta = float(mode[1])
        if not (np.isfinite(beta) and beta > 0):
            raise ValueError(f"mode: beta must be finite and > 0, got {mode[1]!r}")
        return (mode[0], beta)
    raise ValueError(
        f"mode: expected \"limit\", (\"contrastive\", beta) or (\"centered\", beta), got {mode!r}")


def _result_dtype(Q):
    """The result's dtype: ``Q``'s when it is a floating-point type (qpth's rule), else float64
    (an integer ``Q`` must not truncate ``z*``)."""
    return Q.dtype if Q.dtype.is_floating_point else torch.float64


class _QP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, settings, *inputs):
        reference = inputs[0]
        arrays = [x.detach().to("cpu", torch.float64).numpy() for x in inputs]
        z, batch = qp_solve(*arrays, threads=settings["threads"],
                            feasibility_tol=settings["feasibility_tol"],
                            multiplier_tol=settings["multiplier_tol"])
        ctx.batch = batch
        ctx.settings = settings
        ctx.shapes = [(x.numel() == 0, x.dim() == base) for x, base in zip(inputs, _BASE)]
        ctx.meta = [(x.dtype, x.device) for x in inputs]
        settings["last"] = batch
        return torch.from_numpy(z).to(device=reference.device, dtype=_result_dtype(reference))

    @staticmethod
    def backward(ctx, grad_z):
        g = grad_z.detach().to("cpu", torch.float64).numpy()
        grads = ctx.batch.gradients(np.ascontiguousarray(g), ctx.settings["mode"])
        ctx.settings["last_branches"] = grads["branches"]
        out = []
        for name, (empty, shared), (dtype, device), needed in zip(
                _NAMES, ctx.shapes, ctx.meta, ctx.needs_input_grad[1:]):
            if empty or not needed:
                out.append(None)
                continue
            d = grads[name]
            if shared:
                d = _reduce(d, d.shape[1:], ctx.settings["reduce"])
            d = torch.from_numpy(np.asarray(d))
            out.append(d.to(device=device, dtype=dtype))
        return (None, *out)


_SPARSE = (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc)


class _Matrix:
    """``Q``, ``G`` or ``A`` on the sparse route: its entries for each item (one set for all when
    shared) and the way its gradient goes back, on the input's own pattern and layout."""

    def __init__(self, name, x, n):
        self.name, self.layout, self.shape = name, x.layout, tuple(x.shape)
        self.meta = (x.dtype, x.device)
        self.batch = None
        x = x.detach().to("cpu", torch.float64)
        if x.layout == torch.strided:
            self._dense(x, n)
        elif x.layout in _SPARSE:
            self._sparse(x)
        else:
            raise _input_error(name, f"layout {x.layout} is not supported (use COO, CSR or CSC)")

    def _dense(self, x, n):
        if x.numel() == 0 and x.dim() <= 2:  # absent: no rows
            self.entries = [_Entries.empty(self.name, n)]
        elif x.dim() == 2:
            self.entries = [_Entries.dense(self.name, x.numpy())]
        elif x.dim() == 3:
            self.batch = x.shape[0]
            self.entries = [_Entries.dense(self.name, a) for a in x.numpy()]
        else:
            raise _dimension_error(self.name, "2 or 3 dimensions (shared or batched)",
                                   f"shape {self.shape}")

    def _sparse(self, x):
        coo = x.to_sparse_coo().coalesce()
        if coo.dense_dim() != 0 or x.dim() not in (2, 3):
            raise _dimension_error(self.name, "2 or 3 sparse dimensions (shared or batched)",
                                   f"shape {self.shape} with {coo.dense_dim()} dense")
        self.indices = coo.indices()
        idx, values = self.indices.numpy(), coo.values().numpy()
        if x.dim() == 2:
            self.entries = [_Entries(self.name, idx[0], idx[1], values, x.shape)]
            return
        if self.layout != torch.sparse_coo:  # its gradient could not take its layout back
            raise _input_error(self.name, "a batched (3-D) sparse input must be COO")
        self.batch = x.shape[0]
        self.masks = [idx[0] == i for i in range(self.batch)]
        self.entries = [_Entries(self.name, idx[1][m], idx[2][m], values[m], x.shape[1:])
                        for m in self.masks]

    def item(self, i):
        return self.entries[0 if self.batch is None else i]

    def gradient(self, grads, reduce):
        """The gradient for the items' gradient dicts ``grads``: summed (``reduce="sum"``) or
        averaged over the batch when shared, in the input's layout, dtype and device."""
        given = [self.item(i).given(g[self.name]) for i, g in enumerate(grads)]
        if self.batch is None:
            values = _reduce(given, (len(self.entries[0].where),), reduce)
        elif self.layout == torch.strided:
            values = np.stack(given) if given else np.zeros(self.shape)
        else:
            values = np.zeros(self.indices.shape[1])
            for m, v in zip(self.masks, given):
                values[m] = v
        dtype, device = self.meta
        if self.layout == torch.strided:
            return torch.from_numpy(values.reshape(self.shape)).to(device=device, dtype=dtype)
        out = torch.sparse_coo_tensor(self.indices, torch.from_numpy(values), self.shape,
                                      check_invariants=False).coalesce()
        if self.layout == torch.sparse_csr:
            out = out.to_sparse_csr()  # a CSC input's stays COO: autograd accumulates no CSC
        return out.to(device=device, dtype=dtype)


class _Vector:
    """``p``, ``h`` or ``b`` on the sparse route: shared, batched or absent (empty)."""

    def __init__(self, name, x):
        self.name, self.shape, self.meta = name, tuple(x.shape), (x.dtype, x.device)
        self.values = x.detach().to("cpu", torch.float64).numpy()
        self.batch = x.shape[0] if x.dim() == 2 else None
        if x.dim() > 2:
            raise _dimension_error(name, "1 or 2 dimensions (shared or batched)",
                                   f"shape {self.shape}")

    def item(self, i):
        return self.values.reshape(-1) if self.batch is None else self.values[i]

    def gradient(self, grads, reduce):
        given = [g[self.name] for g in grads]
        if self.batch is None:
            values = _reduce(given, self.shape, reduce)
        else:
            values = np.stack(given) if given else np.zeros(self.shape)
        dtype, device = self.meta
        return torch.from_numpy(values.reshape(self.shape)).to(device=device, dtype=dtype)


def _reduce(given, shape, reduce):
    """A shared input's gradient from its items' ``given``: their sum, or their mean for
    ``reduce="mean"`` (zero for a batch of zero items, as the sum)."""
    total = np.sum(given, axis=0) if len(given) else np.zeros(shape)
    return total / len(given) if reduce == "mean" and len(given) else total


def _batch_size(readers):
    """The batch size the batched inputs agree on (1 if none is batched)."""
    batch = None
    for r in readers:
        if r.batch is not None and batch is not None and r.batch != batch[0]:
            raise _dimension_error(f"{r.name} (batch size)", f"{batch[0]}, as {batch[1]}'s",
                                   r.batch)
        if r.batch is not None and batch is None:
            batch = (r.batch, r.name)
    return 1 if batch is None else batch[0]


class _SparseQP(torch.autograd.Function):
    """The sparse route: taken when ``Q``, ``G`` or ``A`` is a sparse tensor."""

    @staticmethod
    def forward(ctx, settings, *inputs):
        n = inputs[0].shape[-1]
        readers = [(_Matrix if k % 2 == 0 else _Vector)(name, x, *((n,) if k % 2 == 0 else ()))
                   for k, (name, x) in enumerate(zip(_NAMES, inputs))]
        batch = _batch_size(readers)
        items = [tuple(r.item(i) for r in readers) for i in range(batch)]
        tol = (settings["feasibility_tol"], settings["multiplier_tol"])
        z, handle = _solve_sparse(items, tol, settings["threads"]) if items else (
            np.zeros((0, n)), None)
        ctx.handle, ctx.readers, ctx.settings = handle, readers, settings
        ctx.absent = [x.numel() == 0 and x.layout == torch.strided for x in inputs]
        settings["last"] = handle
        reference = inputs[0]
        return torch.from_numpy(z).to(device=reference.device, dtype=_result_dtype(reference))

    @staticmethod
    def backward(ctx, grad_z):
        g = np.ascontiguousarray(grad_z.detach().to("cpu", torch.float64).numpy())
        handle = ctx.handle
        grads = handle.gradients(g, False, ctx.settings["mode"]) if handle is not None else []
        ctx.settings["last_branches"] = [d["branches"] for d in grads]
        reduce = ctx.settings["reduce"]
        out = [None if absent or not needed else r.gradient(grads, reduce)
               for r, absent, needed in zip(ctx.readers, ctx.absent, ctx.needs_input_grad[1:])]
        return (None, *out)


def _from_scipy(x):
    """A SciPy sparse matrix (anything with ``tocoo()`` that is not a tensor) as a constant
    float64 COO tensor (data, not a parameter: no gradient flows to it); anything else as is."""
    if isinstance(x, torch.Tensor) or not hasattr(x, "tocoo"):
        return x
    coo = x.tocoo()
    indices = torch.from_numpy(np.stack([coo.row, coo.col]).astype(np.int64))
    values = torch.from_numpy(np.asarray(coo.data, dtype=np.float64))
    return torch.sparse_coo_tensor(indices, values, coo.shape, check_invariants=True)


def QPFunction(eps=1e-12, verbose=0, notImprovedLim=3, maxIter=20, check_Q_spd=True, *,
               mode="limit", reduce="sum", threads=None, feasibility_tol=1e-9,
               multiplier_tol=1e-9):
    """qpth's ``QPFunction``: returns a function ``f(Q, p, G, h, A, b) -> z*`` (see the module
    docs for the problem, shapes and conventions).

    qpth's own arguments (``eps``, ``verbose``, ``notImprovedLim``, ``maxIter``,
    ``check_Q_spd``) are accepted so that a script runs unchanged; they do not apply (the
    active-set solver here is exact, and ``Q`` is always checked). ``mode`` chooses the
    backward pass: ``"limit"`` (the exact derivative, one-sided at weakly active rows),
    ``("contrastive", beta)`` (Def. 1's surrogate gradient) or ``("centered", beta)``.
    ``reduce`` is ``"sum"`` (autograd's rule for shared inputs) or ``"mean"`` (qpth's, the sum
    divided by the batch size). ``threads`` (default: all cores) and the activity tolerances
    are those of :class:`bilevel.QuadraticLayer`.

    The returned function has ``.status()``: per item of the last call, the solver, its
    iterations and residual and each inequality row's activity, and after a backward pass the
    ``branches`` it took at weakly active rows.
    

    Example (projection of ``−p`` onto ``z ≥ 0``; the second unit sits on its bound, a tie)::

        >>> import torch
        >>> from bilevel.torch import QPFunction
        >>> Q = torch.eye(2, dtype=torch.float64)
        >>> p = torch.tensor([[-1.0, 0.0]], dtype=torch.float64, requires_grad=True)
        >>> G, h = -torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
        >>> e = torch.empty(0, dtype=torch.float64)              # no equalities
        >>> f = QPFunction()
        >>> z = f(Q, p, G, h, e, e)
        >>> z.tolist()
        [[1.0, 0.0]]
        >>> (-z[0, 1]).backward()    # ℓ = −z₂ lifts unit 2 off its bound: one-sided rate 1
        >>> (p.grad + 0.0).tolist()    # + 0.0: prints −0.0 as 0.0
        [[0.0, 1.0]]
        >>> f.status()[0]["activity"], f.status()[0]["branches"]
        (['inactive', 'weak'], [None, 'leaves'])
    """
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce: expected \"sum\" or \"mean\", got {reduce!r}")
    settings = {"mode": _mode(mode), "reduce": reduce, "threads": threads,
                "feasibility_tol": float(feasibility_tol),
                "multiplier_tol": float(multiplier_tol), "last": None, "last_branches": None}

    def qp(Q, p, G, h, A, b):
        inputs = tuple(_from_scipy(x) for x in (Q, p, G, h, A, b))
        for name, x in zip(_NAMES, inputs):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
            if x.is_complex():
                raise _complex_error(name, x.dtype)
        if any(x.layout != torch.strided for x in inputs):
            return _SparseQP.apply(settings, *inputs)
        return _QP.apply(settings, *inputs)

    def status():
        if settings["last"] is None:
            return []
        rows = settings["last"].status()
        if settings["last_branches"] is not None:
            for row, branches in zip(rows, settings["last_branches"]):
                row["branches"] = branches
        return rows

    qp.status = status
    return qp


def _beta(beta):
    beta = float(beta)
    if not (np.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be finite and > 0, got {beta!r}")
    return beta


class _FenchelBox(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, lo, hi, beta):
        ctx.save_for_backward(u)
        ctx.box = (lo, hi, beta)
        return torch.clamp(u, lo, hi)

    @staticmethod
    def backward(ctx, g):
        (u,), (lo, hi, beta) = ctx.saved_tensors, ctx.box
        # The Rust rule: where u − βg is inside the box (decided as u − bound vs βg, without
        # rounding u − βg) the quotient is (f(u) − u)/β + g, exactly g for u in the box.
        step = beta * g
        fu = torch.clamp(u, lo, hi)
        inside = (u - lo > step) & (u - hi < step)
        quotient = torch.where(inside, (fu - u) / beta + g,
                               (fu - torch.clamp(u - step, lo, hi)) / beta)
        return quotient, None, None, None


def _fenchel_box(lo, hi, beta):
    beta = _beta(beta)

    def f(u):
        return _FenchelBox.apply(u, lo, hi, beta)

    return f


def fenchel_relu(beta):
    """``relu`` whose backward pass is Fenchel BP's ``(relu(u) − relu(u − βg))/β`` (Eq. 51).

    Example (``g = 1``, ``β = 0.5``)::

        >>> import torch
        >>> from bilevel.torch import fenchel_relu
        >>> u = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
        >>> fenchel_relu(0.5)(u).sum().backward()
        >>> u.grad.tolist()
        [0.0, 0.0, 1.0]
    """
    return _fenchel_box(0.0, float("inf"), beta)


def fenchel_hard_sigmoid(beta):
    """``clamp(u, 0, 1)`` with the Fenchel-BP backward pass.

    Example (``g = 1``, ``β = 0.5``)::

        >>> import torch
        >>> from bilevel.torch import fenchel_hard_sigmoid
        >>> u = torch.tensor([0.25, 1.0], dtype=torch.float64, requires_grad=True)
        >>> fenchel_hard_sigmoid(0.5)(u).sum().backward()
        >>> u.grad.tolist()
        [0.5, 1.0]
    """
    return _fenchel_box(0.0, 1.0, beta)


def fenchel_hard_tanh(beta):
    """``clamp(u, −1, 1)`` with the Fenchel-BP backward pass.

    Example (``g = 1``, ``β = 0.5``)::

        >>> import torch
        >>> from bilevel.torch import fenchel_hard_tanh
        >>> u = torch.tensor([-0.75, 1.0], dtype=torch.float64, requires_grad=True)
        >>> fenchel_hard_tanh(0.5)(u).sum().backward()
        >>> u.grad.tolist()
        [0.5, 1.0]
    """
    return _fenchel_box(-1.0, 1.0, beta)


def fenchel_box(lo, hi, beta):
    """``clamp(u, lo, hi)`` with the Fenchel-BP backward pass (``lo < hi``).

    Example (``g = 1``, ``β = 0.5``)::

        >>> import torch
        >>> from bilevel.torch import fenchel_box
        >>> u = torch.tensor([1.0, 2.25], dtype=torch.float64, requires_grad=True)
        >>> fenchel_box(0.0, 2.0, 0.5)(u).sum().backward()
        >>> u.grad.tolist()
        [1.0, 0.5]
    """
    if not lo < hi:
        raise ValueError(f"need lo < hi, got [{lo}, {hi}]")
    return _fenchel_box(float(lo), float(hi), beta)


class _FenchelSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, beta):
        ctx.save_for_backward(u)
        ctx.beta = beta
        return torch.softmax(u, dim=-1)

    @staticmethod
    def backward(ctx, g):
        (u,), beta = ctx.saved_tensors, ctx.beta
        return (torch.softmax(u, dim=-1) - torch.softmax(u - beta * g, dim=-1)) / beta, None


def fenchel_softmax(beta):
    """``softmax`` over the last axis with the Fenchel-BP backward pass
    ``(softmax(u) − softmax(u − βg))/β`` (``G`` the negative entropy on the simplex).

    Example (small ``β``: close to the chain rule's ``s ⊙ (g − sᵀg)`` = (0.25, −0.25))::

        >>> import torch
        >>> from bilevel.torch import fenchel_softmax
        >>> u = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        >>> (fenchel_softmax(1e-6)(u) * torch.tensor([1.0, 0.0], dtype=torch.float64)).sum().backward()
        >>> [round(x, 6) for x in u.grad.tolist()]
        [0.25, -0.25]
    """
    beta = _beta(beta)

    def f(u):
        return _FenchelSoftmax.apply(u, beta)

    return f

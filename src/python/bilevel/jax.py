"""JAX adapters: the QP layer and the Fenchel-BP activations as JAX functions.

Import this module only with JAX installed (``pip install jax``); ``import bilevel`` does not
need it.

- :func:`qp` is the functional QP layer ``z* = argmin ½zᵀQz + pᵀz`` s.t. ``Gz ≤ h``, ``Az = b``
  in qpth's convention (the same as :func:`bilevel.torch.QPFunction`), every input
  differentiable, under ``jax.grad``, ``jax.jit``, ``jax.vmap`` and with its batch sharded over
  devices (``jax.sharding``: under ``jax.jit`` XLA gathers a host callback's operands to one
  device; under ``jax.shard_map`` each device solves its own items); ``Q``, ``G``, ``A`` may be
  sparse (``BCOO``, ``BCSR``).
- :func:`qp_layer` turns a :class:`bilevel.QuadraticLayer` into a function ``theta -> z*(theta)``
  usable under ``jax.grad``, ``jax.jit`` and ``jax.vmap``. Its forward and backward passes run
  on the host in Rust (``jax.pure_callback``); its backward pass is the one-sided derivative of
  Prop. 2 (``mode="limit"``), or a finite-β contrastive surrogate gradient (Def. 1,
  ``("contrastive", beta)``; ``("centered", beta)`` for the mean of ``+β`` and ``−β``).
  Reverse mode only (``jax.custom_vjp``).
- :func:`fenchel_relu`, :func:`fenchel_hard_sigmoid`, :func:`fenchel_hard_tanh`,
  :func:`fenchel_box` and :func:`fenchel_softmax` are activations whose backward pass is the
  Fenchel-BP rule ``(f(u) − f(u − β·g)) / β`` (Eq. 51, the paper's Appendix C) instead of the
  chain rule: pure JAX, so they run wherever JAX runs (GPUs, many devices) and train the Fig. 1
  MLP with any JAX optimizer.

At a tie (a ReLU input exactly 0, a weakly active constraint) ``jax.nn.relu`` passes 0 whatever
the cotangent; the one-sided derivative passes ``min(g, 0)`` — the branch the descent step
takes. That rule is not linear in the cotangent, so these functions define reverse mode only.
"""

import jax
import jax.numpy as jnp
import numpy as np

from ._bilevel import QuadraticLayer, qp_solve
from .errors import _complex_error, _dimension_error, _input_error
from .sparse import _Entries
from .sparse import _solve as _solve_sparse

__all__ = [
    "qp",
    "qp_layer",
    "fenchel_relu",
    "fenchel_hard_sigmoid",
    "fenchel_hard_tanh",
    "fenchel_box",
    "fenchel_softmax",
]


def _mode(mode):
    if mode == "limit":
        return "limit", None
    if isinstance(mode, tuple) and len(mode) == 2 and mode[0] in ("contrastive", "centered"):
        beta = float(mode[1])
        if not (np.isfinite(beta) and beta > 0):
            raise ValueError(f"mode: beta must be finite and > 0, got {mode[1]!r}")
        return mode[0], beta
    raise ValueError(
        f"mode: expected \"limit\", (\"contrastive\", beta) or (\"centered\", beta), got {mode!r}")


def qp_layer(Q, c, B, A=None, b=None, A_eq=None, b_eq=None, *, mode="limit", backend=None):
    """The layer ``z*(θ) = argmin_z ½zᵀQz − zᵀ(Bθ + c)`` s.t. ``Az ≥ b``, ``A_eq z = b_eq`` as a
    JAX function of ``theta`` (shape ``(p,)`` or ``(..., p)``; result ``(n,)`` or ``(..., n)``,
    in ``theta``'s dtype; the Rust side computes in float64).

    ``mode`` chooses the backward pass for a cotangent ``g``: ``"limit"`` (Prop. 2, one-sided at
    weakly active rows: the gradient of ``⟨g, z*⟩`` along the descent direction),
    ``("contrastive", beta)`` (Def. 1's gradient for ``ℓ(z) = gᵀz``: equilibrium propagation's
    rule) or ``("centered", beta)``. The returned function carries the underlying
    :class:`bilevel.QuadraticLayer` as ``.layer`` (for ``derive``: status, branches, residual).
    ``backend`` is the layer's (``None``: sparse for SciPy sparse data, else dense); a sparse
    layer gives the ``"limit"`` mode.
    

    Example (ReLU as a QP, ``z* = max(θ, 0)``, with a tie in the second unit)::

        >>> import jax, jax.numpy as jnp, numpy as np
        >>> from bilevel.jax import qp_layer
        >>> relu = qp_layer(np.eye(2), np.zeros(2), B=np.eye(2), A=np.eye(2), b=np.zeros(2))
        >>> theta = jnp.array([1.0, 0.0])
        >>> relu(theta).tolist()
        [1.0, 0.0]
        >>> # ℓ = −z₂: raising θ₂ lifts unit 2 off its bound (the descent side), rate −1
        >>> (jax.grad(lambda t: -relu(t)[1])(theta) + 0.0).tolist()
        [0.0, -1.0]
    """
    layer = QuadraticLayer(Q, c, B, A, b, A_eq, b_eq, backend=backend)
    kind, beta = _mode(mode)
    n, p = layer.n, layer.p

    def host_solve(theta):
        t = np.asarray(theta, dtype=np.float64)
        flat = t.reshape(-1, p)
        z = np.stack([s["z"] for s in layer.solve(flat)]) if flat.shape[0] else np.zeros((0, n))
        return z.reshape(t.shape[:-1] + (n,)).astype(theta.dtype)

    def host_vjp(theta, g):
        t = np.asarray(theta, dtype=np.float64)
        flat_t = t.reshape(-1, p)
        flat_g = np.asarray(g, dtype=np.float64).reshape(-1, n)
        if flat_t.shape[0] == 0:
            out = np.zeros((0, p))
        elif kind == "limit":
            out = layer.vjp(flat_t, flat_g)
        else:
            out = np.stack([layer.surrogate(ti, gi, beta, kind=kind)["grad_theta"]
                            for ti, gi in zip(flat_t, flat_g)])
        return out.reshape(t.shape).astype(theta.dtype)

    def check(theta):
        if theta.ndim == 0 or theta.shape[-1] != p:
            raise ValueError(f"theta: expected shape (..., {p}), got {theta.shape}")

    @jax.custom_vjp
    def solve(theta):
        check(theta)
        shape = jax.ShapeDtypeStruct(theta.shape[:-1] + (n,), theta.dtype)
        z = jax.pure_callback(host_solve, shape, theta, vmap_method="broadcast_all")
        return _varying(_axes(theta), z)

    def forward(theta):
        return solve(theta), theta

    def backward(theta, g):
        shape = jax.ShapeDtypeStruct(theta.shape, theta.dtype)
        d = jax.pure_callback(host_vjp, shape, theta, g, vmap_method="broadcast_all")
        return (_varying(_axes(theta), d),)

    solve.defvjp(forward, backward)

    def apply(theta):
        theta = jnp.asarray(theta)
        if not jnp.issubdtype(theta.dtype, jnp.floating):
            theta = theta.astype(jnp.result_type(float))
        return solve(theta)

    apply.layer = layer
    apply.__doc__ = f"z*(theta) of {layer!r}; backward: {mode!r}."
    return apply


_BASE = (2, 1, 2, 1, 2, 1)  # dimensions of Q, p, G, h, A, b without batch axes
_NAMES = ("Q", "p", "G", "h", "A", "b")


def _present(k, a):
    """Whether input ``k`` (of Q, p, G, h, A, b) is given: ``Q`` and ``p`` always (an empty one is
    a batch of zero items), the rows ``G, h, A, b`` unless empty."""
    return k < 2 or a.size > 0


def _broadcast_items(arrays):
    """The inputs as items: the broadcast batch shape of their leading axes, and every present
    input broadcast to ``(items, ...)`` (absent, i.e. empty, inputs stay empty)."""
    lead = [a.shape[:a.ndim - base] for k, (a, base) in enumerate(zip(arrays, _BASE))
            if _present(k, a)]
    shape = np.broadcast_shapes(*lead) if lead else ()
    count = int(np.prod(shape)) if shape else 1
    items = []
    for k, (a, base) in enumerate(zip(arrays, _BASE)):
        if not _present(k, a):
            items.append(np.zeros((0,)))
        else:
            full = np.broadcast_to(a, shape + a.shape[a.ndim - base:])
            items.append(np.ascontiguousarray(full.reshape((count,) + a.shape[a.ndim - base:])))
    return shape, items


def _unbroadcast(g, shape, out_shape):
    """A gradient of every item ``(items, ...)`` summed back to an input's own ``shape``."""
    full = g.reshape(out_shape + g.shape[1:])
    extra = full.ndim - len(shape)
    full = full.sum(axis=tuple(range(extra))) if extra else full
    axes = tuple(i for i, (n, m) in enumerate(zip(shape, full.shape)) if n == 1 and m != 1)
    return full.sum(axis=axes, keepdims=True).reshape(shape) if axes else full.reshape(shape)


def _varying(axes, y):
    """``y`` typed as varying over the manual mesh ``axes`` (inside ``jax.shard_map``: a host
    callback's result is per device, but ``jax.pure_callback`` types it as replicated, and a
    cotangent must vary as its primal does). Outside ``shard_map`` ``axes`` is empty."""
    missing = axes - _axes(y)
    return jax.lax.pcast(y, tuple(sorted(missing)), to="varying") if missing else y


def _axes(x):
    """The manual mesh axes ``x`` varies over (empty outside ``jax.shard_map``)."""
    kind = getattr(jax.typeof(x), "manual_axis_type", None) if hasattr(jax, "typeof") else None
    return frozenset(kind.varying) if kind is not None else frozenset()


def qp(Q, p, G, h, A, b, *, mode="limit", threads=None):
    """``z* = argmin_z ½zᵀQz + pᵀz`` s.t. ``Gz ≤ h``, ``Az = b`` (qpth's convention, as
    :func:`bilevel.torch.QPFunction`), differentiable in every input.

    Each input has its own shape or extra leading batch axes (broadcast against the others'); an
    empty array means no rows (``G, h`` or ``A, b`` absent; their gradient is empty). The result
    is ``(*batch, n)``, ``(1, n)`` without batch axes (qpth's ``(nBatch, nz)``), in ``Q``'s
    dtype. Solved on the host in Rust (float64, the items on ``threads`` threads) through
    ``jax.pure_callback``, so it works under ``jax.jit``, ``jax.vmap`` and ``jax.shard_map``
    (each device's items on its own call). ``mode`` chooses the backward pass: ``"limit"`` (exact, one-sided at weakly active rows, Prop. 2),
    ``("contrastive", beta)`` or ``("centered", beta)`` (Def. 1's surrogates). Reverse mode
    only; the backward pass solves the items again.

    ``Q``, ``G`` and ``A`` may be ``jax.experimental.sparse`` matrices (``BCOO``, or ``BCSR``
    and SciPy sparse matrices, converted), 2-D and shared by the batch (batch the dense inputs,
    or use ``jax.vmap``): the call then takes the sparse Rust layer (nothing ``n × n`` is
    formed, in every ``mode``) and gives each sparse input's cotangent on its stored entries
    (the cotangent of its ``data``). An error of the host solve (infeasible
    data, say) arrives as ``jax.errors.JaxRuntimeError`` carrying the package's error and
    message.
    

    Example (projection of ``−p`` onto ``z ≥ 0``; the second unit sits on its bound, a tie)::

        >>> import jax, jax.numpy as jnp
        >>> from bilevel.jax import qp
        >>> Q, G, h, e = jnp.eye(2), -jnp.eye(2), jnp.zeros(2), jnp.zeros((0,))
        >>> p = jnp.array([-1.0, 0.0])
        >>> qp(Q, p, G, h, e, e).tolist()
        [[1.0, 0.0]]
        >>> # ℓ = −z₂ lifts unit 2 off its bound: the one-sided rate of p₂ is 1
        >>> (jax.grad(lambda p: -qp(Q, p, G, h, e, e)[0, 1])(p) + 0.0).tolist()
        [0.0, 1.0]
    """
    kind, beta = _mode(mode)
    grad_mode = "limit" if kind == "limit" else (kind, beta)
    if any(_sparse_matrix(x) is not None for x in (Q, G, A)):
        return _qp_sparse((Q, p, G, h, A, b), threads, grad_mode)
    inputs = [jnp.asarray(x) for x in (Q, p, G, h, A, b)]
    for name, x in zip(_NAMES, inputs):
        if jnp.issubdtype(x.dtype, jnp.complexfloating):
            raise _complex_error(name, x.dtype)
    dtype = inputs[0].dtype if jnp.issubdtype(inputs[0].dtype, jnp.floating) else jnp.float64
    inputs = [x.astype(dtype) for x in inputs]
    for k, (name, x, base) in enumerate(zip(_NAMES, inputs, _BASE)):
        if _present(k, x) and x.ndim < base:
            raise _dimension_error(name, f"at least {base} dimensions", f"shape {x.shape}")
    lead = [x.shape[:x.ndim - base] for k, (x, base) in enumerate(zip(inputs, _BASE))
            if _present(k, x)]
    shape = np.broadcast_shapes(*lead) if lead else ()
    n = inputs[0].shape[-1]
    out_shape = (shape or (1,)) + (n,)

    def host_solve(*arrays):
        batch, items = _broadcast_items([np.asarray(a, dtype=np.float64) for a in arrays])
        z, _ = qp_solve(*items, threads=threads)
        return z.reshape(out_shape).astype(dtype)

    def host_grads(*args):
        arrays = [np.asarray(a, dtype=np.float64) for a in args[:6]]
        g = np.asarray(args[6], dtype=np.float64).reshape(-1, n)
        batch, items = _broadcast_items(arrays)
        _, solved = qp_solve(*items, threads=threads)
        grads = solved.gradients(np.ascontiguousarray(g), grad_mode)
        out = []
        for name, a in zip(("Q", "p", "G", "h", "A", "b"), arrays):
            if a.size == 0:
                out.append(np.zeros(a.shape, dtype=dtype))
            else:
                out.append(_unbroadcast(grads[name], a.shape, batch or (1,)).astype(dtype))
        return tuple(out)

    spec = jax.ShapeDtypeStruct(out_shape, dtype)
    return _callback_vjp(host_solve, host_grads, spec, range(6))(*inputs)


def _callback_vjp(host_solve, host_grads, out_spec, differentiable):
    """The function of the flat inputs ``xs`` whose value is ``host_solve(*xs)`` and whose VJP
    for a cotangent ``g`` is ``host_grads(*xs, g)``: the cotangents of the inputs listed in
    ``differentiable`` (the others, integer indices, get none), both on the host through
    ``jax.pure_callback`` (one call per item under ``jax.vmap``)."""
    @jax.custom_vjp
    def solve(*xs):
        z = jax.pure_callback(host_solve, out_spec, *xs, vmap_method="sequential")
        return _varying(frozenset().union(*map(_axes, xs)), z)

    def forward(*xs):
        return solve(*xs), xs

    def backward(xs, g):
        specs = tuple(jax.ShapeDtypeStruct(xs[k].shape, xs[k].dtype) for k in differentiable)
        grads = jax.pure_callback(host_grads, specs, *xs, g, vmap_method="sequential")
        out = [np.zeros(x.shape, dtype=jax.dtypes.float0) for x in xs]
        for k, d in zip(differentiable, grads):
            out[k] = _varying(_axes(xs[k]), d)
        return tuple(out)

    solve.defvjp(forward, backward)
    return solve


def _sparse_matrix(x):
    """``x`` as a ``jax.experimental.sparse.BCOO`` if it is a sparse matrix (a ``BCSR`` is
    converted differentiably, a SciPy matrix as a constant), else ``None``."""
    try:
        from jax.experimental import sparse
    except ImportError:  # pragma: no cover - part of every JAX release
        return None
    if isinstance(x, sparse.BCSR):
        return x.to_bcoo()
    if isinstance(x, sparse.BCOO):
        return x
    if hasattr(x, "tocoo") and not isinstance(x, jax.Array):  # SciPy: a constant BCOO
        coo = x.tocoo()
        indices = jnp.stack([jnp.asarray(coo.row), jnp.asarray(coo.col)], axis=1)
        return sparse.BCOO((jnp.asarray(coo.data), indices), shape=coo.shape)
    return None


def _sparse_slots(inputs):
    """The inputs of a sparse call as flat arrays (a sparse matrix as its ``data`` and its
    ``indices``) and, per input, its sparse shape or ``None`` (dense)."""
    dtype = inputs[0].dtype if jnp.issubdtype(inputs[0].dtype, jnp.floating) else jnp.float64
    flat, shapes = [], []
    for name, x in zip(_NAMES, inputs):
        m = _sparse_matrix(x)
        if m is None:
            x = jnp.asarray(x)
            if jnp.issubdtype(x.dtype, jnp.complexfloating):
                raise _complex_error(name, x.dtype)
            base = _BASE[len(shapes)]
            if _present(len(shapes), x) and x.ndim < base:
                raise _dimension_error(name, f"at least {base} dimensions", f"shape {x.shape}")
            flat.append(x.astype(dtype))
            shapes.append(None)
            continue
        if m.n_batch or m.n_dense or m.ndim != 2:
            raise _dimension_error(name, "a 2-D sparse matrix (shared; batch the dense inputs "
                                   "or use jax.vmap)", f"shape {m.shape} with {m.n_batch} batch"
                                   f" and {m.n_dense} dense dimensions")
        if jnp.issubdtype(m.dtype, jnp.complexfloating):
            raise _complex_error(name, m.dtype)
        flat += [m.data.astype(dtype), m.indices]
        shapes.append(tuple(m.shape))
    return flat, shapes, dtype


def _unflatten(flat, shapes):
    """Per input: its array, or ``(data, indices)`` for a sparse one."""
    it = iter(flat)
    return [next(it) if shape is None else (next(it), next(it)) for shape in shapes]


def _lead(inputs, shapes):
    """The broadcast batch shape of the dense inputs' leading axes (sparse ones are shared)."""
    lead = [x.shape[:x.ndim - base] for k, (x, base, shape) in
            enumerate(zip(inputs, _BASE, shapes)) if shape is None and _present(k, x)]
    return np.broadcast_shapes(*lead) if lead else ()


def _sparse_items(inputs, shapes, n):
    """The items of a sparse call from its host inputs: the batch shape, each item's
    ``(Q, p, G, h, A, b)`` with ``_Entries`` for the matrices, and the sparse inputs' entries
    (``None`` for dense ones)."""
    batch = _lead(inputs, shapes)
    count = int(np.prod(batch)) if batch else 1
    columns, sparse = [], []
    for k, (name, x, base, shape) in enumerate(zip(_NAMES, inputs, _BASE, shapes)):
        entries = None
        if shape is not None:
            entries = _Entries(name, x[1][:, 0], x[1][:, 1], x[0], shape)
            columns.append([entries] * count)
        elif not _present(k, x):
            columns.append([_Entries.empty(name, n) if base == 2 else np.zeros(0)] * count)
        else:
            own = x.shape[x.ndim - base:]
            items = np.broadcast_to(x, batch + own).reshape((count,) + own)
            columns.append([_Entries.dense(name, a) if base == 2 else a for a in items])
        sparse.append(entries)
    return batch, list(zip(*columns)), sparse


def _sparse_cotangents(inputs, shapes, solved, grads, dtype):
    """The cotangent of every differentiable flat array (a sparse input's ``data``, each dense
    input) from the items' gradient dicts ``grads``."""
    batch, items, sparse = solved
    out = []
    for k, (name, x, shape, entries) in enumerate(zip(_NAMES, inputs, shapes, sparse)):
        if shape is not None:
            given = [entries.given(d[name]) for d in grads]
            out.append(np.sum(given, axis=0) if given else np.zeros(x[0].shape))
        elif x.size == 0 or not grads:
            out.append(np.zeros(x.shape))
        else:
            per = [item[k].given(d[name]).reshape(item[k].shape) if _BASE[k] == 2 else d[name]
                   for item, d in zip(items, grads)]
            out.append(_unbroadcast(np.stack(per), x.shape, batch or (1,)))
    return tuple(a.astype(dtype) for a in out)


def _qp_sparse(inputs, threads, grad_mode):
    """:func:`qp` when ``Q``, ``G`` or ``A`` is sparse: the sparse Rust layer, each sparse
    input's cotangent on its entries (``data``) in ``grad_mode``, the dense ones' as in
    :func:`qp`."""
    flat, shapes, dtype = _sparse_slots(inputs)
    n = shapes[0][1] if shapes[0] is not None else flat[0].shape[-1]
    out_shape = (_lead(_unflatten(flat, shapes), shapes) or (1,)) + (n,)
    tol = (1e-9, 1e-9)

    def solved(arrays):
        host = _unflatten([np.asarray(a) for a in arrays], shapes)
        parts = _sparse_items(host, shapes, n)
        z, handle = _solve_sparse(parts[1], tol, threads) if parts[1] else (np.zeros((0, n)), None)
        return host, parts, z, handle

    def host_solve(*arrays):
        return solved(arrays)[2].reshape(out_shape).astype(dtype)

    def host_grads(*args):
        host, parts, _, handle = solved(args[:-1])
        g = np.asarray(args[-1], dtype=np.float64).reshape(-1, n)
        g = np.ascontiguousarray(g)
        grads = handle.gradients(g, False, grad_mode) if handle is not None else []
        return _sparse_cotangents(host, shapes, parts, grads, dtype)

    differentiable = [k for k, x in enumerate(flat) if jnp.issubdtype(x.dtype, jnp.floating)]
    spec = jax.ShapeDtypeStruct(out_shape, dtype)
    return _callback_vjp(host_solve, host_grads, spec, differentiable)(*flat)


def _fenchel_box(lo, hi, beta):
    beta = float(beta)
    if not (np.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be finite and > 0, got {beta!r}")

    @jax.custom_vjp
    def f(u):
        return jnp.clip(u, lo, hi)

    def forward(u):
        return jnp.clip(u, lo, hi), u

    def backward(u, g):
        # (f(u) − f(u − βg))/β, the rule of `Activation.fenchel_vjp` (Rust): where u − βg is
        # inside the box (decided as u − bound vs βg, without rounding u − βg) it is
        # (f(u) − u)/β + g — exactly g for u in the box or on its bound.
        step = beta * g
        fu = jnp.clip(u, lo, hi)
        inside = (u - lo > step) & (u - hi < step)
        quotient = jnp.where(inside, (fu - u) / beta + g, (fu - jnp.clip(u - step, lo, hi)) / beta)
        return (quotient,)

    f.defvjp(forward, backward)
    return f


def fenchel_relu(beta):
    """``relu`` whose backward pass is Fenchel BP's ``(relu(u) − relu(u − βg))/β`` (Eq. 51).

    Example (``g = 1``, ``β = 0.5``)::

        >>> import jax, jax.numpy as jnp
        >>> from bilevel.jax import fenchel_relu
        >>> jax.grad(lambda u: fenchel_relu(0.5)(u).sum())(jnp.array([-1.0, 0.0, 2.0])).tolist()
        [0.0, 0.0, 1.0]
    """
    return _fenchel_box(0.0, np.inf, beta)


def fenchel_hard_sigmoid(beta):
    """``clip(u, 0, 1)`` with the Fenchel-BP backward pass.

    Example (``g = 1``, ``β = 0.5``)::

        >>> import jax, jax.numpy as jnp
        >>> from bilevel.jax import fenchel_hard_sigmoid
        >>> jax.grad(lambda u: fenchel_hard_sigmoid(0.5)(u).sum())(jnp.array([0.25, 1.0])).tolist()
        [0.5, 1.0]
    """
    return _fenchel_box(0.0, 1.0, beta)


def fenchel_hard_tanh(beta):
    """``clip(u, −1, 1)`` with the Fenchel-BP backward pass.

    Example (``g = 1``, ``β = 0.5``)::

        >>> import jax, jax.numpy as jnp
        >>> from bilevel.jax import fenchel_hard_tanh
        >>> jax.grad(lambda u: fenchel_hard_tanh(0.5)(u).sum())(jnp.array([-0.75, 1.0])).tolist()
        [0.5, 1.0]
    """
    return _fenchel_box(-1.0, 1.0, beta)


def fenchel_box(lo, hi, beta):
    """``clip(u, lo, hi)`` with the Fenchel-BP backward pass (``lo < hi``).

    Example (``g = 1``, ``β = 0.5``)::

        >>> import jax, jax.numpy as jnp
        >>> from bilevel.jax import fenchel_box
        >>> jax.grad(lambda u: fenchel_box(0.0, 2.0, 0.5)(u).sum())(jnp.array([1.0, 2.25])).tolist()
        [1.0, 0.5]
    """
    if not lo < hi:
        raise ValueError(f"need lo < hi, got [{lo}, {hi}]")
    return _fenchel_box(float(lo), float(hi), beta)


def fenchel_softmax(beta):
    """``softmax`` over the last axis with the Fenchel-BP backward pass
    ``(softmax(u) − softmax(u − βg))/β`` (``G`` the negative entropy on the simplex).

    Example (small ``β``: close to the chain rule's ``s ⊙ (g − sᵀg)`` = (0.25, −0.25))::

        >>> import jax, jax.numpy as jnp
        >>> from bilevel.jax import fenchel_softmax
        >>> g = jnp.array([1.0, 0.0])
        >>> d = jax.grad(lambda u: (fenchel_softmax(1e-3)(u) * g).sum())(jnp.zeros(2))
        >>> [round(x, 3) for x in d.tolist()]
        [0.25, -0.25]
    """
    beta = float(beta)
    if not (np.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be finite and > 0, got {beta!r}")

    @jax.custom_vjp
    def f(u):
        return jax.nn.softmax(u, axis=-1)

    def forward(u):
        return jax.nn.softmax(u, axis=-1), u

    def backward(u, g):
        return ((jax.nn.softmax(u, axis=-1) - jax.nn.softmax(u - beta * g, axis=-1)) / beta,)

    f.defvjp(forward, backward)
    return f

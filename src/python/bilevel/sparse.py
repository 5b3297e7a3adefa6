"""Sparse QP layers: ``min ½zᵀQz + pᵀz`` s.t. ``Gz ≤ h``, ``Az = b`` with SciPy sparse ``Q``,
``G``, ``A`` (needs SciPy).

Nothing ``n × n`` is formed: Clarabel identifies the active set on the sparse data, a sparse
``LDLᵀ`` of the working set's KKT system gives the exact point (refined to rounding) and is
reused for the derivative. The derivative is the exact one of Props. 1-2 of "Bilevel Programs
Meet Deep Learning" (arXiv 2105.07231), one-sided at weakly active rows with the branch each
took, and the gradients with respect to ``Q``, ``G``, ``A`` are returned on their sparsity
patterns (the gradient with respect to the stored values).

Example::

    import numpy as np, scipy.sparse as sp, bilevel
    n = 10_000
    Q = sp.diags([-np.ones(n - 1), 2.5 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1])
    G = sp.eye(n)                                 # z ≤ 0.1
    z, sol = bilevel.sparse_qp_solve(Q, -np.ones(n), G, np.full(n, 0.1))
    grads = sol.gradients(np.ones(n))             # ∂(Σ z)/∂Q, ∂p, ∂G, ∂h, ...
    grads["G"]                                    # a scipy.sparse.csc_array like G
"""

from __future__ import annotations

import numpy as np

from . import _bilevel
from .errors import _dimension_error, _input_error

__all__ = ["sparse_qp_solve", "SparseQpSolution"]


def _scipy():
    try:
        import scipy.sparse as sp  # type: ignore[import-untyped]
    except ImportError as e:  # pragma: no cover - SciPy is installed with JAX and in CI
        raise ImportError("bilevel.sparse_qp_solve needs SciPy (pip install scipy)") from e
    return sp


class _Entries:
    """One sparse matrix argument as the Rust side takes it: ``parts``, its canonical compressed
    columns ``(nrows, ncols, indptr, indices, data)`` (repeated entries summed, rows sorted in
    every column), and ``where``: the position in ``data`` of each entry as given, so that the
    gradient of given entry ``k`` is ``grad_data[where[k]]`` (the same for every copy of a
    repeated entry). Every front end (SciPy, torch, JAX) goes through this one definition."""

    __slots__ = ("parts", "where", "shape")

    def __init__(self, name, rows, cols, values, shape):
        nrows, ncols = (int(shape[0]), int(shape[1]))
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        cols = np.asarray(cols, dtype=np.int64).reshape(-1)
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if not (len(rows) == len(cols) == len(values)):
            raise _input_error(name, f"{len(rows)} row indices, {len(cols)} column indices "
                                     f"and {len(values)} values")
        outside = (rows < 0) | (rows >= nrows) | (cols < 0) | (cols >= ncols)
        if outside.any():
            k = int(np.argmax(outside))
            raise _input_error(name, f"entry ({rows[k]}, {cols[k]}) is outside its shape "
                                     f"({nrows}, {ncols})")
        key = cols * nrows + rows  # column-major order: exact in int64 for any stored size
        unique, self.where = np.unique(key, return_inverse=True)
        data = np.bincount(self.where, weights=values, minlength=len(unique))
        indptr = np.zeros(ncols + 1, dtype=np.int64)
        np.cumsum(np.bincount(unique // max(nrows, 1), minlength=ncols), out=indptr[1:])
        self.parts = (nrows, ncols, indptr, unique % max(nrows, 1), data)
        self.shape = (nrows, ncols)

    @classmethod
    def dense(cls, name, a):
        """Every entry of the 2-D array ``a``, zeros included (row-major), so that its gradient
        is the whole dense gradient."""
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2:
            raise _dimension_error(name, "2 dimensions", f"shape {a.shape}")
        rows, cols = np.indices(a.shape)
        return cls(name, rows, cols, a, a.shape)

    @classmethod
    def empty(cls, name, n):
        """No rows of ``n`` columns (an absent ``G`` or ``A``)."""
        return cls(name, [], [], [], (0, n))

    def given(self, grad_parts):
        """The gradient of each entry as given, from the gradient's ``(indptr, indices, data)``
        on the canonical pattern."""
        return np.asarray(grad_parts[2])[self.where]


def _solve(items, tol, threads):
    """``z`` ``(items, n)`` and the batch handle for items ``(Q, p, G, h, A, b)`` whose matrices
    are :class:`_Entries`."""
    packed = [(Q.parts, p, G.parts, h, A.parts, b) for Q, p, G, h, A, b in items]
    return _bilevel._sparse_qp_solve(packed, tol, threads)


def _scipy_entries(name, m, shape):
    """``m`` (any SciPy sparse matrix or array-like) as :class:`_Entries`; ``None`` is ``shape``
    without entries."""
    if m is None:
        return _Entries.empty(name, shape[1])
    sp = _scipy()
    if not sp.issparse(m):
        m = np.asarray(m, dtype=float)
        if m.ndim != 2:
            raise TypeError(f"{name} must be a 2-D (sparse) matrix, got shape {m.shape}")
    coo = sp.coo_array(m)
    if coo.ndim != 2:
        raise TypeError(f"{name} must be a 2-D (sparse) matrix, got shape {coo.shape}")
    return _Entries(name, coo.row, coo.col, coo.data, coo.shape)


class SparseQpSolution:
    """A solved sparse layer (from :func:`sparse_qp_solve`), kept with its factorization for
    :meth:`gradients`."""

    def __init__(self, handle, shapes):
        self._handle = handle
        self._shapes = shapes

    def gradients(self, grad_z, *, condition=False, mode=None):
        """The gradients of ``ℓ`` for ``grad_z = ∂ℓ/∂z*`` (length ``n``) in ``mode``: ``None``
        or ``"limit"`` the exact ones (one-sided at weakly active rows, Prop. 2),
        ``("contrastive", beta)`` or ``("centered", beta)`` Def. 1's surrogates (from the
        sparse offset problem, accurate at every ``beta``). A dict with ``Q``, ``G``, ``A`` as
        ``scipy.sparse.csc_array`` on the inputs' patterns (repeated entries summed, rows
        sorted), ``p``, ``h``, ``b`` as arrays, ``branches`` (``"stays"``, ``"leaves"`` or
        ``None`` per row of ``G``: at a weakly active row, whether it stays active for the
        loss; all ``None`` at finite ``beta``), ``method`` and ``condition``: with
        ``condition=True`` (the limit only) the 2-norm condition estimate of the
        (row-equilibrated) KKT matrix that determined ``ż``, else ``nan`` (the estimate costs up
        to a few times the gradients)."""
        sp = _scipy()
        g = np.asarray(grad_z, dtype=float)
        if g.ndim != 1:
            raise _dimension_error("grad_z", "a vector (1-D array)", f"shape {g.shape}")
        (out,) = self._handle.gradients(g[None], bool(condition), mode)
        for k in ("Q", "G", "A"):
            indptr, indices, data = out[k]
            out[k] = sp.csc_array((data, indices, indptr), shape=self._shapes[k])
        return out

    def status(self):
        """A dict with the ``solver``, its ``iterations``, the KKT ``residual`` (∞-norm, rows
        equilibrated) and each row of ``G``'s ``activity`` (``"strong"``, ``"weak"``,
        ``"inactive"``)."""
        return self._handle.status()[0]


def sparse_qp_solve(Q, p, G=None, h=None, A=None, b=None, *, feasibility_tol=1e-9,
                    multiplier_tol=1e-9):
    """``z* = argmin ½zᵀQz + pᵀz`` s.t. ``Gz ≤ h``, ``Az = b`` for one item with sparse data.

    ``Q`` (symmetric positive definite, both triangles stored), ``G`` and ``A`` are SciPy sparse
    matrices (or dense array-likes, converted); ``G, h`` and ``A, b`` may be ``None`` (no rows).
    Returns ``(z, solution)``: ``z`` as a float64 array and a :class:`SparseQpSolution` whose
    ``gradients(grad_z)`` gives the gradients of every input. Errors are the classes of
    :mod:`bilevel.errors` (a shape that does not fit names the argument; an infeasible problem
    is reported only with a Farkas certificate verified on the data). For a batch, and for
    gradients through autograd, pass sparse tensors to :func:`bilevel.torch.QPFunction` or
    :func:`bilevel.jax.qp`.

    >>> import numpy as np, scipy.sparse as sp, bilevel
    >>> # projection of −p onto z ≥ 0 (G = −I, h = 0): the second unit sits on its bound
    >>> z, sol = bilevel.sparse_qp_solve(sp.eye(2), [-1.0, 0.0], -sp.eye(2), np.zeros(2))
    >>> z.tolist(), sol.status()["activity"]
    ([1.0, 0.0], ['inactive', 'weak'])
    >>> grads = sol.gradients([0.0, -1.0])   # ℓ = −z₂ lifts unit 2 off its bound
    >>> np.round(grads["p"], 12).tolist(), grads["branches"]
    ([0.0, 1.0], [None, 'leaves'])
    >>> grads["G"].toarray().round(12).tolist()   # on G's pattern (the diagonal)
    [[0.0, 0.0], [0.0, 0.0]]
    """
    if Q is None:
        raise TypeError("Q is required")
    Qe = _scipy_entries("Q", Q, None)
    n = Qe.shape[1]
    Ge = _scipy_entries("G", G, (0, n))
    Ae = _scipy_entries("A", A, (0, n))
    h = np.zeros(0) if h is None else h
    b = np.zeros(0) if b is None else b
    z, handle = _solve([(Qe, p, Ge, h, Ae, b)], (feasibility_tol, multiplier_tol), 1)
    shapes = {"Q": Qe.shape, "G": Ge.shape, "A": Ae.shape}
    return z[0], SparseQpSolution(handle, shapes)

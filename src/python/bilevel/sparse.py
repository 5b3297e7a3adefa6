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

__all__ = ["sparse_qp_solve", "SparseQpSolution"]


def _scipy():
    try:
        import scipy.sparse as sp  # type: ignore[import-untyped]
    except ImportError as e:  # pragma: no cover - SciPy is installed with JAX and in CI
        raise ImportError("bilevel.sparse_qp_solve needs SciPy (pip install scipy)") from e
    return sp


def _csc(name, m, shape):
    """``m`` (any SciPy sparse matrix or array-like) as canonical CSC: duplicates summed, rows
    sorted in every column; ``None`` is ``shape`` without entries."""
    sp = _scipy()
    if m is None:
        return sp.csc_array(shape)
    if not sp.issparse(m):
        m = np.asarray(m, dtype=float)
        if m.ndim != 2:
            raise TypeError(f"{name} must be a 2-D (sparse) matrix, got shape {m.shape}")
    out = sp.csc_array(m, dtype=float, copy=True)
    out.sum_duplicates()
    out.sort_indices()
    return out


def _parts(m):
    return (m.shape[0], m.shape[1], m.indptr, m.indices, m.data)


class SparseQpSolution:
    """A solved sparse layer (from :func:`sparse_qp_solve`), kept with its factorization for
    :meth:`gradients`."""

    def __init__(self, handle, patterns):
        self._handle = handle
        self._shapes = {k: m.shape for k, m in patterns.items()}

    def gradients(self, grad_z):
        """The exact gradients of ``ℓ`` for ``grad_z = ∂ℓ/∂z*`` (length ``n``): a dict with
        ``Q``, ``G``, ``A`` as ``scipy.sparse.csc_array`` on the inputs' patterns, ``p``, ``h``,
        ``b`` as arrays, ``branches`` (``"stays"``, ``"leaves"`` or ``None`` per row of ``G``:
        at a weakly active row, whether it stays active for the loss) and ``method``."""
        sp = _scipy()
        out = self._handle.gradients(np.asarray(grad_z, dtype=float))
        for k in ("Q", "G", "A"):
            indptr, indices, data = out[k]
            out[k] = sp.csc_array((data, indices, indptr), shape=self._shapes[k])
        return out

    def status(self):
        """A dict with the ``solver``, its ``iterations``, the KKT ``residual`` (∞-norm, rows
        equilibrated) and each row of ``G``'s ``activity`` (``"strong"``, ``"weak"``,
        ``"inactive"``)."""
        return self._handle.status()


def sparse_qp_solve(Q, p, G=None, h=None, A=None, b=None, *, feasibility_tol=1e-9,
                    multiplier_tol=1e-9):
    """``z* = argmin ½zᵀQz + pᵀz`` s.t. ``Gz ≤ h``, ``Az = b`` for one item with sparse data.

    ``Q`` (symmetric positive definite, both triangles stored), ``G`` and ``A`` are SciPy sparse
    matrices (or dense array-likes, converted); ``G, h`` and ``A, b`` may be ``None`` (no rows).
    Returns ``(z, solution)``: ``z`` as a float64 array and a :class:`SparseQpSolution` whose
    ``gradients(grad_z)`` gives the gradients of every input. Errors are the classes of
    :mod:`bilevel.errors` (a shape that does not fit names the argument; an infeasible problem
    is reported only with a Farkas certificate verified on the data).

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
    Qc = _csc("Q", Q, None)
    n = Qc.shape[1]
    Gc = _csc("G", G, (0, n))
    Ac = _csc("A", A, (0, n))
    h = np.zeros(0) if h is None else h
    b = np.zeros(0) if b is None else b
    item = (_parts(Qc), p, _parts(Gc), h, _parts(Ac), b)
    z, handle = _bilevel._sparse_qp_solve(item, (feasibility_tol, multiplier_tol))
    return z, SparseQpSolution(handle, {"Q": Qc, "G": Gc, "A": Ac})

"""bilevel: bilevel programs and their exact one-sided derivatives.

Python bindings of the Rust crate ``bilevel`` (C. Zach, "Bilevel Programs Meet Deep Learning",
arXiv 2105.07231). NumPy arrays in and out (float64; any array-like is converted), the GIL
released around every solve, every Rust error raised as the class of :mod:`bilevel.errors` of
the same name with the same message.

- :class:`QuadraticLayer`: ``z*(θ) = argmin_z ½zᵀQz − zᵀ(Bθ + c)`` s.t. ``Az ≥ b``,
  ``A_eq z = b_eq``, with ``solve``, ``derive`` (what ``bilevel derive`` returns), the one-sided
  ``vjp`` and ``jvp`` of Prop. 2, and the finite-β ``surrogate`` of Defs. 1-2.
- :class:`Activation`: the closed-form layers (ReLU, hard sigmoid, hard tanh, box, softmax) with
  their one-sided ``vjp`` (Prop. 2) and Fenchel-BP quotient ``fenchel_vjp`` (Eq. 51).
- :class:`Network`: a feed-forward network read as the deeply nested program of Eq. 21, with
  ``gradient(method, beta, x, target)`` for every row of Table 1 (value, gradients, status).
- :func:`verify`: the checks of ``bilevel verify`` as a list of dicts.
- :mod:`bilevel.jax` (needs JAX): the layer as a JAX function under ``jax.grad`` / ``jax.jit``.
- :mod:`bilevel.torch` (needs PyTorch): ``QPFunction``, a drop-in for qpth's, every input
  differentiable, one-sided at weakly active rows.
- :func:`qp_solve`: batched QP layers ``min ½zᵀQz + pᵀz`` s.t. ``Gz ≤ h``, ``Az = b`` (each
  input batched or shared) and a :class:`QpBatch` with the gradients of every input.
- :func:`sparse_qp_solve` (needs SciPy): the same layer with ``scipy.sparse`` ``Q``, ``G``,
  ``A`` (to n = 10,000 and beyond), gradients on the inputs' sparsity patterns.

Example::

    import numpy as np, bilevel
    # ReLU as a QP: z* = max(θ, 0), here with a tie in the second unit.
    layer = bilevel.QuadraticLayer(np.eye(2), np.zeros(2), B=np.eye(2), A=np.eye(2), b=np.zeros(2))
    out = layer.derive([1.0, 0.0], [2.0, -3.0])
    out["constraints"], out["branches"]   # ['inactive', 'weak'], [None, 'leaves']
    out["grad_theta"]                      # array([ 2., -3.]): the unit leaves its bound
"""

from . import errors
from ._bilevel import (
    Activation, Network, QpBatch, QuadraticLayer, __version__, qp_solve, verify, verify_ids,
)
from .errors import *  # noqa: F401,F403
from .sparse import SparseQpSolution, sparse_qp_solve

__all__ = [
    "QuadraticLayer", "Activation", "Network", "qp_solve", "QpBatch", "sparse_qp_solve",
    "SparseQpSolution", "verify", "verify_ids",
    "errors", "__version__",
] + errors.__all__

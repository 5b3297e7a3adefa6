"""`bilevel.sparse_qp_solve` against independent answers: the dense `qp_solve` on the same data,
a banded problem of 10,000 units built backwards from its solution (with exact ties) and
one-sided differences of the forward solve, SciPy inputs in every format, and bad input."""

import numpy as np
import pytest
import scipy.sparse as sp  # CI installs SciPy: a missing one is a failure, not a skip

import bilevel
from conftest import banded_qp, constructed_qp


def test_sparse_items_agree_with_the_dense_layer():
    rng = np.random.default_rng(0)
    for _ in range(6):
        data, z_star, labels = constructed_qp(rng)
        Q, p, G, h, A, b = (data[k] for k in ("Q", "p", "G", "h", "A", "b"))
        z, sol = bilevel.sparse_qp_solve(sp.csc_array(Q), p, sp.csr_array(G), h, sp.coo_array(A), b)
        zd, batch = bilevel.qp_solve(Q, p[None], G, h, A, b)
        assert np.abs(z - z_star).max() < 1e-12
        assert np.abs(z - zd[0]).max() < 1e-12
        assert sol.status()["activity"] == labels
        for sign in (1.0, -1.0):
            g = sign * rng.uniform(-1, 1, 9)
            gs = sol.gradients(g)
            gd = batch.gradients(g[None])
            for key in ("Q", "G", "A"):
                assert isinstance(gs[key], sp.csc_array)
                on_pattern = gd[key][0] * (data[key] != 0)  # G has zeros: off its pattern
                assert np.abs(gs[key].toarray() - on_pattern).max() < 1e-10, key
            for key in ("p", "h", "b"):
                assert np.abs(gs[key] - gd[key][0]).max() < 1e-10, key
            assert gs["branches"] == gd["branches"][0]


def banded(n):
    """The shared banded chain as SciPy matrices."""
    (qr, qc, qv), p, (gr, gc, gv, m), h, z, labels = banded_qp(n)
    Q = sp.csc_array((qv, (qr, qc)), shape=(n, n))
    return Q, p, sp.csc_array((gv, (gr, gc)), shape=(m, n)), h, z, labels


def test_ten_thousand_units_with_one_sided_rates():
    n = 10_000
    Q, p, G, h, z_star, labels = banded(n)
    z, sol = bilevel.sparse_qp_solve(Q, p, G, h)
    assert np.abs(z - z_star).max() < 1e-12
    assert sol.status()["activity"] == labels
    g = np.random.default_rng(1).uniform(-1, 1, n)
    grads = sol.gradients(g)
    eps = 1e-7
    moved, _ = bilevel.sparse_qp_solve(Q, p + eps * g, G, h)
    rate = (moved - z) / eps
    assert np.abs(grads["p"] - rate).max() < 1e-5 * (1 + np.abs(rate).max())
    assert {"stays", "leaves"} <= set(b for b in grads["branches"] if b)
    # The gradient of G lives on G's pattern.
    assert (grads["G"].indptr == G.indptr).all() and (grads["G"].indices == G.indices).all()


def test_bad_input_is_an_error_naming_the_argument():
    Q, G = sp.eye(2, format="csc"), -sp.eye(2, format="csc")
    with pytest.raises(bilevel.DimensionMismatchError, match="p"):
        bilevel.sparse_qp_solve(Q, np.zeros(3), G, np.zeros(2))
    with pytest.raises(bilevel.NonFiniteError, match="h"):
        bilevel.sparse_qp_solve(Q, np.zeros(2), G, np.array([0.0, np.nan]))
    with pytest.raises(bilevel.NotPositiveDefiniteError):
        bilevel.sparse_qp_solve(sp.diags([1.0, -1.0]), np.zeros(2), G, np.zeros(2))
    with pytest.raises(bilevel.InfeasibleError, match="verified"):
        bad_G = sp.csc_array(np.array([[1.0, 0.0], [-1.0, 0.0]]))
        bilevel.sparse_qp_solve(Q, np.zeros(2), bad_G, np.array([-1.0, -1.0]))
    z, sol = bilevel.sparse_qp_solve(Q, np.zeros(2), G, np.zeros(2))
    with pytest.raises(bilevel.DimensionMismatchError, match="grad_z"):
        sol.gradients(np.zeros(3))
    with pytest.raises(TypeError):
        bilevel.sparse_qp_solve(np.zeros(3), np.zeros(3))

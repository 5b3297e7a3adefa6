"""`bilevel.jax.qp` with sparse `Q`, `G`, `A` (`jax.experimental.sparse` BCOO and BCSR) against
the dense call on the same data (every cotangent, at strong, weak and inactive rows, both
branches), under jax.jit and jax.vmap, a banded layer of 10,000 units against its constructed
solution and one-sided differences, and bad input."""

import os

import numpy as np
import pytest

if os.environ.get("BILEVEL_REQUIRE_JAX"):
    import jax  # CI: a missing JAX is a failure, not a skip
else:
    jax = pytest.importorskip("jax", reason="the JAX adapters need `pip install jax`")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from jax.experimental import sparse  # noqa: E402

import bilevel  # noqa: E402
import bilevel.jax as bj  # noqa: E402
from conftest import banded_qp, constructed_qp  # noqa: E402

ORDER = ("Q", "p", "G", "h", "A", "b")


def with_sparse(data, names, kind=sparse.BCOO):
    """The inputs with the matrices `names` sparse; the sparse ones' patterns by name."""
    out, patterns = [], {}
    for name in ORDER:
        x = jnp.asarray(data[name])
        if name in names:
            x = kind.fromdense(x)
            patterns[name] = x
        out.append(x)
    return out, patterns


def cotangents(inputs, g, mode="limit"):
    """The cotangent of every input (a sparse one's: of its data) of ⟨g, qp(...)⟩."""
    def loss(*leaves):
        it = iter(leaves)
        xs = [type(x)((next(it),) + tuple(x._bufs[1:]), shape=x.shape)
              if isinstance(x, (sparse.BCOO, sparse.BCSR)) else next(it) for x in inputs]
        return jnp.sum(g * bj.qp(*xs, mode=mode))
    leaves = [x.data if isinstance(x, (sparse.BCOO, sparse.BCSR)) else x for x in inputs]
    return jax.grad(loss, argnums=tuple(range(6)))(*leaves), loss, leaves


@pytest.mark.parametrize("names", [("Q", "G", "A"), ("G",)])
def test_sparse_inputs_give_the_dense_calls_cotangents_on_their_patterns(names):
    rng = np.random.default_rng(11)
    for _ in range(3):
        data, z_star, labels = constructed_qp(rng)
        data = dict(data, p=np.stack([data["p"], data["p"] + 0.0]))  # a batch of two items
        dense_inputs = [jnp.asarray(data[k]) for k in ORDER]
        sparse_inputs, patterns = with_sparse(data, names)
        np.testing.assert_allclose(bj.qp(*sparse_inputs)[0], z_star, atol=1e-12)
        for sign in (1.0, -1.0):
            g = jnp.asarray(sign * rng.uniform(-1, 1, (2, 9)))
            expected, _, _ = cotangents(dense_inputs, g)
            found, loss, leaves = cotangents(sparse_inputs, g)
            for name, e, f in zip(ORDER, expected, found):
                if name in patterns:
                    idx = np.asarray(patterns[name].indices)
                    e = np.asarray(e)[idx[:, 0], idx[:, 1]]
                np.testing.assert_allclose(f, e, atol=1e-10, err_msg=name)
            jitted = jax.jit(jax.grad(loss, argnums=tuple(range(6))))(*leaves)
            for f, j in zip(found, jitted):
                np.testing.assert_array_equal(f, j)


@pytest.mark.parametrize("mode", [("contrastive", 1e-6), ("centered", 0.5)])
def test_the_finite_beta_modes_on_sparse_inputs_are_the_dense_calls(mode):
    """Def. 1's surrogates on the sparse Rust layer (its offset problem) against the dense
    call's, every cotangent on the patterns."""
    rng = np.random.default_rng(14)
    for _ in range(3):
        data, _, _ = constructed_qp(rng)
        sparse_inputs, patterns = with_sparse(data, ("Q", "G", "A"))
        for sign in (1.0, -1.0):
            g = jnp.asarray(sign * rng.uniform(-1, 1, (1, 9)))
            expected, _, _ = cotangents([jnp.asarray(data[k]) for k in ORDER], g, mode)
            found, _, _ = cotangents(sparse_inputs, g, mode)
            for name, e, f in zip(ORDER, expected, found):
                if name in patterns:
                    idx = np.asarray(patterns[name].indices)
                    e = np.asarray(e)[idx[:, 0], idx[:, 1]]
                np.testing.assert_allclose(f, e, atol=1e-10, err_msg=f"{name} {mode}")


def test_bcsr_vmap_and_a_batch_of_zero_items():
    rng = np.random.default_rng(12)
    data, z_star, _ = constructed_qp(rng)
    inputs, _ = with_sparse(data, ("G",), kind=sparse.BCSR)
    found, _, _ = cotangents(inputs, jnp.ones((1, 9)))
    expected, _, _ = cotangents([jnp.asarray(data[k]) for k in ORDER], jnp.ones((1, 9)))
    G = inputs[2].to_bcoo()
    idx = np.asarray(G.indices)
    np.testing.assert_allclose(found[2], np.asarray(expected[2])[idx[:, 0], idx[:, 1]],
                               atol=1e-10)
    ps = jnp.asarray(data["p"] + 0.1 * rng.standard_normal((4, 9)))
    one = lambda p: bj.qp(inputs[0], p, inputs[2], *inputs[3:])[0]
    np.testing.assert_allclose(jax.vmap(one)(ps), bj.qp(inputs[0], ps, *inputs[2:]),
                               atol=1e-14)
    empty = bj.qp(inputs[0], jnp.zeros((0, 9)), *inputs[2:])
    assert empty.shape == (0, 9)
    grad_G = jax.grad(lambda d: jnp.sum(bj.qp(inputs[0], jnp.zeros((0, 9)),
                                              sparse.BCOO((d, G.indices), shape=G.shape),
                                              *inputs[3:])))(G.data)
    np.testing.assert_array_equal(grad_G, np.zeros(G.nse))


def test_ten_thousand_units_under_jax_grad():
    n = 10_000
    (qr, qc, qv), p, (gr, gc, gv, m), h, z_star, labels = banded_qp(n)
    Q = sparse.BCOO((jnp.asarray(qv), jnp.stack([qr, qc], axis=1)), shape=(n, n))
    G = sparse.BCOO((jnp.asarray(gv), jnp.stack([gr, gc], axis=1)), shape=(m, n))
    e = jnp.zeros((0,))
    z = bj.qp(Q, jnp.asarray(p), G, jnp.asarray(h), e, e)[0]
    np.testing.assert_allclose(z, z_star, atol=1e-12)
    g = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, n))
    grad_p = jax.grad(lambda p: jnp.dot(g, bj.qp(Q, p, G, jnp.asarray(h), e, e)[0]))(
        jnp.asarray(p))
    eps = 1e-7
    rate = (bj.qp(Q, jnp.asarray(p) + eps * g, G, jnp.asarray(h), e, e)[0] - z) / eps
    assert np.abs(grad_p - rate).max() < 1e-5 * (1 + np.abs(rate).max())


def test_bad_sparse_input_raises_the_packages_errors_naming_the_argument():
    Q = sparse.BCOO.fromdense(jnp.eye(2))
    G, h = sparse.BCOO.fromdense(-jnp.eye(2)), jnp.zeros(2)
    p, e = jnp.zeros(2), jnp.zeros((0,))
    batched = sparse.BCOO.fromdense(jnp.stack([-jnp.eye(2)] * 3), n_batch=1)
    with pytest.raises(bilevel.DimensionMismatchError, match="G"):
        bj.qp(Q, p, batched, h, e, e)
    with pytest.raises(bilevel.DimensionMismatchError, match="p"):
        bj.qp(Q, jnp.zeros(()), G, h, e, e)
    with pytest.raises(bilevel.InvalidInputError, match="complex"):
        bj.qp(Q, p, G, h.astype(jnp.complex128), e, e)
    # An error of the host solve arrives as JAX's runtime error, carrying the package's.
    with pytest.raises(jax.errors.JaxRuntimeError, match="InfeasibleError"):
        bad = sparse.BCOO.fromdense(jnp.array([[1.0, 0.0], [-1.0, 0.0]]))
        bj.qp(Q, p, bad, jnp.array([-1.0, -1.0]), e, e).block_until_ready()


def test_scipy_matrices_are_constant_sparse_data():
    import scipy.sparse as sp  # CI installs SciPy with JAX
    rng = np.random.default_rng(10)
    data, z_star, _ = constructed_qp(rng)
    inputs, _ = with_sparse(data, ("Q", "G"))
    from_scipy = [sp.csr_array(data["Q"]), jnp.asarray(data["p"]), sp.coo_array(data["G"]),
                  *[jnp.asarray(data[k]) for k in ("h", "A", "b")]]
    np.testing.assert_array_equal(bj.qp(*inputs), bj.qp(*from_scipy))
    grad_p = jax.grad(lambda p: jnp.sum(bj.qp(from_scipy[0], p, *from_scipy[2:])))(
        jnp.asarray(data["p"]))
    expected = jax.grad(lambda p: jnp.sum(bj.qp(inputs[0], p, *inputs[2:])))(
        jnp.asarray(data["p"]))
    np.testing.assert_array_equal(grad_p, expected)


def test_qp_layer_takes_a_sparse_quadratic_layer():
    import scipy.sparse as sp
    from conftest import constructed_layer
    rng = np.random.default_rng(13)
    labels = ["strong", "weak", "inactive", "weak"]
    data, theta, z_star = constructed_layer(rng, 6, 3, 4, 1, labels)
    dense = bj.qp_layer(**data)
    sparse_data = {k: (sp.csr_array(v) if k in ("Q", "B", "A", "A_eq") else v)
                   for k, v in data.items()}
    f = bj.qp_layer(**sparse_data)
    assert f.layer.backend == "sparse"
    np.testing.assert_allclose(f(theta), z_star, atol=1e-12)
    for sign in (1.0, -1.0):
        g = jnp.asarray(sign * rng.standard_normal(6))
        loss = lambda layer: (lambda t: jnp.dot(g, layer(t)))
        np.testing.assert_allclose(jax.grad(loss(f))(theta), jax.grad(loss(dense))(theta),
                                   atol=1e-10)

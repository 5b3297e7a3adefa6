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
            # The condition estimate on request (nan otherwise) is the dense layer's, whose
            # energy ½zᵀQz − zᵀθ at θ = −p with rows −Gz ≥ −h is this item.
            assert np.isnan(gs["condition"])
            layer = bilevel.QuadraticLayer(Q, np.zeros(9), B=np.eye(9), A=-G, b=-h, A_eq=A, b_eq=b)
            want = layer.derive(-p, g)["condition"]
            found = sol.gradients(g, condition=True)["condition"]
            assert abs(found / want - 1.0) < 1e-6, (found, want)


@pytest.mark.parametrize("mode", [("contrastive", 1e-9), ("contrastive", 0.3), ("centered", 2.0)])
def test_the_finite_beta_modes_are_the_dense_layers(mode):
    """Def. 1's surrogates from the sparse offset problem against the dense layer's, every
    input; no branches at finite beta; the condition estimate is the limit's only."""
    rng = np.random.default_rng(31)
    for _ in range(4):
        data, _, _ = constructed_qp(rng)
        Q, p, G, h, A, b = (data[k] for k in ("Q", "p", "G", "h", "A", "b"))
        _, sol = bilevel.sparse_qp_solve(sp.csc_array(Q), p, sp.csc_array(G), h, sp.csc_array(A), b)
        _, batch = bilevel.qp_solve(Q, p[None], G, h, A, b)
        g = rng.uniform(-1, 1, 9)
        gs = sol.gradients(g, mode=mode)
        gd = batch.gradients(g[None], mode)
        for key in ("Q", "G", "A"):
            on_pattern = gd[key][0] * (data[key] != 0)
            assert np.abs(gs[key].toarray() - on_pattern).max() < 1e-10, (key, mode)
        for key in ("p", "h", "b"):
            assert np.abs(gs[key] - gd[key][0]).max() < 1e-10, (key, mode)
        assert gs["branches"] == [None] * len(h)
        assert gs["method"].startswith("Def. 1")
        with pytest.raises(bilevel.InvalidInputError, match="condition"):
            sol.gradients(g, mode=mode, condition=True)
    with pytest.raises(bilevel.InvalidBetaError):
        sol.gradients(g, mode=(mode[0], 0.0))
    with pytest.raises(bilevel.InvalidInputError, match="mode"):
        sol.gradients(g, mode="surrogate")


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


LABELS = ["strong", "weak", "inactive", "weak", "strong", "inactive"]


def test_quadratic_layer_with_sparse_data_is_the_dense_layer():
    from conftest import constructed_layer
    rng = np.random.default_rng(21)
    for k in (0, 2):
        data, theta, z_star = constructed_layer(rng, 8, 3, 6, k, LABELS)
        dense = bilevel.QuadraticLayer(**data)
        sparse_data = {key: (sp.csr_array(v) if key in ("Q", "B", "A", "A_eq") else v)
                       for key, v in data.items()}
        layers = [bilevel.QuadraticLayer(**sparse_data),
                  bilevel.QuadraticLayer(**data, backend="sparse")]
        for layer in layers:
            assert layer.backend == "sparse" and (layer.n, layer.p, layer.m, layer.k) == (8, 3, 6, k)
            s, d = layer.solve(theta), dense.solve(theta)
            assert np.abs(s["z"] - z_star).max() < 1e-12
            assert s["constraints"] == d["constraints"] == LABELS
            for key in ("z", "multipliers", "multipliers_eq"):
                assert np.abs(s[key] - d[key]).max(initial=0.0) < 1e-10, key
            for sign in (1.0, -1.0):  # both branches at the weak rows
                g = sign * rng.standard_normal(8)
                assert np.abs(layer.vjp(theta, g) - dense.vjp(theta, g)).max() < 1e-10
                v = sign * rng.standard_normal(3)
                assert np.abs(layer.jvp(theta, v) - dense.jvp(theta, v)).max() < 1e-10
        # A batch equals its items, on one thread and on two.
        thetas = np.stack([theta, theta + 0.1, theta - 0.1])
        gs = rng.standard_normal((3, 8))
        one = layers[0].vjp(thetas, gs, threads=1)
        assert np.array_equal(one, layers[0].vjp(thetas, gs, threads=2))
        for i in range(3):
            assert np.array_equal(one[i], layers[0].vjp(thetas[i], gs[i]))
        assert isinstance(layers[0].Q, sp.csc_array)
        assert np.abs(layers[0].Q.toarray() - data["Q"]).max() == 0.0


def test_sparse_derive_is_the_dense_derive_with_gradients_on_the_data_patterns():
    from conftest import constructed_layer
    rng = np.random.default_rng(22)
    data_names = ["Q", "B", "c", "A", "b", "A_eq", "b_eq"]
    for k in (0, 2):
        data, theta, z_star = constructed_layer(rng, 8, 3, 6, k, LABELS)
        # B with about half its entries zero, c compensating: z* is unchanged.
        B = data["B"] * (rng.uniform(size=data["B"].shape) < 0.5)
        data["c"] = data["c"] + (data["B"] - B) @ theta
        data["B"] = B
        dense = bilevel.QuadraticLayer(**data)
        sparse = bilevel.QuadraticLayer(**{key: (sp.csr_array(v) if key in ("Q", "B", "A", "A_eq")
                                                 else v) for key, v in data.items()})
        names = [x for x in data_names if x in data]
        for sign, squared in [(1.0, False), (-1.0, False), (1.0, True), (-1.0, True)]:
            g = sign * rng.standard_normal(8)
            loss = ("squared", z_star - g) if squared else g
            s = sparse.derive(theta, loss, gradients=names)
            d = dense.derive(theta, loss, gradients=names)
            assert s["constraints"] == d["constraints"] == LABELS
            assert s["branches"] == d["branches"]
            assert s["surrogates"] == [] and ("QP" in s["method"]) == ("QP" in d["method"])
            assert abs(s["loss"] - d["loss"]) < 1e-10
            assert abs(s["condition"] / d["condition"] - 1.0) < 1e-6
            assert 0.0 <= s["residual"] < 1e-12 and d["residual"] < 1e-12
            for key in ("z_star", "multipliers", "multipliers_eq", "z_dot", "grad_theta"):
                assert np.abs(s[key] - d[key]).max(initial=0.0) < 1e-10, key
            for x in names:
                found, want = s[f"grad_{x}"], d[f"grad_{x}"]
                if x in ("Q", "B", "A", "A_eq"):
                    assert isinstance(found, sp.csc_array), x
                    pattern = data[x] != 0
                    # The gradient with respect to the stored values: the dense one there.
                    assert found.nnz == np.count_nonzero(pattern), x
                    found = found.toarray()
                    assert np.all(found[~pattern] == 0.0), x
                    want = np.where(pattern, want, 0.0)
                assert np.abs(found - want).max(initial=0.0) < 1e-10, x
        # A JVP request and a batch on the sparse layer, as on the dense one.
        v = rng.standard_normal(3)
        s, d = sparse.derive(theta, direction=v), dense.derive(theta, direction=v)
        assert np.abs(s["jvp"] - d["jvp"]).max() < 1e-10 and s["loss_note"] == d["loss_note"]
        thetas = np.stack([theta, theta + 0.05])
        gs = rng.standard_normal((2, 8))
        batch = sparse.derive(thetas, ("gradient", gs[0]), threads=2)
        assert len(batch) == 2 and "loss_note" in batch[0]
        one = sparse.derive(thetas[1], ("gradient", gs[0]))
        assert np.array_equal(batch[1]["grad_theta"], one["grad_theta"])


def _same_band(a, b):
    # The sparse ν is a certified lower bound of λ_min(Q) within 1/64; the dense ν is λ_min.
    assert b["bound_nu"] * (1 - 1 / 64) <= a["bound_nu"] <= b["bound_nu"]
    assert abs(a["bound_lower"] - b["bound_lower"]) < 1e-10 * (1 + abs(b["bound_lower"]))
    extra = a["bound_upper"] - b["bound_upper"]
    slack = 1e-10 * (1 + abs(b["bound_upper"]))
    assert -slack <= extra <= (b["bound_upper"] - b["bound_lower"]) / 60 + slack


def test_sparse_surrogates_are_the_dense_layers_with_the_band():
    """`derive`'s `betas` and every `surrogate` kind on the sparse layer (its offset problem)
    against the dense layer's, linear and squared losses, with Prop. 3's band; the sparse
    `derive` dict has the dense one's keys."""
    from conftest import constructed_layer
    rng = np.random.default_rng(23)
    for k in (0, 2):
        data, theta, z_star = constructed_layer(rng, 8, 3, 6, k, LABELS)
        dense = bilevel.QuadraticLayer(**data)
        sparse = bilevel.QuadraticLayer(**data, backend="sparse")
        for squared in (False, True):
            g = rng.standard_normal(8)
            loss = ("squared", z_star - g) if squared else g
            betas = [1e-8, 0.05, 3.0]
            s, d = sparse.derive(theta, loss, betas=betas), dense.derive(theta, loss, betas=betas)
            assert set(s) == set(d)
            for a, b in zip(s["surrogates"], d["surrogates"]):
                assert set(a) == set(b) and a["beta"] == b["beta"]
                for key in ("z_hat", "value", "grad_theta", "linearized_value",
                            "linearized_grad_theta"):
                    assert np.abs(a[key] - b[key]).max() < 1e-10 * (1 + a["beta"]), key
                _same_band(a, b)
            for kind in ("contrastive", "linearized", "centered"):
                beta = 0.05
                a = sparse.surrogate(theta, loss, beta, kind=kind)
                b = dense.surrogate(theta, loss, beta, kind=kind)
                assert set(a) == set(b), kind
                for key in ("value", "grad_theta", "z_hat", "z_star", "rate", "z_minus"):
                    if key in b and b[key] is not None:
                        assert np.abs(a[key] - b[key]).max() < 1e-10, (kind, key)
                if kind == "contrastive":
                    _same_band(a, b)
                else:
                    assert all(a.get(k) is None for k in ("bound_lower", "bound_nu")), kind
                assert a["residual"] < 1e-12


def test_quadratic_layer_on_ten_thousand_sparse_units():
    n = 10_000
    (qr, qc, qv), p, (gr, gc, gv, m), h, z_star, labels = banded_qp(n)
    Q = sp.csc_array((qv, (qr, qc)), shape=(n, n))
    G = sp.csc_array((gv, (gr, gc)), shape=(m, n))
    # z*(θ) = argmin ½zᵀQz − zᵀθ s.t. −Gz ≥ −h: θ = −p.
    layer = bilevel.QuadraticLayer(Q, np.zeros(n), B=sp.eye_array(n), A=-G, b=-h)
    theta = -p
    out = layer.solve(theta)
    assert np.abs(out["z"] - z_star).max() < 1e-12
    assert out["constraints"] == labels
    v = np.random.default_rng(3).uniform(-1, 1, n)
    eps = 1e-7
    rate = (layer.solve(theta + eps * v)["z"] - out["z"]) / eps
    assert np.abs(layer.jvp(theta, v) - rate).max() < 1e-5 * (1 + np.abs(rate).max())


def test_sparse_quadratic_layer_says_what_it_does_not_do():
    Q = sp.eye_array(2, format="csc")
    layer = bilevel.QuadraticLayer(Q, np.zeros(2), B=Q, A=Q, b=np.zeros(2))
    with pytest.raises(bilevel.InvalidInputError, match=r"betas\[1\]"):
        layer.derive(np.zeros(2), np.ones(2), betas=[0.1, -1.0])
    with pytest.raises(bilevel.InvalidInputError, match="gradients"):
        layer.derive(np.zeros(2), np.ones(2), gradients=["R"])
    with pytest.raises(bilevel.InvalidInputError, match="direction"):
        layer.derive(np.zeros(2), np.ones(2), direction=np.ones(2))
    with pytest.raises(bilevel.DimensionMismatchError, match="direction"):
        layer.derive(np.zeros(2), direction=np.ones(3))
    with pytest.raises(bilevel.InvalidInputError, match="kind"):
        layer.surrogate(np.zeros(2), np.ones(2), 0.1, kind="fenchel")
    with pytest.raises(bilevel.InvalidBetaError):
        layer.surrogate(np.zeros(2), np.ones(2), 0.0)
    with pytest.raises(bilevel.InvalidInputError, match="Q"):
        bilevel.QuadraticLayer(Q, np.zeros(2), backend="clarabel")
    with pytest.raises(bilevel.DimensionMismatchError, match="theta"):
        layer.solve(np.zeros(3))
    with pytest.raises(bilevel.DimensionMismatchError, match="B"):
        bilevel.QuadraticLayer(Q, np.zeros(2), B=sp.eye_array(3))
    with pytest.raises(bilevel.NotPositiveDefiniteError):
        bilevel.QuadraticLayer(sp.diags_array([1.0, -1.0]), np.zeros(2))
    with pytest.raises(bilevel.InvalidInputError, match="A, b"):
        bilevel.QuadraticLayer(Q, np.zeros(2), A=Q)


def test_a_duplicated_row_is_set_aside_on_both_backends():
    # z* = argmin ½‖z‖² − zᵀθ s.t. −z₁ ≥ −1 twice (the copy scaled by 2): the later copy is set
    # aside (weak, multiplier 0, listed as dependent) on the sparse backend as on the dense one.
    A = np.array([[-1.0, 0.0], [-2.0, 0.0]])
    data = dict(Q=np.eye(2), c=np.zeros(2), B=np.eye(2), A=A, b=np.array([-1.0, -2.0]))
    dense = bilevel.QuadraticLayer(**data)
    sparse = bilevel.QuadraticLayer(**data, backend="sparse")
    theta = np.array([2.0, 0.5])
    s, d = sparse.solve(theta), dense.solve(theta)
    assert s["constraints"] == d["constraints"] == ["strong", "weak"]
    assert s["dependent_constraints"] == d["dependent_constraints"] == [1]
    assert np.array_equal(s["multipliers"], d["multipliers"])
    for g in ([1.0, 0.0], [-1.0, 1.0]):
        ds, dd = sparse.derive(theta, g, gradients=["A", "b"]), dense.derive(theta, g, gradients=["A", "b"])
        assert ds["branches"] == dd["branches"]
        assert np.abs(ds["grad_A"].toarray() - np.where(A != 0, dd["grad_A"], 0.0)).max() < 1e-12
        assert np.abs(ds["grad_b"] - dd["grad_b"]).max() < 1e-12


def test_a_duplicated_equality_is_set_aside_on_both_backends():
    # z₁ + z₂ = 1 twice (the copy scaled by 2) and z₁ ≤ 0.25: the later copy is set aside
    # (multiplier 0, listed as dependent) on the sparse backend as on the dense one, in every
    # gradient and in the finite-β surrogates.
    A_eq = np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0]])
    data = dict(Q=np.eye(3), c=np.zeros(3), B=np.eye(3), A=np.array([[-1.0, 0.0, 0.0]]),
                b=np.array([-0.25]), A_eq=A_eq, b_eq=np.array([1.0, 2.0]))
    dense = bilevel.QuadraticLayer(**data)
    sparse = bilevel.QuadraticLayer(**data, backend="sparse")
    theta = np.array([2.0, 0.5, -1.0])
    s, d = sparse.solve(theta), dense.solve(theta)
    assert s["dependent_equalities"] == d["dependent_equalities"] == [1]
    assert np.abs(s["multipliers_eq"] - d["multipliers_eq"]).max() < 1e-12
    assert s["multipliers_eq"][1] == 0.0
    for g in ([1.0, 0.0, 0.0], [-1.0, 1.0, 0.5]):
        names = ["A_eq", "b_eq", "c"]
        ds = sparse.derive(theta, g, gradients=names, betas=[0.1])
        dd = dense.derive(theta, g, gradients=names, betas=[0.1])
        on_pattern = np.where(A_eq != 0, dd["grad_A_eq"], 0.0)
        assert np.abs(ds["grad_A_eq"].toarray() - on_pattern).max() < 1e-12
        for key in ("grad_b_eq", "grad_c"):
            assert np.abs(ds[key] - dd[key]).max() < 1e-12, key
        a, b = ds["surrogates"][0], dd["surrogates"][0]
        assert np.abs(a["grad_theta"] - b["grad_theta"]).max() < 1e-12


@pytest.mark.parametrize("with_rows", [False, True])
def test_inconsistent_duplicated_equalities_are_infeasible_on_both_backends(with_rows):
    # z₁ + z₂ = 1 and its copy ×2 = 2.001: no point; both backends say so with a certificate
    # (the sparse path used to call the system singular). At 2 + 1e-13 (within the
    # feasibility tolerance) both set the copy aside instead.
    rows = dict(A=np.array([[-1.0, 0.0, 0.0]]), b=np.array([-0.25])) if with_rows else {}
    A_eq = np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0]])
    theta = np.array([2.0, 0.5, -1.0])
    for b2, consistent in ((2.001, False), (2.0 + 1e-13, True)):
        data = dict(Q=np.eye(3), c=np.zeros(3), B=np.eye(3), A_eq=A_eq,
                    b_eq=np.array([1.0, b2]), **rows)
        layers = [bilevel.QuadraticLayer(**data, backend=b) for b in ("dense", "sparse")]
        if consistent:
            d, s = (layer.solve(theta) for layer in layers)
            assert s["dependent_equalities"] == d["dependent_equalities"] == [1]
            assert np.abs(s["z"] - d["z"]).max() < 1e-12
        else:
            for layer in layers:
                with pytest.raises(bilevel.InfeasibleError, match="certificate"):
                    layer.solve(theta)

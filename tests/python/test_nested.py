"""Activation and Network against independent computations: closed forms, the QP layer on the
same layer written as a QP, finite differences of the loss, and Cor. 2 across the methods."""

import numpy as np
import pytest

import bilevel

BOXES = {"relu": (0.0, np.inf), "hard_sigmoid": (0.0, 1.0), "hard_tanh": (-1.0, 1.0),
         ("box", -0.5, 2.0): (-0.5, 2.0), "identity": (-np.inf, np.inf)}


def exact_quotient(u, g, beta, lo, hi):
    """(clamp(u) − clamp(u − βg))/β in rational arithmetic, with u − βg rounded as the float
    computation rounds it (the quotient of the points the library actually compares)."""
    from fractions import Fraction as F

    def clamp(v):
        if np.isfinite(lo) and v < F(lo):
            return F(lo)
        if np.isfinite(hi) and v > F(hi):
            return F(hi)
        return v

    return (clamp(F(u)) - clamp(F(u) - F(beta) * F(g))) / F(beta)


def with_ties(rng, shape, lo, hi):
    u = rng.standard_normal(shape) * 2
    flat = u.reshape(-1)
    for i in range(0, flat.size, 3):  # every third unit exactly at a bound
        bound = lo if (i // 3) % 2 == 0 else hi
        if np.isfinite(bound):
            flat[i] = bound
    return u


@pytest.mark.parametrize("name", list(BOXES))
def test_box_family_closed_forms_and_one_sided_vjp(name):
    lo, hi = BOXES[name]
    act = bilevel.Activation(name)
    rng = np.random.default_rng(0)
    u = with_ties(rng, (4, 6), lo, hi)
    g = rng.standard_normal((4, 6))
    assert np.array_equal(act(u), np.clip(u, lo, hi))
    # Prop. 2 for z = clamp(u): the gradient passes where the descent step u − βg moves into
    # the box (or the unit is strictly inside), else 0.
    inside = (u > lo) & (u < hi)
    enters = ((u == lo) & (g < 0)) | ((u == hi) & (g > 0))
    assert np.array_equal(act.vjp(u, g), np.where(inside | enters, g, 0.0))
    # BP's convention: 1 strictly inside, 0 at the kinks.
    assert np.array_equal(act.derivative(u), inside.astype(float))
    # Fenchel BP's quotient (f(u) − f(u − βg))/β against exact rational arithmetic (the
    # float quotient itself loses log10(1/β) digits to cancellation).
    for beta in (1e-9, 0.3, 5.0):
        quotient = np.array([float(exact_quotient(ui, gi, beta, lo, hi))
                             for ui, gi in zip(u.ravel(), g.ravel())]).reshape(u.shape)
        np.testing.assert_allclose(act.fenchel_vjp(u, g, beta), quotient, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(act.fenchel_vjp(u, g, 1e-12), act.vjp(u, g), atol=1e-9)


@pytest.mark.parametrize("name", ["relu", "hard_sigmoid", "hard_tanh", ("box", -0.5, 2.0)])
def test_activation_vjp_equals_the_qp_layer_on_the_same_layer(name):
    # The same layer written as a QP: z = argmin ½‖z‖² − zᵀu s.t. lo ≤ z ≤ hi.
    lo, hi = BOXES[name]
    n = 6
    rows, bounds = [], []
    if np.isfinite(lo):
        rows.append(np.eye(n)); bounds.append(np.full(n, lo))
    if np.isfinite(hi):
        rows.append(-np.eye(n)); bounds.append(np.full(n, -hi))
    layer = bilevel.QuadraticLayer(np.eye(n), np.zeros(n), B=np.eye(n), A=np.vstack(rows),
                                   b=np.concatenate(bounds))
    act = bilevel.Activation(name)
    rng = np.random.default_rng(1)
    for _ in range(5):
        u = with_ties(rng, n, lo, hi)
        g = rng.standard_normal(n)
        np.testing.assert_allclose(act(u), layer.solve(u)["z"], atol=1e-12)
        np.testing.assert_allclose(act.vjp(u, g), layer.vjp(u, g), atol=1e-12)


def test_softmax_vjp_is_the_jacobian_and_fenchel_tends_to_it():
    act = bilevel.Activation("softmax")
    rng = np.random.default_rng(2)
    u, g = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    s = np.exp(u - u.max(axis=1, keepdims=True))
    s /= s.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(act(u), s, rtol=1e-14)
    jac_g = np.stack([(np.diag(si) - np.outer(si, si)) @ gi for si, gi in zip(s, g)])
    np.testing.assert_allclose(act.vjp(u, g), jac_g, atol=1e-14)
    errs = [np.abs(act.fenchel_vjp(u, g, beta) - jac_g).max() for beta in (1e-2, 1e-3)]
    assert 5 < errs[0] / errs[1] < 20  # O(β)
    with pytest.raises(bilevel.InvalidInputError):
        act.derivative(u)


def mlp(rng, widths, acts):
    weights = [rng.standard_normal((m, n)) / np.sqrt(n) for n, m in zip(widths, widths[1:])]
    biases = [0.1 * rng.standard_normal(m) for m in widths[1:]]
    return bilevel.Network(weights, biases, acts), weights, biases


def numpy_forward(weights, biases, acts, x):
    z = x
    for w, b, a in zip(weights, biases, acts):
        z = z @ w.T + b
        z = np.maximum(z, 0) if a == "relu" else z
    return z


def test_bp_gradient_matches_finite_differences_of_the_loss():
    rng = np.random.default_rng(3)
    acts = ["relu", "relu", "identity"]
    net, weights, biases = mlp(rng, [4, 5, 3, 2], acts)
    x, t = rng.standard_normal((6, 4)), rng.standard_normal((6, 2))
    out = net.gradient("bp", 1e-3, x, t)
    assert out["status"]["optimum"] == "closed form"

    def loss(ws, bs):
        return 0.5 * np.mean(np.sum((numpy_forward(ws, bs, acts, x) - t) ** 2, axis=1))

    np.testing.assert_allclose(out["value"], loss(weights, biases), rtol=1e-12)
    h = 1e-6
    for k in range(3):
        for idx in np.ndindex(*weights[k].shape):
            wp = [w.copy() for w in weights]; wm = [w.copy() for w in weights]
            wp[k][idx] += h; wm[k][idx] -= h
            fd = (loss(wp, biases) - loss(wm, biases)) / (2 * h)
            assert abs(out["grad_weights"][k][idx] - fd) < 1e-6
    zs = net.forward(x)
    assert [z.shape for z in zs] == [(6, 5), (6, 3), (6, 2)]
    np.testing.assert_allclose(zs[-1], numpy_forward(weights, biases, acts, x), atol=1e-12)


@pytest.mark.parametrize("method", ["chl", "convex-chl", "lpom", "mac", "fenbp", "pc"])
def test_every_method_tends_to_bp_cor2(method):
    rng = np.random.default_rng(4)
    net, _, _ = mlp(rng, [3, 4, 2], ["relu", "identity"])
    x, t = rng.standard_normal((3, 3)), rng.standard_normal((3, 2))
    bp = net.gradient("bp", 1e-4, x, t)
    flat = lambda r: np.concatenate([w.ravel() for w in r["grad_weights"]] + list(r["grad_biases"]))
    gaps = []
    for beta in (1e-2, 1e-3):
        out = net.gradient(method, beta, x, t)
        assert out["method"] == method and np.isfinite(out["value"])
        assert out["status"]["iterations"] >= 0 and out["status"]["residual"] >= 0
        gaps.append(np.linalg.norm(flat(out) - flat(bp)) / np.linalg.norm(flat(bp)))
    assert gaps[1] < 2e-2, gaps
    assert gaps[1] <= gaps[0] + 1e-9, gaps


def test_batch_is_the_mean_of_per_sample_surrogates():
    rng = np.random.default_rng(5)
    net, _, _ = mlp(rng, [3, 4, 2], ["relu", "identity"])
    x, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    for method in ("fenbp", "lpom"):
        batch = net.gradient(method, 0.05, x, t)
        singles = [net.gradient(method, 0.05, x[j:j + 1], t[j:j + 1]) for j in range(4)]
        np.testing.assert_allclose(batch["value"], np.mean([s["value"] for s in singles]),
                                   rtol=1e-9)
        for k in range(2):
            mean = np.mean([s["grad_weights"][k] for s in singles], axis=0)
            np.testing.assert_allclose(batch["grad_weights"][k], mean, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("call, error, text", [
    (lambda: bilevel.Activation("swish"), bilevel.InvalidInputError, "swish"),
    (lambda: bilevel.Activation(("box", 1.0, 0.0)), bilevel.InvalidInputError, "lo < hi"),
    (lambda: bilevel.Activation("relu")([np.nan]), bilevel.NonFiniteError, "u"),
    (lambda: bilevel.Activation("relu").vjp([1.0, 2.0], [1.0]), bilevel.DimensionMismatchError,
     "g"),
    (lambda: bilevel.Activation("relu").fenchel_vjp([1.0], [1.0], 0.0), bilevel.InvalidBetaError,
     "beta"),
    (lambda: bilevel.Network([], [], []), bilevel.InvalidInputError, "weights"),
    (lambda: bilevel.Network([np.ones((2, 3))], [np.ones(3)], ["relu"]), bilevel.BilevelError,
     "bias"),
    (lambda: bilevel.Network([np.ones(3)], [np.ones(1)], ["relu"]),
     bilevel.DimensionMismatchError, "weights[0]"),
    (lambda: bilevel.Network([np.ones((1, 2))], [np.ones(1)], ["relu"]).gradient(
        "sgd", 0.1, np.ones((1, 2)), np.ones((1, 1))), bilevel.InvalidInputError, "method"),
    (lambda: bilevel.Network([np.ones((1, 2))], [np.ones(1)], ["relu"]).gradient(
        "bp", 0.1, np.ones((1, 3)), np.ones((1, 1))), bilevel.DimensionMismatchError, "x"),
    (lambda: bilevel.Network([np.ones((1, 2))], [np.ones(1)], ["relu"]).gradient(
        "bp", -1.0, np.ones((1, 2)), np.ones((1, 1))), bilevel.BilevelError, "beta"),
    (lambda: bilevel.Network([np.ones((1, 2))], [np.ones(1)], ["softmax"]).gradient(
        "mac", 0.1, np.ones((1, 2)), np.ones((1, 1))), bilevel.InvalidInputError, "softmax"),
    (lambda: bilevel.Network([np.ones((1, 2))], [np.ones(1)], ["relu"]).gradient(
        "bp", 0.1, np.ones((1, 2)), np.ones((1, 1)), loss="hinge"), bilevel.InvalidInputError,
     "loss"),
])
def test_errors_name_the_argument(call, error, text):
    with pytest.raises(error) as info:
        call()
    assert text in str(info.value)


def test_settings_reach_the_solver_and_are_validated():
    rng = np.random.default_rng(6)
    net, _, _ = mlp(rng, [3, 4, 2], ["relu", "identity"])
    x, t = rng.standard_normal((2, 3)), rng.standard_normal((2, 2))
    defaults = bilevel.Network.default_settings()
    assert defaults["max_sweeps"] == 20000 and "tol_step" in defaults
    full = net.gradient("chl", 0.1, x, t)
    # Two sweeps cannot reach the default tolerance: the solver says so instead of pretending.
    with pytest.raises(bilevel.NotConvergedError) as info:
        net.gradient("chl", 0.1, x, t, settings={"max_sweeps": 2})
    assert info.value.iterations >= 2
    same = net.gradient("chl", 0.1, x, t, settings=dict(defaults))
    np.testing.assert_array_equal(same["grad_weights"][0], full["grad_weights"][0])
    with pytest.raises(bilevel.InvalidInputError, match="unknown setting `sweeps`"):
        net.gradient("chl", 0.1, x, t, settings={"sweeps": 3})
    with pytest.raises(bilevel.InvalidInputError, match="max_sweeps"):
        net.gradient("chl", 0.1, x, t, settings={"max_sweeps": 1.5})
    with pytest.raises(bilevel.BilevelError):
        net.gradient("chl", 0.1, x, t, settings={"tol_step": -1.0})

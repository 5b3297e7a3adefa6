"""The JAX adapters under jax.grad, jax.jit and jax.vmap, against the NumPy API and the Rust
Prop. 7 gradients; and the tie where jax.nn.relu and the one-sided derivative part ways."""

import os

import numpy as np
import pytest

if os.environ.get("BILEVEL_REQUIRE_JAX"):
    import jax  # CI: a missing JAX is a failure, not a skip
else:
    jax = pytest.importorskip("jax", reason="the JAX adapters need `pip install jax`")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import bilevel  # noqa: E402
import bilevel.jax as bj  # noqa: E402
from conftest import constructed_layer  # noqa: E402


def relu_qp():
    eye = np.eye(2)
    return dict(Q=eye, c=np.zeros(2), B=eye, A=eye, b=np.zeros(2))


def test_qp_layer_grad_jit_vmap_agree_with_the_numpy_api():
    rng = np.random.default_rng(0)
    data, theta, z = constructed_layer(rng, 6, 3, 4, 1, ["strong", "weak", "inactive", "weak"])
    f = bj.qp_layer(**data)
    layer = bilevel.QuadraticLayer(**data)
    g = rng.standard_normal(6)
    np.testing.assert_allclose(f(theta), z, atol=1e-10)
    loss = lambda t: jnp.dot(jnp.asarray(g), f(t))
    expected = layer.vjp(theta, g)
    np.testing.assert_array_equal(jax.grad(loss)(theta), expected)
    np.testing.assert_array_equal(jax.jit(jax.grad(loss))(theta), expected)
    thetas = theta + 0.1 * rng.standard_normal((5, 3))
    batched = jax.vmap(jax.grad(loss))(thetas)
    np.testing.assert_allclose(batched, layer.vjp(thetas, np.tile(g, (5, 1))), atol=1e-12)
    np.testing.assert_allclose(jax.vmap(f)(thetas), f(thetas), atol=1e-12)
    assert f.layer.n == 6


def test_the_tie_jax_relu_drops_and_the_qp_layer_keeps():
    f = bj.qp_layer(**relu_qp())
    theta = jnp.array([1.0, 0.0])
    g = jnp.array([2.0, -3.0])
    # Descending L = 2z₁ − 3z₂ raises θ₂: the unit leaves its bound and passes −3 on.
    np.testing.assert_array_equal(jax.grad(lambda t: g @ f(t))(theta), [2.0, -3.0])
    # jax.nn.relu passes 0 at the tie whatever the loss: descent stalls on that unit.
    np.testing.assert_array_equal(jax.grad(lambda t: g @ jax.nn.relu(t))(theta), [2.0, 0.0])
    # The other loss direction: the unit stays, both agree.
    np.testing.assert_array_equal(jax.grad(lambda t: -g @ f(t))(theta), [-2.0, 0.0])
    # And the Fenchel-BP ReLU takes the same branch as the limit, for every β.
    r = bj.fenchel_relu(0.1)
    np.testing.assert_allclose(jax.grad(lambda t: g @ r(t))(theta), [2.0, -3.0])


def test_contrastive_and_centered_modes_and_their_limit():
    rng = np.random.default_rng(1)
    data, theta, _ = constructed_layer(rng, 5, 2, 3, 0, ["strong", "inactive", "inactive"])
    layer = bilevel.QuadraticLayer(**data)
    g = rng.standard_normal(5)
    limit = layer.vjp(theta, g)
    errors = {}
    for kind in ("contrastive", "centered"):
        errors[kind] = []
        for beta in (1e-2, 1e-3):
            f = bj.qp_layer(**data, mode=(kind, beta))
            grad = jax.grad(lambda t: jnp.dot(jnp.asarray(g), f(t)))(theta)
            np.testing.assert_array_equal(
                grad, layer.surrogate(theta, g, beta, kind=kind)["grad_theta"])
            errors[kind].append(np.linalg.norm(grad - limit))
    # A QP layer away from ties is piecewise linear: for a linear loss both surrogates are
    # exact for small β (the piece does not change).
    assert max(errors["contrastive"] + errors["centered"]) < 1e-9
    with pytest.raises(ValueError):
        bj.qp_layer(**data, mode=("contrastive", -1.0))


def test_float32_theta_gives_float32_results():
    f = bj.qp_layer(**relu_qp())
    z = f(jnp.array([1.0, -1.0], dtype=jnp.float32))
    assert z.dtype == jnp.float32
    np.testing.assert_array_equal(z, [1.0, 0.0])


@pytest.mark.parametrize("name, maker", [
    ("relu", lambda b: bj.fenchel_relu(b)),
    ("hard_sigmoid", lambda b: bj.fenchel_hard_sigmoid(b)),
    ("hard_tanh", lambda b: bj.fenchel_hard_tanh(b)),
    (("box", -0.5, 2.0), lambda b: bj.fenchel_box(-0.5, 2.0, b)),
    ("softmax", lambda b: bj.fenchel_softmax(b)),
])
def test_fenchel_activations_equal_the_rust_quotient(name, maker):
    act = bilevel.Activation(name)
    rng = np.random.default_rng(2)
    u = rng.standard_normal((4, 5)) * 1.5
    u[:, 0] = 0.0  # ties for ReLU and hard sigmoid
    u[:, 1] = 1.0
    g = rng.standard_normal((4, 5))
    for beta in (1e-3, 0.5):
        f = maker(beta)
        np.testing.assert_allclose(f(u), act(u), atol=1e-15)
        _, pullback = jax.vjp(f, jnp.asarray(u))
        mine, rust = np.asarray(pullback(jnp.asarray(g))[0]), act.fenchel_vjp(u, g, beta)
        if name == "softmax":
            np.testing.assert_allclose(mine, rust, rtol=1e-12, atol=1e-12)
        else:
            np.testing.assert_array_equal(mine, rust)  # the same IEEE operations in order
    # Exact at a bound: u on it, u − βg inside: the quotient is g for every β.
    if name in ("hard_sigmoid",):
        for beta in (1e-3, 1e-9, 1e-14):
            _, pullback = jax.vjp(maker(beta), jnp.asarray([1.0, 1.0]))
            np.testing.assert_array_equal(pullback(jnp.asarray([0.123456789, 1e-3]))[0],
                                          [0.123456789, 1e-3])


def assert_same_gradients(grads, rust, batch):
    """JAX's gradient of the summed loss over `batch` samples against the Rust batch surrogate
    (the mean of per-sample surrogates), layer by layer, to 1e-6."""
    assert len(grads) == len(rust["grad_weights"])
    for (gw, gb), rw, rb in zip(grads, rust["grad_weights"], rust["grad_biases"]):
        np.testing.assert_allclose(gw / batch, rw, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(gb / batch, rb, rtol=1e-6, atol=1e-9)


def test_fenchel_mlp_in_jax_equals_the_rust_prop7_gradient():
    rng = np.random.default_rng(3)
    widths = [6, 5, 4, 3]
    weights = [rng.standard_normal((m, n)) / np.sqrt(n) for n, m in zip(widths, widths[1:])]
    biases = [0.1 * rng.standard_normal(m) for m in widths[1:]]
    x, t = rng.standard_normal((8, 6)), rng.standard_normal((8, 3))
    x[0, :] = 0.0  # a zero input row puts the first layer's pre-activations at the biases
    net = bilevel.Network(weights, biases, ["relu", "relu", "identity"])
    for beta in (1e-2, 0.3):
        act = bj.fenchel_relu(beta)

        def total(params):
            z = jnp.asarray(x)
            for k, (w, b) in enumerate(params):
                z = z @ w.T + b
                z = act(z) if k < 2 else z
            # The Rust batch surrogate is the mean of per-sample surrogates at the same β:
            # the quotient acts on each sample's own loss gradient, so differentiate the sum
            # and divide by B (the mean loss would scale the signal by 1/B inside it).
            return 0.5 * jnp.sum((z - t) ** 2)

        params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in zip(weights, biases)]
        assert_same_gradients(jax.grad(total)(params), net.gradient("fenbp", beta, x, t),
                              len(x))


def test_fenchel_softmax_layer_mlp_equals_the_rust_prop7_gradient():
    # Hard-tanh hidden layer, softmax output layer (its Fenchel energy is the entropy on the
    # simplex), squared loss on the probabilities: JAX with the Fenchel activations against
    # `Network.gradient("fenbp")` (Prop. 7), per-sample β as in the Rust batch convention.
    rng = np.random.default_rng(5)
    widths = [5, 6, 4]
    weights = [rng.standard_normal((m, n)) for n, m in zip(widths, widths[1:])]
    biases = [0.2 * rng.standard_normal(m) for m in widths[1:]]
    x = rng.standard_normal((6, 5))
    t = np.eye(4)[rng.integers(0, 4, 6)]
    net = bilevel.Network(weights, biases, ["hard_tanh", "softmax"])
    for beta in (1e-3, 0.5):
        hidden, out = bj.fenchel_hard_tanh(beta), bj.fenchel_softmax(beta)

        def total(params):
            (w1, b1), (w2, b2) = params
            z = hidden(jnp.asarray(x) @ w1.T + b1)
            return 0.5 * jnp.sum((out(z @ w2.T + b2) - t) ** 2)

        params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in zip(weights, biases)]
        assert_same_gradients(jax.grad(total)(params), net.gradient("fenbp", beta, x, t),
                              len(x))


def random_qp(rng, batch, n, m, k):
    L = rng.standard_normal((batch, n, n))
    Q = L @ np.swapaxes(L, 1, 2) + n * np.eye(n)
    p = rng.standard_normal((batch, n))
    G = rng.standard_normal((batch, m, n))
    z0 = rng.standard_normal((batch, n))
    h = np.einsum("bmn,bn->bm", G, z0) + rng.uniform(0.1, 1.0, (batch, m))
    A = rng.standard_normal((batch, k, n))
    b = np.einsum("bkn,bn->bk", A, z0)
    return [Q, p, G, h, A, b]


def test_functional_qp_under_grad_jit_and_vmap():
    rng = np.random.default_rng(12)
    args = [jnp.asarray(a) for a in random_qp(rng, 3, 4, 3, 1)]
    g = jnp.asarray(rng.standard_normal((3, 4)))

    def loss(*xs):
        return jnp.sum(bj.qp(*xs) * g)

    grads = jax.grad(loss, argnums=tuple(range(6)))(*args)
    jitted = jax.jit(jax.grad(loss, argnums=tuple(range(6))))(*args)
    z, solved = bilevel.qp_solve(*[np.asarray(a) for a in args])
    want = solved.gradients(np.asarray(g))
    for name, mine, again in zip(("Q", "p", "G", "h", "A", "b"), grads, jitted):
        np.testing.assert_array_equal(mine, want[name])
        np.testing.assert_array_equal(again, mine)
    # vmap over items is the batched call; a shared Q broadcasts and sums its gradient.
    one = jax.vmap(lambda *xs: bj.qp(*xs)[0])(*args)
    np.testing.assert_array_equal(one, z)
    shared = [args[0][0]] + args[1:]
    gq = jax.grad(loss, argnums=0)(*shared)
    _, again = bilevel.qp_solve(np.asarray(args[0][0]), *[np.asarray(a) for a in args[1:]])
    np.testing.assert_allclose(gq, again.gradients(np.asarray(g))["Q"].sum(0), rtol=1e-14)
    # Absent equalities: empty inputs, empty gradients.
    e = jnp.zeros((0,))
    ge = jax.grad(lambda Q, A: jnp.sum(bj.qp(Q, args[1], args[2], args[3], A, e)), (0, 1))(
        args[0], e)
    assert ge[1].shape == (0,)


def test_functional_qp_refuses_complex_and_misshapen_inputs_by_name():
    rng = np.random.default_rng(13)
    args = [jnp.asarray(a) for a in random_qp(rng, 2, 3, 2, 1)]
    with pytest.raises(bilevel.InvalidInputError) as info:
        bj.qp(*args[:3], args[3].astype(jnp.complex128), *args[4:])
    assert info.value.field == "h" and "complex" in str(info.value)
    with pytest.raises(bilevel.DimensionMismatchError) as info:
        bj.qp(args[0], *args[1:4], jnp.ones(3), args[5])
    assert info.value.what == "A"


def test_functional_qp_takes_a_batch_of_zero_items():
    e = jnp.zeros((0,))
    Q, p, G, h = jnp.zeros((0, 3, 3)), jnp.zeros((0, 3)), jnp.ones((2, 3)), jnp.ones(2)
    assert bj.qp(Q, p, G, h, e, e).shape == (0, 3)
    grads = jax.grad(lambda *xs: bj.qp(*xs, e, e).sum(), argnums=(0, 1, 2, 3))(Q, p, G, h)
    assert [g.shape for g in grads] == [(0, 3, 3), (0, 3), (2, 3), (2,)]
    assert all(float(jnp.abs(g).sum()) == 0.0 for g in grads)


def test_functional_qp_equals_the_torch_layer_bit_for_bit():
    if os.environ.get("BILEVEL_REQUIRE_TORCH"):
        import torch
    else:
        torch = pytest.importorskip("torch")
    from bilevel.torch import QPFunction
    rng = np.random.default_rng(13)
    args = random_qp(rng, 4, 5, 3, 2)
    g = rng.standard_normal((4, 5))
    for mode in ("limit", ("contrastive", 0.1), ("centered", 0.1)):
        grads = jax.grad(lambda *xs: jnp.sum(bj.qp(*xs, mode=mode) * g), tuple(range(6)))(
            *[jnp.asarray(a) for a in args])
        ts = [torch.tensor(a, requires_grad=True) for a in args]
        z = QPFunction(mode=mode)(*ts)
        (z * torch.tensor(g)).sum().backward()
        np.testing.assert_array_equal(z.detach().numpy(), bj.qp(*args, mode=mode))
        for mine, theirs in zip(grads, ts):
            np.testing.assert_array_equal(np.asarray(mine), theirs.grad.numpy())


def test_functional_qp_under_sharding_equals_the_unsharded_call(tmp_path):
    """`bilevel.jax.qp` with its batch axis sharded over two host devices (in a fresh process
    with XLA_FLAGS=--xla_force_host_platform_device_count=2), both under `jax.jit` on sharded
    inputs and under `jax.shard_map` (each device solves its own items): the loss, the
    gradient of every input and three training steps equal the unsharded call's."""
    import subprocess
    import sys

    out = tmp_path / "sharded.npz"
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jax_sharded_worker.py")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, worker, str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    r = np.load(out)
    for how in ("jit", "shard_map"):
        np.testing.assert_allclose(r[f"{how}_value"], r["plain_value"], rtol=1e-14)
        for i in range(6):
            np.testing.assert_allclose(r[f"{how}_grad{i}"], r[f"plain_grad{i}"], rtol=1e-13,
                                       atol=1e-15)
            np.testing.assert_allclose(r[f"{how}_trained{i}"], r[f"plain_trained{i}"],
                                       rtol=1e-13, atol=1e-15)
    # The steps moved every input: the comparison is not of the initial point with itself.
    for i in range(6):
        assert np.abs(r[f"plain_trained{i}"] - r[f"init{i}"]).max() > 1e-3

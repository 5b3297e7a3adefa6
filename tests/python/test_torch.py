"""`bilevel.torch.QPFunction` against qpth (forward and every input's gradient, batched and
shared inputs, with and without equalities), against torch.autograd.gradcheck, and at weakly
active rows against one-sided differences of its own forward solve (where qpth averages the two
sides); dtypes, devices and bad input."""

import os
import sys
import types

import numpy as np
import pytest

if os.environ.get("BILEVEL_REQUIRE_TORCH"):
    import torch  # CI: a missing torch is a failure, not a skip
else:
    torch = pytest.importorskip("torch", reason="the PyTorch adapter needs `pip install torch`")

import bilevel  # noqa: E402
import bilevel.torch as bt  # noqa: E402
from bilevel.torch import QPFunction  # noqa: E402

F64 = torch.float64


def qpth_function():
    """qpth's QPFunction (its default PDIPM solver; qpth imports cvxpy only for another solver,
    which these tests never select)."""
    sys.modules.setdefault("cvxpy", types.ModuleType("cvxpy"))
    if os.environ.get("BILEVEL_REQUIRE_TORCH"):
        from qpth.qp import QPFunction as Q
    else:
        qp = pytest.importorskip("qpth.qp", reason="the comparison needs `pip install qpth`")
        Q = qp.QPFunction
    return Q(verbose=-1, eps=1e-14, maxIter=100)


def random_layer(rng, batch, n, m, k, shared=()):
    """A feasible layer: strictly feasible z0 (Gz0 < h, Az0 = b), random SPD Q; inputs listed in
    `shared` have no batch axis. Generic data: no row is weakly active."""
    def one():
        L = rng.standard_normal((n, n))
        Q = L @ L.T + n * np.eye(n)
        p = rng.standard_normal(n)
        G = rng.standard_normal((m, n))
        z0 = rng.standard_normal(n)
        h = G @ z0 + rng.uniform(0.1, 1.0, m)
        A = rng.standard_normal((k, n))
        b = A @ z0
        return dict(Q=Q, p=p, G=G, h=h, A=A, b=b)
    items = [one() for _ in range(batch)]
    out = {}
    for name in ("Q", "p", "G", "h", "A", "b"):
        if name in shared:
            out[name] = torch.tensor(items[0][name], dtype=F64)
        else:
            out[name] = torch.tensor(np.stack([it[name] for it in items]), dtype=F64)
    if k == 0:
        out["A"], out["b"] = torch.empty(0, dtype=F64), torch.empty(0, dtype=F64)
    return out


ORDER = ("Q", "p", "G", "h", "A", "b")


def run(f, data, g):
    inputs = [data[k].clone().requires_grad_(data[k].numel() > 0) for k in ORDER]
    z = f(*inputs)
    (z * g).sum().backward()
    return z.detach(), [x.grad for x in inputs]


@pytest.mark.parametrize("k,shared", [
    (0, ()), (2, ()), (0, ("Q", "G")), (2, ("Q", "A", "b")), (1, ("p", "h")),
])
def test_forward_and_every_gradient_agree_with_qpth(k, shared):
    rng = np.random.default_rng(len(shared) * 10 + k)
    data = random_layer(rng, batch=5, n=6, m=4, k=k, shared=shared)
    g = torch.tensor(rng.standard_normal((5, 6)), dtype=F64)
    z_ref, g_ref = run(qpth_function(), data, g)
    z, grads = run(QPFunction(reduce="mean"), data, g)
    assert z.shape == (5, 6)
    assert torch.max(torch.abs(z - z_ref)) < 1e-6
    for name, mine, theirs in zip(ORDER, grads, g_ref):
        if data[name].numel() == 0:
            assert mine is None, name
            continue
        assert mine.shape == data[name].shape, name
        scale = max(1.0, float(torch.max(torch.abs(theirs))))
        err = float(torch.max(torch.abs(mine - theirs)))
        assert err < 1e-5 * scale, f"{name}: {err:.2e}"


def test_shared_inputs_sum_over_the_batch_by_default():
    rng = np.random.default_rng(7)
    data = random_layer(rng, batch=4, n=5, m=3, k=1, shared=("Q", "p"))
    g = torch.tensor(rng.standard_normal((4, 5)), dtype=F64)
    _, summed = run(QPFunction(), data, g)
    _, mean = run(QPFunction(reduce="mean"), data, g)
    for name, s, m in zip(ORDER, summed, mean):
        if name in ("Q", "p"):
            assert torch.allclose(s, 4 * m, rtol=1e-14, atol=0), name
        elif s is not None:
            assert torch.equal(s, m), name


def test_gradcheck_in_float64_away_from_ties():
    rng = np.random.default_rng(11)
    data = random_layer(rng, batch=3, n=4, m=3, k=1)
    L = torch.tensor(rng.standard_normal((3, 4, 4)), dtype=F64, requires_grad=True)
    f = QPFunction()

    def layer(L, p, G, h, A, b):
        # Q = LLᵀ + 4I: symmetric for every perturbation gradcheck makes.
        Q = L @ L.transpose(1, 2) + 4 * torch.eye(4, dtype=F64)
        return f(Q, p, G, h, A, b)

    inputs = [L] + [data[k].clone().requires_grad_(True) for k in ORDER[1:]]
    assert torch.autograd.gradcheck(layer, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_at_a_weakly_active_row_the_gradient_is_one_sided():
    # Projection of −p onto z ≥ 0 with a tie: z*₂ = 0 with a zero multiplier (p₂ = 0).
    Q = torch.eye(3, dtype=F64)
    G, h = -torch.eye(3, dtype=F64), torch.zeros(3, dtype=F64)
    e = torch.empty(0, dtype=F64)
    f = QPFunction()
    for g2, stays in [(1.0, True), (-1.0, False)]:
        p = torch.tensor([[-1.0, 0.0, 2.0]], dtype=F64, requires_grad=True)
        g = torch.tensor([[0.5, g2, 0.3]], dtype=F64)
        z = f(Q, p, G, h, e, e)
        assert torch.equal(z.detach(), torch.tensor([[1.0, 0.0, 0.0]], dtype=F64))
        (z * g).sum().backward()
        # The rate of z*(p + εg), ε → 0⁺ (the loss added to the energy), from the forward solve.
        eps = 1e-9
        z_eps = f(Q, p.detach() + eps * g, G, h, e, e)
        rate = (z_eps - z.detach()) / eps
        assert torch.allclose(p.grad, rate, atol=1e-6), (p.grad, rate)
        assert p.grad[0, 1].item() == (0.0 if stays else -g2)
        assert f.status()[0]["activity"] == ["inactive", "weak", "strong"]
        assert f.status()[0]["branches"] == [None, "stays" if stays else "leaves", None]


def test_results_and_gradients_keep_the_inputs_dtype_and_device():
    rng = np.random.default_rng(3)
    data = random_layer(rng, batch=2, n=4, m=2, k=1)
    for dtype in (torch.float32, torch.float64):
        inputs = [data[k].to(dtype).clone().requires_grad_(True) for k in ORDER]
        z = QPFunction()(*inputs)
        assert z.dtype == dtype and z.device == inputs[0].device
        z.sum().backward()
        for name, x in zip(ORDER, inputs):
            assert x.grad.dtype == dtype and x.grad.device == x.device, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_inputs_get_cuda_results():
    rng = np.random.default_rng(4)
    data = random_layer(rng, batch=2, n=3, m=2, k=0)
    inputs = [data[k].cuda().requires_grad_(data[k].numel() > 0) for k in ORDER]
    z = QPFunction()(*inputs)
    assert z.is_cuda
    z.sum().backward()
    assert inputs[1].grad.is_cuda


def test_a_batch_of_zero_items_gives_empty_answers_and_zero_gradients():
    Q = torch.zeros(0, 3, 3, dtype=F64, requires_grad=True)
    p = torch.zeros(0, 3, dtype=F64, requires_grad=True)
    G = torch.ones(2, 3, dtype=F64, requires_grad=True)
    h = torch.ones(2, dtype=F64, requires_grad=True)
    e = torch.empty(0, dtype=F64)
    z = QPFunction()(Q, p, G, h, e, e)
    assert z.shape == (0, 3)
    z.sum().backward()
    # Shared inputs get the sum over no items; empty ones no gradient (autograd's zero).
    assert torch.equal(G.grad, torch.zeros(2, 3, dtype=F64))
    assert torch.equal(h.grad, torch.zeros(2, dtype=F64))
    assert Q.grad is None and p.grad is None


def test_bad_input_raises_the_packages_errors_naming_the_argument():
    rng = np.random.default_rng(5)
    data = random_layer(rng, batch=3, n=4, m=2, k=0)
    f = QPFunction()
    args = [data[k] for k in ORDER]

    def call(**changes):
        return f(*[changes.get(k, v) for k, v in zip(ORDER, args)])

    with pytest.raises(bilevel.DimensionMismatchError, match="p"):
        call(p=torch.zeros(3, 5, dtype=F64))
    with pytest.raises(bilevel.DimensionMismatchError, match="batch"):
        call(h=torch.zeros(2, 2, dtype=F64))
    bad = data["h"].clone()
    bad[1, 0] = float("nan")
    with pytest.raises(bilevel.NonFiniteError) as info:
        call(h=bad)
    assert info.value.index == 1
    Q = data["Q"].clone()
    Q[2] = -torch.eye(4, dtype=F64)
    with pytest.raises(bilevel.NotPositiveDefiniteError) as info:
        call(Q=Q)
    assert info.value.index == 2
    # z₁ ≤ −1 and −z₁ ≤ −1 (z₁ ≥ 1): no point; said with a certificate.
    G = torch.zeros(3, 2, 4, dtype=F64)
    G[:, 0, 0], G[:, 1, 0] = 1.0, -1.0
    with pytest.raises(bilevel.InfeasibleError):
        call(G=G, h=-torch.ones(3, 2, dtype=F64))
    with pytest.raises(ValueError, match="mode"):
        QPFunction(mode=("contrastive", -1.0))
    with pytest.raises(TypeError, match="Q"):
        f(np.eye(4), *args[1:])
    # Complex data: refused by name (a cast would drop the imaginary parts silently).
    with pytest.raises(bilevel.InvalidInputError) as info:
        call(p=data["p"].to(torch.complex128))
    assert info.value.field == "p" and "complex" in str(info.value)


@pytest.mark.parametrize("name, maker", [
    ("relu", lambda b: bt.fenchel_relu(b)),
    ("hard_sigmoid", lambda b: bt.fenchel_hard_sigmoid(b)),
    ("hard_tanh", lambda b: bt.fenchel_hard_tanh(b)),
    (("box", -0.5, 2.0), lambda b: bt.fenchel_box(-0.5, 2.0, b)),
    ("softmax", lambda b: bt.fenchel_softmax(b)),
])
def test_fenchel_activations_are_the_rust_quotient(name, maker):
    act = bilevel.Activation(name)
    rng = np.random.default_rng(6)
    u = rng.standard_normal((4, 5)) * 1.5
    u[:, 0], u[:, 1] = 0.0, 1.0  # on the bounds of ReLU and hard sigmoid
    g = rng.standard_normal((4, 5))
    for beta in (1e-9, 1e-3, 0.5):
        x = torch.tensor(u, requires_grad=True)
        y = maker(beta)(x)
        assert torch.allclose(y.detach(), torch.tensor(act(u)), atol=1e-15)
        y.backward(torch.tensor(g))
        rust = act.fenchel_vjp(u, g, beta)
        if name == "softmax":
            # Both subtract two softmaxes (no closed form without cancellation): they agree to
            # the rounding of that difference, ~ε/β.
            np.testing.assert_allclose(x.grad.numpy(), rust, rtol=0, atol=1e-15 / beta)
        else:
            np.testing.assert_array_equal(x.grad.numpy(), rust)
    with pytest.raises(ValueError, match="beta"):
        maker(0.0)


@pytest.mark.parametrize("seed", range(4))
def test_at_weakly_active_rows_every_gradient_is_the_cli_derive_answer(seed):
    """Rows with every activity label (two weakly active) and an equality: every input's
    gradient equals `bilevel derive`'s exact one-sided data gradients (an independent front end:
    the crate's convention `Az ≥ b`, `c = −p`), branch for branch."""
    from conftest import as_json, cli_derive, constructed_layer
    rng = np.random.default_rng(40 + seed)
    labels = ["weak", "strong", "inactive", "weak", "strong"]
    data, theta, z = constructed_layer(rng, 5, 1, len(labels), 1, labels)
    g = rng.standard_normal(5)
    names = ["Q", "c", "A", "b", "A_eq", "b_eq"]
    problem = as_json(data)
    problem.update(theta=theta.tolist(), loss={"kind": "linear", "g": g.tolist()},
                   gradients=names)
    want = cli_derive(problem)
    assert want["constraints"] == labels
    t = lambda a: torch.tensor(np.asarray(a), dtype=F64, requires_grad=True)  # noqa: E731
    inputs = [t(data["Q"]), t(-(data["c"] + data["B"] @ theta)), t(-data["A"]), t(-data["b"]),
              t(data["A_eq"]), t(data["b_eq"])]
    f = QPFunction()
    out = f(*inputs)
    np.testing.assert_allclose(out.detach().numpy()[0], z, atol=1e-12)
    (out * torch.tensor(g)).sum().backward()
    signs = [1, -1, -1, -1, 1, 1]  # p = −c, G = −A, h = −b
    for name, x, sign in zip(names, inputs, signs):
        ref = sign * np.asarray(want[f"grad_{name}"])
        np.testing.assert_allclose(x.grad.numpy(), ref, rtol=1e-9, atol=1e-12, err_msg=name)
    branches = [b for b in f.status()[0]["branches"] if b is not None]
    assert branches == [b for b in want["branches"] if b is not None] and len(branches) == 2


def test_duplicated_equalities_are_set_aside_and_inconsistent_ones_are_infeasible():
    """qpth users stack constraints from several sources, and the same equality can come twice:
    the layer gives the single row's answer and gradients (the duplicate's multiplier, and so
    the gradient of its `b`, is 0); rows that disagree are infeasible, with the certificate."""
    rng = np.random.default_rng(7)
    data = random_layer(rng, 3, 5, 4, 1)
    twice = dict(data)
    twice["A"] = torch.cat([data["A"], 2.0 * data["A"]], dim=1)
    twice["b"] = torch.cat([data["b"], 2.0 * data["b"]], dim=1)
    g = torch.tensor(rng.standard_normal((3, 5)), dtype=F64)
    z1, grads1 = run(QPFunction(), data, g)
    z2, grads2 = run(QPFunction(), twice, g)
    assert torch.allclose(z1, z2, rtol=0, atol=1e-13)
    for name, a, b in zip(ORDER, grads1, grads2):
        if name == "A":
            b = b[:, :1] + 2.0 * b[:, 1:]  # the duplicate's rows act through 2a
            assert torch.allclose(a, b, rtol=0, atol=1e-12), name
        elif name == "b":
            assert torch.allclose(a, b[:, :1], rtol=0, atol=1e-12), name
            assert torch.all(b[:, 1:] == 0.0)
        else:
            assert torch.allclose(a, b, rtol=0, atol=1e-12), name
    twice["b"] = torch.cat([data["b"], 2.0 * data["b"] + 1e-3], dim=1)
    with pytest.raises(bilevel.InfeasibleError, match="Farkas"):
        QPFunction()(*[twice[k] for k in ORDER])

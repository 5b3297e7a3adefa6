"""QuadraticLayer against independent computations: the command-line program on the same
problems, finite differences away from ties, one-sided differences at weakly active rows built
on purpose, closed forms, and every error path."""

import numpy as np
import pytest

import bilevel
from conftest import as_json, cli_derive, constructed_layer

LABELS = ["strong", "weak", "inactive"]


def random_case(seed, weak=True):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 9))
    p = int(rng.integers(1, 5))
    k = int(rng.integers(0, 2))
    m = int(rng.integers(1, n - k + 1))
    choices = LABELS if weak else ["strong", "inactive"]
    labels = [choices[int(rng.integers(len(choices)))] for _ in range(m)]
    data, theta, z = constructed_layer(rng, n, p, m, k, labels)
    g = rng.standard_normal(n)
    return data, theta, z, g, labels


def close(a, b, tol):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
    err = float(np.max(np.abs(a - b), initial=0.0))
    assert err <= tol * scale, f"error {err:.3e} > {tol:.0e} x {scale:.3g}\n{a}\n{b}"


def test_matrices_in_every_memory_layout_give_the_same_layer_and_the_cli_answer():
    # Larger than the 32 x 32 tiles that move C-ordered arrays into column-major storage.
    rng = np.random.default_rng(41)
    labels = [LABELS[i % 3] for i in range(45)]
    data, theta, _ = constructed_layer(rng, 70, 3, 45, 1, labels)
    g = rng.standard_normal(70)
    gradients = ["Q", "B", "A", "A_eq"]

    def strided(x):  # the same values in a view that is neither C- nor F-contiguous
        wide = np.zeros((x.shape[0], 2 * x.shape[1]))
        wide[:, ::2] = x
        return wide[:, ::2]

    answers = []
    for layout in (np.ascontiguousarray, np.asfortranarray, strided):
        layer = bilevel.QuadraticLayer(**{k: layout(v) if v.ndim == 2 else v
                                          for k, v in data.items()})
        answers.append(layer.derive(theta, g, gradients=gradients))
    problem = as_json(data)
    problem.update(theta=theta.tolist(), loss={"kind": "linear", "g": g.tolist()},
                   gradients=gradients)
    theirs = cli_derive(problem)
    for key in ["z_star", "grad_theta"] + [f"grad_{name}" for name in gradients]:
        for ours in answers:
            assert np.array_equal(ours[key], answers[0][key]), key
        close(answers[0][key], theirs[key], 1e-9)


@pytest.mark.parametrize("seed", range(12))
def test_derive_agrees_with_the_cli(seed):
    data, theta, _, g, _ = random_case(seed)
    betas = [0.1, 1e-4]
    gradients = ["Q", "B", "c", "A", "b", "A_eq", "b_eq"]
    gradients = [name for name in gradients if name in data or name in ("Q", "B", "c")]
    layer = bilevel.QuadraticLayer(**data)
    ours = layer.derive(theta, g, betas=betas, gradients=gradients)
    problem = as_json(data)
    problem.update(theta=theta.tolist(), loss={"kind": "linear", "g": g.tolist()}, betas=betas,
                   gradients=gradients)
    theirs = cli_derive(problem)
    for key in ["z_star", "multipliers", "multipliers_eq", "z_dot", "grad_theta"] + [
            f"grad_{name}" for name in gradients]:
        close(ours[key], theirs[key], 1e-9)
    for key in ["constraints", "branches", "dependent_constraints", "method", "solver"]:
        assert ours[key] == theirs[key], key
    for key in ["loss", "condition", "residual"]:
        close(ours[key], theirs[key], 1e-9)
    assert len(ours["surrogates"]) == len(theirs["surrogates"]) == 2
    for a, b in zip(ours["surrogates"], theirs["surrogates"]):
        for key in ["beta", "z_hat", "value", "grad_theta", "linearized_value",
                    "linearized_grad_theta", "bound_lower", "bound_upper", "bound_nu"]:
            close(a[key], b[key], 1e-9)


def test_squared_and_gradient_losses_agree_with_the_cli():
    data, theta, _, g, _ = random_case(100)
    layer = bilevel.QuadraticLayer(**data)
    problem = as_json(data)
    problem.update(theta=theta.tolist(), betas=[0.01])
    for loss, spec in [(("squared", g), {"kind": "squared", "target": g.tolist()}),
                       ({"kind": "gradient", "g": g}, {"kind": "gradient", "g": g.tolist()})]:
        ours = layer.derive(theta, loss, betas=[0.01])
        theirs = cli_derive(dict(problem, loss=spec))
        close(ours["grad_theta"], theirs["grad_theta"], 1e-9)
        close(ours["surrogates"][0]["value"], theirs["surrogates"][0]["value"], 1e-9)
        assert ("loss_note" in ours) == ("loss_note" in theirs)


def solution(data, theta):
    return bilevel.QuadraticLayer(**data).solve(theta)["z"]


@pytest.mark.parametrize("seed", range(8))
def test_vjp_and_jvp_match_central_differences_away_from_ties(seed):
    data, theta, z, g, _ = random_case(seed, weak=False)
    layer = bilevel.QuadraticLayer(**data)
    close(layer.solve(theta)["z"], z, 1e-10)
    h = 1e-6
    p = theta.size
    fd = np.array([(g @ layer.solve(theta + h * e)["z"] - g @ layer.solve(theta - h * e)["z"])
                   / (2 * h) for e in np.eye(p)])
    close(layer.vjp(theta, g), fd, 1e-6)
    v = np.random.default_rng(seed).standard_normal(p)
    close(layer.jvp(theta, v),
          (layer.solve(theta + h * v)["z"] - layer.solve(theta - h * v)["z"]) / (2 * h), 1e-6)
    # Away from ties the derivative is linear in g and in v.
    close(layer.vjp(theta, -g), -layer.vjp(theta, g), 1e-12)
    close(layer.jvp(theta, -v), -layer.jvp(theta, v), 1e-12)


@pytest.mark.parametrize("seed", range(16))
def test_one_sided_at_weakly_active_rows(seed):
    rng = np.random.default_rng(1000 + seed)
    n, p = 6, 3
    labels = ["weak", "weak", "strong", "inactive"]
    data, theta, _ = constructed_layer(rng, n, p, len(labels), 0, labels)
    layer = bilevel.QuadraticLayer(**data)
    assert layer.solve(theta)["constraints"] == labels
    t = 1e-7
    z0 = layer.solve(theta)["z"]
    for sign in (1.0, -1.0):
        v = sign * rng.standard_normal(p)
        # JVP: the forward difference along +v only (one-sided).
        close(layer.jvp(theta, v), (layer.solve(theta + t * v)["z"] - z0) / t, 1e-6)
        # VJP: ż is the one-sided derivative of ẑ_β = argmin βgᵀz + E, i.e. of the layer with
        # c − βg, solved by the forward solver only; dL/dθ = −Bᵀż (Cor. 1).
        g = rng.standard_normal(n)
        shifted = dict(data, c=data["c"] - t * g)
        z_dot = (solution(shifted, theta) - z0) / t
        close(layer.vjp(theta, g), -data["B"].T @ z_dot, 1e-6)
        out = layer.derive(theta, g)
        assert [b is not None for b in out["branches"]] == [True, True, False, False]
        # The branch taken is the one the difference quotient shows: a weak row "leaves" iff
        # A_i ż > 0 (the constraint Az ≥ b becomes slack).
        for i in (0, 1):
            leaves = data["A"][i] @ z_dot > 1e-6
            assert out["branches"][i] == ("leaves" if leaves else "stays")


def test_relu_tie_is_one_sided():
    # ReLU as a QP: z* = max(θ, 0). At θ₂ = 0 the second unit is weakly active.
    layer = bilevel.QuadraticLayer(np.eye(2), np.zeros(2), B=np.eye(2), A=np.eye(2), b=np.zeros(2))
    theta = np.array([1.0, 0.0])
    close(layer.solve(theta)["z"], [1.0, 0.0], 0)
    # L = 2z₁ − 3z₂: descending moves θ₂ up, the unit leaves the bound and passes −3 on.
    close(layer.vjp(theta, [2.0, -3.0]), [2.0, -3.0], 0)
    # L = −2z₁ + 3z₂: descending pushes θ₂ down, the unit stays at 0 and passes nothing.
    close(layer.vjp(theta, [-2.0, 3.0]), [-2.0, 0.0], 0)
    close(layer.jvp(theta, [0.0, 1.0]), [0.0, 1.0], 0)
    close(layer.jvp(theta, [0.0, -1.0]), [0.0, 0.0], 0)
    out = layer.derive(theta, [2.0, -3.0])
    assert out["constraints"] == ["inactive", "weak"]
    assert out["branches"] == [None, "leaves"]


def test_batches_equal_single_calls_for_every_thread_count():
    data, _, _, _, _ = random_case(7)
    layer = bilevel.QuadraticLayer(**data)
    rng = np.random.default_rng(7)
    thetas = rng.standard_normal((9, layer.p))
    gs = rng.standard_normal((9, layer.n))
    vs = rng.standard_normal((9, layer.p))
    singles_vjp = np.array([layer.vjp(t, g) for t, g in zip(thetas, gs)])
    singles_jvp = np.array([layer.jvp(t, v) for t, v in zip(thetas, vs)])
    for threads in (1, 2, 4):
        assert np.array_equal(layer.vjp(thetas, gs, threads=threads), singles_vjp)
        assert np.array_equal(layer.jvp(thetas, vs, threads=threads), singles_jvp)
        batch = layer.derive(thetas, gs[0], threads=threads)
        assert len(batch) == 9
        for t, out in zip(thetas, batch):
            assert np.array_equal(out["grad_theta"], layer.derive(t, gs[0])["grad_theta"])
        sols = layer.solve(thetas, threads=threads)
        for t, s in zip(thetas, sols):
            assert np.array_equal(s["z"], layer.solve(t)["z"])
    assert layer.vjp(thetas, gs).shape == (9, layer.p)
    assert layer.jvp(thetas, vs).shape == (9, layer.n)


def test_surrogates_keep_the_prop3_band_and_converge():
    data, theta, _, _, _ = random_case(3)
    layer = bilevel.QuadraticLayer(**data)
    target = np.random.default_rng(3).standard_normal(layer.n)
    loss = ("squared", target)
    limit = layer.derive(theta, loss)
    errors = {}
    for kind in ("contrastive", "linearized", "centered"):
        errors[kind] = []
        for beta in (1e-2, 5e-3, 2.5e-3):
            s = layer.surrogate(theta, loss, beta, kind=kind)
            if kind == "contrastive":
                assert s["bound_lower"] <= limit["loss"] <= s["bound_upper"]
                assert s["value"] == s["bound_lower"]
            errors[kind].append(np.linalg.norm(s["grad_theta"] - limit["grad_theta"]))
    # Def. 1 and Def. 2 are O(β) from the limit; near a weak row nothing better is promised,
    # so only the monotone approach is checked here (the rates are in `verify`).
    for kind, errs in errors.items():
        assert errs[-1] <= errs[0] + 1e-12, (kind, errs)


def test_verify_from_python_passes():
    rows = bilevel.verify(seed=0)
    assert len(rows) == len(bilevel.verify_ids()) >= 30
    failed = [r["id"] for r in rows if not r["passed"]]
    assert not failed, failed
    assert all(r["measured"] <= r["tolerance"] for r in rows)


# ---- error paths: an exception naming the argument, never a crash --------------------------

def relu_layer():
    return bilevel.QuadraticLayer(np.eye(2), np.zeros(2), B=np.eye(2), A=np.eye(2), b=np.zeros(2))


@pytest.mark.parametrize("call, error, text", [
    (lambda: relu_layer().vjp([1.0], [1.0, 2.0]), bilevel.DimensionMismatchError, "theta"),
    (lambda: relu_layer().vjp([1.0, 0.0], [1.0]), bilevel.DimensionMismatchError, "loss.g"),
    (lambda: relu_layer().jvp([1.0, 0.0], [1.0]), bilevel.DimensionMismatchError, "v"),
    (lambda: relu_layer().derive([1.0, 0.0], direction=[1.0]), bilevel.DimensionMismatchError,
     "direction"),
    (lambda: relu_layer().vjp([np.nan, 0.0], [1.0, 2.0]), bilevel.NonFiniteError, "theta"),
    (lambda: relu_layer().vjp([1.0, 0.0], [np.inf, 2.0]), bilevel.NonFiniteError, "loss.g"),
    (lambda: relu_layer().derive([1.0, 0.0], [1.0, 1.0], betas=[0.0]), bilevel.InvalidInputError,
     "betas[0]"),
    (lambda: relu_layer().derive([1.0, 0.0], [1.0, 1.0], gradients=["Z"]),
     bilevel.InvalidInputError, "gradients[0]"),
    (lambda: relu_layer().derive([1.0, 0.0]), bilevel.InvalidInputError, "loss"),
    (lambda: relu_layer().derive([1.0, 0.0], [1.0, 1.0], direction=[1.0, 0.0]),
     bilevel.InvalidInputError, "direction"),
    (lambda: relu_layer().derive([1.0, 0.0], ("cubic", [1.0, 1.0])), bilevel.InvalidInputError,
     "cubic"),
    (lambda: relu_layer().surrogate([1.0, 0.0], [1.0, 1.0], -1.0), bilevel.InvalidBetaError,
     "beta"),
    (lambda: relu_layer().surrogate([1.0, 0.0], [1.0, 1.0], 0.1, kind="odd"),
     bilevel.InvalidInputError, "kind"),
    (lambda: bilevel.QuadraticLayer([[1.0, 0.0], [0.0, -1.0]], [0.0, 0.0]),
     bilevel.NotPositiveDefiniteError, "Q"),
    (lambda: bilevel.QuadraticLayer([[1.0, 2.0], [0.0, 1.0]], [0.0, 0.0]),
     bilevel.NotPositiveDefiniteError, "Q"),
    (lambda: bilevel.QuadraticLayer(np.eye(2), [0.0]), bilevel.DimensionMismatchError, "c"),
    (lambda: bilevel.QuadraticLayer(np.eye(2), [0.0, 0.0], A=np.eye(2)), bilevel.InvalidInputError,
     "b"),
    (lambda: bilevel.QuadraticLayer(np.eye(2), [0.0, 0.0], A=np.ones((1, 3)), b=[0.0]),
     bilevel.DimensionMismatchError, "A"),
    (lambda: bilevel.QuadraticLayer(np.eye(2), [0.0, np.nan]), bilevel.NonFiniteError, "c"),
    (lambda: bilevel.QuadraticLayer(np.eye(2), [0.0, 0.0], backend="cvx"),
     bilevel.InvalidInputError, "backend"),
    (lambda: bilevel.QuadraticLayer(np.zeros((0, 0)), []), bilevel.InvalidInputError,
     "no variables"),
    (lambda: bilevel.QuadraticLayer([[1.0]], [0.0], A=[[1.0], [-1.0]], b=[1.0, 0.0]).solve([]),
     bilevel.InfeasibleError, "infeasible"),
    (lambda: relu_layer().vjp(np.zeros((3, 2)), np.zeros(2)), bilevel.DimensionMismatchError,
     "in g"),
    (lambda: relu_layer().vjp(np.zeros((2, 2, 2)), np.zeros(2)), bilevel.DimensionMismatchError,
     "theta"),
    (lambda: relu_layer().jvp([1.0, 0.0], np.zeros((1, 2))), bilevel.DimensionMismatchError,
     "in v"),
    (lambda: relu_layer().vjp([1.0, 0.0], [1.0, 1.0], threads=0), ValueError, "threads"),
    (lambda: bilevel.QuadraticLayer([1.0, 2.0], [0.0]), bilevel.DimensionMismatchError, "in Q"),
    (lambda: bilevel.QuadraticLayer(np.eye(2), np.eye(2)), bilevel.DimensionMismatchError, "in c"),
    (lambda: bilevel.QuadraticLayer(np.eye(2), [0.0, 0.0], B=[1.0, 2.0]),
     bilevel.DimensionMismatchError, "in B"),
    (lambda: relu_layer().derive([1.0, 0.0], [[1.0, 1.0]]), bilevel.DimensionMismatchError,
     "in loss"),
    (lambda: bilevel.QuadraticLayer(np.eye(2), ["a", "b"]), bilevel.InvalidInputError, "in c: dtype"),
    (lambda: relu_layer().derive([1.0, 0.0], {"g": [1.0, 1.0]}), TypeError, "kind"),
])
def test_errors_name_the_argument(call, error, text):
    with pytest.raises(error) as info:
        call()
    assert text in str(info.value)


def test_errors_carry_their_data_and_batches_their_index():
    with pytest.raises(bilevel.DimensionMismatchError) as info:
        relu_layer().vjp([1.0], [1.0, 2.0])
    assert (info.value.what, info.value.expected, info.value.found) == ("theta", "2", "1")
    assert isinstance(info.value, ValueError)
    thetas = np.zeros((4, 2))
    thetas[2, 0] = np.nan
    with pytest.raises(bilevel.NonFiniteError) as info:
        relu_layer().vjp(thetas, np.ones((4, 2)), threads=2)
    assert info.value.index == 2


def test_every_rust_error_has_its_exception_class():
    # The Rust crate's one list of its error variants' classes (Error::CLASS_NAMES).
    from bilevel import _bilevel, errors

    names = _bilevel.error_classes()
    assert len(names) == len(set(names))
    assert set(names) == set(errors.__all__) - {"BilevelError"}
    for name in names:
        assert issubclass(getattr(errors, name), errors.BilevelError), name


def test_overflowing_data_is_an_error_not_a_crash():
    layer = bilevel.QuadraticLayer(np.eye(2) * 1e-300, [1e300, 1e300], A=np.eye(2), b=[0.0, 0.0])
    with pytest.raises(bilevel.BilevelError):
        layer.derive([], [1e300, 1e300], betas=[1e300])


def test_memory_layout_and_integer_input_do_not_matter():
    data, theta, _, g, _ = random_case(11)
    reference = bilevel.QuadraticLayer(**data).vjp(theta, g)
    fortran = {key: np.asfortranarray(value) for key, value in data.items()}
    assert np.array_equal(bilevel.QuadraticLayer(**fortran).vjp(theta, g), reference)
    strided = {key: (value.T.copy().T if value.ndim == 2 else value[::-1].copy()[::-1])
               for key, value in data.items()}
    assert np.array_equal(bilevel.QuadraticLayer(**strided).vjp(theta, g), reference)
    relu = bilevel.QuadraticLayer(np.eye(2, dtype=int), [0, 0], B=np.eye(2, dtype=int),
                                  A=np.eye(2, dtype=np.int8), b=[0, 0])
    assert np.array_equal(relu.vjp([1, 0], [2, -3]), [2.0, -3.0])


def test_a_band_beyond_float64_accuracy_is_an_inaccurate_error():
    # ℓ' along the flattest direction of a Q with condition 4e12 (found by fuzzing): the band's
    # two sides agree to every digit float64 keeps, so it is reported inaccurate, not wrong.
    import json
    import pathlib
    path = pathlib.Path(__file__).parents[1] / "regressions" / "derive"
    problem = json.loads((path / "fuzz-band-flat-direction-ill-conditioned.json").read_text())
    layer = bilevel.QuadraticLayer(problem["Q"], problem["c"], B=np.zeros((3, 0)))
    g = problem["loss"]["g"]
    with pytest.raises(bilevel.InaccurateError) as info:
        layer.surrogate([], g, problem["betas"][0])
    assert isinstance(info.value, ArithmeticError) and "Prop. 3" in str(info.value)
    with pytest.raises(bilevel.InaccurateError):
        layer.derive([], g, betas=problem["betas"])
    assert np.isfinite(layer.derive([], g, betas=[1e-30])["surrogates"][0]["bound_upper"])


def test_activity_tolerances_decide_what_counts_as_a_tie():
    # θ₂ = 1e-12: the second unit is inactive by 1e-12, within the default feasibility
    # tolerance (1e-9, relative), so it is treated as a tie; with tolerance 0 it is not.
    data = dict(Q=np.eye(2), c=np.zeros(2), B=np.eye(2), A=np.eye(2), b=np.zeros(2))
    theta, g = [1.0, 1e-12], [-2.0, 3.0]
    tie = bilevel.QuadraticLayer(**data)
    assert tie.derive(theta, g)["constraints"] == ["inactive", "weak"]
    np.testing.assert_array_equal(tie.vjp(theta, g), [-2.0, 0.0])
    strict = bilevel.QuadraticLayer(**data, feasibility_tol=0.0)
    assert strict.derive(theta, g)["constraints"] == ["inactive", "inactive"]
    np.testing.assert_array_equal(strict.vjp(theta, g), [-2.0, 3.0])
    for bad in (-1e-9, 1.0, np.nan):
        with pytest.raises(bilevel.InvalidInputError, match="tolerances.feasibility"):
            bilevel.QuadraticLayer(**data, feasibility_tol=bad)
    with pytest.raises(bilevel.InvalidInputError, match="tolerances.multiplier"):
        bilevel.QuadraticLayer(**data, multiplier_tol=np.inf)


def test_qp_solve_is_the_quadratic_layer_in_the_frameworks_convention():
    # min ½zᵀQz + pᵀz s.t. Gz ≤ h, Az = b is QuadraticLayer(Q, c = −p, A = −G, b = −h, A_eq, b_eq)
    # with B = I at θ = 0: the same z*, and ∂ℓ/∂p = −vjp (c enters as Bθ).
    rng = np.random.default_rng(21)
    data, theta, _ = constructed_layer(rng, 5, 5, 3, 1, ["strong", "weak", "inactive"])
    c = data["B"] @ theta + data["c"]
    Q, G, h = data["Q"], -data["A"], -data["b"]
    p = -c
    layer = bilevel.QuadraticLayer(Q, np.zeros(5), B=np.eye(5), A=data["A"], b=data["b"],
                                   A_eq=data["A_eq"], b_eq=data["b_eq"])
    z, batch = bilevel.qp_solve(Q, p, G, h, data["A_eq"], data["b_eq"])
    close(z[0], layer.solve(c)["z"], 1e-12)
    g = rng.standard_normal(5)
    grads = batch.gradients(g[None, :])
    close(grads["p"][0], -layer.vjp(c, g), 1e-10)
    assert batch.status()[0]["activity"] == ["strong", "weak", "inactive"]
    assert grads["branches"][0][0] is None and grads["branches"][0][1] in ("leaves", "stays")
    # A shared layer with a batch of linear terms: one row per item, independent of the threads.
    ps = np.stack([p, 2 * p, -p])
    z3, _ = bilevel.qp_solve(Q, ps, G, h, data["A_eq"], data["b_eq"], threads=3)
    z1, _ = bilevel.qp_solve(Q, ps, G, h, data["A_eq"], data["b_eq"], threads=1)
    assert z3.shape == (3, 5) and np.array_equal(z3, z1)
    with pytest.raises(bilevel.DimensionMismatchError, match="grad_z"):
        batch.gradients(np.zeros((2, 5)))
    with pytest.raises(bilevel.InvalidInputError, match="mode"):
        batch.gradients(g[None, :], mode="forward")

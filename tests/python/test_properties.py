"""Property tests of the bindings (Hypothesis): whatever shape, dtype, memory layout or batch an
argument arrives in, every entry point gives the answer it gives for the same numbers as a
C-ordered float64 array — bit for bit — or raises a ``bilevel.errors`` exception that names the
argument; never another exception, a crash or a wrong shape. Invariances checked on the way: a
batch and its items, one thread and several.

The examples are derandomized (the profile in ``conftest.py``), so CI runs the same ones every
time and nothing is written into the tree."""

import re

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import bilevel
import bilevel.errors as errors
from conftest import constructed_layer, outcome, same

REAL = ["float64", "float32", "int64", "int8", "uint16", "bool", "object"]
REFUSED = ["complex128", "str", "datetime64[s]"]
LAYOUTS = ["C", "F", "strided", "list"]
LABELS = ["strong", "weak", "inactive"]


def present(a, dtype, layout):
    """`a` (float64) as the caller may pass it; with the float64 C-ordered array holding the
    same numbers (what the Rust side must see), or None when the dtype must be refused."""
    if dtype == "complex128":
        value = a.astype(np.complex128) * (1 + 1j)
    elif dtype == "str":
        value = a.astype(str)
    elif dtype.startswith("datetime64"):
        value = a.astype(np.int64).astype(dtype)
    else:
        value = a.astype(dtype)
    if layout == "F":
        value = np.asfortranarray(value)
    elif layout == "strided" and value.ndim:
        value = np.repeat(value, 2, axis=-1)[..., ::2]
    elif layout == "list":
        value = value.tolist()
    # What NumPy makes of it (a list loses the shape of an empty axis and the dtype of an empty
    # array): refused if complex or not a number, else these numbers as float64.
    seen = np.asarray(value)
    if seen.dtype.kind in "cUSMmV":
        return value, None
    try:
        return value, np.ascontiguousarray(seen.astype(np.float64))
    except (TypeError, ValueError):  # objects that are not real numbers
        return value, None


def names(error, name):
    """Whether the exception `error` is about the argument `name` (its `what` or `field`, as
    "B (rows)" or "loss.g")."""
    what = getattr(error, "what", None) or getattr(error, "field", None) or ""
    return re.match(rf"^([\w\[\]]*\.)?{re.escape(name)}(?!\w)", what) is not None


@st.composite
def layers(draw):
    """A constructed layer (its solution known) with `theta`, a loss vector `g` and a batch."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(1, 5))
    p = draw(st.integers(0, 3))
    k = draw(st.integers(0, min(1, n - 1)))
    m = draw(st.integers(0, n - k))
    labels = draw(st.lists(st.sampled_from(LABELS), min_size=m, max_size=m))
    data, theta, _ = constructed_layer(rng, n, p, m, k, labels)
    data.setdefault("A", np.zeros((0, n)))
    data.setdefault("b", np.zeros(0))
    batch = draw(st.sampled_from([None, 1, 3]))
    if batch is None:
        g = rng.standard_normal(n)
    else:
        theta = theta + 0.01 * rng.standard_normal((batch, p))
        g = rng.standard_normal((batch, n))
    return data, theta, g


LAYER_ARGS = ["Q", "c", "B", "A", "b", "A_eq", "b_eq", "theta", "g"]


def layer_calls(args):
    """solve and vjp of the layer built from `args` (keyword arguments and theta, g)."""
    data = {key: value for key, value in args.items() if key not in ("theta", "g")}

    def run():
        layer = bilevel.QuadraticLayer(**data)
        return {"solve": layer.solve(args["theta"]), "vjp": layer.vjp(args["theta"], args["g"])}
    return run


@given(layers(), st.sampled_from(LAYER_ARGS), st.sampled_from(REAL + REFUSED),
       st.sampled_from(LAYOUTS))
def test_layer_reads_any_presentation_as_its_numbers(case, name, dtype, layout):
    data, theta, g = case
    args = dict(data, theta=theta, g=g)
    assume(name in args)
    value, numbers = present(np.asarray(args[name], dtype=np.float64), dtype, layout)
    got = outcome(layer_calls(dict(args, **{name: value})))
    if numbers is None:
        assert isinstance(got, errors.InvalidInputError) and names(got, name), got
        return
    want = outcome(layer_calls(dict(args, **{name: numbers})))
    same(got, want)
    if dtype == "float64" and layout != "list":  # a list of empty lists loses an axis
        assert not isinstance(want, BaseException), want
        batch = None if np.ndim(theta) == 1 else len(theta)
        solutions = [want["solve"]] if batch is None else want["solve"]
        assert len(solutions) == (batch or 1)
        for s in solutions:
            assert s["z"].shape == (len(data["c"]),)
            assert s["multipliers"].shape == (len(data["b"]),)
        assert want["vjp"].shape == np.shape(theta)


def reshaped(a, how):
    """`a` with one size changed or an axis added or removed."""
    if how == "grow":
        return np.concatenate([a, np.ones((1,) + a.shape[1:])]) if a.ndim else np.ones(2)
    if how == "shrink_last" and a.ndim and a.shape[-1]:
        return a[..., :-1]
    if how == "add_axis":
        return a[None, None] if a.ndim == 1 else a[None]
    return a.reshape(-1)[:1] if a.size else np.ones(3)


# When two arguments disagree, either may be the one named: B fixes p (theta's length), the
# rows of A and b (A_eq and b_eq) must agree, and a theta batch fixes g's.
PARTNERS = {"B": "theta", "A": "b", "b": "A", "A_eq": "b_eq", "b_eq": "A_eq", "theta": "g"}


@given(layers(), st.sampled_from(LAYER_ARGS), st.sampled_from(["grow", "shrink_last", "add_axis",
                                                               "flatten"]))
def test_layer_names_the_argument_of_a_wrong_shape(case, name, how):
    data, theta, g = case
    args = dict(data, theta=theta, g=g)
    assume(name in args)
    a = np.asarray(args[name], dtype=np.float64)
    bad = reshaped(a, how)
    assume(bad.shape != a.shape)
    got = outcome(layer_calls(dict(args, **{name: bad})))
    assert isinstance(got, (errors.DimensionMismatchError, errors.InvalidInputError)), got
    assert names(got, name) or names(got, PARTNERS.get(name, name)), (name, str(got))


@given(layers(), st.sampled_from(LAYER_ARGS), st.sampled_from([np.nan, np.inf, -np.inf]),
       st.integers(0, 2**16))
def test_layer_names_the_argument_of_a_non_finite_value(case, name, bad, where):
    data, theta, g = case
    args = dict(data, theta=theta, g=g)
    assume(name in args and np.size(args[name]))
    a = np.array(args[name], dtype=np.float64)
    a.flat[where % a.size] = bad
    got = outcome(layer_calls(dict(args, **{name: a})))
    assert isinstance(got, errors.NonFiniteError) and names(got, name), got


@given(layers(), st.integers(1, 4))
def test_layer_batch_equals_its_items_on_any_thread_count(case, threads):
    data, theta, g = case
    assume(np.ndim(theta) == 2)
    layer = bilevel.QuadraticLayer(**data)
    batch = outcome(lambda: layer.solve(theta, threads=threads))
    items = [outcome(lambda t=t: layer.solve(t)) for t in theta]
    if isinstance(batch, BaseException):
        first = next(i for i, r in enumerate(items) if isinstance(r, BaseException))
        assert batch.index == first
        same(batch, items[first])
        return
    same(batch, items)
    same(layer.vjp(theta, g, threads=threads), np.stack([layer.vjp(t, x) for t, x in zip(theta, g)]))


def test_threads_below_one_are_refused_by_name():
    layer = bilevel.QuadraticLayer(np.eye(2), np.zeros(2))
    for threads in (0, -1):
        with pytest.raises(errors.InvalidInputError) as e:
            layer.solve([], threads=threads)
        assert e.value.field == "threads"
        with pytest.raises(errors.InvalidInputError) as e:
            bilevel.qp_solve(np.eye(2), np.zeros(2), np.zeros(0), np.zeros(0), np.zeros(0),
                             np.zeros(0), threads=threads)
        assert e.value.field == "threads"


def test_a_thread_count_beyond_the_items_gives_the_same_answer():
    layer = bilevel.QuadraticLayer(np.eye(2), np.zeros(2), B=np.eye(2), A=np.eye(2),
                                   b=np.zeros(2))
    theta = np.linspace(-1, 1, 10).reshape(5, 2)
    same(layer.solve(theta, threads=10**6), layer.solve(theta, threads=1))


# qp_solve: each input shared or batched, batches of 0 and more items.

QP_NAMES = ["Q", "p", "G", "h", "A", "b"]


@st.composite
def qp_batches(draw):
    """Items of `min ½zᵀQz + pᵀz`, `Gz ≤ h`, `Az = b` in qpth's convention (built from
    constructed layers with the same shape), each input shared or batched."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(1, 4))
    k = draw(st.integers(0, min(1, n - 1)))
    m = draw(st.integers(0, n - k))
    batch = draw(st.integers(0, 3))
    shared = draw(st.lists(st.booleans(), min_size=6, max_size=6))
    items = []
    for _ in range(max(batch, 1)):
        labels = [LABELS[int(rng.integers(3))] for _ in range(m)]
        data, theta, _ = constructed_layer(rng, n, 1, m, k, labels)
        A, b = data.get("A", np.zeros((0, n))), data.get("b", np.zeros(0))
        E, e = data.get("A_eq", np.zeros((0, n))), data.get("b_eq", np.zeros(0))
        items.append([data["Q"], -(data["B"] @ theta + data["c"]), -A, -b, E, e])
    if batch == 0:
        return [np.zeros((0, n, n))] + items[0][1:], batch, n
    inputs = [x if shared[j] else np.stack([item[j] for item in items])
              for j, x in enumerate(items[0])]
    return inputs, batch, n


def qp_call(inputs, threads=None):
    def run():
        z, result = bilevel.qp_solve(*inputs, threads=threads)
        grads = result.gradients(np.ones_like(z))
        return {"z": z, "grads": {key: value for key, value in grads.items()}}
    return run


@given(qp_batches(), st.sampled_from(range(6)), st.sampled_from(REAL + REFUSED),
       st.sampled_from(LAYOUTS))
def test_qp_solve_reads_any_presentation_as_its_numbers(case, j, dtype, layout):
    inputs, batch, n = case
    value, numbers = present(np.asarray(inputs[j], dtype=np.float64), dtype, layout)
    got = outcome(qp_call(inputs[:j] + [value] + inputs[j + 1:]))
    if numbers is None:
        assert isinstance(got, errors.InvalidInputError) and names(got, QP_NAMES[j]), got
        return
    same(got, outcome(qp_call(inputs[:j] + [numbers] + inputs[j + 1:])))
    if dtype == "float64" and layout != "list":  # a list of empty lists loses an axis
        assert not isinstance(got, BaseException), got
        items = batch if any(np.ndim(x) == base + 1 for x, base in
                             zip(inputs, (2, 1, 2, 1, 2, 1))) else 1
        assert got["z"].shape == (items, n)
        for name, x, base in zip(QP_NAMES, inputs, (2, 1, 2, 1, 2, 1)):
            assert got["grads"][name].shape == (items,) + np.shape(x)[np.ndim(x) - base:]


@given(qp_batches(), st.integers(1, 3))
def test_qp_solve_batch_equals_its_items_on_any_thread_count(case, threads):
    inputs, batch, n = case
    assume(batch >= 1)
    whole = qp_call(inputs, threads)()
    assert len(whole["z"]) == (batch if any(np.ndim(x) == base + 1 for x, base in
                                            zip(inputs, (2, 1, 2, 1, 2, 1))) else 1)
    for i in range(len(whole["z"])):
        item = [x[i] if np.ndim(x) == base + 1 else x
                for x, base in zip(inputs, (2, 1, 2, 1, 2, 1))]
        one = qp_call(item, 1)()
        same(whole["z"][i], one["z"][0])
        for name in QP_NAMES:
            same(whole["grads"][name][i], one["grads"][name][0])


@given(qp_batches(), st.sampled_from(range(6)))
def test_qp_solve_names_an_input_of_another_batch_size(case, j):
    inputs, batch, n = case
    bases = (2, 1, 2, 1, 2, 1)
    others = [i for i, x in enumerate(inputs) if i != j and np.ndim(x) == bases[i] + 1]
    assume(others)
    x = np.asarray(inputs[j])
    item = x[0] if x.ndim == bases[j] + 1 else x
    bad = np.stack([item] * (len(inputs[others[0]]) + 1))
    got = outcome(qp_call(inputs[:j] + [bad] + inputs[j + 1:]))
    assert isinstance(got, errors.DimensionMismatchError), got
    assert "batch size" in got.what, got


# Activations and networks.

ACTIVATIONS = ["identity", "relu", "hard_sigmoid", "hard_tanh", "softmax", ("box", -0.5, 2.0)]


@given(st.integers(0, 2**32 - 1), st.lists(st.integers(0, 3), min_size=1, max_size=3),
       st.sampled_from(ACTIVATIONS), st.sampled_from(["u", "g"]),
       st.sampled_from(REAL + REFUSED), st.sampled_from(LAYOUTS))
def test_activation_reads_any_presentation_as_its_numbers(seed, shape, name, arg, dtype, layout):
    rng = np.random.default_rng(seed)
    act = bilevel.Activation(name)
    args = {"u": rng.standard_normal(shape), "g": rng.standard_normal(shape)}
    value, numbers = present(args[arg], dtype, layout)

    def run(x):
        a = dict(args, **{arg: x})
        return {"call": act(a["u"]), "vjp": act.vjp(a["u"], a["g"]),
                "fenchel": act.fenchel_vjp(a["u"], a["g"], 0.5)}
    got = outcome(lambda: run(value))
    if numbers is None:
        assert isinstance(got, errors.InvalidInputError) and names(got, arg), got
        return
    want = outcome(lambda: run(numbers))
    same(got, want)
    if layout != "list":  # a list of empty lists loses an axis
        assert not isinstance(want, BaseException), want
        for value in want.values():
            assert value.shape == tuple(shape)


@given(st.integers(0, 2**32 - 1), st.lists(st.integers(1, 3), min_size=1, max_size=3),
       st.sampled_from(["u", "g"]), st.sampled_from([np.nan, np.inf]), st.booleans())
def test_activation_names_a_non_finite_or_misshapen_argument(seed, shape, arg, bad, misshapen):
    rng = np.random.default_rng(seed)
    args = {"u": rng.standard_normal(shape), "g": rng.standard_normal(shape)}
    if misshapen and arg == "g":
        args["g"] = reshaped(args["g"], "grow")
    else:
        args[arg].flat[int(rng.integers(args[arg].size))] = bad
    got = outcome(lambda: bilevel.Activation("relu").vjp(args["u"], args["g"]))
    expected = errors.DimensionMismatchError if misshapen and arg == "g" else errors.NonFiniteError
    assert isinstance(got, expected) and names(got, arg), got


@st.composite
def networks(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    widths = draw(st.lists(st.integers(1, 4), min_size=2, max_size=4))
    acts = draw(st.lists(st.sampled_from(["relu", "identity", "hard_tanh"]),
                         min_size=len(widths) - 1, max_size=len(widths) - 1))
    weights = [rng.standard_normal((b, a)) for a, b in zip(widths, widths[1:])]
    biases = [rng.standard_normal(b) for b in widths[1:]]
    batch = draw(st.integers(1, 3))
    x = rng.standard_normal((batch, widths[0]))
    target = rng.standard_normal((batch, widths[-1]))
    return weights, biases, acts, x, target


def network_call(weights, biases, acts, x, target):
    def run():
        net = bilevel.Network(weights, biases, acts)
        grad = net.gradient("bp", 0.1, x, target)
        return {"forward": net.forward(x), "value": grad["value"],
                "grad_weights": grad["grad_weights"], "grad_biases": grad["grad_biases"]}
    return run


@given(networks(), st.sampled_from(["weights", "biases", "x", "target"]),
       st.sampled_from(REAL + REFUSED), st.sampled_from(LAYOUTS), st.integers(0, 3))
def test_network_reads_any_presentation_as_its_numbers(case, name, dtype, layout, which):
    weights, biases, acts, x, target = case
    args = {"weights": list(weights), "biases": list(biases), "x": x, "target": target}
    arg = name
    if name in ("weights", "biases"):
        which %= len(weights)
        value, numbers = present(args[name][which], dtype, layout)
        arg = f"{name}[{which}]"
        swap = lambda v: dict(args, **{name: args[name][:which] + [v] + args[name][which + 1:]})
    else:
        value, numbers = present(args[name], dtype, layout)
        swap = lambda v: dict(args, **{name: v})
    got = outcome(network_call(acts=acts, **swap(value)))
    if numbers is None:
        assert isinstance(got, errors.InvalidInputError) and names(got, arg), got
        return
    same(got, outcome(network_call(acts=acts, **swap(numbers))))


@given(networks(), st.sampled_from(["x", "target"]), st.sampled_from(["grow", "shrink_last",
                                                                      "add_axis"]))
def test_network_names_a_misshapen_sample_argument(case, name, how):
    weights, biases, acts, x, target = case
    args = {"x": x, "target": target}
    bad = reshaped(args[name], how)
    assume(bad.shape != args[name].shape)
    args[name] = bad
    got = outcome(network_call(weights, biases, acts, args["x"], args["target"]))
    assert isinstance(got, errors.DimensionMismatchError), got
    # A longer batch of x is reported against target (x fixes the batch).
    blamed = "target" if name == "x" and how == "grow" else name
    assert names(got, blamed), got


# Huge shapes: NumPy broadcast views cost no memory, their copies would (512 TB here).

HUGE = np.broadcast_to(1.0, (2**23, 2**23))


def test_huge_arguments_are_refused_by_name_without_allocating():
    cases = [
        ("Q", lambda: bilevel.QuadraticLayer(HUGE, np.zeros(2**23))),
        ("u", lambda: bilevel.Activation("relu")(HUGE)),
        ("weights[0]", lambda: bilevel.Network([HUGE], [np.zeros(2**23)], ["relu"])),
        ("Q", lambda: bilevel.qp_solve(np.broadcast_to(1.0, (2, 2**23, 2**23)), np.zeros(2),
                                       np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))),
        ("x", lambda: bilevel.Network([np.ones((1, 2**23))], [np.zeros(1)], ["relu"]).forward(
            np.broadcast_to(1.0, (2**23, 2**23)))),
    ]
    for name, call in cases:
        with pytest.raises(errors.InvalidInputError) as e:
            call()
        assert e.value.field == name and "cannot be allocated" in str(e.value), e.value


def test_an_empty_qp_batch_gives_empty_answers_of_the_right_shapes():
    Q = np.zeros((0, 3, 3))
    z, result = bilevel.qp_solve(Q, np.zeros((0, 3)), np.ones((2, 3)), np.ones(2),
                                 np.zeros((0, 3)), np.zeros(0))
    assert z.shape == (0, 3) and len(result) == 0 and result.status() == []
    grads = result.gradients(np.zeros((0, 3)))
    assert grads["Q"].shape == (0, 3, 3) and grads["G"].shape == (0, 2, 3)
    assert grads["h"].shape == (0, 2) and grads["A"].shape == (0, 0, 3)
    with pytest.raises(errors.DimensionMismatchError) as e:
        result.gradients(np.zeros((1, 3)))
    assert e.value.what == "grad_z"

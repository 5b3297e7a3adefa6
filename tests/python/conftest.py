"""Shared helpers of the Python tests: random layers built backwards from a known answer, and
the command-line program `bilevel derive` as an independent front end to compare against."""

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest

import bilevel.errors

ROOT = pathlib.Path(__file__).resolve().parents[2]


def cli_path():
    """The `bilevel` executable: $BILEVEL_CLI, else the release build of this checkout."""
    path = pathlib.Path(os.environ.get("BILEVEL_CLI", ROOT / "target" / "release" / "bilevel"))
    if not path.is_file():
        pytest.fail(f"no bilevel executable at {path}: run `cargo build --release` or set BILEVEL_CLI")
    return path


def cli_derive(problem):
    """`bilevel derive -` on a problem dict; the parsed JSON answer."""
    text = json.dumps(problem)
    done = subprocess.run([str(cli_path()), "derive", "-"], input=text, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def random_spd(rng, n):
    m = rng.standard_normal((n, n))
    return m @ m.T + n * np.eye(n)


def constructed_layer(rng, n, p, m, k, labels):
    """A layer whose solution at a random theta is known: `labels[i]` in {"strong", "weak",
    "inactive"} fixes row i's activity (strong: multiplier in [0.5, 1.5]; weak: on the boundary
    with multiplier 0; inactive: slack in [0.5, 1.5]). Returns (data dict, theta, z_star)."""
    assert len(labels) == m
    Q = random_spd(rng, n)
    B = rng.standard_normal((n, p))
    A = rng.standard_normal((m, n))
    A_eq = rng.standard_normal((k, n))
    z = rng.standard_normal(n)
    theta = rng.standard_normal(p)
    lam = np.array([rng.uniform(0.5, 1.5) if lab == "strong" else 0.0 for lab in labels])
    slack = np.array([rng.uniform(0.5, 1.5) if lab == "inactive" else 0.0 for lab in labels])
    mu = rng.standard_normal(k)
    b = A @ z - slack
    b_eq = A_eq @ z
    # Stationarity: Q z − (B θ + c) − Aᵀλ − A_eqᵀμ = 0.
    c = Q @ z - B @ theta - A.T @ lam - A_eq.T @ mu
    data = {"Q": Q, "c": c, "B": B}
    if m:
        data.update(A=A, b=b)
    if k:
        data.update(A_eq=A_eq, b_eq=b_eq)
    return data, theta, z


def constructed_qp(rng, n=9, m=6, k=1):
    """A QP in qpth's convention (min ½zᵀQz + pᵀz, Gz ≤ h, Az = b) built backwards from z*: rows
    cycling strong, weak, inactive; G with zeros (about half), so that a sparse pattern is not
    the full matrix. Returns (data dict, z_star, labels)."""
    M = rng.uniform(-1, 1, (n, n))
    Q = M @ M.T / n + 0.3 * np.eye(n)
    G = rng.uniform(-1, 1, (m, n)) * (rng.uniform(0, 1, (m, n)) < 0.5)
    G[:, 0] += 1.0  # no empty row
    A = rng.uniform(-1, 1, (k, n))
    z = rng.uniform(-1, 1, n)
    labels = ["strong", "weak", "inactive"] * (m // 3)
    nu = np.array([rng.uniform(0.5, 2.0) if lab == "strong" else 0.0 for lab in labels])
    h = G @ z + np.array([0.75 if lab == "inactive" else 0.0 for lab in labels])
    p = -(Q @ z + G.T @ nu + A.T @ rng.uniform(-1, 1, k))
    return dict(Q=Q, p=p, G=G, h=h, A=A, b=A @ z), z, labels


def banded_qp(n):
    """A chain in qpth's convention: Q tridiagonal (2.5, −1), bounds z_i ≤ u_i on every third
    unit, labels cycling strong, weak, inactive; z* and multipliers in quarters, so the ties are
    exact. Returns (Q as (rows, cols, values), p, G as (rows, cols, values, n_rows), h, z*,
    labels), the matrices as triplets for any sparse front end."""
    z = ((np.arange(n) * 7) % 11) / 4.0 - 1.0
    i = np.arange(n)
    Q = (np.concatenate([i, i[1:], i[:-1]]), np.concatenate([i, i[:-1], i[1:]]),
         np.concatenate([2.5 * np.ones(n), -np.ones(2 * (n - 1))]))
    bounded = np.arange(0, n, 3)
    G = (np.arange(len(bounded)), bounded, np.ones(len(bounded)), len(bounded))
    labels = [["strong", "weak", "inactive"][r % 3] for r in range(len(bounded))]
    nu = np.array([0.5 + r % 4 if lab == "strong" else 0.0 for r, lab in enumerate(labels)])
    h = z[bounded] + np.array([0.75 if lab == "inactive" else 0.0 for lab in labels])
    Qz = 2.5 * z
    Qz[1:] -= z[:-1]
    Qz[:-1] -= z[1:]
    Gt_nu = np.zeros(n)
    Gt_nu[bounded] = nu
    return Q, -(Qz + Gt_nu), G, h, z, labels


def as_json(data):
    return {key: np.asarray(value).tolist() for key, value in data.items()}


def outcome(f):
    """`f()`'s result, or its exception if it is one of the package's; anything else fails."""
    try:
        return f()
    except bilevel.errors.BilevelError as e:
        return e


def same(a, b):
    """Equal results bit for bit (NaN equals NaN), or the same exception class and message."""
    if isinstance(a, BaseException) or isinstance(b, BaseException):
        assert type(a) is type(b) and str(a) == str(b), (a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            same(a[key], b[key])
    elif isinstance(a, (list, tuple)) and not (a and isinstance(a[0], (int, float, str))):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same(x, y)
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert np.asarray(a).shape == np.asarray(b).shape
        assert np.array_equal(a, b, equal_nan=True), (a, b)
    else:
        assert a == b or (a != a and b != b), (a, b)


# Hypothesis (tests/python/test_properties.py): the same examples on every run (derandomized),
# no example database written into the tree, no deadline (timing is not what is tested).
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("bilevel", derandomize=True, database=None, deadline=None,
                              max_examples=int(os.environ.get("BILEVEL_HYPOTHESIS_EXAMPLES", "200")),
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("bilevel")
except ImportError:  # only test_properties.py needs it, and fails loudly without it
    pass

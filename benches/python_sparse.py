"""The sparse layer through the Python front ends: ``bilevel.sparse_qp_solve`` (forward, then the
gradients), ``QPFunction`` with torch COO tensors (forward and ``backward()``) and
``bilevel.jax.qp`` with ``BCOO`` (``jax.jit(jax.grad(...))``), one thread, median of the repeats
after one warm-up, on the bounds-only chain of ``tests/python/conftest.py::banded_qp``.

    pip install . torch jax scipy && python benches/python_sparse.py [--sizes 1000,10000]
"""

import argparse
import pathlib
import sys
import warnings

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests" / "python"), str(HERE / "peers")]
from conftest import banded_qp  # noqa: E402
from timing import median_ms  # noqa: E402

import bilevel  # noqa: E402


def cases(n):
    """The timed calls on the chain of `n` units, by name."""
    import jax
    import jax.numpy as jnp
    import scipy.sparse as sp
    import torch
    from jax.experimental import sparse

    import bilevel.jax as bj
    from bilevel.torch import QPFunction

    jax.config.update("jax_enable_x64", True)
    (qr, qc, qv), p, (gr, gc, gv, m), h, _, _ = banded_qp(n)
    g = np.random.default_rng(1).uniform(-1, 1, n)
    Qs, Gs = sp.csc_array((qv, (qr, qc)), shape=(n, n)), sp.csc_array((gv, (gr, gc)), shape=(m, n))

    def scipy_call():
        _, sol = bilevel.sparse_qp_solve(Qs, p, Gs, h)
        sol.gradients(g)

    Qt = torch.sparse_coo_tensor(np.stack([qr, qc]), qv, (n, n)).coalesce()
    Gt = torch.sparse_coo_tensor(np.stack([gr, gc]), gv, (m, n)).coalesce()
    e, gt = torch.empty(0, dtype=torch.float64), torch.tensor(g)

    def torch_call():
        pt, G = torch.tensor(p, requires_grad=True), Gt.clone().requires_grad_(True)
        z = QPFunction(threads=1)(Qt, pt, G, torch.tensor(h), e, e)
        (z[0] * gt).sum().backward()

    Qj = sparse.BCOO((jnp.asarray(qv), jnp.stack([qr, qc], axis=1)), shape=(n, n))
    Gj = sparse.BCOO((jnp.asarray(gv), jnp.stack([gr, gc], axis=1)), shape=(m, n))
    gj, hj, ej = jnp.asarray(g), jnp.asarray(h), jnp.zeros((0,))

    def loss(data, p):
        G = sparse.BCOO((data, Gj.indices), shape=Gj.shape)
        return jnp.dot(gj, bj.qp(Qj, p, G, hj, ej, ej, threads=1)[0])

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))

    def jax_call():
        jax.block_until_ready(grad(Gj.data, jnp.asarray(p)))

    return {"sparse_qp_solve": scipy_call, "QPFunction (torch)": torch_call,
            "jax.qp (BCOO)": jax_call}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"{'n':>7}  {'front end':<20} {'fwd + grad ms':>14}")
    for n in (int(s) for s in args.sizes.split(",")):
        for name, fn in cases(n).items():
            print(f"{n:>7}  {name:<20} {median_ms(fn, args.repeats):>14.2f}")


if __name__ == "__main__":
    main()

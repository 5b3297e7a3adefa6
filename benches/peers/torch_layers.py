"""The batched QP layer in PyTorch and JAX against its peers, in one process.

Forward + backward for every input (Q, p, G, h and, where the layer has them, A, b) of a batch
of layers `min ½zᵀQz + pᵀz` s.t. `Gz ≤ h`, `Az = b` with their own data per item, float64, on
this machine's cores, each peer in its fastest documented formulation:

* `bilevel.torch.QPFunction` (the items on all cores) and `bilevel.jax.qp` under `jax.jit`;
* qpth's `QPFunction` (its batched PDIPM, `eps=1e-12` so that it is as exact as it can be, the
  default otherwise), if qpth imports;
* proxsuite's torch `QPFunction` (the QPLayer: `l = −∞`, `u = h`; `omp_parallel=True` when the
  build has OpenMP, its fastest setting), if proxsuite imports.

Each row reports the median of `--repeats` timed calls after one warm-up, and the ratio to the
fastest peer. Every peer also reports its largest gradient difference to bilevel's (all inputs,
relative): where no constraint is weakly active (random data) the derivatives agree to the
peers' tolerances.

    python3 -m pip install torch jax proxsuite && python3 -m pip install --no-deps qpth
    python3 benches/peers/torch_layers.py [--sizes 10,50,200] [--batch 128] [--repeats 5]
"""

import argparse
import sys
import types

import numpy as np
import torch

import bilevel.torch as bt

from timing import median_ms  # benches/peers/timing.py, next to this script

F64 = torch.float64


def instances(rng, batch, n, m, k):
    L = rng.standard_normal((batch, n, n))
    Q = L @ np.swapaxes(L, 1, 2) / n + np.eye(n)
    p = rng.standard_normal((batch, n))
    G = rng.standard_normal((batch, m, n))
    z0 = rng.standard_normal((batch, n))
    h = np.einsum("bmn,bn->bm", G, z0) + rng.uniform(0.1, 1.0, (batch, m))
    A = rng.standard_normal((batch, k, n))
    b = np.einsum("bkn,bn->bk", A, z0)
    return dict(Q=Q, p=p, G=G, h=h, A=A, b=b)


def torch_inputs(data, k):
    out = {name: torch.tensor(v, dtype=F64, requires_grad=True) for name, v in data.items()}
    if k == 0:
        out["A"] = torch.empty(0, dtype=F64)
        out["b"] = torch.empty(0, dtype=F64)
    return out


def run_bilevel(data, g, k):
    x = torch_inputs(data, k)
    z = bt.QPFunction()(x["Q"], x["p"], x["G"], x["h"], x["A"], x["b"])
    (z * g).sum().backward()
    return {name: t.grad for name, t in x.items() if t.grad is not None}


def run_qpth(qpth_fn):
    def run(data, g, k):
        x = torch_inputs(data, k)
        z = qpth_fn(x["Q"], x["p"], x["G"], x["h"], x["A"], x["b"])
        (z * g).sum().backward()
        return {name: t.grad for name, t in x.items() if t.grad is not None}
    return run


def run_proxsuite(fn):
    def run(data, g, k):
        x = torch_inputs(data, k)
        lower = torch.full_like(x["h"], -1e20)
        A, b = (x["A"], x["b"]) if k else (torch.empty(0, dtype=F64), torch.empty(0, dtype=F64))
        z = fn(x["Q"], x["p"], A, b, x["G"], lower, x["h"])[0]
        (z * g).sum().backward()
        return {name: t.grad for name, t in x.items() if t.grad is not None}
    return run


def jax_runner():
    import jax
    jax.config.update("jax_enable_x64", True)
    import bilevel.jax as bj

    grad = jax.jit(jax.grad(lambda g, *xs: (bj.qp(*xs) * g).sum(), argnums=tuple(range(1, 7))))

    def run(data, g, k):
        xs = [data[n] for n in ("Q", "p", "G", "h")]
        xs += [data["A"], data["b"]] if k else [np.zeros((0,)), np.zeros((0,))]
        out = grad(g.numpy(), *xs)
        jax.block_until_ready(out)
        names = ("Q", "p", "G", "h", "A", "b")
        return {n: torch.tensor(np.asarray(o)) for n, o in zip(names, out) if np.size(o)}
    return run


def peers():
    found = {"bilevel.torch": run_bilevel}
    try:
        found["bilevel.jax (jit)"] = jax_runner()
    except ImportError as e:
        print(f"(bilevel.jax skipped: {e})")
    try:
        sys.modules.setdefault("cvxpy", types.ModuleType("cvxpy"))
        from qpth.qp import QPFunction as QpthFunction
        found["qpth"] = run_qpth(QpthFunction(verbose=-1, eps=1e-12))
    except ImportError as e:
        print(f"(qpth skipped: {e})")
    try:
        from proxsuite.torch.qplayer import QPFunction as ProxFunction
        fn = ProxFunction(omp_parallel=True)
        try:
            run_proxsuite(fn)(instances(np.random.default_rng(0), 2, 3, 1, 0),
                              torch.ones(2, 3, dtype=F64), 0)
            found["proxsuite QPLayer (omp)"] = run_proxsuite(fn)
        except Exception as e:  # the build may have no OpenMP
            print(f"(proxsuite without OpenMP: {e})")
            found["proxsuite QPLayer"] = run_proxsuite(ProxFunction())
    except ImportError as e:
        print(f"(proxsuite skipped: {e})")
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,50,200")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--equalities", type=int, default=0, help="rows of A (default none)")
    args = ap.parse_args()
    found = peers()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, batch "
          f"{args.batch}, m = n/2, k = {args.equalities}, float64, forward + backward of all "
          f"inputs, median of {args.repeats}")
    print(f"{'n':>5}  {'layer':<26} {'ms':>10} {'x fastest peer':>15} {'grad diff':>10}")
    for n in [int(s) for s in args.sizes.split(",")]:
        rng = np.random.default_rng(n)
        k = args.equalities
        data = instances(rng, args.batch, n, n // 2, k)
        g = torch.tensor(rng.standard_normal((args.batch, n)), dtype=F64)
        reference = run_bilevel(data, g, k)
        rows = {}
        for name, run in found.items():
            ms = median_ms(lambda: run(data, g, k), args.repeats)
            grads = run(data, g, k)
            diff = max(float(torch.max(torch.abs(grads[v] - reference[v])))
                       / max(1.0, float(torch.max(torch.abs(reference[v]))))
                       for v in reference)
            rows[name] = (ms, diff)
        peer_times = [ms for name, (ms, _) in rows.items() if not name.startswith("bilevel")]
        fastest = min(peer_times) if peer_times else float("nan")
        for name, (ms, diff) in rows.items():
            print(f"{n:>5}  {name:<26} {ms:>10.2f} {ms / fastest:>15.2f} {diff:>10.1e}")


if __name__ == "__main__":
    main()

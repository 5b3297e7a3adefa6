"""The QP layer against its peers on the same instances, in one run.

Runs `cargo bench --bench qp_peers` (bilevel's `limit`: forward solve + the one-sided
derivative of the loss g^T z* with respect to theta, one thread; it writes each instance with
its timing and gradient as JSON), then times on the very same data what proxsuite's QPLayer
does per item (`proxsuite.proxqp.dense.QP` with the QPLayer's settings, `init`, `solve`,
`compute_backward` with the QPLayer's backward settings; torch's tensor copies are left out,
which favours proxsuite) and qpth's `QPFunction` if torch and qpth are importable, and prints
the ratio table with each peer's gradient error against bilevel's exact one, for θ and for the
layer's data (Q, c, A, b) where the peer returns them.

    python3 -m pip install proxsuite numpy          # torch + qpth optional
    python3 benches/peers/qp_layers.py [--sizes 10,50,100,200] [--repeats 5] [--instances DIR]

The layer: E(z; theta) = 1/2 z^T Q z - z^T (B theta + c) s.t. A z >= b. In proxsuite's form
H = Q, g = -(B theta + c), C = A, l = b, u = +inf, and dL/dtheta = -B^T dL/dg.
"""

import argparse
import glob
import json
import os
import subprocess
import sys

import numpy as np

from timing import median_ms  # benches/peers/timing.py, next to this script


def proxsuite_item(inst):
    import proxsuite

    Q, B, c, A, b = (np.array(inst[k], dtype=float) for k in ("Q", "B", "c", "A", "b"))
    theta, g = np.array(inst["theta"]), np.array(inst["g"])
    n, m = Q.shape[0], A.shape[0]
    lin = -(B @ theta + c)
    upper = np.full(m, 1e20)
    out = {}

    def run():
        qp = proxsuite.proxqp.dense.QP(n, 0, m)
        # The settings proxsuite.torch.qplayer.QPFunction uses (eps = 1e-9 by default).
        qp.settings.primal_infeasibility_solving = False
        qp.settings.max_iter = 1000
        qp.settings.max_iter_in = 100
        qp.settings.default_rho = 5.0e-5
        qp.settings.refactor_rho_threshold = 5.0e-5
        qp.settings.eps_abs = 1e-9
        qp.init(H=Q, g=lin, A=None, b=None, C=A, l=b, u=upper, rho=5.0e-5)
        qp.solve()
        rhs = np.zeros(n + m)
        rhs[:n] = g
        proxsuite.proxqp.dense.compute_backward(
            qp=qp, loss_derivative=rhs, eps=1e-4, rho_backward=1e-6, mu_backward=1e-6
        )
        bd = qp.model.backward_data
        out["grad"] = -B.T @ np.array(bd.dL_dg)
        # The data: H = Q (compared symmetrized), g = -(B theta + c), C = A, l = b.
        dh = np.array(bd.dL_dH)
        out["data"] = {
            "Q": 0.5 * (dh + dh.T),
            "c": -np.array(bd.dL_dg),
            "A": np.array(bd.dL_dC),
            "b": np.array(bd.dL_dl),
        }

    ms = median_ms(run, repeats(n))
    return ms, out["grad"], out.get("data")


def qpth_item(inst):
    import torch
    from qpth.qp import QPFunction

    Q, B, c, A, b = (torch.tensor(inst[k], dtype=torch.float64) for k in ("Q", "B", "c", "A", "b"))
    theta, g = (torch.tensor(inst[k], dtype=torch.float64) for k in ("theta", "g"))
    n = Q.shape[0]
    out = {}

    def run():
        t = theta.clone().requires_grad_(True)
        lin = -(B @ t + c)
        # qpth: min 1/2 z^T Q z + p^T z s.t. G z <= h, A z = b (empty equality block).
        z = QPFunction(verbose=-1)(Q, lin, -A, -b, torch.empty(0, n, dtype=torch.float64), torch.empty(0, dtype=torch.float64))
        (z[0] @ g).backward()
        out["grad"] = t.grad.numpy()

    ms = median_ms(run, max(3, repeats(n) // 4))
    return ms, out["grad"], None


LEAST_REPEATS = 5


def repeats(n):
    return max(LEAST_REPEATS, min(200, 2_000_000 // (n**3 // 4 + 1000)))


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="10,50,100,200")
    p.add_argument("--instances", help="use these JSON instances instead of running cargo")
    p.add_argument("--repeats", type=int, default=5,
                   help="at least this many timed repeats per instance, on every side (median)")
    args = p.parse_args()
    global LEAST_REPEATS
    LEAST_REPEATS = max(1, args.repeats)
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    out = args.instances or os.path.join(root, "target", "qp-peers")
    if not args.instances:
        subprocess.run(
            ["cargo", "bench", "--bench", "qp_peers", "--", "--out", out, "--sizes", args.sizes,
             "--repeats", str(LEAST_REPEATS), "--no-batch"],
            cwd=root,
            check=True,
        )
    peers = []
    for name, fn, module in [("proxsuite", proxsuite_item, "proxsuite"), ("qpth", qpth_item, "qpth")]:
        try:
            __import__(module)
            peers.append((name, fn))
        except ImportError:
            print(f"({name} not importable: skipped)", file=sys.stderr)
    files = sorted(glob.glob(os.path.join(out, "*.json")), key=lambda f: (json.load(open(f))["n"], f))
    header = f"{'n':>5} {'kind':>7} {'bilevel ms':>11}"
    for name, _ in peers:
        header += f" {name + ' ms':>13} {'ratio':>7} {'grad err':>9} {'data err':>9}"
    print(header)
    for f in files:
        inst = json.load(open(f))
        ours = np.array(inst["grad_theta"])
        line = f"{inst['n']:>5} {inst['kind']:>7} {inst['limit_ms']:>11.4f}"
        for name, fn in peers:
            try:
                ms, grad, data = fn(inst)
                line += f" {ms:>13.4f} {inst['limit_ms'] / ms:>7.3f} {rel(grad, ours):>9.1e}"
                if data is None:
                    line += f" {'-':>9}"
                else:
                    worst = max(rel(data[k], np.array(inst["grad_" + k])) for k in data)
                    line += f" {worst:>9.1e}"
            except Exception as e:  # a peer failing on an instance is a result too
                line += f" {'failed':>13} {'':>7} {type(e).__name__:>9}"
        print(line, flush=True)
    print("ratio = bilevel time / peer time (below 1: bilevel faster); grad err = the peer's")
    print("max |dL/dtheta - exact| / max(1, |exact|), exact = bilevel's (one-sided at weak rows);")
    print("data err = the same for dL/dQ (symmetrized), dL/dc, dL/dA, dL/db, the worst of the four")


if __name__ == "__main__":
    main()

"""The sparse QP layer against its peers on the same instances, in one run.

Runs `cargo bench --bench sparse_growth` for each family (bilevel's sparse layer: forward
solve + the exact one-sided gradient of g^T z*; it writes each instance as JSON triplets), then
times on the very same data, per item and one thread:

* proxsuite's sparse backend (`proxsuite.proxqp.sparse.QP`, eps_abs = 1e-9), forward only, and
  "proxsuite + KKT backward": its forward solve plus the derivative a layer built on it would
  compute (OptNet's backward: one sparse LU, SciPy's SuperLU, of the KKT system on the rows
  proxsuite's multipliers mark active, with the loss gradient as right-hand side). proxsuite
  has no sparse backward of its own (`compute_backward` is dense only), so this is the
  strongest sparse baseline with a derivative that its API allows;
* Clarabel and OSQP (Python packages), forward only (they give no derivative).

It prints time ratios (bilevel / peer), the peers' solution error against bilevel's exact
z*, and the fitted growth exponents, writes the peers' growth tables (`peers-<family>.csv`,
beside the bench's `growth-<family>.csv`) and draws every curve, log-log with its fitted
exponent, to `<out>/growth.svg` with `bilevel plot --growth`.

    python3 -m pip install proxsuite clarabel osqp scipy numpy
    python3 benches/peers/sparse_layers.py [--families banded,random,box,simplex]
        [--sizes 100,1000,10000] [--repeats 5] [--out target/sparse-peers]

Conventions: the layer is min 1/2 z^T Q z + p^T z s.t. G z <= h, A z = b.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from timing import median_ms  # benches/peers/timing.py, next to this script


def csc(triplets, shape):
    if not triplets:
        return sp.csc_matrix(shape)
    t = np.array(triplets, dtype=float)
    return sp.csc_matrix((t[:, 2], (t[:, 0].astype(int), t[:, 1].astype(int))), shape=shape)


def load(path):
    with open(path) as f:
        inst = json.load(f)
    n, m, k = inst["n"], inst["m"], inst["k"]
    return {
        "n": n,
        "Q": csc(inst["Q"], (n, n)),
        "p": np.array(inst["p"]),
        "G": csc(inst["G"], (m, n)),
        "h": np.array(inst["h"]),
        "A": csc(inst["A"], (k, n)),
        "b": np.array(inst["b"]),
        "g": np.array(inst["g"]),
        "z_star": np.array(inst["z_star"]),
        "bilevel_ms": inst["bilevel_forward_ms"] + inst["bilevel_gradient_ms"],
        "bilevel_mb": inst["bilevel_peak_mb"],
    }


def proxsuite_solve(d):
    import proxsuite

    n, m, k = d["n"], d["G"].shape[0], d["A"].shape[0]
    qp = proxsuite.proxqp.sparse.QP(n, k, m)
    qp.settings.eps_abs = 1e-9
    qp.settings.eps_rel = 0.0
    qp.settings.verbose = False
    lower = np.full(m, -1e20)
    qp.init(
        H=d["Q"],
        g=d["p"],
        A=d["A"] if k else None,
        b=d["b"] if k else None,
        C=d["G"],
        l=lower,
        u=d["h"],
    )
    qp.solve()
    return qp.results


def kkt_backward(d, z, lam):
    """OptNet's backward on the active rows: [Q G_S^T A^T; G_S 0 0; A 0 0] [dz; .] = [-g; 0]."""
    n = d["n"]
    active = np.flatnonzero(lam > 1e-9 * max(1.0, np.abs(lam).max(initial=0.0)))
    rows = sp.vstack([d["G"][active], d["A"]]).tocsc()
    r = rows.shape[0]
    kkt = sp.bmat([[d["Q"], rows.T], [rows, None]], format="csc")
    rhs = np.zeros(n + r)
    rhs[:n] = -d["g"]
    sol = spla.splu(kkt).solve(rhs)
    return sol[:n]


def peers(d, repeats):
    out = {}
    res = {}

    def prox():
        res["r"] = proxsuite_solve(d)

    out["proxsuite fwd"] = median_ms(prox, repeats)
    z = np.array(res["r"].x)
    lam = np.array(res["r"].z)

    def prox_bwd():
        r = proxsuite_solve(d)
        kkt_backward(d, np.array(r.x), np.array(r.z))

    out["proxsuite+KKT"] = median_ms(prox_bwd, repeats)
    try:
        import clarabel

        def clar():
            n, m, k = d["n"], d["G"].shape[0], d["A"].shape[0]
            P = sp.triu(d["Q"]).tocsc()
            A = sp.vstack([d["A"], d["G"]]).tocsc()
            b = np.concatenate([d["b"], d["h"]])
            cones = ([clarabel.ZeroConeT(k)] if k else []) + [clarabel.NonnegativeConeT(m)]
            s = clarabel.DefaultSettings()
            s.verbose = False
            s.max_threads = 1
            clarabel.DefaultSolver(P, d["p"], A, b, cones, s).solve()

        out["clarabel fwd"] = median_ms(clar, repeats)
    except ImportError:
        pass
    try:
        import osqp

        def run_osqp():
            m, k = d["G"].shape[0], d["A"].shape[0]
            A = sp.vstack([d["G"], d["A"]]).tocsc()
            lo = np.concatenate([np.full(m, -np.inf), d["b"]])
            hi = np.concatenate([d["h"], d["b"]])
            solver = osqp.OSQP()
            solver.setup(
                P=sp.triu(d["Q"]).tocsc(), q=d["p"], A=A, l=lo, u=hi,
                eps_abs=1e-9, eps_rel=0.0, verbose=False, polishing=True,
            )
            solver.solve()

        out["osqp fwd"] = median_ms(run_osqp, repeats)
    except ImportError:
        pass
    return out, z


def slope(xs, ys):
    lx, ly = np.log(xs), np.log(ys)
    return float(np.polyfit(lx, ly, 1)[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="banded,random,box,simplex")
    ap.add_argument("--sizes", default="100,300,1000,3000,10000")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="target/sparse-peers")
    ap.add_argument("--no-cargo", action="store_true", help="reuse the instances in --out")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    curves = {}
    errors = {}
    for family in a.families.split(","):
        if not a.no_cargo:
            subprocess.run(
                ["cargo", "bench", "--bench", "sparse_growth", "--", "--family", family,
                 "--sizes", a.sizes, "--repeats", str(a.repeats), "--out", a.out],
                check=True,
            )
        print(f"\n{family}: ms per item (forward + exact gradient for bilevel), ratio bilevel / peer")
        header = None
        for n in sizes:
            d = load(os.path.join(a.out, f"{family}-{n}.json"))
            times, z = peers(d, a.repeats)
            errors.setdefault(family, []).append((n, float(np.abs(z - d["z_star"]).max())))
            if header is None:
                header = list(times)
                print(f"{'n':>7} {'bilevel':>9} " + " ".join(f"{h:>15}" for h in header)
                      + " " + " ".join(f"{'/ ' + h:>17}" for h in header))
            print(f"{n:>7} {d['bilevel_ms']:>9.2f} "
                  + " ".join(f"{times[h]:>15.2f}" for h in header) + " "
                  + " ".join(f"{d['bilevel_ms'] / times[h]:>17.2f}" for h in header))
            for name, ms in [("bilevel", d["bilevel_ms"])] + list(times.items()):
                curves.setdefault(family, {}).setdefault(name, []).append((n, ms))
        print("  proxsuite's |z - z*| (z* by construction; bilevel's is below 1e-10 by assertion): "
              + ", ".join(f"n = {n}: {e:.1e}" for n, e in errors[family]))
        for name, pts in curves[family].items():
            xs, ys = zip(*pts)
            if len(xs) >= 2:
                print(f"  growth exponent {name}: {slope(xs, ys):.2f}")
    # The peers' growth tables next to bilevel's (growth-<family>.csv, written by the bench),
    # and every curve drawn log-log by `bilevel plot --growth` (no plotting package needed).
    for family, series in curves.items():
        path = os.path.join(a.out, f"peers-{family}.csv")
        with open(path, "w") as f:
            f.write("family,backend,n,ms,peak_mb\n")
            for name, pts in series.items():
                if name != "bilevel":
                    f.writelines(f"{family},{name},{n},{ms!r},\n" for n, ms in pts)
        print(f"wrote {path}")
    tables = [os.path.join(a.out, f"{kind}-{family}.csv")
              for family in curves for kind in ("growth", "peers")]
    plot = ["cargo", "run", "--release", "--quiet", "--", "plot", "--growth", *tables,
            "-o", os.path.join(a.out, "growth.svg")]
    subprocess.run(plot, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

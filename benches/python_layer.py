"""The Python layer's cost: per-call overhead against the Rust call in the same process, and the
time of one QP-layer derivative (``QuadraticLayer.vjp``) at n = 10, 50, 200, batch 1 and 64.

    pip install . && python benches/python_layer.py [--repeats N]

The Rust time is measured inside Rust by ``QuadraticLayer._rust_vjp_seconds`` (the same
computation as ``vjp``, timed around the loop without the argument conversion); the overhead is
the Python call's median time minus it. Instances: ``m = n/2`` inequality rows built backwards
from a known solution, a third of them strongly active, a third weakly active (ties), ``p = n``.
"""

import argparse
import statistics
import time

import numpy as np

import bilevel


def instance(n, seed):
    rng = np.random.default_rng(seed)
    m = n // 2
    M = rng.standard_normal((n, n))
    Q = M @ M.T + n * np.eye(n)
    B = np.eye(n)
    A = rng.standard_normal((m, n))
    z = rng.standard_normal(n)
    theta = rng.standard_normal(n)
    labels = np.arange(m) % 3  # 0 strong, 1 weak, 2 inactive
    lam = np.where(labels == 0, rng.uniform(0.5, 1.5, m), 0.0)
    b = A @ z - np.where(labels == 2, rng.uniform(0.5, 1.5, m), 0.0)
    c = Q @ z - B @ theta - A.T @ lam
    return bilevel.QuadraticLayer(Q, c, B=B, A=A, b=b), theta, rng


def median_seconds(call, repeats):
    call()  # warm: the factorization is built on first use
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    print(f"bilevel {bilevel.__version__}; times are medians of {args.repeats} calls "
          "(Rust: mean inside Rust, same process)")
    print(f"{'n':>4} {'batch':>5} {'threads':>7} {'python':>11} {'rust':>11} {'overhead':>10} "
          f"{'per item':>10}")
    for n in (2, 10, 50, 200):
        layer, theta, rng = instance(n, n)
        g = rng.standard_normal(n)
        reps = args.repeats if n < 200 else max(args.repeats // 4, 10)
        python = median_seconds(lambda: layer.vjp(theta, g), reps)
        rust = layer._rust_vjp_seconds(theta, g, repeats=reps)
        print(f"{n:>4} {1:>5} {1:>7} {python * 1e6:>9.1f}us {rust * 1e6:>9.1f}us "
              f"{(python - rust) * 1e6:>8.1f}us {python * 1e6:>8.1f}us")
        thetas = theta + 0.1 * rng.standard_normal((64, n))
        gs = rng.standard_normal((64, n))
        for threads in (1, 2):
            reps64 = max(reps // 8, 5)
            python = median_seconds(lambda: layer.vjp(thetas, gs, threads=threads), reps64)
            rust = layer._rust_vjp_seconds(thetas, gs, repeats=reps64, threads=threads)
            print(f"{n:>4} {64:>5} {threads:>7} {python * 1e6:>9.1f}us {rust * 1e6:>9.1f}us "
                  f"{(python - rust) * 1e6:>8.1f}us {python / 64 * 1e6:>8.1f}us")


if __name__ == "__main__":
    main()

"""Memory of the Python bindings over many calls: the resident set size after a warm-up and
every `--every` calls after it, for each entry point, with 2 Python threads sharing one layer
(or one network). A leak of a few bytes per call shows as steady growth across the samples.

    python benches/python_memory.py [--calls 100000] [--every 10000]

Prints one line per entry point: RSS after the warm-up, at the end, the largest growth between
samples, and the growth per call fitted over the second half of the samples (bytes).
Linux only (reads /proc/self/statm)."""

import argparse
import os
import threading

import numpy as np

import bilevel

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def entry_points():
    rng = np.random.default_rng(0)
    n, p, m = 12, 3, 8
    M = rng.standard_normal((n, n))
    Q = M @ M.T + n * np.eye(n)
    B, A = rng.standard_normal((n, p)), rng.standard_normal((m, n))
    c, b = rng.standard_normal(n), A @ rng.standard_normal(n) - 0.1
    layer = bilevel.QuadraticLayer(Q, c, B=B, A=A, b=b)
    theta, g = rng.standard_normal((4, p)), rng.standard_normal((4, n))
    widths = [6, 8, 3]
    net = bilevel.Network([rng.standard_normal((b_, a)) for a, b_ in zip(widths, widths[1:])],
                          [rng.standard_normal(b_) for b_ in widths[1:]], ["relu", "identity"])
    x, y = rng.standard_normal((8, 6)), rng.standard_normal((8, 3))
    relu = bilevel.Activation("relu")
    u = rng.standard_normal((8, 16))

    def qp():
        z, batch = bilevel.qp_solve(Q, -c[None], A * -1, -b, np.zeros((0, n)), np.zeros(0),
                                    threads=1)
        batch.gradients(np.ones_like(z))

    def refused():
        try:
            layer.solve(np.zeros(p + 1))
        except bilevel.errors.DimensionMismatchError:
            pass

    return {
        "QuadraticLayer.solve": lambda: layer.solve(theta, threads=1),
        "QuadraticLayer.vjp": lambda: layer.vjp(theta, g, threads=1),
        "QuadraticLayer.derive": lambda: layer.derive(theta[0], g[0], betas=[0.1],
                                                      gradients=["Q", "A"]),
        "qp_solve + gradients": qp,
        "Network.gradient (mac)": lambda: net.gradient("mac", 0.1, x, y),
        "Activation.vjp": lambda: relu.vjp(u, u),
        "an error raised": refused,
    }


def measure(call, calls, every):
    for _ in range(1000):
        call()
    samples = [rss()]
    done = 0

    def work(k):
        for _ in range(k):
            call()

    while done < calls:
        k = min(every, calls - done) // 2
        threads = [threading.Thread(target=work, args=(k,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done += 2 * k
        samples.append(rss())
    half = samples[len(samples) // 2:]
    xs = np.arange(len(half)) * every
    slope = np.polyfit(xs, half, 1)[0] if len(half) > 1 else 0.0
    steps = np.diff(samples)
    return samples[0], samples[-1], int(steps.max(initial=0)), slope


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=10_000)
    args = parser.parse_args()
    print(f"{'entry point':<26} {'RSS start':>10} {'RSS end':>10} {'max step':>10} "
          f"{'bytes/call':>10}   ({args.calls} calls, 2 threads)")
    for name, call in entry_points().items():
        start, end, step, slope = measure(call, args.calls, args.every)
        print(f"{name:<26} {start / 2**20:>8.1f}MB {end / 2**20:>8.1f}MB "
              f"{step / 2**10:>8.0f}kB {slope:>10.3f}", flush=True)


if __name__ == "__main__":
    main()

"""Many Python threads calling one `QuadraticLayer` and one `Network` at once: the bindings
release the GIL while Rust computes, so the calls really overlap (every thread waits at a
barrier and then starts its calls together with the others, each call itself spreading its
items over Rust threads). Every result must equal the same call made alone, bit for bit."""

import threading

import numpy as np

import bilevel
from conftest import constructed_layer, outcome, same

THREADS = 8
CALLS = 12


def run_together(jobs):
    """Runs every job (a list of zero-argument callables, one list per thread) on its own
    thread, all released at once by a barrier; returns each thread's outcomes in order and
    re-raises the first exception from outside the package a thread met."""
    barrier = threading.Barrier(len(jobs))
    results = [None] * len(jobs)
    failures = []

    def work(t):
        try:
            barrier.wait()
            results[t] = [outcome(job) for job in jobs[t]]
        except BaseException as e:  # noqa: BLE001 — reported on the main thread
            failures.append(e)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(len(jobs))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failures:
        raise failures[0]
    return results


def test_one_layer_called_from_many_threads_equals_each_call_alone():
    rng = np.random.default_rng(21)
    # Large enough that a call lasts longer than a thread switch (n = 40, 30 rows, 8 items).
    labels = ["strong", "weak", "inactive"] * 10
    data, theta, _ = constructed_layer(rng, 40, 3, 30, 1, labels)
    layer = bilevel.QuadraticLayer(**data)
    calls = []
    for t in range(THREADS):
        thread_calls = []
        for c in range(CALLS):
            # Every third call at the constructed theta itself: weak rows, one-sided branches.
            th = theta + 0.05 * rng.standard_normal((8, 3)) * (c % 3 != 0)
            g = rng.standard_normal((8, 40))
            kind = (t + c) % 4
            if kind == 0:
                thread_calls.append(lambda th=th: layer.solve(th, threads=2))
            elif kind == 1:
                thread_calls.append(lambda th=th, g=g: layer.vjp(th, g, threads=2))
            elif kind == 2:
                thread_calls.append(lambda th=th, g=g: layer.jvp(th, g[:, :3], threads=2))
            else:
                thread_calls.append(lambda th=th, g=g: layer.derive(
                    th[0], g[0], betas=[0.1], gradients=["Q", "A", "b"]))
        calls.append(thread_calls)
    alone = [[outcome(call) for call in thread_calls] for thread_calls in calls]
    together = run_together(calls)
    for a, b in zip(alone, together):
        for x, y in zip(a, b):
            same(x, y)


def test_one_network_called_from_many_threads_equals_each_call_alone():
    rng = np.random.default_rng(22)
    widths = [5, 7, 4, 3]
    net = bilevel.Network([rng.standard_normal((b, a)) for a, b in zip(widths, widths[1:])],
                          [rng.standard_normal(b) for b in widths[1:]],
                          ["relu", "hard_tanh", "identity"])
    methods = ["bp", "fenbp", "chl", "convex-chl", "mac", "pc"]
    calls = []
    for t in range(THREADS):
        thread_calls = []
        for c in range(CALLS // 2):
            x = rng.standard_normal((64, 5))
            target = rng.standard_normal((64, 3))
            method = methods[(t + c) % len(methods)]
            thread_calls.append(lambda m=method, x=x, y=target: net.gradient(m, 0.1, x, y))
            thread_calls.append(lambda x=x: net.forward(x))
        calls.append(thread_calls)
    alone = [[outcome(call) for call in thread_calls] for thread_calls in calls]
    assert not any(isinstance(r, BaseException) for rs in alone for r in rs)
    together = run_together(calls)
    for a, b in zip(alone, together):
        for x, y in zip(a, b):
            same(x, y)


def test_qp_batches_solved_in_threads_keep_their_own_gradients():
    """Each thread's `QpBatch` holds its own solutions: gradients asked for in another order
    than the solves (all solves first, then all gradients, across threads) are still each
    batch's own."""
    rng = np.random.default_rng(23)
    problems = []
    for _ in range(THREADS):
        data, theta, _ = constructed_layer(rng, 4, 2, 3, 0, ["strong", "weak", "inactive"])
        p = -(data["B"] @ theta + data["c"])
        problems.append((data["Q"], p[None], -data["A"], -data["b"], np.zeros((0, 4)),
                         np.zeros(0)))
    grads = [rng.standard_normal((1, 4)) for _ in problems]
    alone = []
    for args, g in zip(problems, grads):
        z, batch = bilevel.qp_solve(*args, threads=1)
        alone.append((z, batch.gradients(g)))
    solved = run_together([[lambda a=a: bilevel.qp_solve(*a, threads=2)] for a in problems])
    together = run_together([[lambda s=s[0], g=g: (s[0], s[1].gradients(g))]
                             for s, g in zip(solved, grads)])
    for (z, gr), [(z2, gr2)] in zip(alone, together):
        assert np.array_equal(z, z2)
        same(gr, gr2)

"""The one timer of the Python benchmarks: the median wall time of repeated calls."""

import statistics
import time


def median_ms(fn, repeats):
    """The median time of ``repeats`` calls of ``fn`` in milliseconds, after one untimed call
    (imports, caches and JIT compilation are not measured)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)

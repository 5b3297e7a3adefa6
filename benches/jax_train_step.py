"""The same training step in JAX (jit, CPU), for `bilevel bench train --jax`.

MLP 784-256-128-64-10, ReLU, softmax cross-entropy averaged over the batch, Adam(1e-3) written
out (Flux's form), batch 50, f32; back-propagation (jax.grad) or Fenchel BP (the Appendix C
custom pullback (z - relu(x - beta*dy))/beta as a jax.custom_vjp). Prints one JSON line:
{"bp": seconds_per_epoch, "fenbp": seconds_per_epoch, "steps": 1000} (best of --repeats).

Usage: python3 benches/jax_train_step.py [--repeats 3] [--beta 1.0]
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_platforms", "cpu")


def make_relu(beta):
    @jax.custom_vjp
    def relu(x):
        return jnp.maximum(x, 0.0)

    def fwd(x):
        z = jnp.maximum(x, 0.0)
        return z, (x, z)

    def bwd(res, dy):
        x, z = res
        return ((z - jnp.maximum(x - beta * dy, 0.0)) / beta,)

    relu.defvjp(fwd, bwd)
    return relu


def init(key, widths):
    params = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        key, sub = jax.random.split(key)
        a = np.sqrt(6.0 / (n_in + n_out))
        params.append((jax.random.uniform(sub, (n_out, n_in), jnp.float32, -a, a), jnp.zeros((n_out,), jnp.float32)))
    return params


def make_step(act):
    def loss(params, x, y):
        h = x
        for w, b in params[:-1]:
            h = act(w @ h + b[:, None])
        w, b = params[-1]
        logits = w @ h + b[:, None]
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits, axis=0), axis=0))

    @jax.jit
    def step(params, m, v, t, x, y):
        l, g = jax.value_and_grad(loss)(params, x, y)
        t = t + 1
        c1 = 1.0 - 0.9 ** t
        c2 = 1.0 - 0.999 ** t
        m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        params = jax.tree.map(lambda p, m, v: p - 1e-3 * (m / c1) / (jnp.sqrt(v / c2) + 1e-8), params, m, v)
        return params, m, v, t, l

    return step


def epoch_time(step, repeats):
    rng = np.random.default_rng(0)
    xs = rng.random((1000, 784, 50), dtype=np.float32)
    ys = np.eye(10, dtype=np.float32)[rng.integers(0, 10, (1000, 50))].transpose(0, 2, 1)
    xs, ys = jnp.asarray(xs), jnp.asarray(ys)
    params = init(jax.random.PRNGKey(42), [784, 256, 128, 64, 10])
    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(jnp.zeros_like, params)
    t = jnp.float32(0.0)
    params, m, v, t, l = step(params, m, v, t, xs[0], ys[0])  # compile
    l.block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(1000):
            params, m, v, t, l = step(params, m, v, t, xs[i], ys[i])
        l.block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--beta", type=float, default=1.0)
    a = ap.parse_args()
    bp = epoch_time(make_step(jax.nn.relu), a.repeats)
    fen = epoch_time(make_step(make_relu(a.beta)), a.repeats)
    print(json.dumps({"bp": bp, "fenbp": fen, "steps": 1000, "jax": jax.__version__}))


if __name__ == "__main__":
    main()

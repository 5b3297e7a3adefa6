"""The same training step in JAX (jit, CPU), for `bilevel bench train --jax`.

MLP 784-256-128-64-10, ReLU, softmax cross-entropy averaged over the batch, Adam(1e-3), batch
50, f32; back-propagation (jax.grad) or Fenchel BP (the Appendix C custom pullback
(z - relu(x - beta*dy))/beta as a jax.custom_vjp). The baseline is the fastest of several ways a
JAX user writes this step: samples as columns or rows, Adam written out or optax.adam (when optax
is installed), one jitted call per step or the whole epoch in one lax.scan; every one runs 1000
steps on batches prepared on the device. Prints one JSON line: {"bp": seconds_per_epoch,
"bp_formulation": name, "fenbp": ..., "fenbp_formulation": ..., "formulations": {name: {"bp":
s, "fenbp": s}}, "steps": 1000, ...} (each the best of --repeats epochs).

Usage: python3 benches/jax_train_step.py [--repeats 3] [--beta 1.0]
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

try:
    import optax
except ImportError:  # the optax formulations are then not timed (the JSON says which were)
    optax = None

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


def loss_feature_major(act):
    """Samples as columns (x: 784 x 50), the layout of the Rust client and Appendix C."""
    def loss(params, x, y):
        h = x
        for w, b in params[:-1]:
            h = act(w @ h + b[:, None])
        w, b = params[-1]
        logits = w @ h + b[:, None]
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits, axis=0), axis=0))

    return loss


def loss_batch_major(act):
    """Samples as rows (x: 50 x 784), the layout a JAX user writes."""
    def loss(params, x, y):
        h = x
        for w, b in params[:-1]:
            h = act(h @ w.T + b)
        w, b = params[-1]
        logits = h @ w.T + b
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits, axis=1), axis=1))

    return loss


def adam_written_out(loss):
    """Adam(1e-3) written out (Flux's form), one jitted call per step."""
    @jax.jit
    def step(state, x, y):
        params, m, v, t = state
        l, g = jax.value_and_grad(loss)(params, x, y)
        t = t + 1
        c1 = 1.0 - 0.9 ** t
        c2 = 1.0 - 0.999 ** t
        m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        params = jax.tree.map(lambda p, m, v: p - 1e-3 * (m / c1) / (jnp.sqrt(v / c2) + 1e-8), params, m, v)
        return (params, m, v, t), l

    def start(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return (params, zeros, zeros, jnp.float32(0.0))

    return start, step


def adam_optax(loss):
    """optax.adam(1e-3), one jitted call per step."""
    opt = optax.adam(1e-3)

    @jax.jit
    def step(state, x, y):
        params, opt_state = state
        l, g = jax.value_and_grad(loss)(params, x, y)
        updates, opt_state = opt.update(g, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), l

    return (lambda params: (params, opt.init(params))), step


def per_step(start, step):
    """The epoch as 1000 jitted calls from Python."""
    def epoch(state, xs, ys):
        for i in range(xs.shape[0]):
            state, l = step(state, xs[i], ys[i])
        return state, l

    return start, epoch


def scanned(start, step):
    """The epoch as one jitted call: lax.scan over the 1000 prepared batches."""
    @jax.jit
    def epoch(state, xs, ys):
        state, ls = jax.lax.scan(lambda s, xy: step(s, *xy), state, (xs, ys))
        return state, ls[-1]

    return start, epoch


def formulations(act):
    """Every formulation of the same step: name -> (start, epoch, batch-major?)."""
    out = {
        "feature-major, Adam written out, a jit call per step":
            (*per_step(*adam_written_out(loss_feature_major(act))), False),
        "batch-major, Adam written out, a jit call per step":
            (*per_step(*adam_written_out(loss_batch_major(act))), True),
    }
    if optax is not None:
        out["batch-major, optax.adam, a jit call per step"] = (*per_step(*adam_optax(loss_batch_major(act))), True)
        out["batch-major, optax.adam, lax.scan over the epoch"] = (*scanned(*adam_optax(loss_batch_major(act))), True)
    return out


def epoch_time(start, epoch, batch_major, repeats):
    """Best of `repeats` epochs of 1000 steps on prepared device arrays (after one compiling
    epoch)."""
    rng = np.random.default_rng(0)
    xs = rng.random((1000, 50, 784), dtype=np.float32)
    ys = np.eye(10, dtype=np.float32)[rng.integers(0, 10, (1000, 50))]
    if not batch_major:
        xs, ys = xs.transpose(0, 2, 1), ys.transpose(0, 2, 1)
    xs, ys = jnp.asarray(xs), jnp.asarray(ys)
    state = start(init(jax.random.PRNGKey(42), [784, 256, 128, 64, 10]))
    state, l = epoch(state, xs, ys)  # compile
    l.block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        begin = time.perf_counter()
        state, l = epoch(state, xs, ys)
        l.block_until_ready()
        best = min(best, time.perf_counter() - begin)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--beta", type=float, default=1.0)
    a = ap.parse_args()
    timed = {}
    for rule, act in [("bp", jax.nn.relu), ("fenbp", make_relu(a.beta))]:
        for name, (start, epoch, batch_major) in formulations(act).items():
            timed.setdefault(name, {})[rule] = epoch_time(start, epoch, batch_major, a.repeats)
    out = {"steps": 1000, "jax": jax.__version__, "optax": getattr(optax, "__version__", None),
           "formulations": timed}
    for rule in ["bp", "fenbp"]:
        name = min(timed, key=lambda n: timed[n][rule])
        out[rule], out[rule + "_formulation"] = timed[name][rule], name
    print(json.dumps(out))


if __name__ == "__main__":
    main()

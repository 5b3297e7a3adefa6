"""Fig. 1's MLP trained in JAX with Fenchel back-propagation (the paper's Appendix C program).

    pip install . jax
    python examples/jax_fig1.py --data DIR [--epochs N] [--beta B] [--log run.csv]

784-256-128-64-10, ReLU hidden layers whose backward pass is Fenchel BP's rule
``(relu(u) − relu(u − β·g)) / β`` (``bilevel.jax.fenchel_relu``), softmax cross-entropy, Adam
(lr 1e-3), batches of 50 from the first 50,000 training images, Glorot-uniform init. As in the
Appendix C code, β acts on the gradient of the batch-mean loss. DIR holds the four MNIST IDX
files (``bilevel data fetch`` downloads them); ``$BILEVEL_DATA`` is the default. The CSV log has
the columns of ``bilevel train --log``, so ``bilevel plot run.csv -o fig.png`` draws it.

This is the scale path: the same rule inside a framework that runs on GPUs and many devices.
The Rust client (``bilevel train --method fenbp``) is the reference it is checked against in
``tests/python/test_jax.py`` (gradients equal to 1e-6 on a small MLP).
"""

import argparse
import gzip
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from bilevel.jax import fenchel_relu


def idx(path):
    """An IDX array (gzipped or not)."""
    raw = gzip.open(path).read() if str(path).endswith(".gz") else open(path, "rb").read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def mnist(directory):
    d = pathlib.Path(directory)

    def find(stem):
        for name in (stem + ".gz", stem):
            if (d / name).is_file():
                return d / name
        raise SystemExit(f"error: {stem}(.gz) not found in {d}: run `bilevel data fetch --dir {d}`")

    x = idx(find("train-images-idx3-ubyte")).reshape(-1, 784).astype(np.float32) / 255
    y = idx(find("train-labels-idx1-ubyte")).astype(np.int32)
    xt = idx(find("t10k-images-idx3-ubyte")).reshape(-1, 784).astype(np.float32) / 255
    yt = idx(find("t10k-labels-idx1-ubyte")).astype(np.int32)
    return x[:50000], y[:50000], xt, yt


def glorot(key, n_out, n_in):
    limit = np.sqrt(6.0 / (n_in + n_out))
    return jax.random.uniform(key, (n_out, n_in), jnp.float32, -limit, limit)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("BILEVEL_DATA", "data/mnist"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--beta", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--log", help="CSV log in the format of `bilevel train --log`")
    args = parser.parse_args()

    x, y, xt, yt = mnist(args.data)
    widths = [784, 256, 128, 64, 10]
    keys = jax.random.split(jax.random.PRNGKey(args.seed), len(widths) - 1)
    params = [(glorot(k, m, n), jnp.zeros(m, jnp.float32))
              for k, n, m in zip(keys, widths, widths[1:])]
    act = fenchel_relu(args.beta)

    def logits(params, xb):
        z = xb
        for k, (w, b) in enumerate(params):
            z = z @ w.T + b
            if k < len(params) - 1:
                z = act(z)
        return z

    def loss(params, xb, yb):
        out = logits(params, xb)
        value = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), yb[:, None], axis=1))
        return value, out

    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8

    @jax.jit
    def step(params, m, v, t, xb, yb):
        # The training error counts the batch as the forward pass of the step saw it.
        (value, out), grads = jax.value_and_grad(loss, has_aux=True)(params, xb, yb)
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        params = jax.tree_util.tree_map(
            lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), params, m, v)
        return params, m, v, value, jnp.sum(jnp.argmax(out, axis=1) != yb)

    @jax.jit
    def test_errors(params, xb, yb):
        return jnp.sum(jnp.argmax(logits(params, xb), axis=1) != yb)

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    m, v = zeros, zeros
    rows = []
    t = 0
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        total, wrong = 0.0, 0
        for i in range(0, 50000, 50):
            t += 1
            params, m, v, value, errors = step(params, m, v, jnp.float32(t), x[i:i + 50],
                                               y[i:i + 50])
            total += float(value)
            wrong += int(errors)
        seconds = time.perf_counter() - start
        test = sum(int(test_errors(params, xt[i:i + 1000], yt[i:i + 1000]))
                   for i in range(0, 10000, 1000))
        row = (epoch, total / 1000, 100 * wrong / 50000, 100 * test / 10000, seconds)
        rows.append(row)
        print(f"epoch {epoch}: loss {row[1]:.4f}, train error {row[2]:.2f} %, "
              f"test error {row[3]:.2f} %, {seconds:.2f} s")
    if args.log:
        with open(args.log, "w") as f:
            f.write("epoch,train_loss,train_error_pct,test_error_pct,seconds\n")
            for r in rows:
                f.write(f"{r[0]},{r[1]:.6f},{r[2]:.4f},{r[3]:.4f},{r[4]:.3f}\n")


if __name__ == "__main__":
    main()

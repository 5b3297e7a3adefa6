"""Run by test_jax.py::test_functional_qp_under_sharding_equals_the_unsharded_call in a fresh
process (not a test module): XLA_FLAGS must give two host devices before JAX starts.

Computes the loss, its gradient with respect to every input of `bilevel.jax.qp`, and a few
gradient steps on Q, p, G, h, without sharding and with the batch axis sharded over a 2-device
mesh in the two ways JAX offers: (1) `jax.jit` on inputs placed with
`jax.sharding.NamedSharding` (XLA's partitioner moves the host callback's operands to one
device: correct, not parallel) and (2) `jax.shard_map`, where each device calls the layer on
its own items. Writes everything to ``OUT`` (``.npz``).
"""

import sys

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

import bilevel.jax as bj  # noqa: E402


def problem(batch=6, n=4, m=3, k=1):
    """Random items (strictly feasible z0) whose constraints cut off part of -p's direction."""
    rng = np.random.default_rng(21)
    L = rng.standard_normal((batch, n, n))
    Q = L @ L.transpose(0, 2, 1) + n * np.eye(n)
    p = rng.standard_normal((batch, n))
    G = rng.standard_normal((batch, m, n))
    z0 = rng.standard_normal((batch, n))
    h = np.einsum("bmn,bn->bm", G, z0) + rng.uniform(0.0, 0.3, (batch, m))
    A = rng.standard_normal((batch, k, n))
    b = np.einsum("bkn,bn->bk", A, z0)
    target = rng.standard_normal((batch, n))
    return [jnp.asarray(a) for a in (Q, p, G, h, A, b)], jnp.asarray(target)


def squared(layer):
    """The loss of a layer function: Σ‖z*(data) − target‖²."""
    return lambda Q, p, G, h, A, b, target: jnp.sum((layer(Q, p, G, h, A, b) - target) ** 2)


def train(loss, args, target, steps=3, lr=0.05):
    """Gradient steps on every input; the jitted step inherits the inputs' sharding."""
    step = jax.jit(lambda xs, t: [x - lr * g for x, g in
                                  zip(xs, jax.grad(loss, argnums=tuple(range(6)))(*xs, t))])
    for _ in range(steps):
        args = step(args, target)
    return args


def run(loss, args, target):
    value, grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6))))(*args, target)
    return value, grads, train(loss, args, target)


def main():
    out = sys.argv[1]
    devices = jax.devices()
    assert len(devices) == 2, f"expected 2 host devices, got {devices}"
    args, target = problem()
    results = {"plain": run(squared(bj.qp), args, target)}

    mesh = Mesh(np.array(devices), ("batch",))
    shard = lambda x: jax.device_put(x, NamedSharding(mesh, P("batch")))  # noqa: E731
    sharded = [shard(a) for a in args]
    assert [s.data.shape[0] for s in sharded[0].addressable_shards] == [3, 3]
    per_device = jax.shard_map(bj.qp, mesh=mesh, in_specs=P("batch"), out_specs=P("batch"))
    results["jit"] = run(squared(bj.qp), sharded, shard(target))
    results["shard_map"] = run(squared(per_device), sharded, shard(target))
    for how in ("jit", "shard_map"):
        trained = results[how][2]
        assert len(trained[0].sharding.device_set) == 2, f"{how}: the result lost its sharding"
    arrays = {f"init{i}": x for i, x in enumerate(args)}
    for how, (value, grads, trained) in results.items():
        arrays[f"{how}_value"] = value
        arrays.update({f"{how}_grad{i}": g for i, g in enumerate(grads)})
        arrays.update({f"{how}_trained{i}": x for i, x in enumerate(trained)})
    np.savez(out, **arrays)


if __name__ == "__main__":
    main()

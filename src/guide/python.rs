//! # Python: NumPy, PyTorch and JAX
//!
//! ```sh
//! pip install .                     # builds the abi3 wheel with maturin (needs Rust); Python ≥ 3.9
//!                                   # (3 min 8 s from a fresh clone on 2 cores, peak RSS 1.0 GB)
//! pip install jax                   # optional: the JAX adapters in bilevel.jax
//! ```
//!
//! ```python
//! import numpy as np, bilevel
//!
//! # ReLU as a QP, z* = max(θ, 0), with a tie in the second unit.
//! layer = bilevel.QuadraticLayer(np.eye(2), np.zeros(2), B=np.eye(2), A=np.eye(2), b=np.zeros(2))
//! layer.vjp([1.0, 0.0], [2.0, -3.0])     # array([ 2., -3.]): descending lifts θ₂, the unit leaves 0
//! layer.vjp([1.0, 0.0], [-2.0, 3.0])     # array([-2.,  0.]): the other way it stays (not linear in g)
//! out = layer.derive([1.0, 0.0], [2.0, -3.0], betas=[0.1])   # what `bilevel derive` returns
//! out["constraints"], out["branches"]   # ['inactive', 'weak'], [None, 'leaves']
//! ```
//!
//! * `bilevel.QuadraticLayer(Q, c, B, A, b, A_eq, b_eq)`: `solve(θ)` (z*, multipliers, activity,
//!   solver status), `derive(θ, loss, betas=…, gradients=…)` (the `derive` JSON as a dict of NumPy
//!   arrays), `vjp(θ, g)` (Prop. 2's one-sided gradient of ⟨g, z*⟩), `jvp(θ, v)`, `surrogate(θ,
//!   loss, β, kind="contrastive" | "linearized" | "centered")`; `θ` of shape `(batch, p)` loops in
//!   Rust on all cores. The GIL is released around every solve.
//! * `bilevel.Activation("relu" | "hard_sigmoid" | "hard_tanh" | ("box", lo, hi) | "softmax")`:
//!   `f(u)`, the one-sided `vjp`, Fenchel BP's `fenchel_vjp(u, g, β)`.
//! * `bilevel.Network(weights, biases, activations).gradient(method, β, x, target)`: every row of
//!   Table 1 (`chl`, `convex-chl`, `lpom`, `mac`, `bp`, `fenbp`, `pc`) with value, gradients and
//!   status; batches are rows; `settings={...}` changes iteration limits and tolerances
//!   (`Network.default_settings()` lists them).
//! * `bilevel.jax.qp_layer(...)`: the QP layer under `jax.grad` / `jax.jit` / `jax.vmap`
//!   (`mode="limit"`, `("contrastive", β)`, `("centered", β)`); `bilevel.jax.fenchel_relu(β)` and
//!   friends: activations whose backward pass is the Fenchel-BP rule, in pure JAX.
//! * Errors: every Rust error arrives as the class of `bilevel.errors` with the same name and
//!   message (`DimensionMismatchError`, `InfeasibleError`, … all subclasses of `BilevelError`,
//!   input errors also of `ValueError`), its data as attributes.
//! * Arrays in: anything `numpy.asarray` reads as booleans, integers or real floats (any memory
//!   order, strided views, lists, object arrays of numbers) is read as those numbers in float64;
//!   complex values (a cast would drop their imaginary parts), text, dates and other objects are
//!   an `InvalidInputError` naming the argument, as is a size that cannot be allocated (a
//!   broadcast view of a huge shape); `threads` below 1 likewise. `qp_solve` takes a batch of
//!   zero items and answers with empty arrays of the right shapes. `tests/python/test_properties.py`
//!   checks all of this with Hypothesis (every entry point gives, for any dtype, layout and batch,
//!   the answer of the same numbers as a C-ordered float64 array, bit for bit, or an error naming
//!   the argument).
//! * Threads: every computation releases the GIL, and the objects hold no mutable state: one
//!   `QuadraticLayer` or `Network` may be called from many Python threads at once
//!   (`tests/python/test_threads.py`: 8 threads started together, results equal to each call
//!   made alone, bit for bit). Memory stays flat over 10⁵ calls of every entry point
//!   (`python benches/python_memory.py`: at most 0.06 bytes per call fitted over the last 5·10⁴
//!   calls, i.e. no leak; RSS 37-39 MB).
//! * Typed: the package ships `py.typed` and stubs of the compiled module (`_bilevel.pyi`), so
//!   editors complete and mypy checks calls; CI compares the stubs with the built module
//!   (`python -m mypy.stubtest bilevel._bilevel`).
//!
//! Cost of the bindings (`python benches/python_layer.py`, this 2-core AMD EPYC): about 1 µs per
//! call over the Rust computation timed in the same process; one `vjp` of a QP layer with
//! `m = n/2` rows (a third weakly active) takes 28 µs / 0.16 ms / 2.3 ms at n = 10 / 50 / 200, and
//! 15 µs / 81 µs / 0.92 ms per item in a batch of 64 on two threads.
//!
//! ### PyTorch
//!
//! `bilevel.torch.QPFunction` is a drop-in for qpth's: change the import and every input of the
//! layer — `Q, p, G, h, A, b`, batched or shared — gets its gradient, exact and one-sided where a
//! constraint is weakly active (qpth, proxsuite and cvxpylayers average the two sides there).
//!
//! ```python
//! import torch
//! from bilevel.torch import QPFunction          # was: from qpth.qp import QPFunction
//!
//! Q = torch.eye(3, dtype=torch.float64)
//! p = torch.tensor([[-1.0, 0.0, 2.0]], dtype=torch.float64, requires_grad=True)
//! G, h = -torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
//! e = torch.empty(0, dtype=torch.float64)       # no equalities
//! z = QPFunction()(Q, p, G, h, e, e)           # min ½zᵀQz + pᵀz s.t. Gz ≤ h: [[1, 0, 0]]
//! (z * torch.tensor([[0.5, -1.0, 0.3]], dtype=torch.float64)).sum().backward()
//! p.grad                                       # [[-0.5, 1, 0]]: unit 2 leaves its bound
//! ```
//!
//! Shared inputs get the sum over the batch (`reduce="mean"`: qpth's mean); results and gradients
//! come back in the input's dtype and on its device (the solve runs in float64 on the CPU, the
//! items on all cores); `mode=("contrastive", β)` or `("centered", β)` gives Def. 1's surrogate
//! gradients; `f.status()` the solver, residual, activity and branches of each item. Underneath,
//! `bilevel.qp_solve(Q, p, G, h, A, b)` is the same layer on NumPy arrays, and
//! `bilevel.jax.qp(Q, p, G, h, A, b, mode=...)` the same function for JAX (`jax.grad`, `jit`,
//! `vmap`, `shard_map`), equal to the torch layer bit for bit in float64. Across processes scale
//! with the framework's own runtime: the tests train a network containing `QPFunction` under
//! `DistributedDataParallel` (gloo, 2 processes) to one process's parameters, and run `bilevel.jax.qp`
//! sharded over 2 devices to the unsharded result.
//!
//! ### Sparse layers (SciPy)
//!
//! `bilevel.sparse_qp_solve(Q, p, G, h, A=None, b=None)` takes `Q`, `G`, `A` as SciPy sparse
//! matrices (any format; canonicalized to CSC) for one item and never forms anything `n × n`
//! (the Rust path: [`crate::layer::solve_sparse`]). Its `gradients(grad_z)` returns the exact,
//! one-sided gradients with `Q`, `G`, `A` as `scipy.sparse.csc_array` on the inputs' own patterns
//! (the gradient with respect to the stored values), `p`, `h`, `b` as arrays, and the branch of
//! each weakly active row:
//!
//! ```python
//! import numpy as np, scipy.sparse as sp, bilevel
//! n = 10_000
//! Q = sp.diags([-np.ones(n - 1), 2.5 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1])
//! z, sol = bilevel.sparse_qp_solve(Q, -np.ones(n), sp.eye(n), np.full(n, 0.1))  # z ≤ 0.1
//! grads = sol.gradients(np.ones(n))     # ℓ = Σ z: grads["G"] has G's pattern (the diagonal)
//! sol.status()["activity"][:3]          # ['strong', 'strong', 'strong']
//! ```
//!
//! The framework adapters take sparse tensors too, and then run the same sparse path on a batch
//! (the items on all cores):
//!
//! - `bilevel.torch.QPFunction()(Q, p, G, h, A, b)` with `Q`, `G`, `A` as torch sparse tensors
//!   (COO, CSR or CSC; 2-D shared by the batch or 3-D batched). Each sparse input's `.grad` lives
//!   on its pattern, in its layout (a CSC input's is COO: autograd accumulates no CSC
//!   gradients); dense inputs in the same call keep dense gradients.
//! - `bilevel.jax.qp(Q, p, G, h, A, b)` with `jax.experimental.sparse.BCOO` (or `BCSR`)
//!   matrices, shared by the batch (batch the dense inputs, or `jax.vmap`): the cotangent of a
//!   sparse input is that of its `data`, under `jax.grad`, `jax.jit` and `jax.vmap`.
//!
//! ```python
//! import torch
//! from bilevel.torch import QPFunction
//! n = 10_000
//! i = torch.arange(n)
//! diagonal = lambda v: torch.sparse_coo_tensor(torch.stack([i, i]), torch.full((n,), v))
//! Q = diagonal(2.0).double()
//! G = diagonal(1.0).double().requires_grad_()                             # z ≤ h
//! p = -torch.ones(4, n, dtype=torch.float64)                              # a batch of 4
//! z = QPFunction()(Q, p, G, torch.full((n,), 0.1, dtype=torch.float64), torch.empty(0), torch.empty(0))
//! z.sum().backward()                  # G.grad: a sparse COO tensor on G's pattern
//! ```
//!
//! Every `mode` runs on the sparse path: the exact derivative (`mode="limit"`) and the finite-β
//! surrogate modes, from the offset problem on sparse factorizations
//! ([`crate::layer::SparseQpSolution::gradients_in`]).
//!
//! `bilevel.QuadraticLayer(Q, c, B, A, b, A_eq, b_eq)` takes SciPy sparse `Q`, `B`, `A`, `A_eq`
//! as well (or `backend="sparse"` for dense ones): `solve`, `vjp`, `jvp` and `derive` then run
//! on the sparse layer ([`crate::layer::SparseQuadraticLayer`]), with the dense layer's answers
//! and keys; `Q` and `B` read back as `scipy.sparse.csc_array`s, and `derive`'s `grad_Q`,
//! `grad_B`, `grad_A`, `grad_A_eq` are `csc_array`s on the data's patterns (the gradient with
//! respect to the stored values, [`crate::layer::SparseQuadraticLayer::derive`]). The finite-β
//! `surrogate`, and `derive`'s `betas`, run on it too
//! ([`crate::layer::SparseQuadraticLayer::surrogate`]), with Prop. 3's band: `bound_nu` is a
//! certified lower bound of `λ_min(Q)` within 1/64 of it
//! ([`crate::layer::SparseQuadraticLayer::strong_convexity`]), where the dense layer has
//! `λ_min(Q)` itself, so the band is valid and its upper side at most a 60th of its width
//! higher.
//!
//! The tests (`tests/python`, run by CI after `pip install .` in a fresh venv, with torch and qpth):
//! `pip install pytest jax torch && pip install --no-deps qpth && cargo build --release && python -m pytest tests/python`.

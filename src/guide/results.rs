//! # Results, each with the command that made it
//!
//! Every figure below was measured on the project's 2-core AMD EPYC VM (Zen 4) and recorded in the
//! README before 2026-12-05 (its last version carrying them: commit `29a41ff`); rerun the command
//! next to each to measure your machine. Figures of a later change live in its commit message.
//!
//! ## Fig. 1 and Table 1 on MNIST
//!
//! `bilevel reproduce fig1` (50 epochs, seed 42, one run each; rerun after the Fenchel quotient was made exact at a ReLU's kink, which moved
//! the β = 0.01 and β = 1000 runs by a few tenths of a percent):
//!
//! | init | method | test error % (epoch 50) | mean of epochs 46-50 | paper (text) |
//! |---|---|---:|---:|---:|
//! | Glorot | BP | 2.28 | 2.11 | – |
//! | Glorot | Fenchel BP β = 0.01 | 1.99 | 1.96 | – |
//! | Glorot | Fenchel BP β = 1 | 1.69 | 1.90 | – |
//! | Glorot | Fenchel BP β = 1000 | 3.05 | 3.46 | – |
//! | negative | BP | 88.65 | 88.65 | 88.65 |
//! | negative | Fenchel BP β = 1 | 88.65 | 88.65 | 88.65 |
//! | negative | Fenchel BP β = 1000 | 3.14 | 3.33 | 2.79 |
//!
//! With the all-negative first layer, every first-layer ReLU is off on every image: BP's gradient
//! of that layer is exactly zero and the network learns only the class prior; Fenchel BP with
//! β = 1000 passes a signal through the kink and trains.
//!
//! **All of Table 1 on the same MLP**: `bilevel train --method chl|convex-chl|lpom|mac|pc` trains
//! the rows that need inference with batched sweeps (`nested::inference`), and
//! `bilevel reproduce table1 --epochs 50` gives (3 seeds, β = 0.1 on the batch-mean loss, at most
//! 20 sweeps per batch; 19 min 36 s on 2 cores for all nine rows, peak RSS 122 MB; the last
//! column is the last epoch's mean surrogate value over its training loss):
//!
//! | method | test error % (epoch 50) | best epoch | s/epoch (one core) | sweeps/batch | `L^β`/loss |
//! |---|---:|---:|---:|---:|---:|
//! | CHL | 1.97 ± 0.15 | 1.78 ± 0.08 | 1.60 | 5.7 | 1.018 |
//! | convex CHL | 1.90 ± 0.11 | 1.76 ± 0.09 | 1.87 | 6.3 | 0.963 |
//! | LPOM | 2.10 ± 0.09 | 1.76 ± 0.12 | 1.11 | 2.5 | 0.988 |
//! | MAC | 5.20 ± 2.20 | 2.16 ± 0.13 | 2.24 | 12.0 | 0.089 |
//! | BP | 2.16 ± 0.12 | 1.76 ± 0.11 | 0.70 | – | – |
//! | Fenchel BP | 1.93 ± 0.08 | 1.77 ± 0.12 | 0.69 | – | – |
//! | predictive coding | 1.83 ± 0.19 | 1.75 ± 0.08 | 1.06 | 2.3 | 1.000 |
//! | CHL, centered (±β) | 2.03 ± 0.17 | 1.74 ± 0.11 | 2.55 | 8.4 | 1.016 |
//! | convex CHL, centered (±β) | 2.05 ± 0.27 | 1.79 ± 0.04 | 2.95 | 9.3 | 0.964 |
//!
//! Every row but the two convex CHL ones is bit for bit what the build before convex CHL's block
//! steps gave (the same errors; the seconds vary with the machine's load). Convex CHL now
//! takes 6.3 sweeps per batch instead of 5.7 (its steps are shorter where unit steps happened
//! to converge) and ends at the same error (1.89 ± 0.08 % before).
//!
//! MAC is unstable in training. The training loss blows up in all three seeds: at epoch 50 it
//! is 7e3, 2e4 and 12, with test errors 5.5, 7.2 and 2.9 %. Its inference stalls more and more
//! as the weights grow: 48 % of its batches stop at the sweep budget over the run. And the
//! surrogate that training minimizes (Eq. 30, a lower bound of the loss) goes loose: at epoch
//! 10 it is a third of the loss, at epoch 50 a tenth (0.089 above). Every other row's surrogate
//! stays within 4 % of its loss. At the paper's β = 1 the same happens within seven epochs.
//! `examples/mac_beta_one.rs` measures it against an independent solver: the looseness is MAC's
//! objective, and the blow-up is the sweep budget (details in `app::nn::table1`, "MAC at the
//! paper's β = 1"). Which seeds blow up first depends on rounding: an earlier build, before the
//! sweeps' sums were regrouped for vectorization, gave 4.12 ± 0.95 % here. The other rows
//! match back-propagation.
//! Centering removes the output β's first-order bias only (the inner layers' β keep theirs: the
//! cosine to BP at the initial network is 0.9994 with and without it), so at β = 0.1 it changes
//! little here, at 1.5× CHL's cost.
//!
//!
//! ## The QP layer against its peers
//!
//! **The QP layer against its peers**: `python3 benches/peers/qp_layers.py` (after
//! `pip install proxsuite numpy`; qpth is timed too when torch and qpth are installed) runs
//! `cargo bench --bench qp_peers` and then, on the very same instances, what proxsuite's QPLayer
//! does per item (its forward solve and `compute_backward` with the QPLayer's settings, without
//! torch's tensor copies). Forward solve + dL/dθ of a linear loss, one thread, `m = n/2`
//! inequalities, `p = 4`; `weak`: a third of the rows weakly active. One run on this 2-core AMD
//! EPYC (AVX2):
//!
//! | n | kind | bilevel ms | proxsuite 0.8 ms | ratio | proxsuite's gradient error |
//! |---:|---|---:|---:|---:|---:|
//! | 10 | random | 0.023 | 0.048 | 0.48 | 2.2e-6 |
//! | 10 | weak | 0.027 | 0.072 | 0.38 | 1.6e-6 |
//! | 50 | random | 0.137 | 0.226 | 0.61 | 2.4e-6 |
//! | 50 | weak | 0.158 | 0.296 | 0.53 | 5.7e-1 |
//! | 100 | random | 0.433 | 0.661 | 0.66 | 2.8e-6 |
//! | 100 | weak | 0.529 | 0.841 | 0.63 | 8.3e-1 |
//! | 200 | random | 1.80 | 3.57 | 0.50 | 2.8e-6 |
//! | 200 | weak | 2.47 | 4.03 | 0.61 | 1.8e-1 |
//!
//! The gradient error is against `bilevel`'s exact one-sided derivative: proxsuite agrees to its
//! tolerance where the derivative exists and is off by 20–80 % at weakly active rows. The same
//! holds for the gradients with respect to the layer's data (`Q`, `c`, `A`, `b`; the script's
//! `data err` column): 3e-6 on the random layers, 0.4–0.5 on the weak ones. On the same
//! layers `bilevel` on Clarabel (`with_backend`) takes 2.6 / 4.5 ms at n = 50 and 55 / 112 ms at
//! n = 200 (random / weak; `cargo bench --bench limit -- qp-layer`).
//!
//! Re-measured on 2026-12-05 after the dual active-set method began updating its Cholesky
//! factor instead of refactoring (commits `4253336` … on `main`), with larger layers:
//! `python3 benches/peers/qp_layers.py --sizes 50,200,500,1000` (one run, same machine):
//!
//! | n | kind | bilevel ms | proxsuite 0.8 ms | ratio | proxsuite's gradient error |
//! |---:|---|---:|---:|---:|---:|
//! | 50 | random | 0.141 | 0.219 | 0.65 | 2.4e-6 |
//! | 50 | weak | 0.157 | 0.229 | 0.69 | 5.7e-1 |
//! | 200 | random | 2.13 | 2.64 | 0.81 | 2.8e-6 |
//! | 200 | weak | 1.88 | 3.04 | 0.62 | 1.8e-1 |
//! | 500 | random | 11.6 | 20.3 | 0.57 | 2.6e-6 |
//! | 500 | weak | 14.1 | 23.7 | 0.59 | 4.4e-1 |
//! | 1000 | random | 57.9 | 90.8 | 0.64 | 2.7e-6 |
//! | 1000 | weak | 79.1 | 115.4 | 0.69 | 3.7e-1 |
//!
//! Re-measured on 2026-12-05 at `1fbe193`, after the activity tests took each row's norm from one
//! pass and the condition estimate stopped forming the KKT matrix, with at least 20 timed repeats
//! on each side and qpth 0.0.18 (torch 2.15, CPU, its default PDIPM solver):
//! `python3 benches/peers/qp_layers.py --sizes 50,200,500,1000 --repeats 20` (one run; the
//! proxsuite column varied by about 4 % between two runs of its side):
//!
//! | n | kind | bilevel ms | proxsuite 0.8 ms | ratio | qpth ms | ratio | gradient error proxsuite / qpth |
//! |---:|---|---:|---:|---:|---:|---:|---:|
//! | 50 | random | 0.131 | 0.223 | 0.59 | 10.5 | 0.012 | 2.4e-6 / 3.4e-8 |
//! | 50 | weak | 0.144 | 0.228 | 0.63 | 14.9 | 0.010 | 5.7e-1 / 2.1e-1 |
//! | 200 | random | 1.34 | 2.63 | 0.51 | 15.9 | 0.084 | 2.8e-6 / 2.5e-7 |
//! | 200 | weak | 1.67 | 3.07 | 0.55 | 21.2 | 0.079 | 1.8e-1 / 8.7e-2 |
//! | 500 | random | 8.70 | 21.4 | 0.41 | 50.5 | 0.17 | 2.6e-6 / 2.4e-6 |
//! | 500 | weak | 11.7 | 26.2 | 0.45 | 66.0 | 0.18 | 4.4e-1 / 4.1e-1 |
//! | 1000 | random | 46.2 | 98.0 | 0.47 | 224 | 0.21 | 2.7e-6 / 1.1e-3 |
//! | 1000 | weak | 64.0 | 118 | 0.54 | 182 | 0.35 | 3.7e-1 / 2.1e-1 |
//!
//! The table before it ran n = 50 first, and the n = 200 random layer then took 2.13 ms instead
//! of 1.5: the condition estimate's 720 KB KKT matrix was allocated through `mmap` on every call
//! after that allocation history (12 % of the time in page faults); it is no longer formed.
//!
//! Re-measured on 2026-12-06 after the exact refinement's dependent-row check moved to matrix
//! products, the finiteness checks began to vectorize and the condition estimate worked on the
//! working rows alone: `python3 benches/peers/qp_layers.py --sizes 10,50,100,200,500,1000
//! --repeats 11` (one run, same machine, same peers; the ratios moved by up to 0.04 between runs):
//!
//! | n | kind | bilevel ms | proxsuite 0.8 ms | ratio | qpth ms | ratio | weak / random (bilevel) |
//! |---:|---|---:|---:|---:|---:|---:|---:|
//! | 10 | random | 0.022 | 0.054 | 0.41 | 6.17 | 0.004 | |
//! | 10 | weak | 0.026 | 0.056 | 0.45 | 17.0 | 0.002 | 1.15 |
//! | 50 | random | 0.118 | 0.233 | 0.51 | 13.4 | 0.009 | |
//! | 50 | weak | 0.135 | 0.250 | 0.54 | 19.5 | 0.007 | 1.14 |
//! | 100 | random | 0.388 | 0.688 | 0.56 | 10.4 | 0.037 | |
//! | 100 | weak | 0.385 | 0.876 | 0.44 | 14.9 | 0.026 | 0.99 |
//! | 200 | random | 1.21 | 2.82 | 0.43 | 13.8 | 0.087 | |
//! | 200 | weak | 1.50 | 2.96 | 0.51 | 19.1 | 0.078 | 1.24 |
//! | 500 | random | 8.49 | 20.1 | 0.42 | 35.6 | 0.24 | |
//! | 500 | weak | 10.2 | 22.0 | 0.46 | 45.4 | 0.23 | 1.20 |
//! | 1000 | random | 48.5 | 89.8 | 0.54 | 197 | 0.25 | |
//! | 1000 | weak | 58.3 | 132 | 0.44 | 247 | 0.24 | 1.20 |
//!
//! The gradient errors are those of the table above. The weakly active layers now cost at most
//! 1.24 times the regular ones (1.37 at n = 500 and 1000 before). On the weak n = 1000 layer the
//! check of active rows outside the working set took 18 % of the time with Gram–Schmidt; from
//! the Gram matrices it takes two matrix products. Growth, `limit` alone
//! (`cargo bench --bench qp_peers -- --sizes 100,200,400,800,1600 --repeats 5`, one run):
//! 0.52 / 1.82 / 5.35 / 27.3 / 182 ms random and 0.61 / 2.08 / 7.66 / 32.8 / 207 ms weak, an
//! exponent of 2.1 over the whole range and 2.7 from 800 to 1600. The work per call is
//! `O(n² k)` in the working set's size `k ∝ n`, so it tends to n³.
//!
//! **A layer's factorization, and one large item on both cores** (2026-12-07). A dense layer is
//! factored once, `Q = LLᵀ`, `V = L⁻¹Cᵀ` for its `r` stacked rows and `G = VᵀV`: the cost of
//! a framework adapter's call whose data all change (`bilevel.torch`'s `QPFunction`, `qp_solve`,
//! a new `QuadraticLayer`). nalgebra computed the Cholesky factor and `V` a column at a time;
//! they now run on faer's blocked kernels (the Cholesky factor right-looking by panels of 128
//! columns), `G` is computed on and below its diagonal only, and the updates right of each
//! panel, `V` and `G` are cut by columns over the threads a batch leaves over (a batch of one
//! item on two threads: both help), in fixed blocks of 64 columns whatever the thread count,
//! so the factor is the same bit for bit (`InnerProblem::prepare`, `layer::solve_with`).
//! Dense random layers, `m = n/2` inequality rows, the Python package timed by an ad hoc
//! script (best of 3; `new`:
//! `QuadraticLayer(Q, c, B, A, b)`; `factor`: the first `derive` minus the second, on 1 / 2
//! threads; before: the package built from `ee414df`, the same morning):
//!
//! | n | `new` before | `new` now | `factor` before | `factor` now, 1 / 2 threads |
//! |---:|---:|---:|---:|---:|
//! | 500 | 18.7 ms | 4.2 ms | 24.0 ms | 2.6 / 4.5 ms |
//! | 1000 | 103.7 ms | 19.1 ms | 145.0 ms | 27.4 / 18.7 ms |
//! | 2000 | 684.3 ms | 117.7 ms | 3387 ms | 235.2 / 112.7 ms |
//!
//! `new` also lost the transposition of NumPy's C-ordered arrays into column-major storage
//! one number at a time (44 % of it at n = 2000; now in 32 × 32 tiles). At n = 500 the second
//! thread does not pay (the figures are within this machine's noise). One whole item,
//! `cargo bench --bench layer -- qp-layer-one-item` (forward solve from raw data: validation,
//! Cholesky, `V`, `G`, the dual active-set method): n = 500 11.8 ms on one thread, 12.0 ms on
//! two; n = 1000 72.1 ms and 63.8 ms (0.88), measured before the Cholesky factor was cut too.
//! With it, two threads against one on whole processes of repeated one-item solves
//! (`farm-bench`, an ad hoc example, median of 10 and 5 pairs): 0.88 at n = 1000 and at
//! n = 2000 (at n = 1000, 0.96 against two threads before the Cholesky factor was cut). The
//! rest of an item, the active-set steps and the derivative's solves, is matrix-vector work
//! on one thread; `limit` alone is unchanged (`benches/qp_peers.rs` on `ee414df` and now,
//! three alternating runs, medians: n = 1000
//! random 46.5 / 46.6 ms, weak 58.0 / 56.9 ms). The table against proxsuite, re-measured in
//! the same session (`python3 benches/peers/qp_layers.py --sizes 10,50,100,200,500,1000
//! --repeats 11`, one run; qpth not installed): ratios 0.42 / 0.45 (n = 10, random / weak),
//! 0.55 / 0.58 (50), 0.49 / 0.47 (100), 0.45 / 0.39 (200), 0.43 / 0.55 (500), 0.44 / 0.38
//! (1000); proxsuite's gradient errors as in the table above.
//!
//! ## Sparse QP layers: cost as the work grows
//!
//! `python3 benches/peers/sparse_layers.py --families banded --sizes 100,300,1000,3000,10000
//! --repeats 5`, then `--families box,simplex --sizes 100,1000,10000,100000 --repeats 3` and
//! `--families random --sizes 100,300,1000,2000 --repeats 3` (after `pip install proxsuite
//! clarabel osqp scipy`; 2026-12-06, one run each, same machine). It runs `cargo bench --bench
//! sparse_growth` (`layer::solve_sparse` + the exact one-sided gradients of a linear loss, one
//! thread, with peak heap and the dense layer on the same data up to n = 2000) and times on the
//! very same data proxsuite 0.8's sparse backend (`eps_abs = 1e-9`) with "the derivative a layer
//! built on it would compute" (one SciPy SuperLU of the KKT system on the rows its multipliers
//! mark active: proxsuite has no sparse backward of its own, so this is its strongest sparse
//! formulation with a derivative), and Clarabel and OSQP forward only (they give no
//! derivative). Families (`app::verify::sparse_instances`, each built backwards from a known
//! solution with strongly active, weakly active and inactive rows): `banded`, a chain
//! (tridiagonal `Q`, bounds on every third unit, differences on every fifth: a control
//! problem's shape); `box` and `simplex` projections; `random`, `Q` and `G` with about eight
//! entries per row (`m = n/2`).
//!
//! | family | n | bilevel ms (fwd + grad) | peak MB | proxsuite + KKT ms | ratio | dense layer ms |
//! |---|---:|---:|---:|---:|---:|---:|
//! | banded | 100 | 0.50 | 0.10 | 1.54 | 0.33 | 0.80 |
//! | banded | 1000 | 5.14 | 1.04 | 176 | 0.03 | 252 |
//! | banded | 3000 | 15.0 | 3.19 | 7650 | 0.002 | |
//! | banded | 10000 | 54.1 | 10.5 | 396 | 0.14 | |
//! | box | 1000 | 5.90 | 1.68 | 3.74 | 1.58 | 1315 |
//! | box | 10000 | 56.5 | 17.3 | 68.1 | 0.83 | |
//! | box | 100000 | 768 | 170 | 5292 | 0.15 | |
//! | simplex | 1000 | 7.14 | 1.26 | 42.2 | 0.17 | 11914 |
//! | simplex | 10000 | 64.6 | 13.0 | 56.8 | 1.14 | |
//! | simplex | 100000 | 754 | 127 | 826 | 0.91 | |
//! | random | 300 | 20.7 | 1.18 | 14.0 | 1.48 | 8.95 |
//! | random | 1000 | 125 | 8.01 | 311 | 0.40 | 230 |
//! | random | 2000 | 614 | 27.3 | 3307 | 0.19 | 2565 |
//!
//! (Re-measured 2026-12-06 with the dense layer forced onto its dense path: `layer::solve`
//! now routes large sparse items to the sparse path by itself.) The runs write growth tables
//! (`growth-<family>.csv` from the bench, `peers-<family>.csv` from the script) and draw them:
//! `bilevel plot --growth target/sparse-peers/*.csv -o growth.svg` gives per family the time
//! and peak-memory curves on log–log axes, each labelled with its fitted exponent
//! (log–log least squares over the sizes run). Time: 1.01 (banded), 1.00 (box, simplex), 1.78
//! (random, whose factor fills in) for the sparse layer; 2.5 to 3.8 for the dense layer; 0.88
//! to 2.43 for the peers. Peak memory: 1.01, 1.01, 1.01 and 1.54 for the sparse layer (linear
//! in the non-zeros where the factor does not fill in), about 2 for the dense one.
//! On the banded family at n = 10,000 the sparse layer takes 0.14 times proxsuite's time with a
//! derivative, in 10.5 MB (37,332 non-zeros). proxsuite's `z` is 1.5e-5 from the exact
//! solution on the box family (4e-10 elsewhere); `bilevel`'s is within 1e-10 by the benchmark's
//! assertion. proxsuite's time is irregular: 7.6 s on the banded family at n = 3000 (6.0 s in a
//! second run) against 0.39 s at 10,000. Against the forward-only solvers on the same data
//! `bilevel`'s forward solve plus gradient takes 0.8–1.5 times Clarabel's forward solve (its own
//! identification is Clarabel at `1e-8`) and 0.6–3.9 times OSQP's (ADMM with polishing). The dense
//! layer stays the faster one on small random layers (n ≤ 300) and is far slower on projections:
//! its dual active-set method adds the rows one at a time (11.9 s for the simplex at n = 1000).
//! From these figures `layer::solve` (and so `qp_solve` and `QPFunction`) now chooses per item: the
//! sparse path when n ≥ 500 and at most 5 % of the entries of `Q`, `G`, `A` are non-zero
//! (`layer::prefers_sparse`; `layer::solve_with` and `SolvePath` override it).
//!
//! Through the Python front ends (`python benches/python_sparse.py`, 2026-12-06, same machine,
//! one thread, median of 7 after a warm-up; the bounds-only chain of
//! `tests/python/conftest.py::banded_qp`), forward and gradients: at n = 10,000
//! `bilevel.sparse_qp_solve` 42.0 ms, `QPFunction` with torch COO tensors 46.0 ms,
//! `bilevel.jax.qp` with `BCOO` under `jax.jit(jax.grad(...))` 44.3 ms (XLA drops the unused
//! forward callback; the backward pass solves once); at n = 1000 4.6, 4.9 and 5.1 ms. The
//! adapters add under a tenth to the bare binding. The rows' independence check that the sparse gradients
//! now run (issue 25's case 4, `Inaccurate` for nearly dependent active rows) left the growth
//! benchmark's gradient times unchanged within noise (banded n = 10,000: 11.6 ms before, 11.8
//! after; random n = 2000: 120 and 109 ms). `cargo bench --bench layer -- sparse-layer` times
//! the same families under criterion (banded n = 10,000: 40.2 ms forward, 12.7 ms gradients).
//!
//! Def. 1's finite-β modes run on the sparse path too, from the offset problem on sparse
//! factorizations. `cargo bench --bench layer -- "sparse-layer/(gradients|contrastive)/banded"`
//! (2026-12-06, this machine): at n = 10,000 the contrastive gradients (β = 1e-3) take 19.0 ms
//! against the limit's 18.5 ms, at n = 1000 1.57 ms against 1.91 ms. Through Python
//! (`SparseQpSolution.gradients(g, mode=…)`, best of 7) at n = 10,000: limit 8.2 ms,
//! contrastive 8.9 ms, centred 14.8 ms. The offset iteration used to flip one row per round:
//! 1.76 s (220 times the limit) for the same contrastive gradients, and on the dense layer at
//! n = 1000 (`QuadraticLayer.surrogate` on the banded chain stored densely, 111 weakly active
//! rows) 40.3 s, then 1.3 s (one row per round replaced by blocks of rows), 18–28 times its
//! `derive`, because each round factored the offset's KKT system from scratch (0.7 s). Each
//! round is now a range-space solve on the layer's stored factorization of `Q` and the rows
//! (or one factorization of `Q + βκI` per offset for a loss with curvature), refined on the full
//! residual; the null-space `solve_kkt` only takes a round whose accuracy check fails
//! (2026-12-07, same script, best of 3): n = 1000, `derive` 40.4 ms, `surrogate` 1001.7 ms
//! before and 39.7 ms after (0.98 times `derive`); n = 300, 31.2 ms before and 2.3 ms after.
//! Under criterion, `cargo bench --bench layer -- "qp-layer-batch/(gradients|contrastive)"`
//! (batches of 128 random items, one thread, β = 1e-3; the same entry added to the session
//! start in a worktree): the contrastive gradients took 35.4 ms at n = 50 and 813.9 ms at
//! n = 200, now 7.8 and 130.5 ms, against the limit's 6.0 and 108.5 ms.
//!
//! Prop. 3's band on the sparse layer uses a certified lower bound of `λ_min(Q)`: bisection on
//! sparse Cholesky factorizations of `Q − νI`, with the rounding margin `2(n + 2)ε tr Q` of a
//! factorization that succeeds, computed once per layer. On the banded chain it reports
//! `ν = 0.4956` where the dense eigensolver gives `λ_min = 0.50001` (n = 1000), and it costs
//! about 6 ms at n = 10,000 (the first `QuadraticLayer.surrogate` on a fresh sparse layer
//! 51.1 ms, later ones 44.8 ms; `derive` 63.9 ms).

//! # Layout, fuzzing, examples and notebooks
//!
//! ## Layout
//!
//! The mathematical core, lowest layer first: `error`, `names` (one name table per kind of
//! choice: methods, activations, losses), `prox` (one definition per activation: `G`, `G*`, the
//! map, the proximal map; generic over `f32`/`f64`), `linalg` (KKT solves by the null-space
//! method, condition estimates, the `Gemm` products; `cholesky`: dense `LLᵀ` and `L⁻¹B` on faer's
//! blocked kernels, both cut by columns over the team; `sparse`/`sparse_kkt`: faer's CSC and the
//! sparse `LDLᵀ` of a KKT system, refined, with an LU fallback; `sparse_span`: the active rows'
//! distance from dependence without forming them densely; `linalg/threads` and `linalg/simd` are the one
//! room for `unsafe`: the team of threads, the safe splitting of buffers among its pieces, the
//! vector-instruction dispatch), `solve` (`solve/qp/`: the QP types, the dense dual active-set
//! backend — the one Goldfarb–Idnani —, Clarabel, OSQP, the exact refinement, the offset problem, the sparse QP;
//! `smooth`: argmin), `problem` (losses, constraints, the `InnerProblem` trait and three problem
//! classes), `surrogate` (Section 2), `layer` (QP layers in the frameworks' convention, every
//! input differentiable, batches of items with their own data; `layer/sparse.rs` the sparse
//! items, `layer/parametric.rs` the parametric layer `z*(θ)` on sparse data), `nested` (Sections 3-4: `problem` — `NestedProblem<T>`,
//! `Batch<T>`, `NestedSettings`, the reports and their status —; `rows`, Table 1 as data;
//! `linearized`, Prop. 7; `local/`, Prop. 5; `global/`, Prop. 4; `compose`, Def. 1 level by level;
//! `inference/`, the batched sweeps that train the non-closed-form rows; `method`, each row's
//! solver). The application, in `src/app/` (`bilevel::app`): `data` (IDX/MNIST), `fetch`, `nn/` (the
//! training client: model, rule, config, trainer, pacer, Adam, checkpoints, CSV log, Fig. 1,
//! Table 1, bench), `plot`, `derive` (the JSON contract), `verify/` (one function per check, their
//! instances and independent references); then `python/` (the PyO3 bindings; the Python package's own files are
//! `src/python/bilevel/`, its tests `tests/python/`), and the binary's `main.rs` with `cli/`.
//! `tests/architecture.rs` holds the house rules: no import cycle, the core never importing the
//! application, `unsafe` only in its room, no file over 800 lines, no function over 80 lines or 5
//! parameters. `tests/exact.rs` checks the Section 2 surrogates
//! against exact rational arithmetic. Benchmarks: `cargo bench --bench limit` (Section 2),
//! `--bench methods` (one gradient per Table 1 method), `--bench train` (one training step),
//! `--bench qp_peers` (the QP layer's instances and timings for `benches/peers/qp_layers.py`),
//! `--bench sparse_growth` (the sparse layer's growth over four families, with peak memory; its
//! instances feed `benches/peers/sparse_layers.py`). API
//! docs with rendered formulas (KaTeX, as on docs.rs):
//! `RUSTDOCFLAGS="--html-in-header src/docs/katex-header.html" cargo doc --no-deps --open`.
//!
//!
//! ## Examples
//!
//! * `cargo run --release --example relu_layer` — Example 1: one-sided derivatives at ties next to what
//!   back-propagation reports.
//! * `cargo run --release --example fenbp_mnist -- [DATA_DIR] [EPOCHS]` — the Appendix C program
//!   with the library API only (Fenchel BP, β = 0.01).
//! * `cargo run --release --example taxonomy` — Table 1's methods converging to back-propagation
//!   as β shrinks, with each solver's status.
//! * `python examples/jax_fig1.py --data DIR --epochs 5` (after `pip install . jax`) — Fig. 1's MLP
//!   trained in JAX with `bilevel.jax.fenchel_relu` (Appendix C's program; CSV for `bilevel plot`).
//! * `cargo run --release --example weak_constraint` — a QP layer with a weakly active constraint: the
//!   branch Prop. 2 takes for two losses, and Prop. 3's band as β shrinks.
//!
//! ## Notebooks
//!
//! Teaching notebooks on the Python package, committed with their outputs (they render on GitHub)
//! and executed top to bottom by CI (`pip install . jax matplotlib nbconvert ipykernel`, then
//! `jupyter nbconvert --to notebook --execute notebooks/NAME.ipynb`; each takes seconds):
//!
//! 1. `01_contrastive_surrogate` — Def. 1: `L^β` and its gradient as β shrinks (Prop. 1), the
//!    `O(β)` and centered `O(β²)` rates with fitted orders.
//! 2. `02_one_sided_derivatives` — Example 1 with the printed paper's erratum, Prop. 2 at weakly
//!    active constraints and the branch taken, the same tie in `jax.nn.relu` and in finite differences.
//! 3. `03_prop3_band` — the Prop. 3 band `L^β ≤ L ≤ L^β + β‖ℓ'‖²/(2ν)` over β.
//! 4. `04_table1_convergence` — Cor. 2: every row of Table 1 tends to back-propagation, with fitted
//!    rates and each solver's status.
//! 5. `05_fenchel_bp_mnist` — a short Fig. 1-style run in JAX with Fenchel-BP ReLUs (reads MNIST
//!    from `$BILEVEL_DATA` or `data/mnist`; `bilevel data fetch` downloads it).
//! 6. `06_learning_a_qp_layer` — `bilevel.torch.QPFunction` next to qpth: learning the rows of
//!    a polygon from projections, and a layer started at a tie (one-sided, qpth's ½, `relu`'s 0).
//!
//! ## Fuzzing
//!
//! `fuzz/` holds three [cargo-fuzz](https://crates.io/crates/cargo-fuzz) targets: `derive`
//! (structured problems across the whole `f64` range; every success is checked for finite numbers,
//! feasibility, the KKT conditions with the printed multipliers and Prop. 3's band, every failure
//! for a one-line message), `idx` (the IDX / gzip reader) and `checkpoint` (the loader, also on
//! resealed and edited real checkpoints). With `cargo install cargo-fuzz` on the stable toolchain:
//!
//! ```sh
//! RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz --target-dir target/fuzz -s none derive -- -max_total_time=60
//! ```
//!
//! CI runs a bounded campaign of each target. What fuzzing found, and the reproducers of the
//! reliability issue, live in `tests/regressions/` and are replayed by `cargo test`
//! (`tests/fuzz_regressions.rs`).
//!
//! ## The documentation as a reader sees it
//!
//! Formulas are KaTeX in `<div class="math">` blocks (`src/docs/katex-header.html`, also used by
//! docs.rs). CI opens every chapter of this guide in headless Chromium with the pages offline
//! (`.ci/guide-check.mjs`: KaTeX answered from its npm package at the header's version) and fails
//! when a formula is left unrendered, raises a KaTeX error or is wider than the page, when raw TeX
//! is left in the text, or when a link inside the documentation is broken; it keeps a screenshot of
//! this guide's first chapter as `target/guide-check/guide-surrogates.png`. Locally, after
//! `apt-get install chromium` and `npm install --prefix target/browser katex@0.16.11
//! playwright-core@1.65.2`:
//!
//! ```sh
//! RUSTDOCFLAGS="--html-in-header src/docs/katex-header.html" cargo doc --no-deps --all-features
//! node .ci/guide-check.mjs target/doc target/browser/node_modules target/guide-check
//! ```

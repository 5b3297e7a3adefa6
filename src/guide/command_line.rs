//! # The command line and the `derive` JSON contract
//!
//! * `bilevel verify [--json] [--seed N] [--only ID,...]` — the checks in the paper's order, one
//!   line each (claim, id, the quantity measured — relative error, absolute error, rate deviation,
//!   count or bound violation — value, tolerance, verdict) with the description wrapped to the
//!   terminal (`$COLUMNS`, default 100); or JSON
//!   `{"seed","version","checks":[{"id","claim","description","quantity","measured","tolerance","passed"}...],"passed":N,"failed":M}`.
//!   Each check is against an independent reference (finite differences, closed forms,
//!   brute-force active-set enumeration, exact recursion). Exit code 1 when a check fails.
//! * `bilevel taxonomy [--beta B] [--json]` — Table 1 as the paper prints it (CHL, convex CHL,
//!   FLN & LPOM, MAC, BP & PCN, Fenchel BP) and iterative predictive coding as a labelled extra, on
//!   a fixed small network: relative gradient error against BP, seconds per gradient, the solver.
//! * `bilevel derive PROBLEM.json` (or `-` for stdin) — derivatives of
//!   `E(z; θ) = ½zᵀQz − zᵀ(Bθ + c)` s.t. `Az ≥ b`, `A_eq z = b_eq`:
//!
//!   ```json
//!   {"Q": [[1,0],[0,1]], "c": [0,0], "B": [[1,0],[0,1]], "theta": [1,0],
//!    "A": [[1,0],[0,1]], "b": [0,0], "loss": {"kind": "linear", "g": [2,-3]}, "betas": [0.1]}
//!   ```
//!
//!   prints `z_star`, `multipliers`, `multipliers_eq`, `constraints` (`strong`/`weak`/`inactive`),
//!   `condition`, `loss`, `z_dot`, `grad_theta` and per β a `surrogates` entry (`z_hat`, `value`,
//!   `grad_theta`, `linearized_value`, `linearized_grad_theta`, `bound_lower`, `bound_upper`, `bound_nu` = the ν of the band),
//!   plus the diagnostics `branches`, `dependent_constraints` (active rows that duplicate others:
//!   LICQ fails there, the solution is still unique), `dependent_equalities` (equality rows that
//!   are combinations of the others with consistent right-hand sides: left out, multipliers 0;
//!   inconsistent ones make the problem infeasible, with the certificate), `method`, `residual`,
//!   `solver`. `loss` may
//!   also be `{"kind": "squared", "target": [..]}`. **For a JVP** give `"direction": [v..]`
//!   (length `p`) instead of `loss`: the output adds `jvp`, the one-sided derivative of `z*` along
//!   `θ + t v`, `t → 0⁺`, with the branch taken at each weakly active constraint (it is the Prop. 2
//!   limit for the linear loss `g = −Bv`, so `z_dot = jvp`; at a tie `jvp(−v) ≠ −jvp(v)`).
//!   **From a framework's backward pass** give `"loss": {"kind": "gradient", "g": [..]}` (only
//!   `ℓ'(z*)`): `z_dot` and `grad_theta` are exact for every loss with that gradient, `loss` is
//!   `gᵀz*`, the surrogates are Def. 2's linearization, and `loss_note` says so. **Gradients
//!   with respect to the layer's data**: `"gradients": ["Q", "B", "c", "A", "b", "A_eq", "b_eq"]`
//!   (any subset) adds `grad_Q`, … shaped like the data, one-sided at weakly active rows (from
//!   `ż`, `z*`, the multipliers and their derivatives: `QuadraticProblem::data_gradients`).
//!   **A batch**: `"theta": [[..], [..]]` answers every `θ` on the same layer (one factorization,
//!   two threads) as a JSON array in order, an item that fails being `{"error": ...}`. **Sparse
//!   data**: `Q`, `A`, `A_eq` may each be `{"shape": [r, c], "triplets": [[i, j, v], …]}`
//!   (zero-based, repeated positions summed); the request then runs on the sparse path (nothing
//!   `n × n` formed; `crate::app::derive_sparse`) and answers the limit entries (with `condition`,
//!   the dense path's estimate, and `jvp` for a `direction`), with `grad_Q`, `grad_A`,
//!   `grad_A_eq` as triplets on the data's patterns, `betas` (with Prop. 3's band, `bound_nu` a
//!   certified lower bound of `λ_min(Q)`) and a batch `theta` as on the dense path. Bad input
//!   gives one line on stderr naming the field and exit code 1.
//!   A success prints finite numbers only; a quantity that overflows, or a problem scaled
//!   beyond what `f64` resolves, is a one-line error instead. Labels, `z*`, `ż` and the gradients
//!   do not depend on how a row, the energy or the solution is scaled (rows are equilibrated by
//!   powers of two; the activity tests are relative to each row's own terms).
//!   "Infeasible" is said only with a verified certificate (`u ≥ 0` with `Cᵀu = 0` to the rounding
//!   of its own sum and `bᵀu > 0`; a backend's verdict is re-checked by an exact dual active-set
//!   method, Goldfarb-Idnani); nearly but not exactly dependent active rows, whose multiplier split
//!   `f64` cannot resolve, give `Inaccurate` rather than a derivative.
//!
//!   Output to a closed pipe (`| head`) ends quietly with exit 0; a full disk is a one-line error,
//!   exit 1 — for every command.

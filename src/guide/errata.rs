//! # Where the code departs from the printed paper
//!
//! * **Eq. 12 at ties.** With `ẑ_β = [θx − βg]₊` and `(θx)_j = 0` the one-sided derivative of
//!   Eq. 11 is `[−g_j]₊`; the printed case split assigns the two tie cases the other way round. The
//!   code follows Eq. 11 and Prop. 2.
//! * **Eq. 13's sign.** By Eq. 9 / Eq. 19 the gradient of Example 1 is `−D g xᵀ` (for active units
//!   `g_j x`, the back-propagation gradient); Eq. 13 as printed drops the minus.
//! * **Predictive coding.** Table 1 files PCN with BP (penalizer energies, top-down, linearized,
//!   closed form), and `bilevel taxonomy` prints that row as the paper does. Predictive coding as
//!   it is usually run — inference iterated to convergence on Eq. 30 with the discounting weights
//!   `1/Π_{l≥k} β_l` of Section 3.2.1 — is offered as a labelled extra (`Method::PredictiveCoding`,
//!   not in `Method::ALL`); its gradient tends to BP's as β → 0 (Cor. 2).
//! * **Centered (±β) CHL** (`chl-centered`, `convex-chl-centered`, `NestedSettings::centered` in `nested::inference::gradient`)
//!   is an extra beyond the paper: the mean of Prop. 4's surrogate at `+β` and `−β` on the loss,
//!   which reaches its `β → 0⁺` limit at `O(β²)` in the output β (checked by `verify`'s
//!   `table1-centered` row); the single-level counterpart is `Bilevel::centered`.
//! * **Batches.** The paper states the surrogates per sample. The crate's batch surrogate is the
//!   mean of the per-sample surrogates at the same β, for every method (a test checks it for each).
//!   The Fig. 1 / Appendix C code applies β to the gradient of the batch-mean loss, which is β/B per
//!   sample in this convention; `bilevel train --beta` keeps the paper's meaning and converts.

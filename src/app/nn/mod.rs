//! The MNIST client: the paper's Fig. 1 experiment (Discussion and the Julia program of
//! Appendix C) — an MLP trained with back-propagation or Fenchel back-propagation.
//!
//! Both rules are the crate's Prop. 7 pass ([`linearized::gradient`](crate::nested::linearized::gradient)), not a separate copy:
//! * [`Rule::bp`]: penalizer energies `½‖z_k − f(a_k)‖²`, whose Prop. 7 pass with the Remark 2
//!   gradient is exact back-propagation for every β (Eq. 46-47);
//! * [`Rule::fenbp`]: Fenchel energies, the pass of Eq. 49-51 with the Eq. 53 gradient. On each
//!   ReLU the signal is the one-sided quotient `(relu(a) − relu(a − β·e))/β` — the Appendix C
//!   pullback `(z − relu(x − β·dy))/β` — computed case by case so that it is exactly `e`
//!   where both arguments are positive ([`crate::prox::Activation::difference_quotient`]).
//!
//! The loss is softmax cross-entropy averaged over the batch, as Flux's `crossentropy`; so `e`
//! carries the factor `1/B` and a batch-mean loss acts on each sample like `β/B`.
//!
//! **Initialization** ([`Init`]): Glorot uniform `U(−a, a)`, `a = √(6/(n_in + n_out))`, zero
//! biases, for every layer; `negative` replaces the *first* layer's weights by `−|U(−a, a)|`
//! (the Julia code's `glorot_neg_uniform`, which it passes to the first `Dense` only; the other
//! layers keep Flux's default Glorot init). With pixels in `[0, 1]`, every first-layer
//! pre-activation is then `≤ 0`: all ReLUs are off, back-propagation's gradient of the first
//! layer is exactly zero and the network can only learn the class prior (88.65 % test error),
//! while Fenchel BP with large β still passes a signal `(relu(a − β e))/β` through the kink.
//!
//! Samples are matrix columns. The training step allocates nothing: buffers are built once per
//! batch size in [`Trainer::new`].
//!
//! **Threads** ([`TrainConfig::threads`]): every matrix product of the step is cut into blocks
//! of rows or columns that a persistent team of threads computes at the same time
//! ([`Threads::gemm`](crate::linalg::Threads::gemm)), and Adam's update into the column blocks in which the weight
//! gradients were computed ([`Adam::step_with`]). Each entry is still computed by one thread
//! in the same order, so runs are bit-identical for every thread count (tested over whole
//! runs, and on resuming with another count). Measured with `bilevel bench train` on a 2-core AMD EPYC (Zen 4):
//! products alone 0.50 → 0.26 s per epoch, a BP epoch 0.76 → 0.46 s on two threads.

pub mod adam;
pub mod bench;
pub mod checkpoint;
mod config;
pub mod log;
mod model;
mod pacer;
pub mod reproduce;
mod rule;
mod run;
pub mod table1;
mod trainer;

pub use adam::{Adam, AdamSettings};
pub use config::{EpochRecord, InferenceStats, TrainConfig};
pub use model::{glorot_uniform, mlp, Init, MAX_BATCH, PAPER_WIDTHS};
pub use rule::{Rule, DEFAULT_SWEEPS};
pub use run::{run, Observer, Outputs};
pub use trainer::{count_correct, Trainer};

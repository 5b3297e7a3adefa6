//! # The MNIST training client
//!
//! The MNIST client (the paper's Fig. 1, Discussion and Appendix C): the MLP
//! 784-256-128-64-10 trained with back-propagation or Fenchel back-propagation, both computed by
//! the Prop. 7 code above (`bilevel::app::nn`), in `f32`, allocation-free, on two threads by default
//! (`--threads`; the results are bit-identical for every count, so a run may resume on another
//! machine). `bilevel bench train --jax PYTHON` on a 2-core AMD EPYC (Zen 4, AVX-512), 2026-12-05: a BP epoch
//! 0.46-0.48 s on two threads, 0.76 s on one, against JIT-compiled JAX 0.10.2's 0.48-0.49 s in
//! the same command (0.94-0.99× JAX's time; Fenchel BP the same). That JAX time is the fastest of
//! four formulations of the step the bench times: batch-major with `optax.adam` and the epoch
//! in one `lax.scan`; a jitted call per step takes 0.83 s (optax) to 1.19 s (Adam written out,
//! samples as columns), which is what earlier releases compared with (0.41-0.51×). `bilevel reproduce fig1` trains the
//! seven configurations of Fig. 1 and `bilevel reproduce table1` every row of Table 1 on the same
//! MLP; their results are in [`super::results`].
//!
//! MNIST is read from `--data DIR`, else `$BILEVEL_DATA`, else `./data/mnist`: the four standard
//! IDX files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
//! `t10k-labels-idx1-ubyte`), gzipped (`.gz`) or not. A missing or malformed file is a one-line
//! error naming the file and what to do.
//!
//! * `bilevel data fetch [--dir DIR] [--mirrors URL,...]` — downloads the four files from
//!   torchvision's mirrors in order (two attempts each), verifies the SHA-256 and length of each
//!   file's decompressed content against constants in `src/app/fetch.rs`, and renames it into place
//!   only then (a download in progress is `.NAME.partial`, removed on failure): a file under its
//!   final name is always complete. Files already present and verified are kept. If every mirror
//!   fails, one line lists each URL with its reason and the directory to put the files into by
//!   hand. Tested against a local HTTP server (good, corrupted, truncated, missing, unreachable);
//!   no test needs the internet.
//!
//! * `bilevel train --method bp|fenbp|mac|pc|lpom|chl|convex-chl|chl-centered|convex-chl-centered [--beta B] [--sweeps T]
//!   [--init glorot|negative] [--epochs 50] [--batch 50] [--lr 1e-3] [--seed 42] [--data DIR]
//!   [--log run.csv] [--checkpoint DIR] [--resume | --overwrite] [--shuffle] [--exact-train-error]
//!   [--train-size 50000] [--threads N]` — the paper's settings by default (first 50,000 training
//!   images in file order, batch-mean cross-entropy, Adam). `--threads` (default: the CPUs
//!   available, at most 2) cuts every matrix product of the step, Adam's update and the inference
//!   sweeps' element-wise passes (by samples) over a persistent team of threads without changing
//!   one bit of the results; 16 of every 1000 steps are timed on one thread and on the team (per
//!   multiply-add of the step's products, as the sweeps per batch vary), and the rest run on the
//!   faster (on the 2-core VM
//!   this was built on, two threads are 1.6× faster most of the time, but in stretches both run
//!   at half speed and one thread is faster). `bp` and `fenbp` are Prop. 7's closed-form pass; `mac`,
//!   `pc` (predictive coding) and `lpom` run at most `T` inference sweeps per batch (default 20) to
//!   the minimizer of their local contrastive objective (`nested::inference`: the fixed point of the
//!   same pass; one sweep is BP or Fenchel BP), `chl` and `convex-chl` at most `T` per phase of
//!   their global one (the clamped phase solved for the rates `(ẑ − ž)/Πβ`), and their
//!   `-centered` variants nudge the output both ways (±β: one more clamped phase, the
//!   `β`-odd terms of the estimate cancel); the CSV reports the
//!   mean sweeps, the batches that did not reach the tolerance and the mean surrogate value
//!   `L^β` (for MAC and predictive coding a lower bound of the forward loss). Prints one line
//!   per epoch and shows a progress bar on a terminal. Sizes are checked against the data before
//!   anything is allocated, and the checkpoint directory is proven writable before the first
//!   epoch. The CSV has the columns
//!   `epoch,train_loss,train_error_pct,test_error_pct,seconds,exact_train_error_pct,method,beta,init,seed,batch,lr,sweeps,mean_sweeps,unconverged,surrogate`
//!   (`train_error_pct` is the running estimate over the epoch's batches, each scored before its
//!   update, as in the Julia code; `seconds` excludes evaluation). `--checkpoint DIR` writes the
//!   model and Adam's state after every epoch (temporary file, then rename, with a CRC-32 over the
//!   whole file); `--resume` continues from it and reproduces the uninterrupted run bit for bit. A
//!   corrupted or edited checkpoint is refused. An existing checkpoint is never replaced unless
//!   you pass `--resume` or `--overwrite`.
//! * `bilevel plot RUN.csv... -o fig.svg|fig.png` — training (solid) and test (dashed) error per
//!   epoch, one colour per run, legend from the CSV's settings columns. Uses a bundled DejaVu Sans
//!   font, so it works on machines without fonts.
//! * `bilevel reproduce fig1 [--data DIR] --out DIR [--epochs 50] [--threads N]` — the seven configurations of
//!   Fig. 1, their CSVs, `fig1.svg`/`fig1.png` (both panels) and `fig1.md` (final errors next to
//!   the paper's and a JAX reference run's). 2 min 55 s for 50 epochs on 2 cores (measured; peak RSS 87 MB); rerunning
//!   continues from the checkpoints it writes.
//! * `bilevel reproduce table1 [--data DIR] --out DIR [--epochs 10] [--seeds 3] [--beta 0.1]
//!   [--sweeps 20] [--jobs N] [--train-size 50000]` — every row of Table 1 (CHL, convex CHL, LPOM,
//!   MAC, BP, Fenchel BP), predictive coding and the centered CHL variants trained on the Fig. 1
//!   MLP under one protocol (same
//!   data, init per seed, Adam, batch 50, β on the batch-mean loss), `jobs` runs at a time:
//!   `table1.md` (final and best test error, mean ± sd over seeds; seconds per epoch; sweeps per
//!   batch; batches that stopped at the budget; cosine to BP's gradient at the initial network;
//!   published numbers with their settings), one CSV per run and `table1.svg`/`.png`. 4 minutes
//!   with the defaults on 2 cores (measured: 4 min 0 s, peak RSS 118 MB); reruns continue from
//!   the checkpoints.
//! * `bilevel bench train [--repeats 3] [--methods fenbp,mac,pc,lpom,chl,convex-chl] [--beta 1] [--sweeps T]
//!   [--threads 1,2] [--jax PYTHON]` — the machine (CPU model, clock, the vector instructions the
//!   loops dispatch to, CPUs available), then seconds per epoch of BP and each method on each
//!   thread count next to the matrix products alone (GFLOP/s and flop/cycle, layer by layer), the
//!   mean sweeps, and each gradient's cosine and relative distance to BP's at the initial
//!   network; with `--jax` the same step in JAX (`benches/jax_train_step.py`, needs
//!   `pip install jax optax`), each rule timed in four formulations (samples as rows or columns,
//!   Adam written out or `optax.adam`, a jitted call per step or one `lax.scan` per epoch) and
//!   compared, at BP's fastest thread count, with the fastest, which it names. On the 2-core VM (β = 1, s/epoch
//!   on one / two threads): BP 0.75 / 0.45, MAC 2.2 / 1.6, LPOM 1.5 / 1.0, predictive coding
//!   1.15 / 0.78, CHL 1.9 / 1.3, convex CHL 1.9 / 1.5; the inference rows are bound by the
//!   products again (their element-wise passes are vectorized and run on the team too).

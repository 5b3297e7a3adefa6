//! Why MAC's training diverges at the paper's β = 1 (Table 1, "MAC"): a defect of the inference
//! sweeps, or a property of MAC's objective (Eq. 30)?
//!
//! Trains MAC at β = 1 on the paper's MLP and protocol (`bilevel train --method mac --beta 1`:
//! batch 50, file order, Adam 1e-3, 20 sweeps per batch) and after every epoch probes the
//! network on a fixed batch (the first 50 training images), in f64:
//! * `loss`: the forward pass's loss `ℓ(z*)`;
//! * `Lbud`: the surrogate the training step sees (the sweeps with the training's budget);
//! * `L*` and `sweeps`: the sweeps run to convergence (tolerance 1e-10, at most 20,000);
//! * `Lref`: the independent per-sample solver of `nested::local` (L-BFGS, then an active set at
//!   the ReLU kinks), from the forward pass, not the sweeps;
//! * `cos BP`: the cosine between the converged surrogate's θ-gradient and back-propagation's;
//! * `Π‖W‖₂`: the product of the layers' spectral norms (power iteration).
//!
//! Eq. 30 is at most `ℓ(z*)` (the forward pass has zero penalty), so every `L` column lies below
//! `loss`; how far below is how loose the bound is that training minimizes.
//!
//! ```text
//! cargo run --release --features cli --example mac_beta_one -- [DATA_DIR] [EPOCHS] [SWEEPS]
//! ```
//! (`DATA_DIR` defaults to `$BILEVEL_DATA`, then `./data/mnist`; `EPOCHS` to 10; `SWEEPS`, the
//! training's budget per batch, to 20.)

use std::path::PathBuf;

use bilevel::app::data::{resolve_dir, Mnist};
use bilevel::app::nn::{Rule, TrainConfig, Trainer, DEFAULT_SWEEPS};
use bilevel::nested::inference::{self, InferenceWorkspace};
use bilevel::nested::linearized::{self, Gradients, Workspace};
use bilevel::nested::method::Method;
use bilevel::nested::{Batch, BatchReport, NestedSettings, Network, OutputLoss};
use nalgebra::DMatrix;

/// Errors are printed as sentences (`error: …`), not as Rust debug output.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> bilevel::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = resolve_dir(
        args.next()
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .as_deref(),
    );
    let epochs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let budget: usize = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SWEEPS);
    let data = Mnist::load(&dir)?;
    let rule = Rule::iterative(Method::Mac, 1.0, budget);
    rule.validate()?;
    let mut trainer = Trainer::new(TrainConfig::paper(rule, 1))?;

    // The probe batch in f64, and the per-sample β of the batch-mean convention (β/B).
    let indices: Vec<usize> = (0..50).collect();
    let (mut x, mut y) = (DMatrix::zeros(784, 50), DMatrix::zeros(10, 50));
    data.train.batch_into(&indices, &mut x, &mut y)?;
    let (x, y) = (x.map(f64::from), y.map(f64::from));
    let betas = [1.0 / 50.0; 4];

    println!(
        "epoch  train loss  test err %  | probe: loss      Lbud        L*          Lref        \
         sweeps  cos BP   Π‖W‖₂"
    );
    for epoch in 0..=epochs {
        let record = if epoch == 0 {
            None
        } else {
            Some(trainer.train_epoch(&data, &mut |_, _, _| {})?)
        };
        let net: Network<f64> = trainer.net.cast();
        let mac = Method::Mac.problem(&net, &betas[..], OutputLoss::SoftmaxCrossEntropy)?;
        let batch = Batch { x: &x, target: &y };
        let training = rule.settings();
        let converged = NestedSettings {
            inference_max_sweeps: 20_000,
            inference_tol: 1e-10,
            ..NestedSettings::default()
        };
        let (lbud, _) = sweeps(&mac, batch, &training)?;
        let (lstar, g_mac) = sweeps(&mac, batch, &converged)?;
        let reference = bilevel::nested::local::contrastive(&mac, batch, &converged)?;
        let bp = Method::Bp.problem(&net, &betas[..], OutputLoss::SoftmaxCrossEntropy)?;
        let mut ws = Workspace::new(&net, 50);
        let mut g_bp = Gradients::zeros(&net);
        let forward = linearized::gradient(&bp, batch, &mut ws, &mut g_bp)?;
        let norms: f64 = net
            .layers
            .iter()
            .map(|l| bilevel::linalg::spectral_norm_sq(&l.w, 50).sqrt())
            .product();
        let (train, test) =
            record.map_or((f64::NAN, f64::NAN), |r| (r.train_loss, r.test_error_pct));
        println!(
            "{epoch:>5}  {train:>10.4}  {test:>10.2}  |  {:<9.3e} {:<11.3e} {:<11.3e} {:<11.3e} \
             {:>6}{}  {:>6.3}  {norms:.3e}",
            forward.value,
            lbud.value,
            lstar.value,
            reference.value,
            lstar.status.iterations,
            if lstar.status.outcome == bilevel::nested::Outcome::Solved {
                " "
            } else {
                "+"
            },
            cosine(&g_mac, &g_bp),
        );
    }
    println!("(`+`: the sweeps stopped at their budget before the tolerance)");
    Ok(())
}

/// The MAC sweeps' report and gradient on `batch` with `settings`.
fn sweeps(
    problem: &bilevel::nested::NestedProblem<'_, f64>,
    batch: Batch<'_, f64>,
    settings: &NestedSettings,
) -> bilevel::Result<(BatchReport<f64>, Gradients<f64>)> {
    let mut ws = InferenceWorkspace::new(problem.net, batch.x.ncols());
    let mut grads = Gradients::zeros(problem.net);
    let report = inference::gradient(problem, batch, settings, &mut ws, &mut grads)?;
    Ok((report, grads))
}

/// `⟨a, b⟩ / (‖a‖ ‖b‖)` over all parameters.
fn cosine(a: &Gradients<f64>, b: &Gradients<f64>) -> f64 {
    let (a, b) = (a.flatten(), b.flatten());
    a.dot(&b) / (a.norm() * b.norm())
}

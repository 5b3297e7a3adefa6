//! The paper's Appendix C program with the library API only: an MLP 784-256-128-64-10 trained
//! on MNIST with Fenchel back-propagation (β = 0.01) and Adam, batch 50, no shuffling.
//!
//! ```text
//! cargo run --release --example fenbp_mnist -- [DATA_DIR] [EPOCHS]
//! ```
//! (`DATA_DIR` defaults to `$BILEVEL_DATA`, then `./data/mnist`; `EPOCHS` to 5.)

use std::path::PathBuf;

use bilevel::app::data::{resolve_dir, Mnist};
use bilevel::app::nn::{count_correct, mlp, Adam, AdamSettings, Init};
use bilevel::nested::linearized::{gradient, Gradients, Workspace};
use bilevel::nested::method::Method;
use bilevel::nested::{Batch, OutputLoss};
use nalgebra::DMatrix;
use rand::SeedableRng;

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
    let epochs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let data = Mnist::load(&dir)?;

    // use_negative_init = false; use_FenBP = true; const beta = 0.01f0; Random.seed!(42)
    let beta = 0.01f32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut net = mlp(&[784, 256, 128, 64, 10], Init::Glorot, &mut rng)?;
    let mut opt = Adam::new(&net, AdamSettings::default()); // ADAM(0.001)

    // Buffers for one batch: everything below runs without allocating.
    let (batch, n_train) = (50, 50_000);
    let mut ws = Workspace::new(&net, batch);
    let mut grads = Gradients::zeros(&net);
    let (mut x, mut y) = (DMatrix::zeros(784, batch), DMatrix::zeros(10, batch));
    let mut indices = vec![0; batch];
    let betas = [beta; 4]; // β_k = β on every layer

    for epoch in 1..=epochs {
        let (mut total_loss, mut correct) = (0.0f64, 0);
        for start in (0..n_train).step_by(batch) {
            // train = partition(1:50000, 50), in file order
            for (i, idx) in indices.iter_mut().enumerate() {
                *idx = start + i;
            }
            data.train.batch_into(&indices, &mut x, &mut y)?;
            // gs = gradient(ps): Fenchel energies on every layer = the my_relu pullback
            // (z - relu(x - beta*dy)) / beta on each ReLU (Prop. 7, Eq. 49-53).
            let problem =
                Method::FenchelBp.problem(&net, &betas[..], OutputLoss::SoftmaxCrossEntropy)?;
            let report = gradient(&problem, Batch { x: &x, target: &y }, &mut ws, &mut grads)?;
            total_loss += f64::from(report.value);
            correct += count_correct(&ws.z[3], &y);
            opt.step(&mut net, &grads)?; // update!(opt, ps, gs)
        }
        // test accuracy, one forward pass over the 10,000 test images
        let all: Vec<usize> = (0..data.test.len()).collect();
        let mut ws_test = Workspace::new(&net, all.len());
        let (mut xt, mut yt) = (
            DMatrix::zeros(784, all.len()),
            DMatrix::zeros(10, all.len()),
        );
        data.test.batch_into(&all, &mut xt, &mut yt)?;
        bilevel::nested::linearized::forward(&net, &xt, &mut ws_test)?;
        let test_error =
            100.0 * (1.0 - count_correct(&ws_test.z[3], &yt) as f64 / all.len() as f64);
        println!(
            "{epoch} loss: {:.4} (approx) train error: {:.2} test error: {test_error:.2}",
            total_loss / (n_train / batch) as f64,
            100.0 * (1.0 - correct as f64 / n_train as f64),
        );
    }
    Ok(())
}

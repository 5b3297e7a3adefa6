//! The paper's unifying claim in one screen: every method of Table 1 is a surrogate of the same
//! nested program, and every one of their gradients tends to back-propagation's as β → 0⁺
//! (Cor. 2). Each row is a choice of layer energy, direction and linearization
//! (`Method::choices`), not a separate algorithm.
//!
//! Run: `cargo run --release --example taxonomy`

use bilevel::app::verify::instances::{matrix, network, rng};
use bilevel::nested::method::Method;
use bilevel::nested::{Batch, NestedReport, NestedSettings, OutputLoss};
use bilevel::prelude::*;

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

fn run() -> Result<()> {
    // A 5-4-3-2 network with ReLU hidden layers and a batch of 8 samples (columns).
    let mut r = rng(7);
    let net = network(&mut r, &[5, 4, 3, 2], Activation::Relu);
    let x = matrix(&mut r, 5, 8);
    let target = matrix(&mut r, 2, 8);
    let loss = OutputLoss::Squared;

    // Every row is one problem type, one batch, one settings struct and one report.
    let run = |method: Method, beta: f64| -> Result<NestedReport> {
        let problem = method.problem(&net, vec![beta; 3], loss)?;
        let batch = Batch::new(&problem, &x, &target)?;
        method.run(&problem, batch, &NestedSettings::default())
    };
    let bp = run(Method::Bp, 1.0)?.grad.flatten();
    println!("relative gradient error against back-propagation, ‖∇ − ∇_BP‖∞ / ‖∇_BP‖∞:\n");
    println!(
        "{:<18} {:<30} {:>9} {:>9} {:>9} {:>9}",
        "method", "(E_k, unravel, linearized)", "β = 1", "0.1", "0.01", "0.001"
    );
    for method in Method::ALL.into_iter().chain(Method::EXTRAS) {
        let mut cells = Vec::new();
        for beta in [1.0, 0.1, 0.01, 0.001] {
            cells.push(match run(method, beta) {
                Ok(report) => format!("{:.1e}", (report.grad.flatten() - &bp).amax() / bp.amax()),
                // e.g. CHL's energy is unbounded below for large β: reported, not hidden.
                Err(Error::Unbounded(_)) => "unbounded".into(),
                Err(Error::NotConverged { .. }) => "no conv.".into(),
                Err(e) => return Err(e),
            });
        }
        let (e, d, l) = method.choices();
        println!(
            "{:<18} {:<30} {:>9} {:>9} {:>9} {:>9}",
            method.name(),
            format!("({e:?}, {d:?}, {l})"),
            cells[0],
            cells[1],
            cells[2],
            cells[3]
        );
    }
    // The report says how each inner problem was solved and what the returned point is.
    println!("\nat β = 0.01: solver, iterations, residual, optimum");
    for method in Method::ALL.into_iter().chain(Method::EXTRAS) {
        if let Ok(r) = run(method, 0.01) {
            let s = &r.status;
            println!(
                "  {:<18} {:<50} {:>7} {:>9.1e} {}",
                method.name(),
                s.solver,
                s.iterations,
                s.residual,
                s.optimum.label()
            );
        }
    }
    println!("\nBP is exact for every β; Fenchel BP equals it once β is below the distance of the");
    println!("pre-activations to the ReLU kink; all others approach it at rate O(β).");
    Ok(())
}

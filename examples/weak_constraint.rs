//! A constrained quadratic layer with a weakly active constraint (Prop. 2), the branch its
//! one-sided derivative takes, and Prop. 3's band as β shrinks.
//!
//! `E(z; θ) = ½‖z‖² − zᵀθ` subject to `z₁ + z₂ ≤ 1` (written `−z₁ − z₂ ≥ −1`) and `z₁ ≥ 0`, at
//! `θ = (0.5, 0.5)`: the unconstrained minimizer `θ` lies exactly on the first constraint, so it
//! is active with a zero multiplier (weakly active). Which way `ẑ_β` moves depends on the loss.
//!
//! Run: `cargo run --example weak_constraint`

use bilevel::prelude::*;
use nalgebra::{dmatrix, dvector, DMatrix};

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
    let constraints = LinearConstraints {
        a: dmatrix![-1.0, -1.0; 1.0, 0.0],
        b: dvector![-1.0, 0.0],
        ..LinearConstraints::none(2)
    };
    let theta = dvector![0.5, 0.5];
    let layer = QuadraticProblem::new(
        DMatrix::identity(2, 2),
        DMatrix::identity(2, 2),
        dvector![0.0, 0.0],
        constraints,
    )?;

    for (name, target) in [
        ("pull inward ", dvector![0.0, 0.2]),
        ("push outward", dvector![1.0, 0.6]),
    ] {
        let program = Bilevel::new(layer.clone(), Loss::Squared { target })?;
        let limit = program.limit(&theta)?;
        println!("== loss ½‖z − t‖², {name}");
        println!(
            "   z* = {:.6?}, multipliers {:?}",
            limit.z_star.z.as_slice(),
            limit.z_star.multipliers.as_slice()
        );
        for i in 0..2 {
            println!(
                "   constraint {i}: {:<8} branch: {}",
                limit.z_star.activity[i].label(),
                limit.direction.branches[i].map_or("(not weakly active)", |b| b.label())
            );
        }
        println!(
            "   z_dot = {:.6?}  ({})",
            limit.direction.z_dot.as_slice(),
            limit.direction.method
        );
        println!("   dL/dθ (Cor. 1) = {:.6?}", limit.grad_theta.as_slice());
        println!("   beta      (z_hat - z*)/beta        L^beta      L          upper (Prop. 3)");
        for beta in [1.0, 0.1, 0.01, 0.001] {
            let s = program.surrogate(&theta, beta)?;
            let band = program.band_of(&s).expect("Q = I is 1-strongly convex");
            let q = (&s.z_hat.z - &limit.z_star.z) / beta;
            println!(
                "   {beta:<8} [{:>8.5}, {:>8.5}]   {:>9.6}  {:>9.6}  {:>9.6}",
                q[0], q[1], band.lower, band.loss, band.upper
            );
        }
        println!();
    }
    Ok(())
}

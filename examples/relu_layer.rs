//! Example 1 of the paper: a ReLU layer `z* = [W x]₊` with a linear loss `ℓ(z) = gᵀz`.
//!
//! Two units sit exactly at the kink, `(Wx)_j = 0`. Back-propagation and implicit
//! differentiation have no derivative there (frameworks silently use `relu'(0) = 0`); the
//! contrastive surrogate has a one-sided one, `dẑ_β/dβ|₀₊ = [−g_j]₊` (Eq. 11), which this program
//! computes and compares with the quotient `([Wx − βg]₊ − [Wx]₊)/β` for shrinking β.
//!
//! Run: `cargo run --example relu_layer`

use bilevel::prelude::*;
use nalgebra::{dvector, DMatrix, DVector};

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
    let x = dvector![1.0, -0.5, 2.0];
    // Rows 2 and 4 of W are zero, so (Wx)_2 = (Wx)_4 = 0: ties.
    #[rustfmt::skip]
    let w = DMatrix::from_row_slice(4, 3, &[
        0.4,  0.2, 0.1,
        0.0,  0.0, 0.0,
        -0.3, 0.6, 0.0,
        0.0,  0.0, 0.0,
    ]);
    let g = dvector![1.0, -2.0, 0.5, 3.0];

    // θ = vec(W), row-major; the layer energy is E(z; θ) = ½‖z − Wx‖² + ι_{≥0}(z).
    let theta = DVector::from_iterator(12, w.transpose().iter().copied());
    let layer = ProxProblem::dense_layer(Activation::Relu, 4, &x)?;
    let program = Bilevel::new(layer, Loss::Linear { g: g.clone() })?;
    let limit = program.limit(&theta)?;
    let u = &w * &x;

    println!("unit   (Wx)_j     g_j   activity  branch   z_dot  BP (relu'(0)=0)   quotient b=1e-3  b=1e-6");
    for j in 0..4 {
        let bp = if u[j] > 0.0 { -g[j] } else { 0.0 };
        let q = |b: f64| ((u[j] - b * g[j]).max(0.0) - u[j].max(0.0)) / b;
        println!(
            "{j:>4} {:>9.3} {:>7.2}   {:<8}  {:<7} {:>6.2} {:>12.2} {:>18.4} {:>7.4}",
            u[j],
            g[j],
            limit.z_star.activity[j].label(),
            limit.direction.branches[j].map_or("-", |b| if b == Branch::Leaves {
                "leaves"
            } else {
                "stays"
            }),
            limit.direction.z_dot[j],
            bp,
            q(1e-3),
            q(1e-6),
        );
    }
    println!(
        "\nUnit 1 is at the kink with g < 0: lowering the loss pushes z_1 up, and the one-sided"
    );
    println!(
        "derivative is [-g_1]+ = 2 while back-propagation reports 0. Unit 3 (g > 0) stays at 0."
    );
    println!("(The printed Eq. 12 swaps these two tie cases; the code follows Eq. 11.)");

    // Cor. 1: dL/dθ = −vec(ż xᵀ); rows of W at a tie with g < 0 get a non-zero gradient.
    let grad = DMatrix::from_row_slice(4, 3, limit.grad_theta.as_slice()).map(|v| v + 0.0); // +0.0 prints −0 as 0
    println!("\ngradient w.r.t. W (Cor. 1, one-sided at ties):\n{grad:.3}");
    println!(
        "method: {}, condition estimate {:.1}",
        limit.direction.method, limit.direction.condition
    );
    Ok(())
}

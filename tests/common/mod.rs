//! Helpers shared by the nested-program integration tests.
#![allow(dead_code)]

use bilevel::nested::linearized::{gradient, Gradients, Workspace};
use bilevel::nested::method::Method;
use bilevel::nested::{
    Batch, EnergyKind, NestedProblem, NestedReport, NestedSettings, Network, OutputLoss,
};
use nalgebra::DMatrix;

/// The solver signature shared by `nested::global::contrastive` and `nested::local::contrastive`.
type Solver = fn(&NestedProblem<'_>, Batch<'_>, &NestedSettings) -> bilevel::Result<NestedReport>;

/// Runs `solver` on `(net, kind, betas, loss)` and the batch `(x, t)` with default settings.
fn run_with(
    solver: Solver,
    net: &Network<f64>,
    (kind, betas, loss): (EnergyKind, &[f64], OutputLoss),
    x: &DMatrix<f64>,
    t: &DMatrix<f64>,
) -> bilevel::Result<NestedReport> {
    let problem = NestedProblem::new(net, kind, betas, loss)?;
    let batch = Batch::new(&problem, x, t)?;
    solver(&problem, batch, &NestedSettings::default())
}

/// The global contrastive objective (Prop. 4) with default settings.
pub fn global(
    net: &Network<f64>,
    kind: EnergyKind,
    betas: &[f64],
    loss: OutputLoss,
    x: &DMatrix<f64>,
    t: &DMatrix<f64>,
) -> bilevel::Result<NestedReport> {
    run_with(
        bilevel::nested::global::contrastive,
        net,
        (kind, betas, loss),
        x,
        t,
    )
}

/// The local contrastive objective (Prop. 5) with default settings.
pub fn local(
    net: &Network<f64>,
    kind: EnergyKind,
    betas: &[f64],
    loss: OutputLoss,
    x: &DMatrix<f64>,
    t: &DMatrix<f64>,
) -> bilevel::Result<NestedReport> {
    run_with(
        bilevel::nested::local::contrastive,
        net,
        (kind, betas, loss),
        x,
        t,
    )
}

/// A Table 1 row's report with default settings.
pub fn method(
    m: Method,
    net: &Network<f64>,
    betas: &[f64],
    loss: OutputLoss,
    x: &DMatrix<f64>,
    t: &DMatrix<f64>,
) -> bilevel::Result<NestedReport> {
    let problem = m.problem(net, betas, loss)?;
    let batch = Batch::new(&problem, x, t)?;
    m.run(&problem, batch, &NestedSettings::default())
}

/// All gradient entries (weights, then biases).
pub fn flat(g: &Gradients<f64>) -> Vec<f64> {
    g.flatten().iter().copied().collect()
}

/// `max |a − b| / max |b|`.
pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    num / b.iter().map(|v| v.abs()).fold(1e-12, f64::max)
}

/// Back-propagation's gradient (Prop. 7 with penalizer energies, itself checked against
/// finite differences in `nested_linearized.rs`).
pub fn bp(net: &Network<f64>, loss: OutputLoss, x: &DMatrix<f64>, t: &DMatrix<f64>) -> Vec<f64> {
    let mut ws = Workspace::new(net, x.ncols());
    let mut g = Gradients::zeros(net);
    let problem = Method::Bp
        .problem(net, vec![1.0; net.layers.len()], loss)
        .unwrap();
    let batch = Batch::new(&problem, x, t).unwrap();
    let _report = gradient(&problem, batch, &mut ws, &mut g).unwrap();
    flat(&g)
}

/// Central differences of `value` in every weight entry (biases excluded), step `h`.
pub fn fd_weights(net: &Network<f64>, h: f64, value: impl Fn(&Network<f64>) -> f64) -> Vec<f64> {
    let g = bilevel::app::verify::reference::central_network(net, h, |n| Ok(value(n))).unwrap();
    g.w.iter().flat_map(|m| m.iter().copied()).collect()
}

/// A network and the target of its batch.
pub type NetAndTarget = (Network<f64>, DMatrix<f64>);

/// Checks a surrogate with squared loss on `(net, x, t)`: its gradient at `beta_fd` against
/// its own central differences (relative `tol_fd`), its value against the loss (`≤` for local,
/// `≥ 0` always); returns the relative gradient errors against the chain rule (central
/// differences of the network loss) at each of `betas`. `solve(net, β) = (value, gradient)`.
pub fn own_fd_and_cor2(
    net: &Network<f64>,
    x: &DMatrix<f64>,
    t: &DMatrix<f64>,
    beta_fd: f64,
    tol_fd: f64,
    betas: &[f64],
    solve: impl Fn(&Network<f64>, f64) -> (f64, Gradients<f64>),
) -> Vec<f64> {
    let (value, grad) = solve(net, beta_fd);
    assert!(value >= 0.0);
    let fd = fd_weights(net, 1e-6, |m| solve(m, beta_fd).0);
    let g = flat(&grad);
    let e = rel(&g[..fd.len()], &fd);
    assert!(e < tol_fd, "own finite differences: {e}");
    let chain = fd_weights(net, 1e-6, |m| m.loss(OutputLoss::Squared, x, t).unwrap());
    betas
        .iter()
        .map(|&b| {
            let g = flat(&solve(net, b).1);
            rel(&g[..chain.len()], &chain)
        })
        .collect()
}

/// Two networks with a softmax Fenchel layer (negative entropy): as the output (3 classes, a
/// one-hot-like target on the probabilities) and as a hidden layer (identity output), with a
/// batch `x` of 3 samples. For the LPOM and CHL softmax tests.
pub fn softmax_nets(seed: u64) -> (Vec<NetAndTarget>, DMatrix<f64>) {
    use bilevel::app::verify::instances::{matrix, network, rng};
    use bilevel::prelude::Activation;
    let mut top = network(&mut rng(seed), &[4, 5, 3], Activation::Relu);
    top.layers[1].activation = Activation::Softmax;
    let mut hidden = network(&mut rng(seed + 1), &[4, 5, 4, 2], Activation::Relu);
    hidden.layers[1].activation = Activation::Softmax;
    hidden.layers[2].activation = Activation::Identity;
    let x = matrix(&mut rng(seed + 2), 4, 3);
    let nets = vec![
        (
            top,
            DMatrix::from_fn(3, 3, |i, j| ((i + j) % 3 == 0) as u8 as f64),
        ),
        (hidden, matrix(&mut rng(seed + 3), 2, 3)),
    ];
    (nets, x)
}

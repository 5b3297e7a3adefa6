//! One batch convention for every method (`bilevel::nested` module docs): the surrogate of a
//! batch is the mean of the per-sample surrogates at the same β — value and gradient — for every
//! row of Table 1 and the predictive-coding extra.

mod common;

use bilevel::app::verify::instances::{matrix, network, rng};
use bilevel::nested::method::Method;
use bilevel::nested::OutputLoss;
use bilevel::prelude::Activation;
use nalgebra::DMatrix;

#[test]
fn every_method_on_a_batch_is_the_mean_of_its_samples_at_the_same_beta() {
    let net = network(&mut rng(61), &[4, 3, 3, 2], Activation::Relu);
    let (b, betas) = (4, [0.3, 0.2, 0.1]);
    let x = matrix(&mut rng(62), 4, b);
    let t = matrix(&mut rng(63), 2, b);
    for m in Method::ALL.into_iter().chain(Method::EXTRAS) {
        let batch = common::method(m, &net, &betas, OutputLoss::Squared, &x, &t).unwrap();
        let (mut value, mut grad) = (0.0, DMatrix::zeros(batch.grad.flatten().len(), 1));
        for j in 0..b {
            let (xj, tj) = (x.columns(j, 1).into_owned(), t.columns(j, 1).into_owned());
            let one = common::method(m, &net, &betas, OutputLoss::Squared, &xj, &tj).unwrap();
            value += one.value / b as f64;
            grad += one.grad.flatten() / b as f64;
        }
        let g = batch.grad.flatten();
        let err_g = (&g - grad.column(0)).amax() / g.amax();
        let err_v = (batch.value - value).abs() / value.abs().max(1e-12);
        println!("{:<18} value {err_v:.1e} gradient {err_g:.1e}", m.name());
        assert!(
            err_v < 1e-10 && err_g < 1e-10,
            "{}: value {err_v:.1e}, gradient {err_g:.1e}",
            m.name()
        );
    }
}

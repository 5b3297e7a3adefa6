//! `derive` with `"direction": v`: the one-sided JVP of `z*` along `θ + t v` against one-sided
//! finite differences of `z*` itself, at weakly active constraints where the JVP is not linear
//! in `v`; and `QuadraticProblem::jvp`, the same JVP in the Rust API, against both.

use bilevel::app::derive::derive;
use bilevel::app::verify::instances::{constructed_qp, rng, vector};
use bilevel::prelude::Activity;
use nalgebra::{DMatrix, DVector};
use serde_json::{json, Value};

fn rows(m: &DMatrix<f64>) -> Value {
    json!((0..m.nrows())
        .map(|i| m.row(i).iter().copied().collect::<Vec<f64>>())
        .collect::<Vec<_>>())
}

fn vec(v: &DVector<f64>) -> Value {
    json!(v.iter().copied().collect::<Vec<f64>>())
}

/// The problem of a constructed instance at `theta` with the given `direction`.
fn problem(
    inst: &bilevel::app::verify::instances::ConstructedQp,
    theta: &DVector<f64>,
    v: &DVector<f64>,
) -> String {
    let c = &inst.constraints;
    json!({
        "Q": rows(&inst.q), "c": vec(&inst.c), "B": rows(&inst.b), "theta": vec(theta),
        "A": rows(&c.a), "b": vec(&c.b), "A_eq": rows(&c.a_eq), "b_eq": vec(&c.b_eq),
        "direction": vec(v)
    })
    .to_string()
}

#[test]
fn jvp_matches_one_sided_finite_differences_at_weak_constraints() {
    use Activity::{Inactive, Strong, Weak};
    let mut one_sided = 0;
    for seed in 0..20u64 {
        let inst = constructed_qp(&mut rng(seed), 6, 3, 1, &[Strong, Weak, Weak, Inactive]);
        for (d, sign) in [(0u64, 1.0), (0, -1.0), (1, 1.0)] {
            let v = vector(&mut rng(seed + 100 + d), 3) * sign;
            let out = derive(&problem(&inst, &inst.theta, &v)).unwrap();
            let jvp = DVector::from_vec(out.jvp.clone().expect("a jvp"));
            assert_eq!(out.jvp.as_ref(), Some(&out.z_dot));
            // The loss and θ-gradient are the defining g = −Bv's, and the output says so.
            assert_eq!(out.loss_note, Some(bilevel::app::derive::JVP_LOSS_NOTE));
            // The Rust API's JVP is the same computation: the same numbers and branches.
            let api = inst.layer().unwrap().jvp(&inst.theta, &v).unwrap();
            assert!((&api.z_dot - &jvp).amax() <= 1e-12 * (1.0 + jvp.amax()));
            assert_eq!(
                api.branches.iter().filter(|b| b.is_some()).count(),
                out.branches.iter().filter(|b| b.is_some()).count()
            );
            // One-sided difference: z*(θ + h v) is piecewise linear in h near 0, so for h small
            // enough to stay on the first piece the quotient is exact up to the solver's accuracy.
            let h = 1e-7;
            let moved = derive(&problem(&inst, &(&inst.theta + &v * h), &v)).unwrap();
            let fd = (DVector::from_vec(moved.z_star) - DVector::from_vec(out.z_star.clone())) / h;
            let err = (&fd - &jvp).amax() / (1.0 + jvp.amax());
            assert!(err < 1e-6, "seed {seed}, direction {d}{sign}: {err:e}");
            one_sided += out.branches.iter().filter(|b| b.is_some()).count();
        }
    }
    assert!(one_sided > 0);
}

#[test]
fn the_jvp_is_not_linear_at_a_tie() {
    // z* = argmin ½‖z‖² − zᵀθ s.t. z₁ ≥ 0 at θ = (0, 1): the constraint is weakly active.
    let at = |v: [f64; 2]| {
        let text = json!({"Q": [[1,0],[0,1]], "c": [0,0], "B": [[1,0],[0,1]], "theta": [0,1],
                          "A": [[1,0]], "b": [0], "direction": v})
        .to_string();
        derive(&text).unwrap().jvp.unwrap()
    };
    assert_eq!(at([1.0, 0.5]), vec![1.0, 0.5]);
    // Along −v the first coordinate stays at the bound: jvp(−v) ≠ −jvp(v).
    assert_eq!(at([-1.0, -0.5]), vec![0.0, -0.5]);
}

#[test]
fn loss_and_direction_are_exclusive_and_direction_needs_b() {
    let both = r#"{"Q": [[1]], "c": [0], "B": [[1]], "loss": {"kind":"linear","g":[1]}, "direction": [1]}"#;
    assert!(derive(both).unwrap_err().to_string().contains("not both"));
    let neither = r#"{"Q": [[1]], "c": [0]}"#;
    assert!(derive(neither)
        .unwrap_err()
        .to_string()
        .contains("direction"));
    let no_b = r#"{"Q": [[1]], "c": [0], "direction": [1]}"#;
    assert!(derive(no_b).unwrap_err().to_string().contains("B"));
    let wrong = r#"{"Q": [[1]], "c": [0], "B": [[1, 2]], "direction": [1]}"#;
    assert!(derive(wrong).unwrap_err().to_string().contains("direction"));
    // Without a direction the output has no jvp field.
    let plain = r#"{"Q": [[1]], "c": [0], "loss": {"kind":"linear","g":[1]}}"#;
    let out = serde_json::to_value(derive(plain).unwrap()).unwrap();
    assert!(out.get("jvp").is_none());
}

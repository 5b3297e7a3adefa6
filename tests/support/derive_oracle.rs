//! What every successful `bilevel derive` output must satisfy, checked from the input alone:
//! finite numbers, a feasible `z*` and feasible `ẑ_β`, the KKT conditions with the printed
//! multipliers, Prop. 3's band for every β, and (on failure) a one-line error. Shared by the
//! fuzz target `fuzz/fuzz_targets/derive.rs` and the replay of its findings in
//! `tests/fuzz_regressions.rs`.

use bilevel::nalgebra::{DMatrix, DVector};

/// Runs `derive` on `input` and returns the first violated property, if any.
pub fn check(input: &str) -> Result<(), String> {
    let out = match bilevel::app::derive::derive(input) {
        Ok(out) => out,
        Err(e) => {
            let msg = e.to_string();
            return if msg.contains('\n') || msg.is_empty() {
                Err(format!("error message is not one line: {msg:?}"))
            } else {
                Ok(())
            };
        }
    };
    // Every number of the JSON is finite: serde writes NaN and ±∞ as `null`, and the only
    // nulls the contract has are the `branches` of non-weak constraints.
    let mut v = serde_json::to_value(&out).map_err(|e| e.to_string())?;
    v["branches"] = serde_json::Value::Null;
    if let Some(path) = null_inside(&v, "") {
        return Err(format!("null (a non-finite number) at {path}"));
    }
    let (program, theta, _) = bilevel::app::derive::parse(input).map_err(|e| e.to_string())?;
    let inner = &program.inner;
    let cons = bilevel::problem::InnerProblem::constraints(inner);
    let z = DVector::from_vec(out.z_star.clone());
    let lambda = DVector::from_vec(out.multipliers.clone());
    let lambda_eq = DVector::from_vec(out.multipliers_eq.clone());
    let u = inner.b() * &theta + inner.c();
    let amax = |m: &DMatrix<f64>| m.amax();
    // Scales: what rounding in an exact KKT solve with condition ≤ 1e14 (the crate's limit)
    // can leave, with room; a violation beyond this is a wrong answer, not rounding.
    let x_scale = 1.0 + z.amax();
    let tol_p = 1e-6
        * (1.0
            + cons.b.amax().max(cons.b_eq.amax())
            + amax(&cons.a).max(amax(&cons.a_eq)) * x_scale);
    let slack = &cons.a * &z - &cons.b;
    if let Some(i) = (0..slack.len()).find(|&i| slack[i] < -tol_p) {
        return Err(format!("z* violates inequality {i} by {:.3e}", -slack[i]));
    }
    if !cons.b_eq.is_empty() && (&cons.a_eq * &z - &cons.b_eq).amax() > tol_p {
        return Err("z* violates an equality".into());
    }
    let force = 1.0
        + u.amax()
        + amax(inner.q()) * x_scale
        + lambda.amax() * amax(&cons.a)
        + lambda_eq.amax() * amax(&cons.a_eq);
    let stationarity =
        inner.q() * &z - &u - cons.a.transpose() * &lambda - cons.a_eq.transpose() * &lambda_eq;
    if stationarity.amax() > 1e-6 * force {
        return Err(format!(
            "stationarity residual {:.3e} (scale {force:.3e})",
            stationarity.amax()
        ));
    }
    // A multiplier is a force per unit of its row: compare λ_i ‖a_i‖∞ with the force scale.
    let pull = |i: usize| lambda[i] * cons.a.row(i).amax();
    if let Some(i) = (0..lambda.len()).find(|&i| pull(i) < -1e-6 * force) {
        return Err(format!("multiplier {i} is negative: {}", lambda[i]));
    }
    if let Some(i) = (0..lambda.len()).find(|&i| pull(i) > 1e-6 * force && slack[i] > tol_p) {
        return Err(format!(
            "complementarity fails at {i}: λ {} slack {}",
            lambda[i], slack[i]
        ));
    }
    for s in &out.surrogates {
        // ẑ_β is feasible on its own scale (issue 25: z* + βf once cancelled to an infeasible
        // point when |z*| ≫ |ẑ_β|).
        let z_hat = DVector::from_vec(s.z_hat.clone());
        let tol_hat = 1e-6
            * (1.0
                + cons.b.amax().max(cons.b_eq.amax())
                + amax(&cons.a).max(amax(&cons.a_eq)) * (1.0 + z_hat.amax()));
        let slack_hat = &cons.a * &z_hat - &cons.b;
        if let Some(i) = (0..slack_hat.len()).find(|&i| slack_hat[i] < -tol_hat) {
            return Err(format!(
                "z_hat at beta {:e} violates inequality {i} by {:.3e}",
                s.beta, -slack_hat[i]
            ));
        }
        let (Some(lo), Some(hi)) = (s.bound_lower, s.bound_upper) else {
            return Err("a QP layer always has Prop. 3's band".into());
        };
        // L^β ≤ L ≤ L^β + β/(2ν)‖ℓ'‖², up to the rounding of the terms themselves.
        // Below f64::MIN_POSITIVE rounding is absolute (steps of 5e-324): a few steps of room.
        let room = 1e-9 * (lo.abs() + hi.abs() + out.loss.abs() + (hi - lo).abs())
            + 64.0 * f64::from_bits(1);
        if lo > out.loss + room || out.loss > hi + room {
            return Err(format!(
                "Prop. 3 fails at beta {:e}: {lo} <= {} <= {hi}",
                s.beta, out.loss
            ));
        }
    }
    Ok(())
}

/// The path of the first `null` below `v` (the top level itself may be the erased field).
fn null_inside(v: &serde_json::Value, at: &str) -> Option<String> {
    match v {
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| null_or_inside(x, &format!("{at}[{i}]"))),
        serde_json::Value::Object(o) => o
            .iter()
            .filter(|(k, _)| k.as_str() != "branches")
            .find_map(|(k, x)| null_or_inside(x, &format!("{at}.{k}"))),
        _ => None,
    }
}

fn null_or_inside(v: &serde_json::Value, at: &str) -> Option<String> {
    if v.is_null() {
        Some(at.to_string())
    } else {
        null_inside(v, at)
    }
}

//! `bilevel derive` on structured random problems: every success must satisfy the oracle
//! (finite, feasible, KKT with its multipliers, Prop. 3's band), every failure be one line.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

#[path = "../../tests/support/derive_oracle.rs"]
mod oracle;

/// A number from the ranges where things break: small integers and fractions, powers of ten
/// across the whole f64 range, and raw bit patterns.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Num {
    Int(i8),
    Frac(i16, u8),
    Pow(i8, i16),
    Raw(f64),
}

impl Num {
    fn value(self) -> f64 {
        let v = match self {
            Num::Int(i) => f64::from(i),
            Num::Frac(a, b) => f64::from(a) / (f64::from(b) + 1.0),
            Num::Pow(m, e) => f64::from(m) * 10f64.powi(i32::from(e) % 330),
            Num::Raw(x) => x,
        };
        if v.is_finite() {
            v
        } else {
            0.0
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Problem {
    n: u8,
    m: u8,
    k: u8,
    p: u8,
    /// Build Q = LLᵀ + δI (else take the entries as they come, mostly rejected).
    spd: bool,
    squared: bool,
    /// Make one length wrong (input validation).
    misshape: u8,
    values: Vec<Num>,
    betas: Vec<Num>,
}

/// Numbers drawn cyclically from the fuzzer's pool (zeros when it is empty).
struct Draws<'a> {
    pool: &'a [f64],
    at: usize,
}

impl Draws<'_> {
    fn next(&mut self) -> f64 {
        if self.pool.is_empty() {
            return 0.0;
        }
        self.at += 1;
        self.pool[(self.at - 1) % self.pool.len()]
    }

    fn row(&mut self, len: usize) -> Vec<f64> {
        (0..len).map(|_| self.next()).collect()
    }

    fn mat(&mut self, rows: usize, cols: usize) -> Vec<Vec<f64>> {
        (0..rows).map(|_| self.row(cols)).collect()
    }
}

fuzz_target!(|pr: Problem| {
    let (n, m, k, p) = (
        1 + pr.n as usize % 4,
        pr.m as usize % 5,
        pr.k as usize % 3,
        pr.p as usize % 3,
    );
    let pool: Vec<f64> = pr.values.iter().map(|v| v.value()).collect();
    let mut draws = Draws { pool: &pool, at: 0 };
    let q = if pr.spd {
        let l = draws.mat(n, n);
        let delta = draws.next().abs();
        (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        (0..n).map(|t| l[i][t] * l[j][t]).sum::<f64>()
                            + if i == j { delta } else { 0.0 }
                    })
                    .collect()
            })
            .collect()
    } else {
        draws.mat(n, n)
    };
    let wrong = |len: usize, which: u8| if pr.misshape == which { len + 1 } else { len };
    let c: Vec<f64> = draws.row(wrong(n, 1));
    let b_mat = draws.mat(n, p);
    let theta: Vec<f64> = draws.row(wrong(p, 2));
    let a = draws.mat(m, n);
    let b: Vec<f64> = draws.row(wrong(m, 3));
    let a_eq = draws.mat(k, n);
    let b_eq: Vec<f64> = draws.row(k);
    let target: Vec<f64> = draws.row(wrong(n, 4));
    let loss = if pr.squared {
        json!({"kind": "squared", "target": target})
    } else {
        json!({"kind": "linear", "g": target})
    };
    let betas: Vec<f64> = pr.betas.iter().take(4).map(|v| v.value()).collect();
    let mut problem =
        json!({"Q": q, "c": c, "B": b_mat, "theta": theta, "loss": loss, "betas": betas});
    if m > 0 {
        problem["A"] = json!(a);
        problem["b"] = json!(b);
    }
    if k > 0 {
        problem["A_eq"] = json!(a_eq);
        problem["b_eq"] = json!(b_eq);
    }
    let text = Value::to_string(&problem);
    if let Err(violation) = oracle::check(&text) {
        panic!("{violation}\ninput: {text}");
    }
});

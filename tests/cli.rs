//! The command line as other tools use it: `verify --json` and the `derive` JSON contract,
//! including accuracy on constructed problems and one-line errors on bad input.

use std::io::Write;
use std::process::{Command, Stdio};

#[path = "support/scratch.rs"]
mod scratch;
use scratch::Scratch;

use bilevel::app::verify::instances::{constructed_qp, rng, vector};
use bilevel::prelude::*;
use nalgebra::DVector;
use serde_json::{json, Value};

/// The `bilevel` command, run in `dir` (an empty directory of the test's own) with none of the
/// variables that change what it does (`BILEVEL_DATA`, `COLUMNS`): what the test sees does not
/// depend on the directory `cargo test` runs in (after `bilevel data fetch`, `./data/mnist`
/// holds MNIST) or on the user's environment.
fn bin(dir: &Scratch) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bilevel"));
    cmd.current_dir(dir.path())
        .env_remove("BILEVEL_DATA")
        .env_remove("COLUMNS");
    cmd
}

fn derive(input: &str) -> (i32, String, String) {
    let dir = Scratch::new("cli-derive");
    let mut child = bin(&dir)
        .args(["derive", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn rows(m: &nalgebra::DMatrix<f64>) -> Value {
    json!((0..m.nrows())
        .map(|i| m.row(i).iter().copied().collect::<Vec<_>>())
        .collect::<Vec<_>>())
}

fn vec_of(v: &Value) -> DVector<f64> {
    DVector::from_iterator(
        v.as_array().unwrap().len(),
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()),
    )
}

#[test]
fn verify_json_passes_and_has_the_documented_shape() {
    let dir = Scratch::new("cli-verify-json");
    let out = bin(&dir)
        .args(["verify", "--json", "--seed", "3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = v["checks"].as_array().unwrap();
    assert!(checks.len() >= 15);
    for c in checks {
        for key in [
            "id",
            "claim",
            "description",
            "measured",
            "tolerance",
            "passed",
        ] {
            assert!(c.get(key).is_some(), "missing {key}");
        }
    }
    for claim in [
        "Def. 1",
        "Def. 2",
        "Prop. 1",
        "Prop. 2",
        "Prop. 3",
        "Example 1",
        "Cor. 1",
    ] {
        assert!(
            checks.iter().any(|c| c["claim"] == claim),
            "no row for {claim}"
        );
    }
    assert_eq!(v["failed"], 0);
    assert_eq!(v["passed"].as_u64().unwrap() as usize, checks.len());
}

#[test]
fn derive_is_accurate_on_constructed_problems_with_weak_constraints() {
    use Activity::{Inactive, Strong, Weak};
    let labels = [Strong, Weak, Inactive, Weak, Strong];
    for seed in 0..5 {
        let inst = constructed_qp(&mut rng(seed), 7, 3, 1, &labels);
        let g = vector(&mut rng(50 + seed), 7);
        let input = json!({
            "Q": rows(&inst.q), "c": inst.c.as_slice(), "B": rows(&inst.b),
            "theta": inst.theta.as_slice(), "A": rows(&inst.constraints.a),
            "b": inst.constraints.b.as_slice(), "A_eq": rows(&inst.constraints.a_eq),
            "b_eq": inst.constraints.b_eq.as_slice(),
            "loss": {"kind": "linear", "g": g.as_slice()}, "betas": [0.1, 1e-3]
        });
        let (code, stdout, stderr) = derive(&input.to_string());
        assert_eq!(code, 0, "{stderr}");
        let out: Value = serde_json::from_str(&stdout).unwrap();
        // Against the construction: relative 1e-6 is the contract.
        let rel = |a: &DVector<f64>, b: &DVector<f64>| (a - b).amax() / b.amax().max(1.0);
        assert!(rel(&vec_of(&out["z_star"]), &inst.z_star) < 1e-6);
        assert!(rel(&vec_of(&out["multipliers"]), &inst.lambda) < 1e-6);
        assert!(rel(&vec_of(&out["multipliers_eq"]), &inst.lambda_eq) < 1e-6);
        let labels_out: Vec<&str> = out["constraints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(labels_out, ["strong", "weak", "inactive", "weak", "strong"]);
        assert!(
            (out["loss"].as_f64().unwrap() - g.dot(&inst.z_star)).abs()
                < 1e-6 * (1.0 + g.dot(&inst.z_star).abs())
        );
        // ż against the one-sided quotient of the β = 1e-3 surrogate entry (exact for a QP once
        // the active set has settled; β = 1e-3 is small enough on these instances).
        let s = &out["surrogates"][1];
        let z_hat = vec_of(&s["z_hat"]);
        let quotient = (&z_hat - &inst.z_star) / 1e-3;
        assert!(
            rel(&vec_of(&out["z_dot"]), &quotient) < 1e-5,
            "{}",
            rel(&vec_of(&out["z_dot"]), &quotient)
        );
        // grad_theta = −Bᵀż, and the surrogate gradient −Bᵀ(ẑ − z*)/β.
        let grad = vec_of(&out["grad_theta"]);
        assert!(rel(&grad, &-(inst.b.transpose() * vec_of(&out["z_dot"]))) < 1e-9);
        assert!(
            rel(
                &vec_of(&s["grad_theta"]),
                &-(inst.b.transpose() * &quotient)
            ) < 1e-6
        );
        // Prop. 3 band around L.
        let l = out["loss"].as_f64().unwrap();
        for s in out["surrogates"].as_array().unwrap() {
            assert!(s["bound_lower"].as_f64().unwrap() <= l + 1e-9);
            assert!(s["bound_upper"].as_f64().unwrap() >= l - 1e-9);
        }
    }
}

#[test]
fn derive_rejects_bad_input_with_one_line_naming_the_field() {
    let cases = [
        ("{not json", "JSON"),
        (
            r#"{"Q": [[1, 0], [0, -1]], "c": [0, 0], "loss": {"kind": "linear", "g": [1, 1]}}"#,
            "Q",
        ),
        (
            r#"{"Q": [[1]], "c": [0], "loss": {"kind": "squared", "target": [1]}, "betas": [-1]}"#,
            "betas[0]",
        ),
        (
            r#"{"Q": [[1]], "c": [0], "B": [[1, 2]], "theta": [1], "loss": {"kind": "linear", "g": [1]}}"#,
            "theta",
        ),
        (
            r#"{"Q": [[1]], "c": [0], "A": [[1], [-1]], "b": [1, 0], "loss": {"kind": "linear", "g": [1]}}"#,
            "infeasible",
        ),
    ];
    for (input, field) in cases {
        let (code, stdout, stderr) = derive(input);
        assert_ne!(code, 0);
        assert!(stdout.is_empty());
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(field), "{input}: {stderr}");
        assert!(!stderr.contains("panicked"));
    }
    let dir = Scratch::new("cli-derive-missing");
    let out = bin(&dir)
        .args(["derive", "/nonexistent.json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.json"));
}

#[test]
fn taxonomy_lists_every_table1_row_close_to_back_propagation() {
    let dir = Scratch::new("cli-taxonomy");
    let out = bin(&dir).args(["taxonomy", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "CHL",
            "convex CHL",
            "LPOM",
            "MAC",
            "BP",
            "Fenchel BP",
            "predictive coding"
        ]
    );
    // The rows as the paper prints them; predictive coding's iterative form is an extra.
    let printed: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["table1"]["method"].as_str())
        .collect();
    assert_eq!(
        printed,
        [
            "CHL",
            "Convex CHL",
            "FLN & LPOM",
            "MAC",
            "BP & PCN",
            "Fenchel BP"
        ]
    );
    assert_eq!(rows[3]["table1"]["direction"], "Any");
    assert!(rows[6]["table1"].is_null());
    for r in rows {
        // At β = 1e-3 every method is within its O(β) bias of back-propagation (Cor. 2).
        let e = r["rel_error_vs_bp"].as_f64().unwrap_or(f64::NAN);
        assert!(e < 1e-2, "{}: {e}", r["method"]);
    }
    let bad = bin(&dir)
        .args(["taxonomy", "--beta", "-1"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

fn run(args: &[&str]) -> (i32, String, String) {
    let dir = Scratch::new("cli-run");
    let out = bin(&dir).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn train_and_plot_reject_bad_input_with_one_line() {
    for (args, needle) in [
        (
            vec!["train", "--data", "/nonexistent/mnist"],
            "/nonexistent/mnist: no such directory",
        ),
        (
            vec!["train", "--method", "fenbp", "--beta", "-1"],
            "invalid beta -1",
        ),
        (
            vec!["train", "--method", "fenbp", "--beta", "0"],
            "invalid beta 0",
        ),
        (vec!["train", "--method", "sgd"], "unknown method `sgd`"),
        (vec!["train", "--init", "zeros"], "unknown init `zeros`"),
        (vec!["train", "--resume"], "needs --checkpoint DIR"),
        (vec!["train", "--batch", "0"], "--batch"),
        (
            vec!["train", "--method", "fenbp", "--sweeps", "5"],
            "invalid --sweeps: fenbp is closed form",
        ),
        (
            vec!["train", "--method", "mac", "--sweeps", "0"],
            "invalid --sweeps",
        ),
        (
            vec!["train", "--method", "chl", "--beta", "0"],
            "invalid beta 0",
        ),
        (
            vec!["plot", "/nonexistent.csv", "-o", "x.svg"],
            "/nonexistent.csv",
        ),
        (
            vec!["plot", "--growth", "/nonexistent.csv", "-o", "x.svg"],
            "/nonexistent.csv",
        ),
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
    // Without --data and BILEVEL_DATA: the default ./data/mnist, and how to get the files.
    let (code, _, err) = run(&["train", "--epochs", "1"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("data/mnist") && err.contains("BILEVEL_DATA"),
        "{err}"
    );
}

/// Reliability regressions (each was a panic or a `null` in successful output).
#[test]
fn empty_and_overflowing_problems_are_one_line_errors() {
    let cases = [
        (r#"{"Q":[],"c":[],"loss":{"kind":"linear","g":[]}}"#, "Q"),
        (
            r#"{"Q":[],"c":[],"loss":{"kind":"squared","target":[]}}"#,
            "Q",
        ),
        (
            r#"{"Q":[[1]],"c":[1.7976931348623157e308],"loss":{"kind":"squared","target":[0]}}"#,
            "loss overflowed",
        ),
    ];
    for (input, field) in cases {
        let (code, out, err) = derive(input);
        assert_eq!(code, 1, "{input}: {out}{err}");
        assert!(out.is_empty() && err.contains(field), "{input}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_successful_derive_prints_only_finite_numbers() {
    // Q = 2e200: the condition estimate used to overflow to `null` (‖Kv‖² = inf).
    for input in [
        r#"{"Q":[[2e200]],"c":[1],"loss":{"kind":"linear","g":[1]},"betas":[1]}"#,
        r#"{"Q":[[1]],"c":[1],"loss":{"kind":"linear","g":[1]},"betas":[1e308]}"#,
    ] {
        let (code, out, err) = derive(input);
        assert_eq!(code, 0, "{input}: {err}");
        assert!(!out.contains("null"), "{input}: {out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert!(
            (v["condition"].as_f64().unwrap() - 1.0).abs() < 1e-12,
            "{out}"
        );
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_closed_pipe_ends_quietly_and_a_full_disk_is_one_line() {
    let dir = Scratch::new("cli-pipe");
    let problem = dir.join("p.json");
    std::fs::write(
        &problem,
        r#"{"Q":[[1]],"c":[1],"loss":{"kind":"linear","g":[1]},"betas":[0.1]}"#,
    )
    .unwrap();
    let problem = problem.to_str().unwrap();
    for args in [vec!["derive", problem], vec!["verify"], vec!["taxonomy"]] {
        // Broken pipe: the reading end is closed before the program writes.
        let mut child = bin(&dir)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        // A full device: one line, exit 1.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = bin(&dir).args(&args).stdout(full).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("No space left") && err.trim_end().lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}

#[test]
fn taxonomy_at_extreme_betas_prints_no_nan() {
    let dir = Scratch::new("cli-taxonomy-betas");
    for beta in ["1e308", "1e-300"] {
        let out = bin(&dir)
            .args(["taxonomy", "--beta", beta, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!text.contains("NaN"), "{text}");
        let rows: Value = serde_json::from_str(&text).unwrap();
        for row in rows.as_array().unwrap() {
            match (&row["rel_error_vs_bp"], &row["error"]) {
                (Value::Number(e), Value::Null) => assert!(e.as_f64().unwrap().is_finite()),
                (Value::Null, Value::String(msg)) => {
                    // The β the user gave, never a product of it.
                    assert!(msg.contains(&format!("beta {beta}")), "{msg}");
                    assert!(msg.contains("out of range"), "{msg}");
                }
                other => panic!("{beta}: {other:?}"),
            }
        }
    }
}

#[test]
fn verify_runs_chosen_rows_and_names_the_rows_when_an_id_is_unknown() {
    let (code, out, _) = run(&[
        "verify",
        "--json",
        "--only",
        "prop4-composed,prop5-composed",
    ]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["prop4-composed", "prop5-composed"]);
    let (code, _, err) = run(&["verify", "--only", "prop6"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown verify row `prop6`") && err.contains("prop4-composed"),
        "{err}"
    );
}

/// `verify` reads as a report: rows in the paper's order, each with the quantity it measures,
/// lines within 100 columns, and the JSON records the seed and the crate version.
#[test]
fn verify_is_readable_in_paper_order_and_records_its_seed() {
    let dir = Scratch::new("cli-verify-text");
    let out = bin(&dir)
        .args(["verify", "--json", "--seed", "5"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["seed"], 5);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let checks = v["checks"].as_array().unwrap();
    let quantities = [
        "relative error",
        "absolute error",
        "|rate - expected rate|",
        "count",
        "bound violation",
    ];
    for c in checks {
        assert!(quantities.contains(&c["quantity"].as_str().unwrap()), "{c}");
    }
    // Paper order: the section of each claim never goes back.
    let section = |claim: &str| -> u32 {
        let claim = claim
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        match claim.as_str() {
            "Def. 1" | "Prop. 1" | "Prop. 2" | "Example 1" | "Cor. 1" | "Centered (extra)"
            | "Prop. 3" => 2,
            "Prop. 4" | "Prop. 5" | "Props. 4-5" | "Eq. 29" | "Section 3.2.2" => 3,
            "Def. 2" | "Prop. 7" | "Remark 2" => 4,
            "Cor. 2" => 5,
            "Appendix C" => 6,
            other => panic!("unplaced claim {other}"),
        }
    };
    let sections: Vec<u32> = checks
        .iter()
        .map(|c| section(c["claim"].as_str().unwrap()))
        .collect();
    assert!(sections.windows(2).all(|w| w[0] <= w[1]), "{sections:?}");
    let text = bin(&dir).args(["verify"]).output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    let longest = text.lines().map(|l| l.chars().count()).max().unwrap();
    assert!(longest <= 100, "a line of {longest} characters");
    // The header and every row (the unindented lines but the summary) are one table: the
    // verdict column starts at the same character on each.
    let verdicts: Vec<usize> = text
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with("verify:"))
        .map(|l| l.chars().count() - l.split_whitespace().last().unwrap().chars().count())
        .collect();
    assert_eq!(verdicts.len(), checks.len() + 1);
    assert!(
        verdicts.windows(2).all(|w| w[0] == w[1]),
        "{verdicts:?}\n{text}"
    );
}

/// Small `derive` contract items: a θ without `B` names `B` as missing, and the Prop. 3 band
/// reports the ν it used (`λ_min(Q)`).
#[test]
fn derive_names_a_missing_b_and_reports_the_band_constant() {
    let (code, _, err) = derive(
        r#"{"Q": [[2,0],[0,1]], "c": [0,0], "theta": [1.0], "loss": {"kind": "linear", "g": [1, 0]}}"#,
    );
    assert_eq!(code, 1);
    assert!(err.contains("B") && err.contains("missing"), "{err}");
    let (code, out, err) = derive(
        r#"{"Q": [[2,0],[0,1]], "c": [0,0], "B": [[1],[0]], "theta": [1.0], "loss": {"kind": "squared", "target": [0, 1]}, "betas": [0.1]}"#,
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!((v["surrogates"][0]["bound_nu"].as_f64().unwrap() - 1.0).abs() < 1e-12);
}

/// `bilevel derive` answers a request with sparse triplets on the sparse path, as it answers
/// the same request with arrays of rows (a bound z₂ ≤ 0 tied at z₂ = 0: weak; the loss z₂
/// pulls the unit down, off its bound).
#[test]
fn derive_takes_sparse_triplets() {
    let rows = r#"{"Q": [[1, 0], [0, 1]], "c": [1, 0], "A": [[0, -1]], "b": [0],
        "loss": {"kind": "linear", "g": [0, 1]}, "gradients": ["A", "b"]}"#;
    let triplets = r#"{"Q": {"shape": [2, 2], "triplets": [[0, 0, 1], [1, 1, 1]]}, "c": [1, 0],
        "A": {"shape": [1, 2], "triplets": [[0, 1, -1]]}, "b": [0],
        "loss": {"kind": "linear", "g": [0, 1]}, "gradients": ["A", "b"]}"#;
    let (code, dense, err) = derive(rows);
    assert_eq!(code, 0, "{err}");
    let (code, sparse, err) = derive(triplets);
    assert_eq!(code, 0, "{err}");
    let d: serde_json::Value = serde_json::from_str(&dense).unwrap();
    let s: serde_json::Value = serde_json::from_str(&sparse).unwrap();
    assert_eq!(s["constraints"], serde_json::json!(["weak"]));
    assert_eq!(s["branches"], d["branches"]);
    assert_eq!(s["branches"], serde_json::json!(["leaves"]));
    assert_eq!(s["z_star"], d["z_star"]);
    assert_eq!(s["z_dot"], d["z_dot"]);
    assert_eq!(s["grad_b"], d["grad_b"]);
    // grad_A on A's one stored entry, (0, 1).
    assert_eq!(s["grad_A"]["triplets"][0][2], d["grad_A"][0][1]);
    assert!(s["solver"].as_str().unwrap().contains("sparse"), "{sparse}");
}

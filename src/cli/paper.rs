//! The paper's commands: `derive`, `verify`, `taxonomy`.

use std::io::Read;
use std::process::ExitCode;

use super::output::{terminal_width, wrap};

/// `bilevel derive`: the JSON answer for the problem file `path` (`-`: stdin).
pub(crate) fn derive(path: &str) -> Result<String, String> {
    let mut text = String::new();
    if path == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
    } else {
        text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    }
    let out = bilevel::app::derive_sparse::derive_request(&text).map_err(|e| e.to_string())?;
    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())
}

/// `bilevel verify`: the checks in the paper's order, as a table or JSON.
pub(crate) fn verify(json: bool, seed: u64, only: &[String]) -> ExitCode {
    let known = bilevel::app::verify::ids();
    if let Some(bad) = only.iter().find(|id| !known.contains(&id.as_str())) {
        eprintln!(
            "error: unknown verify row `{bad}`; the rows are: {}",
            known.join(", ")
        );
        return ExitCode::from(2);
    }
    let only: Vec<&str> = only.iter().map(String::as_str).collect();
    let report = bilevel::app::verify::run_only(seed, &only);
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        // One line per row (claim, id, what is measured, value, tolerance, verdict), columns as
        // wide as their longest entry, then its description wrapped to the terminal width.
        let width = terminal_width();
        let column = |name: &str, entry: fn(&bilevel::app::verify::Check) -> &str| {
            let longest = report.checks.iter().map(|c| entry(c).chars().count());
            longest.fold(name.chars().count(), usize::max)
        };
        let claim = column("claim", |c| &c.claim);
        let id = column("id", |c| &c.id);
        let quantity = column("measured quantity", |c| c.quantity);
        out!(
            "{:<claim$} {:<id$} {:<quantity$} {:>9} {:>9}  ok",
            "claim",
            "id",
            "measured quantity",
            "value",
            "tolerance"
        );
        for c in &report.checks {
            out!(
                "{:<claim$} {:<id$} {:<quantity$} {:>9.2e} {:>9.1e}  {}",
                c.claim,
                c.id,
                c.quantity,
                c.measured,
                c.tolerance,
                if c.passed { "pass" } else { "FAIL" }
            );
            for line in wrap(&c.description, width.saturating_sub(4).max(40)) {
                out!("    {line}");
            }
        }
        out!(
            "verify: {} passed, {} failed (seed {}, bilevel {})",
            report.passed,
            report.failed,
            report.seed,
            report.version
        );
    }
    if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `bilevel taxonomy`: Table 1 as built from the definitions, measured.
pub(crate) fn taxonomy(beta: f64, json: bool) -> Result<(), String> {
    use bilevel::app::verify::instances::{matrix, network, rng};
    use bilevel::nested::method::taxonomy;
    use bilevel::nested::OutputLoss;
    use bilevel::prox::Activation;
    bilevel::error::check_beta(beta).map_err(|e| e.to_string())?;
    // Fixed network: 5-4-3-2, ReLU hidden layers, identity output, squared loss (so that convex
    // CHL is a QP), batch of 8.
    let mut r = rng(2024);
    let net = network(&mut r, &[5, 4, 3, 2], Activation::Relu);
    let x = matrix(&mut r, 5, 8);
    let t = matrix(&mut r, 2, 8);
    let rows = taxonomy(&net, beta, OutputLoss::Squared, &x, &t).map_err(|e| e.to_string())?;
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    out!("Table 1 as printed, measured on a 5-4-3-2 ReLU network (squared loss, batch 8, beta = {beta:e} per sample and layer)");
    out!(
        "{:<18} {:<17} {:<10} {:<11} {:<13} {:>14} {:>11}  solver",
        "method",
        "E_k",
        "direction",
        "linearized",
        "inference",
        "rel.err vs BP",
        "s/gradient"
    );
    for row in rows {
        let err = match (row.rel_error_vs_bp, &row.error) {
            (Some(e), _) => format!("{e:.2e}"),
            (None, Some(msg)) => format!("error: {msg}"),
            _ => String::new(),
        };
        let Some(paper) = row.table1 else {
            out!(
                "extra (not in Table 1): {}: penalizer energies, Eq. 30 with the discounting weights \
                 1/prod_(l>=k) beta_l, inference iterated to convergence; Table 1's PCN row is its \
                 linearized form (BP). rel.err vs BP {err}, {:.2e} s/gradient",
                row.method, row.seconds
            );
            continue;
        };
        out!(
            "{:<18} {:<17} {:<10} {:<11} {:<13} {:>14} {:>11.2e}  {}",
            paper.method,
            paper.energy,
            paper.direction,
            paper.linearized,
            paper.inference,
            err,
            row.seconds,
            row.inference
        );
    }
    Ok(())
}

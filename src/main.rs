//! The `bilevel` command line: `verify` (checks of the paper's claims) and `derive`
//! (derivatives of a constrained quadratic layer, JSON in and out).
//!
//! Exit codes: 0 success; 1 a check failed or the input was rejected (one-line message on
//! stderr); 2 usage errors (from clap).

use std::io::Read;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bilevel",
    version,
    about = "Bilevel programs meet deep learning: contrastive surrogates and exact limit derivatives"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the paper's Section 2 claims numerically on seeded random instances.
    Verify {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Seed of the random instances.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Print Table 1 as built from the method definitions, with each method's gradient error
    /// against back-propagation and its time on a fixed small network.
    Taxonomy {
        /// The common spacing parameter β.
        #[arg(long, default_value_t = 1e-3)]
        beta: f64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Derivatives of E(z; θ) = ½zᵀQz − zᵀ(Bθ + c) s.t. Az ≥ b, A_eq z = b_eq, as JSON on stdout.
    Derive {
        /// Problem file (JSON; `-` reads stdin). See `bilevel::derive` for the format.
        problem: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Verify { json, seed } => verify(json, seed),
        Command::Taxonomy { beta, json } => match taxonomy(beta, json) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("error: {msg}");
                ExitCode::FAILURE
            }
        },
        Command::Derive { problem } => match derive(&problem) {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("error: {msg}");
                ExitCode::FAILURE
            }
        },
    }
}

fn derive(path: &str) -> Result<String, String> {
    let mut text = String::new();
    if path == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
    } else {
        text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    }
    let out = bilevel::derive::derive(&text).map_err(|e| e.to_string())?;
    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())
}

fn verify(json: bool, seed: u64) -> ExitCode {
    let report = bilevel::verify::run(seed);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        println!(
            "{:<28} {:<22} {:>10} {:>9}  {:<4}  description",
            "claim", "id", "measured", "tolerance", "ok"
        );
        for c in &report.checks {
            println!(
                "{:<28} {:<22} {:>10.2e} {:>9.1e}  {:<4}  {}",
                c.claim,
                c.id,
                c.measured,
                c.tolerance,
                if c.passed { "pass" } else { "FAIL" },
                c.description
            );
        }
        println!("verify: {} passed, {} failed", report.passed, report.failed);
    }
    if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn taxonomy(beta: f64, json: bool) -> Result<(), String> {
    use bilevel::nested::method::taxonomy;
    use bilevel::nested::OutputLoss;
    use bilevel::prox::Activation;
    use bilevel::verify::instances::{matrix, network, rng};
    bilevel::error::check_beta(beta).map_err(|e| e.to_string())?;
    // Fixed network: 5-4-3-2, ReLU hidden layers, identity output, squared loss (so that convex
    // CHL is a QP), batch of 8.
    let mut r = rng(2024);
    let net = network(&mut r, &[5, 4, 3, 2], Activation::Relu);
    let x = matrix(&mut r, 5, 8);
    let t = matrix(&mut r, 2, 8);
    let rows = taxonomy(&net, beta, OutputLoss::Squared, &x, &t).map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!(
        "Table 1 (network 5-4-3-2 ReLU, squared loss, batch 8, beta = {beta:e} for every layer)"
    );
    println!(
        "{:<18} {:<10} {:<9} {:<10} {:<38} {:>14} {:>12}",
        "method", "E_k", "unravel", "linearized", "inference", "rel.err vs BP", "s/gradient"
    );
    for row in rows {
        let err = match (row.rel_error_vs_bp, &row.error) {
            (Some(e), _) => format!("{e:.2e}"),
            (None, Some(msg)) => format!("error: {msg}"),
            _ => String::new(),
        };
        println!(
            "{:<18} {:<10} {:<9} {:<10} {:<38} {:>14} {:>12.2e}",
            row.method,
            format!("{:?}", row.energy).to_lowercase(),
            if matches!(row.direction, bilevel::nested::method::Unravel::BottomUp) {
                "bottom-up"
            } else {
                "top-down"
            },
            if row.linearized { "yes" } else { "no" },
            row.inference,
            err,
            row.seconds
        );
    }
    Ok(())
}

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

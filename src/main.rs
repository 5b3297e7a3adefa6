//! The `bilevel` command line: `verify` (checks of the paper's claims), `taxonomy` (Table 1),
//! `derive` (derivatives of a constrained quadratic layer, JSON in and out), and the MNIST
//! client: `train`, `plot`, `reproduce fig1`, `bench train`.
//!
//! Exit codes: 0 success; 1 a check failed or the input was rejected (one-line message on
//! stderr); 2 usage errors (from clap).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let code = cli::run(cli::Cli::parse());
    // Buffered output that has not reached the pipe or file yet fails here, if at all.
    if let Err(e) = std::io::Write::flush(&mut std::io::stdout()) {
        cli::output::stdout_failed(e);
    }
    code
}

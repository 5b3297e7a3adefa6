//! The `bilevel` command line's modules (the binary's, not the library's): the grammar
//! (`args`), what it prints (`output`), the paper's commands (`paper`) and the MNIST client's
//! (`mnist`).

#[macro_use]
pub(crate) mod output;
mod args;
mod mnist;
mod paper;
mod plot;

use std::process::ExitCode;

pub(crate) use args::Cli;
use args::{Bench, Command, Data, Reproduce};
use output::report;

/// Runs the command; its exit code.
pub(crate) fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Verify { json, seed, only } => paper::verify(json, seed, &only),
        Command::Taxonomy { beta, json } => one_line(paper::taxonomy(beta, json)),
        Command::Derive { problem } => one_line(paper::derive(&problem).map(|out| out!("{out}"))),
        Command::Train(args) => report(mnist::train(args)),
        Command::Data {
            what: Data::Fetch { dir, mirrors },
        } => report(mnist::data_fetch(dir, mirrors)),
        Command::Plot {
            runs,
            output,
            title,
            growth: false,
        } => report(plot::plot(&runs, &output, title)),
        Command::Plot {
            runs,
            output,
            title,
            growth: true,
        } => report(plot::plot_growth(&runs, &output, title)),
        Command::Reproduce {
            what: Reproduce::Fig1(args),
        } => report(mnist::reproduce_fig1(args)),
        Command::Reproduce {
            what: Reproduce::Table1(args),
        } => report(mnist::reproduce_table1(args)),
        Command::Bench {
            what: Bench::Train(args),
        } => report(mnist::bench_train(args)),
    }
}

/// A command's message-only error as one line and exit code 1.
fn one_line(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

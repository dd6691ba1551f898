//! The dmmig command. Exit codes are in `dmmig --help` (and `error::exit`).

use clap::Parser;
use dmmig::cli::Cli;
use dmmig::commands;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli.command, cli.json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dmmig: {e}");
            e.exit_code()
        }
    }
}

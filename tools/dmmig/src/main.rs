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
            // A command a signal stopped says so in its status, as one the signal killed would.
            match dmmig::signals::received() {
                Some(signal) => ExitCode::from(dmmig::signals::exit_status(signal)),
                None => e.exit_code(),
            }
        }
    }
}

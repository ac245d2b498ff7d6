//! The `hoard` binary: parses the command line and hands it to
//! [`hoard::cli::run`], which dispatches the subcommand (`serve` included)
//! and chooses the exit status.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    hoard::malloc::tune();
    hoard::cli::run(hoard::cli::Cli::parse())
}

#![forbid(unsafe_code)]
#![deny(clippy::disallowed_types)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match blend_scaler::cli::run(blend_scaler::cli::Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("blend-scaler: {e:#}");
            ExitCode::from(2)
        }
    }
}

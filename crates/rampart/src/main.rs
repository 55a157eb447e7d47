//! `rampart`: the binary. Parses the command line, loads configuration,
//! sets up logging, and hands each command to its module in `commands/`.
//! It owns wiring and process concerns (exit codes, signals, the serve
//! lock); domain logic lives in the library crates.

mod cli;
mod commands;
mod config;
mod control;
mod credentials;
mod datadir;
mod demo;
mod label;
mod logging;
mod monitoring;
mod output;
mod platform;
mod rollout;
mod serve;
mod timespec;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.global.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let one_shot = !matches!(cli.command, Command::Serve(_));
    logging::init(&config.log, cli.global.verbose, cli.global.quiet, one_shot);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rampart")
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    let result = runtime.block_on(run(cli, config));
    match result {
        Ok(code) => code,
        Err(e) => fail(&e),
    }
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Init => commands::init::run(g, config).await,
        Command::Serve(args) => serve::run(g, config, args).await,
        Command::Ca(cmd) => commands::ca::run(g, config, cmd).await,
        Command::Device(cmd) => commands::device::run(g, config, cmd).await,
        Command::Service(cmd) => commands::service::run(g, config, cmd).await,
        Command::EnrollToken(cmd) => commands::enroll_token::run(g, config, cmd).await,
        Command::Telemetry(cmd) => commands::telemetry::run(g, config, cmd).await,
        Command::Firmware(cmd) => commands::firmware::run(g, config, cmd).await,
        Command::Campaign(cmd) => commands::campaign::run(g, config, cmd).await,
        Command::Simulate(args) => commands::simulate::run(g, *args).await,
        Command::Backup { file } => commands::backup::backup(g, config, &file).await,
        Command::Restore { file } => commands::backup::restore(g, config, &file).await,
        Command::Audit(cmd) => commands::audit::run(g, config, cmd).await,
        Command::Config(cmd) => commands::config::run(g, config, cmd),
    }
}

/// Prints the error chain as one sentence and returns a failure code.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

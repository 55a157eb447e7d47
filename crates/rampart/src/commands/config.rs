//! `rampart config ...`

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{ConfigCommand, GlobalArgs};
use crate::config::{Config, EXAMPLE};
use crate::output;

/// Prints the example or the effective configuration; a password in
/// `store.url` is shown as `***`.
pub fn run(g: &GlobalArgs, mut config: Config, cmd: ConfigCommand) -> Result<ExitCode> {
    config.store.url = config.store.url.redacted();
    match cmd {
        ConfigCommand::Example => print!("{EXAMPLE}"),
        ConfigCommand::Show if g.json => output::json(&config)?,
        ConfigCommand::Show => print!("{}", toml::to_string_pretty(&config)?),
    }
    Ok(ExitCode::SUCCESS)
}

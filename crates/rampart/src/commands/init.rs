//! `rampart init`

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::cli::GlobalArgs;
use crate::config::Config;
use crate::datadir::Created;
use crate::output;
use crate::output::say;
use crate::platform::Platform;

#[derive(Serialize)]
struct InitOutput<'a> {
    data_dir: String,
    created: bool,
    ca: &'a rampart_pki::CaInfo,
}

/// Creates the data dir, CA, server certificate and store; idempotent.
pub async fn run(g: &GlobalArgs, config: Config) -> Result<ExitCode> {
    let (platform, created) = Platform::init(&g.data_dir, config).await?;
    let info = platform.pki.info();
    if g.json {
        output::json(&InitOutput {
            data_dir: g.data_dir.display().to_string(),
            created: created == Created::New,
            ca: &info,
        })?;
    } else if created == Created::New {
        say!("initialised {}", g.data_dir.display());
        say!("  CA:     {}", info.issuer.subject);
        say!("  server: {}", platform.pki.server_cert_path().display());
    } else {
        say!("{} is already initialised", g.data_dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

//! `rampart audit ...`

use std::process::ExitCode;

use anyhow::Result;
use rampart_store::Store;

use crate::cli::{AuditCommand, GlobalArgs};
use crate::config::Config;
use crate::output;
use crate::output::say;
use crate::platform::Platform;

/// Verifies or lists the audit log. `verify` exits 1 when the chain is broken.
pub async fn run(g: &GlobalArgs, config: Config, cmd: AuditCommand) -> Result<ExitCode> {
    let platform = Platform::open(&g.data_dir, config).await?;
    match cmd {
        AuditCommand::Verify => {
            let report = platform.store.verify_audit().await?;
            if g.json {
                output::json(&report)?;
            } else if let Some(b) = &report.first_break {
                say!(
                    "audit chain BROKEN at row {}: {} ({} rows before it verify)",
                    b.seq,
                    b.problem,
                    report.rows
                );
            } else {
                say!("audit chain intact: {} rows verified", report.rows);
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::List { after, limit } => {
            let rows = platform.store.audit_log(after, limit).await?;
            if g.json {
                output::json(&rows)?;
            } else {
                for r in rows {
                    say!(
                        "{:>6}  {}  {:<28} {:<24} {}  {}  {}",
                        r.seq,
                        output::when(r.at),
                        r.action,
                        r.subject.as_deref().unwrap_or("-"),
                        r.actor,
                        r.source,
                        r.detail
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

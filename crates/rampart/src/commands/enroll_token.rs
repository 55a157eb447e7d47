//! `rampart enroll-token ...`: tokens devices enroll with over HTTPS.

use std::process::ExitCode;

use anyhow::{Context, Result};
use rampart_provisioning::enrollment::{self, TokenSpec};
use rampart_store::{EnrollmentToken, Owner, Store, TokenState};
use serde::Serialize;
use time::OffsetDateTime;

use crate::cli::{EnrollTokenCommand, GlobalArgs};
use crate::config::Config;
use crate::output;
use crate::output::say;
use crate::platform::{Platform, cli_actor};

/// A token as `list` and `revoke` show it: never the token itself.
#[derive(Serialize)]
struct TokenSummary<'a> {
    id: &'a str,
    state: TokenState,
    uses: u32,
    uses_used: u32,
    uses_left: u32,
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
    id_prefix: Option<&'a str>,
    owner: Option<&'a Owner>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    created_by: &'a str,
    #[serde(with = "time::serde::rfc3339::option")]
    last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    revoked_at: Option<OffsetDateTime>,
}

impl<'a> TokenSummary<'a> {
    fn new(t: &'a EnrollmentToken, now: OffsetDateTime) -> Self {
        Self {
            id: &t.id,
            state: t.state(now),
            uses: t.uses_allowed,
            uses_used: t.uses_used,
            uses_left: t.uses_left(),
            expires_at: t.expires_at,
            id_prefix: t.id_prefix.as_deref(),
            owner: t.owner.as_ref(),
            created_at: t.created_at,
            created_by: &t.created_by,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
        }
    }
}

/// What `create --json` prints: the token (this once) and its scope.
#[derive(Serialize)]
struct Created<'a> {
    token: &'a str,
    #[serde(flatten)]
    summary: TokenSummary<'a>,
}

/// Runs an enroll-token command.
pub async fn run(g: &GlobalArgs, config: Config, cmd: EnrollTokenCommand) -> Result<ExitCode> {
    let p = Platform::open(&g.data_dir, config).await?;
    let now = OffsetDateTime::now_utc();
    match cmd {
        EnrollTokenCommand::Create {
            uses,
            expires,
            id_prefix,
            owner,
        } => {
            let spec = TokenSpec {
                uses,
                valid_for: expires,
                id_prefix,
                owner,
            };
            let created = enrollment::create_token(&p.store, &spec, &cli_actor())
                .await
                .context("cannot create the enrollment token")?;
            let summary = TokenSummary::new(&created.token, now);
            if g.json {
                output::json(&Created {
                    token: created.secret.as_str(),
                    summary,
                })?;
            } else {
                // The token alone on standard output, so that a script can
                // capture it; the rest is for the person at the terminal.
                say!("{}", created.secret.as_str());
                eprintln!(
                    "enrollment token {} for {} device(s), expires {}{}{}",
                    summary.id,
                    summary.uses,
                    output::when(summary.expires_at),
                    summary
                        .id_prefix
                        .map(|pre| format!(", ids starting with '{pre}'"))
                        .unwrap_or_default(),
                    summary
                        .owner
                        .map(output::owner)
                        .map(|o| format!(", owned by {o}"))
                        .unwrap_or_default(),
                );
                eprintln!(
                    "the token is shown once: only its hash is stored. Devices POST their CSR with it to /api/v1/enroll."
                );
            }
        }
        EnrollTokenCommand::List => {
            let tokens = p.store.enrollment_tokens().await?;
            let rows: Vec<TokenSummary<'_>> =
                tokens.iter().map(|t| TokenSummary::new(t, now)).collect();
            if g.json {
                output::json(&rows)?;
            } else {
                say!(
                    "{:<16} {:<8} {:<9} {:<25} {:<16} OWNER",
                    "ID",
                    "STATE",
                    "USES",
                    "EXPIRES",
                    "ID PREFIX"
                );
                for t in &rows {
                    say!(
                        "{:<16} {:<8} {:<9} {:<25} {:<16} {}",
                        t.id,
                        t.state.as_str(),
                        format!("{}/{}", t.uses_used, t.uses),
                        output::when(t.expires_at),
                        t.id_prefix.unwrap_or("-"),
                        t.owner.map_or_else(|| "-".to_owned(), output::owner),
                    );
                }
            }
        }
        EnrollTokenCommand::Revoke { id } => {
            let t = p.store.revoke_enrollment_token(&id, &cli_actor()).await?;
            if g.json {
                output::json(&TokenSummary::new(&t, now))?;
            } else {
                say!(
                    "revoked enrollment token {} ({} of {} uses taken); devices it registered are not affected",
                    t.id,
                    t.uses_used,
                    t.uses_allowed
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

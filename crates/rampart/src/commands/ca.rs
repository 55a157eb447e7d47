//! `rampart ca ...`

use std::process::ExitCode;

use anyhow::{Context, Result};
use rampart_pki::Pki;
use rampart_store::{AuditEntry, Store};
use serde_json::json;

use crate::cli::{CaCommand, GlobalArgs};
use crate::config::Config;
use crate::output;
use crate::output::say;
use crate::platform::{Platform, cli_actor};

/// Runs a CA command.
pub async fn run(g: &GlobalArgs, config: Config, cmd: CaCommand) -> Result<ExitCode> {
    let platform = Platform::open(&g.data_dir, config).await?;
    match cmd {
        CaCommand::Export => {
            let chain = platform.pki.chain_pem();
            if g.json {
                output::json(&json!({ "chain": chain }))?;
            } else {
                print!("{chain}");
            }
        }
        CaCommand::Crl => {
            let path = platform.pki.crl_path();
            if !path.exists() && !platform.pki.info().can_issue {
                anyhow::bail!(
                    "Rampart holds no CRL: the CA key is not held here, so the external CA publishes the CRL"
                );
            }
            let crl = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the CRL {}", path.display()))?;
            if g.json {
                output::json(&json!({ "crl": crl }))?;
            } else {
                print!("{crl}");
            }
        }
        CaCommand::Info => print_info(g, &platform.pki)?,
        CaCommand::Import { cert, key } => {
            let cert_pem = std::fs::read_to_string(&cert)
                .with_context(|| format!("cannot read {}", cert.display()))?;
            let key_pem = key
                .as_ref()
                .map(|k| {
                    std::fs::read_to_string(k)
                        .with_context(|| format!("cannot read {}", k.display()))
                })
                .transpose()?;
            let opts = platform.pki_options()?;
            let pki = Pki::import(&platform.dir.pki(), &opts, &cert_pem, key_pem.as_deref())?;
            platform
                .store
                .record_audit(AuditEntry {
                    actor: cli_actor(),
                    action: "ca.import".into(),
                    subject: None,
                    detail: json!({ "ca": pki.info(), "with_key": key.is_some() }),
                })
                .await?;
            let platform = Platform {
                pki: pki.into(),
                ..platform
            };
            platform.publish_crl().await?;
            print_info(g, &platform.pki)?;
        }
        CaCommand::ExportRootKey { out, remove } => {
            platform.pki.export_root_key(&out, remove)?;
            platform
                .store
                .record_audit(AuditEntry {
                    actor: cli_actor(),
                    action: "ca.root-key.export".into(),
                    subject: None,
                    detail: json!({ "removed_from_data_dir": remove }),
                })
                .await?;
            if g.json {
                output::json(&json!({ "out": out.display().to_string(), "removed": remove }))?;
            } else if remove {
                say!(
                    "root key written to {} and removed from the data dir; keep it offline",
                    out.display()
                );
            } else {
                say!("root key written to {}", out.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_info(g: &GlobalArgs, pki: &Pki) -> Result<()> {
    let info = pki.info();
    if g.json {
        return output::json(&info);
    }
    let cert = |label: &str, c: &rampart_pki::CertificateSummary| {
        say!("{label:<8} {}", c.subject);
        say!("{:<8} sha256 {}", "", c.fingerprint);
        say!("{:<8} valid until {}", "", output::when(c.not_after));
    };
    if let Some(root) = &info.root {
        cert("root", root);
    }
    cert("issuer", &info.issuer);
    if let Some(server) = &info.server {
        cert("server", server);
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    say!("can issue certificates   {}", yes_no(info.can_issue));
    say!("root key in data dir     {}", yes_no(info.root_key_present));
    say!("keys encrypted           {}", yes_no(info.keys_encrypted));
    say!("imported CA              {}", yes_no(info.imported));
    Ok(())
}

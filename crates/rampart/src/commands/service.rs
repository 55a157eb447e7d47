//! `rampart service ...`

use std::process::ExitCode;

use anyhow::Result;
use rampart_provisioning::registration;
use rampart_store::{NewService, Store};
use serde_json::json;

use crate::cli::{GlobalArgs, ServiceCommand};
use crate::config::Config;
use crate::credentials::Credentials;
use crate::output;
use crate::output::say;
use crate::platform::{Platform, cli_actor};

/// Runs a service command.
pub async fn run(g: &GlobalArgs, config: Config, cmd: ServiceCommand) -> Result<ExitCode> {
    let p = Platform::open(&g.data_dir, config).await?;
    match cmd {
        ServiceCommand::Create { name, out } => {
            if p.store.service(&name).await?.is_some() || p.store.device(&name).await?.is_some() {
                return Err(rampart_store::StoreError::IdTaken(name).into());
            }
            let files = Credentials::new(&out, name.as_str());
            files.check_free()?;
            let (cert, key) = p.pki.issue_service(&name)?;
            let service = p
                .store
                .create_service(
                    NewService {
                        id: name.clone(),
                        serial: cert.serial.clone(),
                        fingerprint: cert.fingerprint.clone(),
                        not_before: cert.not_before,
                        not_after: cert.not_after,
                    },
                    &cli_actor(),
                )
                .await?;
            let chain = registration::chain_pem(&cert.pem, p.pki.issuing_ca_pem());
            if let Err(e) = files.write(&key, &chain, &p.pki.chain_pem()) {
                p.store
                    .revoke_service(
                        &name,
                        rampart_pki::RevocationReason::CessationOfOperation,
                        &cli_actor(),
                    )
                    .await?;
                p.publish_crl().await?;
                return Err(e);
            }
            let (key_path, cert_path, ca_path) = (files.key, files.cert, files.ca);
            if g.json {
                output::json(&json!({
                    "service": service,
                    "files": {
                        "key": key_path.display().to_string(),
                        "certificate": cert_path.display().to_string(),
                        "ca": ca_path.display().to_string(),
                    }
                }))?;
            } else {
                say!("created service {name}");
                say!("  key:         {}", key_path.display());
                say!("  certificate: {}", cert_path.display());
                say!("  CA bundle:   {}", ca_path.display());
            }
        }
        ServiceCommand::List => {
            let services = p.store.list_services().await?;
            if g.json {
                output::json(&services)?;
            } else {
                say!(
                    "{:<24} {:<8} {:<25} FINGERPRINT",
                    "NAME",
                    "STATE",
                    "CERT EXPIRES"
                );
                for s in &services {
                    say!(
                        "{:<24} {:<8} {:<25} {}…",
                        s.id.as_str(),
                        s.state.as_str(),
                        output::when(s.not_after),
                        s.fingerprint.get(..16).unwrap_or(&s.fingerprint)
                    );
                }
            }
        }
        ServiceCommand::Revoke { name, reason } => {
            let s = p.store.revoke_service(&name, reason, &cli_actor()).await?;
            p.publish_crl().await?;
            if g.json {
                output::json(&s)?;
            } else {
                say!(
                    "revoked service {} (serial {}, reason {reason})",
                    s.id,
                    s.serial
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

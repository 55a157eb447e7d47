//! Opening everything a command needs: data dir, configuration, store, CA.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rampart_pki::{Pki, PkiOptions, RevokedSerial};
use rampart_store::postgres::PostgresOptions;
use rampart_store::sqlite::SqliteOptions;
use rampart_store::{Actor, AnyStore, AuditKey, PostgresStore, SqliteStore, Store};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::config::Config;
use crate::datadir::{Created, DataDir};

/// An opened data dir with its store and CA.
#[derive(Debug)]
pub struct Platform {
    /// The data directory.
    pub dir: DataDir,
    /// Effective configuration.
    pub config: Config,
    /// The store: SQLite in the data dir, or PostgreSQL (`store.url`).
    pub store: AnyStore,
    /// The certificate authority (shared with the web part, which signs
    /// enrolling devices' CSRs).
    pub pki: Arc<Pki>,
}

impl Platform {
    /// Creates whatever is missing (data dir, CA, server certificate, store,
    /// first CRL) and opens it. Idempotent. If a new data dir cannot be
    /// finished, it is removed again: nothing half-written stays on disk.
    pub async fn init(root: &Path, config: Config) -> Result<(Self, Created)> {
        let (dir, created) = DataDir::create(root)?;
        let result = Self::finish_init(dir.clone(), config, created).await;
        if result.is_err() && created == Created::New {
            dir.discard_unfinished();
        }
        result.map(|p| (p, created))
    }

    async fn finish_init(dir: DataDir, config: Config, created: Created) -> Result<Self> {
        let opts = pki_options(&config)?;
        let (pki, _) = Pki::init(&dir.pki(), &opts).context("cannot set up the CA")?;
        let store = open_store(&dir, &config).await?;
        let platform = Self {
            dir,
            config,
            store,
            pki: Arc::new(pki),
        };
        if created == Created::New {
            platform.publish_crl().await?;
            platform
                .store
                .record_audit(rampart_store::AuditEntry {
                    actor: Actor::system(),
                    action: "instance.init".into(),
                    subject: None,
                    detail: serde_json::json!({ "ca": platform.pki.info() }),
                })
                .await?;
        }
        platform.dir.mark_finished()?;
        Ok(platform)
    }

    /// Opens an existing data dir and its store.
    pub async fn open(root: &Path, config: Config) -> Result<Self> {
        let dir = DataDir::open(root)?;
        let pki = Pki::open(&dir.pki(), &pki_options(&config)?)
            .with_context(|| format!("cannot open the CA in {}", dir.pki().display()))?;
        let store = open_store(&dir, &config).await?;
        Ok(Self {
            dir,
            config,
            store,
            pki: Arc::new(pki),
        })
    }

    /// Certificate chain and key files the TLS listeners present: the
    /// configured ones (`pki.server_cert`/`server_key`), else Rampart's own.
    pub fn server_identity(&self) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
        let c = &self.config.pki;
        if let (Some(cert), Some(key)) = (&c.server_cert, &c.server_key) {
            return Ok((cert.clone(), key.clone()));
        }
        let (cert, key) = (self.pki.server_cert_path(), self.pki.server_key_path());
        if !cert.exists() {
            bail!(
                "no server certificate: the CA key is not held by Rampart, so set pki.server_cert and pki.server_key"
            );
        }
        Ok((cert, key))
    }

    /// CA options of this platform's configuration.
    pub fn pki_options(&self) -> Result<PkiOptions> {
        pki_options(&self.config)
    }

    /// Signs and writes a fresh CRL from the store's revocations. With an
    /// imported CA whose key Rampart does not hold, the revocation still
    /// takes effect (the broker checks the registry) and a warning says the
    /// CRL must be published by the external CA.
    pub async fn publish_crl(&self) -> Result<()> {
        if !self.pki.info().can_issue {
            tracing::warn!(
                "the CA key is not held by Rampart: publish the CRL from the external CA"
            );
            return Ok(());
        }
        let revoked = crl_entries(
            self.store.revoked_certificates().await?,
            OffsetDateTime::now_utc(),
            self.config.pki.crl_validity,
        );
        let number = self.store.next_crl_number().await?;
        let pem = self
            .pki
            .build_crl(&revoked, number, self.config.pki.crl_validity)
            .context("cannot sign the CRL")?;
        self.pki.write_crl(&pem).context("cannot write the CRL")?;
        tracing::debug!(number, entries = revoked.len(), "published CRL");
        Ok(())
    }
}

/// The CRL's entries: every revoked certificate still valid, or expired
/// for less than one CRL validity. RFC 5280 §3.3: an entry may leave the
/// CRL once a regularly scheduled CRL issued after the certificate expired
/// has listed it; one validity past expiry guarantees that, and keeps the
/// CRL from growing forever with every renewal's superseded serial.
fn crl_entries(
    revoked: Vec<rampart_store::RevokedCertificate>,
    now: OffsetDateTime,
    crl_validity: std::time::Duration,
) -> Vec<RevokedSerial> {
    let keep_after = now - crl_validity;
    revoked
        .into_iter()
        .filter(|r| r.not_after > keep_after)
        .map(|r| RevokedSerial {
            serial: r.serial,
            reason: r.reason,
            revoked_at: r.revoked_at,
        })
        .collect()
}

/// Opens the configured store: PostgreSQL when `store.url` is set, else
/// SQLite in the data dir. Either way the audit key and chain head stay in
/// the data dir, outside the database they protect.
async fn open_store(dir: &DataDir, config: &Config) -> Result<AnyStore> {
    let key = rampart_store::read_key_file(&dir.audit_key_path()).with_context(|| {
        format!(
            "cannot read the audit key {}",
            dir.audit_key_path().display()
        )
    })?;
    let audit_key = AuditKey::new(key, Some(dir.audit_head_path()));
    let url = &config.store.url;
    if url.is_empty() {
        let store = SqliteStore::open(
            &dir.database(),
            audit_key,
            SqliteOptions {
                busy_timeout: config.store.busy_timeout,
                writer_priority: config.store.writer_priority,
                writer_takeover_after: config.store.writer_takeover_after,
                ..SqliteOptions::default()
            },
        )?;
        return Ok(store.into());
    }
    let options = PostgresOptions {
        busy_timeout: config.store.busy_timeout,
        ..PostgresOptions::default()
    };
    let store = PostgresStore::connect(url.expose(), audit_key, options).await?;
    Ok(store.into())
}

/// CA options from the configuration, with the key passphrase if one is set.
fn pki_options(config: &Config) -> Result<PkiOptions> {
    let c = &config.pki;
    let passphrase = match (&c.key_passphrase_file, std::env::var(&c.key_passphrase_env)) {
        (Some(file), _) => {
            let text = Zeroizing::new(std::fs::read_to_string(file).with_context(|| {
                format!("cannot read pki.key_passphrase_file {}", file.display())
            })?);
            Some(Zeroizing::new(
                text.lines().next().unwrap_or_default().to_owned(),
            ))
        }
        (None, Ok(p)) => Some(Zeroizing::new(p)),
        (None, Err(_)) => None,
    };
    if passphrase.as_ref().is_some_and(|p| p.len() < 12) {
        bail!("the CA key passphrase must be at least 12 characters long");
    }
    let server_sans = if c.server_sans.is_empty() {
        default_server_sans()
    } else {
        c.server_sans.clone()
    };
    Ok(PkiOptions {
        ca_name: c.ca_name.clone(),
        device_validity_days: c.device_validity_days,
        server_validity_days: c.server_validity_days,
        server_sans,
        passphrase,
    })
}

/// localhost, the loopback addresses and this machine's host name.
fn default_server_sans() -> Vec<String> {
    let mut sans = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = gethostname::gethostname().into_string()
        && !host.is_empty()
        && host != "localhost"
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        sans.push(host);
    }
    sans
}

/// The actor for commands run from this shell: `cli:<user>` from `cli@<host>`.
pub fn cli_actor() -> Actor {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    Actor {
        name: format!("cli:{user}"),
        source: format!("cli@{host}"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rampart_pki::RevocationReason;
    use rampart_store::RevokedCertificate;

    use super::*;

    #[test]
    fn the_crl_drops_entries_one_validity_after_their_certificate_expired() {
        let now = OffsetDateTime::now_utc();
        let week = Duration::from_secs(7 * 86_400);
        let revoked = |serial: &str, expired_ago: time::Duration| RevokedCertificate {
            serial: serial.into(),
            identity: "d".into(),
            reason: RevocationReason::Superseded,
            revoked_at: now - time::Duration::days(400),
            not_after: now - expired_ago,
        };
        let entries = crl_entries(
            vec![
                revoked("valid", time::Duration::days(-30)),
                revoked("expired-yesterday", time::Duration::days(1)),
                revoked("expired-long-ago", time::Duration::days(8)),
            ],
            now,
            week,
        );
        let serials: Vec<&str> = entries.iter().map(|e| e.serial.as_str()).collect();
        assert_eq!(serials, ["valid", "expired-yesterday"]);
    }
}

//! Credential files handed to a device or service: key, certificate chain
//! and the CA bundle that verifies the server.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::datadir::{write_atomic, write_private};

/// Where `NAME.key`, `NAME.crt` and `ca.crt` go.
#[derive(Debug)]
pub struct Credentials {
    /// Private key (0600).
    pub key: PathBuf,
    /// Certificate followed by the issuing CA.
    pub cert: PathBuf,
    /// CA bundle (issuing CA and root).
    pub ca: PathBuf,
}

impl Credentials {
    /// The file paths for `name` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        Self {
            key: dir.join(format!("{name}.key")),
            cert: dir.join(format!("{name}.crt")),
            ca: dir.join("ca.crt"),
        }
    }

    /// Refuses to overwrite an existing key or certificate.
    pub fn check_free(&self) -> Result<()> {
        for path in [&self.key, &self.cert] {
            if path.exists() {
                bail!(
                    "{} already exists; choose another --out directory",
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// Writes all three (creating the directory); on failure removes what it wrote.
    pub fn write(&self, key_pem: &str, chain_pem: &str, ca_pem: &str) -> Result<()> {
        if let Some(dir) = self.key.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let written = write_private(&self.key, key_pem.as_bytes())
            .and_then(|()| write_atomic(&self.cert, chain_pem.as_bytes(), 0o644))
            .and_then(|()| write_atomic(&self.ca, ca_pem.as_bytes(), 0o644));
        if written.is_err() {
            let _ = std::fs::remove_file(&self.key);
            let _ = std::fs::remove_file(&self.cert);
        }
        written
    }
}

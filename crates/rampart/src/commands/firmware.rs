//! `rampart firmware ...`: signing keys and bundles (offline, no data
//! dir), trusted keys and uploads (the registry). Verification is
//! `rampart_ota::verify`, the device's own checks; an upload is stored only
//! as a [`rampart_ota::VerifiedFirmware`].

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use rampart_ota::{OtaError, PublicKey, SignRequest, SigningKey, VerifiedFirmware};
use rampart_store::{AuditEntry, FirmwareStore, NewFirmware, NewFirmwareKey, Store};
use serde_json::json;

use crate::cli::{FirmwareCommand, FirmwareKeyCommand, GlobalArgs};
use crate::config::Config;
use crate::output;
use crate::platform::{Platform, cli_actor};

/// Runs a firmware command.
pub async fn run(g: &GlobalArgs, config: Config, cmd: FirmwareCommand) -> Result<ExitCode> {
    match cmd {
        FirmwareCommand::Keygen { out } => keygen(g, &out),
        FirmwareCommand::Sign {
            image,
            key,
            device_type,
            version,
            security_version,
            out,
        } => sign(
            g,
            &image,
            &key,
            &SignRequest {
                device_type: &device_type,
                version: &version,
                security_version,
                created_at_ms: now_ms(),
            },
            &out,
        ),
        FirmwareCommand::Verify {
            bundle,
            pubkeys,
            device_type,
            max_image_size,
        } => {
            let keys = pubkeys
                .iter()
                .map(|p| PublicKey::read(p))
                .collect::<Result<Vec<_>, _>>()?;
            let max = max_image_size.unwrap_or(config.firmware.max_image_size);
            let bytes = read_bundle(&bundle, max)?;
            let verified = rampart_ota::verify(bytes, &keys, max, device_type.as_deref())
                .with_context(|| format!("{} does not verify", bundle.display()))?;
            print_verified(g, &bundle, &verified)
        }
        FirmwareCommand::Key(cmd) => {
            let p = Platform::open(&g.data_dir, config).await?;
            key_command(g, &p, cmd).await
        }
        FirmwareCommand::Upload { bundle } => {
            let p = Platform::open(&g.data_dir, config).await?;
            upload(g, &p, &bundle).await
        }
        FirmwareCommand::List => {
            let p = Platform::open(&g.data_dir, config).await?;
            let list = p.store.list_firmware().await?;
            if g.json {
                output::json(&list)?;
            } else {
                println!(
                    "{:<5} {:<20} {:<14} {:>4} {:>10} {:<16} UPLOADED",
                    "ID", "DEVICE TYPE", "VERSION", "SV", "SIZE", "SHA-256"
                );
                for f in &list {
                    println!(
                        "{:<5} {:<20} {:<14} {:>4} {:>10} {:<16} {} by {}",
                        f.id,
                        f.device_type,
                        f.version,
                        f.security_version,
                        f.size,
                        f.sha256.get(..16).unwrap_or(&f.sha256),
                        output::when(f.uploaded_at),
                        f.uploaded_by
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or_default()
}

fn keygen(g: &GlobalArgs, out: &Path) -> Result<ExitCode> {
    let (key, public) = rampart_ota::keys::generate_files(out)?;
    let id = key.public_key().id().to_string();
    if g.json {
        output::json(&json!({
            "key": out.display().to_string(),
            "publicKey": public.display().to_string(),
            "keyId": id,
        }))?;
    } else {
        println!("secret key: {} (mode 0600; keep it offline)", out.display());
        println!("public key: {}", public.display());
        println!("key id:     {id}");
        println!(
            "trust it on the server with: rampart firmware key add {}",
            public.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn sign(
    g: &GlobalArgs,
    image: &Path,
    key: &Path,
    req: &SignRequest<'_>,
    out: &Path,
) -> Result<ExitCode> {
    let key = SigningKey::read(key)?;
    let bytes = std::fs::read(image)
        .with_context(|| format!("cannot read the image {}", image.display()))?;
    let bundle = rampart_ota::sign(&bytes, &key, req)?;
    write_new(out, &bundle).with_context(|| {
        format!(
            "cannot write the bundle {} (an existing file is never overwritten)",
            out.display()
        )
    })?;
    let info = rampart_ota::inspect(&bundle)?;
    if g.json {
        output::json(&json!({ "bundle": out.display().to_string(), "manifest": info }))?;
    } else {
        println!(
            "signed {} {} for {} (security version {}, {} bytes, key {}) into {}",
            image.display(),
            info.version,
            info.device_type,
            info.security_version,
            info.image_size,
            info.key_id,
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates `path` (which must not exist) with `bytes`, flushed to disk.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Largest bundle overhead besides the image (header, manifest, signature).
const HEAD_MAX: u64 = 12 + rampart_core::ota::manifest::MAX_MANIFEST_LEN as u64 + 64;

/// Reads a bundle file; one larger than any acceptable bundle is refused
/// from its head without reading the rest.
fn read_bundle(path: &Path, max_image_size: u64) -> Result<Vec<u8>> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if len > max_image_size.saturating_add(HEAD_MAX) {
        let mut head = Vec::new();
        file.by_ref()
            .take(HEAD_MAX)
            .read_to_end(&mut head)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let info = rampart_ota::inspect(&head)
            .with_context(|| format!("{} is refused", path.display()))?;
        let err = if info.image_size > max_image_size {
            rampart_ota::VerifyError::Oversized {
                size: info.image_size,
                max: max_image_size,
            }
        } else {
            rampart_ota::VerifyError::TrailingBytes {
                extra: len.saturating_sub(info.image_size.saturating_add(HEAD_MAX)),
            }
        };
        return Err(OtaError::from(err)).with_context(|| format!("{} is refused", path.display()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or_default());
    file.read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(bytes)
}

fn print_verified(g: &GlobalArgs, path: &Path, v: &VerifiedFirmware) -> Result<ExitCode> {
    let m = v.manifest();
    if g.json {
        output::json(&json!({ "verified": true, "manifest": m }))?;
    } else {
        println!("{}: signature, size and SHA-256 verified", path.display());
        println!("  device type:      {}", m.device_type);
        println!("  version:          {}", m.version);
        println!("  security version: {}", m.security_version);
        println!("  image size:       {} bytes", m.image_size);
        println!("  image SHA-256:    {}", m.image_sha256);
        println!("  key id:           {}", m.key_id);
        let created = i64::try_from(m.created_at_ms)
            .ok()
            .and_then(|ms| {
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            })
            .map(output::when)
            .unwrap_or_else(|| m.created_at_ms.to_string());
        println!("  signed at:        {created}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn key_command(g: &GlobalArgs, p: &Platform, cmd: FirmwareKeyCommand) -> Result<ExitCode> {
    match cmd {
        FirmwareKeyCommand::Add { pubkey, name } => {
            let key = PublicKey::read(&pubkey)?;
            let name = name.unwrap_or_else(|| format!("key-{}", key.id()));
            let added = p
                .store
                .add_firmware_key(
                    NewFirmwareKey {
                        name,
                        public_key: *key.bytes(),
                    },
                    &cli_actor(),
                )
                .await?;
            if g.json {
                output::json(&added)?;
            } else {
                println!(
                    "trusting firmware key {} (key id {})",
                    added.name, added.key_id
                );
            }
        }
        FirmwareKeyCommand::List => {
            let keys = p.store.firmware_keys().await?;
            if g.json {
                output::json(&keys)?;
            } else {
                println!("{:<24} {:<16} {:<25} ADDED BY", "NAME", "KEY ID", "ADDED");
                for k in &keys {
                    println!(
                        "{:<24} {:<16} {:<25} {}",
                        k.name,
                        k.key_id,
                        output::when(k.added_at),
                        k.added_by
                    );
                }
            }
        }
        FirmwareKeyCommand::Remove { names } => {
            let removed = p.store.remove_firmware_keys(&names, &cli_actor()).await?;
            if g.json {
                output::json(&removed)?;
            } else {
                for k in &removed {
                    println!("no longer trusting firmware key {} ({})", k.name, k.key_id);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Verifies against the trusted keys, stores the image, records the
/// upload; a refusal is audited with its reason and stores nothing.
async fn upload(g: &GlobalArgs, p: &Platform, path: &Path) -> Result<ExitCode> {
    let max = p.config.firmware.max_image_size;
    let trusted = p
        .store
        .firmware_keys()
        .await?
        .iter()
        .map(|k| {
            PublicKey::from_hex(&k.public_key)
                .ok_or_else(|| anyhow::anyhow!("trusted key '{}' is damaged in the store", k.name))
        })
        .collect::<Result<Vec<_>>>()?;
    let verified = read_bundle(path, max).and_then(|bytes| {
        rampart_ota::verify(bytes, &trusted, max, None)
            .with_context(|| format!("{} is refused", path.display()))
    });
    let verified = match verified {
        Ok(v) => v,
        Err(e) => {
            let reason = e
                .chain()
                .find_map(|c| c.downcast_ref::<OtaError>())
                .and_then(|o| match o {
                    OtaError::Verify(v) => Some(v.code()),
                    _ => None,
                })
                .unwrap_or("unreadable");
            p.store
                .record_audit(AuditEntry {
                    actor: cli_actor(),
                    action: "firmware.upload-refused".into(),
                    subject: Some(path.display().to_string()),
                    detail: json!({ "reason": reason, "message": format!("{e:#}") }),
                })
                .await?;
            return Err(e);
        }
    };
    let image = rampart_ota::store_image(&p.dir.firmware(), &verified)?;
    let record = NewFirmware::verified(&verified.proof()?);
    let stored = match p.store.add_firmware(record, &cli_actor()).await {
        Ok(f) => f,
        Err(e) => {
            // The image file may be shared with another upload of the same
            // image; remove it only if no record names it.
            let sha = &verified.manifest().image_sha256;
            if !p
                .store
                .list_firmware()
                .await?
                .iter()
                .any(|f| &f.sha256 == sha)
            {
                let _ = std::fs::remove_file(&image);
            }
            return Err(e.into());
        }
    };
    if g.json {
        output::json(&json!({ "firmware": stored, "image": image.display().to_string() }))?;
    } else {
        println!(
            "uploaded firmware {} {} for {} (id {}, security version {}, {} bytes, signed by key {})",
            path.display(),
            stored.version,
            stored.device_type,
            stored.id,
            stored.security_version,
            stored.size,
            stored.key_id
        );
        println!("  image: {}", image.display());
    }
    Ok(ExitCode::SUCCESS)
}

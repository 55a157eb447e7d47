//! Firmware: the public keys trusted to sign bundles, and the uploaded
//! bundles (issue 9). One trait, [`FirmwareStore`], implemented by both
//! backends; every change writes its audit row in the same transaction.
//!
//! The store does not verify signatures: a [`NewFirmware`] can only be made
//! from a [`VerifiedFirmware`] (the proof that `rampart_core::ota` checked
//! the bundle), and [`FirmwareStore::add_firmware`] refuses it unless its
//! key is still trusted when the row is written.

use async_trait::async_trait;
use rampart_core::ota::VerifiedFirmware;
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::millis::from_ms;
use crate::{Actor, AuditEntry, Result, StoreError};

/// Longest key name.
pub const MAX_KEY_NAME: usize = 64;

/// A public key trusted to sign firmware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FirmwareKey {
    /// The operator's name for it (unique).
    pub name: String,
    /// First 8 bytes of SHA-256 of the key, lowercase hex.
    pub key_id: String,
    /// The Ed25519 public key, lowercase hex.
    pub public_key: String,
    /// When it was added.
    #[serde(with = "time::serde::rfc3339")]
    pub added_at: OffsetDateTime,
    /// Who added it.
    pub added_by: String,
}

/// A key to trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFirmwareKey {
    /// Its name: 1 to 64 characters of `[A-Za-z0-9._-]`.
    pub name: String,
    /// The Ed25519 public key.
    pub public_key: [u8; 32],
}

impl NewFirmwareKey {
    /// The key id, lowercase hex.
    pub fn key_id(&self) -> String {
        rampart_core::ota::KeyId::of(&self.public_key).to_string()
    }

    pub(crate) fn check(&self) -> Result<()> {
        let ok = !self.name.is_empty()
            && self.name.len() <= MAX_KEY_NAME
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(())
        } else {
            Err(StoreError::InvalidFirmwareKeyName(self.name.clone()))
        }
    }
}

/// An uploaded firmware bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Firmware {
    /// Its number.
    pub id: u64,
    /// Which kind of device it is for.
    pub device_type: String,
    /// Semantic version.
    pub version: String,
    /// Anti-rollback counter.
    pub security_version: u32,
    /// Image size in bytes.
    pub size: u64,
    /// SHA-256 of the image, lowercase hex (its name in the image store).
    pub sha256: String,
    /// Id of the key that signed it, lowercase hex.
    pub key_id: String,
    /// The manifest bytes, as signed.
    #[serde(skip)]
    pub manifest: Vec<u8>,
    /// The Ed25519 signature over `manifest`.
    #[serde(skip)]
    pub signature: Vec<u8>,
    /// When it was uploaded.
    #[serde(with = "time::serde::rfc3339")]
    pub uploaded_at: OffsetDateTime,
    /// Who uploaded it.
    pub uploaded_by: String,
}

/// A verified bundle to record. Only [`NewFirmware::verified`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFirmware {
    pub(crate) device_type: String,
    pub(crate) version: String,
    pub(crate) security_version: u32,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    pub(crate) key_id: String,
    pub(crate) manifest: Vec<u8>,
    pub(crate) signature: Vec<u8>,
}

impl NewFirmware {
    /// The record of a bundle that passed verification.
    pub fn verified(v: &VerifiedFirmware<'_>) -> Self {
        let m = v.manifest();
        NewFirmware {
            device_type: m.device_type.to_owned(),
            version: m.version.as_str().to_owned(),
            security_version: m.security_version,
            size: m.image_size,
            sha256: hex::encode(m.image_sha256),
            key_id: m.key_id.to_string(),
            manifest: v.manifest_bytes().to_vec(),
            signature: v.signature().to_vec(),
        }
    }

    /// The device type.
    pub fn device_type(&self) -> &str {
        &self.device_type
    }

    /// The version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// SHA-256 of the image, lowercase hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

/// Storage of trusted firmware keys and uploaded firmware.
#[async_trait]
pub trait FirmwareStore: Send + Sync {
    /// Trusts a public key under a name. Refused if the name or the key is
    /// there already ([`StoreError::FirmwareKeyExists`]).
    async fn add_firmware_key(&self, key: NewFirmwareKey, actor: &Actor) -> Result<FirmwareKey>;

    /// Every trusted key, by name.
    async fn firmware_keys(&self) -> Result<Vec<FirmwareKey>>;

    /// Stops trusting the named keys, all or none (one unknown name
    /// refuses the whole removal with [`StoreError::FirmwareKeyNotFound`]);
    /// returns them. Firmware they signed stays recorded.
    async fn remove_firmware_keys(
        &self,
        names: &[String],
        actor: &Actor,
    ) -> Result<Vec<FirmwareKey>>;

    /// Records an uploaded bundle. Refused if its key is not trusted
    /// ([`StoreError::FirmwareKeyNotTrusted`]) or the device type already
    /// has that version ([`StoreError::FirmwareExists`]).
    async fn add_firmware(&self, firmware: NewFirmware, actor: &Actor) -> Result<Firmware>;

    /// Every uploaded bundle, newest first.
    async fn list_firmware(&self) -> Result<Vec<Firmware>>;

    /// One bundle by number.
    async fn firmware(&self, id: u64) -> Result<Option<Firmware>>;
}

/// Columns of `firmware_keys`, in [`KeyRow`] order.
pub(crate) const KEY_COLUMNS: &str = "name, key_id, public_key, added_at, added_by";
/// Columns of `firmware`, in [`FirmwareRow`] order.
pub(crate) const FIRMWARE_COLUMNS: &str = "id, device_type, version, security_version, size, \
     sha256, key_id, manifest, signature, uploaded_at, uploaded_by";

/// A `firmware_keys` row as stored.
pub(crate) struct KeyRow {
    pub(crate) name: String,
    pub(crate) key_id: String,
    pub(crate) public_key: String,
    pub(crate) added_at: i64,
    pub(crate) added_by: String,
}

impl KeyRow {
    pub(crate) fn into_key(self) -> Result<FirmwareKey> {
        Ok(FirmwareKey {
            name: self.name,
            key_id: self.key_id,
            public_key: self.public_key,
            added_at: from_ms(self.added_at)?,
            added_by: self.added_by,
        })
    }
}

/// A `firmware` row as stored.
pub(crate) struct FirmwareRow {
    pub(crate) id: i64,
    pub(crate) device_type: String,
    pub(crate) version: String,
    pub(crate) security_version: i64,
    pub(crate) size: i64,
    pub(crate) sha256: String,
    pub(crate) key_id: String,
    pub(crate) manifest: Vec<u8>,
    pub(crate) signature: Vec<u8>,
    pub(crate) uploaded_at: i64,
    pub(crate) uploaded_by: String,
}

impl FirmwareRow {
    pub(crate) fn into_firmware(self) -> Result<Firmware> {
        let corrupt = |what: &str, v: i64| StoreError::Corrupt(format!("firmware {what} {v}"));
        Ok(Firmware {
            id: u64::try_from(self.id).map_err(|_| corrupt("id", self.id))?,
            device_type: self.device_type,
            version: self.version,
            security_version: u32::try_from(self.security_version)
                .map_err(|_| corrupt("security version", self.security_version))?,
            size: u64::try_from(self.size).map_err(|_| corrupt("size", self.size))?,
            sha256: self.sha256,
            key_id: self.key_id,
            manifest: self.manifest,
            signature: self.signature,
            uploaded_at: from_ms(self.uploaded_at)?,
            uploaded_by: self.uploaded_by,
        })
    }
}

/// `size` as a database integer.
pub(crate) fn size_column(size: u64) -> Result<i64> {
    i64::try_from(size).map_err(|_| StoreError::Corrupt(format!("firmware size {size} too large")))
}

/// The audit row of a trusted key added.
pub(crate) fn key_added(k: &NewFirmwareKey, actor: &Actor) -> AuditEntry {
    AuditEntry {
        actor: actor.clone(),
        action: "firmware-key.add".into(),
        subject: Some(k.name.clone()),
        detail: json!({ "key_id": k.key_id(), "public_key": hex::encode(k.public_key) }),
    }
}

/// The audit row of trusted keys removed.
pub(crate) fn keys_removed(keys: &[FirmwareKey], actor: &Actor) -> AuditEntry {
    AuditEntry {
        actor: actor.clone(),
        action: "firmware-key.remove".into(),
        subject: Some(
            keys.iter()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        detail: json!({
            "keys": keys.iter().map(|k| json!({"name": k.name, "key_id": k.key_id})).collect::<Vec<_>>(),
        }),
    }
}

/// The audit row of an upload.
pub(crate) fn firmware_added(f: &NewFirmware, key_name: &str, actor: &Actor) -> AuditEntry {
    AuditEntry {
        actor: actor.clone(),
        action: "firmware.upload".into(),
        subject: Some(format!("{}@{}", f.device_type, f.version)),
        detail: json!({
            "device_type": f.device_type,
            "version": f.version,
            "security_version": f.security_version,
            "size": f.size,
            "sha256": f.sha256,
            "key_id": f.key_id,
            "key_name": key_name,
        }),
    }
}

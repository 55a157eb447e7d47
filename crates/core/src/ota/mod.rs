//! Signed firmware updates (DESIGN.md "Device core and OTA"): the bundle
//! format and its verification, shared with the server so that the device
//! checks exactly what the server checked, and the device's update state
//! machine with A/B slots, pending-verify boot and automatic rollback.
//!
//! - [`semver`]: semantic versions, parsed and ordered without allocating.
//! - [`manifest`]: the signed manifest (device type, version, security
//!   version, image size and SHA-256, key id, creation time).
//! - [`bundle`]: `RMPTFW` bundles, signature checks against trusted keys,
//!   and [`bundle::VerifiedFirmware`], the proof that every check passed.
//! - [`update`]: the device side: offer → verify → stream into the inactive
//!   slot → pending reboot → confirm or roll back, with its persisted state
//!   and the reports it publishes on `devices/{id}/ota/up`.

pub mod bundle;
pub mod manifest;
pub mod semver;
pub mod update;

pub use bundle::{
    BundleHead, Limits, SignedManifest, TrustedKey, VerifiedFirmware, VerifyError, parse_head,
    verify_bundle, verify_manifest,
};
pub use manifest::{KeyId, Manifest, ManifestError};
pub use semver::{SemverError, Version};

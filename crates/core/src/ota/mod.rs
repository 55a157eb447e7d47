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

/// The bounded fuzz run of the OTA decoders (`fuzz/` has the
/// coverage-guided target `ota_bundle_decode`; CI runs these with
/// `RAMPART_FUZZ_CASES`).
#[cfg(test)]
mod never_panic {
    use super::bundle::tests::{bundle, key, trusted};
    use super::update::{OtaState, STATE_LEN};
    use super::*;
    use proptest::prelude::*;

    fn fuzz_cases() -> u32 {
        std::env::var("RAMPART_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000)
    }

    /// What the fuzz target checks: no panic, and whatever decodes
    /// re-encodes to the same bytes.
    fn check(data: &[u8]) {
        let keys = [trusted(&key(1))];
        let limits = Limits {
            max_image_size: 1 << 20,
            device_type: None,
        };
        if let Ok(head) = parse_head(data) {
            let mut buf = [0u8; manifest::MAX_MANIFEST_LEN];
            let n = head
                .manifest
                .encode(&mut buf)
                .expect("a decoded manifest encodes");
            assert_eq!(&buf[..n], head.manifest_bytes);
        }
        if let Ok(v) = verify_bundle(data, &keys, &limits) {
            assert_eq!(v.manifest().image_size as usize, v.image().len());
        }
        if let Ok(state) = OtaState::from_bytes(data) {
            let mut buf = [0u8; STATE_LEN];
            state.to_bytes(&mut buf).expect("fits");
            assert_eq!(&buf[..], &data[..STATE_LEN]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

        #[test]
        fn ota_random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            check(&data);
        }

        #[test]
        fn ota_edited_bundles_never_panic(
            image in proptest::collection::vec(any::<u8>(), 0..128),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut b = bundle(&key(1), "sensor", "1.0.0-rc.1+b7", 1, &image);
            for (at, byte) in &edits {
                let i = at.index(b.len());
                b[i] = *byte;
            }
            if truncate {
                b.truncate(cut.index(b.len() + 1));
            }
            check(&b);
        }
    }
}

//! Trusted firmware keys and uploaded firmware on both backends: keys
//! added, listed and removed (several at once, all or none), uploads
//! recorded only while their key is trusted and never twice per version,
//! every change with its audit row.

use rampart_ota::{SignRequest, SigningKey, sign, verify};
use rampart_store::{FirmwareStore, NewFirmware, NewFirmwareKey, Store, StoreError};

use crate::store::{Backend, Postgres, Sqlite, cli, on_both};

on_both!(
    keys_are_added_listed_and_removed_for_rotation,
    uploads_need_a_trusted_key_and_a_new_version,
);

fn new_key(name: &str, key: &SigningKey) -> NewFirmwareKey {
    NewFirmwareKey {
        name: name.into(),
        public_key: *key.public_key().bytes(),
    }
}

/// A verified bundle of `image` as the store records it.
fn upload(key: &SigningKey, version: &str, sv: u32, image: &[u8]) -> NewFirmware {
    let req = SignRequest {
        device_type: "sensor",
        version,
        security_version: sv,
        created_at_ms: 1_764_000_000_000,
    };
    let bundle = sign(image, key, &req).expect("signs");
    let v = verify(bundle, &[key.public_key()], 1 << 20, Some("sensor")).expect("verifies");
    NewFirmware::verified(&v.proof().expect("proof"))
}

async fn keys_are_added_listed_and_removed_for_rotation(backend: impl Backend) {
    let store = backend.open().await;
    let (old, new, spare) = (
        SigningKey::generate(),
        SigningKey::generate(),
        SigningKey::generate(),
    );
    let added = store
        .add_firmware_key(new_key("release-2025", &old), &cli())
        .await
        .expect("add");
    assert_eq!(added.name, "release-2025");
    assert_eq!(added.key_id, old.public_key().id().to_string());
    assert_eq!(added.public_key, old.public_key().to_hex());
    assert_eq!(added.added_by, "cli:test");
    store
        .add_firmware_key(new_key("release-2026", &new), &cli())
        .await
        .expect("add");
    store
        .add_firmware_key(new_key("spare", &spare), &cli())
        .await
        .expect("add");

    // The same name or the same key again is refused.
    let again = store
        .add_firmware_key(new_key("release-2025", &spare), &cli())
        .await;
    assert!(
        matches!(again, Err(StoreError::FirmwareKeyExists(_))),
        "{again:?}"
    );
    let same_key = store
        .add_firmware_key(new_key("other-name", &new), &cli())
        .await;
    match same_key {
        Err(StoreError::FirmwareKeyExists(msg)) => assert!(msg.contains("release-2026"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let bad_name = store
        .add_firmware_key(new_key("no spaces", &SigningKey::generate()), &cli())
        .await;
    assert!(matches!(
        bad_name,
        Err(StoreError::InvalidFirmwareKeyName(_))
    ));

    let names: Vec<String> = store
        .firmware_keys()
        .await
        .expect("list")
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(names, ["release-2025", "release-2026", "spare"]);

    // One unknown name refuses the whole removal.
    let refused = store
        .remove_firmware_keys(&["release-2025".into(), "nope".into()], &cli())
        .await;
    assert!(matches!(refused, Err(StoreError::FirmwareKeyNotFound(ref n)) if n == "nope"));
    assert_eq!(store.firmware_keys().await.expect("list").len(), 3);

    let removed = store
        .remove_firmware_keys(&["release-2025".into(), "spare".into()], &cli())
        .await
        .expect("remove");
    assert_eq!(removed.len(), 2);
    let left: Vec<String> = store
        .firmware_keys()
        .await
        .expect("list")
        .into_iter()
        .map(|k| k.name)
        .collect();
    assert_eq!(left, ["release-2026"]);

    let actions: Vec<String> = store
        .audit_log(0, 100)
        .await
        .expect("audit")
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(
        actions,
        [
            "firmware-key.add",
            "firmware-key.add",
            "firmware-key.add",
            "firmware-key.remove"
        ]
    );
    assert!(store.verify_audit().await.expect("verify").ok);
}

async fn uploads_need_a_trusted_key_and_a_new_version(backend: impl Backend) {
    let store = backend.open().await;
    let key = SigningKey::generate();
    let first = upload(&key, "1.0.0", 1, b"image one");

    // Not trusted (yet): refused, nothing stored.
    let refused = store.add_firmware(first.clone(), &cli()).await;
    assert!(
        matches!(refused, Err(StoreError::FirmwareKeyNotTrusted(_))),
        "{refused:?}"
    );
    assert!(store.list_firmware().await.expect("list").is_empty());

    store
        .add_firmware_key(new_key("release", &key), &cli())
        .await
        .expect("add key");
    let stored = store
        .add_firmware(first.clone(), &cli())
        .await
        .expect("upload");
    assert_eq!(stored.device_type, "sensor");
    assert_eq!(stored.version, "1.0.0");
    assert_eq!(stored.security_version, 1);
    assert_eq!(stored.size, 9);
    assert_eq!(stored.sha256, first.sha256());
    assert_eq!(stored.key_id, key.public_key().id().to_string());
    assert_eq!(stored.uploaded_by, "cli:test");
    assert_eq!(stored.signature.len(), 64);
    // The stored manifest and signature still verify (what an offer sends).
    let keys = [rampart_core::ota::TrustedKey::new(
        *key.public_key().bytes(),
    )];
    let sig: [u8; 64] = stored.signature.clone().try_into().expect("64 bytes");
    let signed =
        rampart_core::ota::verify_manifest(&stored.manifest, &sig, &keys).expect("verifies");
    assert_eq!(signed.manifest().version.as_str(), "1.0.0");

    // The same version again is refused, even with another image.
    let dup = store
        .add_firmware(upload(&key, "1.0.0", 2, b"image two"), &cli())
        .await;
    assert!(
        matches!(dup, Err(StoreError::FirmwareExists { id, .. }) if id == stored.id),
        "{dup:?}"
    );
    let second = store
        .add_firmware(upload(&key, "1.1.0", 2, b"image two"), &cli())
        .await
        .expect("upload");
    let list = store.list_firmware().await.expect("list");
    assert_eq!(
        list.iter().map(|f| f.version.as_str()).collect::<Vec<_>>(),
        ["1.1.0", "1.0.0"]
    );
    assert_eq!(store.firmware(second.id).await.expect("get"), Some(second));
    assert_eq!(store.firmware(9999).await.expect("get"), None);

    // After the key is removed, its bundles are refused.
    store
        .remove_firmware_keys(&["release".into()], &cli())
        .await
        .expect("remove");
    let late = store
        .add_firmware(upload(&key, "1.2.0", 2, b"image three"), &cli())
        .await;
    assert!(matches!(late, Err(StoreError::FirmwareKeyNotTrusted(_))));

    let audit = store.audit_log(0, 100).await.expect("audit");
    let uploads: Vec<_> = audit
        .iter()
        .filter(|r| r.action == "firmware.upload")
        .collect();
    assert_eq!(uploads.len(), 2);
    assert_eq!(uploads[0].subject.as_deref(), Some("sensor@1.0.0"));
    assert_eq!(uploads[0].detail["key_name"], "release");
    assert!(store.verify_audit().await.expect("verify").ok);
}

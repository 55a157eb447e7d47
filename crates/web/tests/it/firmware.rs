//! The firmware API and page: uploads verified against the trusted keys,
//! refused with the reason and audited, stored content-addressed.

use rampart_ota::{SignRequest, SigningKey};
use rampart_store::{Actor, FirmwareStore, NewFirmwareKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::{Server, config};
use crate::console::{Req, Session};

fn bundle(key: &SigningKey, version: &str, image: &[u8]) -> Vec<u8> {
    rampart_ota::sign(
        image,
        key,
        &SignRequest {
            device_type: "rampart-sim",
            version,
            security_version: 3,
            created_at_ms: 1_764_000_000_000,
        },
    )
    .expect("signs")
}

async fn trust(s: &Server, name: &str, key: &SigningKey) {
    s.store
        .add_firmware_key(
            NewFirmwareKey {
                name: name.into(),
                public_key: *key.public_key().bytes(),
            },
            &Actor::system(),
        )
        .await
        .expect("trust");
}

async fn upload(s: &Server, session: &Session, body: Vec<u8>, ty: &str) -> (u16, Value) {
    let r = s
        .browser
        .post(format!("https://{}/api/v1/firmware", s.addr))
        .header(
            "cookie",
            format!("__Host-rampart_session={}", session.cookie),
        )
        .header("x-csrf-token", &session.csrf)
        .header("content-type", ty)
        .body(body)
        .send()
        .await
        .expect("HTTPS request");
    let status = r.status().as_u16();
    let bytes = r.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body)
}

const OCTETS: &str = "application/octet-stream";

#[tokio::test]
async fn an_admin_uploads_a_signed_bundle_and_everyone_reads_it() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let key = SigningKey::generate();
    trust(&s, "release-2026", &key).await;
    let image = vec![0x5a; 100_000];
    let (status, f) = upload(&s, &owner, bundle(&key, "1.4.0", &image), OCTETS).await;
    assert_eq!(status, 201, "{f}");
    let sha = hex::encode(Sha256::digest(&image));
    assert_eq!(f["version"], "1.4.0");
    assert_eq!(f["deviceType"], "rampart-sim");
    assert_eq!(f["securityVersion"], 3);
    assert_eq!(f["size"], 100_000);
    assert_eq!(f["sha256"], sha.as_str());
    assert_eq!(f["keyName"], "release-2026");
    assert_eq!(f["uploadedBy"], "owner");
    // Stored content-addressed: the image, not the bundle.
    assert_eq!(
        std::fs::read(s.images.join(&sha)).expect("stored image"),
        image
    );

    let viewer = s.user(&owner, "vera", "viewer").await;
    let r = Req::get("/api/v1/firmware").session(&viewer).send(&s).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["firmware"][0]["id"], f["id"]);
    let id = f["id"].as_u64().expect("id");
    let r = Req::get(&format!("/api/v1/firmware/{id}"))
        .session(&viewer)
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["signature"].as_str().map(str::len), Some(128));
    assert!(!r.body["manifest"].as_str().unwrap_or_default().is_empty());
    let r = Req::get("/api/v1/firmware/999")
        .session(&viewer)
        .send(&s)
        .await;
    assert_eq!((r.status, r.code()), (404, "firmware_not_found"));
    let r = Req::get("/api/v1/firmware/keys")
        .session(&viewer)
        .send(&s)
        .await;
    assert_eq!(r.body["keys"][0]["name"], "release-2026");

    // Viewers may not upload.
    let (status, body) = upload(&s, &viewer, bundle(&key, "1.5.0", b"x"), OCTETS).await;
    assert_eq!(status, 403, "{body}");

    // The page: the list for everyone, the form for admins.
    let page = Req::get("/firmware").session(&owner).send(&s).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("firmware-upload"));
    assert!(page.text.contains("release-2026"));
    assert!(page.text.contains("1.4.0"));
    assert!(page.text.contains("97.7 KiB"));
    let page = Req::get("/firmware").session(&viewer).send(&s).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("1.4.0"));
    assert!(!page.text.contains("firmware-upload"));

    let actions = s.audit_actions().await;
    assert!(
        actions.iter().any(|a| a == "firmware.upload"),
        "{actions:?}"
    );
}

#[tokio::test]
async fn bad_bundles_are_refused_with_the_reason_and_audited() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let key = SigningKey::generate();
    trust(&s, "release", &key).await;
    let stranger = SigningKey::generate();

    let good = bundle(&key, "2.0.0", b"the image bytes");
    let mut bad_signature = good.clone();
    let sig_end = good.len() - b"the image bytes".len() - 1;
    bad_signature[sig_end] ^= 1;
    let mut tampered = good.clone();
    *tampered.last_mut().expect("image") ^= 1;
    let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (
            bundle(&stranger, "2.0.0", b"img"),
            OCTETS,
            422,
            "untrusted_key",
        ),
        (bad_signature, OCTETS, 422, "bad_signature"),
        (tampered, OCTETS, 422, "hash_mismatch"),
        (good[..good.len() - 3].to_vec(), OCTETS, 422, "truncated"),
        (b"not a bundle at all".to_vec(), OCTETS, 422, "not_a_bundle"),
        (
            bundle(&key, "2.0.1", &vec![1; 257 * 1024]),
            OCTETS,
            422,
            "oversized",
        ),
        (
            bundle(&key, "2.0.2", &vec![1; 300 * 1024]),
            OCTETS,
            413,
            "payload_too_large",
        ),
        (
            good.clone(),
            "application/json",
            415,
            "unsupported_media_type",
        ),
    ];
    for (body, ty, status, code) in cases {
        let (got, reply) = upload(&s, &owner, body, ty).await;
        assert_eq!(
            (got, reply["error"]["code"].as_str().unwrap_or_default()),
            (status, code),
            "{reply}"
        );
    }
    assert!(s.store.list_firmware().await.expect("list").is_empty());
    assert_eq!(
        std::fs::read_dir(&s.images).map(|d| d.count()).unwrap_or(0),
        0,
        "nothing stored"
    );
    let (status, _) = upload(&s, &owner, good.clone(), OCTETS).await;
    assert_eq!(status, 201);
    let (status, reply) = upload(&s, &owner, good, OCTETS).await;
    assert_eq!(
        (status, reply["error"]["code"].as_str()),
        (409, Some("firmware_exists"))
    );

    let refused = s
        .audit_actions()
        .await
        .into_iter()
        .filter(|a| a == "firmware.upload-refused")
        .count();
    // Every verification refusal and the duplicate (not the transport
    // refusals 413 and 415, which never reached verification).
    assert_eq!(refused, 7);
}

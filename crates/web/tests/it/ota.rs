//! Firmware downloads (docs/ota.md §4) over real TLS with real device
//! certificates issued by the test CA through enrollment: the token, the
//! client certificate, ranges and validators, every refusal.

use rampart_ota::download::{DownloadGrant, mint};
use rampart_ota::{SignRequest, SigningKey};
use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;
use rampart_store::{Actor, Store};
use rampart_web::WebMetrics;
use sha2::{Digest, Sha256};

use crate::common::{Server, client_with_certificate, config};

/// A device enrolled with its own key: a client presenting its certificate.
struct Device {
    id: String,
    serial: String,
    cert: String,
    key: String,
    client: reqwest::Client,
}

async fn enrolled(s: &Server, id: &str) -> Device {
    let token = s.token(1, None, None).await;
    let (key, csr) = rampart_test_support::https::p256_csr(id);
    let r = s
        .post_enroll(Some(&token), rampart_test_support::https::enroll_body(&csr))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let cert = r.body["chain"].as_str().expect("chain");
    Device {
        id: id.to_owned(),
        serial: r.body["serial"].as_str().expect("serial").to_owned(),
        client: client_with_certificate(&s.pki.chain_pem(), cert, &key),
        cert: cert.to_owned(),
        key,
    }
}

/// A signed image of `len` bytes stored as `rampart firmware upload` does;
/// returns the image and its SHA-256.
fn stored_image(s: &Server, len: usize) -> (Vec<u8>, String) {
    let image: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let key = SigningKey::generate();
    let bundle = rampart_ota::sign(
        &image,
        &key,
        &SignRequest {
            device_type: "rampart-sim",
            version: "1.2.0",
            security_version: 1,
            created_at_ms: 0,
        },
    )
    .expect("signs");
    let verified =
        rampart_ota::verify(bundle, &[key.public_key()], 1 << 20, None).expect("verifies");
    rampart_ota::store_image(&s.images, &verified).expect("stores");
    let sha = hex::encode(Sha256::digest(&image));
    (image, sha)
}

fn now_ms(s: &Server) -> u64 {
    u64::try_from(s.clock.now().unix_timestamp_nanos() / 1_000_000).expect("after 1970")
}

fn token(s: &Server, device: &str, sha: &str, valid_ms: i64) -> String {
    let expires = now_ms(s).saturating_add_signed(valid_ms);
    mint(
        &s.tokens,
        &DownloadGrant {
            device_id: device.to_owned(),
            sha256: sha.to_owned(),
            expires_at_ms: expires,
        },
    )
    .expect("mints")
}

fn url(s: &Server, sha: &str, token: &str) -> String {
    format!("https://{}/ota/v1/images/{sha}?t={token}", s.addr)
}

async fn get(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("HTTPS request");
    let status = r.status().as_u16();
    let h = r.headers().clone();
    let body = r.bytes().await.expect("body").to_vec();
    (status, h, body)
}

fn code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn header<'a>(h: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_device_downloads_its_image_whole_and_resumes_with_a_range() {
    let s = Server::start(config()).await;
    let d = enrolled(&s, "ota-dev-1").await;
    // Several body chunks.
    let (image, sha) = stored_image(&s, 200_000);
    let t = token(&s, &d.id, &sha, 3_600_000);
    let etag = format!("\"{sha}\"");

    let (status, h, body) = get(&d.client, &url(&s, &sha, &t), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, image);
    assert_eq!(header(&h, "etag"), etag);
    assert_eq!(header(&h, "accept-ranges"), "bytes");
    assert_eq!(header(&h, "content-type"), "application/octet-stream");
    assert_eq!(header(&h, "content-length"), "200000");

    // Resume after 123_457 bytes, as a device does after a reconnect.
    let (status, h, body) = get(
        &d.client,
        &url(&s, &sha, &t),
        &[("range", "bytes=123457-"), ("if-range", &etag)],
    )
    .await;
    assert_eq!(status, 206);
    assert_eq!(body, &image[123_457..]);
    assert_eq!(header(&h, "content-range"), "bytes 123457-199999/200000");
    assert_eq!(header(&h, "content-length"), "76543");

    let (status, h, body) = get(&d.client, &url(&s, &sha, &t), &[("range", "bytes=10-19")]).await;
    assert_eq!((status, &body[..]), (206, &image[10..20]));
    assert_eq!(header(&h, "content-range"), "bytes 10-19/200000");
    let (status, _, body) = get(&d.client, &url(&s, &sha, &t), &[("range", "bytes=-16")]).await;
    assert_eq!((status, &body[..]), (206, &image[200_000 - 16..]));

    let (status, h, body) = get(&d.client, &url(&s, &sha, &t), &[("range", "bytes=200000-")]).await;
    assert_eq!(status, 416);
    assert_eq!(code(&body), "range_not_satisfiable");
    assert_eq!(header(&h, "content-range"), "bytes */200000");

    // The image changed under the device (another ETag): the whole image.
    let (status, _, body) = get(
        &d.client,
        &url(&s, &sha, &t),
        &[("range", "bytes=5-"), ("if-range", "\"something-else\"")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, image);

    let (status, h, body) = get(&d.client, &url(&s, &sha, &t), &[("if-none-match", &etag)]).await;
    assert_eq!(status, 304);
    assert!(body.is_empty());
    assert_eq!(header(&h, "etag"), etag);

    let m = s.state.metrics();
    assert_eq!(WebMetrics::get(&m.ota_downloads), 5);
    assert_eq!(WebMetrics::get(&m.ota_range_requests), 3);
    assert_eq!(WebMetrics::get(&m.ota_not_modified), 1);
    assert_eq!(
        WebMetrics::get(&m.ota_bytes),
        200_000 + 76_543 + 10 + 16 + 200_000
    );
    assert_eq!(m.ota_refused("range_not_satisfiable"), 1);
}

#[tokio::test]
async fn every_refusal_has_its_status_and_code_and_is_counted() {
    let s = Server::start(config()).await;
    let a = enrolled(&s, "ota-dev-a").await;
    let b = enrolled(&s, "ota-dev-b").await;
    let (_image, sha) = stored_image(&s, 1000);
    let (_other, other_sha) = stored_image(&s, 500);
    let for_a = token(&s, &a.id, &sha, 3_600_000);

    let expect = async |client: &reqwest::Client, sha: &str, t: &str, status: u16, want: &str| {
        let (got, _, body) = get(client, &url(&s, sha, t), &[]).await;
        assert_eq!((got, code(&body).as_str()), (status, want), "{want}");
    };

    // Another device's token.
    expect(&b.client, &sha, &for_a, 403, "token_device_mismatch").await;
    // No client certificate at all (a browser, curl without --cert).
    expect(&s.client, &sha, &for_a, 401, "client_certificate_required").await;
    // Expired.
    let expired = token(&s, &a.id, &sha, -1);
    expect(&a.client, &sha, &expired, 401, "token_expired").await;
    // Forged: made with another key.
    let forged = mint(
        &rampart_ota::download::TokenKey::derive(&[6; 32]),
        &DownloadGrant {
            device_id: a.id.clone(),
            sha256: sha.clone(),
            expires_at_ms: now_ms(&s) + 3_600_000,
        },
    )
    .expect("mints");
    expect(&a.client, &sha, &forged, 401, "token_invalid").await;
    expect(&a.client, &sha, "not-a-token", 401, "token_malformed").await;
    let (got, _, body) = get(
        &a.client,
        &format!("https://{}/ota/v1/images/{sha}", s.addr),
        &[],
    )
    .await;
    assert_eq!((got, code(&body).as_str()), (401, "token_required"));
    // A token for another image than the one asked for.
    expect(&a.client, &other_sha, &for_a, 403, "token_image_mismatch").await;
    // A token for an image the server does not have.
    let missing = hex::encode(Sha256::digest(b"never uploaded"));
    let t = token(&s, &a.id, &missing, 3_600_000);
    expect(&a.client, &missing, &t, 404, "image_not_found").await;

    // Disabled, then revoked: the registry says no, even though the
    // certificate still verifies against the CA (the CRL of this test
    // server is not reloaded).
    let id = DeviceId::parse(&a.id).expect("id");
    s.store
        .set_device_disabled(&id, true, &Actor::system())
        .await
        .expect("disable");
    expect(&a.client, &sha, &for_a, 403, "device_disabled").await;
    s.store
        .set_device_disabled(&id, false, &Actor::system())
        .await
        .expect("enable");
    let (ok, _, _) = get(&a.client, &url(&s, &sha, &for_a), &[]).await;
    assert_eq!(ok, 200);
    s.store
        .revoke_device(&id, RevocationReason::KeyCompromise, &Actor::system())
        .await
        .expect("revoke");
    expect(&a.client, &sha, &for_a, 403, "certificate_revoked").await;

    let m = s.state.metrics();
    for reason in [
        "token_device_mismatch",
        "client_certificate_required",
        "token_expired",
        "token_invalid",
        "token_malformed",
        "token_required",
        "token_image_mismatch",
        "image_not_found",
        "device_disabled",
        "certificate_revoked",
    ] {
        assert_eq!(m.ota_refused(reason), 1, "{reason}");
    }
    let mut text = rampart_web::metrics::MetricsText::new();
    m.write_prometheus(&mut text);
    let text = text.finish();
    assert!(
        text.contains("rampart_ota_download_refused_total{reason=\"token_expired\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn browsers_without_a_certificate_still_get_pages() {
    let s = Server::start(config()).await;
    let r = rampart_test_support::https::get(&s.client, s.addr, "/healthz").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_certificate_on_a_reloaded_crl_fails_the_handshake() {
    let s = Server::start(config()).await;
    let d = enrolled(&s, "ota-crl").await;
    let other = enrolled(&s, "ota-ok").await;
    let (_image, sha) = stored_image(&s, 100);
    let (ok, _, _) = get(
        &d.client,
        &url(&s, &sha, &token(&s, &d.id, &sha, 60_000)),
        &[],
    )
    .await;
    assert_eq!(ok, 200);
    let crl = s
        .pki
        .build_crl(
            &[rampart_pki::RevokedSerial {
                serial: d.serial.clone(),
                reason: RevocationReason::KeyCompromise,
                revoked_at: time::OffsetDateTime::now_utc(),
            }],
            1,
            std::time::Duration::from_secs(3600),
        )
        .expect("CRL");
    s.state
        .tls()
        .reload_with_client_trust(
            &crate::common::read(&s.pki.server_cert_path()),
            &crate::common::read(&s.pki.server_key_path()),
            rampart_web::ClientTrust {
                ca_pem: s.pki.client_ca_pem(),
                crl_pem: Some(crl),
            },
        )
        .expect("reload");
    // A new connection (a fresh client) handshakes against the new CRL.
    let fresh = client_with_certificate(&s.pki.chain_pem(), &d.cert, &d.key);
    let answer = fresh
        .get(url(&s, &sha, &token(&s, &d.id, &sha, 60_000)))
        .send()
        .await;
    let refused = match answer {
        Err(_) => true,
        // TLS 1.3: the server's alert may only surface when reading.
        Ok(r) => r.bytes().await.is_err(),
    };
    assert!(
        refused,
        "a revoked certificate must not complete the handshake"
    );
    assert!(
        WebMetrics::get(&s.state.metrics().handshake_failures) >= 1,
        "the failed handshake is counted"
    );
    // Other devices and browsers are unaffected.
    let (ok, _, _) = get(
        &other.client,
        &url(&s, &sha, &token(&s, &other.id, &sha, 60_000)),
        &[],
    )
    .await;
    assert_eq!(ok, 200);
    let r = rampart_test_support::https::get(&s.client, s.addr, "/healthz").await;
    assert_eq!(r.status, 200);
}

//! The downloader against the real download route (`rampart_web`,
//! `GET /ota/v1/images/{sha256}?t=TOKEN`) served in-process over TLS by a
//! test CA, with a device enrolled through the simulator's own enrollment
//! client and presenting its own certificate, streaming into the device's
//! slot files through the core: a whole download, a connection cut and
//! resumed with `Range`/`If-Range`, a `200` to a range request (start
//! over), and refusals that must not be retried.

use std::sync::Arc;
use std::time::Duration;

use rampart_core::backoff::{BackoffConfig, Jitter};
use rampart_core::ota::{TrustedKey, parse_head};
use rampart_ota::download::{DownloadGrant, TokenKey, mint};
use rampart_ota::{SignRequest, SigningKey};
use rampart_pki::{Pki, PkiOptions};
use rampart_proto::DeviceId;
use rampart_provisioning::enrollment::{self, TokenSpec};
use rampart_store::sqlite::SqliteOptions;
use rampart_store::{Actor, AuditKey, SqliteStore};
use rampart_web::auth::{Clock, SealingKey};
use rampart_web::{AppState, AuthBackend, ClientTrust, OtaBackend, ServerTls, WebConfig};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::enroll::Enroller;
use crate::firmware::{Firmware, FirmwareBuild};
use crate::statedir::StateDir;
use crate::stats::{Count, DeviceStats};
use crate::tls::{self, ServerTrust};

const IMAGE_LEN: usize = 300_000;

struct Route {
    addr: std::net::SocketAddr,
    tokens: TokenKey,
    store: SqliteStore,
    trust: ServerTrust,
    stop: CancellationToken,
    dir: tempfile::TempDir,
}

impl Drop for Route {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn route() -> Route {
    let dir = tempfile::tempdir().expect("tmp");
    let (pki, _) = Pki::init(&dir.path().join("pki"), &PkiOptions::default()).expect("CA");
    let pki = Arc::new(pki);
    let store = SqliteStore::open(
        &dir.path().join("rampart.db"),
        AuditKey::new([7; 32], Some(dir.path().join("audit.head"))),
        SqliteOptions::default(),
    )
    .expect("store");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).expect("read");
    let tls = ServerTls::with_client_trust(
        &read(pki.server_cert_path()),
        &read(pki.server_key_path()),
        false,
        ClientTrust {
            ca_pem: pki.client_ca_pem(),
            crl_pem: None,
        },
    )
    .expect("TLS");
    let auth = AuthBackend {
        users: Arc::new(store.clone()),
        notifications: Arc::new(store.clone()),
        sealing_key: SealingKey::new([9; 32]),
        clock: Clock::manual(time::OffsetDateTime::now_utc()),
    };
    let tokens = TokenKey::derive(&[5; 32]);
    let config = WebConfig {
        enroll_failure_burst: 0,
        ..WebConfig::default()
    };
    let state = AppState::new(Arc::new(store.clone()), Arc::clone(&pki), config, tls, auth)
        .with_ota(OtaBackend {
            firmware: Arc::new(store.clone()),
            images: dir.path().join("firmware"),
            tokens: tokens.clone(),
            max_image_size: 1 << 20,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(rampart_web::run(listener, state, stop.clone()));
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki.chain_pem()).expect("write CA");
    Route {
        addr,
        tokens,
        store,
        trust: ServerTrust::from_file(&ca).expect("trust"),
        stop,
        dir,
    }
}

/// A device enrolled with the simulator's own key, CSR and enrollment
/// client; returns its download client.
async fn device(r: &Route, id: &str) -> reqwest::Client {
    let created = enrollment::create_token(
        &r.store,
        &TokenSpec {
            uses: 1,
            valid_for: Duration::from_secs(3600),
            id_prefix: None,
            owner: None,
        },
        &Actor::system(),
    )
    .await
    .expect("token");
    let id = DeviceId::parse(id).expect("id");
    let key = tls::new_key(&id).expect("key");
    let enroller = Enroller::new(
        &r.trust,
        &r.addr.to_string(),
        created.secret.as_str(),
        Duration::from_secs(10),
    )
    .expect("enroller");
    let enrolled = enroller
        .enroll(&tls::csr(&id, &key).expect("csr"))
        .await
        .expect("enrolled");
    let chain = tls::join_chain(&enrolled.certificate, &enrolled.chain);
    let config = r
        .trust
        .device_config(&id, &chain, &key)
        .expect("device TLS");
    client((*config).clone(), Duration::from_secs(10)).expect("client")
}

/// A signed bundle of a 300 kB image, stored as `rampart firmware upload` does.
fn image(r: &Route, key: &SigningKey) -> Vec<u8> {
    let image: Vec<u8> = (0..IMAGE_LEN).map(|i| (i * 13 % 251) as u8).collect();
    let bundle = rampart_ota::sign(
        &image,
        key,
        &SignRequest {
            device_type: "rampart-sim",
            version: "1.1.0",
            security_version: 1,
            created_at_ms: 0,
        },
    )
    .expect("signs");
    let verified =
        rampart_ota::verify(bundle.clone(), &[key.public_key()], 1 << 20, None).expect("verifies");
    rampart_ota::store_image(&r.dir.path().join("firmware"), &verified).expect("stores");
    bundle
}

fn request(r: &Route, device: &str, sha: &str, cut_after: Option<u64>) -> DownloadRequest {
    let token = mint(
        &r.tokens,
        &DownloadGrant {
            device_id: device.to_owned(),
            sha256: sha.to_owned(),
            expires_at_ms: u64::try_from(
                time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000,
            )
            .expect("after 1970")
                + 3_600_000,
        },
    )
    .expect("token");
    DownloadRequest {
        url: format!("https://{}/ota/v1/images/{sha}?t={token}", r.addr),
        size: IMAGE_LEN as u64,
        sha256_hex: sha.to_owned(),
        cut_after,
        backoff: BackoffConfig {
            initial_ms: 10,
            max_ms: 50,
            jitter: Jitter::Decorrelated,
            stable_after_ms: 1_000,
        },
    }
}

/// The device's firmware in a fresh state dir, trusting `key`.
fn firmware(key: &SigningKey) -> (tempfile::TempDir, Firmware) {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = StateDir::open(tmp.path(), Some("dl")).expect("state dir");
    let dir = state.device(&state.device_id(1).expect("id")).expect("dir");
    let build = FirmwareBuild {
        device_type: "rampart-sim".into(),
        factory_version: "1.0.0".into(),
        trusted_keys: vec![TrustedKey::new(*key.public_key().bytes())].into(),
        max_boot_attempts: 3,
        confirm_timeout_ms: 60_000,
        slot_size: 1 << 20,
    };
    let (fw, _) = Firmware::boot(build, dir, 0).expect("boot");
    (tmp, fw)
}

/// Runs a download into `fw` as the device task does; returns the events
/// other than chunks, in order, and the result of `finish`.
async fn drive(
    mut download: Download,
    fw: &mut Firmware,
    bundle: &[u8],
) -> (Vec<String>, Option<Result<(), String>>) {
    let head = parse_head(bundle).expect("head");
    let mut seen = Vec::new();
    let deadline = rampart_test_support::wait_limit();
    loop {
        let event = tokio::time::timeout(deadline, download.next())
            .await
            .expect("the download moves on");
        match event {
            Some(DownloadEvent::Chunk(b)) => {
                fw.write(&b).expect("chunk fits the announced image");
            }
            Some(DownloadEvent::Restart) => {
                seen.push("restart".to_owned());
                assert!(fw.abort());
                fw.offer(head.manifest_bytes, &head.signature)
                    .expect("offered again");
            }
            Some(DownloadEvent::Done) => {
                seen.push("done".to_owned());
                let finished = fw.finish().map(|_| ()).map_err(|e| e.code().to_owned());
                return (seen, Some(finished));
            }
            Some(DownloadEvent::Failed(reason)) => {
                seen.push(format!("failed: {reason}"));
                return (seen, None);
            }
            None => {
                seen.push("gone".to_owned());
                return (seen, None);
            }
        }
    }
}

#[tokio::test]
async fn a_cut_download_resumes_with_a_range_and_the_image_verifies() {
    let r = route().await;
    let client = device(&r, "dl-0001").await;
    let key = SigningKey::generate();
    let bundle = image(&r, &key);
    let head = parse_head(&bundle).expect("head");
    let sha = hex::encode(head.manifest.image_sha256);
    let image_bytes = bundle[bundle.len() - IMAGE_LEN..].to_vec();

    // Whole, without a cut.
    let (_t1, mut fw) = firmware(&key);
    fw.offer(head.manifest_bytes, &head.signature)
        .expect("offer");
    let stats = Arc::new(DeviceStats::default());
    let d = Download::start(
        client.clone(),
        request(&r, "dl-0001", &sha, None),
        Arc::clone(&stats),
        "dl-0001".into(),
    );
    let (seen, finished) = drive(d, &mut fw, &bundle).await;
    assert_eq!(seen, ["done"]);
    assert_eq!(finished, Some(Ok(())));
    assert_eq!(stats.get(Count::DownloadResume), 0);

    // Cut once after 123 457 bytes: resumed with Range + If-Range (206),
    // and the hash carried on over the resumed bytes.
    let (_t2, mut fw) = firmware(&key);
    fw.offer(head.manifest_bytes, &head.signature)
        .expect("offer");
    let stats = Arc::new(DeviceStats::default());
    let d = Download::start(
        client.clone(),
        request(&r, "dl-0001", &sha, Some(123_457)),
        Arc::clone(&stats),
        "dl-0001".into(),
    );
    let (seen, finished) = drive(d, &mut fw, &bundle).await;
    assert_eq!(seen, ["done"]);
    assert_eq!(finished, Some(Ok(())), "the resumed image verifies");
    assert_eq!(stats.get(Count::FlakyDrop), 1);
    assert_eq!(stats.get(Count::DownloadResume), 1);
    let slot = std::fs::read(fw.flash().path(fw.state().active())).expect("slot");
    assert_eq!(slot, image_bytes);
}

#[tokio::test]
async fn a_whole_image_answered_to_a_range_request_starts_over() {
    let r = route().await;
    let client = device(&r, "dl-0002").await;
    let key = SigningKey::generate();
    let bundle = image(&r, &key);
    let head = parse_head(&bundle).expect("head");
    let sha = hex::encode(head.manifest.image_sha256);
    let (_t, mut fw) = firmware(&key);
    fw.offer(head.manifest_bytes, &head.signature)
        .expect("offer");
    // The validator the device sends no longer matches (as if the image
    // behind the URL changed): the route answers the whole image (200).
    let mut req = request(&r, "dl-0002", &sha, Some(50_000));
    req.sha256_hex = "0".repeat(64);
    let stats = Arc::new(DeviceStats::default());
    let d = Download::start(client, req, Arc::clone(&stats), "dl-0002".into());
    let (seen, finished) = drive(d, &mut fw, &bundle).await;
    assert_eq!(seen, ["restart", "done"]);
    assert_eq!(finished, Some(Ok(())));
    assert_eq!(stats.get(Count::DownloadResume), 0);
}

#[tokio::test]
async fn refusals_fail_at_once_and_unknown_images_too() {
    let r = route().await;
    let client = device(&r, "dl-0003").await;
    let _other = device(&r, "dl-0004").await;
    let key = SigningKey::generate();
    let bundle = image(&r, &key);
    let head = parse_head(&bundle).expect("head");
    let sha = hex::encode(head.manifest.image_sha256);
    let (_t, mut fw) = firmware(&key);

    // A token minted for another device.
    fw.offer(head.manifest_bytes, &head.signature)
        .expect("offer");
    let stats = Arc::new(DeviceStats::default());
    let d = Download::start(
        client.clone(),
        request(&r, "dl-0004", &sha, None),
        Arc::clone(&stats),
        "dl-0003".into(),
    );
    let (seen, finished) = drive(d, &mut fw, &bundle).await;
    assert_eq!(seen, ["failed: HTTP 403 token_device_mismatch"]);
    assert_eq!(finished, None);

    // An image the server does not have.
    let missing = "ab".repeat(32);
    let d = Download::start(
        client,
        request(&r, "dl-0003", &missing, None),
        Arc::clone(&stats),
        "dl-0003".into(),
    );
    let (seen, _) = drive(d, &mut fw, &bundle).await;
    assert_eq!(seen.len(), 1);
    assert!(seen[0].starts_with("failed: HTTP 404"), "{seen:?}");
    assert_eq!(stats.get(Count::DownloadResume), 0);
}

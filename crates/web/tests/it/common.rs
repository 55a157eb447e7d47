//! A running web server on its own CA and store.

use std::net::SocketAddr;
use std::sync::Arc;

use rampart_ota::download::TokenKey;
use rampart_pki::{Pki, PkiOptions};
use rampart_provisioning::enrollment::{self, TokenSpec};
use rampart_store::sqlite::SqliteOptions;
use rampart_store::{Actor, AuditKey, SqliteStore, Store};
use rampart_web::auth::{Clock, SealingKey};
use rampart_web::{
    AppState, AuthBackend, CampaignBackend, CampaignDefaults, ClientTrust, CrlPublisher,
    DeviceBackend, OtaBackend, ServerTls, WebConfig,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The server under test.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    pub store: SqliteStore,
    pub pki: Arc<Pki>,
    pub client: reqwest::Client,
    /// A client that shows redirects instead of following them.
    pub browser: reqwest::Client,
    pub clock: Clock,
    /// Feeds the live hub as the pipeline's fan-out does.
    pub fanout: rampart_ingest::Fanout,
    /// CRL publications asked for by revocations.
    pub crl: Arc<CountingCrl>,
    /// Where firmware images are stored (content-addressed).
    pub images: std::path::PathBuf,
    /// The key download tokens are made with.
    pub tokens: TokenKey,
    /// Feeds the notification streams as `serve`'s change follower does.
    pub changes: tokio::sync::broadcast::Sender<rampart_store::Change>,
    stop: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

/// Limits for tests: no failure limit unless a test sets one.
pub fn config() -> WebConfig {
    WebConfig {
        enroll_failure_burst: 0,
        ..WebConfig::default()
    }
}

impl Server {
    pub async fn start(config: WebConfig) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pki, _) = Pki::init(&dir.path().join("pki"), &PkiOptions::default()).expect("CA");
        let pki = Arc::new(pki);
        let store = SqliteStore::open(
            &dir.path().join("rampart.db"),
            AuditKey::new([7; 32], Some(dir.path().join("audit.head"))),
            SqliteOptions::default(),
        )
        .expect("store");
        let tls = ServerTls::with_client_trust(
            &read(&pki.server_cert_path()),
            &read(&pki.server_key_path()),
            config.tls12,
            ClientTrust {
                ca_pem: pki.client_ca_pem(),
                crl_pem: None,
            },
        )
        .expect("TLS");
        let clock = Clock::manual(time::OffsetDateTime::now_utc());
        let auth = AuthBackend {
            users: Arc::new(store.clone()),
            notifications: Arc::new(store.clone()),
            sealing_key: SealingKey::new([9; 32]),
            clock: clock.clone(),
        };
        let images = dir.path().join("firmware");
        let tokens = TokenKey::derive(&[5; 32]);
        let fanout = rampart_ingest::Fanout::new(256);
        let crl = Arc::new(CountingCrl::default());
        let live_stop = CancellationToken::new();
        let live = rampart_web::live::LiveHub::spawn(
            fanout.subscribe(),
            rampart_web::live::LiveOptions::default(),
            live_stop.clone(),
        );
        let (changes, _) = tokio::sync::broadcast::channel(64);
        let inbox = rampart_web::inbox::InboxHub::spawn(
            changes.subscribe(),
            8,
            std::time::Duration::from_secs(15),
            live_stop.clone(),
        );
        let state = AppState::new(Arc::new(store.clone()), Arc::clone(&pki), config, tls, auth)
            .with_inbox(inbox)
            .with_devices(DeviceBackend {
                telemetry: Arc::new(store.clone()),
                live,
                crl: crl.clone(),
                claim_policy: rampart_provisioning::claim::ClaimPolicy::default(),
            })
            .with_ota(OtaBackend {
                firmware: Arc::new(store.clone()),
                images: images.clone(),
                tokens: tokens.clone(),
                max_image_size: 256 * 1024,
            })
            .with_campaigns(CampaignBackend {
                campaigns: Arc::new(store.clone()),
                defaults: CampaignDefaults::default(),
            })
            .with_alerts(Arc::new(store.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = live_stop;
        let task = tokio::spawn(rampart_web::run(listener, state.clone(), stop.clone()));
        Self {
            addr,
            client: rampart_test_support::https::client_trusting(&pki.chain_pem()),
            browser: rampart_test_support::https::client_trusting_without_redirects(
                &pki.chain_pem(),
            ),
            state,
            store,
            pki,
            clock,
            fanout,
            crl,
            images,
            tokens,
            changes,
            stop,
            task: Some(task),
            _dir: dir,
        }
    }

    /// A token for `uses` devices valid for an hour, in clear.
    pub async fn token(&self, uses: u32, prefix: Option<&str>, owner: Option<&str>) -> String {
        let created = enrollment::create_token(
            &self.store,
            &TokenSpec {
                uses,
                valid_for: std::time::Duration::from_secs(3600),
                id_prefix: prefix.map(str::to_owned),
                owner: owner.map(str::to_owned),
            },
            &Actor::system(),
        )
        .await
        .expect("create token");
        created.secret.as_str().to_owned()
    }

    /// Enrolls a fresh key for `id` with `token`.
    pub async fn enroll(
        &self,
        token: Option<&str>,
        id: &str,
    ) -> rampart_test_support::https::ApiReply {
        let (_key, csr) = rampart_test_support::https::p256_csr(id);
        self.post_enroll(token, rampart_test_support::https::enroll_body(&csr))
            .await
    }

    /// POSTs a raw body to the enrollment endpoint.
    pub async fn post_enroll(
        &self,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> rampart_test_support::https::ApiReply {
        rampart_test_support::https::post(&self.client, self.addr, "/api/v1/enroll", token, body)
            .await
    }

    /// Audit actions in order.
    pub async fn audit_actions(&self) -> Vec<String> {
        self.store
            .audit_log(0, 1000)
            .await
            .expect("audit")
            .into_iter()
            .map(|r| r.action)
            .collect()
    }

    /// Stops the server and waits for `run` to return.
    pub async fn stop(&mut self) -> std::io::Result<()> {
        self.stop.cancel();
        let task = self.task.take().expect("running");
        tokio::time::timeout(rampart_test_support::wait_limit(), task)
            .await
            .expect("run returns after shutdown")
            .expect("join")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An HTTPS client that trusts the test CA and presents `cert_pem` (a
/// device certificate) with `key_pem`, as a device downloading firmware.
pub fn client_with_certificate(ca_pem: &str, cert_pem: &str, key_pem: &str) -> reqwest::Client {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client certificate");
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(rampart_test_support::wait_limit())
        .build()
        .expect("HTTPS client")
}

pub fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).expect("read")
}

/// Counts CRL publications (the real one signs with the CA; tests only
/// need to know the revocation asked for it).
#[derive(Debug, Default)]
pub struct CountingCrl(pub std::sync::atomic::AtomicUsize);

#[async_trait::async_trait]
impl CrlPublisher for CountingCrl {
    async fn publish_crl(&self) -> Result<(), String> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

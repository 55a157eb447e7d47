//! Real HTTPS clients for the web part, and device keys and CSRs made the
//! way a device makes them (a fresh P-256 key that never leaves it).

use std::sync::Arc;

/// An HTTPS client that trusts only the CA certificates in `ca_pem`
/// (Rampart's trust bundle): no public roots, no insecure mode.
pub fn client_trusting(ca_pem: &str) -> reqwest::Client {
    builder_trusting(ca_pem).build().expect("HTTPS client")
}

/// [`client_trusting`] that does not follow redirects, as tests of the
/// console need to see a `303` and its `Location`.
pub fn client_trusting_without_redirects(ca_pem: &str) -> reqwest::Client {
    builder_trusting(ca_pem)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("HTTPS client")
}

fn builder_trusting(ca_pem: &str) -> reqwest::ClientBuilder {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.expect("CA bundle is PEM"))
            .expect("usable CA certificate");
    }
    assert!(!roots.is_empty(), "the CA bundle holds no certificate");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(crate::wait_limit())
}

/// A fresh P-256 key and a CSR for it with CN = `cn`: `(key PEM, CSR PEM)`.
pub fn p256_csr(cn: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let csr = params.serialize_request(&key).expect("CSR");
    (key.serialize_pem(), csr.pem().expect("CSR PEM"))
}

/// An answer of the JSON API: status, `Retry-After` if any, parsed body.
#[derive(Debug)]
pub struct ApiReply {
    /// The HTTP status code.
    pub status: u16,
    /// The `Retry-After` header, in seconds.
    pub retry_after: Option<u64>,
    /// The body as JSON (`Null` if it was not JSON).
    pub body: serde_json::Value,
}

impl ApiReply {
    /// `error.code` of an error body, or "".
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

/// POSTs `body` to `https://{addr}{path}` with `Authorization: Bearer
/// {token}` when a token is given.
pub async fn post(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> ApiReply {
    let mut request = client
        .post(format!("https://{addr}{path}"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    reply(request.send().await.expect("HTTPS request")).await
}

/// GETs `https://{addr}{path}`.
pub async fn get(client: &reqwest::Client, addr: std::net::SocketAddr, path: &str) -> ApiReply {
    reply(
        client
            .get(format!("https://{addr}{path}"))
            .send()
            .await
            .expect("HTTPS request"),
    )
    .await
}

async fn reply(response: reqwest::Response) -> ApiReply {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bytes = response.bytes().await.expect("response body");
    ApiReply {
        status,
        retry_after,
        body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    }
}

/// The enrollment request body for `csr_pem`.
pub fn enroll_body(csr_pem: &str) -> String {
    serde_json::json!({ "csr": csr_pem }).to_string()
}

//! Enrollment over HTTPS (`POST /api/v1/enroll`, AWS "fleet provisioning
//! by claim"): the device sends its CSR with the fleet's enrollment token
//! and receives its certificate and claim code.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use crate::tls::{ServerTrust, TlsError};

/// Largest enrollment answer read (certificates and a QR payload).
const MAX_ANSWER: usize = 64 * 1024;

/// What the server answered with a certificate (201).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrolled {
    /// The device id the certificate names.
    pub device_id: String,
    /// The device certificate (PEM).
    pub certificate: String,
    /// Intermediate certificates to present with it (PEM).
    #[serde(default)]
    pub chain: String,
    /// The CA chain devices trust (PEM).
    #[serde(default)]
    pub ca_chain: String,
    /// SHA-256 fingerprint of the certificate (hex).
    pub fingerprint: String,
    /// Serial of the certificate (hex).
    pub serial: String,
    /// Expiry, Unix ms.
    pub not_after: u64,
    /// The claim code for the label.
    #[serde(default)]
    pub claim_code: Option<String>,
    /// The label's QR payload.
    #[serde(default)]
    pub qr_payload: Option<String>,
}

/// Why enrollment did not produce a certificate.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The server answered with an error (`{"error":{"code","message"}}`).
    #[error("enrollment refused ({status} {code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error code, e.g. `token_expired`, `token_used_up`.
        code: String,
        /// The server's sentence.
        message: String,
        /// `Retry-After` of a 429, if given.
        retry_after: Option<Duration>,
    },
    /// No answer: server unreachable, TLS refused (wrong `--ca`), timeout.
    #[error("enrollment request to {url} failed: {reason}")]
    Transport {
        /// The enrollment URL.
        url: String,
        /// What failed, with its causes.
        reason: String,
    },
    /// The answer is not what the enrollment API promises.
    #[error("malformed enrollment answer ({status}): {reason}")]
    Malformed {
        /// HTTP status.
        status: u16,
        /// What is wrong.
        reason: String,
    },
}

impl EnrollError {
    /// A short machine-readable reason for counters and logs.
    pub fn reason(&self) -> &str {
        match self {
            EnrollError::Refused { code, .. } => code,
            EnrollError::Transport { .. } => "unreachable",
            EnrollError::Malformed { .. } => "malformed_answer",
        }
    }

    /// How long the server asked to wait (429 `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            EnrollError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, serde::Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// The enrollment client shared by the fleet.
#[derive(Debug, Clone)]
pub struct Enroller {
    client: reqwest::Client,
    url: String,
    authorization: HeaderValue,
}

impl Enroller {
    /// A client for `https://{http_addr}/api/v1/enroll` that trusts only
    /// `trust` and sends `token`.
    pub fn new(
        trust: &ServerTrust,
        http_addr: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<Self, EnrollSetupError> {
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| EnrollSetupError::Token)?;
        authorization.set_sensitive(true);
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(trust.https_config()?)
            .https_only(true)
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| EnrollSetupError::Client(error_chain(&e)))?;
        Ok(Self {
            client,
            url: format!("https://{http_addr}/api/v1/enroll"),
            authorization,
        })
    }

    /// The enrollment URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `csr_pem` and returns the certificate.
    pub async fn enroll(&self, csr_pem: &str) -> Result<Enrolled, EnrollError> {
        let body = serde_json::json!({ "csr": csr_pem }).to_string();
        let transport = |e: reqwest::Error| {
            let mut reason = error_chain(&e.without_url());
            if reason.contains("invalid peer certificate") {
                reason.push_str(
                    "; the server is not vouched for by --ca (is it the output of `rampart ca export` for this server?)",
                );
            }
            EnrollError::Transport {
                url: self.url.clone(),
                reason,
            }
        };
        let mut response = self
            .client
            .post(&self.url)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > MAX_ANSWER {
                return Err(EnrollError::Malformed {
                    status: status.as_u16(),
                    reason: format!("answer larger than {MAX_ANSWER} bytes"),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        interpret(status, retry_after, &bytes)
    }
}

/// Reads an enrollment answer.
fn interpret(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<Enrolled, EnrollError> {
    let malformed = |reason: String| EnrollError::Malformed {
        status: status.as_u16(),
        reason,
    };
    if status == StatusCode::CREATED || status == StatusCode::OK {
        return serde_json::from_slice(body).map_err(|e| malformed(e.to_string()));
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => Err(EnrollError::Refused {
            status: status.as_u16(),
            code: error.code,
            message: error.message,
            retry_after,
        }),
        Err(_) => Err(EnrollError::Refused {
            status: status.as_u16(),
            code: format!("http_{}", status.as_u16()),
            message: String::from_utf8_lossy(body.get(..200).unwrap_or(body)).into_owned(),
            retry_after,
        }),
    }
}

/// Why the enrollment client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EnrollSetupError {
    /// The token holds characters an HTTP header cannot carry.
    #[error("the enrollment token contains characters not allowed in an HTTP header")]
    Token,
    /// The TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
}

/// An error and its causes, one sentence (reqwest hides the TLS reason in
/// the source chain).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s = s.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = source.and_then(|x| x.source());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_answer_is_read() {
        let body = br#"{"deviceId":"d-1","certificate":"C","chain":"I","caChain":"R",
            "fingerprint":"ff","serial":"01","notAfter":1700000000000,
            "claimCode":"cc","qrPayload":"{}"}"#;
        let e = interpret(StatusCode::CREATED, None, body).expect("enrolled");
        assert_eq!(e.device_id, "d-1");
        assert_eq!(e.not_after, 1_700_000_000_000);
        assert_eq!(e.claim_code.as_deref(), Some("cc"));
    }

    #[test]
    fn error_answers_keep_code_message_and_retry_after() {
        let body = br#"{"error":{"code":"rate_limited","message":"slow down"}}"#;
        let e = interpret(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(3)),
            body,
        )
        .expect_err("refused");
        assert_eq!(e.reason(), "rate_limited");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(e.to_string().contains("429"), "{e}");
        let e = interpret(StatusCode::FORBIDDEN, None, b"<html>").expect_err("refused");
        assert_eq!(e.reason(), "http_403");
        let e = interpret(StatusCode::CREATED, None, b"{}").expect_err("malformed");
        assert_eq!(e.reason(), "malformed_answer");
    }
}

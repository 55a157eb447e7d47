//! `POST /api/v1/enroll`: a device registers itself with an enrollment
//! token and its CSR (docs/cli.md "Enrollment API" has the contract).

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use rampart_provisioning::enrollment::{self, EnrollError, EnrollOutcome, EnrollRequest};
use rampart_provisioning::registration::Registration;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::state::{AppState, WebMetrics};

/// The request body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct EnrollBody {
    /// PEM PKCS#10; its CN is the requested device id.
    csr: String,
}

/// The 201 body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct Enrolled {
    device_id: String,
    certificate: String,
    chain: String,
    ca_chain: String,
    fingerprint: String,
    serial: String,
    /// Unix milliseconds.
    not_after: i64,
    claim_code: String,
    qr_payload: String,
}

impl From<Registration> for Enrolled {
    fn from(r: Registration) -> Self {
        Self {
            device_id: r.device.id.to_string(),
            not_after: (r.certificate.not_after.unix_timestamp_nanos() / 1_000_000) as i64,
            certificate: r.certificate.pem,
            chain: r.chain,
            ca_chain: r.ca_chain,
            fingerprint: r.certificate.fingerprint,
            serial: r.certificate.serial,
            claim_code: r.claim_code.as_str().to_owned(),
            qr_payload: r.qr_payload,
        }
    }
}

/// The status of each refusal.
fn status(e: &EnrollError) -> StatusCode {
    match e {
        EnrollError::TokenInvalid(_) | EnrollError::TokenExpired(_) => StatusCode::UNAUTHORIZED,
        EnrollError::TokenUsedUp(_) | EnrollError::IdPrefixMismatch(_) => StatusCode::FORBIDDEN,
        EnrollError::IdTaken(_) => StatusCode::CONFLICT,
        EnrollError::InvalidCsr(_) => StatusCode::BAD_REQUEST,
        EnrollError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The bearer token of `Authorization`, if the header is there. A header
/// of another scheme (or not text) is kept as an empty token, which fails
/// as malformed rather than as missing.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?;
    let text = value.to_str().unwrap_or_default().trim();
    let (scheme, token) = text.split_once(' ').unwrap_or((text, ""));
    Some(if scheme.eq_ignore_ascii_case("bearer") {
        token.trim()
    } else {
        ""
    })
}

/// The handler; see the module documentation.
#[utoipa::path(post, path = "/api/v1/enroll", tag = "enrollment", request_body = EnrollBody, responses((status = 201, description = "The device is registered: certificate chain, CA bundle, claim code", body = Enrolled), (status = 400, description = "Invalid CSR or body", body = crate::error::ErrorBody), (status = 401, description = "Token invalid", body = crate::error::ErrorBody), (status = 409, description = "Id taken", body = crate::error::ErrorBody), (status = 429, description = "Too many failures", body = crate::error::ErrorBody)))]
pub(super) async fn enroll(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Enrolled>), ApiError> {
    let ip = client.ip();
    if let Err(wait) = state.enroll_failures().check(ip, Instant::now()) {
        WebMetrics::inc(&state.metrics().rate_limited);
        tracing::info!(client_addr = %client, "enrollment refused: too many failures from this address");
        return Err(ApiError::rate_limited(wait));
    }
    let source = ip.to_string();
    let result = match parse(&state, body) {
        Ok(body) => {
            let request = EnrollRequest {
                token: bearer(&headers),
                csr_pem: &body.csr,
                source: &source,
                repeat_window: state.config().enroll_repeat_window,
            };
            enrollment::enroll(state.store(), state.pki(), request)
                .await
                .map_err(|e| ApiError::new(status(&e), e.code(), e.to_string()))
        }
        Err(refused) => {
            tracing::info!(client_addr = %client, reason = refused.code, "enrollment refused: {}", refused.message);
            if let Err(e) = enrollment::audit_refused_request(
                state.store(),
                &source,
                refused.code,
                &refused.message,
            )
            .await
            {
                tracing::error!(error = %e, "cannot audit a refused enrollment");
            }
            Err(refused)
        }
    };
    match result {
        Ok(EnrollOutcome {
            registration,
            repeated,
        }) => {
            // A repeat created nothing: 200 with the same certificate.
            let status = if repeated {
                WebMetrics::inc(&state.metrics().enroll_repeated);
                StatusCode::OK
            } else {
                WebMetrics::inc(&state.metrics().enrolled);
                StatusCode::CREATED
            };
            Ok((status, Json(registration.into())))
        }
        Err(e) => {
            if !e.status.is_server_error() {
                WebMetrics::inc(&state.metrics().enroll_refused);
                state.enroll_failures().charge(ip, Instant::now());
            }
            Err(e)
        }
    }
}

/// The body as JSON of the expected shape; unknown fields are refused so
/// that a client's typo is an error, not silently ignored.
fn parse(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<EnrollBody, ApiError> {
    let bytes =
        body.map_err(|r| ApiError::from_body_rejection(&r, state.config().max_body_bytes))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body must be {{\"csr\": \"<PEM>\"}}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn bearer_tokens_are_taken_from_the_authorization_header() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        for (value, token) in [
            ("Bearer rmp_enr_x", "rmp_enr_x"),
            ("bearer  rmp_enr_x ", "rmp_enr_x"),
            ("Basic dXNlcjpwYXNz", ""),
            ("Bearer", ""),
        ] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer(&h), Some(token), "{value}");
        }
    }
}

//! `GET /ota/v1/images/{sha256}?t=TOKEN`: firmware images for devices
//! (docs/ota.md §4). The caller proves who it is twice: the download token
//! from its offer, and the TLS client certificate that must be its
//! *current registered* one. The decision about ranges and validators is
//! `crate::download`; this module does the checks and streams the file.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::net::SocketAddr;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rampart_pki::IdentityKind;
use rampart_proto::DeviceId;
use rampart_store::{CertificateStatus, DeviceState};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::download::{self, Conditions, Plan};
use crate::error::ApiError;
use crate::state::{AppState, WebMetrics};
use crate::tls::PeerCertificate;

/// Bytes read from the image file per body chunk.
const CHUNK: u64 = 64 * 1024;

/// A refused download: what the device is told, and who it was (when the
/// certificate said so) for the log.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    device: Option<String>,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            device: None,
        }
    }

    fn of(mut self, device: &str) -> Self {
        self.device = Some(device.to_owned());
        self
    }
}

/// `GET /ota/v1/images/{sha256}?t=TOKEN`.
pub(super) async fn image(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    peer: Option<Extension<PeerCertificate>>,
    Path(sha256): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    match serve(&state, peer.map(|Extension(p)| p), &sha256, query, &headers).await {
        Ok(response) => response,
        Err(r) => {
            state.metrics().ota_refusal(r.code);
            tracing::warn!(
                client_addr = %client,
                device_id = r.device.as_deref().unwrap_or(""),
                reason = r.code,
                status = r.status.as_u16(),
                "firmware download refused"
            );
            ApiError::new(r.status, r.code, r.message).into_response()
        }
    }
}

async fn serve(
    state: &AppState,
    peer: Option<PeerCertificate>,
    sha256: &str,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    let ota = state
        .ota()
        .map_err(|e| Refusal::new(e.status, e.code, e.message))?;
    let Some(peer) = peer else {
        return Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "client_certificate_required",
            "present the device's TLS client certificate to download firmware",
        ));
    };
    let token = query
        .ok()
        .and_then(|Query(q)| q.get("t").cloned())
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::UNAUTHORIZED,
                "token_required",
                "the download URL carries no token (t=); use the URL of the offer",
            )
        })?;
    let now_ms =
        u64::try_from(state.clock().now().unix_timestamp_nanos() / 1_000_000).unwrap_or_default();
    let grant = rampart_ota::download::check(&ota.tokens, &token, now_ms).map_err(|e| {
        Refusal::new(
            StatusCode::UNAUTHORIZED,
            e.code(),
            format!("{e}; wait for a fresh offer"),
        )
    })?;
    let device = registered_device(state, &peer).await?;
    if grant.device_id != device.as_str() {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "token_device_mismatch",
            "this download token was issued to another device",
        )
        .of(device.as_str()));
    }
    if grant.sha256 != sha256 {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "token_image_mismatch",
            "this download token opens another image",
        )
        .of(device.as_str()));
    }
    let not_found = || {
        Refusal::new(
            StatusCode::NOT_FOUND,
            "image_not_found",
            "no image with this SHA-256 is stored",
        )
        .of(device.as_str())
    };
    if !download::is_sha256_hex(sha256) {
        return Err(not_found());
    }
    let path = rampart_ota::images::image_path(&ota.images, sha256);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
        Err(e) => return Err(io_failure(&path, &e).of(device.as_str())),
    };
    let size = file
        .metadata()
        .await
        .map_err(|e| io_failure(&path, &e).of(device.as_str()))?
        .len();
    let etag = download::etag(sha256);
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let plan = download::plan(
        size,
        &etag,
        Conditions {
            range: text(header::RANGE),
            if_range: text(header::IF_RANGE),
            if_none_match: text(header::IF_NONE_MATCH),
        },
    );
    let metrics = state.metrics();
    let (status, start, end) = match plan {
        Plan::NotModified => {
            WebMetrics::inc(&metrics.ota_not_modified);
            let mut r = StatusCode::NOT_MODIFIED.into_response();
            set_validators(r.headers_mut(), &etag);
            return Ok(r);
        }
        Plan::Unsatisfiable => {
            let mut r = Refusal::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the image has {size} bytes; the range asked for none of them"),
            )
            .of(device.as_str());
            // Counted and logged like the other refusals, but the answer
            // must carry `Content-Range: bytes */SIZE` (RFC 9110 §15.5.17).
            metrics.ota_refusal(r.code);
            tracing::info!(device_id = %device, reason = r.code, size, "firmware download range not satisfiable");
            let mut response =
                ApiError::new(r.status, r.code, std::mem::take(&mut r.message)).into_response();
            if let Ok(v) = HeaderValue::from_str(&download::unsatisfied_range(size)) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            set_validators(response.headers_mut(), &etag);
            return Ok(response);
        }
        Plan::Full => (StatusCode::OK, 0, size.checked_sub(1)),
        Plan::Partial { start, end } => {
            WebMetrics::inc(&metrics.ota_range_requests);
            (StatusCode::PARTIAL_CONTENT, start, Some(end))
        }
    };
    let length = end.map_or(0, |e| e + 1 - start);
    if start > 0 {
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| io_failure(&path, &e).of(device.as_str()))?;
    }
    WebMetrics::inc(&metrics.ota_downloads);
    tracing::info!(device_id = %device, sha256, start, length, size, "serving firmware image");
    let body = Body::from_stream(image_stream(file, length, state.clone()));
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    set_validators(h, &etag);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let (StatusCode::PARTIAL_CONTENT, Some(end)) = (status, end)
        && let Ok(v) = HeaderValue::from_str(&download::content_range(start, end, size))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(response)
}

fn set_validators(h: &mut HeaderMap, etag: &str) {
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
}

fn io_failure(path: &std::path::Path, e: &std::io::Error) -> Refusal {
    tracing::error!(path = %path.display(), error = %e, "cannot read a firmware image");
    Refusal::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "image_unreadable",
        "the image cannot be read on the server; an operator must check the data directory",
    )
}

/// `length` bytes of `file` from its current position, in chunks, counted
/// as they go out. The file is never read whole into memory.
fn image_stream(
    file: tokio::fs::File,
    length: u64,
    state: AppState,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(
        (file, length, state),
        |(mut file, left, state)| async move {
            if left == 0 {
                return None;
            }
            let want = usize::try_from(left.min(CHUNK)).unwrap_or(64 * 1024);
            let mut buf = vec![0u8; want];
            match file.read(&mut buf).await {
                Ok(0) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the image file is shorter than it was",
                    )),
                    (file, 0, state),
                )),
                Ok(n) => {
                    buf.truncate(n);
                    let n = n as u64;
                    WebMetrics::add(&state.metrics().ota_bytes, n);
                    Some((Ok(Bytes::from(buf)), (file, left.saturating_sub(n), state)))
                }
                Err(e) => Some((Err(e), (file, 0, state))),
            }
        },
    )
}

/// The device whose *current registered* certificate `peer` is, allowed to
/// connect (neither disabled nor revoked). rustls has checked the chain
/// and the CRL; this adds the registry, as the broker does at CONNECT.
async fn registered_device(state: &AppState, peer: &PeerCertificate) -> Result<DeviceId, Refusal> {
    let unregistered = |why: &str| {
        Refusal::new(
            StatusCode::FORBIDDEN,
            "certificate_not_registered",
            format!("the client certificate is not a registered device certificate: {why}"),
        )
    };
    let summary = rampart_pki::parse_certificate_der(peer.0.as_ref())
        .map_err(|e| unregistered(&e.to_string()))?;
    let cn = summary.cn.as_deref().unwrap_or_default();
    let id = DeviceId::parse(cn).map_err(|_| unregistered("its CN is not a device id"))?;
    let record = state
        .store()
        .certificate(&summary.serial)
        .await
        .map_err(|e| registry_failure(&e))?
        .ok_or_else(|| unregistered("unknown serial").of(id.as_str()))?;
    if record.identity != id || record.fingerprint != summary.fingerprint {
        return Err(unregistered("the serial belongs to another certificate").of(id.as_str()));
    }
    if record.kind != IdentityKind::Device {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "not_a_device",
            "service identities do not download firmware",
        )
        .of(id.as_str()));
    }
    match record.status {
        CertificateStatus::Current => {}
        CertificateStatus::Revoked => {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "certificate_revoked",
                "this certificate is revoked",
            )
            .of(id.as_str()));
        }
        CertificateStatus::Superseded | CertificateStatus::Pending => {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "certificate_not_current",
                "this is not the device's current certificate; connect over MQTT with it first",
            )
            .of(id.as_str()));
        }
    }
    let device = state
        .store()
        .device(&id)
        .await
        .map_err(|e| registry_failure(&e))?;
    match device.map(|d| d.state) {
        Some(s) if s.may_connect() => Ok(id),
        Some(DeviceState::Disabled) => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "device_disabled",
            "this device is disabled",
        )
        .of(id.as_str())),
        Some(_) => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "device_revoked",
            "this device is revoked",
        )
        .of(id.as_str())),
        None => Err(unregistered("the device is deleted").of(id.as_str())),
    }
}

fn registry_failure(e: &rampart_store::StoreError) -> Refusal {
    tracing::error!(error = %e, "cannot read the registry for a firmware download");
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "registry_unavailable",
        "the registry cannot be read; retry later",
    )
}

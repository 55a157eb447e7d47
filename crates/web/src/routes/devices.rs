//! The JSON API of devices and claims: list, detail, telemetry (JSON and
//! CSV), presence, live events (SSE), disable/enable/revoke, claims.
//! Authorization is the route table's; the work is in `crate::devices`.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rampart_pki::RevocationReason;
use serde::Deserialize;
use serde_json::json;

use super::account::{Caller, principal};
use super::{json_body, origin_of};
use crate::devices::{self as dev, ClaimBody, DeviceOp, DeviceView};
use crate::error::ApiError;
use crate::live::LiveError;
use crate::state::AppState;

type ApiResult = Result<Response, ApiError>;

fn params(
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(p)| p).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            format!("the query string could not be read: {}", e.body_text()),
        )
    })
}

/// Refuses query keys outside `allowed`.
fn only(params: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "unknown_parameter",
            format!("unknown parameter '{k}'; accepted: {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// `GET /api/v1/devices`: a page of devices with the total.
#[utoipa::path(get, path = "/api/v1/devices", tag = "devices",
    params(("q" = Option<String>, Query, description = "Text the id contains (or starts with, see docs/api.md)"),
        ("state" = Option<String>, Query, description = "unbound, bound, disabled or revoked"),
        ("online" = Option<bool>, Query, description = "Only devices online (true) or offline (false)"),
        ("owner" = Option<String>, Query, description = "Owner, e.g. user:ann"),
        ("certExpiringDays" = Option<u32>, Query, description = "Certificate expires within this many days"),
        ("firmware" = Option<String>, Query, description = "Firmware version the device last reported (`fw` in state/up)"),
        ("sort" = Option<String>, Query, description = "id, lastSeen, created or certExpiry"),
        ("order" = Option<String>, Query, description = "asc or desc"),
        ("limit" = Option<u32>, Query, description = "1 to 500, default 50"),
        ("offset" = Option<u32>, Query, description = "Devices to skip")),
    responses((status = 200, description = "`{\"devices\": [...], \"total\", \"limit\", \"offset\"}`", body = crate::routes::schemas::DeviceListBody),
        (status = 400, description = "Unknown or invalid parameter", body = crate::error::ErrorBody)))]
pub(super) async fn list(
    State(state): State<AppState>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let query = dev::list_query(&params(q)?, state.clock().now())?;
    let page = state
        .store()
        .query_devices(&query)
        .await
        .map_err(dev::device_store_error)?;
    Ok(Json(json!({
        "devices": page.devices.iter().map(DeviceView::from).collect::<Vec<_>>(),
        "total": page.total,
        "offset": page.offset,
        "limit": page.limit,
    }))
    .into_response())
}

/// `GET /api/v1/devices/{id}`.
#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices", params(("id" = String, Path, description = "The device id")),
    responses((status = 200, description = "The device, its certificate, reported state, counters and last rejected payloads", body = crate::devices::DeviceDetail),
        (status = 404, description = "No such device", body = crate::error::ErrorBody)))]
pub(super) async fn show(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = dev::device_id(&id)?;
    Ok(Json(dev::detail(&state, &id).await?).into_response())
}

/// `GET /api/v1/devices/{id}/telemetry?metric=&from=&to=&buckets=`.
#[utoipa::path(get, path = "/api/v1/devices/{id}/telemetry", tag = "devices", params(("id" = String, Path, description = "The device id")),
    responses((status = 200, description = "Buckets `{start, min, max, avg, count, last}` per metric for `metric`, `from`, `to`, `buckets`", body = crate::routes::schemas::TelemetryBody),
        (status = 400, description = "Invalid time range or parameter", body = crate::error::ErrorBody), (status = 404, description = "No such device", body = crate::error::ErrorBody)))]
pub(super) async fn telemetry(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let id = dev::device_id(&id)?;
    let p = params(q)?;
    only(&p, &["metric", "from", "to", "buckets"])?;
    dev::existing(&state, &id).await?;
    let range = dev::range(
        p.get("from").map(String::as_str),
        p.get("to").map(String::as_str),
        p.get("buckets").map(String::as_str),
        dev::ms(state.clock().now()),
    )?;
    let metric = p.get("metric").map_or("temperature", String::as_str);
    let series = dev::series(&state, &id, metric, range).await?;
    Ok(Json(json!({
        "device": id,
        "metric": metric,
        "fromMs": range.from_ms,
        "toMs": range.to_ms,
        "resolution": series.resolution,
        "bucketMs": series.bucket_ms,
        "buckets": series.buckets,
    }))
    .into_response())
}

/// `GET /api/v1/devices/{id}/telemetry.csv?from=&to=`: the raw points.
#[utoipa::path(get, path = "/api/v1/devices/{id}/telemetry.csv", tag = "devices", params(("id" = String, Path, description = "The device id")),
    responses((status = 200, description = "The same buckets as CSV (text/csv)", body = String, content_type = "text/csv"),
        (status = 404, description = "No such device", body = crate::error::ErrorBody)))]
pub(super) async fn telemetry_csv(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let id = dev::device_id(&id)?;
    let p = params(q)?;
    only(&p, &["from", "to"])?;
    dev::existing(&state, &id).await?;
    let range = dev::range(
        p.get("from").map(String::as_str),
        p.get("to").map(String::as_str),
        None,
        dev::ms(state.clock().now()),
    )?;
    let body = dev::csv(&state, &id, range.from_ms, range.to_ms).await?;
    let mut r = ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{id}-telemetry.csv\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

/// `GET /api/v1/devices/{id}/presence`: newest first.
#[utoipa::path(get, path = "/api/v1/devices/{id}/presence", tag = "devices", params(("id" = String, Path, description = "The device id")),
    responses((status = 200, description = "Connect and disconnect history with reasons", body = crate::routes::schemas::PresenceBody),
        (status = 404, description = "No such device", body = crate::error::ErrorBody)))]
pub(super) async fn presence(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = dev::device_id(&id)?;
    dev::existing(&state, &id).await?;
    let events = dev::presence(&state, &id).await?;
    Ok(Json(json!({
        "device": id,
        "events": events.iter().map(|e| json!({
            "atMs": e.at_ms, "online": e.online, "reason": e.reason, "addr": e.addr,
        })).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `GET /api/v1/devices/{id}/events`: committed readings and presence as
/// Server-Sent Events (see `crate::live`).
#[utoipa::path(get, path = "/api/v1/devices/{id}/events", tag = "devices", params(("id" = String, Path, description = "The device id")),
    responses((status = 200, description = "Server-sent events `reading`, `presence` and `lagged` (text/event-stream)", body = String, content_type = "text/event-stream"),
        (status = 404, description = "No such device", body = crate::error::ErrorBody), (status = 503, description = "Too many open streams", body = crate::error::ErrorBody)))]
pub(super) async fn events(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let id = dev::device_id(&id)?;
    dev::existing(&state, &id).await?;
    let backend = state.devices()?;
    match backend.live.subscribe(&id) {
        Ok(sub) => Ok(crate::live::sse_response(sub, backend.live.keep_alive())),
        Err(e @ LiveError::TooManyStreams(_)) => Err(ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                e.to_string(),
            )
        }),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    reason: Option<RevocationReason>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

/// An optional JSON body: empty is the default.
fn optional_body<T: serde::de::DeserializeOwned + Default>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    match body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(T::default()),
        other => json_body(state, other),
    }
}

async fn change(
    state: AppState,
    caller: Caller,
    client: SocketAddr,
    headers: &HeaderMap,
    id: &str,
    op: DeviceOp,
) -> ApiResult {
    let p = principal(caller)?;
    let id = dev::device_id(id)?;
    let d = dev::act(&state, &p, &origin_of(client, headers), &id, op).await?;
    Ok(Json(DeviceView::from(&d)).into_response())
}

/// `POST /api/v1/devices/{id}/disable`.
#[utoipa::path(post, path = "/api/v1/devices/{id}/disable", tag = "devices", params(("id" = String, Path, description = "The device id")),
    responses((status = 200, description = "The device, disabled; its session is cut", body = crate::devices::DeviceView),
        (status = 404, description = "No such device", body = crate::error::ErrorBody), (status = 409, description = "Not in a state that can be disabled", body = crate::error::ErrorBody)))]
pub(super) async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let EmptyBody {} = optional_body(&state, body)?;
    change(state, caller, client, &headers, &id, DeviceOp::Disable).await
}

/// `POST /api/v1/devices/{id}/enable`.
#[utoipa::path(post, path = "/api/v1/devices/{id}/enable", tag = "devices", params(("id" = String, Path, description = "The device id")),
    responses((status = 200, description = "The device, enabled again", body = crate::devices::DeviceView),
        (status = 404, description = "No such device", body = crate::error::ErrorBody), (status = 409, description = "Revoked devices cannot be enabled", body = crate::error::ErrorBody)))]
pub(super) async fn enable(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let EmptyBody {} = optional_body(&state, body)?;
    change(state, caller, client, &headers, &id, DeviceOp::Enable).await
}

/// `POST /api/v1/devices/{id}/revoke` with `{"reason"}` (optional).
#[utoipa::path(post, path = "/api/v1/devices/{id}/revoke", tag = "devices", params(("id" = String, Path, description = "The device id")),
    responses((status = 200, description = "The device, revoked: its certificate is on the CRL and its session is cut", body = crate::devices::DeviceView),
        (status = 404, description = "No such device", body = crate::error::ErrorBody)))]
pub(super) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let b: RevokeBody = optional_body(&state, body)?;
    let reason = b.reason.unwrap_or(RevocationReason::Unspecified);
    change(
        state,
        caller,
        client,
        &headers,
        &id,
        DeviceOp::Revoke(reason),
    )
    .await
}

/// `POST /api/v1/claims`: starts a claim for the signed-in user.
#[utoipa::path(post, path = "/api/v1/claims", tag = "claims",
    responses((status = 201, description = "The claim, pending until the device confirms over MQTT", body = crate::devices::ClaimView),
        (status = 400, description = "Malformed QR payload or body", body = crate::error::ErrorBody),
        (status = 409, description = "already_claimed, not_claimable or device_offline", body = crate::error::ErrorBody),
        (status = 422, description = "wrong_code or fingerprint_mismatch", body = crate::error::ErrorBody)))]
pub(super) async fn claim_start(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let p = principal(caller)?;
    let b: ClaimBody = json_body(&state, body)?;
    let view = dev::start_claim(&state, &p, &origin_of(client, &headers), &b).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `GET /api/v1/claims/{id}`: pending, bound, expired, refused.
#[utoipa::path(get, path = "/api/v1/claims/{id}", tag = "claims",
    params(("id" = String, Path, description = "The claim id")),
    responses((status = 200, description = "pending, bound, expired or refused with the reason", body = crate::devices::ClaimView),
        (status = 404, description = "No such claim, or not yours", body = crate::error::ErrorBody)))]
pub(super) async fn claim_show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let p = principal(caller)?;
    let id: u64 = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "claim_not_found",
            format!("no claim number {id}"),
        )
    })?;
    Ok(Json(dev::claim_status(&state, &p, id).await?).into_response())
}

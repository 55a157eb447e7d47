//! What the console and the API do with devices and claims, shared by the
//! JSON routes (`routes::devices`) and the pages (`routes::console`):
//! parsing list and range parameters, reading a device's detail, acting on
//! it (disable, enable, revoke) with the signed-in user as the audited
//! actor, and starting and following claims.
//!
//! Handlers stay thin: they extract, call one of these, and render.

use std::collections::HashMap;

use axum::http::StatusCode;
use rampart_pki::RevocationReason;
use rampart_proto::telemetry::MetricName;
use rampart_proto::{ClaimCode, DeviceId};
use rampart_provisioning::claim::{self, ClaimError, ClaimRequest};
use rampart_store::fleet::MAX_PAGE;
use rampart_store::telemetry::{
    DeviceTelemetryStats, PresenceHistoryRecord, RejectedRecord, Series, SeriesQuery,
};
use rampart_store::{
    Actor, CertificateRecord, CertificateStatus, Claim, ClaimStatus, Device, DeviceQuery,
    DeviceSort, DeviceState, IdMatch, Owner, StoreError,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::auth::Principal;
use crate::auth::accounts::{self, Origin};
use crate::error::ApiError;
use crate::state::AppState;
use crate::timespec::{self, unix_ms};
use rampart_store::Role;

/// Devices per page when the caller does not say.
pub const DEFAULT_PAGE: u32 = 50;
/// Most buckets a chart query may ask for.
pub const MAX_BUCKETS: u32 = 2_000;
/// Most points in one CSV download.
pub const MAX_CSV_POINTS: usize = 200_000;
/// Rejected payloads shown with a device.
pub const RECENT_REJECTED: u32 = 10;
/// Presence events shown with a device.
pub const PRESENCE_EVENTS: u32 = 50;

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// A store error as the device routes report it.
pub fn device_store_error(e: StoreError) -> ApiError {
    match &e {
        StoreError::NotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "device_not_found", e.to_string())
        }
        StoreError::InvalidState { .. } => {
            ApiError::new(StatusCode::CONFLICT, "device_state", e.to_string())
        }
        StoreError::ClaimNotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "claim_not_found", e.to_string())
        }
        _ => accounts::store_error(e),
    }
}

/// A device id from a path, or 400 (ids are checked before any lookup,
/// so that `..` and friends never reach the store).
pub fn device_id(text: &str) -> Result<DeviceId, ApiError> {
    DeviceId::parse(text).map_err(|e| {
        bad(
            "invalid_device_id",
            format!("the device id is not valid: {e}"),
        )
    })
}

/// The list parameters: the query string keys the API and `/devices` accept.
pub const LIST_KEYS: &[&str] = &[
    "q",
    "state",
    "online",
    "owner",
    "certExpiringDays",
    "firmware",
    "sort",
    "order",
    "limit",
    "offset",
];

/// Parses the device list's query string (`params`); empty values are
/// left out (as an empty filter box sends them); unknown keys are refused.
pub fn list_query(
    params: &HashMap<String, String>,
    now: OffsetDateTime,
) -> Result<DeviceQuery, ApiError> {
    if let Some(k) = params.keys().find(|k| !LIST_KEYS.contains(&k.as_str())) {
        return Err(bad(
            "unknown_parameter",
            format!(
                "unknown parameter '{k}'; accepted: {}",
                LIST_KEYS.join(", ")
            ),
        ));
    }
    let get = |k: &str| params.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let mut q = DeviceQuery {
        limit: DEFAULT_PAGE,
        ..DeviceQuery::default()
    };
    if let Some(text) = get("q") {
        if text.len() > 128 {
            return Err(bad(
                "invalid_parameter",
                "q: the search text is longer than 128 characters",
            ));
        }
        q.id = Some(IdMatch::Contains(text.to_owned()));
    }
    if let Some(s) = get("state") {
        q.state = Some(
            s.parse::<DeviceState>()
                .map_err(|e| bad("invalid_parameter", format!("state: {e}")))?,
        );
    }
    if let Some(o) = get("online") {
        q.online = Some(match o {
            "true" | "yes" => true,
            "false" | "no" => false,
            _ => return Err(bad("invalid_parameter", "online: expected true or false")),
        });
    }
    if let Some(o) = get("owner") {
        q.owner = Some(
            o.parse::<Owner>()
                .map_err(|e| bad("invalid_parameter", format!("owner: {e}")))?,
        );
    }
    if let Some(d) = get("certExpiringDays") {
        let days: u16 = d.parse().map_err(|_| {
            bad(
                "invalid_parameter",
                "certExpiringDays: expected a number of days (0 to 3650)",
            )
        })?;
        if days > 3650 {
            return Err(bad("invalid_parameter", "certExpiringDays: at most 3650"));
        }
        q.cert_expires_before = Some(now + time::Duration::days(i64::from(days)));
    }
    if let Some(fw) = get("firmware") {
        if fw.len() > 64 {
            return Err(bad(
                "invalid_parameter",
                "firmware: a version is at most 64 characters",
            ));
        }
        q.firmware = Some(fw.to_owned());
    }
    if let Some(s) = get("sort") {
        q.sort = s
            .parse::<DeviceSort>()
            .map_err(|e| bad("invalid_parameter", format!("sort: {e}")))?;
    }
    if let Some(o) = get("order") {
        q.descending = match o {
            "asc" => false,
            "desc" => true,
            _ => return Err(bad("invalid_parameter", "order: expected asc or desc")),
        };
    }
    if let Some(l) = get("limit") {
        let limit: u32 = l
            .parse()
            .map_err(|_| bad("invalid_parameter", "limit: expected a number"))?;
        if limit == 0 || limit > MAX_PAGE {
            return Err(bad(
                "invalid_parameter",
                format!("limit: between 1 and {MAX_PAGE}"),
            ));
        }
        q.limit = limit;
    }
    if let Some(o) = get("offset") {
        q.offset = o
            .parse()
            .map_err(|_| bad("invalid_parameter", "offset: expected a number"))?;
    }
    Ok(q)
}

/// A certificate as the console shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateView {
    /// Serial, lowercase hex.
    pub serial: String,
    /// SHA-256 fingerprint, lowercase hex.
    pub fingerprint: String,
    /// Validity start.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub not_before: OffsetDateTime,
    /// Expiry.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub not_after: OffsetDateTime,
    /// `current`, `pending`, `superseded`, `revoked`.
    #[schema(value_type = String)]
    pub status: CertificateStatus,
}

impl From<&CertificateRecord> for CertificateView {
    fn from(c: &CertificateRecord) -> Self {
        Self {
            serial: c.serial.clone(),
            fingerprint: c.fingerprint.clone(),
            not_before: c.not_before,
            not_after: c.not_after,
            status: c.status,
        }
    }
}

/// A device in a list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceView {
    /// Its id.
    #[schema(value_type = String)]
    pub id: DeviceId,
    /// Lifecycle state: `unbound`, `bound`, `disabled` or `revoked`.
    #[schema(value_type = String)]
    pub state: DeviceState,
    /// `user:NAME` or `group:NAME` once claimed.
    pub owner: Option<String>,
    /// Connected now.
    pub online: bool,
    /// When the broker last heard from it.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen: Option<OffsetDateTime>,
    /// Registration time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Serial of its registered certificate.
    pub serial: String,
    /// That certificate's fingerprint.
    pub fingerprint: String,
    /// That certificate's expiry.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub cert_expires_at: OffsetDateTime,
}

impl From<&Device> for DeviceView {
    fn from(d: &Device) -> Self {
        Self {
            id: d.id.clone(),
            state: d.state,
            owner: d.owner.as_ref().map(Owner::to_string),
            online: d.online,
            last_seen: d.last_seen,
            created_at: d.created_at,
            serial: d.serial.clone(),
            fingerprint: d.fingerprint.clone(),
            cert_expires_at: d.not_after,
        }
    }
}

/// A rejected payload as the console shows it (never the bytes).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RejectedView {
    /// When, Unix ms.
    pub at_ms: i64,
    /// Topic category.
    pub category: String,
    /// Reason class.
    pub kind: String,
    /// Reason sentence.
    pub detail: String,
    /// Its length in bytes.
    pub payload_len: u64,
}

impl From<&RejectedRecord> for RejectedView {
    fn from(r: &RejectedRecord) -> Self {
        Self {
            at_ms: r.at_ms,
            category: r.category.clone(),
            kind: r.kind.clone(),
            detail: r.detail.clone(),
            payload_len: r.payload_len,
        }
    }
}

/// Everything the device page and `GET /api/v1/devices/{id}` show.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceDetail {
    /// The device.
    pub device: DeviceView,
    /// Its registered (or last revoked) certificate, when the registry has it.
    pub certificate: Option<CertificateView>,
    /// Its latest reported state document.
    #[schema(value_type = Option<Object>)]
    pub reported_state: Option<serde_json::Value>,
    /// When it was reported, Unix ms.
    pub reported_at_ms: Option<i64>,
    /// Ingest counters and metric names.
    #[schema(value_type = crate::routes::schemas::TelemetryStatsSchema)]
    pub telemetry: DeviceTelemetryStats,
    /// The newest rejected payloads, newest first.
    pub rejected: Vec<RejectedView>,
}

/// A device's detail, or 404.
pub async fn detail(state: &AppState, id: &DeviceId) -> Result<DeviceDetail, ApiError> {
    let backend = state.devices()?;
    let device = state
        .store()
        .device(id)
        .await
        .map_err(device_store_error)?
        .ok_or_else(|| device_store_error(StoreError::NotFound(id.clone())))?;
    let certs = state
        .store()
        .certificates_of(id)
        .await
        .map_err(device_store_error)?;
    let certificate = certs
        .iter()
        .find(|c| c.serial == device.serial)
        .or_else(|| {
            certs
                .iter()
                .find(|c| c.status == CertificateStatus::Current)
        })
        .map(CertificateView::from);
    let t = &backend.telemetry;
    let reported = t.reported_state(id).await.map_err(device_store_error)?;
    let telemetry = t.device_telemetry(id).await.map_err(device_store_error)?;
    let rejected = t
        .rejected(Some(id), RECENT_REJECTED)
        .await
        .map_err(device_store_error)?;
    Ok(DeviceDetail {
        device: DeviceView::from(&device),
        certificate,
        reported_at_ms: reported.as_ref().map(|(_, at)| *at),
        reported_state: reported.map(|(v, _)| v),
        telemetry,
        rejected: rejected.iter().map(RejectedView::from).collect(),
    })
}

/// The device, or 404 (for routes that only need to know it exists).
pub async fn existing(state: &AppState, id: &DeviceId) -> Result<Device, ApiError> {
    state
        .store()
        .device(id)
        .await
        .map_err(device_store_error)?
        .ok_or_else(|| device_store_error(StoreError::NotFound(id.clone())))
}

/// A time range with a bucket count, parsed from `from`, `to`, `buckets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Start, Unix ms.
    pub from_ms: i64,
    /// End (exclusive), Unix ms.
    pub to_ms: i64,
    /// Buckets across it.
    pub buckets: u32,
}

/// Parses a range (defaults: the last 24 hours in 240 buckets).
pub fn range(
    from: Option<&str>,
    to: Option<&str>,
    buckets: Option<&str>,
    now_ms: i64,
) -> Result<Range, ApiError> {
    let time = |name: &str, t: Option<&str>, default: i64| match t
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        None => Ok(default),
        Some(t) => {
            timespec::parse(t, now_ms).map_err(|e| bad("invalid_parameter", format!("{name}: {e}")))
        }
    };
    let from_ms = time("from", from, now_ms - 86_400_000)?;
    let to_ms = time("to", to, now_ms)?;
    if from_ms >= to_ms {
        return Err(bad("invalid_parameter", "from must be before to"));
    }
    let buckets = match buckets.map(str::trim).filter(|b| !b.is_empty()) {
        None => 240,
        Some(b) => b
            .parse::<u32>()
            .ok()
            .filter(|b| (1..=MAX_BUCKETS).contains(b))
            .ok_or_else(|| {
                bad(
                    "invalid_parameter",
                    format!("buckets: a number from 1 to {MAX_BUCKETS}"),
                )
            })?,
    };
    Ok(Range {
        from_ms,
        to_ms,
        buckets,
    })
}

/// One metric's series over `range`, from the coarsest rollup that fits.
pub async fn series(
    state: &AppState,
    id: &DeviceId,
    metric: &str,
    range: Range,
) -> Result<Series, ApiError> {
    let metric =
        MetricName::parse(metric).map_err(|e| bad("invalid_parameter", format!("metric: {e}")))?;
    state
        .devices()?
        .telemetry
        .query_series(&SeriesQuery {
            device: id.clone(),
            metric,
            from_ms: range.from_ms,
            to_ms: range.to_ms,
            buckets: range.buckets,
        })
        .await
        .map_err(device_store_error)
}

/// The device's stored points in `from_ms..to_ms` as CSV
/// (`time,metric,value,seq`), at most [`MAX_CSV_POINTS`] rows.
pub async fn csv(
    state: &AppState,
    id: &DeviceId,
    from_ms: i64,
    to_ms: i64,
) -> Result<String, ApiError> {
    let t = &state.devices()?.telemetry;
    let filter = rampart_store::telemetry::PointFilter {
        device: Some(id.clone()),
        from_ms: Some(from_ms),
        to_ms: Some(to_ms),
    };
    let mut out = String::from("time,metric,value,seq\n");
    let mut cursor = None;
    let mut rows = 0usize;
    loop {
        let (points, next) = t
            .export_points(&filter, cursor, 5_000)
            .await
            .map_err(device_store_error)?;
        for p in &points {
            let ts =
                rampart_ingest::export::format_ms(p.ts_ms).unwrap_or_else(|| p.ts_ms.to_string());
            // Metric names are [a-z0-9_.-]: nothing to quote.
            out.push_str(&format!("{ts},{},{},{}\n", p.metric, p.value, p.seq));
            rows += 1;
        }
        match next {
            Some(c) if rows < MAX_CSV_POINTS && !points.is_empty() => cursor = Some(c),
            _ => break,
        }
    }
    Ok(out)
}

/// The newest presence events, newest first.
pub async fn presence(
    state: &AppState,
    id: &DeviceId,
) -> Result<Vec<PresenceHistoryRecord>, ApiError> {
    state
        .devices()?
        .telemetry
        .presence_history(id, PRESENCE_EVENTS)
        .await
        .map_err(device_store_error)
}

/// What an operator or admin does to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceOp {
    /// Block it (reversible).
    Disable,
    /// Unblock it.
    Enable,
    /// Revoke its certificate (final).
    Revoke(RevocationReason),
}

/// Does `op` to `id` as `principal`: audited with the user as actor. A
/// revocation also publishes the CRL, as `rampart device revoke` does; the
/// running broker cuts the device's session from the change feed.
pub async fn act(
    state: &AppState,
    principal: &Principal,
    origin: &Origin,
    id: &DeviceId,
    op: DeviceOp,
) -> Result<Device, ApiError> {
    let actor = Actor {
        name: principal.name.clone(),
        source: origin.ip.clone(),
    };
    let store = state.store();
    let device = match op {
        DeviceOp::Disable => store.set_device_disabled(id, true, &actor).await,
        DeviceOp::Enable => store.set_device_disabled(id, false, &actor).await,
        DeviceOp::Revoke(reason) => store.revoke_device(id, reason, &actor).await,
    }
    .map_err(device_store_error)?;
    if let DeviceOp::Revoke(_) = op {
        let crl = &state.devices()?.crl;
        if let Err(e) = crl.publish_crl().await {
            tracing::error!(device_id = %id, error = %e, "revoked, but the CRL could not be published");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "crl_failed",
                format!(
                    "'{id}' is revoked in the registry (the broker refuses it), but the CRL could not be published: {e}"
                ),
            ));
        }
    }
    tracing::info!(device_id = %id, user = %principal.name, op = ?op, "device changed from the console");
    Ok(device)
}

/// The body of `POST /api/v1/claims`: a label's QR content as it is (the
/// JSON `{"deviceId","fingerprint","claimCode"}`), or the id and code
/// typed by hand, or `{"qr": "<the QR text>"}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimBody {
    /// The device id.
    #[serde(default)]
    pub device_id: Option<String>,
    /// The claim code.
    #[serde(default)]
    pub claim_code: Option<String>,
    /// The certificate fingerprint (from a QR code).
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// The QR text as scanned.
    #[serde(default)]
    pub qr: Option<String>,
}

/// Where a claim stands, for the page and `GET /api/v1/claims/{id}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimView {
    /// Its number.
    pub id: u64,
    /// The device.
    #[schema(value_type = String)]
    pub device: DeviceId,
    /// Who claims it.
    pub owner: String,
    /// `pending`, `bound`, `expired`, `refused`, `superseded`.
    #[schema(value_type = String)]
    pub status: ClaimStatus,
    /// A stable code of why it ended without binding.
    pub reason: Option<String>,
    /// The same in words.
    pub message: Option<String>,
    /// Until when the device may confirm.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
}

fn claim_view(
    c: &Claim,
    status: ClaimStatus,
    reason: Option<String>,
    message: Option<String>,
) -> ClaimView {
    ClaimView {
        id: c.id,
        device: c.device.clone(),
        owner: c.owner.to_string(),
        status,
        reason,
        message,
        expires_at: c.expires_at,
    }
}

/// A claim refusal as HTTP: the code says which (wrong code, already
/// claimed, device offline, ...), the message what to do.
pub fn claim_error(e: ClaimError) -> ApiError {
    let (status, code) = match &e {
        ClaimError::InvalidQr(_) => (StatusCode::BAD_REQUEST, "invalid_qr"),
        ClaimError::UnknownDevice(_) => (StatusCode::NOT_FOUND, "device_not_found"),
        ClaimError::FingerprintMismatch(_) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "fingerprint_mismatch")
        }
        ClaimError::WrongCode(_) => (StatusCode::UNPROCESSABLE_ENTITY, "wrong_code"),
        ClaimError::AlreadyClaimed { .. } => (StatusCode::CONFLICT, "already_claimed"),
        ClaimError::NotClaimable { .. } => (StatusCode::CONFLICT, "not_claimable"),
        ClaimError::Offline(_) => (StatusCode::CONFLICT, "device_offline"),
        ClaimError::Expired(_) => (StatusCode::GONE, "expired"),
        ClaimError::Ended { .. } => (StatusCode::CONFLICT, "refused"),
        ClaimError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    match e {
        ClaimError::Store(s) => device_store_error(s),
        e => ApiError::new(status, code, e.to_string()),
    }
}

/// The request a claim body makes for `owner`.
pub fn claim_request(body: &ClaimBody, owner: Owner) -> Result<ClaimRequest, ApiError> {
    if let Some(qr) = body.qr.as_deref() {
        if body.device_id.is_some() || body.claim_code.is_some() || body.fingerprint.is_some() {
            return Err(bad(
                "invalid_claim",
                "give either qr or deviceId and claimCode, not both",
            ));
        }
        return ClaimRequest::from_qr(qr, owner).map_err(claim_error);
    }
    let (Some(device), Some(code)) = (body.device_id.as_deref(), body.claim_code.as_deref()) else {
        return Err(bad(
            "invalid_claim",
            "give the label's QR content, or deviceId and claimCode",
        ));
    };
    let device = device_id(device.trim())?;
    let code = ClaimCode::parse(code.trim())
        .map_err(|_| claim_error(ClaimError::WrongCode(device.clone())))?;
    Ok(ClaimRequest {
        device,
        code,
        fingerprint: body
            .fingerprint
            .as_deref()
            .map(|f| f.trim().to_ascii_lowercase()),
        owner,
    })
}

/// Starts a claim for the signed-in user: the running server's control
/// plane sends the nonce to the device from the change feed.
pub async fn start_claim(
    state: &AppState,
    principal: &Principal,
    origin: &Origin,
    body: &ClaimBody,
) -> Result<ClaimView, ApiError> {
    let request = claim_request(body, Owner::User(principal.name.clone()))?;
    let policy = state.devices()?.claim_policy;
    let mut nonce = [0u8; claim::NONCE_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
    let actor = Actor {
        name: principal.name.clone(),
        source: origin.ip.clone(),
    };
    let started = claim::start(
        state.store(),
        &request,
        &policy,
        nonce,
        state.clock().now(),
        &actor,
    )
    .await
    .map_err(claim_error)?;
    tracing::info!(device_id = %started.device, claim = started.id, user = %principal.name, "claim started from the console");
    Ok(claim_view(&started, ClaimStatus::Pending, None, None))
}

/// Where claim `id` stands. Only its owner (or an admin) may follow it;
/// anyone else gets 404, as for a claim that does not exist.
pub async fn claim_status(
    state: &AppState,
    principal: &Principal,
    id: u64,
) -> Result<ClaimView, ApiError> {
    let not_found = || device_store_error(StoreError::ClaimNotFound(id));
    let c = state
        .store()
        .claim(id)
        .await
        .map_err(device_store_error)?
        .ok_or_else(not_found)?;
    let mine = c.owner == Owner::User(principal.name.clone());
    if !mine && principal.role < Role::Admin {
        return Err(not_found());
    }
    let actor = Actor::system();
    match claim::outcome(state.store(), id, state.clock().now(), &actor).await {
        Ok(Some(_)) => Ok(claim_view(&c, ClaimStatus::Bound, None, None)),
        Ok(None) => Ok(claim_view(&c, ClaimStatus::Pending, None, None)),
        Err(e @ ClaimError::Expired(_)) => Ok(claim_view(
            &c,
            ClaimStatus::Expired,
            Some("expired".into()),
            Some(e.to_string()),
        )),
        Err(ClaimError::Ended {
            status,
            reason,
            device,
        }) => {
            let message = ClaimError::Ended {
                status,
                reason,
                device,
            }
            .to_string();
            let code = state
                .store()
                .claim(id)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.reason)
                .unwrap_or_else(|| status.to_string());
            Ok(claim_view(&c, status, Some(code), Some(message)))
        }
        Err(e) => Err(claim_error(e)),
    }
}

/// The ms of `t` (re-exported for the pages).
pub fn ms(t: OffsetDateTime) -> i64 {
    unix_ms(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn list_parameters_map_to_the_store_query() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let q = list_query(
            &params(&[
                ("q", " pump "),
                ("state", "bound"),
                ("online", "false"),
                ("owner", "user:ann"),
                ("certExpiringDays", "30"),
                ("sort", "last_seen"),
                ("order", "desc"),
                ("limit", "20"),
                ("offset", "40"),
                ("firmware", " 1.4.2 "),
            ]),
            now,
        )
        .expect("valid");
        assert_eq!(q.id, Some(IdMatch::Contains("pump".into())));
        assert_eq!(q.state, Some(DeviceState::Bound));
        assert_eq!(q.online, Some(false));
        assert_eq!(q.owner, Some(Owner::User("ann".into())));
        assert_eq!(q.cert_expires_before, Some(now + time::Duration::days(30)));
        assert_eq!((q.sort, q.descending), (DeviceSort::LastSeen, true));
        assert_eq!((q.limit, q.offset), (20, 40));
        assert_eq!(q.firmware.as_deref(), Some("1.4.2"));
        // Empty filter boxes are no filter.
        let q = list_query(&params(&[("q", ""), ("state", "")]), now).expect("valid");
        assert_eq!((q.id, q.state, q.limit), (None, None, DEFAULT_PAGE));
    }

    #[test]
    fn bad_list_parameters_are_refused_with_their_name() {
        let now = OffsetDateTime::UNIX_EPOCH;
        for (k, v) in [
            ("limit", "0"),
            ("limit", "501"),
            ("online", "maybe"),
            ("owner", "ann"),
            ("sort", "name"),
            ("order", "up"),
            ("certExpiringDays", "-1"),
            ("q", &"x".repeat(129)),
            ("firmware", &"1".repeat(65)),
        ] {
            let e = list_query(&params(&[(k, v)]), now).expect_err(k);
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.starts_with(k), "{k}: {}", e.message);
        }
        let e = list_query(&params(&[("color", "red")]), now).expect_err("unknown");
        assert_eq!(e.code, "unknown_parameter");
    }

    #[test]
    fn ranges_default_to_a_day_and_refuse_reversed_or_huge_ones() {
        let now = 1_800_000_000_000;
        let r = range(None, None, None, now).expect("default");
        assert_eq!(
            (r.from_ms, r.to_ms, r.buckets),
            (now - 86_400_000, now, 240)
        );
        let r = range(Some("-1h"), Some("now"), Some("60"), now).expect("hour");
        assert_eq!((r.from_ms, r.buckets), (now - 3_600_000, 60));
        assert!(range(Some("now"), Some("-1h"), None, now).is_err());
        assert!(range(None, None, Some("0"), now).is_err());
        assert!(range(None, None, Some("2001"), now).is_err());
        assert!(range(Some("last week"), None, None, now).is_err());
    }

    #[test]
    fn a_claim_body_is_a_label_or_an_id_with_a_code() {
        let owner = Owner::User("ann".into());
        let code = ClaimCode::from_random([3; rampart_proto::CLAIM_CODE_BYTES]);
        let typed = ClaimBody {
            device_id: Some("pump-1".into()),
            claim_code: Some(code.as_str().to_uppercase()),
            ..ClaimBody::default()
        };
        let r = claim_request(&typed, owner.clone()).expect("typed");
        assert_eq!(
            (r.device.as_str(), r.code.as_str()),
            ("pump-1", code.as_str())
        );
        assert_eq!(r.fingerprint, None);
        let wrong = ClaimBody {
            claim_code: Some("not-a-code".into()),
            ..typed.clone()
        };
        assert_eq!(
            claim_request(&wrong, owner.clone()).expect_err("code").code,
            "wrong_code"
        );
        let both = ClaimBody {
            qr: Some("{}".into()),
            ..typed
        };
        assert_eq!(
            claim_request(&both, owner.clone()).expect_err("both").code,
            "invalid_claim"
        );
        let none = ClaimBody::default();
        assert_eq!(
            claim_request(&none, owner.clone()).expect_err("none").code,
            "invalid_claim"
        );
        let qr = ClaimBody {
            qr: Some("not json".into()),
            ..ClaimBody::default()
        };
        assert_eq!(
            claim_request(&qr, owner).expect_err("qr").code,
            "invalid_qr"
        );
    }
}

//! The campaigns API (`/api/v1/campaigns`, docs/ota.md §5): create, list,
//! show with counts and a page of per-device entries, and the operator
//! actions. The API only changes the store; the rollout engine in `serve`
//! performs the side effects (offers, `cancel` downlinks) on its next tick.
//!
//! Roles: starting updates (create, approve, resume) is for admins;
//! stopping them (pause, cancel) is for operators too, so that whoever
//! watches the fleet can pull the emergency stop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rampart_ota::campaign::{
    CampaignStatus, DEFAULT_FAILURE_THRESHOLD, DEFAULT_SUCCESS_THRESHOLD, EntryState, StateCounts,
    Timeouts, WaveProgress, Waves,
};
use rampart_proto::DeviceId;
use rampart_store::DeviceState;
use rampart_store::campaigns::{
    Campaign, CampaignChange, CampaignTarget, EntryPage, EntryQuery, NewCampaign, PauseReason,
};
use rampart_store::{Actor, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};

use super::account::{Caller, principal};
use super::{json_body, origin_of};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::{AppState, CampaignDefaults};

type ApiResult = Result<Response, ApiError>;

/// A duration as text: `90s`, `10m`, `1h`.
fn duration(what: &str, text: &str) -> Result<Duration, ApiError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_campaign",
            format!("{what} '{text}' is not a duration such as 90s, 10m or 1h: {e}"),
        )
    })
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_campaign", message)
}

/// Per-state timeouts as given; absent ones take the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct TimeoutsBody {
    pub(crate) offered: Option<String>,
    pub(crate) downloading: Option<String>,
    pub(crate) verifying: Option<String>,
    pub(crate) pending_reboot: Option<String>,
    pub(crate) pending_confirm: Option<String>,
}

/// `POST /api/v1/campaigns`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct CreateBody {
    pub(crate) name: String,
    pub(crate) firmware_id: u64,
    /// These devices only.
    #[serde(default)]
    pub(crate) devices: Option<Vec<String>>,
    /// `all` (default), `bound` or `unbound`.
    #[serde(default)]
    pub(crate) state: Option<String>,
    /// Cumulative percentages; default `[100]`.
    #[serde(default)]
    pub(crate) waves: Option<Vec<u8>>,
    #[serde(default)]
    pub(crate) soak: Option<String>,
    #[serde(default)]
    pub(crate) success_threshold: Option<f64>,
    #[serde(default)]
    pub(crate) failure_threshold: Option<f64>,
    #[serde(default)]
    pub(crate) timeouts: Option<TimeoutsBody>,
    #[serde(default)]
    pub(crate) approve: bool,
}

/// The campaign a request body asks for, with `defaults` for what it
/// leaves out. Pure: no store.
pub(crate) fn new_campaign(
    body: CreateBody,
    defaults: &CampaignDefaults,
) -> Result<NewCampaign, ApiError> {
    let target = match (body.devices, body.state.as_deref().map(str::trim)) {
        (Some(_), Some(s)) if !s.is_empty() && s != "all" => {
            return Err(invalid(
                "give either a device list or a state filter, not both",
            ));
        }
        (Some(ids), _) => {
            if ids.is_empty() {
                return Err(invalid("the device list is empty"));
            }
            let mut parsed = Vec::with_capacity(ids.len());
            for id in ids {
                parsed.push(
                    DeviceId::parse(id.trim())
                        .map_err(|e| invalid(format!("device id '{id}': {e}")))?,
                );
            }
            CampaignTarget::Devices(parsed)
        }
        (None, None | Some("" | "all")) => CampaignTarget::All,
        (None, Some("bound")) => CampaignTarget::State(DeviceState::Bound),
        (None, Some("unbound")) => CampaignTarget::State(DeviceState::Unbound),
        (None, Some(other)) => {
            return Err(invalid(format!(
                "state '{other}' is not a target: use all, bound or unbound"
            )));
        }
    };
    let waves = match body.waves {
        None => Waves::all_at_once(),
        Some(p) => Waves::new(p).map_err(|e| invalid(e.to_string()))?,
    };
    let soak = match body.soak.as_deref() {
        None => defaults.soak,
        Some(s) => duration("soak", s)?,
    };
    let t = body.timeouts.unwrap_or_default();
    let pick = |what: &str, given: &Option<String>, default: Duration| match given {
        None => Ok(default),
        Some(s) => duration(what, s),
    };
    let d = defaults.timeouts;
    let timeouts = Timeouts {
        offered: pick("timeouts.offered", &t.offered, d.offered)?,
        downloading: pick("timeouts.downloading", &t.downloading, d.downloading)?,
        verifying: pick("timeouts.verifying", &t.verifying, d.verifying)?,
        pending_reboot: pick(
            "timeouts.pendingReboot",
            &t.pending_reboot,
            d.pending_reboot,
        )?,
        pending_confirm: pick(
            "timeouts.pendingConfirm",
            &t.pending_confirm,
            d.pending_confirm,
        )?,
    };
    let fraction = |what: &str, v: Option<f64>, default: f64| {
        let v = v.unwrap_or(default);
        if v.is_finite() && (0.0..=1.0).contains(&v) {
            Ok(v)
        } else {
            Err(invalid(format!(
                "{what} must be a fraction between 0 and 1, not {v}"
            )))
        }
    };
    Ok(NewCampaign {
        name: body.name.trim().to_owned(),
        firmware_id: body.firmware_id,
        target,
        waves,
        soak,
        success_threshold: fraction(
            "successThreshold",
            body.success_threshold,
            defaults.success_threshold,
        )?,
        failure_threshold: fraction(
            "failureThreshold",
            body.failure_threshold,
            defaults.failure_threshold,
        )?,
        timeouts,
        approve: body.approve,
    })
}

/// A store refusal as the API says it.
pub(crate) fn campaign_error(e: StoreError) -> ApiError {
    match e {
        StoreError::CampaignNotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "campaign_not_found", e.to_string())
        }
        StoreError::FirmwareNotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "firmware_not_found", e.to_string())
        }
        StoreError::NotFound(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "device_not_found", e.to_string())
        }
        StoreError::InvalidCampaign(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_campaign",
            e.to_string(),
        ),
        StoreError::CampaignStatus { .. } => {
            ApiError::new(StatusCode::CONFLICT, "campaign_status", e.to_string())
        }
        StoreError::DeviceBusy(_) => {
            ApiError::new(StatusCode::CONFLICT, "device_busy", e.to_string())
        }
        other => {
            tracing::error!(error = %other, "campaign store failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "store_error",
                "the campaign store could not be read or written; retry, or check the server log",
            )
        }
    }
}

fn actor(p: &Principal, client: SocketAddr, headers: &HeaderMap) -> Actor {
    Actor {
        name: p.name.clone(),
        source: origin_of(client, headers).ip,
    }
}

/// Creates a campaign in the name of `actor`.
pub(crate) async fn create_campaign(
    state: &AppState,
    body: CreateBody,
    actor: &Actor,
) -> Result<Campaign, ApiError> {
    let backend = state.campaigns()?;
    let new = new_campaign(body, &backend.defaults)?;
    let c = backend
        .campaigns
        .create_campaign(new, actor)
        .await
        .map_err(campaign_error)?;
    tracing::info!(user = %actor.name, campaign = c.id, devices = c.devices, status = %c.status, "campaign created");
    Ok(c)
}

/// The operator actions, by their path segment.
pub(crate) fn change_of(what: &str) -> Option<CampaignChange> {
    Some(match what {
        "approve" => CampaignChange::Approve,
        "pause" => CampaignChange::Pause(PauseReason::Operator),
        "resume" => CampaignChange::Resume,
        "cancel" => CampaignChange::Cancel,
        _ => return None,
    })
}

/// Applies an operator action in the name of `actor`.
pub(crate) async fn change_campaign(
    state: &AppState,
    id: u64,
    change: CampaignChange,
    actor: &Actor,
) -> Result<Campaign, ApiError> {
    let c = state
        .campaigns()?
        .campaigns
        .change_campaign(id, change, actor)
        .await
        .map_err(campaign_error)?;
    tracing::info!(user = %actor.name, campaign = id, action = change.action(), status = %c.status, "campaign changed");
    Ok(c)
}

/// Everything about one campaign a page or the API shows.
pub(crate) struct CampaignDetail {
    pub(crate) campaign: Campaign,
    pub(crate) waves: Vec<WaveProgress>,
    pub(crate) counts: StateCounts,
    pub(crate) entries: EntryPage,
    pub(crate) query: EntryQuery,
}

/// The campaign, its waves and totals, and one page of entries.
pub(crate) async fn detail(
    state: &AppState,
    id: u64,
    query: EntryQuery,
) -> Result<CampaignDetail, ApiError> {
    let store = &state.campaigns()?.campaigns;
    let campaign = store
        .campaign(id)
        .await
        .map_err(campaign_error)?
        .ok_or_else(|| campaign_error(StoreError::CampaignNotFound(id)))?;
    let waves = store.campaign_waves(id).await.map_err(campaign_error)?;
    let counts = waves
        .iter()
        .fold(StateCounts::default(), |sum, w| sum.plus(&w.counts));
    let entries = store
        .campaign_entries(id, &query)
        .await
        .map_err(campaign_error)?;
    Ok(CampaignDetail {
        campaign,
        waves,
        counts,
        entries,
        query,
    })
}

/// Every campaign (or those in `statuses`) with its totals per state.
pub(crate) async fn list_with_counts(
    state: &AppState,
    statuses: &[CampaignStatus],
) -> Result<Vec<(Campaign, StateCounts)>, ApiError> {
    let store = &state.campaigns()?.campaigns;
    let list = store
        .list_campaigns(statuses)
        .await
        .map_err(campaign_error)?;
    let mut out = Vec::with_capacity(list.len());
    for c in list {
        let counts = store
            .campaign_waves(c.id)
            .await
            .map_err(campaign_error)?
            .iter()
            .fold(StateCounts::default(), |sum, w| sum.plus(&w.counts));
        out.push((c, counts));
    }
    Ok(out)
}

/// The entry filter of a query string: `state`, `wave`, `limit`, `offset`.
pub(crate) fn entry_query(p: &HashMap<String, String>) -> Result<EntryQuery, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", m);
    if let Some(k) = p
        .keys()
        .find(|k| !["state", "wave", "limit", "offset"].contains(&k.as_str()))
    {
        return Err(bad(format!(
            "unknown parameter '{k}'; accepted: state, wave, limit, offset"
        )));
    }
    let number = |k: &str| -> Result<Option<u32>, ApiError> {
        match p.get(k).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| bad(format!("{k} must be a whole number, not '{v}'"))),
        }
    };
    let state = match p.get("state").map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => None,
        Some(s) => Some(s.parse::<EntryState>().map_err(|e| bad(e.to_string()))?),
    };
    Ok(EntryQuery {
        state,
        wave: number("wave")?,
        offset: number("offset")?.unwrap_or(0),
        limit: number("limit")?.unwrap_or(100),
    })
}

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

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "campaign_not_found",
            format!("no campaign with id '{id}'"),
        )
    })
}

fn with_counts(c: &Campaign, counts: &StateCounts) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("counts".into(), json!(counts));
    }
    v
}

/// `GET /api/v1/campaigns?status=`.
#[utoipa::path(get, path = "/api/v1/campaigns", tag = "campaigns",
    params(("status" = Option<String>, Query, description = "Only campaigns in these statuses, comma-separated: draft, running, paused, completed, aborted, cancelled")),
    responses((status = 200, description = "Every campaign (or those in the statuses asked for) with its totals per state, newest first", body = crate::routes::schemas::CampaignListBody),
        (status = 400, description = "Unknown status", body = crate::error::ErrorBody)))]
pub(super) async fn list(
    State(state): State<AppState>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let p = params(q)?;
    let mut statuses = Vec::new();
    for s in p
        .get("status")
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        statuses.push(s.parse::<CampaignStatus>().map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", e.to_string())
        })?);
    }
    let list = list_with_counts(&state, &statuses).await?;
    Ok(Json(json!({
        "campaigns": list.iter().map(|(c, n)| with_counts(c, n)).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `POST /api/v1/campaigns`.
#[utoipa::path(post, path = "/api/v1/campaigns", tag = "campaigns",
    request_body(content = String, content_type = "application/json", description = "`{\"name\", \"firmwareId\", \"devices\"?: [ids] | \"state\"?: \"all\"|\"bound\"|\"unbound\", \"waves\"?: [1,10,100], \"soak\"?: \"10m\", \"successThreshold\"?: 0.9, \"failureThreshold\"?: 0.1, \"timeouts\"?: {\"offered\", \"downloading\", \"verifying\", \"pendingReboot\", \"pendingConfirm\"}, \"approve\"?: false}`"),
    responses((status = 201, description = "The campaign (`draft`, or `running` when approved)", body = crate::routes::schemas::CampaignWithCountsSchema),
        (status = 400, description = "`invalid_campaign`: waves, durations, fractions or target malformed", body = crate::error::ErrorBody),
        (status = 404, description = "`firmware_not_found`, `device_not_found`", body = crate::error::ErrorBody),
        (status = 409, description = "`device_busy`: devices in another campaign's open update, listed in the message", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_campaign`: no device matches", body = crate::error::ErrorBody)))]
pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let p = principal(caller)?;
    let body: CreateBody = json_body(&state, body)?;
    let c = create_campaign(&state, body, &actor(&p, client, &headers)).await?;
    Ok((
        StatusCode::CREATED,
        Json(with_counts(&c, &StateCounts::default())),
    )
        .into_response())
}

/// `GET /api/v1/campaigns/{id}?state=&wave=&limit=&offset=`.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}", tag = "campaigns",
    params(("id" = u64, Path, description = "The campaign"),
        ("state" = Option<String>, Query, description = "Only entries in this state (queued, offered, downloading, verifying, pending-reboot, pending-confirm, succeeded, failed, rolled-back, cancelled)"),
        ("wave" = Option<u32>, Query, description = "Only entries of this wave"),
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 100"),
        ("offset" = Option<u32>, Query, description = "Entries to skip")),
    responses((status = 200, description = "The campaign, its totals and waves, and one page of its entries", body = crate::routes::schemas::CampaignDetailBody),
        (status = 404, description = "`campaign_not_found`", body = crate::error::ErrorBody)))]
pub(super) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let query = entry_query(&params(q)?)?;
    let d = detail(&state, id, query).await?;
    Ok(Json(json!({
        "campaign": d.campaign,
        "counts": d.counts,
        "waves": d.waves,
        "entries": d.entries.entries,
        "total": d.entries.total,
        "limit": d.query.page_size(),
        "offset": d.query.offset,
    }))
    .into_response())
}

async fn act(
    state: AppState,
    caller: Caller,
    client: SocketAddr,
    headers: HeaderMap,
    id: String,
    what: &str,
) -> ApiResult {
    let p = principal(caller)?;
    let id = parse_id(&id)?;
    let change = change_of(what).ok_or_else(ApiError::not_found)?;
    let c = change_campaign(&state, id, change, &actor(&p, client, &headers)).await?;
    Ok(Json(json!({ "campaign": c })).into_response())
}

/// `POST /api/v1/campaigns/{id}/approve`.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/approve", tag = "campaigns",
    params(("id" = u64, Path, description = "The campaign")),
    responses((status = 200, description = "`{\"campaign\"}`: `draft` → `running`; the engine offers wave 1 on its next tick", body = crate::routes::schemas::CampaignBody),
        (status = 404, description = "`campaign_not_found`", body = crate::error::ErrorBody), (status = 409, description = "`campaign_status`: not a draft", body = crate::error::ErrorBody)))]
pub(super) async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    act(state, caller, client, headers, id, "approve").await
}

/// `POST /api/v1/campaigns/{id}/pause`.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/pause", tag = "campaigns",
    params(("id" = u64, Path, description = "The campaign")),
    responses((status = 200, description = "`{\"campaign\"}`: `running` → `paused`; no further offers, devices already updating finish", body = crate::routes::schemas::CampaignBody),
        (status = 404, description = "`campaign_not_found`", body = crate::error::ErrorBody), (status = 409, description = "`campaign_status`: not running", body = crate::error::ErrorBody)))]
pub(super) async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    act(state, caller, client, headers, id, "pause").await
}

/// `POST /api/v1/campaigns/{id}/resume`.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/resume", tag = "campaigns",
    params(("id" = u64, Path, description = "The campaign")),
    responses((status = 200, description = "`{\"campaign\"}`: `paused` → `running`; after a success-threshold pause the wave is accepted and the next may start", body = crate::routes::schemas::CampaignBody),
        (status = 404, description = "`campaign_not_found`", body = crate::error::ErrorBody), (status = 409, description = "`campaign_status`: not paused", body = crate::error::ErrorBody)))]
pub(super) async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    act(state, caller, client, headers, id, "resume").await
}

/// `POST /api/v1/campaigns/{id}/cancel`.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/cancel", tag = "campaigns",
    params(("id" = u64, Path, description = "The campaign")),
    responses((status = 200, description = "`{\"campaign\"}`: emergency stop, → `cancelled`; queued devices are cancelled, devices holding the offer get a `cancel` downlink on the engine's next tick", body = crate::routes::schemas::CampaignBody),
        (status = 404, description = "`campaign_not_found`", body = crate::error::ErrorBody), (status = 409, description = "`campaign_status`: already finished", body = crate::error::ErrorBody)))]
pub(super) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    act(state, caller, client, headers, id, "cancel").await
}

impl Default for CampaignDefaults {
    /// docs/ota.md §6.
    fn default() -> Self {
        CampaignDefaults {
            timeouts: Timeouts::default(),
            soak: Duration::from_secs(600),
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> CreateBody {
        serde_json::from_value(v).expect("body")
    }

    #[test]
    fn a_minimal_body_takes_the_defaults() {
        let d = CampaignDefaults::default();
        let c =
            new_campaign(body(json!({"name": " spring ", "firmwareId": 3})), &d).expect("valid");
        assert_eq!(c.name, "spring");
        assert_eq!(c.firmware_id, 3);
        assert_eq!(c.target, CampaignTarget::All);
        assert_eq!(c.waves, Waves::all_at_once());
        assert_eq!(c.soak, Duration::from_secs(600));
        assert_eq!(c.timeouts, Timeouts::default());
        assert!((c.failure_threshold - 0.1).abs() < 1e-9);
        assert!(!c.approve);
    }

    #[test]
    fn every_field_is_read() {
        let c = new_campaign(
            body(
                json!({"name": "n", "firmwareId": 1, "devices": ["a-1", "b-2"],
                "waves": [10, 50, 100], "soak": "2s", "successThreshold": 0.5,
                "failureThreshold": 0.25, "timeouts": {"offered": "3s", "pendingConfirm": "1m"},
                "approve": true}),
            ),
            &CampaignDefaults::default(),
        )
        .expect("valid");
        assert_eq!(
            c.target,
            CampaignTarget::Devices(vec![
                DeviceId::parse("a-1").expect("id"),
                DeviceId::parse("b-2").expect("id")
            ])
        );
        assert_eq!(c.waves.percentages(), &[10, 50, 100]);
        assert_eq!(c.soak, Duration::from_secs(2));
        assert_eq!(c.timeouts.offered, Duration::from_secs(3));
        assert_eq!(c.timeouts.pending_confirm, Duration::from_secs(60));
        assert_eq!(c.timeouts.verifying, Timeouts::default().verifying);
        assert!(c.approve);
        let c = new_campaign(
            body(json!({"name": "n", "firmwareId": 1, "state": "bound"})),
            &CampaignDefaults::default(),
        )
        .expect("valid");
        assert_eq!(c.target, CampaignTarget::State(DeviceState::Bound));
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let d = CampaignDefaults::default();
        for v in [
            json!({"name": "n", "firmwareId": 1, "waves": [50]}),
            json!({"name": "n", "firmwareId": 1, "waves": [50, 10, 100]}),
            json!({"name": "n", "firmwareId": 1, "soak": "soon"}),
            json!({"name": "n", "firmwareId": 1, "failureThreshold": 1.5}),
            json!({"name": "n", "firmwareId": 1, "state": "disabled"}),
            json!({"name": "n", "firmwareId": 1, "devices": []}),
            json!({"name": "n", "firmwareId": 1, "devices": ["ok"], "state": "bound"}),
            json!({"name": "n", "firmwareId": 1, "devices": ["Not An Id!"]}),
            json!({"name": "n", "firmwareId": 1, "timeouts": {"offered": "x"}}),
        ] {
            let e = new_campaign(body(v.clone()), &d).expect_err("refused");
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "invalid_campaign"),
                "{v}"
            );
        }
        assert!(
            serde_json::from_value::<CreateBody>(json!({"name": "n", "firmwareId": 1, "extra": 1}))
                .is_err()
        );
    }

    #[test]
    fn entry_filters() {
        let q = |pairs: &[(&str, &str)]| {
            entry_query(
                &pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            )
        };
        let e = q(&[
            ("state", "rolled-back"),
            ("wave", "2"),
            ("limit", "5"),
            ("offset", "10"),
        ])
        .expect("valid");
        assert_eq!(e.state, Some(EntryState::RolledBack));
        assert_eq!((e.wave, e.limit, e.offset), (Some(2), 5, 10));
        assert_eq!(q(&[]).expect("valid").limit, 100);
        assert!(q(&[("state", "bogus")]).is_err());
        assert!(q(&[("limit", "-1")]).is_err());
        assert!(q(&[("sort", "x")]).is_err());
        assert_eq!(change_of("cancel"), Some(CampaignChange::Cancel));
        assert_eq!(change_of("delete"), None);
    }
}

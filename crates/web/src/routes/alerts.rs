//! The alert API (issue 10): alerts and their acknowledgement, webhook
//! channels, rules and dead letters (`/api/v1/alerts`,
//! `/api/v1/alert-channels`, `/api/v1/alert-rules`,
//! `/api/v1/alert-deliveries`). Channels and rules are checked by
//! `alert_config`, as the CLI's are; the store audits every change and
//! announces it on the change feed, from which `serve`'s engine reloads.
//!
//! A channel's URL is write-only: it is sealed before it reaches the
//! store, never returned (only the redacted `target`) and never logged.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rampart_store::{
    Actor, Alert, AlertChannel, AlertQuery, AlertRule, AlertState, Delivery, DeliveryStatus,
    RuleScope, StoreError,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::account::{Caller, principal};
use super::{json_body, origin_of};
use crate::alert_config::{AlertConfigError, ChannelRequest, RuleRequest, new_channel, new_rule};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;

/// Metric names read to check a threshold rule's metric (as the CLI).
const KNOWN_METRICS: u32 = 1_000;
/// Default page of alerts.
pub(crate) const DEFAULT_ALERT_PAGE: u32 = 50;
/// Largest page of alerts or dead letters.
pub(crate) const MAX_ALERT_PAGE: u32 = 500;

/// The store's refusal as an API error; anything unexpected is logged and
/// a 500.
pub(crate) fn alert_store_error(e: StoreError) -> ApiError {
    let (status, code) = match &e {
        StoreError::InvalidAlertName(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
        StoreError::AlertChannelExists(_) => (StatusCode::CONFLICT, "channel_exists"),
        StoreError::AlertChannelNotFound(_) => (StatusCode::NOT_FOUND, "channel_not_found"),
        StoreError::AlertChannelInUse { .. } => (StatusCode::CONFLICT, "channel_in_use"),
        StoreError::AlertRuleExists(_) => (StatusCode::CONFLICT, "rule_exists"),
        StoreError::AlertRuleNotFound(_) => (StatusCode::NOT_FOUND, "rule_not_found"),
        StoreError::AlertNotFound(_) => (StatusCode::NOT_FOUND, "alert_not_found"),
        StoreError::DeliveryNotDead(_) => (StatusCode::NOT_FOUND, "not_a_dead_letter"),
        StoreError::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        _ => return crate::auth::accounts::store_error(e),
    };
    ApiError::new(status, code, e.to_string())
}

/// A refused channel or rule as a 400 with `alert_config`'s message.
pub(crate) fn config_error(e: &AlertConfigError) -> ApiError {
    let code = match e {
        AlertConfigError::Kind(_) => "invalid_channel_kind",
        AlertConfigError::Target(_) => "invalid_url",
        AlertConfigError::Secret(_) => "invalid_secret",
        AlertConfigError::PerMinute => "invalid_rate_limit",
        AlertConfigError::Expr(_) => "invalid_expression",
        AlertConfigError::UnknownMetric { .. } => "unknown_metric",
        AlertConfigError::TwoScopes
        | AlertConfigError::NotPerDevice(_)
        | AlertConfigError::Owner(_) => "invalid_scope",
    };
    // The checks speak the CLI's words; name the API's flag too.
    let message = e.to_string().replace(
        "--danger-allow-private",
        "--danger-allow-private (API: allowPrivate; console: the dangerous box)",
    );
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// The caller as the audit log names them.
pub(crate) fn actor_of(p: &Principal, client: SocketAddr, headers: &HeaderMap) -> Actor {
    Actor {
        name: p.name.clone(),
        source: origin_of(client, headers).ip,
    }
}

/// One alert as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AlertView {
    /// Its number.
    id: u64,
    /// The rule's number.
    rule_id: u64,
    /// The rule's name when it fired.
    rule: String,
    /// The rule's expression when it fired.
    expr: String,
    /// The device id, source address or `campaign:ID`.
    subject: String,
    /// `firing`, `resolved` or `closed` (its rule was removed).
    #[schema(example = "firing")]
    state: String,
    /// When it fired (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    fired_at: OffsetDateTime,
    /// The value that fired it.
    fired_value: Option<f64>,
    /// When it resolved or was closed (RFC 3339).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    resolved_at: Option<OffsetDateTime>,
    /// The value that resolved it.
    resolved_value: Option<f64>,
    /// When someone acknowledged it (RFC 3339).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    acked_at: Option<OffsetDateTime>,
    /// Who acknowledged it.
    acked_by: Option<String>,
}

impl From<&Alert> for AlertView {
    fn from(a: &Alert) -> Self {
        Self {
            id: a.id,
            rule_id: a.rule_id,
            rule: a.rule.clone(),
            expr: a.expr.clone(),
            subject: a.subject.clone(),
            state: a.state.as_str().to_owned(),
            fired_at: a.fired_at,
            fired_value: a.fired_value,
            resolved_at: a.resolved_at,
            resolved_value: a.resolved_value,
            acked_at: a.acked_at,
            acked_by: a.acked_by.clone(),
        }
    }
}

/// The answer of `GET /api/v1/alerts`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AlertList {
    /// Newest first.
    alerts: Vec<AlertView>,
    /// The `before` of the next page, when there may be one.
    next_before: Option<u64>,
}

/// The list parameters of `GET /api/v1/alerts` and the alerts page.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AlertParams {
    /// `firing`, `resolved`, `closed` or `all` (default).
    pub(crate) state: Option<String>,
    /// Only about this subject: a device id, a source address or
    /// `campaign:ID` (`device` is accepted too).
    #[serde(alias = "device")]
    pub(crate) subject: Option<String>,
    /// Only alerts with a smaller id (the `nextBefore` of the previous page).
    pub(crate) before: Option<u64>,
    /// How many, 1 to 500 (default 50).
    pub(crate) limit: Option<u32>,
}

/// The state filter: `None` for all.
pub(crate) fn state_filter(s: Option<&str>) -> Result<Option<AlertState>, ApiError> {
    match s.map(str::trim) {
        None | Some("" | "all") => Ok(None),
        Some("firing") => Ok(Some(AlertState::Firing)),
        Some("resolved") => Ok(Some(AlertState::Resolved)),
        Some("closed") => Ok(Some(AlertState::Closed)),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("state '{other}' is not firing, resolved, closed or all"),
        )),
    }
}

/// The store query of list parameters.
pub(crate) fn alert_query(p: &AlertParams) -> Result<AlertQuery, ApiError> {
    let limit = p.limit.unwrap_or(DEFAULT_ALERT_PAGE);
    if !(1..=MAX_ALERT_PAGE).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be between 1 and {MAX_ALERT_PAGE}"),
        ));
    }
    Ok(AlertQuery {
        state: state_filter(p.state.as_deref())?,
        subject: p
            .subject
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        before: p.before,
        limit,
    })
}

/// The next page's cursor: the last id, when the page is full.
pub(crate) fn next_before(alerts: &[Alert], limit: u32) -> Option<u64> {
    (alerts.len() >= limit as usize)
        .then(|| alerts.last().map(|a| a.id))
        .flatten()
}

/// `GET /api/v1/alerts`.
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts",
    params(AlertParams),
    responses((status = 200, description = "Alerts, newest first", body = AlertList),
        (status = 400, description = "A bad or unknown parameter", body = crate::error::ErrorBody),
        (status = 503, description = "This server was started without alerts", body = crate::error::ErrorBody)))]
pub(super) async fn list(
    State(state): State<AppState>,
    params: Result<Query<AlertParams>, QueryRejection>,
) -> Result<Json<AlertList>, ApiError> {
    let Query(params) = params
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let q = alert_query(&params)?;
    let alerts = state
        .alerts()?
        .alerts(&q)
        .await
        .map_err(alert_store_error)?;
    Ok(Json(AlertList {
        next_before: next_before(&alerts, q.limit),
        alerts: alerts.iter().map(AlertView::from).collect(),
    }))
}

fn alert_number(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "alert_not_found",
            format!("no alert with id '{id}'"),
        )
    })
}

/// `GET /api/v1/alerts/{id}`.
#[utoipa::path(get, path = "/api/v1/alerts/{id}", tag = "alerts",
    params(("id" = u64, Path, description = "The alert number")),
    responses((status = 200, description = "The alert", body = AlertView),
        (status = 404, description = "No such alert", body = crate::error::ErrorBody)))]
pub(super) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AlertView>, ApiError> {
    let number = alert_number(&id)?;
    let a = state
        .alerts()?
        .alert(number)
        .await
        .map_err(alert_store_error)?
        .ok_or_else(|| alert_store_error(StoreError::AlertNotFound(number)))?;
    Ok(Json(AlertView::from(&a)))
}

/// Acknowledges alert `id` in the name of `actor` (audited by the store).
pub(crate) async fn acknowledge_alert(
    state: &AppState,
    id: &str,
    actor: &Actor,
) -> Result<Alert, ApiError> {
    let number = alert_number(id)?;
    let a = state
        .alerts()?
        .acknowledge_alert(number, actor)
        .await
        .map_err(alert_store_error)?;
    tracing::info!(user = %actor.name, alert = a.id, rule = %a.rule, subject = %a.subject, "alert acknowledged");
    Ok(a)
}

/// `POST /api/v1/alerts/{id}/acknowledge`.
#[utoipa::path(post, path = "/api/v1/alerts/{id}/acknowledge", tag = "alerts",
    params(("id" = u64, Path, description = "The alert number")),
    responses((status = 200, description = "The alert, acknowledged (a second acknowledgement keeps the first)", body = AlertView),
        (status = 404, description = "No such alert", body = crate::error::ErrorBody)))]
pub(super) async fn acknowledge(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AlertView>, ApiError> {
    let p = principal(caller)?;
    let a = acknowledge_alert(&state, &id, &actor_of(&p, client, &headers)).await?;
    Ok(Json(AlertView::from(&a)))
}

/// A webhook channel as the API shows it: never its URL.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChannelView {
    /// Its number.
    id: u64,
    /// Its unique name.
    name: String,
    /// `discord`, `slack` or `json`.
    kind: String,
    /// The redacted target (scheme and host); the URL itself is write-only.
    #[schema(example = "https://discord.com/…")]
    target: String,
    /// Whether deliveries are signed (generic JSON with a secret).
    signed: bool,
    /// The danger flag: plain http and private or loopback targets allowed.
    allow_private: bool,
    /// Most deliveries per minute.
    per_minute: u32,
    /// When it was added (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: OffsetDateTime,
    /// Who added it.
    created_by: String,
}

impl From<&AlertChannel> for ChannelView {
    fn from(c: &AlertChannel) -> Self {
        Self {
            id: c.id,
            name: c.name.clone(),
            kind: c.kind.clone(),
            target: c.target.clone(),
            signed: c.signed,
            allow_private: c.allow_private,
            per_minute: c.per_minute,
            created_at: c.created_at,
            created_by: c.created_by.clone(),
        }
    }
}

/// The answer of `GET /api/v1/alert-channels`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct ChannelList {
    /// Every channel, by name.
    channels: Vec<ChannelView>,
}

/// The body of `POST /api/v1/alert-channels`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ChannelBody {
    /// Unique name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    name: String,
    /// `discord`, `slack` or `json`.
    kind: String,
    /// The webhook URL: a secret, never shown again. https and public
    /// unless `allowPrivate`.
    url: String,
    /// DANGER: allow plain http and private or loopback addresses.
    #[serde(default)]
    allow_private: bool,
    /// HMAC-SHA256 signing secret, 16 to 256 bytes (`json` channels only).
    #[serde(default)]
    secret: Option<String>,
    /// Most deliveries per minute, 1 to 600 (default 30).
    #[serde(default)]
    per_minute: Option<u32>,
}

impl From<ChannelBody> for ChannelRequest {
    fn from(b: ChannelBody) -> Self {
        Self {
            name: b.name,
            kind: b.kind,
            url: b.url,
            allow_private: b.allow_private,
            secret: b.secret,
            per_minute: b.per_minute,
        }
    }
}

/// Checks, seals and adds a channel in the name of `actor`.
pub(crate) async fn add_channel(
    state: &AppState,
    req: &ChannelRequest,
    actor: &Actor,
) -> Result<AlertChannel, ApiError> {
    let store = state.alerts()?;
    let new = new_channel(state.sealing_key(), req).map_err(|e| config_error(&e))?;
    if new.allow_private {
        tracing::warn!(user = %actor.name, channel = %new.name, target = %new.target, "DANGER: this channel may reach private and loopback addresses over plain http");
    }
    let c = store
        .add_alert_channel(new, actor)
        .await
        .map_err(alert_store_error)?;
    tracing::info!(user = %actor.name, channel = %c.name, kind = %c.kind, target = %c.target, "alert channel added");
    Ok(c)
}

/// Removes a channel no rule uses, in the name of `actor`.
pub(crate) async fn remove_channel(
    state: &AppState,
    name: &str,
    actor: &Actor,
) -> Result<AlertChannel, ApiError> {
    let c = state
        .alerts()?
        .remove_alert_channel(name, actor)
        .await
        .map_err(alert_store_error)?;
    tracing::info!(user = %actor.name, channel = %c.name, "alert channel removed");
    Ok(c)
}

/// Every channel.
pub(crate) async fn channels_of(state: &AppState) -> Result<Vec<AlertChannel>, ApiError> {
    state
        .alerts()?
        .alert_channels()
        .await
        .map_err(alert_store_error)
}

/// `GET /api/v1/alert-channels`.
#[utoipa::path(get, path = "/api/v1/alert-channels", tag = "alerts",
    responses((status = 200, description = "Every channel, by name, with its redacted target (never the URL)", body = ChannelList)))]
pub(super) async fn list_channels(
    State(state): State<AppState>,
) -> Result<Json<ChannelList>, ApiError> {
    let channels = channels_of(&state).await?;
    Ok(Json(ChannelList {
        channels: channels.iter().map(ChannelView::from).collect(),
    }))
}

/// `POST /api/v1/alert-channels`.
#[utoipa::path(post, path = "/api/v1/alert-channels", tag = "alerts",
    request_body = ChannelBody,
    responses((status = 201, description = "The channel, with its redacted target", body = ChannelView),
        (status = 400, description = "Refused with the reason: `invalid_url` (not a URL, not https, a private address without `allowPrivate`), `invalid_channel_kind`, `invalid_secret`, `invalid_rate_limit`, `invalid_name`, `invalid_json`", body = crate::error::ErrorBody),
        (status = 409, description = "`channel_exists`", body = crate::error::ErrorBody)))]
pub(super) async fn create_channel(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let p = principal(caller)?;
    let b: ChannelBody = json_body(&state, body)?;
    let c = add_channel(&state, &b.into(), &actor_of(&p, client, &headers)).await?;
    Ok((StatusCode::CREATED, Json(ChannelView::from(&c))).into_response())
}

/// `DELETE /api/v1/alert-channels/{name}`.
#[utoipa::path(delete, path = "/api/v1/alert-channels/{name}", tag = "alerts",
    params(("name" = String, Path, description = "The channel's name")),
    responses((status = 200, description = "The removed channel; its pending deliveries became dead letters", body = ChannelView),
        (status = 404, description = "`channel_not_found`", body = crate::error::ErrorBody),
        (status = 409, description = "`channel_in_use`: rules still notify it", body = crate::error::ErrorBody)))]
pub(super) async fn delete_channel(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<ChannelView>, ApiError> {
    let p = principal(caller)?;
    let c = remove_channel(&state, &name, &actor_of(&p, client, &headers)).await?;
    Ok(Json(ChannelView::from(&c)))
}

/// A rule as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RuleView {
    /// Its number.
    id: u64,
    /// Its unique name.
    name: String,
    /// The canonical expression.
    #[schema(example = "temperature > 30 for 5m")]
    expr: String,
    /// Only this device (`null`: not scoped to a device).
    device: Option<String>,
    /// Only devices of this owner (`null`: not scoped to an owner).
    owner: Option<String>,
    /// The channel notified.
    channel: String,
    /// When it was added (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: OffsetDateTime,
    /// Who added it.
    created_by: String,
}

impl From<&AlertRule> for RuleView {
    fn from(r: &AlertRule) -> Self {
        let (device, owner) = match &r.scope {
            RuleScope::Fleet => (None, None),
            RuleScope::Device(d) => (Some(d.clone()), None),
            RuleScope::Owner(o) => (None, Some(o.clone())),
        };
        Self {
            id: r.id,
            name: r.name.clone(),
            expr: r.expr.clone(),
            device,
            owner,
            channel: r.channel.clone(),
            created_at: r.created_at,
            created_by: r.created_by.clone(),
        }
    }
}

/// The answer of `GET /api/v1/alert-rules`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct RuleList {
    /// Every rule, by id.
    rules: Vec<RuleView>,
}

/// The body of `POST /api/v1/alert-rules`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RuleBody {
    /// Unique name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
    name: String,
    /// The expression: `temperature > 30 for 5m`, `offline for 10m`,
    /// `no-telemetry for 15m`, `cert-expires within 30d`, ...
    expr: String,
    /// The channel notified.
    channel: String,
    /// Only this device.
    #[serde(default)]
    device: Option<String>,
    /// Only devices of this owner (`user:NAME`).
    #[serde(default)]
    owner: Option<String>,
    /// Accept a threshold on a metric no device has sent yet.
    #[serde(default)]
    new_metric: bool,
}

impl From<RuleBody> for RuleRequest {
    fn from(b: RuleBody) -> Self {
        Self {
            name: b.name,
            expr: b.expr,
            channel: b.channel,
            device: b.device,
            owner: b.owner,
            new_metric: b.new_metric,
        }
    }
}

/// Checks and adds a rule in the name of `actor`: the expression parses,
/// a threshold's metric is one devices send (or `new_metric`), a device
/// scope names a registered device.
pub(crate) async fn add_rule(
    state: &AppState,
    req: &RuleRequest,
    actor: &Actor,
) -> Result<AlertRule, ApiError> {
    let store = state.alerts()?;
    if let Some(device) = &req.device {
        let id = crate::devices::device_id(device)?;
        let known = state
            .store()
            .device(&id)
            .await
            .map_err(crate::auth::accounts::store_error)?;
        if known.is_none() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_device",
                format!("no device with id '{id}'"),
            ));
        }
    }
    let known = state
        .devices()?
        .telemetry
        .metric_names(KNOWN_METRICS)
        .await
        .map_err(crate::auth::accounts::store_error)?;
    let new = new_rule(req, &known).map_err(|e| config_error(&e))?;
    let r = store
        .add_alert_rule(new, actor)
        .await
        .map_err(alert_store_error)?;
    tracing::info!(user = %actor.name, rule = %r.name, expr = %r.expr, channel = %r.channel, "alert rule added");
    Ok(r)
}

/// Removes a rule (its firing alerts are closed) in the name of `actor`.
pub(crate) async fn remove_rule(
    state: &AppState,
    name: &str,
    actor: &Actor,
) -> Result<AlertRule, ApiError> {
    let r = state
        .alerts()?
        .remove_alert_rule(name, actor)
        .await
        .map_err(alert_store_error)?;
    tracing::info!(user = %actor.name, rule = %r.name, "alert rule removed");
    Ok(r)
}

/// Every rule.
pub(crate) async fn rules_of(state: &AppState) -> Result<Vec<AlertRule>, ApiError> {
    state
        .alerts()?
        .alert_rules()
        .await
        .map_err(alert_store_error)
}

/// `GET /api/v1/alert-rules`.
#[utoipa::path(get, path = "/api/v1/alert-rules", tag = "alerts",
    responses((status = 200, description = "Every rule, by id", body = RuleList)))]
pub(super) async fn list_rules(State(state): State<AppState>) -> Result<Json<RuleList>, ApiError> {
    let rules = rules_of(&state).await?;
    Ok(Json(RuleList {
        rules: rules.iter().map(RuleView::from).collect(),
    }))
}

/// `POST /api/v1/alert-rules`.
#[utoipa::path(post, path = "/api/v1/alert-rules", tag = "alerts",
    request_body = RuleBody,
    responses((status = 201, description = "The rule, with its canonical expression", body = RuleView),
        (status = 400, description = "Refused with the reason: `invalid_expression` (the parser's message), `unknown_metric` (send `newMetric: true` to accept it), `unknown_device`, `invalid_scope`, `invalid_name`, `invalid_json`", body = crate::error::ErrorBody),
        (status = 404, description = "`channel_not_found`", body = crate::error::ErrorBody),
        (status = 409, description = "`rule_exists`", body = crate::error::ErrorBody)))]
pub(super) async fn create_rule(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let p = principal(caller)?;
    let b: RuleBody = json_body(&state, body)?;
    let r = add_rule(&state, &b.into(), &actor_of(&p, client, &headers)).await?;
    Ok((StatusCode::CREATED, Json(RuleView::from(&r))).into_response())
}

/// `DELETE /api/v1/alert-rules/{name}`.
#[utoipa::path(delete, path = "/api/v1/alert-rules/{name}", tag = "alerts",
    params(("name" = String, Path, description = "The rule's name")),
    responses((status = 200, description = "The removed rule; its firing alerts are closed", body = RuleView),
        (status = 404, description = "`rule_not_found`", body = crate::error::ErrorBody)))]
pub(super) async fn delete_rule(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<RuleView>, ApiError> {
    let p = principal(caller)?;
    let r = remove_rule(&state, &name, &actor_of(&p, client, &headers)).await?;
    Ok(Json(RuleView::from(&r)))
}

/// One notification to one channel, as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeliveryView {
    /// Its number.
    id: u64,
    /// The alert.
    alert_id: u64,
    /// The channel's number.
    channel_id: u64,
    /// `true` for the firing, `false` for the resolution.
    firing: bool,
    /// When the alert changed (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    at: OffsetDateTime,
    /// The deciding value.
    value: Option<f64>,
    /// The rule's name.
    rule: String,
    /// The rule's expression.
    expr: String,
    /// The subject.
    subject: String,
    /// `pending`, `delivered` or `dead`.
    #[schema(example = "dead")]
    status: String,
    /// Attempts made.
    attempts: u32,
    /// When the next attempt is due (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    next_attempt_at: OffsetDateTime,
    /// What went wrong last.
    last_error: Option<String>,
}

impl From<&Delivery> for DeliveryView {
    fn from(d: &Delivery) -> Self {
        Self {
            id: d.id,
            alert_id: d.alert_id,
            channel_id: d.channel_id,
            firing: d.firing,
            at: d.at,
            value: d.value,
            rule: d.rule.clone(),
            expr: d.expr.clone(),
            subject: d.subject.clone(),
            status: match d.status {
                DeliveryStatus::Pending => "pending",
                DeliveryStatus::Delivered => "delivered",
                DeliveryStatus::Dead => "dead",
            }
            .to_owned(),
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            last_error: d.last_error.clone(),
        }
    }
}

/// The answer of `GET /api/v1/alert-deliveries/dead`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub(crate) struct DeliveryList {
    /// Newest first.
    deliveries: Vec<DeliveryView>,
}

/// The dead letters, newest first.
pub(crate) async fn dead_letters(state: &AppState) -> Result<Vec<Delivery>, ApiError> {
    state
        .alerts()?
        .dead_deliveries(MAX_ALERT_PAGE)
        .await
        .map_err(alert_store_error)
}

/// Puts dead letter `id` back in the queue in the name of `actor`.
pub(crate) async fn retry_dead(
    state: &AppState,
    id: &str,
    actor: &Actor,
) -> Result<Delivery, ApiError> {
    let number: u64 = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_dead_letter",
            format!("no dead letter with id '{id}'"),
        )
    })?;
    let d = state
        .alerts()?
        .retry_delivery(number, actor)
        .await
        .map_err(alert_store_error)?;
    tracing::info!(user = %actor.name, delivery = d.id, alert = d.alert_id, "dead letter queued again");
    Ok(d)
}

/// `GET /api/v1/alert-deliveries/dead`.
#[utoipa::path(get, path = "/api/v1/alert-deliveries/dead", tag = "alerts",
    responses((status = 200, description = "Notifications given up on (at most 500), newest first, with the last error", body = DeliveryList)))]
pub(super) async fn list_dead(
    State(state): State<AppState>,
) -> Result<Json<DeliveryList>, ApiError> {
    let dead = dead_letters(&state).await?;
    Ok(Json(DeliveryList {
        deliveries: dead.iter().map(DeliveryView::from).collect(),
    }))
}

/// `POST /api/v1/alert-deliveries/{id}/retry`.
#[utoipa::path(post, path = "/api/v1/alert-deliveries/{id}/retry", tag = "alerts",
    params(("id" = u64, Path, description = "The delivery number")),
    responses((status = 200, description = "The delivery, pending again and due now", body = DeliveryView),
        (status = 404, description = "`not_a_dead_letter`: unknown, pending or delivered", body = crate::error::ErrorBody)))]
pub(super) async fn retry(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeliveryView>, ApiError> {
    let p = principal(caller)?;
    let d = retry_dead(&state, &id, &actor_of(&p, client, &headers)).await?;
    Ok(Json(DeliveryView::from(&d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_filter_takes_the_four_words_and_refuses_others() {
        assert_eq!(state_filter(None).ok(), Some(None));
        assert_eq!(state_filter(Some("all")).ok(), Some(None));
        assert_eq!(
            state_filter(Some("firing")).ok(),
            Some(Some(AlertState::Firing))
        );
        assert_eq!(
            state_filter(Some("resolved")).ok(),
            Some(Some(AlertState::Resolved))
        );
        assert_eq!(
            state_filter(Some("closed")).ok(),
            Some(Some(AlertState::Closed))
        );
        assert_eq!(
            state_filter(Some("open")).map_err(|e| e.status),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn the_page_size_is_bounded() {
        let q = |limit| {
            alert_query(&AlertParams {
                limit,
                ..AlertParams::default()
            })
            .map(|q| q.limit)
            .map_err(|e| e.status)
        };
        assert_eq!(q(None), Ok(DEFAULT_ALERT_PAGE));
        assert_eq!(q(Some(500)), Ok(500));
        assert_eq!(q(Some(0)), Err(StatusCode::BAD_REQUEST));
        assert_eq!(q(Some(501)), Err(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn config_refusals_are_400_with_the_checks_message() {
        let e = config_error(&AlertConfigError::TwoScopes);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, "invalid_scope");
        assert_eq!(e.message, AlertConfigError::TwoScopes.to_string());
        let private = AlertConfigError::from(
            rampart_alerts::target::WebhookUrl::parse("http://127.0.0.1:9/h", false)
                .expect_err("private"),
        );
        let e = config_error(&private);
        assert_eq!(e.code, "invalid_url");
        assert!(e.message.contains("allowPrivate"), "{}", e.message);
    }
}

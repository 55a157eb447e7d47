//! The console's device pages: overview, list, detail with its actions
//! (forms whose CSRF token the guard checks), claiming. Each handler
//! reads through `crate::devices` (server-side queries only: the list is
//! one indexed page query whatever the fleet size) and renders `ui::console`.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use rampart_pki::RevocationReason;
use rampart_store::DeviceState;

use super::account::{Caller, principal};
use super::origin_of;
use super::pages::csrf_of;
use crate::chart::{self, Chart};
use crate::devices::{self as dev, ClaimBody, DeviceOp, RejectedView};
use crate::error::ApiError;
use crate::state::AppState;
use crate::ui::console::{self as ui, DeviceExtras, FleetView, ListParams};
use crate::ui::layout::Flash;

type PageResult = Result<Response, ApiError>;

fn html(status: StatusCode, markup: maud::Markup) -> Response {
    (status, Html(markup.into_string())).into_response()
}

fn query(q: Result<Query<HashMap<String, String>>, QueryRejection>) -> HashMap<String, String> {
    q.map(|Query(p)| p).unwrap_or_default()
}

/// `GET /`: the fleet overview.
pub(super) async fn fleet(State(state): State<AppState>, caller: Caller) -> PageResult {
    let p = principal(caller)?;
    let store = state.store();
    let summary = store
        .fleet_summary()
        .await
        .map_err(dev::device_store_error)?;
    let now = state.clock().now();
    let now_ms = dev::ms(now);
    let backend = state.devices()?;
    let minute = now_ms - now_ms.rem_euclid(60_000);
    let hour = backend
        .telemetry
        .readings_per_minute(minute - 60 * 60_000, minute)
        .await
        .map_err(dev::device_store_error)?;
    let per_minute = hour
        .iter()
        .find(|(m, _)| *m == minute - 60_000)
        .map_or(0, |(_, n)| *n);
    let problems: Vec<(String, RejectedView)> = backend
        .telemetry
        .rejected(None, 8)
        .await
        .map_err(dev::device_store_error)?
        .iter()
        .map(|r| (r.device.clone(), RejectedView::from(r)))
        .collect();
    let expiring = store
        .query_devices(&rampart_store::DeviceQuery {
            cert_expires_before: Some(now + time::Duration::days(30)),
            limit: 1,
            ..Default::default()
        })
        .await
        .map_err(dev::device_store_error)?
        .total;
    let blocked = summary
        .by_state
        .iter()
        .filter(|(s, _)| matches!(s, DeviceState::Disabled | DeviceState::Revoked))
        .map(|(_, n)| n)
        .sum();
    let view = FleetView {
        summary: &summary,
        per_minute,
        per_minute_hour: &hour,
        problems: &problems,
        expiring,
        blocked,
        firing_alerts: alerts_of(&state, &p, None).await?.map(|a| a.len()),
    };
    Ok(html(StatusCode::OK, ui::fleet(&p, &view)))
}

/// Alerts for the pages, when the caller may read them and the server has
/// alerts: every firing one (`device` `None`), or a device's firing and
/// recent ones, firing first.
async fn alerts_of(
    state: &AppState,
    p: &crate::auth::Principal,
    device: Option<&str>,
) -> Result<Option<Vec<rampart_store::Alert>>, ApiError> {
    let Ok(store) = state.alerts() else {
        return Ok(None);
    };
    if crate::auth::authorize(Some(p), crate::auth::Action::ReadAlerts).is_err() {
        return Ok(None);
    }
    let list = match device {
        None => store.firing_alerts().await,
        Some(d) => store
            .alerts(&rampart_store::AlertQuery {
                state: None,
                subject: Some(d.to_owned()),
                before: None,
                limit: 20,
            })
            .await
            .map(|mut list| {
                list.sort_by_key(|a| a.state != rampart_store::AlertState::Firing);
                list
            }),
    };
    list.map(Some).map_err(super::alerts::alert_store_error)
}

/// `GET /devices`.
pub(super) async fn devices(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let params = query(q);
    let (query, message) = match dev::list_query(&params, state.clock().now()) {
        Ok(q) => (q, None),
        Err(e) => (
            rampart_store::DeviceQuery {
                limit: dev::DEFAULT_PAGE,
                ..Default::default()
            },
            Some(Flash::error(e.message)),
        ),
    };
    let list = state
        .store()
        .query_devices(&query)
        .await
        .map_err(dev::device_store_error)?;
    let get = |k: &str| params.get(k).cloned().unwrap_or_default();
    let lp = ListParams {
        q: get("q"),
        state: get("state"),
        online: get("online"),
        owner: get("owner"),
        cert_expiring_days: get("certExpiringDays"),
        firmware: get("firmware"),
        sort: query.sort,
        desc: query.descending,
    };
    Ok(html(
        StatusCode::OK,
        ui::devices(&p, &lp, &list, message.as_ref()),
    ))
}

/// The chart range of `?range=` (and `from`/`to` when custom).
fn chart_range(
    params: &HashMap<String, String>,
    now_ms: i64,
) -> (String, Result<dev::Range, ApiError>) {
    let key = params.get("range").map_or("24h", String::as_str);
    let rel = match key {
        "1h" => Some("-1h"),
        "24h" => Some("-24h"),
        "7d" => Some("-7d"),
        "30d" => Some("-30d"),
        _ => None,
    };
    match rel {
        Some(from) => (
            key.to_owned(),
            dev::range(Some(from), Some("now"), Some("180"), now_ms),
        ),
        None => (
            "custom".to_owned(),
            dev::range(
                params.get("from").map(String::as_str),
                params.get("to").map(String::as_str),
                Some("180"),
                now_ms,
            ),
        ),
    }
}

/// The metrics charted with their units.
const CHARTED: &[(&str, &str, &str)] = &[
    ("temperature", "Temperature", "°C"),
    ("humidity", "Humidity", "%"),
];

/// `GET /devices/{id}?range=&from=&to=&confirm=`.
pub(super) async fn device(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let params = query(q);
    let shown = match dev::device_id(&id) {
        Ok(id) => render_device(&state, &p, &id, &params, None, StatusCode::OK).await,
        Err(e) => Err(e),
    };
    Ok(shown.unwrap_or_else(|e| problem(&p, e)))
}

/// An error of a page handler as a page.
fn problem(p: &crate::auth::Principal, e: ApiError) -> Response {
    html(e.status, ui::problem(p, e.status.as_u16(), &e.message))
}

async fn render_device(
    state: &AppState,
    p: &crate::auth::Principal,
    id: &rampart_proto::DeviceId,
    params: &HashMap<String, String>,
    message: Option<Flash>,
    status: StatusCode,
) -> PageResult {
    let detail = dev::detail(state, id).await?;
    let now_ms = dev::ms(state.clock().now());
    let (range_key, range) = chart_range(params, now_ms);
    let mut message = message;
    let range = match range {
        Ok(r) => r,
        Err(e) => {
            message.get_or_insert(Flash::error(e.message));
            dev::range(Some("-24h"), Some("now"), Some("180"), now_ms)?
        }
    };
    let mut charts = Vec::new();
    for (metric, title, unit) in CHARTED {
        let series = dev::series(state, id, metric, range).await?;
        let svg = chart::render(&Chart {
            id: &format!("chart-{metric}"),
            title: &format!("{id} {metric}"),
            unit,
            from_ms: range.from_ms,
            to_ms: range.to_ms,
            bucket_ms: series.bucket_ms,
            buckets: &series.buckets,
            width: 720,
            height: 240,
        });
        charts.push(((*title).to_owned(), svg));
    }
    let presence = dev::presence(state, id).await?;
    let confirm = params
        .get("confirm")
        .map(String::as_str)
        .filter(|c| matches!(*c, "disable" | "enable" | "revoke"));
    let alerts = alerts_of(state, p, Some(id.as_str())).await?;
    let extras = DeviceExtras {
        charts: &charts,
        range: &range_key,
        custom: (
            params.get("from").map_or("", String::as_str),
            params.get("to").map_or("", String::as_str),
        ),
        csv_href: format!(
            "/api/v1/devices/{id}/telemetry.csv?from={}&to={}",
            range.from_ms, range.to_ms
        ),
        presence: &presence,
        confirm,
        alerts: alerts.as_deref(),
    };
    Ok(html(
        status,
        ui::device(p, csrf_of(p), &detail, &extras, message.as_ref()),
    ))
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct ActionForm {
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    reason: Option<String>,
    #[allow(dead_code)]
    #[serde(default)]
    csrf_token: String,
}

async fn act(
    state: AppState,
    caller: Caller,
    client: SocketAddr,
    headers: HeaderMap,
    id: String,
    what: &'static str,
    form: Result<Form<ActionForm>, FormRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let id = dev::device_id(&id)?;
    let mut params = HashMap::new();
    let f = match form {
        Ok(Form(f)) => f,
        Err(e) => {
            params.insert("confirm".to_owned(), what.to_owned());
            let m = Flash::error(format!("the form could not be read: {}", e.body_text()));
            return render_device(&state, &p, &id, &params, Some(m), StatusCode::BAD_REQUEST).await;
        }
    };
    if f.confirm != "yes" {
        // No confirmation yet: show the confirmation step.
        params.insert("confirm".to_owned(), what.to_owned());
        return render_device(&state, &p, &id, &params, None, StatusCode::OK).await;
    }
    let op = match what {
        "disable" => DeviceOp::Disable,
        "enable" => DeviceOp::Enable,
        _ => {
            let reason = f
                .reason
                .as_deref()
                .and_then(|r| RevocationReason::ALL.into_iter().find(|x| x.as_str() == r))
                .unwrap_or(RevocationReason::Unspecified);
            DeviceOp::Revoke(reason)
        }
    };
    match dev::act(&state, &p, &origin_of(client, &headers), &id, op).await {
        Ok(d) => {
            let m = Flash::ok(match op {
                DeviceOp::Disable => format!(
                    "{} is disabled: it was disconnected and cannot connect until enabled.",
                    d.id
                ),
                DeviceOp::Enable => format!("{} is enabled (now {}).", d.id, d.state),
                DeviceOp::Revoke(_) => format!(
                    "{} is revoked: its certificate is on the CRL and it was disconnected.",
                    d.id
                ),
            });
            render_device(&state, &p, &id, &params, Some(m), StatusCode::OK).await
        }
        Err(e) if e.status.is_client_error() && e.status != StatusCode::NOT_FOUND => {
            render_device(
                &state,
                &p,
                &id,
                &params,
                Some(Flash::error(e.message)),
                e.status,
            )
            .await
        }
        Err(e) => Err(e),
    }
}

/// `POST /devices/{id}/disable`.
pub(super) async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> PageResult {
    act_page(state, caller, client, headers, id, "disable", form).await
}

/// Runs a device form, rendering its failure as a page.
async fn act_page(
    state: AppState,
    caller: Caller,
    client: SocketAddr,
    headers: HeaderMap,
    id: String,
    what: &'static str,
    form: Result<Form<ActionForm>, FormRejection>,
) -> PageResult {
    let p = principal(caller.clone())?;
    Ok(act(state, caller, client, headers, id, what, form)
        .await
        .unwrap_or_else(|e| problem(&p, e)))
}

/// `POST /devices/{id}/enable`.
pub(super) async fn enable(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> PageResult {
    act_page(state, caller, client, headers, id, "enable", form).await
}

/// `POST /devices/{id}/revoke`.
pub(super) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> PageResult {
    act_page(state, caller, client, headers, id, "revoke", form).await
}

/// `GET /claim?id=`: the form, and the status of claim `id`.
pub(super) async fn claim_form(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let params = query(q);
    let (claim, message) = match params.get("id").map(|i| i.parse::<u64>()) {
        None => (None, None),
        Some(Ok(id)) => match dev::claim_status(&state, &p, id).await {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(Flash::error(e.message))),
        },
        Some(Err(_)) => (None, Some(Flash::error("no such claim"))),
    };
    Ok(html(
        StatusCode::OK,
        ui::claim(&p, csrf_of(&p), "", claim.as_ref(), message.as_ref()),
    ))
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct ClaimForm {
    #[serde(default)]
    qr: String,
    #[serde(default)]
    device_id: String,
    #[serde(default)]
    claim_code: String,
    #[allow(dead_code)]
    #[serde(default)]
    csrf_token: String,
}

/// `POST /claim`: starts the claim, then shows its status.
pub(super) async fn claim_submit(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<ClaimForm>, FormRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let f = match form {
        Ok(Form(f)) => f,
        Err(e) => {
            let m = Flash::error(format!("the form could not be read: {}", e.body_text()));
            return Ok(html(
                StatusCode::BAD_REQUEST,
                ui::claim(&p, csrf_of(&p), "", None, Some(&m)),
            ));
        }
    };
    let some = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let body = ClaimBody {
        qr: some(&f.qr),
        device_id: some(&f.device_id),
        claim_code: some(&f.claim_code),
        fingerprint: None,
    };
    // A pasted label wins over half-filled manual fields.
    let body = if body.qr.is_some() {
        ClaimBody {
            device_id: None,
            claim_code: None,
            ..body
        }
    } else {
        body
    };
    match dev::start_claim(&state, &p, &origin_of(client, &headers), &body).await {
        Ok(c) => Ok(Redirect::to(&format!("/claim?id={}", c.id)).into_response()),
        Err(e) if e.status.is_client_error() => Ok(html(
            e.status,
            ui::claim(&p, csrf_of(&p), &f.qr, None, Some(&Flash::error(e.message))),
        )),
        Err(e) => Err(e),
    }
}

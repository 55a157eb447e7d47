//! The console pages of campaigns: list, detail, the new-campaign form,
//! and the actions as forms with a confirmation step (a `POST` without
//! `confirm=yes` only shows the confirmation). They act through
//! `campaigns`, the same functions as the API.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use rampart_store::Actor;

use super::account::{Caller, principal};
use super::campaigns::{self as api, CreateBody};
use super::firmware::list_with_keys;
use super::origin_of;
use super::pages::{csrf_of, html};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use crate::ui::campaigns::{self as ui, CampaignFormFields, CampaignView};
use crate::ui::layout::Flash;

type PageResult = Result<Response, ApiError>;

fn query(q: Result<Query<HashMap<String, String>>, QueryRejection>) -> HashMap<String, String> {
    q.map(|Query(p)| p).unwrap_or_default()
}

fn actor(p: &Principal, client: SocketAddr, headers: &HeaderMap) -> Actor {
    Actor {
        name: p.name.clone(),
        source: origin_of(client, headers).ip,
    }
}

/// `GET /campaigns`.
pub(super) async fn list(State(state): State<AppState>, caller: Caller) -> PageResult {
    let p = principal(caller)?;
    let list = api::list_with_counts(&state, &[]).await?;
    Ok(html(StatusCode::OK, ui::campaigns(&p, &list, None)))
}

async fn render(
    state: &AppState,
    p: &Principal,
    id: u64,
    params: &HashMap<String, String>,
    flash: Option<Flash>,
    status: StatusCode,
) -> PageResult {
    let mut filter = params.clone();
    let confirm = filter.remove("confirm");
    let (query, flash) = match api::entry_query(&filter) {
        Ok(q) => (q, flash),
        Err(e) => (Default::default(), flash.or(Some(Flash::error(e.message)))),
    };
    let d = api::detail(state, id, query).await?;
    let view = CampaignView {
        principal: p,
        csrf_token: csrf_of(p),
        campaign: &d.campaign,
        waves: &d.waves,
        counts: &d.counts,
        entries: &d.entries,
        query: &d.query,
        confirm: confirm.as_deref(),
        flash,
    };
    Ok(html(status, ui::campaign(&view)))
}

fn campaign_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "campaign_not_found",
            format!("no campaign with id '{id}'"),
        )
    })
}

/// `GET /campaigns/{id}?state=&wave=&offset=&confirm=`.
pub(super) async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let id = campaign_id(&id)?;
    render(&state, &p, id, &query(q), None, StatusCode::OK).await
}

#[derive(Debug, serde::Deserialize)]
pub(super) struct ActionForm {
    #[serde(default)]
    confirm: String,
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
    let id = campaign_id(&id)?;
    let mut params = HashMap::new();
    params.insert("confirm".to_owned(), what.to_owned());
    let confirmed = matches!(&form, Ok(Form(f)) if f.confirm == "yes");
    if !confirmed {
        return render(&state, &p, id, &params, None, StatusCode::OK).await;
    }
    let change = api::change_of(what).ok_or_else(ApiError::not_found)?;
    match api::change_campaign(&state, id, change, &actor(&p, client, &headers)).await {
        Ok(c) => {
            let text = match what {
                "approve" => "Approved: the first wave is offered the update within seconds.",
                "pause" => "Paused: no further offers; devices already updating finish.",
                "resume" => "Resumed.",
                _ => {
                    "Cancelled (emergency stop): no further offers; downloads in progress are told to stop."
                }
            };
            render(
                &state,
                &p,
                c.id,
                &HashMap::new(),
                Some(Flash::ok(text)),
                StatusCode::OK,
            )
            .await
        }
        Err(e) if e.status.is_client_error() && e.status != StatusCode::NOT_FOUND => {
            render(
                &state,
                &p,
                id,
                &HashMap::new(),
                Some(Flash::error(e.message)),
                e.status,
            )
            .await
        }
        Err(e) => Err(e),
    }
}

/// `POST /campaigns/{id}/approve`.
pub(super) async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> PageResult {
    act(state, caller, client, headers, id, "approve", form).await
}

/// `POST /campaigns/{id}/pause`.
pub(super) async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> PageResult {
    act(state, caller, client, headers, id, "pause", form).await
}

/// `POST /campaigns/{id}/resume`.
pub(super) async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> PageResult {
    act(state, caller, client, headers, id, "resume", form).await
}

/// `POST /campaigns/{id}/cancel`.
pub(super) async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    form: Result<Form<ActionForm>, FormRejection>,
) -> PageResult {
    act(state, caller, client, headers, id, "cancel", form).await
}

async fn form_page(
    state: &AppState,
    p: &Principal,
    f: &CampaignFormFields,
    flash: Option<Flash>,
    status: StatusCode,
) -> PageResult {
    let (firmware, _) = list_with_keys(state).await?;
    Ok(html(
        status,
        ui::new_campaign(p, csrf_of(p), &firmware, f, flash.as_ref()),
    ))
}

/// `GET /campaigns/new`.
pub(super) async fn new_form(State(state): State<AppState>, caller: Caller) -> PageResult {
    let p = principal(caller)?;
    form_page(
        &state,
        &p,
        &CampaignFormFields::default(),
        None,
        StatusCode::OK,
    )
    .await
}

/// The API body a filled-in form stands for.
pub(crate) fn form_body(f: &CampaignFormFields) -> Result<CreateBody, String> {
    let firmware_id = f
        .firmware_id
        .trim()
        .parse()
        .map_err(|_| "choose the firmware to roll out".to_owned())?;
    let percent = |what: &str, s: &str| -> Result<Option<f64>, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse::<f64>()
            .map(|v| Some(v / 100.0))
            .map_err(|_| format!("{what} must be a percentage such as 10"))
    };
    let waves = if f.waves.trim().is_empty() {
        None
    } else {
        let mut w = Vec::new();
        for part in f
            .waves
            .split([',', ' '])
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            w.push(
                part.trim_end_matches('%')
                    .parse::<u8>()
                    .map_err(|_| format!("wave '{part}' is not a percentage from 1 to 100"))?,
            );
        }
        Some(w)
    };
    let (devices, state) = match f.target.trim() {
        "devices" => (
            Some(
                f.devices
                    .split([',', ' ', '\n', '\r', '\t'])
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            None,
        ),
        "" => (None, None),
        other => (None, Some(other.to_owned())),
    };
    Ok(CreateBody {
        name: f.name.clone(),
        firmware_id,
        devices,
        state,
        waves,
        soak: Some(f.soak.trim().to_owned()).filter(|s| !s.is_empty()),
        success_threshold: percent("the success threshold", &f.success_percent)?,
        failure_threshold: percent("the failure threshold", &f.failure_percent)?,
        timeouts: None,
        approve: f.approve == "yes",
    })
}

/// `POST /campaigns`: creates, then shows the campaign.
pub(super) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<CampaignFormFields>, FormRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let f = match form {
        Ok(Form(f)) => f,
        Err(e) => {
            let m = Flash::error(format!("the form could not be read: {}", e.body_text()));
            return form_page(
                &state,
                &p,
                &CampaignFormFields::default(),
                Some(m),
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
    };
    let body = match form_body(&f) {
        Ok(b) => b,
        Err(m) => {
            return form_page(
                &state,
                &p,
                &f,
                Some(Flash::error(m)),
                StatusCode::BAD_REQUEST,
            )
            .await;
        }
    };
    match api::create_campaign(&state, body, &actor(&p, client, &headers)).await {
        Ok(c) => Ok(Redirect::to(&format!("/campaigns/{}", c.id)).into_response()),
        Err(e) if e.status.is_client_error() => {
            form_page(&state, &p, &f, Some(Flash::error(e.message)), e.status).await
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_in_form_becomes_the_api_body() {
        let f = CampaignFormFields {
            name: "spring".into(),
            firmware_id: "4".into(),
            target: "devices".into(),
            devices: "a-1, b-2\nc-3".into(),
            waves: "1, 10%, 100".into(),
            soak: "5m".into(),
            success_percent: "80".into(),
            failure_percent: "".into(),
            approve: "yes".into(),
            csrf_token: String::new(),
        };
        let b = form_body(&f).expect("valid");
        assert_eq!(b.firmware_id, 4);
        assert_eq!(
            b.devices,
            Some(vec!["a-1".to_owned(), "b-2".to_owned(), "c-3".to_owned()])
        );
        assert_eq!(b.waves, Some(vec![1, 10, 100]));
        assert_eq!(b.soak.as_deref(), Some("5m"));
        assert_eq!(b.success_threshold, Some(0.8));
        assert_eq!(b.failure_threshold, None);
        assert!(b.approve);
        let bound = form_body(&CampaignFormFields {
            firmware_id: "1".into(),
            target: "bound".into(),
            ..f.clone()
        })
        .expect("valid");
        assert_eq!(
            (bound.devices, bound.state.as_deref()),
            (None, Some("bound"))
        );
        for bad in [
            CampaignFormFields {
                firmware_id: "".into(),
                ..f.clone()
            },
            CampaignFormFields {
                waves: "ten".into(),
                ..f.clone()
            },
            CampaignFormFields {
                success_percent: "lots".into(),
                ..f.clone()
            },
        ] {
            assert!(form_body(&bad).is_err(), "{bad:?}");
        }
    }
}

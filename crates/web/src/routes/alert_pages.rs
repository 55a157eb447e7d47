//! The console pages of alerts, rules and channels, and dead letters:
//! forms (CSRF checked by the guard) acting through `alerts`, the same
//! checks and audit as the API, answered with the page and a message.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use rampart_store::{AlertQuery, AlertState};
use serde::Deserialize;

use super::account::{Caller, principal};
use super::alerts::{self as api, actor_of};
use super::pages::{csrf_of, html};
use crate::alert_config::{ChannelRequest, RuleRequest};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::state::AppState;
use crate::ui::alerts::{self as ui, AlertsView, DeadView, RulesView};
use crate::ui::layout::Flash;

type PageResult = Result<Response, ApiError>;

/// Recent resolved and closed alerts shown under the firing ones.
const RECENT: u32 = 50;

fn query(q: Result<Query<HashMap<String, String>>, QueryRejection>) -> HashMap<String, String> {
    q.map(|Query(p)| p).unwrap_or_default()
}

async fn alerts_page(
    state: &AppState,
    p: &Principal,
    params: &HashMap<String, String>,
    status: StatusCode,
    flash: Option<Flash>,
) -> PageResult {
    let store = state.alerts()?;
    let mut flash = flash;
    let filter = match api::state_filter(params.get("state").map(String::as_str)) {
        Ok(f) => f,
        Err(e) => {
            flash.get_or_insert(Flash::error(e.message));
            None
        }
    };
    let subject = params.get("subject").map_or("", |s| s.trim());
    let subject_q = (!subject.is_empty()).then(|| subject.to_owned());
    let query = |state, limit| AlertQuery {
        state,
        subject: subject_q.clone(),
        before: None,
        limit,
    };
    let (firing, recent) = match filter {
        None => {
            let firing = store
                .alerts(&query(Some(AlertState::Firing), api::MAX_ALERT_PAGE))
                .await
                .map_err(api::alert_store_error)?;
            let recent = store
                .alerts(&query(
                    None,
                    u32::try_from(firing.len())
                        .unwrap_or(u32::MAX)
                        .saturating_add(RECENT)
                        .min(api::MAX_ALERT_PAGE),
                ))
                .await
                .map_err(api::alert_store_error)?
                .into_iter()
                .filter(|a| a.state != AlertState::Firing)
                .take(RECENT as usize)
                .collect();
            (firing, recent)
        }
        Some(s) => {
            let list = store
                .alerts(&query(Some(s), api::MAX_ALERT_PAGE))
                .await
                .map_err(api::alert_store_error)?;
            (Vec::new(), list)
        }
    };
    let view = AlertsView {
        principal: p,
        csrf_token: csrf_of(p),
        filter: filter.map_or("all", AlertState::as_str),
        subject,
        firing: &firing,
        recent: &recent,
        flash,
    };
    Ok(html(status, ui::alerts(&view)))
}

/// `GET /alerts?state=&subject=`.
pub(super) async fn alerts(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> PageResult {
    let p = principal(caller)?;
    alerts_page(&state, &p, &query(q), StatusCode::OK, None).await
}

/// `POST /alerts/{id}/acknowledge`: back to the alerts.
pub(super) async fn acknowledge(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(id): Path<String>,
) -> PageResult {
    let p = principal(caller)?;
    match api::acknowledge_alert(&state, &id, &actor_of(&p, client, &headers)).await {
        Ok(_) => Ok(Redirect::to("/alerts").into_response()),
        Err(e) => {
            alerts_page(
                &state,
                &p,
                &HashMap::new(),
                e.status,
                Some(Flash::error(e.message)),
            )
            .await
        }
    }
}

/// A refused form's values, to fill the form again.
#[derive(Debug, Default, Clone, Copy)]
struct Drafts<'a> {
    rule: Option<&'a RuleRequest>,
    channel: Option<&'a ChannelRequest>,
}

async fn rules_page(
    state: &AppState,
    p: &Principal,
    status: StatusCode,
    flash: Option<Flash>,
    confirm: Option<(&str, &str)>,
    drafts: Drafts<'_>,
) -> PageResult {
    let rules = api::rules_of(state).await?;
    let channels = api::channels_of(state).await?;
    let view = RulesView {
        principal: p,
        csrf_token: csrf_of(p),
        rules: &rules,
        channels: &channels,
        flash,
        confirm,
        rule_draft: drafts.rule,
        channel_draft: drafts.channel,
    };
    Ok(html(status, ui::rules(&view)))
}

/// `GET /alert-rules?remove-rule=&remove-channel=`.
pub(super) async fn rules(
    State(state): State<AppState>,
    caller: Caller,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let params = query(q);
    let confirm = params
        .get("remove-rule")
        .map(|n| ("rule", n.as_str()))
        .or_else(|| {
            params
                .get("remove-channel")
                .map(|n| ("channel", n.as_str()))
        });
    rules_page(&state, &p, StatusCode::OK, None, confirm, Drafts::default()).await
}

/// Text or `None` when blank.
fn optional(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

/// The add-rule form.
#[derive(Debug, Deserialize)]
pub(super) struct RuleForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    expr: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    device: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    new_metric: String,
}

/// `POST /alert-rules`.
pub(super) async fn rule_create(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    form: Result<Form<RuleForm>, FormRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let req = match form {
        Ok(Form(f)) => RuleRequest {
            name: f.name.trim().to_owned(),
            expr: f.expr.trim().to_owned(),
            channel: f.channel.trim().to_owned(),
            device: optional(&f.device),
            owner: optional(&f.owner),
            new_metric: f.new_metric == "yes",
        },
        Err(e) => {
            let flash = Flash::error(format!("the form could not be read: {}", e.body_text()));
            return rules_page(
                &state,
                &p,
                StatusCode::BAD_REQUEST,
                Some(flash),
                None,
                Drafts::default(),
            )
            .await;
        }
    };
    match api::add_rule(&state, &req, &actor_of(&p, client, &headers)).await {
        Ok(r) => {
            let flash = Flash::ok(format!(
                "Rule {} added: {} → {}.",
                r.name, r.expr, r.channel
            ));
            rules_page(
                &state,
                &p,
                StatusCode::OK,
                Some(flash),
                None,
                Drafts::default(),
            )
            .await
        }
        Err(e) => {
            let drafts = Drafts {
                rule: Some(&req),
                channel: None,
            };
            rules_page(
                &state,
                &p,
                e.status,
                Some(Flash::error(e.message)),
                None,
                drafts,
            )
            .await
        }
    }
}

/// A removal form: `confirm=yes` from the confirmation step.
#[derive(Debug, Deserialize)]
pub(super) struct RemoveForm {
    #[serde(default)]
    confirm: String,
}

fn confirmed(form: Result<Form<RemoveForm>, FormRejection>) -> bool {
    form.is_ok_and(|Form(f)| f.confirm == "yes")
}

/// `POST /alert-rules/{name}/remove`: without the confirmation, asks for it.
pub(super) async fn rule_remove(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(name): Path<String>,
    form: Result<Form<RemoveForm>, FormRejection>,
) -> PageResult {
    let p = principal(caller)?;
    if !confirmed(form) {
        return rules_page(
            &state,
            &p,
            StatusCode::OK,
            None,
            Some(("rule", &name)),
            Drafts::default(),
        )
        .await;
    }
    match api::remove_rule(&state, &name, &actor_of(&p, client, &headers)).await {
        Ok(r) => {
            let flash = Flash::ok(format!("Rule {} removed.", r.name));
            rules_page(
                &state,
                &p,
                StatusCode::OK,
                Some(flash),
                None,
                Drafts::default(),
            )
            .await
        }
        Err(e) => {
            rules_page(
                &state,
                &p,
                e.status,
                Some(Flash::error(e.message)),
                None,
                Drafts::default(),
            )
            .await
        }
    }
}

/// The add-channel form.
#[derive(Debug, Deserialize)]
pub(super) struct ChannelForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    secret: String,
    #[serde(default)]
    per_minute: String,
    #[serde(default)]
    allow_private: String,
}

/// `POST /alert-channels`.
pub(super) async fn channel_create(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    form: Result<Form<ChannelForm>, FormRejection>,
) -> PageResult {
    let p = principal(caller)?;
    let req = form
        .map_err(|e| format!("the form could not be read: {}", e.body_text()))
        .and_then(|Form(f)| {
            let per_minute = match f.per_minute.trim() {
                "" => None,
                n => Some(
                    n.parse::<u32>()
                        .map_err(|_| "Deliveries per minute must be a whole number".to_owned())?,
                ),
            };
            Ok(ChannelRequest {
                name: f.name.trim().to_owned(),
                kind: f.kind.trim().to_owned(),
                url: f.url.trim().to_owned(),
                allow_private: f.allow_private == "yes",
                secret: (!f.secret.is_empty()).then_some(f.secret),
                per_minute,
            })
        });
    let req = match req {
        Ok(r) => r,
        Err(message) => {
            let flash = Flash::error(message);
            return rules_page(
                &state,
                &p,
                StatusCode::BAD_REQUEST,
                Some(flash),
                None,
                Drafts::default(),
            )
            .await;
        }
    };
    match api::add_channel(&state, &req, &actor_of(&p, client, &headers)).await {
        Ok(c) => {
            let flash = Flash::ok(format!(
                "Channel {} added ({}, {}).",
                c.name, c.kind, c.target
            ));
            rules_page(
                &state,
                &p,
                StatusCode::OK,
                Some(flash),
                None,
                Drafts::default(),
            )
            .await
        }
        Err(e) => {
            let drafts = Drafts {
                rule: None,
                channel: Some(&req),
            };
            rules_page(
                &state,
                &p,
                e.status,
                Some(Flash::error(e.message)),
                None,
                drafts,
            )
            .await
        }
    }
}

/// `POST /alert-channels/{name}/remove`: without the confirmation, asks
/// for it.
pub(super) async fn channel_remove(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(name): Path<String>,
    form: Result<Form<RemoveForm>, FormRejection>,
) -> PageResult {
    let p = principal(caller)?;
    if !confirmed(form) {
        return rules_page(
            &state,
            &p,
            StatusCode::OK,
            None,
            Some(("channel", &name)),
            Drafts::default(),
        )
        .await;
    }
    match api::remove_channel(&state, &name, &actor_of(&p, client, &headers)).await {
        Ok(c) => {
            let flash = Flash::ok(format!("Channel {} removed.", c.name));
            rules_page(
                &state,
                &p,
                StatusCode::OK,
                Some(flash),
                None,
                Drafts::default(),
            )
            .await
        }
        Err(e) => {
            rules_page(
                &state,
                &p,
                e.status,
                Some(Flash::error(e.message)),
                None,
                Drafts::default(),
            )
            .await
        }
    }
}

async fn dead_page(
    state: &AppState,
    p: &Principal,
    status: StatusCode,
    flash: Option<Flash>,
) -> PageResult {
    let dead = api::dead_letters(state).await?;
    let view = DeadView {
        principal: p,
        csrf_token: csrf_of(p),
        dead: &dead,
        flash,
    };
    Ok(html(status, ui::dead_letters(&view)))
}

/// `GET /alert-deliveries/dead`.
pub(super) async fn dead(State(state): State<AppState>, caller: Caller) -> PageResult {
    let p = principal(caller)?;
    dead_page(&state, &p, StatusCode::OK, None).await
}

/// `POST /alert-deliveries/{id}/retry`.
pub(super) async fn retry(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    Path(id): Path<String>,
) -> PageResult {
    let p = principal(caller)?;
    match api::retry_dead(&state, &id, &actor_of(&p, client, &headers)).await {
        Ok(d) => {
            let flash = Flash::ok(format!("Delivery {} is queued again.", d.id));
            dead_page(&state, &p, StatusCode::OK, Some(flash)).await
        }
        Err(e) => dead_page(&state, &p, e.status, Some(Flash::error(e.message))).await,
    }
}

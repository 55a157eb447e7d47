//! One's own notifications: `GET /api/v1/notifications`, `POST
//! /api/v1/notifications/read`, and the `/notifications` page with its
//! "mark all read" form. Every query names the signed-in user's id, so
//! nobody reads or marks another's.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use rampart_store::notifications::MAX_NOTIFICATION_PAGE;
use rampart_store::{Actor, Notification, NotificationPage, NotificationQuery};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::account::{Caller, principal};
use super::pages::{csrf_of, html};
use super::{json_body, origin_of};
use crate::auth::Principal;
use crate::auth::accounts::store_error;
use crate::error::ApiError;
use crate::state::AppState;
use crate::ui::console as ui;

/// The list parameters of `GET /api/v1/notifications` and the page.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only notifications with a smaller id (the `nextBefore` of the
    /// previous page).
    before: Option<u64>,
    /// Only unread ones.
    unread: Option<bool>,
    /// How many, 1 to 200 (default 50).
    limit: Option<u32>,
}

/// One notification as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NotificationView {
    /// Its number, ascending in time.
    id: u64,
    /// A stable dotted code: `claim.bound`, `claim.failed`, ...
    kind: String,
    /// One line.
    title: String,
    /// The details, plain text.
    body: String,
    /// A console path to follow.
    link: Option<String>,
    /// When it was written (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: OffsetDateTime,
    /// When it was marked read (RFC 3339), `null` while unread.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    read_at: Option<OffsetDateTime>,
}

impl From<&Notification> for NotificationView {
    fn from(n: &Notification) -> Self {
        Self {
            id: n.id,
            kind: n.kind.clone(),
            title: n.title.clone(),
            body: n.body.clone(),
            link: n.link.clone(),
            created_at: n.created_at,
            read_at: n.read_at,
        }
    }
}

/// The answer of `GET /api/v1/notifications`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NotificationList {
    /// Newest first.
    notifications: Vec<NotificationView>,
    /// Unread notifications in all pages.
    unread: u64,
    /// The `before` of the next page, when there may be one.
    next_before: Option<u64>,
}

/// The body of `POST /api/v1/notifications/read`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ReadBody {
    /// Mark those up to this id (the newest one the reader saw); all
    /// when absent.
    #[serde(default)]
    up_to: Option<u64>,
}

/// The answer of `POST /api/v1/notifications/read`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReadResult {
    /// How many were marked read now.
    marked: u64,
    /// How many stay unread.
    unread: u64,
}

fn query_of(p: &ListParams) -> Result<NotificationQuery, ApiError> {
    let limit = p.limit.unwrap_or(50);
    if !(1..=MAX_NOTIFICATION_PAGE).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be between 1 and {MAX_NOTIFICATION_PAGE}"),
        ));
    }
    Ok(NotificationQuery {
        before: p.before,
        unread_only: p.unread.unwrap_or(false),
        limit,
    })
}

async fn list_of(
    state: &AppState,
    p: &Principal,
    q: &NotificationQuery,
) -> Result<NotificationPage, ApiError> {
    state
        .notifications()
        .notifications(&p.user_id, q)
        .await
        .map_err(store_error)
}

/// The next page's cursor: the last id, when the page is full.
fn next_before(page: &NotificationPage, limit: u32) -> Option<u64> {
    (page.notifications.len() >= limit as usize)
        .then(|| page.notifications.last().map(|n| n.id))
        .flatten()
}

/// Marks the caller's notifications read (up to `up_to`), as the caller.
async fn mark(
    state: &AppState,
    p: &Principal,
    up_to: Option<u64>,
    actor: Actor,
) -> Result<ReadResult, ApiError> {
    let store = state.notifications();
    let marked = store
        .mark_notifications_read(&p.user_id, up_to, state.clock().now(), &actor)
        .await
        .map_err(store_error)?;
    let unread = store
        .unread_notifications(&p.user_id)
        .await
        .map_err(store_error)?;
    if marked > 0
        && let Some(hub) = state.inbox()
    {
        // The user's other tabs update their badge.
        hub.wake();
    }
    Ok(ReadResult { marked, unread })
}

fn actor(p: &Principal, client: SocketAddr, headers: &HeaderMap) -> Actor {
    Actor {
        name: p.name.clone(),
        source: origin_of(client, headers).ip,
    }
}

/// `GET /api/v1/notifications`: the caller's own, newest first.
#[utoipa::path(get, path = "/api/v1/notifications", tag = "notifications",
    params(ListParams),
    responses((status = 200, description = "The caller's notifications, newest first, and the unread count", body = NotificationList),
        (status = 400, description = "A bad or unknown parameter", body = crate::error::ErrorBody)))]
pub(super) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<NotificationList>, ApiError> {
    let p = principal(caller)?;
    let Query(params) = params
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let q = query_of(&params)?;
    let page = list_of(&state, &p, &q).await?;
    Ok(Json(NotificationList {
        next_before: next_before(&page, q.limit),
        notifications: page
            .notifications
            .iter()
            .map(NotificationView::from)
            .collect(),
        unread: page.unread,
    }))
}

/// `POST /api/v1/notifications/read`: marks the caller's own read.
#[utoipa::path(post, path = "/api/v1/notifications/read", tag = "notifications",
    request_body = ReadBody,
    responses((status = 200, description = "How many were marked read, and how many stay unread", body = ReadResult),
        (status = 400, description = "Malformed JSON or unknown field", body = crate::error::ErrorBody)))]
pub(super) async fn mark_read(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ReadResult>, ApiError> {
    let p = principal(caller)?;
    let b: ReadBody = json_body(&state, body)?;
    let done = mark(&state, &p, b.up_to, actor(&p, client, &headers)).await?;
    Ok(Json(done))
}

/// `GET /api/v1/notifications/events`: the caller's unread count as
/// Server-Sent Events, for the bell (the first event at once, then one per
/// change). Only for `Accept: text/event-stream` (what `EventSource`
/// sends); anything else is 406, so that a plain client does not hang.
#[utoipa::path(get, path = "/api/v1/notifications/events", tag = "notifications",
    responses((status = 200, description = "Events `unread` with data `{\"unread\": n}` (text/event-stream)", body = String, content_type = "text/event-stream"),
        (status = 406, description = "The request does not accept text/event-stream", body = crate::error::ErrorBody),
        (status = 503, description = "Live updates are off in this server, or too many streams are open", body = crate::error::ErrorBody)))]
pub(super) async fn events(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = principal(caller)?;
    let wants_events = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"));
    if !wants_events {
        return Err(ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "this is an event stream: send Accept: text/event-stream (EventSource does)",
        ));
    }
    let unavailable = |message: String| ApiError {
        retry_after: Some(5),
        ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "live_unavailable", message)
    };
    let hub = state.inbox().ok_or_else(|| {
        unavailable("this server was started without live notification updates".into())
    })?;
    hub.subscribe(state.notifications_shared(), p.user_id)
        .map_err(|e| unavailable(e.to_string()))
}

/// `GET /notifications`: the page.
pub(super) async fn page(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let p = principal(caller)?;
    // A bad query string shows the first page with the problem above it.
    let (q, problem) = match params
        .map_err(|e| e.body_text())
        .and_then(|Query(p)| query_of(&p).map_err(|e| e.message))
    {
        Ok(q) => (q, None),
        Err(problem) => (NotificationQuery::default(), Some(problem)),
    };
    let page = list_of(&state, &p, &q).await?;
    let view = ui::NotificationsView {
        principal: &p,
        csrf_token: csrf_of(&p),
        notifications: &page.notifications,
        unread: page.unread,
        next_before: next_before(&page, q.limit),
        problem,
    };
    Ok(html(StatusCode::OK, ui::notifications(&view)))
}

/// The "mark all read" form: the newest id the page showed.
#[derive(Debug, Deserialize)]
pub(super) struct ReadForm {
    #[serde(default)]
    up_to: String,
}

/// `POST /notifications/read`: marks read, back to the page.
pub(super) async fn page_mark_read(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    form: Result<Form<ReadForm>, FormRejection>,
) -> Result<Response, ApiError> {
    let p = principal(caller)?;
    // A missing or unreadable `up_to` marks everything, as the API does.
    let up_to = form
        .ok()
        .and_then(|Form(f)| f.up_to.trim().parse::<u64>().ok());
    mark(&state, &p, up_to, actor(&p, client, &headers)).await?;
    Ok(Redirect::to("/notifications").into_response())
}

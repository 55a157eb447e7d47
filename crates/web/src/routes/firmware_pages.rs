//! The console page of firmware. Uploads go to the JSON API from our own
//! script (`/static/console.js`), which sends the session's CSRF token in
//! `X-CSRF-Token`: a bundle is too large for the guard's form check.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::account::{Caller, principal};
use super::firmware::list_with_keys;
use super::pages::{csrf_of, html};
use crate::error::ApiError;
use crate::state::AppState;
use crate::ui::firmware::{self as ui, FirmwareView};

/// `GET /firmware`.
pub(super) async fn firmware(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let p = principal(caller)?;
    let (list, keys) = list_with_keys(&state).await?;
    let view = FirmwareView {
        principal: &p,
        csrf_token: csrf_of(&p),
        firmware: &list,
        keys: &keys,
        max_image_size: state.ota()?.max_image_size,
    };
    Ok(html(StatusCode::OK, ui::firmware(&view)))
}

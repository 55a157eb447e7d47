//! The console's HTML: the shared layout, the pages of sign-in and
//! account management, and the stylesheet embedded in the binary.
//!
//! Pages are rendered on the server with `maud` (escaped by default). No
//! inline script or style anywhere: the CSP forbids both.

pub(crate) mod alerts;
pub(crate) mod campaigns;
pub(crate) mod console;
pub(crate) mod firmware;
pub mod layout;
pub(crate) mod pages;
pub(crate) mod registry;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// The stylesheet, embedded at build time.
pub const STYLESHEET: &str = include_str!("../../static/app.css");

/// The stylesheet's content hash (first 16 hex digits): its ETag and the
/// `?v=` of its URL, so browsers cache it until it changes.
pub fn stylesheet_version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        let digest = hex::encode(Sha256::digest(STYLESHEET.as_bytes()));
        digest.chars().take(16).collect()
    })
}

/// The console's script (live chart, claim status, camera scan),
/// embedded at build time.
pub const CONSOLE_SCRIPT: &str = include_str!("../../static/console.js");

/// The script's content hash (first 16 hex digits), as for the stylesheet.
pub fn console_script_version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        let digest = hex::encode(Sha256::digest(CONSOLE_SCRIPT.as_bytes()));
        digest.chars().take(16).collect()
    })
}

/// `GET /static/console.js`.
pub(crate) async fn console_script(headers: HeaderMap) -> Response {
    asset(
        &headers,
        console_script_version(),
        "text/javascript; charset=utf-8",
        CONSOLE_SCRIPT,
    )
}

/// `GET /static/app.css`: with an ETag; `If-None-Match` gets 304.
pub(crate) async fn stylesheet(headers: HeaderMap) -> Response {
    asset(
        &headers,
        stylesheet_version(),
        "text/css; charset=utf-8",
        STYLESHEET,
    )
}

/// A static asset with its ETag; `If-None-Match` gets 304.
fn asset(
    headers: &HeaderMap,
    version: &str,
    content_type: &'static str,
    body: &'static str,
) -> Response {
    let etag = format!("\"{version}\"");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut r = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    r
}

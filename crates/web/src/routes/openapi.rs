//! The OpenAPI 3 document of `/api/v1`, generated from the handlers'
//! `#[utoipa::path]` annotations. A test checks that every `/api/v1`
//! route of the route table is in it, so a route cannot ship undocumented.

use axum::Json;
use axum::response::IntoResponse;
use utoipa::OpenApi;

use super::{
    account, alerts, campaigns, devices, enroll, firmware, notifications, registry, users,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Rampart API",
        description = "The JSON API of the Rampart console. Authenticate with a session cookie (plus its CSRF token in `X-CSRF-Token` for changes) or `Authorization: Bearer rmp_api_...`. Errors are `{\"error\": {\"code\", \"message\"}}`; unknown JSON fields are refused."
    ),
    paths(
        enroll::enroll,
        account::setup,
        account::login,
        account::accept_invite,
        account::logout,
        account::logout_everywhere,
        account::me,
        account::sessions,
        account::password,
        account::mfa_start,
        account::mfa_confirm,
        account::mfa_disable,
        users::list_tokens,
        users::create_token,
        users::revoke_token,
        users::list,
        users::invite,
        users::change,
        users::mfa_reset,
        registry::list_enroll_tokens,
        registry::create_enroll_token_api,
        registry::revoke_enroll_token_api,
        registry::list_services,
        registry::create_service_api,
        registry::revoke_service_api,
        registry::audit,
        devices::list,
        devices::show,
        devices::telemetry,
        devices::telemetry_csv,
        devices::presence,
        devices::events,
        devices::disable,
        devices::enable,
        devices::revoke,
        devices::claim_start,
        devices::claim_show,
        firmware::list,
        firmware::upload,
        firmware::keys,
        firmware::show,
        notifications::list,
        notifications::events,
        notifications::mark_read,
        campaigns::list,
        campaigns::create,
        campaigns::show,
        campaigns::approve,
        campaigns::pause,
        campaigns::resume,
        campaigns::cancel,
        alerts::list,
        alerts::show,
        alerts::acknowledge,
        alerts::list_channels,
        alerts::create_channel,
        alerts::delete_channel,
        alerts::list_rules,
        alerts::create_rule,
        alerts::delete_rule,
        alerts::list_dead,
        alerts::retry,
        document,
    )
)]
pub(crate) struct ApiDoc;

/// The document as JSON.
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// `GET /api/v1/openapi.json`.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", body = Object)))]
pub(super) async fn document() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::ROUTES;

    #[test]
    fn every_api_route_is_documented() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).expect("valid JSON");
        let version = doc["openapi"].as_str().unwrap_or_default();
        assert!(version.starts_with("3."), "openapi is {version:?}");
        let mut missing = Vec::new();
        for r in ROUTES.iter().filter(|r| r.path.starts_with("/api/v1/")) {
            let method = r.method.to_ascii_lowercase();
            if doc["paths"][r.path][&method].is_null() {
                missing.push(format!("{} {}", r.method, r.path));
            }
        }
        assert!(missing.is_empty(), "undocumented API routes: {missing:?}");
    }

    /// Every `$ref` in `v`, recursively.
    fn refs<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x.as_str()) {
                        ("$ref", Some(r)) => out.push(r),
                        _ => refs(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn every_answer_has_a_schema_and_errors_share_one() {
        let doc: serde_json::Value = serde_json::from_str(&openapi_json()).expect("valid JSON");
        let paths = doc["paths"].as_object().expect("paths");
        let mut problems = Vec::new();
        let mut operations = 0;
        for (path, item) in paths {
            for (method, op) in item.as_object().into_iter().flatten() {
                operations += 1;
                let responses = op["responses"].as_object().cloned().unwrap_or_default();
                for (status, response) in &responses {
                    let at = format!("{} {path} {status}", method.to_uppercase());
                    let schemas: Vec<_> = response["content"]
                        .as_object()
                        .into_iter()
                        .flat_map(|c| c.values())
                        .map(|media| &media["schema"])
                        .filter(|s| !s.is_null())
                        .collect();
                    if status.starts_with('2') && status != "204" && schemas.is_empty() {
                        problems.push(format!("{at}: no response schema"));
                    }
                    if status == "204" && !schemas.is_empty() {
                        problems.push(format!("{at}: 204 with a body"));
                    }
                    if (status.starts_with('4') || status.starts_with('5'))
                        && !schemas
                            .iter()
                            .any(|s| s["$ref"] == "#/components/schemas/ErrorBody")
                    {
                        problems.push(format!("{at}: not the shared error body"));
                    }
                }
            }
        }
        assert!(operations > 30, "{operations} operations");
        assert!(problems.is_empty(), "{problems:#?}");
        // Every reference resolves.
        let mut all = Vec::new();
        refs(&doc, &mut all);
        let unresolved: Vec<_> = all
            .into_iter()
            .filter(|r| {
                r.strip_prefix("#/components/schemas/")
                    .is_none_or(|name| doc["components"]["schemas"][name].is_null())
            })
            .collect();
        assert!(unresolved.is_empty(), "unresolved: {unresolved:?}");
        let error = &doc["components"]["schemas"]["ErrorDetail"]["properties"];
        assert!(
            error["code"].is_object() && error["message"].is_object(),
            "{error}"
        );
    }
}

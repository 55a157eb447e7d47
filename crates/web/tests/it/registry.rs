//! Enrollment tokens, service identities and the audit log through the
//! JSON API and the console forms: what is shown once, what is audited
//! with the signed-in user as actor, what is refused and how.

use serde_json::json;

use crate::common::{Server, config};
use crate::console::Req;

#[tokio::test]
async fn an_enrollment_token_is_shown_once_enrolls_and_is_revoked() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let r = Req::post("/api/v1/enroll-tokens")
        .session(&owner)
        .json(json!({ "uses": 2, "expiresInHours": 1, "idPrefix": "sensor-" }))
        .send(&s)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let secret = r.body["token"].as_str().expect("token").to_owned();
    let id = r.body["enrollToken"]["id"].as_str().expect("id").to_owned();
    assert!(secret.starts_with("rmp_enr_"));
    assert_eq!(r.body["enrollToken"]["uses_allowed"], 2, "{}", r.text);

    let list = Req::get("/api/v1/enroll-tokens")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(list.status, 200);
    assert!(
        !list.text.contains(&secret),
        "the list never shows the secret"
    );
    assert_eq!(list.body["enrollTokens"][0]["token"]["id"], id.as_str());
    assert_eq!(list.body["enrollTokens"][0]["state"], "active");

    // The token works for a device.
    let r = s.enroll(Some(&secret), "sensor-1").await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    let r = Req::new(
        reqwest::Method::DELETE,
        &format!("/api/v1/enroll-tokens/{id}"),
    )
    .session(&owner)
    .send(&s)
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.body["enrollToken"]["revoked_at"].is_string(),
        "{}",
        r.text
    );
    let again = Req::new(
        reqwest::Method::DELETE,
        &format!("/api/v1/enroll-tokens/{id}"),
    )
    .session(&owner)
    .send(&s)
    .await;
    assert_eq!((again.status, again.code()), (409, "enroll_token_state"));
    let r = s.enroll(Some(&secret), "sensor-2").await;
    assert_eq!(r.status, 401, "a revoked token registers nothing");

    // Bad input: unknown field, out-of-range scope.
    let r = Req::post("/api/v1/enroll-tokens")
        .session(&owner)
        .json(json!({ "uses": 1, "colour": "red" }))
        .send(&s)
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_json"));
    assert!(r.text.contains("colour"), "{}", r.text);
    let r = Req::post("/api/v1/enroll-tokens")
        .session(&owner)
        .json(json!({ "uses": 0 }))
        .send(&s)
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_token_spec"));

    // Audited with the signed-in user as actor.
    let audit = Req::get("/api/v1/audit?action=enrollment-token.&actor=owner")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(audit.status, 200, "{}", audit.text);
    let actions: Vec<&str> = audit.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(actions.len() >= 2, "{}", audit.text);
    assert!(
        actions.iter().all(|a| a.starts_with("enrollment-token.")),
        "{actions:?}"
    );
    assert_eq!(audit.body["chain"]["ok"], true);
}

#[tokio::test]
async fn a_service_gets_its_key_once_and_is_revoked() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let r = Req::post("/api/v1/services")
        .session(&owner)
        .json(json!({ "name": "billing-exporter" }))
        .send(&s)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let key = r.body["keyPem"].as_str().expect("key");
    assert!(key.contains("BEGIN PRIVATE KEY"), "{key}");
    assert!(
        r.body["certificatePem"]
            .as_str()
            .is_some_and(|c| c.matches("BEGIN CERTIFICATE").count() == 2),
        "leaf and issuing CA"
    );
    let list = Req::get("/api/v1/services").session(&owner).send(&s).await;
    assert_eq!(list.body["services"][0]["id"], "billing-exporter");
    assert!(!list.text.contains("PRIVATE KEY"));

    let taken = Req::post("/api/v1/services")
        .session(&owner)
        .json(json!({ "name": "billing-exporter" }))
        .send(&s)
        .await;
    assert_eq!((taken.status, taken.code()), (409, "name_taken"));
    let bad = Req::post("/api/v1/services")
        .session(&owner)
        .json(json!({ "name": "../etc" }))
        .send(&s)
        .await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_name"));

    let r = Req::post("/api/v1/services/billing-exporter/revoke")
        .session(&owner)
        .json(json!({ "reason": "key-compromise" }))
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["service"]["state"], "revoked");
    let r = Req::post("/api/v1/services/billing-exporter/revoke")
        .session(&owner)
        .json(json!({ "reason": "because" }))
        .send(&s)
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_reason"));

    let audit = Req::get("/api/v1/audit?subject=billing-exporter")
        .session(&owner)
        .send(&s)
        .await;
    let entries = audit.body["entries"].as_array().expect("entries");
    assert!(entries.len() >= 2, "{}", audit.text);
    assert!(
        entries.iter().all(|e| e["actor"] == "owner"),
        "{}",
        audit.text
    );
}

#[tokio::test]
async fn the_audit_log_pages_and_refuses_bad_filters() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    for _ in 0..5 {
        s.token(1, None, None).await;
    }
    let first = Req::get("/api/v1/audit?limit=2")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(first.status, 200, "{}", first.text);
    let seqs = |r: &crate::console::Reply| -> Vec<u64> {
        r.body["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["seq"].as_u64())
            .collect()
    };
    let a = seqs(&first);
    assert_eq!(a.len(), 2);
    assert!(a[0] > a[1], "newest first: {a:?}");
    let before = first.body["nextBefore"].as_u64().expect("more pages");
    assert_eq!(before, a[1]);
    let second = Req::get(&format!("/api/v1/audit?limit=2&before={before}"))
        .session(&owner)
        .send(&s)
        .await;
    let b = seqs(&second);
    assert_eq!(b, vec![a[1] - 1, a[1] - 2]);

    for bad in ["limit=0", "since=yesterday", "colour=red"] {
        let r = Req::get(&format!("/api/v1/audit?{bad}"))
            .session(&owner)
            .send(&s)
            .await;
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_query"),
            "{bad}: {}",
            r.text
        );
    }
    let future = Req::get("/api/v1/audit?since=2999-01-01T00:00:00Z")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(future.body["entries"], json!([]));
}

#[tokio::test]
async fn the_pages_create_show_once_and_refuse_a_forged_form() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let r = Req::post("/enroll-tokens")
        .session(&owner)
        .form(&[
            ("csrf_token", &owner.csrf),
            ("uses", "3"),
            ("expires_in_hours", "2"),
        ])
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("rmp_enr_"), "the token is on the page once");
    let page = Req::get("/enroll-tokens").session(&owner).send(&s).await;
    assert!(!page.text.contains("rmp_enr_"), "and not again");
    assert!(page.text.contains("0 / 3"), "{}", page.text);

    let forged = Req::post("/services")
        .cookie(&owner.cookie)
        .form(&[("csrf_token", "forged"), ("name", "svc-a")])
        .send(&s)
        .await;
    assert_eq!((forged.status, forged.code()), (403, "csrf_refused"));
    let r = Req::post("/services")
        .session(&owner)
        .form(&[("csrf_token", &owner.csrf), ("name", "svc-a")])
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("BEGIN PRIVATE KEY"));

    let audit = Req::get("/audit?actor=owner")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(audit.status, 200);
    assert!(audit.text.contains("Chain verified"), "{}", audit.text);
    assert!(audit.text.contains("service.create"), "{}", audit.text);

    let viewer = s.user(&owner, "vera", "viewer").await;
    let r = Req::get("/api/v1/audit").session(&viewer).send(&s).await;
    assert_eq!((r.status, r.code()), (403, "forbidden"));
}

#[tokio::test]
async fn the_openapi_document_is_served_and_lists_every_api_route() {
    let s = Server::start(config()).await;
    let r = Req::get("/api/v1/openapi.json").send(&s).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.body["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{}",
        r.body["openapi"]
    );
    for route in rampart_web::ROUTES
        .iter()
        .filter(|r| r.path.starts_with("/api/v1/"))
    {
        let op = &r.body["paths"][route.path][route.method.to_ascii_lowercase()];
        assert!(
            op.is_object(),
            "{} {} is not documented",
            route.method,
            route.path
        );
    }
    // Request bodies refuse unknown fields in the document too.
    assert_eq!(
        r.body["components"]["schemas"]["NewServiceBody"]["additionalProperties"], false,
        "{}",
        r.body["components"]["schemas"]
    );
}

#[tokio::test]
async fn the_audit_view_verifies_new_rows_from_where_it_left_off() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let rows = |r: &crate::console::Reply| r.body["chain"]["rows"].as_u64().unwrap_or(0);
    let first = Req::get("/api/v1/audit").session(&owner).send(&s).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body["chain"]["ok"], true, "{}", first.text);
    let before = rows(&first);
    assert!(before > 0, "{}", first.text);
    for i in 0..3 {
        rampart_store::Store::record_audit(
            &s.store,
            rampart_store::AuditEntry {
                actor: rampart_store::Actor::system(),
                action: "test.later".into(),
                subject: Some(format!("row-{i}")),
                detail: json!({ "i": i }),
            },
        )
        .await
        .expect("append");
    }
    // The next view checks from the row it verified last: all of them count.
    let next = Req::get("/api/v1/audit").session(&owner).send(&s).await;
    assert_eq!(next.body["chain"]["ok"], true, "{}", next.text);
    assert_eq!(rows(&next), before + 3, "{}", next.text);
    // A full check on demand, and on the page a link to ask for one.
    let full = Req::get("/api/v1/audit?full=true")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(full.body["chain"]["ok"], true, "{}", full.text);
    assert_eq!(rows(&full), before + 3);
    let page = Req::get("/audit").session(&owner).send(&s).await;
    assert!(page.text.contains("/audit?full=true"), "{}", page.text);
    assert!(page.text.contains("Chain verified"), "{}", page.text);
}

/// The schema `s` with `$ref`s resolved and, for a present value, the
/// non-null branch of an optional.
fn resolve<'a>(doc: &'a serde_json::Value, s: &'a serde_json::Value) -> &'a serde_json::Value {
    if let Some(r) = s["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return resolve(doc, &doc["components"]["schemas"][name]);
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(variants) = s[key].as_array()
            && let Some(v) = variants.iter().find(|v| v["type"] != "null")
        {
            return resolve(doc, v);
        }
    }
    s
}

/// Compares the object keys of `value` with the documented properties,
/// recursively; collects every difference.
pub(crate) fn conforms(
    doc: &serde_json::Value,
    schema: &serde_json::Value,
    value: &serde_json::Value,
    at: &str,
    out: &mut Vec<String>,
) {
    let schema = resolve(doc, schema);
    match value {
        serde_json::Value::Object(m) => {
            let Some(props) = schema["properties"].as_object() else {
                // A free-form object (`detail`, a reported state).
                return;
            };
            let sent: std::collections::BTreeSet<_> = m.keys().collect();
            let documented: std::collections::BTreeSet<_> = props.keys().collect();
            if sent != documented {
                out.push(format!("{at}: sent {sent:?}, documented {documented:?}"));
            }
            for (k, v) in m {
                if let Some(p) = props.get(k) {
                    conforms(doc, p, v, &format!("{at}.{k}"), out);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                conforms(doc, &schema["items"], v, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn real_answers_have_the_documented_shape() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let doc = Req::get("/api/v1/openapi.json").send(&s).await.body;
    // Some of everything to list.
    let r = Req::post("/api/v1/users")
        .session(&owner)
        .json(json!({ "name": "vera", "role": "viewer" }))
        .send(&s)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    for (path, body) in [
        (
            "/api/v1/api-tokens",
            json!({ "name": "ci", "role": "viewer" }),
        ),
        ("/api/v1/enroll-tokens", json!({ "uses": 2 })),
        ("/api/v1/services", json!({ "name": "exporter" })),
    ] {
        let r = Req::post(path).session(&owner).json(body).send(&s).await;
        assert_eq!(r.status, 201, "{path}: {}", r.text);
        let schema = &doc["paths"][path]["post"]["responses"]["201"]["content"]["application/json"]
            ["schema"];
        let mut out = Vec::new();
        conforms(&doc, schema, &r.body, path, &mut out);
        assert!(out.is_empty(), "{out:#?}");
    }
    // A device, enrolled with a fresh token: the enrollment answer and the
    // device list and detail.
    let r = Req::post("/api/v1/enroll-tokens")
        .session(&owner)
        .json(json!({ "uses": 1 }))
        .send(&s)
        .await;
    let secret = r.body["token"].as_str().expect("token").to_owned();
    let enrolled = s.enroll(Some(&secret), "sensor-9").await;
    assert_eq!(enrolled.status, 201, "{}", enrolled.body);
    let mut out = Vec::new();
    conforms(
        &doc,
        &doc["paths"]["/api/v1/enroll"]["post"]["responses"]["201"]["content"]["application/json"]
            ["schema"],
        &enrolled.body,
        "/api/v1/enroll",
        &mut out,
    );
    let r = Req::get("/api/v1/devices/sensor-9")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    conforms(
        &doc,
        &doc["paths"]["/api/v1/devices/{id}"]["get"]["responses"]["200"]["content"]["application/json"]
            ["schema"],
        &r.body,
        "/api/v1/devices/{id}",
        &mut out,
    );
    for path in [
        "/api/v1/me",
        "/api/v1/me/sessions",
        "/api/v1/users",
        "/api/v1/api-tokens",
        "/api/v1/enroll-tokens",
        "/api/v1/services",
        "/api/v1/audit",
        "/api/v1/devices",
        "/api/v1/notifications",
    ] {
        let r = Req::get(path).session(&owner).send(&s).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        let schema =
            &doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{path} has no schema");
        conforms(&doc, schema, &r.body, path, &mut out);
    }
    // An error, in the shared shape.
    let r = Req::get("/api/v1/users/none/nothing")
        .session(&owner)
        .send(&s)
        .await;
    conforms(
        &doc,
        &json!({ "$ref": "#/components/schemas/ErrorBody" }),
        &r.body,
        "error",
        &mut out,
    );
    assert!(out.is_empty(), "{out:#?}");
}

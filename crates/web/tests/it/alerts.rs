//! The alert API over real TLS: channels (the URL is write-only), rules
//! (the checks of `alert_config`), alerts and their acknowledgement, dead
//! letters and their retry.

use rampart_store::{AlertStore, AttemptOutcome};
use serde_json::{Value, json};

use crate::common::{Server, config};
use crate::console::{Req, Session};

/// A Discord-style URL whose token must never come back.
const SECRET_URL: &str = "https://discord.com/api/webhooks/123456/TOPSECRETTOKENvalue";
const SECRET_PART: &str = "TOPSECRETTOKEN";

async fn channel(s: &Server, admin: &Session, body: Value) -> crate::console::Reply {
    Req::post("/api/v1/alert-channels")
        .session(admin)
        .json(body)
        .send(s)
        .await
}

async fn rule(s: &Server, admin: &Session, body: Value) -> crate::console::Reply {
    Req::post("/api/v1/alert-rules")
        .session(admin)
        .json(body)
        .send(s)
        .await
}

/// The owner, a channel `ops` and a fleet rule `offline` on it; the rule's id.
async fn with_rule(s: &Server) -> (Session, u64) {
    let owner = s.owner().await;
    let r = channel(
        s,
        &owner,
        json!({ "name": "ops", "kind": "discord", "url": SECRET_URL }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = rule(
        s,
        &owner,
        json!({ "name": "offline", "expr": "offline for 10m", "channel": "ops" }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_u64().expect("rule id");
    (owner, id)
}

#[tokio::test]
async fn a_channel_url_is_write_only_and_checked() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let r = channel(
        &s,
        &owner,
        json!({ "name": "ops", "kind": "discord", "url": SECRET_URL }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(!r.text.contains(SECRET_PART), "{}", r.text);
    assert!(r.body.get("url").is_none());
    assert_eq!(r.body["name"], "ops");
    assert_eq!(r.body["kind"], "discord");
    assert_eq!(r.body["allowPrivate"], false);
    assert!(
        r.body["target"]
            .as_str()
            .is_some_and(|t| t.contains("discord.com")),
        "{}",
        r.text
    );

    let list = Req::get("/api/v1/alert-channels")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.body["channels"][0]["name"], "ops");
    assert!(!list.text.contains(SECRET_PART), "{}", list.text);
    let audit = Req::get("/api/v1/audit").session(&owner).send(&s).await;
    assert_eq!(audit.status, 200, "{}", audit.text);
    assert!(audit.text.contains("ops"), "{}", audit.text);
    assert!(!audit.text.contains(SECRET_PART), "{}", audit.text);

    // A private address needs the danger flag.
    let private = json!({ "name": "lan", "kind": "json", "url": "http://127.0.0.1:9/hook" });
    let r = channel(&s, &owner, private.clone()).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.code(), "invalid_url");
    let mut allowed = private;
    allowed["allowPrivate"] = json!(true);
    let r = channel(&s, &owner, allowed).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["allowPrivate"], true);

    // Not a URL; an unknown kind; a name taken; an unknown field.
    let r = channel(
        &s,
        &owner,
        json!({ "name": "bad", "kind": "discord", "url": "not a url" }),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.code(), "invalid_url");
    let r = channel(
        &s,
        &owner,
        json!({ "name": "bad", "kind": "pager", "url": SECRET_URL }),
    )
    .await;
    assert_eq!(r.code(), "invalid_channel_kind", "{}", r.text);
    let r = channel(
        &s,
        &owner,
        json!({ "name": "ops", "kind": "discord", "url": SECRET_URL }),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(!r.text.contains(SECRET_PART), "{}", r.text);
    let r = channel(
        &s,
        &owner,
        json!({ "name": "x", "kind": "discord", "url": SECRET_URL, "extra": 1 }),
    )
    .await;
    assert_eq!(r.code(), "invalid_json", "{}", r.text);

    // An operator may not add one.
    let operator = s.user(&owner, "olga", "operator").await;
    let r = channel(
        &s,
        &operator,
        json!({ "name": "op", "kind": "discord", "url": SECRET_URL }),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text);

    // Removal.
    let r = Req::new(reqwest::Method::DELETE, "/api/v1/alert-channels/lan")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["name"], "lan");
    let r = Req::new(reqwest::Method::DELETE, "/api/v1/alert-channels/lan")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.code(), "channel_not_found");
    let actions = s.audit_actions().await;
    assert!(
        actions
            .iter()
            .any(|a| a.contains("alert") && a.contains("channel")),
        "{actions:?}"
    );
}

#[tokio::test]
async fn rules_are_checked_as_the_cli_checks_them() {
    let s = Server::start(config()).await;
    let (owner, _) = with_rule(&s).await;

    let r = rule(
        &s,
        &owner,
        json!({ "name": "hot", "expr": "temperature >> 30", "channel": "ops" }),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.code(), "invalid_expression");
    let parser = rampart_alerts::parse("temperature >> 30")
        .expect_err("refused")
        .to_string();
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&parser), "{message} / {parser}");

    // No device has sent `temperature`: refused unless newMetric.
    let hot = json!({ "name": "hot", "expr": "temperature > 30 for 5m", "channel": "ops" });
    let r = rule(&s, &owner, hot.clone()).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.code(), "unknown_metric");
    assert!(r.text.contains("newMetric"), "{}", r.text);
    let mut new_metric = hot;
    new_metric["newMetric"] = json!(true);
    let r = rule(&s, &owner, new_metric).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["expr"], "temperature > 30 for 5m");
    assert_eq!(r.body["channel"], "ops");

    // An unknown channel, an unknown device, a taken name.
    let r = rule(
        &s,
        &owner,
        json!({ "name": "x", "expr": "offline for 1m", "channel": "nope" }),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = rule(
        &s,
        &owner,
        json!({ "name": "x", "expr": "offline for 1m", "channel": "ops", "device": "ghost-1" }),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.code(), "unknown_device");
    let r = rule(
        &s,
        &owner,
        json!({ "name": "offline", "expr": "offline for 1m", "channel": "ops" }),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text);

    let list = Req::get("/api/v1/alert-rules")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(list.status, 200, "{}", list.text);
    let names: Vec<_> = list.body["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["offline", "hot"]);

    // A channel in use cannot go; the rule can.
    let r = Req::new(reqwest::Method::DELETE, "/api/v1/alert-channels/ops")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(r.code(), "channel_in_use");
    let r = Req::new(reqwest::Method::DELETE, "/api/v1/alert-rules/hot")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = Req::new(reqwest::Method::DELETE, "/api/v1/alert-rules/hot")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
}

#[tokio::test]
async fn alerts_are_listed_filtered_and_acknowledged() {
    let s = Server::start(config()).await;
    let (owner, rule_id) = with_rule(&s).await;
    let now = s.clock.now();
    let first = s
        .store
        .fire_alert(rule_id, "dev-a", now, None)
        .await
        .expect("fire")
        .expect("new");
    s.store
        .resolve_alert(rule_id, "dev-a", now, None)
        .await
        .expect("resolve")
        .expect("was firing");
    let second = s
        .store
        .fire_alert(rule_id, "dev-b", now, None)
        .await
        .expect("fire")
        .expect("new");

    let viewer = s.user(&owner, "vera", "viewer").await;
    let all = Req::get("/api/v1/alerts").session(&viewer).send(&s).await;
    assert_eq!(all.status, 200, "{}", all.text);
    let ids: Vec<_> = all.body["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["id"].as_u64())
        .collect();
    assert_eq!(ids, [second.id, first.id]);
    assert_eq!(all.body["nextBefore"], Value::Null);

    let firing = Req::get("/api/v1/alerts?state=firing")
        .session(&viewer)
        .send(&s)
        .await;
    assert_eq!(firing.body["alerts"].as_array().map(Vec::len), Some(1));
    assert_eq!(firing.body["alerts"][0]["subject"], "dev-b");
    assert_eq!(firing.body["alerts"][0]["state"], "firing");
    let of_a = Req::get("/api/v1/alerts?device=dev-a")
        .session(&viewer)
        .send(&s)
        .await;
    assert_eq!(of_a.body["alerts"][0]["state"], "resolved");
    assert_eq!(of_a.body["alerts"].as_array().map(Vec::len), Some(1));
    let page = Req::get("/api/v1/alerts?limit=1")
        .session(&viewer)
        .send(&s)
        .await;
    assert_eq!(page.body["nextBefore"], json!(second.id));
    let next = Req::get(&format!("/api/v1/alerts?limit=1&before={}", second.id))
        .session(&viewer)
        .send(&s)
        .await;
    assert_eq!(next.body["alerts"][0]["id"], json!(first.id));
    let bad = Req::get("/api/v1/alerts?state=open")
        .session(&viewer)
        .send(&s)
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text);
    assert_eq!(bad.code(), "invalid_query");

    let one = Req::get(&format!("/api/v1/alerts/{}", second.id))
        .session(&viewer)
        .send(&s)
        .await;
    assert_eq!(one.status, 200, "{}", one.text);
    assert_eq!(one.body["rule"], "offline");
    assert_eq!(one.body["ackedAt"], Value::Null);

    // A viewer may not acknowledge; an operator may.
    let ack = format!("/api/v1/alerts/{}/acknowledge", second.id);
    let r = Req::post(&ack).session(&viewer).send(&s).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let operator = s.user(&owner, "olga", "operator").await;
    let r = Req::post(&ack).session(&operator).send(&s).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["ackedBy"], "olga");
    assert!(r.body["ackedAt"].is_string(), "{}", r.text);
    let r = Req::post("/api/v1/alerts/999999/acknowledge")
        .session(&operator)
        .send(&s)
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.code(), "alert_not_found");
    let actions = s.audit_actions().await;
    assert!(actions.iter().any(|a| a.contains("ack")), "{actions:?}");
}

#[tokio::test]
async fn dead_letters_are_listed_and_retried() {
    let s = Server::start(config()).await;
    let (owner, rule_id) = with_rule(&s).await;
    let now = s.clock.now();
    s.store
        .fire_alert(rule_id, "dev-a", now, None)
        .await
        .expect("fire")
        .expect("new");
    let due = s
        .store
        .due_deliveries(now + time::Duration::minutes(1), 10)
        .await
        .expect("due");
    let delivery = due.first().expect("one queued").id;
    s.store
        .record_attempt(
            delivery,
            AttemptOutcome::Dead("receiver answered 500".into()),
        )
        .await
        .expect("dead");

    let dead = Req::get("/api/v1/alert-deliveries/dead")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(dead.status, 200, "{}", dead.text);
    assert_eq!(dead.body["deliveries"][0]["id"], json!(delivery));
    assert_eq!(dead.body["deliveries"][0]["status"], "dead");
    assert_eq!(
        dead.body["deliveries"][0]["lastError"],
        "receiver answered 500"
    );

    let operator = s.user(&owner, "olga", "operator").await;
    let retry = format!("/api/v1/alert-deliveries/{delivery}/retry");
    let r = Req::post(&retry).session(&operator).send(&s).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = Req::post(&retry).session(&owner).send(&s).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "pending");
    let r = Req::post(&retry).session(&owner).send(&s).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.code(), "not_a_dead_letter");
    let dead = Req::get("/api/v1/alert-deliveries/dead")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(dead.body["deliveries"], json!([]));
    let again = s
        .store
        .due_deliveries(now + time::Duration::minutes(1), 10)
        .await
        .expect("due");
    assert!(again.iter().any(|d| d.id == delivery));
}

/// The escaped form maud writes text in.
fn escaped(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[tokio::test]
async fn the_alerts_page_shows_firing_first_and_acknowledges_with_csrf() {
    let s = Server::start(config()).await;
    let (owner, rule_id) = with_rule(&s).await;
    let token = s.token(1, None, None).await;
    assert_eq!(s.enroll(Some(&token), "pump-1").await.status, 201);
    let now = s.clock.now();
    let old = s
        .store
        .fire_alert(rule_id, "pump-1", now, None)
        .await
        .expect("fire")
        .expect("new");
    s.store
        .resolve_alert(rule_id, "pump-1", now, None)
        .await
        .expect("resolve");
    let firing = s
        .store
        .fire_alert(rule_id, "pump-1", now, None)
        .await
        .expect("fire")
        .expect("new");

    let viewer = s.user(&owner, "vera", "viewer").await;
    let page = Req::get("/alerts").session(&viewer).send(&s).await;
    assert_eq!(page.status, 200, "{}", page.text);
    let firing_at = page.text.find("id=\"firing\"").expect("firing card");
    let recent_at = page.text.find("id=\"recent\"").expect("recent card");
    assert!(firing_at < recent_at);
    assert!(page.text.contains("href=\"/alerts\""), "nav entry");
    assert!(page.text.contains("href=\"/devices/pump-1\""));
    assert!(page.text.contains("offline for 10m"));
    assert!(!page.text.contains("/acknowledge"), "a viewer cannot ack");
    assert!(!page.text.contains("/alert-rules"), "nor manage rules");
    let resolved = Req::get("/alerts?state=resolved")
        .session(&viewer)
        .send(&s)
        .await;
    assert!(resolved.text.contains(&format!("<td>{}</td>", old.id)));
    assert!(!resolved.text.contains(&format!("<td>{}</td>", firing.id)));

    let operator = s.user(&owner, "olga", "operator").await;
    let page = Req::get("/alerts").session(&operator).send(&s).await;
    let ack = format!("/alerts/{}/acknowledge", firing.id);
    assert!(page.text.contains(&ack), "{}", page.text);
    let forged = Req::post(&ack)
        .cookie(&operator.cookie)
        .form(&[("csrf_token", "forged")])
        .send(&s)
        .await;
    assert_eq!(forged.status, 403, "{}", forged.text);
    let done = Req::post(&ack)
        .cookie(&operator.cookie)
        .form(&[("csrf_token", operator.csrf.as_str())])
        .send(&s)
        .await;
    assert_eq!(done.status, 303, "{}", done.text);
    assert_eq!(done.header("location"), "/alerts");
    let a = s
        .store
        .alert(firing.id)
        .await
        .expect("read")
        .expect("alert");
    assert_eq!(a.acked_by.as_deref(), Some("olga"));

    // The device page has the device's alerts; the overview counts them.
    let device = Req::get("/devices/pump-1").session(&viewer).send(&s).await;
    assert_eq!(device.status, 200, "{}", device.text);
    assert!(device.text.contains("id=\"device-alerts\""));
    assert!(device.text.contains("offline for 10m"));
    let fleet = Req::get("/").session(&viewer).send(&s).await;
    assert!(
        fleet.text.contains("id=\"firing-alerts\""),
        "{}",
        fleet.text
    );
    assert!(fleet.text.contains("1 firing"));
}

#[tokio::test]
async fn rules_and_channels_pages_show_the_checks_messages() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let page = Req::get("/alert-rules").session(&owner).send(&s).await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.text.contains("Dangerous:"));
    let form = |pairs: &[(&str, &str)]| {
        let mut all = vec![("csrf_token", owner.csrf.as_str())];
        all.extend_from_slice(pairs);
        all.into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect::<Vec<_>>()
    };
    let send = |path: &'static str, pairs: Vec<(String, String)>| {
        let owner = owner.clone();
        let s = &s;
        async move {
            let pairs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            Req::post(path)
                .cookie(&owner.cookie)
                .form(&pairs)
                .send(s)
                .await
        }
    };

    let r = send(
        "/alert-channels",
        form(&[
            ("name", "lan"),
            ("kind", "json"),
            ("url", "http://127.0.0.1:9/h"),
        ]),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("class=\"flash error\""), "{}", r.text);
    assert!(r.text.contains("value=\"lan\""), "the name is kept");
    assert!(!r.text.contains("127.0.0.1:9/h"), "the URL is not");
    let r = send(
        "/alert-channels",
        form(&[("name", "ops"), ("kind", "discord"), ("url", SECRET_URL)]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("Channel ops added"), "{}", r.text);
    assert!(!r.text.contains(SECRET_PART));

    // The rule form names the examples and shows the parser's message.
    for example in [
        "temperature &gt; 30 for 5m",
        "offline for 10m",
        "no-telemetry for 15m",
        "cert-expires within 30d",
    ] {
        assert!(r.text.contains(example), "{example}");
    }
    let r = send(
        "/alert-rules",
        form(&[
            ("name", "hot"),
            ("expr", "temperature >> 30"),
            ("channel", "ops"),
        ]),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let parser = rampart_alerts::parse("temperature >> 30")
        .expect_err("refused")
        .to_string();
    assert!(r.text.contains(&escaped(&parser)), "{}", r.text);
    // The refused rule fills its form again.
    assert!(
        r.text.contains("value=\"temperature &gt;&gt; 30\""),
        "{}",
        r.text
    );
    let r = send(
        "/alert-rules",
        form(&[
            ("name", "down"),
            ("expr", "offline for 10m"),
            ("channel", "ops"),
        ]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("Rule down added"), "{}", r.text);

    // Removal asks first.
    let r = send("/alert-rules/down/remove", form(&[])).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("Remove rule down?"), "{}", r.text);
    assert_eq!(s.store.alert_rules().await.expect("rules").len(), 1);
    let r = send("/alert-rules/down/remove", form(&[("confirm", "yes")])).await;
    assert!(r.text.contains("Rule down removed"), "{}", r.text);
    assert!(s.store.alert_rules().await.expect("rules").is_empty());
    let r = send("/alert-channels/ops/remove", form(&[("confirm", "yes")])).await;
    assert!(r.text.contains("Channel ops removed"), "{}", r.text);
}

#[tokio::test]
async fn the_dead_letters_page_lists_and_retries() {
    let s = Server::start(config()).await;
    let (owner, rule_id) = with_rule(&s).await;
    let now = s.clock.now();
    s.store
        .fire_alert(rule_id, "dev-a", now, None)
        .await
        .expect("fire");
    let due = s
        .store
        .due_deliveries(now + time::Duration::minutes(1), 10)
        .await
        .expect("due");
    let id = due.first().expect("queued").id;
    s.store
        .record_attempt(id, AttemptOutcome::Dead("receiver timed out".into()))
        .await
        .expect("dead");
    let page = Req::get("/alert-deliveries/dead")
        .session(&owner)
        .send(&s)
        .await;
    assert_eq!(page.status, 200, "{}", page.text);
    assert!(page.text.contains("receiver timed out"));
    let retry = format!("/alert-deliveries/{id}/retry");
    assert!(page.text.contains(&retry));
    let r = Req::post(&retry)
        .cookie(&owner.cookie)
        .form(&[("csrf_token", owner.csrf.as_str())])
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("queued again"), "{}", r.text);
    assert!(r.text.contains("No dead letters."));
}

#[tokio::test]
async fn alert_answers_have_the_documented_shape() {
    let s = Server::start(config()).await;
    let (owner, rule_id) = with_rule(&s).await;
    let doc = Req::get("/api/v1/openapi.json").send(&s).await.body;
    let now = s.clock.now();
    let alert = s
        .store
        .fire_alert(rule_id, "dev-a", now, Some(1.5))
        .await
        .expect("fire")
        .expect("new");
    let due = s
        .store
        .due_deliveries(now + time::Duration::minutes(1), 10)
        .await
        .expect("due");
    let delivery = due.first().expect("queued").id;
    s.store
        .record_attempt(delivery, AttemptOutcome::Dead("gone".into()))
        .await
        .expect("dead");
    let check = |path: &str, method: &str, status: &str, body: &Value| {
        let schema = &doc["paths"][path][method]["responses"][status]["content"]["application/json"]
            ["schema"];
        assert!(schema.is_object(), "{method} {path} {status}: no schema");
        let mut out = Vec::new();
        crate::registry::conforms(&doc, schema, body, path, &mut out);
        assert!(out.is_empty(), "{out:#?}");
    };
    for (path, route) in [
        ("/api/v1/alerts", "/api/v1/alerts"),
        (
            &format!("/api/v1/alerts/{}", alert.id)[..],
            "/api/v1/alerts/{id}",
        ),
        ("/api/v1/alert-channels", "/api/v1/alert-channels"),
        ("/api/v1/alert-rules", "/api/v1/alert-rules"),
        (
            "/api/v1/alert-deliveries/dead",
            "/api/v1/alert-deliveries/dead",
        ),
    ] {
        let r = Req::get(path).session(&owner).send(&s).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        check(route, "get", "200", &r.body);
    }
    let r = Req::post(&format!("/api/v1/alerts/{}/acknowledge", alert.id))
        .session(&owner)
        .send(&s)
        .await;
    check("/api/v1/alerts/{id}/acknowledge", "post", "200", &r.body);
    let r = Req::post(&format!("/api/v1/alert-deliveries/{delivery}/retry"))
        .session(&owner)
        .send(&s)
        .await;
    check(
        "/api/v1/alert-deliveries/{id}/retry",
        "post",
        "200",
        &r.body,
    );
    let r = channel(
        &s,
        &owner,
        json!({ "name": "signed", "kind": "json", "url": "https://example.com/hook", "secret": "a-long-enough-secret", "perMinute": 5 }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["signed"], true);
    check("/api/v1/alert-channels", "post", "201", &r.body);
    let r = rule(
        &s,
        &owner,
        json!({ "name": "late", "expr": "no-telemetry for 15m", "channel": "signed", "owner": "user:owner" }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    check("/api/v1/alert-rules", "post", "201", &r.body);
    let r = Req::new(reqwest::Method::DELETE, "/api/v1/alert-rules/late")
        .session(&owner)
        .send(&s)
        .await;
    check("/api/v1/alert-rules/{name}", "delete", "200", &r.body);
    let r = Req::new(reqwest::Method::DELETE, "/api/v1/alert-channels/signed")
        .session(&owner)
        .send(&s)
        .await;
    check("/api/v1/alert-channels/{name}", "delete", "200", &r.body);
    // The request bodies refuse unknown fields in the document too.
    for body in ["ChannelBody", "RuleBody"] {
        assert_eq!(
            doc["components"]["schemas"][body]["additionalProperties"], false,
            "{body}"
        );
    }
}

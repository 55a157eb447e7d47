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

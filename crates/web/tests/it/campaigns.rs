//! Campaigns through the API and the console pages: create against the
//! registry (reported device type), read with counts and filtered pages,
//! and the operator actions with the role split (admins start updates,
//! operators may stop them), each audited.

use std::sync::Arc;

use rampart_ota::{SignRequest, SigningKey};
use rampart_proto::DeviceId;
use rampart_store::telemetry::{IngestItem, TelemetryStore};
use rampart_store::{Actor, FirmwareStore, NewFirmware, NewFirmwareKey};
use serde_json::json;

use crate::common::{Server, config};
use crate::console::{Req, Session};

/// Three devices reporting type `rampart-sim` on 1.0.0, and firmware
/// 1.1.0 for that type; returns the firmware id.
async fn fleet_and_firmware(s: &Server) -> u64 {
    let token = s.token(3, None, None).await;
    for id in ["cam-1", "cam-2", "cam-3"] {
        assert_eq!(s.enroll(Some(&token), id).await.status, 201);
        s.store
            .commit_ingest(
                Arc::from(vec![IngestItem::State {
                    device: DeviceId::parse(id).expect("id"),
                    at_ms: 1,
                    reported: json!({"fw": "1.0.0", "type": "rampart-sim"}),
                }]),
                false,
            )
            .await
            .expect("state report");
    }
    let key = SigningKey::generate();
    s.store
        .add_firmware_key(
            NewFirmwareKey {
                name: "release".into(),
                public_key: *key.public_key().bytes(),
            },
            &Actor::system(),
        )
        .await
        .expect("trust");
    let bundle = rampart_ota::sign(
        b"new image",
        &key,
        &SignRequest {
            device_type: "rampart-sim",
            version: "1.1.0",
            security_version: 1,
            created_at_ms: 0,
        },
    )
    .expect("signs");
    let v = rampart_ota::verify(bundle, &[key.public_key()], 1024, None).expect("verifies");
    s.store
        .add_firmware(
            NewFirmware::verified(&v.proof().expect("proof")),
            &Actor::system(),
        )
        .await
        .expect("record")
        .id
}

async fn post(s: &Server, who: &Session, path: &str) -> crate::console::Reply {
    Req::post(path).session(who).json(json!({})).send(s).await
}

#[tokio::test]
async fn campaigns_are_created_read_and_steered_by_role() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let admin = s.user(&owner, "ada", "admin").await;
    let operator = s.user(&owner, "otto", "operator").await;
    let viewer = s.user(&owner, "vera", "viewer").await;
    let fw = fleet_and_firmware(&s).await;

    let r = Req::post("/api/v1/campaigns")
        .session(&admin)
        .json(
            json!({"name": "spring", "firmwareId": fw, "waves": [50, 100], "soak": "1s",
                     "failureThreshold": 0.2}),
        )
        .send(&s)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "draft");
    assert_eq!(r.body["devices"], 3);
    assert_eq!(r.body["waves"], json!([50, 100]));
    let id = r.body["id"].as_u64().expect("id");

    // The same devices cannot be in two open campaigns.
    let r = Req::post("/api/v1/campaigns")
        .session(&admin)
        .json(json!({"name": "again", "firmwareId": fw, "devices": ["cam-2"]}))
        .send(&s)
        .await;
    assert_eq!((r.status, r.code()), (409, "device_busy"), "{}", r.text);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cam-2")
    );
    let r = Req::post("/api/v1/campaigns")
        .session(&admin)
        .json(json!({"name": "x", "firmwareId": 999}))
        .send(&s)
        .await;
    assert_eq!((r.status, r.code()), (404, "firmware_not_found"));
    let r = Req::post("/api/v1/campaigns")
        .session(&admin)
        .json(json!({"name": "x", "firmwareId": fw, "waves": [10]}))
        .send(&s)
        .await;
    assert_eq!((r.status, r.code()), (400, "invalid_campaign"));

    let r = Req::get("/api/v1/campaigns")
        .session(&viewer)
        .send(&s)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["campaigns"][0]["id"], id);
    assert_eq!(r.body["campaigns"][0]["counts"]["queued"], 3);
    let r = Req::get(&format!("/api/v1/campaigns/{id}?state=queued&limit=2"))
        .session(&viewer)
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total"], 3);
    assert_eq!(r.body["entries"].as_array().map(Vec::len), Some(2));
    assert_eq!(r.body["counts"]["queued"], 3);
    assert_eq!(r.body["waves"].as_array().map(Vec::len), Some(2));
    let r = Req::get(&format!("/api/v1/campaigns/{id}?state=succeeded"))
        .session(&viewer)
        .send(&s)
        .await;
    assert_eq!(r.body["total"], 0);

    // Operators may stop, not start.
    let path = |what: &str| format!("/api/v1/campaigns/{id}/{what}");
    assert_eq!(post(&s, &operator, &path("approve")).await.status, 403);
    let r = post(&s, &admin, &path("approve")).await;
    assert_eq!(
        (r.status, &r.body["campaign"]["status"]),
        (200, &json!("running")),
        "{}",
        r.text
    );
    let r = post(&s, &operator, &path("pause")).await;
    assert_eq!(
        (r.status, &r.body["campaign"]["status"]),
        (200, &json!("paused"))
    );
    assert_eq!(post(&s, &operator, &path("resume")).await.status, 403);
    let r = post(&s, &admin, &path("resume")).await;
    assert_eq!(r.body["campaign"]["status"], "running");

    // The page of a running campaign, as an operator: pause and the
    // emergency stop, no approve or resume.
    let page = Req::get(&format!("/campaigns/{id}"))
        .session(&operator)
        .send(&s)
        .await;
    assert_eq!(page.status, 200);
    assert!(
        page.text.contains("Emergency stop (cancel)"),
        "{}",
        page.text
    );
    assert!(page.text.contains(">Pause<"));
    assert!(!page.text.contains("Approve and start"));
    assert!(page.text.contains("cam-1"));
    assert!(page.text.contains("<progress"));
    // A POST without confirmation only asks.
    let r = Req::post(&format!("/campaigns/{id}/cancel"))
        .session(&operator)
        .form(&[("csrf_token", operator.csrf.as_str())])
        .send(&s)
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("Emergency stop: cancel this campaign?"));
    let r = Req::get(&format!("/api/v1/campaigns/{id}"))
        .session(&viewer)
        .send(&s)
        .await;
    assert_eq!(r.body["campaign"]["status"], "running");
    let r = Req::post(&format!("/campaigns/{id}/cancel"))
        .session(&operator)
        .form(&[("csrf_token", operator.csrf.as_str()), ("confirm", "yes")])
        .send(&s)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("Cancelled (emergency stop)"));
    let r = Req::get(&format!("/api/v1/campaigns/{id}"))
        .session(&viewer)
        .send(&s)
        .await;
    assert_eq!(r.body["campaign"]["status"], "cancelled");
    let r = post(&s, &operator, &path("pause")).await;
    assert_eq!((r.status, r.code()), (409, "campaign_status"));

    let actions = s.audit_actions().await;
    for a in [
        "campaign.create",
        "campaign.approve",
        "campaign.pause",
        "campaign.resume",
        "campaign.cancel",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} not in {actions:?}");
    }

    // The form makes a new campaign once the devices are free again.
    let form = Req::get("/campaigns/new").session(&admin).send(&s).await;
    assert_eq!(form.status, 200);
    assert!(form.text.contains("1.1.0 for rampart-sim"));
    let fw_id = fw.to_string();
    let r = Req::post("/campaigns")
        .session(&admin)
        .form(&[
            ("csrf_token", admin.csrf.as_str()),
            ("name", "from the form"),
            ("firmware_id", fw_id.as_str()),
            ("target", "devices"),
            ("devices", "cam-1\ncam-3"),
            ("waves", "50, 100"),
            ("soak", "1m"),
            ("failure_percent", "20"),
        ])
        .send(&s)
        .await;
    assert_eq!(r.status, 303, "{}", r.text);
    let location = r.header("location").to_owned();
    let page = Req::get(&location).session(&viewer).send(&s).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("from the form"));
    assert!(page.text.contains("2 listed device(s)"));
    assert!(
        !page.text.contains("Emergency stop (cancel)"),
        "viewers get no actions"
    );
    let list = Req::get("/campaigns").session(&viewer).send(&s).await;
    assert!(list.text.contains("from the form") && list.text.contains("spring"));
    assert!(!list.text.contains("New campaign"));
}

/// The firmware and campaign answers have the shape the OpenAPI document
/// gives them, field for field (as `registry::real_answers_have_the_documented_shape`).
#[tokio::test]
async fn firmware_and_campaign_answers_have_the_documented_shape() {
    let s = Server::start(config()).await;
    let owner = s.owner().await;
    let fw = fleet_and_firmware(&s).await;
    let doc = Req::get("/api/v1/openapi.json").send(&s).await.body;
    let schema = |path: &str, method: &str, status: &str| {
        doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
            .clone()
    };
    let mut out = Vec::new();
    let mut check = |path: &str, method: &str, status: u16, r: &crate::console::Reply| {
        assert_eq!(r.status, status, "{method} {path}: {}", r.text);
        let schema = schema(path, method, &status.to_string());
        assert!(schema.is_object(), "{method} {path} {status} has no schema");
        crate::registry::conforms(&doc, &schema, &r.body, path, &mut out);
    };

    // A campaign for a device list: created, approved, cancelled.
    let r = Req::post("/api/v1/campaigns")
        .session(&owner)
        .json(json!({"name": "one", "firmwareId": fw, "devices": ["cam-1"]}))
        .send(&s)
        .await;
    check("/api/v1/campaigns", "post", 201, &r);
    assert_eq!(
        r.body["target"],
        json!({"devices": ["cam-1"]}),
        "{}",
        r.text
    );
    let first = r.body["id"].as_u64().expect("id");
    for action in ["approve", "pause", "resume", "cancel"] {
        let r = post(&s, &owner, &format!("/api/v1/campaigns/{first}/{action}")).await;
        check(
            &format!("/api/v1/campaigns/{{id}}/{action}"),
            "post",
            200,
            &r,
        );
    }
    // One for a registry state, and one for every device.
    let r = Req::post("/api/v1/campaigns")
        .session(&owner)
        .json(json!({"name": "two", "firmwareId": fw, "state": "unbound", "waves": [50, 100]}))
        .send(&s)
        .await;
    check("/api/v1/campaigns", "post", 201, &r);
    assert_eq!(r.body["target"], json!({"state": "unbound"}), "{}", r.text);
    let second = r.body["id"].as_u64().expect("id");
    let r = post(&s, &owner, &format!("/api/v1/campaigns/{second}/cancel")).await;
    check("/api/v1/campaigns/{id}/cancel", "post", 200, &r);
    let r = Req::post("/api/v1/campaigns")
        .session(&owner)
        .json(json!({"name": "three", "firmwareId": fw, "approve": true}))
        .send(&s)
        .await;
    check("/api/v1/campaigns", "post", 201, &r);
    assert_eq!(r.body["target"], "all", "{}", r.text);
    let third = r.body["id"].as_u64().expect("id");

    let r = Req::get("/api/v1/campaigns").session(&owner).send(&s).await;
    check("/api/v1/campaigns", "get", 200, &r);
    assert_eq!(r.body["campaigns"].as_array().map(Vec::len), Some(3));
    for id in [first, second, third] {
        let r = Req::get(&format!("/api/v1/campaigns/{id}"))
            .session(&owner)
            .send(&s)
            .await;
        check("/api/v1/campaigns/{id}", "get", 200, &r);
        assert!(
            !r.body["entries"].as_array().is_none_or(Vec::is_empty),
            "{}",
            r.text
        );
    }

    let r = Req::get("/api/v1/firmware").session(&owner).send(&s).await;
    check("/api/v1/firmware", "get", 200, &r);
    assert_eq!(r.body["firmware"][0]["keyName"], "release", "{}", r.text);
    let r = Req::get(&format!("/api/v1/firmware/{fw}"))
        .session(&owner)
        .send(&s)
        .await;
    check("/api/v1/firmware/{id}", "get", 200, &r);
    let r = Req::get("/api/v1/firmware/keys")
        .session(&owner)
        .send(&s)
        .await;
    check("/api/v1/firmware/keys", "get", 200, &r);

    // Errors, in the shared shape.
    let error = json!({ "$ref": "#/components/schemas/ErrorBody" });
    for path in ["/api/v1/campaigns/999", "/api/v1/firmware/999"] {
        let r = Req::get(path).session(&owner).send(&s).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text);
        crate::registry::conforms(&doc, &error, &r.body, path, &mut out);
    }
    let r = post(&s, &owner, &format!("/api/v1/campaigns/{first}/approve")).await;
    assert_eq!((r.status, r.code()), (409, "campaign_status"), "{}", r.text);
    crate::registry::conforms(&doc, &error, &r.body, "approve", &mut out);
    assert!(out.is_empty(), "{out:#?}");
}

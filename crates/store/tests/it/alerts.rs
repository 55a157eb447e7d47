//! Alert channels, rules, alerts and the delivery outbox on both backends:
//! configuration audited and announced on the change feed, one firing
//! alert per rule and subject, every firing and resolution queued with the
//! alert change, retries and dead letters.

use rampart_store::{
    AlertQuery, AlertState, AlertStore, AttemptOutcome, ChangeKind, DeliveryStatus,
    NewAlertChannel, NewAlertRule, RuleScope, Store, StoreError,
};
use time::{Duration, OffsetDateTime};

use crate::store::{Backend, Postgres, Sqlite, cli, on_both};

on_both!(
    channels_and_rules_are_configured_and_audited,
    alerts_fire_once_and_resolve_with_their_notifications,
    deliveries_retry_then_die_and_can_be_retried,
    removing_a_rule_closes_its_alerts_without_notifying,
);

fn channel(name: &str) -> NewAlertChannel {
    NewAlertChannel {
        name: name.into(),
        kind: "discord".into(),
        target: "https://discord.com/…".into(),
        url_sealed: vec![1, 2, 3],
        secret_sealed: None,
        allow_private: false,
        per_minute: 30,
    }
}

fn rule(name: &str, channel: &str, scope: RuleScope) -> NewAlertRule {
    NewAlertRule {
        name: name.into(),
        expr: "offline for 10m".into(),
        scope,
        channel: channel.into(),
    }
}

fn at(s: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_764_000_000 + s).expect("time")
}

async fn channels_and_rules_are_configured_and_audited(backend: impl Backend) {
    let store = backend.open().await;
    let before = store.changes_since(0).await.expect("feed").len();
    let c = store
        .add_alert_channel(
            NewAlertChannel {
                secret_sealed: Some(vec![9]),
                ..channel("ops-discord")
            },
            &cli(),
        )
        .await
        .expect("add channel");
    assert_eq!(
        (c.name.as_str(), c.kind.as_str(), c.signed, c.per_minute),
        ("ops-discord", "discord", true, 30)
    );
    let secrets = store
        .alert_channel_secrets(c.id)
        .await
        .expect("secrets")
        .expect("there");
    assert_eq!(secrets.url_sealed, vec![1, 2, 3]);
    assert_eq!(secrets.secret_sealed, Some(vec![9]));
    assert!(matches!(
        store
            .add_alert_channel(channel("ops-discord"), &cli())
            .await,
        Err(StoreError::AlertChannelExists(_))
    ));
    assert!(matches!(
        store.add_alert_channel(channel("bad name"), &cli()).await,
        Err(StoreError::InvalidAlertName(_))
    ));

    let r = store
        .add_alert_rule(
            rule(
                "greenhouse-offline",
                "ops-discord",
                RuleScope::Device("gh-1".into()),
            ),
            &cli(),
        )
        .await
        .expect("add rule");
    assert_eq!(r.channel, "ops-discord");
    assert_eq!(r.scope, RuleScope::Device("gh-1".into()));
    store
        .add_alert_rule(
            rule("fleet-offline", "ops-discord", RuleScope::Fleet),
            &cli(),
        )
        .await
        .expect("add fleet rule");
    assert!(matches!(
        store
            .add_alert_rule(rule("x", "nope", RuleScope::Fleet), &cli())
            .await,
        Err(StoreError::AlertChannelNotFound(_))
    ));
    assert!(matches!(
        store
            .add_alert_rule(
                rule("fleet-offline", "ops-discord", RuleScope::Fleet),
                &cli()
            )
            .await,
        Err(StoreError::AlertRuleExists(_))
    ));
    let names: Vec<_> = store
        .alert_rules()
        .await
        .expect("rules")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["greenhouse-offline", "fleet-offline"]);

    // A channel in use cannot go; once its rules are gone it can.
    match store.remove_alert_channel("ops-discord", &cli()).await {
        Err(StoreError::AlertChannelInUse { rules, .. }) => {
            assert_eq!(rules, ["fleet-offline", "greenhouse-offline"]);
        }
        other => panic!("expected in use, got {other:?}"),
    }
    for name in ["greenhouse-offline", "fleet-offline"] {
        store
            .remove_alert_rule(name, &cli())
            .await
            .expect("remove rule");
    }
    store
        .remove_alert_channel("ops-discord", &cli())
        .await
        .expect("remove channel");
    assert!(store.alert_channels().await.expect("list").is_empty());

    let feed = store.changes_since(0).await.expect("feed");
    let config_changes = feed[before..]
        .iter()
        .filter(|c| c.kind == ChangeKind::AlertConfigChanged)
        .count();
    assert_eq!(config_changes, 6, "every add and remove is announced");
    let audit = store.verify_audit().await.expect("audit");
    assert!(audit.ok, "{audit:?}");
    let actions: Vec<_> = store
        .audit_log(0, 1_000)
        .await
        .expect("audit")
        .into_iter()
        .map(|r| r.action)
        .filter(|a| a.starts_with("alert."))
        .collect();
    assert_eq!(
        actions,
        [
            "alert.channel.add",
            "alert.rule.add",
            "alert.rule.add",
            "alert.rule.remove",
            "alert.rule.remove",
            "alert.channel.remove"
        ]
    );
}

async fn alerts_fire_once_and_resolve_with_their_notifications(backend: impl Backend) {
    let store = backend.open().await;
    store
        .add_alert_channel(channel("ops"), &cli())
        .await
        .expect("channel");
    let r = store
        .add_alert_rule(rule("hot", "ops", RuleScope::Fleet), &cli())
        .await
        .expect("rule");

    let a = store
        .fire_alert(r.id, "gh-1", at(0), Some(31.5))
        .await
        .expect("fire")
        .expect("new alert");
    assert_eq!((a.state, a.fired_value), (AlertState::Firing, Some(31.5)));
    assert_eq!(a.rule, "hot");
    assert!(
        store
            .fire_alert(r.id, "gh-1", at(1), Some(32.0))
            .await
            .expect("fire again")
            .is_none(),
        "deduplicated while firing"
    );
    let other = store
        .fire_alert(r.id, "gh-2", at(2), None)
        .await
        .expect("fire")
        .expect("other subject fires");
    assert!(
        store
            .fire_alert(9_999, "gh-1", at(2), None)
            .await
            .expect("unknown rule")
            .is_none()
    );
    assert_eq!(store.firing_alerts().await.expect("firing").len(), 2);

    let resolved = store
        .resolve_alert(r.id, "gh-1", at(60), Some(28.0))
        .await
        .expect("resolve")
        .expect("was firing");
    assert_eq!(resolved.id, a.id);
    assert_eq!(resolved.state, AlertState::Resolved);
    assert_eq!(resolved.resolved_at, Some(at(60)));
    assert!(
        store
            .resolve_alert(r.id, "gh-1", at(61), None)
            .await
            .expect("resolve again")
            .is_none()
    );
    // It can fire again: a new alert.
    let again = store
        .fire_alert(r.id, "gh-1", at(120), Some(33.0))
        .await
        .expect("fire")
        .expect("fires anew");
    assert_ne!(again.id, a.id);

    // Four notifications are queued, due at their alert's time.
    let due = store.due_deliveries(at(1_000), 100).await.expect("due");
    let summary: Vec<_> = due
        .iter()
        .map(|d| (d.alert_id, d.firing, d.subject.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (a.id, true, "gh-1"),
            (other.id, true, "gh-2"),
            (a.id, false, "gh-1"),
            (again.id, true, "gh-1")
        ]
    );
    assert!(
        store
            .due_deliveries(at(-1), 100)
            .await
            .expect("due")
            .is_empty()
    );
    assert_eq!(store.next_delivery_due().await.expect("next"), Some(at(0)));

    // Listing and acknowledging.
    let firing = store
        .alerts(&AlertQuery {
            state: Some(AlertState::Firing),
            subject: Some("gh-1".into()),
            before: None,
            limit: 10,
        })
        .await
        .expect("list");
    assert_eq!(firing.iter().map(|a| a.id).collect::<Vec<_>>(), [again.id]);
    let all = store
        .alerts(&AlertQuery {
            limit: 2,
            ..AlertQuery::default()
        })
        .await
        .expect("page");
    assert_eq!(all.len(), 2);
    assert!(all[0].id > all[1].id, "newest first");
    let acked = store.acknowledge_alert(a.id, &cli()).await.expect("ack");
    assert_eq!(acked.acked_by.as_deref(), Some("cli:test"));
    let twice = store.acknowledge_alert(a.id, &cli()).await.expect("ack");
    assert_eq!(
        twice.acked_at, acked.acked_at,
        "the first acknowledgement stays"
    );
    assert!(matches!(
        store.acknowledge_alert(9_999, &cli()).await,
        Err(StoreError::AlertNotFound(9_999))
    ));
}

async fn deliveries_retry_then_die_and_can_be_retried(backend: impl Backend) {
    let store = backend.open().await;
    store
        .add_alert_channel(channel("ops"), &cli())
        .await
        .expect("channel");
    let r = store
        .add_alert_rule(rule("hot", "ops", RuleScope::Fleet), &cli())
        .await
        .expect("rule");
    store
        .fire_alert(r.id, "gh-1", at(0), None)
        .await
        .expect("fire")
        .expect("fired");
    store
        .fire_alert(r.id, "gh-2", at(0), None)
        .await
        .expect("fire")
        .expect("fired");
    let due = store.due_deliveries(at(0), 10).await.expect("due");
    let (first, second) = (due[0].id, due[1].id);

    store
        .record_attempt(first, AttemptOutcome::RetryAt(at(30), "HTTP 500".into()))
        .await
        .expect("retry");
    let due = store.due_deliveries(at(10), 10).await.expect("due");
    assert_eq!(due.iter().map(|d| d.id).collect::<Vec<_>>(), [second]);
    let later = store.due_deliveries(at(30), 10).await.expect("due");
    let retried = later.iter().find(|d| d.id == first).expect("due again");
    assert_eq!(retried.attempts, 1);
    assert_eq!(retried.last_error.as_deref(), Some("HTTP 500"));

    store
        .record_attempt(second, AttemptOutcome::Delivered(at(1)))
        .await
        .expect("delivered");
    store
        .record_attempt(first, AttemptOutcome::Dead("HTTP 404".into()))
        .await
        .expect("dead");
    // A late outcome for a delivery no longer pending changes nothing.
    store
        .record_attempt(second, AttemptOutcome::Dead("late".into()))
        .await
        .expect("ignored");
    assert!(
        store
            .due_deliveries(at(10_000), 10)
            .await
            .expect("due")
            .is_empty()
    );
    assert_eq!(store.next_delivery_due().await.expect("next"), None);

    let dead = store.dead_deliveries(10).await.expect("dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id, dead[0].status, dead[0].attempts),
        (first, DeliveryStatus::Dead, 2)
    );
    let back = store.retry_delivery(first, &cli()).await.expect("retry");
    assert_eq!((back.status, back.attempts), (DeliveryStatus::Pending, 0));
    assert!(
        back.next_attempt_at <= OffsetDateTime::now_utc() + Duration::seconds(1),
        "due now"
    );
    assert!(matches!(
        store.retry_delivery(second, &cli()).await,
        Err(StoreError::DeliveryNotDead(_))
    ));
    assert!(store.dead_deliveries(10).await.expect("dead").is_empty());
}

async fn removing_a_rule_closes_its_alerts_without_notifying(backend: impl Backend) {
    let store = backend.open().await;
    store
        .add_alert_channel(channel("ops"), &cli())
        .await
        .expect("channel");
    let r = store
        .add_alert_rule(
            rule("hot", "ops", RuleScope::Owner("user:1".into())),
            &cli(),
        )
        .await
        .expect("rule");
    let a = store
        .fire_alert(r.id, "gh-1", at(0), None)
        .await
        .expect("fire")
        .expect("fired");
    store
        .remove_alert_rule("hot", &cli())
        .await
        .expect("remove");
    let closed = store.alert(a.id).await.expect("alert").expect("kept");
    assert_eq!(closed.state, AlertState::Closed);
    assert!(store.firing_alerts().await.expect("firing").is_empty());
    assert!(
        store
            .resolve_alert(r.id, "gh-1", at(5), None)
            .await
            .expect("resolve")
            .is_none()
    );
    // Only the firing notification was ever queued.
    let due = store.due_deliveries(at(100), 10).await.expect("due");
    assert_eq!(due.len(), 1);
    assert!(due[0].firing);
}

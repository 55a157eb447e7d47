//! Notifications on both backends: a claim's end notifies the person who
//! started it, in the transaction that ends it, and nobody else; a user
//! reads and marks only their own; bad notifications are refused.

use rampart_store::notifications::{KIND_CLAIM_BOUND, KIND_CLAIM_FAILED};
use rampart_store::{
    Actor, ClaimStatus, NewClaim, NewNotification, NewUser, NotificationQuery, NotificationStore,
    Role, Store, StoreError, UserStore,
};
use time::{Duration, OffsetDateTime};

use crate::store::{Backend, Postgres, Sqlite, cli, id, new_device, on_both};

on_both!(
    a_claims_end_notifies_its_starter_only,
    users_read_and_mark_only_their_own,
);

fn person(name: &str) -> Actor {
    Actor {
        name: name.into(),
        source: "192.0.2.7".into(),
    }
}

async fn add_user(s: &impl UserStore, id: &str, name: &str) {
    s.create_user(
        NewUser {
            id: id.into(),
            name: name.into(),
            email: None,
            password_hash: Some(format!("$argon2id$fake${id}")),
            role: Role::Operator,
            invite: None,
            now: OffsetDateTime::now_utc(),
        },
        &Actor::system(),
    )
    .await
    .expect("user");
}

fn claim(device: &str, owner: &str) -> NewClaim {
    NewClaim {
        device: id(device),
        owner: owner.parse().expect("owner"),
        nonce: "0123456789abcdef0123456789abcdef".into(),
        expires_at: OffsetDateTime::now_utc() + Duration::minutes(10),
        claim_code_hash: "hash".into(),
    }
}

async fn a_claims_end_notifies_its_starter_only(backend: impl Backend) {
    let s = backend.open().await;
    add_user(&s, "u-ann", "Ann").await;
    add_user(&s, "u-bob", "bob").await;
    for (n, d) in ["lamp-1", "lamp-2", "lamp-3", "lamp-4"].iter().enumerate() {
        s.create_device(new_device(d, n as u8 + 1), &cli())
            .await
            .expect("device");
    }
    // Ann claims for a group: she started it, so she hears of it (the
    // starter's name matches regardless of case, as sign-in does).
    let bound = s
        .start_claim(claim("lamp-1", "group:ops"), &person("ann"))
        .await
        .expect("claim");
    s.complete_claim(bound.id, &Actor::system())
        .await
        .expect("bind");
    let page = s
        .notifications("u-ann", &NotificationQuery::default())
        .await
        .expect("list");
    assert_eq!(page.unread, 1);
    let [n] = page.notifications.as_slice() else {
        panic!("one notification: {page:?}");
    };
    assert_eq!(n.kind, KIND_CLAIM_BOUND);
    assert_eq!(n.link.as_deref(), Some("/devices/lamp-1"));
    assert!(n.title.contains("lamp-1"), "{}", n.title);
    assert_eq!(n.read_at, None);
    assert_eq!(s.unread_notifications("u-bob").await.expect("bob"), 0);

    // Refused and expired claims notify too, with the reason.
    let refused = s
        .start_claim(claim("lamp-2", "user:bob"), &person("bob"))
        .await
        .expect("claim");
    s.end_claim(
        refused.id,
        ClaimStatus::Refused,
        "claim_attempts",
        &Actor::system(),
    )
    .await
    .expect("refuse");
    let expired = s
        .start_claim(claim("lamp-3", "user:bob"), &person("bob"))
        .await
        .expect("claim");
    s.end_claim(
        expired.id,
        ClaimStatus::Expired,
        "expired",
        &Actor::system(),
    )
    .await
    .expect("expire");
    let page = s
        .notifications("u-bob", &NotificationQuery::default())
        .await
        .expect("list");
    let kinds: Vec<_> = page.notifications.iter().map(|n| n.kind.as_str()).collect();
    assert_eq!(kinds, [KIND_CLAIM_FAILED, KIND_CLAIM_FAILED]);
    assert!(page.notifications[0].title.contains("lamp-3"));
    assert!(page.notifications[1].body.contains("claim_attempts"));
    assert_eq!(s.unread_notifications("u-ann").await.expect("ann"), 1);

    // A claim started from the CLI has no console user to tell.
    let from_cli = s
        .start_claim(claim("lamp-4", "user:ann"), &cli())
        .await
        .expect("claim");
    s.complete_claim(from_cli.id, &Actor::system())
        .await
        .expect("bind");
    assert_eq!(s.unread_notifications("u-ann").await.expect("ann"), 1);

    // A refused completion writes nothing: the notification shares the
    // claim's transaction.
    let err = s
        .complete_claim(bound.id, &Actor::system())
        .await
        .expect_err("bound already");
    assert!(matches!(err, StoreError::ClaimState { .. }), "{err}");
    assert_eq!(s.unread_notifications("u-ann").await.expect("ann"), 1);
    assert!(s.verify_audit().await.expect("verify").ok);
}

fn note(user: &str, n: u32) -> NewNotification {
    NewNotification {
        user_id: user.into(),
        kind: "alert.fired".into(),
        title: format!("Alert {n}"),
        body: "temperature > 30 for 5 min".into(),
        link: Some("/devices/lamp-1".into()),
    }
}

async fn users_read_and_mark_only_their_own(backend: impl Backend) {
    let s = backend.open().await;
    add_user(&s, "u-ann", "ann").await;
    add_user(&s, "u-bob", "bob").await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let made = s
            .add_notification(note("u-ann", n), &Actor::system())
            .await
            .expect("add");
        assert_eq!(made.title, format!("Alert {n}"));
        ids.push(made.id);
    }
    s.add_notification(note("u-bob", 9), &Actor::system())
        .await
        .expect("add");

    // Newest first, in pages.
    let first = s
        .notifications(
            "u-ann",
            &NotificationQuery {
                limit: 2,
                ..NotificationQuery::default()
            },
        )
        .await
        .expect("page");
    let titles: Vec<_> = first
        .notifications
        .iter()
        .map(|n| n.title.as_str())
        .collect();
    assert_eq!(titles, ["Alert 4", "Alert 3"]);
    assert_eq!(first.unread, 5);
    let next = s
        .notifications(
            "u-ann",
            &NotificationQuery {
                before: first.notifications.last().map(|n| n.id),
                limit: 10,
                ..NotificationQuery::default()
            },
        )
        .await
        .expect("page");
    assert_eq!(next.notifications.len(), 3);

    // Marking up to what the reader saw leaves newer ones unread.
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("t");
    let marked = s
        .mark_notifications_read("u-ann", Some(ids[2]), now, &person("ann"))
        .await
        .expect("mark");
    assert_eq!(marked, 3);
    let unread = s
        .notifications(
            "u-ann",
            &NotificationQuery {
                unread_only: true,
                ..NotificationQuery::default()
            },
        )
        .await
        .expect("unread");
    let titles: Vec<_> = unread
        .notifications
        .iter()
        .map(|n| n.title.as_str())
        .collect();
    assert_eq!(titles, ["Alert 4", "Alert 3"]);
    assert_eq!(unread.unread, 2);
    let all = s
        .notifications("u-ann", &NotificationQuery::default())
        .await
        .expect("all");
    assert_eq!(all.notifications[4].read_at, Some(now));

    // Bob's marking never touches Ann's, and his stay his.
    assert_eq!(
        s.mark_notifications_read("u-bob", None, now, &person("bob"))
            .await
            .expect("mark"),
        1
    );
    assert_eq!(s.unread_notifications("u-ann").await.expect("ann"), 2);
    assert_eq!(
        s.mark_notifications_read("u-bob", None, now, &person("bob"))
            .await
            .expect("again"),
        0
    );
    assert_eq!(
        s.mark_notifications_read("u-ann", None, now, &person("ann"))
            .await
            .expect("rest"),
        2
    );
    assert_eq!(s.unread_notifications("u-ann").await.expect("ann"), 0);

    // Audited: one row per create, one per marking that changed something.
    let actions: Vec<_> = s
        .audit_log(0, 1000)
        .await
        .expect("audit")
        .into_iter()
        .map(|r| r.action)
        .filter(|a| a.starts_with("notification."))
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "notification.read").count(),
        3
    );
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "notification.create")
            .count(),
        6
    );

    // Refusals change nothing.
    let err = s
        .add_notification(note("u-nobody", 1), &Actor::system())
        .await
        .expect_err("unknown user");
    assert!(matches!(err, StoreError::UserNotFound(_)), "{err}");
    let err = s
        .add_notification(
            NewNotification {
                link: Some("https://evil.example".into()),
                ..note("u-ann", 1)
            },
            &Actor::system(),
        )
        .await
        .expect_err("foreign link");
    assert!(matches!(err, StoreError::InvalidNotification(_)), "{err}");
    assert_eq!(s.unread_notifications("u-ann").await.expect("ann"), 0);
    assert!(s.verify_audit().await.expect("verify").ok);
}

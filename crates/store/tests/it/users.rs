//! Console users, sessions, setup and API tokens on both backends: the
//! setup token's one-hour, one-use, newest-only rules; names unique
//! regardless of case; the owner protected; invitations; lockouts;
//! sessions ended by disable and "log out everywhere"; API tokens; and an
//! audit row in the same transaction for every security-relevant change,
//! never carrying a secret.

use rampart_store::{
    Actor, LockoutPolicy, NewApiToken, NewSession, NewUser, Role, SetupRefusal, Store, StoreError,
    UserChange, UserStore,
};
use time::{Duration, OffsetDateTime};

use crate::store::{Backend, Postgres, Sqlite, on_both};

on_both!(
    setup_token_is_newest_only_one_hour_and_one_use,
    users_names_roles_disable_and_mfa,
    invitations_are_one_use_and_expire,
    repeated_failures_lock_the_account,
    sessions_end_one_by_one_or_everywhere,
    api_tokens_are_created_listed_and_revoked_once,
);

fn admin() -> Actor {
    Actor {
        name: "alice".into(),
        source: "192.0.2.1".into(),
    }
}

fn t0() -> OffsetDateTime {
    // Millisecond precision, as the store keeps it.
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time")
}

fn user(id: &str, name: &str, role: Role, now: OffsetDateTime) -> NewUser {
    NewUser {
        id: id.into(),
        name: name.into(),
        email: None,
        password_hash: Some(format!("$argon2id$fake${id}")),
        role,
        invite: None,
        now,
    }
}

fn session(hash: &str, user_id: &str, now: OffsetDateTime) -> NewSession {
    NewSession {
        id_hash: hash.into(),
        user_id: user_id.into(),
        csrf_token: format!("csrf-{hash}"),
        created_at: now,
        last_used_at: now,
        idle_expires_at: now + Duration::minutes(30),
        absolute_expires_at: now + Duration::hours(12),
        user_agent: "test".into(),
        ip: "192.0.2.9".into(),
    }
}

async fn actions(s: &impl Store) -> Vec<String> {
    s.audit_log(0, 1000)
        .await
        .expect("audit")
        .into_iter()
        .map(|r| r.action)
        .collect()
}

async fn setup_token_is_newest_only_one_hour_and_one_use(b: impl Backend) {
    let s = b.open().await;
    let now = t0();
    assert!(!s.owner_exists().await.expect("owner"));
    s.issue_setup_token("hash-a", now, now + Duration::hours(1), &Actor::system())
        .await
        .expect("token a");
    s.issue_setup_token("hash-b", now, now + Duration::hours(1), &Actor::system())
        .await
        .expect("token b");
    let setup = |hash: &'static str, at: OffsetDateTime| {
        let s = s.clone();
        async move {
            s.complete_setup(
                hash,
                user("o1", "owner", Role::Owner, at),
                session("s-owner", "o1", at),
                &admin(),
            )
            .await
        }
    };
    // The earlier token is void; a wrong one too; the current one expires.
    for (hash, at, refusal) in [
        ("hash-a", now, SetupRefusal::InvalidToken),
        ("nope", now, SetupRefusal::InvalidToken),
        ("hash-b", now + Duration::hours(1), SetupRefusal::Expired),
    ] {
        match setup(hash, at).await {
            Err(StoreError::SetupRefused(r)) => assert_eq!(r, refusal, "{hash}"),
            other => panic!("{hash}: {other:?}"),
        }
    }
    assert!(!s.owner_exists().await.expect("owner"));
    let (owner, sess) = setup("hash-b", now + Duration::minutes(59))
        .await
        .expect("setup");
    assert_eq!(owner.role, Role::Owner);
    assert_eq!(sess.user_id, "o1");
    assert!(s.owner_exists().await.expect("owner"));
    assert_eq!(
        s.session("s-owner")
            .await
            .expect("session")
            .map(|x| x.csrf_token),
        Some("csrf-s-owner".to_owned())
    );
    // Used: neither the token nor a new one works any more.
    assert!(matches!(
        setup("hash-b", now).await,
        Err(StoreError::SetupRefused(SetupRefusal::Done))
    ));
    assert!(matches!(
        s.issue_setup_token("hash-c", now, now + Duration::hours(1), &Actor::system())
            .await,
        Err(StoreError::SetupRefused(SetupRefusal::Done))
    ));
    let log = actions(&s).await;
    assert_eq!(
        log,
        [
            "setup.token_issued",
            "setup.token_issued",
            "user.setup_owner",
            "user.login"
        ]
    );
    assert!(s.verify_audit().await.expect("verify").ok);
}

async fn users_names_roles_disable_and_mfa(b: impl Backend) {
    let s = b.open().await;
    let now = t0();
    s.create_user(user("o1", "Owner", Role::Owner, now), &admin())
        .await
        .expect("owner");
    let bob = s
        .create_user(user("u1", "Bob", Role::Operator, now), &admin())
        .await
        .expect("bob");
    assert_eq!(
        (bob.role, bob.disabled, bob.mfa_enabled),
        (Role::Operator, false, false)
    );
    assert!(matches!(
        s.create_user(user("u2", "bob", Role::Viewer, now), &admin()).await,
        Err(StoreError::UserNameTaken(n)) if n == "bob"
    ));
    assert_eq!(
        s.user_by_name("BOB").await.expect("by name").map(|u| u.id),
        Some("u1".into())
    );
    // The owner is protected; nobody becomes owner.
    for change in [UserChange::Role(Role::Viewer), UserChange::Disabled(true)] {
        assert!(matches!(
            s.update_user("o1", change, now, &admin()).await,
            Err(StoreError::UserState { .. })
        ));
    }
    assert!(matches!(
        s.update_user("u1", UserChange::Role(Role::Owner), now, &admin())
            .await,
        Err(StoreError::UserState { .. })
    ));
    let bob = s
        .update_user("u1", UserChange::Role(Role::Admin), now, &admin())
        .await
        .expect("role");
    assert_eq!(bob.role, Role::Admin);
    // Disabling ends the user's sessions.
    s.create_session(session("s1", "u1", now), &admin())
        .await
        .expect("session");
    let bob = s
        .update_user("u1", UserChange::Disabled(true), now, &admin())
        .await
        .expect("disable");
    assert!(bob.disabled);
    assert!(s.session("s1").await.expect("session").is_none());
    s.update_user("u1", UserChange::Disabled(false), now, &admin())
        .await
        .expect("enable");
    // MFA: confirm needs a pending secret; reset clears it.
    assert!(matches!(
        s.update_user("u1", UserChange::MfaEnabled, now, &admin())
            .await,
        Err(StoreError::UserState { .. })
    ));
    s.update_user("u1", UserChange::MfaPending(vec![1, 2, 3]), now, &admin())
        .await
        .expect("pending");
    let bob = s
        .update_user("u1", UserChange::MfaEnabled, now, &admin())
        .await
        .expect("enabled");
    assert!(bob.mfa_enabled);
    assert_eq!(bob.totp_secret.as_deref(), Some(&[1u8, 2, 3][..]));
    let bob = s
        .update_user("u1", UserChange::MfaReset, now, &admin())
        .await
        .expect("reset");
    assert!(!bob.mfa_enabled && bob.totp_secret.is_none());
    assert!(matches!(
        s.update_user("nobody", UserChange::MfaReset, now, &admin())
            .await,
        Err(StoreError::UserNotFound(_))
    ));
    let names: Vec<String> = s
        .users()
        .await
        .expect("users")
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["Bob", "Owner"]);
    let log = s.audit_log(0, 100).await.expect("audit");
    let acts: Vec<&str> = log.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        acts,
        [
            "user.create",
            "user.create",
            "user.role",
            "user.login",
            "user.disable",
            "user.enable",
            "user.mfa_enroll",
            "user.mfa_enable",
            "user.mfa_reset"
        ]
    );
    let role = log
        .iter()
        .find(|r| r.action == "user.role")
        .expect("role row");
    assert_eq!(role.subject.as_deref(), Some("Bob"));
    assert_eq!(role.detail["from"], "operator");
    assert_eq!(role.detail["to"], "admin");
    let all = serde_json::to_string(&log).expect("JSON");
    assert!(
        !all.contains("argon2id"),
        "a password hash reached the audit log"
    );
    assert!(s.verify_audit().await.expect("verify").ok);
}

async fn invitations_are_one_use_and_expire(b: impl Backend) {
    let s = b.open().await;
    let now = t0();
    let mut invited = user("u1", "carol", Role::Viewer, now);
    invited.password_hash = None;
    invited.invite = Some(("inv-hash".into(), now + Duration::days(7)));
    let carol = s.create_user(invited, &admin()).await.expect("invite");
    assert!(carol.invited());
    let accept = |hash: &'static str, at: OffsetDateTime| {
        let s = s.clone();
        async move {
            s.accept_invite(hash, "$argon2id$new", at, &Actor::system())
                .await
        }
    };
    assert!(matches!(
        accept("wrong", now).await,
        Err(StoreError::InviteInvalid)
    ));
    assert!(matches!(
        accept("inv-hash", now + Duration::days(7)).await,
        Err(StoreError::InviteInvalid)
    ));
    let carol = accept("inv-hash", now + Duration::days(6))
        .await
        .expect("accept");
    assert_eq!(carol.password_hash.as_deref(), Some("$argon2id$new"));
    assert!(!carol.invited());
    assert!(matches!(
        accept("inv-hash", now).await,
        Err(StoreError::InviteInvalid)
    ));
    assert_eq!(actions(&s).await, ["user.create", "user.invite_accepted"]);
}

async fn repeated_failures_lock_the_account(b: impl Backend) {
    let s = b.open().await;
    let now = t0();
    s.create_user(user("u1", "dave", Role::Viewer, now), &admin())
        .await
        .expect("user");
    let policy = LockoutPolicy {
        max_failures: 3,
        lockout: Duration::minutes(15),
    };
    for n in 1..=2 {
        let f = s
            .record_login_failure("u1", now, policy, &admin())
            .await
            .expect("failure");
        assert_eq!((f.failures, f.locked_until), (n, None));
    }
    let f = s
        .record_login_failure("u1", now, policy, &admin())
        .await
        .expect("failure");
    assert_eq!(f.locked_until, Some(now + Duration::minutes(15)));
    let dave = s.user("u1").await.expect("get").expect("dave");
    assert_eq!(dave.locked_until, Some(now + Duration::minutes(15)));
    assert_eq!(actions(&s).await, ["user.create", "user.lockout"]);
    // A successful sign-in clears the count and the lock.
    s.create_session(session("s1", "u1", now), &admin())
        .await
        .expect("session");
    let dave = s.user("u1").await.expect("get").expect("dave");
    assert_eq!((dave.failed_logins, dave.locked_until), (0, None));
}

async fn sessions_end_one_by_one_or_everywhere(b: impl Backend) {
    let s = b.open().await;
    let now = t0();
    s.create_user(user("u1", "erin", Role::Admin, now), &admin())
        .await
        .expect("user");
    for (i, h) in ["a", "b", "c"].into_iter().enumerate() {
        s.create_session(
            session(h, "u1", now + Duration::seconds(i as i64)),
            &admin(),
        )
        .await
        .expect("session");
    }
    let later = now + Duration::minutes(5);
    s.touch_session("a", later, later + Duration::minutes(30))
        .await
        .expect("touch");
    let a = s.session("a").await.expect("get").expect("a");
    assert_eq!(a.last_used_at, later);
    assert!(a.live_at(later + Duration::minutes(29)));
    assert!(!a.live_at(later + Duration::minutes(30)));
    let listed: Vec<String> = s
        .sessions_of("u1")
        .await
        .expect("list")
        .into_iter()
        .map(|x| x.id_hash)
        .collect();
    assert_eq!(listed, ["c", "b", "a"]);
    s.end_session("b").await.expect("end");
    assert!(s.session("b").await.expect("get").is_none());
    assert_eq!(s.end_all_sessions("u1", &admin()).await.expect("all"), 2);
    assert!(s.sessions_of("u1").await.expect("list").is_empty());
    let log = s.audit_log(0, 100).await.expect("audit");
    let last = log.last().expect("row");
    assert_eq!(last.action, "user.logout_everywhere");
    assert_eq!(last.detail["sessions"], 2);
}

async fn api_tokens_are_created_listed_and_revoked_once(b: impl Backend) {
    let s = b.open().await;
    let now = t0();
    for (id, name) in [("u1", "frank"), ("u2", "gina")] {
        s.create_user(user(id, name, Role::Admin, now), &admin())
            .await
            .expect("user");
    }
    let token = |id: &str, by: &str| NewApiToken {
        id: id.into(),
        token_hash: format!("sha-{id}"),
        name: format!("script {id}"),
        role: Role::Viewer,
        created_by: by.into(),
        expires_at: Some(now + Duration::days(30)),
        now,
    };
    let t1 = s
        .create_api_token(token("t1", "u1"), &admin())
        .await
        .expect("t1");
    s.create_api_token(token("t2", "u2"), &admin())
        .await
        .expect("t2");
    assert!(matches!(
        s.create_api_token(token("t3", "nobody"), &admin()).await,
        Err(StoreError::UserNotFound(_))
    ));
    assert_eq!(t1.role, Role::Viewer);
    assert!(t1.usable_at(now));
    assert!(!t1.usable_at(now + Duration::days(30)));
    assert_eq!(
        s.api_token_by_hash("sha-t1")
            .await
            .expect("get")
            .map(|t| t.id),
        Some("t1".into())
    );
    let mine: Vec<String> = s
        .api_tokens(Some("u1"))
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(mine, ["t1"]);
    assert_eq!(s.api_tokens(None).await.expect("all").len(), 2);
    s.touch_api_token("t1", now + Duration::minutes(1))
        .await
        .expect("touch");
    let revoked = s
        .revoke_api_token("t1", now + Duration::minutes(2), &admin())
        .await
        .expect("revoke");
    assert_eq!(revoked.revoked_at, Some(now + Duration::minutes(2)));
    assert_eq!(revoked.last_used_at, Some(now + Duration::minutes(1)));
    assert!(!revoked.usable_at(now));
    assert!(matches!(
        s.revoke_api_token("t1", now, &admin()).await,
        Err(StoreError::ApiTokenNotFound(_))
    ));
    let log = s.audit_log(0, 100).await.expect("audit");
    let acts: Vec<&str> = log.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        acts,
        [
            "user.create",
            "user.create",
            "api_token.create",
            "api_token.create",
            "api_token.revoke"
        ]
    );
    assert!(
        !serde_json::to_string(&log)
            .expect("JSON")
            .contains("sha-t1")
    );
}

//! Console users, sessions, setup and API tokens in SQLite. Every write runs
//! in a `BEGIN IMMEDIATE` transaction, so a check and the change it guards
//! (a free name, a current token) see the same rows.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::json;
use time::OffsetDateTime;

use super::{SqliteStore, audit, db};
use crate::millis::to_ms;
use crate::users::{
    API_TOKEN_COLUMNS, ApiTokenRow, SESSION_COLUMNS, SessionRow, USER_COLUMNS, UserRow,
    api_token_created, check_setup_token, entry, user_created,
};
use crate::{
    Actor, ApiToken, AuditKey, AuditRecord, LockoutPolicy, LoginFailure, NewApiToken, NewSession,
    NewUser, Result, Role, Session, SetupRefusal, StoreError, User, UserChange, UserStore,
};

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        id: r.get(0)?,
        name: r.get(1)?,
        email: r.get(2)?,
        password_hash: r.get(3)?,
        role: r.get(4)?,
        disabled: r.get(5)?,
        totp_secret: r.get(6)?,
        mfa_enabled: r.get(7)?,
        failed_logins: r.get(8)?,
        locked_until: r.get(9)?,
        invite_expires_at: r.get(10)?,
        created_by: r.get(11)?,
        created_at: r.get(12)?,
        updated_at: r.get(13)?,
    })
}

fn session_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok(SessionRow {
        id_hash: r.get(0)?,
        user_id: r.get(1)?,
        csrf_token: r.get(2)?,
        created_at: r.get(3)?,
        last_used_at: r.get(4)?,
        idle_expires_at: r.get(5)?,
        absolute_expires_at: r.get(6)?,
        user_agent: r.get(7)?,
        ip: r.get(8)?,
    })
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiTokenRow> {
    Ok(ApiTokenRow {
        id: r.get(0)?,
        token_hash: r.get(1)?,
        name: r.get(2)?,
        role: r.get(3)?,
        created_by: r.get(4)?,
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        last_used_at: r.get(7)?,
        revoked_at: r.get(8)?,
    })
}

/// The user whose `condition` (with `?1`) matches `value`.
fn user_where(conn: &Connection, condition: &str, value: &str) -> Result<Option<User>> {
    conn.prepare_cached(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE {condition}"
    ))
    .map_err(db)?
    .query_row(params![value], user_row)
    .optional()
    .map_err(db)?
    .map(UserRow::into_user)
    .transpose()
}

fn by_id(conn: &Connection, id: &str) -> Result<Option<User>> {
    user_where(conn, "id = ?1", id)
}

fn by_name(conn: &Connection, name: &str) -> Result<Option<User>> {
    user_where(conn, "lower(name) = lower(?1)", name)
}

fn require(conn: &Connection, id: &str) -> Result<User> {
    by_id(conn, id)?.ok_or_else(|| StoreError::UserNotFound(id.to_owned()))
}

fn owner_exists(conn: &Connection) -> Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM users WHERE role = 'owner')",
        [],
        |r| r.get(0),
    )
    .map_err(db)
}

fn insert_user(tx: &Transaction<'_>, u: &NewUser, actor: &Actor) -> Result<User> {
    if by_name(tx, &u.name)?.is_some() {
        return Err(StoreError::UserNameTaken(u.name.clone()));
    }
    let now = to_ms(u.now);
    let (invite_hash, invite_expires) = match &u.invite {
        Some((hash, expires)) => (Some(hash.as_str()), Some(to_ms(*expires))),
        None => (None, None),
    };
    tx.execute(
        "INSERT INTO users (id, name, email, password_hash, role, invite_hash, invite_expires_at,
             created_by, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
        params![
            u.id,
            u.name,
            u.email,
            u.password_hash,
            u.role.as_str(),
            invite_hash,
            invite_expires,
            actor.name,
            now
        ],
    )
    .map_err(db)?;
    require(tx, &u.id)
}

fn insert_session(tx: &Transaction<'_>, s: &NewSession) -> Result<Session> {
    tx.execute(
        &format!("INSERT INTO user_sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
        params![
            s.id_hash,
            s.user_id,
            s.csrf_token,
            to_ms(s.created_at),
            to_ms(s.last_used_at),
            to_ms(s.idle_expires_at),
            to_ms(s.absolute_expires_at),
            s.user_agent,
            s.ip
        ],
    )
    .map_err(db)?;
    tx.execute(
        "UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = ?1",
        params![s.user_id],
    )
    .map_err(db)?;
    session(tx, &s.id_hash)?.ok_or_else(|| StoreError::Corrupt("session vanished".into()))
}

fn session(conn: &Connection, id_hash: &str) -> Result<Option<Session>> {
    conn.prepare_cached(&format!(
        "SELECT {SESSION_COLUMNS} FROM user_sessions WHERE id_hash = ?1"
    ))
    .map_err(db)?
    .query_row(params![id_hash], session_row)
    .optional()
    .map_err(db)?
    .map(SessionRow::into_session)
    .transpose()
}

fn token_where(conn: &Connection, column: &str, value: &str) -> Result<Option<ApiToken>> {
    conn.prepare_cached(&format!(
        "SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE {column} = ?1"
    ))
    .map_err(db)?
    .query_row(params![value], token_row)
    .optional()
    .map_err(db)?
    .map(ApiTokenRow::into_token)
    .transpose()
}

fn login_entry(s: &Session, user: &User, actor: &Actor) -> crate::AuditEntry {
    entry(
        actor,
        "user.login",
        &user.name,
        json!({ "ip": s.ip, "user_agent": s.user_agent }),
    )
}

/// Applies `change`; the SQL of each change.
fn apply(tx: &Transaction<'_>, id: &str, change: &UserChange, now: i64) -> Result<()> {
    let n = match change {
        UserChange::Role(role) => tx.execute(
            "UPDATE users SET role = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, role.as_str(), now],
        ),
        UserChange::Disabled(disabled) => tx.execute(
            "UPDATE users SET disabled = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, disabled, now],
        ),
        UserChange::Password(hash) => tx.execute(
            "UPDATE users SET password_hash = ?2, failed_logins = 0, locked_until = NULL,
                 updated_at = ?3 WHERE id = ?1",
            params![id, hash, now],
        ),
        UserChange::MfaPending(secret) => tx.execute(
            "UPDATE users SET totp_secret = ?2, mfa_enabled = 0, updated_at = ?3 WHERE id = ?1",
            params![id, secret, now],
        ),
        UserChange::MfaEnabled => tx.execute(
            "UPDATE users SET mfa_enabled = 1, updated_at = ?2 WHERE id = ?1",
            params![id, now],
        ),
        UserChange::MfaDisabled | UserChange::MfaReset => tx.execute(
            "UPDATE users SET totp_secret = NULL, mfa_enabled = 0, updated_at = ?2 WHERE id = ?1",
            params![id, now],
        ),
    }
    .map_err(db)?;
    if n != 1 {
        return Err(StoreError::UserNotFound(id.to_owned()));
    }
    if matches!(change, UserChange::Disabled(true)) {
        tx.execute("DELETE FROM user_sessions WHERE user_id = ?1", params![id])
            .map_err(db)?;
    }
    Ok(())
}

/// The write of `f` with the audit row it returns.
type Audited<T> = Result<(T, AuditRecord)>;

#[async_trait::async_trait]
impl UserStore for SqliteStore {
    async fn owner_exists(&self) -> Result<bool> {
        self.read(|conn, _| owner_exists(conn)).await
    }

    async fn issue_setup_token(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
        actor: &Actor,
    ) -> Result<()> {
        let (hash, actor) = (token_hash.to_owned(), actor.clone());
        self.write_audited(move |tx, key: &AuditKey| -> Audited<()> {
            if owner_exists(tx)? {
                return Err(StoreError::SetupRefused(SetupRefusal::Done));
            }
            tx.execute("DELETE FROM setup_tokens", []).map_err(db)?;
            tx.execute(
                "INSERT INTO setup_tokens (token_hash, created_at, expires_at) VALUES (?1, ?2, ?3)",
                params![hash, to_ms(now), to_ms(expires_at)],
            )
            .map_err(db)?;
            let e = crate::AuditEntry {
                actor: actor.clone(),
                action: "setup.token_issued".into(),
                subject: None,
                detail: json!({ "expires_at": to_ms(expires_at) }),
            };
            Ok(((), audit::append(tx, key, &e)?))
        })
        .await
    }

    async fn complete_setup(
        &self,
        token_hash: &str,
        owner: NewUser,
        session: NewSession,
        actor: &Actor,
    ) -> Result<(User, Session)> {
        let (hash, actor) = (token_hash.to_owned(), actor.clone());
        self.write_audited(move |tx, key| -> Audited<(User, Session)> {
            if owner_exists(tx)? {
                return Err(StoreError::SetupRefused(SetupRefusal::Done));
            }
            let expires: Option<i64> = tx
                .query_row(
                    "SELECT expires_at FROM setup_tokens WHERE token_hash = ?1",
                    params![hash],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            check_setup_token(expires, owner.now)?;
            let owner = NewUser {
                role: Role::Owner,
                ..owner
            };
            let user = insert_user(tx, &owner, &actor)?;
            tx.execute("DELETE FROM setup_tokens", []).map_err(db)?;
            let session = insert_session(tx, &session)?;
            audit::append(tx, key, &user_created(&owner, &actor, "user.setup_owner"))?;
            let rec = audit::append(tx, key, &login_entry(&session, &user, &actor))?;
            Ok(((user, session), rec))
        })
        .await
    }

    async fn create_user(&self, user: NewUser, actor: &Actor) -> Result<User> {
        let actor = actor.clone();
        self.write_audited(move |tx, key| -> Audited<User> {
            let created = insert_user(tx, &user, &actor)?;
            let rec = audit::append(tx, key, &user_created(&user, &actor, "user.create"))?;
            Ok((created, rec))
        })
        .await
    }

    async fn user(&self, id: &str) -> Result<Option<User>> {
        let id = id.to_owned();
        self.read(move |conn, _| by_id(conn, &id)).await
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let name = name.to_owned();
        self.read(move |conn, _| by_name(conn, &name)).await
    }

    async fn users(&self) -> Result<Vec<User>> {
        self.read(|conn, _| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {USER_COLUMNS} FROM users ORDER BY lower(name)"
                ))
                .map_err(db)?;
            let rows = stmt.query_map([], user_row).map_err(db)?;
            rows.map(|r| r.map_err(db).and_then(UserRow::into_user))
                .collect()
        })
        .await
    }

    async fn accept_invite(
        &self,
        invite_hash: &str,
        password_hash: &str,
        now: OffsetDateTime,
        actor: &Actor,
    ) -> Result<User> {
        let (invite, password, actor) = (
            invite_hash.to_owned(),
            password_hash.to_owned(),
            actor.clone(),
        );
        self.write_audited(move |tx, key| -> Audited<User> {
            let user = user_where(tx, "invite_hash = ?1", &invite)?
                .filter(|u| u.password_hash.is_none() && !u.disabled)
                .filter(|u| u.invite_expires_at.is_some_and(|e| now < e))
                .ok_or(StoreError::InviteInvalid)?;
            tx.execute(
                "UPDATE users SET password_hash = ?2, invite_hash = NULL, invite_expires_at = NULL,
                     updated_at = ?3 WHERE id = ?1",
                params![user.id, password, to_ms(now)],
            )
            .map_err(db)?;
            let rec = audit::append(
                tx,
                key,
                &entry(&actor, "user.invite_accepted", &user.name, json!({})),
            )?;
            Ok((require(tx, &user.id)?, rec))
        })
        .await
    }

    async fn update_user(
        &self,
        id: &str,
        change: UserChange,
        now: OffsetDateTime,
        actor: &Actor,
    ) -> Result<User> {
        let (id, actor) = (id.to_owned(), actor.clone());
        self.write_audited(move |tx, key| -> Audited<User> {
            let user = require(tx, &id)?;
            change.check(&user)?;
            apply(tx, &id, &change, to_ms(now))?;
            let e = entry(&actor, change.action(), &user.name, change.detail(&user));
            let rec = audit::append(tx, key, &e)?;
            Ok((require(tx, &id)?, rec))
        })
        .await
    }

    async fn record_login_failure(
        &self,
        user_id: &str,
        now: OffsetDateTime,
        policy: LockoutPolicy,
        actor: &Actor,
    ) -> Result<LoginFailure> {
        let (id, actor) = (user_id.to_owned(), actor.clone());
        let (failure, record) = self
            .write(move |tx, key| {
                let user = require(tx, &id)?;
                let failures = user.failed_logins.saturating_add(1);
                if policy.max_failures > 0 && failures >= policy.max_failures {
                    let until = now + policy.lockout;
                    tx.execute(
                        "UPDATE users SET failed_logins = 0, locked_until = ?2 WHERE id = ?1",
                        params![id, to_ms(until)],
                    )
                    .map_err(db)?;
                    let e = entry(
                        &actor,
                        "user.lockout",
                        &user.name,
                        json!({ "failures": failures, "locked_until": to_ms(until) }),
                    );
                    let rec = audit::append(tx, key, &e)?;
                    return Ok((
                        LoginFailure {
                            failures: 0,
                            locked_until: Some(until),
                        },
                        Some(rec),
                    ));
                }
                tx.execute(
                    "UPDATE users SET failed_logins = ?2 WHERE id = ?1",
                    params![id, failures],
                )
                .map_err(db)?;
                Ok((
                    LoginFailure {
                        failures,
                        locked_until: None,
                    },
                    None,
                ))
            })
            .await?;
        if let Some(record) = record {
            self.advance_head(&record);
        }
        Ok(failure)
    }

    async fn create_session(&self, s: NewSession, actor: &Actor) -> Result<Session> {
        let actor = actor.clone();
        self.write_audited(move |tx, key| -> Audited<Session> {
            let user = require(tx, &s.user_id)?;
            let session = insert_session(tx, &s)?;
            let rec = audit::append(tx, key, &login_entry(&session, &user, &actor))?;
            Ok((session, rec))
        })
        .await
    }

    async fn session(&self, id_hash: &str) -> Result<Option<Session>> {
        let id_hash = id_hash.to_owned();
        self.read(move |conn, _| session(conn, &id_hash)).await
    }

    async fn touch_session(
        &self,
        id_hash: &str,
        now: OffsetDateTime,
        idle_expires_at: OffsetDateTime,
    ) -> Result<()> {
        let id_hash = id_hash.to_owned();
        self.write(move |tx, _| {
            tx.execute(
                "UPDATE user_sessions SET last_used_at = ?2, idle_expires_at = ?3 WHERE id_hash = ?1",
                params![id_hash, to_ms(now), to_ms(idle_expires_at)],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn end_session(&self, id_hash: &str) -> Result<()> {
        let id_hash = id_hash.to_owned();
        self.write(move |tx, _| {
            tx.execute(
                "DELETE FROM user_sessions WHERE id_hash = ?1",
                params![id_hash],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn end_all_sessions(&self, user_id: &str, actor: &Actor) -> Result<u64> {
        let (id, actor) = (user_id.to_owned(), actor.clone());
        self.write_audited(move |tx, key| -> Audited<u64> {
            let user = require(tx, &id)?;
            let n = tx
                .execute("DELETE FROM user_sessions WHERE user_id = ?1", params![id])
                .map_err(db)?;
            let e = entry(
                &actor,
                "user.logout_everywhere",
                &user.name,
                json!({ "sessions": n }),
            );
            Ok((n as u64, audit::append(tx, key, &e)?))
        })
        .await
    }

    async fn sessions_of(&self, user_id: &str) -> Result<Vec<Session>> {
        let id = user_id.to_owned();
        self.read(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM user_sessions WHERE user_id = ?1
                     ORDER BY created_at DESC, id_hash"
                ))
                .map_err(db)?;
            let rows = stmt.query_map(params![id], session_row).map_err(db)?;
            rows.map(|r| r.map_err(db).and_then(SessionRow::into_session))
                .collect()
        })
        .await
    }

    async fn create_api_token(&self, t: NewApiToken, actor: &Actor) -> Result<ApiToken> {
        let actor = actor.clone();
        self.write_audited(move |tx, key| -> Audited<ApiToken> {
            require(tx, &t.created_by)?;
            tx.execute(
                "INSERT INTO api_tokens (id, token_hash, name, role, created_by, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    t.id,
                    t.token_hash,
                    t.name,
                    t.role.as_str(),
                    t.created_by,
                    to_ms(t.now),
                    t.expires_at.map(to_ms)
                ],
            )
            .map_err(db)?;
            let rec = audit::append(tx, key, &api_token_created(&t, &actor))?;
            let token = token_where(tx, "id", &t.id)?
                .ok_or_else(|| StoreError::Corrupt("API token vanished".into()))?;
            Ok((token, rec))
        })
        .await
    }

    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>> {
        let hash = token_hash.to_owned();
        self.read(move |conn, _| token_where(conn, "token_hash", &hash))
            .await
    }

    async fn api_tokens(&self, created_by: Option<&str>) -> Result<Vec<ApiToken>> {
        let by = created_by.map(str::to_owned);
        self.read(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {API_TOKEN_COLUMNS} FROM api_tokens
                     WHERE ?1 IS NULL OR created_by = ?1 ORDER BY created_at, id"
                ))
                .map_err(db)?;
            let rows = stmt.query_map(params![by], token_row).map_err(db)?;
            rows.map(|r| r.map_err(db).and_then(ApiTokenRow::into_token))
                .collect()
        })
        .await
    }

    async fn revoke_api_token(
        &self,
        id: &str,
        now: OffsetDateTime,
        actor: &Actor,
    ) -> Result<ApiToken> {
        let (id, actor) = (id.to_owned(), actor.clone());
        self.write_audited(move |tx, key| -> Audited<ApiToken> {
            let n = tx
                .execute(
                    "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                    params![id, to_ms(now)],
                )
                .map_err(db)?;
            if n != 1 {
                return Err(StoreError::ApiTokenNotFound(id));
            }
            let token = token_where(tx, "id", &id)?.ok_or(StoreError::ApiTokenNotFound(id))?;
            let e = entry(
                &actor,
                "api_token.revoke",
                &token.id,
                json!({ "name": token.name }),
            );
            Ok((token, audit::append(tx, key, &e)?))
        })
        .await
    }

    async fn touch_api_token(&self, id: &str, now: OffsetDateTime) -> Result<()> {
        let id = id.to_owned();
        self.write(move |tx, _| {
            tx.execute(
                "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1",
                params![id, to_ms(now)],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }
}

//! Console users, sessions, setup and API tokens in PostgreSQL. Every
//! audited write takes the append lock first, so a check and the change it
//! guards (a free name, a current setup token, no owner yet) are serialised
//! with every other audited change, whichever process makes it.

use deadpool_postgres::GenericClient;
use serde_json::json;
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::ledger::{self, Ledger};
use super::{PostgresStore, audit, db, get};
use crate::millis::to_ms;
use crate::users::{
    API_TOKEN_COLUMNS, ApiTokenRow, SESSION_COLUMNS, SessionRow, USER_COLUMNS, UserRow,
    api_token_created, check_setup_token, entry, user_created,
};
use crate::{
    Actor, ApiToken, AuditEntry, LockoutPolicy, LoginFailure, NewApiToken, NewSession, NewUser,
    Result, Role, Session, SetupRefusal, StoreError, User, UserChange, UserStore,
};

fn user_row(r: &Row) -> Result<User> {
    UserRow {
        id: get(r, 0)?,
        name: get(r, 1)?,
        email: get(r, 2)?,
        password_hash: get(r, 3)?,
        role: get(r, 4)?,
        disabled: get(r, 5)?,
        totp_secret: get(r, 6)?,
        mfa_enabled: get(r, 7)?,
        failed_logins: i64::from(get::<i32>(r, 8)?),
        locked_until: get(r, 9)?,
        invite_expires_at: get(r, 10)?,
        created_by: get(r, 11)?,
        created_at: get(r, 12)?,
        updated_at: get(r, 13)?,
    }
    .into_user()
}

fn session_row(r: &Row) -> Result<Session> {
    SessionRow {
        id_hash: get(r, 0)?,
        user_id: get(r, 1)?,
        csrf_token: get(r, 2)?,
        created_at: get(r, 3)?,
        last_used_at: get(r, 4)?,
        idle_expires_at: get(r, 5)?,
        absolute_expires_at: get(r, 6)?,
        user_agent: get(r, 7)?,
        ip: get(r, 8)?,
    }
    .into_session()
}

fn token_row(r: &Row) -> Result<ApiToken> {
    ApiTokenRow {
        id: get(r, 0)?,
        token_hash: get(r, 1)?,
        name: get(r, 2)?,
        role: get(r, 3)?,
        created_by: get(r, 4)?,
        created_at: get(r, 5)?,
        expires_at: get(r, 6)?,
        last_used_at: get(r, 7)?,
        revoked_at: get(r, 8)?,
    }
    .into_token()
}

async fn user_where(c: &impl GenericClient, condition: &str, value: &str) -> Result<Option<User>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE {condition}"
        ))
        .await
        .map_err(db)?;
    match c.query_opt(&stmt, &[&value]).await.map_err(db)? {
        Some(r) => user_row(&r).map(Some),
        None => Ok(None),
    }
}

async fn by_id(c: &impl GenericClient, id: &str) -> Result<Option<User>> {
    user_where(c, "id = $1", id).await
}

async fn by_name(c: &impl GenericClient, name: &str) -> Result<Option<User>> {
    user_where(c, "lower(name) = lower($1)", name).await
}

async fn require(c: &impl GenericClient, id: &str) -> Result<User> {
    by_id(c, id)
        .await?
        .ok_or_else(|| StoreError::UserNotFound(id.to_owned()))
}

async fn owner_exists(c: &impl GenericClient) -> Result<bool> {
    let r = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM users WHERE role = 'owner')",
            &[],
        )
        .await
        .map_err(db)?;
    get(&r, 0)
}

async fn insert_user(c: &impl GenericClient, u: &NewUser, actor: &Actor) -> Result<User> {
    if by_name(c, &u.name).await?.is_some() {
        return Err(StoreError::UserNameTaken(u.name.clone()));
    }
    let now = to_ms(u.now);
    let (invite_hash, invite_expires) = match &u.invite {
        Some((hash, expires)) => (Some(hash.as_str()), Some(to_ms(*expires))),
        None => (None, None),
    };
    c.execute(
        "INSERT INTO users (id, name, email, password_hash, role, invite_hash, invite_expires_at,
             created_by, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        &[
            &u.id,
            &u.name,
            &u.email,
            &u.password_hash,
            &u.role.as_str(),
            &invite_hash,
            &invite_expires,
            &actor.name,
            &now,
        ],
    )
    .await
    .map_err(db)?;
    require(c, &u.id).await
}

async fn session(c: &impl GenericClient, id_hash: &str) -> Result<Option<Session>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {SESSION_COLUMNS} FROM user_sessions WHERE id_hash = $1"
        ))
        .await
        .map_err(db)?;
    match c.query_opt(&stmt, &[&id_hash]).await.map_err(db)? {
        Some(r) => session_row(&r).map(Some),
        None => Ok(None),
    }
}

async fn insert_session(c: &impl GenericClient, s: &NewSession) -> Result<Session> {
    c.execute(
        &format!(
            "INSERT INTO user_sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        ),
        &[
            &s.id_hash,
            &s.user_id,
            &s.csrf_token,
            &to_ms(s.created_at),
            &to_ms(s.last_used_at),
            &to_ms(s.idle_expires_at),
            &to_ms(s.absolute_expires_at),
            &s.user_agent,
            &s.ip,
        ],
    )
    .await
    .map_err(db)?;
    c.execute(
        "UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = $1",
        &[&s.user_id],
    )
    .await
    .map_err(db)?;
    session(c, &s.id_hash)
        .await?
        .ok_or_else(|| StoreError::Corrupt("session vanished".into()))
}

async fn token_where(
    c: &impl GenericClient,
    column: &str,
    value: &str,
) -> Result<Option<ApiToken>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {API_TOKEN_COLUMNS} FROM api_tokens WHERE {column} = $1"
        ))
        .await
        .map_err(db)?;
    match c.query_opt(&stmt, &[&value]).await.map_err(db)? {
        Some(r) => token_row(&r).map(Some),
        None => Ok(None),
    }
}

fn login_entry(s: &Session, user: &User, actor: &Actor) -> AuditEntry {
    entry(
        actor,
        "user.login",
        &user.name,
        json!({ "ip": s.ip, "user_agent": s.user_agent }),
    )
}

async fn apply(c: &impl GenericClient, id: &str, change: &UserChange, now: i64) -> Result<()> {
    let n = match change {
        UserChange::Role(role) => {
            c.execute(
                "UPDATE users SET role = $2, updated_at = $3 WHERE id = $1",
                &[&id, &role.as_str(), &now],
            )
            .await
        }
        UserChange::Disabled(disabled) => {
            c.execute(
                "UPDATE users SET disabled = $2, updated_at = $3 WHERE id = $1",
                &[&id, disabled, &now],
            )
            .await
        }
        UserChange::Password(hash) => {
            c.execute(
                "UPDATE users SET password_hash = $2, failed_logins = 0, locked_until = NULL,
                     updated_at = $3 WHERE id = $1",
                &[&id, hash, &now],
            )
            .await
        }
        UserChange::MfaPending(secret) => {
            c.execute(
                "UPDATE users SET totp_secret = $2, mfa_enabled = FALSE, updated_at = $3 WHERE id = $1",
                &[&id, secret, &now],
            )
            .await
        }
        UserChange::MfaEnabled => {
            c.execute(
                "UPDATE users SET mfa_enabled = TRUE, updated_at = $2 WHERE id = $1",
                &[&id, &now],
            )
            .await
        }
        UserChange::MfaDisabled | UserChange::MfaReset => {
            c.execute(
                "UPDATE users SET totp_secret = NULL, mfa_enabled = FALSE, updated_at = $2 WHERE id = $1",
                &[&id, &now],
            )
            .await
        }
    }
    .map_err(db)?;
    if n != 1 {
        return Err(StoreError::UserNotFound(id.to_owned()));
    }
    if matches!(change, UserChange::Disabled(true)) {
        c.execute("DELETE FROM user_sessions WHERE user_id = $1", &[&id])
            .await
            .map_err(db)?;
    }
    Ok(())
}

/// Runs `$body` (which may use `$ledger`, a [`Ledger`]) in a write
/// transaction holding the append lock; `$body` yields `(out, audit row)`.
macro_rules! audited_tx {
    ($self:ident, |$ledger:ident| $body:expr) => {
        $self
            .audited(|| async {
                let mut client = $self.client().await?;
                let tx = $self.begin(&mut client).await?;
                let $ledger: Ledger<'_, '_> = ledger::lock(&tx).await?;
                let out = $body;
                tx.commit().await.map_err(db)?;
                Ok(out)
            })
            .await
    };
}

#[async_trait::async_trait]
impl UserStore for PostgresStore {
    async fn owner_exists(&self) -> Result<bool> {
        self.retrying(|| async {
            let client = self.client().await?;
            owner_exists(&client).await
        })
        .await
    }

    async fn issue_setup_token(
        &self,
        token_hash: &str,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
        actor: &Actor,
    ) -> Result<()> {
        let key = &self.inner.audit_key;
        audited_tx!(self, |l| {
            let tx = l.tx();
            if owner_exists(tx).await? {
                return Err(StoreError::SetupRefused(SetupRefusal::Done));
            }
            tx.execute("DELETE FROM setup_tokens", &[])
                .await
                .map_err(db)?;
            tx.execute(
                "INSERT INTO setup_tokens (token_hash, created_at, expires_at) VALUES ($1, $2, $3)",
                &[&token_hash, &to_ms(now), &to_ms(expires_at)],
            )
            .await
            .map_err(db)?;
            let e = AuditEntry {
                actor: actor.clone(),
                action: "setup.token_issued".into(),
                subject: None,
                detail: json!({ "expires_at": to_ms(expires_at) }),
            };
            ((), audit::append(&l, key, &e).await?)
        })
    }

    async fn complete_setup(
        &self,
        token_hash: &str,
        owner: NewUser,
        session: NewSession,
        actor: &Actor,
    ) -> Result<(User, Session)> {
        let key = &self.inner.audit_key;
        let owner = NewUser {
            role: Role::Owner,
            ..owner
        };
        audited_tx!(self, |l| {
            let tx = l.tx();
            if owner_exists(tx).await? {
                return Err(StoreError::SetupRefused(SetupRefusal::Done));
            }
            let expires: Option<i64> = match tx
                .query_opt(
                    "SELECT expires_at FROM setup_tokens WHERE token_hash = $1",
                    &[&token_hash],
                )
                .await
                .map_err(db)?
            {
                Some(r) => Some(get(&r, 0)?),
                None => None,
            };
            check_setup_token(expires, owner.now)?;
            let user = insert_user(tx, &owner, actor).await?;
            tx.execute("DELETE FROM setup_tokens", &[])
                .await
                .map_err(db)?;
            let session = insert_session(tx, &session).await?;
            audit::append(&l, key, &user_created(&owner, actor, "user.setup_owner")).await?;
            let rec = audit::append(&l, key, &login_entry(&session, &user, actor)).await?;
            ((user, session), rec)
        })
    }

    async fn create_user(&self, user: NewUser, actor: &Actor) -> Result<User> {
        let key = &self.inner.audit_key;
        audited_tx!(self, |l| {
            let created = insert_user(l.tx(), &user, actor).await?;
            let rec = audit::append(&l, key, &user_created(&user, actor, "user.create")).await?;
            (created, rec)
        })
    }

    async fn user(&self, id: &str) -> Result<Option<User>> {
        self.retrying(|| async {
            let client = self.client().await?;
            by_id(&client, id).await
        })
        .await
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        self.retrying(|| async {
            let client = self.client().await?;
            by_name(&client, name).await
        })
        .await
    }

    async fn users(&self) -> Result<Vec<User>> {
        self.retrying(|| async {
            let client = self.client().await?;
            client
                .query(
                    &format!("SELECT {USER_COLUMNS} FROM users ORDER BY lower(name)"),
                    &[],
                )
                .await
                .map_err(db)?
                .iter()
                .map(user_row)
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
        let key = &self.inner.audit_key;
        audited_tx!(self, |l| {
            let tx = l.tx();
            let user = user_where(tx, "invite_hash = $1", invite_hash)
                .await?
                .filter(|u| u.password_hash.is_none() && !u.disabled)
                .filter(|u| u.invite_expires_at.is_some_and(|e| now < e))
                .ok_or(StoreError::InviteInvalid)?;
            tx.execute(
                "UPDATE users SET password_hash = $2, invite_hash = NULL, invite_expires_at = NULL,
                     updated_at = $3 WHERE id = $1",
                &[&user.id, &password_hash, &to_ms(now)],
            )
            .await
            .map_err(db)?;
            let e = entry(actor, "user.invite_accepted", &user.name, json!({}));
            let rec = audit::append(&l, key, &e).await?;
            (require(tx, &user.id).await?, rec)
        })
    }

    async fn update_user(
        &self,
        id: &str,
        change: UserChange,
        now: OffsetDateTime,
        actor: &Actor,
    ) -> Result<User> {
        let key = &self.inner.audit_key;
        audited_tx!(self, |l| {
            let tx = l.tx();
            let user = require(tx, id).await?;
            change.check(&user)?;
            apply(tx, id, &change, to_ms(now)).await?;
            let e = entry(actor, change.action(), &user.name, change.detail(&user));
            let rec = audit::append(&l, key, &e).await?;
            (require(tx, id).await?, rec)
        })
    }

    async fn record_login_failure(
        &self,
        user_id: &str,
        now: OffsetDateTime,
        policy: LockoutPolicy,
        actor: &Actor,
    ) -> Result<LoginFailure> {
        let key = &self.inner.audit_key;
        let (failure, record) = self
            .retrying(|| async {
                let mut client = self.client().await?;
                let tx = self.begin(&mut client).await?;
                // Row lock: two failures at once count as two.
                let user = user_where(&tx, "id = $1 FOR UPDATE", user_id)
                    .await?
                    .ok_or_else(|| StoreError::UserNotFound(user_id.to_owned()))?;
                let failures = user.failed_logins.saturating_add(1);
                let out = if policy.max_failures > 0 && failures >= policy.max_failures {
                    let l = ledger::lock(&tx).await?;
                    let until = now + policy.lockout;
                    tx.execute(
                        "UPDATE users SET failed_logins = 0, locked_until = $2 WHERE id = $1",
                        &[&user_id, &to_ms(until)],
                    )
                    .await
                    .map_err(db)?;
                    let e = entry(
                        actor,
                        "user.lockout",
                        &user.name,
                        json!({ "failures": failures, "locked_until": to_ms(until) }),
                    );
                    let rec = audit::append(&l, key, &e).await?;
                    (
                        LoginFailure {
                            failures: 0,
                            locked_until: Some(until),
                        },
                        Some(rec),
                    )
                } else {
                    tx.execute(
                        "UPDATE users SET failed_logins = $2 WHERE id = $1",
                        &[&user_id, &i32::try_from(failures).unwrap_or(i32::MAX)],
                    )
                    .await
                    .map_err(db)?;
                    (
                        LoginFailure {
                            failures,
                            locked_until: None,
                        },
                        None,
                    )
                };
                tx.commit().await.map_err(db)?;
                Ok(out)
            })
            .await?;
        if let Some(record) = record {
            self.advance_head(&record);
        }
        Ok(failure)
    }

    async fn create_session(&self, s: NewSession, actor: &Actor) -> Result<Session> {
        let key = &self.inner.audit_key;
        audited_tx!(self, |l| {
            let tx = l.tx();
            let user = require(tx, &s.user_id).await?;
            let session = insert_session(tx, &s).await?;
            let rec = audit::append(&l, key, &login_entry(&session, &user, actor)).await?;
            (session, rec)
        })
    }

    async fn session(&self, id_hash: &str) -> Result<Option<Session>> {
        self.retrying(|| async {
            let client = self.client().await?;
            session(&client, id_hash).await
        })
        .await
    }

    async fn touch_session(
        &self,
        id_hash: &str,
        now: OffsetDateTime,
        idle_expires_at: OffsetDateTime,
    ) -> Result<()> {
        self.retrying(|| async {
            let client = self.client().await?;
            client
                .execute(
                    "UPDATE user_sessions SET last_used_at = $2, idle_expires_at = $3 WHERE id_hash = $1",
                    &[&id_hash, &to_ms(now), &to_ms(idle_expires_at)],
                )
                .await
                .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn end_session(&self, id_hash: &str) -> Result<()> {
        self.retrying(|| async {
            let client = self.client().await?;
            client
                .execute("DELETE FROM user_sessions WHERE id_hash = $1", &[&id_hash])
                .await
                .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn end_all_sessions(&self, user_id: &str, actor: &Actor) -> Result<u64> {
        let key = &self.inner.audit_key;
        audited_tx!(self, |l| {
            let tx = l.tx();
            let user = require(tx, user_id).await?;
            let n = tx
                .execute("DELETE FROM user_sessions WHERE user_id = $1", &[&user_id])
                .await
                .map_err(db)?;
            let e = entry(
                actor,
                "user.logout_everywhere",
                &user.name,
                json!({ "sessions": n }),
            );
            (n, audit::append(&l, key, &e).await?)
        })
    }

    async fn sessions_of(&self, user_id: &str) -> Result<Vec<Session>> {
        self.retrying(|| async {
            let client = self.client().await?;
            client
                .query(
                    &format!(
                        "SELECT {SESSION_COLUMNS} FROM user_sessions WHERE user_id = $1
                         ORDER BY created_at DESC, id_hash"
                    ),
                    &[&user_id],
                )
                .await
                .map_err(db)?
                .iter()
                .map(session_row)
                .collect()
        })
        .await
    }

    async fn create_api_token(&self, t: NewApiToken, actor: &Actor) -> Result<ApiToken> {
        let key = &self.inner.audit_key;
        audited_tx!(self, |l| {
            let tx = l.tx();
            require(tx, &t.created_by).await?;
            tx.execute(
                "INSERT INTO api_tokens (id, token_hash, name, role, created_by, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &t.id,
                    &t.token_hash,
                    &t.name,
                    &t.role.as_str(),
                    &t.created_by,
                    &to_ms(t.now),
                    &t.expires_at.map(to_ms),
                ],
            )
            .await
            .map_err(db)?;
            let rec = audit::append(&l, key, &api_token_created(&t, actor)).await?;
            let token = token_where(tx, "id", &t.id)
                .await?
                .ok_or_else(|| StoreError::Corrupt("API token vanished".into()))?;
            (token, rec)
        })
    }

    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>> {
        self.retrying(|| async {
            let client = self.client().await?;
            token_where(&client, "token_hash", token_hash).await
        })
        .await
    }

    async fn api_tokens(&self, created_by: Option<&str>) -> Result<Vec<ApiToken>> {
        self.retrying(|| async {
            let client = self.client().await?;
            client
                .query(
                    &format!(
                        "SELECT {API_TOKEN_COLUMNS} FROM api_tokens
                         WHERE $1::text IS NULL OR created_by = $1::text ORDER BY created_at, id"
                    ),
                    &[&created_by],
                )
                .await
                .map_err(db)?
                .iter()
                .map(token_row)
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
        let key = &self.inner.audit_key;
        audited_tx!(self, |l| {
            let tx = l.tx();
            let n = tx
                .execute(
                    "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                    &[&id, &to_ms(now)],
                )
                .await
                .map_err(db)?;
            if n != 1 {
                return Err(StoreError::ApiTokenNotFound(id.to_owned()));
            }
            let token = token_where(tx, "id", id)
                .await?
                .ok_or_else(|| StoreError::ApiTokenNotFound(id.to_owned()))?;
            let e = entry(
                actor,
                "api_token.revoke",
                &token.id,
                json!({ "name": token.name }),
            );
            let rec = audit::append(&l, key, &e).await?;
            (token, rec)
        })
    }

    async fn touch_api_token(&self, id: &str, now: OffsetDateTime) -> Result<()> {
        self.retrying(|| async {
            let client = self.client().await?;
            client
                .execute(
                    "UPDATE api_tokens SET last_used_at = $2 WHERE id = $1",
                    &[&id, &to_ms(now)],
                )
                .await
                .map_err(db)?;
            Ok(())
        })
        .await
    }
}

//! Users' notifications in PostgreSQL.

use deadpool_postgres::{GenericClient, Transaction};
use serde_json::json;
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::ledger;
use super::{PostgresStore, audit, db, get};
use crate::millis::{from_ms, now_ms, to_ms};
use crate::notifications::{NewNotification, claim_notification};
use crate::{
    Actor, AuditEntry, Claim, ClaimStatus, Notification, NotificationPage, NotificationQuery,
    NotificationStore, Result, StoreError,
};

const SELECT: &str =
    "SELECT id, user_id, kind, title, body, link, created_at, read_at FROM notifications";

fn row(r: &Row) -> Result<Notification> {
    let id: i64 = get(r, 0)?;
    Ok(Notification {
        id: u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("notification id {id}")))?,
        user_id: get(r, 1)?,
        kind: get(r, 2)?,
        title: get(r, 3)?,
        body: get(r, 4)?,
        link: get(r, 5)?,
        created_at: from_ms(get(r, 6)?)?,
        read_at: get::<Option<i64>>(r, 7)?.map(from_ms).transpose()?,
    })
}

/// Writes `n` (checked) inside `tx`; returns it as stored.
pub(super) async fn insert(
    tx: &Transaction<'_>,
    n: &NewNotification,
    now_ms: i64,
) -> Result<Notification> {
    n.check()?;
    let known = tx
        .query_opt("SELECT 1 FROM users WHERE id = $1", &[&n.user_id])
        .await
        .map_err(db)?
        .is_some();
    if !known {
        return Err(StoreError::UserNotFound(n.user_id.clone()));
    }
    let r = tx
        .query_one(
            "INSERT INTO notifications (user_id, kind, title, body, link, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             RETURNING id, user_id, kind, title, body, link, created_at, read_at",
            &[&n.user_id, &n.kind, &n.title, &n.body, &n.link, &now_ms],
        )
        .await
        .map_err(db)?;
    row(&r)
}

/// Notifies the person who started `claim` that it ended as `status`,
/// inside the transaction that ends it. Nobody is notified when the
/// starter is not a console user (the CLI's `cli:...` actors).
pub(super) async fn claim_ended(
    tx: &Transaction<'_>,
    claim: &Claim,
    status: ClaimStatus,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    let Ok(id) = i64::try_from(claim.id) else {
        return Ok(());
    };
    let starter = tx
        .query_opt(
            "SELECT u.id FROM claims c JOIN users u ON lower(u.name) = lower(c.requested_by)
             WHERE c.id = $1",
            &[&id],
        )
        .await
        .map_err(db)?;
    let Some(starter) = starter else {
        return Ok(());
    };
    let user_id: String = get(&starter, 0)?;
    if let Some(n) = claim_notification(claim, status, reason, &user_id) {
        insert(tx, &n, now_ms).await?;
    }
    Ok(())
}

async fn unread(c: &impl GenericClient, user_id: &str) -> Result<u64> {
    let stmt = c
        .prepare_cached("SELECT count(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL")
        .await
        .map_err(db)?;
    let r = c.query_one(&stmt, &[&user_id]).await.map_err(db)?;
    Ok(u64::try_from(get::<i64>(&r, 0)?).unwrap_or(0))
}

async fn page(
    c: &impl GenericClient,
    user_id: &str,
    q: &NotificationQuery,
) -> Result<NotificationPage> {
    let (before, unread_only, limit) = q.bound();
    let stmt = c
        .prepare_cached(&format!(
            "{SELECT} WHERE user_id = $1 AND id < $2 AND (NOT $3 OR read_at IS NULL)
             ORDER BY id DESC LIMIT $4"
        ))
        .await
        .map_err(db)?;
    let notifications = c
        .query(&stmt, &[&user_id, &before, &unread_only, &limit])
        .await
        .map_err(db)?
        .iter()
        .map(row)
        .collect::<Result<Vec<_>>>()?;
    Ok(NotificationPage {
        notifications,
        unread: unread(c, user_id).await?,
    })
}

#[async_trait::async_trait]
impl NotificationStore for PostgresStore {
    async fn add_notification(
        &self,
        notification: NewNotification,
        actor: &Actor,
    ) -> Result<Notification> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let (_, now) = now_ms();
            let n = insert(&tx, &notification, now).await?;
            let e = AuditEntry {
                actor: actor.clone(),
                action: "notification.create".into(),
                subject: Some(n.user_id.clone()),
                detail: json!({ "id": n.id, "kind": n.kind }),
            };
            let rec = audit::append(&ledger, &self.inner.audit_key, &e).await?;
            tx.commit().await.map_err(db)?;
            Ok((n, rec))
        })
        .await
    }

    async fn notifications(
        &self,
        user_id: &str,
        query: &NotificationQuery,
    ) -> Result<NotificationPage> {
        self.retrying(|| async {
            let mut client = self.client().await?;
            // One snapshot: the unread count matches the page.
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(db)?;
            let p = page(&tx, user_id, query).await?;
            tx.commit().await.map_err(db)?;
            Ok(p)
        })
        .await
    }

    async fn unread_notifications(&self, user_id: &str) -> Result<u64> {
        self.retrying(|| async {
            let client = self.client().await?;
            unread(&client, user_id).await
        })
        .await
    }

    async fn mark_notifications_read(
        &self,
        user_id: &str,
        up_to: Option<u64>,
        at: OffsetDateTime,
        actor: &Actor,
    ) -> Result<u64> {
        let up_to = up_to.map_or(i64::MAX, |u| i64::try_from(u).unwrap_or(i64::MAX));
        let (count, record) = self
            .retrying(|| async {
                let mut client = self.client().await?;
                let tx = self.begin(&mut client).await?;
                let ledger = ledger::lock(&tx).await?;
                let changed = tx
                    .execute(
                        "UPDATE notifications SET read_at = $3
                         WHERE user_id = $1 AND id <= $2 AND read_at IS NULL",
                        &[&user_id, &up_to, &to_ms(at)],
                    )
                    .await
                    .map_err(db)?;
                if changed == 0 {
                    tx.commit().await.map_err(db)?;
                    return Ok((0, None));
                }
                let e = AuditEntry {
                    actor: actor.clone(),
                    action: "notification.read".into(),
                    subject: Some(user_id.to_owned()),
                    detail: json!({ "count": changed }),
                };
                let rec = audit::append(&ledger, &self.inner.audit_key, &e).await?;
                tx.commit().await.map_err(db)?;
                Ok((changed, Some(rec)))
            })
            .await?;
        if let Some(record) = &record {
            self.advance_head(record);
        }
        Ok(count)
    }
}

//! Users' notifications in SQLite.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::json;
use time::OffsetDateTime;

use super::{SqliteStore, audit, db};
use crate::millis::{from_ms, now_ms, to_ms};
use crate::notifications::{NewNotification, claim_notification};
use crate::{
    Actor, AuditEntry, Claim, ClaimStatus, Notification, NotificationPage, NotificationQuery,
    NotificationStore, Result, StoreError,
};

const SELECT: &str =
    "SELECT id, user_id, kind, title, body, link, created_at, read_at FROM notifications";

type Row = (
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn into_notification(
    (id, user_id, kind, title, body, link, created_at, read_at): Row,
) -> Result<Notification> {
    Ok(Notification {
        id: u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("notification id {id}")))?,
        user_id,
        kind,
        title,
        body,
        link,
        created_at: from_ms(created_at)?,
        read_at: read_at.map(from_ms).transpose()?,
    })
}

/// Writes `n` (checked) inside `tx`; returns it as stored.
pub(super) fn insert(
    tx: &Transaction<'_>,
    n: &NewNotification,
    now_ms: i64,
) -> Result<Notification> {
    n.check()?;
    let known: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM users WHERE id = ?1)",
            params![n.user_id],
            |r| r.get(0),
        )
        .map_err(db)?;
    if !known {
        return Err(StoreError::UserNotFound(n.user_id.clone()));
    }
    tx.execute(
        "INSERT INTO notifications (user_id, kind, title, body, link, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![n.user_id, n.kind, n.title, n.body, n.link, now_ms],
    )
    .map_err(db)?;
    let id = tx.last_insert_rowid();
    tx.query_row(&format!("{SELECT} WHERE id = ?1"), params![id], row)
        .map_err(db)
        .and_then(into_notification)
}

/// Notifies the person who started `claim` that it ended as `status`,
/// inside the transaction that ends it. Nobody is notified when the
/// starter is not a console user (the CLI's `cli:...` actors).
pub(super) fn claim_ended(
    tx: &Transaction<'_>,
    claim: &Claim,
    status: ClaimStatus,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    let starter: Option<String> = tx
        .query_row(
            "SELECT u.id FROM claims c JOIN users u ON lower(u.name) = lower(c.requested_by)
             WHERE c.id = ?1",
            params![claim.id as i64],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)?;
    let Some(user_id) = starter else {
        return Ok(());
    };
    if let Some(n) = claim_notification(claim, status, reason, &user_id) {
        insert(tx, &n, now_ms)?;
    }
    Ok(())
}

fn unread(conn: &Connection, user_id: &str) -> Result<u64> {
    let n: i64 = conn
        .prepare_cached("SELECT count(*) FROM notifications WHERE user_id = ?1 AND read_at IS NULL")
        .map_err(db)?
        .query_row(params![user_id], |r| r.get(0))
        .map_err(db)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn page(conn: &Connection, user_id: &str, q: &NotificationQuery) -> Result<NotificationPage> {
    let (before, unread_only, limit) = q.bound();
    let mut stmt = conn
        .prepare_cached(&format!(
            "{SELECT} WHERE user_id = ?1 AND id < ?2 AND (?3 = 0 OR read_at IS NULL)
             ORDER BY id DESC LIMIT ?4"
        ))
        .map_err(db)?;
    let notifications = stmt
        .query_map(params![user_id, before, unread_only, limit], row)
        .map_err(db)?
        .map(|r| r.map_err(db).and_then(into_notification))
        .collect::<Result<Vec<_>>>()?;
    Ok(NotificationPage {
        notifications,
        unread: unread(conn, user_id)?,
    })
}

#[async_trait::async_trait]
impl NotificationStore for SqliteStore {
    async fn add_notification(
        &self,
        notification: NewNotification,
        actor: &Actor,
    ) -> Result<Notification> {
        let actor = actor.clone();
        self.write_audited(move |tx, key| {
            let (_, now) = now_ms();
            let n = insert(tx, &notification, now)?;
            let e = AuditEntry {
                actor,
                action: "notification.create".into(),
                subject: Some(n.user_id.clone()),
                detail: json!({ "id": n.id, "kind": n.kind }),
            };
            let rec = audit::append(tx, key, &e)?;
            Ok((n, rec))
        })
        .await
    }

    async fn notifications(
        &self,
        user_id: &str,
        query: &NotificationQuery,
    ) -> Result<NotificationPage> {
        let (user_id, query) = (user_id.to_owned(), query.clone());
        self.read(move |conn, _| page(conn, &user_id, &query)).await
    }

    async fn unread_notifications(&self, user_id: &str) -> Result<u64> {
        let user_id = user_id.to_owned();
        self.read(move |conn, _| unread(conn, &user_id)).await
    }

    async fn mark_notifications_read(
        &self,
        user_id: &str,
        up_to: Option<u64>,
        at: OffsetDateTime,
        actor: &Actor,
    ) -> Result<u64> {
        let (user_id, actor) = (user_id.to_owned(), actor.clone());
        let up_to = up_to.map_or(i64::MAX, |u| i64::try_from(u).unwrap_or(i64::MAX));
        let (count, record) = self
            .write(move |tx, key| {
                let changed = tx
                    .execute(
                        "UPDATE notifications SET read_at = ?3
                         WHERE user_id = ?1 AND id <= ?2 AND read_at IS NULL",
                        params![user_id, up_to, to_ms(at)],
                    )
                    .map_err(db)?;
                if changed == 0 {
                    return Ok((0, None));
                }
                let e = AuditEntry {
                    actor,
                    action: "notification.read".into(),
                    subject: Some(user_id),
                    detail: json!({ "count": changed }),
                };
                Ok((changed as u64, Some(audit::append(tx, key, &e)?)))
            })
            .await?;
        if let Some(record) = &record {
            self.advance_head(record);
        }
        Ok(count)
    }
}

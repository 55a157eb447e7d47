//! Alert channels, rules, alerts and the delivery outbox.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use time::OffsetDateTime;

use super::{SqliteStore, audit, changes, db};
use crate::alerts::{
    ALERT_COLUMNS, AlertRow, CHANNEL_COLUMNS, ChannelRow, DELIVERY_COLUMNS, DeliveryRow, MAX_PAGE,
    RULE_COLUMNS, RuleRow, alert_acked, channel_added, channel_removed, check_name,
    delivery_retried, rule_added, rule_removed, short_error,
};
use crate::millis::{now_ms, to_ms};
use crate::{
    Actor, Alert, AlertChannel, AlertQuery, AlertRule, AlertState, AlertStore, AttemptOutcome,
    ChangeKind, ChannelSecrets, Delivery, NewAlertChannel, NewAlertRule, Result, StoreError,
};

fn channel_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChannelRow> {
    Ok(ChannelRow {
        id: r.get(0)?,
        name: r.get(1)?,
        kind: r.get(2)?,
        target: r.get(3)?,
        signed: r.get(4)?,
        allow_private: r.get(5)?,
        per_minute: r.get(6)?,
        created_at: r.get(7)?,
        created_by: r.get(8)?,
    })
}

fn rule_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RuleRow> {
    Ok(RuleRow {
        id: r.get(0)?,
        name: r.get(1)?,
        expr: r.get(2)?,
        scope: r.get(3)?,
        scope_value: r.get(4)?,
        channel: r.get(5)?,
        created_at: r.get(6)?,
        created_by: r.get(7)?,
    })
}

fn alert_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AlertRow> {
    Ok(AlertRow {
        id: r.get(0)?,
        rule_id: r.get(1)?,
        rule: r.get(2)?,
        expr: r.get(3)?,
        subject: r.get(4)?,
        state: r.get(5)?,
        fired_at: r.get(6)?,
        fired_value: r.get(7)?,
        resolved_at: r.get(8)?,
        resolved_value: r.get(9)?,
        acked_at: r.get(10)?,
        acked_by: r.get(11)?,
    })
}

fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.get(0)?,
        alert_id: r.get(1)?,
        channel_id: r.get(2)?,
        change: r.get(3)?,
        at: r.get(4)?,
        value: r.get(5)?,
        rule: r.get(6)?,
        expr: r.get(7)?,
        subject: r.get(8)?,
        status: r.get(9)?,
        attempts: r.get(10)?,
        next_attempt_at: r.get(11)?,
        last_error: r.get(12)?,
    })
}

fn channels_where(
    conn: &Connection,
    clause: &str,
    p: &[&dyn rusqlite::ToSql],
) -> Result<Vec<AlertChannel>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {CHANNEL_COLUMNS} FROM alert_channels {clause} ORDER BY name"
        ))
        .map_err(db)?;
    let rows = stmt.query_map(p, channel_row).map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(ChannelRow::into_channel))
        .collect()
}

fn rules_where(
    conn: &Connection,
    clause: &str,
    p: &[&dyn rusqlite::ToSql],
) -> Result<Vec<AlertRule>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {RULE_COLUMNS} FROM alert_rules r JOIN alert_channels c ON c.id = r.channel_id
             {clause} ORDER BY r.id"
        ))
        .map_err(db)?;
    let rows = stmt.query_map(p, rule_row).map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(RuleRow::into_rule))
        .collect()
}

fn alerts_where(conn: &Connection, clause: &str, p: &[&dyn rusqlite::ToSql]) -> Result<Vec<Alert>> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {ALERT_COLUMNS} FROM alerts {clause}"))
        .map_err(db)?;
    let rows = stmt.query_map(p, alert_row).map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(AlertRow::into_alert))
        .collect()
}

fn deliveries_where(
    conn: &Connection,
    clause: &str,
    p: &[&dyn rusqlite::ToSql],
) -> Result<Vec<Delivery>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM alert_outbox o JOIN alerts a ON a.id = o.alert_id {clause}"
        ))
        .map_err(db)?;
    let rows = stmt.query_map(p, delivery_row).map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(DeliveryRow::into_delivery))
        .collect()
}

fn one<T>(mut v: Vec<T>) -> Option<T> {
    if v.is_empty() {
        None
    } else {
        Some(v.swap_remove(0))
    }
}

fn sql_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// Queues the notification of an alert change for the rule's channel.
fn enqueue(
    tx: &Transaction<'_>,
    alert_id: i64,
    channel_id: i64,
    firing: bool,
    at: i64,
    value: Option<f64>,
) -> Result<()> {
    tx.execute(
        "INSERT INTO alert_outbox (alert_id, channel_id, change, at, value, status, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?4)
         ON CONFLICT (alert_id, channel_id, change) DO NOTHING",
        params![
            alert_id,
            channel_id,
            if firing { "firing" } else { "resolved" },
            at,
            value
        ],
    )
    .map_err(db)?;
    Ok(())
}

#[async_trait]
impl AlertStore for SqliteStore {
    async fn add_alert_channel(&self, c: NewAlertChannel, actor: &Actor) -> Result<AlertChannel> {
        check_name(&c.name)?;
        let actor = actor.clone();
        self.write_audited(move |tx, key| {
            if one(channels_where(tx, "WHERE name = ?1", &[&c.name])?).is_some() {
                return Err(StoreError::AlertChannelExists(c.name.clone()));
            }
            let (_, now) = now_ms();
            tx.execute(
                "INSERT INTO alert_channels (name, kind, target, url_sealed, secret_sealed,
                     allow_private, per_minute, created_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    c.name,
                    c.kind,
                    c.target,
                    c.url_sealed,
                    c.secret_sealed,
                    c.allow_private,
                    c.per_minute.max(1),
                    now,
                    actor.name
                ],
            )
            .map_err(db)?;
            changes::append(tx, ChangeKind::AlertConfigChanged, &c.name, now)?;
            let rec = audit::append(tx, key, &channel_added(&c, &actor))?;
            let added = one(channels_where(tx, "WHERE name = ?1", &[&c.name])?)
                .ok_or_else(|| StoreError::AlertChannelNotFound(c.name.clone()))?;
            Ok((added, rec))
        })
        .await
    }

    async fn alert_channels(&self) -> Result<Vec<AlertChannel>> {
        self.read(|conn, _| channels_where(conn, "", &[])).await
    }

    async fn alert_channel_secrets(&self, id: u64) -> Result<Option<ChannelSecrets>> {
        self.read(move |conn, _| {
            conn.query_row(
                "SELECT url_sealed, secret_sealed FROM alert_channels WHERE id = ?1",
                params![sql_id(id)],
                |r| {
                    Ok(ChannelSecrets {
                        url_sealed: r.get(0)?,
                        secret_sealed: r.get(1)?,
                    })
                },
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn remove_alert_channel(&self, name: &str, actor: &Actor) -> Result<AlertChannel> {
        let (name, actor) = (name.to_owned(), actor.clone());
        self.write_audited(move |tx, key| {
            let channel = one(channels_where(tx, "WHERE name = ?1", &[&name])?)
                .ok_or_else(|| StoreError::AlertChannelNotFound(name.clone()))?;
            let id = sql_id(channel.id);
            let users: Vec<String> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT name FROM alert_rules WHERE channel_id = ?1 ORDER BY name",
                    )
                    .map_err(db)?;
                let rows = stmt.query_map(params![id], |r| r.get(0)).map_err(db)?;
                rows.collect::<rusqlite::Result<_>>().map_err(db)?
            };
            if !users.is_empty() {
                return Err(StoreError::AlertChannelInUse {
                    channel: name.clone(),
                    rules: users,
                });
            }
            let dead = tx
                .execute(
                    "UPDATE alert_outbox SET status = 'dead', last_error = 'channel removed'
                     WHERE channel_id = ?1 AND status = 'pending'",
                    params![id],
                )
                .map_err(db)?;
            tx.execute("DELETE FROM alert_channels WHERE id = ?1", params![id])
                .map_err(db)?;
            let (_, now) = now_ms();
            changes::append(tx, ChangeKind::AlertConfigChanged, &name, now)?;
            let rec = audit::append(tx, key, &channel_removed(&channel, dead as u64, &actor))?;
            Ok((channel, rec))
        })
        .await
    }

    async fn add_alert_rule(&self, r: NewAlertRule, actor: &Actor) -> Result<AlertRule> {
        check_name(&r.name)?;
        let actor = actor.clone();
        self.write_audited(move |tx, key| {
            if one(rules_where(tx, "WHERE r.name = ?1", &[&r.name])?).is_some() {
                return Err(StoreError::AlertRuleExists(r.name.clone()));
            }
            let channel = one(channels_where(tx, "WHERE name = ?1", &[&r.channel])?)
                .ok_or_else(|| StoreError::AlertChannelNotFound(r.channel.clone()))?;
            let (scope, scope_value) = r.scope.columns();
            let (_, now) = now_ms();
            tx.execute(
                "INSERT INTO alert_rules (name, expr, scope, scope_value, channel_id, created_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![r.name, r.expr, scope, scope_value, sql_id(channel.id), now, actor.name],
            )
            .map_err(db)?;
            let added = one(rules_where(tx, "WHERE r.name = ?1", &[&r.name])?)
                .ok_or_else(|| StoreError::AlertRuleNotFound(r.name.clone()))?;
            changes::append(tx, ChangeKind::AlertConfigChanged, &r.name, now)?;
            let rec = audit::append(tx, key, &rule_added(&added, &actor))?;
            Ok((added, rec))
        })
        .await
    }

    async fn alert_rules(&self) -> Result<Vec<AlertRule>> {
        self.read(|conn, _| rules_where(conn, "", &[])).await
    }

    async fn remove_alert_rule(&self, name: &str, actor: &Actor) -> Result<AlertRule> {
        let (name, actor) = (name.to_owned(), actor.clone());
        self.write_audited(move |tx, key| {
            let rule = one(rules_where(tx, "WHERE r.name = ?1", &[&name])?)
                .ok_or_else(|| StoreError::AlertRuleNotFound(name.clone()))?;
            let (_, now) = now_ms();
            let closed = tx
                .execute(
                    "UPDATE alerts SET state = 'closed', resolved_at = ?2
                     WHERE rule_id = ?1 AND state = 'firing'",
                    params![sql_id(rule.id), now],
                )
                .map_err(db)?;
            tx.execute(
                "DELETE FROM alert_rules WHERE id = ?1",
                params![sql_id(rule.id)],
            )
            .map_err(db)?;
            changes::append(tx, ChangeKind::AlertConfigChanged, &name, now)?;
            let rec = audit::append(tx, key, &rule_removed(&rule, closed as u64, &actor))?;
            Ok((rule, rec))
        })
        .await
    }

    async fn fire_alert(
        &self,
        rule_id: u64,
        subject: &str,
        at: OffsetDateTime,
        value: Option<f64>,
    ) -> Result<Option<Alert>> {
        let subject = subject.to_owned();
        let at = to_ms(at);
        self.write(move |tx, _| {
            let rule: Option<(String, String, i64)> = tx
                .query_row(
                    "SELECT name, expr, channel_id FROM alert_rules WHERE id = ?1",
                    params![sql_id(rule_id)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(db)?;
            let Some((name, expr, channel_id)) = rule else {
                return Ok(None);
            };
            let inserted = tx
                .execute(
                    "INSERT INTO alerts (rule_id, rule_name, expr, subject, state, fired_at, fired_value)
                     VALUES (?1, ?2, ?3, ?4, 'firing', ?5, ?6)
                     ON CONFLICT (rule_id, subject) WHERE state = 'firing' DO NOTHING",
                    params![sql_id(rule_id), name, expr, subject, at, value],
                )
                .map_err(db)?;
            if inserted == 0 {
                return Ok(None);
            }
            let id = tx.last_insert_rowid();
            enqueue(tx, id, channel_id, true, at, value)?;
            Ok(one(alerts_where(tx, "WHERE id = ?1", &[&id])?))
        })
        .await
    }

    async fn resolve_alert(
        &self,
        rule_id: u64,
        subject: &str,
        at: OffsetDateTime,
        value: Option<f64>,
    ) -> Result<Option<Alert>> {
        let subject = subject.to_owned();
        let at = to_ms(at);
        self.write(move |tx, _| {
            let firing: Option<(i64, i64)> = tx
                .query_row(
                    "SELECT a.id, r.channel_id FROM alerts a JOIN alert_rules r ON r.id = a.rule_id
                     WHERE a.rule_id = ?1 AND a.subject = ?2 AND a.state = 'firing'",
                    params![sql_id(rule_id), subject],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db)?;
            let Some((id, channel_id)) = firing else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE alerts SET state = 'resolved', resolved_at = ?2, resolved_value = ?3
                 WHERE id = ?1",
                params![id, at, value],
            )
            .map_err(db)?;
            enqueue(tx, id, channel_id, false, at, value)?;
            Ok(one(alerts_where(tx, "WHERE id = ?1", &[&id])?))
        })
        .await
    }

    async fn firing_alerts(&self) -> Result<Vec<Alert>> {
        self.read(|conn, _| alerts_where(conn, "WHERE state = 'firing' ORDER BY id", &[]))
            .await
    }

    async fn alerts(&self, q: &AlertQuery) -> Result<Vec<Alert>> {
        let q = q.clone();
        self.read(move |conn, _| {
            let state = q.state.map(AlertState::as_str);
            let before = q.before.map(sql_id).unwrap_or(i64::MAX);
            let limit = i64::from(q.limit.clamp(1, MAX_PAGE));
            alerts_where(
                conn,
                "WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR subject = ?2) AND id < ?3
                 ORDER BY id DESC LIMIT ?4",
                &[&state, &q.subject, &before, &limit],
            )
        })
        .await
    }

    async fn alert(&self, id: u64) -> Result<Option<Alert>> {
        self.read(move |conn, _| Ok(one(alerts_where(conn, "WHERE id = ?1", &[&sql_id(id)])?)))
            .await
    }

    async fn acknowledge_alert(&self, id: u64, actor: &Actor) -> Result<Alert> {
        let actor = actor.clone();
        self.write_audited(move |tx, key| {
            let (_, now) = now_ms();
            tx.execute(
                "UPDATE alerts SET acked_at = ?2, acked_by = ?3 WHERE id = ?1 AND acked_at IS NULL",
                params![sql_id(id), now, actor.name],
            )
            .map_err(db)?;
            let alert = one(alerts_where(tx, "WHERE id = ?1", &[&sql_id(id)])?)
                .ok_or(StoreError::AlertNotFound(id))?;
            let rec = audit::append(tx, key, &alert_acked(&alert, &actor))?;
            Ok((alert, rec))
        })
        .await
    }

    async fn due_deliveries(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Delivery>> {
        let now = to_ms(now);
        self.read(move |conn, _| {
            deliveries_where(
                conn,
                "WHERE o.status = 'pending' AND o.next_attempt_at <= ?1
                 ORDER BY o.next_attempt_at, o.id LIMIT ?2",
                &[&now, &i64::from(limit.clamp(1, MAX_PAGE))],
            )
        })
        .await
    }

    async fn next_delivery_due(&self) -> Result<Option<OffsetDateTime>> {
        self.read(|conn, _| {
            let at: Option<i64> = conn
                .query_row(
                    "SELECT min(next_attempt_at) FROM alert_outbox WHERE status = 'pending'",
                    [],
                    |r| r.get(0),
                )
                .map_err(db)?;
            at.map(crate::millis::from_ms).transpose()
        })
        .await
    }

    async fn record_attempt(&self, id: u64, outcome: AttemptOutcome) -> Result<()> {
        self.write(move |tx, _| {
            let id = sql_id(id);
            match outcome {
                AttemptOutcome::Delivered(at) => tx.execute(
                    "UPDATE alert_outbox SET status = 'delivered', attempts = attempts + 1,
                         delivered_at = ?2, last_error = NULL
                     WHERE id = ?1 AND status = 'pending'",
                    params![id, to_ms(at)],
                ),
                AttemptOutcome::RetryAt(at, error) => tx.execute(
                    "UPDATE alert_outbox SET attempts = attempts + 1, next_attempt_at = ?2,
                         last_error = ?3
                     WHERE id = ?1 AND status = 'pending'",
                    params![id, to_ms(at), short_error(&error)],
                ),
                AttemptOutcome::Dead(error) => tx.execute(
                    "UPDATE alert_outbox SET status = 'dead', attempts = attempts + 1,
                         last_error = ?2
                     WHERE id = ?1 AND status = 'pending'",
                    params![id, short_error(&error)],
                ),
            }
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn dead_deliveries(&self, limit: u32) -> Result<Vec<Delivery>> {
        self.read(move |conn, _| {
            deliveries_where(
                conn,
                "WHERE o.status = 'dead' ORDER BY o.id DESC LIMIT ?1",
                &[&i64::from(limit.clamp(1, MAX_PAGE))],
            )
        })
        .await
    }

    async fn retry_delivery(&self, id: u64, actor: &Actor) -> Result<Delivery> {
        let actor = actor.clone();
        self.write_audited(move |tx, key| {
            let (_, now) = now_ms();
            let changed = tx
                .execute(
                    "UPDATE alert_outbox SET status = 'pending', attempts = 0, next_attempt_at = ?2
                     WHERE id = ?1 AND status = 'dead'",
                    params![sql_id(id), now],
                )
                .map_err(db)?;
            if changed == 0 {
                return Err(StoreError::DeliveryNotDead(id));
            }
            let d = one(deliveries_where(tx, "WHERE o.id = ?1", &[&sql_id(id)])?)
                .ok_or(StoreError::DeliveryNotDead(id))?;
            let rec = audit::append(tx, key, &delivery_retried(&d, &actor))?;
            Ok((d, rec))
        })
        .await
    }
}

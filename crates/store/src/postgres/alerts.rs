//! Alert channels, rules, alerts and the delivery outbox.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::ledger::{self, Ledger};
use super::{PostgresStore, audit, changes, db, get};
use crate::alerts::{
    ALERT_COLUMNS, AlertRow, CHANNEL_COLUMNS, ChannelRow, DELIVERY_COLUMNS, DeliveryRow, MAX_PAGE,
    RULE_COLUMNS, RuleRow, alert_acked, channel_added, channel_removed, check_name,
    delivery_retried, rule_added, rule_removed, short_error,
};
use crate::millis::{from_ms, now_ms, to_ms};
use crate::{
    Actor, Alert, AlertChannel, AlertQuery, AlertRule, AlertState, AlertStore, AttemptOutcome,
    AuditRecord, ChangeKind, ChannelSecrets, Delivery, NewAlertChannel, NewAlertRule, Result,
    StoreError,
};

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

fn channel_row(r: &Row) -> Result<AlertChannel> {
    ChannelRow {
        id: get(r, 0)?,
        name: get(r, 1)?,
        kind: get(r, 2)?,
        target: get(r, 3)?,
        signed: get(r, 4)?,
        allow_private: get(r, 5)?,
        per_minute: get(r, 6)?,
        created_at: get(r, 7)?,
        created_by: get(r, 8)?,
    }
    .into_channel()
}

fn rule_row(r: &Row) -> Result<AlertRule> {
    RuleRow {
        id: get(r, 0)?,
        name: get(r, 1)?,
        expr: get(r, 2)?,
        scope: get(r, 3)?,
        scope_value: get(r, 4)?,
        channel: get(r, 5)?,
        created_at: get(r, 6)?,
        created_by: get(r, 7)?,
    }
    .into_rule()
}

fn alert_row(r: &Row) -> Result<Alert> {
    AlertRow {
        id: get(r, 0)?,
        rule_id: get(r, 1)?,
        rule: get(r, 2)?,
        expr: get(r, 3)?,
        subject: get(r, 4)?,
        state: get(r, 5)?,
        fired_at: get(r, 6)?,
        fired_value: get(r, 7)?,
        resolved_at: get(r, 8)?,
        resolved_value: get(r, 9)?,
        acked_at: get(r, 10)?,
        acked_by: get(r, 11)?,
    }
    .into_alert()
}

fn delivery_row(r: &Row) -> Result<Delivery> {
    DeliveryRow {
        id: get(r, 0)?,
        alert_id: get(r, 1)?,
        channel_id: get(r, 2)?,
        change: get(r, 3)?,
        at: get(r, 4)?,
        value: get(r, 5)?,
        rule: get(r, 6)?,
        expr: get(r, 7)?,
        subject: get(r, 8)?,
        status: get(r, 9)?,
        attempts: get(r, 10)?,
        next_attempt_at: get(r, 11)?,
        last_error: get(r, 12)?,
    }
    .into_delivery()
}

async fn rows<T>(
    c: &impl GenericClient,
    sql: &str,
    p: Params<'_>,
    f: fn(&Row) -> Result<T>,
) -> Result<Vec<T>> {
    let stmt = c.prepare_cached(sql).await.map_err(db)?;
    c.query(&stmt, p).await.map_err(db)?.iter().map(f).collect()
}

async fn channels_where(
    c: &impl GenericClient,
    clause: &str,
    p: Params<'_>,
) -> Result<Vec<AlertChannel>> {
    let sql = format!("SELECT {CHANNEL_COLUMNS} FROM alert_channels {clause} ORDER BY name");
    rows(c, &sql, p, channel_row).await
}

async fn rules_where(
    c: &impl GenericClient,
    clause: &str,
    p: Params<'_>,
) -> Result<Vec<AlertRule>> {
    let sql = format!(
        "SELECT {RULE_COLUMNS} FROM alert_rules r JOIN alert_channels c ON c.id = r.channel_id
         {clause} ORDER BY r.id"
    );
    rows(c, &sql, p, rule_row).await
}

async fn alerts_where(c: &impl GenericClient, clause: &str, p: Params<'_>) -> Result<Vec<Alert>> {
    let sql = format!("SELECT {ALERT_COLUMNS} FROM alerts {clause}");
    rows(c, &sql, p, alert_row).await
}

async fn deliveries_where(
    c: &impl GenericClient,
    clause: &str,
    p: Params<'_>,
) -> Result<Vec<Delivery>> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM alert_outbox o JOIN alerts a ON a.id = o.alert_id {clause}"
    );
    rows(c, &sql, p, delivery_row).await
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

async fn enqueue(
    c: &impl GenericClient,
    alert_id: i64,
    channel_id: i64,
    firing: bool,
    at: i64,
    value: Option<f64>,
) -> Result<()> {
    let change = if firing { "firing" } else { "resolved" };
    c.execute(
        "INSERT INTO alert_outbox (alert_id, channel_id, change, at, value, status, next_attempt_at)
         VALUES ($1, $2, $3, $4, $5, 'pending', $4)
         ON CONFLICT (alert_id, channel_id, change) DO NOTHING",
        &[&alert_id, &channel_id, &change, &at, &value],
    )
    .await
    .map_err(db)?;
    Ok(())
}

async fn insert_channel(
    ledger: &Ledger<'_, '_>,
    key: &crate::AuditKey,
    c: &NewAlertChannel,
    actor: &Actor,
) -> Result<(AlertChannel, AuditRecord)> {
    let tx = ledger.tx();
    if one(channels_where(tx, "WHERE name = $1", &[&c.name]).await?).is_some() {
        return Err(StoreError::AlertChannelExists(c.name.clone()));
    }
    let (_, now) = now_ms();
    tx.execute(
        "INSERT INTO alert_channels (name, kind, target, url_sealed, secret_sealed,
             allow_private, per_minute, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &c.name,
            &c.kind,
            &c.target,
            &c.url_sealed,
            &c.secret_sealed,
            &c.allow_private,
            &i64::from(c.per_minute.max(1)),
            &now,
            &actor.name,
        ],
    )
    .await
    .map_err(db)?;
    changes::append(ledger, ChangeKind::AlertConfigChanged, &c.name, now).await?;
    let rec = audit::append(ledger, key, &channel_added(c, actor)).await?;
    let added = one(channels_where(tx, "WHERE name = $1", &[&c.name]).await?)
        .ok_or_else(|| StoreError::AlertChannelNotFound(c.name.clone()))?;
    Ok((added, rec))
}

async fn delete_channel(
    ledger: &Ledger<'_, '_>,
    key: &crate::AuditKey,
    name: &str,
    actor: &Actor,
) -> Result<(AlertChannel, AuditRecord)> {
    let tx = ledger.tx();
    let channel = one(channels_where(tx, "WHERE name = $1", &[&name]).await?)
        .ok_or_else(|| StoreError::AlertChannelNotFound(name.to_owned()))?;
    let id = sql_id(channel.id);
    let users: Vec<String> = tx
        .query(
            "SELECT name FROM alert_rules WHERE channel_id = $1 ORDER BY name",
            &[&id],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| get(r, 0))
        .collect::<Result<_>>()?;
    if !users.is_empty() {
        return Err(StoreError::AlertChannelInUse {
            channel: name.to_owned(),
            rules: users,
        });
    }
    let dead = tx
        .execute(
            "UPDATE alert_outbox SET status = 'dead', last_error = 'channel removed'
             WHERE channel_id = $1 AND status = 'pending'",
            &[&id],
        )
        .await
        .map_err(db)?;
    tx.execute("DELETE FROM alert_channels WHERE id = $1", &[&id])
        .await
        .map_err(db)?;
    let (_, now) = now_ms();
    changes::append(ledger, ChangeKind::AlertConfigChanged, name, now).await?;
    let rec = audit::append(ledger, key, &channel_removed(&channel, dead, actor)).await?;
    Ok((channel, rec))
}

async fn insert_rule(
    ledger: &Ledger<'_, '_>,
    key: &crate::AuditKey,
    r: &NewAlertRule,
    actor: &Actor,
) -> Result<(AlertRule, AuditRecord)> {
    let tx = ledger.tx();
    if one(rules_where(tx, "WHERE r.name = $1", &[&r.name]).await?).is_some() {
        return Err(StoreError::AlertRuleExists(r.name.clone()));
    }
    let channel = one(channels_where(tx, "WHERE name = $1", &[&r.channel]).await?)
        .ok_or_else(|| StoreError::AlertChannelNotFound(r.channel.clone()))?;
    let (scope, scope_value) = r.scope.columns();
    let (_, now) = now_ms();
    tx.execute(
        "INSERT INTO alert_rules (name, expr, scope, scope_value, channel_id, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &r.name,
            &r.expr,
            &scope,
            &scope_value,
            &sql_id(channel.id),
            &now,
            &actor.name,
        ],
    )
    .await
    .map_err(db)?;
    let added = one(rules_where(tx, "WHERE r.name = $1", &[&r.name]).await?)
        .ok_or_else(|| StoreError::AlertRuleNotFound(r.name.clone()))?;
    changes::append(ledger, ChangeKind::AlertConfigChanged, &r.name, now).await?;
    let rec = audit::append(ledger, key, &rule_added(&added, actor)).await?;
    Ok((added, rec))
}

async fn delete_rule(
    ledger: &Ledger<'_, '_>,
    key: &crate::AuditKey,
    name: &str,
    actor: &Actor,
) -> Result<(AlertRule, AuditRecord)> {
    let tx = ledger.tx();
    let rule = one(rules_where(tx, "WHERE r.name = $1", &[&name]).await?)
        .ok_or_else(|| StoreError::AlertRuleNotFound(name.to_owned()))?;
    let (_, now) = now_ms();
    let closed = tx
        .execute(
            "UPDATE alerts SET state = 'closed', resolved_at = $2
             WHERE rule_id = $1 AND state = 'firing'",
            &[&sql_id(rule.id), &now],
        )
        .await
        .map_err(db)?;
    tx.execute("DELETE FROM alert_rules WHERE id = $1", &[&sql_id(rule.id)])
        .await
        .map_err(db)?;
    changes::append(ledger, ChangeKind::AlertConfigChanged, name, now).await?;
    let rec = audit::append(ledger, key, &rule_removed(&rule, closed, actor)).await?;
    Ok((rule, rec))
}

#[async_trait]
impl AlertStore for PostgresStore {
    async fn add_alert_channel(&self, c: NewAlertChannel, actor: &Actor) -> Result<AlertChannel> {
        check_name(&c.name)?;
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let out = insert_channel(&ledger, &self.inner.audit_key, &c, actor).await?;
            tx.commit().await.map_err(db)?;
            Ok(out)
        })
        .await
    }

    async fn alert_channels(&self) -> Result<Vec<AlertChannel>> {
        self.retrying(|| async {
            let client = self.client().await?;
            channels_where(&client, "", &[]).await
        })
        .await
    }

    async fn alert_channel_secrets(&self, id: u64) -> Result<Option<ChannelSecrets>> {
        self.retrying(|| async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    "SELECT url_sealed, secret_sealed FROM alert_channels WHERE id = $1",
                    &[&sql_id(id)],
                )
                .await
                .map_err(db)?;
            row.map(|r| {
                Ok(ChannelSecrets {
                    url_sealed: get(&r, 0)?,
                    secret_sealed: get(&r, 1)?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn remove_alert_channel(&self, name: &str, actor: &Actor) -> Result<AlertChannel> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let out = delete_channel(&ledger, &self.inner.audit_key, name, actor).await?;
            tx.commit().await.map_err(db)?;
            Ok(out)
        })
        .await
    }

    async fn add_alert_rule(&self, r: NewAlertRule, actor: &Actor) -> Result<AlertRule> {
        check_name(&r.name)?;
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let out = insert_rule(&ledger, &self.inner.audit_key, &r, actor).await?;
            tx.commit().await.map_err(db)?;
            Ok(out)
        })
        .await
    }

    async fn alert_rules(&self) -> Result<Vec<AlertRule>> {
        self.retrying(|| async {
            let client = self.client().await?;
            rules_where(&client, "", &[]).await
        })
        .await
    }

    async fn remove_alert_rule(&self, name: &str, actor: &Actor) -> Result<AlertRule> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let out = delete_rule(&ledger, &self.inner.audit_key, name, actor).await?;
            tx.commit().await.map_err(db)?;
            Ok(out)
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
        let at = to_ms(at);
        self.retrying(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let Some(rule) = tx
                .query_opt(
                    "SELECT name, expr, channel_id FROM alert_rules WHERE id = $1",
                    &[&sql_id(rule_id)],
                )
                .await
                .map_err(db)?
            else {
                return Ok(None);
            };
            let (name, expr, channel_id): (String, String, i64) =
                (get(&rule, 0)?, get(&rule, 1)?, get(&rule, 2)?);
            let inserted = tx
                .query_opt(
                    "INSERT INTO alerts (rule_id, rule_name, expr, subject, state, fired_at, fired_value)
                     VALUES ($1, $2, $3, $4, 'firing', $5, $6)
                     ON CONFLICT (rule_id, subject) WHERE state = 'firing' DO NOTHING
                     RETURNING id",
                    &[&sql_id(rule_id), &name, &expr, &subject, &at, &value],
                )
                .await
                .map_err(db)?;
            let Some(row) = inserted else {
                return Ok(None);
            };
            let id: i64 = get(&row, 0)?;
            enqueue(&tx, id, channel_id, true, at, value).await?;
            let alert = one(alerts_where(&tx, "WHERE id = $1", &[&id]).await?);
            tx.commit().await.map_err(db)?;
            Ok(alert)
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
        let at = to_ms(at);
        self.retrying(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let Some(row) = tx
                .query_opt(
                    "UPDATE alerts a SET state = 'resolved', resolved_at = $3, resolved_value = $4
                     FROM alert_rules r
                     WHERE r.id = a.rule_id AND a.rule_id = $1 AND a.subject = $2
                       AND a.state = 'firing'
                     RETURNING a.id, r.channel_id",
                    &[&sql_id(rule_id), &subject, &at, &value],
                )
                .await
                .map_err(db)?
            else {
                return Ok(None);
            };
            let (id, channel_id): (i64, i64) = (get(&row, 0)?, get(&row, 1)?);
            enqueue(&tx, id, channel_id, false, at, value).await?;
            let alert = one(alerts_where(&tx, "WHERE id = $1", &[&id]).await?);
            tx.commit().await.map_err(db)?;
            Ok(alert)
        })
        .await
    }

    async fn firing_alerts(&self) -> Result<Vec<Alert>> {
        self.retrying(|| async {
            let client = self.client().await?;
            alerts_where(&client, "WHERE state = 'firing' ORDER BY id", &[]).await
        })
        .await
    }

    async fn alerts(&self, q: &AlertQuery) -> Result<Vec<Alert>> {
        let state = q.state.map(AlertState::as_str);
        let before = q.before.map(sql_id).unwrap_or(i64::MAX);
        let limit = i64::from(q.limit.clamp(1, MAX_PAGE));
        self.retrying(|| async {
            let client = self.client().await?;
            alerts_where(
                &client,
                "WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR subject = $2)
                   AND id < $3 ORDER BY id DESC LIMIT $4",
                &[&state, &q.subject, &before, &limit],
            )
            .await
        })
        .await
    }

    async fn alert(&self, id: u64) -> Result<Option<Alert>> {
        self.retrying(|| async {
            let client = self.client().await?;
            Ok(one(
                alerts_where(&client, "WHERE id = $1", &[&sql_id(id)]).await?
            ))
        })
        .await
    }

    async fn acknowledge_alert(&self, id: u64, actor: &Actor) -> Result<Alert> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let (_, now) = now_ms();
            tx.execute(
                "UPDATE alerts SET acked_at = $2, acked_by = $3 WHERE id = $1 AND acked_at IS NULL",
                &[&sql_id(id), &now, &actor.name],
            )
            .await
            .map_err(db)?;
            let alert = one(alerts_where(&tx, "WHERE id = $1", &[&sql_id(id)]).await?)
                .ok_or(StoreError::AlertNotFound(id))?;
            let rec =
                audit::append(&ledger, &self.inner.audit_key, &alert_acked(&alert, actor)).await?;
            tx.commit().await.map_err(db)?;
            Ok((alert, rec))
        })
        .await
    }

    async fn due_deliveries(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Delivery>> {
        let now = to_ms(now);
        let limit = i64::from(limit.clamp(1, MAX_PAGE));
        self.retrying(|| async {
            let client = self.client().await?;
            deliveries_where(
                &client,
                "WHERE o.status = 'pending' AND o.next_attempt_at <= $1
                 ORDER BY o.next_attempt_at, o.id LIMIT $2",
                &[&now, &limit],
            )
            .await
        })
        .await
    }

    async fn next_delivery_due(&self) -> Result<Option<OffsetDateTime>> {
        self.retrying(|| async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "SELECT min(next_attempt_at) FROM alert_outbox WHERE status = 'pending'",
                    &[],
                )
                .await
                .map_err(db)?;
            let at: Option<i64> = get(&row, 0)?;
            at.map(from_ms).transpose()
        })
        .await
    }

    async fn record_attempt(&self, id: u64, outcome: AttemptOutcome) -> Result<()> {
        let id = sql_id(id);
        self.retrying(|| async {
            let client = self.client().await?;
            match &outcome {
                AttemptOutcome::Delivered(at) => {
                    client
                        .execute(
                            "UPDATE alert_outbox SET status = 'delivered', attempts = attempts + 1,
                                 delivered_at = $2, last_error = NULL
                             WHERE id = $1 AND status = 'pending'",
                            &[&id, &to_ms(*at)],
                        )
                        .await
                }
                AttemptOutcome::RetryAt(at, error) => {
                    client
                        .execute(
                            "UPDATE alert_outbox SET attempts = attempts + 1, next_attempt_at = $2,
                                 last_error = $3
                             WHERE id = $1 AND status = 'pending'",
                            &[&id, &to_ms(*at), &short_error(error)],
                        )
                        .await
                }
                AttemptOutcome::Dead(error) => {
                    client
                        .execute(
                            "UPDATE alert_outbox SET status = 'dead', attempts = attempts + 1,
                                 last_error = $2
                             WHERE id = $1 AND status = 'pending'",
                            &[&id, &short_error(error)],
                        )
                        .await
                }
            }
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn dead_deliveries(&self, limit: u32) -> Result<Vec<Delivery>> {
        let limit = i64::from(limit.clamp(1, MAX_PAGE));
        self.retrying(|| async {
            let client = self.client().await?;
            deliveries_where(
                &client,
                "WHERE o.status = 'dead' ORDER BY o.id DESC LIMIT $1",
                &[&limit],
            )
            .await
        })
        .await
    }

    async fn retry_delivery(&self, id: u64, actor: &Actor) -> Result<Delivery> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let (_, now) = now_ms();
            let changed = tx
                .execute(
                    "UPDATE alert_outbox SET status = 'pending', attempts = 0, next_attempt_at = $2
                     WHERE id = $1 AND status = 'dead'",
                    &[&sql_id(id), &now],
                )
                .await
                .map_err(db)?;
            if changed == 0 {
                return Err(StoreError::DeliveryNotDead(id));
            }
            let d = one(deliveries_where(&tx, "WHERE o.id = $1", &[&sql_id(id)]).await?)
                .ok_or(StoreError::DeliveryNotDead(id))?;
            let rec =
                audit::append(&ledger, &self.inner.audit_key, &delivery_retried(&d, actor)).await?;
            tx.commit().await.map_err(db)?;
            Ok((d, rec))
        })
        .await
    }
}

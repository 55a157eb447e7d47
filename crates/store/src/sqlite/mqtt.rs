//! Durable broker state in SQLite.

use rusqlite::{Connection, Transaction, params};

use super::db;
use crate::records::{
    parse_subscription_ids, parse_subscriptions, subscription_ids_json, subscriptions_json,
};
use crate::{MqttOp, MqttSnapshot, Result, StoredMessage, StoredSession};

/// Applies `ops` in order inside `tx`.
pub(super) fn apply(tx: &Transaction<'_>, ops: &[MqttOp]) -> Result<()> {
    for op in ops {
        match op {
            MqttOp::SaveSession {
                client,
                expiry_secs,
                subscriptions,
            } => {
                let subs = subscriptions_json(subscriptions)?;
                tx.prepare_cached(
                    "INSERT INTO mqtt_sessions (client_id, expiry_secs, disconnected_at, subscriptions)
                     VALUES (?1, ?2, NULL, ?3)
                     ON CONFLICT (client_id) DO UPDATE SET
                       expiry_secs = excluded.expiry_secs, disconnected_at = NULL,
                       subscriptions = excluded.subscriptions",
                )
                .and_then(|mut s| s.execute(params![client, expiry_secs, subs]))
                .map_err(db)?;
            }
            MqttOp::Disconnected { client, at_ms } => {
                tx.prepare_cached(
                    "UPDATE mqtt_sessions SET disconnected_at = ?2 WHERE client_id = ?1",
                )
                .and_then(|mut s| s.execute(params![client, at_ms]))
                .map_err(db)?;
            }
            MqttOp::DeleteSession { client } => {
                tx.prepare_cached("DELETE FROM mqtt_sessions WHERE client_id = ?1")
                    .and_then(|mut s| s.execute(params![client]))
                    .map_err(db)?;
                tx.prepare_cached("DELETE FROM mqtt_queue WHERE client_id = ?1")
                    .and_then(|mut s| s.execute(params![client]))
                    .map_err(db)?;
            }
            MqttOp::Enqueue {
                client,
                id,
                message: m,
            } => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO mqtt_queue
                       (client_id, id, topic, payload, qos, retain, properties, expires_at, subscription_ids)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        client,
                        *id as i64,
                        m.topic,
                        m.payload,
                        m.qos,
                        m.retain,
                        m.properties,
                        m.expires_at_ms,
                        subscription_ids_json(&m.subscription_ids)
                    ])
                })
                .map_err(db)?;
            }
            MqttOp::Ack { client, id } => {
                tx.prepare_cached("DELETE FROM mqtt_queue WHERE client_id = ?1 AND id = ?2")
                    .and_then(|mut s| s.execute(params![client, *id as i64]))
                    .map_err(db)?;
            }
            MqttOp::Retain { message: m } => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO mqtt_retained (topic, payload, qos, properties, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .and_then(|mut s| s.execute(params![m.topic, m.payload, m.qos, m.properties, m.expires_at_ms]))
                .map_err(db)?;
            }
            MqttOp::ClearRetained { topic } => {
                tx.prepare_cached("DELETE FROM mqtt_retained WHERE topic = ?1")
                    .and_then(|mut s| s.execute(params![topic]))
                    .map_err(db)?;
            }
        }
    }
    Ok(())
}

/// Reads every session with its queue, and the retained messages.
pub(super) fn load(conn: &Connection) -> Result<MqttSnapshot> {
    let mut sessions = Vec::new();
    let mut stmt = conn
        .prepare("SELECT client_id, expiry_secs, disconnected_at, subscriptions FROM mqtt_sessions ORDER BY client_id")
        .map_err(db)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, String>(3)?,
            ))
        })
        .map_err(db)?;
    let mut queue_stmt = conn
        .prepare(
            "SELECT id, topic, payload, qos, retain, properties, expires_at, subscription_ids
             FROM mqtt_queue WHERE client_id = ?1 ORDER BY id",
        )
        .map_err(db)?;
    for row in rows {
        let (client, expiry_secs, disconnected_at_ms, subs) = row.map_err(db)?;
        let subscriptions = parse_subscriptions(&client, &subs)?;
        let queue = queue_stmt
            .query_map(params![client], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    StoredMessage {
                        topic: r.get(1)?,
                        payload: r.get(2)?,
                        qos: r.get(3)?,
                        retain: r.get(4)?,
                        properties: r.get(5)?,
                        expires_at_ms: r.get(6)?,
                        subscription_ids: parse_subscription_ids(&r.get::<_, String>(7)?),
                    },
                ))
            })
            .map_err(db)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db)?;
        sessions.push(StoredSession {
            client,
            expiry_secs,
            disconnected_at_ms,
            subscriptions,
            queue,
        });
    }
    let mut stmt = conn
        .prepare(
            "SELECT topic, payload, qos, properties, expires_at FROM mqtt_retained ORDER BY topic",
        )
        .map_err(db)?;
    let retained = stmt
        .query_map([], |r| {
            Ok(StoredMessage {
                topic: r.get(0)?,
                payload: r.get(1)?,
                qos: r.get(2)?,
                retain: true,
                properties: r.get(3)?,
                expires_at_ms: r.get(4)?,
                subscription_ids: Vec::new(),
            })
        })
        .map_err(db)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db)?;
    Ok(MqttSnapshot { sessions, retained })
}

//! Durable broker state in PostgreSQL.

use std::collections::HashMap;

use deadpool_postgres::{Client, GenericClient, Transaction};
use tokio_postgres::IsolationLevel;

use super::{db, get};
use crate::records::{
    parse_subscription_ids, parse_subscriptions, subscription_ids_json, subscriptions_json,
};
use crate::{MqttOp, MqttSnapshot, Result, StoreError, StoredMessage, StoredSession};

/// A stored id or expiry that does not fit the broker's types was not
/// written by Rampart.
fn corrupt(what: &str, value: i64) -> StoreError {
    StoreError::Corrupt(format!("mqtt state: {what} {value} is out of range"))
}

/// Applies `ops` in order inside `tx`.
pub(super) async fn apply(tx: &Transaction<'_>, ops: &[MqttOp]) -> Result<()> {
    for op in ops {
        match op {
            MqttOp::SaveSession {
                client,
                expiry_secs,
                subscriptions,
            } => {
                let subs = subscriptions_json(subscriptions)?;
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO mqtt_sessions (client_id, expiry_secs, disconnected_at, subscriptions)
                         VALUES ($1, $2, NULL, $3)
                         ON CONFLICT (client_id) DO UPDATE SET
                           expiry_secs = excluded.expiry_secs, disconnected_at = NULL,
                           subscriptions = excluded.subscriptions",
                    )
                    .await
                    .map_err(db)?;
                tx.execute(&stmt, &[client, &i64::from(*expiry_secs), &subs])
                    .await
                    .map_err(db)?;
            }
            MqttOp::Disconnected { client, at_ms } => {
                let stmt = tx
                    .prepare_cached(
                        "UPDATE mqtt_sessions SET disconnected_at = $2 WHERE client_id = $1",
                    )
                    .await
                    .map_err(db)?;
                tx.execute(&stmt, &[client, at_ms]).await.map_err(db)?;
            }
            MqttOp::DeleteSession { client } => {
                let stmt = tx
                    .prepare_cached("DELETE FROM mqtt_sessions WHERE client_id = $1")
                    .await
                    .map_err(db)?;
                tx.execute(&stmt, &[client]).await.map_err(db)?;
                let stmt = tx
                    .prepare_cached("DELETE FROM mqtt_queue WHERE client_id = $1")
                    .await
                    .map_err(db)?;
                tx.execute(&stmt, &[client]).await.map_err(db)?;
            }
            MqttOp::Enqueue {
                client,
                id,
                message: m,
            } => {
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO mqtt_queue
                           (client_id, id, topic, payload, qos, retain, properties, expires_at, subscription_ids)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                         ON CONFLICT (client_id, id) DO UPDATE SET
                           topic = excluded.topic, payload = excluded.payload, qos = excluded.qos,
                           retain = excluded.retain, properties = excluded.properties,
                           expires_at = excluded.expires_at,
                           subscription_ids = excluded.subscription_ids",
                    )
                    .await
                    .map_err(db)?;
                tx.execute(
                    &stmt,
                    &[
                        client,
                        &(*id as i64),
                        &m.topic,
                        &m.payload,
                        &i16::from(m.qos),
                        &m.retain,
                        &m.properties,
                        &m.expires_at_ms,
                        &subscription_ids_json(&m.subscription_ids),
                    ],
                )
                .await
                .map_err(db)?;
            }
            MqttOp::Ack { client, id } => {
                let stmt = tx
                    .prepare_cached("DELETE FROM mqtt_queue WHERE client_id = $1 AND id = $2")
                    .await
                    .map_err(db)?;
                tx.execute(&stmt, &[client, &(*id as i64)])
                    .await
                    .map_err(db)?;
            }
            MqttOp::Retain { message: m } => {
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO mqtt_retained (topic, payload, qos, properties, expires_at)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (topic) DO UPDATE SET
                           payload = excluded.payload, qos = excluded.qos,
                           properties = excluded.properties, expires_at = excluded.expires_at",
                    )
                    .await
                    .map_err(db)?;
                tx.execute(
                    &stmt,
                    &[
                        &m.topic,
                        &m.payload,
                        &i16::from(m.qos),
                        &m.properties,
                        &m.expires_at_ms,
                    ],
                )
                .await
                .map_err(db)?;
            }
            MqttOp::ClearRetained { topic } => {
                let stmt = tx
                    .prepare_cached("DELETE FROM mqtt_retained WHERE topic = $1")
                    .await
                    .map_err(db)?;
                tx.execute(&stmt, &[topic]).await.map_err(db)?;
            }
        }
    }
    Ok(())
}

fn qos(value: i16) -> Result<u8> {
    u8::try_from(value).map_err(|_| corrupt("qos", i64::from(value)))
}

/// Reads every session with its queue, and the retained messages, from
/// one snapshot.
pub(super) async fn load(client: &mut Client) -> Result<MqttSnapshot> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(db)?;
    let mut queues: HashMap<String, Vec<(u64, StoredMessage)>> = HashMap::new();
    for r in tx
        .query(
            "SELECT client_id, id, topic, payload, qos, retain, properties, expires_at, subscription_ids
             FROM mqtt_queue ORDER BY client_id, id",
            &[],
        )
        .await
        .map_err(db)?
    {
        let id: i64 = get(&r, 1)?;
        let message = StoredMessage {
            topic: get(&r, 2)?,
            payload: get(&r, 3)?,
            qos: qos(get(&r, 4)?)?,
            retain: get(&r, 5)?,
            properties: get(&r, 6)?,
            expires_at_ms: get(&r, 7)?,
            subscription_ids: parse_subscription_ids(&get::<String>(&r, 8)?),
        };
        queues
            .entry(get(&r, 0)?)
            .or_default()
            .push((u64::try_from(id).map_err(|_| corrupt("delivery id", id))?, message));
    }
    let mut sessions = Vec::new();
    for r in tx
        .query(
            "SELECT client_id, expiry_secs, disconnected_at, subscriptions
             FROM mqtt_sessions ORDER BY client_id",
            &[],
        )
        .await
        .map_err(db)?
    {
        let client: String = get(&r, 0)?;
        let expiry: i64 = get(&r, 1)?;
        sessions.push(StoredSession {
            expiry_secs: u32::try_from(expiry).map_err(|_| corrupt("session expiry", expiry))?,
            disconnected_at_ms: get(&r, 2)?,
            subscriptions: parse_subscriptions(&client, &get::<String>(&r, 3)?)?,
            queue: queues.remove(&client).unwrap_or_default(),
            client,
        });
    }
    let retained = tx
        .query(
            "SELECT topic, payload, qos, properties, expires_at FROM mqtt_retained ORDER BY topic",
            &[],
        )
        .await
        .map_err(db)?
        .iter()
        .map(|r| {
            Ok(StoredMessage {
                topic: get(r, 0)?,
                payload: get(r, 1)?,
                qos: qos(get(r, 2)?)?,
                retain: true,
                properties: get(r, 3)?,
                expires_at_ms: get(r, 4)?,
                subscription_ids: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    tx.commit().await.map_err(db)?;
    Ok(MqttSnapshot { sessions, retained })
}

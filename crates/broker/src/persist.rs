//! Durable broker state with group commit.
//!
//! Every change that an acknowledgement depends on (a QoS ≥ 1 delivery
//! queued for a persistent session, a subscription, a retained message) is
//! submitted here, in order, and the acknowledgement waits for its batch to
//! commit. One task drains whatever has accumulated into one transaction,
//! so a burst of publishes costs one fsync, not one each.
//!
//! A copy queued for a persistent session that is online is usually sent
//! and acknowledged by the subscriber before its batch is written. Such a
//! pair (its `Enqueue` and its `Ack` in the same batch) is dropped from the
//! batch: the message has reached its subscriber, which is what the
//! durable copy was for, so the publisher's acknowledgement need not wait
//! for a write, and a batch with nothing left commits nothing (no fsync).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rampart_store::{MqttOp, Store};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;

/// Largest number of operations committed in one transaction.
const MAX_BATCH_OPS: usize = 8192;

struct Job {
    ops: Vec<MqttOp>,
    done: Option<oneshot::Sender<bool>>,
}

/// Handle to the persistence task.
#[derive(Clone)]
pub(crate) struct Persister {
    tx: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for Persister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Persister")
    }
}

/// Completion of a submitted batch: `true` once durable.
pub(crate) type Durable = oneshot::Receiver<bool>;

/// How long deletions of acknowledged copies, which nobody waits for, may
/// wait to be written with the next batch (losing them in a crash only
/// means a redelivery, which QoS 1 allows).
const ACK_WRITE_DELAY: Duration = Duration::from_millis(100);

impl Persister {
    /// Starts the task writing to `store`. A batch holding queued copies
    /// waits `grace` (`broker.delivery_grace`) for their subscribers'
    /// acknowledgements before it is written.
    pub(crate) fn start(store: Arc<dyn Store>, metrics: Arc<Metrics>, grace: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(run(store, rx, metrics, grace));
        Self { tx }
    }

    /// Queues `ops`; the returned receiver resolves once they are durable.
    /// Order of submission is order of application.
    pub(crate) fn submit(&self, ops: Vec<MqttOp>) -> Option<Durable> {
        if ops.is_empty() {
            return None;
        }
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Job {
            ops,
            done: Some(done),
        });
        Some(rx)
    }

    /// Queues `ops` without waiting (acknowledged deliveries: losing one
    /// only means a redelivery, which QoS 1 allows).
    pub(crate) fn submit_later(&self, ops: Vec<MqttOp>) {
        if !ops.is_empty() {
            let _ = self.tx.send(Job { ops, done: None });
        }
    }

    /// Waits until everything submitted so far is durable.
    pub(crate) async fn flush(&self) -> bool {
        let (done, rx) = oneshot::channel();
        let _ = self.tx.send(Job {
            ops: Vec::new(),
            done: Some(done),
        });
        rx.await.unwrap_or(false)
    }
}

/// One batch on its way to the store.
#[derive(Default)]
struct Batch {
    ops: Vec<MqttOp>,
    waiters: Vec<oneshot::Sender<bool>>,
}

impl Batch {
    fn add(&mut self, job: Job) {
        self.ops.extend(job.ops);
        self.waiters.extend(job.done);
    }

    /// Adds whatever is queued, up to the batch size.
    fn drain(&mut self, rx: &mut mpsc::UnboundedReceiver<Job>) {
        while self.ops.len() < MAX_BATCH_OPS {
            let Ok(job) = rx.try_recv() else { break };
            self.add(job);
        }
    }

    fn queues_copies(&self) -> bool {
        self.ops
            .iter()
            .any(|op| matches!(op, MqttOp::Enqueue { .. }))
    }
}

/// The persistence task: batches, drops copies already delivered, holds
/// back deletions nobody waits for, writes the rest in one transaction.
async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    metrics: Arc<Metrics>,
    grace: Duration,
) {
    // Deletions of acknowledged copies, written with the next batch.
    let mut held: Vec<MqttOp> = Vec::new();
    loop {
        let next = if held.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(ACK_WRITE_DELAY, rx.recv()).await {
                Ok(job) => job,
                Err(_) => {
                    // Quiet: write the deletions on their own.
                    write(&*store, std::mem::take(&mut held), &metrics).await;
                    continue;
                }
            }
        };
        let Some(first) = next else { break };
        let mut batch = Batch::default();
        batch.add(first);
        batch.drain(&mut rx);
        if batch.queues_copies() && !grace.is_zero() {
            // Online subscribers usually acknowledge within this: their
            // copies are then never written.
            tokio::time::sleep(grace).await;
            batch.drain(&mut rx);
        }
        let (mut ops, elided) = elide_delivered(batch.ops);
        Metrics::add(&metrics.persist_elided, elided as u64);
        if batch.waiters.is_empty()
            && ops.iter().all(|op| matches!(op, MqttOp::Ack { .. }))
            && held.len() < MAX_BATCH_OPS
        {
            held.append(&mut ops);
            continue;
        }
        // Held deletions go first; they refer to copies written by
        // earlier batches, so their place among these is free.
        held.append(&mut ops);
        let ok = write(&*store, std::mem::take(&mut held), &metrics).await;
        for w in batch.waiters {
            let _ = w.send(ok);
        }
    }
    write(&*store, held, &metrics).await;
}

/// Writes `ops` in one transaction; `true` once durable (nothing to write
/// is durable at once).
async fn write(store: &dyn Store, ops: Vec<MqttOp>, metrics: &Metrics) -> bool {
    if ops.is_empty() {
        return true;
    }
    Metrics::inc(&metrics.persist_commits);
    Metrics::add(&metrics.persist_ops, ops.len() as u64);
    match store.mqtt_apply(ops).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "cannot persist broker state");
            false
        }
    }
}

/// Drops every queued copy that the same batch also acknowledges, with
/// its acknowledgement; returns what is left, in order, and how many
/// pairs were dropped.
///
/// An `Ack` always follows its `Enqueue` (a delivery becomes visible only
/// after its copy was submitted), so an `Ack` whose `Enqueue` is not in
/// the batch deletes a row an earlier batch wrote, and stays.
fn elide_delivered(ops: Vec<MqttOp>) -> (Vec<MqttOp>, usize) {
    let (keep, pairs) = {
        let acked: HashSet<(&str, u64)> = ops
            .iter()
            .filter_map(|op| match op {
                MqttOp::Ack { client, id } => Some((client.as_str(), *id)),
                _ => None,
            })
            .collect();
        let delivered: HashSet<(&str, u64)> = ops
            .iter()
            .filter_map(|op| match op {
                MqttOp::Enqueue { client, id, .. } => Some((client.as_str(), *id)),
                _ => None,
            })
            .filter(|key| acked.contains(key))
            .collect();
        if delivered.is_empty() {
            return (ops, 0);
        }
        let keep: Vec<bool> = ops
            .iter()
            .map(|op| match op {
                MqttOp::Enqueue { client, id, .. } | MqttOp::Ack { client, id } => {
                    !delivered.contains(&(client.as_str(), *id))
                }
                _ => true,
            })
            .collect();
        (keep, delivered.len())
    };
    let kept = ops
        .into_iter()
        .zip(keep)
        .filter_map(|(op, keep)| keep.then_some(op))
        .collect();
    (kept, pairs)
}

/// Waits for a batch; `None` (nothing to persist) is immediately durable.
pub(crate) async fn durable(d: Option<Durable>) -> bool {
    match d {
        None => true,
        Some(rx) => rx.await.unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_store::StoredMessage;

    fn enqueue(client: &str, id: u64) -> MqttOp {
        MqttOp::Enqueue {
            client: client.into(),
            id,
            message: StoredMessage {
                topic: format!("devices/{client}/telemetry/up"),
                payload: b"{}".to_vec(),
                qos: 1,
                retain: false,
                properties: Vec::new(),
                expires_at_ms: None,
                subscription_ids: Vec::new(),
            },
        }
    }

    fn ack(client: &str, id: u64) -> MqttOp {
        MqttOp::Ack {
            client: client.into(),
            id,
        }
    }

    #[test]
    fn a_copy_acknowledged_in_its_own_batch_is_never_written() {
        let save = MqttOp::Disconnected {
            client: "svc".into(),
            at_ms: 1,
        };
        let ops = vec![
            enqueue("svc", 1),
            enqueue("svc", 2),
            enqueue("other", 1),
            ack("svc", 1),
            save.clone(),
            // Its copy was written by an earlier batch: the delete stays.
            ack("svc", 0),
        ];
        let (kept, pairs) = elide_delivered(ops);
        assert_eq!(pairs, 1);
        assert_eq!(
            kept,
            vec![enqueue("svc", 2), enqueue("other", 1), save, ack("svc", 0)]
        );
    }

    #[test]
    fn a_batch_without_matching_pairs_is_left_alone() {
        let ops = vec![enqueue("a", 1), ack("b", 1), ack("a", 2)];
        assert_eq!(elide_delivered(ops.clone()), (ops, 0));
        let (kept, pairs) = elide_delivered(vec![enqueue("a", 7), ack("a", 7)]);
        assert_eq!((kept, pairs), (Vec::new(), 1));
    }
}

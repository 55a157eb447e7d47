//! Durable broker state with group commit.
//!
//! Every change that an acknowledgement depends on (a QoS ≥ 1 delivery
//! queued for a persistent session, a subscription, a retained message) is
//! submitted here, in order, and the acknowledgement waits for it to
//! commit. One task writes whatever is due in one transaction, so a burst
//! of publishes costs one fsync, not one each.
//!
//! A copy queued for a persistent session that is online is usually sent
//! and acknowledged by the subscriber within a few hundred microseconds.
//! Each copy therefore waits up to `broker.delivery_grace` *from its own
//! submission* before it is written; if its acknowledgement arrives first,
//! the pair (its `Enqueue` and its `Ack`) is dropped: the message has
//! reached its subscriber, which is what the durable copy was for, so the
//! publisher's acknowledgement need not wait for a write, and nothing is
//! written (no fsync). Copies still waiting when an earlier job is written
//! ride along with it, so that the order of application is the order of
//! submission. (Until 2026-11-28 the grace ran from the first job of a
//! batch, and the copies that arrived in its last moments, about one in
//! twenty at 3,000 msg/s, were each written in a transaction of their own.)

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rampart_store::{MqttOp, Store};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::broker::stored;
use crate::metrics::Metrics;
use crate::router::ClientId;
use crate::session::Message;

/// Largest number of operations committed in one transaction.
const MAX_BATCH_OPS: usize = 8192;

/// One change to the broker's durable state, as the task queues it.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// A copy of a message queued for a persistent session. It stays the
    /// routed message until it is written: most copies are acknowledged
    /// within the delivery grace and never are, so nothing is built or
    /// copied for them on the publisher's path.
    Copy(QueuedCopy),
    /// A delivered (or dropped) copy's deletion.
    Ack {
        /// The session it was queued for.
        client: ClientId,
        /// Its delivery id.
        id: u64,
    },
    /// Anything else, as the store takes it.
    State(MqttOp),
}

/// See [`Op::Copy`].
#[derive(Debug, Clone)]
pub(crate) struct QueuedCopy {
    /// The session it is queued for.
    pub client: ClientId,
    /// Its delivery id, unique per broker.
    pub id: u64,
    /// The message.
    pub message: Arc<Message>,
    /// QoS of the delivery.
    pub qos: u8,
    /// RETAIN flag to send.
    pub retain: bool,
    /// Subscription identifiers to send.
    pub subscription_ids: Vec<u32>,
}

impl From<MqttOp> for Op {
    fn from(op: MqttOp) -> Self {
        Op::State(op)
    }
}

impl Op {
    /// The operation as the store applies it.
    fn into_store(self) -> MqttOp {
        match self {
            Op::Copy(c) => MqttOp::Enqueue {
                client: c.client.to_string(),
                id: c.id,
                message: stored(&c.message, c.qos, c.retain, &c.subscription_ids),
            },
            Op::Ack { client, id } => MqttOp::Ack {
                client: client.to_string(),
                id,
            },
            Op::State(op) => op,
        }
    }
}

struct Job {
    ops: Vec<Op>,
    done: Option<oneshot::Sender<bool>>,
    /// When it was submitted.
    at: Instant,
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
    /// Starts the task writing to `store`. A queued copy waits up to
    /// `grace` (`broker.delivery_grace`) for its subscriber's
    /// acknowledgement before it is written.
    pub(crate) fn start(store: Arc<dyn Store>, metrics: Arc<Metrics>, grace: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(run(store, rx, metrics, grace));
        Self { tx }
    }

    fn send<O: Into<Op>>(&self, ops: Vec<O>, done: Option<oneshot::Sender<bool>>) {
        let _ = self.tx.send(Job {
            ops: ops.into_iter().map(Into::into).collect(),
            done,
            at: Instant::now(),
        });
    }

    /// Queues `ops`; the returned receiver resolves once they are durable.
    /// Order of submission is order of application.
    pub(crate) fn submit<O: Into<Op>>(&self, ops: Vec<O>) -> Option<Durable> {
        if ops.is_empty() {
            return None;
        }
        let (done, rx) = oneshot::channel();
        self.send(ops, Some(done));
        Some(rx)
    }

    /// Queues `ops` without waiting (acknowledged deliveries: losing one
    /// only means a redelivery, which QoS 1 allows).
    pub(crate) fn submit_later<O: Into<Op>>(&self, ops: Vec<O>) {
        if !ops.is_empty() {
            self.send(ops, None);
        }
    }

    /// Waits until everything submitted so far is durable.
    pub(crate) async fn flush(&self) -> bool {
        let (done, rx) = oneshot::channel();
        self.send(Vec::<Op>::new(), Some(done));
        rx.await.unwrap_or(false)
    }
}

/// A job waiting to be written, and when it is due.
struct Waiting {
    job: Job,
    /// Written once this has passed (or with a later job that is due).
    due: Instant,
}

/// What the task holds between wake-ups: jobs in submission order, and
/// deletions nobody waits for.
struct Queue {
    grace: Duration,
    waiting: VecDeque<Waiting>,
    /// Deletions nobody waits for, written with the next transaction or
    /// [`ACK_WRITE_DELAY`] after the oldest of them (`held_since`), if no
    /// copy waiting here takes them out first.
    held: Vec<Op>,
    held_since: Option<Instant>,
}

fn is_ack(op: &Op) -> bool {
    matches!(op, Op::Ack { .. })
}

fn is_copy(op: &Op) -> bool {
    matches!(op, Op::Copy(_))
}

impl Queue {
    fn new(grace: Duration) -> Self {
        Self {
            grace,
            waiting: VecDeque::new(),
            held: Vec::new(),
            held_since: None,
        }
    }

    /// Takes in a submitted job: deletions nobody waits for are held,
    /// queued copies wait out the grace, anything else is due at once.
    fn add(&mut self, job: Job) {
        if job.done.is_none() && job.ops.iter().all(is_ack) {
            self.held.extend(job.ops);
            self.held_since.get_or_insert(job.at);
            return;
        }
        let due = if job.ops.iter().any(is_copy) {
            job.at + self.grace
        } else {
            job.at
        };
        self.waiting.push_back(Waiting { job, due });
    }

    /// Drops every waiting copy whose acknowledgement has arrived, with that
    /// acknowledgement, and answers jobs left with nothing to write (they
    /// are durable: delivered). Returns how many pairs were dropped.
    ///
    /// An `Ack` always follows its `Enqueue` (a delivery becomes visible
    /// only after its copy was submitted), so an `Ack` whose `Enqueue` is
    /// not waiting deletes a row written earlier, and stays.
    fn elide_delivered(&mut self) -> usize {
        // Delivery ids are unique per broker; the client is checked too.
        let delivered: HashMap<u64, ClientId> = {
            let copies: HashMap<u64, &str> = self
                .waiting
                .iter()
                .flat_map(|w| &w.job.ops)
                .filter_map(|op| match op {
                    Op::Copy(c) => Some((c.id, &*c.client)),
                    _ => None,
                })
                .collect();
            if copies.is_empty() {
                return 0;
            }
            self.held
                .iter()
                .chain(self.waiting.iter().flat_map(|w| &w.job.ops))
                .filter_map(|op| match op {
                    Op::Ack { client, id } if copies.get(id) == Some(&&**client) => {
                        Some((*id, Arc::clone(client)))
                    }
                    _ => None,
                })
                .collect()
        };
        if delivered.is_empty() {
            return 0;
        }
        let keep = |op: &Op| {
            let (client, id) = match op {
                Op::Copy(c) => (&c.client, &c.id),
                Op::Ack { client, id } => (client, id),
                Op::State(_) => return true,
            };
            delivered.get(id) != Some(client)
        };
        self.held.retain(keep);
        if self.held.is_empty() {
            self.held_since = None;
        }
        let mut answered = Vec::new();
        self.waiting.retain_mut(|w| {
            if w.job.ops.is_empty() {
                // A flush: nothing of its own to elide.
                return true;
            }
            w.job.ops.retain(keep);
            if w.job.ops.is_empty() {
                answered.extend(w.job.done.take());
                return false;
            }
            true
        });
        for done in answered {
            let _ = done.send(true);
        }
        delivered.len()
    }

    /// How many waiting jobs are to be written now: up to the last one
    /// that is due (the ones before it go with it, in order), and with it
    /// those that would fall due within half a grace. Under a stream of
    /// copies that nobody acknowledges (an offline or slow subscriber)
    /// that makes one transaction per half grace, not one per copy.
    fn due(&self, now: Instant) -> usize {
        if !self.waiting.iter().any(|w| w.due <= now) {
            return 0;
        }
        let soon = now + self.grace / 2;
        self.waiting
            .iter()
            .rposition(|w| w.due <= soon)
            .map_or(0, |last| last + 1)
    }

    /// The next moment a waiting job or the held deletions fall due.
    fn next_due(&self) -> Option<Instant> {
        let held = self.held_since.map(|t| t + ACK_WRITE_DELAY);
        self.waiting.iter().map(|w| w.due).chain(held).min()
    }

    /// Whether the held deletions are to be written now.
    fn held_due(&self, now: Instant) -> bool {
        self.held_since.is_some_and(|t| t + ACK_WRITE_DELAY <= now)
    }

    /// Takes the held deletions.
    fn take_held(&mut self) -> Vec<Op> {
        self.held_since = None;
        std::mem::take(&mut self.held)
    }
}

/// The persistence task: takes jobs in, drops copies already delivered,
/// writes what is due in one transaction (held deletions first).
async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    metrics: Arc<Metrics>,
    grace: Duration,
) {
    let mut queue = Queue::new(grace);
    let mut open = true;
    while open || !queue.waiting.is_empty() || !queue.held.is_empty() {
        if open {
            open = take_in(&mut queue, &mut rx).await;
        }
        let elided = queue.elide_delivered();
        Metrics::add(&metrics.persist_elided, elided as u64);
        let now = Instant::now();
        let mut n = if open {
            queue.due(now)
        } else {
            queue.waiting.len()
        };
        let held = !queue.held.is_empty() && (!open || queue.held_due(now));
        if n == 0 && !held {
            continue;
        }
        // Held deletions go first; they refer to copies written by earlier
        // transactions, so their place among these is free.
        let mut ops = queue.take_held();
        let mut waiters = Vec::new();
        while n > 0 && ops.len() < MAX_BATCH_OPS {
            let Some(w) = queue.waiting.pop_front() else {
                break;
            };
            n -= 1;
            ops.extend(w.job.ops);
            waiters.extend(w.job.done);
        }
        let ok = write(&*store, ops, &metrics).await;
        for w in waiters {
            let _ = w.send(ok);
        }
    }
}

/// Waits until the first waiting job (or the held deletions) is due, or,
/// when only deletions wait or nothing does, for the next job; then takes
/// in everything submitted by then. `false` once every handle is gone.
async fn take_in(queue: &mut Queue, rx: &mut mpsc::UnboundedReceiver<Job>) -> bool {
    match queue.next_due() {
        None => match rx.recv().await {
            Some(job) => queue.add(job),
            None => return false,
        },
        Some(due) if queue.waiting.is_empty() => {
            match tokio::time::timeout_at(due, rx.recv()).await {
                Ok(Some(job)) => queue.add(job),
                Ok(None) => return false,
                Err(_) => {}
            }
        }
        // Jobs that arrive meanwhile are taken in when the first waiting
        // one is due (a job that cannot wait thus waits at most one
        // grace): not waking for each submission is what lets the copies
        // and acknowledgements gather.
        Some(due) => tokio::time::sleep_until(due).await,
    }
    loop {
        match rx.try_recv() {
            Ok(job) => queue.add(job),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
}

/// Writes `ops` in one transaction; `true` once durable (nothing to write
/// is durable at once).
async fn write(store: &dyn Store, ops: Vec<Op>, metrics: &Metrics) -> bool {
    if ops.is_empty() {
        return true;
    }
    Metrics::inc(&metrics.persist_commits);
    Metrics::add(&metrics.persist_ops, ops.len() as u64);
    let ops = ops.into_iter().map(Op::into_store).collect();
    match store.mqtt_apply(ops).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "cannot persist broker state");
            false
        }
    }
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

    fn enqueue(client: &str, id: u64) -> Op {
        Op::Copy(QueuedCopy {
            client: Arc::from(client),
            id,
            message: Arc::new(Message {
                topic: Arc::from(format!("devices/{client}/telemetry/up")),
                payload: bytes::Bytes::from_static(b"{}"),
                qos: 1,
                retain: false,
                properties: mqtt5_protocol::Properties::default(),
                expires_at: None,
                publisher: None,
            }),
            qos: 1,
            retain: false,
            subscription_ids: Vec::new(),
        })
    }

    fn ack(client: &str, id: u64) -> Op {
        Op::Ack {
            client: Arc::from(client),
            id,
        }
    }

    fn job(ops: Vec<Op>, done: Option<oneshot::Sender<bool>>) -> Job {
        Job {
            ops,
            done,
            at: Instant::now(),
        }
    }

    /// Operations as the store would apply them (comparable).
    fn as_store(ops: &[Op]) -> Vec<MqttOp> {
        ops.iter().cloned().map(Op::into_store).collect()
    }

    fn ops(queue: &Queue) -> Vec<MqttOp> {
        let waiting: Vec<Op> = queue
            .waiting
            .iter()
            .flat_map(|w| w.job.ops.clone())
            .collect();
        as_store(&waiting)
    }

    #[test]
    fn a_copy_acknowledged_while_it_waits_is_never_written() {
        let save = MqttOp::Disconnected {
            client: "svc".into(),
            at_ms: 1,
        };
        let mut queue = Queue::new(Duration::from_secs(1));
        let (done, mut answer) = oneshot::channel();
        queue.add(job(vec![enqueue("svc", 1)], Some(done)));
        // Delivery ids are unique per broker, across clients.
        queue.add(job(vec![enqueue("svc", 2), enqueue("other", 3)], None));
        queue.add(job(vec![ack("svc", 1)], None));
        queue.add(job(vec![save.clone().into()], None));
        // Its copy was written earlier: the delete stays.
        queue.add(job(vec![ack("svc", 0)], None));
        assert_eq!(queue.elide_delivered(), 1);
        assert_eq!(
            ops(&queue),
            as_store(&[enqueue("svc", 2), enqueue("other", 3), save.into()])
        );
        assert_eq!(as_store(&queue.held), as_store(&[ack("svc", 0)]));
        // Delivered, so durable as far as its publisher is concerned.
        assert_eq!(answer.try_recv(), Ok(true));
    }

    #[test]
    fn copies_without_their_acknowledgements_are_left_alone() {
        let mut queue = Queue::new(Duration::from_secs(1));
        queue.add(job(vec![enqueue("a", 1)], None));
        queue.add(job(vec![ack("b", 1), ack("a", 2)], None));
        assert_eq!(queue.elide_delivered(), 0);
        assert_eq!(ops(&queue), as_store(&[enqueue("a", 1)]));
        assert_eq!(as_store(&queue.held), as_store(&[ack("b", 1), ack("a", 2)]));
    }

    #[test]
    fn copies_wait_out_the_grace_and_anything_else_is_due_at_once() {
        let grace = Duration::from_secs(1);
        let mut queue = Queue::new(grace);
        let copy = job(vec![enqueue("a", 1)], None);
        let at = copy.at;
        queue.add(copy);
        assert_eq!(queue.due(at), 0);
        assert_eq!(queue.next_due(), Some(at + grace));
        // A subscription change behind it is due now, and takes the copy
        // before it along (the order of application).
        let (done, _answer) = oneshot::channel();
        let save = MqttOp::SaveSession {
            client: "a".into(),
            expiry_secs: 60,
            subscriptions: Vec::new(),
        };
        queue.add(job(vec![save.into()], Some(done)));
        assert_eq!(queue.due(Instant::now()), 2);
    }

    #[test]
    fn copies_falling_due_soon_ride_along_with_a_write() {
        let grace = Duration::from_secs(1);
        let mut queue = Queue::new(grace);
        let start = Instant::now();
        for (n, after) in [0, 400, 600].into_iter().enumerate() {
            let mut copy = job(vec![enqueue("a", n as u64)], None);
            copy.at = start + Duration::from_millis(after);
            queue.add(copy);
        }
        assert_eq!(queue.due(start + grace - Duration::from_millis(1)), 0);
        // The first is due; the second falls due within half a grace.
        assert_eq!(queue.due(start + grace), 2);
        assert_eq!(queue.due(start + grace + Duration::from_millis(100)), 3);
    }

    /// The grace runs from each copy's own submission: a copy queued near
    /// the end of an earlier one's grace still gets all of it, and is not
    /// written when its acknowledgement comes within it. (When the grace
    /// ran from the first copy of a batch, `b` was written here.)
    #[tokio::test(start_paused = true)]
    async fn each_copy_waits_its_own_grace_for_its_acknowledgement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = rampart_store::SqliteStore::open(
            &dir.path().join("db"),
            rampart_store::AuditKey::new([1; 32], None),
            rampart_store::sqlite::SqliteOptions::default(),
        )
        .expect("store");
        let metrics = Arc::new(Metrics::default());
        let grace = Duration::from_millis(200);
        let persister = Persister::start(Arc::new(store), Arc::clone(&metrics), grace);
        let save = MqttOp::SaveSession {
            client: "svc".into(),
            expiry_secs: 3600,
            subscriptions: Vec::new(),
        };
        assert!(durable(persister.submit(vec![save])).await);
        let commits = |m: &Metrics| m.persist_commits.load(std::sync::atomic::Ordering::Relaxed);
        let before = commits(&metrics);

        let a = persister.submit(vec![enqueue("svc", 1)]);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let b = persister.submit(vec![enqueue("svc", 2)]);
        tokio::time::sleep(Duration::from_millis(10)).await;
        persister.submit_later(vec![ack("svc", 1)]);
        // Past `a`'s grace, within `b`'s.
        tokio::time::sleep(Duration::from_millis(90)).await;
        persister.submit_later(vec![ack("svc", 2)]);
        assert!(durable(a).await);
        assert!(durable(b).await);
        assert_eq!(commits(&metrics), before, "a delivered copy was written");
        assert_eq!(
            metrics
                .persist_elided
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );

        // A copy nobody acknowledges is written once its grace is over.
        let c = persister.submit(vec![enqueue("svc", 3)]);
        assert!(durable(c).await);
        assert_eq!(commits(&metrics), before + 1);
    }
}

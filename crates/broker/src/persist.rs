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
//! submission* before it is written. Until then it is listed in a table
//! shared with the connections ([`Unwritten`]): the subscriber's
//! acknowledgement takes it out there, and once every copy of a publish is
//! out (and nothing else of it waits for a write) the publisher is answered
//! at once, from the subscriber's connection: the message has reached its
//! subscriber, which is what the durable copy was for. The task never
//! wakes for that, and writes nothing for it. When a copy's grace is over
//! the task takes it out of the table in the same lock, and writes it;
//! an acknowledgement that comes later is a deletion, written after it.
//! Copies still waiting when an earlier job is written ride along with it,
//! so that the order of application is the order of submission.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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
    done: Option<Arc<Answer>>,
    /// When it was submitted.
    at: Instant,
}

/// The answer to one submission: `true` once it is durable. Sent by the
/// task once the job is written, or by the acknowledgement that takes the
/// job's last copy out of [`Unwritten`] first, whichever comes first.
struct Answer {
    /// What is left to settle other than by the write: the job's copies
    /// not yet delivered, plus one if it holds anything else (which only
    /// the write settles).
    open: AtomicUsize,
    tx: Mutex<Option<oneshot::Sender<bool>>>,
}

impl Answer {
    /// An answer with `open` parts to settle besides the write, and the
    /// receiver it is sent to.
    fn new(open: usize) -> (Arc<Self>, Durable) {
        let (tx, rx) = oneshot::channel();
        let answer = Self {
            open: AtomicUsize::new(open),
            tx: Mutex::new(Some(tx)),
        };
        (Arc::new(answer), rx)
    }

    fn send(&self, ok: bool) {
        if let Some(tx) = lock(&self.tx).take() {
            let _ = tx.send(ok);
        }
    }

    /// One of the job's copies was delivered.
    fn delivered(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.send(true);
        }
    }
}

/// A copy listed in [`Unwritten`].
struct Listed {
    client: ClientId,
    answer: Arc<Answer>,
}

/// Copies waiting out their grace, by delivery id (unique per broker).
/// Each is taken out exactly once: by its subscriber's acknowledgement
/// (then it is never written) or by the task when it writes it (then the
/// acknowledgement becomes a deletion, submitted after the write was
/// started, so applied after it).
#[derive(Default)]
struct Unwritten(Mutex<HashMap<u64, Listed>>);

impl Unwritten {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Listed>> {
        lock(&self.0)
    }
}

/// Locks `m`. Nothing here panics half-way through a change under these
/// locks, so a poisoned one is used as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Handle to the persistence task.
#[derive(Clone)]
pub(crate) struct Persister {
    tx: mpsc::UnboundedSender<Job>,
    unwritten: Arc<Unwritten>,
    metrics: Arc<Metrics>,
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
        let unwritten = Arc::new(Unwritten::default());
        tokio::spawn(run(
            store,
            rx,
            Arc::clone(&unwritten),
            Arc::clone(&metrics),
            grace,
        ));
        Self {
            tx,
            unwritten,
            metrics,
        }
    }

    fn send(&self, ops: Vec<Op>, done: Option<Arc<Answer>>) {
        let _ = self.tx.send(Job {
            ops,
            done,
            at: Instant::now(),
        });
    }

    /// Queues `ops`; the returned receiver resolves once they are durable
    /// (a queued copy also counts once its subscriber acknowledged it).
    /// Order of submission is order of application.
    pub(crate) fn submit<O: Into<Op>>(&self, ops: Vec<O>) -> Option<Durable> {
        if ops.is_empty() {
            return None;
        }
        let ops: Vec<Op> = ops.into_iter().map(Into::into).collect();
        let copies = ops.iter().filter(|op| is_copy(op)).count();
        let (answer, rx) = Answer::new(copies + usize::from(copies < ops.len()));
        if copies > 0 {
            let mut unwritten = self.unwritten.lock();
            for op in &ops {
                if let Op::Copy(c) = op {
                    let listed = Listed {
                        client: Arc::clone(&c.client),
                        answer: Arc::clone(&answer),
                    };
                    unwritten.insert(c.id, listed);
                }
            }
        }
        self.send(ops, Some(answer));
        Some(rx)
    }

    /// Queues `ops` without waiting: what a crash may lose without
    /// breaking a promise (a session's state as its connection ends, the
    /// deletion of an expired one), still applied in order.
    pub(crate) fn submit_later<O: Into<Op>>(&self, ops: Vec<O>) {
        if !ops.is_empty() {
            self.send(ops.into_iter().map(Into::into).collect(), None);
        }
    }

    /// The copy `id` queued for `client` was delivered and acknowledged,
    /// or will never be sent: if it is still waiting out its grace it is
    /// never written (and its publisher may be answered now), otherwise
    /// its row is deleted with a later write (losing the deletion in a
    /// crash only means a redelivery, which QoS 1 allows).
    pub(crate) fn delivered(&self, client: &ClientId, id: u64) {
        let listed = match self.unwritten.lock().entry(id) {
            Entry::Occupied(l) if l.get().client == *client => Some(l.remove()),
            _ => None,
        };
        match listed {
            Some(l) => {
                Metrics::inc(&self.metrics.persist_elided);
                l.answer.delivered();
            }
            None => self.send(
                vec![Op::Ack {
                    client: Arc::clone(client),
                    id,
                }],
                None,
            ),
        }
    }

    /// Waits until everything submitted so far is durable.
    pub(crate) async fn flush(&self) -> bool {
        let (answer, rx) = Answer::new(1);
        self.send(Vec::new(), Some(answer));
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
    /// [`ACK_WRITE_DELAY`] after the oldest of them (`held_since`).
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

/// The persistence task: takes jobs in, and writes what is due in one
/// transaction (held deletions first), leaving out the copies delivered
/// meanwhile.
async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    unwritten: Arc<Unwritten>,
    metrics: Arc<Metrics>,
    grace: Duration,
) {
    let mut queue = Queue::new(grace);
    let mut open = true;
    while open || !queue.waiting.is_empty() || !queue.held.is_empty() {
        if open {
            open = take_in(&mut queue, &mut rx).await;
        }
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
        {
            let mut unwritten = unwritten.lock();
            while n > 0 && ops.len() < MAX_BATCH_OPS {
                let Some(w) = queue.waiting.pop_front() else {
                    break;
                };
                n -= 1;
                // A copy still listed is written, and taken out so that its
                // acknowledgement becomes a deletion; one no longer listed
                // was delivered.
                ops.extend(w.job.ops.into_iter().filter(|op| match op {
                    Op::Copy(c) => unwritten.remove(&c.id).is_some(),
                    _ => true,
                }));
                waiters.extend(w.job.done);
            }
        }
        let ok = write(&*store, ops, &metrics).await;
        for w in waiters {
            w.send(ok);
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

    /// A job as submitted; `answered` gives it someone waiting.
    fn job(ops: Vec<Op>, answered: bool) -> Job {
        let done = answered.then(|| Answer::new(1).0);
        Job {
            ops,
            done,
            at: Instant::now(),
        }
    }

    #[test]
    fn deletions_nobody_waits_for_are_held_not_queued() {
        let mut queue = Queue::new(Duration::from_secs(1));
        let deletion = job(vec![ack("a", 1), ack("b", 2)], false);
        let at = deletion.at;
        queue.add(deletion);
        assert!(queue.waiting.is_empty());
        assert_eq!(queue.held.len(), 2);
        assert!(!queue.held_due(at));
        assert!(queue.held_due(at + ACK_WRITE_DELAY));
        assert_eq!(queue.take_held().len(), 2);
        assert_eq!(queue.next_due(), None);
    }

    #[test]
    fn copies_wait_out_the_grace_and_anything_else_is_due_at_once() {
        let grace = Duration::from_secs(1);
        let mut queue = Queue::new(grace);
        let copy = job(vec![enqueue("a", 1)], false);
        let at = copy.at;
        queue.add(copy);
        assert_eq!(queue.due(at), 0);
        assert_eq!(queue.next_due(), Some(at + grace));
        // A subscription change behind it is due now, and takes the copy
        // before it along (the order of application).
        let save = MqttOp::SaveSession {
            client: "a".into(),
            expiry_secs: 60,
            subscriptions: Vec::new(),
        };
        queue.add(job(vec![save.into()], true));
        assert_eq!(queue.due(Instant::now()), 2);
    }

    #[test]
    fn copies_falling_due_soon_ride_along_with_a_write() {
        let grace = Duration::from_secs(1);
        let mut queue = Queue::new(grace);
        let start = Instant::now();
        for (n, after) in [0, 400, 600].into_iter().enumerate() {
            let mut copy = job(vec![enqueue("a", n as u64)], false);
            copy.at = start + Duration::from_millis(after);
            queue.add(copy);
        }
        assert_eq!(queue.due(start + grace - Duration::from_millis(1)), 0);
        // The first is due; the second falls due within half a grace.
        assert_eq!(queue.due(start + grace), 2);
        assert_eq!(queue.due(start + grace + Duration::from_millis(100)), 3);
    }

    /// A persister on a fresh SQLite store, with a persistent session
    /// `svc` saved, and its metrics.
    async fn persister(dir: &std::path::Path, grace: Duration) -> (Persister, Arc<Metrics>) {
        let store = rampart_store::SqliteStore::open(
            &dir.join("db"),
            rampart_store::AuditKey::new([1; 32], None),
            rampart_store::sqlite::SqliteOptions::default(),
        )
        .expect("store");
        let metrics = Arc::new(Metrics::default());
        let persister = Persister::start(Arc::new(store), Arc::clone(&metrics), grace);
        for client in ["svc", "other"] {
            let save = MqttOp::SaveSession {
                client: client.into(),
                expiry_secs: 3600,
                subscriptions: Vec::new(),
            };
            assert!(durable(persister.submit(vec![save])).await);
        }
        (persister, metrics)
    }

    fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn client(name: &str) -> ClientId {
        Arc::from(name)
    }

    /// The delivery ids in `client`'s durable queue.
    async fn queued(persister: &Persister, store: &dyn Store, client: &str) -> Vec<u64> {
        assert!(persister.flush().await);
        let snapshot = store.mqtt_load().await.expect("load");
        snapshot
            .sessions
            .into_iter()
            .find(|s| s.client == client)
            .map(|s| s.queue.into_iter().map(|(id, _)| id).collect())
            .unwrap_or_default()
    }

    /// The publisher of a copy its subscriber acknowledged within the
    /// grace is answered by that acknowledgement, without waiting for the
    /// task to wake, and nothing is written for it.
    #[tokio::test(start_paused = true)]
    async fn a_delivered_copy_is_answered_at_once_and_never_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (persister, metrics) = persister(dir.path(), Duration::from_secs(3600)).await;
        let before = count(&metrics.persist_commits);

        let mut answer = persister.submit(vec![enqueue("svc", 1)]).expect("waits");
        assert_eq!(answer.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        persister.delivered(&client("svc"), 1);
        assert_eq!(answer.try_recv(), Ok(true));
        assert_eq!(count(&metrics.persist_elided), 1);

        assert!(persister.flush().await);
        assert_eq!(
            count(&metrics.persist_commits),
            before,
            "a delivered copy was written"
        );
    }

    /// A publish routed to two persistent sessions is answered when both
    /// copies are delivered; an acknowledgement naming another session
    /// takes nothing out.
    #[tokio::test(start_paused = true)]
    async fn a_publish_waits_for_every_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (persister, metrics) = persister(dir.path(), Duration::from_secs(3600)).await;
        let mut answer = persister
            .submit(vec![enqueue("svc", 1), enqueue("other", 2)])
            .expect("waits");
        persister.delivered(&client("svc"), 1);
        persister.delivered(&client("svc"), 2);
        assert_eq!(answer.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        persister.delivered(&client("other"), 2);
        assert_eq!(answer.try_recv(), Ok(true));
        assert_eq!(count(&metrics.persist_elided), 2);
    }

    /// The grace runs from each copy's own submission: a copy queued near
    /// the end of an earlier one's grace still gets all of it, and is not
    /// written when its acknowledgement comes within it. A copy nobody
    /// acknowledges is written once its grace is over; its late
    /// acknowledgement deletes it.
    #[tokio::test(start_paused = true)]
    async fn each_copy_waits_its_own_grace_and_late_ones_are_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let grace = Duration::from_millis(200);
        let (persister, metrics) = persister(dir.path(), grace).await;
        let store = rampart_store::SqliteStore::open(
            &dir.path().join("db"),
            rampart_store::AuditKey::new([1; 32], None),
            rampart_store::sqlite::SqliteOptions::default(),
        )
        .expect("second handle");
        let before = count(&metrics.persist_commits);

        let a = persister.submit(vec![enqueue("svc", 1)]);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let b = persister.submit(vec![enqueue("svc", 2)]);
        tokio::time::sleep(Duration::from_millis(10)).await;
        persister.delivered(&client("svc"), 1);
        // Past `a`'s grace, within `b`'s.
        tokio::time::sleep(Duration::from_millis(90)).await;
        persister.delivered(&client("svc"), 2);
        assert!(durable(a).await);
        assert!(durable(b).await);
        tokio::time::sleep(grace).await;
        assert_eq!(
            count(&metrics.persist_commits),
            before,
            "a delivered copy was written"
        );
        assert_eq!(count(&metrics.persist_elided), 2);

        let c = persister.submit(vec![enqueue("svc", 3)]);
        assert!(durable(c).await);
        assert_eq!(count(&metrics.persist_commits), before + 1);
        assert_eq!(queued(&persister, &store, "svc").await, [3]);
        persister.delivered(&client("svc"), 3);
        assert_eq!(queued(&persister, &store, "svc").await, Vec::<u64>::new());
        assert_eq!(count(&metrics.persist_elided), 2);
    }
}

//! Step 4, commit: group commit. Every message waits for the transaction
//! that holds it; one task commits whatever queued while the previous
//! transaction ran, so an idle pipeline commits a message at once and a
//! busy one amortises each fsync over many messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_store::StoreError;
use rampart_store::telemetry::{IngestItem, ItemOutcome, TelemetryStore};
use tokio::sync::mpsc;

use crate::metrics::PipelineMetrics;

/// What the committer does with a job's outcomes once its transaction is
/// in (`None`: the store could not commit it). It runs on the committer's
/// task, right after the commit: no task or channel hop per message.
pub(crate) type Reply = Box<dyn FnOnce(Option<Vec<ItemOutcome>>) + Send>;

/// A unit of work waiting for its transaction.
pub(crate) struct Job {
    pub items: Vec<IngestItem>,
    /// `None`: nobody waits (presence).
    pub reply: Option<Reply>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("items", &self.items.len())
            .finish()
    }
}

/// The default [`CommitOptions::min_interval`]. Measured on the 2-core
/// bench host (BENCHMARKS.md, "Paced group commits"): against back-to-back
/// commits it takes 10–25 % of a core off Rampart from 3,000 to 12,000
/// messages/s and lowers the delivery tail at 12,000 and 18,000, where
/// 4 ms made 18,000 worse (longer commits, the subscriber's queue
/// overflowed).
pub const MIN_INTERVAL: Duration = Duration::from_millis(2);

/// Group-commit tuning.
#[derive(Debug, Clone, Copy)]
pub struct CommitOptions {
    /// Most items in one transaction.
    pub max_items: usize,
    /// How many times a failed transaction is retried before its messages
    /// are answered with an internal error (so devices send them again).
    pub attempts: u32,
    /// Wait before the first retry; doubled each time.
    pub retry_backoff: Duration,
    /// Queue stored points for export in the same transaction.
    pub outbox: bool,
    /// Least time between the starts of two transactions. A commit that
    /// follows the previous one sooner waits out the rest, gathering what
    /// arrives meanwhile into one transaction (fewer fsyncs and page
    /// writes per message under load); after a pause the next commit
    /// starts at once. Zero: commit whatever queued as soon as the
    /// previous transaction is done.
    pub min_interval: Duration,
}

impl Default for CommitOptions {
    fn default() -> Self {
        Self {
            max_items: 4096,
            attempts: 5,
            retry_backoff: Duration::from_millis(20),
            outbox: false,
            min_interval: MIN_INTERVAL,
        }
    }
}

/// Runs until every sender is gone and the queue is empty.
pub(crate) async fn run(
    store: Arc<dyn TelemetryStore>,
    mut queue: mpsc::Receiver<Job>,
    options: CommitOptions,
    metrics: Arc<PipelineMetrics>,
) {
    let mut jobs: Vec<Job> = Vec::new();
    let mut last_start: Option<tokio::time::Instant> = None;
    while let Some(first) = queue.recv().await {
        let mut items = first.items.len();
        jobs.push(first);
        if let Some(due) = last_start.map(|t| t + options.min_interval)
            && items < options.max_items
            && due > tokio::time::Instant::now()
        {
            tokio::time::sleep_until(due).await;
        }
        last_start = Some(tokio::time::Instant::now());
        while items < options.max_items {
            match queue.try_recv() {
                Ok(job) => {
                    items += job.items.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        commit_jobs(&*store, &mut jobs, &options, &metrics).await;
    }
}

async fn commit_jobs(
    store: &dyn TelemetryStore,
    jobs: &mut Vec<Job>,
    options: &CommitOptions,
    metrics: &PipelineMetrics,
) {
    let sizes: Vec<usize> = jobs.iter().map(|j| j.items.len()).collect();
    let items: Arc<[IngestItem]> = jobs.iter_mut().flat_map(|j| j.items.drain(..)).collect();
    let started = Instant::now();
    let mut backoff = options.retry_backoff;
    let mut result = Err(StoreError::Busy);
    for attempt in 1..=options.attempts.max(1) {
        result = store
            .commit_ingest(Arc::clone(&items), options.outbox)
            .await;
        match &result {
            Ok(_) => break,
            Err(e) => {
                PipelineMetrics::inc(&metrics.commit_failures);
                tracing::warn!(error = %e, attempt, items = items.len(), "telemetry commit failed");
                if attempt < options.attempts {
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
            }
        }
    }
    metrics.record_commit(items.len(), started.elapsed());
    let mut outcomes = result.ok().map(Vec::into_iter);
    for (job, size) in jobs.drain(..).zip(sizes) {
        let answer = outcomes
            .as_mut()
            .map(|o| o.by_ref().take(size).collect::<Vec<_>>());
        if let Some(reply) = job.reply {
            reply(answer);
        }
    }
}

//! Pipeline counters, rendered in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters of the pipeline (monotonic).
#[derive(Debug, Default)]
pub struct PipelineMetrics {
    /// Messages offered.
    pub messages: AtomicU64,
    /// Readings stored.
    pub readings_stored: AtomicU64,
    /// Points stored.
    pub points_stored: AtomicU64,
    /// Readings that were replays.
    pub duplicates: AtomicU64,
    /// Readings that conflicted with a stored one.
    pub conflicts: AtomicU64,
    /// Messages rejected (any reason).
    pub rejected: AtomicU64,
    /// Messages rejected for their format.
    pub rejected_format: AtomicU64,
    /// Messages rejected for a limit.
    pub rejected_quota: AtomicU64,
    /// Messages answered with an internal error (store unavailable).
    pub rejected_internal: AtomicU64,
    /// Transactions committed (or given up).
    pub commits: AtomicU64,
    /// Items in those transactions.
    pub commit_items: AtomicU64,
    /// Time spent committing, µs.
    pub commit_micros: AtomicU64,
    /// Failed commit attempts.
    pub commit_failures: AtomicU64,
}

impl PipelineMetrics {
    /// Adds one.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn record_commit(&self, items: usize, took: Duration) {
        Self::inc(&self.commits);
        Self::add(&self.commit_items, items as u64);
        Self::add(&self.commit_micros, took.as_micros() as u64);
    }

    /// The counters in the Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        for (name, help, value) in [
            (
                "rampart_ingest_messages_total",
                "Messages offered to the pipeline.",
                &self.messages,
            ),
            (
                "rampart_ingest_readings_stored_total",
                "Readings stored.",
                &self.readings_stored,
            ),
            (
                "rampart_ingest_points_stored_total",
                "Points stored.",
                &self.points_stored,
            ),
            (
                "rampart_ingest_duplicates_total",
                "Readings acknowledged as replays.",
                &self.duplicates,
            ),
            (
                "rampart_ingest_conflicts_total",
                "Readings refused as sequence conflicts.",
                &self.conflicts,
            ),
            (
                "rampart_ingest_rejected_total",
                "Messages rejected.",
                &self.rejected,
            ),
            (
                "rampart_ingest_rejected_format_total",
                "Messages rejected for their format.",
                &self.rejected_format,
            ),
            (
                "rampart_ingest_rejected_quota_total",
                "Messages rejected for a limit.",
                &self.rejected_quota,
            ),
            (
                "rampart_ingest_rejected_internal_total",
                "Messages answered with an internal error.",
                &self.rejected_internal,
            ),
            (
                "rampart_ingest_commits_total",
                "Group-commit transactions.",
                &self.commits,
            ),
            (
                "rampart_ingest_commit_items_total",
                "Items in group-commit transactions.",
                &self.commit_items,
            ),
            (
                "rampart_ingest_commit_microseconds_total",
                "Time spent in group commits.",
                &self.commit_micros,
            ),
            (
                "rampart_ingest_commit_failures_total",
                "Failed commit attempts.",
                &self.commit_failures,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        out
    }
}

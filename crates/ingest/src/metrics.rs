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
    /// Commits by duration: `commit_buckets[i]` counts those longer than
    /// `COMMIT_BUCKETS_US[i - 1]` and at most `COMMIT_BUCKETS_US[i]`.
    /// Longer ones are counted only in `commits` (the `+Inf` bucket).
    pub commit_buckets: [AtomicU64; COMMIT_BUCKETS_US.len()],
}

/// Upper bounds of the commit duration histogram, µs: a commit is a
/// fraction of a millisecond when it is small, some milliseconds when an
/// fsync waits on the disk, and more than 100 ms only when something is
/// wrong; the tail of acknowledgement latency is made of the slow ones.
pub const COMMIT_BUCKETS_US: [u64; 12] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000,
];

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
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        Self::add(&self.commit_micros, micros);
        let bucket = COMMIT_BUCKETS_US.partition_point(|&bound| bound < micros);
        if let Some(b) = self.commit_buckets.get(bucket) {
            Self::inc(b);
        }
    }

    /// The commit duration histogram: (upper bound in seconds, commits in
    /// that bucket and no smaller one).
    pub fn commit_histogram(&self) -> Vec<(f64, u64)> {
        COMMIT_BUCKETS_US
            .iter()
            .zip(&self.commit_buckets)
            .map(|(&us, n)| (us as f64 / 1e6, n.load(Ordering::Relaxed)))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_fall_into_the_bucket_of_their_duration() {
        let m = PipelineMetrics::default();
        for us in [100, 250, 251, 3_000, 10_000_000] {
            m.record_commit(1, Duration::from_micros(us));
        }
        let h = m.commit_histogram();
        assert_eq!(h.len(), COMMIT_BUCKETS_US.len());
        // A bound is inclusive ("le"): 100 and 250 µs in the first bucket.
        assert_eq!(h[0], (0.00025, 2));
        assert_eq!(h[1], (0.0005, 1));
        assert_eq!(h[4], (0.005, 1));
        // 10 s is above every bound: only `+Inf` (the count) holds it.
        assert_eq!(h.iter().map(|(_, n)| n).sum::<u64>(), 4);
        assert_eq!(m.commits.load(Ordering::Relaxed), 5);
        assert_eq!(m.commit_micros.load(Ordering::Relaxed), 10_003_601);
    }
}

//! Telemetry storage: the [`TelemetryStore`] trait and its records.
//!
//! The pipeline (`rampart-ingest`) decides what a message means; this trait
//! stores the result in one durable transaction per group commit, and answers
//! chart queries from rollups maintained in that same transaction.
//!
//! Deduplication is decided here, inside the transaction, because only the
//! transaction sees the committed truth: a reading whose `(device, seq)` is
//! new is stored; one whose `(device, seq)` exists with the same digest is a
//! [`ReadingFate::Duplicate`]; one with a different digest is a
//! [`ReadingFate::Conflict`], recorded in the rejected table and flagging the
//! device.

use std::collections::HashMap;

use async_trait::async_trait;
use rampart_proto::DeviceId;
use rampart_proto::telemetry::MetricName;
use serde::Serialize;

use crate::Result;

/// Rollup resolutions, finest first. `Raw` is the points themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    /// Raw points.
    Raw,
    /// One-minute rollups.
    Minute,
    /// One-hour rollups.
    Hour,
    /// One-day rollups (UTC days).
    Day,
}

impl Resolution {
    /// The rollup resolutions, coarsest first.
    pub const ROLLUPS_COARSEST_FIRST: [Resolution; 3] =
        [Resolution::Day, Resolution::Hour, Resolution::Minute];

    /// Bucket width in milliseconds (1 for raw).
    pub fn millis(self) -> i64 {
        match self {
            Resolution::Raw => 1,
            Resolution::Minute => 60_000,
            Resolution::Hour => 3_600_000,
            Resolution::Day => 86_400_000,
        }
    }

    /// Name as shown (`raw`, `1m`, `1h`, `1d`).
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Raw => "raw",
            Resolution::Minute => "1m",
            Resolution::Hour => "1h",
            Resolution::Day => "1d",
        }
    }

    /// Start of the bucket holding `ts_ms`.
    pub fn bucket_of(self, ts_ms: i64) -> i64 {
        ts_ms - ts_ms.rem_euclid(self.millis())
    }
}

/// Flag bit: the device's timestamp was implausible and replaced by the
/// receive time.
pub const FLAG_TS_REPLACED: u32 = 1;

/// A validated reading ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReading {
    /// The device's sequence number.
    pub seq: u64,
    /// The timestamp to store (device time, or receive time).
    pub ts_ms: i64,
    /// When the broker received the message.
    pub received_ms: i64,
    /// [`FLAG_TS_REPLACED`] and future flags.
    pub flags: u32,
    /// Digest of what the device sent (its `ts` if any and its metrics),
    /// computed by the pipeline's dedupe step.
    pub digest: i64,
    /// The values.
    pub metrics: Vec<(MetricName, f64)>,
}

/// A message the pipeline refused, kept for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRejection {
    /// The publishing device.
    pub device: DeviceId,
    /// When it arrived.
    pub at_ms: i64,
    /// Topic category (`telemetry`, `state`, ...).
    pub category: String,
    /// Stable reason class (`payload_format_invalid`, `quota_exceeded`,
    /// `sequence_conflict`, ...).
    pub kind: String,
    /// A sentence.
    pub detail: String,
    /// The sequence number involved, when known.
    pub seq: Option<u64>,
    /// The payload's first bytes (the store keeps at most
    /// [`REJECTED_PAYLOAD_PREFIX`]).
    pub payload: Vec<u8>,
    /// The payload's full length.
    pub payload_len: usize,
}

/// How many payload bytes of a rejected message are kept.
pub const REJECTED_PAYLOAD_PREFIX: usize = 512;

/// A connection event, for the presence history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRecord {
    /// The device.
    pub device: DeviceId,
    /// When.
    pub at_ms: i64,
    /// Connected (`true`) or gone.
    pub online: bool,
    /// Why it went away (`clean`, `keepalive_timeout`, ...).
    pub reason: Option<String>,
    /// Where it connected from.
    pub addr: Option<String>,
}

/// One unit of work in a group commit.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestItem {
    /// The readings of one telemetry message.
    Readings {
        /// The publishing device.
        device: DeviceId,
        /// The readings, validated.
        readings: Vec<NewReading>,
        /// The raw payload, kept in the rejected table if a reading conflicts.
        payload: bytes::Bytes,
    },
    /// A `state/up` report: the device's latest reported fields.
    State {
        /// The device.
        device: DeviceId,
        /// When it arrived.
        at_ms: i64,
        /// The reported JSON object.
        reported: serde_json::Value,
    },
    /// A refused message.
    Rejected(NewRejection),
    /// A connect or disconnect.
    Presence(PresenceRecord),
}

/// What became of one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadingFate {
    /// Stored now.
    Stored,
    /// Stored earlier with the same content: nothing written.
    Duplicate,
    /// Stored earlier with different content: rejected as a sequence
    /// conflict and the device flagged.
    Conflict,
}

/// What became of one [`IngestItem`], in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Fates of the message's readings, in order.
    Readings(Vec<ReadingFate>),
    /// Stored (state, rejection, presence).
    Recorded,
}

/// A chart query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesQuery {
    /// The device.
    pub device: DeviceId,
    /// The metric.
    pub metric: MetricName,
    /// Start, inclusive, Unix ms.
    pub from_ms: i64,
    /// End, exclusive, Unix ms.
    pub to_ms: i64,
    /// How many buckets the caller wants across the range (at least 1).
    pub buckets: u32,
}

/// One bucket of a chart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    /// Start of the bucket, Unix ms.
    pub start: i64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Mean value.
    pub avg: f64,
    /// Number of points.
    pub count: u64,
    /// Value of the latest point (greatest `(ts, seq)`).
    pub last: f64,
}

/// The answer to a [`SeriesQuery`]: non-empty buckets in time order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// The resolution the answer was computed from.
    pub resolution: Resolution,
    /// Width of each bucket, ms (a multiple of the resolution).
    pub bucket_ms: i64,
    /// Buckets with at least one point.
    pub buckets: Vec<Bucket>,
}

/// One stored point, as exported.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct PointRecord {
    /// The device.
    pub device: String,
    /// The metric.
    pub metric: String,
    /// Timestamp, Unix ms.
    pub ts_ms: i64,
    /// The value.
    pub value: f64,
    /// The reading's sequence number.
    pub seq: u64,
}

/// Which points an export or archive walks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PointFilter {
    /// Only this device.
    pub device: Option<DeviceId>,
    /// Only points at or after, Unix ms.
    pub from_ms: Option<i64>,
    /// Only points before, Unix ms.
    pub to_ms: Option<i64>,
}

/// Where a paged export continues: after this `(series, ts, seq)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PointCursor {
    /// Internal series id.
    pub series: i64,
    /// Timestamp, ms.
    pub ts_ms: i64,
    /// Sequence number.
    pub seq: i64,
}

/// A refused message as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedRecord {
    /// Row id (increasing).
    pub id: i64,
    /// The device.
    pub device: String,
    /// When, Unix ms.
    pub at_ms: i64,
    /// Topic category.
    pub category: String,
    /// Reason class.
    pub kind: String,
    /// Reason sentence.
    pub detail: String,
    /// Sequence number, when known.
    pub seq: Option<u64>,
    /// The payload's first bytes.
    #[serde(skip)]
    pub payload: Vec<u8>,
    /// The payload's full length.
    pub payload_len: u64,
}

/// Per-device ingest counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeviceTelemetryStats {
    /// Readings stored.
    pub readings: u64,
    /// Replays acknowledged without storing.
    pub duplicates: u64,
    /// Messages refused.
    pub rejected: u64,
    /// Sequence conflicts.
    pub conflicts: u64,
    /// Highest `seq` stored.
    pub last_seq: Option<u64>,
    /// When the last reading was stored, Unix ms.
    pub last_reading_at: Option<i64>,
    /// When the device was flagged (sequence conflict), Unix ms.
    pub flagged_at: Option<i64>,
    /// Why it was flagged.
    pub flag_reason: Option<String>,
    /// Its metric names.
    pub metrics: Vec<String>,
}

/// A presence event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceHistoryRecord {
    /// When, Unix ms.
    pub at_ms: i64,
    /// Connected or gone.
    pub online: bool,
    /// Why it went away.
    pub reason: Option<String>,
    /// Where it connected from.
    pub addr: Option<String>,
}

/// How much a retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// Raw points deleted.
    pub points: u64,
    /// Readings (dedupe rows) deleted.
    pub readings: u64,
    /// Rollup rows deleted.
    pub rollups: u64,
    /// Presence events deleted.
    pub presence: u64,
}

/// Telemetry storage. SQLite implements it; PostgreSQL implements the same
/// trait for scale-out.
#[async_trait]
pub trait TelemetryStore: Send + Sync + std::fmt::Debug {
    /// Stores a group of items in one durable transaction and says what
    /// became of each, in order. Either everything is committed or nothing.
    /// With `outbox`, the stored points are also queued for export. The
    /// items are shared so that a caller can retry a failed commit.
    async fn commit_ingest(
        &self,
        items: std::sync::Arc<[IngestItem]>,
        outbox: bool,
    ) -> Result<Vec<ItemOutcome>>;

    /// Answers a chart query from the coarsest resolution that still gives
    /// the requested number of buckets.
    async fn query_series(&self, query: &SeriesQuery) -> Result<Series>;

    /// Up to `limit` points matching `filter` after `cursor`, ordered by
    /// device series, time and sequence, with the cursor to continue from.
    async fn export_points(
        &self,
        filter: &PointFilter,
        after: Option<PointCursor>,
        limit: u32,
    ) -> Result<(Vec<PointRecord>, Option<PointCursor>)>;

    /// Deletes raw points and readings with `ts < raw_before_ms`, 1-minute
    /// rollups before `minute_before_ms`, hourly rollups before
    /// `hour_before_ms` (when given), and presence events before
    /// `presence_before_ms`.
    async fn prune(
        &self,
        raw_before_ms: i64,
        minute_before_ms: i64,
        hour_before_ms: Option<i64>,
        presence_before_ms: i64,
    ) -> Result<Pruned>;

    /// The oldest raw point's timestamp, if any.
    async fn oldest_point(&self) -> Result<Option<i64>>;

    /// The newest rejected messages (of one device, or all), newest first.
    async fn rejected(&self, device: Option<&DeviceId>, limit: u32) -> Result<Vec<RejectedRecord>>;

    /// Counters, flag and metric names of one device.
    async fn device_telemetry(&self, device: &DeviceId) -> Result<DeviceTelemetryStats>;

    /// A device's newest presence events, newest first.
    async fn presence_history(
        &self,
        device: &DeviceId,
        limit: u32,
    ) -> Result<Vec<PresenceHistoryRecord>>;

    /// Readings stored per whole minute of their timestamp, for minutes
    /// starting in `from_ms..to_ms`, ascending; minutes without readings
    /// are left out. One index range scan (`readings_ts`).
    async fn readings_per_minute(&self, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, u64)>>;

    /// Metric names some device has sent, sorted, at most `limit` (alert
    /// rules refuse a metric nobody sends).
    async fn metric_names(&self, limit: u32) -> Result<Vec<String>>;

    /// A device's latest reported state and when it was reported.
    async fn reported_state(&self, device: &DeviceId) -> Result<Option<(serde_json::Value, i64)>>;

    /// Up to `limit` export batches waiting in the outbox, oldest first:
    /// `(id, points)`.
    async fn outbox_peek(&self, limit: u32) -> Result<Vec<(i64, Vec<PointRecord>)>>;

    /// Removes delivered outbox batches (ids up to and including `upto`).
    async fn outbox_ack(&self, upto: i64) -> Result<()>;

    /// Counts a failed delivery attempt of the oldest batch.
    async fn outbox_failed(&self, id: i64) -> Result<()>;
}

/// Aggregates `(ts, seq, value)` points or rollup rows into output buckets
/// of width `bucket_ms` starting at `origin`. Shared by every store so the
/// answer does not depend on the backend.
#[derive(Debug)]
pub struct BucketAggregator {
    origin: i64,
    bucket_ms: i64,
    out: Vec<Bucket>,
    current: Option<Acc>,
}

#[derive(Debug, Clone, Copy)]
struct Acc {
    start: i64,
    min: f64,
    max: f64,
    sum: f64,
    count: u64,
    last_key: (i64, i64),
    last: f64,
}

/// One rollup row (or one raw point, with `count = 1`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollupRow {
    /// Bucket start (or the point's ts).
    pub bucket: i64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of values.
    pub sum: f64,
    /// Number of points.
    pub count: u64,
    /// `(ts, seq)` of the latest point.
    pub last_key: (i64, i64),
    /// Its value.
    pub last: f64,
}

impl RollupRow {
    /// A raw point as a one-point row.
    pub fn point(ts: i64, seq: i64, value: f64) -> Self {
        Self {
            bucket: ts,
            min: value,
            max: value,
            sum: value,
            count: 1,
            last_key: (ts, seq),
            last: value,
        }
    }
}

impl BucketAggregator {
    /// An aggregator for buckets `[origin + k·bucket_ms, ...)`.
    pub fn new(origin: i64, bucket_ms: i64) -> Self {
        Self {
            origin,
            bucket_ms: bucket_ms.max(1),
            out: Vec::new(),
            current: None,
        }
    }

    /// Adds a row; rows must come in ascending `bucket` order.
    pub fn push(&mut self, row: RollupRow) {
        let start =
            self.origin + (row.bucket - self.origin).div_euclid(self.bucket_ms) * self.bucket_ms;
        match &mut self.current {
            Some(acc) if acc.start == start => {
                acc.min = acc.min.min(row.min);
                acc.max = acc.max.max(row.max);
                acc.sum += row.sum;
                acc.count += row.count;
                if row.last_key > acc.last_key {
                    acc.last_key = row.last_key;
                    acc.last = row.last;
                }
            }
            _ => {
                self.flush();
                self.current = Some(Acc {
                    start,
                    min: row.min,
                    max: row.max,
                    sum: row.sum,
                    count: row.count,
                    last_key: row.last_key,
                    last: row.last,
                });
            }
        }
    }

    fn flush(&mut self) {
        if let Some(acc) = self.current.take()
            && acc.count > 0
        {
            self.out.push(Bucket {
                start: acc.start,
                min: acc.min,
                max: acc.max,
                avg: acc.sum / acc.count as f64,
                count: acc.count,
                last: acc.last,
            });
        }
    }

    /// The buckets, in time order.
    pub fn finish(mut self) -> Vec<Bucket> {
        self.flush();
        self.out
    }
}

/// The plan for a query: which resolution to read, the output bucket width
/// and the aligned origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryPlan {
    /// Where to read.
    pub resolution: Resolution,
    /// Output bucket width, a multiple of the resolution.
    pub bucket_ms: i64,
    /// First bucket's start: `from` aligned down to the resolution.
    pub origin: i64,
}

impl QueryPlan {
    /// Picks the coarsest rollup whose buckets are no wider than
    /// `range / buckets` (so the answer still has the requested number of
    /// buckets), or raw points when even one minute is too coarse.
    pub fn for_query(from_ms: i64, to_ms: i64, buckets: u32) -> Self {
        let range = (to_ms - from_ms).max(1);
        let want = (range / i64::from(buckets.max(1))).max(1);
        let resolution = Resolution::ROLLUPS_COARSEST_FIRST
            .into_iter()
            .find(|r| r.millis() <= want)
            .unwrap_or(Resolution::Raw);
        let step = resolution.millis();
        let bucket_ms = (want / step).max(1) * step;
        Self {
            resolution,
            bucket_ms,
            origin: resolution.bucket_of(from_ms),
        }
    }
}

// ---------------------------------------------------------------------------
// Shared by the backends' `commit_ingest`, so that both store the same thing.

/// How many rejected messages are kept (oldest dropped first).
pub(crate) const REJECTED_KEPT: i64 = 10_000;

/// A stored reading moves a device's `last_seen` only once it is this much
/// later than the stored value: a device sending several readings a second
/// would otherwise rewrite its registry row and the `last_seen` index in
/// every group commit (on SQLite a quarter of a small commit's pages).
/// Connects and disconnects still set it exactly.
pub(crate) const LAST_SEEN_STEP_MS: i64 = 1_000;

/// The hash maps the SQLite telemetry commit consults per stored reading
/// and point on the store's one writer thread, and the series cache both
/// stores share (the PostgreSQL commit spends its time in round trips and
/// keeps std's hasher for its own maps): foldhash instead of
/// std's SipHash (5 % of the instructions of an in-process ingest run,
/// BENCHMARKS.md "Who holds the CPU when a worker waits"). foldhash is
/// seeded per process (address-space layout and clock) but does not claim
/// resistance to hash flooding. These maps do not need it: their outer
/// keys are registered device ids and server-assigned series ids, so a
/// device chooses only the keys of its own inner maps (metric names,
/// seqs), within the limits validation puts on a message, and the maps
/// live for one commit or one compaction round or are bounded by the
/// fleet's devices and series.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// `(device, metric)` → series id, for series known to be committed.
/// Keyed by device, then metric, so a look-up borrows `&str`s and
/// allocates nothing (it runs once per stored point).
#[derive(Debug, Default)]
pub(crate) struct SeriesCache(FastMap<String, FastMap<String, i64>>);

impl SeriesCache {
    /// The id of a committed series.
    pub(crate) fn get(&self, device: &str, metric: &str) -> Option<i64> {
        self.0.get(device)?.get(metric).copied()
    }

    /// Adds series whose transaction committed.
    pub(crate) fn extend(&mut self, created: NewSeries) {
        for ((device, metric), id) in created {
            self.0.entry(device).or_default().insert(metric, id);
        }
    }
}

/// Series resolved by a transaction, added to the cache after it commits.
pub(crate) type NewSeries = Vec<((String, String), i64)>;

impl RollupRow {
    /// Merges `other` (rows of the same bucket) into `self`.
    pub(crate) fn merge(&mut self, other: &RollupRow) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        self.count += other.count;
        if other.last_key > self.last_key {
            self.last_key = other.last_key;
            self.last = other.last;
        }
    }
}

/// A sequence number as stored (a signed 64-bit column).
pub(crate) fn seq_i64(seq: u64) -> Result<i64> {
    // Validation refuses larger values; a store error here means a bug.
    i64::try_from(seq).map_err(|_| crate::StoreError::Corrupt(format!("seq {seq} exceeds 2^63-1")))
}

/// The rejection sentence of a sequence conflict.
pub(crate) fn conflict_detail(seq: u64) -> String {
    format!("sequence conflict: seq {seq} was stored earlier with a different payload")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_picks_the_coarsest_resolution_with_enough_buckets() {
        let day = 86_400_000;
        let p = QueryPlan::for_query(0, 7 * day, 1000);
        assert_eq!(p.resolution, Resolution::Minute);
        assert_eq!(p.bucket_ms, 600_000);
        assert!(7 * day / p.bucket_ms >= 1000);
        let p = QueryPlan::for_query(0, 365 * day, 300);
        assert_eq!(p.resolution, Resolution::Day);
        let p = QueryPlan::for_query(0, 3_600_000, 1000);
        assert_eq!(p.resolution, Resolution::Raw);
        assert_eq!(p.bucket_ms, 3600);
        let p = QueryPlan::for_query(0, 30 * day, 100);
        assert_eq!(p.resolution, Resolution::Hour);
        assert!(30 * day / p.bucket_ms >= 90);
    }

    #[test]
    fn aggregator_merges_rows_per_bucket_and_keeps_the_latest_value() {
        let mut a = BucketAggregator::new(0, 10);
        a.push(RollupRow::point(1, 1, 5.0));
        a.push(RollupRow::point(3, 2, 1.0));
        a.push(RollupRow::point(3, 1, 9.0));
        a.push(RollupRow::point(25, 3, 2.0));
        let b = a.finish();
        assert_eq!(b.len(), 2);
        assert_eq!(
            (b[0].min, b[0].max, b[0].count, b[0].last),
            (1.0, 9.0, 3, 1.0)
        );
        assert_eq!(b[0].avg, 5.0);
        assert_eq!((b[1].start, b[1].count, b[1].last), (20, 1, 2.0));
    }
}

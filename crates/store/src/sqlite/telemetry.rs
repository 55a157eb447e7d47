//! Telemetry in SQLite: one write transaction per group commit; chart
//! queries as one range scan of a rollup or of the raw points, plus the
//! points still staged (decisions 0018 and 0019, [`super::staging`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_proto::DeviceId;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use super::rows::RowInsert;
use super::staging::points::{self, Points, StagedPoint, pending_points};
use super::staging::readings::{self, DigestIndex, Readings, StagedReading};
use super::staging::{Kind as _, Lane, Staging, Step, Synced, load_pending};
use super::writer::Next;
use super::{SqliteStore, db};
use crate::telemetry::{
    BucketAggregator, DeviceTelemetryStats, FastMap, IngestItem, ItemOutcome, LAST_SEEN_STEP_MS,
    NewReading, NewRejection, NewSeries, PointCursor, PointFilter, PointRecord,
    PresenceHistoryRecord, PresenceRecord, Pruned, QueryPlan, REJECTED_KEPT,
    REJECTED_PAYLOAD_PREFIX, ReadingFate, RejectedRecord, Resolution, RollupRow, Series,
    SeriesCache, SeriesQuery, TelemetryStore, conflict_detail, seq_i64,
};
use crate::{Result, StoreError};

/// Rollup key: series, resolution (ms), bucket start.
type RollupKey = (i64, i64, i64);

#[derive(Default)]
struct StatsDelta {
    readings: i64,
    duplicates: i64,
    rejected: i64,
    conflicts: i64,
    last_seq: Option<i64>,
    last_reading_at: Option<i64>,
    flag: Option<(i64, String)>,
}

/// The work of one commit, accumulated before the final writes.
struct Batch<'a> {
    tx: &'a Transaction<'a>,
    /// The digest of a reading in `readings`: run for every reading that
    /// neither this commit nor the readings lane holds, prepared once per
    /// transaction instead of looked up in the cache each time.
    stored_digest: rusqlite::CachedStatement<'a>,
    /// Writes points into `points` and `rollups` (directly, or moved from
    /// the staging table).
    points: PointWriter,
    cache: &'a SeriesCache,
    new_series: NewSeries,
    stats: Vec<(String, StatsDelta)>,
    stats_index: FastMap<String, usize>,
    /// Points of the readings stored by this commit, staged or written
    /// directly in [`Batch::finish`].
    new_points: Vec<StagedPoint>,
    /// The readings stored by this commit, likewise, and their digests
    /// (a message may repeat a reading of an earlier one in the batch).
    new_readings: Vec<StagedReading>,
    new_digests: DigestIndex,
    exported: Vec<PointRecord>,
    outbox: bool,
    any_rejected: bool,
}

/// What a commit changed that the committer's caches take in once the
/// transaction committed.
pub(super) struct Committed {
    pub outcomes: Vec<ItemOutcome>,
    pub series: NewSeries,
    pub staging: Step,
}

/// Stores `items` inside `tx`.
pub(super) fn commit(
    tx: &Transaction<'_>,
    cache: &SeriesCache,
    staging: &mut Staging,
    items: &[IngestItem],
    outbox: bool,
    now_ms: i64,
) -> Result<Committed> {
    // Both lanes are brought in line with the tables once, first: dedupe
    // reads the readings lane.
    let synced = staging.sync(tx, Instant::now())?;
    let mut b = Batch {
        tx,
        stored_digest: tx
            .prepare_cached("SELECT digest FROM readings WHERE device_id = ?1 AND seq = ?2")
            .map_err(db)?,
        points: PointWriter::default(),
        cache,
        new_series: Vec::new(),
        new_points: Vec::new(),
        new_readings: Vec::new(),
        new_digests: DigestIndex::default(),
        stats: Vec::new(),
        stats_index: FastMap::default(),
        exported: Vec::new(),
        outbox,
        any_rejected: false,
    };
    let mut outcomes = Vec::with_capacity(items.len());
    for item in items {
        outcomes.push(match item {
            IngestItem::Readings {
                device,
                readings,
                payload,
            } => ItemOutcome::Readings(b.readings(
                &mut staging.readings,
                device.as_str(),
                readings,
                payload,
                now_ms,
            )?),
            IngestItem::State {
                device,
                at_ms,
                reported,
            } => {
                b.state(device.as_str(), *at_ms, reported)?;
                ItemOutcome::Recorded
            }
            IngestItem::Rejected(r) => {
                b.reject(r)?;
                ItemOutcome::Recorded
            }
            IngestItem::Presence(p) => {
                b.presence(p)?;
                ItemOutcome::Recorded
            }
        });
    }
    let staging = b.finish(staging, synced)?;
    Ok(Committed {
        outcomes,
        series: b.new_series,
        staging,
    })
}

impl Batch<'_> {
    /// The counters of `device`, allocating its key only on first use.
    fn stats_of(&mut self, device: &str) -> &mut StatsDelta {
        let i = match self.stats_index.get(device) {
            Some(i) => *i,
            None => {
                self.stats.push((device.to_owned(), StatsDelta::default()));
                self.stats_index
                    .insert(device.to_owned(), self.stats.len() - 1);
                self.stats.len() - 1
            }
        };
        &mut self.stats[i].1
    }

    fn series_id(&mut self, device: &str, metric: &str) -> Result<i64> {
        if let Some(id) = self.cache.get(device, metric) {
            return Ok(id);
        }
        if let Some((_, id)) = self
            .new_series
            .iter()
            .find(|((d, m), _)| d == device && m == metric)
        {
            return Ok(*id);
        }
        self.tx
            .prepare_cached(
                "INSERT INTO series (device_id, metric) VALUES (?1, ?2)
                 ON CONFLICT (device_id, metric) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![device, metric]))
            .map_err(db)?;
        let id: i64 = self
            .tx
            .prepare_cached("SELECT id FROM series WHERE device_id = ?1 AND metric = ?2")
            .and_then(|mut s| s.query_row(params![device, metric], |r| r.get(0)))
            .map_err(db)?;
        self.new_series
            .push(((device.to_owned(), metric.to_owned()), id));
        Ok(id)
    }

    /// The digest stored under `(device, seq)`: by this commit, staged by
    /// an earlier one, or in `readings`.
    fn known_digest(
        &mut self,
        staged: &mut Lane<Readings>,
        device: &str,
        seq: i64,
    ) -> Result<Option<i64>> {
        if let Some(d) = self.new_digests.get(device).and_then(|m| m.get(&seq)) {
            return Ok(Some(*d));
        }
        if !staged.may_hold(self.tx, device, seq)? {
            return Ok(None);
        }
        if let Some(d) = staged.digest_of(device, seq) {
            return Ok(Some(d));
        }
        self.stored_digest
            .query_row(params![device, seq], |row| row.get(0))
            .optional()
            .map_err(db)
    }

    fn readings(
        &mut self,
        staged: &mut Lane<Readings>,
        device: &str,
        readings: &[NewReading],
        payload: &[u8],
        now_ms: i64,
    ) -> Result<Vec<ReadingFate>> {
        let mut fates = Vec::with_capacity(readings.len());
        for r in readings {
            let seq = seq_i64(r.seq)?;
            let fate = match self.known_digest(staged, device, seq)? {
                None => {
                    self.points(device, seq, r)?;
                    self.new_digests
                        .entry(device.to_owned())
                        .or_default()
                        .insert(seq, r.digest);
                    self.new_readings.push(StagedReading {
                        device: device.to_owned(),
                        seq,
                        ts: r.ts_ms,
                        received_at: r.received_ms,
                        digest: r.digest,
                        flags: i64::from(r.flags),
                    });
                    ReadingFate::Stored
                }
                Some(stored) if stored == r.digest => ReadingFate::Duplicate,
                Some(_) => ReadingFate::Conflict,
            };
            let stats = self.stats_of(device);
            match fate {
                ReadingFate::Stored => {
                    stats.readings += 1;
                    stats.last_seq = stats.last_seq.max(Some(seq));
                    stats.last_reading_at = Some(now_ms);
                }
                ReadingFate::Duplicate => stats.duplicates += 1,
                ReadingFate::Conflict => {
                    let why = conflict_detail(r.seq);
                    stats.conflicts += 1;
                    stats.flag = Some((now_ms, why.clone()));
                    self.reject(&NewRejection {
                        device: device
                            .parse()
                            .map_err(|e| StoreError::Corrupt(format!("device id: {e}")))?,
                        at_ms: r.received_ms,
                        category: "telemetry".into(),
                        kind: "sequence_conflict".into(),
                        detail: why,
                        seq: Some(r.seq),
                        payload: payload.to_vec(),
                        payload_len: payload.len(),
                    })?;
                }
            }
            fates.push(fate);
        }
        Ok(fates)
    }

    fn points(&mut self, device: &str, seq: i64, r: &NewReading) -> Result<()> {
        for (metric, value) in &r.metrics {
            let series = self.series_id(device, metric.as_str())?;
            self.new_points.push(StagedPoint {
                series,
                ts: r.ts_ms,
                seq,
                value: *value,
            });
            if self.outbox {
                self.exported.push(PointRecord {
                    device: device.to_owned(),
                    metric: metric.as_str().to_owned(),
                    ts_ms: r.ts_ms,
                    value: *value,
                    seq: r.seq,
                });
            }
        }
        Ok(())
    }

    fn state(&mut self, device: &str, at_ms: i64, reported: &serde_json::Value) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO device_state (device_id, reported, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (device_id) DO UPDATE SET reported = excluded.reported,
                   updated_at = excluded.updated_at
                 WHERE excluded.updated_at >= device_state.updated_at",
            )
            .and_then(|mut s| s.execute(params![device, reported.to_string(), at_ms]))
            .map_err(db)?;
        Ok(())
    }

    fn reject(&mut self, r: &NewRejection) -> Result<()> {
        let kept = &r.payload[..r.payload.len().min(REJECTED_PAYLOAD_PREFIX)];
        let seq = r.seq.map(seq_i64).transpose()?;
        self.tx
            .prepare_cached(
                "INSERT INTO rejected (device_id, at, category, kind, detail, seq, payload, payload_len)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    r.device.as_str(),
                    r.at_ms,
                    r.category,
                    r.kind,
                    r.detail,
                    seq,
                    kept,
                    r.payload_len as i64
                ])
            })
            .map_err(db)?;
        self.stats_of(r.device.as_str()).rejected += 1;
        self.any_rejected = true;
        Ok(())
    }

    fn presence(&mut self, p: &PresenceRecord) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO presence_events (device_id, at, online, reason, addr)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    p.device.as_str(),
                    p.at_ms,
                    p.online,
                    p.reason,
                    p.addr
                ])
            })
            .map_err(db)?;
        // A taken-over session's disconnect follows the new connection's
        // connect: it must not mark the device offline.
        if p.reason.as_deref() != Some("taken_over") {
            self.tx
                .prepare_cached(
                    "UPDATE devices SET online = ?2, last_seen = max(coalesce(last_seen, 0), ?3)
                     WHERE id = ?1",
                )
                .and_then(|mut s| s.execute(params![p.device.as_str(), p.online, p.at_ms]))
                .map_err(db)?;
        }
        Ok(())
    }

    /// The compaction steps, then this commit's points and readings
    /// (staged, or written directly when there are many points), rollups
    /// and counters.
    fn finish(
        &mut self,
        staging: &mut Staging,
        synced: (Synced<Points>, Synced<Readings>),
    ) -> Result<Step> {
        let tx = self.tx;
        let points = std::mem::take(&mut self.new_points);
        let new_readings = std::mem::take(&mut self.new_readings);
        let direct = points.len() >= staging.options().direct_points;
        let (points_in, readings_in) = if direct {
            (0, 0)
        } else {
            (points.len(), new_readings.len())
        };
        let now = Instant::now();
        let mut stored: Vec<(String, i64)> = Vec::new();
        for (device, seqs) in &self.new_digests {
            if let Some(highest) = seqs.keys().max() {
                stored.push((device.clone(), *highest));
            }
        }
        // Moving staged rows is the background work's, unless a lane is
        // behind (or background slices are off).
        let budgets = (
            staging.points.commit_budget(points_in),
            staging.readings.commit_budget(readings_in),
        );
        let mut step = step_lanes(tx, staging, synced, budgets, now, &mut self.points)?;
        step.stored = stored;
        if direct {
            self.points.write(tx, &points)?;
            readings::write_readings(tx, &new_readings)?;
        } else {
            Lane::append(tx, &mut step.points, points)?;
            Lane::append(tx, &mut step.readings, new_readings)?;
        }
        self.points.merge_rollups(tx)?;
        self.counters()?;
        Ok(step)
    }

    /// Each device's counters (one multi-row upsert) and its stepped
    /// `last_seen`. The `last_seen` statement is taken from the cache once
    /// per commit, not once per device: the cache's lookup by SQL text and
    /// the statement's return to it cost twice as much as binding its
    /// parameters (BENCHMARKS.md, "Who holds the CPU when a worker waits").
    fn device_counters(&self) -> Result<()> {
        static UPSERT: RowInsert = RowInsert::new(
            "INSERT INTO device_stats (device_id, readings, duplicates, rejected, conflicts,
                last_seq, last_reading_at, flagged_at, flag_reason) VALUES",
            9,
            "ON CONFLICT (device_id) DO UPDATE SET
               readings = device_stats.readings + excluded.readings,
               duplicates = device_stats.duplicates + excluded.duplicates,
               rejected = device_stats.rejected + excluded.rejected,
               conflicts = device_stats.conflicts + excluded.conflicts,
               last_seq = max(coalesce(device_stats.last_seq, excluded.last_seq), coalesce(excluded.last_seq, device_stats.last_seq)),
               last_reading_at = coalesce(excluded.last_reading_at, device_stats.last_reading_at),
               flagged_at = coalesce(excluded.flagged_at, device_stats.flagged_at),
               flag_reason = coalesce(excluded.flag_reason, device_stats.flag_reason)",
        );
        if self.stats.is_empty() {
            return Ok(());
        }
        UPSERT.run(self.tx, &self.stats, |stmt, at, (device, d)| {
            stmt.raw_bind_parameter(at, device.as_str())?;
            stmt.raw_bind_parameter(at + 1, d.readings)?;
            stmt.raw_bind_parameter(at + 2, d.duplicates)?;
            stmt.raw_bind_parameter(at + 3, d.rejected)?;
            stmt.raw_bind_parameter(at + 4, d.conflicts)?;
            stmt.raw_bind_parameter(at + 5, d.last_seq)?;
            stmt.raw_bind_parameter(at + 6, d.last_reading_at)?;
            stmt.raw_bind_parameter(at + 7, d.flag.as_ref().map(|f| f.0))?;
            stmt.raw_bind_parameter(at + 8, d.flag.as_ref().map(|f| f.1.as_str()))
        })?;
        let mut seen = self
            .tx
            .prepare_cached(
                "UPDATE devices SET last_seen = ?2
                 WHERE id = ?1 AND (last_seen IS NULL OR last_seen <= ?2 - ?3)",
            )
            .map_err(db)?;
        for (device, d) in &self.stats {
            if let Some(at) = d.last_reading_at {
                seen.execute(params![device, at, LAST_SEEN_STEP_MS])
                    .map_err(db)?;
            }
        }
        Ok(())
    }

    /// Device counters, the rejected-message bound and the export outbox.
    fn counters(&mut self) -> Result<()> {
        self.device_counters()?;
        if self.any_rejected {
            self.tx
                .execute(
                    "DELETE FROM rejected WHERE id <= (SELECT max(id) FROM rejected) - ?1",
                    params![REJECTED_KEPT],
                )
                .map_err(db)?;
        }
        if !self.exported.is_empty() {
            let body = serde_json::to_vec(&self.exported)
                .map_err(|e| StoreError::Corrupt(format!("outbox batch: {e}")))?;
            let at = self.exported.first().map(|p| p.ts_ms).unwrap_or_default();
            self.tx
                .prepare_cached("INSERT INTO export_outbox (at, body) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![at, body]))
                .map_err(db)?;
        }
        Ok(())
    }
}

/// Writes points into `points` and accumulates their rollups, merged into
/// the stored ones once per transaction by [`PointWriter::merge_rollups`].
#[derive(Default)]
struct PointWriter {
    rollups: FastMap<RollupKey, RollupRow>,
}

impl PointWriter {
    /// Writes `points` and adds each to the rollups of every resolution.
    fn write(&mut self, tx: &Transaction<'_>, points: &[StagedPoint]) -> Result<()> {
        static INSERT: RowInsert = RowInsert::new(
            "INSERT OR IGNORE INTO points (series_id, ts, seq, value) VALUES",
            4,
            "",
        );
        INSERT.run(tx, points, Points::bind_at)?;
        for p in points {
            let point = RollupRow::point(p.ts, p.seq, p.value);
            for res in Resolution::ROLLUPS_COARSEST_FIRST {
                let key = (p.series, res.millis(), res.bucket_of(p.ts));
                self.rollups
                    .entry(key)
                    .and_modify(|acc| acc.merge(&point))
                    .or_insert(RollupRow {
                        bucket: key.2,
                        ..point
                    });
            }
        }
        Ok(())
    }

    /// Merges the accumulated rollups into the stored ones, one statement
    /// per row: unlike the inserts of [`RowInsert`], the rows of one commit
    /// each hit another leaf (a leaf per series), so a multi-row statement
    /// journals a page per row for its own rollback (SQLite's statement
    /// journal), and it saved only 4 % of this merge (BENCHMARKS.md,
    /// "Multi-row inserts and exact read buffers").
    fn merge_rollups(&mut self, tx: &Transaction<'_>) -> Result<()> {
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO rollups
               (series_id, resolution, bucket, min, max, sum, count, last_ts, last_seq, last_value)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (series_id, resolution, bucket) DO UPDATE SET
               min = min(rollups.min, excluded.min),
               max = max(rollups.max, excluded.max),
               sum = rollups.sum + excluded.sum,
               count = rollups.count + excluded.count,
               last_ts = CASE WHEN (excluded.last_ts, excluded.last_seq) > (rollups.last_ts, rollups.last_seq)
                              THEN excluded.last_ts ELSE rollups.last_ts END,
               last_seq = CASE WHEN (excluded.last_ts, excluded.last_seq) > (rollups.last_ts, rollups.last_seq)
                              THEN excluded.last_seq ELSE rollups.last_seq END,
               last_value = CASE WHEN (excluded.last_ts, excluded.last_seq) > (rollups.last_ts, rollups.last_seq)
                              THEN excluded.last_value ELSE rollups.last_value END",
            )
            .map_err(db)?;
        for ((series, res, bucket), r) in self.rollups.drain() {
            upsert
                .execute(params![
                    series,
                    res,
                    bucket,
                    r.min,
                    r.max,
                    r.sum,
                    r.count as i64,
                    r.last_key.0,
                    r.last_key.1,
                    r.last
                ])
                .map_err(db)?;
        }
        Ok(())
    }
}

fn series_of(conn: &Connection, device: &str, metric: &str) -> Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM series WHERE device_id = ?1 AND metric = ?2")
        .and_then(|mut s| {
            s.query_row(params![device, metric], |r| r.get(0))
                .optional()
        })
        .map_err(db)
}

/// Answers a chart query: the rollup rows (or raw points) of the range,
/// merged in time order with the series' staged points not moved yet, all
/// read in one snapshot, so a point being moved is counted exactly once.
pub(super) fn query(conn: &Connection, q: &SeriesQuery) -> Result<Series> {
    let snapshot = conn.unchecked_transaction().map_err(db)?;
    let plan = QueryPlan::for_query(q.from_ms, q.to_ms, q.buckets);
    let res = plan.resolution;
    let mut agg = BucketAggregator::new(plan.origin, plan.bucket_ms);
    if let Some(series) = series_of(&snapshot, q.device.as_str(), q.metric.as_str())?
        && q.to_ms > plan.origin
    {
        // A staged point belongs to the answer when its bucket at the
        // plan's resolution does: `[origin, to)` on buckets is this on time.
        let end = res.bucket_of(q.to_ms - 1).saturating_add(res.millis());
        let progress = points::progress(&snapshot)?;
        let mut staged = pending_points(&snapshot, &progress, series, plan.origin, end)?
            .into_iter()
            .map(|p| RollupRow {
                bucket: res.bucket_of(p.ts),
                ..RollupRow::point(p.ts, p.seq, p.value)
            })
            .peekable();
        let mut push = |row: RollupRow| {
            while let Some(early) = staged.next_if(|s| s.bucket < row.bucket) {
                agg.push(early);
            }
            agg.push(row);
        };
        if res == Resolution::Raw {
            let mut stmt = snapshot
                .prepare_cached(
                    "SELECT ts, seq, value FROM points
                     WHERE series_id = ?1 AND ts >= ?2 AND ts < ?3 ORDER BY ts, seq",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![series, q.from_ms, q.to_ms], |r| {
                    Ok(RollupRow::point(r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(db)?;
            for row in rows {
                push(row.map_err(db)?);
            }
        } else {
            let mut stmt = snapshot
                .prepare_cached(
                    "SELECT bucket, min, max, sum, count, last_ts, last_seq, last_value FROM rollups
                     WHERE series_id = ?1 AND resolution = ?2 AND bucket >= ?3 AND bucket < ?4
                     ORDER BY bucket",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![series, res.millis(), plan.origin, q.to_ms], |r| {
                    Ok(RollupRow {
                        bucket: r.get(0)?,
                        min: r.get(1)?,
                        max: r.get(2)?,
                        sum: r.get(3)?,
                        count: r.get::<_, i64>(4)? as u64,
                        last_key: (r.get(5)?, r.get(6)?),
                        last: r.get(7)?,
                    })
                })
                .map_err(db)?;
            for row in rows {
                push(row.map_err(db)?);
            }
        }
        for late in staged {
            agg.push(late);
        }
    }
    Ok(Series {
        resolution: res,
        bucket_ms: plan.bucket_ms,
        buckets: agg.finish(),
    })
}

/// Export rows of `points`: `?1..?3` the cursor, `?4` the device (or
/// NULL), `?5..?6` the time range, `?7` the page size.
const EXPORT_POINTS: &str = "SELECT p.series_id, p.ts, p.seq, p.value, s.device_id, s.metric
     FROM points p JOIN series s ON s.id = p.series_id
     WHERE (p.series_id, p.ts, p.seq) > (?1, ?2, ?3)
       AND (?4 IS NULL OR s.device_id = ?4)
       AND p.ts >= ?5 AND p.ts < ?6
     ORDER BY p.series_id, p.ts, p.seq LIMIT ?7";

/// One page of an export: the points after the cursor from `points` and
/// from the pending staged points, merged by (series, time, seq), in one
/// snapshot.
pub(super) fn export(
    conn: &Connection,
    filter: &PointFilter,
    after: Option<PointCursor>,
    limit: u32,
) -> Result<(Vec<PointRecord>, Option<PointCursor>)> {
    let snapshot = conn.unchecked_transaction().map_err(db)?;
    let after = after.unwrap_or(PointCursor {
        series: i64::MIN,
        ts_ms: i64::MIN,
        seq: i64::MIN,
    });
    let device = filter.device.as_ref().map(|d| d.as_str());
    let from = filter.from_ms.unwrap_or(i64::MIN);
    let to = filter.to_ms.unwrap_or(i64::MAX);
    let args: [&dyn rusqlite::ToSql; 7] = [
        &after.series,
        &after.ts_ms,
        &after.seq,
        &device,
        &from,
        &to,
        &limit,
    ];
    let stored = export_rows(&snapshot, EXPORT_POINTS, &args)?;
    let staged = export_staged(&snapshot, after, device, from, to, limit)?;
    let key = |c: &PointCursor| (c.series, c.ts_ms, c.seq);
    let mut stored = stored.into_iter().peekable();
    let mut staged = staged.into_iter().peekable();
    let mut out = Vec::new();
    let mut last = None;
    while out.len() < limit as usize {
        let next = match (stored.peek(), staged.peek()) {
            (Some(a), Some(b)) if key(&b.0) < key(&a.0) => staged.next(),
            (Some(a), Some(b)) if key(&b.0) == key(&a.0) => {
                staged.next();
                stored.next()
            }
            (Some(_), _) => stored.next(),
            (None, _) => staged.next(),
        };
        let Some((cursor, point)) = next else { break };
        last = Some(cursor);
        out.push(point);
    }
    let next = if out.len() == limit as usize {
        last
    } else {
        None
    };
    Ok((out, next))
}

/// The same page of the pending staged points: decoded from their
/// batches and filtered here, with each series' device and metric read
/// from `series`.
fn export_staged(
    conn: &Connection,
    after: PointCursor,
    device: Option<&str>,
    from: i64,
    to: i64,
    limit: u32,
) -> Result<Vec<(PointCursor, PointRecord)>> {
    let progress = points::progress(conn)?;
    let mut pending: Vec<StagedPoint> = load_pending::<Points>(conn, &progress)?
        .into_iter()
        .filter(|p| (p.series, p.ts, p.seq) > (after.series, after.ts_ms, after.seq))
        .filter(|p| p.ts >= from && p.ts < to)
        .collect();
    pending.sort_by(Points::order);
    let mut names: FastMap<i64, Option<(String, String)>> = FastMap::default();
    let mut stmt = conn
        .prepare_cached("SELECT device_id, metric FROM series WHERE id = ?1")
        .map_err(db)?;
    let mut out = Vec::new();
    for p in pending {
        if out.len() >= limit as usize {
            break;
        }
        let name = match names.entry(p.series) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                stmt.query_row([p.series], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(db)?,
            ),
        };
        let Some((series_device, metric)) = name else {
            return Err(StoreError::Corrupt(format!(
                "a staged point of series {} that `series` does not hold",
                p.series
            )));
        };
        if device.is_some_and(|d| d != series_device) {
            continue;
        }
        out.push((
            PointCursor {
                series: p.series,
                ts_ms: p.ts,
                seq: p.seq,
            },
            PointRecord {
                device: series_device.clone(),
                metric: metric.clone(),
                ts_ms: p.ts,
                value: p.value,
                seq: p.seq as u64,
            },
        ));
    }
    Ok(out)
}

fn export_rows(
    conn: &Connection,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<(PointCursor, PointRecord)>> {
    let mut stmt = conn.prepare_cached(sql).map_err(db)?;
    let rows = stmt
        .query_map(args, |r| {
            Ok((
                PointCursor {
                    series: r.get(0)?,
                    ts_ms: r.get(1)?,
                    seq: r.get(2)?,
                },
                PointRecord {
                    ts_ms: r.get(1)?,
                    seq: r.get::<_, i64>(2)? as u64,
                    value: r.get(3)?,
                    device: r.get(4)?,
                    metric: r.get(5)?,
                },
            ))
        })
        .map_err(db)?;
    rows.collect::<rusqlite::Result<_>>().map_err(db)
}

/// Moves every staged point into `points` and `rollups`, and every staged
/// reading into `readings`.
fn drain_staged(tx: &Transaction<'_>, staging: &mut Staging) -> Result<Step> {
    let mut points = PointWriter::default();
    let now = Instant::now();
    let step = Step {
        points: staging.points.drain(tx, now, |p| points.write(tx, p))?,
        readings: staging
            .readings
            .drain(tx, now, |r| readings::write_readings(tx, r))?,
        stored: Vec::new(),
    };
    points.merge_rollups(tx)?;
    Ok(step)
}

/// Each lane's compaction step in `tx`, moving at least its budget of rows
/// (points, readings), the moved points written through `points` (whose
/// rollups the caller merges).
fn step_lanes(
    tx: &Transaction<'_>,
    staging: &mut Staging,
    (points_synced, readings_synced): (Synced<Points>, Synced<Readings>),
    (points_budget, readings_budget): (usize, usize),
    now: Instant,
    points: &mut PointWriter,
) -> Result<Step> {
    Ok(Step {
        points: staging
            .points
            .step(tx, points_synced, points_budget, now, |p| {
                points.write(tx, p)
            })?,
        readings: staging
            .readings
            .step(tx, readings_synced, readings_budget, now, |r| {
                readings::write_readings(tx, r)
            })?,
        stored: Vec::new(),
    })
}

/// One slice of the background work (see [`super::staging`]): moves the
/// next rows of each lane's round, at most `slice_rows` each, in a
/// transaction of its own that does not wait for its fsync. Losing it in a
/// power cut leaves the rows staged as before it; the next commit's fsync
/// makes it durable along with that commit.
fn background_slice(conn: &mut Connection, staging: &mut Staging) -> Result<()> {
    conn.execute_batch("PRAGMA synchronous = NORMAL")
        .map_err(db)?;
    let moved = (|| -> Result<Step> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db)?;
        let now = Instant::now();
        let budget = staging.options().slice_rows;
        let synced = staging.sync(&tx, now)?;
        let mut points = PointWriter::default();
        let step = step_lanes(&tx, staging, synced, (budget, budget), now, &mut points)?;
        points.merge_rollups(&tx)?;
        tx.commit().map_err(db)?;
        Ok(step)
    })();
    // Every other transaction of this connection decides an answer: it
    // waits for its fsync again, whatever became of the slice.
    conn.execute_batch("PRAGMA synchronous = FULL")
        .map_err(db)?;
    staging.apply(moved?, Instant::now());
    Ok(())
}

impl super::Inner {
    /// The store's background work on the writer thread: a slice of the
    /// staged rows when one is due, and when to be asked again.
    pub(super) fn move_staged(&self) -> Next {
        match self.try_move_staged() {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, "moving staged telemetry into its tables failed; commits move it instead until a later slice succeeds");
                Next::After(Duration::from_secs(1))
            }
        }
    }

    fn try_move_staged(&self) -> Result<Next> {
        let mut conn = self.lock_writer()?;
        let mut staging = self
            .staging
            .lock()
            .map_err(|_| StoreError::Corrupt("staging state poisoned".into()))?;
        match staging.background_due(Instant::now()) {
            None => return Ok(Next::AfterNextJob),
            Some(wait) if !wait.is_zero() => return Ok(Next::After(wait)),
            Some(_) => {}
        }
        background_slice(&mut conn, &mut staging)?;
        Ok(Next::Now)
    }
}

/// Retention: deletes what left its window (after moving the staged
/// points where it looks).
pub(super) fn prune(
    tx: &Transaction<'_>,
    raw_before: i64,
    minute_before: i64,
    hour_before: Option<i64>,
    presence_before: i64,
) -> Result<Pruned> {
    let series: Vec<i64> = {
        let mut stmt = tx.prepare("SELECT id FROM series").map_err(db)?;
        stmt.query_map([], |r| r.get(0))
            .map_err(db)?
            .collect::<rusqlite::Result<_>>()
            .map_err(db)?
    };
    let mut pruned = Pruned::default();
    for id in series {
        pruned.points += tx
            .prepare_cached("DELETE FROM points WHERE series_id = ?1 AND ts < ?2")
            .and_then(|mut s| s.execute(params![id, raw_before]))
            .map_err(db)? as u64;
        pruned.rollups += tx
            .prepare_cached(
                "DELETE FROM rollups WHERE series_id = ?1 AND resolution = ?2 AND bucket < ?3",
            )
            .and_then(|mut s| s.execute(params![id, Resolution::Minute.millis(), minute_before]))
            .map_err(db)? as u64;
        if let Some(hour_before) = hour_before {
            pruned.rollups += tx
                .prepare_cached(
                    "DELETE FROM rollups WHERE series_id = ?1 AND resolution = ?2 AND bucket < ?3",
                )
                .and_then(|mut s| s.execute(params![id, Resolution::Hour.millis(), hour_before]))
                .map_err(db)? as u64;
        }
    }
    pruned.readings = tx
        .execute("DELETE FROM readings WHERE ts < ?1", params![raw_before])
        .map_err(db)? as u64;
    pruned.presence = tx
        .execute(
            "DELETE FROM presence_events WHERE at < ?1",
            params![presence_before],
        )
        .map_err(db)? as u64;
    Ok(pruned)
}

/// Stored readings per minute in `[from, to)` (the first minute whole):
/// `readings` counted by SQLite, plus the staged readings not moved yet,
/// read with the progress in one snapshot so that a reading is counted
/// once wherever it is.
fn readings_per_minute(conn: &Connection, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, u64)>> {
    let snapshot = conn.unchecked_transaction().map_err(db)?;
    let from = from_ms - from_ms.rem_euclid(60_000);
    let mut minutes = std::collections::BTreeMap::<i64, u64>::new();
    {
        let mut stmt = snapshot
            .prepare_cached(
                "SELECT ts - (ts % 60000) AS minute, count(*) FROM readings
                 WHERE ts >= ?1 AND ts < ?2 GROUP BY minute",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map(params![from, to_ms], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(db)?;
        for row in rows {
            let (minute, n) = row.map_err(db)?;
            *minutes.entry(minute).or_default() += u64::try_from(n).unwrap_or(0);
        }
    }
    let progress = readings::progress(&snapshot)?;
    for r in load_pending::<Readings>(&snapshot, &progress)? {
        if r.ts >= from && r.ts < to_ms {
            // SQLite's `%` truncates towards zero; so does Rust's.
            *minutes.entry(r.ts - r.ts % 60_000).or_default() += 1;
        }
    }
    Ok(minutes.into_iter().collect())
}

/// The oldest raw point's timestamp (of a stored reading: moved or
/// still staged).
pub(super) fn oldest_point(conn: &Connection) -> Result<Option<i64>> {
    let snapshot = conn.unchecked_transaction().map_err(db)?;
    let moved: Option<i64> = snapshot
        .query_row("SELECT min(ts) FROM readings", [], |r| r.get(0))
        .map_err(db)?;
    let staged = readings::oldest_staged(&snapshot)?;
    Ok(match (moved, staged) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

pub(super) fn rejected(
    conn: &Connection,
    device: Option<&str>,
    limit: u32,
) -> Result<Vec<RejectedRecord>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, device_id, at, category, kind, detail, seq, payload, payload_len
             FROM rejected WHERE (?1 IS NULL OR device_id = ?1) ORDER BY id DESC LIMIT ?2",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(params![device, limit], |r| {
            Ok(RejectedRecord {
                id: r.get(0)?,
                device: r.get(1)?,
                at_ms: r.get(2)?,
                category: r.get(3)?,
                kind: r.get(4)?,
                detail: r.get(5)?,
                seq: r.get::<_, Option<i64>>(6)?.map(|s| s as u64),
                payload: r.get(7)?,
                payload_len: r.get::<_, i64>(8)? as u64,
            })
        })
        .map_err(db)?;
    rows.collect::<rusqlite::Result<_>>().map_err(db)
}

pub(super) fn device_stats(conn: &Connection, device: &str) -> Result<DeviceTelemetryStats> {
    let mut stats = conn
        .prepare_cached(
            "SELECT readings, duplicates, rejected, conflicts, last_seq, last_reading_at,
                    flagged_at, flag_reason FROM device_stats WHERE device_id = ?1",
        )
        .and_then(|mut s| {
            s.query_row(params![device], |r| {
                Ok(DeviceTelemetryStats {
                    readings: r.get::<_, i64>(0)? as u64,
                    duplicates: r.get::<_, i64>(1)? as u64,
                    rejected: r.get::<_, i64>(2)? as u64,
                    conflicts: r.get::<_, i64>(3)? as u64,
                    last_seq: r.get::<_, Option<i64>>(4)?.map(|s| s as u64),
                    last_reading_at: r.get(5)?,
                    flagged_at: r.get(6)?,
                    flag_reason: r.get(7)?,
                    metrics: Vec::new(),
                })
            })
            .optional()
        })
        .map_err(db)?
        .unwrap_or_default();
    let mut stmt = conn
        .prepare_cached("SELECT metric FROM series WHERE device_id = ?1 ORDER BY metric")
        .map_err(db)?;
    stats.metrics = stmt
        .query_map(params![device], |r| r.get(0))
        .map_err(db)?
        .collect::<rusqlite::Result<_>>()
        .map_err(db)?;
    Ok(stats)
}

pub(super) fn presence_history(
    conn: &Connection,
    device: &str,
    limit: u32,
) -> Result<Vec<PresenceHistoryRecord>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT at, online, reason, addr FROM presence_events
             WHERE device_id = ?1 ORDER BY at DESC, id DESC LIMIT ?2",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(params![device, limit], |r| {
            Ok(PresenceHistoryRecord {
                at_ms: r.get(0)?,
                online: r.get(1)?,
                reason: r.get(2)?,
                addr: r.get(3)?,
            })
        })
        .map_err(db)?;
    rows.collect::<rusqlite::Result<_>>().map_err(db)
}

pub(super) fn reported_state(
    conn: &Connection,
    device: &str,
) -> Result<Option<(serde_json::Value, i64)>> {
    let row: Option<(String, i64)> = conn
        .prepare_cached("SELECT reported, updated_at FROM device_state WHERE device_id = ?1")
        .and_then(|mut s| {
            s.query_row(params![device], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db)?;
    row.map(|(text, at)| {
        serde_json::from_str(&text)
            .map(|v| (v, at))
            .map_err(|e| StoreError::Corrupt(format!("reported state of {device}: {e}")))
    })
    .transpose()
}

pub(super) fn outbox_peek(conn: &Connection, limit: u32) -> Result<Vec<(i64, Vec<PointRecord>)>> {
    let mut stmt = conn
        .prepare_cached("SELECT id, body FROM export_outbox ORDER BY id LIMIT ?1")
        .map_err(db)?;
    let rows = stmt
        .query_map(params![limit], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .map_err(db)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, body) = row.map_err(db)?;
        let points: Vec<PointRecord> = serde_json::from_slice(&body)
            .map_err(|e| StoreError::Corrupt(format!("outbox batch {id}: {e}")))?;
        out.push((id, points));
    }
    Ok(out)
}

impl SqliteStore {
    /// Runs `f` on the writer thread, in an immediate write transaction
    /// with the committer's state: the series cache and the staging view.
    /// What `f` reports it changed in them (series created, staging step)
    /// is taken in only once the transaction committed. Commits are
    /// serialised by the writer lock, so holding both for the whole
    /// transaction costs nothing.
    async fn committer<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &SeriesCache, &mut Staging) -> Result<(T, NewSeries, Step)>
            + Send
            + 'static,
    {
        let inner = Arc::clone(&self.inner);
        self.inner
            .writer_thread
            .run(move || {
                let mut conn = inner.lock_writer()?;
                let mut cache = inner
                    .series
                    .lock()
                    .map_err(|_| StoreError::Corrupt("series cache poisoned".into()))?;
                let mut staging = inner
                    .staging
                    .lock()
                    .map_err(|_| StoreError::Corrupt("staging state poisoned".into()))?;
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(db)?;
                let (out, created, step) = f(&tx, &cache, &mut staging)?;
                tx.commit().map_err(db)?;
                cache.extend(created);
                staging.apply(step, Instant::now());
                Ok(out)
            })
            .await
    }
}

#[async_trait::async_trait]
impl TelemetryStore for SqliteStore {
    async fn commit_ingest(
        &self,
        items: Arc<[IngestItem]>,
        outbox: bool,
    ) -> Result<Vec<ItemOutcome>> {
        self.committer(move |tx, cache, staging| {
            let (_, now) = crate::millis::now_ms();
            let done = commit(tx, cache, staging, &items, outbox, now)?;
            Ok((done.outcomes, done.series, done.staging))
        })
        .await
    }

    async fn query_series(&self, q: &SeriesQuery) -> Result<Series> {
        let q = q.clone();
        self.read(move |conn, _| query(conn, &q)).await
    }

    async fn export_points(
        &self,
        filter: &PointFilter,
        after: Option<PointCursor>,
        limit: u32,
    ) -> Result<(Vec<PointRecord>, Option<PointCursor>)> {
        let filter = filter.clone();
        self.read(move |conn, _| export(conn, &filter, after, limit))
            .await
    }

    async fn prune(
        &self,
        raw_before_ms: i64,
        minute_before_ms: i64,
        hour_before_ms: Option<i64>,
        presence_before_ms: i64,
    ) -> Result<Pruned> {
        self.committer(move |tx, _, staging| {
            let drained = drain_staged(tx, staging)?;
            let pruned = prune(
                tx,
                raw_before_ms,
                minute_before_ms,
                hour_before_ms,
                presence_before_ms,
            )?;
            Ok((pruned, Vec::new(), drained))
        })
        .await
    }

    async fn oldest_point(&self) -> Result<Option<i64>> {
        self.read(|conn, _| oldest_point(conn)).await
    }

    async fn rejected(&self, device: Option<&DeviceId>, limit: u32) -> Result<Vec<RejectedRecord>> {
        let device = device.map(|d| d.as_str().to_owned());
        self.read(move |conn, _| rejected(conn, device.as_deref(), limit))
            .await
    }

    async fn device_telemetry(&self, device: &DeviceId) -> Result<DeviceTelemetryStats> {
        let device = device.clone();
        self.read(move |conn, _| device_stats(conn, device.as_str()))
            .await
    }

    async fn presence_history(
        &self,
        device: &DeviceId,
        limit: u32,
    ) -> Result<Vec<PresenceHistoryRecord>> {
        let device = device.clone();
        self.read(move |conn, _| presence_history(conn, device.as_str(), limit))
            .await
    }

    async fn metric_names(&self, limit: u32) -> Result<Vec<String>> {
        self.read(move |conn, _| {
            let mut stmt = conn
                .prepare_cached("SELECT DISTINCT metric FROM series ORDER BY metric LIMIT ?1")
                .map_err(db)?;
            let rows = stmt
                .query_map(rusqlite::params![i64::from(limit)], |r| r.get(0))
                .map_err(db)?;
            rows.collect::<rusqlite::Result<_>>().map_err(db)
        })
        .await
    }

    async fn readings_per_minute(&self, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, u64)>> {
        self.read(move |conn, _| readings_per_minute(conn, from_ms, to_ms))
            .await
    }

    async fn reported_state(&self, device: &DeviceId) -> Result<Option<(serde_json::Value, i64)>> {
        let device = device.clone();
        self.read(move |conn, _| reported_state(conn, device.as_str()))
            .await
    }

    async fn outbox_peek(&self, limit: u32) -> Result<Vec<(i64, Vec<PointRecord>)>> {
        self.read(move |conn, _| outbox_peek(conn, limit)).await
    }

    async fn outbox_ack(&self, upto: i64) -> Result<()> {
        self.write(move |tx, _| {
            tx.execute("DELETE FROM export_outbox WHERE id <= ?1", params![upto])
                .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn outbox_failed(&self, id: i64) -> Result<()> {
        self.write(move |tx, _| {
            tx.execute(
                "UPDATE export_outbox SET attempts = attempts + 1 WHERE id = ?1",
                params![id],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }
}

//! Telemetry in PostgreSQL: one transaction per group commit, written with
//! a handful of set-based statements whatever the size of the batch.
//!
//! SQLite runs one statement per reading and per point, each a function call
//! into the library. Here every statement is a round trip to the server, so
//! a commit is planned in memory and written with arrays bound to `UNNEST`:
//! one statement inserts every reading, one every point, one upserts every
//! rollup bucket the batch touched, and so on. The writes that do not depend
//! on each other are pipelined on the connection (sent together, answered
//! in order). What ends up stored is what SQLite's statement-by-statement
//! order stores; the tests commit the same items to both and compare.
//!
//! Concurrent committers (several `serve` replicas) stay deadlock-free in
//! the common case because every statement that locks existing rows (the
//! readings' keys, rollups, per-device rows) takes them in key order.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use deadpool_postgres::{GenericClient, Transaction};
use rampart_proto::DeviceId;
use tokio_postgres::Row;

use super::{PostgresStore, db, get};
use crate::millis::now_ms;
use crate::telemetry::{
    BucketAggregator, DeviceTelemetryStats, IngestItem, ItemOutcome, LAST_SEEN_STEP_MS, NewReading,
    NewSeries, PointCursor, PointFilter, PointRecord, PresenceHistoryRecord, PresenceRecord,
    Pruned, QueryPlan, REJECTED_KEPT, REJECTED_PAYLOAD_PREFIX, ReadingFate, RejectedRecord,
    Resolution, RollupRow, Series, SeriesCache, SeriesQuery, TelemetryStore, conflict_detail,
    seq_i64,
};
use crate::{Result, StoreError};

/// Advisory lock serialising appends to the export outbox: "RMPT" and 2
/// (0 is the migration lock, 1 the audit/change-feed lock of `ledger`).
/// An identity column hands out ids at insert time, not at commit time;
/// under the lock the two orders agree, so an exporter that acknowledged
/// "everything up to id N" never deletes a batch that committed after it
/// looked.
const OUTBOX_LOCK: i64 = 0x524D_5054_0002;

/// How often the readings of a batch are offered again when a conflicting
/// row vanished between the insert and the digest look-up (deleted by a
/// concurrent retention pass).
const DEDUPE_PASSES: usize = 3;

/// Rollup key: series, resolution (ms), bucket start.
type RollupKey = (i64, i64, i64);

// ---------------------------------------------------------------------------
// Dedupe: every distinct (device, seq) of the batch is offered once.

/// One distinct `(device, seq)` of the batch, as first offered.
struct Candidate<'a> {
    device: &'a str,
    seq: i64,
    reading: &'a NewReading,
}

/// What the database holds for a candidate.
#[derive(Clone, Copy)]
enum Held {
    /// This transaction stored it.
    Inserted,
    /// It was stored earlier, with this digest.
    Earlier(i64),
}

/// Inserts the candidates that are new and looks up the digests of those
/// stored earlier; returns one [`Held`] per candidate.
///
/// The insert is `ON CONFLICT DO NOTHING`: when another transaction holds
/// the same key uncommitted, PostgreSQL waits for it, so the outcome is
/// decided on committed data. At READ COMMITTED the look-up that follows
/// sees every row the insert conflicted with, unless retention deleted it
/// in between; such readings are offered again.
async fn insert_readings(tx: &Transaction<'_>, keys: &[Candidate<'_>]) -> Result<Vec<Held>> {
    let mut held: Vec<Option<Held>> = vec![None; keys.len()];
    let index: HashMap<(&str, i64), usize> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| ((k.device, k.seq), i))
        .collect();
    // Key order: concurrent committers lock shared keys in the same order.
    let mut pending: Vec<usize> = (0..keys.len()).collect();
    pending.sort_unstable_by_key(|&i| (keys[i].device, keys[i].seq));
    let insert = tx
        .prepare_cached(
            "INSERT INTO readings (device_id, seq, ts, received_at, digest, flags)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],
                                  $5::bigint[], $6::bigint[])
             ON CONFLICT (device_id, seq) DO NOTHING
             RETURNING device_id, seq",
        )
        .await
        .map_err(db)?;
    let look_up = tx
        .prepare_cached(
            "SELECT r.device_id, r.seq, r.digest
             FROM readings r JOIN UNNEST($1::text[], $2::bigint[]) AS k (device_id, seq)
               ON r.device_id = k.device_id AND r.seq = k.seq",
        )
        .await
        .map_err(db)?;
    let find = |row: &Row| -> Result<Option<usize>> {
        let device: &str = get(row, 0)?;
        let seq: i64 = get(row, 1)?;
        Ok(index.get(&(device, seq)).copied())
    };
    for _ in 0..DEDUPE_PASSES {
        if pending.is_empty() {
            break;
        }
        let devices: Vec<&str> = pending.iter().map(|&i| keys[i].device).collect();
        let seqs: Vec<i64> = pending.iter().map(|&i| keys[i].seq).collect();
        let ts: Vec<i64> = pending.iter().map(|&i| keys[i].reading.ts_ms).collect();
        let received: Vec<i64> = pending
            .iter()
            .map(|&i| keys[i].reading.received_ms)
            .collect();
        let digests: Vec<i64> = pending.iter().map(|&i| keys[i].reading.digest).collect();
        let flags: Vec<i64> = pending
            .iter()
            .map(|&i| i64::from(keys[i].reading.flags))
            .collect();
        let rows = tx
            .query(
                &insert,
                &[&devices, &seqs, &ts, &received, &digests, &flags],
            )
            .await
            .map_err(db)?;
        for row in &rows {
            if let Some(i) = find(row)? {
                held[i] = Some(Held::Inserted);
            }
        }
        pending.retain(|&i| held[i].is_none());
        if pending.is_empty() {
            break;
        }
        let devices: Vec<&str> = pending.iter().map(|&i| keys[i].device).collect();
        let seqs: Vec<i64> = pending.iter().map(|&i| keys[i].seq).collect();
        for row in tx.query(&look_up, &[&devices, &seqs]).await.map_err(db)? {
            if let Some(i) = find(&row)? {
                held[i] = Some(Held::Earlier(get(&row, 2)?));
            }
        }
        pending.retain(|&i| held[i].is_none());
    }
    held.into_iter()
        .collect::<Option<Vec<_>>>()
        // Retention deleted the conflicting rows on every pass: the
        // pipeline retries the whole commit after a pause.
        .ok_or(StoreError::Busy)
}

// ---------------------------------------------------------------------------
// The plan: what one commit writes, worked out in item order.

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

/// A row for the rejected table.
struct RejectedRow<'a> {
    device: &'a str,
    at: i64,
    category: &'a str,
    kind: &'a str,
    detail: Cow<'a, str>,
    seq: Option<i64>,
    payload: &'a [u8],
    payload_len: i64,
}

/// A stored point, its series given by slot in [`Plan::series`].
struct PlannedPoint<'a> {
    slot: usize,
    ts: i64,
    seq: i64,
    value: f64,
    device: &'a str,
    metric: &'a str,
    seq_u64: u64,
}

/// What a device's row in `devices` learns from the batch.
#[derive(Default)]
struct Seen {
    /// The last connect or disconnect (a taken-over session's disconnect
    /// follows the new connection's connect and is not counted).
    online: Option<bool>,
    /// Latest presence event or stored reading.
    at: Option<i64>,
}

/// Everything one commit writes besides the readings, decided item by item
/// in the order given, borrowing from the items.
#[derive(Default)]
struct Plan<'a> {
    outcomes: Vec<ItemOutcome>,
    stats: HashMap<&'a str, StatsDelta>,
    rejected: Vec<RejectedRow<'a>>,
    presence: Vec<&'a PresenceRecord>,
    seen: HashMap<&'a str, Seen>,
    /// Per device, the state report that wins: the latest, and of equal
    /// times the last offered (SQLite's upsert keeps `>=`).
    states: HashMap<&'a str, (i64, &'a serde_json::Value)>,
    /// `(device, metric)` of the points, in order of first use: series are
    /// created in this order, as SQLite creates them.
    series: Vec<(&'a str, &'a str)>,
    series_slot: HashMap<(&'a str, &'a str), usize>,
    points: Vec<PlannedPoint<'a>>,
}

impl<'a> Plan<'a> {
    fn reject(&mut self, row: RejectedRow<'a>) {
        self.stats.entry(row.device).or_default().rejected += 1;
        self.rejected.push(row);
    }

    fn slot(&mut self, device: &'a str, metric: &'a str) -> usize {
        *self.series_slot.entry((device, metric)).or_insert_with(|| {
            self.series.push((device, metric));
            self.series.len() - 1
        })
    }

    /// Decides every item, given what the database holds for each reading.
    fn build(
        items: &'a [IngestItem],
        keys: &[Candidate<'a>],
        refs: &[usize],
        held: &[Held],
        now_ms: i64,
    ) -> Result<Self> {
        let mut plan = Plan::default();
        let mut claimed = vec![false; keys.len()];
        let mut refs = refs.iter();
        for item in items {
            let outcome = match item {
                IngestItem::Readings {
                    device,
                    readings,
                    payload,
                } => {
                    let device = device.as_str();
                    let mut fates = Vec::with_capacity(readings.len());
                    for r in readings {
                        let k = *refs.next().ok_or_else(|| {
                            StoreError::Corrupt("ingest plan: readings out of step".into())
                        })?;
                        let first = !std::mem::replace(&mut claimed[k], true);
                        let fate = match held[k] {
                            Held::Inserted if first => ReadingFate::Stored,
                            Held::Inserted if keys[k].reading.digest == r.digest => {
                                ReadingFate::Duplicate
                            }
                            Held::Earlier(d) if d == r.digest => ReadingFate::Duplicate,
                            _ => ReadingFate::Conflict,
                        };
                        plan.reading(device, keys[k].seq, r, fate, payload, now_ms);
                        fates.push(fate);
                    }
                    ItemOutcome::Readings(fates)
                }
                IngestItem::State {
                    device,
                    at_ms,
                    reported,
                } => {
                    let winner = plan
                        .states
                        .entry(device.as_str())
                        .or_insert((*at_ms, reported));
                    if *at_ms >= winner.0 {
                        *winner = (*at_ms, reported);
                    }
                    ItemOutcome::Recorded
                }
                IngestItem::Rejected(r) => {
                    plan.reject(RejectedRow {
                        device: r.device.as_str(),
                        at: r.at_ms,
                        category: &r.category,
                        kind: &r.kind,
                        detail: Cow::Borrowed(&r.detail),
                        seq: r.seq.map(seq_i64).transpose()?,
                        payload: &r.payload[..r.payload.len().min(REJECTED_PAYLOAD_PREFIX)],
                        payload_len: r.payload_len as i64,
                    });
                    ItemOutcome::Recorded
                }
                IngestItem::Presence(p) => {
                    plan.presence.push(p);
                    if p.reason.as_deref() != Some("taken_over") {
                        let seen = plan.seen.entry(p.device.as_str()).or_default();
                        seen.online = Some(p.online);
                        seen.at = seen.at.max(Some(p.at_ms));
                    }
                    ItemOutcome::Recorded
                }
            };
            plan.outcomes.push(outcome);
        }
        for (device, stats) in &plan.stats {
            if let Some(at) = stats.last_reading_at {
                let seen = plan.seen.entry(*device).or_default();
                seen.at = seen.at.max(Some(at));
            }
        }
        Ok(plan)
    }

    fn reading(
        &mut self,
        device: &'a str,
        seq: i64,
        r: &'a NewReading,
        fate: ReadingFate,
        payload: &'a [u8],
        now_ms: i64,
    ) {
        match fate {
            ReadingFate::Stored => {
                for (metric, value) in &r.metrics {
                    let slot = self.slot(device, metric.as_str());
                    self.points.push(PlannedPoint {
                        slot,
                        ts: r.ts_ms,
                        seq,
                        value: *value,
                        device,
                        metric: metric.as_str(),
                        seq_u64: r.seq,
                    });
                }
                let stats = self.stats.entry(device).or_default();
                stats.readings += 1;
                stats.last_seq = stats.last_seq.max(Some(seq));
                stats.last_reading_at = Some(now_ms);
            }
            ReadingFate::Duplicate => self.stats.entry(device).or_default().duplicates += 1,
            ReadingFate::Conflict => {
                let why = conflict_detail(r.seq);
                let stats = self.stats.entry(device).or_default();
                stats.conflicts += 1;
                stats.flag = Some((now_ms, why.clone()));
                self.reject(RejectedRow {
                    device,
                    at: r.received_ms,
                    category: "telemetry",
                    kind: "sequence_conflict",
                    detail: Cow::Owned(why),
                    seq: Some(seq),
                    payload: &payload[..payload.len().min(REJECTED_PAYLOAD_PREFIX)],
                    payload_len: payload.len() as i64,
                });
            }
        }
    }
}

/// The ids of `wanted` series, creating missing ones in the order given.
/// Returns the ids and every series not in the cache, for the cache once
/// the transaction committed.
async fn resolve_series(
    tx: &Transaction<'_>,
    cache: &Mutex<SeriesCache>,
    wanted: &[(&str, &str)],
) -> Result<(Vec<i64>, NewSeries)> {
    let mut ids: Vec<Option<i64>> = {
        let cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
        wanted.iter().map(|(d, m)| cache.get(d, m)).collect()
    };
    let missing: Vec<usize> = (0..wanted.len()).filter(|&i| ids[i].is_none()).collect();
    if missing.is_empty() {
        return Ok((ids.into_iter().flatten().collect(), Vec::new()));
    }
    let index: HashMap<(&str, &str), usize> =
        wanted.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let fill = |rows: Vec<Row>, ids: &mut Vec<Option<i64>>| -> Result<()> {
        for row in &rows {
            let device: &str = get(row, 1)?;
            let metric: &str = get(row, 2)?;
            if let Some(&i) = index.get(&(device, metric)) {
                ids[i] = Some(get(row, 0)?);
            }
        }
        Ok(())
    };
    let look_up = tx
        .prepare_cached(
            "SELECT s.id, s.device_id, s.metric
             FROM series s JOIN UNNEST($1::text[], $2::text[]) AS k (device_id, metric)
               ON s.device_id = k.device_id AND s.metric = k.metric",
        )
        .await
        .map_err(db)?;
    let unresolved = |ids: &[Option<i64>]| -> (Vec<&str>, Vec<&str>) {
        missing
            .iter()
            .filter(|&&i| ids[i].is_none())
            .map(|&i| wanted[i])
            .unzip()
    };
    // Known to the database (another process made them): no id is spent.
    let (devices, metrics) = unresolved(&ids);
    fill(
        tx.query(&look_up, &[&devices, &metrics])
            .await
            .map_err(db)?,
        &mut ids,
    )?;
    let (devices, metrics) = unresolved(&ids);
    if !devices.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO series (device_id, metric)
                 SELECT device_id, metric
                 FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS k (device_id, metric, n)
                 ORDER BY n
                 ON CONFLICT (device_id, metric) DO NOTHING
                 RETURNING id, device_id, metric",
            )
            .await
            .map_err(db)?;
        fill(
            tx.query(&insert, &[&devices, &metrics]).await.map_err(db)?,
            &mut ids,
        )?;
        // Created meanwhile by a concurrent commit, now committed.
        let (devices, metrics) = unresolved(&ids);
        if !devices.is_empty() {
            fill(
                tx.query(&look_up, &[&devices, &metrics])
                    .await
                    .map_err(db)?,
                &mut ids,
            )?;
        }
    }
    let created = missing
        .iter()
        .filter_map(|&i| {
            let (device, metric) = wanted[i];
            ids[i].map(|id| ((device.to_owned(), metric.to_owned()), id))
        })
        .collect();
    let ids: Vec<i64> = ids
        .into_iter()
        .zip(wanted)
        .map(|(id, (device, metric))| {
            id.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "series ({device}, {metric}) disappeared while being created"
                ))
            })
        })
        .collect::<Result<_>>()?;
    Ok((ids, created))
}

/// Stores `items` inside `tx`. Returns the outcomes and the series
/// resolved, which the caller adds to its cache once `tx` committed.
async fn commit(
    tx: &Transaction<'_>,
    cache: &Mutex<SeriesCache>,
    items: &[IngestItem],
    outbox: bool,
    now_ms: i64,
) -> Result<(Vec<ItemOutcome>, NewSeries)> {
    // Every distinct (device, seq), and for each reading which one it is.
    let mut keys: Vec<Candidate> = Vec::new();
    let mut key_of: HashMap<(&str, i64), usize> = HashMap::new();
    let mut refs: Vec<usize> = Vec::new();
    for item in items {
        if let IngestItem::Readings {
            device, readings, ..
        } = item
        {
            for r in readings {
                let seq = seq_i64(r.seq)?;
                let k = *key_of.entry((device.as_str(), seq)).or_insert_with(|| {
                    keys.push(Candidate {
                        device: device.as_str(),
                        seq,
                        reading: r,
                    });
                    keys.len() - 1
                });
                refs.push(k);
            }
        }
    }
    let held = if keys.is_empty() {
        Vec::new()
    } else {
        insert_readings(tx, &keys).await?
    };
    let plan = Plan::build(items, &keys, &refs, &held, now_ms)?;
    let (series_ids, created) = resolve_series(tx, cache, &plan.series).await?;

    // Points, rollups merged per bucket in point order (so that sums add up
    // in the same order as SQLite's), and the export batch.
    let n = plan.points.len();
    let (mut p_series, mut p_ts, mut p_seq, mut p_value) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut rollups: HashMap<RollupKey, RollupRow> = HashMap::new();
    let mut exported = Vec::new();
    for p in &plan.points {
        let series = series_ids[p.slot];
        p_series.push(series);
        p_ts.push(p.ts);
        p_seq.push(p.seq);
        p_value.push(p.value);
        let point = RollupRow::point(p.ts, p.seq, p.value);
        for res in Resolution::ROLLUPS_COARSEST_FIRST {
            let key = (series, res.millis(), res.bucket_of(p.ts));
            rollups
                .entry(key)
                .and_modify(|acc| acc.merge(&point))
                .or_insert(RollupRow {
                    bucket: key.2,
                    ..point
                });
        }
        if outbox {
            exported.push(PointRecord {
                device: p.device.to_owned(),
                metric: p.metric.to_owned(),
                ts_ms: p.ts,
                value: p.value,
                seq: p.seq_u64,
            });
        }
    }

    // The writes below are independent: pipelined (sent together, answered
    // in order), so they wait for the server about once, not once each.
    tokio::try_join!(
        insert_points(tx, &p_series, &p_ts, &p_seq, &p_value),
        upsert_rollups(tx, rollups),
        insert_rejected(tx, &plan.rejected),
        insert_presence(tx, &plan.presence),
        upsert_states(tx, &plan.states),
        upsert_stats(tx, &plan.stats),
        update_devices(tx, &plan.seen),
        append_outbox(tx, &exported),
    )?;
    Ok((plan.outcomes, created))
}

async fn insert_points(
    tx: &Transaction<'_>,
    series: &[i64],
    ts: &[i64],
    seq: &[i64],
    value: &[f64],
) -> Result<()> {
    if series.is_empty() {
        return Ok(());
    }
    // DO NOTHING, as SQLite's INSERT OR IGNORE: a metric named twice in one
    // reading is stored once.
    let stmt = tx
        .prepare_cached(
            "INSERT INTO points (series_id, ts, seq, value)
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::float8[])
             ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(db)?;
    tx.execute(&stmt, &[&series, &ts, &seq, &value])
        .await
        .map_err(db)?;
    Ok(())
}

/// Upserts each touched bucket once, merging with what is stored: exact
/// for any arrival order, late data included.
async fn upsert_rollups(
    tx: &Transaction<'_>,
    rollups: HashMap<RollupKey, RollupRow>,
) -> Result<()> {
    if rollups.is_empty() {
        return Ok(());
    }
    let mut rows: Vec<(RollupKey, RollupRow)> = rollups.into_iter().collect();
    rows.sort_unstable_by_key(|(k, _)| *k);
    let n = rows.len();
    let (mut series, mut res, mut bucket) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut min, mut max, mut sum, mut count) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut last_ts, mut last_seq, mut last) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for ((s, r, b), row) in &rows {
        series.push(*s);
        res.push(*r);
        bucket.push(*b);
        min.push(row.min);
        max.push(row.max);
        sum.push(row.sum);
        count.push(
            i64::try_from(row.count)
                .map_err(|_| StoreError::Corrupt(format!("rollup count {}", row.count)))?,
        );
        last_ts.push(row.last_key.0);
        last_seq.push(row.last_key.1);
        last.push(row.last);
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO rollups
               (series_id, resolution, bucket, min, max, sum, count, last_ts, last_seq, last_value)
             SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::float8[],
                                  $5::float8[], $6::float8[], $7::bigint[], $8::bigint[],
                                  $9::bigint[], $10::float8[])
             ON CONFLICT (series_id, resolution, bucket) DO UPDATE SET
               min = LEAST(rollups.min, excluded.min),
               max = GREATEST(rollups.max, excluded.max),
               sum = rollups.sum + excluded.sum,
               count = rollups.count + excluded.count,
               last_ts = CASE WHEN (excluded.last_ts, excluded.last_seq) > (rollups.last_ts, rollups.last_seq)
                              THEN excluded.last_ts ELSE rollups.last_ts END,
               last_seq = CASE WHEN (excluded.last_ts, excluded.last_seq) > (rollups.last_ts, rollups.last_seq)
                              THEN excluded.last_seq ELSE rollups.last_seq END,
               last_value = CASE WHEN (excluded.last_ts, excluded.last_seq) > (rollups.last_ts, rollups.last_seq)
                              THEN excluded.last_value ELSE rollups.last_value END",
        )
        .await
        .map_err(db)?;
    tx.execute(
        &stmt,
        &[
            &series, &res, &bucket, &min, &max, &sum, &count, &last_ts, &last_seq, &last,
        ],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Appends the rejected rows in item order (ids are given in that order),
/// then keeps the newest [`REJECTED_KEPT`].
async fn insert_rejected(tx: &Transaction<'_>, rows: &[RejectedRow<'_>]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let devices: Vec<&str> = rows.iter().map(|r| r.device).collect();
    let at: Vec<i64> = rows.iter().map(|r| r.at).collect();
    let categories: Vec<&str> = rows.iter().map(|r| r.category).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind).collect();
    let details: Vec<&str> = rows.iter().map(|r| r.detail.as_ref()).collect();
    let seqs: Vec<Option<i64>> = rows.iter().map(|r| r.seq).collect();
    let payloads: Vec<&[u8]> = rows.iter().map(|r| r.payload).collect();
    let lens: Vec<i64> = rows.iter().map(|r| r.payload_len).collect();
    let insert = tx
        .prepare_cached(
            "INSERT INTO rejected (device_id, at, category, kind, detail, seq, payload, payload_len)
             SELECT d, a, c, k, t, s, p, l
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                         $6::bigint[], $7::bytea[], $8::bigint[])
                  WITH ORDINALITY AS u (d, a, c, k, t, s, p, l, n)
             ORDER BY n",
        )
        .await
        .map_err(db)?;
    tx.execute(
        &insert,
        &[
            &devices,
            &at,
            &categories,
            &kinds,
            &details,
            &seqs,
            &payloads,
            &lens,
        ],
    )
    .await
    .map_err(db)?;
    let trim = tx
        .prepare_cached(
            "DELETE FROM rejected
             WHERE id < (SELECT id FROM rejected ORDER BY id DESC OFFSET $1 LIMIT 1)",
        )
        .await
        .map_err(db)?;
    tx.execute(&trim, &[&(REJECTED_KEPT - 1)])
        .await
        .map_err(db)?;
    Ok(())
}

/// Appends presence events in item order.
async fn insert_presence(tx: &Transaction<'_>, events: &[&PresenceRecord]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let devices: Vec<&str> = events.iter().map(|p| p.device.as_str()).collect();
    let at: Vec<i64> = events.iter().map(|p| p.at_ms).collect();
    let online: Vec<bool> = events.iter().map(|p| p.online).collect();
    let reasons: Vec<Option<&str>> = events.iter().map(|p| p.reason.as_deref()).collect();
    let addrs: Vec<Option<&str>> = events.iter().map(|p| p.addr.as_deref()).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO presence_events (device_id, at, online, reason, addr)
             SELECT d, a, o, r, x
             FROM UNNEST($1::text[], $2::bigint[], $3::bool[], $4::text[], $5::text[])
                  WITH ORDINALITY AS u (d, a, o, r, x, n)
             ORDER BY n",
        )
        .await
        .map_err(db)?;
    tx.execute(&stmt, &[&devices, &at, &online, &reasons, &addrs])
        .await
        .map_err(db)?;
    Ok(())
}

/// Keeps each device's latest reported state; an older report arriving
/// late does not replace a newer one.
async fn upsert_states(
    tx: &Transaction<'_>,
    states: &HashMap<&str, (i64, &serde_json::Value)>,
) -> Result<()> {
    if states.is_empty() {
        return Ok(());
    }
    let mut rows: Vec<_> = states.iter().collect();
    rows.sort_unstable_by_key(|(device, _)| **device);
    let devices: Vec<&str> = rows.iter().map(|(d, _)| **d).collect();
    let reported: Vec<String> = rows.iter().map(|(_, (_, v))| v.to_string()).collect();
    let at: Vec<i64> = rows.iter().map(|(_, (at, _))| *at).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO device_state (device_id, reported, updated_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[])
             ON CONFLICT (device_id) DO UPDATE SET reported = excluded.reported,
               updated_at = excluded.updated_at
             WHERE excluded.updated_at >= device_state.updated_at",
        )
        .await
        .map_err(db)?;
    tx.execute(&stmt, &[&devices, &reported, &at])
        .await
        .map_err(db)?;
    Ok(())
}

/// Adds the batch's counters to each device's.
async fn upsert_stats(tx: &Transaction<'_>, stats: &HashMap<&str, StatsDelta>) -> Result<()> {
    if stats.is_empty() {
        return Ok(());
    }
    let mut rows: Vec<_> = stats.iter().collect();
    rows.sort_unstable_by_key(|(device, _)| **device);
    let devices: Vec<&str> = rows.iter().map(|(d, _)| **d).collect();
    let readings: Vec<i64> = rows.iter().map(|(_, s)| s.readings).collect();
    let duplicates: Vec<i64> = rows.iter().map(|(_, s)| s.duplicates).collect();
    let rejected: Vec<i64> = rows.iter().map(|(_, s)| s.rejected).collect();
    let conflicts: Vec<i64> = rows.iter().map(|(_, s)| s.conflicts).collect();
    let last_seq: Vec<Option<i64>> = rows.iter().map(|(_, s)| s.last_seq).collect();
    let last_at: Vec<Option<i64>> = rows.iter().map(|(_, s)| s.last_reading_at).collect();
    let flagged_at: Vec<Option<i64>> = rows
        .iter()
        .map(|(_, s)| s.flag.as_ref().map(|f| f.0))
        .collect();
    let reasons: Vec<Option<&str>> = rows
        .iter()
        .map(|(_, s)| s.flag.as_ref().map(|f| f.1.as_str()))
        .collect();
    // GREATEST ignores NULLs, as SQLite's max(coalesce(a, b), coalesce(b, a)).
    let stmt = tx
        .prepare_cached(
            "INSERT INTO device_stats (device_id, readings, duplicates, rejected, conflicts,
                 last_seq, last_reading_at, flagged_at, flag_reason)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[],
                                  $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[],
                                  $9::text[])
             ON CONFLICT (device_id) DO UPDATE SET
               readings = device_stats.readings + excluded.readings,
               duplicates = device_stats.duplicates + excluded.duplicates,
               rejected = device_stats.rejected + excluded.rejected,
               conflicts = device_stats.conflicts + excluded.conflicts,
               last_seq = GREATEST(device_stats.last_seq, excluded.last_seq),
               last_reading_at = COALESCE(excluded.last_reading_at, device_stats.last_reading_at),
               flagged_at = COALESCE(excluded.flagged_at, device_stats.flagged_at),
               flag_reason = COALESCE(excluded.flag_reason, device_stats.flag_reason)",
        )
        .await
        .map_err(db)?;
    tx.execute(
        &stmt,
        &[
            &devices,
            &readings,
            &duplicates,
            &rejected,
            &conflicts,
            &last_seq,
            &last_at,
            &flagged_at,
            &reasons,
        ],
    )
    .await
    .map_err(db)?;
    Ok(())
}

/// Presence and last contact on the registry's device rows (devices that
/// are not registered are left alone). Contact by readings alone moves
/// `last_seen` in steps of at least [`LAST_SEEN_STEP_MS`].
async fn update_devices(tx: &Transaction<'_>, seen: &HashMap<&str, Seen>) -> Result<()> {
    let mut rows: Vec<_> = seen.iter().filter(|(_, s)| s.at.is_some()).collect();
    if rows.is_empty() {
        return Ok(());
    }
    rows.sort_unstable_by_key(|(device, _)| **device);
    let devices: Vec<&str> = rows.iter().map(|(d, _)| **d).collect();
    let online: Vec<Option<bool>> = rows.iter().map(|(_, s)| s.online).collect();
    let at: Vec<Option<i64>> = rows.iter().map(|(_, s)| s.at).collect();
    let stmt = tx
        .prepare_cached(
            "UPDATE devices AS d SET online = COALESCE(u.online, d.online),
                 last_seen = GREATEST(COALESCE(d.last_seen, 0), u.at)
             FROM UNNEST($1::text[], $2::bool[], $3::bigint[]) AS u (id, online, at)
             WHERE d.id = u.id
               AND (u.online IS NOT NULL OR d.last_seen IS NULL OR d.last_seen <= u.at - $4)",
        )
        .await
        .map_err(db)?;
    tx.execute(&stmt, &[&devices, &online, &at, &LAST_SEEN_STEP_MS])
        .await
        .map_err(db)?;
    Ok(())
}

/// Queues the stored points for export, as one JSON array.
async fn append_outbox(tx: &Transaction<'_>, points: &[PointRecord]) -> Result<()> {
    let Some(first) = points.first() else {
        return Ok(());
    };
    let body = serde_json::to_vec(points)
        .map_err(|e| StoreError::Corrupt(format!("outbox batch: {e}")))?;
    // Held until commit: see OUTBOX_LOCK.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&OUTBOX_LOCK])
        .await
        .map_err(db)?;
    let stmt = tx
        .prepare_cached("INSERT INTO export_outbox (at, body) VALUES ($1, $2)")
        .await
        .map_err(db)?;
    tx.execute(&stmt, &[&first.ts_ms, &body])
        .await
        .map_err(db)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Reads.

fn count(row: &Row, i: usize) -> Result<u64> {
    let n: i64 = get(row, i)?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative count {n}")))
}

fn seq_u64(row: &Row, i: usize) -> Result<Option<u64>> {
    get::<Option<i64>>(row, i)?
        .map(|s| u64::try_from(s).map_err(|_| StoreError::Corrupt(format!("negative seq {s}"))))
        .transpose()
}

/// Answers a chart query: one range scan of a rollup or of the raw points,
/// merged into buckets by the shared [`BucketAggregator`].
async fn query(c: &impl GenericClient, q: &SeriesQuery) -> Result<Series> {
    let plan = QueryPlan::for_query(q.from_ms, q.to_ms, q.buckets);
    let mut agg = BucketAggregator::new(plan.origin, plan.bucket_ms);
    // The series id comes from a scalar subquery, so the scan has an
    // equality on the key's first column and returns rows in key order.
    if plan.resolution == Resolution::Raw {
        let stmt = c
            .prepare_cached(
                "SELECT ts, seq, value FROM points
                 WHERE series_id = (SELECT id FROM series WHERE device_id = $1 AND metric = $2)
                   AND ts >= $3 AND ts < $4
                 ORDER BY ts, seq",
            )
            .await
            .map_err(db)?;
        for row in c
            .query(
                &stmt,
                &[&q.device.as_str(), &q.metric.as_str(), &q.from_ms, &q.to_ms],
            )
            .await
            .map_err(db)?
        {
            agg.push(RollupRow::point(
                get(&row, 0)?,
                get(&row, 1)?,
                get(&row, 2)?,
            ));
        }
    } else {
        let stmt = c
            .prepare_cached(
                "SELECT bucket, min, max, sum, count, last_ts, last_seq, last_value FROM rollups
                 WHERE series_id = (SELECT id FROM series WHERE device_id = $1 AND metric = $2)
                   AND resolution = $3 AND bucket >= $4 AND bucket < $5
                 ORDER BY bucket",
            )
            .await
            .map_err(db)?;
        for row in c
            .query(
                &stmt,
                &[
                    &q.device.as_str(),
                    &q.metric.as_str(),
                    &plan.resolution.millis(),
                    &plan.origin,
                    &q.to_ms,
                ],
            )
            .await
            .map_err(db)?
        {
            agg.push(RollupRow {
                bucket: get(&row, 0)?,
                min: get(&row, 1)?,
                max: get(&row, 2)?,
                sum: get(&row, 3)?,
                count: count(&row, 4)?,
                last_key: (get(&row, 5)?, get(&row, 6)?),
                last: get(&row, 7)?,
            });
        }
    }
    Ok(Series {
        resolution: plan.resolution,
        bucket_ms: plan.bucket_ms,
        buckets: agg.finish(),
    })
}

/// One page of an export, in `(series, ts, seq)` order.
async fn export(
    c: &impl GenericClient,
    filter: &PointFilter,
    after: Option<PointCursor>,
    limit: u32,
) -> Result<(Vec<PointRecord>, Option<PointCursor>)> {
    let after = after.unwrap_or(PointCursor {
        series: i64::MIN,
        ts_ms: i64::MIN,
        seq: i64::MIN,
    });
    let stmt = c
        .prepare_cached(
            "SELECT p.series_id, p.ts, p.seq, p.value, s.device_id, s.metric
             FROM points p JOIN series s ON s.id = p.series_id
             WHERE (p.series_id, p.ts, p.seq) > ($1, $2, $3)
               AND ($4::text IS NULL OR s.device_id = $4::text)
               AND p.ts >= $5 AND p.ts < $6
             ORDER BY p.series_id, p.ts, p.seq LIMIT $7",
        )
        .await
        .map_err(db)?;
    let rows = c
        .query(
            &stmt,
            &[
                &after.series,
                &after.ts_ms,
                &after.seq,
                &filter.device.as_ref().map(|d| d.as_str()),
                &filter.from_ms.unwrap_or(i64::MIN),
                &filter.to_ms.unwrap_or(i64::MAX),
                &i64::from(limit),
            ],
        )
        .await
        .map_err(db)?;
    let mut last = None;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let cursor = PointCursor {
            series: get(row, 0)?,
            ts_ms: get(row, 1)?,
            seq: get(row, 2)?,
        };
        out.push(PointRecord {
            ts_ms: cursor.ts_ms,
            seq: u64::try_from(cursor.seq)
                .map_err(|_| StoreError::Corrupt(format!("negative seq {}", cursor.seq)))?,
            value: get(row, 3)?,
            device: get(row, 4)?,
            metric: get(row, 5)?,
        });
        last = Some(cursor);
    }
    let next = if out.len() == limit as usize {
        last
    } else {
        None
    };
    Ok((out, next))
}

/// Retention: deletes what left its window. Joining `series` lets each
/// delete walk the primary key series by series, as SQLite's loop does.
async fn prune(
    tx: &Transaction<'_>,
    raw_before: i64,
    minute_before: i64,
    hour_before: Option<i64>,
    presence_before: i64,
) -> Result<Pruned> {
    let points = tx
        .execute(
            "DELETE FROM points p USING series s WHERE p.series_id = s.id AND p.ts < $1",
            &[&raw_before],
        )
        .await
        .map_err(db)?;
    let rollups = "DELETE FROM rollups r USING series s
                   WHERE r.series_id = s.id AND r.resolution = $1 AND r.bucket < $2";
    let mut rolled = tx
        .execute(rollups, &[&Resolution::Minute.millis(), &minute_before])
        .await
        .map_err(db)?;
    if let Some(hour_before) = hour_before {
        rolled += tx
            .execute(rollups, &[&Resolution::Hour.millis(), &hour_before])
            .await
            .map_err(db)?;
    }
    let readings = tx
        .execute("DELETE FROM readings WHERE ts < $1", &[&raw_before])
        .await
        .map_err(db)?;
    let presence = tx
        .execute(
            "DELETE FROM presence_events WHERE at < $1",
            &[&presence_before],
        )
        .await
        .map_err(db)?;
    Ok(Pruned {
        points,
        readings,
        rollups: rolled,
        presence,
    })
}

async fn rejected(
    c: &impl GenericClient,
    device: Option<&str>,
    limit: u32,
) -> Result<Vec<RejectedRecord>> {
    const COLUMNS: &str =
        "SELECT id, device_id, at, category, kind, detail, seq, payload, payload_len FROM rejected";
    let limit = i64::from(limit);
    let rows = match device {
        Some(device) => {
            let stmt = c
                .prepare_cached(&format!(
                    "{COLUMNS} WHERE device_id = $1 ORDER BY id DESC LIMIT $2"
                ))
                .await
                .map_err(db)?;
            c.query(&stmt, &[&device, &limit]).await
        }
        None => {
            let stmt = c
                .prepare_cached(&format!("{COLUMNS} ORDER BY id DESC LIMIT $1"))
                .await
                .map_err(db)?;
            c.query(&stmt, &[&limit]).await
        }
    }
    .map_err(db)?;
    rows.iter()
        .map(|r| {
            Ok(RejectedRecord {
                id: get(r, 0)?,
                device: get(r, 1)?,
                at_ms: get(r, 2)?,
                category: get(r, 3)?,
                kind: get(r, 4)?,
                detail: get(r, 5)?,
                seq: seq_u64(r, 6)?,
                payload: get(r, 7)?,
                payload_len: count(r, 8)?,
            })
        })
        .collect()
}

async fn device_stats(c: &impl GenericClient, device: &str) -> Result<DeviceTelemetryStats> {
    let stmt = c
        .prepare_cached(
            "SELECT readings, duplicates, rejected, conflicts, last_seq, last_reading_at,
                    flagged_at, flag_reason FROM device_stats WHERE device_id = $1",
        )
        .await
        .map_err(db)?;
    let mut stats = match c.query_opt(&stmt, &[&device]).await.map_err(db)? {
        Some(r) => DeviceTelemetryStats {
            readings: count(&r, 0)?,
            duplicates: count(&r, 1)?,
            rejected: count(&r, 2)?,
            conflicts: count(&r, 3)?,
            last_seq: seq_u64(&r, 4)?,
            last_reading_at: get(&r, 5)?,
            flagged_at: get(&r, 6)?,
            flag_reason: get(&r, 7)?,
            metrics: Vec::new(),
        },
        None => DeviceTelemetryStats::default(),
    };
    let stmt = c
        .prepare_cached("SELECT metric FROM series WHERE device_id = $1 ORDER BY metric")
        .await
        .map_err(db)?;
    stats.metrics = c
        .query(&stmt, &[&device])
        .await
        .map_err(db)?
        .iter()
        .map(|r| get(r, 0))
        .collect::<Result<_>>()?;
    Ok(stats)
}

async fn presence_history(
    c: &impl GenericClient,
    device: &str,
    limit: u32,
) -> Result<Vec<PresenceHistoryRecord>> {
    let stmt = c
        .prepare_cached(
            "SELECT at, online, reason, addr FROM presence_events
             WHERE device_id = $1 ORDER BY at DESC, id DESC LIMIT $2",
        )
        .await
        .map_err(db)?;
    c.query(&stmt, &[&device, &i64::from(limit)])
        .await
        .map_err(db)?
        .iter()
        .map(|r| {
            Ok(PresenceHistoryRecord {
                at_ms: get(r, 0)?,
                online: get(r, 1)?,
                reason: get(r, 2)?,
                addr: get(r, 3)?,
            })
        })
        .collect()
}

async fn reported_state(
    c: &impl GenericClient,
    device: &str,
) -> Result<Option<(serde_json::Value, i64)>> {
    let stmt = c
        .prepare_cached("SELECT reported, updated_at FROM device_state WHERE device_id = $1")
        .await
        .map_err(db)?;
    let Some(row) = c.query_opt(&stmt, &[&device]).await.map_err(db)? else {
        return Ok(None);
    };
    let text: &str = get(&row, 0)?;
    let value = serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("reported state of {device}: {e}")))?;
    Ok(Some((value, get(&row, 1)?)))
}

async fn outbox_peek(c: &impl GenericClient, limit: u32) -> Result<Vec<(i64, Vec<PointRecord>)>> {
    let stmt = c
        .prepare_cached("SELECT id, body FROM export_outbox ORDER BY id LIMIT $1")
        .await
        .map_err(db)?;
    c.query(&stmt, &[&i64::from(limit)])
        .await
        .map_err(db)?
        .iter()
        .map(|r| {
            let id: i64 = get(r, 0)?;
            let body: &[u8] = get(r, 1)?;
            let points = serde_json::from_slice(body)
                .map_err(|e| StoreError::Corrupt(format!("outbox batch {id}: {e}")))?;
            Ok((id, points))
        })
        .collect()
}

#[async_trait::async_trait]
impl TelemetryStore for PostgresStore {
    async fn commit_ingest(
        &self,
        items: Arc<[IngestItem]>,
        outbox: bool,
    ) -> Result<Vec<ItemOutcome>> {
        let (outcomes, created) = self
            .retrying(|| async {
                let mut client = self.client().await?;
                let tx = self.begin(&mut client).await?;
                let (_, now) = now_ms();
                let out = commit(&tx, &self.inner.series, &items, outbox, now).await?;
                tx.commit().await.map_err(db)?;
                Ok(out)
            })
            .await?;
        // Only now: a series of a rolled-back attempt may not exist. The
        // cache holds nothing a panic could leave half-written.
        self.inner
            .series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(created);
        Ok(outcomes)
    }

    async fn query_series(&self, q: &SeriesQuery) -> Result<Series> {
        self.retrying(|| async { query(&self.client().await?, q).await })
            .await
    }

    async fn export_points(
        &self,
        filter: &PointFilter,
        after: Option<PointCursor>,
        limit: u32,
    ) -> Result<(Vec<PointRecord>, Option<PointCursor>)> {
        self.retrying(|| async { export(&self.client().await?, filter, after, limit).await })
            .await
    }

    async fn prune(
        &self,
        raw_before_ms: i64,
        minute_before_ms: i64,
        hour_before_ms: Option<i64>,
        presence_before_ms: i64,
    ) -> Result<Pruned> {
        self.retrying(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let pruned = prune(
                &tx,
                raw_before_ms,
                minute_before_ms,
                hour_before_ms,
                presence_before_ms,
            )
            .await?;
            tx.commit().await.map_err(db)?;
            Ok(pruned)
        })
        .await
    }

    async fn oldest_point(&self) -> Result<Option<i64>> {
        self.retrying(|| async {
            let row = self
                .client()
                .await?
                .query_one("SELECT min(ts) FROM readings", &[])
                .await
                .map_err(db)?;
            get(&row, 0)
        })
        .await
    }

    async fn rejected(&self, device: Option<&DeviceId>, limit: u32) -> Result<Vec<RejectedRecord>> {
        let device = device.map(DeviceId::as_str);
        self.retrying(|| async { rejected(&self.client().await?, device, limit).await })
            .await
    }

    async fn device_telemetry(&self, device: &DeviceId) -> Result<DeviceTelemetryStats> {
        self.retrying(|| async { device_stats(&self.client().await?, device.as_str()).await })
            .await
    }

    async fn presence_history(
        &self,
        device: &DeviceId,
        limit: u32,
    ) -> Result<Vec<PresenceHistoryRecord>> {
        self.retrying(|| async {
            presence_history(&self.client().await?, device.as_str(), limit).await
        })
        .await
    }

    async fn metric_names(&self, limit: u32) -> Result<Vec<String>> {
        self.retrying(|| async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached("SELECT DISTINCT metric FROM series ORDER BY metric LIMIT $1")
                .await
                .map_err(db)?;
            c.query(&stmt, &[&i64::from(limit)])
                .await
                .map_err(db)?
                .iter()
                .map(|r| get(r, 0))
                .collect()
        })
        .await
    }

    async fn readings_per_minute(&self, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, u64)>> {
        let from = from_ms - from_ms.rem_euclid(60_000);
        self.retrying(|| async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached(
                    "SELECT ts - (ts % 60000) AS minute, count(*) FROM readings
                     WHERE ts >= $1 AND ts < $2 GROUP BY minute ORDER BY minute",
                )
                .await
                .map_err(db)?;
            let mut out = Vec::new();
            for row in c.query(&stmt, &[&from, &to_ms]).await.map_err(db)? {
                let minute: i64 = get(&row, 0)?;
                let n: i64 = get(&row, 1)?;
                out.push((minute, u64::try_from(n).unwrap_or(0)));
            }
            Ok(out)
        })
        .await
    }

    async fn reported_state(&self, device: &DeviceId) -> Result<Option<(serde_json::Value, i64)>> {
        self.retrying(|| async { reported_state(&self.client().await?, device.as_str()).await })
            .await
    }

    async fn outbox_peek(&self, limit: u32) -> Result<Vec<(i64, Vec<PointRecord>)>> {
        self.retrying(|| async { outbox_peek(&self.client().await?, limit).await })
            .await
    }

    async fn outbox_ack(&self, upto: i64) -> Result<()> {
        self.retrying(|| async {
            self.client()
                .await?
                .execute("DELETE FROM export_outbox WHERE id <= $1", &[&upto])
                .await
                .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn outbox_failed(&self, id: i64) -> Result<()> {
        self.retrying(|| async {
            self.client()
                .await?
                .execute(
                    "UPDATE export_outbox SET attempts = attempts + 1 WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(db)?;
            Ok(())
        })
        .await
    }
}

//! The store's commit counters, read from Rampart's plain-HTTP `/metrics`
//! before and after a run: how many group commits the telemetry committer
//! made, how many messages each carried, and how much of the time it was
//! busy committing. A committer busy all the time is saturated: batches
//! grow and every acknowledgement waits for a whole commit in progress.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// One reading of the counters.
#[derive(Debug, Clone, Copy)]
pub struct CommitCounters {
    at: Instant,
    commits: f64,
    busy_s: f64,
    items: f64,
}

/// Reads the counters at `addr` (`web.metrics_addr`).
pub fn read(addr: SocketAddr) -> Result<CommitCounters> {
    let timeout = Duration::from_secs(5);
    let mut conn = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to /metrics at {addr}"))?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    // HTTP/1.0: the body ends with the connection, never chunked.
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text).context("reading /metrics")?;
    let at = Instant::now();
    let value = |name: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .with_context(|| format!("/metrics has no {name}"))?
            .trim()
            .parse()
            .with_context(|| format!("/metrics: {name} is not a number"))
    };
    Ok(CommitCounters {
        at,
        commits: value("rampart_ingest_commit_seconds_count")?,
        busy_s: value("rampart_ingest_commit_seconds_sum")?,
        items: value("rampart_ingest_commit_batch_items_sum")?,
    })
}

/// What happened between two readings, as the report's `store` object.
pub fn between(before: CommitCounters, after: CommitCounters) -> Value {
    let secs = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
    let commits = after.commits - before.commits;
    let per_commit = if commits > 0.0 {
        (after.items - before.items) / commits
    } else {
        0.0
    };
    json!({
        "commits_per_s": commits / secs,
        "messages_per_commit": per_commit,
        "committer_busy_percent": 100.0 * (after.busy_s - before.busy_s) / secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_counters_difference() {
        let t0 = Instant::now();
        let before = CommitCounters {
            at: t0,
            commits: 100.0,
            busy_s: 1.0,
            items: 500.0,
        };
        let after = CommitCounters {
            at: t0 + Duration::from_secs(2),
            commits: 300.0,
            busy_s: 2.5,
            items: 2500.0,
        };
        let v = between(before, after);
        assert_eq!(v["commits_per_s"], 100.0);
        assert_eq!(v["messages_per_commit"], 10.0);
        assert_eq!(v["committer_busy_percent"], 75.0);
    }
}

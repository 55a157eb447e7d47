//! `rampart telemetry ...`: chart queries and inspection of what the
//! pipeline stored or refused.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use rampart_proto::DeviceId;
use rampart_proto::telemetry::MetricName;
use rampart_store::telemetry::{Series, SeriesQuery, TelemetryStore};
use serde_json::json;

use std::io::Write;

use rampart_ingest::export::{ExportFormat, write_points};
use rampart_store::telemetry::PointFilter;

use crate::cli::{ExportFormatArg, GlobalArgs, TelemetryCommand};
use crate::config::Config;
use crate::output;
use crate::output::say;
use crate::platform::Platform;
use crate::timespec;

/// Runs a telemetry command.
pub async fn run(g: &GlobalArgs, config: Config, cmd: TelemetryCommand) -> Result<ExitCode> {
    let p = Platform::open(&g.data_dir, config).await?;
    let store: &dyn TelemetryStore = &p.store;
    match cmd {
        TelemetryCommand::Query {
            device,
            metric,
            from,
            to,
            buckets,
        } => {
            let now = timespec::now_ms();
            let from_ms = timespec::parse(&from, now).context("--from")?;
            let to_ms = timespec::parse(&to, now).context("--to")?;
            if to_ms <= from_ms {
                bail!("--to must be after --from");
            }
            let metrics = match metric {
                Some(m) => {
                    vec![MetricName::parse(&m).map_err(|e| anyhow::anyhow!("--metric: {e}"))?]
                }
                None => store
                    .device_telemetry(&device)
                    .await?
                    .metrics
                    .iter()
                    .filter_map(|m| MetricName::parse(m).ok())
                    .collect(),
            };
            let single = metrics.len() == 1;
            let mut answers = Vec::new();
            for metric in metrics {
                let series = store
                    .query_series(&SeriesQuery {
                        device: device.clone(),
                        metric: metric.clone(),
                        from_ms,
                        to_ms,
                        buckets,
                    })
                    .await?;
                answers.push((metric, series));
            }
            if g.json {
                let docs: Vec<_> = answers
                    .iter()
                    .map(|(m, s)| series_json(&device, m, s))
                    .collect();
                // One metric asked for (or held): the object; otherwise a list.
                match (single, docs.as_slice()) {
                    (true, [one]) => output::json(one)?,
                    _ => output::json(&docs)?,
                }
            } else if answers.is_empty() {
                say!("{device} has no telemetry");
            } else {
                for (m, s) in &answers {
                    print_series(&device, m, s);
                }
            }
        }
        TelemetryCommand::Rejected { device, limit } => {
            let rows = store.rejected(device.as_ref(), limit).await?;
            if g.json {
                let docs: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        json!({
                            "device": r.device,
                            "at": timespec::format_ms(r.at_ms),
                            "category": r.category,
                            "kind": r.kind,
                            "detail": r.detail,
                            "seq": r.seq,
                            "payload_len": r.payload_len,
                            "payload_prefix": String::from_utf8_lossy(&r.payload),
                        })
                    })
                    .collect();
                output::json(&docs)?;
            } else if rows.is_empty() {
                say!("no rejected messages");
            } else {
                for r in rows {
                    say!(
                        "{}  {:<20} {:<10} {:<24} {}",
                        timespec::format_ms(r.at_ms),
                        r.device,
                        r.category,
                        r.kind,
                        r.detail
                    );
                }
            }
        }
        TelemetryCommand::Stats { device } => stats(g, store, &device).await?,
        TelemetryCommand::Export {
            format,
            device,
            from,
            to,
            out,
        } => {
            let now = timespec::now_ms();
            let filter = PointFilter {
                device,
                from_ms: from
                    .map(|t| timespec::parse(&t, now).context("--from"))
                    .transpose()?,
                to_ms: to
                    .map(|t| timespec::parse(&t, now).context("--to"))
                    .transpose()?,
            };
            let format = match format {
                ExportFormatArg::Csv => ExportFormat::Csv,
                ExportFormatArg::Jsonl => ExportFormat::Jsonl,
            };
            let written = match out {
                Some(path) => {
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    let mut w = std::io::BufWriter::new(file);
                    let n = write_points(store, &filter, format, &mut w).await?;
                    w.into_inner()
                        .map_err(|e| e.into_error())
                        .and_then(|f| f.sync_all())
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    n
                }
                None => {
                    let mut w = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
                    let n = write_points(store, &filter, format, &mut w).await?;
                    w.flush().context("cannot write to standard output")?;
                    n
                }
            };
            tracing::info!(points = written, "exported");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn series_json(device: &DeviceId, metric: &MetricName, s: &Series) -> serde_json::Value {
    json!({
        "device": device,
        "metric": metric,
        "resolution": s.resolution.as_str(),
        "bucket_ms": s.bucket_ms,
        "buckets": s.buckets.iter().map(|b| json!({
            "start": timespec::format_ms(b.start),
            "min": b.min,
            "max": b.max,
            "avg": b.avg,
            "count": b.count,
            "last": b.last,
        })).collect::<Vec<_>>(),
    })
}

fn print_series(device: &DeviceId, metric: &MetricName, s: &Series) {
    say!(
        "{device} {metric}: {} buckets of {} ms from {} data",
        s.buckets.len(),
        s.bucket_ms,
        s.resolution.as_str()
    );
    say!(
        "{:<25} {:>12} {:>12} {:>12} {:>8} {:>12}",
        "start",
        "min",
        "max",
        "avg",
        "count",
        "last"
    );
    for b in &s.buckets {
        say!(
            "{:<25} {:>12.3} {:>12.3} {:>12.3} {:>8} {:>12.3}",
            timespec::format_ms(b.start),
            b.min,
            b.max,
            b.avg,
            b.count,
            b.last
        );
    }
}

async fn stats(g: &GlobalArgs, store: &dyn TelemetryStore, device: &DeviceId) -> Result<()> {
    let stats = store.device_telemetry(device).await?;
    let state = store.reported_state(device).await?;
    let presence = store.presence_history(device, 20).await?;
    if g.json {
        output::json(&json!({
            "device": device,
            "stats": stats,
            "reported_state": state.as_ref().map(|(v, at)| json!({"state": v, "at": timespec::format_ms(*at)})),
            "presence": presence.iter().map(|p| json!({
                "at": timespec::format_ms(p.at_ms),
                "online": p.online,
                "reason": p.reason,
                "addr": p.addr,
            })).collect::<Vec<_>>(),
        }))?;
        return Ok(());
    }
    say!("device      {device}");
    say!(
        "readings    {} stored, {} duplicates, {} rejected, {} sequence conflicts",
        stats.readings,
        stats.duplicates,
        stats.rejected,
        stats.conflicts
    );
    if let Some(seq) = stats.last_seq {
        say!("last seq    {seq}");
    }
    if let Some(at) = stats.flagged_at {
        say!(
            "FLAGGED     {} ({})",
            timespec::format_ms(at),
            stats.flag_reason.as_deref().unwrap_or("")
        );
    }
    say!("metrics     {}", stats.metrics.join(", "));
    if let Some((v, at)) = state {
        say!("state       {v} (at {})", timespec::format_ms(at));
    }
    for p in presence {
        say!(
            "presence    {} {} {}",
            timespec::format_ms(p.at_ms),
            if p.online { "online " } else { "offline" },
            p.reason.or(p.addr).unwrap_or_default()
        );
    }
    Ok(())
}

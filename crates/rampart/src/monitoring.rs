//! What `/metrics` and `/readyz` show of the broker, the pipeline and the
//! control plane: their counters named and labelled for Prometheus, and
//! the broker's readiness. The web part writes the format; this module
//! only knows the other parts' counters (the web part must not).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rampart_broker::Broker;
use rampart_broker::metrics::Metrics as BrokerMetrics;
use rampart_ingest::PipelineMetrics;
use rampart_web::Monitoring;
use rampart_web::metrics::{MetricKind, MetricsText};

use crate::control::ControlMetrics;
use crate::rollout::{REPORT_STATUSES, RolloutMetrics};

/// Label pairs of a sample, fixed in code.
type Labels = &'static [(&'static str, &'static str)];

/// One broker counter or gauge as exposed: family, help, labels.
struct Exposed {
    family: &'static str,
    kind: MetricKind,
    help: &'static str,
    labels: &'static [(&'static str, &'static str)],
}

const fn c(
    family: &'static str,
    help: &'static str,
    labels: &'static [(&'static str, &'static str)],
) -> Exposed {
    Exposed {
        family,
        kind: MetricKind::Counter,
        help,
        labels,
    }
}

/// How each broker counter is exposed; a counter missing here is still
/// exposed, as `rampart_broker_<name>_total`.
fn broker_exposed(name: &str) -> Option<Exposed> {
    Some(match name {
        "connections" => Exposed {
            family: "rampart_broker_connections",
            kind: MetricKind::Gauge,
            help: "Open MQTT connections that completed CONNECT.",
            labels: &[],
        },
        "queued_messages" => Exposed {
            family: "rampart_broker_queued_messages",
            kind: MetricKind::Gauge,
            help: "Messages queued for delivery across all sessions.",
            labels: &[],
        },
        "accepted" => c(
            "rampart_broker_connections_accepted_total",
            "TCP connections accepted by the broker.",
            &[],
        ),
        "refused_max_connections" => c(
            "rampart_broker_connections_refused_total",
            "Broker connections refused before TLS, by reason.",
            &[("reason", "max_connections")],
        ),
        "refused_rate_limited" => c(
            "rampart_broker_connections_refused_total",
            "Broker connections refused before TLS, by reason.",
            &[("reason", "rate_limited")],
        ),
        "handshake_failures" => c(
            "rampart_broker_tls_handshake_failures_total",
            "Broker TLS handshakes that failed (bad or missing certificate, garbage).",
            &[],
        ),
        "handshake_timeouts" => c(
            "rampart_broker_handshake_timeouts_total",
            "Handshakes or CONNECTs that did not finish in time.",
            &[],
        ),
        "identity_refused" => c(
            "rampart_broker_connects_refused_total",
            "CONNECTs refused, by reason.",
            &[("reason", "identity")],
        ),
        "client_id_mismatch" => c(
            "rampart_broker_connects_refused_total",
            "CONNECTs refused, by reason.",
            &[("reason", "client_id_mismatch")],
        ),
        "protocol_errors" => c(
            "rampart_broker_protocol_errors_total",
            "Connections closed for malformed packets or protocol violations.",
            &[],
        ),
        "messages_in_qos0" => c(
            "rampart_broker_messages_received_total",
            "PUBLISH packets received, by QoS.",
            &[("qos", "0")],
        ),
        "messages_in_qos1" => c(
            "rampart_broker_messages_received_total",
            "PUBLISH packets received, by QoS.",
            &[("qos", "1")],
        ),
        "messages_in_qos2" => c(
            "rampart_broker_messages_received_total",
            "PUBLISH packets received, by QoS.",
            &[("qos", "2")],
        ),
        "messages_out" => c(
            "rampart_broker_messages_sent_total",
            "PUBLISH packets sent to subscribers.",
            &[],
        ),
        "server_publishes" => c(
            "rampart_broker_server_publishes_total",
            "Messages Rampart itself published.",
            &[],
        ),
        "acl_denied_publish" => c(
            "rampart_broker_acl_denied_total",
            "Operations refused by the ACL.",
            &[("operation", "publish")],
        ),
        "acl_denied_subscribe" => c(
            "rampart_broker_acl_denied_total",
            "Operations refused by the ACL.",
            &[("operation", "subscribe")],
        ),
        "ingest_rejected" => c(
            "rampart_broker_ingest_rejected_total",
            "Publishes the pipeline rejected.",
            &[],
        ),
        "ingest_duplicates" => c(
            "rampart_broker_ingest_duplicates_total",
            "Publishes the pipeline reported as already stored.",
            &[],
        ),
        "dropped_queue_full" => c(
            "rampart_broker_messages_dropped_total",
            "Messages dropped before delivery, by reason.",
            &[("reason", "queue_full")],
        ),
        "dropped_expired" => c(
            "rampart_broker_messages_dropped_total",
            "Messages dropped before delivery, by reason.",
            &[("reason", "expired")],
        ),
        "dropped_too_large" => c(
            "rampart_broker_messages_dropped_total",
            "Messages dropped before delivery, by reason.",
            &[("reason", "too_large")],
        ),
        "kicked_revoked" => c(
            "rampart_broker_sessions_closed_total",
            "Sessions closed by the server, by reason.",
            &[("reason", "revoked_or_disabled")],
        ),
        "taken_over" => c(
            "rampart_broker_sessions_closed_total",
            "Sessions closed by the server, by reason.",
            &[("reason", "taken_over")],
        ),
        "keepalive_timeouts" => c(
            "rampart_broker_sessions_closed_total",
            "Sessions closed by the server, by reason.",
            &[("reason", "keepalive_timeout")],
        ),
        "persist_commits" => c(
            "rampart_broker_persist_commits_total",
            "Transactions of durable broker state (sessions, queued copies, retained messages).",
            &[],
        ),
        "persist_ops" => c(
            "rampart_broker_persist_ops_total",
            "Operations written in those transactions.",
            &[],
        ),
        "persist_elided" => c(
            "rampart_broker_persist_elided_total",
            "Copies queued for persistent sessions that their subscriber acknowledged before they were written, and so were never written.",
            &[],
        ),
        _ => return None,
    })
}

/// The broker's counters, grouped into labelled families.
pub(crate) fn write_broker(m: &BrokerMetrics, t: &mut MetricsText) {
    let snapshot = m.snapshot();
    let value = |name: &str| {
        snapshot
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0.0, |(_, v)| *v as f64)
    };
    // Families in first-seen order, each with its samples.
    let mut families: Vec<(Exposed, Vec<(Labels, f64)>)> = Vec::new();
    let mut unmapped = Vec::new();
    for (name, v) in &snapshot {
        if matches!(*name, "ack_latency_us_sum" | "ack_latency_count") {
            continue;
        }
        let Some(e) = broker_exposed(name) else {
            unmapped.push((*name, *v));
            continue;
        };
        let labels = e.labels;
        match families.iter_mut().find(|(f, _)| f.family == e.family) {
            Some((_, samples)) => samples.push((labels, *v as f64)),
            None => families.push((e, vec![(labels, *v as f64)])),
        }
    }
    for (e, samples) in families {
        t.family(e.family, e.kind, e.help);
        for (labels, v) in samples {
            t.sample(e.family, labels, v);
        }
    }
    for (name, v) in unmapped {
        let family = format!("rampart_broker_{name}_total");
        t.single(&family, MetricKind::Counter, "Broker counter.", v as f64);
    }
    t.summary(
        "rampart_broker_ack_latency_seconds",
        "Time from PUBLISH received to PUBACK sent (QoS 1), including the durable commit.",
        value("ack_latency_us_sum") / 1e6,
        value("ack_latency_count") as u64,
    );
}

/// The pipeline's counters.
pub(crate) fn write_pipeline(m: &PipelineMetrics, t: &mut MetricsText) {
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let f = |c: &AtomicU64| g(c) as f64;
    t.single(
        "rampart_ingest_messages_total",
        MetricKind::Counter,
        "Messages offered to the pipeline.",
        f(&m.messages),
    );
    t.single(
        "rampart_ingest_readings_stored_total",
        MetricKind::Counter,
        "Readings stored.",
        f(&m.readings_stored),
    );
    t.single(
        "rampart_ingest_points_stored_total",
        MetricKind::Counter,
        "Points (one metric of one reading) stored.",
        f(&m.points_stored),
    );
    t.single(
        "rampart_ingest_duplicates_total",
        MetricKind::Counter,
        "Readings acknowledged as replays.",
        f(&m.duplicates),
    );
    t.single(
        "rampart_ingest_conflicts_total",
        MetricKind::Counter,
        "Readings refused as sequence conflicts.",
        f(&m.conflicts),
    );
    let (format, quota, internal) = (
        g(&m.rejected_format),
        g(&m.rejected_quota),
        g(&m.rejected_internal),
    );
    let other = g(&m.rejected).saturating_sub(format + quota + internal);
    t.family(
        "rampart_ingest_rejected_total",
        MetricKind::Counter,
        "Messages rejected, by reason (internal: the store failed).",
    );
    for (reason, v) in [
        ("format", format),
        ("quota", quota),
        ("internal", internal),
        ("other", other),
    ] {
        t.sample(
            "rampart_ingest_rejected_total",
            &[("reason", reason)],
            v as f64,
        );
    }
    t.histogram(
        "rampart_ingest_commit_seconds",
        "Time spent in group-commit transactions (each acknowledgement waits for one).",
        &m.commit_histogram(),
        g(&m.commit_micros) as f64 / 1e6,
        g(&m.commits),
    );
    t.summary(
        "rampart_ingest_commit_batch_items",
        "Items per group-commit transaction (sum and count: the mean batch size).",
        f(&m.commit_items),
        g(&m.commits),
    );
    t.single(
        "rampart_ingest_store_errors_total",
        MetricKind::Counter,
        "Failed commit attempts (store errors).",
        f(&m.commit_failures),
    );
}

/// The control plane's counters (renewals, claims).
pub(crate) fn write_control(m: &ControlMetrics, t: &mut MetricsText) {
    for (name, v) in m.snapshot() {
        let family = format!("rampart_control_{name}_total");
        t.single(
            &family,
            MetricKind::Counter,
            "Control-plane counter (renewals, claim confirmations).",
            v as f64,
        );
    }
}

/// The alert engine's and deliverer's counters.
pub(crate) fn write_alerts(m: &crate::alerting::AlertMetrics, t: &mut MetricsText) {
    for (name, v) in m.snapshot() {
        let family = format!("rampart_alerts_{name}_total");
        t.single(
            &family,
            MetricKind::Counter,
            "Alert counter (alerts fired and resolved, notifications delivered, retried, dead).",
            v as f64,
        );
    }
}

/// The rollout engine's counters and the campaigns by status.
pub(crate) fn write_rollout(m: &RolloutMetrics, t: &mut MetricsText) {
    let f = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
    t.single(
        "rampart_ota_offers_sent_total",
        MetricKind::Counter,
        "Firmware offers published on ota/down (waves and re-sends on connect).",
        f(&m.offers_sent),
    );
    t.single(
        "rampart_ota_offers_failed_total",
        MetricKind::Counter,
        "Firmware offers that could not be published.",
        f(&m.offers_failed),
    );
    t.single(
        "rampart_ota_cancels_sent_total",
        MetricKind::Counter,
        "Cancel downlinks published for cancelled campaigns.",
        f(&m.cancels_sent),
    );
    t.single(
        "rampart_ota_timeouts_total",
        MetricKind::Counter,
        "Campaign entries failed by a state timeout.",
        f(&m.timeouts),
    );
    t.family(
        "rampart_ota_reports_total",
        MetricKind::Counter,
        "Reports received on ota/up, by status.",
    );
    for (status, c) in REPORT_STATUSES.iter().zip(m.reports.iter()) {
        t.sample(
            "rampart_ota_reports_total",
            &[("status", status.as_str())],
            f(c),
        );
    }
    t.single(
        "rampart_ota_reports_unmatched_total",
        MetricKind::Counter,
        "Reports matching no open entry of a campaign with that version.",
        f(&m.reports_unmatched),
    );
    t.single(
        "rampart_ota_reports_stale_total",
        MetricKind::Counter,
        "Reports that matched an entry but did not move it (late or repeated).",
        f(&m.reports_stale),
    );
    t.single(
        "rampart_ota_reports_invalid_total",
        MetricKind::Counter,
        "Reports refused as malformed or too large.",
        f(&m.reports_invalid),
    );
    t.family(
        "rampart_ota_campaigns",
        MetricKind::Gauge,
        "Campaigns by status (as of the engine's last tick).",
    );
    for (status, c) in rampart_ota::campaign::CampaignStatus::ALL
        .iter()
        .zip(m.campaigns.iter())
    {
        t.sample(
            "rampart_ota_campaigns",
            &[("status", status.as_str())],
            f(c),
        );
    }
}

/// The SQLite writer threads' figures (decision 0020).
pub(crate) fn write_store(stats: rampart_store::sqlite::WriterStats, t: &mut MetricsText) {
    t.single(
        "rampart_store_writer_takeovers_total",
        MetricKind::Counter,
        "Times a write waited past store.writer_takeover_after and the fair-share thread took the SQLite writes over from the idle writer (writer_priority = \"adaptive\").",
        stats.takeovers as f64,
    );
    t.single(
        "rampart_store_writer_taken_over",
        MetricKind::Gauge,
        "1 while the fair-share thread runs the SQLite writes, 0 while the idle writer does.",
        if stats.taken_over { 1.0 } else { 0.0 },
    );
    t.single(
        "rampart_store_staged_rows",
        MetricKind::Gauge,
        "Telemetry rows staged and not yet moved into their tables (decision 0023); staying above 32768 per lane means the writer finds no idle moment and commits move rows themselves.",
        stats.staged_rows as f64,
    );
}

/// Monitoring of a running server: its parts' metrics, and the broker's
/// readiness.
pub(crate) fn monitoring(
    broker: &Arc<Broker>,
    pipeline: Arc<PipelineMetrics>,
    control: Arc<ControlMetrics>,
    rollout: Arc<RolloutMetrics>,
) -> Monitoring {
    let broker_metrics = broker.metrics();
    let ready = Arc::downgrade(broker);
    Monitoring::new()
        .source(move |t| write_broker(&broker_metrics, t))
        .source(move |t| write_pipeline(&pipeline, t))
        .source(move |t| write_control(&control, t))
        .source(move |t| write_rollout(&rollout, t))
        .check("broker", move || match ready.upgrade() {
            Some(b) if b.is_accepting() => Ok(()),
            Some(_) => Err("the MQTT broker is not accepting connections".into()),
            None => Err("the MQTT broker has stopped".into()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_broker_counter_is_exposed_once_in_its_family() {
        let m = BrokerMetrics::default();
        m.messages_in_qos1.fetch_add(2, Ordering::Relaxed);
        m.dropped_expired.fetch_add(1, Ordering::Relaxed);
        let mut t = MetricsText::new();
        write_broker(&m, &mut t);
        let text = t.finish();
        assert!(
            text.contains("rampart_broker_messages_received_total{qos=\"1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("rampart_broker_messages_dropped_total{reason=\"expired\"} 1\n"),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE rampart_broker_messages_received_total counter")
                .count(),
            1
        );
        assert!(
            text.contains(
                "# TYPE rampart_broker_connections gauge\nrampart_broker_connections 0\n"
            )
        );
        // No counter falls back to the generic name today.
        assert!(!text.contains("Broker counter."), "{text}");
        // Each family's TYPE line appears once.
        let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let n = types.len();
        types.sort_unstable();
        types.dedup();
        assert_eq!(types.len(), n);
    }

    #[test]
    fn store_writer_takeovers_and_state() {
        let mut t = MetricsText::new();
        write_store(
            rampart_store::sqlite::WriterStats {
                takeovers: 4,
                taken_over: true,
                staged_rows: 1_234,
            },
            &mut t,
        );
        let text = t.finish();
        assert!(
            text.contains("# TYPE rampart_store_writer_takeovers_total counter\nrampart_store_writer_takeovers_total 4\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "# TYPE rampart_store_writer_taken_over gauge\nrampart_store_writer_taken_over 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "# TYPE rampart_store_staged_rows gauge\nrampart_store_staged_rows 1234\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn rollout_counters_by_status() {
        let m = RolloutMetrics::default();
        m.offers_sent.fetch_add(3, Ordering::Relaxed);
        m.reports[5].fetch_add(2, Ordering::Relaxed);
        m.campaigns[1].store(1, Ordering::Relaxed);
        let mut t = MetricsText::new();
        write_rollout(&m, &mut t);
        let text = t.finish();
        for line in [
            "rampart_ota_offers_sent_total 3",
            "rampart_ota_reports_total{status=\"failed\"} 2",
            "rampart_ota_reports_total{status=\"succeeded\"} 0",
            "rampart_ota_campaigns{status=\"running\"} 1",
            "rampart_ota_campaigns{status=\"draft\"} 0",
            "rampart_ota_reports_unmatched_total 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn pipeline_rejections_by_reason() {
        let m = PipelineMetrics::default();
        PipelineMetrics::add(&m.rejected, 5);
        PipelineMetrics::add(&m.rejected_format, 3);
        PipelineMetrics::inc(&m.rejected_internal);
        let mut t = MetricsText::new();
        write_pipeline(&m, &mut t);
        let text = t.finish();
        for line in [
            "rampart_ingest_rejected_total{reason=\"format\"} 3",
            "rampart_ingest_rejected_total{reason=\"internal\"} 1",
            "rampart_ingest_rejected_total{reason=\"other\"} 1",
            "rampart_ingest_commit_seconds_count 0",
            "rampart_ingest_commit_seconds_bucket{le=\"0.01\"} 0",
            "# TYPE rampart_ingest_commit_seconds histogram",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}

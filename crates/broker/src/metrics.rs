//! Counters and gauges of the broker, read by the `/metrics` endpoint.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Metrics that go up and down.
const GAUGES: [&str; 2] = ["connections", "queued_messages"];

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// The broker's counters (monotonic) and gauges (may go down).
        #[derive(Debug, Default)]
        pub struct Metrics {
            $( $(#[$doc])* pub $name: AtomicU64, )*
            /// Open connections that completed CONNECT.
            pub connections: AtomicI64,
            /// Messages queued for delivery across all sessions.
            pub queued_messages: AtomicI64,
        }

        impl Metrics {
            /// Every counter and gauge as (name, value), for exposition.
            pub fn snapshot(&self) -> Vec<(&'static str, i64)> {
                let mut out = vec![
                    $( (stringify!($name), self.$name.load(Ordering::Relaxed) as i64), )*
                ];
                out.push(("connections", self.connections.load(Ordering::Relaxed)));
                out.push(("queued_messages", self.queued_messages.load(Ordering::Relaxed)));
                out
            }
        }
    };
}

counters! {
    /// TCP connections accepted.
    accepted,
    /// Connections refused for the connection limit.
    refused_max_connections,
    /// Connections refused by the per-IP rate limit.
    refused_rate_limited,
    /// TLS handshakes that failed (bad or missing certificate, timeout, garbage).
    handshake_failures,
    /// Handshakes or CONNECTs that did not finish in time.
    handshake_timeouts,
    /// Certificates refused by the registry (unknown, revoked, superseded, disabled).
    identity_refused,
    /// CONNECTs refused because the client id was not the certificate CN.
    client_id_mismatch,
    /// Connections closed for malformed packets or protocol violations.
    protocol_errors,
    /// PUBLISH packets received, by QoS.
    messages_in_qos0,
    /// QoS 1 publishes received.
    messages_in_qos1,
    /// QoS 2 publishes received.
    messages_in_qos2,
    /// PUBLISH packets sent to subscribers.
    messages_out,
    /// Messages Rampart itself published (claim requests, renewed certificates).
    server_publishes,
    /// Publishes refused by the ACL.
    acl_denied_publish,
    /// Subscriptions refused by the ACL.
    acl_denied_subscribe,
    /// Publishes the pipeline rejected.
    ingest_rejected,
    /// Publishes the pipeline reported as already stored.
    ingest_duplicates,
    /// Messages dropped because a client's queue was full.
    dropped_queue_full,
    /// Messages dropped because they expired before delivery.
    dropped_expired,
    /// Messages dropped because they exceed the client's maximum packet size.
    dropped_too_large,
    /// Sessions closed because their identity was revoked or disabled.
    kicked_revoked,
    /// Sessions taken over by a new connection with the same id.
    taken_over,
    /// Keepalive timeouts.
    keepalive_timeouts,
    /// Sum of ack latencies in microseconds (PUBLISH received to PUBACK sent).
    ack_latency_us_sum,
    /// Number of acks in `ack_latency_us_sum`.
    ack_latency_count,
    /// Transactions of durable broker state (sessions, queued copies, retained).
    persist_commits,
    /// Operations written in them.
    persist_ops,
    /// Queued copies for persistent sessions acknowledged by their
    /// subscriber before they were written, and so never written.
    persist_elided,
}

impl Metrics {
    /// The metrics in Prometheus text exposition format, names prefixed
    /// `rampart_broker_`; the web part serves this on `/metrics`.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        for (name, value) in self.snapshot() {
            let kind = if GAUGES.contains(&name) {
                "gauge"
            } else {
                "counter"
            };
            let suffix = if kind == "counter" { "_total" } else { "" };
            out.push_str(&format!(
                "# TYPE rampart_broker_{name}{suffix} {kind}\nrampart_broker_{name}{suffix} {value}\n"
            ));
        }
        out
    }

    /// Adds one to a counter.
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_names_every_metric_with_its_type() {
        let m = Metrics::default();
        Metrics::inc(&m.messages_in_qos1);
        Metrics::inc(&m.messages_in_qos1);
        m.connections.fetch_add(3, Ordering::Relaxed);
        let text = m.prometheus();
        assert!(text.contains("# TYPE rampart_broker_messages_in_qos1_total counter\nrampart_broker_messages_in_qos1_total 2\n"));
        assert!(
            text.contains(
                "# TYPE rampart_broker_connections gauge\nrampart_broker_connections 3\n"
            )
        );
        assert_eq!(text.lines().count(), 2 * m.snapshot().len());
    }
}

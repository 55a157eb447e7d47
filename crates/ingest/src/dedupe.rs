//! Step 3, dedupe: the identity of a reading is `(device, seq)`; its
//! content is summarised by a digest of what the device sent (its own `ts`,
//! or none, and its metrics in name order), so that a replay compares equal
//! whatever the receive time, and a different payload under a used `seq` is
//! told apart. The authoritative comparison happens inside the commit
//! transaction (`rampart_store::TelemetryStore::commit_ingest`), the only
//! place that sees every committed reading.

use rampart_proto::telemetry::Reading;
use sha2::{Digest, Sha256};

/// The digest of a reading's content, as stored.
pub fn digest(r: &Reading) -> i64 {
    let mut h = Sha256::new();
    match r.ts_ms {
        Some(ts) => {
            h.update([1]);
            h.update(ts.to_be_bytes());
        }
        None => h.update([0]),
    }
    let mut metrics: Vec<_> = r.metrics.iter().collect();
    metrics.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in metrics {
        h.update((name.as_str().len() as u8).to_be_bytes());
        h.update(name.as_str().as_bytes());
        // -0.0 and 0.0 are the same reading.
        let v = if *value == 0.0 { 0.0f64 } else { *value };
        h.update(v.to_bits().to_be_bytes());
    }
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    i64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_proto::telemetry::MetricName;

    fn r(ts: Option<i64>, m: &[(&str, f64)]) -> Reading {
        Reading {
            seq: 1,
            ts_ms: ts,
            metrics: m
                .iter()
                .map(|(n, v)| (MetricName::parse(n).expect("name"), *v))
                .collect(),
        }
    }

    #[test]
    fn digest_ignores_metric_order_but_not_content() {
        let a = digest(&r(Some(5), &[("a", 1.0), ("b", 2.0)]));
        assert_eq!(a, digest(&r(Some(5), &[("b", 2.0), ("a", 1.0)])));
        assert_ne!(a, digest(&r(Some(6), &[("a", 1.0), ("b", 2.0)])));
        assert_ne!(a, digest(&r(None, &[("a", 1.0), ("b", 2.0)])));
        assert_ne!(a, digest(&r(Some(5), &[("a", 1.0), ("b", 2.5)])));
        assert_ne!(a, digest(&r(Some(5), &[("a", 1.0)])));
        assert_ne!(
            digest(&r(None, &[("ab", 1.0), ("c", 2.0)])),
            digest(&r(None, &[("a", 1.0), ("bc", 2.0)]))
        );
        assert_eq!(
            digest(&r(None, &[("a", 0.0)])),
            digest(&r(None, &[("a", -0.0)]))
        );
    }
}

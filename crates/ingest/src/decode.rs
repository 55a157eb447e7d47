//! Step 1, decode: what a payload says, by topic category.
//!
//! Telemetry uses the normative shapes of `rampart_proto::telemetry`;
//! `state/up` is a JSON (or CBOR) object of reported fields. The other
//! uplinks (`cmd`, `bind`, `ota`, `cert`) belong to the subsystems that
//! define them and pass through without being stored here.

use rampart_proto::ingest::{Rejection, RejectionKind};
use rampart_proto::telemetry::{self, Encoding, Limits, PayloadError, Reading};
use rampart_proto::topic::Category;

/// A decoded uplink.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// Telemetry readings.
    Readings(Vec<Reading>),
    /// A reported-state object.
    State(serde_json::Value),
    /// An uplink the pipeline does not store (routed only).
    PassThrough,
}

/// Decodes `payload` published on `category`.
pub fn decode(
    category: Category,
    payload: &[u8],
    content_type: Option<&str>,
    limits: &Limits,
) -> Result<Decoded, Rejection> {
    match category {
        Category::Telemetry => telemetry::decode(payload, content_type, limits)
            .map(Decoded::Readings)
            .map_err(rejection),
        Category::State => state(payload, content_type, limits).map(Decoded::State),
        _ => Ok(Decoded::PassThrough),
    }
}

/// The rejection for a payload error: size and count limits are quota
/// problems, everything else a format problem.
pub fn rejection(e: PayloadError) -> Rejection {
    let kind = match e {
        PayloadError::TooLarge { .. }
        | PayloadError::TooManyMetrics { .. }
        | PayloadError::BatchTooLong { .. } => RejectionKind::QuotaExceeded,
        _ => RejectionKind::PayloadFormatInvalid,
    };
    Rejection {
        kind,
        detail: e.to_string(),
    }
}

fn state(
    payload: &[u8],
    content_type: Option<&str>,
    limits: &Limits,
) -> Result<serde_json::Value, Rejection> {
    if payload.len() > limits.max_payload_bytes {
        return Err(rejection(PayloadError::TooLarge {
            size: payload.len(),
            max: limits.max_payload_bytes,
        }));
    }
    let invalid = |detail: String| Rejection {
        kind: RejectionKind::PayloadFormatInvalid,
        detail,
    };
    // serde_json and ciborium both bound nesting depth (128), so a deeply
    // nested payload is an error, not a stack overflow.
    let value: serde_json::Value = match telemetry::detect(payload, content_type) {
        Encoding::Json => serde_json::from_slice(payload)
            .map_err(|e| invalid(format!("state is not valid JSON: {e}")))?,
        Encoding::Cbor => ciborium::from_reader(payload)
            .map_err(|e| invalid(format!("state is not valid CBOR: {e}")))?,
    };
    if !value.is_object() {
        return Err(invalid("state must be an object of reported fields".into()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_must_be_an_object_within_limits() {
        let l = Limits::default();
        let ok = decode(Category::State, br#"{"fw":"1.0","led":true}"#, None, &l);
        assert!(matches!(ok, Ok(Decoded::State(v)) if v["led"] == true));
        let e = decode(Category::State, b"[1,2]", None, &l).expect_err("array");
        assert_eq!(e.kind, RejectionKind::PayloadFormatInvalid);
        let deep = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        let e = decode(Category::State, deep.as_bytes(), None, &l).expect_err("deep");
        assert_eq!(e.kind, RejectionKind::PayloadFormatInvalid);
        let big = vec![b' '; l.max_payload_bytes + 1];
        let e = decode(Category::State, &big, None, &l).expect_err("big");
        assert_eq!(e.kind, RejectionKind::QuotaExceeded);
    }

    #[test]
    fn other_uplinks_pass_through() {
        let l = Limits::default();
        assert_eq!(
            decode(Category::Cmd, b"anything", None, &l),
            Ok(Decoded::PassThrough)
        );
    }

    #[test]
    fn limits_are_quota_errors_and_shapes_are_format_errors() {
        let l = Limits {
            max_batch: 2,
            ..Limits::default()
        };
        let batch =
            br#"{"batch":[{"seq":1,"m":{"a":1}},{"seq":2,"m":{"a":1}},{"seq":3,"m":{"a":1}}]}"#;
        let e = decode(Category::Telemetry, batch, None, &l).expect_err("long");
        assert_eq!(e.kind, RejectionKind::QuotaExceeded);
        let e =
            decode(Category::Telemetry, br#"{"seq":1,"m":{"a":NaN}}"#, None, &l).expect_err("nan");
        assert_eq!(e.kind, RejectionKind::PayloadFormatInvalid);
        let e = decode(
            Category::Telemetry,
            br#"{"seq":1,"m":{"a;DROP TABLE":1}}"#,
            None,
            &l,
        )
        .expect_err("name");
        assert!(e.detail.contains("metric name"), "{}", e.detail);
    }
}

//! Generators shared by the property tests.

use proptest::prelude::*;
use rampart_core::measurement::{MAX_METRICS, MAX_WIRE_INT, Measurement, Metric, Value};

/// A finite metric value: any f32 or f64, and sensor-like ones.
pub fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<f32>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(Value::F32),
        any::<f64>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(Value::F64),
        // Sensor-like values: DHT11 whole degrees, DHT22 tenths.
        (-40i32..80).prop_map(|v| Value::F32(v as f32)),
        (-400i32..800).prop_map(|v| Value::F32(v as f32 / 10.0)),
    ]
}

/// A valid measurement whose metric indices are below `names`.
pub fn measurement(names: u8) -> impl Strategy<Value = Measurement> {
    let most = MAX_METRICS.min(usize::from(names));
    (
        0..=MAX_WIRE_INT,
        prop::option::of(0..=MAX_WIRE_INT),
        prop::sample::subsequence((0..names).collect::<Vec<_>>(), 1..=most),
        prop::collection::vec(value(), MAX_METRICS),
    )
        .prop_map(|(seq, ts, indices, values)| {
            let metrics: Vec<Metric> = indices
                .into_iter()
                .zip(values)
                .map(|(i, v)| Metric::new(i, v))
                .collect();
            Measurement::new(seq, ts, &metrics).expect("valid by construction")
        })
}

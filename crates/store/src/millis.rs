//! The store's time unit: Unix milliseconds, `INTEGER` in SQLite and
//! `BIGINT` in PostgreSQL. One definition, so that a timestamp written by one
//! backend reads back identically from the other.

use time::OffsetDateTime;

use crate::{Result, StoreError};

/// Unix milliseconds of `t` (sub-millisecond precision is dropped).
pub(crate) fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Back from Unix milliseconds; a value out of range is damaged data.
pub(crate) fn from_ms(ms: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| StoreError::Corrupt(format!("timestamp {ms} out of range: {e}")))
}

/// Now, truncated to the store's millisecond precision, with its value in
/// milliseconds: what is returned equals what a later read gives back.
pub(crate) fn now_ms() -> (OffsetDateTime, i64) {
    let ms = to_ms(OffsetDateTime::now_utc());
    (
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_millisecond_precision() {
        let (t, ms) = now_ms();
        assert_eq!(to_ms(t), ms);
        assert_eq!(from_ms(ms).expect("in range"), t);
        assert!(from_ms(i64::MAX).is_err());
    }
}

//! Latency outside stalls: the p99 of a run with the moments when
//! everything stood still left out, next to how many there were.
//!
//! On a shared virtual machine the host now and then stops the guest for
//! tens of milliseconds; every message scheduled meanwhile arrives late,
//! whichever broker carries it. A few such pauses in a run of a few
//! seconds hold about 1 % of its messages, so they alone decide its p99
//! (seen on one machine: Mosquitto's p99 at 6,000 msg/s between 189 µs and
//! 12 ms from run to run). Cutting the run into windows by scheduled send
//! time and leaving out the windows that hold a message [`STALL`] late or
//! more gives a figure that compares two brokers on such a host; the
//! number of windows left out is reported with it, because a broker can
//! stall on its own too, and then it is the count that shows it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::LoadgenError;
use crate::tracking::Moment;
use crate::{Percentiles, micros};

/// Length of the windows a run is cut into, by scheduled send time.
pub const WINDOW: Duration = Duration::from_millis(100);

/// A window holding a message at least this late is a stall.
pub const STALL: Duration = Duration::from_millis(5);

/// The latency of the messages outside stalled windows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutsideStalls {
    /// Windows of [`WINDOW`] holding a measured message.
    pub windows: u64,
    /// Of those, the windows holding a message [`STALL`] late or more.
    pub stalled_windows: u64,
    /// Latency (receive time minus intended send time) of the messages in
    /// the other windows; none when every window stalled (a p99 of 0
    /// would read as the best figure of all).
    pub latency: Option<Percentiles>,
}

/// Latency outside stalled windows of the measured messages `moments`;
/// `None` without any.
pub fn outside_stalls(moments: &[Moment]) -> Result<Option<OutsideStalls>, LoadgenError> {
    if moments.is_empty() {
        return Ok(None);
    }
    let window = WINDOW.as_nanos() as u64;
    let late = |m: &Moment| Duration::from_nanos(m.received_ns.saturating_sub(m.scheduled_ns));
    let mut slowest: BTreeMap<u64, Duration> = BTreeMap::new();
    for m in moments {
        let w = slowest.entry(m.scheduled_ns / window).or_default();
        *w = (*w).max(late(m));
    }
    let mut latency = crate::latency_histogram()?;
    for m in moments {
        if slowest
            .get(&(m.scheduled_ns / window))
            .is_some_and(|&w| w < STALL)
        {
            latency.saturating_record(micros(late(m)));
        }
    }
    Ok(Some(OutsideStalls {
        windows: slowest.len() as u64,
        stalled_windows: slowest.values().filter(|&&w| w >= STALL).count() as u64,
        latency: (!latency.is_empty()).then(|| Percentiles::of(&latency)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(scheduled_ms: u64, late_us: u64) -> Moment {
        let scheduled_ns = scheduled_ms * 1_000_000;
        Moment {
            device: 0,
            seq: scheduled_ms,
            scheduled_ns,
            queued_ns: scheduled_ns,
            received_ns: scheduled_ns + late_us * 1000,
        }
    }

    #[test]
    fn windows_holding_a_stalled_message_are_left_out_and_counted() -> Result<(), LoadgenError> {
        // Ten windows of ten messages each, 200 µs late, except in the
        // fourth, where one message took 30 ms and the rest 10 ms.
        let mut moments = Vec::new();
        for ms in (0..1000).step_by(10) {
            let late = match ms {
                300 => 30_000,
                301..400 => 10_000,
                _ => 200,
            };
            moments.push(sent(ms, late));
        }
        let out = outside_stalls(&moments)?.ok_or(LoadgenError::Config("no result".into()))?;
        assert_eq!(out.windows, 10);
        assert_eq!(out.stalled_windows, 1);
        let latency = out
            .latency
            .ok_or(LoadgenError::Config("no latency".into()))?;
        assert_eq!(latency.count, 90);
        assert_eq!(latency.p99_us, 200);
        assert_eq!(latency.max_us, 200);
        Ok(())
    }

    #[test]
    fn a_run_stalled_throughout_has_no_latency_outside_stalls() -> Result<(), LoadgenError> {
        let moments = [sent(0, 6_000), sent(150, 9_000)];
        let out = outside_stalls(&moments)?.ok_or(LoadgenError::Config("no result".into()))?;
        assert_eq!((out.windows, out.stalled_windows), (2, 2));
        assert_eq!(out.latency, None);
        Ok(())
    }

    #[test]
    fn a_message_just_under_the_stall_is_kept() -> Result<(), LoadgenError> {
        let just_under = STALL.as_micros() as u64 - 1;
        let moments = [
            sent(0, 100),
            sent(50, just_under),
            sent(150, STALL.as_micros() as u64),
        ];
        let out = outside_stalls(&moments)?.ok_or(LoadgenError::Config("no result".into()))?;
        assert_eq!((out.windows, out.stalled_windows), (2, 1));
        let latency = out
            .latency
            .ok_or(LoadgenError::Config("no latency".into()))?;
        assert_eq!(latency.count, 2);
        // hdrhistogram keeps 3 significant digits.
        assert!(latency.max_us.abs_diff(just_under) <= just_under / 1000);
        assert_eq!(outside_stalls(&[])?, None);
        Ok(())
    }
}

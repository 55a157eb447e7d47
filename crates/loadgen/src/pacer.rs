//! Send times with the kernel's timer precision.
//!
//! tokio's timer wheel has a resolution of one millisecond and rounds every
//! deadline up to the next tick, so an open-loop publisher paced by
//! `tokio::time::sleep_until` sends each message 0–1 ms after its schedule
//! before any scheduling delay. Latency is measured from the schedule
//! (coordinated-omission safe), so that lag is part of every broker's
//! figures: at 3,000 msg/s it was most of the p99 of both brokers
//! (BENCHMARKS.md, "A precise send clock"). A [`Pacer`] waits on a Linux
//! `timerfd` instead, a high-resolution kernel timer that wakes the
//! runtime's `epoll_wait` at the deadline (rounded up to a [`GRID`] of
//! 100 µs, so that publishers due together wake together), without a
//! thread or a busy loop of its own.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::time::{
    ClockId, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, clock_gettime,
    timerfd_create, timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// A one-shot timer for one task's deadlines, re-armed only when the
/// deadline changes.
#[derive(Debug)]
pub struct Pacer {
    fd: AsyncFd<OwnedFd>,
    /// The deadline the timer is set to and has not yet been read as fired.
    armed: Option<Instant>,
}

impl Pacer {
    /// A disarmed timer on `CLOCK_MONOTONIC` (the clock of [`Instant`]).
    pub fn new() -> io::Result<Self> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // tokio 1.54 deprecates its safe constructors because a generic
        // `T: AsRawFd` may hand out another descriptor later; an `OwnedFd`
        // owns one descriptor for its whole life, the condition of the
        // (unsafe, and forbidden in this workspace) replacement `register`.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(fd, Interest::READABLE)?;
        Ok(Self { fd, armed: None })
    }

    /// Waits until `at`. Cancel safe: a call dropped before it returns
    /// leaves the timer armed, and the next call for the same deadline
    /// waits for that expiry.
    pub async fn sleep_until(&mut self, at: Instant) -> io::Result<()> {
        if self.armed != Some(at) {
            let left = at.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            // `Instant` does not expose its clock reading: the deadline on
            // the same clock is now's reading plus what is left, rounded
            // up to the grid. Setting the timer also clears an expiry
            // nobody read.
            let now = clock_gettime(ClockId::Monotonic);
            let deadline = on_grid(nanos(&now).saturating_add(left.as_nanos()));
            timerfd_settime(
                self.fd.get_ref(),
                TimerfdTimerFlags::ABSTIME,
                &Itimerspec {
                    it_interval: timespec(0),
                    it_value: timespec(deadline),
                },
            )?;
            self.armed = Some(at);
        }
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            match ready.try_io(|fd| {
                rustix::io::read(fd.get_ref(), &mut expirations).map_err(io::Error::from)
            }) {
                Ok(read) => {
                    read?;
                    self.armed = None;
                    return Ok(());
                }
                // Readiness was stale (an expiry cleared by re-arming).
                Err(_would_block) => continue,
            }
        }
    }
}

/// Deadlines are rounded up to multiples of this on `CLOCK_MONOTONIC`, so
/// that publishers due within the same slot are woken by one timer
/// interrupt and one return of `epoll_wait` instead of one each. The
/// rounding is part of the measured send lag (latency counts from the
/// schedule, not from the rounded deadline). Measured against exact
/// deadlines (BENCHMARKS.md, "A precise send clock"): at 24,000 msg/s
/// the load generator's CPU −7 to −15 %, and Rampart, which
/// handles messages arriving together in fewer wake-ups, lost 1,253–3,507
/// messages at its subscriber's full queue instead of 12,785–13,653.
pub const GRID: Duration = Duration::from_micros(100);

fn on_grid(ns: u128) -> u128 {
    let grid = GRID.as_nanos();
    ns.div_ceil(grid).saturating_mul(grid)
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

fn nanos(t: &Timespec) -> u128 {
    u128::try_from(t.tv_sec).unwrap_or(0) * NANOS_PER_SEC + u128::try_from(t.tv_nsec).unwrap_or(0)
}

fn timespec(ns: u128) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(ns / NANOS_PER_SEC).unwrap_or(i64::MAX),
        tv_nsec: i64::try_from(ns % NANOS_PER_SEC).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_to_the_grid() {
        let grid = GRID.as_nanos();
        assert_eq!(on_grid(0), 0);
        assert_eq!(on_grid(1), grid);
        assert_eq!(on_grid(grid), grid);
        assert_eq!(on_grid(grid + 1), 2 * grid);
        assert_eq!(on_grid(7 * grid - 1), 7 * grid);
        assert_eq!(
            nanos(&Timespec {
                tv_sec: 2,
                tv_nsec: 5
            }),
            2_000_000_005
        );
    }

    #[tokio::test]
    async fn waits_until_the_deadline_and_not_past_a_dropped_wait() -> io::Result<()> {
        let mut pacer = Pacer::new()?;
        let start = Instant::now();
        let at = start + Duration::from_millis(300);
        // A wait dropped early (as in a `select!` whose other branch won)
        // leaves the timer set; the next wait for the same deadline ends at it.
        let early = tokio::time::timeout(Duration::from_millis(5), pacer.sleep_until(at)).await;
        assert!(early.is_err(), "returned before its deadline");
        pacer.sleep_until(at).await?;
        assert!(Instant::now() >= at);
        // A deadline in the past returns at once; a new one re-arms.
        pacer.sleep_until(start).await?;
        let next = Instant::now() + Duration::from_millis(10);
        pacer.sleep_until(next).await?;
        assert!(Instant::now() >= next);
        Ok(())
    }

    #[tokio::test]
    async fn a_changed_deadline_replaces_the_armed_one() -> io::Result<()> {
        let mut pacer = Pacer::new()?;
        let far = Instant::now() + Duration::from_secs(3600);
        let early = tokio::time::timeout(Duration::from_millis(5), pacer.sleep_until(far)).await;
        assert!(early.is_err());
        let near = Instant::now() + Duration::from_millis(10);
        tokio::time::timeout(Duration::from_secs(5), pacer.sleep_until(near))
            .await
            .map_err(|_| io::Error::other("the earlier deadline was not applied"))??;
        assert!(Instant::now() >= near);
        Ok(())
    }
}

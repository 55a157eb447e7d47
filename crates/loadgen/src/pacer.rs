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
//! runtime's `epoll_wait` at the deadline, without a thread or a busy loop
//! of its own.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
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
            // Relative to now: `Instant` does not expose its clock reading.
            // Setting the timer also clears an expiry nobody read.
            timerfd_settime(
                self.fd.get_ref(),
                TimerfdTimerFlags::empty(),
                &Itimerspec {
                    it_interval: timespec(Duration::ZERO),
                    it_value: timespec(left),
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

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! Per-device request limits for the control topics (`cert/up`,
//! `bind/up`): a device that floods them is refused cheaply, before any
//! parsing, signing or store access.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rampart_proto::DeviceId;

/// How often a device may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePolicy {
    /// Requests accepted per device within `window` (malformed ones count).
    pub max_per_window: u32,
    /// The sliding window.
    pub window: Duration,
}

impl Default for RatePolicy {
    fn default() -> Self {
        Self {
            max_per_window: 3,
            window: Duration::from_secs(3600),
        }
    }
}

/// Devices tracked before idle ones are forgotten.
const TRACKED_DEVICES: usize = 100_000;

/// A sliding-window count of requests per device, in memory (a restart
/// forgets it, which lets a device ask `max_per_window` more times:
/// harmless). Time is passed in, so tests need no clock.
#[derive(Debug)]
pub struct RateLimiter {
    policy: RatePolicy,
    recent: HashMap<DeviceId, VecDeque<Instant>>,
}

impl RateLimiter {
    /// A limiter applying `policy`.
    pub fn new(policy: RatePolicy) -> Self {
        Self {
            policy,
            recent: HashMap::new(),
        }
    }

    /// Counts a request of `device` at `now`: `Ok` if it is within the
    /// policy, else how long until the oldest counted request leaves the
    /// window.
    pub fn admit(&mut self, device: &DeviceId, now: Instant) -> Result<(), Duration> {
        let window = self.policy.window;
        if self.recent.len() >= TRACKED_DEVICES && !self.recent.contains_key(device) {
            self.recent.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < window)
            });
        }
        let times = self.recent.entry(device.clone()).or_default();
        while times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            times.pop_front();
        }
        if times.len() >= self.policy.max_per_window as usize {
            let oldest = times.front().copied().unwrap_or(now);
            return Err(window.saturating_sub(now.saturating_duration_since(oldest)));
        }
        times.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        DeviceId::parse(s).expect("valid id")
    }

    #[test]
    fn limiter_admits_up_to_the_policy_per_window_and_device() {
        let mut l = RateLimiter::new(RatePolicy {
            max_per_window: 2,
            window: Duration::from_secs(60),
        });
        let t0 = Instant::now();
        let a = id("a");
        assert_eq!(l.admit(&a, t0), Ok(()));
        assert_eq!(l.admit(&a, t0 + Duration::from_secs(10)), Ok(()));
        assert_eq!(
            l.admit(&a, t0 + Duration::from_secs(20)),
            Err(Duration::from_secs(40)),
            "third within the window"
        );
        // Another device has its own budget.
        assert_eq!(l.admit(&id("b"), t0 + Duration::from_secs(20)), Ok(()));
        // Refusals are not counted: once the first leaves the window, one more.
        assert_eq!(l.admit(&a, t0 + Duration::from_secs(60)), Ok(()));
        assert_eq!(
            l.admit(&a, t0 + Duration::from_secs(61)),
            Err(Duration::from_secs(9))
        );
    }
}

//! Failed requests limited per source address: a token bucket per IP.
//!
//! Only failures take from the bucket, so a fleet enrolling correctly from
//! one address (a factory line, a NAT) is never slowed; someone guessing
//! tokens or ids is. While an address's bucket is empty every request from
//! it is refused with 429 and `Retry-After`, before any work is done.
//! Loopback is not exempt: the limits are configuration instead.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Addresses tracked at most; beyond, the fullest buckets are forgotten
/// (a forgotten bucket is a full one, so nobody gains more than a burst).
const MAX_TRACKED: usize = 65_536;

/// A token bucket per source address, taken from by failures.
#[derive(Debug)]
pub struct FailureLimiter {
    burst: u32,
    refill: Duration,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl FailureLimiter {
    /// `burst` failures at once, then one more per `refill`; `burst` 0
    /// disables the limit.
    pub fn new(burst: u32, refill: Duration) -> Self {
        Self {
            burst,
            refill,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn enabled(&self) -> bool {
        self.burst > 0 && !self.refill.is_zero()
    }

    /// The bucket's content at `now`, refilled since it was last touched.
    fn level(&self, b: &Bucket, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(b.at).as_secs_f64() / self.refill.as_secs_f64();
        (b.tokens + gained).min(f64::from(self.burst))
    }

    /// `Ok` if `ip` may be served at `now`; otherwise how long until it may.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if !self.enabled() {
            return Ok(());
        }
        let Ok(buckets) = self.buckets.lock() else {
            // A poisoned lock means a panic elsewhere; serve rather than
            // lock every client out.
            return Ok(());
        };
        let Some(b) = buckets.get(&ip) else {
            return Ok(());
        };
        let level = self.level(b, now);
        if level >= 1.0 {
            Ok(())
        } else {
            Err(self.refill.mul_f64(1.0 - level))
        }
    }

    /// Counts one failure from `ip` at `now`.
    pub fn charge(&self, ip: IpAddr, now: Instant) {
        if !self.enabled() {
            return;
        }
        let Ok(mut buckets) = self.buckets.lock() else {
            return;
        };
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&ip) {
            self.forget_fullest(&mut buckets, now);
        }
        let full = Bucket {
            tokens: f64::from(self.burst),
            at: now,
        };
        let b = buckets.entry(ip).or_insert(full);
        let level = self.level(b, now);
        *b = Bucket {
            tokens: (level - 1.0).max(0.0),
            at: now,
        };
    }

    /// Drops full buckets, then, if that is not enough, the fuller half.
    fn forget_fullest(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let burst = f64::from(self.burst);
        buckets.retain(|_, b| self.level(b, now) < burst);
        if buckets.len() >= MAX_TRACKED {
            let mut levels: Vec<(IpAddr, f64)> = buckets
                .iter()
                .map(|(ip, b)| (*ip, self.level(b, now)))
                .collect();
            levels.sort_by(|a, b| b.1.total_cmp(&a.1));
            for (ip, _) in levels.iter().take(levels.len() / 2) {
                buckets.remove(ip);
            }
            tracing::warn!(
                tracked = buckets.len(),
                "too many addresses with failed requests; forgot the least limited half"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn a_burst_of_failures_then_one_per_refill() {
        let l = FailureLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(A, t0), Ok(()));
            l.charge(A, t0);
        }
        assert_eq!(l.check(A, t0), Err(Duration::from_secs(10)));
        // Another address is not affected.
        assert_eq!(l.check(B, t0), Ok(()));
        let later = t0 + Duration::from_secs(4);
        assert_eq!(l.check(A, later), Err(Duration::from_secs(6)));
        let refilled = t0 + Duration::from_secs(10);
        assert_eq!(l.check(A, refilled), Ok(()));
        l.charge(A, refilled);
        assert!(l.check(A, refilled).is_err());
        // Long idle refills to the burst, never beyond.
        let idle = refilled + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.check(A, idle), Ok(()));
            l.charge(A, idle);
        }
        assert!(l.check(A, idle).is_err());
    }

    #[test]
    fn burst_zero_disables_the_limit() {
        let l = FailureLimiter::new(0, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..100 {
            l.charge(A, t0);
        }
        assert_eq!(l.check(A, t0), Ok(()));
    }

    #[test]
    fn memory_stays_bounded_under_many_addresses() {
        let l = FailureLimiter::new(1, Duration::from_secs(3600));
        let t0 = Instant::now();
        for n in 0..(MAX_TRACKED as u32 + 10) {
            l.charge(IpAddr::V4(std::net::Ipv4Addr::from(n)), t0);
        }
        let tracked = l.buckets.lock().map(|b| b.len()).unwrap_or(usize::MAX);
        assert!(tracked <= MAX_TRACKED, "{tracked}");
        // The newest failure is remembered.
        let last = IpAddr::V4(std::net::Ipv4Addr::from(MAX_TRACKED as u32 + 9));
        assert!(l.check(last, t0).is_err());
    }
}

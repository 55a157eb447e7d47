//! How the outbox treats a delivery attempt: what a receiver's answer
//! means, when to try again, and when to give up (dead letter).
//!
//! Retries back off exponentially with "equal jitter" (half the delay
//! fixed, half random), capped, so that a receiver coming back after an
//! outage is not hit by every queued message at the same instant, and a
//! `Retry-After` from the receiver (Discord and Slack send one with 429)
//! is honoured when it asks for longer.

use std::time::Duration;

/// Retry settings of the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First retry after about this long.
    pub base: Duration,
    /// No retry waits longer than this.
    pub cap: Duration,
    /// Attempts before a notification goes to the dead letters.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(15 * 60),
            // 5 s doubling to the 15 min cap: about 24 h of trying.
            max_attempts: 100,
        }
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx: delivered.
    Delivered,
    /// Worth trying again (5xx, 408, 425, 429, timeouts, connection
    /// errors), after at least the given wait if the receiver asked.
    Retry {
        /// The receiver's `Retry-After`, if any.
        after: Option<Duration>,
    },
    /// Will never work as sent (other 4xx: a deleted Discord webhook
    /// answers 404): dead letter at once.
    Permanent,
}

/// Classifies an HTTP status (redirects are followed before this).
pub fn classify(status: u16, retry_after: Option<&str>) -> Attempt {
    match status {
        200..=299 => Attempt::Delivered,
        408 | 425 | 429 | 500..=599 => Attempt::Retry {
            after: retry_after.and_then(parse_retry_after),
        },
        _ => Attempt::Permanent,
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not used by webhook
/// receivers and is ignored). At most a day.
pub fn parse_retry_after(text: &str) -> Option<Duration> {
    let s: f64 = text.trim().parse().ok()?;
    (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(86_400.0)))
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`, after `attempt` failures
    /// (1-based); `random` is uniform in [0, 1). `None` when the attempts
    /// are used up.
    pub fn next_delay(
        &self,
        attempt: u32,
        random: f64,
        asked: Option<Duration>,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let exp = self
            .base
            .saturating_mul(
                1u32.checked_shl(attempt.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.cap);
        let half = exp / 2;
        let jitter = half.mul_f64(random.clamp(0.0, 1.0));
        let delay = half + jitter;
        Some(match asked {
            Some(a) if a > delay => a.min(Duration::from_secs(86_400)),
            _ => delay,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify(204, None), Attempt::Delivered);
        assert_eq!(classify(500, None), Attempt::Retry { after: None });
        assert_eq!(
            classify(429, Some("2.5")),
            Attempt::Retry {
                after: Some(Duration::from_millis(2_500))
            }
        );
        assert_eq!(
            classify(503, Some("Wed, 21 Oct 2026 07:28:00 GMT")),
            Attempt::Retry { after: None }
        );
        assert_eq!(classify(404, None), Attempt::Permanent);
        assert_eq!(classify(400, None), Attempt::Permanent);
        assert_eq!(classify(301, None), Attempt::Permanent);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(
            parse_retry_after("999999"),
            Some(Duration::from_secs(86_400))
        );
    }

    #[test]
    fn delays_double_up_to_the_cap_then_stop() {
        let p = RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(8),
            max_attempts: 6,
        };
        let fixed: Vec<_> = (1..=6).map(|a| p.next_delay(a, 0.0, None)).collect();
        assert_eq!(
            fixed,
            vec![
                Some(Duration::from_millis(500)),
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(2)),
                Some(Duration::from_secs(4)),
                Some(Duration::from_secs(4)),
                None
            ]
        );
        assert_eq!(
            p.next_delay(3, 0.999_999, None).map(|d| d.as_secs()),
            Some(3)
        );
        assert_eq!(
            p.next_delay(1, 0.0, Some(Duration::from_secs(30))),
            Some(Duration::from_secs(30)),
            "the receiver's Retry-After wins when longer"
        );
        assert_eq!(
            p.next_delay(u32::MAX - 1, 0.5, None),
            None,
            "huge attempt counts do not overflow"
        );
    }

    proptest! {
        #[test]
        fn delays_stay_within_bounds(attempt in 1u32..200, r in 0.0f64..1.0) {
            let p = RetryPolicy::default();
            if let Some(d) = p.next_delay(attempt, r, None) {
                prop_assert!(d <= p.cap);
                prop_assert!(d >= p.base / 2);
            } else {
                prop_assert!(attempt >= p.max_attempts);
            }
        }
    }
}

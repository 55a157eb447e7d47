//! Reconnect and retry delays: exponential growth up to a cap, with jitter
//! so that a fleet that lost its server at the same moment does not come
//! back at the same moment ("Exponential Backoff And Jitter", AWS
//! Architecture Blog, 2015). Randomness comes from the host through
//! [`RandomSource`]; time is passed in.
//!
//! After a connection has stayed up for [`BackoffConfig::stable_after_ms`],
//! the next disconnect starts again from the initial delay; a connection
//! that drops right away keeps growing the delay, so a server that accepts
//! and immediately closes is not hammered.

/// A source of random numbers (the host's hardware RNG or a seeded PRNG in
/// tests). Jitter needs no cryptographic strength.
pub trait RandomSource {
    /// A uniformly distributed 32-bit value.
    fn next_u32(&mut self) -> u32;
}

/// A uniform value in `lo..=hi` (`lo` when `hi <= lo`).
pub(crate) fn uniform(rng: &mut impl RandomSource, lo: u64, hi: u64) -> u64 {
    let Some(span) = hi.checked_sub(lo).filter(|s| *s > 0) else {
        return lo;
    };
    let r = (u64::from(rng.next_u32()) << 32) | u64::from(rng.next_u32());
    // Multiply-high maps r onto 0..=span without division; the bias is at
    // most span / 2^64, irrelevant for jitter.
    let scaled = (u128::from(r).saturating_mul(u128::from(span).saturating_add(1))) >> 64;
    lo.saturating_add(u64::try_from(scaled).unwrap_or(span))
}

/// How the delay is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `0..=min(max, initial × 2^attempt)` ("full jitter").
    Full,
    /// Uniform in `initial..=3 × previous delay`, capped at the maximum
    /// ("decorrelated jitter"); never shorter than the initial delay.
    Decorrelated,
}

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Base delay, in milliseconds.
    pub initial_ms: u64,
    /// Largest delay, in milliseconds.
    pub max_ms: u64,
    /// How the delay is randomised.
    pub jitter: Jitter,
    /// A connection up at least this long resets the backoff when it drops.
    pub stable_after_ms: u64,
}

impl Default for BackoffConfig {
    /// One second growing to five minutes, decorrelated, stable after a minute.
    fn default() -> Self {
        Self {
            initial_ms: 1_000,
            max_ms: 300_000,
            jitter: Jitter::Decorrelated,
            stable_after_ms: 60_000,
        }
    }
}

/// Backoff state: failed attempts so far and the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    config: BackoffConfig,
    attempts: u32,
    prev_ms: u64,
    connected_since: Option<u64>,
}

impl Backoff {
    /// A backoff with no failed attempts.
    pub const fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            attempts: 0,
            prev_ms: config.initial_ms,
            connected_since: None,
        }
    }

    /// A backoff that already failed `attempts` times (restored after a restart).
    pub fn resume(config: BackoffConfig, attempts: u32) -> Self {
        let grown = config
            .initial_ms
            .checked_shl(attempts.min(63))
            .filter(|v| v >> attempts.min(63) == config.initial_ms)
            .unwrap_or(u64::MAX);
        Self {
            config,
            attempts,
            prev_ms: grown.min(config.max_ms).max(config.initial_ms),
            connected_since: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The delay before the next attempt, after one more failure.
    pub fn next_delay(&mut self, rng: &mut impl RandomSource) -> u64 {
        let c = &self.config;
        let cap = c.max_ms;
        let delay = match c.jitter {
            Jitter::Full => {
                let shift = self.attempts.min(63);
                let ceiling = c
                    .initial_ms
                    .checked_shl(shift)
                    .filter(|v| v >> shift == c.initial_ms)
                    .unwrap_or(u64::MAX)
                    .min(cap);
                uniform(rng, 0, ceiling)
            }
            Jitter::Decorrelated => {
                let lo = c.initial_ms.min(cap);
                let hi = self.prev_ms.saturating_mul(3).min(cap).max(lo);
                uniform(rng, lo, hi)
            }
        };
        self.prev_ms = delay.max(c.initial_ms);
        self.attempts = self.attempts.saturating_add(1);
        delay
    }

    /// When to try next if the attempt that just failed ended at `now_ms`.
    pub fn retry_at(&mut self, now_ms: u64, rng: &mut impl RandomSource) -> u64 {
        now_ms.saturating_add(self.next_delay(rng))
    }

    /// Records that a connection came up at `now_ms`.
    pub fn connected(&mut self, now_ms: u64) {
        self.connected_since = Some(now_ms);
    }

    /// Records that the connection dropped at `now_ms`; resets the backoff
    /// if it had been up for [`BackoffConfig::stable_after_ms`].
    pub fn disconnected(&mut self, now_ms: u64) {
        if let Some(since) = self.connected_since.take()
            && now_ms.saturating_sub(since) >= self.config.stable_after_ms
        {
            self.reset();
        }
    }

    /// Whether the current connection has been up long enough to count as stable.
    pub fn is_stable(&self, now_ms: u64) -> bool {
        self.connected_since
            .is_some_and(|since| now_ms.saturating_sub(since) >= self.config.stable_after_ms)
    }

    /// Forgets all failures.
    pub fn reset(&mut self) {
        self.attempts = 0;
        self.prev_ms = self.config.initial_ms;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// A deterministic stand-in for the host's RNG (a 32-bit SplitMix-style
    /// mixer: even small seeds give well-spread values from the first draw).
    #[derive(Debug)]
    pub(crate) struct TestRng(pub(crate) u32);

    impl RandomSource for TestRng {
        fn next_u32(&mut self) -> u32 {
            self.0 = self.0.wrapping_add(0x9e37_79b9);
            let mut z = self.0;
            z = (z ^ (z >> 16)).wrapping_mul(0x85eb_ca6b);
            z = (z ^ (z >> 13)).wrapping_mul(0xc2b2_ae35);
            z ^ (z >> 16)
        }
    }

    /// Always the same value: pins jitter to an end of its range.
    struct Fixed(u32);
    impl RandomSource for Fixed {
        fn next_u32(&mut self) -> u32 {
            self.0
        }
    }

    const FULL: BackoffConfig = BackoffConfig {
        initial_ms: 100,
        max_ms: 1_000,
        jitter: Jitter::Full,
        stable_after_ms: 5_000,
    };

    #[test]
    fn full_jitter_ceiling_doubles_up_to_the_cap() {
        let mut b = Backoff::new(FULL);
        let top: Vec<u64> = (0..6).map(|_| b.next_delay(&mut Fixed(u32::MAX))).collect();
        assert_eq!(top, [100, 200, 400, 800, 1_000, 1_000]);
        let mut b = Backoff::new(FULL);
        assert_eq!(b.next_delay(&mut Fixed(0)), 0);
        assert_eq!(b.attempts(), 1);
    }

    #[test]
    fn decorrelated_jitter_stays_between_initial_and_cap() {
        let cfg = BackoffConfig {
            jitter: Jitter::Decorrelated,
            ..FULL
        };
        let mut b = Backoff::new(cfg);
        let top: Vec<u64> = (0..4).map(|_| b.next_delay(&mut Fixed(u32::MAX))).collect();
        assert_eq!(top, [300, 900, 1_000, 1_000]);
        let mut b = Backoff::new(cfg);
        assert_eq!(b.next_delay(&mut Fixed(0)), 100);
    }

    #[test]
    fn a_stable_connection_resets_and_a_short_one_does_not() {
        let mut b = Backoff::new(FULL);
        let mut rng = Fixed(u32::MAX);
        b.next_delay(&mut rng);
        b.next_delay(&mut rng);
        b.connected(10_000);
        assert!(!b.is_stable(14_999));
        b.disconnected(14_999);
        assert_eq!(b.attempts(), 2);
        assert_eq!(b.next_delay(&mut rng), 400);
        b.connected(20_000);
        assert!(b.is_stable(25_000));
        b.disconnected(25_000);
        assert_eq!(b.attempts(), 0);
        assert_eq!(b.next_delay(&mut rng), 100);
        // A disconnect without a connect changes nothing.
        b.disconnected(99_999);
        assert_eq!(b.attempts(), 1);
        assert_eq!(b.retry_at(1_000, &mut rng), 1_200);
    }

    #[test]
    fn resume_continues_the_growth() {
        let mut b = Backoff::resume(FULL, 3);
        assert_eq!(b.next_delay(&mut Fixed(u32::MAX)), 800);
        let mut huge = Backoff::resume(FULL, u32::MAX);
        assert_eq!(huge.next_delay(&mut Fixed(u32::MAX)), 1_000);
        assert_eq!(huge.attempts(), u32::MAX);
    }

    #[test]
    fn uniform_covers_its_bounds() {
        assert_eq!(uniform(&mut Fixed(0), 5, 9), 5);
        assert_eq!(uniform(&mut Fixed(u32::MAX), 5, 9), 9);
        assert_eq!(uniform(&mut Fixed(7), 9, 5), 9);
        assert_eq!(uniform(&mut Fixed(u32::MAX), 0, u64::MAX), u64::MAX);
    }

    proptest! {
        #[test]
        fn delays_stay_within_bounds(
            seed in any::<u32>(), initial in 0u64..10_000, max in 0u64..1_000_000,
            decorrelated in any::<bool>(), n in 1usize..50,
        ) {
            let cfg = BackoffConfig {
                initial_ms: initial,
                max_ms: max,
                jitter: if decorrelated { Jitter::Decorrelated } else { Jitter::Full },
                stable_after_ms: 1,
            };
            let mut b = Backoff::new(cfg);
            let mut rng = TestRng(seed);
            for _ in 0..n {
                let d = b.next_delay(&mut rng);
                prop_assert!(d <= max);
                if decorrelated {
                    prop_assert!(d >= initial.min(max));
                }
            }
        }

        #[test]
        fn jitter_spreads_a_fleet(seed in any::<u32>()) {
            // 100 devices failing at once do not all pick the same delay.
            let mut rng = TestRng(seed);
            // At attempt 10 the ceiling is the cap: 1,001 possible delays.
            let delays: std::collections::BTreeSet<u64> =
                (0..100).map(|_| Backoff::resume(FULL, 10).next_delay(&mut rng)).collect();
            prop_assert!(delays.len() > 80, "{} distinct delays", delays.len());
        }
    }
}

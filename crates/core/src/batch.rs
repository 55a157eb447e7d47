//! When to flush buffered readings: as soon as enough are buffered (by
//! count), when the oldest has waited long enough (by age), and always
//! before the device sleeps. Between flushes the answer says when to ask
//! again, so a host can sleep or wait on a timer instead of polling.

/// The batching policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Flush once this many readings are buffered (0 behaves as 1).
    pub max_count: usize,
    /// Flush once the oldest buffered reading is this old, in milliseconds.
    pub max_age_ms: u64,
}

impl Default for BatchPolicy {
    /// Ten readings or thirty seconds, whichever comes first.
    fn default() -> Self {
        Self {
            max_count: 10,
            max_age_ms: 30_000,
        }
    }
}

/// What is waiting to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// Readings buffered and not yet in flight.
    pub count: usize,
    /// When the oldest of them was buffered (the host's millisecond clock).
    pub oldest_at_ms: u64,
}

/// Why a flush is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// [`BatchPolicy::max_count`] readings are buffered.
    Count,
    /// The oldest reading reached [`BatchPolicy::max_age_ms`].
    Age,
    /// The device is about to sleep.
    Sleep,
}

/// The policy's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Flush now.
    Now(FlushReason),
    /// Nothing due; ask again at this time (unless more readings arrive first).
    At(u64),
    /// Nothing buffered.
    Idle,
}

impl BatchPolicy {
    /// Decides whether to flush what is `pending` at `now_ms`;
    /// `before_sleep` is true when the device is about to sleep.
    pub fn decide(&self, pending: Option<Pending>, now_ms: u64, before_sleep: bool) -> Flush {
        let Some(p) = pending.filter(|p| p.count > 0) else {
            return Flush::Idle;
        };
        if before_sleep {
            return Flush::Now(FlushReason::Sleep);
        }
        if p.count >= self.max_count.max(1) {
            return Flush::Now(FlushReason::Count);
        }
        let due = p.oldest_at_ms.saturating_add(self.max_age_ms);
        if now_ms >= due {
            Flush::Now(FlushReason::Age)
        } else {
            Flush::At(due)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: BatchPolicy = BatchPolicy {
        max_count: 5,
        max_age_ms: 1_000,
    };

    fn pending(count: usize, oldest_at_ms: u64) -> Option<Pending> {
        Some(Pending {
            count,
            oldest_at_ms,
        })
    }

    #[test]
    fn nothing_buffered_is_idle_even_before_sleep() {
        assert_eq!(POLICY.decide(None, 0, false), Flush::Idle);
        assert_eq!(POLICY.decide(pending(0, 0), 5_000, true), Flush::Idle);
    }

    #[test]
    fn flushes_by_count_age_and_sleep() {
        assert_eq!(
            POLICY.decide(pending(5, 100), 100, false),
            Flush::Now(FlushReason::Count)
        );
        assert_eq!(POLICY.decide(pending(2, 100), 600, false), Flush::At(1_100));
        assert_eq!(
            POLICY.decide(pending(2, 100), 1_100, false),
            Flush::Now(FlushReason::Age)
        );
        assert_eq!(
            POLICY.decide(pending(1, 100), 101, true),
            Flush::Now(FlushReason::Sleep)
        );
    }

    #[test]
    fn degenerate_settings_do_not_stall() {
        let every = BatchPolicy {
            max_count: 0,
            max_age_ms: u64::MAX,
        };
        assert_eq!(
            every.decide(pending(1, 7), 7, false),
            Flush::Now(FlushReason::Count)
        );
        let aged = BatchPolicy {
            max_count: 100,
            max_age_ms: u64::MAX,
        };
        assert_eq!(aged.decide(pending(1, 7), 7, false), Flush::At(u64::MAX));
    }

    proptest! {
        #[test]
        fn waits_are_never_in_the_past_and_never_later_than_max_age(
            count in 1usize..20, oldest in 0u64..1_000_000, after in 0u64..5_000,
        ) {
            let now = oldest + after;
            match POLICY.decide(pending(count, oldest), now, false) {
                Flush::At(t) => {
                    prop_assert!(t > now);
                    prop_assert_eq!(t, oldest + POLICY.max_age_ms);
                    prop_assert!(count < POLICY.max_count);
                }
                Flush::Now(FlushReason::Count) => prop_assert!(count >= POLICY.max_count),
                Flush::Now(FlushReason::Age) => prop_assert!(after >= POLICY.max_age_ms),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}

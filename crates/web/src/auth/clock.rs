//! The console's clock, injected so that tests move time instead of
//! sleeping (session idle and absolute expiry, lockouts, setup tokens).

use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

/// Where "now" comes from: the system clock, or a manual one in tests.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<Mutex<OffsetDateTime>>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self { manual: None }
    }

    /// A clock standing at `start` until [`Clock::advance`] moves it.
    pub fn manual(start: OffsetDateTime) -> Self {
        Self {
            manual: Some(Arc::new(Mutex::new(start))),
        }
    }

    /// Now, to the millisecond (the store's precision).
    pub fn now(&self) -> OffsetDateTime {
        let now = match &self.manual {
            Some(m) => m.lock().map_or_else(|p| *p.into_inner(), |t| *t),
            None => OffsetDateTime::now_utc(),
        };
        let ms = now.unix_timestamp_nanos() / 1_000_000;
        OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).unwrap_or(now)
    }

    /// Moves a manual clock forward; the system clock ignores it.
    pub fn advance(&self, by: std::time::Duration) {
        if let Some(m) = &self.manual
            && let Ok(mut t) = m.lock()
        {
            *t += by;
        }
    }
}

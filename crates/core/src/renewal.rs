//! Certificate renewal: before the device certificate expires, the device
//! makes a new key and sends a CSR over its authenticated session
//! (`devices/{id}/cert/up`); the server answers on `cert/down` with the new
//! certificate or an error. The host stores the new certificate and
//! reconnects with it; the server then revokes the old serial as
//! `superseded`.
//!
//! ```text
//! Idle ─(now ≥ renew_at, or forced)→ SendCsr ─CsrSent→ CsrSent
//! CsrSent ─CertificateIssued→ CertificateReceived ─Installed→ Idle (new validity)
//! CsrSent ─no answer in time, or Refused (retryable)→ RetryWait ─time→ SendCsr
//! CsrSent ─Refused (permanent)→ Refused ─force→ Idle
//! ```
//!
//! Renewal is due at `notBefore + fraction × (notAfter − notBefore)`, two
//! thirds of the validity by default. Time is Unix milliseconds. The state
//! is not persisted: after a restart the host builds a new [`Renewal`] from
//! the stored certificate's validity, and a renewal that was in flight
//! starts over (the host uses the same new key for every CSR of one
//! renewal, so a late answer still matches).

use core::fmt;

use crate::backoff::{Backoff, BackoffConfig, RandomSource};

/// A certificate's validity period, Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before_ms: u64,
    /// End of validity.
    pub not_after_ms: u64,
}

/// The share of the validity period after which renewal is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fraction {
    /// Numerator.
    pub num: u32,
    /// Denominator (0 is read as 1).
    pub den: u32,
}

impl Fraction {
    /// Two thirds: the default.
    pub const TWO_THIRDS: Fraction = Fraction { num: 2, den: 3 };
}

impl Validity {
    /// When renewal is due: `not_before + fraction × (not_after − not_before)`,
    /// never after `not_after` (and `not_before` for an empty period).
    pub fn renew_at(&self, fraction: Fraction) -> u64 {
        let span = self.not_after_ms.saturating_sub(self.not_before_ms);
        let den = u128::from(fraction.den.max(1));
        let share = u128::from(span)
            .saturating_mul(u128::from(fraction.num))
            .checked_div(den)
            .unwrap_or(0);
        let offset = u64::try_from(share).unwrap_or(u64::MAX).min(span);
        self.not_before_ms.saturating_add(offset)
    }
}

/// Renewal settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalConfig {
    /// Share of the validity after which to renew.
    pub renew_after: Fraction,
    /// How long to wait for the server's answer before retrying, in ms.
    pub response_timeout_ms: u64,
    /// Backoff between attempts.
    pub retry: BackoffConfig,
}

impl Default for RenewalConfig {
    /// At two thirds of the validity; a minute for the answer; default backoff.
    fn default() -> Self {
        Self {
            renew_after: Fraction::TWO_THIRDS,
            response_timeout_ms: 60_000,
            retry: BackoffConfig::default(),
        }
    }
}

/// Where a renewal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalState {
    /// Waiting until renewal is due.
    Idle,
    /// CSR sent at this time; waiting for `cert/down`.
    CsrSent {
        /// When it was sent.
        sent_at_ms: u64,
    },
    /// The last attempt failed; try again at this time.
    RetryWait {
        /// When to retry.
        until_ms: u64,
    },
    /// The new certificate arrived; the host stores it and reconnects.
    CertificateReceived {
        /// The new certificate's validity.
        validity: Validity,
    },
    /// The server refused for good; waits for [`Renewal::force`].
    Refused,
}

/// What happened, as the host reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalEvent {
    /// The CSR was published on `cert/up`.
    CsrSent,
    /// `cert/down` brought a certificate with this validity (the host read
    /// `notBefore` and `notAfter` from the certificate itself).
    CertificateIssued(Validity),
    /// `cert/down` brought an error; `permanent` when retrying cannot help
    /// (e.g. the CSR is malformed or the device is revoked).
    Refused {
        /// Whether retrying cannot help.
        permanent: bool,
    },
    /// The new certificate is stored and the device reconnected with it.
    Installed,
}

impl RenewalEvent {
    /// The event's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            RenewalEvent::CsrSent => "CSR sent",
            RenewalEvent::CertificateIssued(_) => "certificate issued",
            RenewalEvent::Refused { permanent: false } => "refused (retryable)",
            RenewalEvent::Refused { permanent: true } => "refused (permanent)",
            RenewalEvent::Installed => "installed",
        }
    }
}

impl RenewalState {
    /// The state's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            RenewalState::Idle => "idle",
            RenewalState::CsrSent { .. } => "CSR sent",
            RenewalState::RetryWait { .. } => "waiting to retry",
            RenewalState::CertificateReceived { .. } => "certificate received",
            RenewalState::Refused => "refused",
        }
    }
}

/// What the host should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalAction {
    /// Nothing now.
    Nothing,
    /// Nothing until this time; then poll again.
    WaitUntil(u64),
    /// Make a new key (once per renewal) and publish a CSR on `cert/up`.
    SendCsr,
    /// Store the new certificate and reconnect with it.
    InstallCertificate(Validity),
    /// The server refused for good; report it (renewal waits for a force).
    GiveUp,
}

/// Why an event was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewalError {
    /// The event is not valid in the current state.
    UnexpectedEvent {
        /// The event's name.
        event: &'static str,
        /// The state's name.
        state: &'static str,
    },
    /// The issued certificate's `notAfter` is not after its `notBefore`.
    InvalidValidity,
}

impl fmt::Display for RenewalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenewalError::UnexpectedEvent { event, state } => write!(
                f,
                "renewal event \"{event}\" is not valid in state \"{state}\"; it was ignored"
            ),
            RenewalError::InvalidValidity => f.write_str(
                "the issued certificate's notAfter is not after its notBefore; it was not installed",
            ),
        }
    }
}

impl core::error::Error for RenewalError {}

/// The renewal state machine for one device certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    config: RenewalConfig,
    validity: Validity,
    state: RenewalState,
    backoff: Backoff,
    forced: bool,
}

impl Renewal {
    /// Renewal of a certificate with this validity.
    pub fn new(config: RenewalConfig, validity: Validity) -> Self {
        Self {
            config,
            validity,
            state: RenewalState::Idle,
            backoff: Backoff::new(config.retry),
            forced: false,
        }
    }

    /// The current state.
    pub fn state(&self) -> RenewalState {
        self.state
    }

    /// The validity of the certificate in use.
    pub fn validity(&self) -> Validity {
        self.validity
    }

    /// When renewal of the current certificate is due.
    pub fn renew_at(&self) -> u64 {
        self.validity.renew_at(self.config.renew_after)
    }

    /// Failed attempts in the current renewal.
    pub fn failed_attempts(&self) -> u32 {
        self.backoff.attempts()
    }

    /// Renews now regardless of the validity (an operator's or a test's
    /// request); also restarts a renewal the server refused.
    pub fn force(&mut self) {
        self.forced = true;
        if self.state == RenewalState::Refused {
            self.state = RenewalState::Idle;
        }
    }

    fn retry(&mut self, now_ms: u64, rng: &mut impl RandomSource) -> RenewalState {
        RenewalState::RetryWait {
            until_ms: self.backoff.retry_at(now_ms, rng),
        }
    }

    /// What to do now; moves on when the answer is overdue.
    pub fn poll(&mut self, now_ms: u64, rng: &mut impl RandomSource) -> RenewalAction {
        match self.state {
            RenewalState::Idle => {
                let at = self.renew_at();
                if self.forced || now_ms >= at {
                    RenewalAction::SendCsr
                } else {
                    RenewalAction::WaitUntil(at)
                }
            }
            RenewalState::CsrSent { sent_at_ms } => {
                let deadline = sent_at_ms.saturating_add(self.config.response_timeout_ms);
                if now_ms >= deadline {
                    self.state = self.retry(now_ms, rng);
                    self.poll(now_ms, rng)
                } else {
                    RenewalAction::WaitUntil(deadline)
                }
            }
            RenewalState::RetryWait { until_ms } => {
                if now_ms >= until_ms {
                    RenewalAction::SendCsr
                } else {
                    RenewalAction::WaitUntil(until_ms)
                }
            }
            RenewalState::CertificateReceived { validity } => {
                RenewalAction::InstallCertificate(validity)
            }
            RenewalState::Refused => RenewalAction::Nothing,
        }
    }

    /// Applies what happened and returns what to do next. An event that is
    /// not valid in the current state changes nothing and is an error.
    pub fn handle(
        &mut self,
        event: RenewalEvent,
        now_ms: u64,
        rng: &mut impl RandomSource,
    ) -> Result<RenewalAction, RenewalError> {
        use RenewalEvent as E;
        use RenewalState as S;
        let next = match (self.state, event) {
            (S::Idle | S::RetryWait { .. }, E::CsrSent) => S::CsrSent { sent_at_ms: now_ms },
            // A late answer to an earlier CSR of this renewal is still good.
            (S::CsrSent { .. } | S::RetryWait { .. }, E::CertificateIssued(v)) => {
                if v.not_after_ms <= v.not_before_ms {
                    return Err(RenewalError::InvalidValidity);
                }
                S::CertificateReceived { validity: v }
            }
            (S::CsrSent { .. }, E::Refused { permanent: false }) => self.retry(now_ms, rng),
            (S::CsrSent { .. }, E::Refused { permanent: true }) => {
                self.state = S::Refused;
                self.forced = false;
                return Ok(RenewalAction::GiveUp);
            }
            (S::CertificateReceived { validity }, E::Installed) => {
                self.validity = validity;
                self.backoff.reset();
                self.forced = false;
                S::Idle
            }
            (state, event) => {
                return Err(RenewalError::UnexpectedEvent {
                    event: event.name(),
                    state: state.name(),
                });
            }
        };
        self.state = next;
        Ok(self.poll(now_ms, rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Jitter;
    use crate::backoff::tests::TestRng;
    use RenewalAction as A;
    use RenewalEvent as E;
    use RenewalState as S;
    use proptest::prelude::*;

    const DAY: u64 = 86_400_000;
    const T0: u64 = 1_800_000_000_000;
    const CONFIG: RenewalConfig = RenewalConfig {
        renew_after: Fraction::TWO_THIRDS,
        response_timeout_ms: 5_000,
        retry: BackoffConfig {
            initial_ms: 1_000,
            max_ms: 60_000,
            jitter: Jitter::Full,
            stable_after_ms: 1,
        },
    };

    fn year() -> Validity {
        Validity {
            not_before_ms: T0,
            not_after_ms: T0 + 300 * DAY,
        }
    }

    #[test]
    fn due_at_two_thirds_or_the_configured_fraction() {
        assert_eq!(year().renew_at(Fraction::TWO_THIRDS), T0 + 200 * DAY);
        assert_eq!(year().renew_at(Fraction { num: 1, den: 2 }), T0 + 150 * DAY);
        assert_eq!(year().renew_at(Fraction { num: 5, den: 2 }), T0 + 300 * DAY);
        assert_eq!(year().renew_at(Fraction { num: 1, den: 0 }), T0 + 300 * DAY);
        let empty = Validity {
            not_before_ms: T0,
            not_after_ms: T0 - 1,
        };
        assert_eq!(empty.renew_at(Fraction::TWO_THIRDS), T0);
        let huge = Validity {
            not_before_ms: 0,
            not_after_ms: u64::MAX,
        };
        assert_eq!(huge.renew_at(Fraction::TWO_THIRDS), u64::MAX / 3 * 2);
    }

    #[test]
    fn a_full_renewal_cycle() {
        let mut r = Renewal::new(CONFIG, year());
        let mut rng = TestRng(3);
        assert_eq!(r.poll(T0, &mut rng), A::WaitUntil(T0 + 200 * DAY));
        let due = T0 + 200 * DAY;
        assert_eq!(r.poll(due, &mut rng), A::SendCsr);
        assert_eq!(
            r.handle(E::CsrSent, due, &mut rng),
            Ok(A::WaitUntil(due + 5_000))
        );
        let new = Validity {
            not_before_ms: due,
            not_after_ms: due + 300 * DAY,
        };
        assert_eq!(
            r.handle(E::CertificateIssued(new), due + 10, &mut rng),
            Ok(A::InstallCertificate(new))
        );
        assert_eq!(r.poll(due + 20, &mut rng), A::InstallCertificate(new));
        assert_eq!(
            r.handle(E::Installed, due + 30, &mut rng),
            Ok(A::WaitUntil(due + 200 * DAY))
        );
        assert_eq!(r.validity(), new);
        assert_eq!(r.state(), S::Idle);
    }

    #[test]
    fn timeouts_and_retryable_errors_back_off() {
        let mut r = Renewal::new(CONFIG, year());
        let mut rng = TestRng(9);
        r.force();
        assert_eq!(r.poll(T0, &mut rng), A::SendCsr);
        r.handle(E::CsrSent, T0, &mut rng).expect("valid");
        // No answer: retry after a backoff.
        let a = r.poll(T0 + 5_000, &mut rng);
        let A::WaitUntil(t1) = a else {
            panic!("waits: {a:?} {:?}", r.state())
        };
        assert!((T0 + 5_000..=T0 + 6_000).contains(&t1));
        assert_eq!(r.failed_attempts(), 1);
        assert_eq!(r.poll(t1, &mut rng), A::SendCsr);
        r.handle(E::CsrSent, t1, &mut rng).expect("valid");
        // A retryable error from the server: the same.
        let A::WaitUntil(t2) = r
            .handle(E::Refused { permanent: false }, t1 + 1, &mut rng)
            .expect("valid")
        else {
            panic!("waits")
        };
        assert!(t2 <= t1 + 1 + 2_000);
        assert_eq!(r.failed_attempts(), 2);
        // A late certificate for an earlier CSR is taken while waiting.
        let new = Validity {
            not_before_ms: T0,
            not_after_ms: T0 + DAY,
        };
        assert_eq!(
            r.handle(E::CertificateIssued(new), t1 + 2, &mut rng),
            Ok(A::InstallCertificate(new))
        );
        r.handle(E::Installed, t1 + 3, &mut rng).expect("valid");
        assert_eq!(r.failed_attempts(), 0);
        // The force was used up: the next renewal waits for the new validity.
        assert_eq!(
            r.poll(t1 + 4, &mut rng),
            A::WaitUntil(new.renew_at(Fraction::TWO_THIRDS))
        );
    }

    #[test]
    fn a_permanent_refusal_gives_up_until_forced() {
        let mut r = Renewal::new(CONFIG, year());
        let mut rng = TestRng(1);
        let due = r.renew_at();
        r.handle(E::CsrSent, due, &mut rng).expect("valid");
        assert_eq!(
            r.handle(E::Refused { permanent: true }, due, &mut rng),
            Ok(A::GiveUp)
        );
        assert_eq!(r.state(), S::Refused);
        assert_eq!(r.poll(due + DAY, &mut rng), A::Nothing);
        r.force();
        assert_eq!(r.poll(due + DAY, &mut rng), A::SendCsr);
    }

    #[test]
    fn invalid_events_and_certificates_are_errors_that_change_nothing() {
        let mut rng = TestRng(5);
        let v = year();
        let states: [Renewal; 5] = {
            let idle = Renewal::new(CONFIG, v);
            let mut sent = idle;
            sent.handle(E::CsrSent, T0, &mut rng).expect("valid");
            let mut wait = sent;
            wait.handle(E::Refused { permanent: false }, T0, &mut rng)
                .expect("valid");
            let mut got = sent;
            got.handle(E::CertificateIssued(v), T0, &mut rng)
                .expect("valid");
            let mut refused = sent;
            refused
                .handle(E::Refused { permanent: true }, T0, &mut rng)
                .expect("valid");
            [idle, sent, wait, got, refused]
        };
        let events = [
            E::CsrSent,
            E::CertificateIssued(v),
            E::Refused { permanent: false },
            E::Refused { permanent: true },
            E::Installed,
        ];
        let valid = |s: &S, e: &E| {
            matches!(
                (s, e),
                (S::Idle | S::RetryWait { .. }, E::CsrSent)
                    | (
                        S::CsrSent { .. } | S::RetryWait { .. },
                        E::CertificateIssued(_)
                    )
                    | (S::CsrSent { .. }, E::Refused { .. })
                    | (S::CertificateReceived { .. }, E::Installed)
            )
        };
        let mut invalid = 0;
        for machine in states {
            for e in events {
                let mut m = machine;
                let result = m.handle(e, T0 + 1, &mut rng);
                if valid(&machine.state(), &e) {
                    assert!(result.is_ok(), "{} in {}", e.name(), machine.state().name());
                } else {
                    assert_eq!(
                        result,
                        Err(RenewalError::UnexpectedEvent {
                            event: e.name(),
                            state: machine.state().name()
                        })
                    );
                    assert_eq!(m, machine);
                    invalid += 1;
                }
            }
        }
        assert_eq!(invalid, 25 - 7);
        let mut sent = states[1];
        let backwards = Validity {
            not_before_ms: T0,
            not_after_ms: T0,
        };
        assert_eq!(
            sent.handle(E::CertificateIssued(backwards), T0, &mut rng),
            Err(RenewalError::InvalidValidity)
        );
        assert_eq!(sent, states[1]);
    }

    proptest! {
        #[test]
        fn never_waits_past_the_due_time_when_idle(nb in 0u64..u64::MAX / 2, len in 0u64..1_000 * DAY, now in 0u64..u64::MAX / 2) {
            let v = Validity { not_before_ms: nb, not_after_ms: nb + len };
            let mut r = Renewal::new(CONFIG, v);
            match r.poll(now, &mut TestRng(1)) {
                A::WaitUntil(t) => { prop_assert!(t > now); prop_assert!(t <= v.not_after_ms); }
                A::SendCsr => prop_assert!(now >= r.renew_at()),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
    }
}

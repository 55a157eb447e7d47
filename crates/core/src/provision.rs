//! The provisioning state machine: from a blank device to one that has its
//! own key and certificate and is bound to an owner (DESIGN.md "Claiming").
//!
//! ```text
//! NoKey ─KeyGenerated→ KeyMade ─CsrSubmitted→ CsrSent ─EnrollmentAccepted→ CertificateReceived
//!   ─CertificateStored→ CertificateStored ─Connected→ Unbound ─ClaimRequested→ ClaimPending
//!   ─ClaimConfirmed→ ClaimPending (confirmed) ─Bound→ Bound
//! CsrSent ─refused, retryable (or no answer in time)→ RetryWait ─time→ KeyMade
//! CsrSent ─refused, permanent (token expired, used up, …)→ NeedsToken ─NewToken→ KeyMade
//! ClaimPending ─BindRefused or claim expired→ Unbound
//! Bound ─ClaimRequested→ Bound (ignored, reported)
//! ```
//!
//! The host does the crypto and the I/O: it calls [`Provisioning::poll`]
//! for the next [`ProvisionAction`], performs it, and reports what happened
//! with [`Provisioning::handle`]. An event that makes no sense in the
//! current state is an error value, never a panic, and changes nothing.
//!
//! Time here is Unix milliseconds (claims expire at a wall-clock time and
//! the state survives restarts). The host persists the key before reporting
//! [`ProvisionEvent::KeyGenerated`], the certificate before
//! [`ProvisionEvent::CertificateStored`], and [`Provisioning::to_bytes`]
//! after every event. A restart while the certificate was received but not
//! yet stored resumes at "key made" and sends the CSR again.

use core::fmt;

use crate::LayoutError;
use crate::backoff::{Backoff, BackoffConfig, RandomSource};
use crate::layout::{Writer, check_crc, open};
use crate::payload::{NONCE_LEN, Nonce};

/// How the enrollment server refused a CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Try again later (server busy, rate-limited, network error).
    Retryable,
    /// Do not retry with this token (expired, used up, revoked, id taken):
    /// wait for a new token.
    Permanent,
}

/// What happened, as the host reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionEvent {
    /// The device key exists (and is persisted).
    KeyGenerated,
    /// The CSR was sent to the enrollment endpoint.
    CsrSubmitted,
    /// Enrollment succeeded; the host holds the certificate.
    EnrollmentAccepted,
    /// Enrollment was refused.
    EnrollmentRefused(Refusal),
    /// The certificate is persisted.
    CertificateStored,
    /// Connected to the broker with the device certificate.
    Connected,
    /// A new enrollment token was configured.
    NewToken,
    /// A claim request arrived on `bind/down`.
    ClaimRequested {
        /// The server's nonce.
        nonce: Nonce,
        /// When the claim expires (Unix ms).
        expires_at_ms: u64,
    },
    /// The confirmation with the nonce was published on `bind/up`.
    ClaimConfirmed,
    /// The server said the device is bound.
    Bound,
    /// The server refused the claim (`{"type":"error",…}`).
    BindRefused,
}

impl ProvisionEvent {
    /// The event's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ProvisionEvent::KeyGenerated => "key generated",
            ProvisionEvent::CsrSubmitted => "CSR submitted",
            ProvisionEvent::EnrollmentAccepted => "enrollment accepted",
            ProvisionEvent::EnrollmentRefused(Refusal::Retryable) => {
                "enrollment refused (retryable)"
            }
            ProvisionEvent::EnrollmentRefused(Refusal::Permanent) => {
                "enrollment refused (permanent)"
            }
            ProvisionEvent::CertificateStored => "certificate stored",
            ProvisionEvent::Connected => "connected",
            ProvisionEvent::NewToken => "new token",
            ProvisionEvent::ClaimRequested { .. } => "claim requested",
            ProvisionEvent::ClaimConfirmed => "claim confirmed",
            ProvisionEvent::Bound => "bound",
            ProvisionEvent::BindRefused => "bind refused",
        }
    }
}

/// Where the device is in provisioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionState {
    /// No device key yet.
    NoKey,
    /// Key made; the CSR is to be sent.
    KeyMade,
    /// CSR sent at this time; waiting for the answer.
    CsrSent {
        /// When it was sent (Unix ms).
        sent_at_ms: u64,
    },
    /// Enrollment failed; retry at this time.
    RetryWait {
        /// When to retry (Unix ms).
        until_ms: u64,
    },
    /// The token was refused for good; a new one is needed.
    NeedsToken,
    /// The host holds the certificate and is to store it.
    CertificateReceived,
    /// The certificate is stored; the device is to connect.
    CertificateStored,
    /// Connected and registered, not bound to an owner.
    Unbound,
    /// A claim is in progress.
    ClaimPending {
        /// The server's nonce.
        nonce: Nonce,
        /// When the claim expires (Unix ms).
        expires_at_ms: u64,
        /// Whether the confirmation was published.
        confirmed: bool,
    },
    /// Bound to an owner.
    Bound,
}

impl ProvisionState {
    /// The state's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ProvisionState::NoKey => "no key",
            ProvisionState::KeyMade => "key made",
            ProvisionState::CsrSent { .. } => "CSR sent",
            ProvisionState::RetryWait { .. } => "waiting to retry enrollment",
            ProvisionState::NeedsToken => "needs a new token",
            ProvisionState::CertificateReceived => "certificate received",
            ProvisionState::CertificateStored => "certificate stored",
            ProvisionState::Unbound => "unbound",
            ProvisionState::ClaimPending { .. } => "claim pending",
            ProvisionState::Bound => "bound",
        }
    }
}

/// Why the machine gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The enrollment token was refused for good (expired, used up,
    /// revoked, or the id is taken); configure a new token.
    TokenRefused,
}

/// Why an event was ignored (not an error: reported for the logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// A claim request reached a device that is already bound.
    AlreadyBound,
}

/// What the host should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionAction {
    /// Nothing now (provisioned, or waiting for the server).
    Nothing,
    /// Generate the device key (and persist it).
    GenerateKey,
    /// Make a CSR (CN = device id) and send it with the token.
    SendCsr,
    /// Persist the certificate received.
    StoreCertificate,
    /// Connect to the broker with the device certificate.
    Connect,
    /// Publish `{"nonce":…}` on `bind/up`.
    PublishClaimConfirmation(Nonce),
    /// Nothing until this time (Unix ms); then poll again.
    WaitUntil(u64),
    /// Stop trying, for this reason, until the situation changes.
    GiveUp(GiveUpReason),
    /// The event was ignored, for this reason.
    Ignored(IgnoreReason),
}

/// An event that is not valid in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProvisionError {
    /// The event's name.
    pub event: &'static str,
    /// The state's name.
    pub state: &'static str,
}

impl fmt::Display for ProvisionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "provisioning event \"{}\" is not valid in state \"{}\"; it was ignored",
            self.event, self.state
        )
    }
}

impl core::error::Error for ProvisionError {}

/// Provisioning settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProvisionConfig {
    /// How long to wait for the enrollment answer before retrying, in ms.
    pub enrollment_timeout_ms: u64,
    /// Backoff between enrollment attempts.
    pub retry: BackoffConfig,
}

impl Default for ProvisionConfig {
    /// Thirty seconds for an answer; the default backoff between attempts.
    fn default() -> Self {
        Self {
            enrollment_timeout_ms: 30_000,
            retry: BackoffConfig::default(),
        }
    }
}

/// The provisioning state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provisioning {
    config: ProvisionConfig,
    state: ProvisionState,
    backoff: Backoff,
}

const MAGIC: [u8; 4] = *b"RMPV";
/// The persisted layout version.
pub const LAYOUT_VERSION: u16 = 1;

impl Provisioning {
    /// Bytes of the persisted form: magic `RMPV`, version u16, state u8,
    /// confirmed u8, failed attempts u32, a time u64 (sent at, retry at or
    /// claim expiry), the nonce (32 ASCII bytes or zeros), CRC-32; little-endian.
    pub const BYTE_LEN: usize = 4 + 2 + 1 + 1 + 4 + 8 + NONCE_LEN + 4;

    /// A blank device.
    pub fn new(config: ProvisionConfig) -> Self {
        Self::at(config, ProvisionState::NoKey)
    }

    /// A device whose key and certificate were installed at manufacture
    /// (`rampart device sign-csr`): it only needs to connect.
    pub fn pre_provisioned(config: ProvisionConfig) -> Self {
        Self::at(config, ProvisionState::CertificateStored)
    }

    fn at(config: ProvisionConfig, state: ProvisionState) -> Self {
        Self {
            config,
            state,
            backoff: Backoff::new(config.retry),
        }
    }

    /// The current state.
    pub fn state(&self) -> ProvisionState {
        self.state
    }

    /// Whether the device holds a stored certificate (it may connect).
    pub fn has_certificate(&self) -> bool {
        matches!(
            self.state,
            ProvisionState::CertificateStored
                | ProvisionState::Unbound
                | ProvisionState::ClaimPending { .. }
                | ProvisionState::Bound
        )
    }

    /// Whether the device is bound to an owner.
    pub fn is_bound(&self) -> bool {
        self.state == ProvisionState::Bound
    }

    /// Failed enrollment attempts since the last success or new token.
    pub fn failed_attempts(&self) -> u32 {
        self.backoff.attempts()
    }

    fn retry(&mut self, now_ms: u64, rng: &mut impl RandomSource) -> ProvisionState {
        ProvisionState::RetryWait {
            until_ms: self.backoff.retry_at(now_ms, rng),
        }
    }

    /// What to do now; moves on when a deadline has passed (enrollment
    /// answer overdue, retry due, claim expired).
    pub fn poll(&mut self, now_ms: u64, rng: &mut impl RandomSource) -> ProvisionAction {
        use ProvisionState as S;
        match self.state {
            S::NoKey => ProvisionAction::GenerateKey,
            S::KeyMade => ProvisionAction::SendCsr,
            S::CsrSent { sent_at_ms } => {
                let deadline = sent_at_ms.saturating_add(self.config.enrollment_timeout_ms);
                if now_ms >= deadline {
                    self.state = self.retry(now_ms, rng);
                    self.poll(now_ms, rng)
                } else {
                    ProvisionAction::WaitUntil(deadline)
                }
            }
            S::RetryWait { until_ms } => {
                if now_ms >= until_ms {
                    self.state = S::KeyMade;
                    ProvisionAction::SendCsr
                } else {
                    ProvisionAction::WaitUntil(until_ms)
                }
            }
            S::NeedsToken => ProvisionAction::GiveUp(GiveUpReason::TokenRefused),
            S::CertificateReceived => ProvisionAction::StoreCertificate,
            S::CertificateStored => ProvisionAction::Connect,
            S::Unbound | S::Bound => ProvisionAction::Nothing,
            S::ClaimPending {
                nonce,
                expires_at_ms,
                confirmed,
            } => {
                if now_ms >= expires_at_ms {
                    self.state = S::Unbound;
                    ProvisionAction::Nothing
                } else if confirmed {
                    ProvisionAction::WaitUntil(expires_at_ms)
                } else {
                    ProvisionAction::PublishClaimConfirmation(nonce)
                }
            }
        }
    }

    /// Applies what happened and returns what to do next. An event that is
    /// not valid in the current state changes nothing and is an error.
    pub fn handle(
        &mut self,
        event: ProvisionEvent,
        now_ms: u64,
        rng: &mut impl RandomSource,
    ) -> Result<ProvisionAction, ProvisionError> {
        use ProvisionEvent as E;
        use ProvisionState as S;
        let next = match (self.state, event) {
            (S::NoKey, E::KeyGenerated) => S::KeyMade,
            (S::KeyMade, E::CsrSubmitted) => S::CsrSent { sent_at_ms: now_ms },
            (S::KeyMade | S::CsrSent { .. } | S::RetryWait { .. } | S::NeedsToken, E::NewToken) => {
                self.backoff.reset();
                S::KeyMade
            }
            (S::CsrSent { .. }, E::EnrollmentAccepted) => {
                self.backoff.reset();
                S::CertificateReceived
            }
            (S::CsrSent { .. }, E::EnrollmentRefused(Refusal::Retryable)) => {
                self.retry(now_ms, rng)
            }
            (S::CsrSent { .. }, E::EnrollmentRefused(Refusal::Permanent)) => S::NeedsToken,
            (S::CertificateReceived, E::CertificateStored) => S::CertificateStored,
            (S::CertificateStored, E::Connected) => S::Unbound,
            (s @ (S::Unbound | S::ClaimPending { .. } | S::Bound), E::Connected) => s,
            (
                S::Unbound | S::ClaimPending { .. },
                E::ClaimRequested {
                    nonce,
                    expires_at_ms,
                },
            ) => S::ClaimPending {
                nonce,
                expires_at_ms,
                confirmed: false,
            },
            (S::Bound, E::ClaimRequested { .. }) => {
                return Ok(ProvisionAction::Ignored(IgnoreReason::AlreadyBound));
            }
            (
                S::ClaimPending {
                    nonce,
                    expires_at_ms,
                    ..
                },
                E::ClaimConfirmed,
            ) => S::ClaimPending {
                nonce,
                expires_at_ms,
                confirmed: true,
            },
            // The server is the authority on binding: a "bound" answer is
            // believed even if the pending claim was lost in a restart.
            (S::Unbound | S::ClaimPending { .. } | S::Bound, E::Bound) => S::Bound,
            (S::ClaimPending { .. }, E::BindRefused) => S::Unbound,
            (state, event) => {
                return Err(ProvisionError {
                    event: event.name(),
                    state: state.name(),
                });
            }
        };
        self.state = next;
        Ok(self.poll(now_ms, rng))
    }

    /// The persisted form (see [`Self::BYTE_LEN`]).
    pub fn to_bytes(&self) -> [u8; Self::BYTE_LEN] {
        use ProvisionState as S;
        let (tag, time, nonce, confirmed) = match self.state {
            S::NoKey => (0, 0, None, false),
            // The certificate lived only in the host's memory: resend the CSR.
            S::KeyMade | S::CertificateReceived => (1, 0, None, false),
            S::CsrSent { sent_at_ms } => (2, sent_at_ms, None, false),
            S::RetryWait { until_ms } => (3, until_ms, None, false),
            S::NeedsToken => (4, 0, None, false),
            S::CertificateStored => (5, 0, None, false),
            S::Unbound => (6, 0, None, false),
            S::ClaimPending {
                nonce,
                expires_at_ms,
                confirmed,
            } => (7, expires_at_ms, Some(nonce), confirmed),
            S::Bound => (8, 0, None, false),
        };
        let mut out = [0u8; Self::BYTE_LEN];
        let mut w = Writer::new(&mut out);
        // The array has exactly BYTE_LEN bytes, so every write fits.
        let _ = w.put(&MAGIC)
            && w.u16(LAYOUT_VERSION)
            && w.u8(tag)
            && w.u8(u8::from(confirmed))
            && w.u32(self.backoff.attempts())
            && w.u64(time)
            && w.put(nonce.as_ref().map_or(&[0u8; NONCE_LEN], |n| n.as_ascii()))
            && w.finish_with_crc();
        out
    }

    /// Reads the persisted form, checking magic, version, checksum and fields.
    pub fn from_bytes(config: ProvisionConfig, bytes: &[u8]) -> Result<Self, LayoutError> {
        use ProvisionState as S;
        let needed = Self::BYTE_LEN;
        let short = LayoutError::TooShort {
            needed,
            got: bytes.len(),
        };
        let mut r = open(bytes, needed, MAGIC, LAYOUT_VERSION)?;
        check_crc(bytes, needed)?;
        let tag = r.u8().ok_or(short)?;
        let confirmed = match r.u8().ok_or(short)? {
            0 => false,
            1 => true,
            _ => return Err(LayoutError::Corrupt("claim confirmation flag")),
        };
        let attempts = r.u32().ok_or(short)?;
        let time = r.u64().ok_or(short)?;
        let nonce_bytes = r.take::<NONCE_LEN>().ok_or(short)?;
        let no_extra = |state: S| {
            if time == 0 && !confirmed && nonce_bytes == [0u8; NONCE_LEN] {
                Ok(state)
            } else {
                Err(LayoutError::Corrupt(
                    "fields set that this state does not use",
                ))
            }
        };
        let only_time = |state: S| {
            if !confirmed && nonce_bytes == [0u8; NONCE_LEN] {
                Ok(state)
            } else {
                Err(LayoutError::Corrupt(
                    "fields set that this state does not use",
                ))
            }
        };
        let state = match tag {
            0 => no_extra(S::NoKey)?,
            1 => no_extra(S::KeyMade)?,
            2 => only_time(S::CsrSent { sent_at_ms: time })?,
            3 => only_time(S::RetryWait { until_ms: time })?,
            4 => no_extra(S::NeedsToken)?,
            5 => no_extra(S::CertificateStored)?,
            6 => no_extra(S::Unbound)?,
            7 => S::ClaimPending {
                nonce: Nonce::from_ascii(nonce_bytes).ok_or(LayoutError::Corrupt("claim nonce"))?,
                expires_at_ms: time,
                confirmed,
            },
            8 => no_extra(S::Bound)?,
            _ => return Err(LayoutError::Corrupt("provisioning state")),
        };
        Ok(Self {
            config,
            state,
            backoff: Backoff::resume(config.retry, attempts),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Jitter;
    use crate::backoff::tests::TestRng;
    use ProvisionAction as A;
    use ProvisionEvent as E;
    use ProvisionState as S;
    use proptest::prelude::*;

    const CONFIG: ProvisionConfig = ProvisionConfig {
        enrollment_timeout_ms: 10_000,
        retry: BackoffConfig {
            initial_ms: 1_000,
            max_ms: 60_000,
            jitter: Jitter::Decorrelated,
            stable_after_ms: 1,
        },
    };
    const T0: u64 = 1_800_000_000_000;

    fn nonce(c: u8) -> Nonce {
        Nonce::from_ascii([c; NONCE_LEN]).expect("hex")
    }

    fn rng() -> TestRng {
        TestRng(7)
    }

    /// A pending claim (its nonce and expiry are set by [`machine_in`]).
    fn pending() -> S {
        S::ClaimPending {
            nonce: nonce(b'a'),
            expires_at_ms: 0,
            confirmed: false,
        }
    }

    /// One of each state (times and nonce filled in by [`machine_in`]).
    fn all_states() -> [S; 10] {
        [
            S::NoKey,
            S::KeyMade,
            S::CsrSent { sent_at_ms: 0 },
            S::RetryWait { until_ms: 0 },
            S::NeedsToken,
            S::CertificateReceived,
            S::CertificateStored,
            S::Unbound,
            pending(),
            S::Bound,
        ]
    }

    /// Drives a machine through events from a blank device to `target`.
    fn machine_in(target: S) -> Provisioning {
        let mut p = Provisioning::new(CONFIG);
        let mut r = rng();
        let path: &[E] = match target {
            S::NoKey => &[],
            S::KeyMade => &[E::KeyGenerated],
            S::CsrSent { .. } => &[E::KeyGenerated, E::CsrSubmitted],
            S::RetryWait { .. } => &[
                E::KeyGenerated,
                E::CsrSubmitted,
                E::EnrollmentRefused(Refusal::Retryable),
            ],
            S::NeedsToken => &[
                E::KeyGenerated,
                E::CsrSubmitted,
                E::EnrollmentRefused(Refusal::Permanent),
            ],
            S::CertificateReceived => &[E::KeyGenerated, E::CsrSubmitted, E::EnrollmentAccepted],
            S::CertificateStored => &[
                E::KeyGenerated,
                E::CsrSubmitted,
                E::EnrollmentAccepted,
                E::CertificateStored,
            ],
            S::Unbound => &[
                E::KeyGenerated,
                E::CsrSubmitted,
                E::EnrollmentAccepted,
                E::CertificateStored,
                E::Connected,
            ],
            S::ClaimPending { .. } | S::Bound => &[
                E::KeyGenerated,
                E::CsrSubmitted,
                E::EnrollmentAccepted,
                E::CertificateStored,
                E::Connected,
                E::ClaimRequested {
                    nonce: nonce(b'a'),
                    expires_at_ms: T0 + 60_000,
                },
            ],
        };
        for e in path {
            p.handle(*e, T0, &mut r).expect("valid path");
        }
        if target == S::Bound {
            p.handle(E::Bound, T0, &mut r).expect("bound");
        }
        p
    }

    #[test]
    fn the_happy_path_from_blank_to_bound() {
        let mut p = Provisioning::new(CONFIG);
        let mut r = rng();
        assert_eq!(p.poll(T0, &mut r), A::GenerateKey);
        assert_eq!(p.handle(E::KeyGenerated, T0, &mut r), Ok(A::SendCsr));
        assert_eq!(
            p.handle(E::CsrSubmitted, T0, &mut r),
            Ok(A::WaitUntil(T0 + 10_000))
        );
        assert_eq!(
            p.handle(E::EnrollmentAccepted, T0 + 5, &mut r),
            Ok(A::StoreCertificate)
        );
        assert!(!p.has_certificate());
        assert_eq!(
            p.handle(E::CertificateStored, T0 + 6, &mut r),
            Ok(A::Connect)
        );
        assert!(p.has_certificate());
        assert_eq!(p.handle(E::Connected, T0 + 7, &mut r), Ok(A::Nothing));
        assert_eq!(p.state(), S::Unbound);
        let claim = E::ClaimRequested {
            nonce: nonce(b'1'),
            expires_at_ms: T0 + 60_000,
        };
        assert_eq!(
            p.handle(claim, T0 + 8, &mut r),
            Ok(A::PublishClaimConfirmation(nonce(b'1')))
        );
        assert_eq!(
            p.handle(E::ClaimConfirmed, T0 + 9, &mut r),
            Ok(A::WaitUntil(T0 + 60_000))
        );
        assert_eq!(p.handle(E::Bound, T0 + 10, &mut r), Ok(A::Nothing));
        assert!(p.is_bound());
        // Reconnects keep it bound.
        assert_eq!(p.handle(E::Connected, T0 + 11, &mut r), Ok(A::Nothing));
        assert_eq!(p.state(), S::Bound);
    }

    #[test]
    fn retryable_refusals_back_off_and_retry() {
        let mut p = machine_in(S::CsrSent { sent_at_ms: 0 });
        let mut r = rng();
        let A::WaitUntil(t1) = p
            .handle(E::EnrollmentRefused(Refusal::Retryable), T0, &mut r)
            .expect("valid")
        else {
            panic!("waits")
        };
        assert!((T0 + 1_000..=T0 + 3_000).contains(&t1), "{t1}");
        assert_eq!(p.failed_attempts(), 1);
        assert_eq!(p.poll(t1 - 1, &mut r), A::WaitUntil(t1));
        assert_eq!(p.poll(t1, &mut r), A::SendCsr);
        assert_eq!(p.state(), S::KeyMade);
        p.handle(E::CsrSubmitted, t1, &mut r).expect("valid");
        // No answer within the timeout counts as a retryable failure.
        let A::WaitUntil(t2) = p.poll(t1 + 10_000, &mut r) else {
            panic!("waits")
        };
        assert!(t2 >= t1 + 10_000 + 1_000);
        assert_eq!(p.failed_attempts(), 2);
        assert!(matches!(p.state(), S::RetryWait { .. }));
        // Success resets the backoff.
        p.poll(t2, &mut r);
        p.handle(E::CsrSubmitted, t2, &mut r).expect("valid");
        p.handle(E::EnrollmentAccepted, t2, &mut r).expect("valid");
        assert_eq!(p.failed_attempts(), 0);
    }

    #[test]
    fn a_permanent_refusal_waits_for_a_new_token() {
        let mut p = machine_in(S::CsrSent { sent_at_ms: 0 });
        let mut r = rng();
        assert_eq!(
            p.handle(E::EnrollmentRefused(Refusal::Permanent), T0, &mut r),
            Ok(A::GiveUp(GiveUpReason::TokenRefused))
        );
        // Time alone does not bring it back.
        assert_eq!(
            p.poll(T0 + 86_400_000, &mut r),
            A::GiveUp(GiveUpReason::TokenRefused)
        );
        assert_eq!(p.handle(E::NewToken, T0, &mut r), Ok(A::SendCsr));
        // A new token also cuts a retry wait short.
        let mut p = machine_in(S::RetryWait { until_ms: 0 });
        assert_eq!(p.handle(E::NewToken, T0, &mut r), Ok(A::SendCsr));
        assert_eq!(p.failed_attempts(), 0);
    }

    #[test]
    fn claims_expire_are_replaced_or_refused() {
        let mut r = rng();
        // Expiry before confirmation and after it.
        let mut p = machine_in(pending());
        assert_eq!(
            p.poll(T0 + 59_999, &mut r),
            A::PublishClaimConfirmation(nonce(b'a'))
        );
        assert_eq!(p.poll(T0 + 60_000, &mut r), A::Nothing);
        assert_eq!(p.state(), S::Unbound);
        let mut p = machine_in(pending());
        p.handle(E::ClaimConfirmed, T0, &mut r).expect("valid");
        assert_eq!(p.poll(T0 + 60_000, &mut r), A::Nothing);
        assert_eq!(p.state(), S::Unbound);
        // A newer claim replaces the pending one.
        let mut p = machine_in(pending());
        let newer = E::ClaimRequested {
            nonce: nonce(b'b'),
            expires_at_ms: T0 + 120_000,
        };
        assert_eq!(
            p.handle(newer, T0, &mut r),
            Ok(A::PublishClaimConfirmation(nonce(b'b')))
        );
        // The server refuses: back to unbound, ready for another claim.
        assert_eq!(p.handle(E::BindRefused, T0, &mut r), Ok(A::Nothing));
        assert_eq!(p.state(), S::Unbound);
    }

    #[test]
    fn a_bound_device_ignores_claims() {
        let mut p = machine_in(S::Bound);
        let mut r = rng();
        let claim = E::ClaimRequested {
            nonce: nonce(b'c'),
            expires_at_ms: T0 + 1,
        };
        assert_eq!(
            p.handle(claim, T0, &mut r),
            Ok(A::Ignored(IgnoreReason::AlreadyBound))
        );
        assert_eq!(p.state(), S::Bound);
    }

    /// Every (state, event) pair: the valid ones move as documented, every
    /// other one is an error that leaves the state unchanged.
    #[test]
    fn every_invalid_event_is_an_error_and_changes_nothing() {
        let states = all_states();
        let events = [
            E::KeyGenerated,
            E::CsrSubmitted,
            E::EnrollmentAccepted,
            E::EnrollmentRefused(Refusal::Retryable),
            E::EnrollmentRefused(Refusal::Permanent),
            E::CertificateStored,
            E::Connected,
            E::NewToken,
            E::ClaimRequested {
                nonce: nonce(b'd'),
                expires_at_ms: T0 + 5,
            },
            E::ClaimConfirmed,
            E::Bound,
            E::BindRefused,
        ];
        let valid = |s: &S, e: &E| -> bool {
            matches!(
                (s, e),
                (S::NoKey, E::KeyGenerated)
                    | (S::KeyMade, E::CsrSubmitted)
                    | (
                        S::KeyMade | S::CsrSent { .. } | S::RetryWait { .. } | S::NeedsToken,
                        E::NewToken
                    )
                    | (
                        S::CsrSent { .. },
                        E::EnrollmentAccepted | E::EnrollmentRefused(_)
                    )
                    | (S::CertificateReceived, E::CertificateStored)
                    | (S::CertificateStored, E::Connected)
                    | (
                        S::Unbound | S::ClaimPending { .. } | S::Bound,
                        E::Connected | E::ClaimRequested { .. } | E::Bound
                    )
                    | (S::ClaimPending { .. }, E::ClaimConfirmed | E::BindRefused)
            )
        };
        let mut checked = 0;
        for s in &states {
            for e in &events {
                let mut p = machine_in(*s);
                let before = p;
                let result = p.handle(*e, T0, &mut rng());
                if valid(s, e) {
                    assert!(result.is_ok(), "{} in {}: {result:?}", e.name(), s.name());
                } else {
                    assert_eq!(
                        result,
                        Err(ProvisionError {
                            event: e.name(),
                            state: before.state().name()
                        })
                    );
                    assert_eq!(
                        p,
                        before,
                        "{} in {} changed the machine",
                        e.name(),
                        s.name()
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 120 - 22);
    }

    #[test]
    fn persisted_form_round_trips_every_state() {
        // (A received but unstored certificate is checked separately below.)
        for s in all_states()
            .into_iter()
            .filter(|s| *s != S::CertificateReceived)
        {
            let p = machine_in(s);
            let back = Provisioning::from_bytes(CONFIG, &p.to_bytes()).expect("valid");
            assert_eq!(back.state(), p.state());
            assert_eq!(back.failed_attempts(), p.failed_attempts());
        }
        // A certificate not yet stored is not trusted to exist after a restart.
        let p = machine_in(S::CertificateReceived);
        let back = Provisioning::from_bytes(CONFIG, &p.to_bytes()).expect("valid");
        assert_eq!(back.state(), S::KeyMade);
        // A confirmed claim survives too.
        let mut p = machine_in(S::Unbound);
        let claim = E::ClaimRequested {
            nonce: nonce(b'e'),
            expires_at_ms: T0 + 9,
        };
        p.handle(claim, T0, &mut rng()).expect("valid");
        p.handle(E::ClaimConfirmed, T0, &mut rng()).expect("valid");
        assert_eq!(
            Provisioning::from_bytes(CONFIG, &p.to_bytes()).map(|b| b.state()),
            Ok(p.state())
        );
    }

    #[test]
    fn damaged_persisted_forms_are_refused() {
        let good = machine_in(S::Unbound).to_bytes();
        assert!(matches!(
            Provisioning::from_bytes(CONFIG, &good[..10]),
            Err(LayoutError::TooShort { .. })
        ));
        assert_eq!(
            Provisioning::from_bytes(CONFIG, &[0u8; Provisioning::BYTE_LEN]),
            Err(LayoutError::BadMagic)
        );
        let mut v = good;
        v[4] = 9;
        assert!(matches!(
            Provisioning::from_bytes(CONFIG, &v),
            Err(LayoutError::Version { found: 9, .. })
        ));
        let mut flipped = good;
        flipped[12] ^= 4;
        assert_eq!(
            Provisioning::from_bytes(CONFIG, &flipped),
            Err(LayoutError::Checksum)
        );
        for (at, value) in [(6, 42u8), (7, 2), (20, b'G')] {
            let mut bad = good;
            bad[6] = 7; // claim pending, so the nonce is read
            bad[20..52].copy_from_slice(&[b'a'; 32]);
            bad[at] = value;
            let n = bad.len() - 4;
            let crc = crate::layout::crc32(&bad[..n]);
            bad[n..].copy_from_slice(&crc.to_le_bytes());
            assert!(
                matches!(
                    Provisioning::from_bytes(CONFIG, &bad),
                    Err(LayoutError::Corrupt(_))
                ),
                "byte {at} = {value}"
            );
        }
    }

    proptest! {
        #[test]
        fn random_event_sequences_never_panic_and_persist(
            steps in prop::collection::vec((0usize..12, 0u64..100_000), 0..60),
            seed in any::<u32>(),
        ) {
            let mut p = Provisioning::new(CONFIG);
            let mut r = TestRng(seed);
            let mut now = T0;
            for (e, dt) in steps {
                now += dt;
                let event = match e {
                    0 => E::KeyGenerated, 1 => E::CsrSubmitted, 2 => E::EnrollmentAccepted,
                    3 => E::EnrollmentRefused(Refusal::Retryable), 4 => E::EnrollmentRefused(Refusal::Permanent),
                    5 => E::CertificateStored, 6 => E::Connected, 7 => E::NewToken,
                    8 => E::ClaimRequested { nonce: nonce(b'f'), expires_at_ms: now + 30_000 },
                    9 => E::ClaimConfirmed, 10 => E::Bound, _ => E::BindRefused,
                };
                let _ = p.handle(event, now, &mut r);
                let _ = p.poll(now, &mut r);
                let back = Provisioning::from_bytes(CONFIG, &p.to_bytes()).expect("own bytes are valid");
                if p.state() != S::CertificateReceived {
                    prop_assert_eq!(back.state(), p.state());
                }
            }
        }

        #[test]
        fn random_bytes_are_never_trusted_blindly(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Provisioning::from_bytes(CONFIG, &bytes) {
                prop_assert_eq!(&p.to_bytes()[..], &bytes[..Provisioning::BYTE_LEN]);
            }
        }
    }
}

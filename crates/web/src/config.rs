//! `[web]`: the HTTPS server's limits, as the configuration file holds them.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits of the HTTPS server (the `[web]` section of the configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Also offer TLS 1.2 (TLS 1.3 only otherwise).
    pub tls12: bool,
    /// The TLS handshake, and then each request's headers, must arrive
    /// within this (slowloris).
    #[serde(with = "rampart_span")]
    pub handshake_timeout: Duration,
    /// Most simultaneous connections; more are closed at once.
    pub max_connections: usize,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Failed enrollments one source address may make in a burst before
    /// it is answered 429 (0: no limit).
    pub enroll_failure_burst: u32,
    /// After the burst, one more failed enrollment is allowed per this.
    #[serde(with = "rampart_span")]
    pub enroll_failure_refill: Duration,
    /// A device that enrolls again with the same token and key within this
    /// (and has not connected yet) gets its certificate again instead of
    /// "id taken": its first answer was lost (0: never).
    #[serde(with = "rampart_span")]
    pub enroll_repeat_window: Duration,
    /// Bearer token a scraper must send to read `/metrics`. Without it (and
    /// without `metrics_addr`), `/metrics` is not served.
    pub metrics_token: Option<MetricsToken>,
    /// Also serve `/metrics`, `/healthz` and `/readyz` over plain HTTP on
    /// this address (e.g. `127.0.0.1:9464`), for scrapers on a trusted
    /// network. The token, if set, is required there too.
    pub metrics_addr: Option<SocketAddr>,
    /// Owners and admins must use a TOTP second factor: until they enrol
    /// one, their session may only enrol it.
    pub require_mfa_for_admins: bool,
    /// A console session ends after this long without a request.
    #[serde(with = "rampart_span")]
    pub session_idle_timeout: Duration,
    /// A console session ends this long after sign-in, used or not.
    #[serde(with = "rampart_span")]
    pub session_absolute_timeout: Duration,
    /// Failed sign-ins in a row that lock an account (0: never locked).
    pub login_max_failures: u32,
    /// How long a locked account stays locked.
    #[serde(with = "rampart_span")]
    pub login_lockout: Duration,
    /// Failed sign-ins one source address may make in a burst before it is
    /// answered 429 (0: no limit). Kept in memory: a restart forgets it.
    pub login_failure_burst: u32,
    /// After the burst, one more failed sign-in is allowed per this.
    #[serde(with = "rampart_span")]
    pub login_failure_refill: Duration,
    /// How long an invitation link stays valid.
    #[serde(with = "rampart_span")]
    pub invite_valid_for: Duration,
    /// Origins (`https://tools.example.com`) whose pages may call the API
    /// with an API token. Cookies are never accepted cross-origin; empty:
    /// no cross-origin access at all.
    pub cors_allowed_origins: Vec<String>,
}

/// The `/metrics` bearer token; never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MetricsToken(String);

impl MetricsToken {
    /// A token from its text.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself, for the comparison.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(<redacted>)")
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            tls12: false,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_body_bytes: 64 * 1024,
            enroll_failure_burst: 10,
            enroll_failure_refill: Duration::from_secs(6),
            enroll_repeat_window: Duration::from_secs(15 * 60),
            metrics_token: None,
            metrics_addr: None,
            require_mfa_for_admins: false,
            session_idle_timeout: Duration::from_secs(30 * 60),
            session_absolute_timeout: Duration::from_secs(12 * 3600),
            login_max_failures: 5,
            login_lockout: Duration::from_secs(15 * 60),
            login_failure_burst: 20,
            login_failure_refill: Duration::from_secs(30),
            invite_valid_for: Duration::from_secs(7 * 24 * 3600),
            cors_allowed_origins: Vec::new(),
        }
    }
}

impl WebConfig {
    /// Refuses values the server cannot work with, naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.handshake_timeout.is_zero() {
            return Err("web.handshake_timeout must be greater than zero".into());
        }
        if self.max_connections == 0 {
            return Err("web.max_connections must be at least 1".into());
        }
        if self.max_body_bytes < 1024 {
            return Err("web.max_body_bytes must be at least 1024 (a CSR alone is ~1 KiB)".into());
        }
        if self.enroll_failure_burst > 0 && self.enroll_failure_refill.is_zero() {
            return Err(
                "web.enroll_failure_refill must be greater than zero while enroll_failure_burst limits failures".into(),
            );
        }
        if let Some(t) = &self.metrics_token
            && t.expose().len() < 16
        {
            return Err(
                "web.metrics_token must be at least 16 characters (use a random value, e.g. `openssl rand -hex 32`)".into(),
            );
        }
        if self.session_idle_timeout.is_zero() || self.session_absolute_timeout.is_zero() {
            return Err("web.session_idle_timeout and web.session_absolute_timeout must be greater than zero".into());
        }
        if self.login_failure_burst > 0 && self.login_failure_refill.is_zero() {
            return Err(
                "web.login_failure_refill must be greater than zero while login_failure_burst limits failures".into(),
            );
        }
        if self.invite_valid_for.is_zero() {
            return Err("web.invite_valid_for must be greater than zero".into());
        }
        for origin in &self.cors_allowed_origins {
            let ok = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && origin.matches('/').count() == 2
                && origin != "*";
            if !ok {
                return Err(format!(
                    "web.cors_allowed_origins: '{origin}' is not an origin; write scheme://host[:port], e.g. https://tools.example.com"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_settings_are_checked() {
        assert_eq!(WebConfig::default().validate(), Ok(()));
        let bad = |c: WebConfig| c.validate().expect_err("refused");
        assert!(
            bad(WebConfig {
                session_idle_timeout: Duration::ZERO,
                ..WebConfig::default()
            })
            .contains("session_idle_timeout")
        );
        for origin in [
            "*",
            "tools.example",
            "https://tools.example/",
            "https://a/b",
        ] {
            let e = bad(WebConfig {
                cors_allowed_origins: vec![origin.into()],
                ..WebConfig::default()
            });
            assert!(e.contains("cors_allowed_origins"), "{origin}: {e}");
        }
        let ok = WebConfig {
            cors_allowed_origins: vec!["https://tools.example:8443".into()],
            ..WebConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
    }
}

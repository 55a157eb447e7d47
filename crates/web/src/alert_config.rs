//! Turning an operator's alert channel or rule into what the store keeps,
//! with every check made at creation (issue 10 "clear errors at
//! creation"): the same code behind the CLI, the API and the console.
//!
//! - A channel's URL must be a webhook target `rampart_alerts::target`
//!   accepts (https, public; plain http and private addresses only with the
//!   danger flag); it is sealed under the console key with the channel's
//!   name as associated data, and only its redacted form is stored in clear.
//! - A rule's expression must parse; a threshold's metric must be one some
//!   device sends (unless the caller says it is new); a device scope must
//!   name a registered device; rules about sources or campaigns cannot be
//!   scoped to a device or an owner.

use rampart_alerts::message::ChannelKind;
use rampart_alerts::target::{TargetError, WebhookUrl};
use rampart_alerts::{Condition, ExprError};
use rampart_store::{NewAlertChannel, NewAlertRule, RuleScope};

use crate::auth::SealingKey;

/// Default rate limit of a channel, deliveries per minute.
pub const DEFAULT_PER_MINUTE: u32 = 30;
/// Highest rate limit accepted, deliveries per minute.
pub const MAX_PER_MINUTE: u32 = 600;
/// Longest signing secret accepted, bytes.
pub const MAX_SECRET_LEN: usize = 256;

/// The associated data a channel's URL and secret are sealed with.
pub fn sealing_context(channel: &str) -> String {
    format!("alert-channel:{channel}")
}

/// A channel as an operator asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRequest {
    /// Unique name.
    pub name: String,
    /// `discord`, `slack` or `json`.
    pub kind: String,
    /// The webhook URL (a secret).
    pub url: String,
    /// `--danger-allow-private`.
    pub allow_private: bool,
    /// HMAC signing secret (generic JSON channels only).
    pub secret: Option<String>,
    /// Rate limit, deliveries per minute.
    pub per_minute: Option<u32>,
}

/// A rule as an operator asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRequest {
    /// Unique name.
    pub name: String,
    /// The expression.
    pub expr: String,
    /// The channel notified.
    pub channel: String,
    /// Only this device.
    pub device: Option<String>,
    /// Only devices of this owner (`user:NAME`).
    pub owner: Option<String>,
    /// Accept a metric no device has sent yet.
    pub new_metric: bool,
}

/// Why a channel or rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertConfigError {
    /// Not discord, slack or json.
    #[error("unknown channel kind '{0}'; expected discord, slack or json")]
    Kind(String),
    /// The URL was refused.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A secret for a chat channel, or an unusable one.
    #[error("{0}")]
    Secret(&'static str),
    /// Rate limit out of range.
    #[error("the rate limit must be 1 to {MAX_PER_MINUTE} deliveries per minute")]
    PerMinute,
    /// The expression was refused.
    #[error("rule expression: {0}")]
    Expr(#[from] ExprError),
    /// No device sends this metric.
    #[error(
        "no device has sent the metric '{metric}' yet (known: {known}); check the name, or pass --new-metric (API: newMetric) if devices will send it"
    )]
    UnknownMetric {
        /// The metric.
        metric: String,
        /// The metrics devices send.
        known: String,
    },
    /// Device and owner both given.
    #[error("a rule is scoped to a device or to an owner, not both")]
    TwoScopes,
    /// A scope the condition cannot have.
    #[error(
        "'{0}' rules watch sources or campaigns, not devices: they cannot be scoped to a device or an owner"
    )]
    NotPerDevice(String),
    /// The owner does not parse.
    #[error("owner '{0}' is not user:NAME or group:NAME")]
    Owner(String),
}

/// Checks a channel request and seals its secrets for the store.
pub fn new_channel(
    key: &SealingKey,
    req: &ChannelRequest,
) -> Result<NewAlertChannel, AlertConfigError> {
    let kind =
        ChannelKind::parse(&req.kind).ok_or_else(|| AlertConfigError::Kind(req.kind.clone()))?;
    let url = WebhookUrl::parse(&req.url, req.allow_private)?;
    let per_minute = req.per_minute.unwrap_or(DEFAULT_PER_MINUTE);
    if per_minute == 0 || per_minute > MAX_PER_MINUTE {
        return Err(AlertConfigError::PerMinute);
    }
    let context = sealing_context(&req.name);
    let secret_sealed = match &req.secret {
        None => None,
        Some(_) if kind != ChannelKind::Json => {
            return Err(AlertConfigError::Secret(
                "a signing secret is for generic JSON channels (--kind json); Discord and Slack do not check signatures",
            ));
        }
        Some(s) if s.len() < 16 || s.len() > MAX_SECRET_LEN => {
            return Err(AlertConfigError::Secret(
                "the signing secret must be 16 to 256 bytes",
            ));
        }
        Some(s) => Some(key.seal_bytes(s.as_bytes(), &context)),
    };
    Ok(NewAlertChannel {
        name: req.name.clone(),
        kind: kind.as_str().to_owned(),
        target: url.redacted(),
        url_sealed: key.seal_bytes(url.expose().as_str().as_bytes(), &context),
        secret_sealed,
        allow_private: req.allow_private,
        per_minute,
    })
}

/// Checks a rule request against the metrics devices send; returns the
/// rule with its canonical expression.
pub fn new_rule(
    req: &RuleRequest,
    known_metrics: &[String],
) -> Result<NewAlertRule, AlertConfigError> {
    let condition = rampart_alerts::parse(&req.expr)?;
    if let Condition::Threshold { metric, .. } = &condition
        && !req.new_metric
        && !known_metrics.iter().any(|m| m == metric)
    {
        return Err(AlertConfigError::UnknownMetric {
            metric: metric.clone(),
            known: if known_metrics.is_empty() {
                "none yet".into()
            } else {
                known_metrics.join(", ")
            },
        });
    }
    let scope = match (&req.device, &req.owner) {
        (Some(_), Some(_)) => return Err(AlertConfigError::TwoScopes),
        (Some(d), None) => RuleScope::Device(d.clone()),
        (None, Some(o)) => {
            let owner: rampart_store::Owner =
                o.parse().map_err(|_| AlertConfigError::Owner(o.clone()))?;
            RuleScope::Owner(owner.to_string())
        }
        (None, None) => RuleScope::Fleet,
    };
    if scope != RuleScope::Fleet && !condition.is_per_device() {
        return Err(AlertConfigError::NotPerDevice(condition.to_string()));
    }
    Ok(NewAlertRule {
        name: req.name.clone(),
        expr: condition.to_string(),
        scope,
        channel: req.channel.clone(),
    })
}

/// Opens a channel's sealed URL (delivery only).
pub fn open_url(
    key: &SealingKey,
    channel: &str,
    sealed: &[u8],
    allow_private: bool,
) -> Result<WebhookUrl, String> {
    let clear = key
        .open_bytes(sealed, &sealing_context(channel))
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8(clear).map_err(|_| "the stored URL is not text".to_owned())?;
    WebhookUrl::parse(&text, allow_private).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SealingKey {
        SealingKey::new([7; 32])
    }

    fn channel(url: &str) -> ChannelRequest {
        ChannelRequest {
            name: "ops".into(),
            kind: "discord".into(),
            url: url.into(),
            allow_private: false,
            secret: None,
            per_minute: None,
        }
    }

    #[test]
    fn channels_store_only_the_sealed_url_and_its_redaction() {
        let url = "https://discord.com/api/webhooks/1/TOKEN";
        let c = new_channel(&key(), &channel(url)).expect("accepted");
        assert_eq!(c.target, "https://discord.com/…");
        assert_eq!(c.per_minute, DEFAULT_PER_MINUTE);
        assert!(!String::from_utf8_lossy(&c.url_sealed).contains("TOKEN"));
        let opened = open_url(&key(), "ops", &c.url_sealed, false).expect("opens");
        assert_eq!(opened.expose().as_str(), url);
        assert!(
            open_url(&key(), "other", &c.url_sealed, false).is_err(),
            "bound to its channel"
        );
    }

    #[test]
    fn channel_refusals() {
        let bad = |req: ChannelRequest| new_channel(&key(), &req).expect_err("refused");
        assert!(matches!(
            bad(ChannelRequest {
                kind: "teams".into(),
                ..channel("https://x.example/")
            }),
            AlertConfigError::Kind(_)
        ));
        assert!(matches!(
            bad(channel("http://127.0.0.1:9/hook")),
            AlertConfigError::Target(TargetError::Scheme(_))
        ));
        assert!(matches!(
            bad(channel("not a url")),
            AlertConfigError::Target(TargetError::NotAUrl(_))
        ));
        assert!(matches!(
            bad(ChannelRequest {
                secret: Some("0123456789abcdef".into()),
                ..channel("https://x.example/")
            }),
            AlertConfigError::Secret(_)
        ));
        assert!(matches!(
            bad(ChannelRequest {
                per_minute: Some(0),
                ..channel("https://x.example/")
            }),
            AlertConfigError::PerMinute
        ));
        let local = new_channel(
            &key(),
            &ChannelRequest {
                kind: "json".into(),
                allow_private: true,
                secret: Some("0123456789abcdef".into()),
                ..channel("http://127.0.0.1:9/hook")
            },
        )
        .expect("the danger flag allows it");
        assert!(local.secret_sealed.is_some());
    }

    fn rule(expr: &str) -> RuleRequest {
        RuleRequest {
            name: "r".into(),
            expr: expr.into(),
            channel: "ops".into(),
            device: None,
            owner: None,
            new_metric: false,
        }
    }

    #[test]
    fn rules_are_checked_and_canonical() {
        let known = vec!["humidity".to_owned(), "temperature".to_owned()];
        let r = new_rule(&rule("temperature>30 for 300s"), &known).expect("ok");
        assert_eq!(r.expr, "temperature > 30 for 5m");
        assert_eq!(r.scope, RuleScope::Fleet);
        assert!(matches!(
            new_rule(&rule("pressure > 1000"), &known),
            Err(AlertConfigError::UnknownMetric { .. })
        ));
        assert!(
            new_rule(
                &RuleRequest {
                    new_metric: true,
                    ..rule("pressure > 1000")
                },
                &known
            )
            .is_ok()
        );
        assert!(matches!(
            new_rule(&rule("offline 10m"), &known),
            Err(AlertConfigError::Expr(_))
        ));
        let scoped = new_rule(
            &RuleRequest {
                owner: Some("user:ann".into()),
                ..rule("offline for 10m")
            },
            &known,
        )
        .expect("ok");
        assert_eq!(scoped.scope, RuleScope::Owner("user:ann".into()));
        assert!(matches!(
            new_rule(
                &RuleRequest {
                    device: Some("gh-1".into()),
                    ..rule("handshake-failures > 5 in 1m")
                },
                &known
            ),
            Err(AlertConfigError::NotPerDevice(_))
        ));
        assert!(matches!(
            new_rule(
                &RuleRequest {
                    device: Some("gh-1".into()),
                    owner: Some("user:ann".into()),
                    ..rule("offline for 10m")
                },
                &known
            ),
            Err(AlertConfigError::TwoScopes)
        ));
    }
}

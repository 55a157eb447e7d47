//! What a notification says, in the body each kind of receiver expects,
//! and how a generic receiver can check that Rampart sent it.
//!
//! - Discord: `{"content": "...", "allowed_mentions": {"parse": []}}` (no
//!   `@everyone` from a device id or a rule name, ever), at most 2,000
//!   characters;
//! - Slack: `{"text": "..."}`;
//! - generic JSON: the structured alert, for scripts.
//!
//! Every delivery carries an [`idempotency_key`] (`Idempotency-Key`
//! header) that is the same on each retry of one notification, so an
//! at-least-once outbox does not make a careful receiver act twice. A
//! channel with a signing secret adds [`SIGNATURE_HEADER`]:
//! `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`, the scheme Stripe
//! and GitHub receivers already know how to check.

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::evaluate::Change;

/// Header carrying the HMAC signature of a generic JSON delivery.
pub const SIGNATURE_HEADER: &str = "X-Rampart-Signature";
/// Header carrying the idempotency key of every delivery.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Discord refuses longer `content`.
pub const DISCORD_MAX_CONTENT: usize = 2_000;

/// The receiver's dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelKind {
    /// Discord webhook (`{"content"}`).
    Discord,
    /// Slack incoming webhook (`{"text"}`).
    Slack,
    /// Generic JSON, optionally signed.
    Json,
}

impl ChannelKind {
    /// The CLI and API name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Discord => "discord",
            ChannelKind::Slack => "slack",
            ChannelKind::Json => "json",
        }
    }

    /// Parses the CLI and API name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "discord" => Some(ChannelKind::Discord),
            "slack" => Some(ChannelKind::Slack),
            "json" => Some(ChannelKind::Json),
            _ => None,
        }
    }
}

/// One notification: an alert firing or resolving.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Message<'a> {
    /// The alert's number (stable across its firing and resolving).
    pub alert_id: u64,
    /// The rule's name.
    pub rule: &'a str,
    /// The rule's expression, canonical text.
    pub expr: &'a str,
    /// The device id, source address or `campaign:ID`.
    pub subject: &'a str,
    /// Firing or resolved.
    pub change: Change,
    /// When it changed, Unix ms.
    pub at_ms: u64,
    /// The deciding value, if any.
    pub value: Option<f64>,
    /// The alert's page in the console, if the public URL is known.
    pub link: Option<&'a str>,
}

/// The key that stays the same over every retry of one notification.
pub fn idempotency_key(alert_id: u64, change: Change) -> String {
    let what = match change {
        Change::Firing => "firing",
        Change::Resolved => "resolved",
    };
    format!("rampart-alert-{alert_id}-{what}")
}

fn rfc3339(at_ms: u64) -> String {
    let nanos = i128::from(at_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| at_ms.to_string())
}

/// One line of text for chat receivers.
pub fn summary(m: &Message<'_>) -> String {
    let (mark, word) = match m.change {
        Change::Firing => ("🔴", "FIRING"),
        Change::Resolved => ("🟢", "RESOLVED"),
    };
    let mut text = format!("{mark} {word}: {} on {} ({})", m.rule, m.subject, m.expr);
    if let Some(v) = m.value {
        text.push_str(&format!(", value {v}"));
    }
    text.push_str(&format!(" at {}", rfc3339(m.at_ms)));
    if let Some(link) = m.link {
        text.push_str(&format!(" {link}"));
    }
    text
}

/// The request body for a receiver of `kind`.
pub fn render(kind: ChannelKind, m: &Message<'_>) -> Vec<u8> {
    let body = match kind {
        ChannelKind::Discord => {
            let mut content = summary(m);
            if content.chars().count() > DISCORD_MAX_CONTENT {
                content = content.chars().take(DISCORD_MAX_CONTENT - 1).collect();
                content.push('…');
            }
            json!({"content": content, "allowed_mentions": {"parse": []}})
        }
        ChannelKind::Slack => json!({"text": summary(m)}),
        ChannelKind::Json => json!({
            "alertId": m.alert_id,
            "state": match m.change { Change::Firing => "firing", Change::Resolved => "resolved" },
            "rule": m.rule,
            "expr": m.expr,
            "subject": m.subject,
            "at": rfc3339(m.at_ms),
            "value": m.value,
            "link": m.link,
        }),
    };
    body.to_string().into_bytes()
}

/// The signature header value for `body` sent at `unix_s`.
pub fn sign(secret: &[u8], unix_s: u64, body: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(unix_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={unix_s},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message<'static> {
        Message {
            alert_id: 42,
            rule: "greenhouse hot",
            expr: "temperature > 30 for 5m",
            subject: "greenhouse-1",
            change: Change::Firing,
            at_ms: 1_764_115_200_000,
            value: Some(31.5),
            link: Some("https://rampart.example/alerts/42"),
        }
    }

    fn parsed(kind: ChannelKind, m: &Message<'_>) -> serde_json::Value {
        serde_json::from_slice(&render(kind, m)).expect("json")
    }

    #[test]
    fn discord_and_slack_get_one_line() {
        let d = parsed(ChannelKind::Discord, &message());
        assert_eq!(
            d["content"],
            "🔴 FIRING: greenhouse hot on greenhouse-1 (temperature > 30 for 5m), value 31.5 at 2025-11-26T00:00:00Z https://rampart.example/alerts/42"
        );
        assert_eq!(d["allowed_mentions"]["parse"], json!([]));
        let s = parsed(
            ChannelKind::Slack,
            &Message {
                change: Change::Resolved,
                value: None,
                link: None,
                ..message()
            },
        );
        assert_eq!(
            s["text"],
            "🟢 RESOLVED: greenhouse hot on greenhouse-1 (temperature > 30 for 5m) at 2025-11-26T00:00:00Z"
        );
    }

    #[test]
    fn discord_content_is_cut_to_its_limit() {
        let long = "x".repeat(3_000);
        let d = parsed(
            ChannelKind::Discord,
            &Message {
                rule: &long,
                ..message()
            },
        );
        let content = d["content"].as_str().expect("text");
        assert_eq!(content.chars().count(), DISCORD_MAX_CONTENT);
        assert!(content.ends_with('…'));
    }

    #[test]
    fn generic_json_is_structured() {
        let j = parsed(ChannelKind::Json, &message());
        assert_eq!(j["alertId"], 42);
        assert_eq!(j["state"], "firing");
        assert_eq!(j["subject"], "greenhouse-1");
        assert_eq!(j["value"], 31.5);
        assert_eq!(j["at"], "2025-11-26T00:00:00Z");
    }

    #[test]
    fn signatures_and_keys_are_stable() {
        let body = render(ChannelKind::Json, &message());
        let a = sign(b"secret", 1_764_115_200, &body);
        assert_eq!(a, sign(b"secret", 1_764_115_200, &body));
        assert!(a.starts_with("t=1764115200,v1="));
        assert_eq!(a.len(), "t=1764115200,v1=".len() + 64);
        assert_ne!(a, sign(b"other", 1_764_115_200, &body));
        assert_ne!(a, sign(b"secret", 1_764_115_201, &body));
        assert_eq!(
            idempotency_key(42, Change::Firing),
            "rampart-alert-42-firing"
        );
        assert_ne!(
            idempotency_key(42, Change::Firing),
            idempotency_key(42, Change::Resolved)
        );
        assert_eq!(ChannelKind::parse("discord"), Some(ChannelKind::Discord));
        assert_eq!(ChannelKind::parse("teams"), None);
    }
}

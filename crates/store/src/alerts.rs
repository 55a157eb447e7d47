//! Alerts (issue 10): webhook channels, rules, the alerts they raise and
//! the outbox of notifications. One trait, [`AlertStore`], implemented by
//! both backends.
//!
//! The store does not parse rule expressions or webhook URLs: the caller
//! (`rampart_alerts`) validated them and hands over the canonical
//! expression and the sealed URL. What the store guarantees:
//!
//! - one firing alert per (rule, subject): [`AlertStore::fire_alert`] on a
//!   firing pair returns `None`;
//! - the notification of a firing or a resolution is queued in the same
//!   transaction as the alert change, so a crash cannot drop it;
//! - configuration changes are audited and announced on the change feed
//!   ([`crate::ChangeKind::AlertConfigChanged`]) so a running `serve`
//!   reloads its rules within its poll interval.

use async_trait::async_trait;
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::millis::from_ms;
use crate::{Actor, AuditEntry, Result, StoreError};

/// Longest channel or rule name.
pub const MAX_ALERT_NAME: usize = 64;

/// Checks a channel or rule name: 1 to 64 of `[A-Za-z0-9._-]`.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ALERT_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidAlertName(name.to_owned()))
    }
}

/// A webhook channel, as shown (never with its URL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertChannel {
    /// Its number.
    pub id: u64,
    /// Its unique name.
    pub name: String,
    /// `discord`, `slack` or `json`.
    pub kind: String,
    /// The redacted target (scheme and host).
    pub target: String,
    /// Whether deliveries are signed (generic JSON with a secret).
    pub signed: bool,
    /// Whether private and loopback targets are allowed (the danger flag).
    pub allow_private: bool,
    /// Most deliveries per minute.
    pub per_minute: u32,
    /// When it was added.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who added it.
    pub created_by: String,
}

/// A channel to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlertChannel {
    /// Unique name.
    pub name: String,
    /// `discord`, `slack` or `json`.
    pub kind: String,
    /// The redacted target, for display.
    pub target: String,
    /// The URL, sealed by the caller.
    pub url_sealed: Vec<u8>,
    /// The signing secret, sealed by the caller, if any.
    pub secret_sealed: Option<Vec<u8>>,
    /// The danger flag.
    pub allow_private: bool,
    /// Most deliveries per minute (at least 1).
    pub per_minute: u32,
}

/// What a delivery needs that nobody else may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSecrets {
    /// The sealed URL.
    pub url_sealed: Vec<u8>,
    /// The sealed signing secret, if any.
    pub secret_sealed: Option<Vec<u8>>,
}

/// Whose events a rule watches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "value")]
pub enum RuleScope {
    /// Every device.
    Fleet,
    /// Devices of one owner (`user:ID`).
    Owner(String),
    /// One device.
    Device(String),
}

impl RuleScope {
    pub(crate) fn columns(&self) -> (&'static str, Option<&str>) {
        match self {
            RuleScope::Fleet => ("fleet", None),
            RuleScope::Owner(o) => ("owner", Some(o)),
            RuleScope::Device(d) => ("device", Some(d)),
        }
    }

    pub(crate) fn from_columns(kind: &str, value: Option<String>) -> Result<Self> {
        match (kind, value) {
            ("fleet", None) => Ok(RuleScope::Fleet),
            ("owner", Some(v)) => Ok(RuleScope::Owner(v)),
            ("device", Some(v)) => Ok(RuleScope::Device(v)),
            (k, v) => Err(StoreError::Corrupt(format!("alert rule scope {k} {v:?}"))),
        }
    }
}

/// An alert rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertRule {
    /// Its number.
    pub id: u64,
    /// Its unique name.
    pub name: String,
    /// The canonical expression.
    pub expr: String,
    /// Whose events it watches.
    pub scope: RuleScope,
    /// The channel notified.
    pub channel: String,
    /// When it was added.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who added it.
    pub created_by: String,
}

/// A rule to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlertRule {
    /// Unique name.
    pub name: String,
    /// The canonical expression (validated by the caller).
    pub expr: String,
    /// Whose events it watches.
    pub scope: RuleScope,
    /// The channel's name.
    pub channel: String,
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertState {
    /// Its condition holds.
    Firing,
    /// Its condition cleared.
    Resolved,
    /// Its rule was removed while it fired.
    Closed,
}

impl AlertState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
            AlertState::Closed => "closed",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self> {
        match s {
            "firing" => Ok(AlertState::Firing),
            "resolved" => Ok(AlertState::Resolved),
            "closed" => Ok(AlertState::Closed),
            other => Err(StoreError::Corrupt(format!("alert state {other}"))),
        }
    }
}

/// An alert: a rule's condition holding for one subject, from firing to
/// resolution.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Its number.
    pub id: u64,
    /// The rule's number.
    pub rule_id: u64,
    /// The rule's name when it fired.
    pub rule: String,
    /// The rule's expression when it fired.
    pub expr: String,
    /// The device id, source address or `campaign:ID`.
    pub subject: String,
    /// Where it stands.
    pub state: AlertState,
    /// When it fired.
    #[serde(with = "time::serde::rfc3339")]
    pub fired_at: OffsetDateTime,
    /// The value that fired it.
    pub fired_value: Option<f64>,
    /// When it resolved (or was closed).
    #[serde(with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
    /// The value that resolved it.
    pub resolved_value: Option<f64>,
    /// When someone acknowledged it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub acked_at: Option<OffsetDateTime>,
    /// Who acknowledged it.
    pub acked_by: Option<String>,
}

/// Which alerts to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertQuery {
    /// Only in this state.
    pub state: Option<AlertState>,
    /// Only about this subject (a device id).
    pub subject: Option<String>,
    /// Only with an id below this (paging backwards).
    pub before: Option<u64>,
    /// At most this many (capped at 500).
    pub limit: u32,
}

/// Whether a delivery is still to be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// The receiver accepted it.
    Delivered,
    /// Given up: the dead letters.
    Dead,
}

impl DeliveryStatus {
    pub(crate) fn parse(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(DeliveryStatus::Pending),
            "delivered" => Ok(DeliveryStatus::Delivered),
            "dead" => Ok(DeliveryStatus::Dead),
            other => Err(StoreError::Corrupt(format!("delivery status {other}"))),
        }
    }
}

/// One notification to one channel, with what it says.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Its number.
    pub id: u64,
    /// The alert.
    pub alert_id: u64,
    /// The channel's number.
    pub channel_id: u64,
    /// `true` for the firing, `false` for the resolution.
    pub firing: bool,
    /// When the alert changed.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The deciding value.
    pub value: Option<f64>,
    /// The rule's name.
    pub rule: String,
    /// The rule's expression.
    pub expr: String,
    /// The subject.
    pub subject: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due.
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    /// What went wrong last.
    pub last_error: Option<String>,
}

/// What an attempt came to, for [`AlertStore::record_attempt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Delivered at this time.
    Delivered(OffsetDateTime),
    /// Failed; try again at this time.
    RetryAt(OffsetDateTime, String),
    /// Failed for good: to the dead letters.
    Dead(String),
}

/// Storage of alert channels, rules, alerts and their deliveries.
#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Adds a channel. Refused if the name exists
    /// ([`StoreError::AlertChannelExists`]).
    async fn add_alert_channel(&self, c: NewAlertChannel, actor: &Actor) -> Result<AlertChannel>;

    /// Every channel, by name.
    async fn alert_channels(&self) -> Result<Vec<AlertChannel>>;

    /// The sealed URL and secret of a channel, for delivery only.
    async fn alert_channel_secrets(&self, id: u64) -> Result<Option<ChannelSecrets>>;

    /// Removes a channel no rule uses ([`StoreError::AlertChannelInUse`]
    /// otherwise); its pending deliveries become dead letters.
    async fn remove_alert_channel(&self, name: &str, actor: &Actor) -> Result<AlertChannel>;

    /// Adds a rule notifying a channel. Refused if the name exists or the
    /// channel does not.
    async fn add_alert_rule(&self, r: NewAlertRule, actor: &Actor) -> Result<AlertRule>;

    /// Every rule, by id.
    async fn alert_rules(&self) -> Result<Vec<AlertRule>>;

    /// Removes a rule; its firing alerts are closed (no notification).
    async fn remove_alert_rule(&self, name: &str, actor: &Actor) -> Result<AlertRule>;

    /// Fires an alert for (rule, subject) and queues its notification.
    /// `None` if one is firing already (deduplicated) or the rule is gone.
    async fn fire_alert(
        &self,
        rule_id: u64,
        subject: &str,
        at: OffsetDateTime,
        value: Option<f64>,
    ) -> Result<Option<Alert>>;

    /// Resolves the firing alert of (rule, subject) and queues its
    /// notification. `None` if none is firing.
    async fn resolve_alert(
        &self,
        rule_id: u64,
        subject: &str,
        at: OffsetDateTime,
        value: Option<f64>,
    ) -> Result<Option<Alert>>;

    /// Every firing alert (a restarted evaluator starts from these).
    async fn firing_alerts(&self) -> Result<Vec<Alert>>;

    /// Alerts matching `query`, newest first.
    async fn alerts(&self, query: &AlertQuery) -> Result<Vec<Alert>>;

    /// One alert.
    async fn alert(&self, id: u64) -> Result<Option<Alert>>;

    /// Acknowledges an alert (audited). Acknowledging twice keeps the first.
    async fn acknowledge_alert(&self, id: u64, actor: &Actor) -> Result<Alert>;

    /// Pending deliveries due at `now`, oldest first, at most `limit`.
    async fn due_deliveries(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Delivery>>;

    /// When the next pending delivery is due, if any.
    async fn next_delivery_due(&self) -> Result<Option<OffsetDateTime>>;

    /// Records an attempt of a pending delivery (counted); a delivery no
    /// longer pending is left alone.
    async fn record_attempt(&self, id: u64, outcome: AttemptOutcome) -> Result<()>;

    /// Dead letters, newest first, at most `limit`.
    async fn dead_deliveries(&self, limit: u32) -> Result<Vec<Delivery>>;

    /// Puts a dead letter back in the queue, due now (audited).
    async fn retry_delivery(&self, id: u64, actor: &Actor) -> Result<Delivery>;
}

/// Columns of `alert_channels`, in [`ChannelRow`] order.
pub(crate) const CHANNEL_COLUMNS: &str = "id, name, kind, target, secret_sealed IS NOT NULL, \
     allow_private, per_minute, created_at, created_by";
/// Columns of `alert_rules` joined with the channel name, in [`RuleRow`] order.
pub(crate) const RULE_COLUMNS: &str = "r.id, r.name, r.expr, r.scope, r.scope_value, c.name, \
     r.created_at, r.created_by";
/// Columns of `alerts`, in [`AlertRow`] order.
pub(crate) const ALERT_COLUMNS: &str = "id, rule_id, rule_name, expr, subject, state, fired_at, \
     fired_value, resolved_at, resolved_value, acked_at, acked_by";
/// Columns of `alert_outbox` joined with `alerts` (as `a`), in
/// [`DeliveryRow`] order.
pub(crate) const DELIVERY_COLUMNS: &str = "o.id, o.alert_id, o.channel_id, o.change, o.at, \
     o.value, a.rule_name, a.expr, a.subject, o.status, o.attempts, o.next_attempt_at, \
     o.last_error";

/// Largest page of alerts or deliveries.
pub(crate) const MAX_PAGE: u32 = 500;

fn id_of(what: &str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v}")))
}

/// An `alert_channels` row as stored.
pub(crate) struct ChannelRow {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) kind: String,
    pub(crate) target: String,
    pub(crate) signed: bool,
    pub(crate) allow_private: bool,
    pub(crate) per_minute: i64,
    pub(crate) created_at: i64,
    pub(crate) created_by: String,
}

impl ChannelRow {
    pub(crate) fn into_channel(self) -> Result<AlertChannel> {
        Ok(AlertChannel {
            id: id_of("channel id", self.id)?,
            name: self.name,
            kind: self.kind,
            target: self.target,
            signed: self.signed,
            allow_private: self.allow_private,
            per_minute: u32::try_from(self.per_minute).unwrap_or(u32::MAX),
            created_at: from_ms(self.created_at)?,
            created_by: self.created_by,
        })
    }
}

/// An `alert_rules` row as stored, with its channel's name.
pub(crate) struct RuleRow {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) expr: String,
    pub(crate) scope: String,
    pub(crate) scope_value: Option<String>,
    pub(crate) channel: String,
    pub(crate) created_at: i64,
    pub(crate) created_by: String,
}

impl RuleRow {
    pub(crate) fn into_rule(self) -> Result<AlertRule> {
        Ok(AlertRule {
            id: id_of("rule id", self.id)?,
            name: self.name,
            expr: self.expr,
            scope: RuleScope::from_columns(&self.scope, self.scope_value)?,
            channel: self.channel,
            created_at: from_ms(self.created_at)?,
            created_by: self.created_by,
        })
    }
}

/// An `alerts` row as stored.
pub(crate) struct AlertRow {
    pub(crate) id: i64,
    pub(crate) rule_id: i64,
    pub(crate) rule: String,
    pub(crate) expr: String,
    pub(crate) subject: String,
    pub(crate) state: String,
    pub(crate) fired_at: i64,
    pub(crate) fired_value: Option<f64>,
    pub(crate) resolved_at: Option<i64>,
    pub(crate) resolved_value: Option<f64>,
    pub(crate) acked_at: Option<i64>,
    pub(crate) acked_by: Option<String>,
}

impl AlertRow {
    pub(crate) fn into_alert(self) -> Result<Alert> {
        Ok(Alert {
            id: id_of("alert id", self.id)?,
            rule_id: id_of("rule id", self.rule_id)?,
            rule: self.rule,
            expr: self.expr,
            subject: self.subject,
            state: AlertState::parse(&self.state)?,
            fired_at: from_ms(self.fired_at)?,
            fired_value: self.fired_value,
            resolved_at: self.resolved_at.map(from_ms).transpose()?,
            resolved_value: self.resolved_value,
            acked_at: self.acked_at.map(from_ms).transpose()?,
            acked_by: self.acked_by,
        })
    }
}

/// An `alert_outbox` row as stored, with its alert's text.
pub(crate) struct DeliveryRow {
    pub(crate) id: i64,
    pub(crate) alert_id: i64,
    pub(crate) channel_id: i64,
    pub(crate) change: String,
    pub(crate) at: i64,
    pub(crate) value: Option<f64>,
    pub(crate) rule: String,
    pub(crate) expr: String,
    pub(crate) subject: String,
    pub(crate) status: String,
    pub(crate) attempts: i64,
    pub(crate) next_attempt_at: i64,
    pub(crate) last_error: Option<String>,
}

impl DeliveryRow {
    pub(crate) fn into_delivery(self) -> Result<Delivery> {
        Ok(Delivery {
            id: id_of("delivery id", self.id)?,
            alert_id: id_of("alert id", self.alert_id)?,
            channel_id: id_of("channel id", self.channel_id)?,
            firing: self.change == "firing",
            at: from_ms(self.at)?,
            value: self.value,
            rule: self.rule,
            expr: self.expr,
            subject: self.subject,
            status: DeliveryStatus::parse(&self.status)?,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            next_attempt_at: from_ms(self.next_attempt_at)?,
            last_error: self.last_error,
        })
    }
}

/// Cuts an error text to a sane length for storage.
pub(crate) fn short_error(text: &str) -> String {
    const MAX: usize = 500;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The audit row of a channel added (never with its URL).
pub(crate) fn channel_added(c: &NewAlertChannel, actor: &Actor) -> AuditEntry {
    AuditEntry {
        actor: actor.clone(),
        action: "alert.channel.add".into(),
        subject: Some(c.name.clone()),
        detail: json!({
            "kind": c.kind, "target": c.target, "signed": c.secret_sealed.is_some(),
            "allow_private": c.allow_private, "per_minute": c.per_minute,
        }),
    }
}

/// The audit row of a channel removed.
pub(crate) fn channel_removed(c: &AlertChannel, dead: u64, actor: &Actor) -> AuditEntry {
    AuditEntry {
        actor: actor.clone(),
        action: "alert.channel.remove".into(),
        subject: Some(c.name.clone()),
        detail: json!({ "kind": c.kind, "target": c.target, "pending_dropped": dead }),
    }
}

/// The audit row of a rule added.
pub(crate) fn rule_added(r: &AlertRule, actor: &Actor) -> AuditEntry {
    AuditEntry {
        actor: actor.clone(),
        action: "alert.rule.add".into(),
        subject: Some(r.name.clone()),
        detail: json!({ "expr": r.expr, "scope": r.scope, "channel": r.channel }),
    }
}

/// The audit row of a rule removed.
pub(crate) fn rule_removed(r: &AlertRule, closed: u64, actor: &Actor) -> AuditEntry {
    AuditEntry {
        actor: actor.clone(),
        action: "alert.rule.remove".into(),
        subject: Some(r.name.clone()),
        detail: json!({ "expr": r.expr, "closed_alerts": closed }),
    }
}

/// The audit row of an acknowledgement.
pub(crate) fn alert_acked(a: &Alert, actor: &Actor) -> AuditEntry {
    AuditEntry {
        actor: actor.clone(),
        action: "alert.acknowledge".into(),
        subject: Some(a.subject.clone()),
        detail: json!({ "alert": a.id, "rule": a.rule }),
    }
}

/// The audit row of a dead letter queued again.
pub(crate) fn delivery_retried(d: &Delivery, actor: &Actor) -> AuditEntry {
    AuditEntry {
        actor: actor.clone(),
        action: "alert.delivery.retry".into(),
        subject: Some(d.subject.clone()),
        detail: json!({ "delivery": d.id, "alert": d.alert_id, "channel": d.channel_id }),
    }
}

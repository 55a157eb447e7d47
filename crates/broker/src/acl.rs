//! Access control: who may publish to and subscribe to which topics.
//!
//! Rules only grant; anything no rule grants is denied. The defaults are
//! DESIGN.md "Topics": a device publishes to `devices/{cn}/+/up` and
//! subscribes to `devices/{cn}/+/down`; a service subscribes to `devices/#`
//! and publishes commands and desired state. The `bind`, `ota` and `cert`
//! downlinks are published only by Rampart itself, which does not go
//! through this check. Extra rules come from `[[broker.acl]]` in the config.

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, IdentityKind};
use crate::topic;

/// What a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// PUBLISH to matching topics.
    Publish,
    /// SUBSCRIBE to filters within the pattern.
    Subscribe,
    /// Both.
    Readwrite,
}

impl Access {
    fn allows_publish(self) -> bool {
        matches!(self, Access::Publish | Access::Readwrite)
    }
    fn allows_subscribe(self) -> bool {
        matches!(self, Access::Subscribe | Access::Readwrite)
    }
}

/// One `[[broker.acl]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// `"device"`, `"service"`, or one exact identity name.
    pub identity: String,
    /// `"publish"`, `"subscribe"` or `"readwrite"`.
    pub access: Access,
    /// Topic pattern; `{cn}` stands for the connecting identity.
    pub topic: String,
}

/// Why a configured rule is refused.
#[derive(Debug, thiserror::Error)]
#[error("broker.acl rule for '{identity}' with topic '{topic}': {why}")]
pub struct AclRuleError {
    identity: String,
    topic: String,
    why: String,
}

/// The compiled rule set.
#[derive(Debug, Clone)]
pub struct Acl {
    rules: Vec<AclRule>,
}

fn rule(identity: &str, access: Access, topic: &str) -> AclRule {
    AclRule {
        identity: identity.to_owned(),
        access,
        topic: topic.to_owned(),
    }
}

impl Acl {
    /// The default rules plus `extra`, each validated.
    pub fn new(extra: &[AclRule]) -> Result<Self, AclRuleError> {
        let mut rules = vec![
            rule("device", Access::Publish, "devices/{cn}/+/up"),
            rule("device", Access::Subscribe, "devices/{cn}/+/down"),
            rule("service", Access::Subscribe, "devices/#"),
            rule("service", Access::Publish, "devices/+/cmd/down"),
            rule("service", Access::Publish, "devices/+/state/down"),
        ];
        for r in extra {
            let fail = |why: String| AclRuleError {
                identity: r.identity.clone(),
                topic: r.topic.clone(),
                why,
            };
            let probe = r.topic.replace("{cn}", "x");
            if probe.contains(['{', '}']) {
                return Err(fail("only {cn} may be substituted".into()));
            }
            topic::validate_filter(&probe).map_err(|e| fail(e.to_string()))?;
            if r.identity != "device"
                && r.identity != "service"
                && rampart_proto::DeviceId::parse(&r.identity).is_err()
            {
                return Err(fail(
                    "identity must be \"device\", \"service\" or a valid identity name".into(),
                ));
            }
            rules.push(r.clone());
        }
        Ok(Self { rules })
    }

    fn applicable<'a>(&'a self, who: &'a Identity) -> impl Iterator<Item = (Access, String)> + 'a {
        let kind = match who.kind {
            IdentityKind::Device => "device",
            IdentityKind::Service => "service",
        };
        self.rules
            .iter()
            .filter(move |r| r.identity == kind || r.identity == who.id.as_str())
            .map(move |r| (r.access, r.topic.replace("{cn}", who.id.as_str())))
    }

    /// Whether `who` may publish to topic name `name`.
    pub fn may_publish(&self, who: &Identity, name: &str) -> bool {
        self.applicable(who)
            .any(|(access, pattern)| access.allows_publish() && topic::matches(&pattern, name))
    }

    /// Whether `who` may subscribe to `filter` (the filter part of a shared subscription).
    pub fn may_subscribe(&self, who: &Identity, filter: &str) -> bool {
        self.applicable(who)
            .any(|(access, pattern)| access.allows_subscribe() && topic::covers(&pattern, filter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_proto::DeviceId;

    fn device(id: &str) -> Identity {
        Identity::for_tests(DeviceId::parse(id).expect("id"), IdentityKind::Device)
    }

    fn service(id: &str) -> Identity {
        Identity::for_tests(DeviceId::parse(id).expect("id"), IdentityKind::Service)
    }

    #[test]
    fn devices_stay_in_their_own_subtree() {
        let acl = Acl::new(&[]).expect("defaults");
        let d = device("greenhouse-1");
        assert!(acl.may_publish(&d, "devices/greenhouse-1/telemetry/up"));
        assert!(!acl.may_publish(&d, "devices/greenhouse-2/telemetry/up"));
        assert!(!acl.may_publish(&d, "devices/greenhouse-1/cmd/down"));
        assert!(!acl.may_publish(&d, "devices/greenhouse-1/telemetry/up/extra"));
        assert!(acl.may_subscribe(&d, "devices/greenhouse-1/+/down"));
        assert!(acl.may_subscribe(&d, "devices/greenhouse-1/ota/down"));
        assert!(!acl.may_subscribe(&d, "devices/greenhouse-1/#"));
        assert!(!acl.may_subscribe(&d, "devices/+/cmd/down"));
        assert!(!acl.may_subscribe(&d, "#"));
    }

    #[test]
    fn services_read_everything_and_send_only_commands_and_state() {
        let acl = Acl::new(&[]).expect("defaults");
        let s = service("consumer");
        assert!(acl.may_subscribe(&s, "devices/#"));
        assert!(acl.may_subscribe(&s, "devices/+/telemetry/up"));
        assert!(acl.may_publish(&s, "devices/x/cmd/down"));
        assert!(acl.may_publish(&s, "devices/x/state/down"));
        for internal in ["bind", "ota", "cert"] {
            assert!(!acl.may_publish(&s, &format!("devices/x/{internal}/down")));
        }
        assert!(!acl.may_publish(&s, "devices/x/telemetry/up"));
        assert!(!acl.may_subscribe(&s, "#"));
    }

    #[test]
    fn extra_rules_grant_by_kind_or_name() {
        let acl = Acl::new(&[
            rule("device", Access::Readwrite, "devices/{cn}/#"),
            rule("dashboard", Access::Subscribe, "$SYS/#"),
        ])
        .expect("valid");
        assert!(acl.may_subscribe(&device("a"), "devices/a/#"));
        assert!(acl.may_publish(&device("a"), "devices/a/custom"));
        assert!(!acl.may_publish(&device("a"), "devices/b/custom"));
        assert!(acl.may_subscribe(&service("dashboard"), "$SYS/broker/uptime"));
        assert!(!acl.may_subscribe(&service("other"), "$SYS/broker/uptime"));
    }

    #[test]
    fn malformed_rules_are_refused_with_their_topic() {
        for (id, topic) in [
            ("device", "devices/{id}/#"),
            ("device", "a/#/b"),
            ("not valid!", "a"),
        ] {
            let err = Acl::new(&[rule(id, Access::Publish, topic)]).expect_err("refused");
            assert!(err.to_string().contains(topic), "{err}");
        }
    }
}

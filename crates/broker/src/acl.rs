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

/// One level of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// This text exactly.
    Exact(String),
    /// The connecting identity (`{cn}` alone in its level).
    Cn,
    /// Text with `{cn}` inside it.
    Template(String),
    /// `+`.
    Plus,
    /// `#` (always last).
    Hash,
}

/// A rule split into levels once, so that checks on the publish path do
/// not re-parse patterns or allocate.
#[derive(Debug, Clone)]
struct Compiled {
    identity: String,
    access: Access,
    levels: Vec<Level>,
}

impl Compiled {
    fn new(r: &AclRule) -> Self {
        let levels = r
            .topic
            .split('/')
            .map(|l| match l {
                "{cn}" => Level::Cn,
                "+" => Level::Plus,
                "#" => Level::Hash,
                l if l.contains("{cn}") => Level::Template(l.to_owned()),
                l => Level::Exact(l.to_owned()),
            })
            .collect();
        Self {
            identity: r.identity.clone(),
            access: r.access,
            levels,
        }
    }

    fn level_is(level: &Level, part: &str, cn: &str) -> bool {
        match level {
            Level::Exact(e) => e == part,
            Level::Cn => part == cn,
            Level::Template(t) => {
                // `{cn}` appears once or more; compare without allocating.
                let mut rest = part;
                let mut pieces = t.split("{cn}").peekable();
                while let Some(piece) = pieces.next() {
                    let Some(after) = rest.strip_prefix(piece) else {
                        return false;
                    };
                    rest = after;
                    if pieces.peek().is_some() {
                        let Some(after) = rest.strip_prefix(cn) else {
                            return false;
                        };
                        rest = after;
                    }
                }
                rest.is_empty()
            }
            Level::Plus | Level::Hash => true,
        }
    }

    /// Topic name matching (MQTT 5 §4.7), `$` topics excluded from leading wildcards.
    fn matches(&self, name: &str, cn: &str) -> bool {
        let mut parts = name.split('/');
        for (i, level) in self.levels.iter().enumerate() {
            let wildcard = matches!(level, Level::Plus | Level::Hash);
            if i == 0 && wildcard && name.starts_with('$') {
                return false;
            }
            if *level == Level::Hash {
                return true;
            }
            match parts.next() {
                Some(part) if Self::level_is(level, part, cn) => {}
                _ => return false,
            }
        }
        parts.next().is_none()
    }

    /// Whether every topic `filter` can match is matched by this pattern.
    fn covers(&self, filter: &str, cn: &str) -> bool {
        let mut parts = filter.split('/');
        for level in &self.levels {
            if *level == Level::Hash {
                return true;
            }
            let ok = match (level, parts.next()) {
                (_, None) => false,
                (Level::Plus, Some(part)) => part != "#",
                (_, Some("+" | "#")) => false,
                (level, Some(part)) => Self::level_is(level, part, cn),
            };
            if !ok {
                return false;
            }
        }
        parts.next().is_none()
    }
}

/// The compiled rule set.
#[derive(Debug, Clone)]
pub struct Acl {
    rules: Vec<Compiled>,
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
        Ok(Self {
            rules: rules.iter().map(Compiled::new).collect(),
        })
    }

    fn applicable<'a>(&'a self, who: &'a Identity) -> impl Iterator<Item = &'a Compiled> + 'a {
        let kind = match who.kind {
            IdentityKind::Device => "device",
            IdentityKind::Service => "service",
        };
        self.rules
            .iter()
            .filter(move |r| r.identity == kind || r.identity == who.id.as_str())
    }

    /// Whether `who` may publish to topic name `name`.
    pub fn may_publish(&self, who: &Identity, name: &str) -> bool {
        self.applicable(who)
            .any(|r| r.access.allows_publish() && r.matches(name, who.id.as_str()))
    }

    /// Whether `who` may subscribe to `filter` (the filter part of a shared subscription).
    pub fn may_subscribe(&self, who: &Identity, filter: &str) -> bool {
        self.applicable(who)
            .any(|r| r.access.allows_subscribe() && r.covers(filter, who.id.as_str()))
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

    fn level() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just("a".to_owned()),
            Just("dev".to_owned()),
            Just(String::new()),
            Just("$s".to_owned()),
            Just("x-dev".to_owned()),
        ]
    }

    proptest::proptest! {
        #[test]
        fn compiled_rules_agree_with_textual_matching(
            pattern in proptest::collection::vec(
                proptest::prop_oneof![level(), proptest::strategy::Just("{cn}".to_owned()),
                    proptest::strategy::Just("x-{cn}".to_owned()), proptest::strategy::Just("+".to_owned())], 1..4),
            hash in proptest::arbitrary::any::<bool>(),
            name in proptest::collection::vec(level(), 1..5),
            filter in proptest::collection::vec(
                proptest::prop_oneof![level(), proptest::strategy::Just("+".to_owned())], 1..4),
            filter_hash in proptest::arbitrary::any::<bool>(),
        ) {
            let mut pattern = pattern.join("/");
            if hash { pattern.push_str("/#"); }
            let name = name.join("/");
            let mut filter = filter.join("/");
            if filter_hash { filter.push_str("/#"); }
            let r = AclRule { identity: "device".into(), access: Access::Readwrite, topic: pattern.clone() };
            let compiled = Compiled::new(&r);
            let text = pattern.replace("{cn}", "dev");
            proptest::prop_assert_eq!(compiled.matches(&name, "dev"), topic::matches(&text, &name), "{} vs {}", pattern, name);
            proptest::prop_assert_eq!(compiled.covers(&filter, "dev"), topic::covers(&text, &filter), "{} vs {}", pattern, filter);
        }
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

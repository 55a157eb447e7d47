//! Topic names and topic filters: validation and matching (MQTT 5 §4.7,
//! MQTT 3.1.1 §4.7), and shared subscriptions (MQTT 5 §4.8.2).

/// Why a topic name or filter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Zero-length topic (MQTT 5 §4.7.3: "at least one character").
    #[error("topic is empty")]
    Empty,
    /// A topic name (of a PUBLISH) holds `+` or `#` (§4.7.1).
    #[error("a topic name must not contain wildcards")]
    WildcardInName,
    /// `#` not alone in the last level, or `+` not alone in its level (§4.7.1.2, §4.7.1.3).
    #[error("wildcard not alone in its topic level, or '#' not last")]
    MisplacedWildcard,
    /// U+0000 in a topic (§4.7.3).
    #[error("topic contains U+0000")]
    Nul,
    /// `$share/` without a valid group name or filter (MQTT 5 §4.8.2).
    #[error(
        "malformed shared subscription: $share/{{group}}/{{filter}} with a group of no '/', '+' or '#'"
    )]
    BadShare,
    /// Longer than the broker accepts.
    #[error("topic is longer than {0} bytes")]
    TooLong(usize),
}

/// Longest topic accepted, in bytes; MQTT allows 65,535 but nothing sane needs it.
pub const MAX_TOPIC_LEN: usize = 1024;

/// Validates the topic name of a PUBLISH.
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    check_common(name)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Validates a (non-shared) topic filter.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "#" if last => {}
            "+" => {}
            l if l.contains(['+', '#']) => return Err(TopicError::MisplacedWildcard),
            "#" => return Err(TopicError::MisplacedWildcard),
            _ => {}
        }
    }
    Ok(())
}

fn check_common(t: &str) -> Result<(), TopicError> {
    if t.is_empty() {
        return Err(TopicError::Empty);
    }
    if t.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(MAX_TOPIC_LEN));
    }
    if t.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// A subscription filter, possibly shared.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subscription<'a> {
    /// The share group for `$share/{group}/{filter}`.
    pub group: Option<&'a str>,
    /// The filter that is matched against topic names.
    pub filter: &'a str,
}

/// Splits and validates a SUBSCRIBE filter, recognising `$share/`.
pub fn parse_subscription(raw: &str) -> Result<Subscription<'_>, TopicError> {
    if let Some(rest) = raw.strip_prefix("$share/") {
        let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
        if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
            return Err(TopicError::BadShare);
        }
        validate_filter(filter)?;
        return Ok(Subscription {
            group: Some(group),
            filter,
        });
    }
    validate_filter(raw)?;
    Ok(Subscription {
        group: None,
        filter: raw,
    })
}

/// Whether `filter` matches topic `name`. Both must be valid. A filter
/// starting with a wildcard does not match names starting with `$`
/// (MQTT 5 §4.7.2).
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(nl)) if fl == nl => {}
            (None, None) => return true,
            // "a/#" also matches "a" (§4.7.1.2): the parent level.
            _ => return false,
        }
    }
}

/// Whether every topic that `inner` can match is also matched by `outer`
/// (used to check a SUBSCRIBE filter against an ACL pattern).
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(il)) if il != "#" => {}
            (Some(ol), Some(il)) if ol == il && ol != "+" && ol != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn validates_names_and_filters() {
        assert!(validate_name("devices/a/telemetry/up").is_ok());
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name("a\0b"), Err(TopicError::Nul));
        for ok in ["#", "+", "a/#", "a/+/c", "+/+", "/", "a//b", "+/#"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["a#", "a/#/b", "a+/b", "#/a", "a/b#", ""] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_follows_the_spec_examples() {
        // MQTT 5 §4.7.1.2 and §4.7.1.3
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("sport/+", "sport/"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        // §4.7.2: $-topics and leading wildcards
        assert!(!matches("#", "$SYS/uptime"));
        assert!(!matches("+/uptime", "$SYS/uptime"));
        assert!(matches("$SYS/#", "$SYS/uptime"));
    }

    #[test]
    fn shared_subscriptions_parse() {
        let s = parse_subscription("$share/rampart/devices/+/telemetry/up").expect("valid");
        assert_eq!(s.group, Some("rampart"));
        assert_eq!(s.filter, "devices/+/telemetry/up");
        for bad in [
            "$share/",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/",
        ] {
            assert_eq!(
                parse_subscription(bad).map(|_| ()),
                Err(TopicError::BadShare),
                "{bad}"
            );
        }
    }

    #[test]
    fn covers_is_filter_containment() {
        assert!(covers("devices/a/#", "devices/a/telemetry/up"));
        assert!(covers("devices/a/#", "devices/a/+/up"));
        assert!(covers("devices/+/+/down", "devices/x/cmd/down"));
        assert!(!covers("devices/+/+/down", "devices/+/#"));
        assert!(!covers("devices/a/+/down", "devices/a/#"));
        assert!(!covers("devices/a/+/down", "devices/+/cmd/down"));
        assert!(covers("#", "anything/+/#"));
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just(String::new()),
            Just("$x".to_owned())
        ]
    }

    proptest! {
        #[test]
        fn covered_filters_only_match_what_the_cover_matches(
            outer in prop::collection::vec(prop_oneof![level(), Just("+".to_owned())], 1..4),
            hash_outer in any::<bool>(),
            inner in prop::collection::vec(prop_oneof![level(), Just("+".to_owned())], 1..4),
            name in prop::collection::vec(level(), 1..5),
        ) {
            let mut outer = outer.join("/");
            if hash_outer { outer.push_str("/#"); }
            let inner = inner.join("/");
            let name = name.join("/");
            if covers(&outer, &inner) && matches(&inner, &name) && !name.starts_with('$') {
                prop_assert!(matches(&outer, &name), "{outer} covers {inner} but not {name}");
            }
        }
    }
}

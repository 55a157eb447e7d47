//! Subscriptions and routing: which sessions receive a published topic.
//!
//! A trie of topic levels with `+` and `#` branches, so that routing costs
//! the depth of the topic, not the number of subscriptions. Shared
//! subscriptions (`$share/{group}/{filter}`, MQTT 5 §4.8.2) hand each
//! message to one member of the group, round-robin.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A session's client identifier, shared cheaply.
pub type ClientId = Arc<str>;

/// Options of one subscription (MQTT 5 §3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// Maximum QoS granted.
    pub qos: u8,
    /// Do not send the subscriber its own publishes.
    pub no_local: bool,
    /// Keep the RETAIN flag as published.
    pub retain_as_published: bool,
    /// The subscription identifier, if the client gave one.
    pub subscription_id: Option<u32>,
}

/// One recipient of a routed message, after merging overlapping subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The receiving session.
    pub client: ClientId,
    /// Highest QoS among the matching subscriptions.
    pub qos: u8,
    /// Whether any matching subscription keeps the RETAIN flag.
    pub retain_as_published: bool,
    /// Identifiers of every matching subscription (MQTT 5 §3.3.4).
    pub subscription_ids: Vec<u32>,
}

#[derive(Debug, Default)]
struct SharedGroup {
    members: Vec<(ClientId, SubOptions)>,
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    subscribers: HashMap<ClientId, SubOptions>,
    shared: HashMap<Box<str>, SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
            && self.subscribers.is_empty()
            && self.shared.is_empty()
    }

    fn child_mut(&mut self, level: &str) -> &mut Node {
        match level {
            "+" => self.plus.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            _ => self.children.entry(level.into()).or_default(),
        }
    }
}

/// The subscription table.
#[derive(Debug, Default)]
pub struct Router {
    root: Node,
    count: usize,
}

impl Router {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces a subscription; returns whether it existed before.
    /// `filter` must be valid ([`crate::topic::validate_filter`]).
    pub fn subscribe(
        &mut self,
        client: &ClientId,
        filter: &str,
        group: Option<&str>,
        opts: SubOptions,
    ) -> bool {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_mut(level);
        }
        let existed = match group {
            None => node.subscribers.insert(Arc::clone(client), opts).is_some(),
            Some(g) => {
                let members = &mut node.shared.entry(g.into()).or_default().members;
                match members.iter_mut().find(|(c, _)| c == client) {
                    Some(m) => {
                        m.1 = opts;
                        true
                    }
                    None => {
                        members.push((Arc::clone(client), opts));
                        false
                    }
                }
            }
        };
        if !existed {
            self.count += 1;
        }
        existed
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&mut self, client: &ClientId, filter: &str, group: Option<&str>) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove(&mut self.root, &levels, client, group);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Everyone subscribed to `topic`, one [`Target`] per client.
    pub fn route(&self, topic: &str, publisher: Option<&str>) -> Vec<Target> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut found: Vec<(&ClientId, SubOptions)> = Vec::new();
        let dollar = topic.starts_with('$');
        collect(&self.root, &levels, 0, dollar, &mut found);
        let mut targets: Vec<Target> = Vec::with_capacity(found.len());
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (client, opts) in found {
            if opts.no_local && publisher == Some(client.as_ref()) {
                continue;
            }
            match index.entry(client.as_ref()) {
                Entry::Occupied(i) => {
                    let t = &mut targets[*i.get()];
                    t.qos = t.qos.max(opts.qos);
                    t.retain_as_published |= opts.retain_as_published;
                    t.subscription_ids.extend(opts.subscription_id);
                }
                Entry::Vacant(v) => {
                    v.insert(targets.len());
                    targets.push(Target {
                        client: Arc::clone(client),
                        qos: opts.qos,
                        retain_as_published: opts.retain_as_published,
                        subscription_ids: opts.subscription_id.into_iter().collect(),
                    });
                }
            }
        }
        targets
    }
}

fn gather<'a>(node: &'a Node, out: &mut Vec<(&'a ClientId, SubOptions)>) {
    out.extend(node.subscribers.iter().map(|(c, o)| (c, *o)));
    for group in node.shared.values() {
        if group.members.is_empty() {
            continue;
        }
        let i = group.next.fetch_add(1, Ordering::Relaxed) % group.members.len();
        if let Some((c, o)) = group.members.get(i) {
            out.push((c, *o));
        }
    }
}

fn collect<'a>(
    node: &'a Node,
    levels: &[&str],
    depth: usize,
    dollar: bool,
    out: &mut Vec<(&'a ClientId, SubOptions)>,
) {
    // MQTT 5 §4.7.2: wildcards in the first level never match `$` topics.
    let wildcards = !(dollar && depth == 0);
    if wildcards && let Some(hash) = &node.hash {
        // "a/#" matches "a" and everything below it (§4.7.1.2).
        gather(hash, out);
    }
    let Some((level, rest)) = levels.split_first() else {
        gather(node, out);
        return;
    };
    if let Some(child) = node.children.get(*level) {
        collect(child, rest, depth + 1, dollar, out);
    }
    if wildcards && let Some(plus) = &node.plus {
        collect(plus, rest, depth + 1, dollar, out);
    }
}

fn remove(node: &mut Node, levels: &[&str], client: &ClientId, group: Option<&str>) -> bool {
    let Some((level, rest)) = levels.split_first() else {
        return match group {
            None => node.subscribers.remove(client).is_some(),
            Some(g) => {
                let Some(shared) = node.shared.get_mut(g) else {
                    return false;
                };
                let before = shared.members.len();
                shared.members.retain(|(c, _)| c != client);
                let removed = shared.members.len() != before;
                if shared.members.is_empty() {
                    node.shared.remove(g);
                }
                removed
            }
        };
    };
    let removed;
    match *level {
        "+" | "#" => {
            let slot = if *level == "+" {
                &mut node.plus
            } else {
                &mut node.hash
            };
            let Some(child) = slot else { return false };
            removed = remove(child, rest, client, group);
            if child.is_empty() {
                *slot = None;
            }
        }
        _ => {
            let Some(child) = node.children.get_mut(*level) else {
                return false;
            };
            removed = remove(child, rest, client, group);
            if child.is_empty() {
                node.children.remove(*level);
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic;
    use proptest::prelude::*;

    fn opts(qos: u8) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            subscription_id: None,
        }
    }

    fn id(s: &str) -> ClientId {
        Arc::from(s)
    }

    fn clients(targets: &[Target]) -> Vec<String> {
        let mut v: Vec<String> = targets.iter().map(|t| t.client.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn routes_exact_and_wildcard_subscriptions() {
        let mut r = Router::new();
        r.subscribe(&id("svc"), "devices/+/telemetry/up", None, opts(1));
        r.subscribe(&id("all"), "devices/#", None, opts(0));
        r.subscribe(&id("one"), "devices/a/telemetry/up", None, opts(2));
        r.subscribe(&id("root"), "#", None, opts(0));
        let t = r.route("devices/a/telemetry/up", None);
        assert_eq!(clients(&t), ["all", "one", "root", "svc"]);
        assert_eq!(
            clients(&r.route("devices/b/state/up", None)),
            ["all", "root"]
        );
        assert_eq!(clients(&r.route("devices", None)), ["all", "root"]);
        assert_eq!(clients(&r.route("$SYS/x", None)), Vec::<String>::new());
        assert!(r.unsubscribe(&id("all"), "devices/#", None));
        assert!(!r.unsubscribe(&id("all"), "devices/#", None));
        assert_eq!(clients(&r.route("devices/b/state/up", None)), ["root"]);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn overlapping_subscriptions_merge_per_client() {
        let mut r = Router::new();
        let mut a = opts(0);
        a.subscription_id = Some(1);
        let mut b = opts(2);
        b.subscription_id = Some(7);
        r.subscribe(&id("c"), "x/+", None, a);
        r.subscribe(&id("c"), "x/#", None, b);
        let t = r.route("x/y", None);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].qos, 2);
        let mut ids = t[0].subscription_ids.clone();
        ids.sort();
        assert_eq!(ids, [1, 7]);
    }

    #[test]
    fn no_local_skips_the_publisher() {
        let mut r = Router::new();
        let mut o = opts(1);
        o.no_local = true;
        r.subscribe(&id("me"), "chat", None, o);
        r.subscribe(&id("you"), "chat", None, opts(1));
        assert_eq!(clients(&r.route("chat", Some("me"))), ["you"]);
    }

    #[test]
    fn shared_groups_take_turns() {
        let mut r = Router::new();
        for c in ["r1", "r2", "r3"] {
            r.subscribe(&id(c), "devices/+/telemetry/up", Some("rampart"), opts(1));
        }
        let mut seen = Vec::new();
        for _ in 0..6 {
            let t = r.route("devices/a/telemetry/up", None);
            assert_eq!(t.len(), 1, "one member per group");
            seen.push(t[0].client.to_string());
        }
        seen.sort();
        assert_eq!(seen, ["r1", "r1", "r2", "r2", "r3", "r3"]);
        assert!(r.unsubscribe(&id("r2"), "devices/+/telemetry/up", Some("rampart")));
        assert_eq!(r.len(), 2);
    }

    fn level() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("a"), Just("b"), Just(""), Just("$s")]
    }

    proptest! {
        #[test]
        fn routing_agrees_with_filter_matching(
            filters in prop::collection::vec(
                prop::collection::vec(prop_oneof![level(), Just("+"), Just("#")], 1..4), 1..8),
            topic in prop::collection::vec(level(), 1..5),
        ) {
            let topic = topic.join("/");
            let mut r = Router::new();
            let mut expected = Vec::new();
            for (i, f) in filters.iter().enumerate() {
                let f = f.join("/");
                if topic::validate_filter(&f).is_err() { continue; }
                let client = format!("c{i}");
                r.subscribe(&id(&client), &f, None, opts(0));
                if topic::matches(&f, &topic) { expected.push(client); }
            }
            expected.sort();
            prop_assert_eq!(clients(&r.route(&topic, None)), expected);
        }
    }
}

//! Rule evaluation: the fleet's events in, alert transitions out.
//!
//! The [`Evaluator`] holds one small tracker per (rule, subject) it has
//! seen, where the subject is a device, a source address (handshake
//! failures) or a campaign, and a timer heap for the conditions that
//! become true by time passing (a `for` hold, an absence, a certificate
//! nearing expiry, a counting window sliding on). It never scans the
//! fleet: each event touches the trackers of the rules that match it, and
//! [`Evaluator::tick`] touches only trackers whose timer is due. Each
//! tracker has at most one live timer, so the heap stays as large as the
//! number of trackers waiting on time.
//!
//! It is pure: time comes in as Unix milliseconds with every call, so the
//! tests drive it with any clock, and a restarted server replays
//! history (last telemetry, offline since, firing alerts) through the
//! same calls with past timestamps.
//!
//! An alert fires once and resolves once: the trackers are edge-triggered,
//! and [`Evaluator::restore_firing`] tells a new evaluator which alerts
//! were firing before a restart so it neither fires them again nor forgets
//! to resolve them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use crate::expr::{Comparison, Condition, RolloutHalt, SecurityEvent};

/// A rule's number.
pub type RuleId = u64;

/// Whose events a rule watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every device (or every source, or every campaign).
    Fleet,
    /// Devices owned by this owner (`user:ID`, as the registry writes it).
    Owner(String),
    /// One device.
    Device(String),
}

/// A rule as the evaluator needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its number.
    pub id: RuleId,
    /// Whose events it watches.
    pub scope: Scope,
    /// What it watches.
    pub condition: Condition,
}

/// A device an event is about.
#[derive(Debug, Clone, Copy)]
pub struct DeviceRef<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its owner, if claimed.
    pub owner: Option<&'a str>,
}

impl Scope {
    fn covers(&self, device: DeviceRef<'_>) -> bool {
        match self {
            Scope::Fleet => true,
            Scope::Owner(o) => device.owner == Some(o.as_str()),
            Scope::Device(d) => d == device.id,
        }
    }
}

/// Firing or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The condition became true (after its hold).
    Firing,
    /// The condition cleared.
    Resolved,
}

/// An alert changing state: one notification each.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The rule.
    pub rule: RuleId,
    /// The device id, source address or `campaign:ID` it is about.
    pub subject: String,
    /// Firing or resolved.
    pub change: Change,
    /// When, Unix ms.
    pub at_ms: u64,
    /// The value that decided it, where there is one (the metric value,
    /// the event count, days to certificate expiry).
    pub value: Option<f64>,
}

/// Most subjects a counting rule tracks at once (a scan from many
/// addresses must not grow memory without bound); the quietest non-firing
/// ones are dropped first.
pub const MAX_COUNT_SUBJECTS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Quiet,
    Pending { since: u64 },
    Firing,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Threshold: the phase and the last value.
    Threshold { phase: Phase, last: f64 },
    /// Offline / no telemetry: pending since the device went quiet.
    Absence { phase: Phase },
    /// Counting: recent event times (at most `more_than + 1`).
    Count { recent: VecDeque<u64>, firing: bool },
    /// Certificate: its expiry.
    Cert { not_after: u64, firing: bool },
    /// Rollout halts.
    Halt { firing: bool },
}

#[derive(Debug, Clone, PartialEq)]
struct Tracker {
    state: State,
    /// The one live timer of this tracker, if any.
    timer: Option<u64>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Evaluates every rule against the events it is given.
#[derive(Debug, Default)]
pub struct Evaluator {
    rules: Vec<Rule>,
    trackers: HashMap<RuleId, HashMap<String, Tracker>>,
    timers: BinaryHeap<Reverse<(u64, RuleId, String)>>,
}

impl Evaluator {
    /// An evaluator with no rules.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the rule set. Trackers of rules that are gone or whose
    /// condition or scope changed are dropped (their alerts are closed by
    /// whoever changed the rule); the others keep their state.
    pub fn set_rules(&mut self, rules: Vec<Rule>) {
        self.trackers.retain(|id, _| {
            let old = self.rules.iter().find(|r| r.id == *id);
            let new = rules.iter().find(|r| r.id == *id);
            matches!((old, new), (Some(o), Some(n)) if o == n)
        });
        self.rules = rules;
    }

    /// The rules in force.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Number of (rule, subject) trackers held.
    pub fn tracked(&self) -> usize {
        self.trackers.values().map(HashMap::len).sum()
    }

    /// Marks an alert as firing without a transition (state from before a
    /// restart): its resolution will be reported, its firing not again.
    pub fn restore_firing(&mut self, rule: RuleId, subject: &str) {
        let Some(condition) = self
            .rules
            .iter()
            .find(|r| r.id == rule)
            .map(|r| r.condition.clone())
        else {
            return;
        };
        let state = match condition {
            Condition::Threshold { .. } => State::Threshold {
                phase: Phase::Firing,
                last: f64::NAN,
            },
            Condition::Offline { .. } | Condition::NoTelemetry { .. } => State::Absence {
                phase: Phase::Firing,
            },
            Condition::Security { .. } => State::Count {
                recent: VecDeque::new(),
                firing: true,
            },
            Condition::CertExpires { .. } => State::Cert {
                not_after: 0,
                firing: true,
            },
            Condition::Rollout { .. } => State::Halt { firing: true },
        };
        self.trackers
            .entry(rule)
            .or_default()
            .insert(subject.to_owned(), Tracker { state, timer: None });
    }

    fn schedule(
        timers: &mut BinaryHeap<Reverse<(u64, RuleId, String)>>,
        t: &mut Tracker,
        rule: RuleId,
        subject: &str,
        due: u64,
    ) {
        if t.timer.is_none_or(|at| due < at) {
            t.timer = Some(due);
            timers.push(Reverse((due, rule, subject.to_owned())));
        }
    }

    /// A device sent readings.
    pub fn reading(
        &mut self,
        device: DeviceRef<'_>,
        metrics: &[(&str, f64)],
        at_ms: u64,
        out: &mut Vec<Transition>,
    ) {
        for rule in &self.rules {
            if !rule.scope.covers(device) {
                continue;
            }
            match &rule.condition {
                Condition::Threshold {
                    metric,
                    comparison,
                    limit,
                    hold,
                    hysteresis,
                } => {
                    let Some(&(_, value)) = metrics.iter().find(|(m, _)| m == metric) else {
                        continue;
                    };
                    if !value.is_finite() {
                        continue;
                    }
                    let map = self.trackers.entry(rule.id).or_default();
                    let t = tracker(map, device.id, || State::Threshold {
                        phase: Phase::Quiet,
                        last: value,
                    });
                    let State::Threshold { phase, last } = &mut t.state else {
                        continue;
                    };
                    *last = value;
                    let spec = ThresholdSpec {
                        comparison: *comparison,
                        limit: *limit,
                        hold: ms(*hold),
                        hysteresis: *hysteresis,
                    };
                    let change = spec.step(phase, value, at_ms);
                    if let Phase::Pending { since } = *phase {
                        Self::schedule(
                            &mut self.timers,
                            t,
                            rule.id,
                            device.id,
                            since.saturating_add(spec.hold),
                        );
                    }
                    push(out, rule.id, device.id, change, at_ms, Some(value));
                }
                Condition::NoTelemetry { after } => {
                    let map = self.trackers.entry(rule.id).or_default();
                    let t = tracker(map, device.id, || State::Absence {
                        phase: Phase::Quiet,
                    });
                    let State::Absence { phase } = &mut t.state else {
                        continue;
                    };
                    let was_firing = *phase == Phase::Firing;
                    match *phase {
                        Phase::Pending { since } if since > at_ms => {}
                        _ => *phase = Phase::Pending { since: at_ms },
                    }
                    Self::schedule(
                        &mut self.timers,
                        t,
                        rule.id,
                        device.id,
                        at_ms.saturating_add(ms(*after)),
                    );
                    if was_firing {
                        push(out, rule.id, device.id, Some(Change::Resolved), at_ms, None);
                    }
                }
                _ => {}
            }
        }
    }

    /// What a (re)started evaluator knows of a device's last telemetry:
    /// starts its no-telemetry trackers, leaving existing ones (and firing
    /// alerts) alone, unlike [`Evaluator::reading`].
    pub fn seed_telemetry(&mut self, device: DeviceRef<'_>, last_ms: u64) {
        for rule in &self.rules {
            let Condition::NoTelemetry { after } = rule.condition else {
                continue;
            };
            if !rule.scope.covers(device) {
                continue;
            }
            let map = self.trackers.entry(rule.id).or_default();
            if map.contains_key(device.id) {
                continue;
            }
            let t = tracker(map, device.id, || State::Absence {
                phase: Phase::Pending { since: last_ms },
            });
            Self::schedule(
                &mut self.timers,
                t,
                rule.id,
                device.id,
                last_ms.saturating_add(ms(after)),
            );
        }
    }

    /// A device connected (`online`) or disconnected.
    pub fn presence(
        &mut self,
        device: DeviceRef<'_>,
        online: bool,
        at_ms: u64,
        out: &mut Vec<Transition>,
    ) {
        for rule in &self.rules {
            let Condition::Offline { after } = rule.condition else {
                continue;
            };
            if !rule.scope.covers(device) {
                continue;
            }
            let map = self.trackers.entry(rule.id).or_default();
            if online {
                if let Some(t) = map.remove(device.id)
                    && t.state
                        == (State::Absence {
                            phase: Phase::Firing,
                        })
                {
                    push(out, rule.id, device.id, Some(Change::Resolved), at_ms, None);
                }
                continue;
            }
            let t = tracker(map, device.id, || State::Absence {
                phase: Phase::Quiet,
            });
            let State::Absence { phase } = &mut t.state else {
                continue;
            };
            if *phase == Phase::Quiet {
                *phase = Phase::Pending { since: at_ms };
                Self::schedule(
                    &mut self.timers,
                    t,
                    rule.id,
                    device.id,
                    at_ms.saturating_add(ms(after)),
                );
            }
        }
    }

    /// A security event about a device, or (handshake failures) about a
    /// source address with `device` `None`.
    pub fn security(
        &mut self,
        event: SecurityEvent,
        device: Option<DeviceRef<'_>>,
        source: &str,
        at_ms: u64,
        out: &mut Vec<Transition>,
    ) {
        for rule in &self.rules {
            let Condition::Security {
                event: watched,
                more_than,
                window,
            } = rule.condition
            else {
                continue;
            };
            if watched != event {
                continue;
            }
            let subject = match (event, device) {
                (SecurityEvent::HandshakeFailure, _) => source,
                (_, Some(d)) if rule.scope.covers(d) => d.id,
                _ => continue,
            };
            let map = self.trackers.entry(rule.id).or_default();
            if !map.contains_key(subject) && map.len() >= MAX_COUNT_SUBJECTS {
                evict_quietest(map);
            }
            let t = tracker(map, subject, || State::Count {
                recent: VecDeque::new(),
                firing: false,
            });
            let State::Count { recent, firing } = &mut t.state else {
                continue;
            };
            let window = ms(window);
            let keep = usize::try_from(more_than)
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            recent.push_back(at_ms);
            prune(recent, at_ms.saturating_sub(window), keep);
            let count = recent.len();
            if !*firing && count >= keep {
                *firing = true;
                push(
                    out,
                    rule.id,
                    subject,
                    Some(Change::Firing),
                    at_ms,
                    Some(count as f64),
                );
            }
            if let Some(&oldest) = recent.front() {
                let due = oldest.saturating_add(window).saturating_add(1);
                Self::schedule(&mut self.timers, t, rule.id, subject, due);
            }
        }
    }

    /// A device's current certificate expires at `not_after_ms` (at start,
    /// on enrollment and on renewal).
    pub fn certificate(
        &mut self,
        device: DeviceRef<'_>,
        not_after_ms: u64,
        now_ms: u64,
        out: &mut Vec<Transition>,
    ) {
        for rule in &self.rules {
            let Condition::CertExpires { within } = rule.condition else {
                continue;
            };
            if !rule.scope.covers(device) {
                continue;
            }
            let map = self.trackers.entry(rule.id).or_default();
            let t = tracker(map, device.id, || State::Cert {
                not_after: not_after_ms,
                firing: false,
            });
            let State::Cert { not_after, firing } = &mut t.state else {
                continue;
            };
            *not_after = not_after_ms;
            let due = not_after_ms.saturating_sub(ms(within));
            let change = cert_step(firing, due, now_ms);
            if !*firing {
                Self::schedule(&mut self.timers, t, rule.id, device.id, due);
            }
            push(
                out,
                rule.id,
                device.id,
                change,
                now_ms,
                Some(days_left(not_after_ms, now_ms)),
            );
        }
    }

    /// A device left the registry (deleted or revoked): its trackers go,
    /// and its firing alerts resolve.
    pub fn forget_device(&mut self, device: &str, at_ms: u64, out: &mut Vec<Transition>) {
        for (rule, map) in &mut self.trackers {
            if let Some(t) = map.remove(device)
                && is_firing(&t.state)
            {
                push(out, *rule, device, Some(Change::Resolved), at_ms, None);
            }
        }
    }

    /// A campaign's status changed: `halt` is `Some` when it paused or
    /// aborted, `None` when it runs again or finished.
    pub fn rollout(
        &mut self,
        campaign: u64,
        halt: Option<RolloutHalt>,
        at_ms: u64,
        out: &mut Vec<Transition>,
    ) {
        let subject = format!("campaign:{campaign}");
        for rule in &self.rules {
            let Condition::Rollout { halt: watched } = rule.condition else {
                continue;
            };
            let matches = match (watched, halt) {
                (_, None) => false,
                (RolloutHalt::Any, Some(_)) => true,
                (w, Some(h)) => w == h,
            };
            let map = self.trackers.entry(rule.id).or_default();
            let was = map.get(&subject).is_some_and(|t| is_firing(&t.state));
            if matches && !was {
                map.insert(
                    subject.clone(),
                    Tracker {
                        state: State::Halt { firing: true },
                        timer: None,
                    },
                );
                push(out, rule.id, &subject, Some(Change::Firing), at_ms, None);
            } else if !matches && was {
                map.remove(&subject);
                push(out, rule.id, &subject, Some(Change::Resolved), at_ms, None);
            }
        }
    }

    /// Time passed: evaluates the trackers whose timer is due at `now_ms`.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Transition>) {
        while let Some(Reverse((due, _, _))) = self.timers.peek() {
            if *due > now_ms {
                break;
            }
            let Some(Reverse((due, rule_id, subject))) = self.timers.pop() else {
                break;
            };
            let Some(rule) = self.rules.iter().find(|r| r.id == rule_id) else {
                continue;
            };
            let Some(map) = self.trackers.get_mut(&rule_id) else {
                continue;
            };
            let Some(t) = map.get_mut(&subject) else {
                continue;
            };
            if t.timer != Some(due) {
                continue; // superseded by an earlier timer
            }
            t.timer = None;
            let mut remove = false;
            let mut again = None;
            match (&rule.condition, &mut t.state) {
                (
                    Condition::Threshold {
                        comparison,
                        limit,
                        hold,
                        ..
                    },
                    State::Threshold { phase, last },
                ) => {
                    if let Phase::Pending { since } = *phase
                        && now_ms >= since.saturating_add(ms(*hold))
                        && comparison.holds(*last, *limit)
                    {
                        *phase = Phase::Firing;
                        push(
                            out,
                            rule_id,
                            &subject,
                            Some(Change::Firing),
                            now_ms,
                            Some(*last),
                        );
                    }
                }
                (
                    Condition::Offline { after } | Condition::NoTelemetry { after },
                    State::Absence { phase },
                ) => {
                    if let Phase::Pending { since } = *phase {
                        let fire_at = since.saturating_add(ms(*after));
                        if now_ms >= fire_at {
                            *phase = Phase::Firing;
                            push(out, rule_id, &subject, Some(Change::Firing), now_ms, None);
                        } else {
                            again = Some(fire_at);
                        }
                    }
                }
                (
                    Condition::Security {
                        more_than, window, ..
                    },
                    State::Count { recent, firing },
                ) => {
                    let keep = usize::try_from(*more_than)
                        .unwrap_or(usize::MAX)
                        .saturating_add(1);
                    prune(recent, now_ms.saturating_sub(ms(*window)), keep);
                    if *firing && recent.len() < keep {
                        *firing = false;
                        push(
                            out,
                            rule_id,
                            &subject,
                            Some(Change::Resolved),
                            now_ms,
                            Some(recent.len() as f64),
                        );
                    }
                    match recent.front() {
                        Some(&oldest) => {
                            again = Some(oldest.saturating_add(ms(*window)).saturating_add(1));
                        }
                        None => remove = !*firing,
                    }
                }
                (Condition::CertExpires { within }, State::Cert { not_after, firing }) => {
                    let due = not_after.saturating_sub(ms(*within));
                    let change = cert_step(firing, due, now_ms);
                    push(
                        out,
                        rule_id,
                        &subject,
                        change,
                        now_ms,
                        Some(days_left(*not_after, now_ms)),
                    );
                }
                _ => {}
            }
            if remove {
                map.remove(&subject);
            } else if let Some(at) = again {
                Self::schedule(&mut self.timers, t, rule_id, &subject, at);
            }
        }
    }

    /// The earliest pending timer, Unix ms: when [`Evaluator::tick`] next
    /// has something to do.
    pub fn next_due(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((due, _, _))| *due)
    }
}

/// A threshold rule's numbers.
struct ThresholdSpec {
    comparison: Comparison,
    limit: f64,
    hold: u64,
    hysteresis: f64,
}

impl ThresholdSpec {
    /// One reading: returns the change it causes.
    fn step(&self, phase: &mut Phase, value: f64, at: u64) -> Option<Change> {
        let holds = self.comparison.holds(value, self.limit);
        match *phase {
            Phase::Quiet if holds && self.hold == 0 => {
                *phase = Phase::Firing;
                Some(Change::Firing)
            }
            Phase::Quiet if holds => {
                *phase = Phase::Pending { since: at };
                None
            }
            Phase::Pending { since } if holds => {
                if at >= since.saturating_add(self.hold) {
                    *phase = Phase::Firing;
                    Some(Change::Firing)
                } else {
                    None
                }
            }
            Phase::Pending { .. } => {
                *phase = Phase::Quiet;
                None
            }
            Phase::Firing if self.comparison.cleared(value, self.limit, self.hysteresis) => {
                *phase = Phase::Quiet;
                Some(Change::Resolved)
            }
            Phase::Quiet | Phase::Firing => None,
        }
    }
}

fn cert_step(firing: &mut bool, due: u64, now: u64) -> Option<Change> {
    let within = now >= due;
    match (*firing, within) {
        (false, true) => {
            *firing = true;
            Some(Change::Firing)
        }
        (true, false) => {
            *firing = false;
            Some(Change::Resolved)
        }
        _ => None,
    }
}

fn days_left(not_after: u64, now: u64) -> f64 {
    let left = i128::from(not_after) - i128::from(now);
    (left as f64 / 86_400_000.0 * 10.0).round() / 10.0
}

fn is_firing(state: &State) -> bool {
    match state {
        State::Threshold { phase, .. } | State::Absence { phase } => *phase == Phase::Firing,
        State::Count { firing, .. } | State::Cert { firing, .. } | State::Halt { firing } => {
            *firing
        }
    }
}

fn tracker<'m>(
    map: &'m mut HashMap<String, Tracker>,
    subject: &str,
    new: impl FnOnce() -> State,
) -> &'m mut Tracker {
    if !map.contains_key(subject) {
        map.insert(
            subject.to_owned(),
            Tracker {
                state: new(),
                timer: None,
            },
        );
    }
    map.get_mut(subject).expect("inserted above")
}

fn prune(recent: &mut VecDeque<u64>, since: u64, keep: usize) {
    while recent.front().is_some_and(|&t| t < since) || recent.len() > keep {
        recent.pop_front();
    }
}

/// Drops the non-firing counting tracker with the oldest newest event.
fn evict_quietest(map: &mut HashMap<String, Tracker>) {
    let victim = map
        .iter()
        .filter(|(_, t)| !is_firing(&t.state))
        .min_by_key(|(_, t)| match &t.state {
            State::Count { recent, .. } => recent.back().copied().unwrap_or(0),
            _ => u64::MAX,
        })
        .map(|(k, _)| k.clone());
    if let Some(k) = victim {
        map.remove(&k);
    }
}

fn push(
    out: &mut Vec<Transition>,
    rule: RuleId,
    subject: &str,
    change: Option<Change>,
    at_ms: u64,
    value: Option<f64>,
) {
    if let Some(change) = change {
        out.push(Transition {
            rule,
            subject: subject.to_owned(),
            change,
            at_ms,
            value,
        });
    }
}

#[cfg(test)]
mod tests;

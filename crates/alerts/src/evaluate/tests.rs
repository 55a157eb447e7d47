use super::*;
use crate::expr::parse;
use proptest::prelude::*;

const S: u64 = 1_000;
const M: u64 = 60 * S;

fn rule(id: RuleId, scope: Scope, expr: &str) -> Rule {
    Rule {
        id,
        scope,
        condition: parse(expr).expect("parses"),
    }
}

fn dev(id: &str) -> DeviceRef<'_> {
    DeviceRef {
        id,
        owner: Some("user:1"),
    }
}

fn eval(rules: Vec<Rule>) -> Evaluator {
    let mut e = Evaluator::new();
    e.set_rules(rules);
    e
}

fn changes(out: &mut Vec<Transition>) -> Vec<(RuleId, String, Change)> {
    out.drain(..)
        .map(|t| (t.rule, t.subject, t.change))
        .collect()
}

fn fired(rule: RuleId, subject: &str) -> (RuleId, String, Change) {
    (rule, subject.to_owned(), Change::Firing)
}

fn resolved(rule: RuleId, subject: &str) -> (RuleId, String, Change) {
    (rule, subject.to_owned(), Change::Resolved)
}

#[test]
fn threshold_fires_after_its_hold_and_resolves_with_hysteresis() {
    let mut e = eval(vec![rule(
        1,
        Scope::Fleet,
        "temperature > 30 for 5m hysteresis 1",
    )]);
    let mut out = vec![];
    let t0 = 1_000 * M;
    e.reading(dev("d1"), &[("temperature", 31.0)], t0, &mut out);
    e.reading(dev("d1"), &[("temperature", 31.5)], t0 + 4 * M, &mut out);
    assert!(out.is_empty(), "still within the hold: {out:?}");
    e.tick(t0 + 5 * M - 1, &mut out);
    assert!(out.is_empty());
    // No reading at the deadline: the timer fires it on the last value.
    e.tick(t0 + 5 * M, &mut out);
    assert_eq!(changes(&mut out), vec![fired(1, "d1")]);
    assert_eq!(out.len(), 0);
    // Dipping under the limit but not past the hysteresis keeps it firing.
    e.reading(dev("d1"), &[("temperature", 29.5)], t0 + 6 * M, &mut out);
    e.reading(dev("d1"), &[("temperature", 32.0)], t0 + 7 * M, &mut out);
    assert!(out.is_empty(), "one firing, no repeats: {out:?}");
    e.reading(dev("d1"), &[("temperature", 29.0)], t0 + 8 * M, &mut out);
    assert_eq!(changes(&mut out), vec![resolved(1, "d1")]);
    e.reading(dev("d1"), &[("temperature", 28.0)], t0 + 9 * M, &mut out);
    assert!(out.is_empty());
}

#[test]
fn a_dip_during_the_hold_restarts_it() {
    let mut e = eval(vec![rule(1, Scope::Fleet, "temperature > 30 for 5m")]);
    let mut out = vec![];
    e.reading(dev("d1"), &[("temperature", 31.0)], 0, &mut out);
    e.reading(dev("d1"), &[("temperature", 29.0)], 2 * M, &mut out);
    e.reading(dev("d1"), &[("temperature", 31.0)], 3 * M, &mut out);
    e.tick(5 * M, &mut out);
    assert!(out.is_empty(), "the first timer is stale: {out:?}");
    e.reading(dev("d1"), &[("temperature", 31.0)], 8 * M, &mut out);
    assert_eq!(changes(&mut out), vec![fired(1, "d1")]);
}

#[test]
fn a_threshold_without_hold_fires_on_the_reading() {
    let mut e = eval(vec![rule(1, Scope::Device("d2".into()), "humidity < 20")]);
    let mut out = vec![];
    e.reading(dev("d1"), &[("humidity", 10.0)], 0, &mut out);
    assert!(out.is_empty(), "other device");
    e.reading(dev("d2"), &[("temperature", 10.0)], 0, &mut out);
    assert!(out.is_empty(), "other metric");
    e.reading(dev("d2"), &[("humidity", f64::NAN)], 0, &mut out);
    assert!(out.is_empty(), "not a number");
    e.reading(dev("d2"), &[("humidity", 19.9)], 1, &mut out);
    assert_eq!(changes(&mut out), vec![fired(1, "d2")]);
    e.reading(dev("d2"), &[("humidity", 20.0)], 2, &mut out);
    assert_eq!(changes(&mut out), vec![resolved(1, "d2")]);
}

#[test]
fn offline_fires_once_after_its_delay_and_resolves_on_return() {
    let mut e = eval(vec![rule(
        7,
        Scope::Owner("user:1".into()),
        "offline for 10m",
    )]);
    let mut out = vec![];
    let other = DeviceRef {
        id: "x",
        owner: Some("user:2"),
    };
    e.presence(other, false, 0, &mut out);
    e.presence(dev("d1"), false, 0, &mut out);
    e.presence(dev("d1"), false, M, &mut out); // repeated: keeps the first time
    e.tick(10 * M - 1, &mut out);
    assert!(out.is_empty());
    e.tick(10 * M, &mut out);
    assert_eq!(changes(&mut out), vec![fired(7, "d1")]);
    e.tick(60 * M, &mut out);
    assert!(out.is_empty());
    e.presence(dev("d1"), true, 61 * M, &mut out);
    assert_eq!(changes(&mut out), vec![resolved(7, "d1")]);
    // A short absence resolves nothing and fires nothing.
    e.presence(dev("d1"), false, 70 * M, &mut out);
    e.presence(dev("d1"), true, 71 * M, &mut out);
    e.tick(100 * M, &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(e.tracked(), 0);
}

#[test]
fn no_telemetry_keeps_one_timer_per_device() {
    let mut e = eval(vec![rule(2, Scope::Fleet, "no-telemetry for 15m")]);
    let mut out = vec![];
    for i in 0..600 {
        e.reading(dev("d1"), &[("temperature", 20.0)], i * S, &mut out);
    }
    assert_eq!(e.timers.len(), 1, "one live timer, not one per reading");
    e.tick(15 * M, &mut out);
    assert!(out.is_empty(), "last reading at 599 s");
    assert_eq!(e.timers.len(), 1, "re-armed for the last reading");
    e.tick(599 * S + 15 * M, &mut out);
    assert_eq!(changes(&mut out), vec![fired(2, "d1")]);
    e.reading(dev("d1"), &[("humidity", 40.0)], 40 * M, &mut out);
    assert_eq!(changes(&mut out), vec![resolved(2, "d1")]);
}

#[test]
fn seeding_starts_absence_timers_without_touching_firing_alerts() {
    let mut e = eval(vec![rule(2, Scope::Fleet, "no-telemetry for 15m")]);
    let mut out = vec![];
    e.restore_firing(2, "quiet");
    e.seed_telemetry(dev("quiet"), 0);
    e.seed_telemetry(dev("d1"), 10 * M);
    e.seed_telemetry(dev("d1"), 0); // a second seed changes nothing
    e.tick(24 * M, &mut out);
    assert!(out.is_empty(), "{out:?}");
    e.tick(25 * M, &mut out);
    assert_eq!(changes(&mut out), vec![fired(2, "d1")]);
    e.reading(dev("quiet"), &[], 30 * M, &mut out);
    assert_eq!(changes(&mut out), vec![resolved(2, "quiet")]);
}

#[test]
fn counting_rules_fire_above_the_count_and_resolve_as_the_window_slides() {
    let mut e = eval(vec![
        rule(3, Scope::Fleet, "handshake-failures > 2 in 1m"),
        rule(4, Scope::Fleet, "acl-denials"),
    ]);
    let mut out = vec![];
    for t in [0, 10 * S] {
        e.security(
            SecurityEvent::HandshakeFailure,
            None,
            "10.0.0.9",
            t,
            &mut out,
        );
    }
    assert!(out.is_empty(), "2 is not more than 2: {out:?}");
    e.security(
        SecurityEvent::HandshakeFailure,
        None,
        "10.0.0.9",
        20 * S,
        &mut out,
    );
    assert_eq!(changes(&mut out), vec![fired(3, "10.0.0.9")]);
    e.security(
        SecurityEvent::HandshakeFailure,
        None,
        "10.0.0.9",
        30 * S,
        &mut out,
    );
    e.security(
        SecurityEvent::HandshakeFailure,
        None,
        "10.0.0.8",
        30 * S,
        &mut out,
    );
    assert!(
        out.is_empty(),
        "fired once; the other source has one: {out:?}"
    );
    e.tick(M, &mut out);
    assert!(out.is_empty(), "three still in the window at 60 s: {out:?}");
    e.tick(2 * M, &mut out);
    assert_eq!(changes(&mut out), vec![resolved(3, "10.0.0.9")]);
    e.security(
        SecurityEvent::AclDenial,
        Some(dev("d1")),
        "",
        5 * M,
        &mut out,
    );
    assert_eq!(changes(&mut out), vec![fired(4, "d1")]);
    e.tick(16 * M, &mut out);
    assert_eq!(changes(&mut out), vec![resolved(4, "d1")]);
    assert_eq!(e.tracked(), 0, "quiet counters are dropped");
}

#[test]
fn certificate_expiry_fires_ahead_and_resolves_on_renewal() {
    let day = 86_400 * S;
    let mut e = eval(vec![rule(5, Scope::Fleet, "cert-expires within 30d")]);
    let mut out = vec![];
    e.certificate(dev("d1"), 100 * day, 0, &mut out);
    assert!(out.is_empty());
    e.tick(70 * day - 1, &mut out);
    assert!(out.is_empty());
    e.tick(70 * day, &mut out);
    let t = out.pop().expect("fired");
    assert_eq!((t.change, t.value), (Change::Firing, Some(30.0)));
    e.certificate(dev("d1"), 400 * day, 71 * day, &mut out);
    assert_eq!(changes(&mut out), vec![resolved(5, "d1")]);
    e.tick(300 * day, &mut out);
    assert!(out.is_empty(), "the old timer is stale");
}

#[test]
fn rollout_halts_fire_and_resolve_per_campaign() {
    let mut e = eval(vec![
        rule(8, Scope::Fleet, "rollout aborted"),
        rule(9, Scope::Fleet, "rollout halted"),
    ]);
    let mut out = vec![];
    e.rollout(4, Some(RolloutHalt::Paused), 0, &mut out);
    assert_eq!(changes(&mut out), vec![fired(9, "campaign:4")]);
    e.rollout(4, Some(RolloutHalt::Aborted), 1, &mut out);
    assert_eq!(changes(&mut out), vec![fired(8, "campaign:4")]);
    e.rollout(4, None, 2, &mut out);
    assert_eq!(
        changes(&mut out),
        vec![resolved(8, "campaign:4"), resolved(9, "campaign:4")]
    );
}

#[test]
fn restored_alerts_resolve_without_firing_again() {
    let mut e = eval(vec![rule(7, Scope::Fleet, "offline for 10m")]);
    e.restore_firing(7, "d1");
    e.restore_firing(99, "d1"); // unknown rule: ignored
    let mut out = vec![];
    e.presence(dev("d1"), false, 0, &mut out);
    e.tick(20 * M, &mut out);
    assert!(out.is_empty(), "already firing: {out:?}");
    e.presence(dev("d1"), true, 21 * M, &mut out);
    assert_eq!(changes(&mut out), vec![resolved(7, "d1")]);
}

#[test]
fn changing_a_rule_drops_its_state_and_forgetting_a_device_resolves() {
    let mut e = eval(vec![
        rule(1, Scope::Fleet, "humidity < 20"),
        rule(2, Scope::Fleet, "temperature > 30"),
    ]);
    let mut out = vec![];
    e.reading(
        dev("d1"),
        &[("humidity", 10.0), ("temperature", 35.0)],
        0,
        &mut out,
    );
    assert_eq!(out.len(), 2);
    out.clear();
    e.set_rules(vec![
        rule(1, Scope::Fleet, "humidity < 25"),
        rule(2, Scope::Fleet, "temperature > 30"),
    ]);
    assert_eq!(e.tracked(), 1, "rule 1 changed: its trackers are gone");
    e.forget_device("d1", 5, &mut out);
    assert_eq!(changes(&mut out), vec![resolved(2, "d1")]);
}

#[test]
fn counting_subjects_are_bounded() {
    let mut e = eval(vec![rule(3, Scope::Fleet, "handshake-failures > 5 in 1h")]);
    let mut out = vec![];
    for i in 0..(MAX_COUNT_SUBJECTS as u64 + 500) {
        e.security(
            SecurityEvent::HandshakeFailure,
            None,
            &format!("addr-{i}"),
            i,
            &mut out,
        );
    }
    assert_eq!(e.tracked(), MAX_COUNT_SUBJECTS);
}

proptest! {
    /// Whatever the readings, a device's alerts alternate firing/resolved,
    /// starting with firing, and a firing is only reported when the last
    /// value meets the comparison.
    #[test]
    fn threshold_transitions_alternate(
        values in proptest::collection::vec((0u64..120, 0i32..60), 1..200),
        hold_s in 0u64..300,
        hysteresis in 0u8..5,
    ) {
        let expr = format!("temperature > 30 for {}s hysteresis {hysteresis}", hold_s.max(1));
        let mut e = eval(vec![rule(1, Scope::Fleet, &expr)]);
        let mut out = vec![];
        let mut t = 0;
        for (dt, v) in values {
            t += dt * S;
            e.tick(t, &mut out);
            e.reading(dev("d"), &[("temperature", f64::from(v))], t, &mut out);
        }
        e.tick(t + 3_600 * S, &mut out);
        let mut firing = false;
        for tr in &out {
            match tr.change {
                Change::Firing => {
                    prop_assert!(!firing);
                    prop_assert!(tr.value.is_some_and(|v| v > 30.0));
                    firing = true;
                }
                Change::Resolved => {
                    prop_assert!(firing);
                    prop_assert!(tr.value.is_some_and(|v| v <= 30.0 - f64::from(hysteresis)));
                    firing = false;
                }
            }
        }
        prop_assert!(e.timers.len() <= 1);
    }
}

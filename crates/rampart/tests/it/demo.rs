//! `rampart serve --demo` as a real process: the in-process fleet enrolls
//! with a token serve made for it, streams into the store, drains on
//! SIGTERM, and resumes the same devices after a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Instant;

use rampart_test_support::{Serve, Workspace, wait_limit};
use serde_json::Value;

const DEVICES: usize = 20;

/// `serve --demo` on loopback with OS-chosen ports and a fast reading rate.
fn serve_demo(ws: &Workspace) -> Serve {
    let mut cmd = ws.rampart_std();
    cmd.args([
        "serve",
        "--mqtt-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--demo",
        "--demo-rate",
        "10/s",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    Serve::spawn(cmd)
}

/// The highest stored seq of each device.
fn stored_max_seq(ws: &Workspace) -> BTreeMap<String, u64> {
    let out = ws
        .rampart()
        .args(["telemetry", "export", "--format", "jsonl"])
        .output()
        .expect("export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut max: BTreeMap<String, u64> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let point: Value = serde_json::from_str(line).expect("a JSON point per line");
        let device = point["device"].as_str().expect("device").to_owned();
        let seq = point["seq"].as_u64().expect("seq");
        let m = max.entry(device).or_default();
        *m = (*m).max(seq);
    }
    max
}

/// Polls the store until `done` holds for the stored seqs, or fails after
/// the wait limit with what was stored.
fn wait_for_store(
    ws: &Workspace,
    what: &str,
    done: impl Fn(&BTreeMap<String, u64>) -> bool,
) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + wait_limit();
    loop {
        let stored = stored_max_seq(ws);
        if done(&stored) {
            return stored;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the store holds {stored:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn demo_device_ids(ws: &Workspace) -> BTreeSet<String> {
    let list = ws.rampart_json(&["device", "list"]);
    list.as_array()
        .expect("device list")
        .iter()
        .map(|d| d["id"].as_str().expect("id").to_owned())
        .collect()
}

fn stop(serve: &mut Serve) {
    assert!(serve.terminate(), "serve --demo did not exit cleanly");
    let seen = serve.seen();
    let position = |needle: &str| seen.iter().position(|l| l.contains(needle));
    let fleet = position("demo fleet stopped").expect("the fleet reports its stop");
    let broker = seen
        .iter()
        .position(|l| l.contains("broker") && l.contains("stopped"))
        .expect("the broker reports its stop");
    assert!(
        fleet < broker,
        "the fleet drains before the broker stops:\n{}",
        seen.join("\n")
    );
}

#[test]
fn serve_demo_streams_a_fleet_that_resumes_after_a_restart() {
    let ws = Workspace::new();
    ws.rampart().arg("init").assert().success();

    let mut serve = serve_demo(&ws);
    serve.wait_for(&["demo fleet: 20 simulated devices streaming"]);
    let first = wait_for_store(&ws, "every demo device stored readings", |s| {
        s.len() == DEVICES && s.keys().all(|id| id.starts_with("demo-"))
    });
    let expected: BTreeSet<String> = (1..=DEVICES).map(|n| format!("demo-{n:04}")).collect();
    assert_eq!(first.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(demo_device_ids(&ws), expected);

    // One token, made by serve for exactly the fleet, scoped to its ids,
    // every use taken.
    let tokens = ws.rampart_json(&["enroll-token", "list"]);
    let tokens = tokens.as_array().expect("token list");
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0]["id_prefix"], "demo-");
    assert_eq!(tokens[0]["uses"], DEVICES);
    assert_eq!(tokens[0]["uses_used"], DEVICES);
    assert_eq!(tokens[0]["created_by"], "demo-fleet");
    stop(&mut serve);
    let before = stored_max_seq(&ws);

    // A restart resumes the same devices: no enrollment, no new token, and
    // every device's sequence numbers carry on.
    let mut serve = serve_demo(&ws);
    serve.wait_for(&["demo fleet: 20 simulated devices streaming"]);
    wait_for_store(&ws, "every demo device stored newer readings", |s| {
        before
            .iter()
            .all(|(id, seq)| s.get(id).is_some_and(|now| now > seq))
    });
    assert_eq!(demo_device_ids(&ws), expected);
    let tokens = ws.rampart_json(&["enroll-token", "list"]);
    assert_eq!(tokens.as_array().map(Vec::len), Some(1), "{tokens:?}");
    stop(&mut serve);
}

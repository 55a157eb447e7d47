//! "Acknowledged means stored, exactly once", tested the hard way: devices
//! publish QoS 1 telemetry through the real binary, the server is killed
//! with SIGKILL at a random point, restarted, and the devices resend what
//! was not acknowledged plus the last acknowledged message, byte for byte.
//! Every acknowledged `(device, seq)` must then be stored exactly once.
//!
//! `RAMPART_CRASH_MESSAGES` (default 20000, across all devices) and
//! `RAMPART_CRASH_ROUNDS` (default 3 kill points) tune the run.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mqtt5_protocol::{Packet, ReasonCode};
use rampart_loadgen::{CertDir, Client, MqttVersion, Qos, SessionKind, Target};
use rampart_store::sqlite::SqliteOptions;
use rampart_store::telemetry::{PointFilter, TelemetryStore};
use rampart_store::{AuditKey, SqliteStore};
use rampart_test_support::Workspace;
use rustls_pki_types::ServerName;

const DEVICES: [(&str, MqttVersion); 4] = [
    ("crash-a", MqttVersion::V5),
    ("crash-b", MqttVersion::V5),
    ("crash-c", MqttVersion::V311),
    ("crash-d", MqttVersion::V311),
];
const WINDOW: usize = 32;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The exact bytes a device sends for `seq`: the same on every resend.
fn payload(seq: u64, t0: i64) -> Vec<u8> {
    format!(
        r#"{{"seq":{seq},"ts":{},"m":{{"t":{},"h":{}}}}}"#,
        t0 + seq as i64 * 1000,
        (seq % 100) as f64 / 4.0,
        40 + seq % 7
    )
    .into_bytes()
}

#[derive(Default)]
struct Progress {
    /// Sequence numbers acknowledged with success.
    acked: BTreeSet<u64>,
    /// Sequence numbers written to the connection.
    sent: BTreeSet<u64>,
}

/// Publishes `seqs` in order with a window of in-flight QoS 1 messages,
/// recording every successful PUBACK. Returns when all are acknowledged or
/// the connection breaks.
async fn publish(
    client: &mut Client,
    seqs: Vec<u64>,
    redelivered: &BTreeSet<u64>,
    t0: i64,
    progress: &Mutex<Progress>,
    total_acks: &AtomicU64,
) -> Result<(), String> {
    let topic = format!("devices/{}/telemetry/up", client.id);
    let mut pending: HashMap<u16, u64> = HashMap::new();
    let mut next_id: u16 = 1;
    let mut queue = seqs.into_iter();
    let mut exhausted = false;
    loop {
        while !exhausted && pending.len() < WINDOW {
            match queue.next() {
                Some(seq) => {
                    while pending.contains_key(&next_id) || next_id == 0 {
                        next_id = next_id.wrapping_add(1);
                    }
                    // What was sent before goes again as a redelivery (DUP=1),
                    // as a client resuming after a lost connection does.
                    let p = client
                        .publish_packet(&topic, payload(seq, t0), Qos::AtLeastOnce, next_id)
                        .with_dup(redelivered.contains(&seq));
                    client.queue(&p).map_err(|e| e.to_string())?;
                    progress.lock().expect("progress").sent.insert(seq);
                    pending.insert(next_id, seq);
                    next_id = next_id.wrapping_add(1);
                }
                None => exhausted = true,
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        client.flush().await.map_err(|e| e.to_string())?;
        let packet = client.next_packet().await.map_err(|e| e.to_string())?;
        if let Packet::PubAck(ack) = packet {
            let Some(seq) = pending.remove(&ack.packet_id) else {
                return Err(format!("PUBACK for unknown packet id {}", ack.packet_id));
            };
            if matches!(
                ack.reason_code,
                ReasonCode::Success | ReasonCode::NoMatchingSubscribers
            ) {
                progress.lock().expect("progress").acked.insert(seq);
                total_acks.fetch_add(1, Ordering::Relaxed);
            } else {
                return Err(format!("seq {seq} refused: {:?}", ack.reason_code));
            }
        }
    }
}

fn target(addr: SocketAddr, version: MqttVersion) -> Target {
    Target {
        addr,
        server_name: ServerName::try_from("localhost").expect("name"),
        version,
        keepalive: Duration::from_secs(30),
    }
}

async fn connect(certs: &CertDir, addr: SocketAddr, id: &str, version: MqttVersion) -> Client {
    let identity = certs.load(id).expect("identity");
    let config = certs.client_config(&identity, false).expect("tls config");
    let deadline = Instant::now() + rampart_test_support::wait_limit();
    loop {
        match Client::connect(
            &target(addr, version),
            config.clone(),
            id,
            SessionKind::Clean,
        )
        .await
        {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reconnecting {id}: {e}");
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("{id} cannot connect: {e}"),
        }
    }
}

struct Round {
    ws: Workspace,
    certs: CertDir,
    t0: i64,
}

impl Round {
    fn new(per_device: u64) -> Self {
        let ws = Workspace::new();
        std::fs::write(
            ws.join("rampart.toml"),
            "[broker]\nrate_limit_exempt = [\"127.0.0.1\", \"::1\"]\n",
        )
        .expect("config");
        ws.rampart().arg("init").assert().success();
        for (id, _) in DEVICES {
            ws.device(id);
        }
        let certs = CertDir::open(ws.join("devices")).expect("cert dir");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        Self {
            ws,
            certs,
            // Device clocks a little in the past, all plausible.
            t0: now - per_device as i64 * 1000 - 60_000,
        }
    }

    fn stored(&self) -> BTreeMap<String, Vec<u64>> {
        let data = self.ws.data_dir();
        let key = rampart_store::read_key_file(&data.join("audit.key")).expect("audit key");
        let store = SqliteStore::open(
            &data.join("rampart.db"),
            AuditKey::new(key, None),
            SqliteOptions::default(),
        )
        .expect("open store");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let mut out = BTreeMap::new();
            for (id, _) in DEVICES {
                let filter = PointFilter {
                    device: Some(id.parse().expect("id")),
                    ..PointFilter::default()
                };
                let mut seqs = Vec::new();
                let mut cursor = None;
                loop {
                    let (page, next) = store
                        .export_points(&filter, cursor, 50_000)
                        .await
                        .expect("export");
                    seqs.extend(page.iter().filter(|p| p.metric == "t").map(|p| p.seq));
                    match next {
                        Some(c) => cursor = Some(c),
                        None => break,
                    }
                }
                out.insert(id.to_owned(), seqs);
            }
            out
        })
    }
}

fn run_round(round_no: u64, per_device: u64, kill_fraction: f64) {
    let r = Round::new(per_device);
    let total = per_device * DEVICES.len() as u64;
    let kill_at = ((total as f64) * kill_fraction) as u64;
    eprintln!("round {round_no}: {total} messages, SIGKILL after {kill_at} acknowledgements");

    let mut serve = r.ws.serve(&[("RAMPART_CONFIG", "rampart.toml")]);
    let addr = serve.listening("mqtt");
    let progress: Arc<Vec<Mutex<Progress>>> =
        Arc::new(DEVICES.iter().map(|_| Mutex::default()).collect());
    let acks = Arc::new(AtomicU64::new(0));

    // Phase 1: publish until the server dies.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut tasks = Vec::new();
    for (i, (id, version)) in DEVICES.iter().enumerate() {
        let certs = r.certs.clone();
        let progress = Arc::clone(&progress);
        let acks = Arc::clone(&acks);
        let (id, version, t0) = (id.to_string(), *version, r.t0);
        tasks.push(rt.spawn(async move {
            let mut client = connect(&certs, addr, &id, version).await;
            let result = publish(
                &mut client,
                (0..per_device).collect(),
                &BTreeSet::new(),
                t0,
                &progress[i],
                &acks,
            )
            .await;
            result.err()
        }));
    }
    let deadline = Instant::now() + rampart_test_support::wait_limit() * 6;
    while acks.load(Ordering::Relaxed) < kill_at {
        assert!(
            Instant::now() < deadline,
            "publishing stalled before the kill point"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    serve.kill();
    for t in tasks {
        let ended = rt.block_on(t).expect("publisher task");
        assert!(
            ended.is_some(),
            "a publisher finished before the kill: raise RAMPART_CRASH_MESSAGES"
        );
    }
    let acked_before: Vec<BTreeSet<u64>> = progress
        .iter()
        .map(|p| p.lock().expect("progress").acked.clone())
        .collect();
    let sent_before: Vec<BTreeSet<u64>> = progress
        .iter()
        .map(|p| p.lock().expect("progress").sent.clone())
        .collect();
    let acked_total: usize = acked_before.iter().map(BTreeSet::len).sum();
    eprintln!("round {round_no}: {acked_total} acknowledged before SIGKILL");

    // Phase 2: restart; every device resends its last acknowledged message
    // and everything not acknowledged, byte for byte.
    let mut serve = r.ws.serve(&[("RAMPART_CONFIG", "rampart.toml")]);
    let addr = serve.listening("mqtt");
    let mut tasks = Vec::new();
    for (i, (id, version)) in DEVICES.iter().enumerate() {
        let certs = r.certs.clone();
        let progress = Arc::clone(&progress);
        let acks = Arc::clone(&acks);
        let last = acked_before[i].last().copied();
        let resend: Vec<u64> = last
            .into_iter()
            .chain((0..per_device).filter(|s| !acked_before[i].contains(s)))
            .collect();
        let redelivered = sent_before[i].clone();
        let (id, version, t0) = (id.to_string(), *version, r.t0);
        tasks.push(rt.spawn(async move {
            let mut client = connect(&certs, addr, &id, version).await;
            publish(&mut client, resend, &redelivered, t0, &progress[i], &acks).await?;
            client.disconnect().await.map_err(|e| e.to_string())
        }));
    }
    for t in tasks {
        rt.block_on(t).expect("task").expect("resend completes");
    }
    assert!(serve.terminate(), "serve stops cleanly");

    // Every (device, seq) stored exactly once, and every acknowledged one present.
    let stored = r.stored();
    for (i, (id, _)) in DEVICES.iter().enumerate() {
        let seqs = &stored[*id];
        let unique: BTreeSet<u64> = seqs.iter().copied().collect();
        assert_eq!(unique.len(), seqs.len(), "{id}: a reading stored twice");
        assert!(
            acked_before[i].is_subset(&unique),
            "{id}: an acknowledged reading was lost"
        );
        assert_eq!(
            unique,
            (0..per_device).collect::<BTreeSet<_>>(),
            "{id}: readings missing"
        );
    }
    // The replays were recognised as duplicates, not stored again.
    let out = r.ws.rampart_json(&["telemetry", "stats", DEVICES[0].0]);
    assert_eq!(out["stats"]["readings"], per_device, "{out}");
    if !acked_before[0].is_empty() {
        assert!(
            out["stats"]["duplicates"].as_u64().unwrap_or(0) >= 1,
            "{out}"
        );
    }
    drop(rt);
}

#[test]
fn acknowledged_telemetry_survives_sigkill_exactly_once() {
    let messages = env_or("RAMPART_CRASH_MESSAGES", 20_000);
    let rounds = env_or("RAMPART_CRASH_ROUNDS", 3).max(1);
    let per_device = (messages / DEVICES.len() as u64).max(WINDOW as u64 * 4);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos() as u64;
    eprintln!("kill points from seed {seed}");
    for round in 0..rounds {
        // Spread the kill points over the run: early, middle, late, each
        // jittered by the seed.
        let base = (round as f64 + 0.5) / rounds as f64;
        let jitter =
            ((seed.wrapping_mul(round + 1) % 1000) as f64 / 1000.0 - 0.5) / (rounds as f64 * 2.0);
        let fraction = (base + jitter).clamp(0.05, 0.9);
        run_round(round, per_device, fraction);
    }
}

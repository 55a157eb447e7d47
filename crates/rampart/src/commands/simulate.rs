//! `rampart simulate`: a fleet of simulated sensor devices (`rampart-sim`),
//! with a progress display and a summary at the end.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use rampart_core::backoff::{BackoffConfig, Jitter};
use rampart_core::batch::BatchPolicy;
use rampart_core::payload::Format;
use rampart_sim::{Fleet, FleetMonitor, FleetOptions, Summary, progress};
use tokio_util::sync::CancellationToken;

use crate::cli::{GlobalArgs, PayloadFormatArg, SimulateArgs};
use crate::output;
use crate::output::say;
use crate::serve::spawn_signal_listener;

/// Runs the fleet until `--duration` is over or a signal arrives.
pub async fn run(g: &GlobalArgs, args: SimulateArgs) -> Result<ExitCode> {
    let options = options(&args);
    let progress_every = args.progress_every;
    let shutdown = CancellationToken::new();
    spawn_signal_listener(shutdown.clone())?;
    let fleet = Fleet::start(options, shutdown.clone())
        .await
        .context("cannot start the simulated fleet")?;
    // One line per faulty device, so that tests and operators know them.
    for (id, kind) in fleet.faults() {
        eprintln!("ota-fault id={id} kind={kind}");
    }
    let done = CancellationToken::new();
    let reporter = tokio::spawn(report_progress(
        fleet.monitor(),
        progress_every,
        done.clone(),
    ));
    let summary = fleet.wait().await;
    done.cancel();
    let _ = reporter.await;
    if g.json {
        output::json(&summary)?;
    } else {
        print_summary(&summary);
    }
    if summary.fleet.connects == 0 {
        let why = summary
            .devices
            .iter()
            .find_map(|d| d.last_error.clone())
            .unwrap_or_else(|| "no reason recorded".to_owned());
        anyhow::bail!("no simulated device ever connected; last failure: {why}");
    }
    Ok(ExitCode::SUCCESS)
}

fn options(a: &SimulateArgs) -> FleetOptions {
    let mut o = FleetOptions::new(
        a.server.clone(),
        a.http.clone(),
        a.ca.clone(),
        a.state_dir.clone(),
    );
    o.devices = a.devices as usize;
    o.token = a.token.clone();
    o.reading_interval = a.rate;
    o.id_prefix = a.id_prefix.clone();
    o.flaky = a.flaky;
    o.flaky_downloads = a.flaky_downloads;
    o.sleep_cycle = a.sleep_cycle;
    o.duration = a.duration;
    o.sensor = a.sensor;
    o.read_failure_rate = a.read_failures;
    o.batch = BatchPolicy {
        max_count: a.batch_size as usize,
        max_age_ms: millis(a.batch_age),
    };
    o.format = match a.format {
        PayloadFormatArg::Json => Format::Json,
        PayloadFormatArg::Cbor => Format::Cbor,
    };
    o.backoff = BackoffConfig {
        initial_ms: millis(a.backoff_min).max(1),
        max_ms: millis(a.backoff_max).max(millis(a.backoff_min)),
        jitter: Jitter::Decorrelated,
        stable_after_ms: millis(a.backoff_max).max(1_000),
    };
    o.renew_every = a.renew_every;
    o.drain_timeout = a.drain_timeout;
    o.connect_rate = a.connect_rate;
    o.enroll_rate = a.enroll_rate;
    o.keepalive = a.keepalive;
    o.io_timeout = a.io_timeout;
    o.persist_every = a.persist_every;
    o.device_type = a.device_type.clone();
    o.firmware_version = a.firmware_version.clone();
    o.ota_trust = a.ota_trust.clone();
    o.ota_slot_size = a.ota_slot_size;
    o.ota_faults = a.ota_fault.clone();
    o.ota_confirm_timeout = a.ota_confirm_timeout;
    o.ota_max_boot_attempts = a.ota_max_boot_attempts;
    o
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An updating line on a terminal, plain lines otherwise (logs and CI).
async fn report_progress(
    monitor: FleetMonitor,
    every: std::time::Duration,
    done: CancellationToken,
) {
    let terminal = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let finished = tokio::select! {
            _ = tick.tick() => false,
            _ = done.cancelled() => true,
        };
        let line = progress::line(&monitor.counts(), monitor.elapsed());
        let mut err = std::io::stderr().lock();
        let _ = if terminal {
            write!(err, "\r{line}\x1b[K{}", if finished { "\n" } else { "" })
        } else {
            writeln!(err, "progress {line}")
        };
        let _ = err.flush();
        if finished {
            return;
        }
    }
}

fn print_summary(s: &Summary) {
    let c = &s.fleet;
    say!(
        "fleet {}: {} devices, {} enrolled, ran {:.1} s (state dir {})",
        s.id_prefix,
        c.devices,
        c.enrolled,
        s.elapsed_ms as f64 / 1000.0,
        s.state_dir
    );
    say!(
        "readings {} (read failures {}, restored {}), sent {}, acknowledged {}, rejected {}, dropped {}, buffered {}",
        c.readings,
        c.read_failures,
        c.restored,
        c.sent,
        c.acknowledged,
        c.rejected,
        c.dropped,
        c.buffered
    );
    say!(
        "connections {} (reconnects {}, failures {}, flaky drops {}), enrollment failures {}",
        c.connects,
        c.reconnects(),
        c.connect_failures,
        c.flaky_drops,
        c.enroll_failures
    );
    say!(
        "downlinks {} (malformed {}), claims confirmed {}, commands {}, renewals {}",
        c.downlinks,
        c.malformed_downlinks,
        c.claims_confirmed,
        c.commands,
        c.renewals
    );
    if c.ota_offers + c.ota_failed + c.ota_rolled_back > 0 {
        say!(
            "updates: offers accepted {}, succeeded {}, failed {}, rolled back {} (boot crashes {}, downloads resumed {})",
            c.ota_offers,
            c.ota_succeeded,
            c.ota_failed,
            c.ota_rolled_back,
            c.boot_crashes,
            c.download_resumes
        );
    }
    if !s.drained {
        say!(
            "{} readings are still buffered in the state dir; the next run delivers them",
            c.buffered
        );
    }
}

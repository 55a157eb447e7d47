//! `rampart serve`: start every part, follow changes made by the CLI, and
//! shut down in order on SIGINT/SIGTERM.
//!
//! Parts follow STYLE.md's server shape: each is a task given what it needs
//! and a shutdown token. Shutdown is ordered: stop accepting → drain sessions
//! → flush the pipeline → close the store. The broker and the web part
//! stop accepting together, first.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rampart_broker::{Broker, TlsMaterial};
use rampart_ingest::{CommitOptions, Pipeline, PipelineOptions};
use rampart_proto::telemetry::Limits;
use rampart_store::telemetry::TelemetryStore;
use rampart_store::{Change, ChangeKind, Store};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cli::{GlobalArgs, ServeArgs};
use crate::config::{Config, TelemetryConfig};
use crate::control::{ControlOptions, ControlPlane};
use crate::datadir::DataDir;
use crate::demo::{DemoFleet, DemoOptions};
use crate::platform::Platform;
use crate::rollout::{Rollout, RolloutOptions};
use rampart_ota::download::TokenKey;

/// Change-feed events buffered per subscriber before it is told it lagged.
const CHANGE_BUFFER: usize = 1024;

/// Runs the server until a signal arrives.
pub async fn run(g: &GlobalArgs, config: Config, args: ServeArgs) -> Result<ExitCode> {
    let (dir, _) = DataDir::create(&g.data_dir)?;
    let _lock = dir.lock_for_serve()?;
    let (platform, _) = Platform::init(&g.data_dir, config).await?;
    let (server_cert, _) = platform.server_identity()?;
    let platform = Arc::new(platform);
    tracing::info!(
        server_cert = %server_cert.display(),
        data_dir = %g.data_dir.display(),
        store = %platform.store.location(),
        mqtt_addr = %args.mqtt_addr,
        http_addr = %args.http_addr,
        "rampart serve starting"
    );

    let shutdown = CancellationToken::new();
    spawn_signal_listener(shutdown.clone())?;

    // One handle on the telemetry store for the pipeline, retention and the
    // InfluxDB push.
    let telemetry: Arc<dyn TelemetryStore> = Arc::new(platform.store.clone());
    // The pipeline: every device uplink is committed before it is acknowledged.
    let (pipeline, committer) = Pipeline::start(
        Arc::clone(&telemetry),
        pipeline_options(&platform.config.telemetry),
    );

    // The broker: bound first so that a taken port fails the start cleanly.
    let store: Arc<dyn Store> = Arc::new(platform.store.clone());
    // The control plane answers renewals and claim confirmations and hands
    // every other uplink to the pipeline.
    let control = ControlPlane::new(
        pipeline.clone(),
        Arc::clone(&platform),
        ControlOptions {
            renewals: platform.config.renewal.policy(),
            confirmations: platform.config.claim.confirmation_limit(),
            claims: platform.config.claim.policy(),
        },
    );
    let broker = Broker::new(
        platform.config.broker.clone(),
        &tls_material(&platform)?,
        Arc::clone(&store),
        Arc::clone(&control) as Arc<dyn rampart_proto::ingest::IngestSink>,
    )
    .context("cannot start the MQTT broker")?;
    control.attach(&broker);
    let mqtt = TcpListener::bind(args.mqtt_addr)
        .await
        .with_context(|| format!("cannot listen for MQTT on {}", args.mqtt_addr))?;
    // A plain line, whatever the log settings: scripts and tests wait for it.
    let mqtt_bound = mqtt.local_addr()?;
    eprintln!("listening mqtt={mqtt_bound}");
    let broker_stop = CancellationToken::new();
    let broker_task = tokio::spawn(rampart_broker::run(
        mqtt,
        Arc::clone(&broker),
        broker_stop.clone(),
    ));

    // The web part: HTTPS with the same server certificate. Its live
    // device streams follow the pipeline's fan-out of committed readings
    // and end when the web part stops, so that draining is not held up.
    let web_stop = CancellationToken::new();
    let live = rampart_web::live::LiveHub::spawn(
        pipeline.subscribe(),
        rampart_web::live::LiveOptions::default(),
        web_stop.clone(),
    );
    // Changes made anywhere (this server's control plane, the CLI, other
    // replicas), as the change follower reads them from the store.
    let (changes, _) = broadcast::channel::<Change>(CHANGE_BUFFER);
    let inbox = rampart_web::inbox::InboxHub::spawn(
        changes.subscribe(),
        rampart_web::live::LiveOptions::default().max_streams,
        rampart_web::live::LiveOptions::default().keep_alive,
        web_stop.clone(),
    );
    let http = TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen for HTTPS on {}", args.http_addr))?;
    let http_bound = http.local_addr()?;
    eprintln!("listening http={http_bound}");
    // The rollout engine: offers on ota/down, reports from ota/up.
    let rollout = Rollout::new(
        platform.store.clone(),
        TokenKey::derive(&dir.console_key()?),
        RolloutOptions {
            tick: platform.config.ota.tick,
            token_ttl: platform.config.ota.download_token_ttl,
            download_base: download_base(&platform, http_bound),
        },
    );
    rollout.attach(&broker);
    control.with_rollout(Arc::clone(&rollout));
    let alert_metrics = Arc::new(crate::alerting::AlertMetrics::default());
    let exposed_alerts = Arc::clone(&alert_metrics);
    let web = web_state(&platform, &dir, Arc::clone(&store))?
        .with_inbox(inbox)
        .with_monitoring(
            crate::monitoring::monitoring(
                &broker,
                Arc::clone(pipeline.metrics()),
                control.metrics(),
                rollout.metrics(),
            )
            .source(move |t| crate::monitoring::write_alerts(&exposed_alerts, t))
            .source({
                let store = platform.store.clone();
                move |t| {
                    if let Some(stats) = store.writer_stats() {
                        crate::monitoring::write_store(stats, t);
                    }
                }
            }),
        )
        .with_devices(rampart_web::DeviceBackend {
            telemetry: Arc::clone(&telemetry),
            live,
            crl: Arc::new(PlatformCrl(Arc::clone(&platform))),
            claim_policy: platform.config.claim.policy(),
        });
    // `/metrics` on its own plain-HTTP address, when configured.
    let metrics_task = match platform.config.web.metrics_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen for metrics on {addr} (web.metrics_addr)")
            })?;
            let bound = listener.local_addr()?;
            eprintln!("listening metrics={bound}");
            tracing::info!(metrics_addr = %bound, token = platform.config.web.metrics_token.is_some(), "serving /metrics over plain HTTP");
            Some(tokio::spawn(rampart_web::run_metrics(
                listener,
                web.clone(),
                shutdown.child_token(),
            )))
        }
        None => None,
    };
    print_setup_url(&web, http_bound).await?;
    let web_task = tokio::spawn(rampart_web::run(http, web.clone(), web_stop.clone()));

    let follower = spawn_change_follower(
        Arc::clone(&platform),
        Arc::clone(&broker),
        Arc::clone(&control),
        web.clone(),
        changes.clone(),
        shutdown.child_token(),
    )
    .await?;
    let alerting = spawn_alerting(
        &platform,
        &control,
        &pipeline,
        &changes,
        alert_metrics,
        shutdown.child_token(),
    )
    .await?;
    let crl = spawn_crl_refresher(Arc::clone(&platform), shutdown.child_token());
    let rollout_task = tokio::spawn(Arc::clone(&rollout).run(shutdown.child_token()));
    let retention = tokio::spawn(rampart_ingest::retention::run(
        Arc::clone(&telemetry),
        retention_options(&platform),
        shutdown.child_token(),
    ));
    let influx = spawn_influx(&platform, telemetry, shutdown.child_token())?;
    let reloader = spawn_tls_reloader(
        Arc::clone(&platform),
        Arc::clone(&broker),
        web,
        shutdown.child_token(),
    );

    // The demo fleet, once both ports listen. If it cannot start, the
    // server shuts down in order and says why: `--demo` was asked for.
    let mut demo_error = None;
    let demo = if args.demo {
        let options = DemoOptions {
            devices: args.demo_devices as usize,
            reading_interval: args.demo_rate,
        };
        match DemoFleet::start(
            &platform,
            options,
            mqtt_bound,
            http_bound,
            shutdown.child_token(),
        )
        .await
        {
            Ok(fleet) => Some(fleet),
            Err(e) => {
                demo_error = Some(e);
                shutdown.cancel();
                None
            }
        }
    } else {
        None
    };

    tracing::info!("rampart serve ready");
    shutdown.cancelled().await;

    tracing::info!("shutting down");
    let deadline = platform.config.serve.shutdown_timeout;
    // The demo fleet flushes its readings while the broker still accepts them.
    if let Some(fleet) = demo {
        fleet.stopped(deadline).await;
    }
    // Stop accepting and drain sessions and requests first, then the rest.
    broker_stop.cancel();
    web_stop.cancel();
    let (broker_end, web_end) = tokio::join!(
        tokio::time::timeout(deadline, broker_task),
        tokio::time::timeout(deadline, web_task)
    );
    for (part, end) in [("broker", broker_end), ("web", web_end)] {
        match end {
            Ok(Ok(Ok(()))) => tracing::info!(part, "stopped"),
            Ok(Ok(Err(e))) => tracing::warn!(part, error = %e, "stopped with an error"),
            Ok(Err(e)) => tracing::warn!(part, error = %e, "task failed"),
            Err(_) => tracing::warn!(part, "did not stop within the shutdown timeout"),
        }
    }
    if let Some(task) = metrics_task {
        match tokio::time::timeout(deadline, task).await {
            Ok(Ok(Ok(()))) => tracing::info!(part = "metrics", "stopped"),
            Ok(Ok(Err(e))) => tracing::warn!(part = "metrics", error = %e, "stopped with an error"),
            Ok(Err(e)) => tracing::warn!(part = "metrics", error = %e, "task failed"),
            Err(_) => tracing::warn!(part = "metrics", "did not stop within the shutdown timeout"),
        }
    }
    if tokio::time::timeout(deadline, alerting.stopped())
        .await
        .is_err()
    {
        tracing::warn!(part = "alerts", "did not stop within the shutdown timeout");
    }
    for (name, task) in [
        ("change follower", follower),
        ("CRL refresher", crl),
        ("rollout engine", rollout_task),
        ("TLS reloader", reloader),
        ("retention", retention),
        ("InfluxDB export", influx),
    ] {
        if tokio::time::timeout(deadline, task).await.is_err() {
            tracing::warn!(part = name, "did not stop within the shutdown timeout");
        }
    }
    // Then the pipeline: once the broker and this function let go of it, the
    // committer commits what is queued and ends.
    let counters: Vec<String> = control
        .metrics()
        .snapshot()
        .into_iter()
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    tracing::info!(counters = %counters.join(" "), "control plane counters");
    drop(broker);
    drop(rollout);
    drop(control);
    drop(pipeline);
    if tokio::time::timeout(deadline, committer).await.is_err() {
        tracing::warn!("the telemetry committer did not finish within the shutdown timeout");
    }
    // Last: the store. Dropping the platform closes its connections once
    // every part holding it has stopped.
    drop(platform);
    tracing::info!("stopped");
    match demo_error {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Starts alert evaluation and webhook delivery, fed by the pipeline's
/// fan-out, the broker's security notices (through the control plane) and
/// the change feed.
async fn spawn_alerting(
    platform: &Arc<Platform>,
    control: &Arc<ControlPlane>,
    pipeline: &rampart_ingest::Pipeline,
    changes: &broadcast::Sender<Change>,
    metrics: Arc<crate::alerting::AlertMetrics>,
    shutdown: CancellationToken,
) -> Result<crate::alerting::Alerting> {
    let config = &platform.config.alerts;
    let key = rampart_web::auth::SealingKey::new(platform.dir.console_key()?);
    crate::alerting::declared::apply(&platform.store, &key, config)
        .await
        .context("cannot apply the alert channels and rules of the configuration")?;
    let (feed, notices) = crate::alerting::security_feed(&metrics);
    control.feed_security(feed);
    Ok(crate::alerting::Alerting::spawn(
        platform.store.clone(),
        key,
        pipeline.subscribe(),
        changes.subscribe(),
        notices,
        metrics,
        crate::alerting::AlertingOptions {
            presence_hold_down: config.presence_hold_down,
            delivery: config.delivery(),
        },
        shutdown,
    ))
}

/// Base of download URLs in offers: `ota.public_url`, or the HTTPS
/// listener's address (a wildcard address named by the server
/// certificate's first extra name, or `localhost`).
fn download_base(platform: &Platform, http: std::net::SocketAddr) -> String {
    if let Some(url) = &platform.config.ota.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = if http.ip().is_unspecified() {
        platform
            .config
            .pki
            .server_sans
            .first()
            .cloned()
            .unwrap_or_else(|| "localhost".into())
    } else {
        match http.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        }
    };
    format!("https://{host}:{}", http.port())
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
pub(crate) fn spawn_signal_listener(shutdown: CancellationToken) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "received"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "received"),
        }
        shutdown.cancel();
    });
    Ok(())
}

/// Polls the store's change feed and broadcasts each change to the parts
/// that act on it (the broker cuts revoked sessions, ...). Polling works the
/// same whether the change came from this process, the CLI or another
/// replica, and the interval bounds how late a change applies.
async fn spawn_change_follower(
    platform: Arc<Platform>,
    broker: Arc<Broker>,
    control: Arc<ControlPlane>,
    web: rampart_web::AppState,
    changes: broadcast::Sender<Change>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>> {
    let mut last = platform.store.latest_change().await?;
    let interval = platform.config.serve.change_poll_interval;
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let batch = match platform.store.changes_since(last).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the change feed; retrying");
                    continue;
                }
            };
            if let Some(first) = batch.first()
                && first.seq > last + 1
                && last > 0
            {
                tracing::warn!(
                    missed = first.seq - last - 1,
                    "change feed trimmed past this server's position; parts re-check all state"
                );
            }
            for change in batch {
                last = change.seq;
                if matches!(
                    change.kind,
                    ChangeKind::CertificateIssued
                        | ChangeKind::CertificateActivated
                        | ChangeKind::ServiceRevoked
                ) {
                    // Made by this server (a renewal, a device connecting
                    // with its new certificate, a service revoked in the
                    // console): nobody else publishes the CRL that now
                    // lists the serial. (A `rampart service revoke` has
                    // published it already; once more costs a CRL number.)
                    if let Err(e) = platform.publish_crl().await {
                        tracing::error!(error = %format!("{e:#}"), "cannot publish the CRL after a renewal");
                    }
                }
                if change.kind.revokes_certificates() {
                    // A new CRL is on disk; new handshakes check it.
                    match tls_material(&platform) {
                        Ok(m) => {
                            if let Err(e) = broker.reload_tls(&m) {
                                tracing::warn!(error = %e, "cannot reload TLS material");
                            }
                            // The web listener checks device certificates
                            // (firmware downloads) against the same CRL.
                            let trust = rampart_web::ClientTrust {
                                ca_pem: m.client_ca_pem.clone(),
                                crl_pem: m.crl_pem.clone(),
                            };
                            if let Err(e) = web.tls().reload_with_client_trust(
                                &m.server_chain_pem,
                                &m.server_key_pem,
                                trust,
                            ) {
                                tracing::warn!(error = %e, "cannot reload the web part's TLS material");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %format!("{e:#}"), "cannot read TLS material")
                        }
                    }
                }
                broker.apply_change(&change).await;
                control.apply_change(&change).await;
                tracing::info!(
                    seq = change.seq,
                    kind = change.kind.as_str(),
                    subject = %change.subject,
                    "change applied"
                );
                // No receiver is fine: no part needs this change right now.
                let _ = changes.send(change);
            }
        }
    }))
}

/// Re-signs the CRL at half its validity so that relying parties never see
/// an expired one.
fn spawn_crl_refresher(platform: Arc<Platform>, shutdown: CancellationToken) -> JoinHandle<()> {
    let every = platform.config.pki.crl_validity / 2;
    tokio::spawn(async move {
        loop {
            if let Err(e) = platform.publish_crl().await {
                tracing::error!(error = %format!("{e:#}"), "cannot refresh the CRL");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every.max(Duration::from_secs(60))) => {}
            }
        }
    })
}

/// Certificates, key, trust anchors and CRL for the broker's TLS.
fn tls_material(platform: &Platform) -> Result<TlsMaterial> {
    let (cert, key) = platform.server_identity()?;
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let crl_path = platform.pki.crl_path();
    Ok(TlsMaterial {
        server_chain_pem: read(&cert)?,
        server_key_pem: read(&key)?,
        client_ca_pem: platform.pki.client_ca_pem(),
        crl_pem: crl_path.exists().then(|| read(&crl_path)).transpose()?,
        tls12: platform.config.broker.tls12,
    })
}

/// Publishes the CRL for the console's revocations, as `rampart device
/// revoke` does.
struct PlatformCrl(Arc<Platform>);

impl std::fmt::Debug for PlatformCrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlatformCrl")
    }
}

#[async_trait::async_trait]
impl rampart_web::CrlPublisher for PlatformCrl {
    async fn publish_crl(&self) -> Result<(), String> {
        self.0.publish_crl().await.map_err(|e| format!("{e:#}"))
    }
}

/// The web part's state: the store, the CA, `[web]`, the server certificate.
fn web_state(
    platform: &Platform,
    dir: &DataDir,
    store: Arc<dyn Store>,
) -> Result<rampart_web::AppState> {
    let m = tls_material(platform)?;
    // Client certificates are asked for, optionally, so that devices can
    // prove who they are when they download firmware (docs/ota.md §4).
    let tls = rampart_web::ServerTls::with_client_trust(
        &m.server_chain_pem,
        &m.server_key_pem,
        platform.config.web.tls12,
        rampart_web::ClientTrust {
            ca_pem: m.client_ca_pem.clone(),
            crl_pem: m.crl_pem.clone(),
        },
    )
    .context("cannot set up HTTPS")?;
    let auth = rampart_web::AuthBackend {
        users: Arc::new(platform.store.clone()),
        notifications: Arc::new(platform.store.clone()),
        sealing_key: rampart_web::auth::SealingKey::new(dir.console_key()?),
        clock: rampart_web::auth::Clock::system(),
    };
    let ota = rampart_web::OtaBackend {
        firmware: Arc::new(platform.store.clone()),
        images: dir.firmware(),
        tokens: TokenKey::derive(&dir.console_key()?),
        max_image_size: platform.config.firmware.max_image_size,
    };
    Ok(rampart_web::AppState::new(
        store,
        Arc::clone(&platform.pki),
        platform.config.web.clone(),
        tls,
        auth,
    )
    .with_ota(ota)
    .with_campaigns(rampart_web::CampaignBackend {
        campaigns: Arc::new(platform.store.clone()),
        defaults: rampart_web::CampaignDefaults {
            timeouts: platform.config.ota.timeouts(),
            soak: platform.config.ota.default_soak,
            success_threshold: platform.config.ota.default_success_threshold,
            failure_threshold: platform.config.ota.default_failure_threshold,
        },
    })
    .with_alerts(Arc::new(platform.store.clone())))
}

/// While no owner exists, prints a fresh one-time setup URL on stdout
/// (`setup url=...`, a plain line that scripts and tests read); the token
/// is valid for an hour and voids the ones printed before. The URL is a
/// credential: it goes to stdout only, never to the log.
async fn print_setup_url(web: &rampart_web::AppState, http: std::net::SocketAddr) -> Result<()> {
    let Some(token) = rampart_web::auth::issue_setup_token(web)
        .await
        .context("cannot issue the first-start setup token")?
    else {
        return Ok(());
    };
    let host = match http.ip() {
        ip if ip.is_unspecified() => "localhost".to_owned(),
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        ip => ip.to_string(),
    };
    println!(
        "setup url=https://{host}:{}/setup?token={token}",
        http.port()
    );
    tracing::warn!(
        valid_minutes = rampart_web::auth::SETUP_TOKEN_VALID.whole_minutes(),
        "no owner account yet: open the setup URL printed on stdout to create it"
    );
    Ok(())
}

/// Modification times of every file the TLS configuration is built from.
fn tls_stamp(platform: &Platform) -> Vec<Option<std::time::SystemTime>> {
    let mut files = vec![platform.pki.crl_path(), platform.dir.pki().join("ca.crt")];
    if let Ok((cert, key)) = platform.server_identity() {
        files.extend([cert, key]);
    }
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// Loads changed certificates, keys, CA or CRL without a restart: new
/// connections use them, live ones keep what they negotiated.
fn spawn_tls_reloader(
    platform: Arc<Platform>,
    broker: Arc<Broker>,
    web: rampart_web::AppState,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let every = platform.config.serve.tls_reload_interval;
    tokio::spawn(async move {
        let mut seen = tls_stamp(&platform);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let now = tls_stamp(&platform);
            if now == seen {
                continue;
            }
            let reloaded = tls_material(&platform).map(|m| {
                broker
                    .reload_tls(&m)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        web.tls()
                            .reload_with_client_trust(
                                &m.server_chain_pem,
                                &m.server_key_pem,
                                rampart_web::ClientTrust {
                                    ca_pem: m.client_ca_pem.clone(),
                                    crl_pem: m.crl_pem.clone(),
                                },
                            )
                            .map_err(|e| e.to_string())
                    })
            });
            match reloaded {
                Ok(Ok(())) => {
                    tracing::info!("reloaded TLS certificates and CRL");
                    seen = now;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "new TLS material refused; keeping the old")
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot read TLS material; keeping the old")
                }
            }
        }
    })
}

/// Pipeline settings from `[telemetry]`.
fn pipeline_options(c: &TelemetryConfig) -> PipelineOptions {
    PipelineOptions {
        limits: Limits {
            max_payload_bytes: c.max_payload_bytes,
            max_metrics: c.max_metrics,
            max_batch: c.max_batch,
        },
        commit: CommitOptions {
            max_items: c.commit_max_items,
            min_interval: c.commit_interval,
            outbox: c.influx.is_some(),
            ..CommitOptions::default()
        },
        ..PipelineOptions::default()
    }
}

/// Retention settings from `[telemetry]`; archives go to the data dir.
fn retention_options(platform: &Platform) -> rampart_ingest::retention::RetentionOptions {
    let c = &platform.config.telemetry;
    rampart_ingest::retention::RetentionOptions {
        raw: c.raw_retention,
        minute: c.minute_retention,
        hour: c.hour_retention,
        presence: c.presence_retention,
        archive_dir: c.archive.then(|| platform.dir.archive()),
        interval: c.retention_interval,
    }
}

/// Starts the InfluxDB push when `[telemetry.influx]` is set; a bad
/// configuration (URL, CA file) stops the start with its reason.
fn spawn_influx(
    platform: &Platform,
    store: Arc<dyn TelemetryStore>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>> {
    let Some(c) = platform.config.telemetry.influx.clone() else {
        return Ok(tokio::spawn(async {}));
    };
    let mut options = rampart_ingest::influx::InfluxOptions::new(c.url);
    options.token = std::env::var(&c.token_env).ok().filter(|t| !t.is_empty());
    options.measurement = c.measurement;
    options.ca_file = c.ca_file;
    let exporter = rampart_ingest::influx::InfluxExporter::new(&options)
        .context("telemetry.influx is not usable")?;
    tracing::info!(measurement = %options.measurement, token = options.token.is_some(), "pushing telemetry to InfluxDB");
    Ok(tokio::spawn(exporter.run(store, shutdown)))
}

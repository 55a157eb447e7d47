//! `rampart campaign ...`: OTA campaigns in the data dir's store. Works
//! while `serve` runs: its rollout engine picks changes up on its next
//! tick (docs/ota.md §5).

use std::process::ExitCode;

use anyhow::{Context, Result};
use rampart_ota::campaign::{StateCounts, Waves};
use rampart_proto::DeviceId;
use rampart_store::{
    Campaign, CampaignChange, CampaignEntry, CampaignStore, CampaignTarget, DeviceState,
    EntryQuery, NewCampaign, PauseReason,
};
use serde_json::json;

use crate::cli::{CampaignCommand, CampaignCreateArgs, GlobalArgs};
use crate::config::Config;
use crate::output::{self, say};
use crate::platform::{Platform, cli_actor};

/// Entries read per page for `show`.
const PAGE: u32 = 1000;

/// Runs a campaign command.
pub async fn run(g: &GlobalArgs, config: Config, cmd: CampaignCommand) -> Result<ExitCode> {
    let p = Platform::open(&g.data_dir, config).await?;
    match cmd {
        CampaignCommand::Create(args) => create(g, &p, *args).await,
        CampaignCommand::List => list(g, &p).await,
        CampaignCommand::Show { id } => show(g, &p, id).await,
        CampaignCommand::Approve { id } => change(g, &p, id, CampaignChange::Approve).await,
        CampaignCommand::Pause { id } => {
            change(g, &p, id, CampaignChange::Pause(PauseReason::Operator)).await
        }
        CampaignCommand::Resume { id } => change(g, &p, id, CampaignChange::Resume).await,
        CampaignCommand::Cancel { id } => change(g, &p, id, CampaignChange::Cancel).await,
    }
}

/// The campaign `args` ask for, defaults from `[ota]`.
fn new_campaign(config: &Config, args: CampaignCreateArgs) -> Result<NewCampaign> {
    let target = if args.all {
        CampaignTarget::All
    } else if let Some(state) = args.state.as_deref() {
        CampaignTarget::State(match state {
            "bound" => DeviceState::Bound,
            _ => DeviceState::Unbound,
        })
    } else {
        let ids = args
            .devices
            .iter()
            .map(|d| {
                DeviceId::parse(d.trim())
                    .with_context(|| format!("--devices: '{d}' is not a device id"))
            })
            .collect::<Result<Vec<_>>>()?;
        CampaignTarget::Devices(ids)
    };
    let waves: Waves = args.waves.parse().context("--waves")?;
    let ota = &config.ota;
    let d = ota.timeouts();
    Ok(NewCampaign {
        name: args.name,
        firmware_id: args.firmware,
        target,
        waves,
        soak: args.soak.unwrap_or(ota.default_soak),
        success_threshold: args
            .success_threshold
            .unwrap_or(ota.default_success_threshold),
        failure_threshold: args
            .failure_threshold
            .unwrap_or(ota.default_failure_threshold),
        timeouts: rampart_ota::campaign::Timeouts {
            offered: args.offered_timeout.unwrap_or(d.offered),
            downloading: args.downloading_timeout.unwrap_or(d.downloading),
            verifying: args.verifying_timeout.unwrap_or(d.verifying),
            pending_reboot: args.pending_reboot_timeout.unwrap_or(d.pending_reboot),
            pending_confirm: args.pending_confirm_timeout.unwrap_or(d.pending_confirm),
        },
        approve: args.approve,
    })
}

async fn create(g: &GlobalArgs, p: &Platform, args: CampaignCreateArgs) -> Result<ExitCode> {
    let new = new_campaign(&p.config, args)?;
    let c = p
        .store
        .create_campaign(new, &cli_actor())
        .await
        .context("cannot create the campaign")?;
    if g.json {
        output::json(&c)?;
    } else {
        say!(
            "campaign {} '{}' created ({}): {} device(s) of type {} to {}, waves {}",
            c.id,
            c.name,
            c.status,
            c.devices,
            c.device_type,
            c.version,
            c.waves
        );
        if c.status == rampart_ota::campaign::CampaignStatus::Draft {
            say!("approve it with `rampart campaign approve {}`", c.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(g: &GlobalArgs, p: &Platform) -> Result<ExitCode> {
    let all = p.store.list_campaigns(&[]).await?;
    if g.json {
        output::json(&all)?;
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:<5} {:<24} {:<10} {:<20} {:<12} {:>7} {:>5} CREATED",
        "ID",
        "NAME",
        "STATUS",
        "DEVICE TYPE",
        "VERSION",
        "DEVICES",
        "WAVE"
    );
    for c in &all {
        say!(
            "{:<5} {:<24} {:<10} {:<20} {:<12} {:>7} {:>5} {} by {}",
            c.id,
            c.name,
            c.status,
            c.device_type,
            c.version,
            c.devices,
            format!("{}/{}", c.current_wave, c.waves.len()),
            c.created_at,
            c.created_by
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(g: &GlobalArgs, p: &Platform, id: u64) -> Result<ExitCode> {
    let c = p
        .store
        .campaign(id)
        .await?
        .ok_or(rampart_store::StoreError::CampaignNotFound(id))?;
    let waves = p.store.campaign_waves(id).await?;
    let counts = waves
        .iter()
        .fold(StateCounts::default(), |acc, w| acc.plus(&w.counts));
    let mut entries: Vec<CampaignEntry> = Vec::new();
    loop {
        let page = p
            .store
            .campaign_entries(
                id,
                &EntryQuery {
                    offset: u32::try_from(entries.len()).unwrap_or(u32::MAX),
                    limit: PAGE,
                    ..EntryQuery::default()
                },
            )
            .await?;
        let done = page.entries.is_empty()
            || entries.len() as u64 + page.entries.len() as u64 >= page.total;
        entries.extend(page.entries);
        if done {
            break;
        }
    }
    if g.json {
        output::json(&json!({
            "campaign": c,
            "counts": counts,
            "waves": waves,
            "entries": entries,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    print_campaign(&c);
    let shown: Vec<String> = rampart_ota::campaign::EntryState::ALL
        .iter()
        .filter(|s| counts.get(**s) > 0)
        .map(|s| format!("{s}={}", counts.get(*s)))
        .collect();
    say!("counts:  {}", shown.join(" "));
    say!();
    say!(
        "{:<32} {:>4} {:<16} {:<24} {:>12} UPDATED",
        "DEVICE",
        "WAVE",
        "STATE",
        "REASON",
        "BYTES"
    );
    for e in &entries {
        let bytes = match (e.bytes, e.total) {
            (Some(b), Some(t)) => format!("{b}/{t}"),
            (Some(b), None) => b.to_string(),
            _ => "-".into(),
        };
        say!(
            "{:<32} {:>4} {:<16} {:<24} {:>12} {}",
            e.device_id.as_str(),
            e.wave,
            e.state,
            e.reason.as_deref().unwrap_or("-"),
            bytes,
            e.updated_at
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_campaign(c: &Campaign) {
    say!("campaign {}: {}", c.id, c.name);
    say!(
        "status:  {}{}",
        c.status,
        c.status_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    say!(
        "firmware: {} ({} {})",
        c.firmware_id,
        c.device_type,
        c.version
    );
    say!(
        "waves:   {} (started {}), soak {}",
        c.waves,
        c.current_wave,
        rampart_span::format(c.soak)
    );
    say!(
        "thresholds: success {}, failure {}",
        c.success_threshold,
        c.failure_threshold
    );
    say!("devices: {}", c.devices);
    say!("created: {} by {}", c.created_at, c.created_by);
}

async fn change(g: &GlobalArgs, p: &Platform, id: u64, change: CampaignChange) -> Result<ExitCode> {
    let c = p
        .store
        .change_campaign(id, change, &cli_actor())
        .await
        .with_context(|| {
            format!(
                "cannot {} campaign {id}",
                change.action().trim_start_matches("campaign.")
            )
        })?;
    if g.json {
        output::json(&c)?;
    } else {
        say!(
            "campaign {} is {}; a running `rampart serve` acts on it within ota.tick",
            c.id,
            c.status
        );
    }
    Ok(ExitCode::SUCCESS)
}

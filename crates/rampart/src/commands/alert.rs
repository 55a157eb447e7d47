//! `rampart alert ...`: webhook channels, rules, alerts and dead letters.
//! The checks are `rampart_web::alert_config`'s, the same as the API's; a
//! running `serve` picks changes up from the change feed within its poll
//! interval.

use std::process::ExitCode;

use anyhow::{Context, Result};
use rampart_store::{AlertQuery, AlertState, AlertStore, RuleScope, TelemetryStore};
use rampart_web::alert_config::{ChannelRequest, RuleRequest, new_channel, new_rule};
use rampart_web::auth::SealingKey;
use serde_json::json;

use crate::cli::{AlertChannelCommand, AlertCommand, AlertRuleCommand, GlobalArgs};
use crate::config::Config;
use crate::output::{self, say, when};
use crate::platform::{Platform, cli_actor};

/// Metric names read to check a threshold rule's metric.
const KNOWN_METRICS: u32 = 1_000;

/// Runs an alert command.
pub async fn run(g: &GlobalArgs, config: Config, cmd: AlertCommand) -> Result<ExitCode> {
    let p = Platform::open(&g.data_dir, config).await?;
    match cmd {
        AlertCommand::Channel(c) => channel(g, &p, c).await,
        AlertCommand::Rule(r) => rule(g, &p, r).await,
        AlertCommand::List { all, limit } => list(g, &p, all, limit).await,
        AlertCommand::Ack { id } => {
            let a = p.store.acknowledge_alert(id, &cli_actor()).await?;
            if g.json {
                output::json(&a)?;
            } else {
                say!("acknowledged alert {} ({} on {})", a.id, a.rule, a.subject);
            }
            Ok(ExitCode::SUCCESS)
        }
        AlertCommand::DeadLetters { limit } => {
            let dead = p.store.dead_deliveries(limit).await?;
            if g.json {
                output::json(&dead)?;
            } else if dead.is_empty() {
                say!("no dead letters");
            } else {
                say!(
                    "{:<6} {:<6} {:<9} {:<24} {:>8}  LAST ERROR",
                    "ID",
                    "ALERT",
                    "CHANGE",
                    "SUBJECT",
                    "ATTEMPTS"
                );
                for d in &dead {
                    say!(
                        "{:<6} {:<6} {:<9} {:<24} {:>8}  {}",
                        d.id,
                        d.alert_id,
                        if d.firing { "firing" } else { "resolved" },
                        d.subject,
                        d.attempts,
                        d.last_error.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AlertCommand::Retry { id } => {
            let d = p.store.retry_delivery(id, &cli_actor()).await?;
            if g.json {
                output::json(&d)?;
            } else {
                say!("delivery {} queued again", d.id);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn channel(g: &GlobalArgs, p: &Platform, cmd: AlertChannelCommand) -> Result<ExitCode> {
    match cmd {
        AlertChannelCommand::Add {
            name,
            kind,
            url,
            danger_allow_private,
            secret_env,
            per_minute,
        } => {
            let secret = secret_env
                .map(|var| {
                    std::env::var(&var)
                        .with_context(|| format!("the signing secret variable {var} is not set"))
                })
                .transpose()?;
            let key = SealingKey::new(p.dir.console_key()?);
            let new = new_channel(
                &key,
                &ChannelRequest {
                    name,
                    kind,
                    url,
                    allow_private: danger_allow_private,
                    secret,
                    per_minute,
                },
            )?;
            if danger_allow_private {
                tracing::warn!(channel = %new.name, target = %new.target, "DANGER: this channel may reach private and loopback addresses over plain http");
            }
            let c = p.store.add_alert_channel(new, &cli_actor()).await?;
            if g.json {
                output::json(&c)?;
            } else {
                say!("added channel {} ({}, {})", c.name, c.kind, c.target);
            }
        }
        AlertChannelCommand::Remove { name } => {
            let c = p.store.remove_alert_channel(&name, &cli_actor()).await?;
            if g.json {
                output::json(&c)?;
            } else {
                say!("removed channel {}", c.name);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn rule(g: &GlobalArgs, p: &Platform, cmd: AlertRuleCommand) -> Result<ExitCode> {
    match cmd {
        AlertRuleCommand::Add {
            name,
            expr,
            channel,
            device,
            owner,
            new_metric,
        } => {
            if let Some(id) = &device {
                let id = rampart_proto::DeviceId::parse(id)
                    .with_context(|| format!("'{id}' is not a device id"))?;
                if rampart_store::Store::device(&p.store, &id).await?.is_none() {
                    anyhow::bail!("no device with id '{id}'");
                }
            }
            let known = p.store.metric_names(KNOWN_METRICS).await?;
            let new = new_rule(
                &RuleRequest {
                    name,
                    expr,
                    channel,
                    device,
                    owner,
                    new_metric,
                },
                &known,
            )?;
            let r = p.store.add_alert_rule(new, &cli_actor()).await?;
            if g.json {
                output::json(&r)?;
            } else {
                say!("added rule {}: {} → {}", r.name, r.expr, r.channel);
            }
        }
        AlertRuleCommand::Remove { name } => {
            let r = p.store.remove_alert_rule(&name, &cli_actor()).await?;
            if g.json {
                output::json(&r)?;
            } else {
                say!("removed rule {}", r.name);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn scope_text(s: &RuleScope) -> String {
    match s {
        RuleScope::Fleet => "fleet".into(),
        RuleScope::Owner(o) => format!("owner {o}"),
        RuleScope::Device(d) => format!("device {d}"),
    }
}

async fn list(g: &GlobalArgs, p: &Platform, all: bool, limit: u32) -> Result<ExitCode> {
    let channels = p.store.alert_channels().await?;
    let rules = p.store.alert_rules().await?;
    let alerts = p
        .store
        .alerts(&AlertQuery {
            state: (!all).then_some(AlertState::Firing),
            subject: None,
            before: None,
            limit,
        })
        .await?;
    if g.json {
        output::json(&json!({ "channels": channels, "rules": rules, "alerts": alerts }))?;
        return Ok(ExitCode::SUCCESS);
    }
    say!("CHANNELS");
    for c in &channels {
        let danger = if c.allow_private {
            " DANGER:private"
        } else {
            ""
        };
        let signed = if c.signed { " signed" } else { "" };
        say!(
            "  {:<20} {:<8} {}  {}/min{signed}{danger}",
            c.name,
            c.kind,
            c.target,
            c.per_minute
        );
    }
    say!("RULES");
    for r in &rules {
        say!(
            "  {:<20} {:<36} {:<20} → {}",
            r.name,
            r.expr,
            scope_text(&r.scope),
            r.channel
        );
    }
    say!("{}", if all { "ALERTS" } else { "FIRING ALERTS" });
    for a in &alerts {
        let acked = a
            .acked_by
            .as_ref()
            .map(|by| format!(" (acknowledged by {by})"))
            .unwrap_or_default();
        say!(
            "  #{:<5} {:<9} {:<20} {:<24} since {}{acked}",
            a.id,
            a.state.as_str(),
            a.rule,
            a.subject,
            when(a.fired_at)
        );
    }
    Ok(ExitCode::SUCCESS)
}

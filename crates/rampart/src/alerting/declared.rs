//! Channels and rules declared in the configuration file
//! (`[[alerts.channels]]`, `[[alerts.rules]]`), brought into the store when
//! `serve` starts, with the same checks as the CLI and the API.
//!
//! A declared channel is created when missing; one that exists is left as
//! it is (its URL is sealed: to change it, remove the channel and restart).
//! A declared rule is created when missing and replaced when its
//! expression, scope or channel differ. Nothing declared is ever removed
//! by a later start without it: the file adds, it does not own the table.
//! Every change is audited with the actor `config`.

use rampart_store::{Actor, AlertStore, AnyStore, TelemetryStore};
use rampart_web::alert_config::{ChannelRequest, RuleRequest, new_channel, new_rule};
use rampart_web::auth::SealingKey;

use crate::config::AlertsConfig;

fn actor() -> Actor {
    Actor {
        name: "config".into(),
        source: "rampart.toml".into(),
    }
}

/// Applies the declarations; a declaration that cannot be applied is
/// refused with its reason (the start fails: the operator asked for it).
pub async fn apply(
    store: &AnyStore,
    key: &SealingKey,
    config: &AlertsConfig,
) -> anyhow::Result<()> {
    if config.channels.is_empty() && config.rules.is_empty() {
        return Ok(());
    }
    let existing = store.alert_channels().await?;
    for c in &config.channels {
        if existing.iter().any(|e| e.name == c.name) {
            continue;
        }
        let url = std::env::var(&c.url_env).map_err(|_| {
            anyhow::anyhow!(
                "alert channel '{}': the environment variable {} (url_env) is not set",
                c.name,
                c.url_env
            )
        })?;
        let secret = c
            .secret_env
            .as_ref()
            .map(|var| {
                std::env::var(var).map_err(|_| {
                    anyhow::anyhow!(
                        "alert channel '{}': the environment variable {var} (secret_env) is not set",
                        c.name
                    )
                })
            })
            .transpose()?;
        let new = new_channel(
            key,
            &ChannelRequest {
                name: c.name.clone(),
                kind: c.kind.clone(),
                url,
                allow_private: c.danger_allow_private,
                secret,
                per_minute: c.per_minute,
            },
        )
        .map_err(|e| anyhow::anyhow!("alert channel '{}': {e}", c.name))?;
        let added = store.add_alert_channel(new, &actor()).await?;
        tracing::info!(channel = %added.name, target = %added.target, "alert channel created from the configuration");
    }
    let rules = store.alert_rules().await?;
    let known = store.metric_names(1_000).await?;
    for r in &config.rules {
        let wanted = new_rule(
            &RuleRequest {
                name: r.name.clone(),
                expr: r.expr.clone(),
                channel: r.channel.clone(),
                device: r.device.clone(),
                owner: r.owner.clone(),
                new_metric: r.new_metric,
            },
            &known,
        )
        .map_err(|e| anyhow::anyhow!("alert rule '{}': {e}", r.name))?;
        if let Some(current) = rules.iter().find(|x| x.name == r.name) {
            if current.expr == wanted.expr
                && current.scope == wanted.scope
                && current.channel == wanted.channel
            {
                continue;
            }
            store.remove_alert_rule(&r.name, &actor()).await?;
            tracing::info!(rule = %r.name, "alert rule changed in the configuration: replacing it");
        }
        let added = store.add_alert_rule(wanted, &actor()).await?;
        tracing::info!(rule = %added.name, expr = %added.expr, "alert rule created from the configuration");
    }
    Ok(())
}

//! OTA campaigns and their per-device entries. Every move is a conditional
//! `UPDATE`, so replicas running the engine against one database never
//! move a row twice (READ COMMITTED re-checks the condition on the row it
//! waited for).

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use rampart_ota::campaign::{EntryState, assign_waves, timeout_reason};
use rampart_proto::DeviceId;
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::ledger::{self, Ledger};
use super::{PostgresStore, audit, changes, db, get};
use crate::ChangeKind;
use crate::campaigns::{
    BusyDevice, CAMPAIGN_COLUMNS, Campaign, CampaignChange, CampaignEntry, CampaignRow,
    CampaignStatus, CampaignStore, CampaignTarget, Candidate, ENTRY_COLUMNS, EntryMove, EntryPage,
    EntryQuery, EntryRow, NewCampaign, WaveProgress, change_audit, created_audit, ms,
    open_states_sql, resolve, states_sql, statuses_sql, wave_audit, waves_from_rows,
};
use crate::millis::{now_ms, to_ms};
use crate::{Actor, AuditRecord, Result, StoreError};

fn campaign_row(r: &Row) -> Result<Campaign> {
    CampaignRow {
        id: get(r, 0)?,
        name: get(r, 1)?,
        firmware_id: get(r, 2)?,
        device_type: get(r, 3)?,
        version: get(r, 4)?,
        target: get(r, 5)?,
        waves: get(r, 6)?,
        soak_ms: get(r, 7)?,
        success_threshold: get(r, 8)?,
        failure_threshold: get(r, 9)?,
        timeouts_ms: [
            get(r, 10)?,
            get(r, 11)?,
            get(r, 12)?,
            get(r, 13)?,
            get(r, 14)?,
        ],
        status: get(r, 15)?,
        status_reason: get(r, 16)?,
        current_wave: get(r, 17)?,
        reviewed_wave: get(r, 18)?,
        devices: get(r, 19)?,
        created_at: get(r, 20)?,
        created_by: get(r, 21)?,
        updated_at: get(r, 22)?,
    }
    .into_campaign()
}

fn entry_row(r: &Row) -> Result<CampaignEntry> {
    EntryRow {
        campaign_id: get(r, 0)?,
        device_id: get(r, 1)?,
        wave: get(r, 2)?,
        position: get(r, 3)?,
        state: get(r, 4)?,
        reason: get(r, 5)?,
        bytes: get(r, 6)?,
        total: get(r, 7)?,
        deadline: get(r, 8)?,
        offered_at: get(r, 9)?,
        cancel_pending: get(r, 10)?,
        updated_at: get(r, 11)?,
    }
    .into_entry()
}

fn id_param(id: u64) -> Result<i64> {
    i64::try_from(id).map_err(|_| StoreError::CampaignNotFound(id))
}

async fn campaign_by_id(c: &impl GenericClient, id: i64) -> Result<Option<Campaign>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1"
        ))
        .await
        .map_err(db)?;
    match c.query_opt(&stmt, &[&id]).await.map_err(db)? {
        Some(r) => campaign_row(&r).map(Some),
        None => Ok(None),
    }
}

async fn entries(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<CampaignEntry>> {
    let stmt = c.prepare_cached(sql).await.map_err(db)?;
    c.query(&stmt, params)
        .await
        .map_err(db)?
        .iter()
        .map(entry_row)
        .collect()
}

async fn entry(
    c: &impl GenericClient,
    campaign: i64,
    device: &str,
) -> Result<Option<CampaignEntry>> {
    Ok(entries(
        c,
        &format!(
            "SELECT {ENTRY_COLUMNS} FROM campaign_devices WHERE campaign_id = $1 AND device_id = $2"
        ),
        &[&campaign, &device],
    )
    .await?
    .into_iter()
    .next())
}

async fn candidates(c: &impl GenericClient, target: &CampaignTarget) -> Result<Vec<Candidate>> {
    let rows = c
        .query(
            "SELECT d.id, d.state, s.reported FROM devices d
             LEFT JOIN device_state s ON s.device_id = d.id ORDER BY d.id",
            &[],
        )
        .await
        .map_err(db)?;
    let mut all = Vec::with_capacity(rows.len());
    for r in &rows {
        all.push(Candidate {
            id: get(r, 0)?,
            state: get(r, 1)?,
            reported: get(r, 2)?,
        });
    }
    Ok(match target {
        CampaignTarget::Devices(list) => all
            .into_iter()
            .filter(|c| list.iter().any(|d| d.as_str() == c.id))
            .collect(),
        _ => all,
    })
}

async fn busy(c: &impl GenericClient, devices: &[String]) -> Result<Vec<BusyDevice>> {
    let rows = c
        .query(
            &format!(
                "SELECT device_id, campaign_id FROM campaign_devices
                 WHERE state IN ({}) AND device_id = ANY($1) ORDER BY device_id, campaign_id",
                open_states_sql()
            ),
            &[&devices],
        )
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            let campaign: i64 = get(r, 1)?;
            Ok(BusyDevice {
                device_id: get(r, 0)?,
                campaign_id: u64::try_from(campaign).unwrap_or_default(),
            })
        })
        .collect()
}

async fn create(
    ledger: &Ledger<'_, '_>,
    key: &crate::AuditKey,
    c: &NewCampaign,
    actor: &Actor,
) -> Result<(Campaign, AuditRecord)> {
    let tx = ledger.tx();
    c.check()?;
    let fid =
        i64::try_from(c.firmware_id).map_err(|_| StoreError::FirmwareNotFound(c.firmware_id))?;
    let fw = tx
        .query_opt(
            "SELECT device_type, version FROM firmware WHERE id = $1",
            &[&fid],
        )
        .await
        .map_err(db)?
        .ok_or(StoreError::FirmwareNotFound(c.firmware_id))?;
    let (device_type, version): (String, String) = (get(&fw, 0)?, get(&fw, 1)?);
    let resolved = resolve(
        candidates(tx, &c.target).await?,
        &c.target,
        &device_type,
        &version,
    )?;
    let busy = busy(tx, &resolved.devices).await?;
    if !busy.is_empty() {
        return Err(StoreError::DeviceBusy(busy));
    }
    let (_, now) = now_ms();
    let status = if c.approve {
        CampaignStatus::Running
    } else {
        CampaignStatus::Draft
    };
    let target = serde_json::to_string(&c.target)
        .map_err(|e| StoreError::InvalidCampaign(format!("target: {e}")))?;
    let t = &c.timeouts;
    let devices = i64::try_from(resolved.devices.len()).unwrap_or(i64::MAX);
    let row = tx
        .query_one(
            "INSERT INTO campaigns (name, firmware_id, device_type, version, target, waves,
                 soak_ms, success_threshold, failure_threshold, offered_timeout_ms,
                 downloading_timeout_ms, verifying_timeout_ms, pending_reboot_timeout_ms,
                 pending_confirm_timeout_ms, status, devices, created_at, created_by, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                 $18, $17) RETURNING id",
            &[
                &c.name,
                &fid,
                &device_type,
                &version,
                &target,
                &c.waves.to_string(),
                &ms(c.soak)?,
                &c.success_threshold,
                &c.failure_threshold,
                &ms(t.offered)?,
                &ms(t.downloading)?,
                &ms(t.verifying)?,
                &ms(t.pending_reboot)?,
                &ms(t.pending_confirm)?,
                &status.as_str(),
                &devices,
                &now,
                &actor.name,
            ],
        )
        .await
        .map_err(db)?;
    let id: i64 = get(&row, 0)?;
    let cid = u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("campaign id {id}")))?;
    let slots = assign_waves(cid, &resolved.devices, &c.waves);
    let ids: Vec<&str> = slots.iter().map(|s| s.device.as_str()).collect();
    let waves: Vec<i64> = slots.iter().map(|s| i64::from(s.wave)).collect();
    let positions: Vec<i64> = slots.iter().map(|s| i64::from(s.position)).collect();
    tx.execute(
        "INSERT INTO campaign_devices (campaign_id, device_id, wave, position, state, updated_at)
         SELECT $1, d, w, p, 'queued', $5
         FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS u(d, w, p)",
        &[&id, &ids, &waves, &positions, &now],
    )
    .await
    .map_err(db)?;
    let stored = campaign_by_id(tx, id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("campaign {id} vanished")))?;
    let rec = audit::append(ledger, key, &created_audit(&stored, &resolved, actor)).await?;
    Ok((stored, rec))
}

async fn change(
    ledger: &Ledger<'_, '_>,
    key: &crate::AuditKey,
    id: u64,
    change: CampaignChange,
    actor: &Actor,
) -> Result<(Campaign, AuditRecord)> {
    let tx = ledger.tx();
    let cid = id_param(id)?;
    // The row lock makes a concurrent change wait and then see ours.
    tx.execute("SELECT 1 FROM campaigns WHERE id = $1 FOR UPDATE", &[&cid])
        .await
        .map_err(db)?;
    let current = campaign_by_id(tx, cid)
        .await?
        .ok_or(StoreError::CampaignNotFound(id))?;
    if !change.from_statuses().contains(&current.status) {
        return Err(change.refusal(id, current.status));
    }
    let (_, now) = now_ms();
    if change == CampaignChange::Complete {
        let row = tx
            .query_one(
                &format!(
                    "SELECT count(*) FROM campaign_devices WHERE campaign_id = $1 AND state IN ({})",
                    open_states_sql()
                ),
                &[&cid],
            )
            .await
            .map_err(db)?;
        let open: i64 = get(&row, 0)?;
        if open > 0 {
            return Err(StoreError::CampaignStatus {
                id,
                status: current.status.as_str().to_owned(),
                why: format!("{open} device(s) are still updating or queued"),
            });
        }
    }
    let reviewed = if change == CampaignChange::Resume
        && current.status_reason.as_deref() == Some("success-threshold")
    {
        current.current_wave
    } else {
        current.reviewed_wave
    };
    tx.execute(
        "UPDATE campaigns SET status = $2, status_reason = $3, reviewed_wave = $4, updated_at = $5
         WHERE id = $1 AND status = $6",
        &[
            &cid,
            &change.to_status().as_str(),
            &change.reason(),
            &i64::from(reviewed),
            &now,
            &current.status.as_str(),
        ],
    )
    .await
    .map_err(db)?;
    changes::append(ledger, ChangeKind::CampaignChanged, &id.to_string(), now).await?;
    let mut affected = 0u64;
    match change {
        CampaignChange::Cancel => {
            affected += tx
                .execute(
                    &format!(
                        "UPDATE campaign_devices SET state = 'cancelled',
                             reason = 'campaign-cancelled', deadline = NULL,
                             cancel_pending = TRUE, updated_at = $2
                         WHERE campaign_id = $1 AND state IN ({})",
                        states_sql([
                            EntryState::Offered,
                            EntryState::Downloading,
                            EntryState::Verifying
                        ])
                    ),
                    &[&cid, &now],
                )
                .await
                .map_err(db)?;
            affected += cancel_queued(tx, cid, "campaign-cancelled", now).await?;
        }
        CampaignChange::Abort { .. } => {
            affected += cancel_queued(tx, cid, "campaign-aborted", now).await?;
        }
        _ => {}
    }
    let stored = campaign_by_id(tx, cid)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("campaign {id} vanished")))?;
    let entry = change_audit(id, change, current.status, affected, actor);
    let rec = audit::append(ledger, key, &entry).await?;
    Ok((stored, rec))
}

async fn cancel_queued(tx: &impl GenericClient, cid: i64, reason: &str, now: i64) -> Result<u64> {
    tx.execute(
        "UPDATE campaign_devices SET state = 'cancelled', reason = $2, updated_at = $3
         WHERE campaign_id = $1 AND state = 'queued'",
        &[&cid, &reason, &now],
    )
    .await
    .map_err(db)
}

async fn start(
    ledger: &Ledger<'_, '_>,
    key: &crate::AuditKey,
    id: u64,
    wave: u32,
    actor: &Actor,
) -> Result<Option<(Vec<CampaignEntry>, AuditRecord)>> {
    let tx = ledger.tx();
    let cid = id_param(id)?;
    let c = campaign_by_id(tx, cid)
        .await?
        .ok_or(StoreError::CampaignNotFound(id))?;
    let (_, now) = now_ms();
    let w = i64::from(wave);
    let moved = tx
        .execute(
            "UPDATE campaigns SET current_wave = $2, updated_at = $3
             WHERE id = $1 AND status = 'running' AND current_wave < $2",
            &[&cid, &w, &now],
        )
        .await
        .map_err(db)?;
    if moved == 0 {
        return Ok(None);
    }
    let deadline = c.timeouts.deadline_ms(EntryState::Offered, now);
    let offered = entries(
        tx,
        &format!(
            "UPDATE campaign_devices SET state = 'offered', offered_at = $3, deadline = $4,
                 updated_at = $3
             WHERE campaign_id = $1 AND wave = $2 AND state = 'queued'
             RETURNING {ENTRY_COLUMNS}"
        ),
        &[&cid, &w, &now, &deadline],
    )
    .await?;
    let mut offered = offered;
    offered.sort_by_key(|e| e.position);
    let rec = audit::append(ledger, key, &wave_audit(id, wave, offered.len(), actor)).await?;
    Ok(Some((offered, rec)))
}

async fn move_one(tx: &impl GenericClient, m: &EntryMove) -> Result<Option<CampaignEntry>> {
    let cid = id_param(m.campaign_id)?;
    let Some(c) = campaign_by_id(tx, cid).await? else {
        return Ok(None);
    };
    let Some(current) = entry(tx, cid, m.device_id.as_str()).await? else {
        return Ok(None);
    };
    let (_, now) = now_ms();
    let bytes = m.bytes.and_then(|b| i64::try_from(b).ok());
    let total = m.total.and_then(|b| i64::try_from(b).ok());
    let device = m.device_id.as_str();
    if current.state == EntryState::Downloading && m.to == EntryState::Downloading {
        return Ok(entries(
            tx,
            &format!(
                "UPDATE campaign_devices SET bytes = coalesce($3, bytes),
                     total = coalesce($4, total), updated_at = $5
                 WHERE campaign_id = $1 AND device_id = $2 AND state = 'downloading'
                 RETURNING {ENTRY_COLUMNS}"
            ),
            &[&cid, &device, &bytes, &total, &now],
        )
        .await?
        .into_iter()
        .next());
    }
    let sources = EntryState::sources(m.to);
    if !sources.contains(&current.state) {
        return Ok(None);
    }
    let deadline = c.timeouts.deadline_ms(m.to, now);
    Ok(entries(
        tx,
        &format!(
            "UPDATE campaign_devices SET state = $3, reason = $4, deadline = $5,
                 bytes = coalesce($6, bytes), total = coalesce($7, total), updated_at = $8
             WHERE campaign_id = $1 AND device_id = $2 AND state IN ({})
             RETURNING {ENTRY_COLUMNS}",
            states_sql(sources)
        ),
        &[
            &cid,
            &device,
            &m.to.as_str(),
            &m.reason,
            &deadline,
            &bytes,
            &total,
            &now,
        ],
    )
    .await?
    .into_iter()
    .next())
}

async fn expire(tx: &impl GenericClient, now: i64, limit: u32) -> Result<Vec<CampaignEntry>> {
    let due = entries(
        tx,
        &format!(
            "SELECT {ENTRY_COLUMNS} FROM campaign_devices
             WHERE deadline IS NOT NULL AND deadline <= $1 AND state IN ({})
             ORDER BY deadline LIMIT $2",
            open_states_sql()
        ),
        &[&now, &i64::from(limit)],
    )
    .await?;
    let mut out = Vec::with_capacity(due.len());
    for e in due {
        let cid = id_param(e.campaign_id)?;
        let moved = entries(
            tx,
            &format!(
                "UPDATE campaign_devices SET state = 'failed', reason = $4, deadline = NULL,
                     updated_at = $5
                 WHERE campaign_id = $1 AND device_id = $2 AND state = $3 AND deadline <= $5
                 RETURNING {ENTRY_COLUMNS}"
            ),
            &[
                &cid,
                &e.device_id.as_str(),
                &e.state.as_str(),
                &timeout_reason(e.state),
                &now,
            ],
        )
        .await?;
        out.extend(moved);
    }
    Ok(out)
}

#[async_trait]
impl CampaignStore for PostgresStore {
    async fn create_campaign(&self, campaign: NewCampaign, actor: &Actor) -> Result<Campaign> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            // The append lock also serialises creations, so two cannot both
            // find a device free and take it.
            let ledger = ledger::lock(&tx).await?;
            let out = create(&ledger, &self.inner.audit_key, &campaign, actor).await?;
            tx.commit().await.map_err(db)?;
            Ok(out)
        })
        .await
    }

    async fn campaign(&self, id: u64) -> Result<Option<Campaign>> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.retrying(|| async {
            let client = self.client().await?;
            campaign_by_id(&client, id).await
        })
        .await
    }

    async fn list_campaigns(&self, statuses: &[CampaignStatus]) -> Result<Vec<Campaign>> {
        let filter = if statuses.is_empty() {
            String::new()
        } else {
            format!("WHERE status IN ({})", statuses_sql(statuses))
        };
        self.retrying(|| async {
            let client = self.client().await?;
            client
                .query(
                    &format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns {filter} ORDER BY id DESC"),
                    &[],
                )
                .await
                .map_err(db)?
                .iter()
                .map(campaign_row)
                .collect()
        })
        .await
    }

    async fn campaign_entries(&self, id: u64, query: &EntryQuery) -> Result<EntryPage> {
        let cid = id_param(id)?;
        let state = query.state.map(EntryState::as_str);
        let wave = query.wave.map(i64::from);
        let (limit, offset) = (i64::from(query.page_size()), i64::from(query.offset));
        self.retrying(|| async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await
                .map_err(db)?;
            if campaign_by_id(&tx, cid).await?.is_none() {
                return Err(StoreError::CampaignNotFound(id));
            }
            let filter = "WHERE campaign_id = $1 AND ($2::text IS NULL OR state = $2::text)
                 AND ($3::bigint IS NULL OR wave = $3::bigint)";
            let row = tx
                .query_one(
                    &format!("SELECT count(*) FROM campaign_devices {filter}"),
                    &[&cid, &state, &wave],
                )
                .await
                .map_err(db)?;
            let total: i64 = get(&row, 0)?;
            let page = entries(
                &tx,
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM campaign_devices {filter}
                     ORDER BY wave, position LIMIT $4 OFFSET $5"
                ),
                &[&cid, &state, &wave, &limit, &offset],
            )
            .await?;
            tx.commit().await.map_err(db)?;
            Ok(EntryPage {
                entries: page,
                total: u64::try_from(total).unwrap_or_default(),
            })
        })
        .await
    }

    async fn campaign_waves(&self, id: u64) -> Result<Vec<WaveProgress>> {
        let cid = id_param(id)?;
        self.retrying(|| async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(db)?;
            tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await
                .map_err(db)?;
            let c = campaign_by_id(&tx, cid)
                .await?
                .ok_or(StoreError::CampaignNotFound(id))?;
            let rows = tx
                .query(
                    "SELECT wave, state, count(*), count(offered_at), max(updated_at)
                     FROM campaign_devices WHERE campaign_id = $1 GROUP BY wave, state",
                    &[&cid],
                )
                .await
                .map_err(db)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push((get(r, 0)?, get(r, 1)?, get(r, 2)?, get(r, 3)?, get(r, 4)?));
            }
            tx.commit().await.map_err(db)?;
            waves_from_rows(c.waves.len(), out)
        })
        .await
    }

    async fn change_campaign(
        &self,
        id: u64,
        change: CampaignChange,
        actor: &Actor,
    ) -> Result<Campaign> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let out = self::change(&ledger, &self.inner.audit_key, id, change, actor).await?;
            tx.commit().await.map_err(db)?;
            Ok(out)
        })
        .await
    }

    async fn start_wave(
        &self,
        id: u64,
        wave: u32,
        actor: &Actor,
    ) -> Result<Option<Vec<CampaignEntry>>> {
        let out = self
            .retrying(|| async {
                let mut client = self.client().await?;
                let tx = self.begin(&mut client).await?;
                let ledger = ledger::lock(&tx).await?;
                let out = start(&ledger, &self.inner.audit_key, id, wave, actor).await?;
                tx.commit().await.map_err(db)?;
                Ok(out)
            })
            .await?;
        Ok(out.map(|(entries, rec)| {
            self.advance_head(&rec);
            entries
        }))
    }

    async fn move_entry(&self, m: EntryMove) -> Result<Option<CampaignEntry>> {
        self.retrying(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let out = move_one(&tx, &m).await?;
            tx.commit().await.map_err(db)?;
            Ok(out)
        })
        .await
    }

    async fn expire_entries(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<CampaignEntry>> {
        let now = to_ms(now);
        self.retrying(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let out = expire(&tx, now, limit).await?;
            tx.commit().await.map_err(db)?;
            Ok(out)
        })
        .await
    }

    async fn active_entry(
        &self,
        device: &DeviceId,
        version: &str,
    ) -> Result<Option<CampaignEntry>> {
        let device = device.as_str();
        self.retrying(|| async {
            let client = self.client().await?;
            Ok(entries(
                &client,
                &format!(
                    "SELECT {} FROM campaign_devices e JOIN campaigns c ON c.id = e.campaign_id
                     WHERE e.device_id = $1 AND c.version = $2 AND e.offered_at IS NOT NULL
                       AND e.state IN ({})
                     ORDER BY e.campaign_id DESC LIMIT 1",
                    prefixed_entry_columns(),
                    open_states_sql()
                ),
                &[&device, &version],
            )
            .await?
            .into_iter()
            .next())
        })
        .await
    }

    async fn open_entries_of(&self, device: &DeviceId) -> Result<Vec<CampaignEntry>> {
        let device = device.as_str();
        self.retrying(|| async {
            let client = self.client().await?;
            entries(
                &client,
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM campaign_devices
                     WHERE device_id = $1 AND offered_at IS NOT NULL AND state IN ({})
                     ORDER BY campaign_id DESC",
                    open_states_sql()
                ),
                &[&device],
            )
            .await
        })
        .await
    }

    async fn pending_cancels(&self, limit: u32) -> Result<Vec<CampaignEntry>> {
        let limit = i64::from(limit);
        self.retrying(|| async {
            let client = self.client().await?;
            entries(
                &client,
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM campaign_devices WHERE cancel_pending
                     ORDER BY campaign_id, position LIMIT $1"
                ),
                &[&limit],
            )
            .await
        })
        .await
    }

    async fn cancel_sent(&self, campaign_id: u64, device: &DeviceId) -> Result<bool> {
        let cid = id_param(campaign_id)?;
        let device = device.as_str();
        self.retrying(|| async {
            let client = self.client().await?;
            let n = client
                .execute(
                    "UPDATE campaign_devices SET cancel_pending = FALSE
                     WHERE campaign_id = $1 AND device_id = $2 AND cancel_pending",
                    &[&cid, &device],
                )
                .await
                .map_err(db)?;
            Ok(n > 0)
        })
        .await
    }
}

/// [`ENTRY_COLUMNS`] qualified with the `e.` alias.
fn prefixed_entry_columns() -> String {
    ENTRY_COLUMNS
        .split(", ")
        .map(|c| format!("e.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

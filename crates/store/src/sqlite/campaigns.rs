//! OTA campaigns and their per-device entries.

use async_trait::async_trait;
use rampart_ota::campaign::{EntryState, assign_waves, timeout_reason};
use rampart_proto::DeviceId;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use time::OffsetDateTime;

use super::{SqliteStore, audit, changes, db};
use crate::ChangeKind;
use crate::campaigns::{
    BusyDevice, CAMPAIGN_COLUMNS, Campaign, CampaignChange, CampaignEntry, CampaignRow,
    CampaignStatus, CampaignStore, CampaignTarget, Candidate, ENTRY_COLUMNS, EntryMove, EntryPage,
    EntryQuery, EntryRow, NewCampaign, WaveProgress, change_audit, created_audit, ms,
    open_states_sql, resolve, states_sql, statuses_sql, wave_audit, waves_from_rows,
};
use crate::millis::{now_ms, to_ms};
use crate::{Actor, Result, StoreError};

fn campaign_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CampaignRow> {
    Ok(CampaignRow {
        id: r.get(0)?,
        name: r.get(1)?,
        firmware_id: r.get(2)?,
        device_type: r.get(3)?,
        version: r.get(4)?,
        target: r.get(5)?,
        waves: r.get(6)?,
        soak_ms: r.get(7)?,
        success_threshold: r.get(8)?,
        failure_threshold: r.get(9)?,
        timeouts_ms: [r.get(10)?, r.get(11)?, r.get(12)?, r.get(13)?, r.get(14)?],
        status: r.get(15)?,
        status_reason: r.get(16)?,
        current_wave: r.get(17)?,
        reviewed_wave: r.get(18)?,
        devices: r.get(19)?,
        created_at: r.get(20)?,
        created_by: r.get(21)?,
        updated_at: r.get(22)?,
    })
}

fn entry_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EntryRow> {
    Ok(EntryRow {
        campaign_id: r.get(0)?,
        device_id: r.get(1)?,
        wave: r.get(2)?,
        position: r.get(3)?,
        state: r.get(4)?,
        reason: r.get(5)?,
        bytes: r.get(6)?,
        total: r.get(7)?,
        deadline: r.get(8)?,
        offered_at: r.get(9)?,
        cancel_pending: r.get(10)?,
        updated_at: r.get(11)?,
    })
}

fn id_param(id: u64) -> Result<i64> {
    i64::try_from(id).map_err(|_| StoreError::CampaignNotFound(id))
}

fn campaign_by_id(conn: &Connection, id: i64) -> Result<Option<Campaign>> {
    conn.prepare_cached(&format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = ?1"
    ))
    .map_err(db)?
    .query_row(params![id], campaign_row)
    .optional()
    .map_err(db)?
    .map(CampaignRow::into_campaign)
    .transpose()
}

fn entries(conn: &Connection, sql: &str, p: &[&dyn rusqlite::ToSql]) -> Result<Vec<CampaignEntry>> {
    let mut stmt = conn.prepare_cached(sql).map_err(db)?;
    let rows = stmt.query_map(p, entry_row).map_err(db)?;
    rows.map(|r| r.map_err(db).and_then(EntryRow::into_entry))
        .collect()
}

fn entry(conn: &Connection, campaign: i64, device: &str) -> Result<Option<CampaignEntry>> {
    Ok(entries(
        conn,
        &format!(
            "SELECT {ENTRY_COLUMNS} FROM campaign_devices WHERE campaign_id = ?1 AND device_id = ?2"
        ),
        &[&campaign, &device],
    )?
    .into_iter()
    .next())
}

fn candidates(tx: &Transaction<'_>, target: &CampaignTarget) -> Result<Vec<Candidate>> {
    let mut stmt = tx
        .prepare_cached(
            "SELECT d.id, d.state, s.reported FROM devices d
             LEFT JOIN device_state s ON s.device_id = d.id ORDER BY d.id",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map([], |r| {
            Ok(Candidate {
                id: r.get(0)?,
                state: r.get(1)?,
                reported: r.get(2)?,
            })
        })
        .map_err(db)?;
    let all = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)?;
    Ok(match target {
        CampaignTarget::Devices(list) => all
            .into_iter()
            .filter(|c| list.iter().any(|d| d.as_str() == c.id))
            .collect(),
        _ => all,
    })
}

fn busy(tx: &Transaction<'_>, devices: &[String]) -> Result<Vec<BusyDevice>> {
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT device_id, campaign_id FROM campaign_devices
             WHERE state IN ({}) ORDER BY device_id, campaign_id",
            open_states_sql()
        ))
        .map_err(db)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(db)?;
    let wanted: std::collections::HashSet<&str> = devices.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for row in rows {
        let (device_id, campaign) = row.map_err(db)?;
        if wanted.contains(device_id.as_str()) {
            out.push(BusyDevice {
                device_id,
                campaign_id: u64::try_from(campaign).unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

fn create(
    tx: &Transaction<'_>,
    key: &crate::AuditKey,
    c: &NewCampaign,
    actor: &Actor,
) -> Result<(Campaign, crate::AuditRecord)> {
    c.check()?;
    let fid =
        i64::try_from(c.firmware_id).map_err(|_| StoreError::FirmwareNotFound(c.firmware_id))?;
    let (device_type, version): (String, String) = tx
        .query_row(
            "SELECT device_type, version FROM firmware WHERE id = ?1",
            params![fid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db)?
        .ok_or(StoreError::FirmwareNotFound(c.firmware_id))?;
    let resolved = resolve(
        candidates(tx, &c.target)?,
        &c.target,
        &device_type,
        &version,
    )?;
    let busy = busy(tx, &resolved.devices)?;
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
    tx.execute(
        "INSERT INTO campaigns (name, firmware_id, device_type, version, target, waves, soak_ms,
             success_threshold, failure_threshold, offered_timeout_ms, downloading_timeout_ms,
             verifying_timeout_ms, pending_reboot_timeout_ms, pending_confirm_timeout_ms,
             status, devices, created_at, created_by, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?17)",
        params![
            c.name,
            fid,
            device_type,
            version,
            target,
            c.waves.to_string(),
            ms(c.soak)?,
            c.success_threshold,
            c.failure_threshold,
            ms(t.offered)?,
            ms(t.downloading)?,
            ms(t.verifying)?,
            ms(t.pending_reboot)?,
            ms(t.pending_confirm)?,
            status.as_str(),
            i64::try_from(resolved.devices.len()).unwrap_or(i64::MAX),
            now,
            actor.name,
        ],
    )
    .map_err(db)?;
    let id = tx.last_insert_rowid();
    let cid = u64::try_from(id).map_err(|_| StoreError::Corrupt(format!("campaign id {id}")))?;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO campaign_devices (campaign_id, device_id, wave, position, state,
                     updated_at) VALUES (?1, ?2, ?3, ?4, 'queued', ?5)",
            )
            .map_err(db)?;
        for slot in assign_waves(cid, &resolved.devices, &c.waves) {
            insert
                .execute(params![id, slot.device, slot.wave, slot.position, now])
                .map_err(db)?;
        }
    }
    let stored = campaign_by_id(tx, id)?
        .ok_or_else(|| StoreError::Corrupt(format!("campaign {id} vanished")))?;
    let rec = audit::append(tx, key, &created_audit(&stored, &resolved, actor))?;
    Ok((stored, rec))
}

fn change(
    tx: &Transaction<'_>,
    key: &crate::AuditKey,
    id: u64,
    change: CampaignChange,
    actor: &Actor,
) -> Result<(Campaign, crate::AuditRecord)> {
    let cid = id_param(id)?;
    let current = campaign_by_id(tx, cid)?.ok_or(StoreError::CampaignNotFound(id))?;
    if !change.from_statuses().contains(&current.status) {
        return Err(change.refusal(id, current.status));
    }
    let (_, now) = now_ms();
    if change == CampaignChange::Complete {
        let open: i64 = tx
            .query_row(
                &format!(
                    "SELECT count(*) FROM campaign_devices WHERE campaign_id = ?1 AND state IN ({})",
                    open_states_sql()
                ),
                params![cid],
                |r| r.get(0),
            )
            .map_err(db)?;
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
        "UPDATE campaigns SET status = ?2, status_reason = ?3, reviewed_wave = ?4, updated_at = ?5
         WHERE id = ?1 AND status = ?6",
        params![
            cid,
            change.to_status().as_str(),
            change.reason(),
            reviewed,
            now,
            current.status.as_str()
        ],
    )
    .map_err(db)?;
    changes::append(tx, ChangeKind::CampaignChanged, &id.to_string(), now)?;
    let mut affected = 0usize;
    match change {
        CampaignChange::Cancel => {
            affected += tx
                .execute(
                    &format!(
                        "UPDATE campaign_devices SET state = 'cancelled', reason = 'campaign-cancelled',
                             deadline = NULL, cancel_pending = 1, updated_at = ?2
                         WHERE campaign_id = ?1 AND state IN ({})",
                        states_sql([
                            EntryState::Offered,
                            EntryState::Downloading,
                            EntryState::Verifying
                        ])
                    ),
                    params![cid, now],
                )
                .map_err(db)?;
            affected += cancel_queued(tx, cid, "campaign-cancelled", now)?;
        }
        CampaignChange::Abort { .. } => {
            affected += cancel_queued(tx, cid, "campaign-aborted", now)?;
        }
        _ => {}
    }
    let stored = campaign_by_id(tx, cid)?
        .ok_or_else(|| StoreError::Corrupt(format!("campaign {id} vanished")))?;
    let audit_entry = change_audit(id, change, current.status, affected as u64, actor);
    let rec = audit::append(tx, key, &audit_entry)?;
    Ok((stored, rec))
}

fn cancel_queued(tx: &Transaction<'_>, cid: i64, reason: &str, now: i64) -> Result<usize> {
    tx.execute(
        "UPDATE campaign_devices SET state = 'cancelled', reason = ?2, updated_at = ?3
         WHERE campaign_id = ?1 AND state = 'queued'",
        params![cid, reason, now],
    )
    .map_err(db)
}

fn start(
    tx: &Transaction<'_>,
    key: &crate::AuditKey,
    id: u64,
    wave: u32,
    actor: &Actor,
) -> Result<Option<(Vec<CampaignEntry>, crate::AuditRecord)>> {
    let cid = id_param(id)?;
    let Some(c) = campaign_by_id(tx, cid)? else {
        return Err(StoreError::CampaignNotFound(id));
    };
    let (_, now) = now_ms();
    let moved = tx
        .execute(
            "UPDATE campaigns SET current_wave = ?2, updated_at = ?3
             WHERE id = ?1 AND status = 'running' AND current_wave < ?2",
            params![cid, wave, now],
        )
        .map_err(db)?;
    if moved == 0 {
        return Ok(None);
    }
    let deadline = c.timeouts.deadline_ms(EntryState::Offered, now);
    tx.execute(
        "UPDATE campaign_devices SET state = 'offered', offered_at = ?3, deadline = ?4,
             updated_at = ?3
         WHERE campaign_id = ?1 AND wave = ?2 AND state = 'queued'",
        params![cid, wave, now, deadline],
    )
    .map_err(db)?;
    let offered = entries(
        tx,
        &format!(
            "SELECT {ENTRY_COLUMNS} FROM campaign_devices
             WHERE campaign_id = ?1 AND wave = ?2 AND state = 'offered' AND offered_at = ?3
             ORDER BY position"
        ),
        &[&cid, &wave, &now],
    )?;
    let rec = audit::append(tx, key, &wave_audit(id, wave, offered.len(), actor))?;
    Ok(Some((offered, rec)))
}

fn move_one(tx: &Transaction<'_>, m: &EntryMove) -> Result<Option<CampaignEntry>> {
    let cid = id_param(m.campaign_id)?;
    let Some(c) = campaign_by_id(tx, cid)? else {
        return Ok(None);
    };
    let Some(current) = entry(tx, cid, m.device_id.as_str())? else {
        return Ok(None);
    };
    let (_, now) = now_ms();
    let bytes = m.bytes.and_then(|b| i64::try_from(b).ok());
    let total = m.total.and_then(|b| i64::try_from(b).ok());
    if current.state == EntryState::Downloading && m.to == EntryState::Downloading {
        tx.execute(
            "UPDATE campaign_devices SET bytes = coalesce(?3, bytes), total = coalesce(?4, total),
                 updated_at = ?5
             WHERE campaign_id = ?1 AND device_id = ?2 AND state = 'downloading'",
            params![cid, m.device_id.as_str(), bytes, total, now],
        )
        .map_err(db)?;
        return entry(tx, cid, m.device_id.as_str());
    }
    let sources = EntryState::sources(m.to);
    if !sources.contains(&current.state) {
        return Ok(None);
    }
    let deadline = c.timeouts.deadline_ms(m.to, now);
    let n = tx
        .execute(
            &format!(
                "UPDATE campaign_devices SET state = ?3, reason = ?4, deadline = ?5,
                     bytes = coalesce(?6, bytes), total = coalesce(?7, total), updated_at = ?8
                 WHERE campaign_id = ?1 AND device_id = ?2 AND state IN ({})",
                states_sql(sources)
            ),
            params![
                cid,
                m.device_id.as_str(),
                m.to.as_str(),
                m.reason,
                deadline,
                bytes,
                total,
                now
            ],
        )
        .map_err(db)?;
    if n == 0 {
        return Ok(None);
    }
    entry(tx, cid, m.device_id.as_str())
}

fn expire(tx: &Transaction<'_>, now: i64, limit: u32) -> Result<Vec<CampaignEntry>> {
    let due = entries(
        tx,
        &format!(
            "SELECT {ENTRY_COLUMNS} FROM campaign_devices
             WHERE deadline IS NOT NULL AND deadline <= ?1 AND state IN ({})
             ORDER BY deadline LIMIT ?2",
            open_states_sql()
        ),
        &[&now, &limit],
    )?;
    let mut out = Vec::with_capacity(due.len());
    for e in due {
        let cid = id_param(e.campaign_id)?;
        let n = tx
            .execute(
                "UPDATE campaign_devices SET state = 'failed', reason = ?4, deadline = NULL,
                     updated_at = ?5
                 WHERE campaign_id = ?1 AND device_id = ?2 AND state = ?3 AND deadline <= ?5",
                params![
                    cid,
                    e.device_id.as_str(),
                    e.state.as_str(),
                    timeout_reason(e.state),
                    now
                ],
            )
            .map_err(db)?;
        if n > 0
            && let Some(moved) = entry(tx, cid, e.device_id.as_str())?
        {
            out.push(moved);
        }
    }
    Ok(out)
}

#[async_trait]
impl CampaignStore for SqliteStore {
    async fn create_campaign(&self, campaign: NewCampaign, actor: &Actor) -> Result<Campaign> {
        let actor = actor.clone();
        self.write_audited(move |tx, key| create(tx, key, &campaign, &actor))
            .await
    }

    async fn campaign(&self, id: u64) -> Result<Option<Campaign>> {
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        self.read(move |conn, _| campaign_by_id(conn, id)).await
    }

    async fn list_campaigns(&self, statuses: &[CampaignStatus]) -> Result<Vec<Campaign>> {
        let filter = if statuses.is_empty() {
            String::new()
        } else {
            format!("WHERE status IN ({})", statuses_sql(statuses))
        };
        self.read(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {CAMPAIGN_COLUMNS} FROM campaigns {filter} ORDER BY id DESC"
                ))
                .map_err(db)?;
            let rows = stmt.query_map([], campaign_row).map_err(db)?;
            rows.map(|r| r.map_err(db).and_then(CampaignRow::into_campaign))
                .collect()
        })
        .await
    }

    async fn campaign_entries(&self, id: u64, query: &EntryQuery) -> Result<EntryPage> {
        let cid = id_param(id)?;
        let q = query.clone();
        self.read(move |conn, _| {
            if campaign_by_id(conn, cid)?.is_none() {
                return Err(StoreError::CampaignNotFound(id));
            }
            let state = q.state.map(EntryState::as_str);
            let filter = "WHERE campaign_id = ?1 AND (?2 IS NULL OR state = ?2)
                 AND (?3 IS NULL OR wave = ?3)";
            let total: i64 = conn
                .query_row(
                    &format!("SELECT count(*) FROM campaign_devices {filter}"),
                    params![cid, state, q.wave],
                    |r| r.get(0),
                )
                .map_err(db)?;
            let page = entries(
                conn,
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM campaign_devices {filter}
                     ORDER BY wave, position LIMIT ?4 OFFSET ?5"
                ),
                &[&cid, &state, &q.wave, &q.page_size(), &q.offset],
            )?;
            Ok(EntryPage {
                entries: page,
                total: u64::try_from(total).unwrap_or_default(),
            })
        })
        .await
    }

    async fn campaign_waves(&self, id: u64) -> Result<Vec<WaveProgress>> {
        let cid = id_param(id)?;
        self.read(move |conn, _| {
            let c = campaign_by_id(conn, cid)?.ok_or(StoreError::CampaignNotFound(id))?;
            let mut stmt = conn
                .prepare_cached(
                    "SELECT wave, state, count(*), count(offered_at), max(updated_at)
                     FROM campaign_devices WHERE campaign_id = ?1 GROUP BY wave, state",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![cid], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .map_err(db)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db)?;
            waves_from_rows(c.waves.len(), rows)
        })
        .await
    }

    async fn change_campaign(
        &self,
        id: u64,
        change: CampaignChange,
        actor: &Actor,
    ) -> Result<Campaign> {
        let actor = actor.clone();
        self.write_audited(move |tx, key| self::change(tx, key, id, change, &actor))
            .await
    }

    async fn start_wave(
        &self,
        id: u64,
        wave: u32,
        actor: &Actor,
    ) -> Result<Option<Vec<CampaignEntry>>> {
        let actor = actor.clone();
        let out = self
            .write(move |tx, key| start(tx, key, id, wave, &actor))
            .await?;
        Ok(out.map(|(entries, rec)| {
            self.advance_head(&rec);
            entries
        }))
    }

    async fn move_entry(&self, m: EntryMove) -> Result<Option<CampaignEntry>> {
        self.write(move |tx, _| move_one(tx, &m)).await
    }

    async fn expire_entries(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<CampaignEntry>> {
        let now = to_ms(now);
        self.write(move |tx, _| expire(tx, now, limit)).await
    }

    async fn active_entry(
        &self,
        device: &DeviceId,
        version: &str,
    ) -> Result<Option<CampaignEntry>> {
        let (device, version) = (device.as_str().to_owned(), version.to_owned());
        self.read(move |conn, _| {
            Ok(entries(
                conn,
                &format!(
                    "SELECT {} FROM campaign_devices e JOIN campaigns c ON c.id = e.campaign_id
                     WHERE e.device_id = ?1 AND c.version = ?2 AND e.offered_at IS NOT NULL
                       AND e.state IN ({})
                     ORDER BY e.campaign_id DESC LIMIT 1",
                    prefixed_entry_columns(),
                    open_states_sql()
                ),
                &[&device, &version],
            )?
            .into_iter()
            .next())
        })
        .await
    }

    async fn open_entries_of(&self, device: &DeviceId) -> Result<Vec<CampaignEntry>> {
        let device = device.as_str().to_owned();
        self.read(move |conn, _| {
            entries(
                conn,
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM campaign_devices
                     WHERE device_id = ?1 AND offered_at IS NOT NULL AND state IN ({})
                     ORDER BY campaign_id DESC",
                    open_states_sql()
                ),
                &[&device],
            )
        })
        .await
    }

    async fn pending_cancels(&self, limit: u32) -> Result<Vec<CampaignEntry>> {
        self.read(move |conn, _| {
            entries(
                conn,
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM campaign_devices WHERE cancel_pending = 1
                     ORDER BY campaign_id, position LIMIT ?1"
                ),
                &[&limit],
            )
        })
        .await
    }

    async fn cancel_sent(&self, campaign_id: u64, device: &DeviceId) -> Result<bool> {
        let cid = id_param(campaign_id)?;
        let device = device.as_str().to_owned();
        self.write(move |tx, _| {
            let n = tx
                .execute(
                    "UPDATE campaign_devices SET cancel_pending = 0
                     WHERE campaign_id = ?1 AND device_id = ?2 AND cancel_pending = 1",
                    params![cid, device],
                )
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

//! `impl Store for SqliteStore`: each method is one transaction that makes
//! the change, appends its change-feed row and its audit row.

use async_trait::async_trait;
use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;
use rusqlite::{Transaction, params};

use super::{
    SqliteStore, audit, changes, claims, db, devices, enrollment, mqtt, notifications, renewal,
    services,
};
use crate::lifecycle::{self, IdentityChange};
use crate::millis::{now_ms, to_ms};
use crate::{
    Actor, AuditEntry, AuditKey, AuditRecord, AuditReport, CertificateRecord, Change, Claim,
    ClaimStatus, Device, DeviceFilter, DeviceState, Enrolled, Enrollment, EnrollmentToken, MqttOp,
    MqttSnapshot, NewCertificate, NewClaim, NewDevice, NewEnrollmentToken, NewService, Result,
    RevokedCertificate, Service, Store, StoreError,
};

impl SqliteStore {
    /// A write that leaves an audit row: advances the chain head after commit.
    pub(super) async fn write_audited<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>, &AuditKey) -> Result<(T, AuditRecord)> + Send + 'static,
    {
        let (out, record) = self.write(f).await?;
        self.advance_head(&record);
        Ok(out)
    }

    /// Moves the audit chain head past `record`, committed just now.
    pub(super) fn advance_head(&self, record: &AuditRecord) {
        if let Err(e) = self.inner.audit_key.advance_head(record.seq, &record.mac) {
            // The change and its audit row are committed; a stale head only
            // weakens truncation detection until the next append.
            tracing::warn!(error = %e, "could not advance the audit chain head");
        }
    }
}

/// Appends the change-feed row and the audit row of `change`.
fn log_change(
    tx: &Transaction<'_>,
    key: &AuditKey,
    change: &IdentityChange,
    actor: &Actor,
    now_ms: i64,
) -> Result<AuditRecord> {
    changes::append(tx, change.kind, change.subject.as_str(), now_ms)?;
    audit::append(tx, key, &change.audit_entry(actor))
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_device(&self, device: NewDevice, actor: &Actor) -> Result<Device> {
        let actor = actor.clone();
        self.write_audited(move |tx, key| {
            let (_, now) = now_ms();
            devices::insert(tx, &device, now)?;
            let rec = log_change(tx, key, &lifecycle::device_created(&device), &actor, now)?;
            Ok((devices::require(tx, &device.id)?, rec))
        })
        .await
    }

    async fn device(&self, id: &DeviceId) -> Result<Option<Device>> {
        let id = id.clone();
        self.read(move |conn, _| devices::get(conn, id.as_str()))
            .await
    }

    async fn list_devices(&self, filter: &DeviceFilter) -> Result<Vec<Device>> {
        let filter = filter.clone();
        self.read(move |conn, _| devices::list(conn, &filter)).await
    }

    async fn query_devices(&self, query: &crate::DeviceQuery) -> Result<crate::DevicePage> {
        let query = query.clone();
        self.read(move |conn, _| devices::query(conn, &query)).await
    }

    async fn fleet_summary(&self) -> Result<crate::FleetSummary> {
        self.read(|conn, _| devices::summary(conn)).await
    }

    async fn ping(&self) -> Result<()> {
        self.read(|conn, _| {
            conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(drop)
                .map_err(db)
        })
        .await
    }

    async fn revoke_device(
        &self,
        id: &DeviceId,
        reason: RevocationReason,
        actor: &Actor,
    ) -> Result<Device> {
        let (id, actor) = (id.clone(), actor.clone());
        self.write_audited(move |tx, key| {
            let (_, now) = now_ms();
            let dev = devices::require(tx, &id)?;
            let change = lifecycle::revoke_device(&dev, reason)?;
            devices::revoke_certificate(tx, &dev.serial, reason, now)?;
            renewal::revoke_pending(tx, &id, reason, now)?;
            devices::set_state(tx, &id, DeviceState::Revoked, now)?;
            let rec = log_change(tx, key, &change, &actor, now)?;
            Ok((devices::require(tx, &id)?, rec))
        })
        .await
    }

    async fn set_device_disabled(
        &self,
        id: &DeviceId,
        disabled: bool,
        actor: &Actor,
    ) -> Result<Device> {
        let (id, actor) = (id.clone(), actor.clone());
        self.write_audited(move |tx, key| {
            let (_, now) = now_ms();
            let dev = devices::require(tx, &id)?;
            let (target, change) = lifecycle::set_disabled(&dev, disabled)?;
            devices::set_state(tx, &id, target, now)?;
            let rec = log_change(tx, key, &change, &actor, now)?;
            Ok((devices::require(tx, &id)?, rec))
        })
        .await
    }

    async fn delete_device(&self, id: &DeviceId, actor: &Actor) -> Result<()> {
        let (id, actor) = (id.clone(), actor.clone());
        self.write_audited(move |tx, key| {
            let (_, now) = now_ms();
            let dev = devices::require(tx, &id)?;
            let (reason, change) = lifecycle::delete_device(&dev);
            devices::revoke_certificate(tx, &dev.serial, reason, now)?;
            renewal::revoke_pending(tx, &id, reason, now)?;
            devices::remove(tx, &id)?;
            let rec = log_change(tx, key, &change, &actor, now)?;
            Ok(((), rec))
        })
        .await
    }

    async fn set_claim_code(
        &self,
        id: &DeviceId,
        claim_code_hash: &str,
        actor: &Actor,
    ) -> Result<Device> {
        let (id, actor, hash) = (id.clone(), actor.clone(), claim_code_hash.to_owned());
        self.write_audited(move |tx, key| {
            let (_, now) = now_ms();
            let dev = devices::require(tx, &id)?;
            let change = lifecycle::rotate_claim_code(&dev)?;
            devices::set_claim_code(tx, &id, &hash, now)?;
            let rec = log_change(tx, key, &change, &actor, now)?;
            Ok((devices::require(tx, &id)?, rec))
        })
        .await
    }

    async fn record_presence(
        &self,
        id: &DeviceId,
        online: bool,
        at: time::OffsetDateTime,
    ) -> Result<()> {
        let id = id.clone();
        self.write(move |tx, _| {
            tx.execute(
                "UPDATE devices SET online = ?2, last_seen = ?3 WHERE id = ?1",
                params![id.as_str(), online, to_ms(at)],
            )
            .map_err(db)?;
            Ok(())
        })
        .await
    }

    async fn create_service(&self, service: NewService, actor: &Actor) -> Result<Service> {
        let actor = actor.clone();
        self.write_audited(move |tx, key| {
            let (_, now) = now_ms();
            services::insert(tx, &service, now)?;
            let rec = log_change(tx, key, &lifecycle::service_created(&service), &actor, now)?;
            let created = services::get(tx, service.id.as_str())?
                .ok_or_else(|| StoreError::ServiceNotFound(service.id.clone()))?;
            Ok((created, rec))
        })
        .await
    }

    async fn service(&self, id: &DeviceId) -> Result<Option<Service>> {
        let id = id.clone();
        self.read(move |conn, _| services::get(conn, id.as_str()))
            .await
    }

    async fn list_services(&self) -> Result<Vec<Service>> {
        self.read(|conn, _| services::list(conn)).await
    }

    async fn revoke_service(
        &self,
        id: &DeviceId,
        reason: RevocationReason,
        actor: &Actor,
    ) -> Result<Service> {
        let (id, actor) = (id.clone(), actor.clone());
        self.write_audited(move |tx, key| {
            let (_, now) = now_ms();
            let svc = services::get(tx, id.as_str())?
                .ok_or_else(|| StoreError::ServiceNotFound(id.clone()))?;
            let change = lifecycle::revoke_service(&svc, reason)?;
            devices::revoke_certificate(tx, &svc.serial, reason, now)?;
            services::set_revoked(tx, &id, now)?;
            let rec = log_change(tx, key, &change, &actor, now)?;
            let revoked = services::get(tx, id.as_str())?
                .ok_or_else(|| StoreError::ServiceNotFound(id.clone()))?;
            Ok((revoked, rec))
        })
        .await
    }

    async fn create_enrollment_token(
        &self,
        token: NewEnrollmentToken,
        actor: &Actor,
    ) -> Result<EnrollmentToken> {
        let actor = actor.clone();
        self.write_audited(move |tx, key| enrollment::create(tx, key, &token, &actor))
            .await
    }

    async fn enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>> {
        self.read(|conn, _| enrollment::list(conn)).await
    }

    async fn enrollment_token_by_hash(&self, token_hash: &str) -> Result<Option<EnrollmentToken>> {
        let hash = token_hash.to_owned();
        self.read(move |conn, _| enrollment::by_hash(conn, &hash))
            .await
    }

    async fn revoke_enrollment_token(&self, id: &str, actor: &Actor) -> Result<EnrollmentToken> {
        let (id, actor) = (id.to_owned(), actor.clone());
        self.write_audited(move |tx, key| enrollment::revoke(tx, key, &id, &actor))
            .await
    }

    async fn enroll_device(&self, e: Enrollment, actor: &Actor) -> Result<Enrolled> {
        let actor = actor.clone();
        self.write_audited(move |tx, key| enrollment::enroll(tx, key, &e, &actor))
            .await
    }

    async fn mqtt_apply(&self, ops: Vec<MqttOp>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        self.write(move |tx, _| mqtt::apply(tx, &ops)).await
    }

    async fn mqtt_load(&self) -> Result<MqttSnapshot> {
        self.read(|conn, _| mqtt::load(conn)).await
    }

    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>> {
        let serial = serial.to_owned();
        self.read(move |conn, _| devices::certificate(conn, &serial))
            .await
    }

    async fn revoked_certificates(&self) -> Result<Vec<RevokedCertificate>> {
        self.read(|conn, _| devices::revoked(conn)).await
    }

    async fn next_crl_number(&self) -> Result<u64> {
        self.write(|tx, _| {
            let n: i64 = tx
                .query_row(
                    "INSERT INTO meta (key, value) VALUES ('crl_number', '1')
                     ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1
                     RETURNING CAST(value AS INTEGER)",
                    params![],
                    |r| r.get(0),
                )
                .map_err(db)?;
            Ok(n as u64)
        })
        .await
    }

    async fn record_audit(&self, entry: AuditEntry) -> Result<AuditRecord> {
        self.write_audited(move |tx, key| {
            let rec = audit::append(tx, key, &entry)?;
            Ok((rec.clone(), rec))
        })
        .await
    }

    async fn audit_log(&self, after: u64, limit: u32) -> Result<Vec<AuditRecord>> {
        self.read(move |conn, _| audit::page(conn, after, limit))
            .await
    }

    async fn search_audit(&self, search: &crate::AuditSearch) -> Result<Vec<AuditRecord>> {
        let search = search.clone();
        self.read(move |conn, _| audit::search(conn, &search)).await
    }

    async fn verify_audit(&self) -> Result<AuditReport> {
        self.read(audit::verify).await
    }

    async fn verify_audit_since(&self, anchor: &crate::AuditAnchor) -> Result<AuditReport> {
        let anchor = anchor.clone();
        self.read(move |conn, key| audit::verify_since(conn, key, &anchor))
            .await
    }

    async fn changes_since(&self, after: u64) -> Result<Vec<Change>> {
        self.read(move |conn, _| changes::since(conn, after)).await
    }

    async fn latest_change(&self) -> Result<u64> {
        self.read(|conn, _| changes::latest(conn)).await
    }

    async fn add_pending_certificate(
        &self,
        cert: NewCertificate,
        actor: &Actor,
    ) -> Result<Option<String>> {
        let actor = actor.clone();
        self.write_audited(move |tx, key| {
            let (_, now) = now_ms();
            let dev = devices::require(tx, &cert.identity)?;
            let replaced = renewal::pending_serial(tx, &cert.identity)?;
            let change = lifecycle::issue_certificate(&dev, &cert, replaced.as_deref())?;
            if let Some(old) = &replaced {
                renewal::supersede(tx, old, now)?;
            }
            renewal::insert_pending(tx, &cert, now)?;
            let rec = log_change(tx, key, &change, &actor, now)?;
            Ok((replaced, rec))
        })
        .await
    }

    async fn activate_certificate(&self, serial: &str, actor: &Actor) -> Result<CertificateRecord> {
        let (serial, actor) = (serial.to_owned(), actor.clone());
        let activated = self
            .write(move |tx, key| {
                let (_, now) = now_ms();
                let cert = devices::certificate(tx, &serial)?
                    .ok_or_else(|| StoreError::CertificateNotFound(serial.clone()))?;
                if cert.status == crate::CertificateStatus::Current {
                    return Ok((cert, None));
                }
                let dev = devices::require(tx, &cert.identity)?;
                let change = lifecycle::activate_certificate(&dev, &cert)?;
                renewal::supersede(tx, &dev.serial, now)?;
                renewal::make_current(tx, &dev.id, &serial, now)?;
                let rec = log_change(tx, key, &change, &actor, now)?;
                let current = devices::certificate(tx, &serial)?
                    .ok_or_else(|| StoreError::CertificateNotFound(serial.clone()))?;
                Ok((current, Some(rec)))
            })
            .await?;
        let (cert, record) = activated;
        if let Some(record) = &record {
            self.advance_head(record);
        }
        Ok(cert)
    }

    async fn certificates_of(&self, id: &DeviceId) -> Result<Vec<CertificateRecord>> {
        let id = id.clone();
        self.read(move |conn, _| renewal::of_identity(conn, &id))
            .await
    }

    async fn claim_code_hash(&self, id: &DeviceId) -> Result<Option<String>> {
        let id = id.clone();
        self.read(move |conn, _| claims::code_hash(conn, &id)).await
    }

    async fn start_claim(&self, claim: NewClaim, actor: &Actor) -> Result<Claim> {
        let actor = actor.clone();
        self.write_audited(move |tx, key| {
            let (_, now) = now_ms();
            let dev = devices::require(tx, &claim.device)?;
            let stored = claims::code_hash(tx, &claim.device)?;
            let change = lifecycle::start_claim(&dev, &claim, stored.as_deref())?;
            let id = claims::insert(tx, &claim, &actor.name, now)?;
            let rec = log_change(tx, key, &change, &actor, now)?;
            Ok((claims::require(tx, id)?, rec))
        })
        .await
    }

    async fn claim(&self, id: u64) -> Result<Option<Claim>> {
        self.read(move |conn, _| claims::get(conn, id)).await
    }

    async fn latest_claim(&self, device: &DeviceId) -> Result<Option<Claim>> {
        let device = device.clone();
        self.read(move |conn, _| claims::latest(conn, &device))
            .await
    }

    async fn complete_claim(&self, id: u64, actor: &Actor) -> Result<Device> {
        let actor = actor.clone();
        self.write_audited(move |tx, key| {
            let (_, now) = now_ms();
            let claim = claims::require(tx, id)?;
            let dev = devices::require(tx, &claim.device)?;
            let change = lifecycle::complete_claim(&dev, &claim)?;
            claims::bind(tx, &claim.device, &claim.owner, now)?;
            claims::finish(tx, id, ClaimStatus::Bound, None, now)?;
            notifications::claim_ended(tx, &claim, ClaimStatus::Bound, None, now)?;
            let rec = log_change(tx, key, &change, &actor, now)?;
            Ok((devices::require(tx, &claim.device)?, rec))
        })
        .await
    }

    async fn end_claim(
        &self,
        id: u64,
        status: ClaimStatus,
        reason: &str,
        actor: &Actor,
    ) -> Result<Claim> {
        let (actor, reason) = (actor.clone(), reason.to_owned());
        self.write_audited(move |tx, key| {
            let (_, now) = now_ms();
            let claim = claims::require(tx, id)?;
            let change = lifecycle::end_claim(&claim, status, &reason)?;
            claims::finish(tx, id, status, Some(&reason), now)?;
            notifications::claim_ended(tx, &claim, status, Some(&reason), now)?;
            let rec = log_change(tx, key, &change, &actor, now)?;
            Ok((claims::require(tx, id)?, rec))
        })
        .await
    }

    async fn count_claim_attempt(&self, id: u64) -> Result<u32> {
        self.write(move |tx, _| claims::count_attempt(tx, id)).await
    }
}

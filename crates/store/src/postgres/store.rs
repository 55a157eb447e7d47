//! `impl Store for PostgresStore`: each change is one transaction that
//! takes the append lock, makes the change, and appends its change-feed
//! row and its audit row; the decisions come from [`crate::lifecycle`],
//! shared with SQLite.

use async_trait::async_trait;
use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;

use super::ledger::{self, Ledger};
use super::{
    PostgresStore, audit, changes, claims, db, devices, enrollment, get, mqtt, notifications,
    renewal, services,
};
use crate::lifecycle::{self, IdentityChange};
use crate::millis::{now_ms, to_ms};
use crate::{
    Actor, AuditEntry, AuditKey, AuditRecord, AuditReport, CertificateRecord, CertificateStatus,
    Change, Claim, ClaimStatus, Device, DeviceFilter, DeviceState, Enrolled, Enrollment,
    EnrollmentToken, MqttOp, MqttSnapshot, NewCertificate, NewClaim, NewDevice, NewEnrollmentToken,
    NewService, Result, RevokedCertificate, Service, Store, StoreError,
};

/// Appends the change-feed row and the audit row of `change`.
async fn log_change(
    ledger: &Ledger<'_, '_>,
    key: &AuditKey,
    change: &IdentityChange,
    actor: &Actor,
    now_ms: i64,
) -> Result<AuditRecord> {
    changes::append(ledger, change.kind, change.subject.as_str(), now_ms).await?;
    audit::append(ledger, key, &change.audit_entry(actor)).await
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_device(&self, device: NewDevice, actor: &Actor) -> Result<Device> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let (_, now) = now_ms();
            devices::insert(&tx, &device, now).await?;
            let change = lifecycle::device_created(&device);
            let rec = log_change(&ledger, &self.inner.audit_key, &change, actor, now).await?;
            let created = devices::require(&tx, &device.id).await?;
            tx.commit().await.map_err(db)?;
            Ok((created, rec))
        })
        .await
    }

    async fn device(&self, id: &DeviceId) -> Result<Option<Device>> {
        self.retrying(|| async {
            let client = self.client().await?;
            devices::get_device(&client, id.as_str()).await
        })
        .await
    }

    async fn list_devices(&self, filter: &DeviceFilter) -> Result<Vec<Device>> {
        self.retrying(|| async {
            let client = self.client().await?;
            devices::list(&client, filter).await
        })
        .await
    }

    async fn query_devices(&self, query: &crate::DeviceQuery) -> Result<crate::DevicePage> {
        self.retrying(|| async {
            let mut client = self.client().await?;
            devices::query(&mut client, query).await
        })
        .await
    }

    async fn fleet_summary(&self) -> Result<crate::FleetSummary> {
        self.retrying(|| async {
            let client = self.client().await?;
            devices::summary(&client).await
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        let client = self.client().await?;
        client
            .query_one("SELECT 1", &[])
            .await
            .map(drop)
            .map_err(super::db)
    }

    async fn revoke_device(
        &self,
        id: &DeviceId,
        reason: RevocationReason,
        actor: &Actor,
    ) -> Result<Device> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let (_, now) = now_ms();
            let dev = devices::require(&tx, id).await?;
            let change = lifecycle::revoke_device(&dev, reason)?;
            devices::revoke_certificate(&tx, &dev.serial, reason, now).await?;
            renewal::revoke_pending(&tx, id, reason, now).await?;
            devices::set_state(&tx, id, DeviceState::Revoked, now).await?;
            let rec = log_change(&ledger, &self.inner.audit_key, &change, actor, now).await?;
            let revoked = devices::require(&tx, id).await?;
            tx.commit().await.map_err(db)?;
            Ok((revoked, rec))
        })
        .await
    }

    async fn set_device_disabled(
        &self,
        id: &DeviceId,
        disabled: bool,
        actor: &Actor,
    ) -> Result<Device> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let (_, now) = now_ms();
            let dev = devices::require(&tx, id).await?;
            let (target, change) = lifecycle::set_disabled(&dev, disabled)?;
            devices::set_state(&tx, id, target, now).await?;
            let rec = log_change(&ledger, &self.inner.audit_key, &change, actor, now).await?;
            let changed = devices::require(&tx, id).await?;
            tx.commit().await.map_err(db)?;
            Ok((changed, rec))
        })
        .await
    }

    async fn delete_device(&self, id: &DeviceId, actor: &Actor) -> Result<()> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let (_, now) = now_ms();
            let dev = devices::require(&tx, id).await?;
            let (reason, change) = lifecycle::delete_device(&dev);
            devices::revoke_certificate(&tx, &dev.serial, reason, now).await?;
            renewal::revoke_pending(&tx, id, reason, now).await?;
            devices::remove(&tx, id).await?;
            let rec = log_change(&ledger, &self.inner.audit_key, &change, actor, now).await?;
            tx.commit().await.map_err(db)?;
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
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let (_, now) = now_ms();
            let dev = devices::require(&tx, id).await?;
            let change = lifecycle::rotate_claim_code(&dev)?;
            devices::set_claim_code(&tx, id, claim_code_hash, now).await?;
            let rec = log_change(&ledger, &self.inner.audit_key, &change, actor, now).await?;
            let changed = devices::require(&tx, id).await?;
            tx.commit().await.map_err(db)?;
            Ok((changed, rec))
        })
        .await
    }

    async fn record_presence(
        &self,
        id: &DeviceId,
        online: bool,
        at: time::OffsetDateTime,
    ) -> Result<()> {
        self.retrying(|| async {
            let client = self.client().await?;
            devices::set_presence(&client, id, online, to_ms(at)).await
        })
        .await
    }

    async fn create_service(&self, service: NewService, actor: &Actor) -> Result<Service> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let (_, now) = now_ms();
            services::insert(&tx, &service, now).await?;
            let change = lifecycle::service_created(&service);
            let rec = log_change(&ledger, &self.inner.audit_key, &change, actor, now).await?;
            let created = services::get_service(&tx, service.id.as_str())
                .await?
                .ok_or_else(|| StoreError::ServiceNotFound(service.id.clone()))?;
            tx.commit().await.map_err(db)?;
            Ok((created, rec))
        })
        .await
    }

    async fn service(&self, id: &DeviceId) -> Result<Option<Service>> {
        self.retrying(|| async {
            let client = self.client().await?;
            services::get_service(&client, id.as_str()).await
        })
        .await
    }

    async fn list_services(&self) -> Result<Vec<Service>> {
        self.retrying(|| async {
            let client = self.client().await?;
            services::list(&client).await
        })
        .await
    }

    async fn revoke_service(
        &self,
        id: &DeviceId,
        reason: RevocationReason,
        actor: &Actor,
    ) -> Result<Service> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let (_, now) = now_ms();
            let svc = services::get_service(&tx, id.as_str())
                .await?
                .ok_or_else(|| StoreError::ServiceNotFound(id.clone()))?;
            let change = lifecycle::revoke_service(&svc, reason)?;
            devices::revoke_certificate(&tx, &svc.serial, reason, now).await?;
            services::set_revoked(&tx, id, now).await?;
            let rec = log_change(&ledger, &self.inner.audit_key, &change, actor, now).await?;
            let revoked = services::get_service(&tx, id.as_str())
                .await?
                .ok_or_else(|| StoreError::ServiceNotFound(id.clone()))?;
            tx.commit().await.map_err(db)?;
            Ok((revoked, rec))
        })
        .await
    }

    async fn create_enrollment_token(
        &self,
        token: NewEnrollmentToken,
        actor: &Actor,
    ) -> Result<EnrollmentToken> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let out = enrollment::create(&ledger, &self.inner.audit_key, &token, actor).await?;
            tx.commit().await.map_err(db)?;
            Ok(out)
        })
        .await
    }

    async fn enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>> {
        self.retrying(|| async {
            let client = self.client().await?;
            enrollment::list(&client).await
        })
        .await
    }

    async fn enrollment_token_by_hash(&self, token_hash: &str) -> Result<Option<EnrollmentToken>> {
        self.retrying(|| async {
            let client = self.client().await?;
            enrollment::by_hash(&client, token_hash).await
        })
        .await
    }

    async fn revoke_enrollment_token(&self, id: &str, actor: &Actor) -> Result<EnrollmentToken> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let out = enrollment::revoke(&ledger, &self.inner.audit_key, id, actor).await?;
            tx.commit().await.map_err(db)?;
            Ok(out)
        })
        .await
    }

    async fn enroll_device(&self, e: Enrollment, actor: &Actor) -> Result<Enrolled> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let out = enrollment::enroll(&ledger, &self.inner.audit_key, &e, actor).await?;
            tx.commit().await.map_err(db)?;
            Ok(out)
        })
        .await
    }

    async fn mqtt_apply(&self, ops: Vec<MqttOp>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        self.retrying(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            mqtt::apply(&tx, &ops).await?;
            tx.commit().await.map_err(db)
        })
        .await
    }

    async fn mqtt_load(&self) -> Result<MqttSnapshot> {
        self.retrying(|| async {
            let mut client = self.client().await?;
            mqtt::load(&mut client).await
        })
        .await
    }

    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>> {
        self.retrying(|| async {
            let client = self.client().await?;
            devices::certificate(&client, serial).await
        })
        .await
    }

    async fn revoked_certificates(&self) -> Result<Vec<RevokedCertificate>> {
        self.retrying(|| async {
            let client = self.client().await?;
            devices::revoked(&client).await
        })
        .await
    }

    async fn next_crl_number(&self) -> Result<u64> {
        // One statement: the upsert's row lock orders concurrent callers.
        self.retrying(|| async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "INSERT INTO meta (key, value) VALUES ('crl_number', '1')
                     ON CONFLICT (key) DO UPDATE SET value = (meta.value::bigint + 1)::text
                     RETURNING value::bigint",
                    &[],
                )
                .await
                .map_err(db)?;
            let n: i64 = get(&row, 0)?;
            u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("CRL number {n}")))
        })
        .await
    }

    async fn record_audit(&self, entry: AuditEntry) -> Result<AuditRecord> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let rec = audit::append(&ledger, &self.inner.audit_key, &entry).await?;
            tx.commit().await.map_err(db)?;
            Ok((rec.clone(), rec))
        })
        .await
    }

    async fn audit_log(&self, after: u64, limit: u32) -> Result<Vec<AuditRecord>> {
        self.retrying(|| async {
            let client = self.client().await?;
            audit::page(&client, after, limit).await
        })
        .await
    }

    async fn search_audit(&self, search: &crate::AuditSearch) -> Result<Vec<AuditRecord>> {
        self.retrying(|| async {
            let client = self.client().await?;
            audit::search(&client, search).await
        })
        .await
    }

    async fn verify_audit(&self) -> Result<AuditReport> {
        self.retrying(|| async {
            let mut client = self.client().await?;
            audit::verify(&mut client, &self.inner.audit_key, None).await
        })
        .await
    }

    async fn verify_audit_since(&self, anchor: &crate::AuditAnchor) -> Result<AuditReport> {
        self.retrying(|| async {
            let mut client = self.client().await?;
            audit::verify(&mut client, &self.inner.audit_key, Some(anchor)).await
        })
        .await
    }

    async fn changes_since(&self, after: u64) -> Result<Vec<Change>> {
        self.retrying(|| async {
            let client = self.client().await?;
            changes::since(&client, after).await
        })
        .await
    }

    async fn latest_change(&self) -> Result<u64> {
        self.retrying(|| async {
            let client = self.client().await?;
            changes::latest(&client).await
        })
        .await
    }

    async fn add_pending_certificate(
        &self,
        cert: NewCertificate,
        actor: &Actor,
    ) -> Result<Option<String>> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let (_, now) = now_ms();
            let dev = devices::require(&tx, &cert.identity).await?;
            let replaced = renewal::pending_serial(&tx, &cert.identity).await?;
            let change = lifecycle::issue_certificate(&dev, &cert, replaced.as_deref())?;
            if let Some(old) = &replaced {
                renewal::supersede(&tx, old, now).await?;
            }
            renewal::insert_pending(&tx, &cert, now).await?;
            let rec = log_change(&ledger, &self.inner.audit_key, &change, actor, now).await?;
            tx.commit().await.map_err(db)?;
            Ok((replaced, rec))
        })
        .await
    }

    async fn activate_certificate(&self, serial: &str, actor: &Actor) -> Result<CertificateRecord> {
        let (cert, record) = self
            .retrying(|| async {
                let mut client = self.client().await?;
                let tx = self.begin(&mut client).await?;
                let ledger = ledger::lock(&tx).await?;
                let (_, now) = now_ms();
                let cert = devices::certificate(&tx, serial)
                    .await?
                    .ok_or_else(|| StoreError::CertificateNotFound(serial.to_owned()))?;
                if cert.status == CertificateStatus::Current {
                    return Ok((cert, None));
                }
                let dev = devices::require(&tx, &cert.identity).await?;
                let change = lifecycle::activate_certificate(&dev, &cert)?;
                renewal::supersede(&tx, &dev.serial, now).await?;
                renewal::make_current(&tx, &dev.id, serial, now).await?;
                let rec = log_change(&ledger, &self.inner.audit_key, &change, actor, now).await?;
                let current = devices::certificate(&tx, serial)
                    .await?
                    .ok_or_else(|| StoreError::CertificateNotFound(serial.to_owned()))?;
                tx.commit().await.map_err(db)?;
                Ok((current, Some(rec)))
            })
            .await?;
        if let Some(record) = &record {
            self.advance_head(record);
        }
        Ok(cert)
    }

    async fn certificates_of(&self, id: &DeviceId) -> Result<Vec<CertificateRecord>> {
        self.retrying(|| async {
            let client = self.client().await?;
            renewal::of_identity(&client, id).await
        })
        .await
    }

    async fn claim_code_hash(&self, id: &DeviceId) -> Result<Option<String>> {
        self.retrying(|| async {
            let client = self.client().await?;
            claims::code_hash(&client, id).await
        })
        .await
    }

    async fn start_claim(&self, claim: NewClaim, actor: &Actor) -> Result<Claim> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let (_, now) = now_ms();
            let dev = devices::require(&tx, &claim.device).await?;
            let stored = claims::code_hash(&tx, &claim.device).await?;
            let change = lifecycle::start_claim(&dev, &claim, stored.as_deref())?;
            let id = claims::insert(&tx, &claim, &actor.name, now).await?;
            let rec = log_change(&ledger, &self.inner.audit_key, &change, actor, now).await?;
            let started = claims::require(&tx, id).await?;
            tx.commit().await.map_err(db)?;
            Ok((started, rec))
        })
        .await
    }

    async fn claim(&self, id: u64) -> Result<Option<Claim>> {
        self.retrying(|| async {
            let client = self.client().await?;
            claims::get_claim(&client, id).await
        })
        .await
    }

    async fn latest_claim(&self, device: &DeviceId) -> Result<Option<Claim>> {
        self.retrying(|| async {
            let client = self.client().await?;
            claims::latest(&client, device).await
        })
        .await
    }

    async fn complete_claim(&self, id: u64, actor: &Actor) -> Result<Device> {
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let (_, now) = now_ms();
            let claim = claims::require(&tx, id).await?;
            let dev = devices::require(&tx, &claim.device).await?;
            let change = lifecycle::complete_claim(&dev, &claim)?;
            claims::bind(&tx, &claim.device, &claim.owner, now).await?;
            claims::finish(&tx, id, ClaimStatus::Bound, None, now).await?;
            notifications::claim_ended(&tx, &claim, ClaimStatus::Bound, None, now).await?;
            let rec = log_change(&ledger, &self.inner.audit_key, &change, actor, now).await?;
            let bound = devices::require(&tx, &claim.device).await?;
            tx.commit().await.map_err(db)?;
            Ok((bound, rec))
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
        self.audited(|| async {
            let mut client = self.client().await?;
            let tx = self.begin(&mut client).await?;
            let ledger = ledger::lock(&tx).await?;
            let (_, now) = now_ms();
            let claim = claims::require(&tx, id).await?;
            let change = lifecycle::end_claim(&claim, status, reason)?;
            claims::finish(&tx, id, status, Some(reason), now).await?;
            notifications::claim_ended(&tx, &claim, status, Some(reason), now).await?;
            let rec = log_change(&ledger, &self.inner.audit_key, &change, actor, now).await?;
            let ended = claims::require(&tx, id).await?;
            tx.commit().await.map_err(db)?;
            Ok((ended, rec))
        })
        .await
    }

    async fn count_claim_attempt(&self, id: u64) -> Result<u32> {
        self.retrying(|| async {
            let client = self.client().await?;
            claims::count_attempt(&client, id).await
        })
        .await
    }
}

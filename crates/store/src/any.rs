//! [`AnyStore`]: the store the configuration chose, as one concrete type.
//!
//! The binary picks SQLite or PostgreSQL at start; holding the choice in an
//! enum rather than `Arc<dyn Store>` keeps the type `Clone`, lets callers
//! reach backend-specific methods by matching, and delegates further traits
//! that both backends implement ([`TelemetryStore`], notifications) the same way.

use async_trait::async_trait;
use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;

use crate::telemetry::{
    DeviceTelemetryStats, IngestItem, ItemOutcome, PointCursor, PointFilter, PointRecord,
    PresenceHistoryRecord, Pruned, RejectedRecord, Series, SeriesQuery, TelemetryStore,
};
use crate::{
    Actor, AuditEntry, AuditRecord, AuditReport, CertificateRecord, Change, Claim, ClaimStatus,
    Device, DeviceFilter, Enrolled, Enrollment, EnrollmentToken, MqttOp, MqttSnapshot,
    NewCertificate, NewClaim, NewDevice, NewEnrollmentToken, NewService, PostgresStore, Result,
    RevokedCertificate, Service, SqliteStore, Store,
};

/// Either backend, delegating every [`Store`] and [`TelemetryStore`]
/// method to it.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// SQLite in the data dir (the default).
    Sqlite(SqliteStore),
    /// A PostgreSQL database (`store.url`).
    Postgres(PostgresStore),
}

impl AnyStore {
    /// Where the data lives, for logs: a file path or a URL without its
    /// password.
    pub fn location(&self) -> String {
        match self {
            AnyStore::Sqlite(s) => s.path().display().to_string(),
            AnyStore::Postgres(p) => p.target().to_owned(),
        }
    }
}

impl AnyStore {
    /// The SQLite writer threads' figures; `None` for PostgreSQL, whose
    /// writes run on the server.
    pub fn writer_stats(&self) -> Option<crate::sqlite::WriterStats> {
        match self {
            AnyStore::Sqlite(s) => Some(s.writer_stats()),
            AnyStore::Postgres(_) => None,
        }
    }
}

impl From<SqliteStore> for AnyStore {
    fn from(s: SqliteStore) -> Self {
        AnyStore::Sqlite(s)
    }
}

impl From<PostgresStore> for AnyStore {
    fn from(p: PostgresStore) -> Self {
        AnyStore::Postgres(p)
    }
}

/// `self.method(args).await` on whichever backend `self` holds.
macro_rules! delegate {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match $self {
            AnyStore::Sqlite(s) => s.$method($($arg),*).await,
            AnyStore::Postgres(p) => p.$method($($arg),*).await,
        }
    };
}

#[async_trait]
impl Store for AnyStore {
    async fn create_device(&self, device: NewDevice, actor: &Actor) -> Result<Device> {
        delegate!(self.create_device(device, actor))
    }

    async fn device(&self, id: &DeviceId) -> Result<Option<Device>> {
        delegate!(self.device(id))
    }

    async fn list_devices(&self, filter: &DeviceFilter) -> Result<Vec<Device>> {
        delegate!(self.list_devices(filter))
    }

    async fn query_devices(&self, query: &crate::DeviceQuery) -> Result<crate::DevicePage> {
        delegate!(self.query_devices(query))
    }

    async fn fleet_summary(&self) -> Result<crate::FleetSummary> {
        delegate!(self.fleet_summary())
    }

    async fn ping(&self) -> Result<()> {
        delegate!(self.ping())
    }

    async fn revoke_device(
        &self,
        id: &DeviceId,
        reason: RevocationReason,
        actor: &Actor,
    ) -> Result<Device> {
        delegate!(self.revoke_device(id, reason, actor))
    }

    async fn set_device_disabled(
        &self,
        id: &DeviceId,
        disabled: bool,
        actor: &Actor,
    ) -> Result<Device> {
        delegate!(self.set_device_disabled(id, disabled, actor))
    }

    async fn delete_device(&self, id: &DeviceId, actor: &Actor) -> Result<()> {
        delegate!(self.delete_device(id, actor))
    }

    async fn set_claim_code(
        &self,
        id: &DeviceId,
        claim_code_hash: &str,
        actor: &Actor,
    ) -> Result<Device> {
        delegate!(self.set_claim_code(id, claim_code_hash, actor))
    }

    async fn record_presence(
        &self,
        id: &DeviceId,
        online: bool,
        at: time::OffsetDateTime,
    ) -> Result<()> {
        delegate!(self.record_presence(id, online, at))
    }

    async fn create_service(&self, service: NewService, actor: &Actor) -> Result<Service> {
        delegate!(self.create_service(service, actor))
    }

    async fn service(&self, id: &DeviceId) -> Result<Option<Service>> {
        delegate!(self.service(id))
    }

    async fn list_services(&self) -> Result<Vec<Service>> {
        delegate!(self.list_services())
    }

    async fn revoke_service(
        &self,
        id: &DeviceId,
        reason: RevocationReason,
        actor: &Actor,
    ) -> Result<Service> {
        delegate!(self.revoke_service(id, reason, actor))
    }

    async fn create_enrollment_token(
        &self,
        token: NewEnrollmentToken,
        actor: &Actor,
    ) -> Result<EnrollmentToken> {
        delegate!(self.create_enrollment_token(token, actor))
    }

    async fn enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>> {
        delegate!(self.enrollment_tokens())
    }

    async fn enrollment_token_by_hash(&self, token_hash: &str) -> Result<Option<EnrollmentToken>> {
        delegate!(self.enrollment_token_by_hash(token_hash))
    }

    async fn revoke_enrollment_token(&self, id: &str, actor: &Actor) -> Result<EnrollmentToken> {
        delegate!(self.revoke_enrollment_token(id, actor))
    }

    async fn enroll_device(&self, enrollment: Enrollment, actor: &Actor) -> Result<Enrolled> {
        delegate!(self.enroll_device(enrollment, actor))
    }

    async fn mqtt_apply(&self, ops: Vec<MqttOp>) -> Result<()> {
        delegate!(self.mqtt_apply(ops))
    }

    async fn mqtt_load(&self) -> Result<MqttSnapshot> {
        delegate!(self.mqtt_load())
    }

    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>> {
        delegate!(self.certificate(serial))
    }

    async fn revoked_certificates(&self) -> Result<Vec<RevokedCertificate>> {
        delegate!(self.revoked_certificates())
    }

    async fn next_crl_number(&self) -> Result<u64> {
        delegate!(self.next_crl_number())
    }

    async fn record_audit(&self, entry: AuditEntry) -> Result<AuditRecord> {
        delegate!(self.record_audit(entry))
    }

    async fn audit_log(&self, after: u64, limit: u32) -> Result<Vec<AuditRecord>> {
        delegate!(self.audit_log(after, limit))
    }

    async fn search_audit(&self, search: &crate::AuditSearch) -> Result<Vec<AuditRecord>> {
        delegate!(self.search_audit(search))
    }

    async fn verify_audit(&self) -> Result<AuditReport> {
        delegate!(self.verify_audit())
    }

    async fn verify_audit_since(&self, anchor: &crate::AuditAnchor) -> Result<AuditReport> {
        delegate!(self.verify_audit_since(anchor))
    }

    async fn changes_since(&self, after: u64) -> Result<Vec<Change>> {
        delegate!(self.changes_since(after))
    }

    async fn latest_change(&self) -> Result<u64> {
        delegate!(self.latest_change())
    }

    async fn add_pending_certificate(
        &self,
        cert: NewCertificate,
        actor: &Actor,
    ) -> Result<Option<String>> {
        delegate!(self.add_pending_certificate(cert, actor))
    }

    async fn activate_certificate(&self, serial: &str, actor: &Actor) -> Result<CertificateRecord> {
        delegate!(self.activate_certificate(serial, actor))
    }

    async fn certificates_of(&self, id: &DeviceId) -> Result<Vec<CertificateRecord>> {
        delegate!(self.certificates_of(id))
    }

    async fn claim_code_hash(&self, id: &DeviceId) -> Result<Option<String>> {
        delegate!(self.claim_code_hash(id))
    }

    async fn start_claim(&self, claim: NewClaim, actor: &Actor) -> Result<Claim> {
        delegate!(self.start_claim(claim, actor))
    }

    async fn claim(&self, id: u64) -> Result<Option<Claim>> {
        delegate!(self.claim(id))
    }

    async fn latest_claim(&self, device: &DeviceId) -> Result<Option<Claim>> {
        delegate!(self.latest_claim(device))
    }

    async fn complete_claim(&self, id: u64, actor: &Actor) -> Result<Device> {
        delegate!(self.complete_claim(id, actor))
    }

    async fn end_claim(
        &self,
        id: u64,
        status: ClaimStatus,
        reason: &str,
        actor: &Actor,
    ) -> Result<Claim> {
        delegate!(self.end_claim(id, status, reason, actor))
    }

    async fn count_claim_attempt(&self, id: u64) -> Result<u32> {
        delegate!(self.count_claim_attempt(id))
    }
}

#[async_trait]
impl TelemetryStore for AnyStore {
    async fn commit_ingest(
        &self,
        items: std::sync::Arc<[IngestItem]>,
        outbox: bool,
    ) -> Result<Vec<ItemOutcome>> {
        delegate!(self.commit_ingest(items, outbox))
    }

    async fn query_series(&self, query: &SeriesQuery) -> Result<Series> {
        delegate!(self.query_series(query))
    }

    async fn export_points(
        &self,
        filter: &PointFilter,
        after: Option<PointCursor>,
        limit: u32,
    ) -> Result<(Vec<PointRecord>, Option<PointCursor>)> {
        delegate!(self.export_points(filter, after, limit))
    }

    async fn prune(
        &self,
        raw_before_ms: i64,
        minute_before_ms: i64,
        hour_before_ms: Option<i64>,
        presence_before_ms: i64,
    ) -> Result<Pruned> {
        delegate!(self.prune(
            raw_before_ms,
            minute_before_ms,
            hour_before_ms,
            presence_before_ms
        ))
    }

    async fn oldest_point(&self) -> Result<Option<i64>> {
        delegate!(self.oldest_point())
    }

    async fn rejected(&self, device: Option<&DeviceId>, limit: u32) -> Result<Vec<RejectedRecord>> {
        delegate!(self.rejected(device, limit))
    }

    async fn device_telemetry(&self, device: &DeviceId) -> Result<DeviceTelemetryStats> {
        delegate!(self.device_telemetry(device))
    }

    async fn presence_history(
        &self,
        device: &DeviceId,
        limit: u32,
    ) -> Result<Vec<PresenceHistoryRecord>> {
        delegate!(self.presence_history(device, limit))
    }

    async fn reported_state(&self, device: &DeviceId) -> Result<Option<(serde_json::Value, i64)>> {
        delegate!(self.reported_state(device))
    }

    async fn metric_names(&self, limit: u32) -> Result<Vec<String>> {
        delegate!(self.metric_names(limit))
    }

    async fn readings_per_minute(&self, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, u64)>> {
        delegate!(self.readings_per_minute(from_ms, to_ms))
    }

    async fn outbox_peek(&self, limit: u32) -> Result<Vec<(i64, Vec<PointRecord>)>> {
        delegate!(self.outbox_peek(limit))
    }

    async fn outbox_ack(&self, upto: i64) -> Result<()> {
        delegate!(self.outbox_ack(upto))
    }

    async fn outbox_failed(&self, id: i64) -> Result<()> {
        delegate!(self.outbox_failed(id))
    }
}

#[async_trait]
impl crate::UserStore for AnyStore {
    async fn owner_exists(&self) -> Result<bool> {
        delegate!(self.owner_exists())
    }

    async fn issue_setup_token(
        &self,
        token_hash: &str,
        now: time::OffsetDateTime,
        expires_at: time::OffsetDateTime,
        actor: &Actor,
    ) -> Result<()> {
        delegate!(self.issue_setup_token(token_hash, now, expires_at, actor))
    }

    async fn complete_setup(
        &self,
        token_hash: &str,
        owner: crate::NewUser,
        session: crate::NewSession,
        actor: &Actor,
    ) -> Result<(crate::User, crate::Session)> {
        delegate!(self.complete_setup(token_hash, owner, session, actor))
    }

    async fn create_user(&self, user: crate::NewUser, actor: &Actor) -> Result<crate::User> {
        delegate!(self.create_user(user, actor))
    }

    async fn user(&self, id: &str) -> Result<Option<crate::User>> {
        delegate!(self.user(id))
    }

    async fn user_by_name(&self, name: &str) -> Result<Option<crate::User>> {
        delegate!(self.user_by_name(name))
    }

    async fn users(&self) -> Result<Vec<crate::User>> {
        delegate!(self.users())
    }

    async fn accept_invite(
        &self,
        invite_hash: &str,
        password_hash: &str,
        now: time::OffsetDateTime,
        actor: &Actor,
    ) -> Result<crate::User> {
        delegate!(self.accept_invite(invite_hash, password_hash, now, actor))
    }

    async fn update_user(
        &self,
        id: &str,
        change: crate::UserChange,
        now: time::OffsetDateTime,
        actor: &Actor,
    ) -> Result<crate::User> {
        delegate!(self.update_user(id, change, now, actor))
    }

    async fn record_login_failure(
        &self,
        user_id: &str,
        now: time::OffsetDateTime,
        policy: crate::LockoutPolicy,
        actor: &Actor,
    ) -> Result<crate::LoginFailure> {
        delegate!(self.record_login_failure(user_id, now, policy, actor))
    }

    async fn create_session(
        &self,
        session: crate::NewSession,
        actor: &Actor,
    ) -> Result<crate::Session> {
        delegate!(self.create_session(session, actor))
    }

    async fn session(&self, id_hash: &str) -> Result<Option<crate::Session>> {
        delegate!(self.session(id_hash))
    }

    async fn touch_session(
        &self,
        id_hash: &str,
        now: time::OffsetDateTime,
        idle_expires_at: time::OffsetDateTime,
    ) -> Result<()> {
        delegate!(self.touch_session(id_hash, now, idle_expires_at))
    }

    async fn end_session(&self, id_hash: &str) -> Result<()> {
        delegate!(self.end_session(id_hash))
    }

    async fn end_all_sessions(&self, user_id: &str, actor: &Actor) -> Result<u64> {
        delegate!(self.end_all_sessions(user_id, actor))
    }

    async fn sessions_of(&self, user_id: &str) -> Result<Vec<crate::Session>> {
        delegate!(self.sessions_of(user_id))
    }

    async fn create_api_token(
        &self,
        token: crate::NewApiToken,
        actor: &Actor,
    ) -> Result<crate::ApiToken> {
        delegate!(self.create_api_token(token, actor))
    }

    async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<crate::ApiToken>> {
        delegate!(self.api_token_by_hash(token_hash))
    }

    async fn api_tokens(&self, created_by: Option<&str>) -> Result<Vec<crate::ApiToken>> {
        delegate!(self.api_tokens(created_by))
    }

    async fn revoke_api_token(
        &self,
        id: &str,
        now: time::OffsetDateTime,
        actor: &Actor,
    ) -> Result<crate::ApiToken> {
        delegate!(self.revoke_api_token(id, now, actor))
    }

    async fn touch_api_token(&self, id: &str, now: time::OffsetDateTime) -> Result<()> {
        delegate!(self.touch_api_token(id, now))
    }
}

#[async_trait]
impl crate::FirmwareStore for AnyStore {
    async fn add_firmware_key(
        &self,
        key: crate::NewFirmwareKey,
        actor: &Actor,
    ) -> Result<crate::FirmwareKey> {
        delegate!(self.add_firmware_key(key, actor))
    }

    async fn firmware_keys(&self) -> Result<Vec<crate::FirmwareKey>> {
        delegate!(self.firmware_keys())
    }

    async fn remove_firmware_keys(
        &self,
        names: &[String],
        actor: &Actor,
    ) -> Result<Vec<crate::FirmwareKey>> {
        delegate!(self.remove_firmware_keys(names, actor))
    }

    async fn add_firmware(
        &self,
        firmware: crate::NewFirmware,
        actor: &Actor,
    ) -> Result<crate::Firmware> {
        delegate!(self.add_firmware(firmware, actor))
    }

    async fn list_firmware(&self) -> Result<Vec<crate::Firmware>> {
        delegate!(self.list_firmware())
    }

    async fn firmware(&self, id: u64) -> Result<Option<crate::Firmware>> {
        delegate!(self.firmware(id))
    }
}

#[async_trait]
impl crate::AlertStore for AnyStore {
    async fn add_alert_channel(
        &self,
        c: crate::NewAlertChannel,
        actor: &Actor,
    ) -> Result<crate::AlertChannel> {
        delegate!(self.add_alert_channel(c, actor))
    }

    async fn alert_channels(&self) -> Result<Vec<crate::AlertChannel>> {
        delegate!(self.alert_channels())
    }

    async fn alert_channel_secrets(&self, id: u64) -> Result<Option<crate::ChannelSecrets>> {
        delegate!(self.alert_channel_secrets(id))
    }

    async fn remove_alert_channel(&self, name: &str, actor: &Actor) -> Result<crate::AlertChannel> {
        delegate!(self.remove_alert_channel(name, actor))
    }

    async fn add_alert_rule(
        &self,
        r: crate::NewAlertRule,
        actor: &Actor,
    ) -> Result<crate::AlertRule> {
        delegate!(self.add_alert_rule(r, actor))
    }

    async fn alert_rules(&self) -> Result<Vec<crate::AlertRule>> {
        delegate!(self.alert_rules())
    }

    async fn remove_alert_rule(&self, name: &str, actor: &Actor) -> Result<crate::AlertRule> {
        delegate!(self.remove_alert_rule(name, actor))
    }

    async fn fire_alert(
        &self,
        rule_id: u64,
        subject: &str,
        at: time::OffsetDateTime,
        value: Option<f64>,
    ) -> Result<Option<crate::Alert>> {
        delegate!(self.fire_alert(rule_id, subject, at, value))
    }

    async fn resolve_alert(
        &self,
        rule_id: u64,
        subject: &str,
        at: time::OffsetDateTime,
        value: Option<f64>,
    ) -> Result<Option<crate::Alert>> {
        delegate!(self.resolve_alert(rule_id, subject, at, value))
    }

    async fn firing_alerts(&self) -> Result<Vec<crate::Alert>> {
        delegate!(self.firing_alerts())
    }

    async fn alerts(&self, query: &crate::AlertQuery) -> Result<Vec<crate::Alert>> {
        delegate!(self.alerts(query))
    }

    async fn alert(&self, id: u64) -> Result<Option<crate::Alert>> {
        delegate!(self.alert(id))
    }

    async fn acknowledge_alert(&self, id: u64, actor: &Actor) -> Result<crate::Alert> {
        delegate!(self.acknowledge_alert(id, actor))
    }

    async fn due_deliveries(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<crate::Delivery>> {
        delegate!(self.due_deliveries(now, limit))
    }

    async fn next_delivery_due(&self) -> Result<Option<time::OffsetDateTime>> {
        delegate!(self.next_delivery_due())
    }

    async fn record_attempt(&self, id: u64, outcome: crate::AttemptOutcome) -> Result<()> {
        delegate!(self.record_attempt(id, outcome))
    }

    async fn dead_deliveries(&self, limit: u32) -> Result<Vec<crate::Delivery>> {
        delegate!(self.dead_deliveries(limit))
    }

    async fn retry_delivery(&self, id: u64, actor: &Actor) -> Result<crate::Delivery> {
        delegate!(self.retry_delivery(id, actor))
    }
}

#[async_trait]
impl crate::NotificationStore for AnyStore {
    async fn add_notification(
        &self,
        notification: crate::NewNotification,
        actor: &Actor,
    ) -> Result<crate::Notification> {
        delegate!(self.add_notification(notification, actor))
    }

    async fn notifications(
        &self,
        user_id: &str,
        query: &crate::NotificationQuery,
    ) -> Result<crate::NotificationPage> {
        delegate!(self.notifications(user_id, query))
    }

    async fn unread_notifications(&self, user_id: &str) -> Result<u64> {
        delegate!(self.unread_notifications(user_id))
    }

    async fn mark_notifications_read(
        &self,
        user_id: &str,
        up_to: Option<u64>,
        at: time::OffsetDateTime,
        actor: &Actor,
    ) -> Result<u64> {
        delegate!(self.mark_notifications_read(user_id, up_to, at, actor))
    }
}

#[async_trait]
impl crate::CampaignStore for AnyStore {
    async fn create_campaign(
        &self,
        campaign: crate::NewCampaign,
        actor: &Actor,
    ) -> Result<crate::Campaign> {
        delegate!(self.create_campaign(campaign, actor))
    }

    async fn campaign(&self, id: u64) -> Result<Option<crate::Campaign>> {
        delegate!(self.campaign(id))
    }

    async fn list_campaigns(
        &self,
        statuses: &[crate::campaigns::CampaignStatus],
    ) -> Result<Vec<crate::Campaign>> {
        delegate!(self.list_campaigns(statuses))
    }

    async fn campaign_entries(
        &self,
        id: u64,
        query: &crate::EntryQuery,
    ) -> Result<crate::EntryPage> {
        delegate!(self.campaign_entries(id, query))
    }

    async fn campaign_waves(&self, id: u64) -> Result<Vec<crate::campaigns::WaveProgress>> {
        delegate!(self.campaign_waves(id))
    }

    async fn change_campaign(
        &self,
        id: u64,
        change: crate::CampaignChange,
        actor: &Actor,
    ) -> Result<crate::Campaign> {
        delegate!(self.change_campaign(id, change, actor))
    }

    async fn start_wave(
        &self,
        id: u64,
        wave: u32,
        actor: &Actor,
    ) -> Result<Option<Vec<crate::CampaignEntry>>> {
        delegate!(self.start_wave(id, wave, actor))
    }

    async fn move_entry(&self, m: crate::EntryMove) -> Result<Option<crate::CampaignEntry>> {
        delegate!(self.move_entry(m))
    }

    async fn expire_entries(
        &self,
        now: time::OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<crate::CampaignEntry>> {
        delegate!(self.expire_entries(now, limit))
    }

    async fn active_entry(
        &self,
        device: &DeviceId,
        version: &str,
    ) -> Result<Option<crate::CampaignEntry>> {
        delegate!(self.active_entry(device, version))
    }

    async fn open_entries_of(&self, device: &DeviceId) -> Result<Vec<crate::CampaignEntry>> {
        delegate!(self.open_entries_of(device))
    }

    async fn pending_cancels(&self, limit: u32) -> Result<Vec<crate::CampaignEntry>> {
        delegate!(self.pending_cancels(limit))
    }

    async fn cancel_sent(&self, campaign_id: u64, device: &DeviceId) -> Result<bool> {
        delegate!(self.cancel_sent(campaign_id, device))
    }
}

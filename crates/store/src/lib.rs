//! Rampart's storage: the [`Store`] trait and its two implementations,
//! [`SqliteStore`] (the default, one file in the data dir) and
//! [`PostgresStore`] (for scale-out), which behave identically.
//!
//! This crate owns the tables (identities, devices, certificates, the audit
//! log, the change feed) and every query on them. Callers never see SQL.
//! It must not make policy decisions (who may revoke what, what a payload
//! means): it records what the caller decided, atomically, with an audit row.
//!
//! Every state-changing method takes an [`Actor`] and writes its audit row and
//! its change-feed row in the same transaction as the change itself, so a
//! change is never visible without its audit trail, and a running `serve`
//! learns of it through [`Store::changes_since`] whichever process made it.

mod any;
mod audit;
pub mod campaigns;
mod enrollment;
mod error;
pub mod firmware;
pub mod fleet;
mod lifecycle;
mod migrations;
mod millis;
mod model;
mod mqtt;
pub mod postgres;
mod records;
pub mod sqlite;
pub mod telemetry;
mod users;

use async_trait::async_trait;
use rampart_pki::RevocationReason;
use rampart_proto::DeviceId;

pub use any::AnyStore;
pub use audit::{
    AuditBreak, AuditEntry, AuditKey, AuditRecord, AuditReport, AuditSearch, read_key_file,
};
pub use campaigns::{
    BusyDevice, Campaign, CampaignChange, CampaignEntry, CampaignStore, CampaignTarget, EntryMove,
    EntryPage, EntryQuery, NewCampaign, PauseReason,
};
pub use enrollment::{
    Enrolled, Enrollment, EnrollmentRefusal, EnrollmentToken, IssueCertificate, NewEnrollmentToken,
    TokenState,
};
pub use error::StoreError;
pub use firmware::{Firmware, FirmwareKey, FirmwareStore, NewFirmware, NewFirmwareKey};
pub use fleet::{DevicePage, DeviceQuery, DeviceSort, FleetSummary, IdMatch};
pub use model::{
    Actor, CertificateRecord, CertificateStatus, Change, ChangeKind, Claim, ClaimStatus, Device,
    DeviceFilter, DeviceState, IdentityKind, MAX_OWNER_NAME, NewCertificate, NewClaim, NewDevice,
    NewService, Owner, OwnerError, RevokedCertificate, Service, ServiceState,
};
pub use mqtt::{MqttOp, MqttSnapshot, StoredMessage, StoredSession, StoredSubscription};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use telemetry::TelemetryStore;
pub use users::{
    ApiToken, LockoutPolicy, LoginFailure, NewApiToken, NewSession, NewUser, Role, Session,
    SetupRefusal, User, UserChange, UserStore,
};

/// How many change-feed rows are kept; a follower further behind
/// resynchronises from the registry.
pub(crate) const CHANGES_RETAINED: i64 = 10_000;

/// Result type of every store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The storage API every part of Rampart uses, implemented by SQLite and
/// PostgreSQL with the same semantics (one test suite runs against both).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Registers a new device with its first certificate. Fails with
    /// [`StoreError::IdTaken`] if the id is used by any identity.
    async fn create_device(&self, device: NewDevice, actor: &Actor) -> Result<Device>;

    /// One device, or `None`.
    async fn device(&self, id: &DeviceId) -> Result<Option<Device>>;

    /// Devices matching `filter`, ordered by id.
    async fn list_devices(&self, filter: &DeviceFilter) -> Result<Vec<Device>>;

    /// One page of the devices matching `query`, in its order, with the
    /// number of devices matching on every page (the console's list).
    async fn query_devices(&self, query: &DeviceQuery) -> Result<DevicePage>;

    /// Device counts for the fleet overview.
    async fn fleet_summary(&self) -> Result<FleetSummary>;

    /// Runs a trivial query: the database answers (readiness checks).
    async fn ping(&self) -> Result<()>;

    /// Revokes the device's current certificate and marks the device revoked.
    async fn revoke_device(
        &self,
        id: &DeviceId,
        reason: RevocationReason,
        actor: &Actor,
    ) -> Result<Device>;

    /// Blocks (`disabled = true`) or unblocks a device without touching its
    /// certificate. A revoked device cannot be enabled again.
    async fn set_device_disabled(
        &self,
        id: &DeviceId,
        disabled: bool,
        actor: &Actor,
    ) -> Result<Device>;

    /// Removes the device; its current certificate is revoked as
    /// `cessation-of-operation` so that it stays on the CRL.
    async fn delete_device(&self, id: &DeviceId, actor: &Actor) -> Result<()>;

    /// Replaces the device's claim code hash (the old code becomes void).
    async fn set_claim_code(
        &self,
        id: &DeviceId,
        claim_code_hash: &str,
        actor: &Actor,
    ) -> Result<Device>;

    /// Records that a device connected (`online`) or went away, and when
    /// the broker last heard from it. Not audited: presence is telemetry.
    async fn record_presence(
        &self,
        id: &DeviceId,
        online: bool,
        at: time::OffsetDateTime,
    ) -> Result<()>;

    /// Registers a service identity with its certificate. Fails with
    /// [`StoreError::IdTaken`] if any identity has the name.
    async fn create_service(&self, service: NewService, actor: &Actor) -> Result<Service>;

    /// One service, or `None`.
    async fn service(&self, id: &DeviceId) -> Result<Option<Service>>;

    /// All services, ordered by name.
    async fn list_services(&self) -> Result<Vec<Service>>;

    /// Revokes a service's certificate and marks it revoked.
    async fn revoke_service(
        &self,
        id: &DeviceId,
        reason: RevocationReason,
        actor: &Actor,
    ) -> Result<Service>;

    /// Stores a new enrollment token (its hash only), with its audit row.
    async fn create_enrollment_token(
        &self,
        token: NewEnrollmentToken,
        actor: &Actor,
    ) -> Result<EnrollmentToken>;

    /// Every enrollment token, oldest first.
    async fn enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>>;

    /// The token with this hash, or `None`.
    async fn enrollment_token_by_hash(&self, token_hash: &str) -> Result<Option<EnrollmentToken>>;

    /// Revokes a token: it registers nothing more. Revoking a revoked token
    /// is refused as [`StoreError::InvalidTokenState`]; an unknown id is
    /// [`StoreError::TokenNotFound`].
    async fn revoke_enrollment_token(&self, id: &str, actor: &Actor) -> Result<EnrollmentToken>;

    /// One use of an enrollment token, in one transaction: the token is
    /// checked ([`EnrollmentToken::check_use`]), the id must be free, then
    /// the certificate is issued, the device registered as `unbound` (owned
    /// by the token's owner), the use counted and the audit and change-feed
    /// rows appended. A refusal ([`StoreError::EnrollmentRefused`],
    /// [`StoreError::IdTaken`]) changes nothing and issues no certificate.
    async fn enroll_device(&self, enrollment: Enrollment, actor: &Actor) -> Result<Enrolled>;

    /// Applies a batch of broker state changes in one durable transaction.
    async fn mqtt_apply(&self, ops: Vec<MqttOp>) -> Result<()>;

    /// Loads the broker's durable state.
    async fn mqtt_load(&self) -> Result<MqttSnapshot>;

    /// One certificate by serial (lowercase hex).
    async fn certificate(&self, serial: &str) -> Result<Option<CertificateRecord>>;

    /// Every revoked certificate, for the CRL.
    async fn revoked_certificates(&self) -> Result<Vec<RevokedCertificate>>;

    /// Returns the next CRL number (strictly increasing, starting at 1).
    async fn next_crl_number(&self) -> Result<u64>;

    /// Appends an audit row for an action that changed nothing in the store
    /// (CA export, init, ...).
    async fn record_audit(&self, entry: AuditEntry) -> Result<AuditRecord>;

    /// Audit rows with `seq > after`, oldest first, at most `limit`.
    async fn audit_log(&self, after: u64, limit: u32) -> Result<Vec<AuditRecord>>;

    /// Audit rows matching `search`, newest first, at most `search.limit`:
    /// the console's filtered, paged view, answered by the database.
    async fn search_audit(&self, search: &AuditSearch) -> Result<Vec<AuditRecord>>;

    /// Recomputes the audit chain and reports the first broken row.
    async fn verify_audit(&self) -> Result<AuditReport>;

    /// Change-feed rows with `seq > after`, oldest first.
    async fn changes_since(&self, after: u64) -> Result<Vec<Change>>;

    /// The newest change-feed sequence number (0 when empty).
    async fn latest_change(&self) -> Result<u64>;

    /// Records a certificate issued by renewal as the device's `pending`
    /// one. A pending certificate it replaces is superseded and revoked as
    /// `superseded`; returns that one's serial. Refused unless the device
    /// may connect.
    async fn add_pending_certificate(
        &self,
        cert: NewCertificate,
        actor: &Actor,
    ) -> Result<Option<String>>;

    /// Makes the pending certificate `serial` its device's current one, at
    /// once: the previous current certificate becomes `superseded` and is
    /// revoked as `superseded` (so it goes on the CRL), and the device row
    /// names the new one. A certificate that is current already is returned
    /// as it is (two connections racing with the same new certificate).
    async fn activate_certificate(&self, serial: &str, actor: &Actor) -> Result<CertificateRecord>;

    /// Every certificate issued to `id`, oldest first.
    async fn certificates_of(&self, id: &DeviceId) -> Result<Vec<CertificateRecord>>;

    /// The device's claim code hash (`None` once consumed by a binding).
    async fn claim_code_hash(&self, id: &DeviceId) -> Result<Option<String>>;

    /// Records a pending claim; a pending claim of the same device is
    /// superseded. Refused unless the device is unbound and its claim code
    /// hash is still `claim.claim_code_hash`.
    async fn start_claim(&self, claim: NewClaim, actor: &Actor) -> Result<Claim>;

    /// One claim by number.
    async fn claim(&self, id: u64) -> Result<Option<Claim>>;

    /// The device's newest claim, whatever its status.
    async fn latest_claim(&self, device: &DeviceId) -> Result<Option<Claim>>;

    /// Binds the claim's device to its owner: state `bound`, owner set,
    /// claim code consumed, claim `bound`. Refused unless the claim is
    /// pending and the device unbound.
    async fn complete_claim(&self, id: u64, actor: &Actor) -> Result<Device>;

    /// Ends a pending claim as `expired` or `refused`, with an error code.
    async fn end_claim(
        &self,
        id: u64,
        status: ClaimStatus,
        reason: &str,
        actor: &Actor,
    ) -> Result<Claim>;

    /// Counts one confirmation with a wrong nonce; returns the count so far.
    async fn count_claim_attempt(&self, id: u64) -> Result<u32>;
}

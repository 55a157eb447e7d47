//! Store errors, worded for the person who will read them.

use rampart_proto::DeviceId;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The id is already used by a device or service.
    #[error("id '{0}' is already registered; choose another id or delete the existing one")]
    IdTaken(DeviceId),
    /// No device has this id.
    #[error("no device with id '{0}'")]
    NotFound(DeviceId),
    /// No service has this name.
    #[error("no service named '{0}'")]
    ServiceNotFound(DeviceId),
    /// The change is not allowed in the device's current state.
    #[error("'{id}' is {state}: {why}")]
    InvalidState {
        /// The device.
        id: DeviceId,
        /// Its current state.
        state: String,
        /// What cannot be done and why.
        why: &'static str,
    },
    /// The certificate is not in a status that allows the change.
    #[error("certificate {serial} is {status}: {why}")]
    CertificateState {
        /// Its serial.
        serial: String,
        /// Its status.
        status: String,
        /// What cannot be done and why.
        why: &'static str,
    },
    /// No certificate has this serial.
    #[error("no certificate with serial '{0}'")]
    CertificateNotFound(String),
    /// No claim has this number.
    #[error("no claim number {0}")]
    ClaimNotFound(u64),
    /// The claim is not pending any more.
    #[error("claim {id} of '{device}' is {status}: {why}")]
    ClaimState {
        /// The claim.
        id: u64,
        /// Its device.
        device: DeviceId,
        /// Its status.
        status: String,
        /// What cannot be done and why.
        why: &'static str,
    },
    /// The claim code was rotated between its check and the claim.
    #[error(
        "the claim code of '{0}' changed while the claim was being made; use the code on the current label"
    )]
    ClaimCodeChanged(DeviceId),
    /// No enrollment token has this id.
    #[error("no enrollment token with id '{0}'; `rampart enroll-token list` shows them")]
    TokenNotFound(String),
    /// The token cannot make that change in its current state.
    #[error("enrollment token '{id}' is {state}: {why}")]
    InvalidTokenState {
        /// The token's id.
        id: String,
        /// Its current state.
        state: crate::TokenState,
        /// What cannot be done and why.
        why: &'static str,
    },
    /// An enrollment token may not register the device.
    #[error("{0}")]
    EnrollmentRefused(#[from] crate::EnrollmentRefusal),
    /// The certificate of an enrolling device could not be issued.
    #[error("cannot issue the device certificate: {0}")]
    Issue(#[source] rampart_pki::PkiError),
    /// No console user has this id or name.
    #[error("no user '{0}'")]
    UserNotFound(String),
    /// A console user with this name exists already.
    #[error("a user named '{0}' exists already; choose another name")]
    UserNameTaken(String),
    /// The change is not allowed for this user.
    #[error("user '{name}': {why}")]
    UserState {
        /// The user's name.
        name: String,
        /// What cannot be done and why.
        why: &'static str,
    },
    /// First-start setup was refused.
    #[error("{0}")]
    SetupRefused(crate::users::SetupRefusal),
    /// The invitation is wrong, used or expired.
    #[error(
        "the invitation is not valid (wrong, used or expired); ask an administrator for a new one"
    )]
    InviteInvalid,
    /// No API token has this id, or it is revoked already.
    #[error("no active API token with id '{0}'")]
    ApiTokenNotFound(String),
    /// A firmware key name is not allowed.
    #[error("firmware key name '{0}' must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' or '-'")]
    InvalidFirmwareKeyName(String),
    /// A trusted firmware key has this name or is this key already.
    #[error("{0}")]
    FirmwareKeyExists(String),
    /// No trusted firmware key has this name.
    #[error("no trusted firmware key named '{0}'; `rampart firmware key list` shows them")]
    FirmwareKeyNotFound(String),
    /// The key that signed a bundle is not trusted (any more).
    #[error("firmware signing key {0} is not trusted; add it with `rampart firmware key add`")]
    FirmwareKeyNotTrusted(String),
    /// The device type already has firmware with this version.
    #[error(
        "firmware {version} for device type '{device_type}' was uploaded already (id {id}); versions are never replaced, sign a new version"
    )]
    FirmwareExists {
        /// The device type.
        device_type: String,
        /// The version.
        version: String,
        /// The existing upload.
        id: u64,
    },
    /// No uploaded firmware has this number.
    #[error("no uploaded firmware with id {0}; `rampart firmware list` shows them")]
    FirmwareNotFound(u64),
    /// No campaign has this number.
    #[error("no campaign with id {0}; `rampart campaign list` shows them")]
    CampaignNotFound(u64),
    /// Campaign parameters refused, or nothing to update.
    #[error("{0}")]
    InvalidCampaign(String),
    /// A campaign's status does not allow the change.
    #[error("campaign {id} is {status}: {why}")]
    CampaignStatus {
        /// The campaign.
        id: u64,
        /// Its status.
        status: String,
        /// What the change needs.
        why: String,
    },
    /// Devices of a new campaign are in an open entry of another campaign
    /// (`device_busy`).
    #[error("{}", crate::campaigns::busy_message(.0))]
    DeviceBusy(Vec<crate::campaigns::BusyDevice>),
    /// The database belongs to something else, or is damaged.
    #[error("{path} is not a Rampart database: {why}")]
    Foreign {
        /// Path of the database file, or the PostgreSQL URL without its password.
        path: String,
        /// What gave it away.
        why: String,
    },
    /// The database was written by a newer Rampart.
    #[error(
        "database schema version {found} is newer than this binary supports ({supported}); upgrade rampart"
    )]
    TooNew {
        /// Version found in the file.
        found: i64,
        /// Newest version this binary knows.
        supported: i64,
    },
    /// Another process held the database (or a lock in it) longer than the
    /// busy timeout.
    #[error(
        "the database stayed busy past store.busy_timeout: another process holds a long transaction; retry, or raise the timeout"
    )]
    Busy,
    /// A stored value could not be read back (a damaged or hand-edited row).
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// An I/O error outside SQLite (the audit head file).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The database server cannot be reached, or refused the connection.
    #[error(
        "cannot use the database at {target}: {why}; check that the server is running and that store.url is right"
    )]
    Unavailable {
        /// The PostgreSQL URL, without its password.
        target: String,
        /// What went wrong.
        why: String,
    },
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
}

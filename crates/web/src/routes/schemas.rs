//! OpenAPI schemas of the answers that handlers build as JSON values
//! (`json!`) or that carry store types, which know nothing of OpenAPI.
//! They describe, field for field, what the handlers send; the web part's
//! integration tests compare real answers with them (`openapi` tests).
//! Answers that are Rust types of their own (`DeviceView`, `ClaimView`,
//! notifications, ...) derive their schema where they are defined.

// Description-only types: read by utoipa, never built.
#![allow(dead_code)]

use utoipa::ToSchema;

/// A console user (`GET /api/v1/users`, `me`, invitations). Times are
/// RFC 3339.
#[derive(ToSchema)]
#[schema(as = User)]
pub(crate) struct UserSchema {
    /// Stable random id.
    id: String,
    /// Login name, unique regardless of case.
    name: String,
    /// Contact address.
    email: Option<String>,
    /// `owner`, `admin`, `operator` or `viewer`.
    #[schema(example = "operator")]
    role: String,
    /// A disabled user cannot sign in.
    disabled: bool,
    /// Whether sign-in asks for a TOTP code.
    mfa_enabled: bool,
    /// Failed sign-ins since the last success or lockout.
    failed_logins: u32,
    /// Sign-in refused until then.
    #[schema(format = DateTime)]
    locked_until: Option<String>,
    /// An unused invitation expires then.
    #[schema(format = DateTime)]
    invite_expires_at: Option<String>,
    /// Who created the user.
    created_by: String,
    /// When.
    #[schema(format = DateTime)]
    created_at: String,
    /// Last change.
    #[schema(format = DateTime)]
    updated_at: String,
}

/// `{"user"}`.
#[derive(ToSchema)]
pub(crate) struct UserBody {
    /// The user.
    user: UserSchema,
}

/// A signed-in session: sign-in and first-start setup.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct SignedInBody {
    /// The user signed in.
    user: UserSchema,
    /// Send it in `X-CSRF-Token` with every change made with the cookie.
    csrf_token: String,
    /// The session's absolute end, Unix seconds.
    expires_at: i64,
}

/// `GET /api/v1/me`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct MeBody {
    /// The caller.
    user: UserSchema,
    /// The role in force (a token's may be lower than its user's).
    role: String,
    /// `session` or `api_token`.
    #[schema(example = "session")]
    via: String,
    /// The session's CSRF token; `null` with an API token.
    csrf_token: Option<String>,
    /// An owner or admin who must enrol MFA first.
    mfa_enrollment_required: bool,
}

/// One session of the caller.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct SessionSchema {
    /// Unix seconds.
    created_at: i64,
    /// Unix seconds.
    last_used_at: i64,
    /// Where it signed in from.
    ip: String,
    /// The browser's `User-Agent`.
    user_agent: String,
    /// Whether it is the session of this request.
    current: bool,
}

/// `GET /api/v1/me/sessions`.
#[derive(ToSchema)]
pub(crate) struct SessionsBody {
    /// Every live session of the caller.
    sessions: Vec<SessionSchema>,
}

/// `POST /api/v1/session/logout-everywhere`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct SessionsEndedBody {
    /// How many sessions ended.
    sessions_ended: u64,
}

/// `POST /api/v1/me/mfa`: TOTP enrollment, to confirm with a code.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct MfaStartBody {
    /// The shared secret, base32.
    secret: String,
    /// `otpauth://totp/...` for authenticator apps.
    otpauth_uri: String,
    /// The URI as a QR code, SVG.
    qr_svg: String,
}

/// One user in the list.
#[derive(ToSchema)]
pub(crate) struct UserListEntry {
    /// The user.
    user: UserSchema,
    /// Whether the invitation is still unused.
    invited: bool,
}

/// `GET /api/v1/users`.
#[derive(ToSchema)]
pub(crate) struct UsersBody {
    /// Every user.
    users: Vec<UserListEntry>,
}

/// `POST /api/v1/users`: the invitation, shown once.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct InvitedBody {
    /// The invited user.
    user: UserSchema,
    /// The one-time invitation token.
    invite_token: String,
    /// `/invite?token=...` to hand over.
    invite_path: String,
}

/// An API token (never the secret).
#[derive(ToSchema)]
#[schema(as = ApiToken)]
#[schema(rename_all = "camelCase")]
pub(crate) struct ApiTokenSchema {
    /// Public id.
    id: String,
    /// What it is for.
    name: String,
    /// Its role (never above its creator's current one).
    role: String,
    /// The creating user's id.
    created_by: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    created_at: String,
    /// RFC 3339; `null`: no expiry.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    last_used_at: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    revoked_at: Option<String>,
}

/// `GET /api/v1/api-tokens`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct ApiTokensBody {
    /// The tokens.
    api_tokens: Vec<ApiTokenSchema>,
}

/// `DELETE /api/v1/api-tokens/{id}`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct ApiTokenBody {
    /// The token, revoked.
    api_token: ApiTokenSchema,
}

/// `POST /api/v1/api-tokens`: the secret, shown once.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct ApiTokenCreatedBody {
    /// The token.
    api_token: ApiTokenSchema,
    /// `rmp_api_...`: send it as `Authorization: Bearer ...`.
    token: String,
}

/// An enrollment token (never the secret).
#[derive(ToSchema)]
#[schema(as = EnrollmentToken)]
pub(crate) struct EnrollmentTokenSchema {
    /// Public id.
    id: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    created_at: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    expires_at: String,
    /// Devices it may register.
    uses_allowed: u32,
    /// Devices it registered.
    uses_used: u32,
    /// Device ids must start with this.
    id_prefix: Option<String>,
    /// Owner given to the devices it registers (`user:NAME`).
    owner: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    revoked_at: Option<String>,
    /// Who created it.
    created_by: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    last_used_at: Option<String>,
}

/// One enrollment token in the list.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct EnrollTokenListEntry {
    /// The token.
    token: EnrollmentTokenSchema,
    /// `active`, `expired`, `used-up` or `revoked`.
    state: String,
    /// Registrations left.
    uses_left: u32,
}

/// `GET /api/v1/enroll-tokens`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct EnrollTokensBody {
    /// Every token, oldest first.
    enroll_tokens: Vec<EnrollTokenListEntry>,
}

/// `POST /api/v1/enroll-tokens`: the secret, shown once.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct EnrollTokenCreatedBody {
    /// The token.
    enroll_token: EnrollmentTokenSchema,
    /// `rmp_enr_...`.
    token: String,
}

/// `DELETE /api/v1/enroll-tokens/{id}`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct EnrollTokenBody {
    /// The token, revoked.
    enroll_token: EnrollmentTokenSchema,
}

/// A service identity.
#[derive(ToSchema)]
#[schema(as = Service)]
pub(crate) struct ServiceSchema {
    /// Its name (the certificate's CN).
    id: String,
    /// `active` or `revoked`.
    state: String,
    /// Certificate serial, lowercase hex.
    serial: String,
    /// SHA-256 of the certificate, lowercase hex.
    fingerprint: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    not_after: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    created_at: String,
}

/// `GET /api/v1/services`.
#[derive(ToSchema)]
pub(crate) struct ServicesBody {
    /// Every service, by name.
    services: Vec<ServiceSchema>,
}

/// `POST /api/v1/services/{name}/revoke`.
#[derive(ToSchema)]
pub(crate) struct ServiceBody {
    /// The service, revoked.
    service: ServiceSchema,
}

/// `POST /api/v1/services`: the credentials, shown once.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct ServiceCreatedBody {
    /// The service.
    service: ServiceSchema,
    /// The private key, PEM (not kept by the server).
    key_pem: String,
    /// Its certificate, PEM.
    certificate_pem: String,
    /// The CA chain to trust the broker with, PEM.
    ca_pem: String,
}

/// One audit row.
#[derive(ToSchema)]
#[schema(as = AuditRecord)]
pub(crate) struct AuditRecordSchema {
    /// Position in the chain, from 1 without gaps.
    seq: u64,
    /// RFC 3339.
    #[schema(format = DateTime)]
    at: String,
    /// Who.
    actor: String,
    /// From where.
    source: String,
    /// What (`device.revoke`).
    action: String,
    /// To what.
    subject: Option<String>,
    /// Details.
    #[schema(value_type = Object)]
    detail: serde_json::Value,
    /// The previous row's mac.
    prev_mac: String,
    /// This row's mac.
    mac: String,
}

/// Where the chain breaks.
#[derive(ToSchema)]
pub(crate) struct AuditBreakSchema {
    /// The first row that fails.
    seq: u64,
    /// What is wrong with it.
    problem: String,
}

/// The chain's verification.
#[derive(ToSchema)]
pub(crate) struct AuditChainSchema {
    /// Rows verified before the first break (all when intact).
    rows: u64,
    /// Whether the chain verified.
    ok: bool,
    /// The first broken row.
    first_break: Option<AuditBreakSchema>,
}

/// `GET /api/v1/audit`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct AuditBody {
    /// Newest first.
    entries: Vec<AuditRecordSchema>,
    /// The `before` of the next (older) page.
    next_before: Option<u64>,
    /// The verification of the chain.
    chain: AuditChainSchema,
}

/// `GET /api/v1/devices`.
#[derive(ToSchema)]
pub(crate) struct DeviceListBody {
    /// One page.
    devices: Vec<crate::devices::DeviceView>,
    /// Devices matching, on all pages.
    total: u64,
    /// The page's offset.
    offset: u32,
    /// The page size.
    limit: u32,
}

/// One bucket of a series.
#[derive(ToSchema)]
pub(crate) struct BucketSchema {
    /// Start, Unix ms.
    start: i64,
    /// Smallest value.
    min: f64,
    /// Largest value.
    max: f64,
    /// Mean.
    avg: f64,
    /// Readings in it.
    count: u64,
    /// Newest value.
    last: f64,
}

/// `GET /api/v1/devices/{id}/telemetry`.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct TelemetryBody {
    /// The device id.
    device: String,
    /// The metric.
    metric: String,
    /// Unix ms.
    from_ms: i64,
    /// Unix ms.
    to_ms: i64,
    /// `raw`, `minute`, `hour` or `day`: the rollup read.
    resolution: String,
    /// Width of a bucket, ms.
    bucket_ms: i64,
    /// Oldest first.
    buckets: Vec<BucketSchema>,
}

/// One connect or disconnect.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub(crate) struct PresenceEventSchema {
    /// Unix ms.
    at_ms: i64,
    /// Connected (true) or gone.
    online: bool,
    /// Why it went away (`keepalive_timeout`, `revoked`, ...).
    reason: Option<String>,
    /// The client's address.
    addr: Option<String>,
}

/// `GET /api/v1/devices/{id}/presence`.
#[derive(ToSchema)]
pub(crate) struct PresenceBody {
    /// The device id.
    device: String,
    /// Newest first.
    events: Vec<PresenceEventSchema>,
}

/// A device's telemetry counters (in a device's detail).
#[derive(ToSchema)]
#[schema(as = DeviceTelemetryStats)]
pub(crate) struct TelemetryStatsSchema {
    /// Readings stored.
    readings: u64,
    /// Replays dropped.
    duplicates: u64,
    /// Payloads refused.
    rejected: u64,
    /// Same `seq`, different payload.
    conflicts: u64,
    /// Newest `seq` stored.
    last_seq: Option<u64>,
    /// Unix ms.
    last_reading_at: Option<i64>,
    /// Unix ms of a counter fault.
    flagged_at: Option<i64>,
    /// Why it is flagged.
    flag_reason: Option<String>,
    /// Metric names seen.
    metrics: Vec<String>,
}

/// An uploaded firmware bundle (`rampart_store::Firmware`) with the name
/// of its key while that key is trusted.
#[derive(ToSchema)]
#[schema(as = Firmware)]
#[schema(rename_all = "camelCase")]
pub(crate) struct FirmwareSchema {
    /// Its number.
    id: u64,
    /// Which kind of device it is for.
    #[schema(example = "rampart-sim")]
    device_type: String,
    /// Semantic version.
    #[schema(example = "1.4.0")]
    version: String,
    /// Anti-rollback counter.
    security_version: u32,
    /// Image size in bytes.
    size: u64,
    /// SHA-256 of the image, lowercase hex.
    sha256: String,
    /// Id of the key that signed it, lowercase hex.
    key_id: String,
    /// The trusted key's name; `null` once the key is no longer trusted.
    key_name: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    uploaded_at: String,
    /// Who uploaded it.
    uploaded_by: String,
}

/// `GET /api/v1/firmware/{id}`: the upload with what was signed.
#[derive(ToSchema)]
#[schema(as = FirmwareDetail)]
#[schema(rename_all = "camelCase")]
pub(crate) struct FirmwareDetailSchema {
    /// Its number.
    id: u64,
    /// Which kind of device it is for.
    device_type: String,
    /// Semantic version.
    version: String,
    /// Anti-rollback counter.
    security_version: u32,
    /// Image size in bytes.
    size: u64,
    /// SHA-256 of the image, lowercase hex.
    sha256: String,
    /// Id of the key that signed it, lowercase hex.
    key_id: String,
    /// The trusted key's name; `null` once the key is no longer trusted.
    key_name: Option<String>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    uploaded_at: String,
    /// Who uploaded it.
    uploaded_by: String,
    /// The manifest bytes as signed, lowercase hex.
    manifest: String,
    /// The Ed25519 signature over the manifest, lowercase hex.
    signature: String,
}

/// `GET /api/v1/firmware`.
#[derive(ToSchema)]
pub(crate) struct FirmwareListBody {
    /// Every upload, newest first.
    firmware: Vec<FirmwareSchema>,
}

/// A public key trusted to sign firmware (`rampart_store::FirmwareKey`).
#[derive(ToSchema)]
#[schema(as = FirmwareKey)]
#[schema(rename_all = "camelCase")]
pub(crate) struct FirmwareKeySchema {
    /// The operator's name for it.
    name: String,
    /// First 8 bytes of SHA-256 of the key, lowercase hex.
    key_id: String,
    /// The Ed25519 public key, lowercase hex.
    public_key: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    added_at: String,
    /// Who added it.
    added_by: String,
}

/// `GET /api/v1/firmware/keys`.
#[derive(ToSchema)]
pub(crate) struct FirmwareKeysBody {
    /// The trusted keys.
    keys: Vec<FirmwareKeySchema>,
}

/// Which devices of the firmware's type a campaign is for: `"all"`,
/// `{"devices": [ids]}` or `{"state": "bound"|"unbound"}`.
#[derive(ToSchema)]
#[schema(as = CampaignTarget)]
#[schema(rename_all = "camelCase")]
pub(crate) enum CampaignTargetSchema {
    /// These devices.
    Devices(Vec<String>),
    /// Devices in this registry state: `bound` or `unbound`.
    State(String),
    /// Every device of the type.
    All,
}

/// Per-state timeouts of a campaign, milliseconds.
#[derive(ToSchema)]
#[schema(as = CampaignTimeouts)]
#[schema(rename_all = "camelCase")]
pub(crate) struct CampaignTimeoutsSchema {
    /// `offered`.
    offered_ms: u64,
    /// `downloading`.
    downloading_ms: u64,
    /// `verifying`.
    verifying_ms: u64,
    /// `pending-reboot`.
    pending_reboot_ms: u64,
    /// `pending-confirm`.
    pending_confirm_ms: u64,
}

/// Entries per state (`rampart_ota::campaign::StateCounts`).
#[derive(ToSchema)]
#[schema(as = CampaignStateCounts)]
#[schema(rename_all = "camelCase")]
pub(crate) struct StateCountsSchema {
    /// `queued`.
    queued: u64,
    /// `offered`.
    offered: u64,
    /// `downloading`.
    downloading: u64,
    /// `verifying`.
    verifying: u64,
    /// `pending-reboot`.
    pending_reboot: u64,
    /// `pending-confirm`.
    pending_confirm: u64,
    /// `succeeded`.
    succeeded: u64,
    /// `failed`.
    failed: u64,
    /// `rolled-back`.
    rolled_back: u64,
    /// `cancelled`.
    cancelled: u64,
}

/// A campaign as stored (`rampart_store::campaigns::Campaign`).
#[derive(ToSchema)]
#[schema(as = Campaign)]
#[schema(rename_all = "camelCase")]
pub(crate) struct CampaignSchema {
    /// Its number.
    id: u64,
    /// Its name.
    name: String,
    /// The firmware rolled out.
    firmware_id: u64,
    /// The firmware's device type.
    device_type: String,
    /// The firmware's version.
    version: String,
    /// The target as given.
    target: CampaignTargetSchema,
    /// Cumulative wave percentages, the last 100.
    #[schema(example = json!([1, 10, 100]))]
    waves: Vec<u8>,
    /// Minimum time between waves, ms.
    soak_ms: u64,
    /// A finished wave below this success share pauses (0 to 1).
    success_threshold: f64,
    /// Failures reaching this share of the offered devices abort (0 to 1).
    failure_threshold: f64,
    /// Per-state timeouts.
    timeouts: CampaignTimeoutsSchema,
    /// `draft`, `running`, `paused`, `completed`, `aborted` or `cancelled`.
    #[schema(example = "running")]
    status: String,
    /// Why, when the engine set it (`success-threshold`, `failure-threshold`).
    status_reason: Option<String>,
    /// The last wave started (0: none yet).
    current_wave: u32,
    /// The last wave whose success check passed or was overridden.
    reviewed_wave: u32,
    /// How many devices it holds.
    devices: u64,
    /// RFC 3339.
    #[schema(format = DateTime)]
    created_at: String,
    /// Who created it.
    created_by: String,
    /// When its status last changed, RFC 3339.
    #[schema(format = DateTime)]
    updated_at: String,
}

/// A campaign with its totals per state (list and creation).
#[derive(ToSchema)]
#[schema(as = CampaignWithCounts)]
#[schema(rename_all = "camelCase")]
pub(crate) struct CampaignWithCountsSchema {
    /// Its number.
    id: u64,
    /// Its name.
    name: String,
    /// The firmware rolled out.
    firmware_id: u64,
    /// The firmware's device type.
    device_type: String,
    /// The firmware's version.
    version: String,
    /// The target as given.
    target: CampaignTargetSchema,
    /// Cumulative wave percentages, the last 100.
    waves: Vec<u8>,
    /// Minimum time between waves, ms.
    soak_ms: u64,
    /// Success threshold (0 to 1).
    success_threshold: f64,
    /// Failure threshold (0 to 1).
    failure_threshold: f64,
    /// Per-state timeouts.
    timeouts: CampaignTimeoutsSchema,
    /// `draft`, `running`, `paused`, `completed`, `aborted` or `cancelled`.
    status: String,
    /// Why, when the engine set it.
    status_reason: Option<String>,
    /// The last wave started (0: none yet).
    current_wave: u32,
    /// The last wave whose success check passed or was overridden.
    reviewed_wave: u32,
    /// How many devices it holds.
    devices: u64,
    /// RFC 3339.
    #[schema(format = DateTime)]
    created_at: String,
    /// Who created it.
    created_by: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    updated_at: String,
    /// Its entries per state, all waves together.
    counts: StateCountsSchema,
}

/// `GET /api/v1/campaigns`.
#[derive(ToSchema)]
pub(crate) struct CampaignListBody {
    /// Newest first.
    campaigns: Vec<CampaignWithCountsSchema>,
}

/// The answer of an operator action: `{"campaign"}`.
#[derive(ToSchema)]
pub(crate) struct CampaignBody {
    /// The campaign after the change.
    campaign: CampaignSchema,
}

/// One wave's progress (`rampart_ota::campaign::WaveProgress`).
#[derive(ToSchema)]
#[schema(as = CampaignWave)]
#[schema(rename_all = "camelCase")]
pub(crate) struct WaveProgressSchema {
    /// The wave, from 1.
    wave: u32,
    /// Its entries per state.
    counts: StateCountsSchema,
    /// How many of its entries were offered (whatever their state now).
    offered: u64,
    /// When one of its entries last changed, Unix ms.
    last_change_ms: Option<i64>,
}

/// One device in a campaign (`rampart_store::campaigns::CampaignEntry`).
#[derive(ToSchema)]
#[schema(as = CampaignEntry)]
#[schema(rename_all = "camelCase")]
pub(crate) struct CampaignEntrySchema {
    /// The campaign.
    campaign_id: u64,
    /// The device.
    device_id: String,
    /// Its wave, from 1.
    wave: u32,
    /// Its place in the campaign's shuffle, from 0.
    position: u32,
    /// `queued`, `offered`, `downloading`, `verifying`, `pending-reboot`,
    /// `pending-confirm`, `succeeded`, `failed`, `rolled-back` or `cancelled`.
    #[schema(example = "offered")]
    state: String,
    /// Why it failed, rolled back or was cancelled.
    reason: Option<String>,
    /// Bytes downloaded, as last reported.
    bytes: Option<u64>,
    /// Image size, as last reported.
    total: Option<u64>,
    /// When its state times out, RFC 3339.
    #[schema(format = DateTime)]
    deadline: Option<String>,
    /// When it was offered the update, RFC 3339.
    #[schema(format = DateTime)]
    offered_at: Option<String>,
    /// A `cancel` downlink is due (cancelled while holding the offer).
    cancel_pending: bool,
    /// When it last changed, RFC 3339.
    #[schema(format = DateTime)]
    updated_at: String,
}

/// `GET /api/v1/campaigns/{id}`.
#[derive(ToSchema)]
pub(crate) struct CampaignDetailBody {
    /// The campaign.
    campaign: CampaignSchema,
    /// Its entries per state, all waves together.
    counts: StateCountsSchema,
    /// Every wave, wave 1 first.
    waves: Vec<WaveProgressSchema>,
    /// One page of entries, in wave then shuffle order.
    entries: Vec<CampaignEntrySchema>,
    /// Entries matching the filter, on all pages.
    total: u64,
    /// The page size.
    limit: u32,
    /// The page's offset.
    offset: u32,
}

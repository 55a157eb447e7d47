//! Authorization: every decision of the console and the API goes through
//! [`authorize`], with one [`Action`] per thing a person can do. Routes name
//! their action in the route table (`routes::ROUTES`); a later feature adds
//! a variant here and a row there, never a check of its own.
//!
//! Roles are instance-wide and ordered owner > admin > operator > viewer;
//! an action needs a least role. Two rules sit on top: an API token cannot
//! act on the account itself (password, MFA, sessions, creating tokens),
//! and a session of an owner or admin who must enrol MFA
//! (`web.require_mfa_for_admins`) may do nothing but enrol it.

use rampart_store::Role;

/// Something a principal asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Read one's own account (`/api/v1/me`, the account page).
    ReadOwnAccount,
    /// Change one's password, MFA, sessions; sign out.
    ManageOwnAccount,
    /// Create, list and revoke one's own API tokens.
    ManageOwnApiTokens,
    /// List and revoke every user's API tokens.
    ManageAllApiTokens,
    /// Read devices, their telemetry, presence and certificates.
    ReadDevices,
    /// Claim a device.
    ClaimDevice,
    /// Disable or enable a device.
    DisableDevice,
    /// Revoke a device's certificate (final).
    RevokeDevice,
    /// Create, list and revoke enrollment tokens.
    ManageEnrollmentTokens,
    /// Read service identities.
    ReadServices,
    /// Create and revoke service identities.
    ManageServices,
    /// List users.
    ReadUsers,
    /// Invite users, change roles, disable, enable, reset MFA.
    ManageUsers,
    /// Read the audit log.
    ReadAudit,
    /// Read `/metrics` and figures pages.
    ReadMetrics,
    /// Read uploaded firmware and the trusted signing keys.
    ReadFirmware,
    /// Upload a signed firmware bundle.
    UploadFirmware,
    /// Read campaigns and their per-device progress.
    ReadCampaigns,
    /// Start updates: create a campaign, approve it, resume it.
    StartCampaigns,
    /// Stop updates: pause a campaign, or cancel it (emergency stop).
    StopCampaigns,
    /// Read alerts (firing, resolved, closed).
    ReadAlerts,
    /// Acknowledge an alert.
    AcknowledgeAlerts,
    /// Manage alert channels and rules, and retry dead letters.
    ManageAlerts,
}

impl Action {
    /// Every action, for tests and documentation.
    pub const ALL: [Action; 23] = [
        Action::ReadOwnAccount,
        Action::ManageOwnAccount,
        Action::ManageOwnApiTokens,
        Action::ManageAllApiTokens,
        Action::ReadDevices,
        Action::ClaimDevice,
        Action::DisableDevice,
        Action::RevokeDevice,
        Action::ManageEnrollmentTokens,
        Action::ReadServices,
        Action::ManageServices,
        Action::ReadUsers,
        Action::ManageUsers,
        Action::ReadAudit,
        Action::ReadMetrics,
        Action::ReadFirmware,
        Action::UploadFirmware,
        Action::ReadCampaigns,
        Action::StartCampaigns,
        Action::StopCampaigns,
        Action::ReadAlerts,
        Action::AcknowledgeAlerts,
        Action::ManageAlerts,
    ];

    /// The least role allowed to do it.
    pub fn least_role(self) -> Role {
        match self {
            Action::ReadOwnAccount
            | Action::ManageOwnAccount
            | Action::ManageOwnApiTokens
            | Action::ReadDevices
            | Action::ReadFirmware
            | Action::ReadCampaigns
            | Action::ReadAlerts => Role::Viewer,
            Action::ClaimDevice
            | Action::DisableDevice
            | Action::StopCampaigns
            | Action::AcknowledgeAlerts => Role::Operator,
            Action::ManageAllApiTokens
            | Action::RevokeDevice
            | Action::ManageEnrollmentTokens
            | Action::ReadServices
            | Action::ManageServices
            | Action::ReadUsers
            | Action::ManageUsers
            | Action::ReadAudit
            | Action::ReadMetrics
            | Action::UploadFirmware
            | Action::StartCampaigns
            | Action::ManageAlerts => Role::Admin,
        }
    }

    /// Whether only a signed-in person (not an API token) may do it.
    fn needs_session(self) -> bool {
        matches!(self, Action::ManageOwnAccount | Action::ManageOwnApiTokens)
    }

    /// Whether a session that still has to enrol MFA may do it.
    fn allowed_before_mfa(self) -> bool {
        matches!(self, Action::ReadOwnAccount | Action::ManageOwnAccount)
    }

    /// Words for messages: "manage users".
    pub fn describe(self) -> &'static str {
        match self {
            Action::ReadOwnAccount => "read your account",
            Action::ManageOwnAccount => "change your account",
            Action::ManageOwnApiTokens => "manage your API tokens",
            Action::ManageAllApiTokens => "manage every user's API tokens",
            Action::ReadDevices => "read devices",
            Action::ClaimDevice => "claim devices",
            Action::DisableDevice => "disable or enable devices",
            Action::RevokeDevice => "revoke devices",
            Action::ManageEnrollmentTokens => "manage enrollment tokens",
            Action::ReadServices => "read service identities",
            Action::ManageServices => "manage service identities",
            Action::ReadUsers => "list users",
            Action::ManageUsers => "manage users",
            Action::ReadAudit => "read the audit log",
            Action::ReadMetrics => "read metrics",
            Action::ReadFirmware => "read firmware",
            Action::UploadFirmware => "upload firmware",
            Action::ReadCampaigns => "read update campaigns",
            Action::StartCampaigns => "create, approve or resume update campaigns",
            Action::StopCampaigns => "pause or cancel update campaigns",
            Action::ReadAlerts => "read alerts",
            Action::AcknowledgeAlerts => "acknowledge alerts",
            Action::ManageAlerts => "manage alert channels, rules and dead letters",
        }
    }
}

/// How the principal proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A console session (cookie); its id hash.
    Session {
        /// SHA-256 of the session id.
        id_hash: String,
        /// The session's CSRF token.
        csrf_token: String,
    },
    /// An API token (`Authorization: Bearer rmp_api_...`); its id.
    ApiToken {
        /// The token's public id.
        id: String,
    },
}

/// An authenticated caller: a user, acting through a session or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user's id.
    pub user_id: String,
    /// The user's name.
    pub name: String,
    /// The role in force: the user's, or for a token the lower of the
    /// token's and its creator's current one.
    pub role: Role,
    /// How it authenticated.
    pub credential: Credential,
    /// An owner or admin who must enrol MFA before anything else.
    pub mfa_enrollment_required: bool,
    /// Unread notifications, for the pages' header badge (read by the
    /// guard for page routes only; `None` elsewhere).
    pub unread_notifications: Option<u64>,
}

impl Principal {
    /// Whether it came with a session cookie.
    pub fn is_session(&self) -> bool {
        matches!(self.credential, Credential::Session { .. })
    }
}

/// Why an action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Nobody signed in.
    #[error("sign in first: this needs a session or an API token")]
    Unauthenticated,
    /// The role is too weak.
    #[error("your role '{role}' may not {what}; it needs '{needed}' or higher")]
    Role {
        /// The principal's role.
        role: Role,
        /// The role needed.
        needed: Role,
        /// What was asked.
        what: &'static str,
    },
    /// API tokens cannot do this.
    #[error("an API token may not {0}; sign in to the console")]
    TokenNotAllowed(&'static str),
    /// MFA enrollment comes first.
    #[error("your role requires two-factor authentication: enrol it on the account page first")]
    MfaEnrollmentRequired,
}

impl Denied {
    /// Stable code for the JSON error.
    pub fn code(self) -> &'static str {
        match self {
            Denied::Unauthenticated => "unauthenticated",
            Denied::Role { .. } => "forbidden",
            Denied::TokenNotAllowed(_) => "token_not_allowed",
            Denied::MfaEnrollmentRequired => "mfa_enrollment_required",
        }
    }
}

/// The one authorization decision: may `principal` do `action`?
pub fn authorize(principal: Option<&Principal>, action: Action) -> Result<(), Denied> {
    let p = principal.ok_or(Denied::Unauthenticated)?;
    if action.needs_session() && !p.is_session() {
        return Err(Denied::TokenNotAllowed(action.describe()));
    }
    if p.mfa_enrollment_required && !action.allowed_before_mfa() {
        return Err(Denied::MfaEnrollmentRequired);
    }
    let needed = action.least_role();
    if p.role < needed {
        return Err(Denied::Role {
            role: p.role,
            needed,
            what: action.describe(),
        });
    }
    Ok(())
}

/// Whether `actor` may give `target` (currently `current`, `None` for a new
/// user) the role `new`: nobody is made owner, the owner is never changed,
/// an admin manages only roles below admin and the owner any but owner.
pub fn may_assign_role(actor: &Principal, current: Option<Role>, new: Role) -> Result<(), Denied> {
    let limit = if actor.role == Role::Owner {
        Role::Admin
    } else {
        Role::Operator
    };
    let too_high = Denied::Role {
        role: actor.role,
        needed: Role::Owner,
        what: "give or change a role at or above your own",
    };
    if new > limit || current.is_some_and(|c| c > limit) {
        return Err(too_high);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(role: Role, session: bool) -> Principal {
        Principal {
            user_id: "u".into(),
            name: "n".into(),
            role,
            credential: if session {
                Credential::Session {
                    id_hash: "h".into(),
                    csrf_token: "c".into(),
                }
            } else {
                Credential::ApiToken { id: "t".into() }
            },
            mfa_enrollment_required: false,
            unread_notifications: None,
        }
    }

    #[test]
    fn every_action_needs_its_least_role() {
        for action in Action::ALL {
            assert_eq!(authorize(None, action), Err(Denied::Unauthenticated));
            for role in Role::ALL {
                let allowed = authorize(Some(&p(role, true)), action).is_ok();
                assert_eq!(allowed, role >= action.least_role(), "{role} {action:?}");
            }
        }
    }

    #[test]
    fn tokens_cannot_manage_the_account_and_mfa_comes_first() {
        let token = p(Role::Owner, false);
        assert_eq!(
            authorize(Some(&token), Action::ManageOwnAccount),
            Err(Denied::TokenNotAllowed("change your account"))
        );
        assert!(authorize(Some(&token), Action::ManageUsers).is_ok());
        let mut pending = p(Role::Admin, true);
        pending.mfa_enrollment_required = true;
        assert_eq!(
            authorize(Some(&pending), Action::ReadDevices),
            Err(Denied::MfaEnrollmentRequired)
        );
        assert!(authorize(Some(&pending), Action::ManageOwnAccount).is_ok());
    }

    #[test]
    fn roles_are_assigned_below_the_actor_only() {
        let owner = p(Role::Owner, true);
        let admin = p(Role::Admin, true);
        assert!(may_assign_role(&owner, None, Role::Admin).is_ok());
        assert!(may_assign_role(&owner, None, Role::Owner).is_err());
        assert!(may_assign_role(&owner, Some(Role::Owner), Role::Viewer).is_err());
        assert!(may_assign_role(&admin, None, Role::Operator).is_ok());
        assert!(may_assign_role(&admin, None, Role::Admin).is_err());
        assert!(may_assign_role(&admin, Some(Role::Admin), Role::Viewer).is_err());
    }
}

//! Console authentication: who is calling (a session cookie or an API
//! token), whether they may (see [`authz`]), and the credentials behind
//! it: passwords, TOTP, sessions, setup, invitation and API tokens.
//!
//! Secrets never reach a log: the request log has no headers or query
//! strings, and every type holding one redacts it in `Debug`.

pub(crate) mod accounts;
pub mod authz;
mod clock;
pub(crate) mod password;
pub(crate) mod secret;
pub(crate) mod session;
pub(crate) mod totp;

pub use accounts::{SETUP_TOKEN_VALID, issue_setup_token};
pub use authz::{Action, Credential, Denied, Principal, authorize};
pub use clock::Clock;
pub use totp::{SealingKey, TotpSecret};

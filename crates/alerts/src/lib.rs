//! Rampart alerts (issue 10), the pure part: what a rule says, when an
//! alert fires and resolves, what a notification looks like, and which
//! webhook targets may be called.
//!
//! # What it owns
//!
//! - [`expr`]: rule expressions (`temperature > 30 for 5m`, `offline for
//!   10m`, `cert-expires within 30d`, ...) parsed into a [`Condition`].
//! - [`evaluate`]: the [`Evaluator`], fleet events in, alert transitions
//!   out, with one tracker per (rule, subject) and timers for conditions
//!   that time makes true; never a scan of the fleet.
//! - [`message`]: notification bodies for Discord, Slack and generic JSON
//!   receivers, idempotency keys and HMAC signatures.
//! - [`target`]: webhook URLs (https, public addresses only unless the
//!   danger flag) and their redaction.
//! - [`delivery`]: what a receiver's answer means and when to retry.
//!
//! # What it must not do
//!
//! No I/O, no clock, no database: the binary feeds it events with their
//! times, stores alerts and delivers notifications. That keeps every
//! time-dependent rule testable with any clock.

pub mod delivery;
pub mod evaluate;
pub mod expr;
pub mod message;
pub mod target;

pub use evaluate::{Change, DeviceRef, Evaluator, Rule, RuleId, Scope, Transition};
pub use expr::{Comparison, Condition, ExprError, RolloutHalt, SecurityEvent, parse};

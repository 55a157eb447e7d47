//! The audit view's chain verification, made incremental: re-reading the
//! whole hash chain on every request of `/audit` costs a full scan of the
//! log each time. [`ChainMemo`] remembers the newest row that verified
//! (its sequence number and mac); the next request verifies only the rows
//! appended since, after checking that the remembered row is still there
//! and unchanged. A break, wherever found, is reported with its row and
//! forgets the memo, so the following request checks everything again.
//!
//! Rows before the remembered one are not read by an incremental check,
//! so a full check still runs on the first request after start, when the
//! last full one is older than [`FULL_CHECK_EVERY`] on the console's
//! clock, and when the caller asks (`full=true`).

use std::sync::{Mutex, PoisonError};

use rampart_store::{AuditAnchor, AuditReport, Store, StoreError};
use time::{Duration, OffsetDateTime};

/// How old the last full check may be before the next request runs one.
pub const FULL_CHECK_EVERY: Duration = Duration::hours(1);

/// What the last successful check established.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verified {
    anchor: AuditAnchor,
    full_at: OffsetDateTime,
}

/// The remembered position of the chain; shared by every request.
#[derive(Debug, Default)]
pub struct ChainMemo {
    last: Mutex<Option<Verified>>,
}

/// How a check is to run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// Everything from row 1.
    Full,
    /// Rows after the anchor; the last full check ran at `full_at`.
    Since {
        anchor: AuditAnchor,
        full_at: OffsetDateTime,
    },
}

fn plan(last: Option<&Verified>, now: OffsetDateTime, want_full: bool) -> Plan {
    match last {
        Some(v) if !want_full && now - v.full_at < FULL_CHECK_EVERY => Plan::Since {
            anchor: v.anchor.clone(),
            full_at: v.full_at,
        },
        _ => Plan::Full,
    }
}

/// What to remember after a check run as `plan` at `now` reported `report`.
fn remember(plan: &Plan, report: &AuditReport, now: OffsetDateTime) -> Option<Verified> {
    let anchor = report.verified.clone().filter(|_| report.ok)?;
    let full_at = match plan {
        Plan::Full => now,
        Plan::Since { full_at, .. } => *full_at,
    };
    Some(Verified { anchor, full_at })
}

impl ChainMemo {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Verified>> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Verifies the chain of `store`: incrementally from the remembered
    /// row when it is fresh enough, fully otherwise or when `want_full`.
    pub async fn verify(
        &self,
        store: &dyn Store,
        now: OffsetDateTime,
        want_full: bool,
    ) -> Result<AuditReport, StoreError> {
        let plan = plan(self.lock().as_ref(), now, want_full);
        let report = match &plan {
            Plan::Full => store.verify_audit().await?,
            Plan::Since { anchor, .. } => store.verify_audit_since(anchor).await?,
        };
        if !report.ok {
            tracing::error!(
                rows = report.rows,
                first_break = ?report.first_break,
                "the audit chain does not verify"
            );
        }
        *self.lock() = remember(&plan, &report, now);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use rampart_store::AuditBreak;

    use super::*;

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::seconds(secs)
    }

    fn anchor(seq: u64) -> AuditAnchor {
        AuditAnchor {
            seq,
            mac: format!("mac-{seq}"),
        }
    }

    fn ok(seq: u64) -> AuditReport {
        AuditReport {
            rows: seq,
            ok: true,
            first_break: None,
            verified: Some(anchor(seq)),
        }
    }

    #[test]
    fn the_first_check_is_full_and_later_ones_resume() {
        assert_eq!(plan(None, t(0), false), Plan::Full);
        let v = remember(&Plan::Full, &ok(5), t(10)).expect("remembered");
        assert_eq!(
            plan(Some(&v), t(20), false),
            Plan::Since {
                anchor: anchor(5),
                full_at: t(10)
            }
        );
        // An incremental check keeps the time of the last full one.
        let p = plan(Some(&v), t(20), false);
        let v2 = remember(&p, &ok(9), t(20)).expect("remembered");
        assert_eq!((v2.anchor.seq, v2.full_at), (9, t(10)));
    }

    #[test]
    fn a_full_check_runs_when_asked_or_when_the_last_is_old() {
        let v = remember(&Plan::Full, &ok(5), t(0)).expect("remembered");
        assert_eq!(plan(Some(&v), t(1), true), Plan::Full);
        let hour = FULL_CHECK_EVERY.whole_seconds();
        assert!(matches!(
            plan(Some(&v), t(hour - 1), false),
            Plan::Since { .. }
        ));
        assert_eq!(plan(Some(&v), t(hour), false), Plan::Full);
    }

    #[test]
    fn a_break_or_an_empty_log_forgets_the_position() {
        let broken = AuditReport {
            rows: 4,
            ok: false,
            first_break: Some(AuditBreak {
                seq: 5,
                problem: "edited".into(),
            }),
            verified: None,
        };
        assert_eq!(remember(&Plan::Full, &broken, t(0)), None);
        let empty = AuditReport {
            rows: 0,
            ok: true,
            first_break: None,
            verified: None,
        };
        assert_eq!(remember(&Plan::Full, &empty, t(0)), None);
    }
}

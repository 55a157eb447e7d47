//! Step 5, acknowledge: what the broker is told about a message, from the
//! fates of its readings.

use rampart_proto::ingest::{IngestOutcome, Rejection, RejectionKind};
use rampart_store::telemetry::ReadingFate;

/// The outcome of a telemetry message whose readings met `fates`:
/// - any reading stored: `Committed` (conflicting readings in the same
///   batch are kept in the rejected table and flag the device);
/// - every reading already stored with the same content: `Duplicate`;
/// - otherwise (conflicts, nothing stored): rejected as a sequence conflict.
pub fn outcome(fates: &[ReadingFate]) -> IngestOutcome {
    if fates.contains(&ReadingFate::Stored) {
        IngestOutcome::Committed
    } else if fates.iter().all(|f| *f == ReadingFate::Duplicate) && !fates.is_empty() {
        IngestOutcome::Duplicate
    } else {
        IngestOutcome::Rejected(Rejection {
            kind: RejectionKind::PayloadFormatInvalid,
            detail: "sequence conflict: this seq was stored earlier with a different payload"
                .into(),
        })
    }
}

/// The outcome when the store could not commit.
pub fn store_failed() -> IngestOutcome {
    IngestOutcome::Rejected(Rejection {
        kind: RejectionKind::Internal,
        detail: "the telemetry store is unavailable; send again later".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReadingFate::*;

    #[test]
    fn outcome_follows_the_fates() {
        assert_eq!(outcome(&[Stored, Duplicate]), IngestOutcome::Committed);
        assert_eq!(outcome(&[Stored, Conflict]), IngestOutcome::Committed);
        assert_eq!(outcome(&[Duplicate, Duplicate]), IngestOutcome::Duplicate);
        assert!(matches!(
            outcome(&[Duplicate, Conflict]),
            IngestOutcome::Rejected(_)
        ));
        assert!(matches!(outcome(&[Conflict]), IngestOutcome::Rejected(_)));
    }
}

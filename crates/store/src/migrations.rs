//! Which migrations a database still needs: the rule both backends share.
//!
//! Migrations are numbered by their file name (`0009_device_list.sql` is
//! number 9) and the numbers may have gaps: branches developed in parallel
//! take numbers of their own, and a database migrated by one branch must
//! still receive the others' migrations once they are merged. So each
//! database records the *set* of migrations it has applied (table
//! `rampart_migrations`), not only the highest number.
//!
//! Databases made before that table existed recorded only a version `N`,
//! meaning migrations `1..=N` (their numbering was dense); they are read
//! that way. The version marker (SQLite `user_version`, PostgreSQL
//! `rampart_schema.version`) is still kept, as the highest number applied,
//! so that an older binary, which reads only the marker, refuses a database
//! it does not fully know.

use std::collections::BTreeSet;

use crate::{Result, StoreError};

/// A migration: its number and its SQL.
pub(crate) type Migration = (i64, &'static str);

/// What to do to bring a database up to date.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Indexes into the known migrations to apply, in ascending number.
    pub(crate) apply: Vec<usize>,
    /// The version marker once they are applied.
    pub(crate) marker: i64,
}

/// The migrations of `known` not in `applied` (or, without a record,
/// not below the `marker`), and the marker after them. Refuses a database
/// that applied a migration this binary does not know.
pub(crate) fn plan(
    known: &[Migration],
    applied: Option<&BTreeSet<i64>>,
    marker: i64,
) -> Result<Plan> {
    let newest_known = known.iter().map(|(n, _)| *n).max().unwrap_or(0);
    if marker > newest_known {
        return Err(StoreError::TooNew {
            found: marker,
            supported: newest_known,
        });
    }
    let legacy: BTreeSet<i64>;
    let applied = match applied {
        Some(set) => set,
        None => {
            legacy = (1..=marker.max(0)).collect();
            &legacy
        }
    };
    let newest_applied = applied.iter().copied().max().unwrap_or(0).max(marker);
    let unknown = applied.iter().any(|n| !known.iter().any(|(k, _)| k == n));
    if unknown || newest_applied > newest_known {
        return Err(StoreError::TooNew {
            found: newest_applied,
            supported: newest_known,
        });
    }
    let apply = known
        .iter()
        .enumerate()
        .filter(|(_, (n, _))| !applied.contains(n))
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    let marker = apply
        .iter()
        .map(|&i| known[i].0)
        .chain([newest_applied])
        .max()
        .unwrap_or(0);
    Ok(Plan { apply, marker })
}

/// Checks at compile time of the tests that numbers ascend without repeats.
#[cfg(test)]
pub(crate) fn numbers_ascend(known: &[Migration]) -> bool {
    known.windows(2).all(|w| w[0].0 < w[1].0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[Migration] = &[(1, "a"), (2, "b"), (3, "c"), (6, "f")];

    #[test]
    fn a_new_database_gets_everything() {
        let p = plan(KNOWN, Some(&BTreeSet::new()), 0).expect("plan");
        assert_eq!(
            p,
            Plan {
                apply: vec![0, 1, 2, 3],
                marker: 6
            }
        );
        let p = plan(KNOWN, None, 0).expect("plan");
        assert_eq!(p.apply, vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_legacy_version_means_every_migration_up_to_it() {
        let p = plan(KNOWN, None, 3).expect("plan");
        assert_eq!(
            p,
            Plan {
                apply: vec![3],
                marker: 6
            }
        );
    }

    #[test]
    fn a_gap_filled_later_is_applied_out_of_order() {
        // Migrated by a binary that knew 1, 2, 3 and 6; this one also knows 4.
        let known: &[Migration] = &[(1, "a"), (2, "b"), (3, "c"), (4, "d"), (6, "f")];
        let applied: BTreeSet<i64> = [1, 2, 3, 6].into();
        let p = plan(known, Some(&applied), 6).expect("plan");
        assert_eq!(
            p,
            Plan {
                apply: vec![3],
                marker: 6
            }
        );
    }

    #[test]
    fn an_unknown_migration_or_a_newer_marker_is_refused() {
        let applied: BTreeSet<i64> = [1, 2, 3, 4].into();
        let err = plan(KNOWN, Some(&applied), 4).expect_err("4 is unknown");
        assert!(
            matches!(
                err,
                StoreError::TooNew {
                    found: 4,
                    supported: 6
                }
            ),
            "{err}"
        );
        let err = plan(KNOWN, None, 999).expect_err("newer");
        assert!(
            matches!(err, StoreError::TooNew { found: 999, .. }),
            "{err}"
        );
    }

    #[test]
    fn nothing_to_do_when_up_to_date() {
        let applied: BTreeSet<i64> = [1, 2, 3, 6].into();
        let p = plan(KNOWN, Some(&applied), 6).expect("plan");
        assert_eq!(
            p,
            Plan {
                apply: vec![],
                marker: 6
            }
        );
    }
}

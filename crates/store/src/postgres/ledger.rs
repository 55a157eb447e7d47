//! The append lock shared by the audit chain and the change feed.
//!
//! Both logs are read by followers that assume order: the audit chain links
//! each row to the previous one, and a `serve` replica reads the change feed
//! as `seq > last seen`. Under concurrent writers neither holds by itself:
//! two transactions would both extend the same audit row (a fork), and an
//! identity column hands out numbers at insert time, not at commit time, so
//! seq 8 may commit before seq 7 and a follower that saw 8 never reads 7.
//!
//! Every transaction that appends to either log therefore first takes one
//! transaction-scoped advisory lock, `pg_advisory_xact_lock`, held until it
//! commits or rolls back. Appends are serialised across every process using
//! the database, and the order of sequence numbers is the order of commits.
//! The only way to append is through a [`Ledger`], which only [`lock`] makes.

use deadpool_postgres::Transaction;

use super::db;
use crate::Result;

/// The advisory lock key: "RMPT" and 1 (the migration lock is "RMPT" and 0).
pub(super) const APPEND_LOCK: i64 = 0x524D_5054_0001;

/// Proof that a transaction holds the append lock.
pub(super) struct Ledger<'t, 'c> {
    tx: &'t Transaction<'c>,
}

impl<'c> Ledger<'_, 'c> {
    /// The transaction holding the lock.
    pub(super) fn tx(&self) -> &Transaction<'c> {
        self.tx
    }
}

/// Takes the append lock for the rest of `tx`. Waits for the transaction
/// holding it, at most the transaction's `lock_timeout`.
pub(super) async fn lock<'t, 'c>(tx: &'t Transaction<'c>) -> Result<Ledger<'t, 'c>> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&APPEND_LOCK])
        .await
        .map_err(db)?;
    Ok(Ledger { tx })
}

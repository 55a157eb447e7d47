//! The PostgreSQL implementation of [`Store`](crate::Store), for scale-out:
//! several `serve` replicas and the CLI share one database.
//!
//! Connections come from a `deadpool-postgres` pool over `tokio-postgres`
//! (see docs/decisions/0006-postgresql-store.md). Transactions run at READ
//! COMMITTED; every change that appends to the audit chain or the change
//! feed first takes one transaction-scoped advisory lock (see [`ledger`]),
//! so those appends are serialised across every process on the database
//! and commit in the order of their sequence numbers. A transaction that
//! fails with a serialisation failure or a deadlock is retried a bounded
//! number of times; both guarantee it was rolled back.

mod audit;
mod campaigns;
mod changes;
mod claims;
mod devices;
mod enrollment;
mod firmware;
mod ledger;
mod mqtt;
mod renewal;
mod schema;
mod services;
mod store;
mod telemetry;
mod url;
mod users;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{
    Client, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
    Transaction,
};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;

use crate::{AuditKey, AuditRecord, Result, StoreError};

pub use url::{is_postgres_url, redact_url};

/// Tuning of the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// How long a write waits for a lock held by another transaction, and
    /// a caller for a free pooled connection.
    pub busy_timeout: Duration,
    /// How long opening one connection may take (unless the URL sets
    /// `connect_timeout` itself).
    pub connect_timeout: Duration,
    /// Most connections this process keeps open.
    pub pool_size: usize,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            pool_size: 8,
        }
    }
}

/// The PostgreSQL store. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The URL with its password hidden: all that messages ever show.
    target: String,
    pool: Pool,
    audit_key: AuditKey,
    options: PostgresOptions,
    /// Telemetry series ids known to be committed.
    series: Mutex<crate::telemetry::SeriesCache>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

/// How often a transaction is tried when PostgreSQL reports a
/// serialisation failure or a deadlock (which roll it back).
const MAX_ATTEMPTS: u32 = 5;

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host/db`)
    /// and brings its schema up to date. Refuses a database holding another
    /// application's tables, and a schema newer than this binary.
    pub async fn connect(url: &str, audit_key: AuditKey, options: PostgresOptions) -> Result<Self> {
        let url::DatabaseUrl { mut config, shown } = url::DatabaseUrl::parse(url)?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(StoreError::Unavailable {
                target: shown,
                why: "sslmode=require asks for TLS, which this build's PostgreSQL client does not offer; connect over a trusted network or a local socket, without sslmode=require".into(),
            });
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        if config.get_application_name().is_none() {
            // Shows in pg_stat_activity, for whoever runs the server.
            config.application_name("rampart");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.busy_timeout))
            .create_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::Unavailable {
                target: shown.clone(),
                why: format!("cannot set up the connection pool: {e}"),
            })?;
        let store = Self {
            inner: Arc::new(Inner {
                target: shown,
                pool,
                audit_key,
                options,
                series: Mutex::new(crate::telemetry::SeriesCache::default()),
            }),
        };
        let mut client = store.client().await?;
        schema::migrate(&mut client, &store.inner.target)
            .await
            .map_err(|e| store.settle(e))?;
        tracing::info!(database = %store.inner.target, "opened PostgreSQL store");
        Ok(store)
    }

    /// The database URL, without its password.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    /// A pooled connection.
    async fn client(&self) -> Result<Client> {
        self.inner.pool.get().await.map_err(|e| match e {
            // Every pooled connection stayed in use past the busy timeout.
            PoolError::Timeout(TimeoutType::Wait) => StoreError::Busy,
            PoolError::Backend(e) => self.unavailable(&e),
            other => StoreError::Unavailable {
                target: self.inner.target.clone(),
                why: other.to_string(),
            },
        })
    }

    fn unavailable(&self, e: &tokio_postgres::Error) -> StoreError {
        StoreError::Unavailable {
            target: self.inner.target.clone(),
            why: error_chain(e),
        }
    }

    /// Names the server in an error caused by a lost connection.
    fn settle(&self, e: StoreError) -> StoreError {
        match &e {
            StoreError::Database(source) => match source.downcast_ref::<tokio_postgres::Error>() {
                Some(pg) if is_connection_loss(pg) => self.unavailable(pg),
                _ => e,
            },
            _ => e,
        }
    }

    /// Runs `attempt` again while it fails with a serialisation failure or
    /// a deadlock, at most [`MAX_ATTEMPTS`] times. Each attempt must open
    /// its own transaction. Every store method goes through here, so that
    /// a lost connection is always reported as [`StoreError::Unavailable`].
    async fn retrying<T, F, Fut>(&self, attempt: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut tries = 1;
        loop {
            match attempt().await {
                Err(e) if tries < MAX_ATTEMPTS && is_retryable(&e) => {
                    tracing::debug!(error = %e, tries, "retrying a rolled-back transaction");
                    tries += 1;
                }
                other => return other.map_err(|e| self.settle(e)),
            }
        }
    }

    /// [`Self::retrying`] for a change that appends an audit row: once it is
    /// committed, the chain head file advances to that row.
    async fn audited<T, F, Fut>(&self, attempt: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(T, AuditRecord)>>,
    {
        let (out, record) = self.retrying(attempt).await?;
        self.advance_head(&record);
        Ok(out)
    }

    /// Moves the audit chain head past `record`, committed just now.
    fn advance_head(&self, record: &AuditRecord) {
        if let Err(e) = self.inner.audit_key.advance_head(record.seq, &record.mac) {
            // The change and its audit row are committed; a stale head only
            // weakens truncation detection until the next append.
            tracing::warn!(error = %e, "could not advance the audit chain head");
        }
    }

    /// Starts a READ COMMITTED write transaction whose lock waits end after
    /// the busy timeout.
    async fn begin<'c>(&self, client: &'c mut Client) -> Result<Transaction<'c>> {
        let tx = client.transaction().await.map_err(db)?;
        let ms = self.inner.options.busy_timeout.as_millis().max(1);
        // SET cannot take a bind parameter; the value is our own integer.
        tx.batch_execute(&format!("SET LOCAL lock_timeout = {ms}"))
            .await
            .map_err(db)?;
        Ok(tx)
    }
}

/// Maps a PostgreSQL error; lock timeouts become [`StoreError::Busy`]. A
/// lost connection is named later, where the server's URL is known.
pub(crate) fn db(e: tokio_postgres::Error) -> StoreError {
    if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) {
        return StoreError::Busy;
    }
    StoreError::Database(Box::new(e))
}

/// Column `i` of `row`: a column of another type than expected is damaged
/// data (a hand-edited schema), reported, never a panic.
fn get<'r, T: tokio_postgres::types::FromSql<'r>>(
    row: &'r tokio_postgres::Row,
    i: usize,
) -> Result<T> {
    row.try_get(i).map_err(|e| {
        let column = row.columns().get(i).map_or("?", |c| c.name());
        StoreError::Corrupt(format!("column '{column}': {}", error_chain(&e)))
    })
}

/// Whether PostgreSQL rolled the transaction back for a conflict that a
/// plain retry resolves.
fn is_retryable(e: &StoreError) -> bool {
    let StoreError::Database(source) = e else {
        return false;
    };
    source
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        })
}

/// Whether the connection itself failed (closed, I/O error, server going
/// down), as opposed to a statement.
fn is_connection_loss(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        return code.code().starts_with("08")
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW;
    }
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// An error with its causes, as one line: tokio-postgres puts the detail
/// ("connection refused", the server's message) in the source.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

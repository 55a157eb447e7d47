//! Throw-away PostgreSQL databases for the tests that run against the
//! PostgreSQL store.
//!
//! Each [`PgTestDb`] is a fresh database `rampart_test_<pid>_<random hex>`
//! on the server named by `RAMPART_TEST_PG_URL` (an admin URL, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`). It is dropped, with
//! `WITH (FORCE)` so that open connections cannot keep it alive, when the
//! value is dropped, which also happens while a failing test unwinds.
//! Databases left behind by a killed test process (its pid no longer runs)
//! are dropped by the next test that creates one.
//!
//! An unreachable server fails the test with a message saying how to point
//! the tests at one, unless `RAMPART_TEST_PG=skip` is set: then the test
//! prints a loud SKIPPED line and passes. CI unsets that variable.

use std::io::Write;

use rand::Rng;
use tokio_postgres::NoTls;

/// The variable naming the admin URL of the test server.
const URL_VAR: &str = "RAMPART_TEST_PG_URL";
/// The variable that, set to `skip`, lets tests pass without a server.
const SKIP_VAR: &str = "RAMPART_TEST_PG";
/// The admin URL used when [`URL_VAR`] is not set.
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Prefix of every test database's name.
const PREFIX: &str = "rampart_test_";

/// A fresh database, dropped when this value is.
#[derive(Debug)]
pub struct PgTestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl PgTestDb {
    /// Creates a fresh database. `None` only when the server cannot be
    /// reached and `RAMPART_TEST_PG=skip` is set (a SKIPPED line has then
    /// been printed); without that variable an unreachable server panics
    /// with instructions.
    pub async fn create() -> Option<Self> {
        match tokio::task::spawn_blocking(Self::create_blocking).await {
            Ok(db) => db,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// [`PgTestDb::create`] for tests that do not run in a tokio runtime.
    pub fn create_blocking() -> Option<Self> {
        let admin_url = std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned());
        let name = format!(
            "{PREFIX}{}_{}",
            std::process::id(),
            hex::encode(rand::rng().random::<[u8; 6]>())
        );
        let create = format!("CREATE DATABASE \"{name}\"");
        if let Err(e) = on_server(&admin_url, move |client| {
            Box::pin(async move {
                drop_abandoned(client).await?;
                client.batch_execute(&create).await
            })
        }) {
            return unreachable(&admin_url, &e);
        }
        let url = with_database(&admin_url, &name);
        Some(Self {
            admin_url,
            name,
            url,
        })
    }

    /// The database's URL, to hand to the store or to `store.url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `sql` (one or more statements) on this database as the admin
    /// user: what someone with direct access to the database could do.
    pub fn execute(&self, sql: &str) -> Result<(), String> {
        let sql = sql.to_owned();
        on_server(&self.url, move |client| {
            Box::pin(async move { client.batch_execute(&sql).await })
        })
        .map_err(|e| error_text(&e))
    }
}

impl Drop for PgTestDb {
    fn drop(&mut self) {
        let drop_db = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        if let Err(e) = on_server(&self.admin_url, move |client| {
            Box::pin(async move { client.batch_execute(&drop_db).await })
        }) {
            // Not a panic: this may run while a failing test unwinds. The
            // next test run drops the database as abandoned.
            let _ = writeln!(
                std::io::stderr(),
                "warning: could not drop test database {}: {}",
                self.name,
                error_text(&e)
            );
        }
    }
}

type Work = Box<
    dyn for<'c> FnOnce(
            &'c tokio_postgres::Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'c>,
        > + Send,
>;

/// Connects to `url` and runs `work`, on a thread of its own with its own
/// runtime: callable from `Drop` and from inside or outside any runtime.
fn on_server<F>(url: &str, work: F) -> Result<(), tokio_postgres::Error>
where
    F: for<'c> FnOnce(
            &'c tokio_postgres::Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'c>,
        > + Send
        + 'static,
{
    let url = url.to_owned();
    let work: Work = Box::new(work);
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the test database");
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
            let driver = tokio::spawn(connection);
            let result = work(&client).await;
            drop(client);
            let _ = driver.await;
            result
        })
    });
    match thread.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Drops the test databases of processes that no longer run (killed
/// before their `Drop` could). Only pids of this machine are judged, so
/// on systems without `/proc` nothing is dropped.
async fn drop_abandoned(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
    if !std::path::Path::new("/proc/self").exists() {
        return Ok(());
    }
    let rows = client
        .query(
            "SELECT datname::text FROM pg_database WHERE starts_with(datname::text, $1)",
            &[&PREFIX],
        )
        .await?;
    for row in rows {
        let name: String = row.get(0);
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await?;
        }
    }
    Ok(())
}

/// What to do when the server cannot be reached: skip loudly if allowed,
/// else fail with instructions.
fn unreachable(admin_url: &str, e: &tokio_postgres::Error) -> Option<PgTestDb> {
    let server = describe(admin_url);
    let why = error_text(e);
    if std::env::var(SKIP_VAR).is_ok_and(|v| v == "skip") {
        // Straight to stderr: the test harness would swallow `eprintln!`
        // output of a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: PostgreSQL test (no server at {server}: {why}; {SKIP_VAR}=skip) ***\n"
        );
        return None;
    }
    panic!(
        "PostgreSQL tests need a server, and none answered at {server}: {why}.\n\
         Start one (trust or password auth, a user allowed to create databases), then \
         point the tests at it with {URL_VAR}=postgres://USER[:PASSWORD]@HOST:PORT/postgres \
         (default {DEFAULT_URL}). To skip these tests on a machine without PostgreSQL, set \
         {SKIP_VAR}=skip (CI never skips)."
    )
}

/// `user@host:port/db` of a URL, without any password.
fn describe(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(c) => {
            let host = match c.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                #[cfg(unix)]
                Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
                None => "localhost".into(),
            };
            let port = c.get_ports().first().copied().unwrap_or(5432);
            format!(
                "{}@{host}:{port}/{}",
                c.get_user().unwrap_or("?"),
                c.get_dbname().unwrap_or("?")
            )
        }
        Err(_) => format!("an unparsable {URL_VAR}"),
    }
}

/// The error with the server's message or the I/O cause.
fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let base = match head[authority_start..].find('/') {
        Some(i) => &head[..authority_start + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/admin?sslmode=disable", "t2"),
            "postgres://u:p@h/t2?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "t3"), "postgres://h/t3");
    }

    #[test]
    fn describes_a_server_without_its_password() {
        let shown = describe("postgres://admin:hunter2@db.local:5433/postgres");
        assert_eq!(shown, "admin@db.local:5433/postgres");
    }
}

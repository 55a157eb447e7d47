//! The `store.url` of a PostgreSQL store: parsed once, and shown only with
//! its password replaced, so that no message, log line or `config show`
//! output ever carries it.

use std::str::FromStr;

use crate::{Result, StoreError};

/// What stands in for a password wherever a URL is shown.
const HIDDEN: &str = "***";

/// A parsed `postgres://` URL and its printable form.
pub(super) struct DatabaseUrl {
    /// What tokio-postgres connects with (its `Debug` hides the password).
    pub config: tokio_postgres::Config,
    /// The URL with its password hidden.
    pub shown: String,
}

impl DatabaseUrl {
    /// Parses `url`; only the URL form is accepted, so that [`redact_url`]
    /// knows where a password can be.
    pub fn parse(url: &str) -> Result<Self> {
        let shown = redact_url(url);
        let unavailable = |why: String| StoreError::Unavailable {
            target: shown.clone(),
            why,
        };
        if !is_postgres_url(url) {
            return Err(unavailable(
                "store.url must be a postgres:// or postgresql:// URL (leave it empty for SQLite in the data dir)".into(),
            ));
        }
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|e| unavailable(format!("store.url is not a valid PostgreSQL URL: {e}")))?;
        Ok(Self { config, shown })
    }
}

/// Whether `url` names a PostgreSQL server (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// `url` with any password (in the user info or a `password=` parameter)
/// replaced by `***`. Errs on the side of hiding: everything between the
/// user name and the last `@` of the authority goes.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let mut out = format!("{scheme}://");
    match before_query.rfind('@') {
        Some(at) => {
            let (userinfo, host_and_path) = before_query.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(HIDDEN);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(host_and_path);
        }
        None => out.push_str(before_query),
    }
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}={HIDDEN}"),
                _ => p.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_passwords_wherever_they_are() {
        for (url, shown) in [
            (
                "postgres://rampart:s3cret@db.example:5432/rampart",
                "postgres://rampart:***@db.example:5432/rampart",
            ),
            (
                "postgresql://u:p@ss@host/db?sslmode=disable",
                "postgresql://u:***@host/db?sslmode=disable",
            ),
            (
                "postgres://u@host/db?application_name=x&password=hunter2",
                "postgres://u@host/db?application_name=x&password=***",
            ),
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            ("postgres://host", "postgres://host"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn refuses_what_is_not_a_postgres_url_without_echoing_secrets() {
        let err = DatabaseUrl::parse("mysql://u:topsecret@host/db")
            .err()
            .expect("not postgres");
        let msg = err.to_string();
        assert!(msg.contains("postgres://"), "{msg}");
        assert!(!msg.contains("topsecret"), "{msg}");

        let err = DatabaseUrl::parse("postgres://u:topsecret@host:notaport/db")
            .err()
            .expect("bad port");
        let msg = err.to_string();
        assert!(msg.contains("not a valid PostgreSQL URL"), "{msg}");
        assert!(!msg.contains("topsecret"), "{msg}");
    }

    #[test]
    fn parses_user_host_and_database() {
        let url = DatabaseUrl::parse("postgres://rampart:pw@127.0.0.1:5433/fleet").expect("valid");
        assert_eq!(url.config.get_user(), Some("rampart"));
        assert_eq!(url.config.get_dbname(), Some("fleet"));
        assert_eq!(url.config.get_ports(), [5433]);
        assert_eq!(url.shown, "postgres://rampart:***@127.0.0.1:5433/fleet");
        assert!(!format!("{:?}", url.config).contains("pw\""));
    }
}

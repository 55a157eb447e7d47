//! The load generator's error type.

use std::path::PathBuf;

/// What can go wrong while generating load.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// A certificate, key or directory could not be read or parsed.
    #[error("identity file {path}: {reason}")]
    Identity {
        /// The file or directory.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// A rustls configuration error (bad key, unsupported algorithm).
    #[error("TLS configuration for '{id}': {source}")]
    TlsConfig {
        /// The identity being configured.
        id: String,
        /// The rustls error.
        source: rustls::Error,
    },
    /// A socket or TLS I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The broker refused the CONNECT or a SUBSCRIBE.
    #[error("broker refused '{id}': {reason}")]
    Refused {
        /// The client id.
        id: String,
        /// The reason code or description.
        reason: String,
    },
    /// The MQTT connection failed (I/O, codec, refusal, disconnect).
    #[error(transparent)]
    Client(#[from] rampart_mqtt_client::ClientError),
    /// The broker broke the protocol as the load generator expects it.
    #[error("unexpected from the broker: {0}")]
    Protocol(String),
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The scenario's parameters are unusable.
    #[error("invalid scenario: {0}")]
    Config(String),
}

impl LoadgenError {
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LoadgenError::Io {
            context: context.into(),
            source,
        }
    }
}

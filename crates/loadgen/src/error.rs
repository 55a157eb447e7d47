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
    /// The broker sent bytes that do not decode as MQTT.
    #[error("undecodable packet from the broker: {0}")]
    Codec(String),
    /// The broker refused the CONNECT or a SUBSCRIBE.
    #[error("broker refused '{id}': {reason}")]
    Refused {
        /// The client id.
        id: String,
        /// The reason code or description.
        reason: String,
    },
    /// The broker sent DISCONNECT (MQTT 5 §3.14) and closes the connection.
    #[error("broker disconnected '{id}': {reason:?}")]
    Disconnected {
        /// The client id.
        id: String,
        /// The DISCONNECT reason code.
        reason: mqtt5_protocol::ReasonCode,
    },
    /// The broker closed the connection without DISCONNECT (end of stream).
    #[error("broker closed the connection of '{id}'")]
    Closed {
        /// The client id.
        id: String,
    },
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

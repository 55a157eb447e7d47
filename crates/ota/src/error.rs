//! Errors of firmware signing and verification.

use std::path::PathBuf;

use rampart_core::ota::VerifyError;

/// Why a firmware operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OtaError {
    /// The bundle was refused; the reason says why.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A file operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key file exists already and is not overwritten.
    #[error("{0} exists already; refusing to overwrite a key (choose another --out or remove it)")]
    Exists(PathBuf),
    /// A key file is not in the expected format.
    #[error("{path} is not {expected}: {why}")]
    KeyFormat {
        /// The file.
        path: PathBuf,
        /// What it should be.
        expected: &'static str,
        /// What is wrong.
        why: String,
    },
    /// An argument is invalid (device type, version).
    #[error("{0}")]
    Invalid(String),
}

impl OtaError {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        OtaError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

//! Passwords: the policy a new password must meet, and Argon2id hashing.
//!
//! Policy: at least [`MIN_LEN`] characters, at most [`MAX_LEN`] bytes (so
//! that hashing stays bounded), not one of the common passwords, and a
//! `zxcvbn` strength score of at least 3 of 4, judged with the user's name
//! and e-mail as known words (so `alice-alice-alice` is weak for Alice).
//! Hashes are Argon2id PHC strings with the `argon2` crate's defaults
//! (19 MiB, 2 passes, 1 lane: the OWASP minimum), computed on the blocking
//! pool because each one takes tens of milliseconds.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

/// Fewest characters a password may have.
pub const MIN_LEN: usize = 12;
/// Most bytes a password may have.
pub const MAX_LEN: usize = 1024;
/// Lowest accepted `zxcvbn` score (0 to 4).
pub const MIN_SCORE: u8 = 3;

/// Passwords refused whatever their score: leaked-list favourites that meet
/// the length rule, and the product's own name.
const COMMON: &[&str] = &[
    "password1234",
    "password12345",
    "password123456",
    "123456789012",
    "qwertyuiop123",
    "qwerty123456",
    "iloveyou1234",
    "administrator",
    "letmein12345",
    "welcome12345",
    "changeme1234",
    "rampart12345",
    "rampartadmin",
    "correcthorsebatterystaple",
];

/// Why a password is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Shorter than [`MIN_LEN`].
    #[error("the password must have at least {MIN_LEN} characters")]
    TooShort,
    /// Longer than [`MAX_LEN`] bytes.
    #[error("the password must have at most {MAX_LEN} bytes")]
    TooLong,
    /// On the list of common passwords.
    #[error("this password is one of the most common ones; choose another")]
    Common,
    /// Too easy to guess.
    #[error("the password is too easy to guess{0}; a few unrelated words make a strong one")]
    Weak(String),
}

/// Checks `password` against the policy; `context` holds words the
/// password must not lean on (the user's name, e-mail).
pub fn check_policy(password: &str, context: &[&str]) -> Result<(), PasswordError> {
    if password.chars().count() < MIN_LEN {
        return Err(PasswordError::TooShort);
    }
    if password.len() > MAX_LEN {
        return Err(PasswordError::TooLong);
    }
    let lower = password.to_lowercase();
    if COMMON.contains(&lower.as_str()) {
        return Err(PasswordError::Common);
    }
    let mut words: Vec<&str> = context.iter().copied().filter(|w| !w.is_empty()).collect();
    words.extend(["rampart", "admin", "owner"]);
    let entropy = zxcvbn::zxcvbn(password, &words);
    if u8::from(entropy.score()) < MIN_SCORE {
        let hint = entropy
            .feedback()
            .and_then(|f| f.warning())
            .map(|w| format!(" ({w})"))
            .unwrap_or_default();
        return Err(PasswordError::Weak(hint));
    }
    Ok(())
}

/// Why hashing or verifying failed (not a wrong password: that is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// The Argon2id PHC string of `password`, computed off the async threads.
pub async fn hash(password: String) -> Result<String, HashError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| HashError(e.to_string()))
    })
    .await
    .map_err(|e| HashError(e.to_string()))?
}

/// A valid hash of a password nobody knows: verifying an unknown user's
/// attempt against it costs as much as a real check, so response times do
/// not tell which names exist.
const DECOY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3sYvCvCjb2UZvqkY2S6n0S4b0W8LTV2vYIBxqyE7mGU";

/// Whether `password` matches `phc` (or the decoy when `phc` is `None`,
/// which never matches). A damaged hash counts as a mismatch and is logged.
pub async fn verify(password: String, phc: Option<String>) -> bool {
    let known = phc.is_some();
    let phc = phc.unwrap_or_else(|| DECOY.to_owned());
    let outcome = tokio::task::spawn_blocking(move || {
        Argon2::default().verify_password(password.as_bytes(), phc.as_str())
    })
    .await;
    match outcome {
        Ok(Ok(())) => known,
        Ok(Err(argon2::password_hash::Error::PasswordInvalid)) => false,
        Ok(Err(e)) => {
            if known {
                tracing::error!(error = %e, "a stored password hash cannot be read");
            }
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "password verification task failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_refuses_short_common_and_weak_passwords() {
        assert_eq!(check_policy("short", &[]), Err(PasswordError::TooShort));
        assert_eq!(
            check_policy("Password1234", &[]),
            Err(PasswordError::Common)
        );
        assert!(matches!(
            check_policy("aaaaaaaaaaaaaaaa", &[]),
            Err(PasswordError::Weak(_))
        ));
        assert!(matches!(
            check_policy("alicealice2024", &["alice"]),
            Err(PasswordError::Weak(_))
        ));
        assert_eq!(
            check_policy(&"x".repeat(MAX_LEN + 1), &[]),
            Err(PasswordError::TooLong)
        );
        assert_eq!(
            check_policy("violet tractor sunrise 42", &["alice"]),
            Ok(())
        );
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let phc = hash("violet tractor sunrise 42".into())
            .await
            .expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
        assert!(verify("violet tractor sunrise 42".into(), Some(phc.clone())).await);
        assert!(!verify("violet tractor sunrise 43".into(), Some(phc)).await);
        // The decoy is well-formed and matches nothing.
        assert!(!verify("".into(), None).await);
        assert!(!verify("anything".into(), Some("not a hash".into())).await);
    }
}

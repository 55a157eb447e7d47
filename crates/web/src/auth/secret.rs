//! Random secrets handed to people or browsers (session ids, CSRF, setup,
//! invitation and API tokens) and the hashes the store keeps of them.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// The prefix of API tokens, so that secret scanners recognise them.
pub const API_TOKEN_PREFIX: &str = "rmp_api_";

/// 32 random bytes from the OS generator, base64url without padding.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    data_encoding::BASE64URL_NOPAD.encode(&bytes)
}

/// A short random id for rows shown to people (users, API tokens).
pub fn random_id() -> String {
    let mut bytes = [0u8; 9];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A new API token, `rmp_api_` and 256 random bits.
pub fn api_token() -> String {
    format!("{API_TOKEN_PREFIX}{}", random_token())
}

/// SHA-256 hex: what the store keeps of a token (tokens have 256 bits of
/// entropy, so a fast hash is enough; passwords use Argon2id instead).
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Equality in time independent of where the inputs differ.
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_stable() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(api_token().starts_with("rmp_api_"));
        assert_eq!(hash("abc"), hash("abc"));
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(same("x1", "x1"));
        assert!(!same("x1", "x2"));
        assert!(!same("x1", "x12"));
    }
}

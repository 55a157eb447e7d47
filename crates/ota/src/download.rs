//! Download tokens: the short-lived credential in an offer's download URL,
//! bound to one device and one image.
//!
//! A token says "device D may fetch the image with SHA-256 H until T". It
//! is minted by the rollout engine when it sends an offer on the device's
//! own MQTT topic, and checked by the web part's download route, which
//! also requires the TLS client certificate of device D: a token copied to
//! another device (or to anyone else) is refused.
//!
//! Layout before base64url (no padding):
//!
//! ```text
//! version (1 = 0x01) | expires, Unix ms (u64 BE) | id length (u8) | id | SHA-256 (32) | MAC (16)
//! ```
//!
//! The MAC is HMAC-SHA256 over everything before it, truncated to 128
//! bits, under a [`TokenKey`] derived from the instance's console key with
//! a fixed label, so replicas sharing the data dir's secrets accept each
//! other's tokens and no new secret file exists.

use data_encoding::BASE64URL_NOPAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const MAC_LEN: usize = 16;
const LABEL: &[u8] = b"rampart ota download token v1";
/// Longest token accepted (a 255-byte id): longer text is refused unread.
pub const MAX_TOKEN_LEN: usize = 4 * (1 + 8 + 1 + 255 + 32 + MAC_LEN) / 3 + 4;

/// The key download tokens are authenticated with.
#[derive(Clone)]
pub struct TokenKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// The token key of an instance whose console key is `console_key`.
    pub fn derive(console_key: &[u8; 32]) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(console_key)
            .expect("HMAC accepts keys of any length");
        mac.update(LABEL);
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&mac.finalize().into_bytes());
        TokenKey(key)
    }

    fn mac(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_slice())
            .expect("HMAC accepts keys of any length");
        mac.update(data);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadGrant {
    /// The device it was issued to.
    pub device_id: String,
    /// SHA-256 of the image it opens, lowercase hex.
    pub sha256: String,
    /// When it stops being accepted, Unix ms.
    pub expires_at_ms: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not base64url, wrong length or layout, unknown version.
    #[error("the download token is malformed")]
    Malformed,
    /// The MAC does not match: forged, altered, or another instance's.
    #[error("the download token is not valid")]
    BadSignature,
    /// Valid but past its expiry.
    #[error("the download token has expired")]
    Expired,
}

impl TokenError {
    /// A stable code for error bodies and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::BadSignature => "token_invalid",
            TokenError::Expired => "token_expired",
        }
    }
}

/// Mints a token for `grant`. `None` if the device id is longer than 255
/// bytes or `sha256` is not 64 hex digits (neither happens for registry
/// ids and stored images).
pub fn mint(key: &TokenKey, grant: &DownloadGrant) -> Option<String> {
    let id = grant.device_id.as_bytes();
    let id_len = u8::try_from(id.len()).ok()?;
    let sha = hex::decode(&grant.sha256).ok()?;
    if sha.len() != 32 {
        return None;
    }
    let mut data = Vec::with_capacity(1 + 8 + 1 + id.len() + 32 + MAC_LEN);
    data.push(VERSION);
    data.extend_from_slice(&grant.expires_at_ms.to_be_bytes());
    data.push(id_len);
    data.extend_from_slice(id);
    data.extend_from_slice(&sha);
    let mac = key.mac(&data);
    data.extend_from_slice(&mac);
    Some(BASE64URL_NOPAD.encode(&data))
}

/// Checks a token's MAC and expiry at `now_ms`; returns what it grants.
/// The caller still checks that the grant's device is the one asking and
/// its image the one asked for.
pub fn check(key: &TokenKey, token: &str, now_ms: u64) -> Result<DownloadGrant, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let data = BASE64URL_NOPAD
        .decode(token.as_bytes())
        .map_err(|_| TokenError::Malformed)?;
    let (body, mac) = data
        .split_at_checked(
            data.len()
                .checked_sub(MAC_LEN)
                .ok_or(TokenError::Malformed)?,
        )
        .ok_or(TokenError::Malformed)?;
    let (&version, rest) = body.split_first().ok_or(TokenError::Malformed)?;
    if version != VERSION {
        return Err(TokenError::Malformed);
    }
    let (expires, rest) = rest.split_at_checked(8).ok_or(TokenError::Malformed)?;
    let (&id_len, rest) = rest.split_first().ok_or(TokenError::Malformed)?;
    let (id, sha) = rest
        .split_at_checked(usize::from(id_len))
        .ok_or(TokenError::Malformed)?;
    if sha.len() != 32 {
        return Err(TokenError::Malformed);
    }
    let expected = key.mac(body);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], mac)) {
        return Err(TokenError::BadSignature);
    }
    let expires_at_ms = u64::from_be_bytes(expires.try_into().map_err(|_| TokenError::Malformed)?);
    if now_ms > expires_at_ms {
        return Err(TokenError::Expired);
    }
    let device_id = std::str::from_utf8(id)
        .map_err(|_| TokenError::Malformed)?
        .to_owned();
    Ok(DownloadGrant {
        device_id,
        sha256: hex::encode(sha),
        expires_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn grant() -> DownloadGrant {
        DownloadGrant {
            device_id: "greenhouse-1".into(),
            sha256: "ab".repeat(32),
            expires_at_ms: 1_000_000,
        }
    }

    fn key(b: u8) -> TokenKey {
        TokenKey::derive(&[b; 32])
    }

    #[test]
    fn a_minted_token_checks_until_it_expires() {
        let t = mint(&key(1), &grant()).expect("mints");
        assert!(t.len() <= MAX_TOKEN_LEN);
        assert_eq!(check(&key(1), &t, 999_999), Ok(grant()));
        assert_eq!(check(&key(1), &t, 1_000_000), Ok(grant()));
        assert_eq!(check(&key(1), &t, 1_000_001), Err(TokenError::Expired));
    }

    #[test]
    fn another_instance_or_an_edited_token_is_refused() {
        let t = mint(&key(1), &grant()).expect("mints");
        assert_eq!(check(&key(2), &t, 0), Err(TokenError::BadSignature));
        let mut other = grant();
        other.device_id = "greenhouse-2".into();
        let t2 = mint(&key(1), &other).expect("mints");
        // Splicing the other device's id into a valid token breaks the MAC.
        let mut bytes = BASE64URL_NOPAD.decode(t.as_bytes()).expect("b64");
        let last = 1 + 8 + 1 + "greenhouse-1".len() - 1;
        bytes[last] = b'2';
        let spliced = BASE64URL_NOPAD.encode(&bytes);
        assert_ne!(spliced, t2);
        assert_eq!(check(&key(1), &spliced, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn garbage_is_malformed() {
        for t in ["", "!!!", "AQ", &"A".repeat(MAX_TOKEN_LEN + 1)] {
            assert_eq!(check(&key(1), t, 0), Err(TokenError::Malformed), "{t}");
        }
        let mut g = grant();
        g.sha256 = "zz".into();
        assert_eq!(mint(&key(1), &g), None);
        g = grant();
        g.device_id = "x".repeat(256);
        assert_eq!(mint(&key(1), &g), None);
    }

    proptest! {
        #[test]
        fn tokens_round_trip_and_noise_never_panics(
            id in "[a-z0-9-]{1,64}",
            exp in any::<u64>(),
            noise in "[A-Za-z0-9_-]{0,200}",
        ) {
            let g = DownloadGrant { device_id: id, sha256: "0f".repeat(32), expires_at_ms: exp };
            let t = mint(&key(7), &g).expect("mints");
            prop_assert_eq!(check(&key(7), &t, 0), Ok(g));
            let _ = check(&key(7), &noise, 0);
        }
    }
}

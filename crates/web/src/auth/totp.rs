//! Time-based one-time passwords (RFC 6238 over RFC 4226 HOTP), HMAC-SHA1,
//! 6 digits, 30-second steps: what every authenticator app implements.
//!
//! The secret is 160 random bits (RFC 4226 §4 recommends at least 128),
//! shown once as base32 in an `otpauth://` URI and a QR code, and stored
//! sealed with AES-256-GCM under the console key, which lives in the data
//! dir and never in the database (see [`SealingKey`]).

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;

/// Seconds per step (RFC 6238 §4: X = 30 by default).
pub const STEP_SECS: i64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Steps before and after now that are accepted, for clock drift
/// (RFC 6238 §5.2 recommends at most one).
const WINDOW: i64 = 1;

/// A TOTP secret in clear: only ever in memory, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret(Vec<u8>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl TotpSecret {
    /// 20 random bytes.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut bytes = vec![0u8; 20];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// A secret from its bytes (tests, RFC vectors).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// Base32 without padding, as authenticator apps take it.
    pub fn base32(&self) -> String {
        data_encoding::BASE32_NOPAD.encode(&self.0)
    }

    /// The `otpauth://` URI for `account` at `issuer` (Key Uri Format).
    pub fn uri(&self, issuer: &str, account: &str) -> String {
        let enc = |s: &str| -> String {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        char::from(b).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect()
        };
        format!(
            "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
            enc(issuer),
            enc(account),
            self.base32(),
            enc(issuer)
        )
    }

    /// The code of step `counter` (RFC 4226 §5.3), `digits` long.
    fn hotp(&self, counter: u64, digits: u32) -> u32 {
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &self.0);
        let tag = hmac::sign(&key, &counter.to_be_bytes());
        let mac = tag.as_ref();
        // Dynamic truncation: the low nibble of the last byte picks the
        // offset (a SHA-1 tag has 20 bytes, so offset + 3 <= 18).
        let offset = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
        let word = mac
            .get(offset..offset + 4)
            .map_or(0, |b| u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]));
        word % 10u32.pow(digits)
    }

    /// The step of Unix time `unix` (RFC 6238 §4.2, T0 = 0).
    fn step(unix: i64) -> i64 {
        unix.div_euclid(STEP_SECS)
    }

    /// The 6-digit code at Unix time `unix`, zero-padded.
    pub fn code_at(&self, unix: i64) -> String {
        let step = u64::try_from(Self::step(unix)).unwrap_or(0);
        format!(
            "{:0width$}",
            self.hotp(step, DIGITS),
            width = DIGITS as usize
        )
    }

    /// The step whose code `code` is, within one step of `unix`; `None` if
    /// it matches none. Callers refuse a step used before (replay).
    pub fn verify(&self, code: &str, unix: i64) -> Option<i64> {
        let code = code.trim();
        if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now = Self::step(unix);
        (now - WINDOW..=now + WINDOW)
            .find(|&s| s >= 0 && super::secret::same(&self.code_at(s * STEP_SECS), code))
    }
}

/// The key sealing TOTP secrets at rest (AES-256-GCM, 96-bit random nonce
/// per seal, the user id as associated data so a sealed secret cannot be
/// moved to another user's row).
#[derive(Clone)]
pub struct SealingKey([u8; 32]);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

/// A sealed secret could not be opened: wrong key or damaged row.
#[derive(Debug, thiserror::Error)]
#[error("the stored secret cannot be opened (damaged, or sealed with another console key)")]
pub struct UnsealError;

impl SealingKey {
    /// A key from its 32 bytes.
    pub fn new(key: [u8; 32]) -> Self {
        Self(key)
    }

    fn key(&self) -> LessSafeKey {
        // AES-256 takes exactly 32 bytes, which the type guarantees.
        let Ok(k) = UnboundKey::new(&AES_256_GCM, &self.0) else {
            unreachable!("a 32-byte key is a valid AES-256 key")
        };
        LessSafeKey::new(k)
    }

    /// `nonce ‖ ciphertext ‖ tag` of `secret` for user `user_id`.
    pub fn seal(&self, secret: &TotpSecret, user_id: &str) -> Vec<u8> {
        self.seal_bytes(&secret.0, user_id)
    }

    /// The secret sealed by [`SealingKey::seal`] for `user_id`.
    pub fn open(&self, sealed: &[u8], user_id: &str) -> Result<TotpSecret, UnsealError> {
        self.open_bytes(sealed, user_id).map(TotpSecret)
    }

    /// `nonce ‖ ciphertext ‖ tag` of any secret, bound to `context` (the
    /// row it belongs to, e.g. a user id or `alert-channel:NAME`) so that a
    /// sealed value cannot be moved to another row.
    pub fn seal_bytes(&self, clear: &[u8], context: &str) -> Vec<u8> {
        use rand::RngCore;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut data = clear.to_vec();
        if self
            .key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .is_err()
        {
            unreachable!("secrets of a few KiB cannot exceed the AES-GCM limit")
        }
        let mut out = nonce.to_vec();
        out.extend(data);
        out
    }

    /// The secret sealed by [`SealingKey::seal_bytes`] for `context`.
    pub fn open_bytes(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, UnsealError> {
        if sealed.len() < NONCE_LEN {
            return Err(UnsealError);
        }
        let (nonce, data) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| UnsealError)?;
        let mut data = data.to_vec();
        let clear = self
            .key()
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| UnsealError)?;
        Ok(clear.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 rows (8 digits there; the last 6 here,
    /// plus the 8-digit values through `hotp` directly).
    #[test]
    fn rfc_6238_test_vectors() {
        let s = TotpSecret::from_bytes(b"12345678901234567890".to_vec());
        for (t, eight) in [
            (59, 94287082),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            let step = u64::try_from(t / STEP_SECS).expect("positive");
            assert_eq!(s.hotp(step, 8), eight, "T = {t}");
            assert_eq!(s.code_at(t), format!("{:06}", eight % 1_000_000), "T = {t}");
        }
    }

    #[test]
    fn codes_verify_within_one_step_only() {
        let s = TotpSecret::generate();
        let t = 1_700_000_000;
        let code = s.code_at(t);
        assert_eq!(s.verify(&code, t), Some(t / STEP_SECS));
        assert!(s.verify(&code, t + STEP_SECS).is_some());
        assert!(s.verify(&code, t + 3 * STEP_SECS).is_none());
        assert!(s.verify("12345", t).is_none());
        assert!(s.verify("abcdef", t).is_none());
    }

    #[test]
    fn sealed_secrets_open_only_for_their_user_and_key() {
        let key = SealingKey::new([3; 32]);
        let s = TotpSecret::generate();
        let sealed = key.seal(&s, "u1");
        assert_eq!(key.open(&sealed, "u1").expect("open"), s);
        assert!(key.open(&sealed, "u2").is_err());
        assert!(SealingKey::new([4; 32]).open(&sealed, "u1").is_err());
        assert!(key.open(&sealed[..5], "u1").is_err());
        assert!(!format!("{s:?}{key:?}").contains(&s.base32()));
    }

    #[test]
    fn the_uri_names_issuer_and_account() {
        let s = TotpSecret::from_bytes(vec![0; 20]);
        assert_eq!(
            s.uri("Rampart", "alice smith"),
            "otpauth://totp/Rampart:alice%20smith?secret=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&issuer=Rampart&algorithm=SHA1&digits=6&period=30"
        );
    }
}

//! Downlinks the device parses, all JSON objects:
//!
//! - `bind/down`: `{"type":"claim","nonce":"<32 lowercase hex>","expiresAt":<unix ms>}`,
//!   `{"type":"bound","owner":"<owner>"}` or
//!   `{"type":"error","code":"<code>","message":"<text>"}`;
//! - `cert/down`: `{"certificate":"<PEM>","chain":"<PEM>","serial":"<hex>","notAfter":<unix ms>}`
//!   or `{"error":{"code":"<code>","message":"<text>"}}`;
//! - `state/down`: any object of desired fields; `{}` asks for a report;
//! - `cmd/down`: `{"id":"<request id>","name":"<command>","args":{…}}`;
//! - `ota/down`: `{"type":"offer","campaign":17,"manifest":"<hex>","signature":"<128 hex>",
//!   "url":"https://…","size":123456,"sha256":"<64 hex>"}` or
//!   `{"type":"cancel","campaign":17}` (docs/ota.md §2).
//!
//! Unknown fields are ignored so that the server can add fields without
//! breaking devices in the field; a known field given twice is refused (two
//! readers could take different ones), as is a known field of the wrong type.

use core::fmt;

use super::Nonce;
use super::json::{self, JsonError, JsonObject, JsonStr, JsonValue};
use crate::ota::bundle::SIGNATURE_LEN;
use crate::ota::manifest::MAX_MANIFEST_LEN;

/// Why a downlink was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownlinkError {
    /// Not valid JSON.
    Json(JsonError),
    /// Valid JSON, but not an object.
    NotAnObject,
    /// A required field is absent.
    Missing(&'static str),
    /// A field has the wrong type (or a number out of range).
    WrongType(&'static str),
    /// A field appears twice.
    Duplicate(&'static str),
    /// A `type` the topic does not know (`bind/down`: `claim`, `bound`,
    /// `error`; `ota/down`: `offer`, `cancel`).
    UnknownType,
    /// A claim nonce that is not 32 lowercase hex characters.
    BadNonce,
    /// `cert/down` with both a certificate and an error.
    Ambiguous,
    /// A hex field that is not lowercase hex of the allowed length
    /// (`manifest`: 1 to [`MAX_MANIFEST_LEN`] bytes, `signature`: 64 bytes,
    /// `sha256`: 32 bytes).
    BadHex(&'static str),
}

impl fmt::Display for DownlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownlinkError::Json(e) => write!(f, "downlink is not valid JSON: {e}"),
            DownlinkError::NotAnObject => f.write_str("downlink is not a JSON object"),
            DownlinkError::Missing(field) => write!(f, "downlink has no \"{field}\""),
            DownlinkError::WrongType(field) => {
                write!(f, "downlink field \"{field}\" has the wrong type")
            }
            DownlinkError::Duplicate(field) => {
                write!(f, "downlink field \"{field}\" appears twice")
            }
            DownlinkError::UnknownType => f.write_str(
                "downlink \"type\" is unknown (bind/down: claim, bound, error; ota/down: offer, cancel)",
            ),
            DownlinkError::BadNonce => {
                f.write_str("claim nonce is not 32 lowercase hex characters")
            }
            DownlinkError::Ambiguous => {
                f.write_str("certificate downlink has both a certificate and an error")
            }
            DownlinkError::BadHex(field) => write!(
                f,
                "downlink field \"{field}\" is not lowercase hex of the allowed length"
            ),
        }
    }
}

impl core::error::Error for DownlinkError {}

impl From<JsonError> for DownlinkError {
    fn from(e: JsonError) -> Self {
        DownlinkError::Json(e)
    }
}

fn object(payload: &[u8]) -> Result<JsonObject<'_>, DownlinkError> {
    match json::parse(payload)? {
        JsonValue::Object(o) => Ok(o),
        _ => Err(DownlinkError::NotAnObject),
    }
}

/// The fields named in `names`, each at most once; others are ignored.
fn pick<'a, const K: usize>(
    obj: &JsonObject<'a>,
    names: [&'static str; K],
) -> Result<[Option<JsonValue<'a>>; K], DownlinkError> {
    let mut found = [None; K];
    for (key, value) in obj.iter() {
        if let Some((slot, name)) = found
            .iter_mut()
            .zip(names)
            .find(|(_, name)| key.eq_str(name))
        {
            if slot.is_some() {
                return Err(DownlinkError::Duplicate(name));
            }
            *slot = Some(value);
        }
    }
    Ok(found)
}

fn string<'a>(v: Option<JsonValue<'a>>, name: &'static str) -> Result<JsonStr<'a>, DownlinkError> {
    match v {
        Some(JsonValue::Str(s)) => Ok(s),
        Some(_) => Err(DownlinkError::WrongType(name)),
        None => Err(DownlinkError::Missing(name)),
    }
}

fn optional_string<'a>(
    v: Option<JsonValue<'a>>,
    name: &'static str,
) -> Result<JsonStr<'a>, DownlinkError> {
    match v {
        None => Ok(JsonStr::plain("")),
        v => string(v, name),
    }
}

/// A non-negative integer field (milliseconds, ids, sizes).
fn millis(v: Option<JsonValue<'_>>, name: &'static str) -> Result<u64, DownlinkError> {
    match v {
        Some(JsonValue::Number(n)) => n.as_u64().ok_or(DownlinkError::WrongType(name)),
        Some(_) => Err(DownlinkError::WrongType(name)),
        None => Err(DownlinkError::Missing(name)),
    }
}

/// A message on `bind/down`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BindMessage<'a> {
    /// A user claims the device: confirm with this nonce before `expires_at_ms`.
    Claim {
        /// The server's nonce, to echo on `bind/up`.
        nonce: Nonce,
        /// When the claim expires (Unix ms).
        expires_at_ms: u64,
    },
    /// The claim is complete: the device is bound to `owner`.
    Bound {
        /// The new owner (user or group).
        owner: JsonStr<'a>,
    },
    /// The claim failed.
    Error {
        /// Machine-readable reason.
        code: JsonStr<'a>,
        /// Human-readable reason (empty if the server sent none).
        message: JsonStr<'a>,
    },
}

/// Parses a `bind/down` payload.
pub fn parse_bind(payload: &[u8]) -> Result<BindMessage<'_>, DownlinkError> {
    let obj = object(payload)?;
    let [kind, nonce, expires, owner, code, message] = pick(
        &obj,
        ["type", "nonce", "expiresAt", "owner", "code", "message"],
    )?;
    let kind = string(kind, "type")?;
    if kind.eq_str("claim") {
        let nonce = string(nonce, "nonce")?;
        let nonce = nonce
            .as_plain()
            .and_then(Nonce::parse)
            .ok_or(DownlinkError::BadNonce)?;
        Ok(BindMessage::Claim {
            nonce,
            expires_at_ms: millis(expires, "expiresAt")?,
        })
    } else if kind.eq_str("bound") {
        Ok(BindMessage::Bound {
            owner: string(owner, "owner")?,
        })
    } else if kind.eq_str("error") {
        Ok(BindMessage::Error {
            code: string(code, "code")?,
            message: optional_string(message, "message")?,
        })
    } else {
        Err(DownlinkError::UnknownType)
    }
}

/// A message on `cert/down`: the answer to a renewal request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CertificateMessage<'a> {
    /// The new certificate.
    Issued {
        /// The leaf certificate, PEM.
        certificate: JsonStr<'a>,
        /// Leaf and issuing CA, PEM (what the device presents in TLS).
        chain: JsonStr<'a>,
        /// The new certificate's serial, hex.
        serial: JsonStr<'a>,
        /// Its `notAfter`, Unix ms.
        not_after_ms: u64,
    },
    /// The server refused the request.
    Refused {
        /// Machine-readable reason.
        code: JsonStr<'a>,
        /// Human-readable reason (empty if the server sent none).
        message: JsonStr<'a>,
    },
}

/// Parses a `cert/down` payload.
pub fn parse_certificate(payload: &[u8]) -> Result<CertificateMessage<'_>, DownlinkError> {
    let obj = object(payload)?;
    let [certificate, chain, serial, not_after, error] = pick(
        &obj,
        ["certificate", "chain", "serial", "notAfter", "error"],
    )?;
    match (error, certificate) {
        (Some(_), Some(_)) => Err(DownlinkError::Ambiguous),
        (Some(JsonValue::Object(e)), None) => {
            let [code, message] = pick(&e, ["code", "message"])?;
            Ok(CertificateMessage::Refused {
                code: string(code, "code")?,
                message: optional_string(message, "message")?,
            })
        }
        (Some(_), None) => Err(DownlinkError::WrongType("error")),
        (None, certificate) => Ok(CertificateMessage::Issued {
            certificate: string(certificate, "certificate")?,
            chain: string(chain, "chain")?,
            serial: string(serial, "serial")?,
            not_after_ms: millis(not_after, "notAfter")?,
        }),
    }
}

/// A message on `state/down`: desired fields, or `{}` asking for a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateRequest<'a> {
    desired: JsonObject<'a>,
}

impl<'a> StateRequest<'a> {
    /// Whether this only asks for a report (the empty object).
    pub fn is_report_request(&self) -> bool {
        self.desired.is_empty()
    }

    /// The desired fields; the device applies those it knows and reports.
    pub fn desired(&self) -> JsonObject<'a> {
        self.desired
    }
}

/// Parses a `state/down` payload.
pub fn parse_state_request(payload: &[u8]) -> Result<StateRequest<'_>, DownlinkError> {
    Ok(StateRequest {
        desired: object(payload)?,
    })
}

/// A message on `cmd/down`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Command<'a> {
    /// Request id, echoed in the result.
    pub id: JsonStr<'a>,
    /// The command's name.
    pub name: JsonStr<'a>,
    /// Its arguments (the empty object when absent).
    pub args: JsonObject<'a>,
}

/// Parses a `cmd/down` payload.
pub fn parse_command(payload: &[u8]) -> Result<Command<'_>, DownlinkError> {
    let obj = object(payload)?;
    let [id, name, args] = pick(&obj, ["id", "name", "args"])?;
    Ok(Command {
        id: string(id, "id")?,
        name: string(name, "name")?,
        args: match args {
            None => JsonObject::EMPTY,
            Some(JsonValue::Object(o)) => o,
            Some(_) => return Err(DownlinkError::WrongType("args")),
        },
    })
}

/// A message on `ota/down` (docs/ota.md §2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OtaMessage<'a, 'm> {
    /// An update offer: verify the manifest and signature
    /// ([`crate::ota::update::Ota::offer`]), then download `url`.
    Offer(OtaOffer<'a, 'm>),
    /// Discard a download in progress for this campaign.
    Cancel {
        /// The campaign whose download to discard.
        campaign: u64,
    },
}

/// The fields of an offer; the manifest decides, `size` and `sha256`
/// repeat it for logging and for recognising a re-sent offer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OtaOffer<'a, 'm> {
    /// The campaign offering it.
    pub campaign: u64,
    /// The signed manifest bytes (decoded from hex into the caller's buffer).
    pub manifest: &'m [u8],
    /// The Ed25519 signature over `manifest`.
    pub signature: [u8; SIGNATURE_LEN],
    /// Where to download the image (HTTPS, with a token bound to the device).
    pub url: JsonStr<'a>,
    /// The image size in bytes.
    pub size: u64,
    /// The image SHA-256.
    pub sha256: [u8; 32],
}

/// A lowercase hex digit's value (uppercase is refused, like claim nonces).
fn hex_digit(c: char) -> Option<u8> {
    if c.is_ascii_digit() || ('a'..='f').contains(&c) {
        c.to_digit(16).and_then(|d| u8::try_from(d).ok())
    } else {
        None
    }
}

/// Decodes lowercase hex into `buf`; returns the byte count. Refuses odd
/// lengths, other characters and more than `buf` holds.
fn hex_into(s: &JsonStr<'_>, buf: &mut [u8], name: &'static str) -> Result<usize, DownlinkError> {
    let bad = DownlinkError::BadHex(name);
    let mut chars = s.chars();
    let mut n = 0usize;
    while let Some(hi) = chars.next() {
        let lo = chars.next().ok_or(bad)?;
        let byte = hex_digit(hi)
            .zip(hex_digit(lo))
            .map(|(h, l)| h.wrapping_mul(16) | l)
            .ok_or(bad)?;
        *buf.get_mut(n).ok_or(bad)? = byte;
        n = n.checked_add(1).ok_or(bad)?;
    }
    Ok(n)
}

/// Exactly `N` bytes of lowercase hex.
fn hex_exact<const N: usize>(
    v: Option<JsonValue<'_>>,
    name: &'static str,
) -> Result<[u8; N], DownlinkError> {
    let mut out = [0u8; N];
    if hex_into(&string(v, name)?, &mut out, name)? != N {
        return Err(DownlinkError::BadHex(name));
    }
    Ok(out)
}

/// Parses an `ota/down` payload; an offer's manifest is decoded into
/// `manifest_buf` (a manifest never exceeds [`MAX_MANIFEST_LEN`] bytes).
pub fn parse_ota<'a, 'm>(
    payload: &'a [u8],
    manifest_buf: &'m mut [u8; MAX_MANIFEST_LEN],
) -> Result<OtaMessage<'a, 'm>, DownlinkError> {
    let obj = object(payload)?;
    let [kind, campaign, manifest, signature, url, size, sha256] = pick(
        &obj,
        [
            "type",
            "campaign",
            "manifest",
            "signature",
            "url",
            "size",
            "sha256",
        ],
    )?;
    let kind = string(kind, "type")?;
    if kind.eq_str("cancel") {
        return Ok(OtaMessage::Cancel {
            campaign: millis(campaign, "campaign")?,
        });
    }
    if !kind.eq_str("offer") {
        return Err(DownlinkError::UnknownType);
    }
    let campaign = millis(campaign, "campaign")?;
    let manifest_hex = string(manifest, "manifest")?;
    let n = hex_into(&manifest_hex, manifest_buf, "manifest")?;
    if n == 0 {
        return Err(DownlinkError::BadHex("manifest"));
    }
    let signature = hex_exact::<SIGNATURE_LEN>(signature, "signature")?;
    let url = string(url, "url")?;
    let size = millis(size, "size")?;
    let sha256 = hex_exact::<32>(sha256, "sha256")?;
    let manifest: &'m [u8] = manifest_buf
        .get(..n)
        .ok_or(DownlinkError::BadHex("manifest"))?;
    Ok(OtaMessage::Offer(OtaOffer {
        campaign,
        manifest,
        signature,
        url,
        size,
        sha256,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NONCE: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn bind_messages() {
        let claim =
            std::format!(r#"{{"type":"claim","nonce":"{NONCE}","expiresAt":1800000000000}}"#);
        assert_eq!(
            parse_bind(claim.as_bytes()),
            Ok(BindMessage::Claim {
                nonce: Nonce::parse(NONCE).expect("valid"),
                expires_at_ms: 1_800_000_000_000
            })
        );
        let Ok(BindMessage::Bound { owner }) = parse_bind(br#"{"type":"bound","owner":"alice"}"#)
        else {
            panic!("bound")
        };
        assert!(owner.eq_str("alice"));
        let Ok(BindMessage::Error { code, message }) =
            parse_bind(br#"{"message":"claim expired","code":"expired","type":"error","extra":1}"#)
        else {
            panic!("error")
        };
        assert!(code.eq_str("expired") && message.eq_str("claim expired"));
        let Ok(BindMessage::Error { message, .. }) = parse_bind(br#"{"type":"error","code":"x"}"#)
        else {
            panic!("error without message")
        };
        assert!(message.is_empty());
    }

    #[test]
    fn bad_bind_messages_are_refused_with_the_reason() {
        let cases: &[(&[u8], DownlinkError)] = &[
            (b"[]", DownlinkError::NotAnObject),
            (br#"{"nonce":"x"}"#, DownlinkError::Missing("type")),
            (br#"{"type":1}"#, DownlinkError::WrongType("type")),
            (br#"{"type":"steal"}"#, DownlinkError::UnknownType),
            (
                br#"{"type":"claim","expiresAt":1}"#,
                DownlinkError::Missing("nonce"),
            ),
            (
                br#"{"type":"claim","nonce":"ABC","expiresAt":1}"#,
                DownlinkError::BadNonce,
            ),
            (
                br#"{"type":"claim","nonce":"0123456789abcdef0123456789abcdef"}"#,
                DownlinkError::Missing("expiresAt"),
            ),
            (
                br#"{"type":"claim","nonce":"0123456789abcdef0123456789abcdef","expiresAt":-5}"#,
                DownlinkError::WrongType("expiresAt"),
            ),
            (
                br#"{"type":"claim","nonce":"0123456789abcdef0123456789abcdef","expiresAt":1.5}"#,
                DownlinkError::WrongType("expiresAt"),
            ),
            (
                br#"{"type":"bound","type":"claim"}"#,
                DownlinkError::Duplicate("type"),
            ),
            (br#"{"type":"bound"}"#, DownlinkError::Missing("owner")),
            (br#"{"type":"error"}"#, DownlinkError::Missing("code")),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                parse_bind(payload),
                Err(*expected),
                "{}",
                std::string::String::from_utf8_lossy(payload)
            );
        }
        assert!(matches!(
            parse_bind(b"{\"type\":"),
            Err(DownlinkError::Json(_))
        ));
    }

    #[test]
    fn certificate_messages() {
        let issued = br#"{"certificate":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n","chain":"c","serial":"0a1b","notAfter":1900000000000}"#;
        let Ok(CertificateMessage::Issued {
            certificate,
            chain,
            serial,
            not_after_ms,
        }) = parse_certificate(issued)
        else {
            panic!("issued")
        };
        let mut buf = [0u8; 128];
        assert_eq!(
            certificate.unescape_into(&mut buf),
            Ok("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
        );
        assert!(chain.eq_str("c") && serial.eq_str("0a1b"));
        assert_eq!(not_after_ms, 1_900_000_000_000);

        let Ok(CertificateMessage::Refused { code, message }) =
            parse_certificate(br#"{"error":{"code":"bad_csr","message":"CN does not match"}}"#)
        else {
            panic!("refused")
        };
        assert!(code.eq_str("bad_csr") && message.eq_str("CN does not match"));

        assert_eq!(
            parse_certificate(br#"{"error":{"code":"x"},"certificate":"y"}"#),
            Err(DownlinkError::Ambiguous)
        );
        assert_eq!(
            parse_certificate(br#"{"error":"x"}"#),
            Err(DownlinkError::WrongType("error"))
        );
        assert_eq!(
            parse_certificate(br#"{"error":{}}"#),
            Err(DownlinkError::Missing("code"))
        );
        assert_eq!(
            parse_certificate(br#"{"certificate":"a","chain":"b","serial":"c"}"#),
            Err(DownlinkError::Missing("notAfter"))
        );
        assert_eq!(
            parse_certificate(br#"{}"#),
            Err(DownlinkError::Missing("certificate"))
        );
    }

    #[test]
    fn state_requests() {
        let r = parse_state_request(b" {} ").expect("object");
        assert!(r.is_report_request());
        let r = parse_state_request(br#"{"led":true,"interval":30}"#).expect("object");
        assert!(!r.is_report_request());
        assert_eq!(r.desired().get("led"), Some(JsonValue::Bool(true)));
        assert_eq!(r.desired().iter().count(), 2);
        assert_eq!(
            parse_state_request(b"null"),
            Err(DownlinkError::NotAnObject)
        );
    }

    #[test]
    fn commands() {
        let c =
            parse_command(br#"{"id":"r-1","name":"reboot","args":{"delay":5}}"#).expect("valid");
        assert_eq!(c.id.as_plain(), Some("r-1"));
        assert!(c.name.eq_str("reboot"));
        assert_eq!(c.args.as_str(), r#"{"delay":5}"#);
        let c = parse_command(br#"{"id":"r-2","name":"ping"}"#).expect("valid");
        assert!(c.args.is_empty());
        assert_eq!(
            parse_command(br#"{"id":"r","name":"x","args":[]}"#),
            Err(DownlinkError::WrongType("args"))
        );
        assert_eq!(
            parse_command(br#"{"name":"x"}"#),
            Err(DownlinkError::Missing("id"))
        );
        assert_eq!(
            parse_command(br#"{"id":7,"name":"x"}"#),
            Err(DownlinkError::WrongType("id"))
        );
    }

    fn hex(bytes: &[u8]) -> std::string::String {
        bytes.iter().map(|b| std::format!("{b:02x}")).collect()
    }

    fn offer_json(
        campaign: u64,
        manifest: &[u8],
        signature: &[u8],
        url: &str,
        size: u64,
        sha256: &[u8],
    ) -> std::string::String {
        std::format!(
            r#"{{"type":"offer","campaign":{campaign},"manifest":"{}","signature":"{}","url":"{url}","size":{size},"sha256":"{}"}}"#,
            hex(manifest),
            hex(signature),
            hex(sha256)
        )
    }

    #[test]
    fn ota_offers_and_cancels() {
        let manifest = [1u8, 0, 6, b's', b'e', b'n', b's', b'o', b'r'];
        let json = offer_json(
            17,
            &manifest,
            &[0xab; 64],
            "https://h:8443/ota/v1/images/00?t=x.y",
            123_456,
            &[0x5a; 32],
        );
        let mut buf = [0u8; MAX_MANIFEST_LEN];
        let Ok(OtaMessage::Offer(offer)) = parse_ota(json.as_bytes(), &mut buf) else {
            panic!("offer")
        };
        assert_eq!(offer.campaign, 17);
        assert_eq!(offer.manifest, &manifest[..]);
        assert_eq!(offer.signature, [0xab; 64]);
        assert!(offer.url.eq_str("https://h:8443/ota/v1/images/00?t=x.y"));
        assert_eq!(offer.size, 123_456);
        assert_eq!(offer.sha256, [0x5a; 32]);
        // Escaped characters in the url are resolved; unknown fields ignored.
        let escaped = json.replace(
            r#""url":"https://h:8443/ota/v1/images/00?t=x.y""#,
            r#""url":"https:\/\/h\u003a8443\/i","future":[1]"#,
        );
        let Ok(OtaMessage::Offer(offer)) = parse_ota(escaped.as_bytes(), &mut buf) else {
            panic!("escaped offer")
        };
        assert!(offer.url.eq_str("https://h:8443/i"));
        assert_eq!(
            parse_ota(br#"{"type":"cancel","campaign":17}"#, &mut buf),
            Ok(OtaMessage::Cancel { campaign: 17 })
        );
        // A manifest of the largest size fits the buffer.
        let json = offer_json(1, &[7; MAX_MANIFEST_LEN], &[0; 64], "u", 1, &[0; 32]);
        assert!(matches!(
            parse_ota(json.as_bytes(), &mut buf),
            Ok(OtaMessage::Offer(o)) if o.manifest.len() == MAX_MANIFEST_LEN
        ));
    }

    #[test]
    fn bad_ota_messages_are_refused_with_the_reason() {
        let good = offer_json(1, &[1, 2, 3], &[9; 64], "https://u", 10, &[0xc3; 32]);
        let with = |from: &str, to: &str| {
            assert!(good.contains(from), "{from}");
            good.replacen(from, to, 1)
        };
        let sig = hex(&[9; 64]);
        let sha = hex(&[0xc3; 32]);
        let cases: std::vec::Vec<(std::string::String, DownlinkError)> = std::vec![
            (r#"{"campaign":1}"#.into(), DownlinkError::Missing("type")),
            (
                r#"{"type":"upgrade","campaign":1}"#.into(),
                DownlinkError::UnknownType
            ),
            (
                r#"{"type":"cancel"}"#.into(),
                DownlinkError::Missing("campaign")
            ),
            (
                r#"{"type":"cancel","campaign":"1"}"#.into(),
                DownlinkError::WrongType("campaign")
            ),
            (
                r#"{"type":"cancel","campaign":-1}"#.into(),
                DownlinkError::WrongType("campaign")
            ),
            (
                r#"{"type":"cancel","campaign":1,"campaign":2}"#.into(),
                DownlinkError::Duplicate("campaign")
            ),
            (
                with(r#""type":"offer","#, r#""type":"offer","type":"offer","#),
                DownlinkError::Duplicate("type")
            ),
            (
                with(r#""manifest":"010203""#, r#""manifest":"""#),
                DownlinkError::BadHex("manifest")
            ),
            (
                with(r#""manifest":"010203""#, r#""manifest":"01020""#),
                DownlinkError::BadHex("manifest")
            ),
            (
                with(r#""manifest":"010203""#, r#""manifest":"0102AB""#),
                DownlinkError::BadHex("manifest")
            ),
            (
                with(r#""manifest":"010203""#, r#""manifest":"01020g""#),
                DownlinkError::BadHex("manifest")
            ),
            (
                with(r#""manifest":"010203""#, r#""manifest":66051"#),
                DownlinkError::WrongType("manifest")
            ),
            (
                with(r#""manifest":"010203","#, ""),
                DownlinkError::Missing("manifest")
            ),
            (with(&sig, &sig[2..]), DownlinkError::BadHex("signature")),
            (
                with(&sig, &std::format!("{sig}00")),
                DownlinkError::BadHex("signature")
            ),
            (with(&sha, &sha[2..]), DownlinkError::BadHex("sha256")),
            (
                with(&sha, &sha.to_uppercase()),
                DownlinkError::BadHex("sha256")
            ),
            (
                with(r#""url":"https://u""#, r#""url":null"#),
                DownlinkError::WrongType("url")
            ),
            (
                with(r#""size":10"#, r#""size":1e3"#),
                DownlinkError::WrongType("size")
            ),
            (with(r#","size":10"#, ""), DownlinkError::Missing("size")),
            (
                with(r#""campaign":1"#, r#""campaign":true"#),
                DownlinkError::WrongType("campaign")
            ),
        ];
        let mut buf = [0u8; MAX_MANIFEST_LEN];
        for (payload, expected) in &cases {
            assert_eq!(
                parse_ota(payload.as_bytes(), &mut buf),
                Err(*expected),
                "{payload}"
            );
        }
        let long = offer_json(1, &[7; MAX_MANIFEST_LEN + 1], &[0; 64], "u", 1, &[0; 32]);
        assert_eq!(
            parse_ota(long.as_bytes(), &mut buf),
            Err(DownlinkError::BadHex("manifest"))
        );
        assert_eq!(parse_ota(b"[]", &mut buf), Err(DownlinkError::NotAnObject));
        assert!(matches!(
            parse_ota(b"{\"type\":", &mut buf),
            Err(DownlinkError::Json(_))
        ));
    }

    proptest! {
        #[test]
        fn random_downlinks_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_bind(&bytes);
            let _ = parse_certificate(&bytes);
            let _ = parse_state_request(&bytes);
            let _ = parse_command(&bytes);
            let mut buf = [0u8; MAX_MANIFEST_LEN];
            if let Ok(OtaMessage::Offer(o)) = parse_ota(&bytes, &mut buf) {
                prop_assert!(!o.manifest.is_empty());
            }
        }

        #[test]
        fn offers_round_trip(
            campaign in any::<u64>(),
            manifest in prop::collection::vec(any::<u8>(), 1..=MAX_MANIFEST_LEN),
            signature in prop::collection::vec(any::<u8>(), 64..=64),
            sha256 in prop::collection::vec(any::<u8>(), 32..=32),
            size in any::<u64>(),
            url in "[a-zA-Z0-9:/?=._-]{0,80}",
        ) {
            let json = offer_json(campaign, &manifest, &signature, &url, size, &sha256);
            let mut buf = [0u8; MAX_MANIFEST_LEN];
            let parsed = parse_ota(json.as_bytes(), &mut buf);
            let Ok(OtaMessage::Offer(o)) = parsed else {
                return Err(TestCaseError::fail(std::format!("{parsed:?}")));
            };
            prop_assert_eq!(o.campaign, campaign);
            prop_assert_eq!(o.manifest, &manifest[..]);
            prop_assert_eq!(&o.signature[..], &signature[..]);
            prop_assert_eq!(&o.sha256[..], &sha256[..]);
            prop_assert_eq!(o.size, size);
            prop_assert!(o.url.eq_str(&url));
        }

        #[test]
        fn mutated_offers_never_panic(pos in 0usize..400, byte in any::<u8>()) {
            let mut json = offer_json(3, &[1, 0, 2], &[4; 64], "https://x", 9, &[5; 32]).into_bytes();
            if let Some(b) = json.get_mut(pos) { *b = byte; }
            let mut buf = [0u8; MAX_MANIFEST_LEN];
            if let Ok(OtaMessage::Offer(o)) = parse_ota(&json, &mut buf) {
                prop_assert!(!o.manifest.is_empty() && o.manifest.len() <= MAX_MANIFEST_LEN);
            }
        }

        #[test]
        fn mutated_claims_never_panic(pos in 0usize..80, byte in any::<u8>()) {
            let mut claim = std::format!(r#"{{"type":"claim","nonce":"{NONCE}","expiresAt":1800000000000}}"#).into_bytes();
            if let Some(b) = claim.get_mut(pos) { *b = byte; }
            if let Ok(BindMessage::Claim { nonce, .. }) = parse_bind(&claim) {
                prop_assert_eq!(nonce.as_str().len(), 32);
            }
        }
    }
}

//! Control uplinks, all JSON:
//!
//! - `state/up`: `{"fw":"1.4.2","type":"rampart-sim","uptimeMs":123456,"rssi":-61, …host fields}`;
//! - `bind/up`: `{"nonce":"<32 lowercase hex>"}` (claim confirmation);
//! - `cert/up`: `{"csr":"<PEM CSR>"}` (renewal request);
//! - `cmd/up`: `{"id":"<request id>","status":"ok"|"error"|"unknown","message":"…"}`;
//! - `ota/up`: `{"status":"downloading","version":"1.4.0","bytes":1024,"total":4096}`,
//!   `{"status":"failed","version":"1.4.0","reason":"hash-mismatch"}`, … (update
//!   progress and result, see [`OtaStatus`]).

use super::json::JsonStr;
use super::out::{Out, json};
use super::{EncodeError, Nonce};

/// A value of a reported-state field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StateValue<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A finite number (NaN and infinities are refused).
    Float(f64),
    /// Text.
    Str(&'a str),
}

/// The device's reported state for `state/up`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportedState<'a> {
    /// Firmware version (`"fw"`), a semantic version such as `1.4.2`.
    pub firmware: &'a str,
    /// The device type the firmware was built for (`"type"`), the string
    /// firmware manifests carry; campaigns target devices by it.
    pub device_type: &'a str,
    /// Milliseconds since boot (`"uptimeMs"`).
    pub uptime_ms: u64,
    /// Received signal strength in dBm (`"rssi"`), when known.
    pub rssi: Option<i16>,
    /// Further fields the host reports (e.g. `("led", Bool(true))`), in order.
    pub fields: &'a [(&'a str, StateValue<'a>)],
}

const BUILT_IN: [&str; 4] = ["fw", "type", "uptimeMs", "rssi"];

/// Encodes the reported state as one JSON object; returns the length.
pub fn encode_state(state: &ReportedState<'_>, buf: &mut [u8]) -> Result<usize, EncodeError> {
    for (i, (name, value)) in state.fields.iter().enumerate() {
        if BUILT_IN.contains(name)
            || state
                .fields
                .iter()
                .take(i)
                .any(|(earlier, _)| earlier == name)
        {
            return Err(EncodeError::DuplicateField);
        }
        if matches!(value, StateValue::Float(v) if !v.is_finite()) {
            return Err(EncodeError::NotFinite);
        }
    }
    let mut out = Out::new(buf);
    out.byte(b'{')?;
    json::key(&mut out, "fw")?;
    json::string(&mut out, state.firmware)?;
    out.byte(b',')?;
    json::key(&mut out, "type")?;
    json::string(&mut out, state.device_type)?;
    out.byte(b',')?;
    json::key(&mut out, "uptimeMs")?;
    json::uint(&mut out, state.uptime_ms)?;
    if let Some(rssi) = state.rssi {
        out.byte(b',')?;
        json::key(&mut out, "rssi")?;
        json::int(&mut out, i64::from(rssi))?;
    }
    for (name, value) in state.fields {
        out.byte(b',')?;
        json::key(&mut out, name)?;
        match *value {
            StateValue::Null => out.put(b"null")?,
            StateValue::Bool(true) => out.put(b"true")?,
            StateValue::Bool(false) => out.put(b"false")?,
            StateValue::Int(v) => json::int(&mut out, v)?,
            StateValue::Float(v) => json::f64(&mut out, v)?,
            StateValue::Str(s) => json::string(&mut out, s)?,
        }
    }
    out.byte(b'}')?;
    Ok(out.len())
}

/// Encodes `{"nonce":"…"}` confirming a claim; returns the length.
pub fn encode_claim_confirmation(nonce: &Nonce, buf: &mut [u8]) -> Result<usize, EncodeError> {
    let mut out = Out::new(buf);
    out.put(b"{\"nonce\":")?;
    json::string(&mut out, nonce.as_str())?;
    out.byte(b'}')?;
    Ok(out.len())
}

/// Encodes `{"csr":"…"}` (the PEM text of a CSR whose CN is the device id,
/// for a newly made key); returns the length.
pub fn encode_renewal_request(csr_pem: &str, buf: &mut [u8]) -> Result<usize, EncodeError> {
    let mut out = Out::new(buf);
    out.put(b"{\"csr\":")?;
    json::string(&mut out, csr_pem)?;
    out.byte(b'}')?;
    Ok(out.len())
}

/// Outcome of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandStatus {
    /// Done.
    Ok,
    /// Tried and failed.
    Error,
    /// The device does not know this command.
    Unknown,
}

impl CommandStatus {
    /// The wire word.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Ok => "ok",
            CommandStatus::Error => "error",
            CommandStatus::Unknown => "unknown",
        }
    }
}

/// Encodes a command result for `cmd/up`: the request's `id` (as received,
/// or [`JsonStr::plain`]), its status and an optional message; returns the
/// length.
pub fn encode_command_result(
    id: &JsonStr<'_>,
    status: CommandStatus,
    message: Option<&str>,
    buf: &mut [u8],
) -> Result<usize, EncodeError> {
    let mut out = Out::new(buf);
    out.put(b"{\"id\":")?;
    id.write_json(&mut out)?;
    out.put(b",\"status\":")?;
    json::string(&mut out, status.as_str())?;
    if let Some(message) = message {
        out.put(b",\"message\":")?;
        json::string(&mut out, message)?;
    }
    out.byte(b'}')?;
    Ok(out.len())
}

/// Where an update stands, as reported on `ota/up` (the per-device states
/// of a campaign).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtaStatus {
    /// The offer was accepted; the image is being received.
    Downloading,
    /// The image is received; its hash is being checked.
    Verifying,
    /// The new slot is selected (pending); the device reboots into it.
    PendingReboot,
    /// The new image runs on trial; it confirms once connected and published.
    PendingConfirm,
    /// The new image confirmed its health; the update is done.
    Succeeded,
    /// The update was refused or failed; the device stays on its firmware.
    Failed,
    /// The new image did not confirm (crash loop, hang, no connection); the
    /// device went back to its previous firmware.
    RolledBack,
}

impl OtaStatus {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            OtaStatus::Downloading => "downloading",
            OtaStatus::Verifying => "verifying",
            OtaStatus::PendingReboot => "pending-reboot",
            OtaStatus::PendingConfirm => "pending-confirm",
            OtaStatus::Succeeded => "succeeded",
            OtaStatus::Failed => "failed",
            OtaStatus::RolledBack => "rolled-back",
        }
    }
}

/// An update progress or result report for `ota/up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtaReport<'a> {
    /// Where the update stands.
    pub status: OtaStatus,
    /// The version being installed (empty when unknown, e.g. a manifest
    /// that did not decode).
    pub version: &'a str,
    /// Bytes received and expected, while downloading.
    pub progress: Option<(u64, u64)>,
    /// Why it failed or rolled back: a stable code such as `hash-mismatch`.
    pub reason: Option<&'static str>,
}

/// Encodes an update report for `ota/up`; returns the length.
pub fn encode_ota_report(report: &OtaReport<'_>, buf: &mut [u8]) -> Result<usize, EncodeError> {
    let mut out = Out::new(buf);
    out.put(b"{\"status\":")?;
    json::string(&mut out, report.status.as_str())?;
    out.put(b",\"version\":")?;
    json::string(&mut out, report.version)?;
    if let Some((bytes, total)) = report.progress {
        out.put(b",\"bytes\":")?;
        json::uint(&mut out, bytes)?;
        out.put(b",\"total\":")?;
        json::uint(&mut out, total)?;
    }
    if let Some(reason) = report.reason {
        out.put(b",\"reason\":")?;
        json::string(&mut out, reason)?;
    }
    out.byte(b'}')?;
    Ok(out.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;

    fn text(f: impl FnOnce(&mut [u8]) -> Result<usize, EncodeError>) -> String {
        let mut buf = [0u8; 512];
        let n = f(&mut buf).expect("fits");
        String::from_utf8(buf[..n].to_vec()).expect("utf-8")
    }

    #[test]
    fn reported_state() {
        let s = ReportedState {
            firmware: "1.4.2",
            device_type: "esp32c3-dht11",
            uptime_ms: 123_456,
            rssi: Some(-61),
            fields: &[
                ("led", StateValue::Bool(true)),
                ("mode", StateValue::Str("eco \"quiet\"")),
                ("drops", StateValue::Int(0)),
                ("vbat", StateValue::Float(3.3)),
                ("note", StateValue::Null),
            ],
        };
        assert_eq!(
            text(|b| encode_state(&s, b)),
            r#"{"fw":"1.4.2","type":"esp32c3-dht11","uptimeMs":123456,"rssi":-61,"led":true,"mode":"eco \"quiet\"","drops":0,"vbat":3.3,"note":null}"#
        );
        let bare = ReportedState {
            rssi: None,
            fields: &[],
            ..s
        };
        assert_eq!(
            text(|b| encode_state(&bare, b)),
            r#"{"fw":"1.4.2","type":"esp32c3-dht11","uptimeMs":123456}"#
        );
    }

    #[test]
    fn reported_state_refuses_duplicates_and_non_finite_numbers() {
        let base = ReportedState {
            firmware: "1",
            device_type: "t",
            uptime_ms: 0,
            rssi: None,
            fields: &[],
        };
        let mut buf = [0u8; 128];
        let dup = ReportedState {
            fields: &[("a", StateValue::Null), ("a", StateValue::Null)],
            ..base
        };
        assert_eq!(
            encode_state(&dup, &mut buf),
            Err(EncodeError::DuplicateField)
        );
        for name in ["rssi", "type"] {
            let builtin = ReportedState {
                fields: &[(name, StateValue::Int(1))],
                ..base
            };
            assert_eq!(
                encode_state(&builtin, &mut buf),
                Err(EncodeError::DuplicateField)
            );
        }
        let nan = ReportedState {
            fields: &[("t", StateValue::Float(f64::NAN))],
            ..base
        };
        assert_eq!(encode_state(&nan, &mut buf), Err(EncodeError::NotFinite));
        assert_eq!(
            encode_state(&base, &mut buf[..5]),
            Err(EncodeError::BufferTooSmall)
        );
    }

    #[test]
    fn claim_renewal_and_command_uplinks() {
        let nonce = Nonce::parse("00112233445566778899aabbccddeeff").expect("valid");
        assert_eq!(
            text(|b| encode_claim_confirmation(&nonce, b)),
            r#"{"nonce":"00112233445566778899aabbccddeeff"}"#
        );
        let pem = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";
        assert_eq!(
            text(|b| encode_renewal_request(pem, b)),
            r#"{"csr":"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"}"#
        );
        assert_eq!(
            text(|b| encode_command_result(&JsonStr::plain("r-1"), CommandStatus::Ok, None, b)),
            r#"{"id":"r-1","status":"ok"}"#
        );
        assert_eq!(
            text(|b| encode_command_result(
                &JsonStr::plain("r\"2"),
                CommandStatus::Unknown,
                Some("no such command: reboot"),
                b
            )),
            r#"{"id":"r\"2","status":"unknown","message":"no such command: reboot"}"#
        );
    }

    #[test]
    fn ota_reports() {
        let progress = OtaReport {
            status: OtaStatus::Downloading,
            version: "1.4.0",
            progress: Some((1024, 4096)),
            reason: None,
        };
        assert_eq!(
            text(|b| encode_ota_report(&progress, b)),
            r#"{"status":"downloading","version":"1.4.0","bytes":1024,"total":4096}"#
        );
        let failed = OtaReport {
            status: OtaStatus::RolledBack,
            version: "1.4.0",
            progress: None,
            reason: Some("crash-loop"),
        };
        assert_eq!(
            text(|b| encode_ota_report(&failed, b)),
            r#"{"status":"rolled-back","version":"1.4.0","reason":"crash-loop"}"#
        );
        let mut small = [0u8; 8];
        assert_eq!(
            encode_ota_report(&failed, &mut small),
            Err(EncodeError::BufferTooSmall)
        );
    }
}

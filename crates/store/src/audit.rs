//! The audit log's HMAC chain.
//!
//! Each row carries `mac = HMAC-SHA256(key, prev_mac ‖ fields)`, where `key`
//! lives outside the database (`audit.key` in the data dir) and `prev_mac` is
//! the previous row's mac. Without the key, nobody can edit a row, delete one
//! or recompute the chain with a plain hash: the first row whose mac does not
//! match, or whose `prev_mac` or sequence number does not follow, is reported.
//!
//! Deleting the *newest* rows leaves a chain that is valid as far as it goes;
//! to catch that, the store also keeps a signed *head* (the last seq and mac)
//! in a small file next to the key, and verification checks that the row it
//! names still exists with that mac.

use std::fmt;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use time::OffsetDateTime;

use crate::model::Actor;
use crate::{Result, StoreError};

type HmacSha256 = Hmac<Sha256>;

/// `prev_mac` of the first row.
const GENESIS_MAC: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The secret that keys the chain. Never stored in the database.
#[derive(Clone)]
pub struct AuditKey {
    key: [u8; 32],
    head_path: Option<PathBuf>,
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey")
            .field("key", &"<redacted>")
            .field("head_path", &self.head_path)
            .finish()
    }
}

impl AuditKey {
    /// A key from its 32 bytes; `head_path` is where the chain head is kept
    /// (`None` disables the truncation check, for tests of the chain alone).
    pub fn new(key: [u8; 32], head_path: Option<PathBuf>) -> Self {
        Self { key, head_path }
    }

    /// The mac of one row.
    #[allow(clippy::too_many_arguments)]
    fn mac(
        &self,
        seq: u64,
        at_ms: i64,
        actor: &str,
        source: &str,
        action: &str,
        subject: Option<&str>,
        detail: &str,
        prev_mac: &str,
    ) -> String {
        // `new_from_slice` only fails for key lengths HMAC cannot take; 32 bytes always works.
        let Ok(mut m) = HmacSha256::new_from_slice(&self.key) else {
            unreachable!("HMAC-SHA256 accepts any key length")
        };
        // Length-prefix every field so that no two different rows encode alike.
        let mut field = |b: &[u8]| {
            m.update(&(b.len() as u64).to_be_bytes());
            m.update(b);
        };
        field(prev_mac.as_bytes());
        field(&seq.to_be_bytes());
        field(&at_ms.to_be_bytes());
        field(actor.as_bytes());
        field(source.as_bytes());
        field(action.as_bytes());
        match subject {
            Some(s) => field(s.as_bytes()),
            None => field(b"\0none"),
        }
        field(detail.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }

    pub(crate) fn mac_of(&self, r: &AuditRecord) -> String {
        self.mac(
            r.seq,
            crate::millis::to_ms(r.at),
            &r.actor,
            &r.source,
            &r.action,
            r.subject.as_deref(),
            &r.detail_raw,
            &r.prev_mac,
        )
    }

    /// Records `(seq, mac)` as the chain head unless a later head is there.
    pub(crate) fn advance_head(&self, seq: u64, mac: &str) -> Result<()> {
        let Some(path) = &self.head_path else {
            return Ok(());
        };
        let io = |what: &str, source| StoreError::Io {
            what: format!("{what} {}", path.display()),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io("opening audit head", e))?;
        // The CLI and `serve` both append; the lock keeps the head monotonic.
        fs4::fs_std::FileExt::lock_exclusive(&file).map_err(|e| io("locking audit head", e))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| io("reading audit head", e))?;
        if parse_head(&text).is_some_and(|(s, _)| s >= seq) {
            return Ok(());
        }
        file.set_len(0).map_err(|e| io("writing audit head", e))?;
        file.rewind().map_err(|e| io("writing audit head", e))?;
        writeln!(file, "{seq} {mac}").map_err(|e| io("writing audit head", e))?;
        file.sync_data().map_err(|e| io("syncing audit head", e))?;
        Ok(())
    }

    fn head(&self) -> Result<Option<(u64, String)>> {
        let Some(path) = &self.head_path else {
            return Ok(None);
        };
        match std::fs::read_to_string(path) {
            Ok(t) if t.trim().is_empty() => Ok(None),
            Ok(t) => parse_head(&t).map(Some).ok_or_else(|| {
                StoreError::Corrupt(format!("audit head file {} is unreadable", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                what: format!("reading audit head {}", path.display()),
                source,
            }),
        }
    }

    /// The next row of a chain whose newest row is `last` (`None`: the log
    /// is empty), appended `at`: its seq, links and mac, ready to insert.
    /// The caller must hold the log's append lock from reading `last` until
    /// commit, or two writers would both extend the same row.
    pub(crate) fn seal(
        &self,
        entry: &AuditEntry,
        last: Option<(u64, String)>,
        at: OffsetDateTime,
    ) -> AuditRecord {
        let (seq, prev_mac) = match last {
            Some((s, m)) => (s + 1, m),
            None => (1, GENESIS_MAC.to_owned()),
        };
        let detail_raw = entry.detail.to_string();
        let mac = self.mac(
            seq,
            crate::millis::to_ms(at),
            &entry.actor.name,
            &entry.actor.source,
            &entry.action,
            entry.subject.as_deref(),
            &detail_raw,
            &prev_mac,
        );
        AuditRecord {
            seq,
            at,
            actor: entry.actor.name.clone(),
            source: entry.actor.source.clone(),
            action: entry.action.clone(),
            subject: entry.subject.clone(),
            detail: entry.detail.clone(),
            detail_raw,
            prev_mac,
            mac,
        }
    }

    /// Checks rows given oldest first; stops at the first break.
    pub(crate) fn verify(
        &self,
        rows: impl IntoIterator<Item = Result<AuditRecord>>,
    ) -> Result<AuditReport> {
        let mut check = self.check()?;
        for row in rows {
            if let Some(broken) = check.push(row?) {
                return Ok(broken);
            }
        }
        Ok(check.finish())
    }

    /// A check resuming after `anchor`, a row an earlier verification
    /// ended on: `anchor_row` is that row as stored now. It must still be
    /// there, unchanged (same mac, and contents matching it), or the check
    /// ends at once with the report saying so. Rows before the anchor are
    /// not read again: an edit there is found by the next full check.
    pub(crate) fn resume(
        &self,
        anchor: &AuditAnchor,
        anchor_row: Option<AuditRecord>,
    ) -> Result<Result<ChainCheck<'_>, AuditReport>> {
        let before = anchor.seq.saturating_sub(1);
        let Some(row) = anchor_row else {
            return Ok(Err(AuditReport::broken(
                before,
                anchor.seq,
                format!(
                    "row {}, verified before, is missing (rows were deleted)",
                    anchor.seq
                ),
            )));
        };
        if row.mac != anchor.mac {
            return Ok(Err(AuditReport::broken(
                before,
                anchor.seq,
                "it is not the row verified before (its mac changed: rows were rewritten)".into(),
            )));
        }
        if self.mac_of(&row) != row.mac {
            return Ok(Err(AuditReport::broken(
                before,
                anchor.seq,
                "its contents do not match its mac (the row was edited)".into(),
            )));
        }
        let head = self.head()?;
        let head_seen = match &head {
            Some((hs, hm)) if *hs == anchor.seq => {
                if *hm != anchor.mac {
                    return Ok(Err(AuditReport::broken(
                        before,
                        anchor.seq,
                        "it is not the row the chain head recorded (rows were rewritten)".into(),
                    )));
                }
                true
            }
            Some((hs, _)) => *hs < anchor.seq,
            None => false,
        };
        Ok(Ok(ChainCheck {
            key: self,
            head,
            expected_seq: anchor.seq + 1,
            prev: anchor.mac.clone(),
            head_seen,
        }))
    }

    /// An incremental check of the chain, for backends that page through a
    /// long log instead of holding it in memory. Reads the head first, so a
    /// row appended while the check runs can only extend what it sees.
    pub(crate) fn check(&self) -> Result<ChainCheck<'_>> {
        Ok(ChainCheck {
            key: self,
            head: self.head()?,
            expected_seq: 1,
            prev: GENESIS_MAC.to_owned(),
            head_seen: false,
        })
    }
}

/// The state of a chain verification between rows.
#[derive(Debug)]
pub(crate) struct ChainCheck<'k> {
    key: &'k AuditKey,
    head: Option<(u64, String)>,
    expected_seq: u64,
    prev: String,
    head_seen: bool,
}

impl ChainCheck<'_> {
    /// Checks the next row; returns the report if the chain breaks here.
    pub(crate) fn push(&mut self, row: AuditRecord) -> Option<AuditReport> {
        let expected_seq = self.expected_seq;
        let problem = if row.seq != expected_seq {
            Some(format!(
                "row {} follows row {}: rows {}..{} are missing",
                row.seq,
                expected_seq - 1,
                expected_seq,
                row.seq.saturating_sub(1)
            ))
        } else if row.prev_mac != self.prev {
            Some(
                "its link to the previous row does not match (a row was removed or replaced)"
                    .into(),
            )
        } else if row.mac != self.key.mac_of(&row) {
            Some("its contents do not match its mac (the row was edited)".into())
        } else {
            None
        };
        if let Some(problem) = problem {
            return Some(AuditReport::broken(expected_seq - 1, row.seq, problem));
        }
        if let Some((hs, hm)) = &self.head
            && *hs == row.seq
        {
            if *hm != row.mac {
                return Some(AuditReport::broken(
                    expected_seq - 1,
                    row.seq,
                    "it is not the row the chain head recorded (rows were rewritten)".into(),
                ));
            }
            self.head_seen = true;
        }
        self.prev = row.mac;
        self.expected_seq += 1;
        None
    }

    /// The seq of the last row that verified (0 before the first).
    pub(crate) fn last_seq(&self) -> u64 {
        self.expected_seq - 1
    }

    /// The report once every row has been pushed.
    pub(crate) fn finish(self) -> AuditReport {
        let rows = self.expected_seq - 1;
        if let Some((hs, _)) = self.head
            && !self.head_seen
        {
            return AuditReport::broken(
                rows,
                rows + 1,
                format!(
                    "the chain head records row {hs} but the log ends at row {rows} (newest rows were deleted)"
                ),
            );
        }
        AuditReport {
            rows,
            ok: true,
            first_break: None,
            verified: (rows > 0).then_some(AuditAnchor {
                seq: rows,
                mac: self.prev,
            }),
        }
    }
}

fn parse_head(text: &str) -> Option<(u64, String)> {
    let (seq, mac) = text.trim().split_once(' ')?;
    Some((seq.parse().ok()?, mac.to_owned()))
}

/// Reads an audit key file (64 hex characters).
pub fn read_key_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path)?;
    let bytes = hex::decode(text.trim()).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not hex: {e}"))
    })?;
    bytes.try_into().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "expected 32 bytes (64 hex characters)",
        )
    })
}

/// An audit row to append.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Who did it, from where.
    pub actor: Actor,
    /// What was done, e.g. `device.revoke`.
    pub action: String,
    /// To what, e.g. a device id.
    pub subject: Option<String>,
    /// Details as a JSON object.
    pub detail: serde_json::Value,
}

/// A stored audit row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1 without gaps.
    pub seq: u64,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who.
    pub actor: String,
    /// From where.
    pub source: String,
    /// What.
    pub action: String,
    /// To what.
    pub subject: Option<String>,
    /// Details.
    pub detail: serde_json::Value,
    /// `detail` exactly as stored: the mac covers these bytes.
    #[serde(skip)]
    pub(crate) detail_raw: String,
    /// The previous row's mac.
    pub prev_mac: String,
    /// This row's mac.
    pub mac: String,
}

/// An `audit_log` row as both backends read it.
#[derive(Debug)]
pub(crate) struct AuditRow {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub source: String,
    pub action: String,
    pub subject: Option<String>,
    pub detail: String,
    pub prev_mac: String,
    pub mac: String,
}

impl AuditRow {
    /// The record; a row whose detail is not JSON has been tampered with,
    /// so it stays visible as a string and verification, not parsing,
    /// reports it.
    pub(crate) fn into_record(self) -> Result<AuditRecord> {
        let detail = serde_json::from_str(&self.detail)
            .unwrap_or_else(|_| serde_json::Value::String(self.detail.clone()));
        Ok(AuditRecord {
            seq: u64::try_from(self.seq)
                .map_err(|_| StoreError::Corrupt(format!("audit seq {}", self.seq)))?,
            at: crate::millis::from_ms(self.at)?,
            actor: self.actor,
            source: self.source,
            action: self.action,
            subject: self.subject,
            detail,
            detail_raw: self.detail,
            prev_mac: self.prev_mac,
            mac: self.mac,
        })
    }
}

/// Outcome of [`crate::Store::verify_audit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Rows verified intact before the first break (all rows when intact).
    pub rows: u64,
    /// Whether the whole chain verified.
    pub ok: bool,
    /// The first broken row, if any.
    pub first_break: Option<AuditBreak>,
    /// The newest row verified, when the chain verified: where the next
    /// check may resume ([`crate::Store::verify_audit_since`]).
    #[serde(skip)]
    pub verified: Option<AuditAnchor>,
}

impl AuditReport {
    fn broken(rows: u64, seq: u64, problem: String) -> Self {
        Self {
            rows,
            ok: false,
            first_break: Some(AuditBreak { seq, problem }),
            verified: None,
        }
    }
}

/// A position of the chain that verified: row `seq` with mac `mac`, every
/// row up to it linked from the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditAnchor {
    /// The row's sequence number.
    pub seq: u64,
    /// Its mac when it verified.
    pub mac: String,
}

/// Where and how the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditBreak {
    /// Sequence number of the first row that fails.
    pub seq: u64,
    /// What is wrong with it.
    pub problem: String,
}

/// Which audit rows to list ([`crate::Store::search_audit`]): every given
/// condition must hold; newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditSearch {
    /// Only rows older than this sequence number (the next page's cursor).
    pub before: Option<u64>,
    /// Only this action (`device.revoke`).
    pub action: Option<String>,
    /// Only actions starting with this (`device.`).
    pub action_prefix: Option<String>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this subject.
    pub subject: Option<String>,
    /// Only rows at or after this instant.
    pub since: Option<time::OffsetDateTime>,
    /// Only rows before this instant.
    pub until: Option<time::OffsetDateTime>,
    /// At most this many rows.
    pub limit: u32,
}

impl AuditSearch {
    /// The conditions as the backends bind them: before, action, action
    /// prefix, actor, subject, since and until (Unix ms).
    #[allow(clippy::type_complexity)]
    pub(crate) fn bound(
        &self,
    ) -> (
        Option<i64>,
        Option<&str>,
        Option<&str>,
        Option<&str>,
        Option<&str>,
        Option<i64>,
        Option<i64>,
    ) {
        let ms = |t: time::OffsetDateTime| (t.unix_timestamp_nanos() / 1_000_000) as i64;
        (
            self.before.map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
            self.action.as_deref(),
            self.action_prefix.as_deref(),
            self.actor.as_deref(),
            self.subject.as_deref(),
            self.since.map(ms),
            self.until.map(ms),
        )
    }
}

//! Identity names: device ids and service names share one namespace.

use std::fmt;
use std::str::FromStr;

use compact_str::CompactString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest identity name accepted, in bytes (all accepted bytes are ASCII).
pub const MAX_ID_LEN: usize = 64;

/// A validated identity name: 1 to 64 characters of `[A-Za-z0-9._:-]`.
///
/// The name becomes a certificate CN, an MQTT client id and a topic level
/// (`devices/{id}/...`), so nothing that could act inside a topic filter
/// (`/`, `+`, `#`, `$`), NUL or whitespace ever passes. MAC addresses such as
/// `a4:cf:12:00:00:01` are valid ids. The only way to obtain a `DeviceId` is
/// through [`DeviceId::parse`] (or `FromStr`/`Deserialize`, which call it), so
/// a function taking `&DeviceId` never needs to check it again. Ids of up
/// to 24 bytes (nearly all) are kept inline: every message carries its
/// device's id through the pipeline, cloned at each step.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(CompactString);

/// Why a string is not a valid identity name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The name is empty.
    #[error("an id must not be empty")]
    Empty,
    /// The name is longer than [`MAX_ID_LEN`].
    #[error("id is {len} characters long; at most {MAX_ID_LEN} are allowed")]
    TooLong {
        /// Length of the rejected name in bytes.
        len: usize,
    },
    /// The name holds a character outside `[A-Za-z0-9._:-]`.
    #[error(
        "id {shown:?} contains {ch:?} at position {at}; allowed are letters, digits and . _ : -"
    )]
    BadChar {
        /// The rejected name, truncated for display.
        shown: String,
        /// The first offending character.
        ch: char,
        /// Its character position.
        at: usize,
    },
    /// `.` and `..` are refused: they read as paths in file names and URLs.
    #[error("id {0:?} is reserved")]
    Reserved(String),
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

impl DeviceId {
    /// Validates `s` as an identity name.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if let Some((at, ch)) = s.chars().enumerate().find(|&(_, c)| !allowed(c)) {
            return Err(IdError::BadChar {
                shown: s.chars().take(MAX_ID_LEN).collect(),
                ch,
                at,
            });
        }
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong { len: s.len() });
        }
        if s == "." || s == ".." {
            return Err(IdError::Reserved(s.to_owned()));
        }
        Ok(Self(CompactString::from(s)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DeviceId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({:?})", self.0)
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_typical_ids() {
        for ok in ["greenhouse-1", "a4:cf:12:00:00:01", "esp32_C3.kitchen", "x"] {
            assert_eq!(
                DeviceId::parse(ok).map(|d| d.to_string()),
                Ok(ok.to_owned())
            );
        }
        assert!(DeviceId::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn refuses_topic_metacharacters_and_whitespace() {
        for bad in [
            "a/b",
            "a+",
            "#",
            "$SYS",
            "a b",
            "a\0",
            "tab\t",
            "é",
            "new\nline",
        ] {
            assert!(
                matches!(DeviceId::parse(bad), Err(IdError::BadChar { .. })),
                "{bad:?} passed"
            );
        }
        assert_eq!(DeviceId::parse(""), Err(IdError::Empty));
        assert_eq!(
            DeviceId::parse(&"a".repeat(65)),
            Err(IdError::TooLong { len: 65 })
        );
        assert!(matches!(DeviceId::parse(".."), Err(IdError::Reserved(_))));
    }

    #[test]
    fn serde_validates() {
        let ok: DeviceId = serde_json::from_str("\"dev-1\"").expect("valid id");
        assert_eq!(ok.as_str(), "dev-1");
        assert!(serde_json::from_str::<DeviceId>("\"dev/1\"").is_err());
    }

    proptest! {
        #[test]
        fn every_accepted_id_is_safe_in_topics(s in "\\PC{0,80}") {
            if let Ok(id) = DeviceId::parse(&s) {
                prop_assert!(id.as_str().len() <= MAX_ID_LEN);
                prop_assert!(!id.as_str().contains(['/', '+', '#', '$', '\0']));
                prop_assert!(!id.as_str().chars().any(char::is_whitespace));
            }
        }

        #[test]
        fn valid_alphabet_round_trips(s in "[A-Za-z0-9._:-]{1,64}") {
            prop_assume!(s != "." && s != "..");
            let id = DeviceId::parse(&s).expect("alphabet is valid");
            prop_assert_eq!(id.as_str(), s.as_str());
        }
    }
}

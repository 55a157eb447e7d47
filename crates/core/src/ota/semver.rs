//! Semantic versions (semver.org 2.0.0) as written in firmware manifests:
//! parsed and compared without allocating.

use core::cmp::Ordering;
use core::fmt;

/// Longest version string a manifest may carry.
pub const MAX_VERSION_LEN: usize = 64;

/// A semantic version borrowed from its text: `MAJOR.MINOR.PATCH`, an
/// optional `-pre.release` and optional `+build` metadata.
#[derive(Debug, Clone, Copy)]
pub struct Version<'a> {
    text: &'a str,
    major: u64,
    minor: u64,
    patch: u64,
    pre: &'a str,
}

/// Why a version string is not a semantic version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SemverError;

impl fmt::Display for SemverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "not a semantic version (MAJOR.MINOR.PATCH with optional -prerelease and +build, \
             at most 64 characters, no leading zeros)",
        )
    }
}

impl core::error::Error for SemverError {}

/// A numeric identifier: digits only, no leading zero (semver §2).
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// Dot-separated identifiers of `[0-9A-Za-z-]`, none empty (semver §9, §10).
fn identifiers_ok(s: &str, numeric_no_leading_zero: bool) -> bool {
    s.split('.').all(|id| {
        !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && (!numeric_no_leading_zero
                || !id.bytes().all(|b| b.is_ascii_digit())
                || number(id).is_some())
    })
}

impl<'a> Version<'a> {
    /// Parses `text`; refuses anything semver 2.0.0 does not allow.
    pub fn parse(text: &'a str) -> Result<Self, SemverError> {
        if text.is_empty() || text.len() > MAX_VERSION_LEN {
            return Err(SemverError);
        }
        let (rest, build) = match text.split_once('+') {
            Some((rest, build)) => (rest, Some(build)),
            None => (text, None),
        };
        if let Some(build) = build
            && !identifiers_ok(build, false)
        {
            return Err(SemverError);
        }
        let (core_part, pre) = match rest.split_once('-') {
            Some((core_part, pre)) => {
                if !identifiers_ok(pre, true) {
                    return Err(SemverError);
                }
                (core_part, pre)
            }
            None => (rest, ""),
        };
        let mut parts = core_part.split('.');
        let major = parts.next().and_then(number).ok_or(SemverError)?;
        let minor = parts.next().and_then(number).ok_or(SemverError)?;
        let patch = parts.next().and_then(number).ok_or(SemverError)?;
        if parts.next().is_some() {
            return Err(SemverError);
        }
        Ok(Version {
            text,
            major,
            minor,
            patch,
            pre,
        })
    }

    /// The version as written.
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// `(major, minor, patch)`.
    pub fn triple(&self) -> (u64, u64, u64) {
        (self.major, self.minor, self.patch)
    }

    /// The pre-release part (empty for a release).
    pub fn pre_release(&self) -> &'a str {
        self.pre
    }
}

/// Pre-release precedence (semver §11.4): a release is above any of its
/// pre-releases; identifiers compare numerically when both are numbers,
/// numbers below text, and a longer list wins when all before are equal.
fn cmp_pre(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        (false, false) => {}
    }
    let mut xs = a.split('.');
    let mut ys = b.split('.');
    loop {
        match (xs.next(), ys.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (number(x), number(y)) {
                    (Some(x), Some(y)) => x.cmp(&y),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => x.cmp(y),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

impl PartialEq for Version<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version<'_> {}

impl PartialOrd for Version<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Precedence per semver §11; build metadata is ignored.
impl Ord for Version<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.triple()
            .cmp(&other.triple())
            .then_with(|| cmp_pre(self.pre, other.pre))
    }
}

impl fmt::Display for Version<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_versions() {
        for ok in [
            "0.0.0",
            "1.4.0",
            "10.20.30",
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-0.3.7",
            "1.0.0-x.7.z.92",
            "1.0.0+20130313144700",
            "1.0.0-beta+exp.sha.5114f85",
        ] {
            assert!(Version::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_malformed_versions() {
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "01.2.3",
            "1.02.3",
            "1.2.03",
            "v1.2.3",
            "1.2.3-",
            "1.2.3+",
            "1.2.3-01",
            "1.2.3-a..b",
            "1.2.3-a_b",
            " 1.2.3",
            "1.2.-3",
            "1.2.3+a+b",
            "99999999999999999999.0.0",
        ] {
            assert_eq!(Version::parse(bad), Err(SemverError), "{bad:?}");
        }
        let long = "1.0.0-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        assert_eq!(Version::parse(long), Err(SemverError));
    }

    #[test]
    fn orders_by_precedence() {
        // The chain from semver §11.4.
        let chain = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.1.0",
            "2.0.0",
        ];
        for pair in chain.windows(2) {
            let a = Version::parse(pair[0]).expect("valid");
            let b = Version::parse(pair[1]).expect("valid");
            assert!(a < b, "{a} < {b}");
        }
        let a = Version::parse("1.0.0+a").expect("valid");
        let b = Version::parse("1.0.0+b").expect("valid");
        assert_eq!(a, b);
    }
}

//! Which webhook targets may be called.
//!
//! A webhook URL is a credential (a Discord URL carries its token in the
//! path) and a way into the internal network (SSRF). So:
//!
//! - [`WebhookUrl`] accepts only `https` URLs with a host and without
//!   embedded credentials, unless the channel was created with
//!   `--danger-allow-private`, which also admits plain `http`;
//! - [`check_address`] is called on every *resolved* address at connect
//!   time and on every redirect hop, so a name that resolves (or rebinds)
//!   to a loopback, private, link-local or otherwise non-public address is
//!   refused even though the URL looked public;
//! - [`WebhookUrl::redacted`] is what the API, the console and the logs
//!   show: scheme and host only.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest webhook URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not a URL at all.
    #[error("the webhook URL is not a valid URL: {0}")]
    NotAUrl(String),
    /// Longer than [`MAX_URL_LEN`].
    #[error("the webhook URL is longer than {MAX_URL_LEN} bytes")]
    TooLong,
    /// Not https (or http with the danger flag).
    #[error(
        "the webhook URL must use https (plain http only with --danger-allow-private), not {0:?}"
    )]
    Scheme(String),
    /// No host name or address.
    #[error("the webhook URL has no host")]
    NoHost,
    /// `user:password@` in the URL.
    #[error("the webhook URL must not embed a user name or password")]
    Credentials,
    /// The host (or what it resolved to) is not a public address.
    #[error(
        "the webhook target {0} is not a public address (loopback, private, link-local or reserved); create the channel with --danger-allow-private to allow it"
    )]
    NotPublic(IpAddr),
}

/// A webhook URL that passed the static checks.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    url: url::Url,
    allow_private: bool,
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({})", self.redacted())
    }
}

impl WebhookUrl {
    /// Checks `text` as a webhook target. A literal IP host is checked
    /// with [`check_address`] here already; names are checked once resolved.
    pub fn parse(text: &str, allow_private: bool) -> Result<Self, TargetError> {
        if text.len() > MAX_URL_LEN {
            return Err(TargetError::TooLong);
        }
        let url = url::Url::parse(text.trim()).map_err(|e| TargetError::NotAUrl(e.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if allow_private => {}
            other => return Err(TargetError::Scheme(other.to_owned())),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::Credentials);
        }
        match url.host() {
            None => return Err(TargetError::NoHost),
            Some(url::Host::Ipv4(v4)) => check_address(IpAddr::V4(v4), allow_private)?,
            Some(url::Host::Ipv6(v6)) => check_address(IpAddr::V6(v6), allow_private)?,
            Some(url::Host::Domain("")) => return Err(TargetError::NoHost),
            Some(url::Host::Domain(_)) => {}
        }
        Ok(Self { url, allow_private })
    }

    /// The full URL (a secret: for the HTTP client only).
    pub fn expose(&self) -> &url::Url {
        &self.url
    }

    /// Whether private and loopback targets are allowed (the danger flag).
    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// Scheme, host and port only: what people and logs see.
    pub fn redacted(&self) -> String {
        let host = self.url.host_str().unwrap_or("");
        match self.url.port() {
            Some(p) => format!("{}://{host}:{p}/…", self.url.scheme()),
            None => format!("{}://{host}/…", self.url.scheme()),
        }
    }

    /// A redirect target from this URL, checked like the original (a
    /// redirect may not downgrade to http or reach a private address
    /// unless the danger flag is set).
    pub fn follow(&self, location: &str) -> Result<Self, TargetError> {
        let next = self
            .url
            .join(location)
            .map_err(|e| TargetError::NotAUrl(e.to_string()))?;
        Self::parse(next.as_str(), self.allow_private)
    }
}

/// Refuses an address that is not publicly routable, unless `allow_private`.
pub fn check_address(ip: IpAddr, allow_private: bool) -> Result<(), TargetError> {
    if allow_private || is_public(ip) {
        Ok(())
    } else {
        Err(TargetError::NotPublic(ip))
    }
}

/// Whether an address is publicly routable unicast (RFC 6890 special
/// registries excluded).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0                                   // "this network"
        || (a == 100 && (64..128).contains(&b))     // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0)           // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19))       // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // NAT64 (64:ff9b::/96) embeds an IPv4 address: judge that.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00              // unique local
        || (s[0] & 0xffc0) == 0xfe80              // link-local
        || (s[0] & 0xffc0) == 0xfec0              // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8)     // documentation
        || (s[0] == 0x2002)                       // 6to4: may wrap anything
        || (s[0] == 0x2001 && s[1] == 0)          // Teredo
        || s[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible, deprecated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> TargetError {
        WebhookUrl::parse(text, false).expect_err(text)
    }

    #[test]
    fn public_https_urls_are_accepted_and_redacted() {
        let u = WebhookUrl::parse(
            "https://discord.com/api/webhooks/123/SECRET-token?wait=true",
            false,
        )
        .expect("public https");
        assert_eq!(u.redacted(), "https://discord.com/…");
        assert!(!format!("{u:?}").contains("SECRET"));
        assert!(u.expose().as_str().contains("SECRET"));
        let u = WebhookUrl::parse("https://hooks.example.net:8443/x", false).expect("ok");
        assert_eq!(u.redacted(), "https://hooks.example.net:8443/…");
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        assert!(matches!(refused("not a url"), TargetError::NotAUrl(_)));
        assert!(matches!(
            refused("discord.com/api"),
            TargetError::NotAUrl(_)
        ));
        assert_eq!(
            refused("http://hooks.example.net/x"),
            TargetError::Scheme("http".into())
        );
        assert_eq!(
            refused("ftp://x.example/"),
            TargetError::Scheme("ftp".into())
        );
        assert_eq!(
            refused("file:///etc/passwd"),
            TargetError::Scheme("file".into())
        );
        assert_eq!(
            refused("https://user:pw@hooks.example.net/"),
            TargetError::Credentials
        );
        assert_eq!(
            refused(&format!("https://x.example/{}", "a".repeat(MAX_URL_LEN))),
            TargetError::TooLong
        );
    }

    #[test]
    fn literal_private_addresses_are_refused_unless_allowed() {
        for text in [
            "https://127.0.0.1/",
            "https://10.1.2.3/",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[::ffff:192.168.1.1]/",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
        ] {
            assert!(matches!(refused(text), TargetError::NotPublic(_)), "{text}");
            assert!(
                WebhookUrl::parse(text, true).is_ok(),
                "{text} with the flag"
            );
        }
        assert!(WebhookUrl::parse("http://127.0.0.1:8080/hook", true).is_ok());
    }

    #[test]
    fn address_classes() {
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "203.0.114.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ];
        for a in public {
            assert!(is_public(a.parse().expect("ip")), "{a}");
        }
        let private = [
            "127.0.0.53",
            "192.168.0.1",
            "172.16.5.4",
            "169.254.1.1",
            "100.127.255.255",
            "192.0.0.8",
            "198.18.0.1",
            "198.51.100.7",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "fe80::1",
            "fc00::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "::",
            "::10.0.0.1",
        ];
        for a in private {
            assert!(!is_public(a.parse().expect("ip")), "{a}");
        }
    }

    #[test]
    fn redirects_are_checked_like_the_original() {
        let u = WebhookUrl::parse("https://hooks.example.net/a/b", false).expect("ok");
        assert_eq!(
            u.follow("/c").expect("same host").expose().as_str(),
            "https://hooks.example.net/c"
        );
        assert_eq!(
            u.follow("http://hooks.example.net/")
                .expect_err("downgrade"),
            TargetError::Scheme("http".into())
        );
        assert!(matches!(
            u.follow("https://10.0.0.1/").expect_err("private"),
            TargetError::NotPublic(_)
        ));
    }
}

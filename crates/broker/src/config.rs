//! Broker settings: the `[broker]` section of the configuration file.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::acl::AclRule;

/// Tunables of the broker. Every duration can be shortened so that tests
/// run in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Also offer TLS 1.2, for older device stacks. TLS 1.2 sends the
    /// client certificate in clear, revealing the device id to observers.
    pub tls12: bool,
    /// Most simultaneous connections; further ones are refused at accept.
    pub max_connections: usize,
    /// A TLS handshake and CONNECT must complete within this (slowloris).
    #[serde(with = "rampart_span")]
    pub handshake_timeout: Duration,
    /// New connections accepted per second from one IP address (burst of
    /// the same size); 0 disables the limit.
    pub connection_rate_per_ip: u32,
    /// Addresses exempt from the rate limit.
    pub rate_limit_exempt: Vec<IpAddr>,
    /// Largest packet accepted from a client, in bytes (MQTT 5 §3.1.2.11.4).
    pub max_packet_size: u32,
    /// QoS 1/2 messages in flight to one client at once (MQTT 5 receive maximum).
    pub max_inflight: u16,
    /// Messages queued for one client (online or offline) before the
    /// overflow policy applies: QoS 0 messages are dropped first, then the
    /// oldest queued message; each drop is counted.
    pub max_queued_messages: usize,
    /// How long a copy queued for a persistent session waits, from its own
    /// submission, for its subscriber to acknowledge it before it is
    /// written: a copy delivered and acknowledged meanwhile is never written
    /// (0 writes at once). Adds up to this to the publisher's PUBACK when a
    /// persistent session subscribes to its topic.
    #[serde(with = "rampart_span")]
    pub delivery_grace: Duration,
    /// Topic aliases a v5 client may use (0 disables them).
    pub topic_alias_maximum: u16,
    /// Upper bound on a session's expiry interval; also the expiry of MQTT
    /// 3.1.1 persistent sessions.
    #[serde(with = "rampart_span")]
    pub max_session_expiry: Duration,
    /// Keepalive the server imposes when a client asks for none or more.
    pub max_keepalive_secs: u16,
    /// Extra access rules (`[[broker.acl]]`), added to the defaults.
    pub acl: Vec<AclRule>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            tls12: false,
            max_connections: 100_000,
            handshake_timeout: Duration::from_secs(10),
            connection_rate_per_ip: 50,
            rate_limit_exempt: Vec::new(),
            max_packet_size: 256 * 1024,
            max_inflight: 64,
            max_queued_messages: 1000,
            delivery_grace: Duration::from_millis(2),
            topic_alias_maximum: 32,
            max_session_expiry: Duration::from_secs(7 * 24 * 3600),
            max_keepalive_secs: 3600,
            acl: Vec::new(),
        }
    }
}

//! A minimal MQTT 3.1.1/5 client over mutual TLS, on the workspace's pinned
//! packet codec (docs/decisions/0005-mqtt-codec.md): connect, queue packets,
//! flush, read packets. One task owns a [`Client`]; it batches writes and
//! reads, and decides itself what to do with each packet (no hidden retry,
//! no hidden session state), which is what the load generator and the
//! fleet simulator need: they track packet ids and acknowledgements
//! themselves.

pub mod frame;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mqtt5_protocol::packet::MqttPacket;
use mqtt5_protocol::packet::connect::ConnectPacket;
use mqtt5_protocol::packet::disconnect::DisconnectPacket;
use mqtt5_protocol::packet::publish::PublishPacket;
use mqtt5_protocol::types::ConnectOptions;
use mqtt5_protocol::{FixedHeader, Packet, ReasonCode};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::frame::take_frame;

/// Largest packet accepted from the broker.
const MAX_PACKET: usize = 1 << 20;

/// What can go wrong on an MQTT connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A socket or TLS I/O error (including a refused TLS handshake).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The broker sent bytes that do not decode as MQTT, or a packet could
    /// not be encoded.
    #[error("undecodable packet from the broker: {0}")]
    Codec(String),
    /// The broker refused the CONNECT.
    #[error("broker refused '{id}': {reason}")]
    Refused {
        /// The client id.
        id: String,
        /// The reason code or description.
        reason: String,
    },
    /// The broker sent DISCONNECT (MQTT 5 §3.14) and closes the connection.
    #[error("broker disconnected '{id}': {reason:?}")]
    Disconnected {
        /// The client id.
        id: String,
        /// The DISCONNECT reason code.
        reason: ReasonCode,
    },
    /// The broker closed the connection without DISCONNECT (end of stream).
    #[error("broker closed the connection of '{id}'")]
    Closed {
        /// The client id.
        id: String,
    },
    /// The broker sent a packet the protocol does not allow here.
    #[error("unexpected from the broker: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Wrap an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClientError::Io {
            context: context.into(),
            source,
        }
    }
}

/// QoS levels a client publishes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    /// At most once.
    #[serde(rename = "0")]
    AtMostOnce,
    /// At least once (PUBACK).
    #[serde(rename = "1")]
    AtLeastOnce,
}

impl Qos {
    /// The wire QoS of the codec crate.
    pub fn wire(self) -> mqtt5_protocol::QoS {
        match self {
            Qos::AtMostOnce => mqtt5_protocol::QoS::AtMostOnce,
            Qos::AtLeastOnce => mqtt5_protocol::QoS::AtLeastOnce,
        }
    }
}

impl std::str::FromStr for Qos {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "0" => Ok(Qos::AtMostOnce),
            "1" => Ok(Qos::AtLeastOnce),
            other => Err(format!("QoS must be 0 or 1, not '{other}'")),
        }
    }
}

/// MQTT protocol version spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (protocol level 4).
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5.0.
    #[serde(rename = "5")]
    V5,
}

impl MqttVersion {
    /// The protocol level byte.
    pub fn level(self) -> u8 {
        match self {
            MqttVersion::V311 => 4,
            MqttVersion::V5 => 5,
        }
    }
}

impl std::str::FromStr for MqttVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "5" | "5.0" => Ok(MqttVersion::V5),
            "3" | "3.1.1" | "4" => Ok(MqttVersion::V311),
            other => Err(format!("MQTT version must be 5 or 3.1.1, not '{other}'")),
        }
    }
}

/// Whether the broker keeps the session after the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionKind {
    /// Clean start, no session kept (v5 expiry 0, v3 clean session 1).
    Clean,
    /// A fresh session that the broker keeps (v5 clean start with expiry
    /// 1 hour, v3 clean session 0): the broker stores QoS 1 messages for it.
    Persistent,
    /// Resume the session the broker kept, or start one it keeps (v5 clean
    /// start 0 with expiry 1 hour, v3 clean session 0): QoS 1 messages
    /// queued while the client was away are delivered (MQTT 5 §3.1.2.4).
    Resume,
}

/// Session expiry asked for by persistent and resumed sessions, in seconds.
pub const SESSION_EXPIRY_SECS: u32 = 3600;

/// Where to connect and how.
#[derive(Debug, Clone)]
pub struct Target {
    /// Broker address.
    pub addr: SocketAddr,
    /// Name checked against the server certificate.
    pub server_name: ServerName<'static>,
    /// Protocol version.
    pub version: MqttVersion,
    /// Keepalive sent in CONNECT.
    pub keepalive: Duration,
}

/// A connected MQTT session.
#[derive(Debug)]
pub struct Client {
    /// The client id.
    pub id: String,
    stream: TlsStream<TcpStream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    version: MqttVersion,
    session_present: bool,
}

impl Client {
    /// TCP connect, TLS handshake, CONNECT and a successful CONNACK.
    pub async fn connect(
        target: &Target,
        config: Arc<ClientConfig>,
        id: &str,
        session: SessionKind,
    ) -> Result<Client, ClientError> {
        let tcp = TcpStream::connect(target.addr)
            .await
            .map_err(|e| ClientError::io(format!("connect {} as '{id}'", target.addr), e))?;
        tcp.set_nodelay(true)
            .map_err(|e| ClientError::io("set TCP_NODELAY", e))?;
        let stream = TlsConnector::from(config)
            .connect(target.server_name.clone(), tcp)
            .await
            .map_err(|e| ClientError::io(format!("TLS handshake as '{id}'"), e))?;
        let mut client = Client {
            id: id.to_string(),
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf: BytesMut::with_capacity(16 * 1024),
            version: target.version,
            session_present: false,
        };
        let mut options = ConnectOptions::new(id)
            .with_keep_alive(target.keepalive)
            .with_clean_start(match session {
                SessionKind::Clean => true,
                SessionKind::Persistent => target.version == MqttVersion::V5,
                SessionKind::Resume => false,
            });
        let connect = match target.version {
            MqttVersion::V5 => {
                if session != SessionKind::Clean {
                    options = options.with_session_expiry_interval(SESSION_EXPIRY_SECS);
                }
                ConnectPacket::new(options)
            }
            MqttVersion::V311 => ConnectPacket::new_v311(options),
        };
        client.queue(&connect)?;
        client.flush().await?;
        match client.next_packet().await? {
            Packet::ConnAck(ack) if ack.reason_code == ReasonCode::Success => {
                client.session_present = ack.session_present;
                Ok(client)
            }
            Packet::ConnAck(ack) => Err(ClientError::Refused {
                id: id.to_string(),
                reason: format!("CONNACK {:?}", ack.reason_code),
            }),
            other => Err(ClientError::Protocol(format!(
                "{} before CONNACK",
                other.packet_type_name()
            ))),
        }
    }

    /// Whether the broker resumed a session it kept (CONNACK, MQTT 5 §3.2.2.1.1).
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// The protocol version of this session.
    pub fn version(&self) -> MqttVersion {
        self.version
    }

    /// Encode a packet into the write buffer (sent by [`Client::flush`]).
    pub fn queue<P: MqttPacket>(&mut self, packet: &P) -> Result<(), ClientError> {
        packet
            .encode(&mut self.wbuf)
            .map_err(|e| ClientError::Codec(format!("encoding: {e}")))
    }

    /// A PUBLISH for this session's protocol version.
    pub fn publish_packet(
        &self,
        topic: &str,
        payload: Vec<u8>,
        qos: Qos,
        packet_id: u16,
    ) -> PublishPacket {
        let p = match self.version {
            MqttVersion::V5 => PublishPacket::new(topic, payload, qos.wire()),
            MqttVersion::V311 => PublishPacket::new_v311(topic, payload, qos.wire()),
        };
        match qos {
            Qos::AtMostOnce => p,
            Qos::AtLeastOnce => p.with_packet_id(packet_id),
        }
    }

    /// Bytes waiting in the write buffer.
    pub fn pending_write(&self) -> usize {
        self.wbuf.len()
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            self.stream
                .write_all(&self.wbuf)
                .await
                .map_err(|e| ClientError::io(format!("write as '{}'", self.id), e))?;
            self.wbuf.clear();
        }
        self.stream
            .flush()
            .await
            .map_err(|e| ClientError::io(format!("flush as '{}'", self.id), e))
    }

    /// Read once from the socket into the read buffer (cancel-safe).
    pub async fn read_more(&mut self) -> Result<(), ClientError> {
        let n = self
            .stream
            .read_buf(&mut self.rbuf)
            .await
            .map_err(|e| ClientError::io(format!("read as '{}'", self.id), e))?;
        if n == 0 {
            return Err(ClientError::Closed {
                id: self.id.clone(),
            });
        }
        Ok(())
    }

    /// The next packet already in the read buffer, if complete.
    pub fn next_buffered(&mut self) -> Result<Option<Packet>, ClientError> {
        let Some(mut frame) = take_frame(&mut self.rbuf, MAX_PACKET)
            .map_err(|e| ClientError::Codec(e.to_string()))?
        else {
            return Ok(None);
        };
        let header =
            FixedHeader::decode(&mut frame).map_err(|e| ClientError::Codec(e.to_string()))?;
        let packet = Packet::decode_from_body_with_version(
            header.packet_type,
            &header,
            &mut frame,
            self.version.level(),
        )
        .map_err(|e| ClientError::Codec(e.to_string()))?;
        if let Packet::Disconnect(d) = &packet {
            return Err(ClientError::Disconnected {
                id: self.id.clone(),
                reason: d.reason_code,
            });
        }
        Ok(Some(packet))
    }

    /// Read until one packet is complete.
    pub async fn next_packet(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(p) = self.next_buffered()? {
                return Ok(p);
            }
            self.read_more().await?;
        }
    }

    /// Send DISCONNECT (normal) and close the TLS session.
    pub async fn disconnect(mut self) -> Result<(), ClientError> {
        self.queue(&DisconnectPacket::new(ReasonCode::Success))?;
        self.flush().await?;
        self.stream
            .shutdown()
            .await
            .map_err(|e| ClientError::io(format!("close '{}'", self.id), e))
    }
}

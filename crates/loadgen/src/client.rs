//! A minimal MQTT client over TLS: connect, queue packets, flush, read
//! packets. One task owns a [`Client`]; it batches writes and reads.

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

use crate::LoadgenError;
use crate::frame::take_frame;

/// Largest packet accepted from the broker.
const MAX_PACKET: usize = 1 << 20;

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
}

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
}

impl Client {
    /// TCP connect, TLS handshake, CONNECT and a successful CONNACK.
    pub async fn connect(
        target: &Target,
        config: Arc<ClientConfig>,
        id: &str,
        session: SessionKind,
    ) -> Result<Client, LoadgenError> {
        let tcp = TcpStream::connect(target.addr)
            .await
            .map_err(|e| LoadgenError::io(format!("connect {} as '{id}'", target.addr), e))?;
        tcp.set_nodelay(true)
            .map_err(|e| LoadgenError::io("set TCP_NODELAY", e))?;
        let stream = TlsConnector::from(config)
            .connect(target.server_name.clone(), tcp)
            .await
            .map_err(|e| LoadgenError::io(format!("TLS handshake as '{id}'"), e))?;
        let mut client = Client {
            id: id.to_string(),
            stream,
            rbuf: BytesMut::with_capacity(16 * 1024),
            wbuf: BytesMut::with_capacity(16 * 1024),
            version: target.version,
        };
        let mut options = ConnectOptions::new(id)
            .with_keep_alive(target.keepalive)
            .with_clean_start(session == SessionKind::Clean || target.version == MqttVersion::V5);
        let connect = match target.version {
            MqttVersion::V5 => {
                if session == SessionKind::Persistent {
                    options = options.with_session_expiry_interval(3600);
                }
                ConnectPacket::new(options)
            }
            MqttVersion::V311 => ConnectPacket::new_v311(options),
        };
        client.queue(&connect)?;
        client.flush().await?;
        match client.next_packet().await? {
            Packet::ConnAck(ack) if ack.reason_code == ReasonCode::Success => Ok(client),
            Packet::ConnAck(ack) => Err(LoadgenError::Refused {
                id: id.to_string(),
                reason: format!("CONNACK {:?}", ack.reason_code),
            }),
            other => Err(LoadgenError::Protocol(format!(
                "{} before CONNACK",
                other.packet_type_name()
            ))),
        }
    }

    /// The protocol version of this session.
    pub fn version(&self) -> MqttVersion {
        self.version
    }

    /// Encode a packet into the write buffer (sent by [`Client::flush`]).
    pub fn queue<P: MqttPacket>(&mut self, packet: &P) -> Result<(), LoadgenError> {
        packet
            .encode(&mut self.wbuf)
            .map_err(|e| LoadgenError::Codec(format!("encoding: {e}")))
    }

    /// A PUBLISH for this session's protocol version.
    pub fn publish_packet(
        &self,
        topic: &str,
        payload: Vec<u8>,
        qos: crate::Qos,
        packet_id: u16,
    ) -> PublishPacket {
        let p = match self.version {
            MqttVersion::V5 => PublishPacket::new(topic, payload, qos.wire()),
            MqttVersion::V311 => PublishPacket::new_v311(topic, payload, qos.wire()),
        };
        match qos {
            crate::Qos::AtMostOnce => p,
            crate::Qos::AtLeastOnce => p.with_packet_id(packet_id),
        }
    }

    /// Bytes waiting in the write buffer.
    pub fn pending_write(&self) -> usize {
        self.wbuf.len()
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> Result<(), LoadgenError> {
        if !self.wbuf.is_empty() {
            self.stream
                .write_all(&self.wbuf)
                .await
                .map_err(|e| LoadgenError::io(format!("write as '{}'", self.id), e))?;
            self.wbuf.clear();
        }
        self.stream
            .flush()
            .await
            .map_err(|e| LoadgenError::io(format!("flush as '{}'", self.id), e))
    }

    /// Read once from the socket into the read buffer (cancel-safe).
    pub async fn read_more(&mut self) -> Result<(), LoadgenError> {
        let n = self
            .stream
            .read_buf(&mut self.rbuf)
            .await
            .map_err(|e| LoadgenError::io(format!("read as '{}'", self.id), e))?;
        if n == 0 {
            return Err(LoadgenError::Closed {
                id: self.id.clone(),
            });
        }
        Ok(())
    }

    /// The next packet already in the read buffer, if complete.
    pub fn next_buffered(&mut self) -> Result<Option<Packet>, LoadgenError> {
        let Some(mut frame) = take_frame(&mut self.rbuf, MAX_PACKET)
            .map_err(|e| LoadgenError::Codec(e.to_string()))?
        else {
            return Ok(None);
        };
        let header =
            FixedHeader::decode(&mut frame).map_err(|e| LoadgenError::Codec(e.to_string()))?;
        let packet = Packet::decode_from_body_with_version(
            header.packet_type,
            &header,
            &mut frame,
            self.version.level(),
        )
        .map_err(|e| LoadgenError::Codec(e.to_string()))?;
        if let Packet::Disconnect(d) = &packet {
            return Err(LoadgenError::Disconnected {
                id: self.id.clone(),
                reason: d.reason_code,
            });
        }
        Ok(Some(packet))
    }

    /// Read until one packet is complete.
    pub async fn next_packet(&mut self) -> Result<Packet, LoadgenError> {
        loop {
            if let Some(p) = self.next_buffered()? {
                return Ok(p);
            }
            self.read_more().await?;
        }
    }

    /// Send DISCONNECT (normal) and close the TLS session.
    pub async fn disconnect(mut self) -> Result<(), LoadgenError> {
        self.queue(&DisconnectPacket::new(ReasonCode::Success))?;
        self.flush().await?;
        self.stream
            .shutdown()
            .await
            .map_err(|e| LoadgenError::io(format!("close '{}'", self.id), e))
    }
}

/// Connect every identity in `ids` (loading its certificate from `certs`),
/// at most `concurrency` handshakes at a time. Results are in `ids` order,
/// each with the time from TCP connect to CONNACK.
pub async fn connect_many(
    target: &Target,
    certs: &crate::CertDir,
    ids: &[String],
    concurrency: usize,
    session: SessionKind,
) -> Vec<Result<(Client, Duration), LoadgenError>> {
    let limit = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, id) in ids.iter().enumerate() {
        let (target, certs, id, limit) = (
            target.clone(),
            certs.clone(),
            id.clone(),
            Arc::clone(&limit),
        );
        tasks.spawn(async move {
            let result = async {
                let _permit = limit
                    .acquire_owned()
                    .await
                    .map_err(|_| LoadgenError::Config("connection limiter closed".into()))?;
                let config = certs.client_config(&certs.load(&id)?, true)?;
                let started = tokio::time::Instant::now();
                let client = Client::connect(&target, config, &id, session).await?;
                Ok((client, started.elapsed()))
            }
            .await;
            (index, result)
        });
    }
    let mut results: Vec<Option<Result<(Client, Duration), LoadgenError>>> =
        (0..ids.len()).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, result)) => {
                if let Some(slot) = results.get_mut(index) {
                    *slot = Some(result);
                }
            }
            // A panicking connect task is a bug; its slot reports it below.
            Err(_join_error) => {}
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(LoadgenError::Protocol("connect task failed".into()))))
        .collect()
}

//! TLS over a TCP stream through rustls's unbuffered API, so that every
//! buffer is the connection's own and is let go while the connection waits.
//!
//! rustls's buffered connection (what tokio-rustls drives) keeps a receive
//! buffer of at least 4 KiB from its first read to its end: with 10,000
//! idle devices that is 40 MiB holding nothing, a quarter of the broker's
//! memory per idle connection (issue 4). Here the bytes received, the
//! bytes decrypted and the bytes waiting for the socket are three buffers
//! of this stream: the first two are released when they are empty and the
//! socket has nothing more to read, the third when it has all been
//! written. An idle connection holds none of them.
//!
//! The record layer, the handshake and its checks stay rustls's: this
//! module only moves bytes between the socket and rustls's states.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use rustls::ServerConfig;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus, WriteTraffic,
};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Smallest read from the socket.
const MIN_READ: usize = 4 * 1024;
/// Largest read from the socket: a few full records.
const MAX_READ: usize = 64 * 1024;
/// Encrypted bytes that may wait for the socket before a write waits.
const OUT_LIMIT: usize = 64 * 1024;
/// A TLS record's header: content type, version and length.
const HEADER: usize = 5;
/// Most plaintext in one record.
const MAX_FRAGMENT: usize = 16 * 1024;
/// Most bytes encryption adds to a record's plaintext for the suites the
/// broker offers (TLS 1.3: header, content type and tag, 22; TLS 1.2 GCM:
/// header, explicit nonce and tag, 29). A first guess only: rustls says
/// how much it needs when the room is short.
const RECORD_OVERHEAD: usize = 32;

/// A server-side TLS connection over TCP, after its handshake.
pub(crate) struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Received bytes rustls has not consumed yet: a part of a record,
    /// between reads.
    incoming: BytesMut,
    /// How much to read from the socket at once: doubles while reads fill
    /// the room, halves when they bring in little.
    read_size: usize,
    /// Decrypted bytes not read by the caller yet.
    plain: BytesMut,
    /// Records to send, not written to the socket yet.
    outgoing: BytesMut,
    /// The peer sent close_notify, or closed its end of the socket.
    peer_closed: bool,
    /// close_notify is queued (or the connection failed): shutting down
    /// only writes what is left.
    closing: bool,
    /// rustls failed (and queued its alert): nothing is processed again,
    /// as the same input would fail again and a second fatal alert is a
    /// bug in rustls's eyes.
    failed: bool,
}

/// What to do once rustls is ready for application data.
#[derive(Clone, Copy)]
enum Action<'a> {
    /// Nothing: process the input only.
    None,
    /// Encrypt these bytes.
    Send(&'a [u8]),
    /// Send close_notify.
    Close,
}

/// Where the connection stands once its buffered input is processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Application data may be sent (the action was done); reading needs
    /// more input.
    Ready,
    /// The handshake needs more input.
    Handshaking,
    /// Both sides sent close_notify.
    Closed,
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn left_in_handshake() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the peer closed the connection during the TLS handshake",
    )
}

/// Completes the server side of a handshake on `tcp`: the peer's
/// certificate, if the configuration requires one, has been verified
/// when this returns.
pub(crate) async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let mut stream = TlsStream {
        tcp,
        conn,
        incoming: BytesMut::new(),
        read_size: MIN_READ,
        plain: BytesMut::new(),
        outgoing: BytesMut::new(),
        peer_closed: false,
        closing: false,
        failed: false,
    };
    loop {
        let step = stream.drive(Action::None);
        // What the handshake has to say (or the alert of a failure) goes
        // out before it waits for the peer.
        let sent = std::future::poll_fn(|cx| stream.poll_write_out(cx)).await;
        let step = step?;
        sent?;
        match step {
            // TLS 1.3 lets the server send data once its own Finished is
            // out, before the client's certificate has arrived: the
            // handshake is complete only when rustls says so.
            Step::Ready if !stream.conn.is_handshaking() => return Ok(stream),
            Step::Closed => return Err(left_in_handshake()),
            Step::Ready | Step::Handshaking => {}
        }
        if stream.peer_closed || std::future::poll_fn(|cx| stream.poll_fill(cx)).await? == 0 {
            return Err(left_in_handshake());
        }
    }
}

impl TlsStream {
    /// The peer's end-entity certificate, as verified in the handshake.
    pub(crate) fn peer_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.conn.peer_certificates().and_then(|c| c.first())
    }

    /// Processes the input buffered so far (decrypted data into `plain`,
    /// handshake messages and alerts into `outgoing`) until rustls waits
    /// for input or is ready for application data, and then does `action`.
    fn drive(&mut self, action: Action<'_>) -> io::Result<Step> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the TLS connection failed earlier",
            ));
        }
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let outcome =
                match state {
                    Err(e) => Err(invalid(e)),
                    Ok(ConnectionState::ReadTraffic(mut records)) => {
                        while let Some(record) = records.next_record() {
                            match record {
                                Ok(r) => self.plain.extend_from_slice(r.payload),
                                Err(e) => return Err(invalid(e)),
                            }
                        }
                        Ok(None)
                    }
                    Ok(ConnectionState::EncodeTlsData(mut data)) => {
                        encode(&mut data, &mut self.outgoing).map(|()| None)
                    }
                    // `outgoing` is written before anything queued after it.
                    Ok(ConnectionState::TransmitTlsData(transmit)) => {
                        transmit.done();
                        Ok(None)
                    }
                    Ok(ConnectionState::WriteTraffic(mut traffic)) => match action {
                        Action::None => Ok(Some(Step::Ready)),
                        Action::Send(data) => encrypt(&mut traffic, data, &mut self.outgoing)
                            .map(|()| Some(Step::Ready)),
                        Action::Close => close_notify(&mut traffic, &mut self.outgoing)
                            .map(|()| Some(Step::Ready)),
                    },
                    Ok(ConnectionState::BlockedHandshake) => Ok(Some(Step::Handshaking)),
                    Ok(ConnectionState::PeerClosed) => {
                        self.peer_closed = true;
                        Ok(None)
                    }
                    Ok(ConnectionState::Closed) => Ok(Some(Step::Closed)),
                    // Early data is not enabled in the configuration.
                    Ok(other) => Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected TLS state {other:?}"),
                    )),
                };
            self.incoming.advance(discard);
            match outcome {
                Ok(Some(step)) => return Ok(step),
                Ok(None) => {}
                Err(e) => {
                    self.failed = true;
                    self.closing = true;
                    self.queue_alert();
                    return Err(e);
                }
            }
        }
    }

    /// After a failure: the alert rustls queued for the peer, into
    /// `outgoing`. Only what is queued: the input is not processed again.
    fn queue_alert(&mut self) {
        // An alert is one record; the bound is only a guard.
        for _ in 0..4 {
            if !self.conn.wants_write() {
                return;
            }
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            let Ok(ConnectionState::EncodeTlsData(mut data)) = state else {
                return;
            };
            if encode(&mut data, &mut self.outgoing).is_err() {
                return;
            }
        }
    }

    /// Reads from the socket into `incoming`: the number of bytes read, 0
    /// at the end of the stream. While the socket has nothing to read, the
    /// empty buffers are released.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            if self.tcp.poll_read_ready(cx).is_pending() {
                if self.incoming.is_empty() {
                    self.incoming = BytesMut::new();
                }
                if self.plain.is_empty() {
                    self.plain = BytesMut::new();
                }
                return Poll::Pending;
            }
            // At least the rest of the record begun, so that it can be
            // decrypted after this read.
            let record_rest = match self.incoming.get(..HEADER) {
                Some(h) => (HEADER + usize::from(u16::from_be_bytes([h[3], h[4]])))
                    .saturating_sub(self.incoming.len()),
                None => 0,
            };
            let want = self.read_size.max(record_rest);
            self.incoming.reserve(want);
            let room = self.incoming.capacity() - self.incoming.len();
            match self.tcp.try_read_buf(&mut self.incoming) {
                Ok(n) => {
                    if n >= room && room >= self.read_size {
                        self.read_size = (self.read_size * 2).min(MAX_READ);
                    } else if n < self.read_size / 4 {
                        self.read_size = (self.read_size / 2).max(MIN_READ);
                    }
                    return Poll::Ready(Ok(n));
                }
                // The readiness was stale; it is cleared now.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes `outgoing` to the socket, all of it, then releases it.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outgoing.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing.advance(n);
        }
        self.outgoing = BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

/// Copies a handshake record (or an alert) rustls has ready into `out`.
fn encode(
    data: &mut EncodeTlsData<'_, ServerConnectionData>,
    out: &mut BytesMut,
) -> io::Result<()> {
    append(out, 2 * 1024, |room| match data.encode(room) {
        Ok(n) => Ok(n),
        Err(EncodeError::InsufficientSize(short)) => Err(Short::By(short.required_size)),
        Err(e) => Err(Short::Failed(io::Error::other(e))),
    })
}

/// Encrypts `data` into records appended to `out`.
fn encrypt(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    data: &[u8],
    out: &mut BytesMut,
) -> io::Result<()> {
    let records = data.len().div_ceil(MAX_FRAGMENT).max(1);
    append(out, data.len() + records * RECORD_OVERHEAD, |room| {
        sealed(traffic.encrypt(data, room))
    })
}

/// Appends an encrypted close_notify alert to `out`.
fn close_notify(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    out: &mut BytesMut,
) -> io::Result<()> {
    append(out, RECORD_OVERHEAD, |room| {
        sealed(traffic.queue_close_notify(room))
    })
}

/// Why bytes were not written into the room given.
enum Short {
    /// The room was too small: this much is needed.
    By(usize),
    Failed(io::Error),
}

fn sealed(r: Result<usize, EncryptError>) -> Result<usize, Short> {
    r.map_err(|e| match e {
        EncryptError::InsufficientSize(short) => Short::By(short.required_size),
        e => Short::Failed(io::Error::other(e)),
    })
}

/// Lets `write` fill room appended to `out` (`room` bytes, or once more
/// what it says it needs), and keeps what it wrote.
fn append(
    out: &mut BytesMut,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, Short>,
) -> io::Result<()> {
    let at = out.len();
    for _ in 0..2 {
        out.resize(at + room, 0);
        match write(&mut out[at..]) {
            Ok(n) => {
                out.truncate(at + n);
                return Ok(());
            }
            Err(Short::By(needed)) => room = needed,
            Err(Short::Failed(e)) => {
                out.truncate(at);
                return Err(e);
            }
        }
    }
    out.truncate(at);
    Err(io::Error::other(
        "TLS records did not fit the room rustls asked for",
    ))
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plain.is_empty() {
                let n = buf.remaining().min(this.plain.len());
                buf.put_slice(&this.plain[..n]);
                this.plain.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            // An answer to the peer's post-handshake message (a key
            // update) goes out as far as the socket takes it now; the next
            // write or flush sends the rest.
            if !this.outgoing.is_empty() {
                let _ = this.poll_write_out(cx)?;
            }
            if this.drive(Action::None)? == Step::Closed {
                return Poll::Ready(Ok(()));
            }
            if !this.plain.is_empty() || this.peer_closed {
                continue;
            }
            if ready!(this.poll_fill(cx))? == 0 {
                // The socket ended without close_notify: the end of the
                // stream all the same for MQTT, whose packets are whole.
                this.peer_closed = true;
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.outgoing.len() >= OUT_LIMIT {
            ready!(this.poll_write_out(cx))?;
        }
        let n = buf.len().min(OUT_LIMIT);
        match this.drive(Action::Send(&buf[..n]))? {
            Step::Ready => {}
            Step::Handshaking | Step::Closed => {
                return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
            }
        }
        // Start sending now; a flush finishes what the socket did not take.
        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.closing = true;
            // A failed connection ends without close_notify.
            let _ = this.drive(Action::Close);
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
impl TlsStream {
    /// Bytes of buffer memory the stream holds outside rustls.
    fn held(&self) -> usize {
        self.incoming.capacity() + self.plain.capacity() + self.outgoing.capacity()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use futures_util::FutureExt;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::client::TlsStream as ClientStream;

    use super::*;

    /// A server configuration with a fresh self-signed certificate for
    /// `localhost` (returned for the client to trust).
    fn server_config() -> (rustls::ServerConfig, CertificateDer<'static>) {
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let cert = issued.cert.der().clone();
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.signing_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
        (config, cert)
    }

    /// A server stream and the rustls client connected to it, over real
    /// TCP on loopback (no client certificate: the broker's verifier has
    /// its own tests).
    async fn pair() -> (TlsStream, ClientStream<TcpStream>) {
        let (server, cert) = server_config();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connecting = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(ServerName::try_from("localhost").expect("name"), tcp)
                .await
                .expect("client handshake")
        });
        let (tcp, _) = listener.accept().await.expect("accept");
        let server = accept(Arc::new(server), tcp)
            .await
            .expect("server handshake");
        (server, connecting.await.expect("join"))
    }

    /// Echoes `len` bytes back to the client.
    async fn echo(server: &mut TlsStream, len: usize) {
        let mut got = vec![0; len];
        server.read_exact(&mut got).await.expect("server read");
        server.write_all(&got).await.expect("server write");
        server.flush().await.expect("server flush");
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn data_crosses_both_ways_in_records_of_every_size() {
        let (mut server, mut client) = pair().await;
        // One byte, a small packet, exactly one full record, one byte past
        // it, and many records (more than the socket takes at once).
        for len in [1, 100, MAX_FRAGMENT, MAX_FRAGMENT + 1, 300_000] {
            let sent = pattern(len);
            let serving = async {
                echo(&mut server, len).await;
            };
            let asking = async {
                client.write_all(&sent).await.expect("client write");
                client.flush().await.expect("client flush");
                let mut back = vec![0; len];
                client.read_exact(&mut back).await.expect("client read");
                back
            };
            let ((), back) = tokio::join!(serving, asking);
            assert!(back == sent, "{len} bytes came back changed");
        }
    }

    #[tokio::test]
    async fn a_waiting_stream_holds_no_buffers() {
        let (mut server, mut client) = pair().await;
        let sent = pattern(40_000);
        let asking = async {
            client.write_all(&sent).await.expect("client write");
            let mut back = vec![0; sent.len()];
            client.read_exact(&mut back).await.expect("client read");
        };
        tokio::join!(echo(&mut server, sent.len()), asking);
        // The client sends nothing more: the read waits on the socket.
        let mut byte = [0u8; 1];
        assert!(server.read(&mut byte).now_or_never().is_none());
        assert_eq!(server.held(), 0, "an idle stream keeps its buffers");
        // And it still reads what comes next.
        client.write_all(b"x").await.expect("client write");
        client.flush().await.expect("client flush");
        server.read_exact(&mut byte).await.expect("server read");
        assert_eq!(&byte, b"x");
    }

    #[tokio::test]
    async fn a_key_update_from_the_client_is_followed() {
        let (mut server, mut client) = pair().await;
        for round in 0..3 {
            client
                .get_mut()
                .1
                .refresh_traffic_keys()
                .expect("key update");
            let sent = pattern(1_000 + round);
            let asking = async {
                client.write_all(&sent).await.expect("client write");
                client.flush().await.expect("client flush");
                let mut back = vec![0; sent.len()];
                client.read_exact(&mut back).await.expect("client read");
                back
            };
            let ((), back) = tokio::join!(echo(&mut server, sent.len()), asking);
            assert!(back == sent, "round {round}: the echo changed");
        }
    }

    #[tokio::test]
    async fn a_forged_record_fails_the_read_and_the_stream_still_shuts_down() {
        let (mut server, mut client) = pair().await;
        // An application-data record whose tag cannot verify, written
        // under the client's TLS layer.
        let mut forged = vec![23, 3, 3, 0, 40];
        forged.extend(std::iter::repeat_n(0xA5, 40));
        client.get_mut().0.write_all(&forged).await.expect("write");
        let mut buf = [0u8; 16];
        let err = server.read(&mut buf).await.expect_err("forged record");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // The failure is final, and closing does not process it again.
        assert!(server.read(&mut buf).await.is_err());
        server.shutdown().await.expect("shutdown");
        // The client hears rustls's alert.
        let mut rest = Vec::new();
        let heard = client.read_to_end(&mut rest).await;
        assert!(heard.is_err(), "the client read {rest:?} without an alert");
    }

    #[tokio::test]
    async fn close_notify_ends_the_stream_both_ways() {
        let (mut server, mut client) = pair().await;
        client.shutdown().await.expect("client close");
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.expect("read"), 0);
        server.shutdown().await.expect("server close");
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).await.expect("read"), 0);
    }

    #[tokio::test]
    async fn a_client_that_is_no_tls_peer_fails_the_handshake() {
        let (config, _) = server_config();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut plain = TcpStream::connect(addr).await.expect("connect");
        let (tcp, _) = listener.accept().await.expect("accept");
        let serving = tokio::spawn(accept(Arc::new(config), tcp));
        plain
            .write_all(b"CONNECT / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let err = serving.await.expect("join").err().expect("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // rustls's alert reaches the peer before the error is returned.
        let mut answer = Vec::new();
        plain.read_to_end(&mut answer).await.expect("read");
        assert_eq!(
            answer.first(),
            Some(&21),
            "expected an alert record: {answer:?}"
        );
    }
}

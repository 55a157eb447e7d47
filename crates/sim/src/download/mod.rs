//! Downloading a firmware image over HTTPS (docs/ota.md §4): the device's
//! own client certificate, the server verified against `--ca`, the body
//! streamed in chunks to the device task (which writes them into the
//! inactive slot through the core), and a broken connection resumed with
//! `Range: bytes=<received>-` and `If-Range: "<sha256>"` after a backoff,
//! a bounded number of times.
//!
//! One task per download; it only fetches bytes. What they mean (hash,
//! length, the slot) is the core's business in the device task, which
//! stops the download by dropping its end of the channel.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rampart_core::backoff::{Backoff, BackoffConfig};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, IF_RANGE, RANGE};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::device::DeviceRng;
use crate::enroll::error_chain;
use crate::stats::{Count, DeviceStats};

/// Attempts (requests) one download may make before it gives up.
pub(crate) const MAX_ATTEMPTS: u32 = 6;

/// What the download task tells the device task.
#[derive(Debug)]
pub(crate) enum DownloadEvent {
    /// The next bytes of the image.
    Chunk(Bytes),
    /// The server answered a range request with the whole image (`200`):
    /// discard what was written and start over from byte 0.
    Restart,
    /// The body ended after the announced size.
    Done,
    /// The image could not be fetched (refused, or too many broken attempts).
    Failed(String),
}

/// What to fetch.
#[derive(Debug, Clone)]
pub(crate) struct DownloadRequest {
    /// The offer's URL (with its token).
    pub url: String,
    /// The image size the manifest announced.
    pub size: u64,
    /// The image SHA-256, lowercase hex (the route's `ETag`).
    pub sha256_hex: String,
    /// `--flaky`: cut the connection once, after this many bytes.
    pub cut_after: Option<u64>,
    /// Backoff between attempts.
    pub backoff: BackoffConfig,
}

/// A running download; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Download {
    events: mpsc::Receiver<DownloadEvent>,
    task: JoinHandle<()>,
}

impl Drop for Download {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Download {
    /// Starts fetching with `client` (the device's TLS identity).
    pub(crate) fn start(
        client: reqwest::Client,
        request: DownloadRequest,
        stats: Arc<DeviceStats>,
        device_id: String,
    ) -> Self {
        let (tx, events) = mpsc::channel(4);
        let task = tokio::spawn(fetch(client, request, tx, stats, device_id));
        Self { events, task }
    }

    /// The next event; `None` once the task is gone.
    pub(crate) async fn next(&mut self) -> Option<DownloadEvent> {
        self.events.recv().await
    }
}

/// The HTTP client of one device's downloads: its certificate, the fleet's
/// trust, HTTPS only, no redirects.
pub(crate) fn client(
    mut tls: rustls::ClientConfig,
    io_timeout: Duration,
) -> Result<reqwest::Client, String> {
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(true)
        .connect_timeout(io_timeout)
        .read_timeout(io_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| error_chain(&e))
}

/// How one attempt ended.
enum Attempt {
    /// The body ended.
    Ended,
    /// The connection broke (or `--flaky` cut it): try again.
    Broken(String),
    /// The server refused for good (4xx other than 416).
    Refused(String),
    /// The device task is gone.
    Gone,
}

/// The start of a `Content-Range: bytes START-END/TOTAL` header.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.trim().strip_prefix("bytes ")?;
    let (start, _) = range.split_once('-')?;
    start.trim().parse().ok()
}

async fn fetch(
    client: reqwest::Client,
    mut request: DownloadRequest,
    tx: mpsc::Sender<DownloadEvent>,
    stats: Arc<DeviceStats>,
    device_id: String,
) {
    let mut received = 0u64;
    let mut backoff = Backoff::new(request.backoff);
    let mut rng = DeviceRng::from_entropy();
    let mut last_failure = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        if attempt > 1 {
            let delay = backoff.next_delay(&mut rng);
            debug!(device_id = %device_id, attempt, received, delay_ms = delay, reason = %last_failure, "download broken; resuming");
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        match one_attempt(
            &client,
            &mut request,
            &mut received,
            &tx,
            &stats,
            &device_id,
        )
        .await
        {
            Attempt::Ended if received >= request.size => {
                let _ = tx.send(DownloadEvent::Done).await;
                return;
            }
            Attempt::Ended => {
                last_failure = format!("the body ended after {received} of {} bytes", request.size);
            }
            Attempt::Broken(reason) => last_failure = reason,
            Attempt::Refused(reason) => {
                warn!(device_id = %device_id, reason = %reason, "download refused");
                let _ = tx.send(DownloadEvent::Failed(reason)).await;
                return;
            }
            Attempt::Gone => return,
        }
    }
    let reason = format!("gave up after {MAX_ATTEMPTS} attempts: {last_failure}");
    warn!(device_id = %device_id, reason = %reason, "download failed");
    let _ = tx.send(DownloadEvent::Failed(reason)).await;
}

async fn one_attempt(
    client: &reqwest::Client,
    request: &mut DownloadRequest,
    received: &mut u64,
    tx: &mpsc::Sender<DownloadEvent>,
    stats: &DeviceStats,
    device_id: &str,
) -> Attempt {
    let mut get = client.get(&request.url);
    let resuming = *received > 0;
    if resuming {
        get = get
            .header(RANGE, format!("bytes={received}-"))
            .header(IF_RANGE, format!("\"{}\"", request.sha256_hex));
    }
    let mut response = match get.send().await {
        Ok(r) => r,
        Err(e) => return Attempt::Broken(error_chain(&e.without_url())),
    };
    let status = response.status();
    match status {
        StatusCode::PARTIAL_CONTENT if resuming => {
            let start = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_start);
            if start != Some(*received) {
                // Not the bytes asked for: start over rather than guess.
                return restart(tx, received, format!("206 for another range ({start:?})")).await;
            }
            stats.bump(Count::DownloadResume);
            info!(device_id = %device_id, from = *received, "download resumed");
        }
        StatusCode::OK if resuming => {
            // If-Range did not match (docs/ota.md §4): this is the whole
            // image; what was written is discarded and the hash starts over.
            info!(device_id = %device_id, "the server sent the whole image to a range request; starting over");
            *received = 0;
            if tx.send(DownloadEvent::Restart).await.is_err() {
                return Attempt::Gone;
            }
        }
        StatusCode::OK => {}
        StatusCode::RANGE_NOT_SATISFIABLE => {
            return restart(tx, received, "416 range not satisfiable".to_owned()).await;
        }
        s if s.is_client_error() => {
            let body = response.text().await.unwrap_or_default();
            let code = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            return Attempt::Refused(format!("HTTP {} {code}", s.as_u16()));
        }
        s => return Attempt::Broken(format!("HTTP {}", s.as_u16())),
    }
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Attempt::Ended,
            Err(e) => return Attempt::Broken(error_chain(&e.without_url())),
        };
        let len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        let end = received.saturating_add(len);
        if let Some(cut) = request.cut_after
            && end > cut
        {
            // `--flaky`: the connection breaks here, once per download.
            request.cut_after = None;
            let keep = usize::try_from(cut.saturating_sub(*received)).unwrap_or(0);
            let part = chunk.slice(..keep.min(chunk.len()));
            if !part.is_empty() {
                *received = received.saturating_add(u64::try_from(part.len()).unwrap_or(0));
                if tx.send(DownloadEvent::Chunk(part)).await.is_err() {
                    return Attempt::Gone;
                }
            }
            stats.bump(Count::FlakyDrop);
            return Attempt::Broken(format!("--flaky cut the connection after {received} bytes"));
        }
        *received = end;
        if tx.send(DownloadEvent::Chunk(chunk)).await.is_err() {
            return Attempt::Gone;
        }
    }
}

/// Tells the device task to start over; the next attempt asks for byte 0.
/// `Broken` to go on, `Gone` if the device task left.
async fn restart(tx: &mpsc::Sender<DownloadEvent>, received: &mut u64, why: String) -> Attempt {
    *received = 0;
    if tx.send(DownloadEvent::Restart).await.is_err() {
        return Attempt::Gone;
    }
    Attempt::Broken(why)
}

#[cfg(test)]
mod route_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_are_read() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 0-0/1"), Some(0));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(content_range_start("items 1-2/3"), None);
    }
}

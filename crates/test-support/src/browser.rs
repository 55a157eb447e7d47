//! A headless Chromium driven over WebDriver (`chromedriver` + the
//! `fantoccini` client), for the console's end-to-end tests.
//!
//! Trust: the browser trusts the test server by the SHA-256 of its
//! certificate's public key (`--ignore-certificate-errors-spki-list`),
//! which accepts that one key and nothing else; certificate errors for any
//! other server still fail. This flag exists for tests like these; product
//! code never uses it.
//!
//! Nothing is skipped: when chromedriver or Chromium cannot be started,
//! [`Browser::start`] panics with what to install.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Where chromedriver is looked for (`RAMPART_CHROMEDRIVER` overrides).
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Where Chromium is looked for (`RAMPART_CHROMIUM` overrides).
const CHROMIUM: &str = "/usr/bin/chromium";

/// The window the browser opens.
#[derive(Debug, Clone, Copy)]
pub enum Window {
    /// A laptop: 1280 × 900.
    Desktop,
    /// A phone: 390 × 844.
    Phone,
}

impl Window {
    fn size(self) -> (u32, u32) {
        match self {
            Window::Desktop => (1280, 900),
            Window::Phone => (390, 844),
        }
    }
}

/// A running chromedriver with one Chromium session; both end on drop.
pub struct Browser {
    client: Option<Client>,
    driver: Child,
    /// Chromium's profile, removed on drop.
    _profile: tempfile::TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("driver", &self.driver.id())
            .finish()
    }
}

/// Base64 of the SHA-256 of the public key (SubjectPublicKeyInfo) of the
/// certificate `addr` presents, as Chromium's SPKI list wants it. Uses
/// the `openssl` CLI, which the tests need anyway.
pub fn server_spki_hash(addr: SocketAddr) -> String {
    let run = |args: &[&str], input: &[u8]| -> Vec<u8> {
        use std::io::Write;
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install openssl): {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input);
        }
        let out = child.wait_with_output().expect("openssl output");
        assert!(out.status.success(), "openssl {args:?} failed");
        out.stdout
    };
    let connect = addr.to_string();
    let cert = run(
        &["s_client", "-connect", &connect, "-servername", "localhost"],
        b"",
    );
    let pubkey = run(&["x509", "-pubkey", "-noout"], &cert);
    let der = run(&["pkey", "-pubin", "-outform", "der"], &pubkey);
    data_encoding::BASE64.encode(&Sha256::digest(&der))
}

/// A loopback port free right now (bound, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn path_from_env(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

impl Browser {
    /// Starts chromedriver on a free port and opens a headless Chromium
    /// that trusts only the server key `spki_hash` (see [`server_spki_hash`])
    /// beyond the system's roots.
    pub async fn start(spki_hash: &str, window: Window) -> Self {
        let driver_bin = path_from_env("RAMPART_CHROMEDRIVER", CHROMEDRIVER);
        let chromium = path_from_env("RAMPART_CHROMIUM", CHROMIUM);
        for (what, path, package) in [
            ("chromedriver", &driver_bin, "chromium-driver"),
            ("Chromium", &chromium, "chromium"),
        ] {
            assert!(
                path.exists(),
                "{what} is not at {}: install it (apt-get install -y {package}, as .ci/run does) or set RAMPART_{}",
                path.display(),
                what.to_ascii_uppercase()
            );
        }
        // The port is free when read but may be taken before chromedriver
        // binds it: try a few.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            // Its own process group, which Chromium and its helpers join,
            // so that drop can end them all (a killed chromedriver leaves
            // Chromium running otherwise).
            let mut driver = match Command::new(&driver_bin)
                .process_group(0)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(c) => c,
                Err(e) => panic!("cannot start {}: {e}", driver_bin.display()),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut up = false;
            while Instant::now() < deadline {
                if let Ok(Some(status)) = driver.try_wait() {
                    last_error = format!("chromedriver exited with {status} on port {port}");
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    up = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !up {
                kill_group(&mut driver);
                if last_error.is_empty() {
                    last_error = format!("chromedriver did not listen on port {port} within 10 s");
                }
                continue;
            }
            let profile = tempfile::tempdir().expect("profile dir");
            let (w, h) = window.size();
            let mut caps = Capabilities::new();
            caps.insert(
                "goog:chromeOptions".into(),
                json!({
                    "binary": chromium.display().to_string(),
                    "args": [
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--no-first-run",
                        "--hide-scrollbars",
                        format!("--window-size={w},{h}"),
                        format!("--user-data-dir={}", profile.path().display()),
                        format!("--ignore-certificate-errors-spki-list={spki_hash}"),
                    ],
                }),
            );
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => {
                    return Browser {
                        client: Some(client),
                        driver,
                        _profile: profile,
                    };
                }
                Err(e) => {
                    last_error = format!("chromedriver could not open Chromium: {e}");
                    kill_group(&mut driver);
                }
            }
        }
        panic!("no browser for the end-to-end test: {last_error}");
    }

    /// The WebDriver client.
    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("open until drop")
    }

    /// Saves a PNG of the viewport to `target/e2e-screenshots/NAME.png`
    /// and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client().screenshot().await.expect("screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// Ends the session (Chromium exits) and stops chromedriver.
    pub async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close().await;
        }
    }
}

/// `target/e2e-screenshots`, next to the workspace's build output.
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        PathBuf::from,
    );
    target.join("e2e-screenshots")
}

impl Drop for Browser {
    fn drop(&mut self) {
        // After `close` Chromium is gone already; after a panic it is not,
        // and a killed chromedriver does not take it along: end the group.
        kill_group(&mut self.driver);
    }
}

/// Kills chromedriver's process group (chromedriver, Chromium and its
/// helpers, all started by this harness) and reaps chromedriver.
fn kill_group(driver: &mut Child) {
    let group = format!("-{}", driver.id());
    let _ = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status();
    let _ = driver.kill();
    let _ = driver.wait();
}

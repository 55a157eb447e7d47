//! Shared fixtures for Rampart's tests: temporary data dirs, the `rampart`
//! binary under test, a running `serve` whose stderr can be awaited, the
//! real `openssl` command-line tool, HTTPS clients that trust only
//! Rampart's CA, and device keys and CSRs made as a device makes them.
//!
//! Nothing here fakes a component: tests run the real binary against real
//! files, check certificates with the real OpenSSL, and run the PostgreSQL
//! store against a real server ([`PgTestDb`]).

pub mod browser;
pub mod https;
mod postgres;

pub use postgres::PgTestDb;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a test waits for an expected event before failing. Generous:
/// the bound only stops a broken build from hanging CI; passing runs take
/// milliseconds. Override with `RAMPART_TEST_WAIT_SECS`.
pub fn wait_limit() -> Duration {
    std::env::var("RAMPART_TEST_WAIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(30), Duration::from_secs)
}

/// A temporary working directory with a data dir path inside it.
#[derive(Debug)]
pub struct Workspace {
    tmp: tempfile::TempDir,
}

impl Workspace {
    /// A fresh, empty workspace.
    pub fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().expect("create temp dir"),
        }
    }

    /// The workspace directory.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// A path inside the workspace.
    pub fn join(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Where the data dir lives (not created until `rampart init`).
    pub fn data_dir(&self) -> PathBuf {
        self.join("data")
    }

    /// `rampart --data-dir <data dir>` with a clean environment: no
    /// `RAMPART_*` variable of the caller's leaks into the test.
    pub fn rampart(&self) -> assert_cmd::Command {
        assert_cmd::Command::from_std(self.rampart_std())
    }

    /// [`Workspace::rampart`] as a plain `std::process::Command`.
    pub fn rampart_std(&self) -> Command {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("rampart"));
        for (k, _) in std::env::vars() {
            if k.starts_with("RAMPART_") && k != "RAMPART_TEST_WAIT_SECS" {
                cmd.env_remove(k);
            }
        }
        // Through the environment, so that a test may pass `--data-dir`
        // (or its own RAMPART_DATA_DIR) to point a command elsewhere.
        cmd.current_dir(self.path())
            .env("RAMPART_DATA_DIR", self.data_dir())
            .env("USER", "tester");
        cmd
    }

    /// Runs `rampart ARGS --json`, asserts success, parses standard output.
    pub fn rampart_json(&self, args: &[&str]) -> serde_json::Value {
        json_of(self.rampart(), args)
    }

    /// `rampart ARGS --json` with the store in PostgreSQL at `url`.
    pub fn rampart_json_with_store(&self, url: &str, args: &[&str]) -> serde_json::Value {
        let mut cmd = self.rampart();
        cmd.env("RAMPART_STORE__URL", url);
        json_of(cmd, args)
    }

    /// Runs `rampart ARGS`, asserts failure, returns its stderr.
    pub fn rampart_fails(&self, args: &[&str]) -> String {
        let out = self.rampart().args(args).output().expect("run rampart");
        assert!(
            !out.status.success(),
            "rampart {args:?} should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The trust bundle `rampart ca export` prints (issuing CA, then root).
    pub fn ca_bundle(&self) -> String {
        let out = self
            .rampart()
            .args(["ca", "export"])
            .output()
            .expect("run rampart ca export");
        assert!(
            out.status.success(),
            "ca export: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("PEM is text")
    }

    /// Runs `openssl ARGS` in the workspace.
    pub fn openssl(&self, args: &[&str]) -> Output {
        Command::new("openssl")
            .args(args)
            .current_dir(self.path())
            .output()
            .expect("openssl is installed (apt-get install openssl)")
    }

    /// Runs `openssl ARGS`, asserts success, returns stdout as text.
    pub fn openssl_ok(&self, args: &[&str]) -> String {
        let out = self.openssl(args);
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Makes a key and CSR with OpenSSL: `kind` is `ec`, `ed25519` or
    /// `rsa:BITS`. Returns the CSR path.
    pub fn make_csr(&self, name: &str, cn: &str, kind: &str) -> PathBuf {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let mut args: Vec<String> = vec!["req".into(), "-new".into()];
        match kind {
            "ec" => args.extend(
                ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"].map(String::from),
            ),
            "ed25519" => args.extend(["-newkey", "ed25519"].map(String::from)),
            rsa if rsa.starts_with("rsa:") => args.extend(["-newkey".into(), rsa.into()]),
            other => panic!("unknown key kind {other}"),
        }
        args.extend(
            [
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ]
            .map(String::from),
        );
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.openssl_ok(&refs);
        self.join(&csr)
    }

    /// Creates a device with a server-made key (the development shortcut)
    /// and returns the paths of its files.
    pub fn device(&self, id: &str) -> DeviceFiles {
        let dir = self.join("devices");
        let out = self
            .rampart()
            .args(["device", "create", "--id", id, "--out"])
            .arg(&dir)
            .output()
            .expect("run rampart device create");
        assert!(
            out.status.success(),
            "device create {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        DeviceFiles {
            id: id.to_owned(),
            cert: dir.join(format!("{id}.crt")),
            key: dir.join(format!("{id}.key")),
            ca: dir.join("ca.crt"),
        }
    }

    /// Starts `rampart serve` on loopback with OS-chosen ports.
    pub fn serve(&self, extra_env: &[(&str, &str)]) -> Serve {
        self.serve_on("127.0.0.1:0", "127.0.0.1:0", extra_env)
    }

    /// Starts `rampart serve` on the given addresses (a restart on the
    /// ports an earlier `serve` was given).
    pub fn serve_on(&self, mqtt: &str, http: &str, extra_env: &[(&str, &str)]) -> Serve {
        let mut cmd = self.rampart_std();
        cmd.args(["serve", "--mqtt-addr", mqtt, "--http-addr", http])
            .envs(extra_env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Serve::spawn(cmd)
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

/// A device's credentials on disk.
#[derive(Debug, Clone)]
pub struct DeviceFiles {
    /// Its id.
    pub id: String,
    /// Certificate (with chain).
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// CA bundle to verify the server.
    pub ca: PathBuf,
}

impl DeviceFiles {
    /// `mosquitto_pub`/`mosquitto_sub` TLS and identity arguments for a
    /// broker at `addr`, as this device.
    pub fn mosquitto_args(&self, addr: std::net::SocketAddr) -> Vec<String> {
        vec![
            "-h".into(),
            addr.ip().to_string(),
            "-p".into(),
            addr.port().to_string(),
            "--cafile".into(),
            self.ca.display().to_string(),
            "--cert".into(),
            self.cert.display().to_string(),
            "--key".into(),
            self.key.display().to_string(),
            "-i".into(),
            self.id.clone(),
        ]
    }
}

/// Runs a mosquitto client (`mosquitto_pub` or `mosquitto_sub`) with `args`,
/// bounded by [`wait_limit`]; returns its output.
pub fn mosquitto(tool: &str, args: &[String]) -> Output {
    spawn_mosquitto(tool, args).wait()
}

/// Starts a mosquitto client in the background (killed when dropped).
pub fn spawn_mosquitto(tool: &str, args: &[String]) -> Background {
    let child = Command::new(tool)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} is installed (apt-get install mosquitto-clients): {e}"));
    Background { child: Some(child) }
}

/// A background client process.
#[derive(Debug)]
pub struct Background {
    child: Option<Child>,
}

impl Background {
    /// Waits (bounded by [`wait_limit`]) for the process to exit by itself.
    pub fn wait(mut self) -> Output {
        let mut child = self.child.take().expect("running child");
        let deadline = std::time::Instant::now() + wait_limit();
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return child.wait_with_output().expect("collect output");
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "background client did not finish: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running `rampart serve` (or another long-running command, such as
/// `rampart simulate`) whose stderr lines, and stdout lines when stdout is
/// piped too, can be awaited.
#[derive(Debug)]
pub struct Serve {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    cursor: usize,
}

impl Serve {
    /// Starts `cmd`, whose stderr must be piped; if its stdout is piped
    /// too, stdout lines arrive in the same stream (their order relative
    /// to stderr lines is not kept).
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().expect("start rampart");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            cursor: 0,
        }
    }

    /// Waits for a stderr line containing every one of `needles`, after
    /// the line the previous `wait_for` matched; panics with everything
    /// seen so far if none arrives within [`wait_limit`].
    pub fn wait_for(&mut self, needles: &[&str]) -> String {
        self.wait_until(&format!("{needles:?}"), |l| {
            needles.iter().all(|n| l.contains(n))
        })
    }

    /// Waits for a stderr line for which `hit` holds (described as `what`
    /// in the failure), after the line the previous wait matched.
    pub fn wait_until(&mut self, what: &str, hit: impl Fn(&str) -> bool) -> String {
        let hit = |l: &String| hit(l);
        if let Some(i) = self.seen[self.cursor..].iter().position(hit) {
            self.cursor += i + 1;
            return self.seen[self.cursor - 1].clone();
        }
        let deadline = std::time::Instant::now() + wait_limit();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if hit(&line) {
                        self.cursor = self.seen.len();
                        return line;
                    }
                }
                Err(_) => panic!(
                    "the process printed no line with {what}; it printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for `listening NAME=IP:PORT` (`mqtt`, `http`) and returns the
    /// address. Each part prints its line once at start, in any order, so
    /// lines already seen count even before the last match.
    pub fn listening(&mut self, name: &str) -> std::net::SocketAddr {
        let prefix = format!("listening {name}=");
        let line = match self.seen.iter().position(|l| l.contains(&prefix)) {
            Some(i) => {
                self.cursor = self.cursor.max(i + 1);
                self.seen[i].clone()
            }
            None => self.wait_for(&[&prefix]),
        };
        line.trim()
            .strip_prefix(&prefix)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("malformed listening line: {line}"))
    }

    /// The first-start setup URL `serve` prints on stdout
    /// (`setup url=https://...`), seen already or awaited.
    pub fn setup_url(&mut self) -> String {
        const PREFIX: &str = "setup url=";
        let line = match self.seen.iter().find(|l| l.starts_with(PREFIX)) {
            Some(l) => l.clone(),
            None => self.wait_until("a setup URL", |l| l.starts_with(PREFIX)),
        };
        line.trim()
            .strip_prefix(PREFIX)
            .unwrap_or_default()
            .to_owned()
    }

    /// The MQTT (mTLS) and HTTPS addresses, once both parts listen.
    pub fn addresses(&mut self) -> (std::net::SocketAddr, std::net::SocketAddr) {
        (self.listening("mqtt"), self.listening("http"))
    }

    /// Kills the process with SIGKILL (no cleanup, like a power cut for
    /// everything not yet on disk) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Every stderr line received so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Sends SIGTERM and waits for exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = std::time::Instant::now() + wait_limit();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Drain the rest so that the final lines can be inspected.
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd ARGS --json`, asserts success, parses standard output.
fn json_of(mut cmd: assert_cmd::Command, args: &[&str]) -> serde_json::Value {
    let out = cmd.args(args).arg("--json").output().expect("run rampart");
    assert!(
        out.status.success(),
        "rampart {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rampart {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

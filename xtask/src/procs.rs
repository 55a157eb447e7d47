//! Child processes the bench starts, each killed by PID when its guard is
//! dropped: on success, on error and on panic alike.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running child process, killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Guard {
    name: String,
    child: Child,
}

impl Guard {
    /// Spawn `cmd` under a guard.
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Guard> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Guard {
            name: name.to_string(),
            child,
        })
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the child to exit, killing it after `timeout`.
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} did not finish within {timeout:?}; killed", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fail if the child has already exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited unexpectedly: {status}", self.name);
        }
        Ok(())
    }

    /// Take the child's standard error (if piped).
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Child::kill sends SIGKILL to this child's PID only.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The addresses `rampart serve` listens on.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// MQTT over TLS.
    pub mqtt: SocketAddr,
    /// HTTPS (API, enrollment).
    pub http: SocketAddr,
    /// Plain-HTTP `/metrics`, when the configuration sets `web.metrics_addr`.
    pub metrics: Option<SocketAddr>,
}

/// Start `rampart serve` on loopback port 0 and return its guard and the
/// addresses it printed on stderr (`listening mqtt=IP:PORT`, `http=` and,
/// with `metrics`, `metrics=`, in any order). The rest of its stderr goes to
/// `log`.
pub fn start_rampart_listening(
    bin: &Path,
    data: &Path,
    config: &Path,
    log: PathBuf,
    metrics: bool,
) -> Result<(Guard, Listening)> {
    let mut cmd = Command::new(bin);
    cmd.arg("--data-dir")
        .arg(data)
        .arg("--config")
        .arg(config)
        .args([
            "serve",
            "--mqtt-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut guard = Guard::spawn("rampart serve", &mut cmd)?;
    let stderr = guard
        .take_stderr()
        .context("rampart serve: no stderr pipe")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = std::fs::File::create(&log).ok();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some((name, addr)) = line
                .strip_prefix("listening ")
                .and_then(|rest| rest.split_once('='))
            {
                let _ = tx.send((name.to_string(), addr.trim().to_string()));
            }
            if let Some(f) = out.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut mqtt, mut http, mut metrics_at) = (None, None, None);
    while mqtt.is_none() || http.is_none() || (metrics && metrics_at.is_none()) {
        let (name, addr) = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .context("rampart serve did not print every `listening NAME=` line within 60 s")?;
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("rampart printed an unparsable address '{addr}'"))?;
        match name.as_str() {
            "mqtt" => mqtt = Some(addr),
            "http" => http = Some(addr),
            "metrics" => metrics_at = Some(addr),
            _ => {}
        }
    }
    let listening = Listening {
        mqtt: mqtt.context("no MQTT address")?,
        http: http.context("no HTTPS address")?,
        metrics: metrics_at,
    };
    Ok((guard, listening))
}

/// A free TCP port on 127.0.0.1 (bound and released; another process could
/// take it in between, which then fails the start loudly).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    Ok(l.local_addr()?.port())
}

/// Wait until something accepts TCP connections on `addr`.
pub fn wait_listening(guard: &mut Guard, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        guard.ensure_running()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("nothing listening on {addr} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// User plus system CPU seconds of a process (`/proc/PID/stat` fields 14
/// and 15, in `USER_HZ` = 100 ticks per second).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let mut fields = after.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Wait (at most `timeout`) until both brokers use under 5 % of a core over
/// 300 ms, so that a backlog left by the previous run does not eat into the
/// next one. Returns how long it waited.
pub fn wait_idle(pids: &[u32], timeout: Duration) -> Duration {
    let started = Instant::now();
    let window = Duration::from_millis(300);
    while started.elapsed() < timeout {
        let before: Vec<Option<f64>> = pids.iter().map(|&p| cpu_seconds(p)).collect();
        std::thread::sleep(window);
        let busy = pids
            .iter()
            .zip(before)
            .any(|(&p, b)| match (b, cpu_seconds(p)) {
                (Some(b), Some(a)) => (a - b) / window.as_secs_f64() > 0.05,
                _ => false,
            });
        if !busy {
            break;
        }
    }
    started.elapsed()
}

//! Helpers for end-to-end tests: start the real `rollcall-cloud` and `rollcall-agent`
//! binaries (and Mosquitto) on ephemeral ports in temp dirs, drive them, and poll
//! for outcomes with deadlines.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Paths of the workspace's binaries, built once per test process.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `rollcall-agent`.
    pub agent: PathBuf,
    /// `rollcall-cloud`.
    pub cloud: PathBuf,
}

/// Builds (if needed) and locates the agent and cloud binaries with the same cargo
/// and profile as the running tests.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--locked",
            "--bins",
            "-p",
            "rollcall-agent",
            "-p",
            "rollcall-cloud",
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(Stdio::inherit());
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("cargo runs");
        assert!(out.status.success(), "building the binaries failed");
        let mut agent = None;
        let mut cloud = None;
        for line in out.stdout.split(|b| *b == b'\n') {
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            if let Some(exe) = v.get("executable").and_then(Value::as_str) {
                match v["target"]["name"].as_str() {
                    Some("rollcall-agent") => agent = Some(PathBuf::from(exe)),
                    Some("rollcall-cloud") => cloud = Some(PathBuf::from(exe)),
                    _ => {}
                }
            }
        }
        Bins {
            agent: agent.expect("agent binary built"),
            cloud: cloud.expect("cloud binary built"),
        }
    })
}

/// A free loopback port (closed again; a short race with other processes is accepted).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return Ok(t);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
    /// SIGTERM, then wait up to `timeout` for a clean exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        // SAFETY: sending a signal to our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.0.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                self.kill9();
                bail!("process did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a command to completion; returns stdout, or an error with stderr.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// A `rollcall-cloud serve` process with its own data dir.
pub struct TestCloud {
    /// The data dir (kept across restarts).
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// The process.
    pub proc: Option<Proc>,
    /// The broker URL the agents should use.
    pub mqtt_url: String,
    /// The HTTP base URL.
    pub http_url: String,
    /// The cloud's public key (base64).
    pub public_key: String,
    external_mqtt: Option<String>,
    mqtt_listen: SocketAddr,
}

impl TestCloud {
    /// Starts a cloud with the embedded broker on a free port.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// Starts a cloud; with `Some(url)` it uses that external broker instead of the embedded one.
    pub fn start_with(external_mqtt: Option<String>) -> Result<Self> {
        let mut c = Self::stopped(external_mqtt)?;
        c.spawn()?;
        Ok(c)
    }

    /// A cloud whose data dir exists but whose serve process is not started yet (prepare
    /// the store with [`TestCloud::cli`], then [`TestCloud::spawn`]).
    pub fn stopped(external_mqtt: Option<String>) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        Ok(TestCloud {
            data_dir: tmp.path().to_path_buf(),
            _tmp: Some(tmp),
            proc: None,
            mqtt_url: String::new(),
            http_url: String::new(),
            public_key: String::new(),
            external_mqtt,
            mqtt_listen: format!("127.0.0.1:{}", free_port()).parse()?,
        })
    }

    /// (Re)starts the serve process on the same ports and data dir.
    pub fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&bins().cloud);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--http-listen", "127.0.0.1:0"]);
        match &self.external_mqtt {
            Some(u) => cmd.args(["--mqtt-url", u]),
            None => cmd.arg("--mqtt-listen").arg(self.mqtt_listen.to_string()),
        };
        cmd.env("ROLLCALL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let v: Value =
            serde_json::from_str(&line).with_context(|| format!("cloud ready line {line:?}"))?;
        self.mqtt_url = v["mqtt_url"].as_str().unwrap_or_default().to_owned();
        self.http_url = v["http_url"].as_str().unwrap_or_default().to_owned();
        self.public_key = v["public_key"].as_str().unwrap_or_default().to_owned();
        self.proc = Some(Proc(child));
        Ok(())
    }

    /// Restarts the serve process with its embedded broker on `port` (same data dir and key).
    pub fn restart_on_mqtt_port(&mut self, port: u16) -> Result<()> {
        self.kill9();
        self.mqtt_listen = format!("127.0.0.1:{port}").parse()?;
        self.spawn()
    }

    /// SIGKILLs the serve process.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Runs a `rollcall-cloud` CLI command against this cloud's data dir; returns stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        run_ok(
            Command::new(&bins().cloud)
                .args(args)
                .arg("--data-dir")
                .arg(&self.data_dir),
        )
    }

    /// Adds a member.
    pub fn add_member(&self, id: &str, name: &str) -> Result<()> {
        self.cli(&["members", "add", "--id", id, "--name", name])
            .map(|_| ())
    }

    /// Registers a device.
    pub fn add_device(&self, id: &str, member: &str, public_key: &str) -> Result<Value> {
        let out = self.cli(&[
            "devices",
            "add",
            "--id",
            id,
            "--member",
            member,
            "--public-key",
            public_key,
        ])?;
        Ok(serde_json::from_str(&out)?)
    }

    /// `members show ID --json`.
    pub fn member(&self, id: &str) -> Result<Value> {
        Ok(serde_json::from_str(
            &self.cli(&["members", "show", id, "--json"])?,
        )?)
    }

    /// `quarantine list --json`.
    pub fn quarantine(&self) -> Result<Vec<Value>> {
        Ok(serde_json::from_str(&self.cli(&[
            "quarantine",
            "list",
            "--json",
        ])?)?)
    }

    /// Waits until member `id` has `n` distinct events stored.
    pub fn wait_events(&self, id: &str, n: u64, timeout: Duration) -> Result<Value> {
        wait_for(&format!("{n} events for member {id}"), timeout, || {
            let m = self.member(id).ok()?;
            (m["usage"]["events"].as_u64() == Some(n)).then_some(m)
        })
    }

    /// Every stored `(device_id, seq)`, read straight from the store.
    pub fn stored_seqs(&self, device: &str) -> Result<Vec<u64>> {
        let conn = rusqlite_open(&self.data_dir.join("rollcall.db"))?;
        let mut st = conn.prepare("SELECT seq FROM events WHERE device_id = ?1 ORDER BY seq")?;
        let rows = st.query_map([device], |r| r.get::<_, i64>(0))?;
        Ok(rows
            .map(|r| r.map(|x| x as u64))
            .collect::<Result<_, _>>()?)
    }
}

fn rusqlite_open(p: &Path) -> Result<rusqlite::Connection> {
    let c = rusqlite::Connection::open_with_flags(p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.busy_timeout(Duration::from_secs(10))?;
    Ok(c)
}

/// A device agent with its own data dir and config file.
pub struct TestAgent {
    /// Its data dir.
    pub data_dir: PathBuf,
    _tmp: tempfile::TempDir,
    /// Its config file.
    pub config: PathBuf,
    /// Its device id.
    pub device_id: String,
    /// Its public key (base64).
    pub public_key: String,
    /// The daemon, when running.
    pub proc: Option<Proc>,
}

impl TestAgent {
    /// Creates an agent's config and key (`init`) for `device_id`, talking to `mqtt_url`
    /// and trusting `cloud_key`.
    pub fn new(device_id: &str, mqtt_url: &str, cloud_key: &str, extra_toml: &str) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let data_dir = tmp.path().to_path_buf();
        let config = data_dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "device_id = \"{device_id}\"\ndata_dir = \"{}\"\ncloud_public_key = \"{cloud_key}\"\n\n[mqtt]\nurl = \"{mqtt_url}\"\n\n\
                 [uplink]\nbatch_interval_ms = 50\nack_timeout_s = 3\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\n{extra_toml}",
                data_dir.display()
            ),
        )?;
        let out = run_ok(
            Command::new(&bins().agent)
                .arg("init")
                .arg("--config")
                .arg(&config),
        )?;
        let v: Value = serde_json::from_str(out.trim())?;
        Ok(Self {
            data_dir,
            _tmp: tmp,
            config,
            device_id: v["device_id"].as_str().unwrap_or_default().to_owned(),
            public_key: v["public_key"].as_str().unwrap_or_default().to_owned(),
            proc: None,
        })
    }

    /// Starts the daemon.
    pub fn start(&mut self) -> Result<()> {
        let child = Command::new(&bins().agent)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("ROLLCALL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        self.proc = Some(Proc(child));
        Ok(())
    }

    /// SIGKILLs the daemon.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Runs an agent CLI command with this agent's config; returns stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        run_ok(
            Command::new(&bins().agent)
                .args(args)
                .arg("--config")
                .arg(&self.config),
        )
    }

    /// `record KIND` through the CLI; returns the seq.
    pub fn record(&self, kind: &str) -> Result<u64> {
        Ok(self.cli(&["record", kind])?.trim().parse()?)
    }

    /// Records `n` events of `kind` through the local socket (the daemon must run);
    /// returns their seqs.
    pub fn record_via_socket(&self, kind: &str, n: usize) -> Result<Vec<u64>> {
        let path = self.data_dir.join("agent.sock");
        let stream = wait_for("the agent's socket", Duration::from_secs(20), || {
            UnixStream::connect(&path).ok()
        })?;
        let mut w = stream.try_clone()?;
        let mut r = BufReader::new(stream);
        let mut seqs = Vec::with_capacity(n);
        let mut line = String::new();
        for i in 0..n {
            writeln!(
                w,
                "{{\"kind\":\"{kind}\",\"qty\":{},\"attrs\":{{\"i\":\"{i}\"}}}}",
                1 + i % 3
            )?;
            line.clear();
            r.read_line(&mut line)?;
            let v: Value =
                serde_json::from_str(&line).with_context(|| format!("socket answered {line:?}"))?;
            match v["seq"].as_u64() {
                Some(s) if v["ok"] == Value::Bool(true) => seqs.push(s),
                _ => bail!("socket refused event {i}: {line}"),
            }
        }
        Ok(seqs)
    }

    /// `status --json`.
    pub fn status(&self) -> Result<Value> {
        Ok(serde_json::from_str(&self.cli(&["status", "--json"])?)?)
    }
}

/// A Mosquitto broker on a free loopback port, if `mosquitto` is installed.
pub struct Mosquitto {
    /// Its port.
    pub port: u16,
    _dir: tempfile::TempDir,
    conf: PathBuf,
    /// The process.
    pub proc: Option<Proc>,
}

impl Mosquitto {
    /// Finds the mosquitto binary. `None` means "skip": allowed only when
    /// `ROLLCALL_REQUIRE_INTEROP` is unset (CI sets it, so there it is a failure).
    pub fn binary() -> Option<PathBuf> {
        let found = [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
        if found.is_none() {
            assert!(
                std::env::var_os("ROLLCALL_REQUIRE_INTEROP").is_none(),
                "mosquitto is required when ROLLCALL_REQUIRE_INTEROP is set"
            );
            eprintln!("SKIPPED: mosquitto is not installed (apt-get install mosquitto)");
        }
        found
    }

    /// Starts Mosquitto on a free port; `None` when it is not installed (see [`Mosquitto::binary`]).
    pub fn start() -> Result<Option<Self>> {
        let Some(_) = Self::binary() else {
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_packet_size 1048576\nmax_queued_messages 100000\nmax_inflight_messages 1000\n"),
        )?;
        let mut m = Mosquitto {
            port,
            _dir: dir,
            conf,
            proc: None,
        };
        m.spawn()?;
        Ok(Some(m))
    }

    /// (Re)starts the broker on the same port.
    pub fn spawn(&mut self) -> Result<()> {
        let child = Command::new(Self::binary().expect("checked"))
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.proc = Some(Proc(child));
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse()?;
        wait_for("mosquitto to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).ok()
        })?;
        Ok(())
    }

    /// SIGKILLs the broker.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

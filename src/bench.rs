//! `rollcall bench ingest`: end-to-end ingest throughput against the real cloud, with the
//! raw broker throughput for the same messages measured in the same run, and the real
//! agent binary's resident memory and size.
//!
//! Method: `devices` simulated devices, each with its own registered Ed25519 key, have
//! `reports` signed usage reports of `events` events each prepared before the clock
//! starts (a real device signs on its own CPU, not the cloud's). They publish them with
//! QoS 1 over `clients` MQTT connections; the clock stops when the cloud's signed ack for
//! the last report has arrived on the devices' downlinks, i.e. every report is committed.
//! The raw figure publishes the same payloads to a topic nobody processes and stops when a
//! plain subscriber has received them all.

use anyhow::{bail, Context, Result};
use rollcall_cloud::config::CloudConfig;
use rollcall_shared::dsse::{Envelope, KeyPair, USAGE_PAYLOAD_TYPE};
use rollcall_shared::payload::{AckStatus, DownBody, Downlink, UsageEvent, UsageReport};
use rollcall_shared::topics::Topics;
use rollcall_shared::{Clock, DeviceId, EventKind, MemberId, Seq, SystemClock};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Parameters of the ingest benchmark.
#[derive(Debug, Clone)]
pub struct IngestBench {
    /// Simulated devices.
    pub devices: usize,
    /// Reports per device.
    pub reports: usize,
    /// Events per report.
    pub events: usize,
    /// MQTT connections the devices share.
    pub clients: usize,
    /// External broker URL; `None` uses the embedded broker.
    pub mqtt_url: Option<String>,
    /// Measure the agent binary too.
    pub agent: bool,
}

impl Default for IngestBench {
    fn default() -> Self {
        Self {
            devices: 200,
            reports: 100,
            events: 15,
            clients: 8,
            mqtt_url: None,
            agent: true,
        }
    }
}

/// The figures `bench ingest --json` prints.
#[derive(Debug, Serialize)]
pub struct IngestFigures {
    /// Signed reports committed and acked per second.
    pub reports_per_s: f64,
    /// Events committed per second.
    pub events_per_s: f64,
    /// The same messages through the same broker with no processing, per second.
    pub broker_raw_msgs_per_s: f64,
    /// `reports_per_s / broker_raw_msgs_per_s`.
    pub ratio: f64,
    /// Share of the machine's CPU time the hypervisor gave to other guests during the
    /// ingest run, in percent (`/proc/stat`; null where unknown): compare runs with
    /// similar steal.
    pub host_steal_pct: Option<f64>,
    /// Peak resident memory of the running agent daemon, KiB (null if not measured).
    pub agent_rss_kb: Option<u64>,
    /// Size of the device build of the agent binary (stripped), bytes (null if not measured).
    pub agent_binary_bytes: Option<u64>,
    /// Devices, reports and events of the run.
    pub devices: usize,
    /// Reports in total.
    pub total_reports: usize,
    /// Events per report.
    pub events_per_report: usize,
    /// Mean message size in bytes.
    pub message_bytes: usize,
    /// `embedded` or the external broker URL.
    pub broker: String,
}

fn opts(id: &str, url: &str) -> Result<MqttOptions> {
    let u: rollcall_cloud::mqtt::BrokerUrl = url.parse()?;
    let mut o = rollcall_cloud::mqtt::client_options(id, &u, "", "", None)?;
    o.set_inflight(500);
    Ok(o)
}

/// Registers `bench-member`, the member every benchmark device belongs to.
fn register_bench_member(conn: &rusqlite::Connection) -> Result<()> {
    let m = rollcall_cloud::registry::NewMember::parse(
        "bench-member",
        "Bench Member",
        None,
        None,
        None,
        None,
        None,
        "US",
    )?;
    rollcall_cloud::registry::upsert_member(conn, &m, SystemClock.now())?;
    Ok(())
}

/// Runs the ingest benchmark.
pub async fn ingest(b: &IngestBench) -> Result<IngestFigures> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = CloudConfig {
        data_dir: tmp.path().to_path_buf(),
        ..Default::default()
    };
    cfg.broker.listen = "127.0.0.1:0".parse()?;
    cfg.http.listen = "127.0.0.1:0".parse()?;
    if let Some(u) = &b.mqtt_url {
        cfg.broker.url = u.clone();
    }
    // Register the fleet.
    let clock = SystemClock;
    let keys: Vec<(DeviceId, KeyPair)> = (0..b.devices)
        .map(|i| {
            (
                DeviceId::parse(&format!("bench-{i:05}")).unwrap(),
                KeyPair::generate(),
            )
        })
        .collect();
    {
        let mut conn = rollcall_cloud::store::open_writer(&cfg.data_dir)?;
        let tx = conn.transaction()?;
        register_bench_member(&tx)?;
        for (d, k) in &keys {
            rollcall_cloud::registry::add_device(
                &tx,
                d,
                &MemberId::parse("bench-member")?,
                &k.public(),
                clock.now(),
            )?;
        }
        tx.commit()?;
    }
    let shutdown = CancellationToken::new();
    let cloud =
        rollcall_cloud::server::start(cfg.clone(), Arc::new(SystemClock), shutdown.clone()).await?;
    let url = cloud.mqtt_url.clone();
    let topics = Topics::default();

    // Prepare signed reports.
    let kind = EventKind::parse("brew")?;
    let now = clock.now();
    let mut messages: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); b.clients];
    let mut total_bytes = 0usize;
    for (i, (d, k)) in keys.iter().enumerate() {
        let mut seq = 1u64;
        for r in 0..b.reports {
            let events = (0..b.events)
                .map(|j| {
                    let e = UsageEvent {
                        seq: Seq::new(seq).unwrap(),
                        kind: kind.clone(),
                        qty: 1,
                        occurred_at: now,
                        attrs: BTreeMap::from([(
                            "drink".to_owned(),
                            ["latte", "espresso"][j % 2].to_owned(),
                        )]),
                        clock_suspect: false,
                    };
                    seq += 1;
                    e
                })
                .collect();
            let report = UsageReport {
                v: 1,
                device_id: d.clone(),
                report_seq: r as u64 + 1,
                sent_at: now,
                boot_id: "bench".into(),
                events,
            };
            let env = k.sign(USAGE_PAYLOAD_TYPE, &report.encode()).to_json();
            total_bytes += env.len();
            messages[i % b.clients].push((topics.usage(d), env));
        }
    }
    let total = b.devices * b.reports;

    let raw = raw_broker(&url, &messages, total)
        .await
        .context("raw broker run")?;
    let cpu = crate::hostcpu::CpuTimes::now();
    let (elapsed, acked) = end_to_end(&url, &topics, &keys, &messages, total, b.clients)
        .await
        .context("ingest run")?;
    let host_steal_pct = crate::hostcpu::steal_pct_until_now(cpu);
    if acked != total as u64 {
        bail!("only {acked} of {total} reports were acked");
    }
    let stored: i64 = rollcall_cloud::store::open_reader(&cfg.data_dir)?.query_row(
        "SELECT COUNT(*) FROM events",
        [],
        |r| r.get(0),
    )?;
    if stored as usize != total * b.events {
        bail!(
            "{stored} events stored, {} sent: the run lost or duplicated events",
            total * b.events
        );
    }
    let reports_per_s = total as f64 / elapsed.as_secs_f64();
    let (agent_rss_kb, agent_binary_bytes) = if b.agent {
        match agent_figures(&url, &cfg, &cloud.public_key.to_base64()).await {
            Ok((rss, size)) => (Some(rss), Some(size)),
            Err(e) => {
                eprintln!("agent figures not measured: {e:#}");
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    shutdown.cancel();
    cloud.wait().await;
    Ok(IngestFigures {
        reports_per_s,
        events_per_s: reports_per_s * b.events as f64,
        broker_raw_msgs_per_s: raw,
        ratio: reports_per_s / raw,
        host_steal_pct,
        agent_rss_kb,
        agent_binary_bytes,
        devices: b.devices,
        total_reports: total,
        events_per_report: b.events,
        message_bytes: total_bytes / total.max(1),
        broker: b.mqtt_url.clone().unwrap_or_else(|| "embedded".into()),
    })
}

/// Publishes every message to `bench/raw/...` and waits until a subscriber has them all.
async fn raw_broker(url: &str, messages: &[Vec<(String, Vec<u8>)>], total: usize) -> Result<f64> {
    let (sub, mut sub_loop) = AsyncClient::new(opts("bench-raw-sub", url)?, 100);
    sub.subscribe("bench/raw/#", QoS::AtLeastOnce).await?;
    let got = Arc::new(AtomicU64::new(0));
    let g = got.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let sub_task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        while let Ok(ev) = sub_loop.poll().await {
            match ev {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Event::Incoming(Packet::Publish(_))
                    if g.fetch_add(1, Ordering::Relaxed) + 1 == total as u64 =>
                {
                    break
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .context("raw subscriber not ready")??;
    let start = Instant::now();
    let mut pubs = Vec::new();
    for (c, msgs) in messages.iter().enumerate() {
        let (client, mut ev) = AsyncClient::new(opts(&format!("bench-raw-pub-{c}"), url)?, 1000);
        let msgs = msgs.clone();
        pubs.push(tokio::spawn(async move {
            let poller = tokio::spawn(async move { while ev.poll().await.is_ok() {} });
            for (t, p) in msgs {
                let t = t.replacen("rollcall/", "bench/raw/", 1);
                if client.publish(t, QoS::AtLeastOnce, false, p).await.is_err() {
                    break;
                }
            }
            (client, poller)
        }));
    }
    tokio::time::timeout(Duration::from_secs(300), sub_task)
        .await
        .context("raw subscriber timed out")??;
    let elapsed = start.elapsed();
    for p in pubs {
        let (client, poller) = p.await?;
        let _ = client.disconnect().await;
        poller.abort();
    }
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// Publishes the signed reports and waits for the cloud's acks.
async fn end_to_end(
    url: &str,
    topics: &Topics,
    keys: &[(DeviceId, KeyPair)],
    messages: &[Vec<(String, Vec<u8>)>],
    total: usize,
    clients: usize,
) -> Result<(Duration, u64)> {
    let acked = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let done_tx = Arc::new(done_tx);
    let mut conns = Vec::new();
    for c in 0..clients {
        let (client, mut ev) = AsyncClient::new(opts(&format!("bench-dev-{c}"), url)?, 1000);
        for (i, (d, _)) in keys.iter().enumerate() {
            if i % clients == c {
                client.subscribe(topics.down(d), QoS::AtLeastOnce).await?;
            }
        }
        let expected_subs = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| i % clients == c)
            .count();
        let acked = acked.clone();
        let done_tx = done_tx.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let poller = tokio::spawn(async move {
            let mut subs = 0;
            let mut ready = Some(ready_tx);
            while let Ok(e) = ev.poll().await {
                match e {
                    Event::Incoming(Packet::SubAck(_)) => {
                        subs += 1;
                        if subs == expected_subs {
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        let Ok(env) = Envelope::from_json(&p.payload) else {
                            continue;
                        };
                        let Ok(body) = env.payload_unverified() else {
                            continue;
                        };
                        if let Ok(Downlink {
                            body: DownBody::Ack(a),
                            ..
                        }) = Downlink::decode(&body)
                        {
                            if matches!(a.status, AckStatus::Stored | AckStatus::Duplicate)
                                && acked.fetch_add(1, Ordering::Relaxed) + 1 == total as u64
                            {
                                let _ = done_tx.send(true);
                            }
                        }
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(20), ready_rx)
            .await
            .context("device subscriptions")??;
        conns.push((client, poller));
    }
    let start = Instant::now();
    let mut senders = Vec::new();
    for (c, msgs) in messages.iter().enumerate() {
        let client = conns[c].0.clone();
        let msgs = msgs.clone();
        senders.push(tokio::spawn(async move {
            for (t, p) in msgs {
                if client.publish(t, QoS::AtLeastOnce, false, p).await.is_err() {
                    break;
                }
            }
        }));
    }
    let mut rx = done_rx;
    let finished = tokio::time::timeout(Duration::from_secs(600), rx.wait_for(|d| *d)).await;
    let elapsed = start.elapsed();
    if finished.is_err() {
        eprintln!("ingest run timed out");
    }
    for s in senders {
        let _ = s.await;
    }
    for (client, poller) in conns {
        let _ = client.disconnect().await;
        poller.abort();
    }
    Ok((elapsed, acked.load(Ordering::Relaxed)))
}

/// Builds (if it is not up to date) and locates the agent as it ships to devices: the
/// `device` profile (release plus `panic = "abort"` and opt-level "s" for every crate),
/// built on its own so that Cargo does not unify its features with the cloud's.
pub fn device_agent_binary() -> Result<PathBuf> {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("Building the device agent (cargo build --profile device -p rollcall-agent)");
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--profile",
            "device",
            "-p",
            "rollcall-agent",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .status()
        .context("running cargo to build the device agent")?;
    if !status.success() {
        bail!("building the device agent failed");
    }
    let p = target.join("device/rollcall-agent");
    if !p.exists() {
        bail!("device agent binary not found at {}", p.display());
    }
    Ok(p)
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A running agent daemon (device build) registered with a cloud, for measurements.
struct BenchAgent {
    child: crate::testkit::Proc,
    pid: u32,
    socket: std::os::unix::net::UnixStream,
    size: u64,
    _dir: tempfile::TempDir,
}

impl BenchAgent {
    /// Initialises, registers (under `bench-member` in the store of `cfg`) and starts the
    /// device build of the agent daemon against `url`.
    async fn start(url: &str, cfg: &CloudConfig, cloud_key: &str) -> Result<BenchAgent> {
        let bin = device_agent_binary()?;
        let size = std::fs::metadata(&bin)?.len();
        let tmp = tempfile::tempdir()?;
        let conf = tmp.path().join("agent.toml");
        std::fs::write(
            &conf,
            format!(
                "device_id = \"bench-agent\"\ndata_dir = \"{}\"\ncloud_public_key = \"{cloud_key}\"\n[mqtt]\nurl = \"{url}\"\n[uplink]\nbatch_interval_ms = 100\n",
                tmp.path().display()
            ),
        )?;
        let out = std::process::Command::new(&bin)
            .arg("init")
            .arg("--config")
            .arg(&conf)
            .output()?;
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("agent init output")?;
        {
            let conn = rollcall_cloud::store::open_writer(&cfg.data_dir)?;
            rollcall_cloud::registry::add_device(
                &conn,
                &DeviceId::parse("bench-agent")?,
                &MemberId::parse("bench-member")?,
                &rollcall_shared::dsse::PublicKey::from_base64(
                    v["public_key"].as_str().unwrap_or_default(),
                )?,
                SystemClock.now(),
            )?;
        }
        let child = crate::testkit::Proc(
            std::process::Command::new(&bin)
                .arg("run")
                .arg("--config")
                .arg(&conf)
                .env("ROLLCALL_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .spawn()?,
        );
        let pid = child.0.id();
        let sock = tmp.path().join("agent.sock");
        let socket = crate::testkit::wait_for("agent socket", Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&sock).ok()
        })?;
        Ok(BenchAgent {
            child,
            pid,
            socket,
            size,
            _dir: tmp,
        })
    }

    /// Records one event over the socket and waits for its answer.
    fn record(
        &mut self,
        r: &mut std::io::BufReader<std::os::unix::net::UnixStream>,
        i: u64,
    ) -> Result<()> {
        use std::io::{BufRead, Write};
        writeln!(
            self.socket,
            "{{\"kind\":\"brew\",\"attrs\":{{\"n\":\"{i}\"}}}}"
        )?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        if !line.contains("\"seq\"") {
            bail!("the agent refused an event: {line}");
        }
        Ok(())
    }
}

/// CPU time (user + system) of a process so far, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz.max(1.0))
}

/// Runs the real agent daemon against the cloud while recording events for a few
/// seconds; returns its peak RSS (KiB) and binary size.
async fn agent_figures(url: &str, cfg: &CloudConfig, cloud_key: &str) -> Result<(u64, u64)> {
    let mut a = BenchAgent::start(url, cfg, cloud_key).await?;
    let mut r = std::io::BufReader::new(a.socket.try_clone()?);
    let mut peak = 0;
    let start = Instant::now();
    let mut i = 0u64;
    // About 100 events/s for 5 s, sampling RSS as we go.
    while start.elapsed() < Duration::from_secs(5) {
        a.record(&mut r, i)?;
        i += 1;
        peak = peak.max(rss_kb(a.pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = a.child.terminate(Duration::from_secs(10));
    Ok((peak, a.size))
}

/// The agent at one recording rate.
#[derive(Debug, Clone, Serialize)]
pub struct AgentRate {
    /// Events recorded per second (over the socket, each committed durably).
    pub events_per_s: u32,
    /// Peak resident memory, KiB.
    pub rss_kb: u64,
    /// CPU use of the daemon (user + system), percent of one core.
    pub cpu_percent: f64,
}

/// `rollcall bench agent` figures.
#[derive(Debug, Clone, Serialize)]
pub struct AgentFigures {
    /// Memory and CPU at 1, 10 and 100 events/s.
    pub rates: Vec<AgentRate>,
    /// Size of the device build of the agent binary (stripped), bytes.
    pub binary_bytes: u64,
    /// Events recorded per second over the local socket as fast as one client can
    /// (each one committed to the SQLite outbox before the answer), while the uplink runs.
    pub record_socket_per_s: f64,
    /// Seconds each rate ran.
    pub seconds_per_rate: u64,
}

/// Runs the real agent daemon against an in-process cloud at 1, 10 and 100 events/s, then
/// as fast as possible.
pub async fn agent(seconds_per_rate: u64, burst: u64) -> Result<AgentFigures> {
    let tmp = tempfile::tempdir()?;
    let mut cfg = CloudConfig {
        data_dir: tmp.path().to_path_buf(),
        ..Default::default()
    };
    cfg.broker.listen = "127.0.0.1:0".parse()?;
    cfg.http.listen = "127.0.0.1:0".parse()?;
    cfg.scoring.enabled = false;
    {
        let conn = rollcall_cloud::store::open_writer(&cfg.data_dir)?;
        register_bench_member(&conn)?;
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let cloud = rollcall_cloud::server::start(
        cfg.clone(),
        std::sync::Arc::new(SystemClock),
        shutdown.clone(),
    )
    .await?;
    let url = cloud.mqtt_url.clone();
    let mut a = BenchAgent::start(&url, &cfg, &cloud.public_key.to_base64()).await?;
    let mut r = std::io::BufReader::new(a.socket.try_clone()?);
    let mut i = 0u64;
    let mut rates = Vec::new();
    for rate in [1u32, 10, 100] {
        let period = Duration::from_secs_f64(1.0 / f64::from(rate));
        let cpu0 = cpu_seconds(a.pid).unwrap_or(0.0);
        let start = Instant::now();
        let mut peak = 0;
        let mut next = Instant::now();
        while start.elapsed() < Duration::from_secs(seconds_per_rate) {
            a.record(&mut r, i)?;
            i += 1;
            peak = peak.max(rss_kb(a.pid).unwrap_or(0));
            next += period;
            tokio::time::sleep_until(next.into()).await;
        }
        let cpu = cpu_seconds(a.pid).unwrap_or(0.0) - cpu0;
        rates.push(AgentRate {
            events_per_s: rate,
            rss_kb: peak,
            cpu_percent: 100.0 * cpu / start.elapsed().as_secs_f64(),
        });
    }
    let start = Instant::now();
    for _ in 0..burst {
        a.record(&mut r, i)?;
        i += 1;
    }
    let record_socket_per_s = burst as f64 / start.elapsed().as_secs_f64();
    let _ = a.child.terminate(Duration::from_secs(10));
    shutdown.cancel();
    cloud.wait().await;
    Ok(AgentFigures {
        rates,
        binary_bytes: a.size,
        record_socket_per_s,
        seconds_per_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small run through the embedded broker: every report is acked, every event is
    /// stored once (the benchmark checks both), and the figures add up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_ingest_benchmark_stores_and_acks_every_report() {
        let f = ingest(&IngestBench {
            devices: 6,
            reports: 30,
            events: 4,
            clients: 2,
            mqtt_url: None,
            agent: false,
        })
        .await
        .unwrap();
        assert_eq!(f.total_reports, 180);
        assert!(f.reports_per_s > 0.0 && f.broker_raw_msgs_per_s > 0.0);
        assert!((f.events_per_s - 4.0 * f.reports_per_s).abs() < 1e-6);
        if crate::hostcpu::CpuTimes::now().is_some() {
            // A share of the run's CPU time, when the run lasted a clock tick or more.
            assert!(f.host_steal_pct.is_none_or(|p| (0.0..=100.0).contains(&p)));
        }
        assert!((f.ratio - f.reports_per_s / f.broker_raw_msgs_per_s).abs() < 1e-9);
        assert_eq!((f.agent_rss_kb, f.agent_binary_bytes), (None, None));
    }
}

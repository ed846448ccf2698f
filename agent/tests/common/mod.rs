//! Helpers for the agent's integration tests: a throw-away Mosquitto broker, a tiny
//! in-test "cloud" that verifies usage reports and acks them, and polling with deadlines.

#![allow(dead_code)]

use rollcall_shared::dsse::{
    Envelope, KeyPair, PublicKey, DOWNLINK_PAYLOAD_TYPE, STATUS_PAYLOAD_TYPE, USAGE_PAYLOAD_TYPE,
};
use rollcall_shared::limits::MAX_ENVELOPE_BYTES;
use rollcall_shared::payload::{Ack, AckStatus, DeviceStatus, DownBody, Downlink, UsageReport};
use rollcall_shared::topics::{Channel, Topics};
use rollcall_shared::DeviceId;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::{BTreeSet, HashSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms until it holds or `timeout` passes; panics with `what` then.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Blocking variant of [`wait_until`] for tests without a runtime.
pub fn wait_until_blocking(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where mosquitto is, if installed (PATH, then the sbin directories apt uses).
pub fn mosquitto_path() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

/// `Some(path)` when mosquitto can be used; `None` means skip (after saying so). Fails
/// instead when `ROLLCALL_REQUIRE_INTEROP` is set.
pub fn mosquitto_or_skip(test: &str) -> Option<PathBuf> {
    let found = mosquitto_path();
    if found.is_none() {
        assert!(
            std::env::var_os("ROLLCALL_REQUIRE_INTEROP").is_none(),
            "mosquitto is required when ROLLCALL_REQUIRE_INTEROP is set"
        );
        eprintln!("SKIPPED {test}: mosquitto is not installed");
    }
    found
}

/// A free TCP port on loopback (free when this returns; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto broker on a loopback port, killed on drop.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts mosquitto on `port` and waits until it accepts connections.
    pub fn start(bin: &std::path::Path, port: u16) -> Self {
        Self::start_with(bin, port, "", &[])
    }

    /// Starts mosquitto on `port` plus `extra_conf` (more listeners on `extra_ports`),
    /// and waits until every port accepts connections.
    pub fn start_with(
        bin: &std::path::Path,
        port: u16,
        extra_conf: &str,
        extra_ports: &[u16],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "allow_anonymous true\nmax_packet_size 1048576\npersistence false\n\
                 listener {port} 127.0.0.1\n{extra_conf}\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("mosquitto starts");
        let mut m = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let ports: Vec<u16> = std::iter::once(port)
            .chain(extra_ports.iter().copied())
            .collect();
        loop {
            if ports
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
            {
                break;
            }
            if let Ok(Some(status)) = m.child.try_wait() {
                let log = std::fs::read_to_string(m._dir.path().join("mosquitto.log"))
                    .unwrap_or_default();
                panic!("mosquitto exited with {status}: {log}");
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start listening on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    /// Stops the broker now.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How the test cloud answers usage reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Record, never ack.
    Silent,
    /// Ack with the cloud key.
    Correct,
    /// Ack signed by a key the agent does not trust.
    WrongKey,
    /// Ack signed correctly but addressed to another device.
    WrongDevice,
}

/// One usage report as the cloud received it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub report_seq: u64,
    pub seqs: Vec<u64>,
    pub at: Instant,
    pub acked: bool,
}

/// What the test cloud saw.
#[derive(Debug, Default)]
pub struct CloudLog {
    pub deliveries: Vec<Delivery>,
    pub seqs: BTreeSet<u64>,
    pub statuses: Vec<DeviceStatus>,
    pub bad_signatures: u64,
    pub acks_sent: u64,
}

impl CloudLog {
    pub fn deliveries_of(&self, report_seq: u64) -> Vec<&Delivery> {
        self.deliveries
            .iter()
            .filter(|d| d.report_seq == report_seq)
            .collect()
    }
}

struct CloudInner {
    log: Mutex<CloudLog>,
    mode: Mutex<AckMode>,
    ignore_first: Mutex<HashSet<u64>>,
    device_key: PublicKey,
    cloud_key: KeyPair,
    wrong_key: KeyPair,
    topics: Topics,
}

/// A minimal cloud: subscribes to every device's usage and status, verifies reports with
/// the device's public key, records them, and acks per [`AckMode`].
#[derive(Clone)]
pub struct TestCloud {
    inner: Arc<CloudInner>,
    client: AsyncClient,
}

impl TestCloud {
    /// Connects to the broker on `port` and waits until subscribed.
    pub async fn start(
        port: u16,
        device_key: PublicKey,
        cloud_key: KeyPair,
        mode: AckMode,
    ) -> Self {
        let mut opts = MqttOptions::new(
            format!("test-cloud-{}", fastrand::u64(..)),
            "127.0.0.1",
            port,
        );
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(MAX_ENVELOPE_BYTES + 1024, MAX_ENVELOPE_BYTES);
        let (client, mut eventloop) = AsyncClient::new(opts, 256);
        let topics = Topics::default();
        let inner = Arc::new(CloudInner {
            log: Mutex::new(CloudLog::default()),
            mode: Mutex::new(mode),
            ignore_first: Mutex::new(HashSet::new()),
            device_key,
            cloud_key,
            wrong_key: KeyPair::generate(),
            topics: topics.clone(),
        });
        let cloud = Self {
            inner,
            client: client.clone(),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(p);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let handler = cloud.clone();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                handler.on_publish(&p.topic, &p.payload).await;
            }
        });
        client
            .subscribe(topics.filter(Channel::Usage), QoS::AtLeastOnce)
            .await
            .unwrap();
        client
            .subscribe(topics.filter(Channel::Status), QoS::AtLeastOnce)
            .await
            .unwrap();
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(10), subscribed_rx.recv())
                .await
                .expect("cloud subscribed");
        }
        cloud
    }

    pub fn set_mode(&self, mode: AckMode) {
        *self.inner.mode.lock().unwrap() = mode;
    }

    /// Ignore the first delivery of `report_seq` (as if the ack were lost).
    pub fn ignore_first_delivery_of(&self, report_seq: u64) {
        self.inner.ignore_first.lock().unwrap().insert(report_seq);
    }

    pub fn log(&self) -> std::sync::MutexGuard<'_, CloudLog> {
        self.inner.log.lock().unwrap()
    }

    /// Acks every report received so far (used after a `Silent` phase).
    pub async fn ack_everything_received(&self, device: &DeviceId) {
        let reports: BTreeSet<u64> = self.log().deliveries.iter().map(|d| d.report_seq).collect();
        for r in reports {
            self.send_ack(device, r, AckMode::Correct).await;
        }
    }

    async fn on_publish(&self, topic: &str, payload: &[u8]) {
        let Some((device, channel)) = self.inner.topics.parse(topic) else {
            return;
        };
        let env = match Envelope::from_json(payload) {
            Ok(e) => e,
            Err(_) => {
                self.log().bad_signatures += 1;
                return;
            }
        };
        match channel {
            Channel::Status => match env.verify(STATUS_PAYLOAD_TYPE, &self.inner.device_key) {
                Ok(body) => {
                    let status = DeviceStatus::decode(&body).expect("agent statuses are valid");
                    self.log().statuses.push(status);
                }
                Err(_) => self.log().bad_signatures += 1,
            },
            Channel::Usage => {
                let Ok(body) = env.verify(USAGE_PAYLOAD_TYPE, &self.inner.device_key) else {
                    self.log().bad_signatures += 1;
                    return;
                };
                let report = UsageReport::decode(&body).expect("agent reports are valid");
                assert_eq!(
                    report.device_id, device,
                    "the report names the device of its topic"
                );
                let ignore = self
                    .inner
                    .ignore_first
                    .lock()
                    .unwrap()
                    .remove(&report.report_seq);
                let mode = *self.inner.mode.lock().unwrap();
                let ack = !ignore && mode != AckMode::Silent;
                {
                    let mut log = self.log();
                    log.seqs.extend(report.events.iter().map(|e| e.seq.get()));
                    log.deliveries.push(Delivery {
                        report_seq: report.report_seq,
                        seqs: report.events.iter().map(|e| e.seq.get()).collect(),
                        at: Instant::now(),
                        acked: ack,
                    });
                }
                if ack {
                    self.send_ack(&device, report.report_seq, mode).await;
                }
            }
            _ => {}
        }
    }

    async fn send_ack(&self, device: &DeviceId, report_seq: u64, mode: AckMode) {
        let addressed = if mode == AckMode::WrongDevice {
            DeviceId::parse("someone-else").unwrap()
        } else {
            device.clone()
        };
        let down = Downlink {
            v: 1,
            device_id: addressed,
            sent_at: chrono::Utc::now(),
            body: DownBody::Ack(Ack {
                report_seq,
                status: AckStatus::Stored,
                stored: 0,
                reason: None,
            }),
        };
        let signer = if mode == AckMode::WrongKey {
            &self.inner.wrong_key
        } else {
            &self.inner.cloud_key
        };
        let env = signer.sign(DOWNLINK_PAYLOAD_TYPE, &down.encode()).to_json();
        self.client
            .publish(self.inner.topics.down(device), QoS::AtLeastOnce, false, env)
            .await
            .unwrap();
        self.log().acks_sent += 1;
    }
}

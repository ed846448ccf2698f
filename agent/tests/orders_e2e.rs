//! Replenishment orders end to end, with the real `rollcall-agent` and `rollcall-cloud`
//! binaries (the cloud's `serve` runs its embedded broker on a free port): usage drains a
//! slot, the device orders once, the cloud decides, the receipt reaches the device, a
//! refill resets the slot; a cancellation whose receipt was lost reaches the device with
//! its next status; every rejection reason; the ledger's verification, HTTP
//! proofs, export and an independent Python verifier; tampering with the ledger rows.

mod common;

use base64::Engine;
use common::{free_port, wait_until_blocking};
use rollcall_shared::dsse::{
    Envelope, KeyPair, DOWNLINK_PAYLOAD_TYPE, STATUS_PAYLOAD_TYPE, TRANSACTION_PAYLOAD_TYPE,
};
use rollcall_shared::payload::{
    DeviceStatus, DownBody, Downlink, Health, Presence, ReorderReason, Transaction, TxStatus,
};
use rollcall_shared::topics::Topics;
use rollcall_shared::{Currency, DeviceId, Sku, SlotId, TxId};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const AGENT: &str = env!("CARGO_BIN_EXE_rollcall-agent");
const WAIT: Duration = Duration::from_secs(30);

/// Builds (once) and locates `rollcall-cloud` with the same cargo and profile.
fn cloud_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--locked",
            "-p",
            "rollcall-cloud",
            "--bin",
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
        assert!(out.status.success(), "building rollcall-cloud failed");
        out.stdout
            .split(|b| *b == b'\n')
            .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
            .filter(|v| v["target"]["name"] == "rollcall-cloud")
            .find_map(|v| v["executable"].as_str().map(PathBuf::from))
            .expect("the cloud binary was built")
    })
}

/// Kills the child on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("command runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(cmd: &mut Command) -> String {
    let (success, stdout, stderr) = run(cmd);
    assert!(success, "{cmd:?} failed: {stderr}{stdout}");
    stdout
}

const CLOUD_TOML: &str = r#"
[scoring]
enabled = false

[orders]
cancel_window_h = 24
price_tolerance_bp = 200

[[orders.catalogue]]
sku = "POD-50"
name = "Coffee pods"
unit_price = 25
currency = "EUR"
"#;

struct Cloud {
    dir: tempfile::TempDir,
    config: PathBuf,
    proc: Option<Proc>,
    mqtt_url: String,
    http: String,
    public_key: String,
    /// An admin API token: the ledger routes need one.
    token: String,
}

impl Cloud {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("cloud.toml");
        std::fs::write(&config, CLOUD_TOML).unwrap();
        let mut c = Cloud {
            dir,
            config,
            proc: None,
            mqtt_url: String::new(),
            http: String::new(),
            public_key: String::new(),
            token: String::new(),
        };
        c.spawn(free_port());
        // The token is alone on the last line of the output.
        c.token = c
            .cli(&["tokens", "create", "--role", "admin", "--name", "test"])
            .lines()
            .last()
            .expect("a token")
            .trim()
            .to_owned();
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self, mqtt_port: u16) {
        let mut child = Command::new(cloud_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data())
            .args(["serve", "--http-listen", "127.0.0.1:0", "--mqtt-listen"])
            .arg(format!("127.0.0.1:{mqtt_port}"))
            .env("ROLLCALL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line).expect("ready line");
        self.mqtt_url = v["mqtt_url"].as_str().unwrap().to_owned();
        self.http = v["http_url"]
            .as_str()
            .unwrap()
            .trim_start_matches("http://")
            .to_owned();
        self.public_key = v["public_key"].as_str().unwrap().to_owned();
        self.proc = Some(Proc(child));
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
            let _ = p.0.wait();
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(cloud_bin());
        c.arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data())
            .env("ROLLCALL_LOG", "warn");
        c
    }

    fn cli(&self, args: &[&str]) -> String {
        ok(self.cmd().args(args))
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.cli(args)).unwrap()
    }

    fn orders(&self) -> Vec<Value> {
        serde_json::from_value(self.json(&["orders", "list", "--json"])).unwrap()
    }

    fn order(&self, tx_id: &str) -> Option<Value> {
        self.orders().into_iter().find(|o| o["tx_id"] == tx_id)
    }

    fn member(&self, id: &str, consent: &[&str]) {
        self.cli(&["members", "add", "--id", id, "--name", id]);
        if !consent.is_empty() {
            let mut args = vec!["members", "consent", "--id", id];
            args.extend_from_slice(consent);
            self.cli(&args);
        }
    }

    fn device(&self, id: &str, member: &str, key: &str) {
        self.cli(&[
            "devices",
            "add",
            "--id",
            id,
            "--member",
            member,
            "--public-key",
            key,
        ]);
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(path, Some(&self.token))
    }

    fn get_as(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut s = std::net::TcpStream::connect(&self.http).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let code: u16 = text[9..12].parse().unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1;
        (code, serde_json::from_str(body).unwrap())
    }
}

struct Agent {
    _dir: tempfile::TempDir,
    config: PathBuf,
    daemon: Option<Proc>,
}

impl Agent {
    fn new(device: &str, mqtt_url: &str, cloud_key: &str, auto_reorder: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                r#"
device_id = "{device}"
data_dir = "{data}"
cloud_public_key = "{cloud_key}"

[mqtt]
url = "{mqtt_url}"

[uplink]
batch_interval_ms = 50
ack_timeout_s = 2
status_interval_s = 1
reconnect_min_ms = 50
reconnect_max_ms = 500

[orders]
auto_reorder = {auto_reorder}

[[consumables]]
slot = "pods"
sku = "POD-50"
capacity = 5
usage = {{ brew = 1 }}
threshold = 2
reorder_qty = 40
unit_price = 25
currency = "EUR"
"#,
                data = dir.path().join("data").display()
            ),
        )
        .unwrap();
        Agent {
            _dir: dir,
            config,
            daemon: None,
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(AGENT);
        c.arg("--config")
            .arg(&self.config)
            .env("ROLLCALL_LOG", "warn");
        c
    }

    fn cli(&self, args: &[&str]) -> String {
        ok(self.cmd().args(args))
    }

    fn init(&self) -> String {
        let v: Value = serde_json::from_str(&self.cli(&["init"])).unwrap();
        v["public_key"].as_str().unwrap().to_owned()
    }

    fn brew(&self, n: usize) {
        for _ in 0..n {
            self.cli(&["record", "brew"]);
        }
    }

    fn orders(&self) -> Value {
        serde_json::from_str(&self.cli(&["orders", "--json"])).unwrap()
    }

    fn start(&mut self) {
        let child = self
            .cmd()
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.daemon = Some(Proc(child));
    }

    fn kill9(&mut self) {
        self.daemon = None;
    }

    /// Stops the daemon with SIGTERM (it publishes its offline status) and waits for it.
    fn stop(&mut self) {
        if let Some(mut p) = self.daemon.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
            let _ = p.0.wait();
        }
    }

    /// The device key `init` created.
    fn key(&self) -> KeyPair {
        let text = std::fs::read_to_string(self._dir.path().join("data/device.key")).unwrap();
        let seed = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .unwrap();
        KeyPair::from_seed(seed.try_into().unwrap())
    }

    fn set_mqtt(&self, url: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let mut out = String::new();
        for line in text.lines() {
            if line.starts_with("url = ") {
                out.push_str(&format!("url = \"{url}\"\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        std::fs::write(&self.config, out).unwrap();
    }
}

fn wait_json(what: &str, mut f: impl FnMut() -> Option<Value>) -> Value {
    let mut got = None;
    wait_until_blocking(what, WAIT, || {
        got = f();
        got.is_some()
    });
    got.unwrap()
}

#[test]
fn a_draining_slot_orders_once_the_cloud_accepts_and_a_refill_resets_it() {
    let mut cloud = Cloud::start();
    let mut agent = Agent::new("coffee-1", &cloud.mqtt_url, &cloud.public_key, false);
    let key = agent.init();
    cloud.member("m1", &["--auto-reorder", "on", "--limit-order", "5000"]);
    cloud.device("coffee-1", "m1", &key);
    agent.start();
    // The member's opt-in reaches the device on the downlink.
    wait_json("the pushed policy", || {
        let v = agent.orders();
        (v["policy"]["source"] == "cloud" && v["policy"]["auto_reorder"] == true).then_some(v)
    });
    agent.brew(3);
    assert!(agent.orders()["orders"].as_array().unwrap().is_empty());
    agent.brew(1);
    let v = wait_json("the order accepted on the device", || {
        let v = agent.orders();
        (v["orders"][0]["state"] == "accepted").then_some(v)
    });
    let tx_id = v["orders"][0]["tx_id"].as_str().unwrap().to_owned();
    agent.brew(3);
    std::thread::sleep(Duration::from_millis(500));
    let v = agent.orders();
    assert_eq!(v["orders"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["slots"][0]["level"], -2);
    let orders = cloud.orders();
    assert_eq!(orders.len(), 1, "{orders:?}");
    let o = &orders[0];
    assert_eq!(
        (
            o["tx_id"].as_str(),
            o["member_id"].as_str(),
            o["device_id"].as_str(),
            o["sku"].as_str(),
            o["qty"].as_i64(),
            o["amount"].as_i64(),
            o["currency"].as_str(),
            o["status"].as_str(),
        ),
        (
            Some(tx_id.as_str()),
            Some("m1"),
            Some("coffee-1"),
            Some("POD-50"),
            Some(40),
            Some(1000),
            Some("EUR"),
            Some("accepted")
        )
    );
    assert!(o["cancel_until"].is_string() && o["fulfilment_requested_at"].is_string());
    let slot: Value = serde_json::from_str(&agent.cli(&["refill", "pods"])).unwrap();
    assert_eq!(
        (slot["level"].as_i64(), slot["armed"].as_bool()),
        (Some(5), Some(true))
    );
    assert_eq!(agent.orders()["orders"][0]["state"], "delivered");
    // A second drain orders again; the new order tells the cloud the first was delivered.
    agent.brew(4);
    let v = wait_json("the second order accepted", || {
        let v = agent.orders();
        (v["orders"].as_array().unwrap().len() == 2 && v["orders"][0]["state"] == "accepted")
            .then_some(v)
    });
    let second = v["orders"][0]["tx_id"].as_str().unwrap().to_owned();
    let first = cloud.order(&tx_id).unwrap();
    assert_eq!(
        (first["status"].as_str(), first["reason"].as_str()),
        (Some("delivered"), Some("refilled_on_device"))
    );
    // A cancellation in the cloud reaches the device with its next status report.
    cloud.cli(&["orders", "cancel", &second, "--reason", "member asked"]);
    wait_json("the cancellation on the device", || {
        let v = agent.orders();
        (v["orders"][0]["state"] == "cancelled").then_some(v)
    });
    assert_eq!(agent.orders()["slots"][0]["open_tx"], Value::Null);
    // The device reports its slot levels in its status: the member's record shows them.
    let level = agent.orders()["slots"][0]["level"].clone();
    let m = wait_json("the slot level in the member's record", || {
        let m = cloud.json(&["members", "show", "m1", "--json"]);
        (m["devices"][0]["health"]["consumables"][0]["level"] == level).then_some(m)
    });
    let slot = &m["devices"][0]["health"]["consumables"][0];
    assert_eq!(
        (slot["slot"].as_str(), slot["sku"].as_str()),
        (Some("pods"), Some("POD-50"))
    );
    let v = cloud.json(&["ledger", "verify", "--json"]);
    assert_eq!(
        (v["ok"].as_bool(), v["entries"].as_u64()),
        (Some(true), Some(4)),
        "two decisions, the delivery, the cancellation: {v}"
    );
    cloud.stop();
}

#[test]
fn one_order_per_slot_even_when_the_agent_restarts_with_it_unacknowledged() {
    let mut cloud = Cloud::start();
    let mut agent = Agent::new(
        "coffee-2",
        &format!("mqtt://127.0.0.1:{}", free_port()),
        &cloud.public_key,
        true,
    );
    let key = agent.init();
    agent.brew(4);
    let v = agent.orders();
    assert_eq!(v["orders"][0]["state"], "pending");
    let tx_id = v["orders"][0]["tx_id"].as_str().unwrap().to_owned();
    // No broker: the daemon signs it but cannot send it; kill it mid-flight.
    agent.start();
    std::thread::sleep(Duration::from_millis(800));
    agent.kill9();
    agent.brew(3);
    // Now a broker, but the device is not registered: the order is quarantined, unanswered.
    agent.set_mqtt(&cloud.mqtt_url);
    agent.start();
    wait_until_blocking(
        "the unregistered device's order in quarantine",
        WAIT,
        || {
            let q: Vec<Value> =
                serde_json::from_value(cloud.json(&["quarantine", "list", "--json"])).unwrap();
            q.iter().any(|r| {
                r["reason"] == "unknown_device"
                    && r["topic"].as_str().unwrap_or("").ends_with("/tx")
            })
        },
    );
    agent.kill9();
    agent.brew(2);
    assert_eq!(agent.orders()["orders"].as_array().unwrap().len(), 1);
    cloud.member("m2", &["--auto-reorder", "on"]);
    cloud.device("coffee-2", "m2", &key);
    agent.start();
    wait_json("the order accepted after the restart", || {
        let v = agent.orders();
        (v["orders"][0]["state"] == "accepted").then_some(v)
    });
    let v = agent.orders();
    assert_eq!(v["orders"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["orders"][0]["tx_id"], tx_id.as_str());
    let orders = cloud.orders();
    assert_eq!(orders.len(), 1, "{orders:?}");
    assert_eq!(orders[0]["tx_id"], tx_id.as_str());
    cloud.stop();
}

#[test]
fn a_cancellation_whose_receipt_was_lost_reaches_the_device_with_its_next_status() {
    let mut cloud = Cloud::start();
    let mut agent = Agent::new("coffee-6", &cloud.mqtt_url, &cloud.public_key, false);
    let key = agent.init();
    cloud.member("m6", &["--auto-reorder", "on"]);
    cloud.device("coffee-6", "m6", &key);
    agent.start();
    wait_json("the pushed policy", || {
        let v = agent.orders();
        (v["policy"]["auto_reorder"] == true).then_some(v)
    });
    agent.brew(4);
    let v = wait_json("the order accepted on the device", || {
        let v = agent.orders();
        (v["orders"][0]["state"] == "accepted").then_some(v)
    });
    let tx_id = v["orders"][0]["tx_id"].as_str().unwrap().to_owned();
    agent.stop();

    // While the device is away, staff cancel the order.
    cloud.cli(&["orders", "cancel", &tx_id, "--reason", "member asked"]);
    // The device comes online and drops off again before the receipt reaches it: an
    // online status of a new connection (signed with the device key, as the agent would)
    // makes the cloud send the cancellation and mark it told, and nobody is subscribed.
    let device = DeviceId::parse("coffee-6").unwrap();
    let session: i64 = rusqlite::Connection::open(cloud.data().join("rollcall.db"))
        .unwrap()
        .query_row(
            "SELECT status_session FROM devices WHERE id = 'coffee-6'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let status = DeviceStatus {
        v: 1,
        device_id: device.clone(),
        state: Presence::Online,
        at: chrono::Utc::now(),
        session: session as u64 + 1,
        // Below the agent's first status of that session (n = 1), which must count as newer.
        n: 0,
        health: Some(Health::default()),
    };
    let p = Publisher::connect(&cloud.mqtt_url);
    p.publish(
        Topics::default().status(&device),
        agent
            .key()
            .sign(STATUS_PAYLOAD_TYPE, &status.encode())
            .to_json(),
    );
    let cloud_key = rollcall_shared::dsse::PublicKey::from_base64(&cloud.public_key).unwrap();
    wait_until_blocking("the cloud sending the cancellation to nobody", WAIT, || {
        p.downlinks.lock().unwrap().iter().any(|(topic, bytes)| {
            topic.ends_with("coffee-6/down")
                && Envelope::from_json(bytes)
                    .ok()
                    .and_then(|e| e.verify(DOWNLINK_PAYLOAD_TYPE, &cloud_key).ok())
                    .and_then(|b| Downlink::decode(&b).ok())
                    .is_some_and(|d| {
                        matches!(d.body, DownBody::Receipt(r)
                        if r.tx_id.as_str() == tx_id && r.status == TxStatus::Cancelled)
                    })
        })
    });
    assert_eq!(agent.orders()["orders"][0]["state"], "accepted");

    // The agent is back: its status lists the order as accepted, so the cloud sends the
    // cancellation again, and the device applies it.
    agent.start();
    wait_json("the cancellation on the device", || {
        let v = agent.orders();
        (v["orders"][0]["state"] == "cancelled").then_some(v)
    });
    assert_eq!(agent.orders()["slots"][0]["open_tx"], Value::Null);
    agent.stop();
    cloud.stop();
}

// --- crafted transactions -------------------------------------------------------------

struct Device {
    id: DeviceId,
    key: KeyPair,
}

impl Device {
    fn new(id: &str) -> Self {
        Device {
            id: DeviceId::parse(id).unwrap(),
            key: KeyPair::generate(),
        }
    }
    fn b64(&self) -> String {
        self.key.public().to_base64()
    }
}

fn tx(dev: &Device, id: &str, counter: u64, slot: &str, qty: u32, price: i64) -> Transaction {
    Transaction {
        v: 1,
        tx_id: TxId::parse(id).unwrap(),
        device_id: dev.id.clone(),
        counter,
        slot: SlotId::parse(slot).unwrap(),
        sku: Sku::parse("POD-50").unwrap(),
        qty,
        unit_price: price,
        currency: Currency::parse("EUR").unwrap(),
        amount: i64::from(qty) * price,
        reason: ReorderReason {
            level: 1,
            threshold: 2,
        },
        created_at: chrono::Utc::now(),
        refilled: None,
    }
}

/// Every downlink seen: (topic, payload).
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

struct Publisher {
    rt: tokio::runtime::Runtime,
    client: rumqttc::AsyncClient,
    downlinks: Seen,
}

impl Publisher {
    fn connect(url: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        let mut opts =
            rumqttc::MqttOptions::new(format!("t-{}", fastrand::u64(..)), "127.0.0.1", port);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 64);
        let downlinks: Seen = Default::default();
        let d = downlinks.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        d.lock()
                            .unwrap()
                            .push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let c = client.clone();
        rt.block_on(async {
            c.subscribe("rollcall/v1/devices/+/down", rumqttc::QoS::AtLeastOnce)
                .await
                .unwrap();
        });
        ready_rx.recv_timeout(WAIT).expect("subscribed");
        Publisher {
            rt,
            client,
            downlinks,
        }
    }

    fn send(&self, topic_device: &DeviceId, env: Vec<u8>) {
        let topic = Topics::default().tx(topic_device);
        self.rt.block_on(async {
            self.client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, env)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
    }

    fn publish(&self, topic: String, env: Vec<u8>) {
        self.rt.block_on(async {
            self.client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, env)
                .await
                .unwrap();
        });
    }

    fn signed(&self, signer: &KeyPair, on: &DeviceId, t: &Transaction) {
        self.send(
            on,
            signer.sign(TRANSACTION_PAYLOAD_TYPE, &t.encode()).to_json(),
        );
    }
}

fn wait_status(cloud: &Cloud, tx_id: &str) -> Value {
    wait_json(&format!("a decision on {tx_id}"), || cloud.order(tx_id))
}

fn reasons(cloud: &Cloud) -> Vec<String> {
    let q: Vec<Value> =
        serde_json::from_value(cloud.json(&["quarantine", "list", "--json"])).unwrap();
    q.iter()
        .map(|r| r["reason"].as_str().unwrap().to_owned())
        .collect()
}

/// RFC 9162 §2.1.3.2, written out here so the test does not trust the cloud's code.
fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: [u8; 32],
    proof: &[[u8; 32]],
    root: [u8; 32],
) -> bool {
    let node = |l: &[u8; 32], r: &[u8; 32]| -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([1u8]);
        h.update(l);
        h.update(r);
        h.finalize().into()
    };
    let (mut f, mut s, mut r) = (index, size - 1, leaf);
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == root
}

fn hash(v: &Value) -> [u8; 32] {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

#[test]
fn every_rejection_has_its_reason_and_the_ledger_verifies_and_detects_tampering() {
    let mut cloud = Cloud::start();
    let d2 = Device::new("dev-2");
    let d3 = Device::new("dev-3");
    cloud.member(
        "m2",
        &[
            "--auto-reorder",
            "on",
            "--limit-order",
            "1000",
            "--limit-30d",
            "600",
        ],
    );
    cloud.member("m3", &[]);
    cloud.device("dev-2", "m2", &d2.b64());
    cloud.device("dev-3", "m3", &d3.b64());
    let p = Publisher::connect(&cloud.mqtt_url);

    // Over the per-order limit: 50 x 25 = 1250 > 1000.
    p.signed(&d2.key, &d2.id, &tx(&d2, "tx-a", 1, "pods", 50, 25));
    let o = wait_status(&cloud, "tx-a");
    assert_eq!(
        (o["status"].as_str(), o["reason"].as_str()),
        (Some("rejected"), Some("over_order_limit"))
    );
    // Within limits: accepted.
    let accepted = tx(&d2, "tx-b", 2, "pods", 10, 25);
    p.signed(&d2.key, &d2.id, &accepted);
    assert_eq!(wait_status(&cloud, "tx-b")["status"], "accepted");
    // The receipt reaches the device's downlink, signed by the cloud.
    let cloud_key = rollcall_shared::dsse::PublicKey::from_base64(&cloud.public_key).unwrap();
    let payload_sha = hex::encode(Sha256::digest(accepted.encode()));
    wait_until_blocking("the receipt of tx-b", WAIT, || {
        p.downlinks.lock().unwrap().iter().any(|(topic, bytes)| {
            topic.ends_with("dev-2/down")
                && Envelope::from_json(bytes)
                    .ok()
                    .and_then(|e| e.verify(DOWNLINK_PAYLOAD_TYPE, &cloud_key).ok())
                    .and_then(|b| Downlink::decode(&b).ok())
                    .is_some_and(|d| matches!(d.body, DownBody::Receipt(r) if r.tx_id.as_str() == "tx-b" && r.tx_sha256 == payload_sha))
        })
    });
    // A new id under an old counter: a replay.
    p.signed(&d2.key, &d2.id, &tx(&d2, "tx-c", 2, "milk", 1, 25));
    assert_eq!(wait_status(&cloud, "tx-c")["reason"], "replayed_counter");
    // The same id with other content: a conflict (quarantined); the same bytes again change nothing.
    p.signed(&d2.key, &d2.id, &tx(&d2, "tx-b", 2, "pods", 11, 25));
    p.signed(&d2.key, &d2.id, &accepted);
    wait_until_blocking("the conflict in quarantine", WAIT, || {
        reasons(&cloud).contains(&"conflict".to_owned())
    });
    assert_eq!(cloud.order("tx-b").unwrap()["qty"], 10);
    // A stale price quote (30 vs 25): held for the member's confirmation.
    p.signed(&d2.key, &d2.id, &tx(&d2, "tx-d", 3, "milk", 10, 30));
    let o = wait_status(&cloud, "tx-d");
    assert_eq!(
        (
            o["status"].as_str(),
            o["reason"].as_str(),
            o["amount"].as_i64()
        ),
        (
            Some("held_for_confirmation"),
            Some("price_changed"),
            Some(250)
        )
    );
    // Over the 30-day limit: 250 accepted + 250 confirmed + 250 > 600.
    cloud.cli(&["orders", "confirm", "tx-d"]);
    assert_eq!(cloud.order("tx-d").unwrap()["status"], "accepted");
    p.signed(&d2.key, &d2.id, &tx(&d2, "tx-e", 4, "sugar", 10, 25));
    assert_eq!(wait_status(&cloud, "tx-e")["reason"], "over_30d_limit");
    // Not opted in.
    p.signed(&d3.key, &d3.id, &tx(&d3, "tx-f", 1, "pods", 1, 25));
    assert_eq!(wait_status(&cloud, "tx-f")["reason"], "not_opted_in");
    // A forged signature, and another device's (registered) key, on dev-2's topic; dev-3's
    // key on its own topic claiming to be dev-2.
    p.signed(
        &KeyPair::generate(),
        &d2.id,
        &tx(&d2, "tx-g", 10, "x", 1, 25),
    );
    p.signed(&d3.key, &d2.id, &tx(&d2, "tx-h", 11, "y", 1, 25));
    p.signed(&d3.key, &d3.id, &tx(&d2, "tx-i", 12, "z", 1, 25));
    wait_until_blocking("signature rejections in quarantine", WAIT, || {
        let r = reasons(&cloud);
        r.iter().filter(|r| *r == "bad_signature").count() == 2
            && r.contains(&"device_mismatch".to_owned())
    });
    for id in ["tx-g", "tx-h", "tx-i"] {
        assert!(
            cloud.order(id).is_none(),
            "{id} never reaches the orders or the ledger"
        );
    }
    // Cancellation within the window; it cannot be cancelled twice.
    cloud.cli(&[
        "orders",
        "cancel",
        "tx-b",
        "--reason",
        "member changed their mind",
    ]);
    assert_eq!(cloud.order("tx-b").unwrap()["status"], "cancelled");
    let (success, _, _) = run(cloud
        .cmd()
        .args(["orders", "cancel", "tx-b", "--reason", "again"]));
    assert!(!success);
    let all = cloud.json(&["orders", "list", "--member", "m2", "--json"]);
    assert_eq!(all.as_array().unwrap().len(), 5);

    // The ledger: 6 decisions + confirm + cancel.
    let v = cloud.json(&["ledger", "verify", "--json"]);
    assert_eq!(
        (v["ok"].as_bool(), v["entries"].as_u64()),
        (Some(true), Some(8)),
        "{v}"
    );
    let root = v["root"].as_str().unwrap().to_owned();
    // HTTP: checkpoint, an entry with its inclusion proof, a consistency proof.
    assert_eq!(
        cloud.get_as("/api/v1/ledger/checkpoint", None).0,
        401,
        "the ledger API needs a bearer token"
    );
    let (code, cp) = cloud.get("/api/v1/ledger/checkpoint");
    assert_eq!(
        (code, cp["tree_size"].as_u64(), cp["root"].as_str()),
        (200, Some(8), Some(root.as_str()))
    );
    for i in [0u64, 5, 7] {
        let (code, e) = cloud.get(&format!("/api/v1/ledger/entries/{i}"));
        assert_eq!(code, 200, "{e}");
        let entry = base64::engine::general_purpose::STANDARD
            .decode(e["entry_b64"].as_str().unwrap())
            .unwrap();
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(&entry);
        let leaf: [u8; 32] = h.finalize().into();
        let proof: Vec<[u8; 32]> = e["inclusion_proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(hash)
            .collect();
        assert!(
            verify_inclusion(i, 8, leaf, &proof, hash(&cp["root"])),
            "entry {i}"
        );
    }
    assert_eq!(cloud.get("/api/v1/ledger/entries/8").0, 404);
    // An entry names a member and a device: admin only; the checkpoint is for every role.
    let analyst = cloud
        .cli(&["tokens", "create", "--role", "analyst", "--name", "analyst"])
        .lines()
        .last()
        .expect("a token")
        .trim()
        .to_owned();
    assert_eq!(
        cloud.get_as("/api/v1/ledger/entries/0", Some(&analyst)).0,
        403
    );
    assert_eq!(
        cloud.get_as("/api/v1/ledger/checkpoint", Some(&analyst)).0,
        200
    );
    let (code, c) = cloud.get("/api/v1/ledger/consistency?from=3&to=8");
    assert_eq!(
        (code, c["proof"].as_array().map(|p| !p.is_empty())),
        (200, Some(true))
    );
    assert_eq!(cloud.get("/api/v1/ledger/consistency?from=9&to=8").0, 400);

    // Export, and an independent verifier with standard tools only.
    let out = cloud.dir.path().join("export");
    cloud.cli(&["ledger", "export", "--out", out.to_str().unwrap()]);
    python_verifies(&out, Some(&root));

    // Tampering, each on a fresh copy of the store.
    cloud.stop();
    let tamper = |sql: &str| -> Value {
        let copy = tempfile::tempdir().unwrap();
        for f in ["rollcall.db", "rollcall.db-wal", "cloud.key"] {
            let from = cloud.data().join(f);
            if from.exists() {
                std::fs::copy(&from, copy.path().join(f)).unwrap();
            }
        }
        let conn = rusqlite::Connection::open(copy.path().join("rollcall.db")).unwrap();
        conn.execute_batch(sql).unwrap();
        drop(conn);
        let (success, stdout, _) = run(Command::new(cloud_bin())
            .args(["ledger", "verify", "--json", "--data-dir"])
            .arg(copy.path())
            .env("ROLLCALL_LOG", "error"));
        let v: Value = serde_json::from_str(&stdout).unwrap();
        assert!(!success, "verify must exit non-zero: {v}");
        assert_eq!(v["ok"], false);
        v
    };
    let v = tamper("UPDATE ledger_entries SET entry = CAST(replace(CAST(entry AS TEXT), 'rejected', 'accepted') AS BLOB) WHERE idx = 0");
    assert_eq!(v["first_bad_index"], 0, "{v}");
    let v = tamper("DELETE FROM ledger_entries WHERE idx = 4");
    assert_eq!(v["first_bad_index"], 4, "{v}");
    let v = tamper(
        "UPDATE ledger_entries SET idx = -1 WHERE idx = 2;
         UPDATE ledger_entries SET idx = 2 WHERE idx = 3;
         UPDATE ledger_entries SET idx = 3 WHERE idx = -1;",
    );
    assert_eq!(v["first_bad_index"], 2, "{v}");
    let v = tamper("UPDATE ledger_entries SET entry = CAST(replace(CAST(entry AS TEXT), 'member changed', 'staff changed') AS BLOB) WHERE idx = 7");
    assert_eq!(v["first_bad_index"], 7, "{v}");
}

/// Runs `docs/ledger_verify.py` (Python + `cryptography` only) over an export. Skipped with
/// a message when they are missing, unless `ROLLCALL_REQUIRE_INTEROP` is set.
fn python_verifies(dir: &Path, root: Option<&str>) {
    let required = std::env::var_os("ROLLCALL_REQUIRE_INTEROP").is_some();
    let have = Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        assert!(
            !required,
            "python3 with `cryptography` is required when ROLLCALL_REQUIRE_INTEROP is set"
        );
        eprintln!("SKIPPED: python3 with the `cryptography` package is not available");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ledger_verify.py");
    let (success, stdout, stderr) = run(Command::new("python3").arg(&script).arg(dir));
    assert!(success, "the Python verifier failed: {stdout}{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["ok"], true);
    if let Some(r) = root {
        assert_eq!(v["root"], r);
    }
    // The same script catches an edited export.
    let entries = dir.join("entries.jsonl");
    let text = std::fs::read_to_string(&entries).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.swap(0, 1);
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    for f in ["keys.json", "checkpoints.jsonl"] {
        std::fs::copy(dir.join(f), bad.join(f)).unwrap();
    }
    std::fs::write(bad.join("entries.jsonl"), lines.join("\n") + "\n").unwrap();
    let (success, stdout, _) = run(Command::new("python3").arg(&script).arg(&bad));
    assert!(!success, "{stdout}");
}

/// What the fleet simulator does: an agent in process, with an in-memory outbox that tracks
/// consumables, talking to the real cloud. It orders by itself once the member's opt-in
/// arrives on the downlink.
#[test]
fn an_in_process_agent_with_a_memory_outbox_orders_by_itself() {
    use rollcall_agent::consumables::{Consumables, OrderState, SlotConfig};
    use rollcall_agent::outbox::{NewEvent, Outbox, OutboxLimits};
    use rollcall_agent::uplink::{BrokerUrl, MqttSettings, UplinkSettings, UplinkStats};
    use rollcall_agent::{run_uplink, AgentRuntime, MemoryOutbox};
    use rollcall_shared::{Clock, EventKind, SystemClock};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    let mut cloud = Cloud::start();
    let device = Device::new("sim-coffee-1");
    cloud.member("m5", &["--auto-reorder", "on"]);
    cloud.device("sim-coffee-1", "m5", &device.b64());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let consumables = Consumables {
        slots: vec![SlotConfig {
            slot: SlotId::parse("pods").unwrap(),
            sku: Sku::parse("POD-50").unwrap(),
            capacity: 3,
            usage: BTreeMap::from([(EventKind::parse("brew").unwrap(), 1)]),
            threshold: 1,
            reorder_qty: 10,
            unit_price: 25,
            currency: Currency::parse("EUR").unwrap(),
        }],
        auto_reorder: false,
    };
    let outbox = Arc::new(
        MemoryOutbox::new(OutboxLimits::default(), clock.clone())
            .with_consumables(Arc::new(consumables)),
    );
    let port: u16 = cloud.mqtt_url.rsplit(':').next().unwrap().parse().unwrap();
    let rt = AgentRuntime {
        outbox: outbox.clone(),
        key: device.key.clone(),
        device_id: device.id.clone(),
        topics: Topics::default(),
        mqtt: MqttSettings::new(BrokerUrl::plain("127.0.0.1", port)),
        uplink: UplinkSettings {
            batch_interval: Duration::from_millis(50),
            status_interval: Duration::from_secs(1),
            ack_timeout: Duration::from_secs(2),
            ..UplinkSettings::default()
        },
        cloud_key: rollcall_shared::dsse::PublicKey::from_base64(&cloud.public_key).unwrap(),
        clock,
        stats: UplinkStats::new(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = runtime.spawn(run_uplink(rt, shutdown.clone()));
    wait_until_blocking("the member's policy pushed to the device", WAIT, || {
        outbox.policy().unwrap() == Some(true)
    });
    for _ in 0..5 {
        outbox
            .append(NewEvent {
                kind: EventKind::parse("brew").unwrap(),
                qty: 1,
                occurred_at: chrono::Utc::now(),
                attrs: BTreeMap::new(),
                clock_suspect: false,
            })
            .unwrap();
    }
    wait_until_blocking("the in-process order accepted", WAIT, || {
        outbox
            .orders()
            .unwrap()
            .first()
            .is_some_and(|o| o.state == OrderState::Accepted)
    });
    assert_eq!(outbox.orders().unwrap().len(), 1);
    let slot = outbox
        .refill(&SlotId::parse("pods").unwrap(), None)
        .unwrap();
    assert_eq!(slot.level, 3);
    assert_eq!(outbox.orders().unwrap()[0].state, OrderState::Delivered);
    assert_eq!(cloud.orders().len(), 1);
    shutdown.cancel();
    runtime.block_on(task).unwrap().unwrap();
    cloud.stop();
}

//! The uplink against a real broker (Mosquitto) and a small in-test cloud.
//!
//! Skipped when mosquitto (or, for the mqtts test, a working openssl) is not installed,
//! unless `ROLLCALL_REQUIRE_INTEROP` is set.

mod common;

use common::*;
use rollcall_agent::outbox::{NewEvent, Outbox, OutboxLimits, SqliteOutbox};
use rollcall_agent::uplink::{
    run_uplink, AgentRuntime, BrokerUrl, MqttSettings, UplinkSettings, UplinkStats,
};
use rollcall_agent::MemoryOutbox;
use rollcall_shared::dsse::KeyPair;
use rollcall_shared::payload::Presence;
use rollcall_shared::topics::Topics;
use rollcall_shared::{Clock, DeviceId, EventKind, SystemClock};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn settings() -> UplinkSettings {
    UplinkSettings {
        batch_max_events: 20,
        batch_interval: Duration::from_millis(50),
        ack_timeout: Duration::from_secs(30),
        max_inflight_reports: 16,
        status_interval: Duration::from_secs(60),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(400),
    }
}

fn fill(outbox: &dyn Outbox, n: usize) {
    for i in 0..n {
        outbox
            .append(NewEvent {
                kind: EventKind::parse("brew").unwrap(),
                qty: 1,
                occurred_at: chrono::Utc::now(),
                attrs: BTreeMap::from([("i".to_owned(), i.to_string())]),
                clock_suspect: false,
            })
            .unwrap();
    }
}

struct Agent {
    device: DeviceId,
    key: KeyPair,
    cloud: KeyPair,
    outbox: Arc<dyn Outbox>,
    stats: Arc<UplinkStats>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), rollcall_agent::uplink::UplinkError>>>,
}

impl Agent {
    fn new(outbox: Arc<dyn Outbox>) -> Self {
        Self {
            device: DeviceId::parse(&format!("dev-{}", fastrand::u32(..))).unwrap(),
            key: KeyPair::generate(),
            cloud: KeyPair::generate(),
            outbox,
            stats: UplinkStats::new(),
            shutdown: CancellationToken::new(),
            task: None,
        }
    }

    fn start(&mut self, port: u16, uplink: UplinkSettings) {
        self.start_with(
            MqttSettings::new(BrokerUrl::plain("127.0.0.1", port)),
            uplink,
        );
    }

    fn start_with(&mut self, mqtt: MqttSettings, uplink: UplinkSettings) {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let rt = AgentRuntime {
            outbox: self.outbox.clone(),
            key: self.key.clone(),
            device_id: self.device.clone(),
            topics: Topics::default(),
            mqtt,
            uplink,
            cloud_key: self.cloud.public(),
            clock,
            stats: self.stats.clone(),
        };
        self.task = Some(tokio::spawn(run_uplink(rt, self.shutdown.clone())));
    }

    fn depth(&self) -> u64 {
        self.outbox.stats().unwrap().depth
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        let started = Instant::now();
        let task = self.task.take().expect("started");
        let r = tokio::time::timeout(Duration::from_secs(6), task)
            .await
            .expect("uplink stops within seconds");
        r.unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_and_the_outbox_drains_only_after_acks() {
    let Some(bin) = mosquitto_or_skip("every_event_arrives_and_the_outbox_drains_only_after_acks")
    else {
        return;
    };
    let broker = Mosquitto::start(&bin, free_port());
    let dir = tempfile::tempdir().unwrap();
    let outbox: Arc<dyn Outbox> = Arc::new(
        SqliteOutbox::open(
            &dir.path().join("o.sqlite"),
            OutboxLimits::default(),
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    fill(outbox.as_ref(), 300);
    let mut agent = Agent::new(outbox);
    let cloud = TestCloud::start(
        broker.port,
        agent.key.public(),
        agent.cloud.clone(),
        AckMode::Silent,
    )
    .await;
    agent.start(broker.port, settings());

    // 300 events in reports of 20: 15 reports, all within the in-flight limit of 16.
    wait_until("the cloud has every seq", WAIT, || {
        cloud.log().seqs.len() == 300
    })
    .await;
    assert_eq!(
        cloud.log().seqs.iter().copied().collect::<Vec<_>>(),
        (1..=300).collect::<Vec<_>>()
    );
    // Published (and PUBACKed by the broker) but not acked by the cloud: nothing deleted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        agent.depth(),
        300,
        "nothing may be deleted before the cloud's ack"
    );
    assert_eq!(agent.stats.snapshot().reports_acked, 0);

    cloud.set_mode(AckMode::Correct);
    cloud.ack_everything_received(&agent.device).await;
    // The outbox row deletion and the stats counter are two steps: wait for both.
    wait_until("the outbox drains and every ack is counted", WAIT, || {
        agent.depth() == 0 && agent.stats.snapshot().reports_acked >= 15
    })
    .await;
    let snap = agent.stats.snapshot();
    assert_eq!((snap.reports_acked, snap.events_acked), (15, 300));
    assert!(snap.connected);
    {
        let log = cloud.log();
        for d in &log.deliveries {
            assert!(
                d.seqs.len() <= 20 && d.seqs.windows(2).all(|w| w[0] < w[1]),
                "{d:?}"
            );
        }
        let online = log
            .statuses
            .iter()
            .find(|s| s.state == Presence::Online)
            .expect("an online status");
        assert!(online.health.is_some() && online.session >= 1 && online.n >= 1);
    }

    // New events keep flowing while connected.
    fill(agent.outbox.as_ref(), 5);
    wait_until("new events are delivered and acked", WAIT, || {
        agent.depth() == 0 && cloud.log().seqs.len() == 305
    })
    .await;

    agent.stop().await;
    wait_until("the offline status arrives", WAIT, || {
        cloud
            .log()
            .statuses
            .iter()
            .any(|s| s.state == Presence::Offline && s.n == u64::MAX)
    })
    .await;
    assert!(!agent.stats.snapshot().connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_report_is_resent_after_the_ack_timeout() {
    let Some(bin) = mosquitto_or_skip("an_unacked_report_is_resent_after_the_ack_timeout") else {
        return;
    };
    let broker = Mosquitto::start(&bin, free_port());
    let outbox: Arc<dyn Outbox> = Arc::new(MemoryOutbox::new(
        OutboxLimits::default(),
        Arc::new(SystemClock),
    ));
    fill(outbox.as_ref(), 30);
    let mut agent = Agent::new(outbox);
    let cloud = TestCloud::start(
        broker.port,
        agent.key.public(),
        agent.cloud.clone(),
        AckMode::Correct,
    )
    .await;
    cloud.ignore_first_delivery_of(1);
    let ack_timeout = Duration::from_secs(1);
    agent.start(
        broker.port,
        UplinkSettings {
            batch_max_events: 10,
            ack_timeout,
            ..settings()
        },
    );

    wait_until("the outbox drains", WAIT, || agent.depth() == 0).await;
    {
        let log = cloud.log();
        let first = log.deliveries_of(1);
        assert!(first.len() >= 2, "report 1 must be re-sent: {first:?}");
        assert!(!first[0].acked && first[1].acked);
        assert_eq!(
            first[0].seqs, first[1].seqs,
            "a re-sent report carries exactly the same events"
        );
        let gap = first[1].at - first[0].at;
        assert!(
            gap >= ack_timeout - Duration::from_millis(100),
            "re-sent after {gap:?}, before the ack timeout"
        );
        assert_eq!(
            log.deliveries_of(2).len(),
            1,
            "acked reports are not re-sent"
        );
        assert!(agent.stats.snapshot().reports_resent >= 1);
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downlinks_with_the_wrong_key_or_device_delete_nothing() {
    let Some(bin) = mosquitto_or_skip("downlinks_with_the_wrong_key_or_device_delete_nothing")
    else {
        return;
    };
    let broker = Mosquitto::start(&bin, free_port());
    let outbox: Arc<dyn Outbox> = Arc::new(MemoryOutbox::new(
        OutboxLimits::default(),
        Arc::new(SystemClock),
    ));
    fill(outbox.as_ref(), 30);
    let mut agent = Agent::new(outbox);
    let cloud = TestCloud::start(
        broker.port,
        agent.key.public(),
        agent.cloud.clone(),
        AckMode::WrongKey,
    )
    .await;
    agent.start(
        broker.port,
        UplinkSettings {
            batch_max_events: 10,
            ack_timeout: Duration::from_millis(1000),
            ..settings()
        },
    );

    wait_until("three forged acks were ignored", WAIT, || {
        agent.stats.snapshot().downlinks_ignored >= 3
    })
    .await;
    assert_eq!(agent.depth(), 30);
    cloud.set_mode(AckMode::WrongDevice);
    wait_until("acks for another device were ignored", WAIT, || {
        agent.stats.snapshot().downlinks_ignored >= 6
    })
    .await;
    assert_eq!(
        agent.depth(),
        30,
        "no forged or misaddressed ack may delete anything"
    );
    assert_eq!(agent.stats.snapshot().reports_acked, 0);

    // The same reports, re-sent after the timeout, drain once real acks come.
    cloud.set_mode(AckMode::Correct);
    wait_until("the outbox drains after genuine acks", WAIT, || {
        agent.depth() == 0
    })
    .await;
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_backs_off_until_the_broker_appears_and_reconnects_after_it_restarts() {
    let Some(bin) = mosquitto_or_skip("the_agent_backs_off_until_the_broker_appears") else {
        return;
    };
    let port = free_port();
    let outbox: Arc<dyn Outbox> = Arc::new(MemoryOutbox::new(
        OutboxLimits::default(),
        Arc::new(SystemClock),
    ));
    fill(outbox.as_ref(), 10);
    let mut agent = Agent::new(outbox);
    // Reports published before the test cloud has subscribed are lost (nobody listens):
    // the ack timeout is what brings them back, so keep it short here.
    agent.start(
        port,
        UplinkSettings {
            ack_timeout: Duration::from_secs(1),
            ..settings()
        },
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!agent.stats.snapshot().connected);
    assert_eq!(agent.depth(), 10);

    let mut broker = Mosquitto::start(&bin, port);
    let cloud = TestCloud::start(
        port,
        agent.key.public(),
        agent.cloud.clone(),
        AckMode::Correct,
    )
    .await;
    wait_until("connected and drained", WAIT, || {
        agent.stats.snapshot().connected && agent.depth() == 0
    })
    .await;
    assert_eq!(agent.stats.snapshot().reconnects, 0);

    broker.stop();
    wait_until("the agent notices the broker is gone", WAIT, || {
        !agent.stats.snapshot().connected
    })
    .await;
    fill(agent.outbox.as_ref(), 7);
    let _broker = Mosquitto::start(&bin, port);
    // The test cloud's own client reconnects too, but its subscriptions were lost with the
    // clean session: start a fresh one.
    drop(cloud);
    let cloud = TestCloud::start(
        port,
        agent.key.public(),
        agent.cloud.clone(),
        AckMode::Correct,
    )
    .await;
    wait_until("reconnected and drained", WAIT, || {
        agent.stats.snapshot().connected && agent.depth() == 0
    })
    .await;
    assert!(agent.stats.snapshot().reconnects >= 1);
    assert!(cloud.log().seqs.is_superset(&(11..=17).collect()));
    agent.stop().await;
}

/// The real daemon binary against Mosquitto: events recorded with the CLI while it runs
/// reach the cloud, acks empty the outbox, and SIGTERM leaves a retained offline status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_binary_delivers_cli_records_and_goes_offline_on_sigterm() {
    let Some(bin) = mosquitto_or_skip("the_daemon_binary_delivers_cli_records") else {
        return;
    };
    let broker = Mosquitto::start(&bin, free_port());
    let exe = env!("CARGO_BIN_EXE_rollcall-agent");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let cloud_key = KeyPair::generate();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {d:?}\ncloud_public_key = {:?}\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n\
             [uplink]\nbatch_interval_ms = 50\n",
            cloud_key.public().to_base64(),
            broker.port
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let cli = |args: &[&str]| std::process::Command::new(exe).args(args).output().unwrap();
    let init = cli(&["init", "--config", c]);
    assert!(init.status.success());
    let info: serde_json::Value = serde_json::from_slice(&init.stdout).unwrap();
    let device_key =
        rollcall_shared::dsse::PublicKey::from_base64(info["public_key"].as_str().unwrap())
            .unwrap();
    let device = DeviceId::parse(info["device_id"].as_str().unwrap()).unwrap();
    // Recorded before the daemon starts.
    assert!(cli(&["record", "brew", "--config", c]).status.success());

    let cloud = TestCloud::start(broker.port, device_key, cloud_key, AckMode::Correct).await;
    let mut daemon = std::process::Command::new(exe)
        .args(["run", "--config", c])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..4 {
        let o = cli(&["record", "brew", "--attr", "drink=latte", "--config", c]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let status = || {
        let o = cli(&["status", "--json", "--config", c]);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    wait_until("all five events acked", WAIT, || {
        cloud.log().seqs.len() == 5 && status()["outbox_depth"] == 0
    })
    .await;
    let s = status();
    assert_eq!(s["connection"], "connected");
    assert!(s["last_ack_at"].is_string());

    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) }, 0);
    let started = Instant::now();
    let exit = loop {
        if let Some(s) = daemon.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "daemon did not stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success());
    wait_until("the retained offline status", WAIT, || {
        cloud
            .log()
            .statuses
            .iter()
            .any(|s| s.device_id == device && s.state == Presence::Offline)
    })
    .await;
    assert_eq!(status()["connection"], "stopped");
}

/// Makes a CA and a server certificate for `localhost`/127.0.0.1 with `openssl`.
/// `None` when openssl is not installed.
fn make_test_pki(dir: &std::path::Path) -> Option<()> {
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-days",
            "1",
            "-subj",
            "/CN=rollcall-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    ]
    .concat())?;
    run(&[
        &["req"][..],
        &ec,
        &[
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    ]
    .concat())?;
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .ok()?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        "server.pem",
        "-extfile",
        "ext.cnf",
    ])?;
    // mosquitto may drop privileges before reading its key when started as root.
    for f in ["ca.pem", "server.pem", "server.key"] {
        std::fs::set_permissions(
            dir.join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .ok()?;
    }
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_works_with_the_configured_ca_and_fails_with_another() {
    let Some(bin) = mosquitto_or_skip("mqtts_works_with_the_configured_ca") else {
        return;
    };
    let pki = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        pki.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    if make_test_pki(pki.path()).is_none() {
        assert!(
            std::env::var_os("ROLLCALL_REQUIRE_INTEROP").is_none(),
            "openssl must be able to make a test CA when ROLLCALL_REQUIRE_INTEROP is set"
        );
        eprintln!("SKIPPED mqtts_works_with_the_configured_ca: openssl could not make a test CA");
        return;
    }
    let (plain, tls) = (free_port(), free_port());
    let p = pki.path().display();
    let broker = Mosquitto::start_with(
        &bin,
        plain,
        &format!("listener {tls} 127.0.0.1\ncafile {p}/ca.pem\ncertfile {p}/server.pem\nkeyfile {p}/server.key\n"),
        &[tls],
    );
    let outbox: Arc<dyn Outbox> = Arc::new(MemoryOutbox::new(
        OutboxLimits::default(),
        Arc::new(SystemClock),
    ));
    fill(outbox.as_ref(), 12);
    let mut agent = Agent::new(outbox);
    let cloud = TestCloud::start(
        broker.port,
        agent.key.public(),
        agent.cloud.clone(),
        AckMode::Correct,
    )
    .await;
    let mut mqtt = MqttSettings::new(format!("mqtts://localhost:{tls}").parse().unwrap());
    mqtt.ca_file = Some(pki.path().join("ca.pem"));
    agent.start_with(mqtt, settings());
    wait_until("delivered and acked over TLS", WAIT, || agent.depth() == 0).await;
    assert_eq!(cloud.log().seqs.len(), 12);
    agent.stop().await;

    // A CA that did not sign the broker's certificate: no connection, nothing sent.
    let other = tempfile::tempdir().unwrap();
    make_test_pki(other.path()).unwrap();
    let outbox: Arc<dyn Outbox> = Arc::new(MemoryOutbox::new(
        OutboxLimits::default(),
        Arc::new(SystemClock),
    ));
    fill(outbox.as_ref(), 3);
    let mut stranger = Agent::new(outbox);
    let mut mqtt = MqttSettings::new(format!("mqtts://localhost:{tls}").parse().unwrap());
    mqtt.ca_file = Some(other.path().join("ca.pem"));
    stranger.start_with(mqtt, settings());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let snap = stranger.stats.snapshot();
    assert_eq!(
        (snap.connects, snap.reports_sent),
        (0, 0),
        "an untrusted broker must not be talked to"
    );
    assert_eq!(stranger.depth(), 3);
    stranger.stop().await;
}

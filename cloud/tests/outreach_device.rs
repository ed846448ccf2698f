//! The device channel end to end: the cloud publishes a signed display message on the
//! device's downlink through the embedded broker, a real agent uplink verifies and keeps
//! it and answers with a signed receipt, and the delivery is marked delivered; junk on the
//! receipt topic is kept in quarantine and counted.

mod support;

use rollcall_agent::outbox::{MemoryOutbox, Outbox, OutboxLimits};
use rollcall_agent::uplink::{run_uplink, AgentRuntime, MqttSettings, UplinkSettings, UplinkStats};
use rollcall_cloud::delivery::device::{DeviceChannelSettings, DeviceSender};
use rollcall_cloud::delivery::dispatcher::{Channels, Dispatcher};
use rollcall_cloud::delivery::DeliveryChannel;
use rollcall_cloud::metrics::Metrics;
use rollcall_cloud::mqtt::BrokerUrl;
use rollcall_cloud::outreach::Outreach;
use rollcall_shared::dsse::KeyPair;
use rollcall_shared::topics::Topics;
use rollcall_shared::{Clock, DeviceId, MemberId, SystemClock};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_display_message_reaches_the_agent_its_receipt_marks_it_delivered_and_junk_receipts_are_quarantined(
) {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut cfg = config(dir.path(), vec![]);
    cfg.outreach.quiet_hours.start = "00:00".into();
    cfg.outreach.quiet_hours.end = "00:00".into();
    cfg.outreach.rules.get_mut("win_back").unwrap().channels = vec![DeliveryChannel::Device];
    cfg.delivery.device_ack_timeout_s = 1;
    let mut conn = rollcall_cloud::store::open_writer(dir.path()).unwrap();
    let now = clock.now();
    add_member(
        &conn,
        "m-maria",
        "Maria Lopez",
        Some("UTC"),
        None,
        "2025-01-10",
    );
    add_usage(
        &conn,
        "m-maria",
        5,
        &(now - chrono::Duration::days(9)).to_rfc3339(),
        "latte",
    );
    set_state(
        &conn,
        "m-maria",
        None,
        "active",
        now - chrono::Duration::days(30),
    );
    let device_key = KeyPair::generate();
    let device = DeviceId::parse("dev-maria").unwrap();
    rollcall_cloud::registry::add_device(
        &conn,
        &device,
        &MemberId::parse("m-maria").unwrap(),
        &device_key.public(),
        now,
    )
    .unwrap();

    let broker = rollcall_cloud::broker::start("127.0.0.1:0".parse().unwrap(), 100).unwrap();
    let cloud_key = rollcall_cloud::keys::load_or_create(&dir.path().join("cloud.key")).unwrap();
    let shutdown = CancellationToken::new();
    let url = BrokerUrl {
        host: "127.0.0.1".into(),
        port: broker.addr.port(),
        tls: false,
    };
    let metrics = Arc::new(Metrics::new());
    let (sender, _task) = DeviceSender::start(
        DeviceChannelSettings {
            url,
            username: String::new(),
            password: Default::default(),
            ca_file: None,
            topic_prefix: "rollcall".into(),
            data_dir: dir.path().to_owned(),
        },
        cloud_key.clone(),
        clock.clone(),
        metrics.clone(),
        shutdown.clone(),
    )
    .unwrap();
    let dispatcher = Dispatcher::new(
        rollcall_cloud::store::open_writer(dir.path()).unwrap(),
        cfg.delivery.clone(),
        clock.clone(),
        Channels {
            device: Some(sender),
            ..Channels::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap();

    // A real agent uplink, trusting the cloud's key.
    let outbox = Arc::new(MemoryOutbox::new(OutboxLimits::default(), clock.clone()));
    let rt = AgentRuntime {
        outbox: outbox.clone(),
        key: device_key,
        device_id: device.clone(),
        topics: Topics::default(),
        mqtt: MqttSettings::new(rollcall_agent::uplink::BrokerUrl::plain(
            "127.0.0.1",
            broker.addr.port(),
        )),
        uplink: UplinkSettings::default(),
        cloud_key: cloud_key.public(),
        clock: clock.clone(),
        stats: UplinkStats::new(),
    };
    let agent_stop = CancellationToken::new();
    let agent = tokio::spawn(run_uplink(rt, agent_stop.clone()));

    set_state(&conn, "m-maria", Some("active"), "lapsing", clock.now());
    let outreach = Outreach::new(&cfg).unwrap();
    assert_eq!(outreach.tick(&mut conn, clock.now()).unwrap().queued, 1);
    let id = rollcall_cloud::outreach::view::list(&conn, Some("m-maria"), 10).unwrap()[0]
        .delivery_id
        .unwrap();
    let t0 = Instant::now();
    loop {
        dispatcher.dispatch_once().await.unwrap();
        let d = rollcall_cloud::delivery::get(&conn, id).unwrap().unwrap();
        if d.status == "delivered" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "not delivered: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kept = outbox.messages().unwrap();
    assert_eq!(kept.len(), 1, "kept once, whatever the re-sends: {kept:?}");
    assert_eq!(
        kept[0].id,
        format!(
            "outreach:{}",
            rollcall_cloud::outreach::view::list(&conn, Some("m-maria"), 10).unwrap()[0].id
        )
    );
    assert_eq!(kept[0].title, "We miss you, Maria");
    assert!(kept[0].body.starts_with("Hi Maria,"), "{}", kept[0].body);
    assert_eq!(
        rollcall_cloud::outreach::view::list(&conn, Some("m-maria"), 10).unwrap()[0].status,
        "sent"
    );
    // Anyone can publish on the receipt topic: junk is kept in quarantine and counted.
    let (junk, mut junk_loop) = rumqttc::AsyncClient::new(
        rumqttc::MqttOptions::new("junk", "127.0.0.1", broker.addr.port()),
        10,
    );
    junk.publish(
        Topics::default().receipt(&device),
        rumqttc::QoS::AtLeastOnce,
        false,
        b"{not a receipt".to_vec(),
    )
    .await
    .unwrap();
    let t0 = Instant::now();
    loop {
        if let Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) =
            tokio::time::timeout(Duration::from_millis(200), junk_loop.poll()).await
        {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "junk not published");
    }
    let t0 = Instant::now();
    let expected = "rollcall_delivery_receipts_rejected_total{reason=\"malformed\"} 1";
    while !metrics.encode().contains(expected) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{}",
            metrics.encode()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept = rollcall_cloud::ingest::list_quarantine(&conn, None, 10).unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        (kept[0].reason.as_str(), kept[0].device_id.as_deref()),
        ("malformed", Some("dev-maria"))
    );
    let text = metrics.encode();
    assert!(
        text.contains("rollcall_delivery_receipts_total ")
            && !text.contains("rollcall_delivery_receipts_total 0"),
        "the agent's receipt is counted: {text}"
    );

    agent_stop.cancel();
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;
}

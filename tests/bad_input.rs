//! Bad input reaching the cloud over MQTT: each message lands in quarantine with the
//! right reason, valid traffic keeps flowing, and nothing crashes. The "device" here is
//! the test itself, signing with real keys, so that it can also misbehave.

use rollcall::testkit::{wait_for, TestCloud};
use rollcall_shared::dsse::{
    Envelope, KeyPair, PublicKey, DOWNLINK_PAYLOAD_TYPE, USAGE_PAYLOAD_TYPE,
};
use rollcall_shared::payload::{AckStatus, DownBody, Downlink, UsageEvent, UsageReport};
use rollcall_shared::topics::Topics;
use rollcall_shared::{DeviceId, EventKind, Seq};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

fn report(device: &str, report_seq: u64, first_seq: u64, n: u64, qty: u32) -> UsageReport {
    let now = chrono::Utc::now();
    UsageReport {
        v: 1,
        device_id: DeviceId::parse(device).unwrap(),
        report_seq,
        sent_at: now,
        boot_id: "test".into(),
        events: (first_seq..first_seq + n)
            .map(|s| UsageEvent {
                seq: Seq::new(s).unwrap(),
                kind: EventKind::parse("brew").unwrap(),
                qty,
                occurred_at: now,
                attrs: BTreeMap::new(),
                clock_suspect: false,
            })
            .collect(),
    }
}

struct Device {
    client: Client,
    acks: mpsc::Receiver<(String, Vec<u8>)>,
}

fn connect(url: &str, id: &str, subscribe: &[String]) -> Device {
    let u: rollcall_cloud::mqtt::BrokerUrl = url.parse().unwrap();
    let mut o = MqttOptions::new(id, u.host, u.port);
    o.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
    let (client, mut conn) = Client::new(o, 100);
    for s in subscribe {
        client.subscribe(s.clone(), QoS::AtLeastOnce).unwrap();
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send((p.topic.clone(), p.payload.to_vec())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    Device { client, acks: rx }
}

fn next_ack(d: &Device, cloud_key: &PublicKey) -> rollcall_shared::payload::Ack {
    let (_, payload) = d
        .acks
        .recv_timeout(Duration::from_secs(20))
        .expect("an ack within 20 s");
    let env = Envelope::from_json(&payload).unwrap();
    let body = env
        .verify(DOWNLINK_PAYLOAD_TYPE, cloud_key)
        .expect("acks are signed by the cloud");
    match Downlink::decode(&body).unwrap().body {
        DownBody::Ack(a) => a,
        other => panic!("expected an ack, got {other:?}"),
    }
}

fn reasons(cloud: &TestCloud) -> Vec<String> {
    cloud
        .quarantine()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn wait_reason(cloud: &TestCloud, reason: &str, count: usize) -> Vec<Value> {
    wait_for(
        &format!("{count} quarantine rows with reason {reason}"),
        Duration::from_secs(20),
        || {
            let rows: Vec<Value> = cloud
                .quarantine()
                .ok()?
                .into_iter()
                .filter(|r| r["reason"] == reason)
                .collect();
            (rows.len() >= count).then_some(rows)
        },
    )
    .unwrap()
}

#[test]
fn each_kind_of_bad_message_is_quarantined_with_its_reason_and_valid_traffic_continues() {
    let cloud = TestCloud::start().unwrap();
    let cloud_key = PublicKey::from_base64(&cloud.public_key).unwrap();
    let topics = Topics::default();
    cloud.add_member("m1", "Maria Rossi").unwrap();
    let k1 = KeyPair::generate();
    let k2 = KeyPair::generate();
    cloud
        .add_device("dev-a", "m1", &k1.public().to_base64())
        .unwrap();
    cloud
        .add_device("dev-b", "m1", &k2.public().to_base64())
        .unwrap();
    let a = DeviceId::parse("dev-a").unwrap();
    let dev = connect(&cloud.mqtt_url, "test-dev-a", &[topics.down(&a)]);
    std::thread::sleep(Duration::from_millis(300)); // let the subscription settle before the first ack

    // A good report is stored and acked (signed by the cloud).
    let good = report("dev-a", 1, 1, 3, 1);
    dev.client
        .publish(
            topics.usage(&a),
            QoS::AtLeastOnce,
            false,
            k1.sign(USAGE_PAYLOAD_TYPE, &good.encode()).to_json(),
        )
        .unwrap();
    let ack = next_ack(&dev, &cloud_key);
    assert_eq!(
        (ack.report_seq, ack.status, ack.stored),
        (1, AckStatus::Stored, 3)
    );

    // The same report re-sent (ack lost): acked again as a duplicate, nothing changes.
    let mut resent = good.clone();
    resent.sent_at += chrono::Duration::seconds(5);
    dev.client
        .publish(
            topics.usage(&a),
            QoS::AtLeastOnce,
            false,
            k1.sign(USAGE_PAYLOAD_TYPE, &resent.encode()).to_json(),
        )
        .unwrap();
    assert_eq!(next_ack(&dev, &cloud_key).status, AckStatus::Duplicate);

    // Tampered signature: payload changed after signing.
    let mut env = k1.sign(USAGE_PAYLOAD_TYPE, &report("dev-a", 2, 4, 1, 1).encode());
    env.payload = base64_of(&report("dev-a", 2, 4, 1, 99).encode());
    dev.client
        .publish(topics.usage(&a), QoS::AtLeastOnce, false, env.to_json())
        .unwrap();
    wait_reason(&cloud, "bad_signature", 1);

    // Wrong device key: dev-b's key speaking for dev-a.
    let forged = k2.sign(USAGE_PAYLOAD_TYPE, &report("dev-a", 2, 4, 1, 1).encode());
    dev.client
        .publish(topics.usage(&a), QoS::AtLeastOnce, false, forged.to_json())
        .unwrap();
    wait_reason(&cloud, "bad_signature", 2);

    // dev-b signing a report that claims to be dev-a's, on its own topic.
    let b = DeviceId::parse("dev-b").unwrap();
    let claim = k2.sign(USAGE_PAYLOAD_TYPE, &report("dev-a", 1, 1, 1, 1).encode());
    dev.client
        .publish(topics.usage(&b), QoS::AtLeastOnce, false, claim.to_json())
        .unwrap();
    wait_reason(&cloud, "device_mismatch", 1);

    // Replayed: report 1 again with different content; and an event seq reused.
    let replay = report("dev-a", 1, 1, 3, 7);
    dev.client
        .publish(
            topics.usage(&a),
            QoS::AtLeastOnce,
            false,
            k1.sign(USAGE_PAYLOAD_TYPE, &replay.encode()).to_json(),
        )
        .unwrap();
    assert_eq!(next_ack(&dev, &cloud_key).status, AckStatus::Rejected);
    let reuse = report("dev-a", 2, 2, 1, 5);
    dev.client
        .publish(
            topics.usage(&a),
            QoS::AtLeastOnce,
            false,
            k1.sign(USAGE_PAYLOAD_TYPE, &reuse.encode()).to_json(),
        )
        .unwrap();
    assert_eq!(next_ack(&dev, &cloud_key).status, AckStatus::Rejected);
    wait_reason(&cloud, "replayed", 2);

    // Malformed JSON, an oversize payload, and an unknown version.
    dev.client
        .publish(
            topics.usage(&a),
            QoS::AtLeastOnce,
            false,
            b"{not json".to_vec(),
        )
        .unwrap();
    wait_reason(&cloud, "malformed", 1);
    dev.client
        .publish(
            topics.usage(&a),
            QoS::AtLeastOnce,
            false,
            vec![b'x'; 600 * 1024],
        )
        .unwrap();
    wait_reason(&cloud, "too_large", 1);
    let mut v2: Value = serde_json::from_slice(&report("dev-a", 3, 5, 1, 1).encode()).unwrap();
    v2["v"] = 2.into();
    let env = k1.sign(USAGE_PAYLOAD_TYPE, &serde_json::to_vec(&v2).unwrap());
    dev.client
        .publish(topics.usage(&a), QoS::AtLeastOnce, false, env.to_json())
        .unwrap();
    wait_reason(&cloud, "unsupported_version", 1);
    assert_eq!(
        next_ack(&dev, &cloud_key).status,
        AckStatus::Rejected,
        "a signed unsupported report is acked as rejected"
    );

    // Far behind the replay window (default 4096 reports).
    let ahead = report("dev-a", 10_000, 100, 1, 1);
    dev.client
        .publish(
            topics.usage(&a),
            QoS::AtLeastOnce,
            false,
            k1.sign(USAGE_PAYLOAD_TYPE, &ahead.encode()).to_json(),
        )
        .unwrap();
    assert_eq!(next_ack(&dev, &cloud_key).status, AckStatus::Stored);
    let behind = report("dev-a", 5, 50, 1, 1);
    dev.client
        .publish(
            topics.usage(&a),
            QoS::AtLeastOnce,
            false,
            k1.sign(USAGE_PAYLOAD_TYPE, &behind.encode()).to_json(),
        )
        .unwrap();
    assert_eq!(next_ack(&dev, &cloud_key).status, AckStatus::Rejected);
    wait_reason(&cloud, "replayed", 3);

    // Unknown device: held, then ingested when registered.
    let k3 = KeyPair::generate();
    let c = DeviceId::parse("dev-c").unwrap();
    let held = report("dev-c", 1, 1, 4, 2);
    dev.client
        .publish(
            topics.usage(&c),
            QoS::AtLeastOnce,
            false,
            k3.sign(USAGE_PAYLOAD_TYPE, &held.encode()).to_json(),
        )
        .unwrap();
    let rows = wait_reason(&cloud, "unknown_device", 1);
    assert_eq!(rows[0]["state"], "held");
    assert_eq!(rows[0]["device_id"], "dev-c");
    cloud.add_member("m2", "Bo Chen").unwrap();
    let out = cloud
        .add_device("dev-c", "m2", &k3.public().to_base64())
        .unwrap();
    assert_eq!(out["held_released"], 1);
    let m2 = cloud.wait_events("m2", 4, Duration::from_secs(10)).unwrap();
    assert_eq!(m2["usage"]["by_kind"]["brew"], 8);

    // Through all of it, the cloud stayed up and kept exactly the valid events.
    let m1 = cloud.member("m1").unwrap();
    assert_eq!(
        m1["usage"]["events"], 4,
        "3 from report 1 and 1 from report 10000"
    );
    assert_eq!(m1["usage"]["by_kind"]["brew"], 4);
    let metrics = http_get(&cloud.http_url, "/metrics");
    assert!(
        metrics.contains("rollcall_ingest_rejected_total{reason=\"bad_signature\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("rollcall_ingest_rejected_total{reason=\"too_large\"} 1"));
    let r = reasons(&cloud);
    for want in [
        "bad_signature",
        "device_mismatch",
        "replayed",
        "malformed",
        "too_large",
        "unsupported_version",
        "unknown_device",
    ] {
        assert!(r.iter().any(|x| x == want), "missing {want} in {r:?}");
    }
    assert!(http_get(&cloud.http_url, "/healthz").contains("\"ok\""));

    // The operator clears the refused messages; the held ones stay until purged too.
    let purge = |state: &str| {
        cloud.cli(&[
            "quarantine",
            "purge",
            "--older-than-days",
            "0",
            "--state",
            state,
        ])
    };
    let e = purge("gone").unwrap_err().to_string();
    assert!(e.contains("invalid value 'gone'"), "{e}");
    let out: Value = serde_json::from_str(&purge("rejected").unwrap()).unwrap();
    assert!(out["purged"].as_u64().unwrap() >= 6, "{out}");
    let left = cloud.quarantine().unwrap();
    assert!(
        !left.is_empty() && left.iter().all(|r| r["state"] != "rejected"),
        "{left:?}"
    );
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A minimal HTTP/1.0 GET over a raw socket (keeps the test free of an HTTP client crate).
pub fn http_get(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

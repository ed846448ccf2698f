//! End-to-end: real agents and a real cloud over a real broker, on ephemeral ports and
//! temp dirs. Every event recorded appears exactly once in the store, across restarts,
//! `kill -9` and broker outages.

use rollcall::testkit::{wait_for, Mosquitto, TestAgent, TestCloud};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);

fn agent(cloud: &TestCloud, device: &str, member: &str, mqtt_url: &str) -> TestAgent {
    let a = TestAgent::new(device, mqtt_url, &cloud.public_key, "").unwrap();
    cloud
        .add_device(&a.device_id, member, &a.public_key)
        .unwrap();
    a
}

/// Asserts the store holds exactly `seqs` for `device`: none lost, none duplicated.
fn assert_exactly(cloud: &TestCloud, device: &str, mut seqs: Vec<u64>) {
    seqs.sort_unstable();
    let stored = cloud.stored_seqs(device).unwrap();
    assert_eq!(
        stored.len(),
        seqs.len(),
        "{device}: stored {} events, recorded {}",
        stored.len(),
        seqs.len()
    );
    assert_eq!(
        stored, seqs,
        "{device}: stored seqs differ from recorded ones"
    );
}

fn drained(a: &TestAgent) -> bool {
    a.status().map(|s| s["outbox_depth"] == 0).unwrap_or(false)
}

fn two_agents_thousand_events(cloud: &TestCloud, mqtt_url: &str) {
    cloud.add_member("m1", "Maria Rossi").unwrap();
    let mut a = agent(cloud, "coffee-a", "m1", mqtt_url);
    let mut b = agent(cloud, "coffee-b", "m1", mqtt_url);
    a.start().unwrap();
    b.start().unwrap();
    let (sa, sb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.record_via_socket("brew", 600).unwrap());
        let tb = s.spawn(|| b.record_via_socket("rinse", 400).unwrap());
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let m = cloud.wait_events("m1", 1000, DEADLINE).unwrap();
    let brew: u64 = (0..600).map(|i| 1 + i % 3).sum();
    let rinse: u64 = (0..400).map(|i| 1 + i % 3).sum();
    assert_eq!(m["usage"]["by_kind"]["brew"], brew);
    assert_eq!(m["usage"]["by_kind"]["rinse"], rinse);
    assert_exactly(cloud, "coffee-a", sa);
    assert_exactly(cloud, "coffee-b", sb);
    wait_for("both outboxes to drain after acks", DEADLINE, || {
        (drained(&a) && drained(&b)).then_some(())
    })
    .unwrap();
    // Clean shutdown on SIGTERM.
    for ag in [&mut a, &mut b] {
        let st = ag
            .proc
            .as_mut()
            .unwrap()
            .terminate(Duration::from_secs(10))
            .unwrap();
        assert!(st.success(), "agent exited with {st}");
    }
}

#[test]
fn a_thousand_events_from_two_agents_arrive_exactly_once_through_the_embedded_broker() {
    let cloud = TestCloud::start().unwrap();
    let url = cloud.mqtt_url.clone();
    two_agents_thousand_events(&cloud, &url);
}

#[test]
fn agents_and_ingest_interoperate_through_mosquitto() {
    let Some(mosq) = Mosquitto::start().unwrap() else {
        return;
    };
    let cloud = TestCloud::start_with(Some(mosq.url())).unwrap();
    assert_eq!(cloud.mqtt_url, mosq.url());
    two_agents_thousand_events(&cloud, &mosq.url());
}

#[test]
fn cloud_killed_mid_ingest_and_restarted_loses_and_duplicates_nothing() {
    let mut cloud = TestCloud::start().unwrap();
    cloud.add_member("m1", "Ann Lee").unwrap();
    let url = cloud.mqtt_url.clone();
    let mut a = agent(&cloud, "printer-a", "m1", &url);
    a.start().unwrap();
    let mut seqs = a.record_via_socket("print_page", 1500).unwrap();
    // Kill the cloud (and its embedded broker) while reports are flowing.
    wait_for("ingest to be under way", DEADLINE, || {
        (cloud.stored_seqs("printer-a").ok()?.len() > 10).then_some(())
    })
    .unwrap();
    cloud.kill9();
    seqs.extend(a.record_via_socket("print_page", 500).unwrap());
    cloud.spawn().unwrap();
    cloud.wait_events("m1", 2000, DEADLINE).unwrap();
    assert_exactly(&cloud, "printer-a", seqs);
    wait_for("the outbox to drain", DEADLINE, || {
        drained(&a).then_some(())
    })
    .unwrap();
}

#[test]
fn a_broker_restart_loses_and_duplicates_nothing() {
    let Some(mut mosq) = Mosquitto::start().unwrap() else {
        return;
    };
    let cloud = TestCloud::start_with(Some(mosq.url())).unwrap();
    cloud.add_member("m1", "Ann Lee").unwrap();
    let mut a = agent(&cloud, "bike-a", "m1", &mosq.url());
    a.start().unwrap();
    let mut seqs = a.record_via_socket("ride", 800).unwrap();
    mosq.kill9();
    seqs.extend(a.record_via_socket("ride", 400).unwrap());
    mosq.spawn().unwrap();
    cloud.wait_events("m1", 1200, DEADLINE).unwrap();
    assert_exactly(&cloud, "bike-a", seqs);
}

#[test]
fn an_agent_killed_between_record_and_ack_resends_after_restart() {
    let cloud = TestCloud::start().unwrap();
    cloud.add_member("m1", "Ann Lee").unwrap();
    let url = cloud.mqtt_url.clone();
    let mut a = agent(&cloud, "coffee-k", "m1", &url);
    // Recorded with the daemon down; the daemon starts and reports them.
    let mut seqs: Vec<u64> = (0..20).map(|_| a.record("brew").unwrap()).collect();
    a.start().unwrap();
    cloud.wait_events("m1", 20, DEADLINE).unwrap();
    // The cloud (and its broker) stops answering: what the agent sends now sits in the
    // broker's socket, unacked. The agent is killed with reports in flight.
    let cloud_pid = cloud.proc.as_ref().expect("cloud runs").0.id() as i32;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(cloud_pid, libc::SIGSTOP) };
    let held = a.record_via_socket("brew", 300);
    let in_flight = held.as_ref().ok().map(|_| {
        wait_for("reports in flight", DEADLINE, || {
            let st = a.status().ok()?;
            (st["inflight_reports"].as_u64()? > 0).then_some(())
        })
    });
    a.kill9();
    // SAFETY: as above.
    unsafe { libc::kill(cloud_pid, libc::SIGCONT) };
    seqs.extend(held.unwrap());
    in_flight.expect("recorded").unwrap();
    let st = a.status().unwrap();
    assert_eq!(
        st["outbox_depth"], 300,
        "every event recorded after the cloud stopped was still unacked at the kill: {st}"
    );
    // The resumed cloud may store what was in flight and ack it to no one; the restarted
    // agent sends it again, and it is stored once.
    a.start().unwrap();
    cloud
        .wait_events("m1", seqs.len() as u64, DEADLINE)
        .unwrap();
    assert_exactly(&cloud, "coffee-k", seqs);
    wait_for("the outbox to drain", DEADLINE, || {
        drained(&a).then_some(())
    })
    .unwrap();
}

#[test]
fn an_agent_offline_with_thousands_of_events_queued_catches_up() {
    // The agent runs for a while with no broker at all, then the cloud comes up on its URL.
    let port = rollcall::testkit::free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let mut boot = TestCloud::start().unwrap();
    let cloud_key = boot.public_key.clone();
    boot.kill9();
    let mut a = TestAgent::new("coffee-off", &url, &cloud_key, "").unwrap();
    a.start().unwrap();
    let seqs = a.record_via_socket("brew", 5000).unwrap();
    let st = a.status().unwrap();
    assert_eq!(st["outbox_depth"], 5000);
    // Bring the same cloud (same key, same store) up on the agent's broker address.
    let mut cloud = boot;
    cloud.restart_on_mqtt_port(port).unwrap();
    cloud.add_member("m1", "Ann Lee").unwrap();
    cloud.add_device("coffee-off", "m1", &a.public_key).unwrap();
    cloud.wait_events("m1", 5000, DEADLINE).unwrap();
    assert_exactly(&cloud, "coffee-off", seqs);
    wait_for("the outbox to drain", DEADLINE, || {
        drained(&a).then_some(())
    })
    .unwrap();
    // It kept trying while there was no broker, and is connected now.
    let st = a.status().unwrap();
    assert_eq!(st["connection"], "connected", "{st}");
}

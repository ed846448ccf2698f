//! End to end through the `rollcall-cloud` binary: the cloud is killed with SIGKILL while
//! webhook deliveries are in flight; after a restart every message is delivered and no
//! message is processed twice by the receiver (it deduplicates by `webhook-id`).

mod support;

use rollcall_shared::SystemClock;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const MEMBERS: usize = 40;

fn serve(config: &std::path::Path) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rollcall-cloud"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("ROLLCALL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The ready line.
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("http_url"), "{line}");
    child
}

fn cli(config: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_rollcall-cloud"))
        .args(["--config", config.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_in_flight_when_the_cloud_is_killed_are_all_delivered_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(
        vec![Reply::Slow(Duration::from_millis(400))],
        Arc::new(SystemClock),
    )
    .await;
    let data = dir.path().join("data");
    {
        let conn = rollcall_cloud::store::open_writer(&data).unwrap();
        let now = chrono::Utc::now();
        for i in 0..MEMBERS {
            let id = format!("m-{i:03}");
            add_member(
                &conn,
                &id,
                &format!("Member{i} Test"),
                Some("UTC"),
                None,
                "2025-01-10",
            );
            add_usage(
                &conn,
                &id,
                5,
                &(now - chrono::Duration::days(10)).to_rfc3339(),
                "latte",
            );
            set_state(&conn, &id, None, "active", now - chrono::Duration::days(30));
            set_state(&conn, &id, Some("active"), "lapsing", now);
        }
    }
    let config = dir.path().join("cloud.toml");
    std::fs::write(
        &config,
        format!(
            r#"
data_dir = "{data}"
[broker]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:0"
[scoring]
enabled = false
[outreach]
tick_interval_s = 1
[outreach.quiet_hours]
start = "00:00"
end = "00:00"
[[outreach.webhooks]]
name = "crm"
url = "{url}"
secrets = ["{secret}"]
[delivery]
allow_private_addresses = true
backoff_initial_ms = 300
backoff_max_ms = 1000
poll_interval_ms = 50
batch_size = 8
concurrency = 8
"#,
            data = data.display(),
            url = receiver.url(),
            secret = receiver.secret.to_whsec(),
        ),
    )
    .unwrap();

    let mut first = serve(&config);
    let t0 = Instant::now();
    // Kill while the receiver is holding several requests: they are in flight for sure.
    while receiver.received().len() < 10 || receiver.in_progress() < 4 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no deliveries started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Requests are in flight right now (the receiver takes 400 ms to answer each).
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let before_restart = receiver.received().len();
    let in_flight: i64 = rollcall_cloud::store::open_reader(&data)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM deliveries WHERE status = 'in_flight'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(in_flight > 0, "deliveries were in flight at the kill");
    assert!(before_restart < MEMBERS, "killed too late to test anything");

    let mut second = serve(&config);
    let t0 = Instant::now();
    loop {
        let distinct: BTreeSet<_> = receiver.received().into_iter().map(|r| r.id).collect();
        if distinct.len() >= MEMBERS {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "only {} of {MEMBERS} delivered",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let anything still due finish, then stop cleanly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    second.wait().unwrap();

    // The receiver, deduplicating by webhook-id, processes each member's message once.
    let got = receiver.received();
    assert_eq!(receiver.bad_signatures(), 0);
    let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &got {
        by_id
            .entry(r.id.clone())
            .or_default()
            .push(r.body["member"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(by_id.len(), MEMBERS);
    for (id, members) in &by_id {
        assert!(
            members.iter().all(|m| m == &members[0]),
            "{id}: one id, one member"
        );
    }
    let members: BTreeSet<_> = by_id.values().map(|m| m[0].clone()).collect();
    assert_eq!(members.len(), MEMBERS, "every member, each once");

    // The CLI contract.
    let deliveries = cli(&config, &["deliveries", "list", "--json"]);
    let deliveries = deliveries.as_array().unwrap();
    assert_eq!(deliveries.len(), MEMBERS);
    for d in deliveries {
        for k in ["id", "channel", "status", "attempts", "last_error"] {
            assert!(d.get(k).is_some(), "{k} in {d}");
        }
        assert_eq!(d["status"], "delivered", "{d}");
    }
    assert!(
        deliveries
            .iter()
            .any(|d| d["attempts"].as_u64().unwrap() >= 2),
        "some deliveries were in flight at the kill and were sent again"
    );
    let outreach = cli(&config, &["outreach", "list", "--json"]);
    let outreach = outreach.as_array().unwrap();
    assert_eq!(
        outreach.len(),
        MEMBERS,
        "nothing planned twice across the restart"
    );
    for o in outreach {
        for k in [
            "id",
            "member_id",
            "rule",
            "channel",
            "status",
            "reason",
            "body",
        ] {
            assert!(o.get(k).is_some(), "{k} in {o}");
        }
        assert_eq!(o["status"], "sent");
    }
}

//! `rollcall demo` end to end: starts, prints the ready line, serves the API with scored
//! members, lets `rollcall-cloud` work on the same data dir, stops cleanly on SIGINT
//! within seconds, and resumes on a second run.

use rollcall::testkit::{bins, wait_for};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Demo {
    child: Child,
    ready: Value,
}

impl Drop for Demo {
    /// A failing test must not leave the demo running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start(dir: &Path) -> Demo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["demo", "--members", "80", "--history", "45", "--seed", "4"])
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("rollcall demo starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(300))
        .expect("the demo prints its ready line");
    let ready: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
    Demo { child, ready }
}

fn stop_with_sigint(d: Demo) {
    let mut d = d;
    let t = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGINT) };
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "the demo did not stop within 15 s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "demo exited with {status}");
}

fn get(url: &str, token: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(url)
        .output()
        .expect("curl runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[test]
fn the_demo_runs_scores_the_fleet_stops_on_sigint_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let demo = start(dir.path());
    let r = &demo.ready;
    for key in ["console_url", "api_url", "token", "data_dir"] {
        assert!(r[key].is_string(), "ready line lacks {key}: {r}");
    }
    assert!(r["token"].as_str().unwrap().starts_with("rc_"));
    assert_eq!(r["resumed"], false);
    assert_eq!(Path::new(r["data_dir"].as_str().unwrap()), dir.path());
    let api = r["api_url"].as_str().unwrap();
    let token = r["token"].as_str().unwrap();

    // Everyone is scored, and the fleet is not all in one state.
    let (code, summary) = get(&format!("{api}/engagement/summary"), token);
    assert_eq!(code, 200, "{summary}");
    let counts = summary["counts"].as_object().unwrap();
    let total: u64 = counts.values().map(|v| v.as_u64().unwrap()).sum();
    // Every member who has joined so far is registered and scored (a few join later).
    let registered: u64 = rusqlite::Connection::open(dir.path().join("rollcall.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM members", [], |r| r.get(0))
        .unwrap();
    assert!(
        (70..=80).contains(&registered),
        "{registered} members registered"
    );
    assert_eq!(total, registered, "{summary}");
    // Members in every state, each with reasons.
    for state in ["new", "active", "champion", "lapsing", "lapsed"] {
        assert!(
            counts[state].as_u64().unwrap() > 0,
            "no {state} member: {counts:?}"
        );
        let (code, page) = get(
            &format!("{api}/engagement/members?state={state}&per_page=1"),
            token,
        );
        assert_eq!(code, 200, "{page}");
        let first = &page["members"][0];
        assert!(!first["reasons"].as_array().unwrap().is_empty(), "{first}");
        // ... and a greeting staff can read out.
        let (code, g) = get(
            &format!("{api}/members/{}/greeting", first["id"].as_str().unwrap()),
            token,
        );
        assert_eq!(code, 200, "{g}");
        assert!(g["greeting"].as_str().unwrap().starts_with("Hi "), "{g}");
    }

    // A member's score with reasons, and the cloud CLI on the same data dir meanwhile.
    let (code, score) = get(&format!("{api}/members/m00001/score"), token);
    assert_eq!(code, 200, "{score}");
    assert!(!score["reasons"].as_array().unwrap().is_empty(), "{score}");
    let out = Command::new(&bins().cloud)
        .args(["members", "show", "m00001", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(shown["usage"]["events"].as_u64().unwrap() > 0, "{shown}");
    assert!(shown["name"].as_str().unwrap().contains(' '));
    // Coffee machines ran low on pods during the history and ordered by themselves: the
    // orders were decided, recorded in the ledger, and the ledger verifies.
    let orders: u64 = rusqlite::Connection::open(dir.path().join("rollcall.db"))
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM orders WHERE status = 'accepted'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(orders >= 1, "no device-initiated order was accepted");
    let out = Command::new(&bins().cloud)
        .args(["ledger", "verify", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let verified: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verified["ok"], true, "{verified}");
    assert!(verified["entries"].as_u64().unwrap() >= orders);
    // The console is served, outreach and fulfilment reached the built-in webhook sink
    // with valid signatures, the engagement history has a day per day of history, and
    // the simulated phone line rings (its first call comes 5 s after ready).
    let console = r["console_url"].as_str().unwrap();
    assert!(console.ends_with("/console"), "{console}");
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            console,
        ])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        answer.starts_with("303 ") && answer.contains("/console/login"),
        "{answer}"
    );
    let db = rusqlite::Connection::open(dir.path().join("rollcall.db")).unwrap();
    let (sunk, valid): (u64, u64) = db
        .query_row(
            "SELECT COUNT(*), SUM(verified) FROM sink_messages",
            [],
            |r| Ok((r.get(0)?, r.get::<_, Option<u64>>(1)?.unwrap_or(0))),
        )
        .unwrap();
    assert!(
        sunk >= orders,
        "{sunk} messages in the sink for {orders} orders"
    );
    assert_eq!(sunk, valid);
    let days: u64 = db
        .query_row(
            "SELECT COUNT(DISTINCT day) FROM engagement_daily",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(days >= 20, "engagement history of {days} days");
    let (code, page) = get(&format!("{api}/engagement/members?state=lapsing"), token);
    assert_eq!(code, 200, "{page}");
    wait_for("a simulated call", Duration::from_secs(30), || {
        let (code, calls) = get(&format!("{api}/calls"), token);
        (code == 200 && !calls.as_array()?.is_empty()).then_some(())
    })
    .unwrap();
    let events_before: u64 = {
        let conn = rusqlite::Connection::open(dir.path().join("rollcall.db")).unwrap();
        conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
            .unwrap()
    };
    stop_with_sigint(demo);

    // Second run on the same directory resumes: no replays, no duplicates, quickly ready.
    let again = start(dir.path());
    assert_eq!(again.ready["resumed"], true);
    let conn = rusqlite::Connection::open(dir.path().join("rollcall.db")).unwrap();
    let quarantined: u64 = conn
        .query_row("SELECT COUNT(*) FROM quarantine", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        quarantined, 0,
        "resuming must not reuse device sequence numbers"
    );
    let events_after: u64 = conn
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert!(events_after >= events_before);
    wait_for(
        "the resumed fleet to connect",
        Duration::from_secs(30),
        || {
            let online: u64 = conn
                .query_row(
                    "SELECT COUNT(*) FROM devices WHERE presence = 'online'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            (online > 0).then_some(())
        },
    )
    .unwrap();
    stop_with_sigint(again);
}

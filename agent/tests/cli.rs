//! The real `rollcall-agent` binary, run the way scripts run it.

mod common;

use common::{free_port, wait_until_blocking};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rollcall-agent");

/// A command with a clean environment (no ROLLCALL_* from the developer's shell).
fn agent(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ROLLCALL_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args);
    cmd
}

fn run(args: &[&str]) -> Output {
    agent(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn status_json(dir: &str) -> serde_json::Value {
    let o = run(&["status", "--json", "--data-dir", dir]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

#[test]
fn init_twice_prints_the_same_identity_and_keeps_the_key_private() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let first = run(&["init", "--data-dir", d]);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = run(&["--data-dir", d, "init"]);
    assert_eq!(stdout(&first), stdout(&second));
    assert_eq!(stdout(&first).lines().count(), 1, "exactly one line");
    let v: serde_json::Value = serde_json::from_str(&stdout(&first)).unwrap();
    let id = v["device_id"].as_str().unwrap();
    assert!(id.starts_with("dev-") && id.len() == 20, "{id}");
    let key =
        rollcall_shared::dsse::PublicKey::from_base64(v["public_key"].as_str().unwrap()).unwrap();
    assert_eq!(id, format!("dev-{}", &key.keyid()[..16]));
    let mode = std::fs::metadata(dir.path().join("device.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn init_uses_the_device_id_from_the_flag_or_environment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let o = agent(&["init"])
        .env("ROLLCALL_DATA_DIR", d)
        .env("ROLLCALL_DEVICE_ID", "from-env")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("\"device_id\":\"from-env\""),
        "{}",
        stdout(&o)
    );
    // Without the variable, the stored id is kept; a conflicting flag is refused.
    assert!(stdout(&run(&["init", "--data-dir", d])).contains("from-env"));
    let o = run(&["init", "--data-dir", d, "--device-id", "other"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("belongs to device"), "{}", stderr(&o));
}

#[test]
fn record_prints_increasing_seqs_and_status_shows_the_depth() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut seqs = Vec::new();
    for args in [
        vec!["record", "brew", "--data-dir", d],
        vec![
            "record",
            "brew",
            "--qty",
            "2",
            "--attr",
            "drink=latte",
            "--data-dir",
            d,
        ],
        vec![
            "--data-dir",
            d,
            "record",
            "print_page",
            "--at",
            "2026-11-24T08:00:00Z",
            "--attr",
            "a=1",
            "--attr",
            "b=2",
        ],
    ] {
        let o = run(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        seqs.push(
            stdout(&o)
                .trim()
                .parse::<u64>()
                .expect("the seq alone on stdout"),
        );
    }
    assert_eq!(seqs, [1, 2, 3]);
    let s = status_json(d);
    assert_eq!(s["outbox_depth"], 3);
    assert_eq!(s["unsent_events"], 3);
    assert_eq!(s["inflight_reports"], 0);
    assert_eq!(s["connection"], "never_ran");
    assert_eq!(s["daemon_running"], false);
    let table = run(&["status", "--data-dir", d]);
    assert!(
        stdout(&table).contains("outbox depth") && stdout(&table).contains("3 events"),
        "{}",
        stdout(&table)
    );
}

#[test]
fn concurrent_record_processes_get_distinct_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(run(&["record", "brew", "--data-dir", d]).status.success());
    let children: Vec<Child> = (0..8)
        .map(|_| {
            agent(&["record", "brew", "--data-dir", d])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut seqs: Vec<u64> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            stdout(&o).trim().parse().unwrap()
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (2..=9).collect::<Vec<_>>());
}

#[test]
fn a_suspect_time_is_recorded_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let o = run(&[
        "record",
        "brew",
        "--at",
        "2099-01-01T00:00:00Z",
        "--data-dir",
        d,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "1");
    assert!(stderr(&o).contains("clock_suspect"), "{}", stderr(&o));
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        vec!["record", "Brew", "--data-dir", d],
        vec!["record", "brew", "--qty", "0", "--data-dir", d],
        vec!["record", "brew", "--qty", "lots", "--data-dir", d],
        vec!["record", "brew", "--at", "yesterday", "--data-dir", d],
        vec!["record", "brew", "--attr", "novalue", "--data-dir", d],
        vec![
            "record",
            "brew",
            "--attr",
            "a=1",
            "--attr",
            "a=2",
            "--data-dir",
            d,
        ],
        vec!["record", "--data-dir", d],
        vec!["launch", "--data-dir", d],
        vec!["record", "brew", "--device-id", "bad/id", "--data-dir", d],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(
            err.contains("Usage") || err.contains("--help"),
            "{args:?} must point to the usage: {err}"
        );
        assert!(stdout(&o).is_empty());
    }
    assert_eq!(status_json(d)["outbox_depth"], 0, "nothing was recorded");
}

#[test]
fn a_full_outbox_refuses_with_the_limit_and_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_data(
        dir.path(),
        "[outbox]\nmax_events = 3\nwhen_full = \"reject\"\n",
    );
    let c = config.as_str();
    for expected in 1..=3 {
        let o = run(&["record", "brew", "--config", c]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o).trim(), expected.to_string());
    }
    let o = run(&["record", "brew", "--config", c]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
    assert!(
        stderr(&o).contains("outbox full: outbox.max_events = 3 reached"),
        "{}",
        stderr(&o)
    );
    let s = run(&["status", "--json", "--config", c]);
    let s: serde_json::Value = serde_json::from_str(&stdout(&s)).unwrap();
    assert_eq!(
        (s["outbox_depth"].as_u64(), s["rejected_full"].as_u64()),
        (Some(3), Some(1))
    );
}

#[test]
fn configuration_errors_name_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[uplink]\nbatch_max_events = 5000\n").unwrap();
    let o = run(&["status", "--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("agent.toml: uplink.batch_max_events: must be between 1 and 1000"),
        "{err}"
    );
    std::fs::write(&config, "[uplink]\nbatch_size = 5\n").unwrap();
    let err = stderr(&run(&["status", "--config", config.to_str().unwrap()]));
    assert!(
        err.contains("agent.toml") && err.contains("batch_size"),
        "{err}"
    );
    let o = run(&["status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--data-dir"), "{}", stderr(&o));
}

#[test]
fn an_invalid_override_is_blamed_on_its_flag_or_variable_not_on_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_data(dir.path(), "[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n");
    let c = config.as_str();
    let o = agent(&["status", "--config", c])
        .env("ROLLCALL_MQTT_URL", "bogus")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("ROLLCALL_MQTT_URL: mqtt.url: "), "{err}");
    assert!(
        !err.contains("agent.toml"),
        "the file holds a valid url: {err}"
    );
    let err = stderr(&run(&["status", "--config", c, "--mqtt-url", "bogus"]));
    assert!(err.contains("--mqtt-url: mqtt.url: "), "{err}");
    // A flag beats the variable, and it is the flag that is named.
    let o = agent(&["status", "--config", c, "--mqtt-url", "also-bogus"])
        .env("ROLLCALL_MQTT_URL", "mqtt://127.0.0.1:1")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(err.contains("--mqtt-url: mqtt.url: "), "{err}");
}

/// Writes `dir/agent.toml`: `data_dir` = `dir/data`, then `rest`; returns the file's path.
fn config_with_data(dir: &Path, rest: &str) -> String {
    let config = dir.join("agent.toml");
    let data = dir.join("data");
    std::fs::write(
        &config,
        format!("data_dir = {:?}\n{rest}", data.to_str().unwrap()),
    )
    .unwrap();
    config.to_str().unwrap().to_owned()
}

/// A configuration file for `run` in `dir` (data in `dir` too), trusting a new cloud key.
fn daemon_config(dir: &Path) -> String {
    let config = dir.join("agent.toml");
    let cloud_key = rollcall_shared::dsse::KeyPair::generate().public();
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\ncloud_public_key = \"{}\"\n",
            dir.to_str().unwrap(),
            cloud_key.to_base64()
        ),
    )
    .unwrap();
    config.to_str().unwrap().to_owned()
}

#[test]
fn run_without_cloud_public_key_refuses_to_start_and_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = config_with_data(dir.path(), "");
    let c = config.as_str();
    let url = format!("mqtt://127.0.0.1:{}", free_port());
    let o = run(&["run", "--config", c, "--mqtt-url", &url]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{c}: cloud_public_key: is required by `rollcall-agent run`"
        )),
        "{err}"
    );
    assert!(err.contains("rollcall-cloud keys show"), "{err}");
    assert!(
        !data.join("agent.lock").exists() && !data.join("outbox.db").exists(),
        "refused before touching the data directory"
    );
    // Without a file, the message says where the key goes.
    let d = data.to_str().unwrap();
    let o = run(&["run", "--data-dir", d, "--mqtt-url", &url]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cloud_public_key") && stderr(&o).contains("--config FILE"),
        "{}",
        stderr(&o)
    );
    // The other commands do not need the key.
    assert!(run(&["init", "--config", c]).status.success());
    assert!(run(&["record", "brew", "--config", c]).status.success());
    assert_eq!(status_json(d)["outbox_depth"], 1);
    assert_eq!(status_json(d)["connection"], "never_ran");
}

/// A daemon with no broker to talk to: socket capture, status, the lock, clean stop.
#[test]
fn the_daemon_serves_the_socket_holds_the_lock_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let c = daemon_config(dir.path());
    // Nothing listens on this port: the daemon keeps backing off, which is fine here.
    let url = format!("mqtt://127.0.0.1:{}", free_port());
    let mut daemon = agent(&[
        "run",
        "--config",
        &c,
        "--mqtt-url",
        &url,
        "--device-id",
        "dev-cli",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let sock = dir.path().join("agent.sock");
    wait_until_blocking("the socket appears", Duration::from_secs(20), || {
        UnixStream::connect(&sock).is_ok()
    });
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o660
    );

    let stream = UnixStream::connect(&sock).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    writer
        .write_all(b"{\"kind\":\"brew\",\"attrs\":{\"drink\":\"latte\"}}\n{\"kind\":\"nope!\"}\n")
        .unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), r#"{"ok":true,"seq":1}"#);
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":false"), "{line}");

    // The CLI records alongside the daemon.
    let o = run(&["record", "brew", "--data-dir", d]);
    assert_eq!(stdout(&o).trim(), "2", "{}", stderr(&o));

    let s = status_json(d);
    assert_eq!(s["daemon_running"], true);
    assert_eq!(s["daemon_pid"], daemon.id());
    assert_eq!(s["connection"], "disconnected");
    assert_eq!(s["outbox_depth"], 2);
    assert_eq!(s["device_id"], "dev-cli");

    // A second daemon for the same directory is refused.
    let second = run(&["run", "--config", &c, "--mqtt-url", &url]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("already running"),
        "{}",
        stderr(&second)
    );

    // SIGTERM: clean exit 0 within a few seconds, socket removed, state written.
    let pid = daemon.id() as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = daemon.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "daemon did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(status.success(), "exit {status}: {err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!Path::new(&sock).exists(), "the socket file is removed");
    let s = status_json(d);
    assert_eq!(s["connection"], "stopped");
    assert_eq!(s["daemon_running"], false);
    assert_eq!(
        s["outbox_depth"], 2,
        "nothing is lost or deleted without an ack"
    );
}

#[test]
fn messages_lists_what_the_cloud_sent_as_text_or_json() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let empty = run(&["messages", "--json", "--data-dir", d]);
    assert!(empty.status.success(), "{}", stderr(&empty));
    assert_eq!(stdout(&empty).trim(), "[]");
    // What the uplink keeps when a display message arrives.
    let outbox = rollcall_agent::outbox::SqliteOutbox::open(
        &dir.path().join("outbox.db"),
        Default::default(),
        std::sync::Arc::new(rollcall_shared::SystemClock),
    )
    .unwrap();
    use rollcall_agent::outbox::Outbox;
    outbox
        .store_message(&rollcall_shared::payload::DeviceMessage {
            id: "outreach:1".into(),
            title: "Welcome back, Maria".into(),
            body: "It is good to see your machine busy again.".into(),
        })
        .unwrap();
    drop(outbox);
    let json = run(&["messages", "--json", "--data-dir", d]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(v[0]["id"], "outreach:1");
    assert_eq!(v[0]["title"], "Welcome back, Maria");
    let text = stdout(&run(&["messages", "--data-dir", d]));
    assert!(
        text.contains("Welcome back, Maria") && text.contains("busy again"),
        "{text}"
    );
}

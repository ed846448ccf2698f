//! `rollcall-cloud members add` as a user runs it: an update keeps what it does not give,
//! `--clear` removes a field, and a contradiction is a usage error.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn cloud(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rollcall-cloud"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("rollcall-cloud runs")
}

fn show(dir: &Path, id: &str) -> Value {
    let out = cloud(dir, &["members", "show", id, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn an_update_keeps_what_it_does_not_give_and_clear_removes_a_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let add = cloud(
        d,
        &[
            "members",
            "add",
            "--id",
            "m1",
            "--name",
            "Ann Lee",
            "--phone",
            "(212) 555-0142",
            "--email",
            "ann@example.com",
            "--lang",
            "es",
        ],
    );
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let renamed = cloud(d, &["members", "add", "--id", "m1", "--name", "Ann Smith"]);
    assert!(renamed.status.success());
    let v = show(d, "m1");
    assert_eq!(
        (&v["name"], &v["phone"], &v["email"], &v["lang"]),
        (
            &Value::from("Ann Smith"),
            &Value::from("+12125550142"),
            &Value::from("ann@example.com"),
            &Value::from("es")
        )
    );
    let cleared = cloud(
        d,
        &[
            "members",
            "add",
            "--id",
            "m1",
            "--name",
            "Ann Smith",
            "--clear",
            "phone",
            "--clear",
            "lang",
        ],
    );
    assert!(cleared.status.success());
    let v = show(d, "m1");
    assert!(v["phone"].is_null() && v["lang"].is_null(), "{v}");
    assert_eq!(v["email"], "ann@example.com");

    let both = cloud(
        d,
        &[
            "members",
            "add",
            "--id",
            "m1",
            "--name",
            "A",
            "--email",
            "a@example.com",
            "--clear",
            "email",
        ],
    );
    assert_eq!(both.status.code(), Some(2));
    let err = String::from_utf8_lossy(&both.stderr);
    assert!(
        err.contains("--email and --clear email contradict each other"),
        "{err}"
    );
    assert_eq!(show(d, "m1")["email"], "ann@example.com", "nothing changed");
}

#[test]
fn a_second_serve_on_the_same_data_directory_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let held = rollcall_cloud::serve_lock::ServeLock::acquire(dir.path()).unwrap();
    let out = cloud(
        dir.path(),
        &[
            "serve",
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let me = std::process::id();
    assert!(
        err.contains(&format!(
            "another rollcall-cloud serve (pid {me}) is running"
        )),
        "{err}"
    );
    drop(held);
}

//! `rollcall bench …` prints one JSON object per run with its figures and the host's CPU
//! steal over the run (small runs here; the figures themselves are for `docs/benchmarks.md`).

use serde_json::Value;
use std::process::Command;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .arg("bench")
        .args(args)
        .output()
        .expect("rollcall runs");
    assert!(
        out.status.success(),
        "bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line: {text:?}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// `host_steal_pct` is present: a percentage on Linux, null where `/proc/stat` is missing.
fn assert_steal(v: &Value) {
    let steal = v.get("host_steal_pct").expect("host_steal_pct is printed");
    if std::path::Path::new("/proc/stat").exists() {
        let p = steal.as_f64().expect("a number on Linux");
        assert!((0.0..=100.0).contains(&p), "{p}");
    } else {
        assert!(steal.is_null());
    }
}

#[test]
fn the_ledger_benchmark_prints_its_figures_with_the_hosts_steal() {
    let v = bench(&[
        "ledger",
        "--transactions",
        "60",
        "--devices",
        "3",
        "--verify-entries",
        "20",
    ]);
    assert_eq!(v["transactions"], 60);
    assert!(v["tx_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["verify_entries_per_s"].as_f64().unwrap() > 0.0);
    assert_steal(&v);
}

#[test]
fn the_scoring_benchmark_prints_its_figures_with_the_hosts_steal() {
    let v = bench(&["scoring", "--fit-members", "200", "--score-members", "300"]);
    assert_eq!(v["fit_members"], 200);
    assert_eq!(v["score_members"], 300);
    let counted: u64 = v["counts"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(counted, 300, "every scored member has a state: {v}");
    assert_steal(&v);
}

#[test]
fn a_bad_benchmark_argument_gets_a_usage_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["bench", "ledger", "--transactions", "many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid value 'many' for '--transactions") && err.contains("--help"),
        "{err}"
    );
}

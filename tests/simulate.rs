//! `rollcall simulate` end to end: the real agent code in process, the real cloud with its
//! embedded broker, deterministic for a seed, and the ground truth agreeing with the store.

use rollcall::sim::Truth;
use rusqlite::Connection;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

fn simulate(dir: &Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .arg("simulate")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("rollcall runs");
    assert!(
        out.status.success(),
        "simulate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("summary {line:?}: {e}"))
}

type EventRow = (String, i64, String, i64, i64, bool);

fn stored_events(dir: &Path) -> Vec<EventRow> {
    let conn = Connection::open(dir.join("rollcall.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT device_id, seq, kind, qty, occurred_ms, clock_suspect FROM events ORDER BY device_id, seq")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[test]
fn the_same_seed_gives_the_same_truth_and_the_same_stored_events() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A fixed window, so both runs plan the same calendar even across midnight.
    let start = (chrono::Utc::now() - chrono::Duration::days(21))
        .date_naive()
        .to_string();
    let args = [
        "--members",
        "40",
        "--start",
        &start,
        "--days",
        "0",
        "--seed",
        "5",
    ];
    let sa = simulate(a.path(), &args);
    let sb = simulate(b.path(), &args);
    let recorded = sa["events_recorded"].as_u64().unwrap();
    assert!(
        recorded > 300,
        "40 members over three weeks record more than {recorded} events"
    );
    // Everything recorded by a device that is online at the end reached the store once.
    assert_eq!(
        sa["events_acked"].as_u64().unwrap() + sa["events_pending"].as_u64().unwrap(),
        recorded
    );
    let (ea, eb) = (stored_events(a.path()), stored_events(b.path()));
    assert_eq!(ea.len() as u64, sa["events_acked"].as_u64().unwrap());
    // Same seed and window: the same events, field by field.
    let shape = |e: &[EventRow]| -> Vec<(String, i64, String, i64, i64)> {
        e.iter()
            .map(|(d, s, k, q, t, _)| (d.clone(), *s, k.clone(), *q, *t))
            .collect()
    };
    // The runs end at slightly different instants ("now"); compare what both covered.
    let end_ms = |s: &Value| {
        chrono::DateTime::parse_from_rfc3339(s["sim_end"].as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let until = end_ms(&sa).min(end_ms(&sb)) - 60_000;
    let covered =
        |e: &[EventRow]| -> Vec<EventRow> { e.iter().filter(|e| e.4 < until).cloned().collect() };
    assert_eq!(shape(&covered(&ea)), shape(&covered(&eb)));
    assert!(covered(&ea).len() as u64 > recorded * 9 / 10);
    let (ta, tb) = (
        Truth::read(&a.path().join("truth.json")).unwrap(),
        Truth::read(&b.path().join("truth.json")).unwrap(),
    );
    if ta.end == tb.end {
        assert_eq!(ta, tb);
    }
    assert_eq!(ta.members.len(), 40);

    // The truth's active days are the days the store saw usage, for members whose devices
    // had no offline or wrong-clock spell.
    let conn = Connection::open(a.path().join("rollcall.db")).unwrap();
    let mut checked = 0;
    for m in &ta.members {
        if m.devices
            .iter()
            .any(|d| d.offline.is_some() || d.clock_wrong.is_some())
        {
            continue;
        }
        let tz: chrono_tz::Tz = m.tz.parse().unwrap();
        let mut stmt = conn
            .prepare("SELECT occurred_ms FROM events WHERE member_id = ?1")
            .unwrap();
        let days: BTreeSet<chrono::NaiveDate> = stmt
            .query_map([&m.id], |r| r.get::<_, i64>(0))
            .unwrap()
            .map(|t| {
                chrono::DateTime::from_timestamp_millis(t.unwrap())
                    .unwrap()
                    .with_timezone(&tz)
                    .date_naive()
            })
            .filter(|d| *d < ta.end)
            .collect();
        let truth: BTreeSet<_> = m.active_days.iter().copied().collect();
        assert_eq!(days, truth, "active days of {} ({})", m.id, m.profile);
        checked += 1;
    }
    assert!(checked > 25, "only {checked} members checked");

    // Members are registered with their contact details.
    let mut by_profile: BTreeMap<String, usize> = BTreeMap::new();
    for m in &ta.members {
        *by_profile.entry(m.profile.clone()).or_default() += 1;
        let (name, phone): (String, String) = conn
            .query_row(
                "SELECT name, phone FROM members WHERE id = ?1",
                [&m.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(name, m.name);
        assert!(phone.starts_with('+'));
    }
    assert!(by_profile.len() >= 5, "profiles {by_profile:?}");
}

#[test]
fn compressed_time_runs_days_of_live_usage_in_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let s = simulate(
        dir.path(),
        &[
            "--members",
            "20",
            "--days",
            "3",
            "--speed",
            "86400",
            "--seed",
            "2",
        ],
    );
    let start = chrono::DateTime::parse_from_rfc3339(s["sim_start"].as_str().unwrap()).unwrap();
    let end = chrono::DateTime::parse_from_rfc3339(s["sim_end"].as_str().unwrap()).unwrap();
    assert!(
        (end - start).num_hours() >= 72,
        "simulated {start} to {end}"
    );
    assert!(s["elapsed_s"].as_f64().unwrap() < 60.0);
    assert!(s["events_acked"].as_u64().unwrap() > 20);
    let events = stored_events(dir.path());
    let days: BTreeSet<i64> = events
        .iter()
        .filter(|e| !e.5)
        .map(|e| e.4 / 86_400_000)
        .collect();
    assert!(days.len() >= 3, "usage on {} distinct days", days.len());
}

#[test]
fn bad_arguments_get_a_usage_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["simulate", "--members", "3"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--history"));
    let out = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["simulate", "--members", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'lots' for '--members"));
    let fleet = dir.path().join("fleet.toml");
    std::fs::write(&fleet, "[members]\nnew_share = 2.0\n[device_types.x]\nweight = 1\nmodels = [\"X\"]\nplan = \"P\"\n[[device_types.x.usage]]\nkind = \"use\"\nuses = [1, 1]\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["simulate", "--history", "1", "--fleet"])
        .arg(&fleet)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fleet.toml") && err.contains("members.new_share"),
        "{err}"
    );
}

/// `rollcall eval` on a simulated fleet: the model against both baselines, and the
/// trade-off sweep agreeing with the main figures at each predictor's own threshold.
#[test]
fn eval_scores_the_fleet_against_its_truth_and_sweeps_every_predictors_threshold() {
    let dir = tempfile::tempdir().unwrap();
    // Nine weeks: three of warm-up, then days whose next 14 days are known.
    let start = (chrono::Utc::now() - chrono::Duration::days(63))
        .date_naive()
        .to_string();
    simulate(
        dir.path(),
        &[
            "--members",
            "90",
            "--start",
            &start,
            "--days",
            "0",
            "--seed",
            "7",
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args([
            "eval",
            "--warmup",
            "21",
            "--tradeoff",
            "--json",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "eval failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["members"], 90, "{e}");
    assert!(e["dropouts"].as_u64().unwrap() > 0, "{e}");
    let auc = e["model"]["auc"].as_f64().unwrap();
    assert!(
        auc > 0.8,
        "the model ranks silences no better than chance: {auc}"
    );

    let t = &e["tradeoff"];
    let at = |series: &str, threshold: f64| -> &Value {
        t[series]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["threshold"].as_f64() == Some(threshold))
            .unwrap_or_else(|| panic!("{series} has no point at {threshold}: {t}"))
    };
    let same = |point: &Value, figures: &Value| {
        for k in [
            "precision",
            "recall",
            "median_lead_days",
            "false_alarms_per_1000",
        ] {
            assert_eq!(point[k], figures[k], "{k}: {point} vs {figures}");
        }
    };
    let configured = rollcall_cloud::config::ScoringConfig::default().lapsing_enter_below;
    same(at("model", configured), &e["model"]);
    same(at("silent_days", 14.0), &e["baselines"]["silent_14d"]);
    same(at("gap_multiple", 3.0), &e["baselines"]["gap_3x"]);

    // The most eager threshold of each baseline pays for its lead in false alarms. (Not
    // point by point: a flag already up on the window's first day is not counted, and a
    // stricter threshold loses the late catches, so neither series need be monotonic.)
    for series in ["silent_days", "gap_multiple"] {
        let points = t[series].as_array().unwrap();
        assert!(points.len() >= 8, "{series}: {points:?}");
        let fa = |p: &Value| p["false_alarms_per_1000"].as_f64().unwrap();
        let (first, last) = (&points[0], points.last().unwrap());
        assert!(fa(first) > 2.0 * fa(last), "{series}: {points:?}");
        let lead = |p: &Value| p["median_lead_days"].as_f64();
        if let (Some(a), Some(b)) = (lead(first), lead(last)) {
            assert!(a < b, "{series}: {points:?}");
        }
    }
    // Each comparison names a model point that really has no more false alarms.
    let comparisons = t["model_vs_baselines"].as_array().unwrap();
    assert_eq!(
        comparisons.len(),
        t["silent_days"].as_array().unwrap().len() + t["gap_multiple"].as_array().unwrap().len()
    );
    let mut found = 0;
    for c in comparisons {
        if c["model"].is_null() {
            continue;
        }
        found += 1;
        let (m, b) = (&c["model"], &c["point"]);
        assert!(
            m["false_alarms_per_1000"].as_f64() <= b["false_alarms_per_1000"].as_f64()
                && m["recall"].as_f64() >= b["recall"].as_f64(),
            "{c}"
        );
        same(m, at("model", m["threshold"].as_f64().unwrap()));
    }
    assert!(found > 0, "{comparisons:?}");
}

//! Scoring against a real store: usage import, `score`, `members show`, replay, the API.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use rollcall_cloud::config::ScoringConfig;
use rollcall_cloud::scoring::{self, State};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

fn start() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, 1).unwrap()
}

fn as_of() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 20, 0, 0).unwrap()
}

/// 160 members with different rhythms; a third of them stop at some point; `never`
/// joined and never used the device; `daily-stop` was active daily and stopped 9 days
/// before `as_of`; `weekdays` uses the device on weekdays only, to the last Friday.
fn fleet_csvs() -> (String, String) {
    let mut rng = fastrand::Rng::with_seed(42);
    let mut members = String::from("id,name,phone,email,tz,plan,joined\n");
    let mut usage = String::from("member_id,occurred_at,kind,qty\n");
    let end = as_of().date_naive();
    for i in 0..160 {
        let id = format!("m{i:03}");
        let joined = start() + Duration::days((i % 90) as i64);
        let tz = if i % 2 == 0 {
            "Europe/Berlin"
        } else {
            "America/New_York"
        };
        writeln!(members, "{id},Member {i},,,{tz},pods,{joined}").unwrap();
        let p = [0.85, 0.6, 0.15, 0.04, 0.3][i % 5];
        let stop = if i % 3 == 0 {
            joined + Duration::days(rng.i64(10..140))
        } else {
            end + Duration::days(1)
        };
        let mut d = joined;
        while d < end && d < stop {
            if rng.f64() < p {
                writeln!(usage, "{id},{d},brew,1").unwrap();
            }
            d += Duration::days(1);
        }
    }
    writeln!(
        members,
        "never,Never Started,,,Europe/Berlin,pods,{}",
        end - Duration::days(9)
    )
    .unwrap();
    writeln!(members, "daily-stop,Daily Stopper,,,UTC,pods,{}", start()).unwrap();
    writeln!(members, "weekdays,Weekday Brewer,,,UTC,pods,{}", start()).unwrap();
    let mut d = start();
    while d < end {
        if d.weekday().number_from_monday() <= 5 {
            writeln!(usage, "weekdays,{d},brew,1").unwrap();
        }
        d += Duration::days(1);
    }
    let mut d = start();
    while d <= end - Duration::days(9) {
        writeln!(usage, "daily-stop,{d},brew,2").unwrap();
        d += Duration::days(1);
    }
    (members, usage)
}

fn cli(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rollcall-cloud"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("ROLLCALL_LOG", "warn")
        .output()
        .unwrap()
}

fn load_fleet(dir: &Path) {
    let (members, usage) = fleet_csvs();
    std::fs::write(dir.join("members.csv"), members).unwrap();
    std::fs::write(dir.join("usage.csv"), usage).unwrap();
    let out = cli(
        dir,
        &[
            "members",
            "import",
            dir.join("members.csv").to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(
        dir,
        &["usage", "import", dir.join("usage.csv").to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(first["imported"].as_u64().unwrap() > 5000, "{first}");
    // Importing the same file again changes nothing.
    let out = cli(
        dir,
        &["usage", "import", dir.join("usage.csv").to_str().unwrap()],
    );
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["imported"], 0);
    assert_eq!(again["duplicates"], first["imported"]);
}

#[test]
fn score_scores_every_member_and_explains_the_lapsing_ones() {
    let dir = tempfile::tempdir().unwrap();
    load_fleet(dir.path());
    let as_of = as_of().to_rfc3339();
    let out = cli(dir.path(), &["score", "--as-of", &as_of, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 163, "every registered member is scored");
    let total: u64 = v["counts"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(total, 163);
    for m in members {
        for k in [
            "id",
            "state",
            "score",
            "p_engaged",
            "p_silent_14d",
            "p_silent_30d",
            "reasons",
        ] {
            assert!(!m[k].is_null(), "{k} missing in {m}");
        }
        let s = m["score"].as_u64().unwrap();
        assert!(s <= 100);
    }
    let find = |id: &str| members.iter().find(|m| m["id"] == id).unwrap().clone();
    let never = find("never");
    assert_eq!(never["state"], "lapsing", "{never}");
    assert!(
        never["reasons"][0]
            .as_str()
            .unwrap()
            .contains("has not used the device yet"),
        "{never}"
    );
    let stopper = find("daily-stop");
    assert!(
        matches!(stopper["state"].as_str(), Some("lapsing" | "lapsed")),
        "{stopper}"
    );
    let reason = stopper["reasons"][0].as_str().unwrap();
    assert!(
        reason.starts_with("Usually active every day; silent for 9 days; a silence this long happens to an engaged member"),
        "{reason}"
    );
    // A member with a weekly rhythm is told by their days.
    let weekdays = find("weekdays");
    assert_eq!(weekdays["state"], "active", "{weekdays}");
    let reason = weekdays["reasons"][0].as_str().unwrap();
    assert!(reason.contains(", mostly on weekdays; "), "{reason}");
    // On Sunday evening, after a silent weekend, the weekly reading is surer of them than
    // BG/BB alone (`scoring.weekly_rhythm = false`), which has no word for their days.
    let pooled = dir.path().join("pooled.toml");
    std::fs::write(&pooled, "[scoring]\nweekly_rhythm = false\n").unwrap();
    let sunday = "2026-05-31T20:00:00Z";
    let weekdays_on_sunday = |extra: &[&str]| {
        let mut args = extra.to_vec();
        args.extend(["score", "--as-of", sunday, "--json"]);
        let out = cli(dir.path(), &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == "weekdays")
            .unwrap()
            .clone()
    };
    let (weekly, alone) = (
        weekdays_on_sunday(&[]),
        weekdays_on_sunday(&["--config", pooled.to_str().unwrap()]),
    );
    let p = |m: &serde_json::Value| m["p_engaged"].as_f64().unwrap();
    assert!(p(&weekly) > p(&alone), "{weekly} vs {alone}");
    assert!(
        !alone["reasons"][0].as_str().unwrap().contains("mostly"),
        "{alone}"
    );
    // Every state the fleet should show up in appears.
    for s in ["active", "lapsing", "lapsed", "champion"] {
        assert!(
            v["counts"][s].as_u64().unwrap() > 0,
            "no {s}: {}",
            v["counts"]
        );
    }
    // Without --json: counts by state.
    let out = cli(dir.path(), &["score", "--as-of", &as_of]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("lapsing"), "{text}");

    // `members show` gains score, state, reasons and transitions.
    let out = cli(dir.path(), &["members", "show", "daily-stop", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        matches!(v["state"].as_str(), Some("lapsing" | "lapsed")),
        "{v}"
    );
    assert!(v["score"].as_u64().is_some());
    assert!(!v["reasons"].as_array().unwrap().is_empty());
    let t = v["transitions"].as_array().unwrap();
    assert_eq!(t.len(), 1, "{v}");
    assert!(t[0]["old_state"].is_null());
    assert!(
        v["usage"]["events"].as_u64().unwrap() > 100,
        "imported usage counts"
    );
}

#[test]
fn scoring_as_of_an_earlier_instant_ignores_later_usage_and_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    load_fleet(dir.path());
    let mut conn = rollcall_cloud::store::open_writer(dir.path()).unwrap();
    let cfg = ScoringConfig::default();
    let late = scoring::score_once(&mut conn, &cfg, as_of(), as_of()).unwrap();
    assert!(late.persisted);
    let early_at = as_of() - Duration::days(60);
    let early = scoring::score_once(&mut conn, &cfg, early_at, as_of()).unwrap();
    assert!(!early.persisted);
    let stopper = early.members.iter().find(|m| m.id == "daily-stop").unwrap();
    // Dates import as noon local time; at 20:00 that day's use has happened.
    assert_eq!(stopper.days_since_last, Some(0), "{stopper:?}");
    assert!(
        matches!(stopper.state, State::Active | State::Champion),
        "{stopper:?}"
    );
    // Members who joined after the earlier instant are not scored then.
    assert!(early.members.iter().all(|m| m.id != "never"));
    assert!(early.members.len() < late.members.len());
}

/// A run dated after the clock is scored but never stored: stored, it would be the latest
/// run, and every live run before its date would go unstored.
#[test]
fn a_run_dated_after_the_clock_is_not_stored_and_later_live_runs_still_are() {
    let dir = tempfile::tempdir().unwrap();
    load_fleet(dir.path());
    let mut conn = rollcall_cloud::store::open_writer(dir.path()).unwrap();
    let cfg = ScoringConfig::default();
    let future =
        scoring::score_once(&mut conn, &cfg, as_of() + Duration::days(30), as_of()).unwrap();
    assert!(!future.persisted);
    assert!(
        future
            .warnings
            .iter()
            .any(|w| w.contains("after the present")),
        "{:?}",
        future.warnings
    );
    let runs: i64 = conn
        .query_row("SELECT COUNT(*) FROM scoring_runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(runs, 0);
    let live = scoring::score_once(&mut conn, &cfg, as_of(), as_of()).unwrap();
    assert!(live.persisted, "the live run is stored");
}

#[test]
fn score_as_of_a_future_instant_is_a_usage_error_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let tomorrow = (Utc::now() + Duration::days(1)).to_rfc3339();
    let out = cli(dir.path(), &["score", "--as-of", &tomorrow, "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--as-of") && err.contains("future"), "{err}");
    assert!(out.stdout.is_empty());
    // An instant in the past is still fine.
    let yesterday = (Utc::now() - Duration::days(1)).to_rfc3339();
    let out = cli(dir.path(), &["score", "--as-of", &yesterday, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With no earlier parameters, a fit that does not converge is not used: the run scores
/// with the configured prior and says so (no fit id, no fitted date).
#[test]
fn a_first_fit_that_does_not_converge_scores_with_the_prior_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // Sixty members active on every single day: no evidence of anyone stopping, which
    // BG/NBD cannot fit (b runs off to infinity).
    let mut members = String::from("id,name,phone,email,tz,plan,joined\n");
    let mut usage = String::from("member_id,occurred_at,kind,qty\n");
    let end = as_of().date_naive();
    for i in 0..60 {
        let joined = end - Duration::days(50 + i % 3);
        writeln!(members, "d{i:02},Daily {i},,,UTC,pods,{joined}").unwrap();
        let mut d = joined;
        while d <= end {
            writeln!(usage, "d{i:02},{d},brew,1").unwrap();
            d += Duration::days(1);
        }
    }
    std::fs::write(dir.path().join("members.csv"), members).unwrap();
    std::fs::write(dir.path().join("usage.csv"), usage).unwrap();
    for args in [
        ["members", "import", "members.csv"],
        ["usage", "import", "usage.csv"],
    ] {
        let file = dir.path().join(args[2]);
        let out = cli(dir.path(), &[args[0], args[1], file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut conn = rollcall_cloud::store::open_writer(dir.path()).unwrap();
    let cfg = ScoringConfig {
        model: scoring::ModelKind::Bgnbd,
        ..ScoringConfig::default()
    };
    let run = scoring::score_once(&mut conn, &cfg, as_of(), as_of()).unwrap();
    assert!(
        run.warnings
            .iter()
            .any(|w| w.contains("did not converge") && w.contains("configured prior")),
        "{:?}",
        run.warnings
    );
    assert_eq!(run.model.params, cfg.prior);
    assert_eq!(run.model.fit_id, None);
    assert_eq!(run.model.fitted_as_of, None);
    assert!(!run.model.refitted);
    let v = serde_json::to_value(&run.model).unwrap();
    assert_eq!(v["params"]["b"], cfg.prior.b, "{v}");
}

#[test]
fn replay_runs_the_same_machine_as_the_live_scorer_day_by_day() {
    let dir = tempfile::tempdir().unwrap();
    load_fleet(dir.path());
    let cfg = ScoringConfig::default();
    let from = as_of() - Duration::days(20);
    let to = as_of();
    let reader = rollcall_cloud::store::open_reader(dir.path()).unwrap();
    let r1 = scoring::replay(&reader, &cfg, from, to).unwrap();
    let r2 = scoring::replay(&reader, &cfg, from, to).unwrap();
    assert_eq!(r1, r2, "replay is deterministic");
    assert_eq!(r1.days.len(), 21);
    assert!(r1.days[0].refitted);
    // The live scorer, run at the same instants, lands on the same states and numbers.
    let mut conn = rollcall_cloud::store::open_writer(dir.path()).unwrap();
    let mut live = None;
    for d in 0..=20 {
        live = Some(scoring::score_once(&mut conn, &cfg, from + Duration::days(d), to).unwrap());
    }
    let live = live.unwrap();
    let last = r1.points.last().unwrap();
    for m in &live.members {
        let i = r1.member_index(&m.id).unwrap();
        let p = last[i].unwrap();
        assert_eq!(p.state, m.state, "{}", m.id);
        assert!((p.p_engaged - m.p_engaged).abs() < 1e-9, "{}", m.id);
        assert_eq!(p.score, m.score);
    }
    // Transitions were recorded as states changed.
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM state_transitions WHERE old_state IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(n > 0);
}

#[test]
fn replaying_several_state_machines_at_once_gives_each_its_own_replay() {
    let dir = tempfile::tempdir().unwrap();
    load_fleet(dir.path());
    let base = ScoringConfig::default();
    let eager = ScoringConfig {
        lapsing_enter_below: 0.6,
        min_dwell_days: 1,
        ..base.clone()
    };
    let from = as_of() - Duration::days(20);
    let to = as_of();
    let reader = rollcall_cloud::store::open_reader(dir.path()).unwrap();
    let alone: Vec<_> = [&base, &eager]
        .iter()
        .map(|c| scoring::replay(&reader, c, from, to).unwrap())
        .collect();
    let mut together: [Vec<Vec<Option<scoring::ReplayPoint>>>; 2] = Default::default();
    let mut days: [Vec<scoring::ReplayDay>; 2] = Default::default();
    let (members, warnings) = scoring::replay_variants(
        &reader,
        &[base.clone(), eager.clone()],
        from,
        to,
        |d, points| {
            for v in 0..2 {
                days[v].push(d[v].clone());
                together[v].push(points[v].clone());
            }
        },
    )
    .unwrap();
    assert_eq!(members, alone[0].members);
    assert_eq!(warnings, alone[0].warnings);
    for v in 0..2 {
        assert_eq!(days[v], alone[v].days, "variant {v}");
        assert_eq!(together[v], alone[v].points, "variant {v}");
    }
    // The eager machine flags someone the default one does not, so the two were really
    // carried apart.
    let flagged = |points: &Vec<Vec<Option<scoring::ReplayPoint>>>| {
        points
            .iter()
            .flatten()
            .flatten()
            .filter(|p| matches!(p.state, scoring::State::Lapsing | scoring::State::Lapsed))
            .count()
    };
    assert!(
        flagged(&together[1]) > flagged(&together[0]),
        "{} vs {}",
        flagged(&together[1]),
        flagged(&together[0])
    );

    // Machines that would fit the model differently cannot share its fits.
    let other_model = ScoringConfig {
        model: scoring::ModelKind::Mbgnbd,
        ..base.clone()
    };
    let err = scoring::replay_variants(&reader, &[base, other_model], from, to, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("fit the model alike"), "{err}");
}

async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // Chunked or not: the JSON is the part between the first '{' and the last '}'.
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    (status, serde_json::from_str(json).unwrap())
}

#[tokio::test]
async fn the_api_serves_member_scores_and_the_engagement_summary() {
    let dir = tempfile::tempdir().unwrap();
    load_fleet(dir.path());
    let mut conn = rollcall_cloud::store::open_writer(dir.path()).unwrap();
    scoring::score_once(&mut conn, &ScoringConfig::default(), as_of(), as_of()).unwrap();
    use rollcall_cloud::tokens;
    let token = tokens::create(&conn, "analyst", tokens::Role::Analyst, as_of()).unwrap();
    let revoked = tokens::create(&conn, "gone", tokens::Role::Admin, as_of()).unwrap();
    tokens::revoke(&conn, revoked.id, as_of()).unwrap();
    let tk = Some(token.token.as_str());
    let state = rollcall_cloud::http::AppState::new(
        std::sync::Arc::new(rollcall_cloud::metrics::Metrics::new()),
        rollcall_cloud::config::CloudConfig {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        },
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, rollcall_cloud::http::router(state))
            .await
            .unwrap();
    });
    // No token, an unknown one, a revoked one: 401 with a JSON reason.
    for t in [None, Some("rc_unknown"), Some(revoked.token.as_str())] {
        let (status, v) = http_get(addr, "/api/v1/members/never/score", t).await;
        assert_eq!(
            (status, v["error"].as_str()),
            (401, Some("unauthorized")),
            "{t:?}"
        );
    }
    let (status, v) = http_get(addr, "/api/v1/members/never/score", tk).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["state"], "lapsing");
    assert_eq!(v["transitions"].as_array().unwrap().len(), 1);
    let (status, v) = http_get(addr, "/api/v1/members/nobody/score", tk).await;
    assert_eq!((status, v["error"].as_str()), (404, Some("no_such_member")));
    let (status, v) = http_get(addr, "/api/v1/engagement/summary", tk).await;
    assert_eq!(status, 200);
    let total: u64 = v["counts"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(total, 163);
    assert_eq!(v["by_day"][0]["day"], "2026-06-01");
}

#[test]
fn the_live_scorer_refits_on_the_clocks_schedule_and_updates_the_gauges() {
    let dir = tempfile::tempdir().unwrap();
    load_fleet(dir.path());
    let metrics = std::sync::Arc::new(rollcall_cloud::metrics::Metrics::new());
    let conn = rollcall_cloud::store::open_writer(dir.path()).unwrap();
    let mut scorer = scoring::Scorer::new(conn, ScoringConfig::default(), metrics.clone());
    let t0 = as_of();
    let first = scorer.tick(t0).unwrap();
    assert!(first.refitted);
    assert_eq!(first.counts.values().sum::<u64>(), 163);
    assert_eq!(first.written, 163);
    // Five minutes later: no refit, and nothing changed enough to rewrite.
    let second = scorer.tick(t0 + Duration::minutes(5)).unwrap();
    assert!(!second.refitted);
    assert_eq!(second.written, 0);
    // A day later by the clock: refit, and every member's tenure moved on.
    let third = scorer.tick(t0 + Duration::hours(24)).unwrap();
    assert!(third.refitted);
    assert_eq!(third.written, 163);
    let text = metrics.encode();
    let lapsing = third.counts[&State::Lapsing];
    assert!(
        text.contains(&format!(
            "rollcall_scoring_members{{state=\"lapsing\"}} {lapsing}"
        )),
        "{text}"
    );
    assert!(text.contains("rollcall_scoring_runs_total 3"), "{text}");
    // New usage arriving between ticks is picked up incrementally.
    let mut w = rollcall_cloud::store::open_writer(dir.path()).unwrap();
    let day = (t0 + Duration::hours(24)).date_naive();
    let csv = format!("member_id,occurred_at,kind,qty\nnever,{day},brew,1\n");
    rollcall_cloud::usage::import(
        &mut w,
        csv.as_bytes(),
        chrono_tz::UTC,
        t0 + Duration::hours(24),
        |_, _| {},
    )
    .unwrap();
    scorer.tick(t0 + Duration::hours(25)).unwrap();
    let v = rollcall_cloud::scoring::persist::score_view(&w, "never")
        .unwrap()
        .unwrap();
    assert_eq!(v.active_days, 1, "{v:?}");
    assert_eq!(v.days_since_last, Some(0));
}

//! The CDNOW golden tests: the published BG/NBD and MBG/NBD fits on the 2,357-customer
//! cohort (39-week calibration, unit weeks), the summary they are fitted on, the holdout
//! AUC, and P(engaged)/P(silent) against an independent Python implementation.

mod pyref;

use chrono::NaiveDate;
use rollcall_cloud::scoring::model::{self, ModelKind, Params, Rft};
use rollcall_cloud::scoring::{csvfit, fit_csv, Unit};
use std::collections::HashMap;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn calibration_end() -> NaiveDate {
    NaiveDate::from_ymd_opt(1997, 9, 30).unwrap()
}

fn usage() -> Vec<u8> {
    std::fs::read(fixture("cdnow_usage.csv")).unwrap()
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

#[test]
fn the_fixture_reproduces_the_published_cdnow_summary() {
    let s = csvfit::summarise(&usage(), calibration_end()).unwrap();
    assert!(s.rejected.is_empty(), "{:?}", s.rejected);
    assert_eq!(s.subjects.len(), 2357);
    let ours: HashMap<String, _> = s.subjects.into_iter().collect();
    let text = std::fs::read_to_string(fixture("cdnow_summary.csv")).unwrap();
    let mut checked = 0;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let d = ours[f[0]];
        let rft = d.to_rft(7.0);
        assert_eq!(d.x, f[1].parse::<u32>().unwrap(), "customer {}", f[0]);
        assert_eq!(
            round(rft.t_x, 2),
            f[2].parse::<f64>().unwrap(),
            "customer {}",
            f[0]
        );
        assert_eq!(
            round(rft.t, 2),
            f[3].parse::<f64>().unwrap(),
            "customer {}",
            f[0]
        );
        checked += 1;
    }
    assert_eq!(checked, 2357);
}

#[test]
fn bg_nbd_on_cdnow_matches_the_published_fit() {
    let (r, rejected) =
        fit_csv(&usage(), calibration_end(), Unit::Weeks, ModelKind::Bgnbd).unwrap();
    assert!(rejected.is_empty());
    assert!(r.converged);
    assert_eq!(r.members, 2357);
    let p = r.params;
    assert_eq!(
        (
            round(p.r, 3),
            round(p.alpha, 3),
            round(p.a, 3),
            round(p.b, 3)
        ),
        (0.243, 4.414, 0.793, 2.426),
        "{p:?}"
    );
    assert_eq!(round(r.log_likelihood, 2), -9582.43, "{}", r.log_likelihood);
}

#[test]
fn mbg_nbd_on_cdnow_matches_the_published_fit() {
    let (r, _) = fit_csv(&usage(), calibration_end(), Unit::Weeks, ModelKind::Mbgnbd).unwrap();
    assert!(r.converged);
    let p = r.params;
    assert_eq!(
        (
            round(p.r, 3),
            round(p.alpha, 3),
            round(p.a, 3),
            round(p.b, 3)
        ),
        (0.525, 6.183, 0.891, 1.614),
        "{p:?}"
    );
}

/// `rollcall-cloud model fit --from-csv` on the CDNOW file, 39 weeks of calibration, with
/// `extra` arguments; the JSON it prints.
fn fit_cdnow_cli(dir: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollcall-cloud"))
        .arg("--data-dir")
        .arg(dir)
        .args(["model", "fit", "--from-csv"])
        .arg(fixture("cdnow_usage.csv"))
        .args([
            "--calibration-end",
            "1997-09-30",
            "--unit",
            "weeks",
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_command_line_fit_prints_the_published_parameters_as_json() {
    for (model, want) in [
        ("bgnbd", (0.243, 4.414, 0.793, 2.426)),
        ("mbgnbd", (0.525, 6.183, 0.891, 1.614)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let v = fit_cdnow_cli(dir.path(), &["--model", model]);
        assert_eq!(v["model"], model);
        assert_eq!(v["members"], 2357);
        assert_eq!(v["converged"], true);
        let p = |k: &str| round(v["params"][k].as_f64().unwrap(), 3);
        assert_eq!((p("r"), p("alpha"), p("a"), p("b")), want, "{v}");
        if model == "bgnbd" {
            assert_eq!(round(v["log_likelihood"].as_f64().unwrap(), 2), -9582.43);
        }
        // The store was not touched.
        assert!(!dir.path().join("rollcall.db").exists());
    }
}

/// The automation contract: `model fit --from-csv FILE --calibration-end DATE --unit weeks
/// --json`, without `--model`, fits MBG/NBD and prints `{"model", "params": {"r", "alpha",
/// "a", "b"}, "log_likelihood", "members", "converged"}`.
#[test]
fn the_command_line_fit_of_a_usage_file_defaults_to_mbg_nbd() {
    let dir = tempfile::tempdir().unwrap();
    let v = fit_cdnow_cli(dir.path(), &[]);
    assert_eq!(v["model"], "mbgnbd", "{v}");
    assert_eq!(v["members"], 2357);
    assert_eq!(v["converged"], true);
    assert!(v["log_likelihood"].as_f64().is_some(), "{v}");
    let p = |k: &str| {
        let x = v["params"][k].as_f64();
        round(x.unwrap_or_else(|| panic!("params.{k} missing: {v}")), 3)
    };
    assert_eq!(
        (p("r"), p("alpha"), p("a"), p("b")),
        (0.525, 6.183, 0.891, 1.614),
        "{v}"
    );
}

/// `--calibration-end` and `--unit` only mean something with `--from-csv`: without it
/// they are a usage error (exit status 2) instead of being silently ignored.
#[test]
fn calibration_end_or_unit_without_from_csv_is_a_usage_error() {
    for extra in [
        &["--calibration-end", "1997-09-30"][..],
        &["--unit", "weeks"][..],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollcall-cloud"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["model", "fit", "--json"])
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains("--from-csv"), "{extra:?}: {err}");
        assert!(
            !dir.path().join("rollcall.db").exists(),
            "nothing was fitted"
        );
    }
}

/// BG/BB counts days: asked for weeks it is refused as a usage error that says why.
#[test]
fn bgbb_with_weeks_is_a_usage_error_naming_the_unit() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollcall-cloud"))
        .args(["model", "fit", "--from-csv"])
        .arg(fixture("cdnow_usage.csv"))
        .args(["--calibration-end", "1997-09-30", "--unit", "weeks"])
        .args(["--model", "bgbb", "--json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("whole days") && err.contains("--unit days"),
        "{err}"
    );
}

/// Area under the ROC curve of `score` for `label` (ties count half).
fn auc(points: &[(f64, bool)]) -> f64 {
    let mut v = points.to_vec();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let mid = (i + j + 1) as f64 / 2.0;
        rank_sum += mid * v[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    let pos = v.iter().filter(|p| p.1).count() as f64;
    let neg = v.len() as f64 - pos;
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// The scorer ranks members by `p_silent_14d`: in CDNOW's weekly unit that is a two-week
/// horizon. It must beat the recency-gap baseline (0.771) at ranking who makes no repeat
/// purchase in the 39 holdout weeks. (The model's own 39-week silence probability ranks
/// slightly worse, about 0.760: printed here and recorded in docs/scoring.md.)
#[test]
fn p_silent_predicts_no_repeat_purchase_in_the_cdnow_holdout() {
    let bytes = usage();
    let end = calibration_end();
    let holdout_end = end + chrono::Duration::weeks(39);
    let s = csvfit::summarise(&bytes, end).unwrap();
    let (fit, _) = fit_csv(&bytes, end, Unit::Weeks, ModelKind::Mbgnbd).unwrap();
    let parsed = rollcall_cloud::usage::parse(&bytes).unwrap();
    let mut bought_in_holdout: HashMap<String, bool> = HashMap::new();
    for row in &parsed.rows {
        let d = row.when.local_date(chrono_tz::UTC);
        if let rollcall_cloud::usage::Subject::Member(m) = &row.subject {
            if d > end && d <= holdout_end {
                bought_in_holdout.insert(m.as_str().to_owned(), true);
            }
        }
    }
    let mut ours = Vec::new();
    let mut whole_holdout = Vec::new();
    let mut recency_gap = Vec::new();
    for (id, d) in &s.subjects {
        let silent = !bought_in_holdout.get(id).copied().unwrap_or(false);
        let rft = d.to_rft(7.0);
        ours.push((
            model::p_silent(ModelKind::Mbgnbd, &fit.params, &rft, 2.0),
            silent,
        ));
        whole_holdout.push((
            model::p_silent(ModelKind::Mbgnbd, &fit.params, &rft, 39.0),
            silent,
        ));
        recency_gap.push((rft.t - rft.t_x, silent));
    }
    let a = auc(&ours);
    let a39 = auc(&whole_holdout);
    let baseline = auc(&recency_gap);
    eprintln!(
        "CDNOW holdout AUC: p_silent (2 weeks) {a:.4}, p_silent (39 weeks) {a39:.4}, recency-gap baseline {baseline:.4}"
    );
    assert!((baseline - 0.771).abs() < 0.001, "baseline {baseline}");
    assert!(a >= 0.77, "AUC {a}");
    assert!(a > baseline, "AUC {a} vs baseline {baseline}");
    assert!(a39 >= 0.75, "AUC at 39 weeks {a39}");
}

/// Compares P(engaged), P(silent h) and the likelihood with a short Python implementation
/// of the closed forms (`math.lgamma` only). Skipped without python3 unless
/// `ROLLCALL_REQUIRE_INTEROP` is set, as CI does.
#[test]
fn an_independent_python_implementation_agrees() {
    if !pyref::python3_available() {
        return;
    }
    let script = r#"
import math, sys, json
def ll(kind, r, al, a, b, x, tx, T):
    beta = b + x + (1 if kind == "mbgnbd" else 0)
    head = (math.lgamma(r + x) - math.lgamma(r) + r * math.log(al) + math.lgamma(a + b)
            - math.lgamma(b) + math.lgamma(beta) - math.lgamma(a + beta))
    l1 = -(r + x) * math.log(al + T)
    if kind == "bgnbd" and x == 0:
        return head + l1
    l2 = math.log(a / (beta - 1)) - (r + x) * math.log(al + tx)
    m = max(l1, l2)
    return head + m + math.log(math.exp(l1 - m) + math.exp(l2 - m))
def palive(kind, r, al, a, b, x, tx, T):
    if kind == "bgnbd" and x == 0:
        return 1.0
    d = b + x if kind == "mbgnbd" else b + x - 1
    return 1.0 / (1.0 + a / d * ((al + T) / (al + tx)) ** (r + x))
def psilent(kind, r, al, a, b, x, tx, T, h):
    pa = palive(kind, r, al, a, b, x, tx, T)
    return 1 - pa + pa * ((al + T) / (al + T + h)) ** (r + x)
out = []
for line in sys.stdin:
    kind, r, al, a, b, x, tx, T, h = line.split()
    r, al, a, b, x, tx, T, h = map(float, (r, al, a, b, x, tx, T, h))
    out.append([palive(kind, r, al, a, b, x, tx, T), psilent(kind, r, al, a, b, x, tx, T, h), ll(kind, r, al, a, b, x, tx, T)])
print(json.dumps(out))
"#;
    let params = [
        Params {
            r: 0.243,
            alpha: 4.414,
            a: 0.793,
            b: 2.426,
        },
        Params {
            r: 0.525,
            alpha: 6.183,
            a: 0.891,
            b: 1.614,
        },
        Params {
            r: 1.3,
            alpha: 2.2,
            a: 0.6,
            b: 25.0,
        },
    ];
    let points = [
        (0.0, 0.0, 38.86),
        (2.0, 30.43, 38.86),
        (7.0, 29.43, 38.86),
        (1.0, 5.0, 38.86),
        (20.0, 50.0, 120.0),
        (150.0, 200.0, 215.0),
        (3.0, 3.0, 3.0),
    ];
    let mut input = String::new();
    let mut cases = Vec::new();
    for kind in [ModelKind::Bgnbd, ModelKind::Mbgnbd] {
        for p in &params {
            for &(x, t_x, t) in &points {
                for h in [2.0, 14.0, 30.0] {
                    input.push_str(&format!(
                        "{} {} {} {} {} {x} {t_x} {t} {h}\n",
                        kind.name(),
                        p.r,
                        p.alpha,
                        p.a,
                        p.b
                    ));
                    cases.push((kind, *p, Rft { x, t_x, t }, h));
                }
            }
        }
    }
    let theirs: Vec<[f64; 3]> = pyref::run(script, &input);
    assert_eq!(theirs.len(), cases.len());
    for ((kind, p, s, h), [pa, ps, ll]) in cases.iter().zip(theirs) {
        assert!(
            pyref::close(model::p_engaged(*kind, p, s), pa),
            "{kind} {p:?} {s:?}"
        );
        assert!(
            pyref::close(model::p_silent(*kind, p, s, *h), ps),
            "{kind} {p:?} {s:?} {h}"
        );
        assert!(
            pyref::close(model::log_likelihood(*kind, p, s), ll),
            "{kind} {p:?} {s:?}"
        );
    }
}

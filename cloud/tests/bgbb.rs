//! The BG/BB golden tests: the published fit on the donation data set (Fader, Hardie and
//! Shang 2010: 11,104 donors, six annual opportunities), the same fit through
//! `model fit --from-csv --model bgbb`, and P(alive), P(silent), expected activity and
//! the likelihood against an independent Python implementation (`math.lgamma` only).

mod pyref;

use rollcall_cloud::scoring::bgbb::{self, BgbbParams};
use rollcall_cloud::scoring::fit::{fit, FitData, FitOptions};
use rollcall_cloud::scoring::model::{self, ModelKind, Rft};
use rollcall_cloud::scoring::rhythm::DayChances;
use rollcall_cloud::scoring::summary::DaySummary;
use std::fmt::Write as _;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `(frequency, recency, periods, weight)` rows of the donation data.
fn donations() -> Vec<(u32, u32, u32, u32)> {
    let text = std::fs::read_to_string(fixture("donations.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<u32> = l.split(',').map(|v| v.parse().unwrap()).collect();
            (f[0], f[1], f[2], f[3])
        })
        .collect()
}

fn round(v: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (v * f).round() / f
}

const PUBLISHED: BgbbParams = BgbbParams {
    alpha: 1.204,
    beta: 0.750,
    gamma: 0.657,
    delta: 2.783,
};

#[test]
fn bg_bb_on_the_donation_data_matches_the_published_fit() {
    let rows = donations();
    let members: Vec<DaySummary> = rows
        .iter()
        .flat_map(|&(x, tx, n, w)| {
            std::iter::repeat_n(
                DaySummary {
                    x,
                    t_x_days: tx,
                    t_days: n,
                },
                w as usize,
            )
        })
        .collect();
    assert_eq!(members.len(), 11_104);
    let data = FitData::new(members, 1.0);
    assert_eq!(data.distinct(), 22);
    let r = fit(&data, &FitOptions::new(ModelKind::Bgbb)).unwrap();
    assert!(r.converged, "{r:?}");
    let p = BgbbParams::from_slots(&r.params);
    assert_eq!(
        (
            round(p.alpha, 3),
            round(p.beta, 3),
            round(p.gamma, 3),
            round(p.delta, 3)
        ),
        (1.204, 0.750, 0.657, 2.783),
        "{p:?}"
    );
    assert_eq!(
        round(r.log_likelihood, 1),
        -33_225.6,
        "{}",
        r.log_likelihood
    );
    // The published parameters are (to their precision) at the maximum.
    let at_published = data.log_likelihood(ModelKind::Bgbb, &PUBLISHED.to_slots());
    assert!(
        (at_published - r.log_likelihood).abs() < 0.05,
        "{at_published}"
    );
}

/// The donation data as a usage file: donor `d{row}-{k}`'s origin is 2020-01-01, the
/// opportunities are the six days after it, and the active ones end at the recency.
fn donations_as_usage_csv() -> String {
    let mut out = String::from("member_id,occurred_at,kind,qty\n");
    let origin = chrono::NaiveDate::from_ymd_opt(2020, 1, 1).unwrap();
    for (row, &(x, tx, _, w)) in donations().iter().enumerate() {
        for k in 0..w {
            let id = format!("d{row}-{k}");
            writeln!(out, "{id},{origin},donation,1").unwrap();
            for day in (tx + 1 - x.min(tx))..=tx {
                if x == 0 {
                    break;
                }
                let d = origin + chrono::Duration::days(day as i64);
                writeln!(out, "{id},{d},donation,1").unwrap();
            }
        }
    }
    out
}

#[test]
fn the_command_line_fits_bg_bb_and_names_its_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("donations-usage.csv");
    std::fs::write(&csv, donations_as_usage_csv()).unwrap();
    let store = dir.path().join("store");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollcall-cloud"))
        .arg("--data-dir")
        .arg(&store)
        .args(["model", "fit", "--from-csv"])
        .arg(&csv)
        .args([
            "--calibration-end",
            "2020-01-07",
            "--unit",
            "days",
            "--model",
            "bgbb",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"], "bgbb");
    assert_eq!(v["members"], 11_104);
    assert_eq!(v["converged"], true);
    let p = |k: &str| round(v["params"][k].as_f64().unwrap(), 3);
    assert_eq!(
        (p("alpha"), p("beta"), p("gamma"), p("delta")),
        (1.204, 0.750, 0.657, 2.783),
        "{v}"
    );
    assert_eq!(round(v["log_likelihood"].as_f64().unwrap(), 1), -33_225.6);
    assert!(!store.join("rollcall.db").exists());
    // BG/BB counts whole days: weeks are refused with a reason.
    let weeks = std::process::Command::new(env!("CARGO_BIN_EXE_rollcall-cloud"))
        .arg("--data-dir")
        .arg(&store)
        .args(["model", "fit", "--from-csv"])
        .arg(&csv)
        .args(["--calibration-end", "2020-01-07", "--unit", "weeks"])
        .args(["--model", "bgbb", "--json"])
        .output()
        .unwrap();
    assert!(!weeks.status.success());
    assert!(String::from_utf8_lossy(&weeks.stderr).contains("whole days"));
}

#[test]
fn parameters_are_recovered_within_ten_percent_from_simulated_members() {
    let truth = BgbbParams {
        alpha: 1.2,
        beta: 0.8,
        gamma: 0.6,
        delta: 150.0,
    };
    let members = bgbb::simulate(&truth, 60_000, 730, 5);
    let data = FitData::new(members, 1.0);
    let r = fit(&data, &FitOptions::new(ModelKind::Bgbb)).unwrap();
    assert!(r.converged, "{r:?}");
    let p = BgbbParams::from_slots(&r.params);
    for (name, f, t) in [
        ("alpha", p.alpha, truth.alpha),
        ("beta", p.beta, truth.beta),
        ("gamma", p.gamma, truth.gamma),
        ("delta", p.delta, truth.delta),
    ] {
        assert!(
            (f - t).abs() <= 0.10 * t,
            "{name}: fitted {f}, true {t} ({p:?})"
        );
    }
}

/// Compares P(alive), P(silent h), expected active days and the likelihood with a short
/// Python implementation written straight from the paper: the likelihood as its sum of
/// `ln B` terms, P(alive) as (A10), expected activity as the closed form (13) with its
/// `δ/(γ−1)`, and P(silent) as the chance of dying before the next opportunity or
/// surviving each of the next `h` silent. Skipped without python3 unless
/// `ROLLCALL_REQUIRE_INTEROP` is set, as CI does.
#[test]
fn an_independent_python_implementation_agrees() {
    if !pyref::python3_available() {
        return;
    }
    let script = r#"
import math, sys, json
def lb(a, b):
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
def lse(v):
    m = max(v)
    return m + math.log(sum(math.exp(t - m) for t in v))
def ll(al, be, ga, de, x, tx, n):
    c = -lb(al, be) - lb(ga, de)
    terms = [lb(al + x, be + n - x) + lb(ga, de + n) + c]
    terms += [lb(al + x, be + tx - x + i) + lb(ga + 1, de + tx + i) + c for i in range(n - tx)]
    return lse(terms)
def palive(al, be, ga, de, x, tx, n):
    return math.exp(lb(al + x, be + n - x) - lb(al, be) + lb(ga, de + n) - lb(ga, de) - ll(al, be, ga, de, x, tx, n))
def psilent(al, be, ga, de, x, tx, n, h):
    # Dead already, or alive at n and then: dies before opportunity n+j after j-1 silent
    # ones, or survives all h silent.
    c = -lb(al, be) - lb(ga, de)
    dead = [lb(al + x, be + tx - x + i) + lb(ga + 1, de + tx + i) + c for i in range(n - tx)]
    later = [lb(al + x, be + n - x + j - 1) + lb(ga + 1, de + n + j - 1) + c for j in range(1, h + 1)]
    later.append(lb(al + x, be + n - x + h) + lb(ga, de + n + h) + c)
    return math.exp(lse(dead + later) - ll(al, be, ga, de, x, tx, n))
def expected(al, be, ga, de, x, tx, n, h):
    p1 = math.exp(lb(al + x + 1, be + n - x) - lb(al, be) - ll(al, be, ga, de, x, tx, n))
    p3 = de / (ga - 1) * math.exp(math.lgamma(ga + de) - math.lgamma(1 + de))
    p4 = math.exp(math.lgamma(1 + de + n) - math.lgamma(ga + de + n))
    p5 = math.exp(math.lgamma(1 + de + n + h) - math.lgamma(ga + de + n + h))
    return p1 * p3 * (p4 - p5)
out = []
for line in sys.stdin:
    al, be, ga, de, x, tx, n, h = line.split()
    al, be, ga, de = map(float, (al, be, ga, de))
    x, tx, n, h = map(int, (x, tx, n, h))
    out.append([palive(al, be, ga, de, x, tx, n), psilent(al, be, ga, de, x, tx, n, h),
                expected(al, be, ga, de, x, tx, n, h), ll(al, be, ga, de, x, tx, n)])
print(json.dumps(out))
"#;
    let params = [
        PUBLISHED,
        BgbbParams {
            alpha: 1.5,
            beta: 0.9,
            gamma: 0.7,
            delta: 400.0,
        },
        BgbbParams {
            alpha: 0.4,
            beta: 3.0,
            gamma: 2.5,
            delta: 90.0,
        },
    ];
    let points = [
        (0u32, 0u32, 6u32),
        (3, 5, 6),
        (6, 6, 6),
        (1, 1, 40),
        (80, 100, 100),
        (80, 100, 121),
        (200, 300, 420),
    ];
    let mut input = String::new();
    let mut cases = Vec::new();
    for p in &params {
        for &(x, tx, n) in &points {
            for h in [1u32, 14, 30] {
                writeln!(
                    input,
                    "{} {} {} {} {x} {tx} {n} {h}",
                    p.alpha, p.beta, p.gamma, p.delta
                )
                .unwrap();
                cases.push((*p, x, tx, n, h));
            }
        }
    }
    let theirs: Vec<[f64; 4]> = pyref::run(script, &input);
    assert_eq!(theirs.len(), cases.len());
    for ((p, x, tx, n, h), [pa, ps, ex, ll]) in cases.iter().zip(theirs) {
        let s = Rft {
            x: *x as f64,
            t_x: *tx as f64,
            t: *n as f64,
        };
        let slots = p.to_slots();
        let k = ModelKind::Bgbb;
        let hf = *h as f64;
        let what = format!("{p:?} x={x} t_x={tx} n={n} h={h}");
        assert!(
            pyref::close(model::p_engaged(k, &slots, &s), pa),
            "P(alive) {what}"
        );
        assert!(
            pyref::close(model::p_silent(k, &slots, &s, hf), ps),
            "P(silent) {what}"
        );
        assert!(
            pyref::close(model::expected_active(k, &slots, &s, hf), ex),
            "E[active] {what}: {} vs {ex}",
            model::expected_active(k, &slots, &s, hf)
        );
        assert!(
            pyref::close(model::log_likelihood(k, &slots, &s), ll),
            "LL {what}"
        );
        let o = model::member_outputs(k, &slots, &s, [hf, hf], &DayChances::Pooled);
        assert!(
            pyref::close(o.p_silent[0], ps) && pyref::close(o.expected_active, ex),
            "{what}"
        );
    }
}

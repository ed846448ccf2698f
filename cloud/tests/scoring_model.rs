//! Parameter recovery on simulated members, and the speed benchmark (`--ignored`).

use rollcall_cloud::scoring::fit::{fit, FitData, FitOptions};
use rollcall_cloud::scoring::model::{ModelKind, Params};
use rollcall_cloud::scoring::simulate::simulate;

fn within(fitted: f64, truth: f64, tolerance: f64) -> bool {
    (fitted - truth).abs() <= tolerance * truth
}

#[test]
fn parameters_are_recovered_within_ten_percent_from_simulated_members() {
    for (kind, truth) in [
        (
            ModelKind::Mbgnbd,
            Params {
                r: 0.9,
                alpha: 2.5,
                a: 0.6,
                b: 12.0,
            },
        ),
        (
            ModelKind::Bgnbd,
            Params {
                r: 0.7,
                alpha: 3.0,
                a: 0.8,
                b: 9.0,
            },
        ),
    ] {
        // Rates per 30 days, times in whole days over up to ten years: two events rarely
        // share a day, so the reduction to active days does not bias the estimates (at
        // rates near one a day it does: several events on a day count once).
        let members = simulate(kind, &truth, 40_000, 3650, 30.0, 11);
        let data = FitData::new(members, 30.0);
        let r = fit(&data, &FitOptions::new(kind)).unwrap();
        assert!(r.converged, "{kind}: {r:?}");
        let p = r.params;
        for (name, f, t) in [
            ("r", p.r, truth.r),
            ("alpha", p.alpha, truth.alpha),
            ("a", p.a, truth.a),
            ("b", p.b, truth.b),
        ] {
            assert!(
                within(f, t, 0.10),
                "{kind} {name}: fitted {f}, true {t} ({p:?})"
            );
        }
    }
}

/// `cargo test --release -p rollcall-cloud --test scoring_model -- --ignored --nocapture`
#[test]
#[ignore]
fn benchmark_fit_100k_and_score_1m() {
    let r = rollcall_cloud::scoring::bench::run(100_000, 1_000_000).unwrap();
    println!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert!(r.fit_converged);
}

//! Micro-benchmarks of the scoring math for one member: P(engaged), P(silent 14 days) and
//! the full outputs under BG/BB (the default) and MBG/NBD, at a typical daily member and
//! at a heavy one (numerical work grows with the member's age in days).
//! Run with `cargo bench -p rollcall-cloud --bench scoring_math`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use rollcall_cloud::scoring::bgbb::{self, BgbbParams};
use rollcall_cloud::scoring::model::{self, ModelKind, Params, Rft};

fn scoring(c: &mut Criterion) {
    let bgbb_params = BgbbParams {
        alpha: 1.2,
        beta: 0.75,
        gamma: 0.66,
        delta: 2.8,
    };
    let mbg = Params {
        r: 0.525,
        alpha: 6.183,
        a: 0.891,
        b: 1.614,
    };
    let members = [
        (
            "daily_120d",
            Rft {
                x: 90.0,
                t_x: 110.0,
                t: 120.0,
            },
        ),
        (
            "heavy_3y",
            Rft {
                x: 1000.0,
                t_x: 1090.0,
                t: 1095.0,
            },
        ),
    ];
    let mut g = c.benchmark_group("scoring_member");
    for (name, rft) in members {
        g.bench_function(format!("bgbb_outputs/{name}"), |b| {
            b.iter(|| bgbb::outputs(black_box(&bgbb_params), black_box(&rft), [14.0, 30.0]))
        });
        g.bench_function(format!("mbgnbd_p_engaged/{name}"), |b| {
            b.iter(|| model::p_engaged(ModelKind::Mbgnbd, black_box(&mbg), black_box(&rft)))
        });
        g.bench_function(format!("mbgnbd_p_silent_14d/{name}"), |b| {
            b.iter(|| model::p_silent(ModelKind::Mbgnbd, black_box(&mbg), black_box(&rft), 14.0))
        });
    }
    g.finish();
}

criterion_group!(benches, scoring);
criterion_main!(benches);

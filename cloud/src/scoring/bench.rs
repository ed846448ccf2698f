//! The scoring benchmark: fit on simulated members, then score a simulated fleet, in
//! memory (the store is not part of the measurement). `rollcall bench scoring` prints it.

use super::bgbb::BgbbParams;
use super::engine;
use super::fit::{self, FitData, FitOptions};
use super::model::{ModelKind, Params};
use super::rhythm::Weekdays;
use super::simulate::simulate;
use super::state::{Memory, State};
use super::summary::{DaySummary, MemberDays};
use super::ScoringError;
use crate::config::ScoringConfig;
use serde::Serialize;
use std::time::Instant;

/// The MBG/NBD parameters the benchmark simulates from (daily; a fleet of consumer devices).
pub const BENCH_PARAMS: Params = Params {
    r: 0.6,
    alpha: 4.0,
    a: 0.6,
    b: 12.0,
};

/// The BG/BB parameters the benchmark simulates from (daily opportunities: active on
/// about 60% of days, drop-out about 0.4% a day, both varying between members).
pub const BENCH_BGBB_PARAMS: BgbbParams = BgbbParams {
    alpha: 1.2,
    beta: 0.8,
    gamma: 0.6,
    delta: 150.0,
};

/// Members simulated from `kind`'s benchmark parameters over up to a year.
fn bench_members(kind: ModelKind, n: usize, seed: u64) -> Vec<DaySummary> {
    match kind {
        ModelKind::Bgbb => super::bgbb::simulate(&BENCH_BGBB_PARAMS, n, 365, seed),
        _ => simulate(kind, &BENCH_PARAMS, n, 365, 1.0, seed),
    }
}

/// What the benchmark measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchResult {
    /// The model benchmarked.
    pub model: ModelKind,
    /// Members fitted on.
    pub fit_members: usize,
    /// Distinct `(x, t_x, T)` tuples among them.
    pub fit_distinct: usize,
    /// Wall-clock seconds of the fit (cold start, grouping included).
    pub fit_seconds: f64,
    /// Likelihood evaluations used.
    pub fit_evaluations: usize,
    /// Whether the fit converged.
    pub fit_converged: bool,
    /// The parameters simulated from (under the model's names).
    pub true_params: serde_json::Value,
    /// The parameters recovered (under the model's names).
    pub fitted_params: serde_json::Value,
    /// Members scored.
    pub score_members: usize,
    /// Wall-clock seconds to score them: the model's numbers, the fleet ranking and the
    /// state machine for every member.
    pub score_seconds: f64,
    /// Wall-clock seconds to also write every member's plain-language reasons.
    pub reasons_seconds: f64,
    /// Members per state.
    pub counts: std::collections::BTreeMap<State, u64>,
    /// Threads available.
    pub threads: usize,
}

/// Fits the default model on `fit_members` simulated members and scores `score_members`
/// (targets: 100,000 in under 2 s and 1,000,000 in under 3 s on two cores).
pub fn run(fit_members: usize, score_members: usize) -> Result<BenchResult, ScoringError> {
    run_model(ScoringConfig::default().model, fit_members, score_members)
}

/// [`run`] for a given model.
pub fn run_model(
    kind: ModelKind,
    fit_members: usize,
    score_members: usize,
) -> Result<BenchResult, ScoringError> {
    let cfg = ScoringConfig {
        model: kind,
        ..ScoringConfig::default()
    };
    let fit_data = bench_members(kind, fit_members, 1);
    let t0 = Instant::now();
    let data = FitData::new(fit_data.iter().copied(), 1.0);
    let r = fit::fit(&data, &FitOptions::new(kind))?;
    let fit_seconds = t0.elapsed().as_secs_f64();

    let fleet = bench_members(kind, score_members, 2);
    let as_of_day = 20_000;
    let mds: Vec<Option<MemberDays>> = fleet
        .iter()
        .map(|s| {
            let origin = as_of_day - s.t_days as i32;
            Some(MemberDays {
                summary: *s,
                origin_day: origin,
                active_days: s.x + 1,
                last_active_day: Some(origin + s.t_x_days as i32),
                weekdays: spread(origin, s.x, s.t_x_days),
            })
        })
        .collect();
    let days = vec![as_of_day; mds.len()];
    let memory: Vec<Option<Memory>> = vec![None; mds.len()];
    let t1 = Instant::now();
    let evals = engine::evaluate(
        &cfg,
        kind,
        &r.params,
        &mds,
        &days,
        as_of_day as i64 * super::summary::DAY_MS,
        &memory,
    );
    let score_seconds = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let mut chars = 0usize;
    for e in evals.iter().flatten() {
        chars += engine::reasons_for(&cfg, e, None, chrono_tz::UTC)
            .iter()
            .map(String::len)
            .sum::<usize>();
    }
    let reasons_seconds = t2.elapsed().as_secs_f64() + score_seconds;
    std::hint::black_box(chars);
    let mut counts = std::collections::BTreeMap::new();
    for e in evals.iter().flatten() {
        *counts.entry(e.decision.state).or_insert(0u64) += 1;
    }
    let true_params = match kind {
        ModelKind::Bgbb => BENCH_BGBB_PARAMS.to_slots(),
        _ => BENCH_PARAMS,
    };
    Ok(BenchResult {
        model: kind,
        fit_members,
        fit_distinct: data.distinct(),
        fit_seconds,
        fit_evaluations: r.evaluations,
        fit_converged: r.converged,
        true_params: true_params.named(kind),
        fitted_params: r.params.named(kind),
        score_members,
        score_seconds,
        reasons_seconds,
        counts,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    })
}

/// Weekday counts for a summary without a calendar: the `t_x` days after `origin`, the
/// `x` active ones dealt to the weekdays in turn (as far as each has days),
/// so that the benchmark scores every member with the weekly reading as the live scorer
/// does.
fn spread(origin: i32, x: u32, t_x: u32) -> Weekdays {
    let mut w = Weekdays::count(origin, origin + t_x as i32, std::iter::empty());
    let mut left = x;
    while left > 0 {
        let mut dealt = false;
        for d in 0..7 {
            if left > 0 && w.active[d] < w.days[d] {
                w.active[d] += 1;
                left -= 1;
                dealt = true;
            }
        }
        if !dealt {
            break;
        }
    }
    w
}

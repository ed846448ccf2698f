//! Deterministic replay of history: the live scorer's model schedule and state machine,
//! run day by day over the store without writing to it.

use super::engine;
use super::fit;
use super::fleet::Fleet;
use super::model::{ModelKind, NamedParams, Params};
use super::run::fit_fleet;
use super::state::{Memory, State};
use super::summary::{local_day_of, MemberDays, DAY_MS};
use super::ScoringError;
use crate::config::ScoringConfig;
use chrono::{DateTime, Duration, Utc};
use rusqlite::Connection;
use serde::Serialize;
use std::collections::BTreeMap;

/// One member on one day of a replay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReplayPoint {
    /// Engagement state.
    pub state: State,
    /// P(still engaged).
    pub p_engaged: f64,
    /// P(no active day in the next 14 days).
    pub p_silent_14d: f64,
    /// 0–100.
    pub score: u8,
}

/// One day of a replay (in JSON the parameters go by the model's names).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayDay {
    /// The instant scored.
    pub as_of: DateTime<Utc>,
    /// The model.
    pub model: ModelKind,
    /// Its parameters that day.
    pub params: Params,
    /// Whether the model was refitted that day.
    pub refitted: bool,
    /// Members per state.
    pub counts: BTreeMap<State, u64>,
}

impl Serialize for ReplayDay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Out<'a> {
            as_of: DateTime<Utc>,
            model: ModelKind,
            params: NamedParams,
            refitted: bool,
            counts: &'a BTreeMap<State, u64>,
        }
        Out {
            as_of: self.as_of,
            model: self.model,
            params: NamedParams(self.model, self.params),
            refitted: self.refitted,
            counts: &self.counts,
        }
        .serialize(s)
    }
}

/// A whole replay: `points[d][m]` is member `members[m]` on day `days[d]` (`None` before
/// the member's clock started).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Replay {
    /// Member ids.
    pub members: Vec<String>,
    /// The days.
    pub days: Vec<ReplayDay>,
    /// Per day, per member.
    pub points: Vec<Vec<Option<ReplayPoint>>>,
    /// Warnings (fits that fell back).
    pub warnings: Vec<String>,
}

impl Replay {
    /// The member's position in [`Replay::members`].
    pub fn member_index(&self, id: &str) -> Option<usize> {
        self.members.iter().position(|m| m == id)
    }
}

/// Replays scoring from `from` to `to` (inclusive) in steps of one day, exactly as the
/// live scorer would have run at those instants: usage after each instant is ignored, the
/// model is refitted whenever the last fit is `refit_interval_h` old (the first day
/// always fits; a fit that does not converge keeps the last good parameters, and too few
/// members falls back to `prior`), and the same state machine carries each member's
/// state, hysteresis and dwell from day to day. Nothing is written to the store.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use chrono::{Duration, TimeZone, Utc};
/// use rollcall_cloud::{config::ScoringConfig, scoring};
/// let conn = rollcall_cloud::store::open_reader(std::path::Path::new("data"))?;
/// let from = Utc.with_ymd_and_hms(2026, 1, 1, 23, 59, 0).unwrap();
/// let r = scoring::replay(&conn, &ScoringConfig::default(), from, from + Duration::days(90))?;
/// for (day, points) in r.days.iter().zip(&r.points) {
///     let lapsing = points.iter().flatten().filter(|p| p.state == scoring::State::Lapsing).count();
///     println!("{} {lapsing}", day.as_of.date_naive());
/// }
/// # Ok(()) }
/// ```
pub fn replay(
    conn: &Connection,
    cfg: &ScoringConfig,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Replay, ScoringError> {
    let mut days = Vec::new();
    let mut points = Vec::new();
    let (members, warnings) = replay_each(conn, cfg, from, to, |d, p| {
        days.push(d.clone());
        points.push(p.to_vec());
    })?;
    Ok(Replay {
        members,
        days,
        points,
        warnings,
    })
}

/// [`replay`] without keeping every day in memory: `on_day` gets each day and its points
/// (indexed like the returned member ids). Returns the member ids and the warnings.
pub fn replay_each(
    conn: &Connection,
    cfg: &ScoringConfig,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    mut on_day: impl FnMut(&ReplayDay, &[Option<ReplayPoint>]),
) -> Result<(Vec<String>, Vec<String>), ScoringError> {
    replay_variants(conn, std::slice::from_ref(cfg), from, to, |days, points| {
        on_day(&days[0], &points[0])
    })
}

/// Whether `a` and `b` fit the model the same way (model, priors, window, schedule, time
/// zone), so that their replays can share one fit per day.
fn same_fits(a: &ScoringConfig, b: &ScoringConfig) -> bool {
    a.model == b.model
        && a.prior == b.prior
        && a.prior_bgbb == b.prior_bgbb
        && a.fit_window_days == b.fit_window_days
        && a.min_fit_members == b.min_fit_members
        && a.refit_interval_h == b.refit_interval_h
        && a.default_tz == b.default_tz
        && a.weekly_rhythm == b.weekly_rhythm
}

/// [`replay_each`] for several configurations at once that differ only in their state
/// machine (thresholds, dwell, onboarding rules): the fleet is loaded, summarised and
/// fitted once per day, and each configuration carries its own states. `on_day` gets, per
/// configuration (in the order of `cfgs`), the day and its points. Configurations that
/// fit differently are refused ([`ScoringError::Invalid`]).
pub fn replay_variants(
    conn: &Connection,
    cfgs: &[ScoringConfig],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    mut on_day: impl FnMut(&[ReplayDay], &[Vec<Option<ReplayPoint>>]),
) -> Result<(Vec<String>, Vec<String>), ScoringError> {
    if to < from {
        return Err(ScoringError::Invalid(format!(
            "replay ends ({to}) before it starts ({from})"
        )));
    }
    let Some(cfg) = cfgs.first() else {
        return Err(ScoringError::Invalid(
            "a replay needs at least one scoring configuration".into(),
        ));
    };
    if let Some(other) = cfgs.iter().find(|c| !same_fits(cfg, c)) {
        return Err(ScoringError::Invalid(format!(
            "replayed configurations must fit the model alike (model, priors, fit window, \
             refit interval, default time zone): {:?} differs from {:?}",
            other.model, cfg.model
        )));
    }
    let fleet = Fleet::load(conn, cfg.default_tz())?;
    let ids: Vec<String> = fleet.members.iter().map(|m| m.id.clone()).collect();
    let mut memory: Vec<Vec<Option<Memory>>> = vec![vec![None; fleet.len()]; cfgs.len()];
    let mut warnings = Vec::new();
    let mut params: Option<(Params, bool)> = None; // (params, fitted rather than prior)
    let mut last_fit_ms = i64::MIN;
    let refit_ms = cfg.refit_interval_h as i64 * 3_600_000;
    let mut as_of = from;
    let mut points: Vec<Vec<Option<ReplayPoint>>> = vec![vec![None; fleet.len()]; cfgs.len()];
    let mut days: Vec<ReplayDay> = Vec::with_capacity(cfgs.len());
    while as_of <= to {
        let as_of_ms = as_of.timestamp_millis();
        let mut refitted = false;
        if params.is_none() || as_of_ms.saturating_sub(last_fit_ms) >= refit_ms {
            let last_good = params.filter(|p| p.1).map(|p| p.0);
            let attempt = fit_fleet(&fleet, cfg, as_of, last_good);
            let choice = fit::choose(&attempt, last_good, cfg.prior_for(cfg.model));
            if let Some(w) = choice.warning {
                warnings.push(format!("{}: {w}", as_of.date_naive()));
            }
            refitted = choice.adopted_new;
            params = Some((choice.params, choice.adopted_new || last_good.is_some()));
            last_fit_ms = as_of_ms;
        }
        let p = params.expect("set above").0;
        let as_of_days: Vec<i32> = fleet
            .members
            .iter()
            .map(|m| local_day_of(as_of, m.tz))
            .collect();
        let mds: Vec<Option<MemberDays>> = fleet
            .members
            .iter()
            .zip(&as_of_days)
            .map(|(m, d)| m.days.summarise(Some(m.start_day()), *d, as_of_ms))
            .collect();
        let numbers = engine::numbers_parallel(cfg.model, &p, &mds, &as_of_days, cfg.weekly_rhythm);
        days.clear();
        for (v, c) in cfgs.iter().enumerate() {
            let evals = engine::evaluate_numbers(c, &numbers, &mds, as_of_ms, &memory[v]);
            let mut counts: BTreeMap<State, u64> = State::ALL.iter().map(|s| (*s, 0)).collect();
            for (i, e) in evals.iter().enumerate() {
                points[v][i] = e.map(|e| {
                    memory[v][i] = Some(e.decision.memory);
                    *counts.entry(e.decision.state).or_default() += 1;
                    ReplayPoint {
                        state: e.decision.state,
                        p_engaged: e.numbers.p_engaged,
                        p_silent_14d: e.numbers.p_silent_14d,
                        score: e.numbers.score,
                    }
                });
            }
            days.push(ReplayDay {
                as_of,
                model: cfg.model,
                params: p,
                refitted,
                counts,
            });
        }
        on_day(&days, &points);
        as_of += Duration::milliseconds(DAY_MS);
    }
    Ok((ids, warnings))
}

/// Fills `engagement_daily` for the days from `from` to `to` that have no counts yet, by
/// replaying the scorer day by day (for a store whose history was imported or simulated
/// faster than the live scorer ran, so that the engagement chart has every day). Days
/// already recorded are left alone. Returns the days written.
pub fn backfill_engagement(
    conn: &mut Connection,
    cfg: &ScoringConfig,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<u32, ScoringError> {
    let mut rows: Vec<(String, BTreeMap<State, u64>)> = Vec::new();
    replay_each(conn, cfg, from, to, |d, _| {
        rows.push((d.as_of.format("%Y-%m-%d").to_string(), d.counts.clone()));
    })?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut written = 0;
    for (day, counts) in rows {
        let known: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM engagement_daily WHERE day = ?1)",
            [&day],
            |r| r.get(0),
        )?;
        if known {
            continue;
        }
        for s in State::ALL {
            tx.execute(
                "INSERT INTO engagement_daily (day, state, members) VALUES (?1, ?2, ?3)",
                rusqlite::params![day, s.name(), counts.get(&s).copied().unwrap_or(0) as i64],
            )?;
        }
        written += 1;
    }
    tx.commit()?;
    Ok(written)
}

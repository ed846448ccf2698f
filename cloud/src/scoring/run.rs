//! Scoring runs against the store: choosing (or refitting) the model, one as-of run
//! ([`score_once`]), the live [`Scorer`] that `serve` ticks, and `model fit` on the store.

use super::engine::{self, Evaluated};
use super::fit::{self, FitData, FitError, FitOptions, FitResult};
use super::fleet::Fleet;
use super::model::{ModelKind, NamedParams, Params};
use super::persist::{self, ScoreRow};
use super::state::{Memory, State};
use super::summary::{local_day_of, DaySummary, MemberDays, DAY_MS};
use super::ScoringError;
use crate::config::ScoringConfig;
use crate::metrics::Metrics;
use crate::registry::ms_to_rfc3339;
use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One member's result, as `score --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberScore {
    /// Member id.
    pub id: String,
    /// Engagement state.
    pub state: State,
    /// 0–100: the chance, in percent, of at least one active day in the next 14 days.
    pub score: u8,
    /// P(still engaged).
    pub p_engaged: f64,
    /// P(no active day in the next 14 days).
    pub p_silent_14d: f64,
    /// P(no active day in the next 30 days).
    pub p_silent_30d: f64,
    /// Expected active days in the next 30 days.
    pub expected_active_days_30d: f64,
    /// Usual active days per week while engaged.
    pub rhythm_per_week: f64,
    /// Days since the last active day (null: never active).
    pub days_since_last: Option<u32>,
    /// Days since the member's clock started.
    pub tenure_days: u32,
    /// Distinct active days.
    pub active_days: u32,
    /// Plain-language reasons.
    pub reasons: Vec<String>,
}

/// The model a run scored with.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInUse {
    /// Which model.
    pub model: ModelKind,
    /// Its parameters (time unit: days), in JSON under the model's names.
    pub params: Params,
    /// The stored fit they come from (null: the configured prior).
    pub fit_id: Option<i64>,
    /// The fit's data was as of (null: the prior).
    pub fitted_as_of: Option<String>,
    /// Whether this run refitted the model.
    pub refitted: bool,
}

impl Serialize for ModelInUse {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Out<'a> {
            model: ModelKind,
            params: NamedParams,
            fit_id: Option<i64>,
            fitted_as_of: &'a Option<String>,
            refitted: bool,
        }
        Out {
            model: self.model,
            params: NamedParams(self.model, self.params),
            fit_id: self.fit_id,
            fitted_as_of: &self.fitted_as_of,
            refitted: self.refitted,
        }
        .serialize(s)
    }
}

/// The outcome of one scoring run.
#[derive(Debug, Clone, Serialize)]
pub struct ScoreRun {
    /// The instant scored.
    pub as_of: DateTime<Utc>,
    /// Members per state.
    pub counts: BTreeMap<State, u64>,
    /// Every scored member (empty when the caller did not ask for them).
    pub members: Vec<MemberScore>,
    /// The model used.
    pub model: ModelInUse,
    /// Whether the run was written to the store (runs earlier than the latest stored one,
    /// or later than the clock, are not).
    pub persisted: bool,
    /// Scores (rows) written.
    pub written: u64,
    /// Warnings (fit fell back, too few members, ...).
    pub warnings: Vec<String>,
}

/// The model in use, with the bookkeeping to know when to refit.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCache {
    /// The model.
    pub in_use: ModelInUse,
    /// Data instant of the parameters (Unix ms; `None`: prior).
    pub as_of_ms: Option<i64>,
    /// Instant of the last fit attempt (Unix ms), adopted or not.
    pub attempted_ms: i64,
}

/// The summaries the fleet model is fitted on as of `as_of`: members whose clock started
/// within `fit_window_days`.
pub fn fit_summaries(fleet: &Fleet, cfg: &ScoringConfig, as_of: DateTime<Utc>) -> Vec<DaySummary> {
    let as_of_ms = as_of.timestamp_millis();
    fleet
        .members
        .iter()
        .filter_map(|m| {
            let day = local_day_of(as_of, m.tz);
            let md = m.days.summarise(Some(m.start_day()), day, as_of_ms)?;
            (md.origin_day >= day - cfg.fit_window_days as i32).then_some(md.summary)
        })
        .collect()
}

/// Fits the fleet model as of `as_of` (warm-started from `warm`). Too few members is an error.
pub fn fit_fleet(
    fleet: &Fleet,
    cfg: &ScoringConfig,
    as_of: DateTime<Utc>,
    warm: Option<Params>,
) -> Result<FitResult, FitError> {
    let s = fit_summaries(fleet, cfg, as_of);
    if (s.len() as u64) < cfg.min_fit_members as u64 {
        return Err(FitError::TooFew {
            members: s.len() as u64,
            min: cfg.min_fit_members as u64,
        });
    }
    let data = FitData::new(s, 1.0);
    let mut opts = FitOptions::new(cfg.model);
    opts.warm_start = warm;
    fit::fit(&data, &opts)
}

/// The model to score `as_of` with: the cached or stored fit while it is fresh, else a
/// refit (falling back to the last good parameters, then the prior). `record` writes
/// the fit to the store.
#[allow(clippy::too_many_arguments)]
pub fn model_for(
    conn: &Connection,
    cfg: &ScoringConfig,
    fleet: &Fleet,
    as_of: DateTime<Utc>,
    now: DateTime<Utc>,
    record: bool,
    cache: &mut Option<ModelCache>,
    warnings: &mut Vec<String>,
) -> Result<ModelInUse, ScoringError> {
    let as_of_ms = as_of.timestamp_millis();
    let refit_ms = cfg.refit_interval_h as i64 * 3_600_000;
    let usable = cache
        .clone()
        .filter(|c| c.in_use.model == cfg.model && c.attempted_ms <= as_of_ms);
    if let Some(c) = &usable {
        if as_of_ms - c.attempted_ms < refit_ms {
            let mut m = c.in_use.clone();
            m.refitted = false;
            return Ok(m);
        }
    }
    let stored = persist::last_good_fit(conn, cfg.model, as_of_ms)?;
    if usable.is_none() {
        if let Some(f) = stored.as_ref().filter(|f| as_of_ms - f.as_of_ms < refit_ms) {
            let m = ModelInUse {
                model: f.model,
                params: f.params,
                fit_id: Some(f.id),
                fitted_as_of: Some(ms_to_rfc3339(f.as_of_ms)),
                refitted: false,
            };
            *cache = Some(ModelCache {
                in_use: m.clone(),
                as_of_ms: Some(f.as_of_ms),
                attempted_ms: f.as_of_ms,
            });
            return Ok(m);
        }
    }
    // Last good: what is in use (if fitted), else the store's.
    let last_good: Option<(Params, Option<i64>, i64)> = usable
        .as_ref()
        .and_then(|c| c.as_of_ms.map(|t| (c.in_use.params, c.in_use.fit_id, t)))
        .or_else(|| stored.as_ref().map(|f| (f.params, Some(f.id), f.as_of_ms)));
    let attempt = fit_fleet(fleet, cfg, as_of, last_good.map(|g| g.0));
    let choice = fit::choose(&attempt, last_good.map(|g| g.0), cfg.prior_for(cfg.model));
    if let Some(w) = &choice.warning {
        tracing::warn!(model = %cfg.model, warning = %w, "Model refit not adopted");
        warnings.push(w.clone());
    }
    let mut fit_id = None;
    if record {
        if let Ok(r) = &attempt {
            fit_id = Some(persist::record_fit(
                conn,
                now.timestamp_millis(),
                as_of_ms,
                r.model,
                &r.params,
                r.log_likelihood,
                r.members,
                r.converged,
                choice.adopted_new,
                choice.warning.as_deref(),
            )?);
        }
    }
    // Not adopted and no last good parameters: `choose` gave the prior, reported as such
    // (no fit id, no fitted date).
    let (params_as_of, id) = if choice.adopted_new {
        (Some(as_of_ms), fit_id)
    } else if last_good.is_none() {
        (None, None)
    } else {
        (last_good.map(|g| g.2), last_good.and_then(|g| g.1))
    };
    let m = ModelInUse {
        model: cfg.model,
        params: choice.params,
        fit_id: id,
        fitted_as_of: params_as_of.map(ms_to_rfc3339),
        refitted: choice.adopted_new,
    };
    *cache = Some(ModelCache {
        in_use: m.clone(),
        as_of_ms: params_as_of,
        attempted_ms: as_of_ms,
    });
    Ok(m)
}

/// What a run should do beyond scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Write scores, transitions and fits (only when the run goes neither back before the
    /// latest stored run nor beyond `now`).
    pub persist: bool,
    /// Return every member's score (with reasons) in [`ScoreRun::members`].
    pub with_members: bool,
}

/// Scores `fleet` as of `as_of`. `now` is the clock (stamps fits and runs).
pub fn run_on_fleet(
    conn: &mut Connection,
    cfg: &ScoringConfig,
    fleet: &Fleet,
    as_of: DateTime<Utc>,
    now: DateTime<Utc>,
    opts: RunOptions,
    cache: &mut Option<ModelCache>,
) -> Result<ScoreRun, ScoringError> {
    let as_of_ms = as_of.timestamp_millis();
    let mut warnings = Vec::new();
    // A run dated after the clock is never stored: the latest stored run would be in the
    // future, and every live run before that instant would go unstored.
    let in_future = as_of > now;
    if in_future && opts.persist {
        warnings.push(format!(
            "{} is after the present ({}): this run was not stored",
            as_of.to_rfc3339(),
            now.to_rfc3339()
        ));
    }
    let persist =
        opts.persist && !in_future && persist::last_run_as_of(conn)?.is_none_or(|t| t <= as_of_ms);
    let model = model_for(conn, cfg, fleet, as_of, now, persist, cache, &mut warnings)?;
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
    let stored = if persist {
        persist::load_scores(conn)?
    } else {
        Default::default()
    };
    let memory: Vec<Option<Memory>> = fleet
        .members
        .iter()
        .map(|m| stored.get(&m.id).map(|s| s.memory))
        .collect();
    let evals = engine::evaluate(
        cfg,
        model.model,
        &model.params,
        &mds,
        &as_of_days,
        as_of_ms,
        &memory,
    );
    let mut counts: BTreeMap<State, u64> = State::ALL.iter().map(|s| (*s, 0)).collect();
    let mut members = Vec::new();
    let mut rows: Vec<ScoreRow<'_>> = Vec::new();
    for (m, e) in fleet.members.iter().zip(&evals) {
        let Some(e) = e else { continue };
        *counts.entry(e.decision.state).or_default() += 1;
        let prev = stored.get(&m.id);
        let offline = m
            .offline
            .as_ref()
            .filter(|(_, since)| since.is_none_or(|t| t <= as_of_ms))
            .map(|(d, since)| (d.as_str(), *since));
        let offline_note = persist::offline_note(offline);
        // Rewritten when anything its reasons say has changed.
        let write = persist
            && (e.decision.changed
                || prev.is_none_or(|p| {
                    p.score != e.numbers.score
                        || p.days_since_last != e.numbers.days_since_last
                        || p.tenure_days != e.numbers.tenure_days
                        || p.active_days != e.numbers.active_days
                        || p.memory != e.decision.memory
                        || p.offline_note != offline_note
                }));
        if !write && !opts.with_members {
            continue;
        }
        let reasons = engine::reasons_for(cfg, e, offline, m.tz);
        if opts.with_members {
            members.push(member_score(&m.id, e, reasons.clone()));
        }
        if write {
            rows.push(ScoreRow {
                member_id: &m.id,
                evaluated: e,
                transition_from: e.decision.changed.then(|| prev.map(|p| p.memory.state)),
                reasons,
                offline_note,
            });
        }
    }
    let scored: u64 = counts.values().sum();
    if persist {
        persist::save_run(
            conn,
            as_of_ms,
            now.timestamp_millis(),
            model.fit_id,
            scored,
            &rows,
            &counts,
        )?;
    }
    Ok(ScoreRun {
        as_of,
        counts,
        members,
        model,
        persisted: persist,
        written: rows.len() as u64,
        warnings,
    })
}

fn member_score(id: &str, e: &Evaluated, reasons: Vec<String>) -> MemberScore {
    let n = &e.numbers;
    MemberScore {
        id: id.to_owned(),
        state: e.decision.state,
        score: n.score,
        p_engaged: n.p_engaged,
        p_silent_14d: n.p_silent_14d,
        p_silent_30d: n.p_silent_30d,
        expected_active_days_30d: n.expected_active_days_30d,
        rhythm_per_week: n.rhythm_per_week,
        days_since_last: n.days_since_last,
        tenure_days: n.tenure_days,
        active_days: n.active_days,
        reasons,
    }
}

/// One as-of scoring run against the store: scores every registered member as the fleet
/// stood at `as_of` (usage after it is ignored), refitting the model if the stored fit
/// is older than `refit_interval_h`. The run is persisted (latest scores, transitions,
/// daily counts, the fit) unless it goes back before the latest persisted run, or
/// `as_of` is after `now` (the clock).
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use rollcall_cloud::{config::ScoringConfig, scoring};
/// let mut conn = rollcall_cloud::store::open_writer(std::path::Path::new("data"))?;
/// let now = chrono::Utc::now();
/// let run = scoring::score_once(&mut conn, &ScoringConfig::default(), now, now)?;
/// println!("{:?}", run.counts);
/// # Ok(()) }
/// ```
pub fn score_once(
    conn: &mut Connection,
    cfg: &ScoringConfig,
    as_of: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<ScoreRun, ScoringError> {
    let fleet = Fleet::load(conn, cfg.default_tz())?;
    run_on_fleet(
        conn,
        cfg,
        &fleet,
        as_of,
        now,
        RunOptions {
            persist: true,
            with_members: true,
        },
        &mut None,
    )
}

/// `model fit` on the store: fits the fleet model as of `as_of`, records the fit (adopted
/// when it converged) and returns it.
pub fn fit_store(
    conn: &mut Connection,
    cfg: &ScoringConfig,
    as_of: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<FitResult, ScoringError> {
    let fleet = Fleet::load(conn, cfg.default_tz())?;
    let as_of_ms = as_of.timestamp_millis();
    let last = persist::last_good_fit(conn, cfg.model, as_of_ms)?;
    let r = fit_fleet(&fleet, cfg, as_of, last.as_ref().map(|f| f.params))?;
    if !r.converged {
        tracing::warn!(model = %r.model, "The fit did not converge; scoring keeps the last good parameters, or the configured prior");
    }
    persist::record_fit(
        conn,
        now.timestamp_millis(),
        as_of_ms,
        r.model,
        &r.params,
        r.log_likelihood,
        r.members,
        r.converged,
        r.converged,
        (!r.converged).then_some("did not converge"),
    )?;
    Ok(r)
}

/// What one tick of the live scorer did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TickOutcome {
    /// The instant scored.
    pub as_of: DateTime<Utc>,
    /// Members per state.
    pub counts: BTreeMap<State, u64>,
    /// Whether the model was refitted.
    pub refitted: bool,
    /// Score rows written.
    pub written: u64,
}

/// The live scorer: keeps the fleet and the model between ticks. `serve` calls
/// [`Scorer::tick`] on a schedule with the injected clock's time.
pub struct Scorer {
    cfg: ScoringConfig,
    conn: Connection,
    fleet: Option<Fleet>,
    cache: Option<ModelCache>,
    metrics: Arc<Metrics>,
    last_full_load_ms: i64,
}

impl Scorer {
    /// A scorer writing through `conn` (a writer connection of its own).
    pub fn new(conn: Connection, cfg: ScoringConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            cfg,
            conn,
            fleet: None,
            cache: None,
            metrics,
            last_full_load_ms: i64::MIN,
        }
    }

    /// One run as of `now`: refresh the fleet, refit if due, score, persist, update gauges.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Result<TickOutcome, ScoringError> {
        let started = std::time::Instant::now();
        let now_ms = now.timestamp_millis();
        let tz = self.cfg.default_tz();
        // A full reload once a day is the safety net under the incremental refresh.
        let fleet = match self.fleet.take() {
            Some(mut f) if now_ms - self.last_full_load_ms < DAY_MS => {
                f.refresh(&self.conn, tz)?;
                f
            }
            _ => {
                self.last_full_load_ms = now_ms;
                Fleet::load(&self.conn, tz)?
            }
        };
        let run = run_on_fleet(
            &mut self.conn,
            &self.cfg,
            &fleet,
            now,
            now,
            RunOptions {
                persist: true,
                with_members: false,
            },
            &mut self.cache,
        );
        self.fleet = Some(fleet);
        let run = run?;
        for (s, n) in &run.counts {
            self.metrics
                .scoring_members
                .get_or_create(&crate::metrics::StateLabel {
                    state: s.name().into(),
                })
                .set(*n as i64);
        }
        self.metrics.scoring_runs.inc();
        if run.model.refitted {
            self.metrics.scoring_fits.inc();
        }
        self.metrics
            .scoring_run_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(TickOutcome {
            as_of: run.as_of,
            counts: run.counts,
            refitted: run.model.refitted,
            written: run.written,
        })
    }
}

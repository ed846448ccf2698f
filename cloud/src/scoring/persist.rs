//! Scores, transitions, fits and daily counts in the store (tables and invariants in
//! [`crate::store`]).

use super::model::{ModelKind, Params};
use super::state::{Memory, State};
use super::ScoringError;
use crate::registry::ms_to_rfc3339;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// A stored fit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitRecord {
    /// Row id.
    pub id: i64,
    /// When it was fitted (clock, Unix ms).
    pub fitted_ms: i64,
    /// The data it was fitted on was as of this instant (Unix ms).
    pub as_of_ms: i64,
    /// Model.
    pub model: ModelKind,
    /// Parameters.
    pub params: Params,
    /// Log-likelihood.
    pub log_likelihood: f64,
    /// Members fitted on.
    pub members: u64,
    /// Whether it converged.
    pub converged: bool,
    /// Whether it was adopted for scoring.
    pub adopted: bool,
}

/// Records a fit attempt; returns its id.
#[allow(clippy::too_many_arguments)]
pub fn record_fit(
    conn: &Connection,
    fitted_ms: i64,
    as_of_ms: i64,
    model: ModelKind,
    p: &Params,
    log_likelihood: f64,
    members: u64,
    converged: bool,
    adopted: bool,
    note: Option<&str>,
) -> Result<i64, ScoringError> {
    conn.execute(
        "INSERT INTO model_fits (fitted_ms, as_of_ms, model, r, alpha, a, b, log_likelihood, members, converged, adopted, note)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            fitted_ms,
            as_of_ms,
            model.name(),
            p.r,
            p.alpha,
            p.a,
            p.b,
            if log_likelihood.is_finite() { log_likelihood } else { f64::MIN },
            members as i64,
            converged,
            adopted,
            note
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// The latest adopted fit of `model` fitted on data as of `at_or_before_ms` or earlier.
pub fn last_good_fit(
    conn: &Connection,
    model: ModelKind,
    at_or_before_ms: i64,
) -> Result<Option<FitRecord>, ScoringError> {
    Ok(conn
        .query_row(
            "SELECT id, fitted_ms, as_of_ms, r, alpha, a, b, log_likelihood, members, converged, adopted
             FROM model_fits WHERE model = ?1 AND adopted = 1 AND as_of_ms <= ?2
             ORDER BY as_of_ms DESC, id DESC LIMIT 1",
            params![model.name(), at_or_before_ms],
            |r| {
                Ok(FitRecord {
                    id: r.get(0)?,
                    fitted_ms: r.get(1)?,
                    as_of_ms: r.get(2)?,
                    model,
                    params: Params {
                        r: r.get(3)?,
                        alpha: r.get(4)?,
                        a: r.get(5)?,
                        b: r.get(6)?,
                    },
                    log_likelihood: r.get(7)?,
                    members: r.get::<_, i64>(8)? as u64,
                    converged: r.get(9)?,
                    adopted: r.get(10)?,
                })
            },
        )
        .optional()?)
}

/// The latest run's as-of instant, if any run was persisted.
pub fn last_run_as_of(conn: &Connection) -> Result<Option<i64>, ScoringError> {
    Ok(conn.query_row("SELECT MAX(as_of_ms) FROM scoring_runs", [], |r| r.get(0))?)
}

/// What is stored about a member: the machine's memory and the numbers last written.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredScore {
    /// The machine's memory.
    pub memory: Memory,
    /// Score last written.
    pub score: u8,
    /// Days since last activity last written.
    pub days_since_last: Option<u32>,
    /// Tenure last written.
    pub tenure_days: u32,
    /// Active days last written.
    pub active_days: u32,
    /// The offline device the stored reasons mention ([`offline_note`]).
    pub offline_note: Option<String>,
}

/// How the reasons name an offline device and since when (`None`: no offline device), to
/// tell whether stored reasons are out of date.
pub fn offline_note(offline: Option<(&str, Option<i64>)>) -> Option<String> {
    offline.map(|(device, since)| match since {
        Some(ms) => format!("{device}@{ms}"),
        None => device.to_owned(),
    })
}

/// Every member's stored score, by member id.
pub fn load_scores(conn: &Connection) -> Result<HashMap<String, StoredScore>, ScoringError> {
    let mut st = conn.prepare(
        "SELECT member_id, state, state_since_ms, last_active_at_entry, score, days_since_last, tenure_days, active_days, offline_note FROM member_scores",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<i32>>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<i64>>(5)?,
            r.get::<_, i64>(6)?,
            r.get::<_, i64>(7)?,
            r.get::<_, Option<String>>(8)?,
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (id, state, since, entry, score, dsl, tenure, active, offline_note) = row?;
        let Some(state) = State::parse(&state) else {
            continue;
        };
        out.insert(
            id,
            StoredScore {
                memory: Memory {
                    state,
                    since_ms: since,
                    last_active_at_entry: entry,
                },
                score: score as u8,
                days_since_last: dsl.map(|d| d as u32),
                tenure_days: tenure as u32,
                active_days: active as u32,
                offline_note,
            },
        );
    }
    Ok(out)
}

/// One row to write.
#[derive(Debug, Clone)]
pub struct ScoreRow<'a> {
    /// Member id.
    pub member_id: &'a str,
    /// The result.
    pub evaluated: &'a super::engine::Evaluated,
    /// The previous state, when the state changed (`None` inside: first scoring).
    pub transition_from: Option<Option<State>>,
    /// The reasons.
    pub reasons: Vec<String>,
    /// The offline device they mention ([`offline_note`]).
    pub offline_note: Option<String>,
}

/// Rows per write transaction, so the ingest writer never waits long.
const ROWS_PER_TRANSACTION: usize = 20_000;

/// Writes a run: the scores that changed, their transitions, the daily counts and the run row.
pub fn save_run(
    conn: &mut Connection,
    as_of_ms: i64,
    ran_ms: i64,
    fit_id: Option<i64>,
    members: u64,
    rows: &[ScoreRow<'_>],
    counts: &BTreeMap<State, u64>,
) -> Result<(), ScoringError> {
    for chunk in rows.chunks(ROWS_PER_TRANSACTION) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut up = tx.prepare_cached(
                "INSERT INTO member_scores (member_id, as_of_ms, state, state_since_ms, last_active_at_entry, score, p_engaged,
                    p_silent_14d, p_silent_30d, expected_active_days_30d, rhythm_per_week, days_since_last, tenure_days, active_days, reasons,
                    offline_note)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
                 ON CONFLICT(member_id) DO UPDATE SET as_of_ms = excluded.as_of_ms, state = excluded.state,
                    state_since_ms = excluded.state_since_ms, last_active_at_entry = excluded.last_active_at_entry,
                    score = excluded.score, p_engaged = excluded.p_engaged, p_silent_14d = excluded.p_silent_14d,
                    p_silent_30d = excluded.p_silent_30d, expected_active_days_30d = excluded.expected_active_days_30d,
                    rhythm_per_week = excluded.rhythm_per_week, days_since_last = excluded.days_since_last,
                    tenure_days = excluded.tenure_days, active_days = excluded.active_days, reasons = excluded.reasons,
                    offline_note = excluded.offline_note",
            )?;
            let mut tr = tx.prepare_cached(
                "INSERT INTO state_transitions (member_id, at_ms, old_state, new_state, score, p_engaged, p_silent_14d,
                    days_since_last, tenure_days, active_days, reasons)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for row in chunk {
                let e = row.evaluated;
                let n = &e.numbers;
                let m = &e.decision.memory;
                let reasons = serde_json::to_string(&row.reasons).expect("strings serialise");
                up.execute(params![
                    row.member_id,
                    as_of_ms,
                    e.decision.state.name(),
                    m.since_ms,
                    m.last_active_at_entry,
                    n.score,
                    n.p_engaged,
                    n.p_silent_14d,
                    n.p_silent_30d,
                    n.expected_active_days_30d,
                    n.rhythm_per_week,
                    n.days_since_last,
                    n.tenure_days,
                    n.active_days,
                    reasons,
                    row.offline_note,
                ])?;
                if let Some(old) = row.transition_from {
                    tr.execute(params![
                        row.member_id,
                        as_of_ms,
                        old.map(State::name),
                        e.decision.state.name(),
                        n.score,
                        n.p_engaged,
                        n.p_silent_14d,
                        n.days_since_last,
                        n.tenure_days,
                        n.active_days,
                        reasons
                    ])?;
                }
            }
        }
        tx.commit()?;
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let day = ms_to_rfc3339(as_of_ms)[..10].to_owned();
    for s in State::ALL {
        tx.execute(
            "INSERT INTO engagement_daily (day, state, members) VALUES (?1, ?2, ?3)
             ON CONFLICT(day, state) DO UPDATE SET members = excluded.members",
            params![day, s.name(), counts.get(&s).copied().unwrap_or(0) as i64],
        )?;
    }
    tx.execute(
        "INSERT INTO scoring_runs (as_of_ms, ran_ms, members, changed, fit_id) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![as_of_ms, ran_ms, members as i64, rows.len() as i64, fit_id],
    )?;
    tx.commit()?;
    Ok(())
}

/// A member's stored score, as `members show` and the API print it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreView {
    /// Member id.
    pub id: String,
    /// As of when.
    pub as_of: String,
    /// State.
    pub state: String,
    /// Since when.
    pub state_since: String,
    /// 0–100.
    pub score: u8,
    /// P(engaged).
    pub p_engaged: f64,
    /// P(no active day in the next 14 days).
    pub p_silent_14d: f64,
    /// P(no active day in the next 30 days).
    pub p_silent_30d: f64,
    /// Expected active days in the next 30 days.
    pub expected_active_days_30d: f64,
    /// Usual active days per week.
    pub rhythm_per_week: f64,
    /// Days since the last active day.
    pub days_since_last: Option<u32>,
    /// Days since the member's clock started.
    pub tenure_days: u32,
    /// Distinct active days.
    pub active_days: u32,
    /// Plain-language reasons.
    pub reasons: Vec<String>,
}

/// A recorded state change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransitionView {
    /// When.
    pub at: String,
    /// From (null: first scoring).
    pub old_state: Option<String>,
    /// To.
    pub new_state: String,
    /// Score then.
    pub score: u8,
    /// P(engaged) then.
    pub p_engaged: f64,
    /// P(silent 14 days) then.
    pub p_silent_14d: f64,
    /// Days since last activity then.
    pub days_since_last: Option<u32>,
    /// Reasons then.
    pub reasons: Vec<String>,
}

/// The stored score of one member.
pub fn score_view(conn: &Connection, id: &str) -> Result<Option<ScoreView>, ScoringError> {
    Ok(conn
        .query_row(
            "SELECT member_id, as_of_ms, state, state_since_ms, score, p_engaged, p_silent_14d, p_silent_30d,
                expected_active_days_30d, rhythm_per_week, days_since_last, tenure_days, active_days, reasons
             FROM member_scores WHERE member_id = ?1",
            [id],
            |r| {
                Ok(ScoreView {
                    id: r.get(0)?,
                    as_of: ms_to_rfc3339(r.get(1)?),
                    state: r.get(2)?,
                    state_since: ms_to_rfc3339(r.get(3)?),
                    score: r.get::<_, i64>(4)? as u8,
                    p_engaged: r.get(5)?,
                    p_silent_14d: r.get(6)?,
                    p_silent_30d: r.get(7)?,
                    expected_active_days_30d: r.get(8)?,
                    rhythm_per_week: r.get(9)?,
                    days_since_last: r.get::<_, Option<i64>>(10)?.map(|d| d as u32),
                    tenure_days: r.get::<_, i64>(11)? as u32,
                    active_days: r.get::<_, i64>(12)? as u32,
                    reasons: serde_json::from_str(&r.get::<_, String>(13)?).unwrap_or_default(),
                })
            },
        )
        .optional()?)
}

/// The member's most recent transitions, newest first.
pub fn transitions(
    conn: &Connection,
    id: &str,
    limit: u32,
) -> Result<Vec<TransitionView>, ScoringError> {
    let mut st = conn.prepare(
        "SELECT at_ms, old_state, new_state, score, p_engaged, p_silent_14d, days_since_last, reasons
         FROM state_transitions WHERE member_id = ?1 ORDER BY at_ms DESC, id DESC LIMIT CAST(?2 AS INTEGER)",
    )?;
    let rows = st.query_map(params![id, limit], |r| {
        Ok(TransitionView {
            at: ms_to_rfc3339(r.get(0)?),
            old_state: r.get(1)?,
            new_state: r.get(2)?,
            score: r.get::<_, i64>(3)? as u8,
            p_engaged: r.get(4)?,
            p_silent_14d: r.get(5)?,
            days_since_last: r.get::<_, Option<i64>>(6)?.map(|d| d as u32),
            reasons: serde_json::from_str(&r.get::<_, String>(7)?).unwrap_or_default(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Counts by state now and per day, for `GET /api/v1/engagement/summary`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngagementSummary {
    /// The latest run's as-of instant (null before the first run).
    pub as_of: Option<String>,
    /// Members per state now.
    pub counts: BTreeMap<String, u64>,
    /// Members per state at the last run of each day, oldest first.
    pub by_day: Vec<DayCounts>,
}

/// One day's counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayCounts {
    /// UTC date.
    pub day: String,
    /// Members per state.
    pub counts: BTreeMap<String, u64>,
}

/// Reads the engagement summary (the last `days` days).
pub fn engagement_summary(conn: &Connection, days: u32) -> Result<EngagementSummary, ScoringError> {
    let as_of = last_run_as_of(conn)?.map(ms_to_rfc3339);
    let mut counts: BTreeMap<String, u64> = State::ALL
        .iter()
        .map(|s| (s.name().to_owned(), 0))
        .collect();
    let mut st = conn.prepare("SELECT state, COUNT(*) FROM member_scores GROUP BY state")?;
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (s, n) = row?;
        counts.insert(s, n as u64);
    }
    let mut st = conn.prepare(
        "SELECT day, state, members FROM engagement_daily
         WHERE day IN (SELECT DISTINCT day FROM engagement_daily ORDER BY day DESC LIMIT CAST(?1 AS INTEGER))
         ORDER BY day",
    )?;
    let mut by_day: Vec<DayCounts> = Vec::new();
    for row in st.query_map([days], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })? {
        let (day, s, n) = row?;
        if by_day.last().is_none_or(|d| d.day != day) {
            by_day.push(DayCounts {
                day: day.clone(),
                counts: BTreeMap::new(),
            });
        }
        by_day
            .last_mut()
            .expect("pushed")
            .counts
            .insert(s, n as u64);
    }
    Ok(EngagementSummary {
        as_of,
        counts,
        by_day,
    })
}

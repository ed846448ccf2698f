//! Engagement over the fleet, for the business: members per state per day, the
//! transitions between states, members who joined and members who were lost (entered
//! `lapsed`), the paginated list of members in a state with their reasons, and the CSV
//! export. Days are UTC calendar days, as `engagement_daily` records them.

use crate::registry::ms_to_rfc3339;
use crate::scoring::state::State;
use chrono::NaiveDate;
use rusqlite::{params, Connection};
use serde::Serialize;
use std::collections::BTreeMap;

/// Why an engagement query was refused.
#[derive(Debug, thiserror::Error)]
pub enum EngagementError {
    /// Not a state name.
    #[error("unknown state {0:?}: use new, active, champion, lapsing or lapsed")]
    State(String),
    /// Not a sort key.
    #[error("unknown sort {0:?}: use score, p_engaged, p_silent_14d, days_since_last, state_since or id")]
    Sort(String),
    /// The date range is backwards or too long.
    #[error("from must not be after to, and the range at most 3660 days")]
    Range,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] rusqlite::Error),
    /// Reading the scoring runs failed.
    #[error(transparent)]
    Scoring(#[from] crate::scoring::ScoringError),
    /// Writing the CSV failed.
    #[error("CSV: {0}")]
    Csv(String),
}

/// One day of the summary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    /// UTC date.
    pub day: String,
    /// Members per state at the day's last scoring run (empty: no run that day).
    pub counts: BTreeMap<String, u64>,
    /// State changes that day, as `"old->new"` (`none->x`: first scored).
    pub transitions: BTreeMap<String, u64>,
    /// Members who joined that day.
    pub new_members: u64,
    /// Members who entered `lapsed` that day.
    pub lost_members: u64,
}

/// `GET /api/v1/engagement/summary`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The latest scoring run's as-of instant.
    pub as_of: Option<String>,
    /// First day of the range.
    pub from: String,
    /// Last day of the range.
    pub to: String,
    /// Members per state now.
    pub counts: BTreeMap<String, u64>,
    /// Totals over the range: transitions, new and lost members.
    pub transitions: BTreeMap<String, u64>,
    /// Members who joined in the range.
    pub new_members: u64,
    /// Members who entered `lapsed` in the range.
    pub lost_members: u64,
    /// Day by day, oldest first (every day of the range).
    pub by_day: Vec<Day>,
}

fn day_ms(d: NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc()
        .timestamp_millis()
}

/// The summary for the UTC days `from..=to`.
pub fn summary(
    conn: &Connection,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Summary, EngagementError> {
    if from > to || (to - from).num_days() > 3660 {
        return Err(EngagementError::Range);
    }
    let as_of = crate::scoring::persist::last_run_as_of(conn)?.map(ms_to_rfc3339);
    let mut counts: BTreeMap<String, u64> = State::ALL
        .iter()
        .map(|s| (s.name().to_owned(), 0))
        .collect();
    let mut st = conn.prepare_cached("SELECT state, COUNT(*) FROM member_scores GROUP BY state")?;
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (s, n) = row?;
        counts.insert(s, n as u64);
    }
    let mut days: BTreeMap<String, Day> = BTreeMap::new();
    let mut d = from;
    while d <= to {
        let key = d.format("%Y-%m-%d").to_string();
        days.insert(
            key.clone(),
            Day {
                day: key,
                counts: BTreeMap::new(),
                transitions: BTreeMap::new(),
                new_members: 0,
                lost_members: 0,
            },
        );
        d = d.succ_opt().expect("date in range");
    }
    let (lo, hi) = (day_ms(from), day_ms(to) + 86_400_000);
    let mut st = conn.prepare_cached(
        "SELECT day, state, members FROM engagement_daily WHERE day >= ?1 AND day <= ?2",
    )?;
    for row in st.query_map(
        params![
            from.format("%Y-%m-%d").to_string(),
            to.format("%Y-%m-%d").to_string()
        ],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        },
    )? {
        let (day, s, n) = row?;
        if let Some(d) = days.get_mut(&day) {
            d.counts.insert(s, n as u64);
        }
    }
    let mut transitions = BTreeMap::new();
    let mut lost = 0;
    let mut st = conn.prepare_cached(
        "SELECT day, old_state, new_state, n FROM engagement_transitions_daily
         WHERE day >= ?1 AND day <= ?2",
    )?;
    let range = params![
        from.format("%Y-%m-%d").to_string(),
        to.format("%Y-%m-%d").to_string()
    ];
    for row in st.query_map(range, |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)? as u64,
        ))
    })? {
        let (day, old, new, n) = row?;
        let key = format!("{old}->{new}");
        *transitions.entry(key.clone()).or_insert(0) += n;
        if let Some(d) = days.get_mut(&day) {
            *d.transitions.entry(key).or_insert(0) += n;
            if new == "lapsed" {
                d.lost_members += n;
            }
        }
        if new == "lapsed" {
            lost += n;
        }
    }
    let mut new_members = 0;
    let mut st = conn.prepare_cached(
        // Grouped by the indexed expression's UTC day number, so the index answers alone.
        "SELECT COALESCE(joined_ms, created_ms) / 86400000, COUNT(*) FROM members
         WHERE COALESCE(joined_ms, created_ms) >= ?1 AND COALESCE(joined_ms, created_ms) < ?2
         GROUP BY 1",
    )?;
    for row in st.query_map(params![lo, hi], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64))
    })? {
        let (day, n) = row?;
        let day = crate::scoring::summary::date_of(day as i32)
            .format("%Y-%m-%d")
            .to_string();
        new_members += n;
        if let Some(d) = days.get_mut(&day) {
            d.new_members += n;
        }
    }
    Ok(Summary {
        as_of,
        from: from.format("%Y-%m-%d").to_string(),
        to: to.format("%Y-%m-%d").to_string(),
        counts,
        transitions,
        new_members,
        lost_members: lost,
        by_day: days.into_values().collect(),
    })
}

/// How to sort the member list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Score, lowest first by default.
    Score,
    /// P(engaged).
    PEngaged,
    /// P(silent for 14 days).
    PSilent14d,
    /// Days since the last activity.
    DaysSinceLast,
    /// When the member entered the state.
    StateSince,
    /// Member id.
    Id,
}

impl Sort {
    /// Parses a sort key; a leading `-` means descending.
    pub fn parse(s: &str) -> Result<(Sort, bool), EngagementError> {
        let (desc, key) = match s.strip_prefix('-') {
            Some(k) => (true, k),
            None => (false, s),
        };
        let sort = match key {
            "score" => Sort::Score,
            "p_engaged" => Sort::PEngaged,
            "p_silent_14d" => Sort::PSilent14d,
            "days_since_last" => Sort::DaysSinceLast,
            "state_since" => Sort::StateSince,
            "id" => Sort::Id,
            _ => return Err(EngagementError::Sort(s.to_owned())),
        };
        Ok((sort, desc))
    }

    fn column(self) -> &'static str {
        match self {
            Sort::Score => "s.score",
            Sort::PEngaged => "s.p_engaged",
            Sort::PSilent14d => "s.p_silent_14d",
            Sort::DaysSinceLast => "COALESCE(s.days_since_last, 1000000)",
            Sort::StateSince => "s.state_since_ms",
            Sort::Id => "s.member_id",
        }
    }
}

/// A member in the engagement list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Member id.
    pub id: String,
    /// Name (absent for roles that may not see names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// State.
    pub state: String,
    /// Since when.
    pub state_since: String,
    /// Score 0–100.
    pub score: u8,
    /// P(engaged).
    pub p_engaged: f64,
    /// P(no active day in 14 days).
    pub p_silent_14d: f64,
    /// Days since the last activity.
    pub days_since_last: Option<u32>,
    /// Usual active days per week.
    pub rhythm_per_week: f64,
    /// Plain-language reasons.
    pub reasons: Vec<String>,
}

/// A page of the member list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page {
    /// Members matching in all.
    pub total: u64,
    /// This page (from 1).
    pub page: u32,
    /// Page size.
    pub per_page: u32,
    /// The members on it.
    pub members: Vec<Row>,
}

/// Parses an optional state filter.
pub fn parse_state(s: Option<&str>) -> Result<Option<State>, EngagementError> {
    s.map(|s| State::parse(s).ok_or_else(|| EngagementError::State(s.to_owned())))
        .transpose()
}

/// One page of members (optionally in one state), sorted.
pub fn members(
    conn: &Connection,
    state: Option<State>,
    sort: Sort,
    desc: bool,
    page: u32,
    per_page: u32,
    with_names: bool,
) -> Result<Page, EngagementError> {
    let state = state.map(|s| s.name());
    let total: i64 = conn.query_row(
        "SELECT COUNT(*) FROM member_scores WHERE ?1 IS NULL OR state = ?1",
        [state],
        |r| r.get(0),
    )?;
    let rows = fetch(
        conn,
        state,
        sort,
        desc,
        Some((per_page, u64::from(page.max(1) - 1) * u64::from(per_page))),
        with_names,
    )?;
    Ok(Page {
        total: total as u64,
        page: page.max(1),
        per_page,
        members: rows,
    })
}

fn fetch(
    conn: &Connection,
    state: Option<&str>,
    sort: Sort,
    desc: bool,
    limit_offset: Option<(u32, u64)>,
    with_names: bool,
) -> Result<Vec<Row>, EngagementError> {
    let sql = format!(
        "SELECT s.member_id, m.name, s.state, s.state_since_ms, s.score, s.p_engaged, s.p_silent_14d,
                s.days_since_last, s.rhythm_per_week, s.reasons
         FROM member_scores s JOIN members m ON m.id = s.member_id
         WHERE ?1 IS NULL OR s.state = ?1
         ORDER BY {} {}, s.member_id LIMIT CAST(?2 AS INTEGER) OFFSET ?3",
        sort.column(),
        if desc { "DESC" } else { "ASC" }
    );
    let (limit, offset) = limit_offset.map_or((-1i64, 0i64), |(l, o)| {
        (i64::from(l), i64::try_from(o).unwrap_or(i64::MAX))
    });
    let mut st = conn.prepare_cached(&sql)?;
    let rows = st.query_map(params![state, limit, offset], |r| {
        Ok(Row {
            id: r.get(0)?,
            name: if with_names { Some(r.get(1)?) } else { None },
            state: r.get(2)?,
            state_since: ms_to_rfc3339(r.get(3)?),
            score: r.get::<_, i64>(4)? as u8,
            p_engaged: r.get(5)?,
            p_silent_14d: r.get(6)?,
            days_since_last: r.get::<_, Option<i64>>(7)?.map(|d| d as u32),
            rhythm_per_week: r.get(8)?,
            reasons: serde_json::from_str(&r.get::<_, String>(9)?).unwrap_or_default(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Writes every scored member (optionally in one state) as CSV: `id[,name],state,
/// state_since,score,p_engaged,p_silent_14d,days_since_last,rhythm_per_week,reasons`
/// (reasons joined with ` | `).
pub fn export_csv(
    conn: &Connection,
    state: Option<State>,
    with_names: bool,
) -> Result<Vec<u8>, EngagementError> {
    let rows = fetch(
        conn,
        state.map(|s| s.name()),
        Sort::Id,
        false,
        None,
        with_names,
    )?;
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["id"];
    if with_names {
        header.push("name");
    }
    header.extend([
        "state",
        "state_since",
        "score",
        "p_engaged",
        "p_silent_14d",
        "days_since_last",
        "rhythm_per_week",
        "reasons",
    ]);
    let io = |e: csv::Error| EngagementError::Csv(e.to_string());
    w.write_record(&header).map_err(io)?;
    for r in rows {
        let mut rec = vec![r.id];
        if let Some(n) = r.name {
            rec.push(spreadsheet_safe(n));
        }
        rec.extend([
            r.state,
            r.state_since,
            r.score.to_string(),
            format!("{:.4}", r.p_engaged),
            format!("{:.4}", r.p_silent_14d),
            r.days_since_last.map(|d| d.to_string()).unwrap_or_default(),
            format!("{:.2}", r.rhythm_per_week),
            r.reasons.join(" | "),
        ]);
        w.write_record(&rec).map_err(io)?;
    }
    w.into_inner()
        .map_err(|e| EngagementError::Csv(e.into_error().to_string()))
}

/// A text cell that a spreadsheet will not run as a formula: one starting with `=`, `+`,
/// `-`, `@`, a tab or a carriage return gets a leading `'` (OWASP's advice for CSV
/// injection). Names are entered by people and imported from other systems.
pub fn spreadsheet_safe(cell: String) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_a_spreadsheet_would_run_as_formulas_are_quoted() {
        for bad in ["=HYPERLINK(\"http://x\")", "+1+1", "-2", "@SUM(A1)", "\tx"] {
            assert_eq!(spreadsheet_safe(bad.into()), format!("'{bad}"));
        }
        for fine in ["Maria Rossi", "O'Brien", "Zoë"] {
            assert_eq!(spreadsheet_safe(fine.into()), fine);
        }
    }
}

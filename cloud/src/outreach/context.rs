//! What a template sees: the member's profile and a summary of their usage, computed from
//! the store as of the injected clock's `now`, in the member's own calendar.
//!
//! | variable | meaning |
//! |---|---|
//! | `member.id`, `member.name`, `member.first_name` | who |
//! | `member.email`, `member.plan`, `member.tz` | profile (`tz` is the zone used; `member.tz_known` false when it is the business's) |
//! | `member.joined`, `member.tenure_days` | when they joined (`YYYY-MM-DD`), days since |
//! | `member.device_model` | the `model` attribute the device last reported, else `outreach.default_device_model` |
//! | `usage.total`, `usage.active_days` | uses (sum of quantities) and distinct active days, ever |
//! | `usage.this_month`, `usage.last_month` | uses in the current and previous calendar month |
//! | `usage.this_month_by_kind` | uses in the current calendar month, by kind (`{"brew": 23}`) |
//! | `usage.last_active_day`, `usage.last_active_weekday`, `usage.days_silent` | the last active day (`YYYY-MM-DD`, `Tuesday`) and days since (null: never used) |
//! | `usage.favourite_kind`, `usage.favourite_attribute`, `usage.favourite_value` | the most used kind (`brew`) and its most common attribute (`drink` = `latte`), or null |
//! | `usage.current_streak`, `usage.longest_streak` | consecutive active days |
//! | `state.name`, `state.score`, `state.reasons` | engagement state, score and plain-language reasons (null/empty before scoring) |
//! | `trigger.kind`, `trigger.at` | what raised the message |
//! | `business.name`, `optout_url` | the business, and the member's one-click opt-out link |
//! | `consumables` | the member's consumable slots as their devices last reported them: `[{slot, sku, level, capacity, percent}]` (empty when no device tracks any) |
//! | `milestone.uses`, `milestone.streak_days` | milestone triggers only |
//! | `order.id`, `order.sku`, `order.amount`, `order.currency`, `order.cancellable_until` | order triggers only |

use super::config::OutreachConfig;
use super::triggers::Trigger;
use super::{OutreachError, TriggerKind};
use crate::scoring::summary::{date_of, local_day};
use chrono::{DateTime, Datelike, TimeZone as _, Utc};
use chrono_tz::Tz;
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;
use std::collections::BTreeMap;

/// What policy needs to know about a member.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberFacts {
    /// Member id.
    pub id: String,
    /// The time zone used for calendar days and quiet hours.
    pub tz: Tz,
    /// True when the member's own zone is unknown and the business's is used.
    pub tz_fallback: bool,
    /// E-mail address.
    pub email: Option<String>,
    /// The member's most recently registered device.
    pub device: Option<String>,
    /// Current engagement state (null before scoring).
    pub state: Option<String>,
}

/// A member's usage, summarised.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageSummary {
    /// Uses ever (sum of quantities).
    pub total: u64,
    /// Distinct active days ever.
    pub active_days: u32,
    /// Uses in the current calendar month.
    pub this_month: u64,
    /// Uses in the previous calendar month.
    pub last_month: u64,
    /// Uses in the current calendar month, by kind.
    pub this_month_by_kind: BTreeMap<String, u64>,
    /// Last active day, `YYYY-MM-DD`.
    pub last_active_day: Option<String>,
    /// Its weekday (`Tuesday`).
    pub last_active_weekday: Option<String>,
    /// Days since the last active day.
    pub days_silent: Option<i64>,
    /// Most used kind.
    pub favourite_kind: Option<String>,
    /// Most common attribute key of the favourite kind.
    pub favourite_attribute: Option<String>,
    /// … and its most common value.
    pub favourite_value: Option<String>,
    /// Consecutive active days ending today or yesterday.
    pub current_streak: u32,
    /// Longest run of consecutive active days.
    pub longest_streak: u32,
    /// First day of the current streak (day number; internal).
    #[serde(skip)]
    pub streak_start_day: Option<i32>,
    /// When the `milestone`-th use happened (Unix ms; internal).
    #[serde(skip)]
    pub milestone_reached_ms: Option<i64>,
    /// The `model` attribute last reported (internal).
    #[serde(skip)]
    pub device_model: Option<String>,
}

/// Summarises the member's usage up to `now` in `tz`; `milestone` is the use count whose
/// crossing instant is recorded.
pub fn summarise_usage(
    conn: &Connection,
    member_id: &str,
    tz: Tz,
    now: DateTime<Utc>,
    milestone: u64,
) -> Result<UsageSummary, OutreachError> {
    let now_ms = now.timestamp_millis();
    let today = local_day(now_ms, tz);
    let local_now = now.with_timezone(&tz);
    let month = (local_now.year(), local_now.month());
    let prev_month = if month.1 == 1 {
        (month.0 - 1, 12)
    } else {
        (month.0, month.1 - 1)
    };
    // Read each of the member's devices (and their imported usage) by primary key: a
    // device's events are stored together, so this is a few range scans rather than a
    // lookup per event through the member index. Sorted by time here.
    let mut st = conn.prepare_cached(
        "SELECT e.kind, e.qty, e.occurred_ms, e.attrs FROM devices d
           CROSS JOIN events e ON e.device_id = d.id
         WHERE d.member_id = ?1 AND e.occurred_ms <= ?2
         UNION ALL
         SELECT kind, qty, occurred_ms, attrs FROM events
         WHERE device_id = 'import:' || ?1 AND occurred_ms <= ?2",
    )?;
    // Kinds and raw attribute texts repeat: each distinct one is copied out of SQLite
    // once, and the rows become small `Copy` tuples (time, kind, qty, attrs) to sort.
    let mut kinds: Vec<String> = Vec::new();
    let mut attr_texts: Vec<(usize, String)> = Vec::new();
    let mut rows: Vec<(i64, usize, u64, Option<usize>)> = Vec::new();
    let mut q = st.query(rusqlite::params![member_id, now_ms])?;
    while let Some(r) = q.next()? {
        let kind = r.get_ref(0)?.as_str().map_err(rusqlite::Error::from)?;
        let k = match kinds.iter().position(|x| x == kind) {
            Some(k) => k,
            None => {
                kinds.push(kind.to_owned());
                kinds.len() - 1
            }
        };
        let qty = r.get::<_, i64>(1)?.max(0) as u64;
        let ms: i64 = r.get(2)?;
        let text = r
            .get_ref(3)?
            .as_str_or_null()
            .map_err(rusqlite::Error::from)?;
        let a =
            text.map(
                |text| match attr_texts.iter().position(|(ak, t)| *ak == k && t == text) {
                    Some(i) => i,
                    None => {
                        attr_texts.push((k, text.to_owned()));
                        attr_texts.len() - 1
                    }
                },
            );
        rows.push((ms, k, qty, a));
    }
    rows.sort_by_key(|e| e.0);
    let mut s = UsageSummary::default();
    let mut days: Vec<i32> = Vec::with_capacity(rows.len());
    let mut by_kind = vec![0u64; kinds.len()];
    let mut this_month_by_kind: Vec<Option<u64>> = vec![None; kinds.len()];
    // Attributes are counted as raw JSON per kind and parsed once per distinct value at
    // the end: a member's events repeat the same few combinations.
    let mut attr_qty = vec![0u64; attr_texts.len()];
    let mut last_with_model: Option<usize> = None;
    let mut last_day: Option<(i32, bool, bool)> = None;
    for &(ms, k, qty, a) in &rows {
        let before = s.total;
        s.total += qty;
        if before < milestone && s.total >= milestone {
            s.milestone_reached_ms = Some(ms);
        }
        let day = local_day(ms, tz);
        // Rows are in time order, so a day's month is worked out once.
        let (in_month, in_prev) = match last_day {
            Some((d, m, p)) if d == day => (m, p),
            _ => {
                days.push(day);
                let d = date_of(day);
                let ym = (d.year(), d.month());
                let v = (ym == month, ym == prev_month);
                last_day = Some((day, v.0, v.1));
                v
            }
        };
        if in_month {
            s.this_month += qty;
            *this_month_by_kind[k].get_or_insert(0) += qty;
        } else if in_prev {
            s.last_month += qty;
        }
        by_kind[k] += qty;
        if let Some(a) = a {
            if attr_texts[a].1.contains("\"model\"") {
                last_with_model = Some(a);
            }
            attr_qty[a] += qty;
        }
    }
    s.this_month_by_kind = kinds
        .iter()
        .zip(&this_month_by_kind)
        .filter_map(|(k, q)| q.map(|q| (k.clone(), q)))
        .collect();
    let mut attrs_by_kind: BTreeMap<usize, BTreeMap<(String, String), u64>> = BTreeMap::new();
    for ((k, raw), qty) in attr_texts.iter().zip(&attr_qty) {
        if let Ok(map) = serde_json::from_str::<BTreeMap<String, String>>(raw) {
            for (key, v) in map.into_iter().filter(|(key, _)| key != "model") {
                *attrs_by_kind
                    .entry(*k)
                    .or_default()
                    .entry((key, v))
                    .or_default() += qty;
            }
        }
    }
    s.device_model = last_with_model
        .and_then(|a| serde_json::from_str::<BTreeMap<String, String>>(&attr_texts[a].1).ok())
        .and_then(|mut m| m.remove("model"));
    s.active_days = days.len() as u32;
    if let Some(&last) = days.last() {
        let d = date_of(last);
        s.last_active_day = Some(d.format("%Y-%m-%d").to_string());
        s.last_active_weekday = Some(d.format("%A").to_string());
        s.days_silent = Some((today - last).max(0) as i64);
    }
    // Most used kind; ties go to the alphabetically first, so the choice is stable.
    if let Some(k) =
        (0..kinds.len()).max_by(|&a, &b| by_kind[a].cmp(&by_kind[b]).then(kinds[b].cmp(&kinds[a])))
    {
        s.favourite_kind = Some(kinds[k].clone());
        if let Some(((ak, av), _)) = attrs_by_kind
            .get(&k)
            .and_then(|m| m.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))))
        {
            s.favourite_attribute = Some(ak.clone());
            s.favourite_value = Some(av.clone());
        }
    }
    let mut run = 0u32;
    let mut prev: Option<i32> = None;
    let mut run_start = 0;
    for &d in &days {
        if prev == Some(d - 1) {
            run += 1;
        } else {
            run = 1;
            run_start = d;
        }
        s.longest_streak = s.longest_streak.max(run);
        prev = Some(d);
    }
    if let Some(last) = prev {
        if last >= today - 1 {
            s.current_streak = run;
            s.streak_start_day = Some(run_start);
        }
    }
    Ok(s)
}

/// The member's facts, or `None` when there is no such member or the member was erased
/// (an erased member gets no outreach: see [`crate::profile`]).
pub fn facts(
    conn: &Connection,
    cfg: &OutreachConfig,
    member_id: &str,
) -> Result<Option<MemberFacts>, OutreachError> {
    let row: Option<(Option<String>, Option<String>)> = conn
        .query_row(
            "SELECT tz, email FROM members WHERE id = ?1 AND erased_ms IS NULL",
            [member_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((tz, email)) = row else {
        return Ok(None);
    };
    let own: Option<Tz> = tz.and_then(|t| t.parse().ok());
    let device = conn
        .query_row(
            "SELECT id FROM devices WHERE member_id = ?1 ORDER BY registered_ms DESC, id LIMIT 1",
            [member_id],
            |r| r.get(0),
        )
        .optional()?;
    let state = conn
        .query_row(
            "SELECT state FROM member_scores WHERE member_id = ?1",
            [member_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(Some(MemberFacts {
        id: member_id.to_owned(),
        tz: own.unwrap_or_else(|| cfg.business_tz()),
        tz_fallback: own.is_none(),
        email,
        device,
        state,
    }))
}

fn first_name(name: &str) -> String {
    name.split_whitespace().next().unwrap_or(name).to_owned()
}

/// Builds the template context for `member_id` and `trigger` as of `now`.
pub fn build(
    conn: &Connection,
    cfg: &OutreachConfig,
    facts: &MemberFacts,
    trigger: &Trigger,
    optout_url: &str,
    now: DateTime<Utc>,
) -> Result<serde_json::Value, OutreachError> {
    let (name, plan, joined_ms): (String, Option<String>, i64) = conn.query_row(
        "SELECT name, plan, COALESCE(joined_ms, created_ms) FROM members WHERE id = ?1",
        [&facts.id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let usage = summarise_usage(conn, &facts.id, facts.tz, now, cfg.milestone_uses)?;
    let score: Option<(i64, String)> = conn
        .query_row(
            "SELECT score, reasons FROM member_scores WHERE member_id = ?1",
            [&facts.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let joined_day = local_day(joined_ms, facts.tz);
    let tenure = (local_day(now.timestamp_millis(), facts.tz) - joined_day).max(0);
    let model = usage
        .device_model
        .clone()
        .unwrap_or_else(|| cfg.default_device_model.clone());
    let mut v = serde_json::json!({
        "member": {
            "id": facts.id,
            "name": name,
            "first_name": first_name(&name),
            "email": facts.email,
            "plan": plan,
            "tz": facts.tz.name(),
            "tz_known": !facts.tz_fallback,
            "joined": date_of(joined_day).format("%Y-%m-%d").to_string(),
            "tenure_days": tenure,
            "device_model": model,
        },
        "usage": usage,
        "state": {
            "name": facts.state,
            "score": score.as_ref().map(|s| s.0),
            "reasons": score.as_ref().map(|s| serde_json::from_str::<Vec<String>>(&s.1).unwrap_or_default()).unwrap_or_default(),
        },
        "trigger": {
            "kind": trigger.kind.name(),
            "at": Utc.timestamp_millis_opt(trigger.at_ms).single().unwrap_or(now).to_rfc3339(),
        },
        "business": { "name": cfg.business_name },
        "optout_url": optout_url,
        "consumables": consumable_levels(conn, &facts.id)?,
    });
    add_trigger_data(&mut v, trigger.kind, &trigger.data, cfg);
    Ok(v)
}

/// The consumable levels the member's devices last reported.
fn consumable_levels(
    conn: &Connection,
    member_id: &str,
) -> Result<Vec<serde_json::Value>, OutreachError> {
    let mut st = conn.prepare_cached(
        "SELECT health FROM devices WHERE member_id = ?1 AND health IS NOT NULL ORDER BY id",
    )?;
    let mut out = Vec::new();
    for h in st.query_map([member_id], |r| r.get::<_, String>(0))? {
        let h: serde_json::Value = serde_json::from_str(&h?).unwrap_or_default();
        let Some(levels) = h.get("consumables") else {
            continue;
        };
        for l in serde_json::from_value::<Vec<rollcall_shared::payload::SlotLevel>>(levels.clone())
            .unwrap_or_default()
        {
            let percent = (l.level.max(0) * 100 / i64::from(l.capacity.max(1))).min(100);
            out.push(serde_json::json!({
                "slot": l.slot.as_str(), "sku": l.sku.as_str(), "level": l.level,
                "capacity": l.capacity, "percent": percent,
            }));
        }
    }
    Ok(out)
}

fn add_trigger_data(
    v: &mut serde_json::Value,
    kind: TriggerKind,
    data: &serde_json::Value,
    cfg: &OutreachConfig,
) {
    match kind {
        TriggerKind::MilestoneUses | TriggerKind::MilestoneStreak => {
            v["milestone"] = serde_json::json!({
                "uses": cfg.milestone_uses,
                "streak_days": cfg.milestone_streak_days,
            });
        }
        TriggerKind::OrderAccepted | TriggerKind::OrderCancellable => {
            v["order"] = data.clone();
        }
        _ => {}
    }
}

/// A full sample context for `kind` (what [`super::templates::Templates::load`] renders).
pub fn sample(kind: TriggerKind, cfg: &OutreachConfig) -> serde_json::Value {
    let mut v = serde_json::json!({
        "member": {
            "id": "m-sample", "name": "Maria Lopez", "first_name": "Maria",
            "email": "maria@example.com", "plan": "monthly", "tz": "Europe/Berlin",
            "tz_known": true, "joined": "2025-03-14", "tenure_days": 420,
            "device_model": "Barista Pro",
        },
        "usage": UsageSummary {
            total: 412, active_days: 198, this_month: 9, last_month: 31,
            this_month_by_kind: BTreeMap::from([("brew".to_owned(), 9)]),
            last_active_day: Some("2026-05-12".into()),
            last_active_weekday: Some("Tuesday".into()), days_silent: Some(9),
            favourite_kind: Some("brew".into()), favourite_attribute: Some("drink".into()),
            favourite_value: Some("latte".into()), current_streak: 0, longest_streak: 34,
            ..Default::default()
        },
        "state": {
            "name": "lapsing", "score": 31,
            "reasons": ["No activity for 9 days; usually about 5 active days a week."],
        },
        "trigger": { "kind": kind.name(), "at": "2026-05-21T09:00:00+00:00" },
        "business": { "name": cfg.business_name },
        "optout_url": format!("{}/api/v1/optout?token=sample", cfg.public_url),
        "consumables": [
            {"slot": "pods", "sku": "POD-CLASSIC", "level": 12, "capacity": 60, "percent": 20},
        ],
    });
    let order = super::triggers::OrderEvent::sample_data();
    add_trigger_data(&mut v, kind, &order, cfg);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn usage_is_summarised_in_the_members_calendar() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open_writer(dir.path()).unwrap();
        conn.execute(
            "INSERT INTO members (id, name, created_ms) VALUES ('m1', 'Ana', 0)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO devices (id, member_id, public_key, registered_ms) VALUES ('d1', 'm1', x'00', 0)",
            [],
        )
        .unwrap();
        let ev = |seq: i64, at: &str, kind: &str, attrs: Option<&str>| {
            conn.execute(
                "INSERT INTO events (device_id, seq, member_id, kind, qty, occurred_ms, received_ms, attrs, fingerprint)
                 VALUES ('d1', ?1, 'm1', ?2, 1, ?3, ?3, ?4, 0)",
                rusqlite::params![seq, kind, ms(at), attrs],
            )
            .unwrap();
        };
        ev(
            1,
            "2026-02-27T10:00:00Z",
            "brew",
            Some(r#"{"drink":"espresso"}"#),
        );
        ev(
            2,
            "2026-03-01T10:00:00Z",
            "brew",
            Some(r#"{"drink":"latte","model":"Barista Pro"}"#),
        );
        ev(
            3,
            "2026-03-02T10:00:00Z",
            "brew",
            Some(r#"{"drink":"latte"}"#),
        );
        ev(4, "2026-03-03T10:00:00Z", "clean", None);
        let now = DateTime::parse_from_rfc3339("2026-03-04T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = summarise_usage(&conn, "m1", chrono_tz::UTC, now, 3).unwrap();
        assert_eq!(
            (s.total, s.this_month, s.last_month, s.active_days),
            (4, 3, 1, 4)
        );
        assert_eq!(s.favourite_kind.as_deref(), Some("brew"));
        assert_eq!(s.favourite_value.as_deref(), Some("latte"));
        assert_eq!(s.device_model.as_deref(), Some("Barista Pro"));
        assert_eq!(s.current_streak, 3);
        assert_eq!(s.longest_streak, 3);
        assert_eq!(s.days_silent, Some(1));
        assert_eq!(s.last_active_weekday.as_deref(), Some("Tuesday"));
        assert_eq!(s.milestone_reached_ms, Some(ms("2026-03-02T10:00:00Z")));
    }
}

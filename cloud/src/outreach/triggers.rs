//! Finding triggers, and the episode each belongs to.
//!
//! - **State transitions** (`state_transitions`, read past a cursor): into `lapsing` from
//!   `new`/`active`/`champion` → `to_lapsing`; into `lapsed` → `to_lapsed`; from
//!   `lapsing`/`lapsed` back to `active`/`champion` → `welcome_back`; from `new`/`active`
//!   into `champion` → `champion`. A member's first scoring (no old state) raises nothing.
//!   Key: `transition:{id}`. Episode: transitions of the same kind less than
//!   `outreach.episode_gap_days` apart chain into one episode named after the first, so a
//!   member who flaps in and out of `lapsing` is one episode.
//! - **Onboarding**: `onboarding_welcome` for members who joined within
//!   `onboarding_lookback_days` (key `onboarding:welcome`); `onboarding_nudge` on days 7 to
//!   `7 + onboarding_lookback_days` after joining when the member has at most
//!   `nudge_max_active_days` active days (key `onboarding:nudge`).
//! - **Milestones**, for members with usage committed since the last look (followed by
//!   `events.commit_seq`, so events committed late, such as held reports released when
//!   their device is registered, are seen too):
//!   `milestone_uses` when the `milestone_uses`-th use happened within
//!   `milestone_lookback_days` (key `milestone:uses:N`); `milestone_streak` when the current
//!   streak is `milestone_streak_days` to `+ lookback` long (key `milestone:streak:{first day}`).
//! - **Orders**: raised by the orders code with an [`OrderEvent`] (key
//!   `order:{id}:{accepted|cancellable}`).

use super::config::OutreachConfig;
use super::context;
use super::{OutreachError, TriggerKind};
use crate::scoring::summary::{local_day, DAY_MS};
use chrono::{DateTime, Utc};
use rollcall_shared::MemberId;
use rusqlite::{params, Connection};
use serde::Serialize;

/// One trigger occurrence for one member.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trigger {
    /// What happened.
    pub kind: TriggerKind,
    /// To whom.
    pub member_id: String,
    /// Unique per occurrence (re-raising the same key changes nothing).
    pub key: String,
    /// The episode it belongs to (one message per rule, member, episode and channel).
    pub episode: String,
    /// When it happened (Unix ms).
    pub at_ms: i64,
    /// Trigger-specific data (the order for order triggers).
    pub data: serde_json::Value,
}

/// Which order trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderTrigger {
    /// The order was accepted (raises `order_accepted`).
    Accepted,
    /// The order can still be cancelled (raises `order_cancellable`).
    Cancellable,
}

/// A device order, as the orders/ledger code reports it to outreach through
/// [`super::Outreach::raise_order`], inside the transaction that records the order.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderEvent {
    /// Which trigger.
    pub kind: OrderTrigger,
    /// The member who ordered.
    pub member_id: MemberId,
    /// The order's id.
    pub order_id: String,
    /// What was ordered.
    pub sku: String,
    /// Amount in minor units (cents).
    pub amount_minor: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Until when the member can cancel (for `cancellable`).
    pub cancellable_until: Option<DateTime<Utc>>,
}

impl OrderEvent {
    /// The trigger this event raises at `now`.
    pub fn trigger(&self, now: DateTime<Utc>) -> Trigger {
        let (kind, suffix) = match self.kind {
            OrderTrigger::Accepted => (TriggerKind::OrderAccepted, "accepted"),
            OrderTrigger::Cancellable => (TriggerKind::OrderCancellable, "cancellable"),
        };
        let key = format!("order:{}:{suffix}", self.order_id);
        Trigger {
            kind,
            member_id: self.member_id.as_str().to_owned(),
            episode: key.clone(),
            key,
            at_ms: now.timestamp_millis(),
            data: serde_json::json!({
                "id": self.order_id,
                "sku": self.sku,
                "amount": format!("{}.{:02}", self.amount_minor / 100, (self.amount_minor % 100).abs()),
                "currency": self.currency,
                "cancellable_until": self.cancellable_until.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()),
            }),
        }
    }

    /// The `order` object of the sample context.
    pub fn sample_data() -> serde_json::Value {
        serde_json::json!({
            "id": "ord-1042", "sku": "pods-latte-50", "amount": "24.90", "currency": "EUR",
            "cancellable_until": "2026-05-22 18:00 UTC",
        })
    }
}

/// The trigger kind of a state change, if any.
pub fn transition_kind(old: Option<&str>, new: &str) -> Option<TriggerKind> {
    let old = old?;
    let lapse = |s: &str| matches!(s, "lapsing" | "lapsed");
    match new {
        "lapsing" if !lapse(old) => Some(TriggerKind::ToLapsing),
        "lapsed" if old != "lapsed" => Some(TriggerKind::ToLapsed),
        "active" | "champion" if lapse(old) => Some(TriggerKind::WelcomeBack),
        "champion" if matches!(old, "new" | "active") => Some(TriggerKind::Champion),
        _ => None,
    }
}

/// A state change read from `state_transitions`.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionRow {
    /// Row id.
    pub id: i64,
    /// Member.
    pub member_id: String,
    /// When (Unix ms).
    pub at_ms: i64,
    /// From.
    pub old_state: Option<String>,
    /// To.
    pub new_state: String,
}

/// Transitions after `cursor` (at most `limit`), oldest first.
pub fn transitions_after(
    conn: &Connection,
    cursor: i64,
    limit: u32,
) -> Result<Vec<TransitionRow>, OutreachError> {
    let mut st = conn.prepare_cached(
        "SELECT id, member_id, at_ms, old_state, new_state FROM state_transitions
         WHERE id > ?1 ORDER BY id LIMIT CAST(?2 AS INTEGER)",
    )?;
    let rows = st.query_map(params![cursor, limit], |r| {
        Ok(TransitionRow {
            id: r.get(0)?,
            member_id: r.get(1)?,
            at_ms: r.get(2)?,
            old_state: r.get(3)?,
            new_state: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The trigger a transition raises, with its episode.
pub fn transition_trigger(
    conn: &Connection,
    cfg: &OutreachConfig,
    t: &TransitionRow,
) -> Result<Option<Trigger>, OutreachError> {
    let Some(kind) = transition_kind(t.old_state.as_deref(), &t.new_state) else {
        return Ok(None);
    };
    // Walk back over earlier transitions of the same kind while they are close enough.
    let gap = cfg.episode_gap_days as i64 * DAY_MS;
    let mut st = conn.prepare_cached(
        "SELECT id, at_ms, old_state, new_state FROM state_transitions
         WHERE member_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT 200",
    )?;
    let earlier: Vec<(i64, i64, Option<String>, String)> = st
        .query_map(params![t.member_id, t.id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut start = (t.id, t.at_ms);
    for (id, at, old, new) in earlier {
        if start.1 - at > gap {
            break;
        }
        if transition_kind(old.as_deref(), &new) == Some(kind) {
            start = (id, at);
        }
    }
    Ok(Some(Trigger {
        kind,
        member_id: t.member_id.clone(),
        key: format!("transition:{}", t.id),
        episode: format!("{}:{}", kind.name(), start.0),
        at_ms: t.at_ms,
        data: serde_json::json!({"old_state": t.old_state, "new_state": t.new_state}),
    }))
}

/// Onboarding triggers as of `now`.
pub fn onboarding_triggers(
    conn: &Connection,
    cfg: &OutreachConfig,
    now: DateTime<Utc>,
) -> Result<Vec<Trigger>, OutreachError> {
    let now_ms = now.timestamp_millis();
    let look = cfg.onboarding_lookback_days as i64 * DAY_MS;
    let mut out = Vec::new();
    let mut st = conn.prepare_cached(
        "SELECT id, COALESCE(joined_ms, created_ms) AS j FROM members
         WHERE j <= ?1 AND j > ?2 ORDER BY id",
    )?;
    let rows: Vec<(String, i64)> = st
        .query_map(params![now_ms, now_ms - 7 * DAY_MS - look], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    for (id, joined) in rows {
        if joined > now_ms - look {
            out.push(Trigger {
                kind: TriggerKind::OnboardingWelcome,
                member_id: id.clone(),
                key: "onboarding:welcome".into(),
                episode: "onboarding:welcome".into(),
                at_ms: joined,
                data: serde_json::Value::Null,
            });
        }
        let Some(f) = context::facts(conn, cfg, &id)? else {
            continue;
        };
        let day7 = local_day(joined, f.tz) + 7;
        let today = local_day(now_ms, f.tz);
        if today >= day7 && today < day7 + cfg.onboarding_lookback_days.max(1) as i32 {
            let u = context::summarise_usage(conn, &id, f.tz, now, cfg.milestone_uses)?;
            if u.active_days <= cfg.nudge_max_active_days {
                out.push(Trigger {
                    kind: TriggerKind::OnboardingNudge,
                    member_id: id.clone(),
                    key: "onboarding:nudge".into(),
                    episode: "onboarding:nudge".into(),
                    at_ms: now_ms,
                    data: serde_json::json!({"active_days": u.active_days}),
                });
            }
        }
    }
    Ok(out)
}

/// Milestone triggers for members with events committed after commit sequence number
/// `after` and up to `upto` (`events.commit_seq`, see [`crate::store::next_commit_seq`]).
pub fn milestone_triggers(
    conn: &Connection,
    cfg: &OutreachConfig,
    after: i64,
    upto: i64,
    now: DateTime<Utc>,
) -> Result<Vec<Trigger>, OutreachError> {
    let now_ms = now.timestamp_millis();
    let mut st = conn.prepare_cached(
        "SELECT DISTINCT member_id FROM events WHERE commit_seq > ?1 AND commit_seq <= ?2",
    )?;
    let members: Vec<String> = st
        .query_map(params![after, upto], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let look = cfg.milestone_lookback_days as i64 * DAY_MS;
    let mut out = Vec::new();
    for id in members {
        let Some(f) = context::facts(conn, cfg, &id)? else {
            continue;
        };
        let u = context::summarise_usage(conn, &id, f.tz, now, cfg.milestone_uses)?;
        if let Some(at) = u.milestone_reached_ms.filter(|at| *at > now_ms - look) {
            let key = format!("milestone:uses:{}", cfg.milestone_uses);
            out.push(Trigger {
                kind: TriggerKind::MilestoneUses,
                member_id: id.clone(),
                episode: key.clone(),
                key,
                at_ms: at,
                data: serde_json::json!({"uses": cfg.milestone_uses}),
            });
        }
        let need = cfg.milestone_streak_days;
        if u.current_streak >= need && u.current_streak < need + cfg.milestone_lookback_days.max(1)
        {
            let start = u.streak_start_day.unwrap_or_default();
            let key = format!("milestone:streak:{start}");
            out.push(Trigger {
                kind: TriggerKind::MilestoneStreak,
                member_id: id.clone(),
                episode: key.clone(),
                key,
                at_ms: now_ms,
                data: serde_json::json!({"streak_days": u.current_streak}),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_map_to_trigger_kinds() {
        use TriggerKind::*;
        assert_eq!(transition_kind(Some("active"), "lapsing"), Some(ToLapsing));
        assert_eq!(transition_kind(Some("new"), "lapsing"), Some(ToLapsing));
        assert_eq!(transition_kind(Some("lapsing"), "lapsed"), Some(ToLapsed));
        assert_eq!(
            transition_kind(Some("lapsing"), "active"),
            Some(WelcomeBack)
        );
        assert_eq!(
            transition_kind(Some("lapsed"), "champion"),
            Some(WelcomeBack)
        );
        assert_eq!(transition_kind(Some("active"), "champion"), Some(Champion));
        assert_eq!(transition_kind(Some("new"), "active"), None);
        assert_eq!(transition_kind(None, "lapsing"), None);
    }
}

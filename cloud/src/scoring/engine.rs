//! One scoring pass over a fleet: the model's numbers per member, the fleet ranking for
//! `champion`, and the state machine. Pure and in memory: the live scorer, `score
//! --as-of`, the replay and the benchmark all call [`evaluate`].

use super::model::{self, ModelKind, Params};
use super::reasons::{self, ReasonInput};
use super::rhythm::{self, DayChances, UsualDays};
use super::state::{self, Decision, Memory, Observation, Rank};
use super::summary::{date_of, MemberDays};
use crate::config::ScoringConfig;
use serde::Serialize;

/// Days in the "next 14 days" silence horizon.
pub const SILENT_SHORT_DAYS: f64 = 14.0;
/// Days in the "next 30 days" horizons.
pub const SILENT_LONG_DAYS: f64 = 30.0;

/// What the model says about one member (time unit: days).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Numbers {
    /// P(still engaged).
    pub p_engaged: f64,
    /// P(no active day in the next 14 days).
    pub p_silent_14d: f64,
    /// P(no active day in the next 30 days).
    pub p_silent_30d: f64,
    /// Expected active days in the next 30 days (at most 30).
    pub expected_active_days_30d: f64,
    /// Usual active days per week while engaged.
    pub rhythm_per_week: f64,
    /// The weekdays the member is usually active on, when they have a weekly rhythm.
    pub usual_days: Option<UsualDays>,
    /// Days since the last active day (`None`: never active).
    pub days_since_last: Option<u32>,
    /// Days since the member's clock started.
    pub tenure_days: u32,
    /// Distinct active days.
    pub active_days: u32,
    /// How often an engaged member goes this long without activity.
    pub p_silence_if_engaged: f64,
    /// 0–100: the chance, in percent, of at least one active day in the next 14 days.
    pub score: u8,
}

/// The model's numbers for a member as of `as_of_day`. With `weekly_rhythm` BG/BB also
/// reads the member's days by weekday ([`super::rhythm`]).
pub fn numbers(
    kind: ModelKind,
    p: &Params,
    md: &MemberDays,
    as_of_day: i32,
    weekly_rhythm: bool,
) -> Numbers {
    let s = md.summary.to_rft(1.0);
    let chances = if weekly_rhythm {
        DayChances::Weekly {
            weekdays: md.weekdays,
            origin_weekday: rhythm::weekday(md.origin_day),
        }
    } else {
        DayChances::Pooled
    };
    let o = model::member_outputs(kind, p, &s, [SILENT_SHORT_DAYS, SILENT_LONG_DAYS], &chances);
    let p_silent_14d = o.p_silent[0];
    Numbers {
        p_engaged: o.p_engaged,
        p_silent_14d,
        p_silent_30d: o.p_silent[1],
        expected_active_days_30d: o.expected_active.min(SILENT_LONG_DAYS),
        rhythm_per_week: (7.0 * o.rate).min(7.0),
        usual_days: o.usual_days,
        days_since_last: md.last_active_day.map(|d| (as_of_day - d).max(0) as u32),
        tenure_days: md.summary.t_days,
        active_days: md.active_days,
        p_silence_if_engaged: o.p_silence_if_engaged,
        score: (100.0 * (1.0 - p_silent_14d)).round().clamp(0.0, 100.0) as u8,
    }
}

/// Expected-active-days thresholds for the champion ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankThresholds {
    /// At or above: in the champion fraction.
    pub top: f64,
    /// At or above: in the wider keep fraction.
    pub keep: f64,
}

/// Fewest established members for a ranking to mean anything.
const MIN_RANKED: usize = 10;

/// Thresholds over the *established* members (past onboarding, enough active days).
pub fn rank_thresholds(cfg: &ScoringConfig, nums: &[Option<Numbers>]) -> Option<RankThresholds> {
    let mut v: Vec<f64> = nums
        .iter()
        .flatten()
        .filter(|n| established(cfg, n))
        .map(|n| n.expected_active_days_30d)
        .collect();
    if v.len() < MIN_RANKED {
        return None;
    }
    let mut at = |fraction: f64| -> f64 {
        let k = ((v.len() as f64) * (1.0 - fraction)).floor() as usize;
        let k = k.min(v.len() - 1);
        *v.select_nth_unstable_by(k, f64::total_cmp).1
    };
    Some(RankThresholds {
        top: at(cfg.champion_top_fraction),
        keep: at(cfg.champion_keep_fraction),
    })
}

fn established(cfg: &ScoringConfig, n: &Numbers) -> bool {
    n.tenure_days >= cfg.onboarding_days && n.active_days >= cfg.onboarding_min_active_days
}

/// The member's rank by expected active days.
pub fn rank(th: Option<&RankThresholds>, n: &Numbers) -> Rank {
    match th {
        Some(t) if n.expected_active_days_30d >= t.top && n.expected_active_days_30d > 0.0 => {
            Rank::Top
        }
        Some(t) if n.expected_active_days_30d >= t.keep && n.expected_active_days_30d > 0.0 => {
            Rank::Keep
        }
        _ => Rank::Below,
    }
}

/// One member's result of a pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluated {
    /// The model's numbers.
    pub numbers: Numbers,
    /// The state machine's decision.
    pub decision: Decision,
}

/// A whole pass: numbers for every member (in parallel), ranking, state machine.
/// `members[i]` is `None` for a member whose clock had not started; `memory[i]` is what
/// the machine remembers of member `i`.
pub fn evaluate(
    cfg: &ScoringConfig,
    kind: ModelKind,
    params: &Params,
    members: &[Option<MemberDays>],
    as_of_days: &[i32],
    as_of_ms: i64,
    memory: &[Option<Memory>],
) -> Vec<Option<Evaluated>> {
    let nums = numbers_parallel(kind, params, members, as_of_days, cfg.weekly_rhythm);
    evaluate_numbers(cfg, &nums, members, as_of_ms, memory)
}

/// [`evaluate`] from numbers already computed ([`numbers_parallel`]): ranking and state
/// machine only, so that several state machines can share one computation of the numbers.
pub fn evaluate_numbers(
    cfg: &ScoringConfig,
    nums: &[Option<Numbers>],
    members: &[Option<MemberDays>],
    as_of_ms: i64,
    memory: &[Option<Memory>],
) -> Vec<Option<Evaluated>> {
    let th = rank_thresholds(cfg, nums);
    nums.iter()
        .zip(members)
        .enumerate()
        .map(|(i, (n, md))| {
            let (n, md) = (n.as_ref()?, md.as_ref()?);
            let o = Observation {
                as_of_ms,
                tenure_days: n.tenure_days,
                active_days: n.active_days,
                last_active_day: md.last_active_day,
                days_since_last: n.days_since_last,
                p_engaged: n.p_engaged,
                p_silence_if_engaged: n.p_silence_if_engaged,
                rank: rank(th.as_ref(), n),
            };
            let decision = state::step(cfg, memory.get(i).and_then(|m| m.as_ref()), &o);
            Some(Evaluated {
                numbers: *n,
                decision,
            })
        })
        .collect()
}

/// The model's numbers for many members ([`numbers`]), split over the available cores.
pub fn numbers_parallel(
    kind: ModelKind,
    params: &Params,
    members: &[Option<MemberDays>],
    as_of_days: &[i32],
    weekly_rhythm: bool,
) -> Vec<Option<Numbers>> {
    let one = |(md, day): (&Option<MemberDays>, &i32)| {
        md.as_ref()
            .map(|m| numbers(kind, params, m, *day, weekly_rhythm))
    };
    let threads = super::threads(16);
    if threads < 2 || members.len() < 20_000 {
        return members.iter().zip(as_of_days).map(one).collect();
    }
    let chunk = members.len().div_ceil(threads);
    std::thread::scope(|sc| {
        let parts: Vec<_> = members
            .chunks(chunk)
            .zip(as_of_days.chunks(chunk))
            .map(|(m, d)| sc.spawn(move || m.iter().zip(d).map(one).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("scoring thread"))
            .collect()
    })
}

/// The plain-language reasons for one evaluated member. `offline` is a device whose
/// latest status (at or before the run) is offline, with the instant it went offline.
pub fn reasons_for(
    cfg: &ScoringConfig,
    e: &Evaluated,
    offline: Option<(&str, Option<i64>)>,
    tz: chrono_tz::Tz,
) -> Vec<String> {
    let n = &e.numbers;
    let offline = offline.map(|(d, since)| {
        (
            d,
            since.map(|ms| date_of(super::summary::local_day(ms, tz)).to_string()),
        )
    });
    reasons::reasons(
        cfg,
        &ReasonInput {
            state: e.decision.state,
            rule: e.decision.rule,
            rhythm_per_week: n.rhythm_per_week,
            usual_days: n.usual_days,
            days_since_last: n.days_since_last,
            p_silence_if_engaged: n.p_silence_if_engaged,
            p_engaged: n.p_engaged,
            tenure_days: n.tenure_days,
            active_days: n.active_days,
            expected_active_days_30d: n.expected_active_days_30d,
            offline_device: offline,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::bgbb::BgbbParams;
    use crate::scoring::summary::{day_number, ActiveDays, DAY_MS};
    use chrono::NaiveDate;

    /// A member who used the device every Tuesday (in Berlin) for twelve weeks, the last
    /// on 2026-03-24, scored through the same path as the live scorer on `date`.
    fn tuesday_member(date: (u32, u32), weekly_rhythm: bool) -> Numbers {
        let tz: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
        let first = NaiveDate::from_ymd_opt(2026, 1, 6).unwrap(); // a Tuesday
        let instants = (0..12).map(|w| {
            let d = first + chrono::Duration::weeks(w);
            // 07:30 local: the day before in UTC would be wrong, the local day is right.
            d.and_hms_opt(6, 30, 0)
                .unwrap()
                .and_utc()
                .timestamp_millis()
        });
        let days = ActiveDays::from_instants(instants, tz);
        let as_of = day_number(NaiveDate::from_ymd_opt(2026, date.0, date.1).unwrap());
        let md = days
            .summarise(
                Some(day_number(first) - 1),
                as_of,
                (as_of as i64 + 1) * DAY_MS,
            )
            .unwrap();
        let p = BgbbParams {
            alpha: 1.3,
            beta: 0.85,
            gamma: 0.6,
            delta: 240.0,
        }
        .to_slots();
        numbers(ModelKind::Bgbb, &p, &md, as_of, weekly_rhythm)
    }

    #[test]
    fn a_weekly_member_is_scored_by_their_own_weekday() {
        // Monday 30 March: six silent days, none of them a Tuesday. Ordinary for them.
        let (weekly, pooled) = (
            tuesday_member((3, 30), true),
            tuesday_member((3, 30), false),
        );
        assert!(weekly.p_engaged > 0.95, "{weekly:?}");
        assert!(weekly.p_engaged > pooled.p_engaged, "{weekly:?} {pooled:?}");
        assert_eq!(
            weekly.usual_days.map(UsualDays::phrase).as_deref(),
            Some("on Tuesdays")
        );
        assert_eq!(pooled.usual_days, None);
        // Wednesday 1 April: their Tuesday went by without them.
        let (weekly, pooled) = (tuesday_member((4, 1), true), tuesday_member((4, 1), false));
        assert!(weekly.p_engaged < pooled.p_engaged, "{weekly:?} {pooled:?}");
        // To BG/BB eight silent days are common for someone active one day in seven; to
        // the weekly reading a missed Tuesday is rare.
        assert!(pooled.p_silence_if_engaged > 0.2, "{pooled:?}");
        assert!(weekly.p_silence_if_engaged < 0.05, "{weekly:?}");
    }
}

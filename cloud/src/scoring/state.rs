//! The engagement state machine: `new`, `active`, `champion`, `lapsing`, `lapsed`.
//!
//! ```text
//!            onboarding window over, ≥ min active days
//!   new ───────────────────────────────────────────────► active ◄──► champion
//!    │  no use after no_start_days, or < min active days      │  ▲        (top fraction and
//!    │  when the window closes (onboarding rule)              │  │         clearly engaged)
//!    ▼                                                         ▼  │ p > exit and new activity
//!   lapsing ◄──────────────────── p_engaged < enter ──────────────┘
//!    │  ▲ new activity and p > exit
//!    ▼  │
//!   lapsed (p_engaged < lapsed_below)
//! ```
//!
//! Hysteresis: a member enters `lapsing` when `p_engaged` falls below
//! `lapsing_enter_below`, or when their silence is one an engaged member with their own
//! rhythm goes through less often than `lapsing_silence_below`, and leaves it (or `lapsed`) only when it is back above the higher
//! `lapsing_exit_above` *and* there has been activity since the member entered. A
//! champion keeps the title in a wider band than it takes to win it. And no state changes
//! sooner than `min_dwell_days` after the previous change. The machine is a pure
//! function ([`step`]) of what it remembers ([`Memory`]) and what one run observed
//! ([`Observation`]); the live scorer and the replay call the very same function.

use super::summary::DAY_MS;
use crate::config::ScoringConfig;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A member's engagement state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// In the onboarding window (first days, or too few active days yet).
    New,
    /// Engaged.
    Active,
    /// Top of the fleet and clearly engaged.
    Champion,
    /// Drifting away.
    Lapsing,
    /// Probably gone.
    Lapsed,
}

impl State {
    /// Every state, in display order.
    pub const ALL: [State; 5] = [
        State::New,
        State::Active,
        State::Champion,
        State::Lapsing,
        State::Lapsed,
    ];
    /// The state's name.
    pub fn name(self) -> &'static str {
        match self {
            State::New => "new",
            State::Active => "active",
            State::Champion => "champion",
            State::Lapsing => "lapsing",
            State::Lapsed => "lapsed",
        }
    }
    /// Parses a state name.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.name() == s)
    }
    fn is_lapse(self) -> bool {
        matches!(self, State::Lapsing | State::Lapsed)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which rule decided the state (drives the plain-language reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Inside the onboarding window.
    Onboarding,
    /// Onboarding rule: no active day `no_start_days` after joining.
    NeverStarted,
    /// Onboarding rule: the window closed with fewer than the minimum active days.
    SlowStart,
    /// Onboarding rule: a member still in their first `onboarding_watch_days` went
    /// silent for `onboarding_fade_days` (started, then faded: the January sign-up).
    FadedStart,
    /// The model says engaged.
    Engaged,
    /// Top fraction and clearly engaged.
    Champion,
    /// `p_engaged` fell below the lapsing threshold.
    ModelLapsing,
    /// `p_engaged` fell below the lapsed threshold.
    ModelLapsed,
    /// Hysteresis: still lapsing (or lapsed) until new activity lifts `p_engaged` above the exit threshold.
    Held,
    /// Minimum dwell: the state changed too recently to change again (the wanted state is kept here).
    Dwell(State),
}

/// What the machine remembers about a member between runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Current state.
    pub state: State,
    /// When the member entered it (Unix ms).
    pub since_ms: i64,
    /// The member's last active day when they entered it (day number), to tell new activity.
    pub last_active_at_entry: Option<i32>,
}

/// How a member ranks against the fleet by expected active days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rank {
    /// In the champion fraction.
    Top,
    /// In the wider fraction a champion keeps the title in.
    Keep,
    /// Below both.
    Below,
}

/// What one scoring run observed about a member.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// The run's instant (Unix ms).
    pub as_of_ms: i64,
    /// Days since the member's clock started.
    pub tenure_days: u32,
    /// Distinct active days so far.
    pub active_days: u32,
    /// The last active day (day number).
    pub last_active_day: Option<i32>,
    /// Days since the last active day (`None`: never active).
    pub days_since_last: Option<u32>,
    /// The model's P(engaged).
    pub p_engaged: f64,
    /// How often an engaged member with this rhythm goes this long without activity.
    pub p_silence_if_engaged: f64,
    /// Rank by expected active days.
    pub rank: Rank,
}

/// The machine's answer for one member.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// The state after this run.
    pub state: State,
    /// The rule that decided it.
    pub rule: Rule,
    /// Whether the state differs from the remembered one (or there was none).
    pub changed: bool,
    /// What to remember.
    pub memory: Memory,
}

/// The state the rules want, before minimum dwell.
fn wanted(cfg: &ScoringConfig, prev: Option<&Memory>, o: &Observation) -> (State, Rule) {
    if o.tenure_days < cfg.onboarding_days {
        if o.active_days == 0 && o.tenure_days >= cfg.no_start_days {
            return (State::Lapsing, Rule::NeverStarted);
        }
        return (State::New, Rule::Onboarding);
    }
    if o.p_engaged < cfg.lapsed_below {
        return (State::Lapsed, Rule::ModelLapsed);
    }
    if o.active_days < cfg.onboarding_min_active_days {
        return (State::Lapsing, Rule::SlowStart);
    }
    if let Some(m) = prev.filter(|m| m.state.is_lapse()) {
        let new_activity = o.last_active_day > m.last_active_at_entry;
        if !(new_activity && o.p_engaged > cfg.lapsing_exit_above) {
            return (m.state, Rule::Held);
        }
    } else if o.p_engaged < cfg.lapsing_enter_below
        || o.p_silence_if_engaged < cfg.lapsing_silence_below
    {
        return (State::Lapsing, Rule::ModelLapsing);
    } else if cfg.onboarding_fade_days > 0
        && o.tenure_days < cfg.onboarding_watch_days
        && o.days_since_last
            .is_some_and(|d| d >= cfg.onboarding_fade_days)
    {
        return (State::Lapsing, Rule::FadedStart);
    }
    let was_champion = prev.is_some_and(|m| m.state == State::Champion);
    let champion = if was_champion {
        o.rank != Rank::Below && o.p_engaged >= cfg.champion_keep_p_engaged
    } else {
        o.rank == Rank::Top && o.p_engaged >= cfg.champion_min_p_engaged
    };
    if champion {
        (State::Champion, Rule::Champion)
    } else {
        (State::Active, Rule::Engaged)
    }
}

/// One step of the machine.
pub fn step(cfg: &ScoringConfig, prev: Option<&Memory>, o: &Observation) -> Decision {
    let (want, rule) = wanted(cfg, prev, o);
    match prev {
        Some(m) if m.state == want => Decision {
            state: want,
            rule,
            changed: false,
            memory: *m,
        },
        Some(m) if o.as_of_ms - m.since_ms < cfg.min_dwell_days as i64 * DAY_MS => Decision {
            state: m.state,
            rule: Rule::Dwell(want),
            changed: false,
            memory: *m,
        },
        _ => Decision {
            state: want,
            rule,
            changed: true,
            memory: Memory {
                state: want,
                since_ms: o.as_of_ms,
                last_active_at_entry: o.last_active_day,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = DAY_MS;

    /// Round thresholds, so that the tests read as transitions (the tuned defaults are
    /// checked by the evaluation, not here).
    fn cfg() -> ScoringConfig {
        ScoringConfig {
            lapsing_enter_below: 0.5,
            lapsing_exit_above: 0.7,
            lapsed_below: 0.2,
            ..ScoringConfig::default()
        }
    }

    fn obs(day: i64, p: f64, last_active_day: Option<i32>) -> Observation {
        Observation {
            as_of_ms: day * DAY,
            tenure_days: 100 + day as u32,
            active_days: 40,
            last_active_day,
            days_since_last: Some(0),
            p_engaged: p,
            p_silence_if_engaged: 1.0,
            rank: Rank::Below,
        }
    }

    fn remembered(state: State, day: i64, last: Option<i32>) -> Memory {
        Memory {
            state,
            since_ms: day * DAY,
            last_active_at_entry: last,
        }
    }

    #[test]
    fn active_to_lapsing_when_p_engaged_falls_below_the_entry_threshold() {
        let m = remembered(State::Active, 0, Some(0));
        let d = step(&cfg(), Some(&m), &obs(10, 0.45, Some(0)));
        assert_eq!(
            (d.state, d.rule, d.changed),
            (State::Lapsing, Rule::ModelLapsing, true)
        );
        assert_eq!(d.memory.since_ms, 10 * DAY);
        // Just above the entry threshold: stays active.
        let d = step(&cfg(), Some(&m), &obs(10, 0.55, Some(0)));
        assert_eq!(d.state, State::Active);
    }

    #[test]
    fn lapsing_stays_in_the_hysteresis_band_between_entry_and_exit() {
        let m = remembered(State::Lapsing, 0, Some(0));
        // p back to 0.6 (above entry 0.5, below exit 0.7) after new activity: still lapsing.
        let d = step(&cfg(), Some(&m), &obs(10, 0.6, Some(9)));
        assert_eq!((d.state, d.rule), (State::Lapsing, Rule::Held));
    }

    #[test]
    fn lapsing_does_not_return_to_active_without_new_activity() {
        // A refit can raise p_engaged without any usage: that is not a comeback.
        let m = remembered(State::Lapsing, 0, Some(0));
        let d = step(&cfg(), Some(&m), &obs(10, 0.9, Some(0)));
        assert_eq!((d.state, d.rule), (State::Lapsing, Rule::Held));
    }

    #[test]
    fn lapsing_returns_to_active_after_new_activity_above_the_exit_threshold() {
        let m = remembered(State::Lapsing, 0, Some(0));
        let d = step(&cfg(), Some(&m), &obs(10, 0.8, Some(10)));
        assert_eq!((d.state, d.changed), (State::Active, true));
    }

    #[test]
    fn lapsing_to_lapsed_when_p_engaged_falls_below_the_lapsed_threshold() {
        let m = remembered(State::Lapsing, 0, Some(0));
        let d = step(&cfg(), Some(&m), &obs(10, 0.1, Some(0)));
        assert_eq!((d.state, d.rule), (State::Lapsed, Rule::ModelLapsed));
    }

    #[test]
    fn lapsed_stays_lapsed_without_new_activity() {
        let m = remembered(State::Lapsed, 0, Some(0));
        let d = step(&cfg(), Some(&m), &obs(10, 0.3, Some(0)));
        assert_eq!((d.state, d.rule), (State::Lapsed, Rule::Held));
        let d = step(&cfg(), Some(&m), &obs(10, 0.9, Some(10)));
        assert_eq!(d.state, State::Active);
    }

    #[test]
    fn no_change_within_the_minimum_dwell() {
        let m = remembered(State::Active, 10, Some(10));
        let d = step(&cfg(), Some(&m), &obs(12, 0.1, Some(10)));
        assert_eq!(
            (d.state, d.rule, d.changed),
            (State::Active, Rule::Dwell(State::Lapsed), false)
        );
        // Once the dwell has passed, the change goes through.
        let d = step(&cfg(), Some(&m), &obs(13, 0.1, Some(10)));
        assert_eq!((d.state, d.changed), (State::Lapsed, true));
    }

    #[test]
    fn never_started_new_member_becomes_lapsing_by_the_onboarding_rule() {
        let o = |day: u32| Observation {
            as_of_ms: day as i64 * DAY,
            tenure_days: day,
            active_days: 0,
            last_active_day: None,
            days_since_last: None,
            p_engaged: 0.9,
            p_silence_if_engaged: 1.0,
            rank: Rank::Below,
        };
        let d0 = step(&cfg(), None, &o(0));
        assert_eq!((d0.state, d0.rule), (State::New, Rule::Onboarding));
        let d6 = step(&cfg(), Some(&d0.memory), &o(6));
        assert_eq!(d6.state, State::New);
        let d7 = step(&cfg(), Some(&d6.memory), &o(7));
        assert_eq!((d7.state, d7.rule), (State::Lapsing, Rule::NeverStarted));
    }

    #[test]
    fn slow_starter_becomes_lapsing_when_the_onboarding_window_closes() {
        let o = Observation {
            as_of_ms: 14 * DAY,
            tenure_days: 14,
            active_days: 2,
            last_active_day: Some(3),
            days_since_last: Some(11),
            p_engaged: 0.8,
            p_silence_if_engaged: 1.0,
            rank: Rank::Below,
        };
        let new = remembered(State::New, 0, None);
        let d = step(&cfg(), Some(&new), &o);
        assert_eq!((d.state, d.rule), (State::Lapsing, Rule::SlowStart));
        // Within the window with two active days: still new.
        let mut early = o;
        early.tenure_days = 10;
        assert_eq!(step(&cfg(), Some(&new), &early).state, State::New);
    }

    #[test]
    fn a_new_member_who_fades_becomes_lapsing_by_the_onboarding_rule() {
        let c = ScoringConfig {
            onboarding_fade_days: 14,
            onboarding_watch_days: 60,
            ..cfg()
        };
        let o = |tenure: u32, silent: u32| Observation {
            as_of_ms: tenure as i64 * DAY,
            tenure_days: tenure,
            active_days: 5,
            last_active_day: Some((tenure - silent) as i32),
            days_since_last: Some(silent),
            p_engaged: 0.8,
            p_silence_if_engaged: 0.05,
            rank: Rank::Below,
        };
        let active = remembered(State::Active, 0, Some(10));
        assert_eq!(step(&c, Some(&active), &o(30, 13)).state, State::Active);
        let d = step(&c, Some(&active), &o(30, 14));
        assert_eq!((d.state, d.rule), (State::Lapsing, Rule::FadedStart));
        // Past the watch window the model alone decides.
        assert_eq!(step(&c, Some(&active), &o(60, 20)).state, State::Active);
    }

    #[test]
    fn active_to_lapsing_when_a_silence_is_rare_for_the_members_own_rhythm() {
        let c = ScoringConfig {
            lapsing_silence_below: 0.001,
            ..cfg()
        };
        let m = remembered(State::Active, 0, Some(0));
        let mut o = obs(10, 0.9, Some(0));
        o.p_silence_if_engaged = 0.0005;
        let d = step(&c, Some(&m), &o);
        assert_eq!((d.state, d.rule), (State::Lapsing, Rule::ModelLapsing));
        o.p_silence_if_engaged = 0.002;
        assert_eq!(step(&c, Some(&m), &o).state, State::Active);
    }

    #[test]
    fn champion_needs_the_top_fraction_and_clear_engagement_and_keeps_it_in_a_wider_band() {
        let m = remembered(State::Active, 0, Some(0));
        let mut o = obs(10, 0.95, Some(10));
        o.rank = Rank::Top;
        assert_eq!(step(&cfg(), Some(&m), &o).state, State::Champion);
        o.p_engaged = 0.85;
        assert_eq!(step(&cfg(), Some(&m), &o).state, State::Active);
        let c = remembered(State::Champion, 0, Some(0));
        o.rank = Rank::Keep;
        assert_eq!(step(&cfg(), Some(&c), &o).state, State::Champion);
        o.rank = Rank::Below;
        assert_eq!(step(&cfg(), Some(&c), &o).state, State::Active);
    }
}

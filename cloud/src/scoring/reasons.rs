//! Plain-language reasons, built from the model's own terms, for staff who do not read
//! statistics: "Usually active 5 days a week; silent for 9 days; a silence this long
//! happens to an engaged member about 2% of the time."

use super::rhythm::UsualDays;
use super::state::{Rule, State};
use crate::config::ScoringConfig;

/// The numbers a member's reasons are written from.
#[derive(Debug, Clone, PartialEq)]
pub struct ReasonInput<'a> {
    /// The state decided.
    pub state: State,
    /// The rule that decided it.
    pub rule: Rule,
    /// Active days per week while engaged.
    pub rhythm_per_week: f64,
    /// The weekdays the member is usually active on, if they have a weekly rhythm.
    pub usual_days: Option<UsualDays>,
    /// Days since the last active day (`None`: never active).
    pub days_since_last: Option<u32>,
    /// How often an engaged member goes this long without activity.
    pub p_silence_if_engaged: f64,
    /// P(engaged).
    pub p_engaged: f64,
    /// Days since the member's clock started.
    pub tenure_days: u32,
    /// Distinct active days.
    pub active_days: u32,
    /// Expected active days in the next 30 days.
    pub expected_active_days_30d: f64,
    /// A device of the member whose latest status is offline, with the date it went offline.
    pub offline_device: Option<(&'a str, Option<String>)>,
}

fn days(n: u32) -> String {
    if n == 1 {
        "1 day".into()
    } else {
        format!("{n} days")
    }
}

fn percent(p: f64) -> String {
    let pc = p * 100.0;
    if pc < 1.0 {
        "less than 1%".into()
    } else if pc > 99.0 {
        "almost always".into()
    } else {
        format!("about {:.0}%", pc)
    }
}

/// "Usually active 5 days a week" and the like.
pub fn rhythm_phrase(per_week: f64) -> String {
    if per_week >= 6.5 {
        "Usually active every day".into()
    } else if per_week >= 0.95 {
        let n = per_week.round().max(1.0) as u32;
        format!(
            "Usually active {n} day{} a week",
            if n == 1 { "" } else { "s" }
        )
    } else if per_week * 30.0 / 7.0 >= 0.95 {
        let n = (per_week * 30.0 / 7.0).round().max(1.0) as u32;
        format!(
            "Usually active about {n} day{} a month",
            if n == 1 { "" } else { "s" }
        )
    } else if per_week > 0.0 {
        format!(
            "Usually active about once every {} weeks",
            (1.0 / per_week).round().max(2.0) as u32
        )
    } else {
        "No usual rhythm yet".into()
    }
}

/// The reasons, most important first.
pub fn reasons(cfg: &ScoringConfig, r: &ReasonInput<'_>) -> Vec<String> {
    let mut out = Vec::with_capacity(4);
    let silence = match r.days_since_last {
        None => "no activity yet".to_owned(),
        Some(0) => "active today".to_owned(),
        Some(1) => "last active yesterday".to_owned(),
        Some(n) => format!("silent for {}", days(n)),
    };
    let rule = match r.rule {
        Rule::Dwell(_) => None,
        other => Some(other),
    };
    match rule {
        Some(Rule::NeverStarted) => out.push(format!(
            "Joined {} ago and has not used the device yet: the onboarding rule flags a new member with no use after {}",
            days(r.tenure_days),
            days(cfg.no_start_days)
        )),
        Some(Rule::SlowStart) => out.push(format!(
            "Joined {} ago and has been active on only {} of them: the onboarding rule expects at least {} active days in the first {}",
            days(r.tenure_days),
            days(r.active_days),
            cfg.onboarding_min_active_days,
            days(cfg.onboarding_days)
        )),
        Some(Rule::FadedStart) => out.push(format!(
            "Joined {} ago, was active on {}, and has been silent for {}: the onboarding rule flags a new member who stops using the device within their first {}",
            days(r.tenure_days),
            days(r.active_days),
            days(r.days_since_last.unwrap_or(0)),
            days(cfg.onboarding_watch_days)
        )),
        Some(Rule::Onboarding) => out.push(format!(
            "New member: joined {} ago, active on {} so far",
            days(r.tenure_days),
            days(r.active_days)
        )),
        _ => {
            let mut s = rhythm_phrase(r.rhythm_per_week);
            if let Some(days) = r.usual_days {
                s.push_str(", mostly ");
                s.push_str(&days.phrase());
            }
            s.push_str("; ");
            s.push_str(&silence);
            if r.days_since_last.is_some_and(|d| d >= 2) {
                s.push_str(&format!(
                    "; a silence this long happens to an engaged member {} of the time",
                    percent(r.p_silence_if_engaged)
                ));
            }
            out.push(s);
        }
    }
    match r.state {
        State::Lapsed => out.push(format!(
            "Probably gone: the chance this member is still engaged is {}",
            percent(r.p_engaged).trim_start_matches("about ")
        )),
        // Leaving a lapse takes both new activity and a chance above the exit threshold;
        // with the chance already above it, what is missing is the activity.
        State::Lapsing if r.rule == Rule::Held && r.p_engaged > cfg.lapsing_exit_above => {
            out.push(format!(
                "Stays lapsing until there is new activity: none since becoming lapsing (the chance of engagement, now {:.0}%, is already above the {:.0}% needed to leave)",
                r.p_engaged * 100.0,
                cfg.lapsing_exit_above * 100.0
            ))
        }
        State::Lapsing if r.rule == Rule::Held => out.push(format!(
            "Stays lapsing until new activity brings the chance of engagement above {:.0}% (now {:.0}%)",
            cfg.lapsing_exit_above * 100.0,
            r.p_engaged * 100.0
        )),
        State::Lapsing
            if !matches!(
                r.rule,
                Rule::NeverStarted | Rule::SlowStart | Rule::FadedStart
            ) =>
        {
            out.push(format!(
                "Drifting away: the chance this member is still engaged has fallen to {:.0}%",
                r.p_engaged * 100.0
            ))
        }
        State::Champion => out.push(format!(
            "Among the top {:.0}% of members, with about {:.0} active days expected in the next 30",
            cfg.champion_top_fraction * 100.0,
            r.expected_active_days_30d
        )),
        _ => {}
    }
    if let Rule::Dwell(want) = r.rule {
        out.push(format!(
            "Would be {want}, but states change at most once every {}",
            days(cfg.min_dwell_days)
        ));
    }
    if let Some((device, since)) = &r.offline_device {
        out.push(match since {
            Some(d) => format!(
                "Device {device} has been offline since {d}; an offline device alone is not counted as lapsing"
            ),
            None => format!(
                "Device {device} is offline; an offline device alone is not counted as lapsing"
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(rule: Rule, state: State) -> ReasonInput<'static> {
        ReasonInput {
            state,
            rule,
            rhythm_per_week: 5.2,
            usual_days: None,
            days_since_last: Some(9),
            p_silence_if_engaged: 0.021,
            p_engaged: 0.31,
            tenure_days: 200,
            active_days: 120,
            expected_active_days_30d: 4.0,
            offline_device: None,
        }
    }

    #[test]
    fn the_lapsing_reason_reads_like_the_issue_example() {
        let r = reasons(
            &ScoringConfig::default(),
            &input(Rule::ModelLapsing, State::Lapsing),
        );
        assert_eq!(
            r[0],
            "Usually active 5 days a week; silent for 9 days; a silence this long happens to an engaged member about 2% of the time"
        );
        assert!(r[1].contains("31%"), "{r:?}");
    }

    #[test]
    fn a_member_with_a_weekly_rhythm_is_told_by_their_days() {
        let mut i = input(Rule::ModelLapsing, State::Lapsing);
        i.usual_days = UsualDays::from_chances(&[0.9, 0.85, 0.9, 0.8, 0.9, 0.05, 0.1]);
        let r = reasons(&ScoringConfig::default(), &i);
        assert_eq!(
            r[0],
            "Usually active 5 days a week, mostly on weekdays; silent for 9 days; a silence this long happens to an engaged member about 2% of the time"
        );
    }

    #[test]
    fn a_held_lapse_says_what_is_missing_to_leave_it_without_contradiction() {
        let cfg = ScoringConfig::default();
        // A faded new member held in lapsing, whose chance is already above the exit
        // threshold (70%): what keeps them lapsing is that nothing happened since.
        let mut i = input(Rule::Held, State::Lapsing);
        i.p_engaged = 0.8;
        let r = reasons(&cfg, &i);
        let held = r.iter().find(|s| s.starts_with("Stays lapsing")).unwrap();
        assert_eq!(
            held,
            "Stays lapsing until there is new activity: none since becoming lapsing (the chance of engagement, now 80%, is already above the 70% needed to leave)"
        );
        assert!(!held.contains("brings the chance"), "{held}");
        // Below the threshold, both are still needed.
        i.p_engaged = 0.31;
        let r = reasons(&cfg, &i);
        assert!(
            r.contains(&"Stays lapsing until new activity brings the chance of engagement above 70% (now 31%)".to_owned()),
            "{r:?}"
        );
    }

    #[test]
    fn rhythms_are_said_in_weeks_months_or_longer() {
        assert_eq!(rhythm_phrase(7.0), "Usually active every day");
        assert_eq!(rhythm_phrase(1.0), "Usually active 1 day a week");
        assert_eq!(rhythm_phrase(0.5), "Usually active about 2 days a month");
        assert_eq!(
            rhythm_phrase(0.1),
            "Usually active about once every 10 weeks"
        );
    }

    #[test]
    fn an_offline_device_is_mentioned_and_called_no_lapse_by_itself() {
        let mut i = input(Rule::Engaged, State::Active);
        i.offline_device = Some(("kitchen-1", Some("2026-11-20".into())));
        let r = reasons(&ScoringConfig::default(), &i);
        assert!(r.iter().any(|s| s.contains("kitchen-1")
            && s.contains("offline since 2026-11-20")
            && s.contains("not counted as lapsing")));
    }

    #[test]
    fn the_onboarding_rule_says_the_member_never_started() {
        let mut i = input(Rule::NeverStarted, State::Lapsing);
        i.tenure_days = 8;
        i.active_days = 0;
        let r = reasons(&ScoringConfig::default(), &i);
        assert!(r[0].starts_with("Joined 8 days ago and has not used the device yet"));
        assert_eq!(r.len(), 1, "{r:?}");
    }
}

//! A member's weekly rhythm: which weekdays they are usually active on.
//!
//! BG/BB gives an engaged member one chance `p` of being active on any day, so a member
//! who uses the coffee machine on weekdays only looks, to it, like a member active five
//! days in seven at random: a silent weekend costs them as much as a silent Tuesday and
//! Wednesday. The weekly reading gives each weekday `w` its own chance, with the fleet's
//! `Beta(α, β)` as prior, updated with the member's days on that weekday:
//! `Beta(α + active_w, β + days_w − active_w)`, where `active_w` / `days_w` count the
//! active days / all days on weekday `w` after the origin up to the last active day (the
//! span in which the member is known to have been engaged). Each silent day after that
//! adds one to its weekday's `β`, as BG/BB's pooled belief learns from each silent day.
//!
//! The scorer does not pick one reading: [`super::bgbb::outputs_with`] averages the two
//! by their marginal likelihoods ([`Weekdays::log_marginal`] against BG/BB's
//! `B(α+x, β+t_x−x)/B(α, β)`), so seven chances are only trusted over one when the
//! member's days show a rhythm.

use serde::Serialize;

/// Days in a week.
pub const WEEK: usize = 7;

/// The weekly reading's share before the member's days are seen: one in five. A weekly
/// rhythm has to earn its place; a few weeks of rhythmless days cannot give it much
/// weight by chance, while a real weekly habit outweighs these odds within weeks.
pub const WEEKLY_PRIOR: f64 = 0.2;

/// The weekly reading's weight above which the reasons name the member's usual days.
pub const USUAL_DAYS_WEIGHT: f64 = 0.8;

/// The weekday of a day number (days since 1970-01-01, a Thursday): Monday is 0.
pub fn weekday(day: i32) -> usize {
    (day + 3).rem_euclid(WEEK as i32) as usize
}

/// Per weekday (Monday first): the member's active days and all days in the span where
/// they were known to be engaged (after the origin, up to the last active day).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Weekdays {
    /// Active days on each weekday.
    pub active: [u16; WEEK],
    /// Calendar days on each weekday.
    pub days: [u16; WEEK],
}

impl Weekdays {
    /// Counts the span `(origin, last]` and the active days in it (`active_days` sorted;
    /// days outside the span are ignored).
    pub fn count(origin: i32, last: i32, active_days: impl IntoIterator<Item = i32>) -> Self {
        let mut w = Weekdays::default();
        if last <= origin {
            return w;
        }
        let span = (last - origin) as u32;
        let (full, rest) = (span / WEEK as u32, span % WEEK as u32);
        for d in &mut w.days {
            *d = full.min(u16::MAX as u32) as u16;
        }
        for k in 1..=rest as i32 {
            let d = &mut w.days[weekday(origin + k)];
            *d = d.saturating_add(1);
        }
        for day in active_days {
            if day > origin && day <= last {
                let a = &mut w.active[weekday(day)];
                *a = a.saturating_add(1);
            }
        }
        w
    }
}

/// How a member's days are weighed after their last active day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DayChances {
    /// One Beta belief for all days: BG/BB as published.
    Pooled,
    /// BG/BB averaged with a Beta belief per weekday ([`super::bgbb::outputs_with`]).
    Weekly {
        /// The member's weekday counts.
        weekdays: Weekdays,
        /// The weekday of the member's origin day (Monday is 0).
        origin_weekday: usize,
    },
}

impl Weekdays {
    /// True when the counts cover exactly the member's `x` active days over `t_x` days
    /// (what [`MemberDays`](super::summary::MemberDays) holds); anything else is scored
    /// without the rhythm.
    pub fn spans(&self, x: f64, t_x: f64) -> bool {
        let days: u32 = self.days.iter().map(|&d| u32::from(d)).sum();
        let active: u32 = self.active.iter().map(|&d| u32::from(d)).sum();
        f64::from(days) == t_x && f64::from(active) == x
    }

    /// `ln` of the chance of these days under a chance per weekday, each `Beta(α, β)`
    /// (the order of the days left out, as in BG/BB's `B(α+x, β+t_x−x)/B(α, β)`).
    pub fn log_marginal(&self, alpha: f64, beta: f64) -> f64 {
        let prior = super::bgbb::ln_beta(alpha, beta);
        (0..WEEK)
            .map(|w| {
                let a = f64::from(self.active[w]);
                let quiet = f64::from(self.days[w].saturating_sub(self.active[w]));
                super::bgbb::ln_beta(alpha + a, beta + quiet) - prior
            })
            .sum()
    }
}

/// The weekdays a member is usually active on (Monday is bit 0): what staff read as
/// "mostly on weekdays" or "mostly on Tuesdays".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsualDays(u8);

/// Weekday names, Monday first, as the reasons write them.
const NAMES: [&str; WEEK] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

impl UsualDays {
    /// The usual days from a chance per weekday: those with a chance of at least one in
    /// two, when every other weekday's chance is at most half the lowest of them. `None`
    /// when no weekday stands out that way, or all do.
    pub fn from_chances(chances: &[f64; WEEK]) -> Option<Self> {
        let mut mask = 0u8;
        let (mut lowest_usual, mut highest_other) = (f64::INFINITY, 0.0f64);
        for (w, &c) in chances.iter().enumerate() {
            if c >= 0.5 {
                mask |= 1 << w;
                lowest_usual = lowest_usual.min(c);
            } else {
                highest_other = highest_other.max(c);
            }
        }
        let all = (1u8 << WEEK) - 1;
        (mask != 0 && mask != all && highest_other <= lowest_usual / 2.0).then_some(Self(mask))
    }

    /// True when weekday `w` (Monday is 0) is one of them.
    pub fn contains(self, w: usize) -> bool {
        w < WEEK && self.0 & (1 << w) != 0
    }

    /// "on weekdays", "at weekends", "on Tuesdays", "on Mondays and Thursdays", "on every
    /// day but Sunday".
    pub fn phrase(self) -> String {
        const WEEKDAYS: u8 = 0b001_1111;
        const WEEKEND: u8 = 0b110_0000;
        let plural = |w: usize| format!("{}s", NAMES[w]);
        let list = |days: Vec<String>| match days.as_slice() {
            [one] => one.clone(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
            [] => String::new(),
        };
        match self.0 {
            WEEKDAYS => "on weekdays".into(),
            WEEKEND => "at weekends".into(),
            m if m.count_ones() <= 3 => format!(
                "on {}",
                list(
                    (0..WEEK)
                        .filter(|&w| self.contains(w))
                        .map(plural)
                        .collect()
                )
            ),
            _ => format!(
                "on every day but {}",
                list(
                    (0..WEEK)
                        .filter(|&w| !self.contains(w))
                        .map(|w| NAMES[w].to_owned())
                        .collect()
                )
            ),
        }
    }
}

impl Serialize for UsualDays {
    /// As the list of day names, Monday first.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((0..WEEK).filter(|&w| self.contains(w)).map(|w| NAMES[w]))
    }
}

/// The running belief about a member's silent days from the last active day on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Silence {
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// BG/BB: `α+x` and `β+j−x` (the silent days so far included).
    Pooled { a: f64, b: f64 },
    /// Per weekday: `α + active_w`, `β + quiet_w` (silent days after the last active day
    /// included), and the weekday of the member's origin day.
    Weekly {
        a: [f64; WEEK],
        b: [f64; WEEK],
        origin_weekday: usize,
    },
}

impl Silence {
    /// The belief at the last active day `t_x`, for a member with `x` active days, under
    /// the fleet's `α`, `β`.
    pub(crate) fn new(chances: &DayChances, alpha: f64, beta: f64, x: f64, t_x: f64) -> Self {
        let kind = match *chances {
            DayChances::Pooled => Kind::Pooled {
                a: alpha + x,
                b: beta + t_x - x,
            },
            DayChances::Weekly {
                weekdays,
                origin_weekday,
            } => {
                let mut a = [0.0; WEEK];
                let mut b = [0.0; WEEK];
                for w in 0..WEEK {
                    let active = f64::from(weekdays.active[w]);
                    let quiet = f64::from(weekdays.days[w].saturating_sub(weekdays.active[w]));
                    a[w] = alpha + active;
                    b[w] = beta + quiet;
                }
                Kind::Weekly {
                    a,
                    b,
                    origin_weekday,
                }
            }
        };
        Self { kind }
    }

    /// P(silent on day `j + 1` | engaged and silent from the last active day to day `j`),
    /// and the belief updated with that silent day. Days must be asked in order.
    pub(crate) fn next_silent(&mut self, j: f64) -> f64 {
        match &mut self.kind {
            Kind::Pooled { a, b } => {
                let q = *b / (*a + *b);
                *b += 1.0;
                q
            }
            Kind::Weekly {
                a,
                b,
                origin_weekday,
            } => {
                let w = (*origin_weekday + j as usize + 1) % WEEK;
                let q = b[w] / (a[w] + b[w]);
                b[w] += 1.0;
                q
            }
        }
    }

    /// Each weekday's chance of activity as the belief stands (`None` for the pooled
    /// reading).
    pub(crate) fn weekday_chances(&self) -> Option<[f64; WEEK]> {
        match &self.kind {
            Kind::Pooled { .. } => None,
            Kind::Weekly { a, b, .. } => Some(std::array::from_fn(|w| a[w] / (a[w] + b[w]))),
        }
    }

    /// P(active on day `j + 1` | engaged), from the belief as it stands (the days between
    /// unobserved).
    pub(crate) fn active(&self, j: f64) -> f64 {
        match &self.kind {
            Kind::Pooled { a, b } => *a / (*a + *b),
            Kind::Weekly {
                a,
                b,
                origin_weekday,
            } => {
                let w = (*origin_weekday + j as usize + 1) % WEEK;
                a[w] / (a[w] + b[w])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usual_days_are_the_weekdays_that_stand_out_and_read_as_staff_say_them() {
        let from = |c: [f64; 7]| UsualDays::from_chances(&c).map(UsualDays::phrase);
        for (chances, phrase) in [
            ([0.9, 0.8, 0.85, 0.9, 0.7, 0.05, 0.1], "on weekdays"),
            ([0.1, 0.1, 0.1, 0.1, 0.1, 0.8, 0.9], "at weekends"),
            ([0.02, 0.9, 0.03, 0.03, 0.02, 0.03, 0.03], "on Tuesdays"),
            (
                [0.7, 0.1, 0.1, 0.8, 0.1, 0.1, 0.1],
                "on Mondays and Thursdays",
            ),
            (
                [0.7, 0.1, 0.6, 0.1, 0.8, 0.1, 0.1],
                "on Mondays, Wednesdays and Fridays",
            ),
            (
                [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.2],
                "on every day but Sunday",
            ),
        ] {
            assert_eq!(from(chances).as_deref(), Some(phrase), "{chances:?}");
        }
        // Every day alike, no day likely, or the rest not clearly lower: no rhythm.
        assert_eq!(from([0.8; 7]), None);
        assert_eq!(from([0.3; 7]), None);
        assert_eq!(from([0.9, 0.9, 0.9, 0.9, 0.9, 0.6, 0.4]), None);
        let days = UsualDays::from_chances(&[0.9, 0.1, 0.1, 0.8, 0.1, 0.1, 0.1]).unwrap();
        assert_eq!(
            serde_json::to_value(days).unwrap(),
            serde_json::json!(["Monday", "Thursday"])
        );
    }

    #[test]
    fn the_first_of_january_1970_was_a_thursday() {
        assert_eq!(weekday(0), 3);
        assert_eq!(weekday(4), 0, "1970-01-05 was a Monday");
        assert_eq!(weekday(-1), 2);
    }

    #[test]
    fn weekdays_count_the_span_after_the_origin_up_to_the_last_active_day() {
        // Origin a Monday (day 4); span days 5..=18: two full weeks from Tuesday.
        let w = Weekdays::count(4, 18, [4, 5, 6, 11, 12, 18, 19]);
        assert_eq!(w.days, [2; 7]);
        // Day 4 is the origin and 19 is after the last day: not counted.
        assert_eq!(w.active, [2, 2, 1, 0, 0, 0, 0]);
        let partial = Weekdays::count(4, 7, [5, 7]);
        assert_eq!(partial.days, [0, 1, 1, 1, 0, 0, 0]);
        assert_eq!(Weekdays::count(4, 4, [4]), Weekdays::default());
    }

    #[test]
    fn a_silent_day_makes_silence_likelier_on_its_own_weekday_only() {
        let weekdays = Weekdays {
            active: [4, 4, 4, 4, 4, 0, 0],
            days: [4; 7],
        };
        let chances = DayChances::Weekly {
            weekdays,
            origin_weekday: 6, // day j + 1 = 1 is a Monday
        };
        let mut s = Silence::new(&chances, 1.0, 1.0, 20.0, 28.0);
        let fresh = s;
        let monday = s.next_silent(0.0);
        // A silent Monday tells nothing about Tuesdays.
        assert_eq!(s.active(1.0), fresh.active(1.0));
        assert!(
            s.active(7.0) < fresh.active(7.0),
            "but Mondays are less sure now"
        );
        assert!(monday < 0.2, "Mondays are active: {monday}");
        let quiet = (1..5).map(|j| s.next_silent(j as f64)).collect::<Vec<_>>();
        let saturday = s.next_silent(5.0);
        assert!(saturday > 0.6, "weekends are quiet: {saturday}");
        assert!(quiet.iter().all(|q| *q < 0.2), "{quiet:?}");
        // The next Monday: one silent Monday seen, so silence is likelier than before.
        let sunday = s.next_silent(6.0);
        let next_monday = s.next_silent(7.0);
        assert!(sunday > 0.6);
        assert!(next_monday > monday, "{next_monday} after {monday}");
    }
}

//! Usage reduced to *active days* in the member's own calendar, and active days reduced
//! to the model's `(x, t_x, T)`.
//!
//! A day is active when at least one usage event (of any kind, from any of the member's
//! devices, imported or live) happened on it in the member's time zone; several events on
//! one day count once. The member's clock starts at the *origin*: the earlier of the day
//! they joined (or were registered, when no join date is known) and their first active
//! day. `x` counts active days after the origin day, `t_x` is the number of days from the
//! origin to the last of them (0 when there is none), and `T` the number of days from the
//! origin to the day of scoring. This is the way the CDNOW summary is built (origin = first
//! purchase day), extended to members who joined before first use.

use super::model::Rft;
use super::rhythm::Weekdays;
use chrono::{DateTime, NaiveDate, TimeZone as _, Utc};
use chrono_tz::Tz;

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of a calendar date.
pub fn day_number(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32
}

/// The calendar date of a day number.
pub fn date_of(day: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch") + chrono::Duration::days(day as i64)
}

/// The local day number, in `tz`, of an instant given in Unix milliseconds.
pub fn local_day(ms: i64, tz: Tz) -> i32 {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => day_number(t.with_timezone(&tz).date_naive()),
        None => (ms.div_euclid(DAY_MS)) as i32,
    }
}

/// The local day number of an instant.
pub fn local_day_of(t: DateTime<Utc>, tz: Tz) -> i32 {
    day_number(t.with_timezone(&tz).date_naive())
}

/// A member's `(x, t_x, T)` in whole days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DaySummary {
    /// Active days after the origin day.
    pub x: u32,
    /// Days from the origin to the last active day (0 when `x = 0`).
    pub t_x_days: u32,
    /// Days from the origin to the day of scoring.
    pub t_days: u32,
}

impl DaySummary {
    /// The summary in model units of `days_per_unit` days (1 for days, 7 for weeks).
    pub fn to_rft(self, days_per_unit: f64) -> Rft {
        Rft {
            x: self.x as f64,
            t_x: self.t_x_days as f64 / days_per_unit,
            t: self.t_days as f64 / days_per_unit,
        }
    }
}

/// What a member's history looks like at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberDays {
    /// The model summary.
    pub summary: DaySummary,
    /// The origin day (day number).
    pub origin_day: i32,
    /// Distinct active days in total, the origin day included when it was active.
    pub active_days: u32,
    /// The last active day, if any.
    pub last_active_day: Option<i32>,
    /// Active days and all days per weekday from the origin (exclusive) to the last
    /// active day: the member's weekly rhythm ([`super::rhythm`]).
    pub weekdays: Weekdays,
}

/// A member's distinct active days, sorted, each with the earliest instant (Unix ms) of
/// any event on it, so that "as of an instant" is a prefix of the list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActiveDays {
    days: Vec<(i32, i64)>,
}

impl ActiveDays {
    /// Builds the list from event instants, reduced to days in `tz`.
    pub fn from_instants(instants: impl IntoIterator<Item = i64>, tz: Tz) -> Self {
        let mut a = ActiveDays::default();
        for ms in instants {
            a.insert(local_day(ms, tz), ms);
        }
        a
    }

    /// Adds an event on `day` at instant `ms` (idempotent for days already present).
    pub fn insert(&mut self, day: i32, ms: i64) {
        match self.days.binary_search_by_key(&day, |d| d.0) {
            Ok(i) => self.days[i].1 = self.days[i].1.min(ms),
            Err(i) => self.days.insert(i, (day, ms)),
        }
    }

    /// The earliest instant of any event (Unix ms), if any.
    pub fn first_instant(&self) -> Option<i64> {
        self.days.first().map(|d| d.1)
    }

    /// Number of distinct active days.
    pub fn len(&self) -> usize {
        self.days.len()
    }

    /// True when there is no active day.
    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }

    /// The days, sorted.
    pub fn days(&self) -> impl Iterator<Item = i32> + '_ {
        self.days.iter().map(|d| d.0)
    }

    /// How many active days had begun by the instant `as_of_ms`.
    pub fn count_as_of(&self, as_of_ms: i64) -> usize {
        self.days.partition_point(|d| d.1 <= as_of_ms)
    }

    /// The member as of day `as_of_day` (the instant `as_of_ms` in it): `origin_hint` is
    /// the join (or registration) day. `None` when the member's clock had not started yet.
    pub fn summarise(
        &self,
        origin_hint: Option<i32>,
        as_of_day: i32,
        as_of_ms: i64,
    ) -> Option<MemberDays> {
        let n = self.count_as_of(as_of_ms);
        let seen = &self.days[..n];
        let first = seen.first().map(|d| d.0);
        let origin = match (origin_hint, first) {
            (Some(h), Some(f)) => h.min(f),
            (Some(h), None) => h,
            (None, Some(f)) => f,
            (None, None) => return None,
        };
        if origin > as_of_day {
            return None;
        }
        let after = seen.partition_point(|d| d.0 <= origin);
        let x = (n - after) as u32;
        let last = seen.last().map(|d| d.0);
        let t_x_days = if x > 0 {
            (last.expect("x > 0") - origin) as u32
        } else {
            0
        };
        let weekdays = match last {
            Some(l) if x > 0 => Weekdays::count(origin, l, seen[after..].iter().map(|d| d.0)),
            _ => Weekdays::default(),
        };
        Some(MemberDays {
            summary: DaySummary {
                x,
                t_x_days,
                t_days: (as_of_day - origin) as u32,
            },
            origin_day: origin,
            active_days: n as u32,
            last_active_day: last,
            weekdays,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> i32 {
        day_number(NaiveDate::from_ymd_opt(y, m, day).unwrap())
    }

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn the_weekday_counts_cover_the_days_after_the_origin_up_to_the_last_active_one() {
        // Joined Monday 2026-03-02; active that day, Tuesday 3rd and Tuesday 10th; scored
        // on Sunday the 15th.
        let a = ActiveDays::from_instants(
            [
                ms("2026-03-02T08:00:00Z"),
                ms("2026-03-03T08:00:00Z"),
                ms("2026-03-10T08:00:00Z"),
            ],
            chrono_tz::UTC,
        );
        let m = a
            .summarise(Some(d(2026, 3, 2)), d(2026, 3, 15), i64::MAX)
            .unwrap();
        assert_eq!((m.summary.x, m.summary.t_x_days), (2, 8));
        assert!(m.weekdays.spans(2.0, 8.0), "{:?}", m.weekdays);
        // Tuesday 3rd to Tuesday 10th: two Tuesdays, one of every other weekday.
        assert_eq!(m.weekdays.days, [1, 2, 1, 1, 1, 1, 1]);
        assert_eq!(m.weekdays.active, [0, 2, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn several_events_on_one_local_day_count_once() {
        let a = ActiveDays::from_instants(
            [
                ms("2026-03-01T08:00:00Z"),
                ms("2026-03-01T20:00:00Z"),
                ms("2026-03-03T09:00:00Z"),
            ],
            chrono_tz::UTC,
        );
        assert_eq!(a.len(), 2);
        let m = a.summarise(None, d(2026, 3, 10), i64::MAX).unwrap();
        assert_eq!(
            m.summary,
            DaySummary {
                x: 1,
                t_x_days: 2,
                t_days: 9
            }
        );
        assert_eq!(m.active_days, 2);
    }

    #[test]
    fn days_are_counted_in_the_members_time_zone() {
        // 23:30 UTC on 1 March is already 2 March in Berlin and still 1 March in New York.
        let t = ms("2026-03-01T23:30:00Z");
        let u = ms("2026-03-02T01:00:00Z");
        let berlin = ActiveDays::from_instants([t, u], chrono_tz::Europe::Berlin);
        let ny = ActiveDays::from_instants([t, u], chrono_tz::America::New_York);
        let utc = ActiveDays::from_instants([t, u], chrono_tz::UTC);
        assert_eq!(berlin.len(), 1);
        assert_eq!(ny.len(), 1);
        assert_eq!(utc.len(), 2);
    }

    #[test]
    fn the_clock_starts_at_joining_when_that_came_first() {
        let a = ActiveDays::from_instants([ms("2026-03-05T10:00:00Z")], chrono_tz::UTC);
        let m = a
            .summarise(Some(d(2026, 3, 1)), d(2026, 3, 11), i64::MAX)
            .unwrap();
        assert_eq!(
            m.summary,
            DaySummary {
                x: 1,
                t_x_days: 4,
                t_days: 10
            }
        );
        // Never used: x = 0 and the clock still runs from joining.
        let none = ActiveDays::default()
            .summarise(Some(d(2026, 3, 1)), d(2026, 3, 11), i64::MAX)
            .unwrap();
        assert_eq!(none.summary.t_days, 10);
        assert_eq!(none.last_active_day, None);
        // Not yet joined.
        assert!(ActiveDays::default()
            .summarise(Some(d(2026, 3, 12)), d(2026, 3, 11), i64::MAX)
            .is_none());
    }

    #[test]
    fn usage_after_the_as_of_instant_is_ignored() {
        let a = ActiveDays::from_instants(
            [ms("2026-03-01T10:00:00Z"), ms("2026-03-04T18:00:00Z")],
            chrono_tz::UTC,
        );
        let noon = ms("2026-03-04T12:00:00Z");
        let m = a.summarise(None, d(2026, 3, 4), noon).unwrap();
        assert_eq!(m.summary.x, 0);
        assert_eq!(m.summary.t_days, 3);
        let evening = ms("2026-03-04T19:00:00Z");
        assert_eq!(
            a.summarise(None, d(2026, 3, 4), evening).unwrap().summary.x,
            1
        );
    }
}

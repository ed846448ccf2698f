//! The simulated fleet: who the members are, how each behaves, and what their devices
//! report on each day. Everything is a pure function of the seed, so the same seed gives
//! the same members, the same ground truth and the same events, in any order of
//! generation (each member-day draws from its own seeded generator).
//!
//! Days are numbered from the start of the simulated window (day 0 = the window's first
//! calendar date, read in each member's own time zone); members who joined earlier have
//! a negative joining day.

use super::config::{DeviceType, FleetConfig, UsageSpec};
use super::people::{PeopleFactory, Person};
use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone as _, Utc, Weekday};
use chrono_tz::Tz;
use fastrand::Rng;
use rollcall_shared::dsse::KeyPair;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// A behaviour profile (see `config/fleet.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Most days.
    Daily,
    /// Monday to Friday.
    Weekday,
    /// One fixed day a week.
    Weekly,
    /// Busy in one season.
    Seasonal,
    /// Signs up in the window, fades, stops.
    January,
    /// A regular who stops on a known day.
    Dropout,
    /// A regular who pauses and comes back.
    Holiday,
    /// Every day, several times.
    Champion,
}

impl Profile {
    /// All profiles in the order of [`super::config::ProfileWeights::weights`].
    pub const ALL: [Profile; 8] = [
        Profile::Daily,
        Profile::Weekday,
        Profile::Weekly,
        Profile::Seasonal,
        Profile::January,
        Profile::Dropout,
        Profile::Holiday,
        Profile::Champion,
    ];

    /// The profile's name as in the fleet file.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Daily => "daily",
            Profile::Weekday => "weekday",
            Profile::Weekly => "weekly",
            Profile::Seasonal => "seasonal",
            Profile::January => "january",
            Profile::Dropout => "dropout",
            Profile::Holiday => "holiday",
            Profile::Champion => "champion",
        }
    }
}

/// The true state of a member on a day, as only the simulator knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrueState {
    /// Within 14 days of joining and still engaged.
    New,
    /// Engaged.
    Engaged,
    /// Engaged and a heavy user.
    Champion,
    /// Away for a while, coming back.
    Paused,
    /// Gone for good (on or after the drop-out day).
    Churned,
}

/// A half-open day range `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DaySpan {
    /// First day.
    pub from: i64,
    /// Day after the last.
    pub to: i64,
}

impl DaySpan {
    /// Whether `day` lies in the span.
    pub fn contains(&self, day: i64) -> bool {
        (self.from..self.to).contains(&day)
    }
}

/// One simulated device.
#[derive(Debug, Clone)]
pub struct DevicePlan {
    /// Device id (`m00042-coffee_machine`).
    pub id: String,
    /// Device type name from the fleet file.
    pub device_type: String,
    /// Model name.
    pub model: String,
    /// The member's main device (used on every active day).
    pub primary: bool,
    /// Days without a connection (the member still uses it).
    pub offline: Option<DaySpan>,
    /// Days when its clock reads 2000-01-01 onwards instead of the real time.
    pub clock_wrong: Option<DaySpan>,
    /// The member's favourite value per attribute name.
    favourites: BTreeMap<String, usize>,
}

impl DevicePlan {
    /// The device's Ed25519 key, derived from the fleet seed and its id (so a resumed
    /// simulation signs with the same key the cloud registered).
    pub fn key(&self, seed: u64) -> KeyPair {
        let mut h = Sha256::new();
        h.update(b"rollcall-sim-device-key");
        h.update(seed.to_le_bytes());
        h.update(self.id.as_bytes());
        KeyPair::from_seed(h.finalize().into())
    }
}

/// One simulated member and how they behave.
#[derive(Debug, Clone)]
pub struct MemberPlan {
    /// Position in the fleet.
    pub index: usize,
    /// Member id (`m00042`).
    pub id: String,
    /// Name, contact details, time zone.
    pub person: Person,
    /// The parsed time zone.
    pub tz: Tz,
    /// Behaviour profile.
    pub profile: Profile,
    /// Day the subscription began (negative: before the window).
    pub joined_day: i64,
    /// First day of no usage at all, for good.
    pub dropout_day: Option<i64>,
    /// A holiday: no usage, then back.
    pub pause: Option<DaySpan>,
    /// Base probability of an active day.
    rate: f64,
    /// Weekly members' day.
    weekly_day: Weekday,
    /// Seasonal members' busiest day of the year.
    season_peak: f64,
    /// January sign-ups: how fast interest fades (days).
    fade_days: f64,
    /// Regulars with a Monday-to-Friday rhythm (dropout, holiday).
    weekday_rhythm: bool,
    /// The member's devices; the first is primary.
    pub devices: Vec<DevicePlan>,
    /// The plan name.
    pub plan: String,
}

/// One usage event as it happens in the world (true time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEvent {
    /// Index into the member's devices.
    pub device: usize,
    /// When it really happened.
    pub at: DateTime<Utc>,
    /// Event kind.
    pub kind: String,
    /// Quantity.
    pub qty: u32,
    /// Attributes.
    pub attrs: BTreeMap<String, String>,
}

/// The planned fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The seed everything derives from.
    pub seed: u64,
    /// The first calendar date of the window.
    pub start: NaiveDate,
    /// Planned length of the window in days (drop-outs and pauses fall inside it).
    pub days: i64,
    /// Members in id order.
    pub members: Vec<MemberPlan>,
    config: FleetConfig,
}

/// Mixes a seed with parts into an independent generator seed (SplitMix64 steps).
pub fn mix(seed: u64, parts: &[u64]) -> u64 {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    for p in parts {
        x ^= p.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
    }
    x
}

fn pick_weighted<T: Copy>(rng: &mut Rng, items: &[(T, f64)]) -> T {
    let total: f64 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.f64() * total;
    for (item, w) in items {
        if x < *w {
            return *item;
        }
        x -= w;
    }
    items.last().expect("non-empty").0
}

fn uniform(rng: &mut Rng, r: [u32; 2]) -> u32 {
    rng.u32(r[0]..=r[1])
}

impl Fleet {
    /// Plans `size` members (or, with `Size::Devices`, members until there are that many
    /// devices) for a window starting on `start` and lasting `days` days.
    pub fn plan(
        config: &FleetConfig,
        seed: u64,
        size: FleetSize,
        start: NaiveDate,
        days: i64,
    ) -> Fleet {
        let days = days.max(1);
        let mut rng = Rng::with_seed(mix(seed, &[0xF1EE7]));
        let mut people = PeopleFactory::new();
        let profiles: Vec<(Profile, f64)> = Profile::ALL
            .iter()
            .copied()
            .zip(config.profiles.weights().iter().map(|(_, w)| *w))
            .collect();
        let regions: Vec<(&str, f64)> = config
            .members
            .regions
            .iter()
            .map(|(r, w)| (r.as_str(), *w))
            .collect();
        let types: Vec<(&str, f64)> = config
            .device_types
            .iter()
            .map(|(n, t)| (n.as_str(), t.weight))
            .collect();
        let mut members = Vec::new();
        let mut device_count = 0usize;
        loop {
            match size {
                FleetSize::Members(n) if members.len() >= n => break,
                FleetSize::Devices(n) if device_count >= n => break,
                _ => {}
            }
            let index = members.len();
            let region = pick_weighted(&mut rng, &regions);
            let person = people.person(&mut rng, region);
            let tz: Tz = person.tz.parse().expect("people use valid zones");
            let profile = pick_weighted(&mut rng, &profiles);
            let mut m = plan_member(config, &mut rng, index, person, tz, profile, days);
            let wants_second = rng.f64() < config.members.second_device_share && types.len() > 1;
            let mut device_types = vec![pick_weighted(&mut rng, &types)];
            let room = match size {
                FleetSize::Devices(n) => n - device_count,
                FleetSize::Members(_) => usize::MAX,
            };
            if wants_second && room >= 2 {
                let others: Vec<(&str, f64)> = types
                    .iter()
                    .copied()
                    .filter(|(n, _)| *n != device_types[0])
                    .collect();
                device_types.push(pick_weighted(&mut rng, &others));
            }
            for (i, t) in device_types.iter().enumerate() {
                let dt = &config.device_types[*t];
                m.devices
                    .push(plan_device(config, &mut rng, &m, t, dt, i == 0, days));
            }
            m.plan = config.device_types[device_types[0]].plan.clone();
            device_count += m.devices.len();
            members.push(m);
        }
        Fleet {
            seed,
            start,
            days,
            members,
            config: config.clone(),
        }
    }

    /// Number of devices.
    pub fn device_count(&self) -> usize {
        self.members.iter().map(|m| m.devices.len()).sum()
    }

    /// The UTC instant when day `day` begins in `tz`.
    pub fn day_start(&self, tz: Tz, day: i64) -> DateTime<Utc> {
        local_instant(tz, self.start + Duration::days(day), 0, 0)
    }

    /// The calendar date of day `day`.
    pub fn date(&self, day: i64) -> NaiveDate {
        self.start + Duration::days(day)
    }

    /// The true state of `m` on `day` (`None` before joining).
    pub fn true_state(&self, m: &MemberPlan, day: i64) -> Option<TrueState> {
        if day < m.joined_day {
            return None;
        }
        if m.dropout_day.is_some_and(|d| day >= d) {
            return Some(TrueState::Churned);
        }
        if m.pause.is_some_and(|p| p.contains(day)) {
            return Some(TrueState::Paused);
        }
        if day - m.joined_day < 14 {
            return Some(TrueState::New);
        }
        Some(if m.profile == Profile::Champion {
            TrueState::Champion
        } else {
            TrueState::Engaged
        })
    }

    /// Probability that `m` uses a device on `day`.
    pub fn p_active(&self, m: &MemberPlan, day: i64) -> f64 {
        if day < m.joined_day
            || m.dropout_day.is_some_and(|d| day >= d)
            || m.pause.is_some_and(|p| p.contains(day))
        {
            return 0.0;
        }
        let date = self.date(day);
        let weekend = matches!(date.weekday(), Weekday::Sat | Weekday::Sun);
        match m.profile {
            Profile::Daily | Profile::Champion => m.rate,
            Profile::Weekday => {
                if weekend {
                    0.08
                } else {
                    m.rate
                }
            }
            Profile::Weekly => {
                if date.weekday() == m.weekly_day {
                    m.rate
                } else {
                    0.03
                }
            }
            Profile::Seasonal => {
                let doy = f64::from(date.ordinal());
                let phase = (1.0
                    + (2.0 * std::f64::consts::PI * (doy - m.season_peak) / 365.25).cos())
                    / 2.0;
                0.04 + (m.rate - 0.04) * phase * phase
            }
            Profile::January => m.rate * (-((day - m.joined_day) as f64) / m.fade_days).exp(),
            Profile::Dropout | Profile::Holiday => {
                if m.weekday_rhythm && weekend {
                    0.1
                } else {
                    m.rate
                }
            }
        }
    }

    /// Everything `m`'s devices record on `day`, in time order. Deterministic.
    pub fn day_events(&self, m: &MemberPlan, day: i64) -> Vec<SimEvent> {
        let mut rng = Rng::with_seed(mix(self.seed, &[m.index as u64, day as u64, 0xDA7]));
        if rng.f64() >= self.p_active(m, day) {
            return Vec::new();
        }
        let date = self.date(day);
        let heavy = m.profile == Profile::Champion;
        let mut out = Vec::new();
        for (di, d) in m.devices.iter().enumerate() {
            if !d.primary && rng.f64() >= 0.45 {
                continue;
            }
            let dt = &self.config.device_types[&d.device_type];
            for spec in &dt.usage {
                let n = match (spec.uses, spec.chance) {
                    (Some(r), _) => {
                        let n = uniform(&mut rng, r);
                        if heavy {
                            n * 2
                        } else {
                            n
                        }
                    }
                    (None, Some(c)) => u32::from(rng.f64() < c),
                    (None, None) => 0,
                };
                for _ in 0..n {
                    out.push(self.one_event(&mut rng, m, di, d, dt, spec, date));
                }
            }
        }
        out.sort_by_key(|e| e.at);
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn one_event(
        &self,
        rng: &mut Rng,
        m: &MemberPlan,
        di: usize,
        d: &DevicePlan,
        dt: &DeviceType,
        spec: &UsageSpec,
        date: NaiveDate,
    ) -> SimEvent {
        let hour = rng.u32(dt.hours[0]..dt.hours[1]);
        let at = local_instant(m.tz, date, hour, rng.u32(0..60))
            + Duration::seconds(i64::from(rng.u32(0..60)));
        let mut attrs: BTreeMap<String, String> = spec
            .attrs
            .iter()
            .map(|(k, values)| {
                let fav = d.favourites.get(k).copied().unwrap_or(0) % values.len();
                let i = if rng.f64() < 0.6 {
                    fav
                } else {
                    rng.usize(..values.len())
                };
                (k.clone(), values[i].clone())
            })
            .collect();
        // Firmware reports its model with each event (the console and greetings name it).
        attrs.insert("model".into(), d.model.clone());
        SimEvent {
            device: di,
            at,
            kind: spec.kind.clone(),
            qty: uniform(rng, spec.qty),
            attrs,
        }
    }
}

/// How big a fleet to plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetSize {
    /// This many members.
    Members(usize),
    /// Members until there are this many devices.
    Devices(usize),
}

/// `date` at `hour:minute` in `tz`, as UTC (skipping forward over a DST gap).
fn local_instant(tz: Tz, date: NaiveDate, hour: u32, minute: u32) -> DateTime<Utc> {
    let naive = date.and_hms_opt(hour, minute, 0).expect("valid time");
    match tz.from_local_datetime(&naive).earliest() {
        Some(t) => t.with_timezone(&Utc),
        None => tz
            .from_local_datetime(&(naive + Duration::hours(1)))
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| Utc.from_utc_datetime(&naive)),
    }
}

fn plan_member(
    config: &FleetConfig,
    rng: &mut Rng,
    index: usize,
    person: Person,
    tz: Tz,
    profile: Profile,
    days: i64,
) -> MemberPlan {
    let before = config.members.joined_before_days;
    let veteran = -(i64::from(uniform(rng, before)));
    let span = |rng: &mut Rng, lo: f64, hi: f64| {
        let a = (days as f64 * lo) as i64;
        let b = ((days as f64 * hi) as i64).max(a + 1);
        rng.i64(a..b)
    };
    let steady_join = |rng: &mut Rng| {
        if rng.f64() < config.members.new_share {
            span(rng, 0.0, 0.9)
        } else {
            veteran
        }
    };
    let mut m = MemberPlan {
        index,
        id: format!("m{:05}", index + 1),
        person,
        tz,
        profile,
        joined_day: veteran,
        dropout_day: None,
        pause: None,
        rate: 0.8,
        weekly_day: Weekday::Mon,
        season_peak: 15.0,
        fade_days: 10.0,
        weekday_rhythm: false,
        devices: Vec::new(),
        plan: String::new(),
    };
    match profile {
        Profile::Daily => {
            m.rate = 0.7 + 0.25 * rng.f64();
            m.joined_day = steady_join(rng);
        }
        Profile::Weekday => {
            m.rate = 0.75 + 0.2 * rng.f64();
            m.joined_day = steady_join(rng);
        }
        Profile::Weekly => {
            m.rate = 0.85 + 0.1 * rng.f64();
            m.weekly_day = Weekday::try_from(rng.u8(0..7)).expect("0..7 is a weekday");
            m.joined_day = steady_join(rng);
        }
        Profile::Seasonal => {
            m.rate = 0.7 + 0.2 * rng.f64();
            m.season_peak = f64::from(rng.u32(0..365));
            m.joined_day = steady_join(rng);
        }
        Profile::January => {
            m.rate = 0.6 + 0.3 * rng.f64();
            m.fade_days = 4.0 + 8.0 * rng.f64();
            m.joined_day = span(rng, 0.0, 0.75);
            m.dropout_day = Some(m.joined_day + i64::from(rng.u32(10..36)));
        }
        Profile::Dropout => {
            m.rate = 0.6 + 0.3 * rng.f64();
            m.weekday_rhythm = rng.bool();
            m.dropout_day = Some(span(rng, 0.2, 0.85));
        }
        Profile::Holiday => {
            m.rate = 0.65 + 0.3 * rng.f64();
            m.weekday_rhythm = rng.bool();
            let from = span(rng, 0.15, 0.8);
            m.pause = Some(DaySpan {
                from,
                to: from + i64::from(rng.u32(7..22)),
            });
        }
        Profile::Champion => {
            m.rate = 0.95 + 0.05 * rng.f64();
            m.joined_day = steady_join(rng);
        }
    }
    m
}

fn plan_device(
    config: &FleetConfig,
    rng: &mut Rng,
    m: &MemberPlan,
    type_name: &str,
    dt: &DeviceType,
    primary: bool,
    days: i64,
) -> DevicePlan {
    let first = m.joined_day.max(0);
    let spell = |rng: &mut Rng, share: f64, len: [u32; 2]| {
        if rng.f64() < share && first < days {
            let from = rng.i64(first..days);
            Some(DaySpan {
                from,
                to: from + i64::from(uniform(rng, len)),
            })
        } else {
            None
        }
    };
    let offline = spell(rng, config.quirks.offline_share, config.quirks.offline_days);
    let clock_wrong = spell(
        rng,
        config.quirks.clock_wrong_share,
        config.quirks.clock_wrong_days,
    );
    let favourites = dt
        .usage
        .iter()
        .flat_map(|u| u.attrs.iter())
        .map(|(k, v)| (k.clone(), rng.usize(..v.len())))
        .collect();
    DevicePlan {
        id: format!("{}-{}", m.id, type_name.replace('_', "-")),
        device_type: type_name.to_owned(),
        model: dt.models[rng.usize(..dt.models.len())].clone(),
        primary,
        offline,
        clock_wrong,
        favourites,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(seed: u64, n: usize, days: i64) -> Fleet {
        let start = NaiveDate::from_ymd_opt(2026, 6, 1).unwrap();
        Fleet::plan(
            &FleetConfig::builtin(),
            seed,
            FleetSize::Members(n),
            start,
            days,
        )
    }

    fn active_days(f: &Fleet, m: &MemberPlan, days: std::ops::Range<i64>) -> Vec<i64> {
        days.filter(|d| !f.day_events(m, *d).is_empty()).collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_fleet_and_events() {
        let (a, b) = (fleet(9, 60, 90), fleet(9, 60, 90));
        for (ma, mb) in a.members.iter().zip(&b.members) {
            assert_eq!(ma.person, mb.person);
            assert_eq!(ma.profile, mb.profile);
            assert_eq!(ma.dropout_day, mb.dropout_day);
            for d in 0..90 {
                assert_eq!(a.day_events(ma, d), b.day_events(mb, d));
            }
        }
        let c = fleet(10, 60, 90);
        assert_ne!(
            a.members
                .iter()
                .map(|m| m.person.phone.clone())
                .collect::<Vec<_>>(),
            c.members
                .iter()
                .map(|m| m.person.phone.clone())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn device_sized_fleets_have_exactly_that_many_devices() {
        let start = NaiveDate::from_ymd_opt(2026, 6, 1).unwrap();
        let f = Fleet::plan(
            &FleetConfig::builtin(),
            1,
            FleetSize::Devices(1000),
            start,
            30,
        );
        assert_eq!(f.device_count(), 1000);
    }

    fn members_of(f: &Fleet, p: Profile) -> impl Iterator<Item = &MemberPlan> {
        f.members.iter().filter(move |m| m.profile == p)
    }

    #[test]
    fn dropouts_never_use_the_device_after_their_dropout_day_and_did_before() {
        let f = fleet(2, 600, 120);
        let mut n = 0;
        for m in members_of(&f, Profile::Dropout).chain(members_of(&f, Profile::January)) {
            let d = m.dropout_day.unwrap();
            assert!(
                active_days(&f, m, d..150).is_empty(),
                "{} used after drop-out",
                m.id
            );
            let before = active_days(&f, m, m.joined_day.max(0)..d.min(120));
            assert!(
                !before.is_empty() || d <= 1,
                "{} never used it before dropping out",
                m.id
            );
            n += 1;
        }
        assert!(n > 50, "too few drop-outs to check: {n}");
    }

    #[test]
    fn daily_regulars_are_active_most_days_and_weekly_users_about_once_a_week() {
        let f = fleet(3, 800, 120);
        let rate = |p: Profile| {
            let (mut act, mut tot) = (0usize, 0usize);
            for m in members_of(&f, p).filter(|m| m.joined_day < 0) {
                act += active_days(&f, m, 0..112).len();
                tot += 112;
            }
            act as f64 / tot as f64
        };
        let daily = rate(Profile::Daily);
        let weekly = rate(Profile::Weekly) * 7.0;
        let champion = rate(Profile::Champion);
        assert!((0.7..0.95).contains(&daily), "daily {daily}");
        assert!(
            (0.8..1.4).contains(&weekly),
            "weekly users are active {weekly} days a week"
        );
        assert!(champion > 0.93, "champions {champion}");
    }

    #[test]
    fn weekday_users_are_quiet_at_weekends() {
        let f = fleet(4, 800, 84);
        let (mut wk, mut we) = (0usize, 0usize);
        for m in members_of(&f, Profile::Weekday).filter(|m| m.joined_day < 0) {
            for d in active_days(&f, m, 0..84) {
                match f.date(d).weekday() {
                    Weekday::Sat | Weekday::Sun => we += 1,
                    _ => wk += 1,
                }
            }
        }
        // 5 weekdays at ~0.85 versus 2 weekend days at 0.08.
        assert!(wk > 10 * we, "weekdays {wk}, weekends {we}");
    }

    #[test]
    fn holiday_members_pause_and_come_back() {
        let f = fleet(5, 800, 120);
        let mut n = 0;
        for m in members_of(&f, Profile::Holiday) {
            let p = m.pause.unwrap();
            assert!(active_days(&f, m, p.from..p.to).is_empty());
            if p.to + 14 <= 120 {
                assert!(
                    !active_days(&f, m, p.to..p.to + 14).is_empty(),
                    "{} never came back",
                    m.id
                );
                n += 1;
            }
        }
        assert!(n > 20);
    }

    #[test]
    fn january_signups_fade_after_joining() {
        let f = fleet(6, 1500, 120);
        let (mut first, mut later) = (0usize, 0usize);
        for m in members_of(&f, Profile::January) {
            first += active_days(&f, m, m.joined_day..m.joined_day + 5).len();
            later += active_days(&f, m, m.joined_day + 10..m.joined_day + 15).len();
            assert!(m.joined_day >= 0, "january sign-ups join in the window");
        }
        assert!(first > 3 * later, "first week {first}, later {later}");
    }

    #[test]
    fn the_true_state_follows_the_plan() {
        let f = fleet(7, 400, 120);
        let m = members_of(&f, Profile::Dropout).next().unwrap();
        let d = m.dropout_day.unwrap();
        assert_eq!(f.true_state(m, d), Some(TrueState::Churned));
        assert_ne!(f.true_state(m, d - 1), Some(TrueState::Churned));
        let h = members_of(&f, Profile::Holiday).next().unwrap();
        assert_eq!(
            f.true_state(h, h.pause.unwrap().from),
            Some(TrueState::Paused)
        );
        assert_eq!(f.true_state(h, h.joined_day - 1), None);
    }

    #[test]
    fn events_happen_in_the_members_local_usage_hours() {
        let f = fleet(8, 200, 30);
        for m in &f.members {
            for d in 0..30 {
                for e in f.day_events(m, d) {
                    let local = e.at.with_timezone(&m.tz);
                    let dt = &f.config.device_types[&m.devices[e.device].device_type];
                    assert_eq!(local.date_naive(), f.date(d));
                    let h = local.hour();
                    assert!(
                        h >= dt.hours[0] && h < dt.hours[1] + 1,
                        "{} at {local}",
                        m.id
                    );
                }
            }
        }
    }

    use chrono::Timelike;
}

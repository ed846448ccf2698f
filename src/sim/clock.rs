//! Clocks of the simulation: one shared simulated time that the runner moves (and that
//! an in-process cloud reads too), and per-device clocks that can be wrong for a while.

use chrono::{DateTime, Utc};
use rollcall_shared::{Clock, ManualClock};

/// What a device's clock shows after a reset: 2000-01-01T00:00:00Z plus the time since.
pub const RESET_EPOCH_S: i64 = 946_684_800;

/// A device's clock: the simulated time, except during a wrong-clock spell when it
/// counts up from [`RESET_EPOCH_S`] from the moment of the reset.
#[derive(Debug, Clone)]
pub struct DeviceClock {
    sim: ManualClock,
    wrong: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

impl DeviceClock {
    /// A device clock over `sim`, wrong during `[from, to)` when given.
    pub fn new(sim: ManualClock, wrong: Option<(DateTime<Utc>, DateTime<Utc>)>) -> Self {
        Self { sim, wrong }
    }

    /// What this device's clock reads at the true instant `t`, and whether it is wrong then.
    pub fn reading(&self, t: DateTime<Utc>) -> (DateTime<Utc>, bool) {
        match self.wrong {
            Some((from, to)) if from <= t && t < to => {
                let epoch = DateTime::from_timestamp(RESET_EPOCH_S, 0).expect("valid epoch");
                (epoch + (t - from), true)
            }
            _ => (t, false),
        }
    }
}

impl Clock for DeviceClock {
    fn now(&self) -> DateTime<Utc> {
        self.reading(self.sim.now()).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn a_wrong_clock_reads_2000_during_its_spell_only() {
        let t0 = DateTime::parse_from_rfc3339("2026-05-01T10:00:00Z")
            .unwrap()
            .to_utc();
        let sim = ManualClock::new(t0);
        let c = DeviceClock::new(
            sim.clone(),
            Some((t0 + Duration::hours(1), t0 + Duration::hours(5))),
        );
        assert_eq!(c.now(), t0);
        sim.set(t0 + Duration::hours(3));
        assert_eq!(c.now().to_rfc3339(), "2000-01-01T02:00:00+00:00");
        assert!(c.reading(t0 + Duration::hours(2)).1);
        sim.set(t0 + Duration::hours(5));
        assert_eq!(c.now(), t0 + Duration::hours(5));
    }
}

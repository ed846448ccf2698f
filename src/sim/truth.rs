//! The ground truth of a simulation: per member the profile, the true drop-out day, the
//! true active days and the true state by day. Written to a JSON file for `rollcall eval`;
//! never sent to the cloud.

use super::fleet::{DaySpan, Fleet, TrueState};
use chrono::{Duration, NaiveDate};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A span of dates `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DateSpan {
    /// First date.
    pub from: NaiveDate,
    /// Date after the last.
    pub to: NaiveDate,
}

/// A run of days in one true state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRun {
    /// First date.
    pub from: NaiveDate,
    /// Date after the last.
    pub to: NaiveDate,
    /// `new`, `engaged`, `champion`, `paused` or `churned`.
    pub state: String,
}

/// One device's truth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTruth {
    /// Device id.
    pub id: String,
    /// Device type.
    #[serde(rename = "type")]
    pub device_type: String,
    /// Model.
    pub model: String,
    /// Offline spell.
    pub offline: Option<DateSpan>,
    /// Wrong-clock spell.
    pub clock_wrong: Option<DateSpan>,
}

/// One member's truth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberTruth {
    /// Member id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Behaviour profile.
    pub profile: String,
    /// IANA time zone (active days are dates in it).
    pub tz: String,
    /// Joining date.
    pub joined: NaiveDate,
    /// The true drop-out date, if the member drops out.
    pub dropout: Option<NaiveDate>,
    /// A holiday pause.
    pub pause: Option<DateSpan>,
    /// Devices.
    pub devices: Vec<DeviceTruth>,
    /// Dates with at least one use, in order.
    pub active_days: Vec<NaiveDate>,
    /// True state by day, as runs.
    pub states: Vec<StateRun>,
}

/// The ground truth file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truth {
    /// The fleet seed.
    pub seed: u64,
    /// First date of the window.
    pub start: NaiveDate,
    /// Date after the last day covered.
    pub end: NaiveDate,
    /// Members.
    pub members: Vec<MemberTruth>,
}

/// Why the truth file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TruthError {
    /// File system.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a truth file.
    #[error("{path} is not a ground-truth file: {source}")]
    Format {
        /// The file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
}

impl Truth {
    /// The truth of `fleet` for days `0..through` (exclusive).
    pub fn build(fleet: &Fleet, through: i64) -> Truth {
        let span = |s: DaySpan| DateSpan {
            from: fleet.date(s.from),
            to: fleet.date(s.to),
        };
        let members = fleet
            .members
            .iter()
            .map(|m| {
                let first = m.joined_day.max(0);
                let active_days = (first..through)
                    .filter(|d| !fleet.day_events(m, *d).is_empty())
                    .map(|d| fleet.date(d))
                    .collect();
                let mut states: Vec<StateRun> = Vec::new();
                for d in first..through {
                    let Some(s) = fleet.true_state(m, d) else {
                        continue;
                    };
                    let name = state_name(s);
                    match states.last_mut() {
                        Some(run) if run.state == name && run.to == fleet.date(d) => {
                            run.to = fleet.date(d + 1)
                        }
                        _ => states.push(StateRun {
                            from: fleet.date(d),
                            to: fleet.date(d + 1),
                            state: name.to_owned(),
                        }),
                    }
                }
                MemberTruth {
                    id: m.id.clone(),
                    name: m.person.name(),
                    profile: m.profile.name().to_owned(),
                    tz: m.person.tz.to_owned(),
                    joined: fleet.date(m.joined_day),
                    dropout: m.dropout_day.map(|d| fleet.date(d)),
                    pause: m.pause.map(span),
                    devices: m
                        .devices
                        .iter()
                        .map(|d| DeviceTruth {
                            id: d.id.clone(),
                            device_type: d.device_type.clone(),
                            model: d.model.clone(),
                            offline: d.offline.map(span),
                            clock_wrong: d.clock_wrong.map(span),
                        })
                        .collect(),
                    active_days,
                    states,
                }
            })
            .collect();
        Truth {
            seed: fleet.seed,
            start: fleet.start,
            end: fleet.start + Duration::days(through),
            members,
        }
    }

    /// Writes the file atomically (temp file, then rename).
    pub fn write(&self, path: &Path) -> Result<(), TruthError> {
        let io = |source| TruthError::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec(self).expect("truth serialises");
        std::fs::write(&tmp, json).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads a truth file.
    pub fn read(path: &Path) -> Result<Truth, TruthError> {
        let bytes = std::fs::read(path).map_err(|source| TruthError::Io {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| TruthError::Format {
            path: path.display().to_string(),
            source,
        })
    }
}

impl MemberTruth {
    /// The true state on `date`, if the member had joined.
    pub fn state_on(&self, date: NaiveDate) -> Option<&str> {
        self.states
            .iter()
            .find(|r| r.from <= date && date < r.to)
            .map(|r| r.state.as_str())
    }
}

/// The name of a true state in the file.
pub fn state_name(s: TrueState) -> &'static str {
    match s {
        TrueState::New => "new",
        TrueState::Engaged => "engaged",
        TrueState::Champion => "champion",
        TrueState::Paused => "paused",
        TrueState::Churned => "churned",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::config::FleetConfig;
    use crate::sim::fleet::FleetSize;

    #[test]
    fn truth_round_trips_and_is_deterministic() {
        let start = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let f = Fleet::plan(
            &FleetConfig::builtin(),
            11,
            FleetSize::Members(50),
            start,
            60,
        );
        let t = Truth::build(&f, 60);
        assert_eq!(
            t,
            Truth::build(
                &Fleet::plan(
                    &FleetConfig::builtin(),
                    11,
                    FleetSize::Members(50),
                    start,
                    60
                ),
                60
            )
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("truth.json");
        t.write(&p).unwrap();
        assert_eq!(Truth::read(&p).unwrap(), t);
        for m in &t.members {
            if let Some(d) = m.dropout {
                assert!(m.active_days.iter().all(|a| *a < d));
                if d < t.end {
                    assert_eq!(m.state_on(d), Some("churned"));
                }
            }
            // Runs are contiguous.
            for w in m.states.windows(2) {
                assert_eq!(w[0].to, w[1].from);
            }
        }
    }
}

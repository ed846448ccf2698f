//! `config/fleet.toml`: the fleet's mix of members, behaviour profiles, device quirks and
//! device types. Parsed into typed structs with `deny_unknown_fields`; every check names
//! the file and the key.

use rollcall_shared::payload::validate_attrs;
use rollcall_shared::EventKind;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Why the fleet file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FleetConfigError {
    /// The file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax or an unknown/mistyped key.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// The parser's message (it names the key).
        message: String,
    },
    /// A value is out of range.
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// The dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole fleet description.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Who the members are.
    #[serde(default)]
    pub members: MembersConfig,
    /// Profile weights.
    #[serde(default)]
    pub profiles: ProfileWeights,
    /// Device quirks.
    #[serde(default)]
    pub quirks: QuirksConfig,
    /// Device types by name (`coffee_machine`, `printer`, `bike`).
    pub device_types: BTreeMap<String, DeviceType>,
}

/// `[members]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembersConfig {
    /// Share of members with a second device.
    pub second_device_share: f64,
    /// Range of days before the window that long-standing members joined.
    pub joined_before_days: [u32; 2],
    /// Share of steady members who join during the window.
    pub new_share: f64,
    /// Region weights (`us`, `uk`, `au`).
    pub regions: BTreeMap<String, f64>,
}

impl Default for MembersConfig {
    fn default() -> Self {
        Self {
            second_device_share: 0.15,
            joined_before_days: [30, 720],
            new_share: 0.10,
            regions: BTreeMap::from([("us".into(), 0.7), ("uk".into(), 0.2), ("au".into(), 0.1)]),
        }
    }
}

/// `[profiles]`: weight of each behaviour profile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileWeights {
    /// Most days.
    pub daily: f64,
    /// Monday to Friday.
    pub weekday: f64,
    /// One day a week.
    pub weekly: f64,
    /// Busy in one season.
    pub seasonal: f64,
    /// Sign-ups who fade and stop.
    pub january: f64,
    /// Regulars who stop on a known day.
    pub dropout: f64,
    /// Regulars who pause and come back.
    pub holiday: f64,
    /// Every day, several times.
    pub champion: f64,
}

impl Default for ProfileWeights {
    fn default() -> Self {
        Self {
            daily: 0.20,
            weekday: 0.14,
            weekly: 0.12,
            seasonal: 0.08,
            january: 0.08,
            dropout: 0.16,
            holiday: 0.12,
            champion: 0.10,
        }
    }
}

/// `[quirks]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuirksConfig {
    /// Share of devices with an offline spell.
    pub offline_share: f64,
    /// Length range of the spell in days.
    pub offline_days: [u32; 2],
    /// Share of devices whose clock is wrong for a while.
    pub clock_wrong_share: f64,
    /// Length range of the wrong-clock spell in days.
    pub clock_wrong_days: [u32; 2],
}

impl Default for QuirksConfig {
    fn default() -> Self {
        Self {
            offline_share: 0.08,
            offline_days: [2, 6],
            clock_wrong_share: 0.04,
            clock_wrong_days: [1, 4],
        }
    }
}

/// One device type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceType {
    /// Relative weight in the fleet.
    pub weight: f64,
    /// Model names to pick from.
    pub models: Vec<String>,
    /// The plan name members of this type are on.
    pub plan: String,
    /// Local hours `[from, to)` when the device is used.
    #[serde(default = "default_hours")]
    pub hours: [u32; 2],
    /// What it reports.
    pub usage: Vec<UsageSpec>,
}

fn default_hours() -> [u32; 2] {
    [7, 22]
}

/// One usage kind of a device type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageSpec {
    /// The event kind.
    pub kind: String,
    /// Uses per active day `[min, max]`; exclusive with `chance`.
    #[serde(default)]
    pub uses: Option<[u32; 2]>,
    /// Probability of one use on an active day; exclusive with `uses`.
    #[serde(default)]
    pub chance: Option<f64>,
    /// Quantity per use `[min, max]`.
    #[serde(default = "default_qty")]
    pub qty: [u32; 2],
    /// Attribute name → values to choose from (each member has a favourite).
    #[serde(default)]
    pub attrs: BTreeMap<String, Vec<String>>,
}

fn default_qty() -> [u32; 2] {
    [1, 1]
}

/// The regions the people generator knows.
pub const REGIONS: [&str; 3] = ["us", "uk", "au"];

impl FleetConfig {
    /// Reads and validates a fleet file.
    pub fn load(path: &Path) -> Result<Self, FleetConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| FleetConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }

    /// The fleet file shipped in `config/fleet.toml`, compiled in (used when no file is given).
    pub fn builtin() -> Self {
        Self::parse(include_str!("../../config/fleet.toml"), "config/fleet.toml")
            .expect("the shipped fleet.toml is valid")
    }

    /// Parses and validates fleet TOML; `file` names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, FleetConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| FleetConfigError::Parse {
            file: file.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate(file)?;
        Ok(cfg)
    }

    fn validate(&self, file: &str) -> Result<(), FleetConfigError> {
        let bad = |key: String, message: String| FleetConfigError::Invalid {
            file: file.to_owned(),
            key,
            message,
        };
        let share = |key: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(bad(
                    key.into(),
                    format!("{v} is not a share between 0 and 1"),
                ))
            }
        };
        let range = |key: String, r: [u32; 2]| {
            if r[0] <= r[1] {
                Ok(())
            } else {
                Err(bad(
                    key,
                    format!("[{}, {}] is not a range (min > max)", r[0], r[1]),
                ))
            }
        };
        share(
            "members.second_device_share",
            self.members.second_device_share,
        )?;
        share("members.new_share", self.members.new_share)?;
        range(
            "members.joined_before_days".into(),
            self.members.joined_before_days,
        )?;
        share("quirks.offline_share", self.quirks.offline_share)?;
        share("quirks.clock_wrong_share", self.quirks.clock_wrong_share)?;
        range("quirks.offline_days".into(), self.quirks.offline_days)?;
        range(
            "quirks.clock_wrong_days".into(),
            self.quirks.clock_wrong_days,
        )?;
        if self.quirks.offline_days[0] == 0 || self.quirks.clock_wrong_days[0] == 0 {
            return Err(bad("quirks".into(), "spells last at least one day".into()));
        }
        for (region, w) in &self.members.regions {
            if !REGIONS.contains(&region.as_str()) {
                return Err(bad(
                    format!("members.regions.{region}"),
                    format!("unknown region; known: {}", REGIONS.join(", ")),
                ));
            }
            weight(&format!("members.regions.{region}"), *w).map_err(|m| bad(m.0, m.1))?;
        }
        if self.members.regions.values().sum::<f64>() <= 0.0 {
            return Err(bad("members.regions".into(), "no region has weight".into()));
        }
        let p = &self.profiles;
        for (name, w) in p.weights() {
            weight(&format!("profiles.{name}"), w).map_err(|m| bad(m.0, m.1))?;
        }
        if p.weights().iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            return Err(bad("profiles".into(), "no profile has weight".into()));
        }
        if self.device_types.is_empty() {
            return Err(bad(
                "device_types".into(),
                "at least one device type".into(),
            ));
        }
        for (name, t) in &self.device_types {
            let key = |k: &str| format!("device_types.{name}.{k}");
            weight(&key("weight"), t.weight).map_err(|m| bad(m.0, m.1))?;
            if t.models.is_empty() || t.models.iter().any(|m| m.trim().is_empty()) {
                return Err(bad(
                    key("models"),
                    "list at least one non-empty model".into(),
                ));
            }
            if t.plan.trim().is_empty() {
                return Err(bad(key("plan"), "must not be empty".into()));
            }
            if t.hours[0] >= t.hours[1] || t.hours[1] > 24 {
                return Err(bad(
                    key("hours"),
                    "must be [from, to) with 0 <= from < to <= 24".into(),
                ));
            }
            if t.usage.is_empty() {
                return Err(bad(key("usage"), "at least one usage kind".into()));
            }
            for (i, u) in t.usage.iter().enumerate() {
                let key = |k: &str| format!("device_types.{name}.usage[{i}].{k}");
                EventKind::parse(&u.kind).map_err(|e| bad(key("kind"), e.to_string()))?;
                match (u.uses, u.chance) {
                    (Some(r), None) => {
                        range(key("uses"), r)?;
                        if r[1] == 0 {
                            return Err(bad(key("uses"), "max must be at least 1".into()));
                        }
                    }
                    (None, Some(c)) => share(&key("chance"), c)?,
                    _ => {
                        return Err(bad(
                            key("uses"),
                            "give exactly one of `uses` and `chance`".into(),
                        ))
                    }
                }
                range(key("qty"), u.qty)?;
                if u.qty[0] == 0 || u.qty[1] > rollcall_shared::limits::MAX_QTY {
                    return Err(bad(
                        key("qty"),
                        format!("must lie in 1..={}", rollcall_shared::limits::MAX_QTY),
                    ));
                }
                for (k, values) in &u.attrs {
                    if values.is_empty() {
                        return Err(bad(
                            key(&format!("attrs.{k}")),
                            "list at least one value".into(),
                        ));
                    }
                    for v in values {
                        validate_attrs(&BTreeMap::from([(k.clone(), v.clone())]))
                            .map_err(|e| bad(key(&format!("attrs.{k}")), e.to_string()))?;
                    }
                }
            }
        }
        if self.device_types.values().map(|t| t.weight).sum::<f64>() <= 0.0 {
            return Err(bad(
                "device_types".into(),
                "no device type has weight".into(),
            ));
        }
        Ok(())
    }
}

impl ProfileWeights {
    /// `(profile name, weight)` in a fixed order.
    pub fn weights(&self) -> [(&'static str, f64); 8] {
        [
            ("daily", self.daily),
            ("weekday", self.weekday),
            ("weekly", self.weekly),
            ("seasonal", self.seasonal),
            ("january", self.january),
            ("dropout", self.dropout),
            ("holiday", self.holiday),
            ("champion", self.champion),
        ]
    }
}

fn weight(key: &str, w: f64) -> Result<(), (String, String)> {
    if w.is_finite() && w >= 0.0 {
        Ok(())
    } else {
        Err((key.to_owned(), format!("{w} is not a weight (>= 0)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_fleet_file_is_valid() {
        let cfg = FleetConfig::builtin();
        assert_eq!(cfg.device_types.len(), 3);
        assert!(cfg.device_types["coffee_machine"].usage[0].kind == "brew");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let text = include_str!("../../config/fleet.toml")
            .replace("[quirks]", "[quirks]\nofline_share = 0.1");
        let err = FleetConfig::parse(&text, "fleet.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fleet.toml") && err.contains("ofline_share"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_share_names_file_and_key() {
        let text = include_str!("../../config/fleet.toml")
            .replace("offline_share = 0.08", "offline_share = 1.5");
        let err = FleetConfig::parse(&text, "fleet.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "fleet.toml: key `quirks.offline_share`: 1.5 is not a share between 0 and 1"
        );
    }

    #[test]
    fn uses_and_chance_are_exclusive() {
        let text = include_str!("../../config/fleet.toml")
            .replace("chance = 0.02", "chance = 0.02\nuses = [1, 2]");
        let err = FleetConfig::parse(&text, "fleet.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("device_types.coffee_machine.usage[1].uses"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_event_kind_is_refused() {
        let text = include_str!("../../config/fleet.toml")
            .replace("kind = \"scan\"", "kind = \"Scan Page\"");
        let err = FleetConfig::parse(&text, "fleet.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("device_types.printer.usage[1].kind"), "{err}");
    }
}

//! The fleet simulator (`rollcall simulate`): realistic members with known ground truth,
//! each with devices running the real agent code in process.
//!
//! - [`config`]: `config/fleet.toml`, the mix of profiles, quirks and device types.
//! - [`people`]: names, time zones, fictional phone numbers and reserved e-mail domains.
//! - [`fleet`]: the deterministic plan: members, profiles, drop-outs, pauses, per-day events.
//! - [`truth`]: the ground-truth file `rollcall eval` compares against.
//! - [`clock`]: per-device clocks that can be wrong for a while.
//! - [`runner`]: runs the plan through real uplinks, an in-process or external cloud.

pub mod clock;
pub mod config;
pub mod fleet;
pub mod people;
pub mod runner;
pub mod truth;

pub use config::FleetConfig;
pub use fleet::{Fleet, FleetSize, Profile};
pub use runner::{CloudTarget, SimOptions, SimSummary, Simulation};
pub use truth::Truth;

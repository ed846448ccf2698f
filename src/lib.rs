//! Rollcall: the one-box demo, fleet simulator, evaluation, benchmarks, and the helpers
//! the end-to-end tests in `tests/` use.
//!
//! # Layout
//! - [`testkit`]: start the real cloud, agents and Mosquitto on ephemeral ports in temp dirs.
//! - [`bench`]: `rollcall bench …` (JSON figures).
//! - [`sim`]: the fleet simulator with ground truth (`rollcall simulate`).

pub mod bench;
pub mod sim;
pub mod testkit;

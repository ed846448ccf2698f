//! Rollcall: the one-box demo, fleet simulator, evaluation, benchmarks, and the helpers
//! the end-to-end tests in `tests/` use.
//!
//! # Layout
//! - [`testkit`]: start the real cloud, agents and Mosquitto on ephemeral ports in temp dirs.
//! - [`bench`]: `rollcall bench …` (JSON figures).

pub mod bench;
pub mod testkit;

//! Rollcall: the one-box demo, fleet simulator, evaluation, benchmarks, and the helpers
//! the end-to-end tests in `tests/` use.
//!
//! # Layout
//! - [`testkit`]: start the real cloud, agents and Mosquitto on ephemeral ports in temp dirs.
//! - [`bench`](mod@bench): `rollcall bench …` (JSON figures).
//! - [`bench_lookup`]: `rollcall bench lookup`, the support API under load.
//! - [`demo`]: `rollcall demo`, the whole system on one box.
//! - [`eval`]: compare the cloud's scoring with the simulator's ground truth (`rollcall eval`).
//! - [`sim`]: the fleet simulator with ground truth (`rollcall simulate`).

pub mod bench;
pub mod bench_lookup;
pub mod demo;
pub mod eval;
pub mod hostcpu;
pub mod sim;
pub mod testkit;

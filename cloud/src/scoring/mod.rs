//! Membership scoring: is each subscriber an engaged member or drifting away, with a
//! calibrated probability and reasons staff can read. The design note is `docs/scoring.md`.
//!
//! # Layout
//! - [`summary`]: usage → active days in the member's time zone → `(x, t_x, T)`.
//! - [`model`]: MBG/NBD and BG/NBD in log space: likelihood, P(engaged), P(silent h),
//!   expected active days; the entry points for every model.
//! - [`bgbb`]: BG/BB (discrete daily opportunities, the default model).
//! - [`fit`]: maximum likelihood (Nelder–Mead in log space, restarts, convergence,
//!   fallback to the last good parameters).
//! - [`state`]: the state machine (`new`, `active`, `champion`, `lapsing`, `lapsed`) with
//!   hysteresis and minimum dwell; [`reasons`]: its plain-language reasons.
//! - [`engine`]: one pass over a fleet (numbers, ranking, states), pure and parallel.
//! - [`fleet`]: members and their active days loaded from the store, kept up to date.
//! - [`run`]: runs against the store: [`score_once`], the live [`Scorer`], [`fit_store`].
//! - [`persist`]: scores, transitions, fits and daily counts in the store.
//! - [`replay`](mod@replay): deterministic day-by-day replay of history ([`replay()`]).
//! - [`csvfit`]: `model fit --from-csv` without the store.
//! - [`simulate`], [`bench`](mod@bench): simulated members, and the speed benchmark ([`bench::run`]).
//!
//! The public entry points for other crates are [`score_once`] (one as-of run, persisted),
//! [`replay()`] / [`replay_each`] (history, read-only), [`fit_csv`] and [`bench::run`].

pub mod bench;
pub mod bgbb;
pub mod csvfit;
pub mod engine;
pub mod fit;
pub mod fleet;
pub mod model;
pub mod persist;
pub mod reasons;
pub mod replay;
pub mod rhythm;
pub mod run;
pub mod simulate;
pub mod state;
pub mod summary;

pub use csvfit::{fit_csv, Unit};
pub use model::{ModelKind, Params};
pub use replay::{
    backfill_engagement, replay, replay_each, replay_variants, Replay, ReplayDay, ReplayPoint,
};
pub use run::{fit_store, score_once, MemberScore, ScoreRun, Scorer, TickOutcome};
pub use state::State;

use crate::store::StoreError;

/// The number of threads the fit and the scoring split their work over, at most `max`.
///
/// Read once per process: `std::thread::available_parallelism` reads the cgroup files on
/// every call on Linux, which cost a fit more than its arithmetic on small fleets.
pub(crate) fn threads(max: usize) -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    (*CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))).min(max)
}

/// Why scoring could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A usage file could not be read.
    #[error(transparent)]
    Usage(#[from] crate::usage::UsageError),
    /// The model could not be fitted.
    #[error("fit: {0}")]
    Fit(#[from] fit::FitError),
    /// A request that makes no sense.
    #[error("{0}")]
    Invalid(String),
}

impl From<rusqlite::Error> for ScoringError {
    fn from(e: rusqlite::Error) -> Self {
        ScoringError::Store(StoreError::Sqlite(e))
    }
}

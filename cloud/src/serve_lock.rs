//! One `serve` per data directory: two would each run a delivery dispatcher, and the
//! second resets the first one's in-flight deliveries at start, so the same message would
//! go out twice at once.
//!
//! The lock is a POSIX record lock on `{data_dir}/serve.lock`, held while `serve` runs; the
//! kernel releases it when the process dies, so a crashed server never blocks the next.
//! Record locks belong to the process: a program that starts the cloud twice in one
//! process (the tests, the demo's restart) is not refused. CLI commands never take it.

use rollcall_shared::pidlock::{Acquired, PidLock};
use std::io;
use std::path::{Path, PathBuf};

/// The lock file in the data directory.
pub const FILE: &str = "serve.lock";

/// Why `serve` could not take its data directory.
#[derive(Debug, thiserror::Error)]
pub enum ServeLockError {
    /// Another process serves this data directory.
    #[error("another rollcall-cloud serve (pid {pid}) is running on {dir}; stop it first, or use another data_dir")]
    Taken {
        /// The data directory.
        dir: PathBuf,
        /// The holder's pid (0 if it could not be told).
        pid: i32,
    },
    /// The lock file could not be opened or locked.
    #[error("{path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct ServeLock {
    _lock: PidLock,
}

impl ServeLock {
    /// Takes the lock on `data_dir`, or says which process holds it.
    pub fn acquire(data_dir: &Path) -> Result<Self, ServeLockError> {
        let path = data_dir.join(FILE);
        match PidLock::acquire(&path) {
            Ok(Acquired::Held(lock)) => Ok(Self { _lock: lock }),
            Ok(Acquired::Taken(pid)) => Err(ServeLockError::Taken {
                dir: data_dir.to_owned(),
                pid,
            }),
            Err(source) => Err(ServeLockError::Io { path, source }),
        }
    }
}

//! One `serve` per data directory: two would each run a delivery dispatcher, and the
//! second resets the first one's in-flight deliveries at start, so the same message would
//! go out twice at once.
//!
//! The lock is a POSIX record lock on `{data_dir}/serve.lock`, held while `serve` runs; the
//! kernel releases it when the process dies, so a crashed server never blocks the next.
//! Record locks belong to the process: a program that starts the cloud twice in one
//! process (the tests, the demo's restart) is not refused. CLI commands never take it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
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
    _file: File,
}

fn request() -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl
}

impl ServeLock {
    /// Takes the lock on `data_dir`, or says which process holds it.
    pub fn acquire(data_dir: &Path) -> Result<Self, ServeLockError> {
        let path = data_dir.join(FILE);
        let io_err = |source| ServeLockError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        let fl = request();
        // SAFETY: the fd is open for the duration of the call and `fl` is a valid flock.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) } == -1 {
            let err = io::Error::last_os_error();
            if !matches!(err.raw_os_error(), Some(libc::EACCES) | Some(libc::EAGAIN)) {
                return Err(io_err(err));
            }
            let mut who = request();
            // SAFETY: as above; F_GETLK fills `who` in.
            let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut who) };
            let pid = if rc == 0 { who.l_pid } else { 0 };
            return Err(ServeLockError::Taken {
                dir: data_dir.to_owned(),
                pid,
            });
        }
        Ok(Self { _file: file })
    }
}

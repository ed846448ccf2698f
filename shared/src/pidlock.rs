//! A lock file that says one process at a time (the agent's daemon, the cloud's `serve`):
//! an exclusive POSIX record lock, released by the kernel when the process dies, so a
//! crash never blocks the next start. Record locks belong to the process, so the same
//! process may take one twice.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct PidLock {
    _file: File,
}

/// What [`PidLock::acquire`] found.
#[derive(Debug)]
pub enum Acquired {
    /// The lock is this process's now.
    Held(PidLock),
    /// Another process holds it (its pid, 0 if it could not be told).
    Taken(i32),
}

fn request() -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl
}

impl PidLock {
    /// Takes the lock on `path` (created 0600 if missing), or says who holds it.
    pub fn acquire(path: &Path) -> io::Result<Acquired> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let fl = request();
        // SAFETY: the fd is open for the duration of the call and `fl` is a valid flock.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) } == -1 {
            let err = io::Error::last_os_error();
            if matches!(err.raw_os_error(), Some(libc::EACCES) | Some(libc::EAGAIN)) {
                return Ok(Acquired::Taken(holder(path).unwrap_or(0)));
            }
            return Err(err);
        }
        Ok(Acquired::Held(PidLock { _file: file }))
    }
}

/// The pid of the process holding the lock on `path`, if one does. Only tests the lock
/// (`F_GETLK`), so it never gets in the way of a process taking it at the same moment.
pub fn holder(path: &Path) -> Option<i32> {
    let file = File::open(path).ok()?;
    let mut fl = request();
    // SAFETY: the fd is open for the duration of the call and `fl` is a valid flock.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut fl) };
    (rc == 0 && fl.l_type != libc::F_UNLCK as libc::c_short).then_some(fl.l_pid)
}

//! The daemon (`rollcall-agent run`): one per data directory. Refuses to start without
//! the cloud's public key (`cloud_public_key`), since only downlinks signed by the cloud
//! may delete events from the outbox. Holds the directory's lock,
//! loads the identity, opens the SQLite outbox, serves the capture socket and runs the
//! uplink until shutdown, then stops accepting on the socket, lets the uplink publish its
//! offline status and disconnect, removes the socket file and returns.

use crate::capture::Capture;
use crate::config::{ConfigError, LoadedConfig};
use crate::identity::{self, IdentityError};
use crate::outbox::{Outbox, OutboxError};
use crate::socket::{self, SocketError};
use crate::uplink::{run_uplink, AgentRuntime, UplinkError, UplinkStats};
use rollcall_shared::pidlock::{Acquired, PidLock};
use rollcall_shared::Clock;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// File name of the daemon lock inside the data directory.
pub const LOCK_FILE: &str = "agent.lock";

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon holds this data directory.
    #[error("another rollcall-agent (pid {pid}) is already running for {}", dir.display())]
    AlreadyRunning {
        /// The data directory.
        dir: PathBuf,
        /// The other daemon's pid.
        pid: i32,
    },
    /// The lock file could not be used.
    #[error("{}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The configuration lacks something the daemon needs (`cloud_public_key`).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The identity could not be loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The outbox could not be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The capture socket could not be served.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The uplink could not run.
    #[error(transparent)]
    Uplink(#[from] UplinkError),
}

/// An exclusive POSIX record lock on `{data_dir}/agent.lock`, held while the daemon runs.
/// The kernel releases it when the process dies, so a crashed daemon never blocks the next.
#[derive(Debug)]
pub struct DaemonLock {
    _lock: PidLock,
}

impl DaemonLock {
    /// Takes the lock, or says who holds it.
    pub fn acquire(data_dir: &Path) -> Result<Self, DaemonError> {
        let path = data_dir.join(LOCK_FILE);
        match PidLock::acquire(&path) {
            Ok(Acquired::Held(lock)) => Ok(Self { _lock: lock }),
            Ok(Acquired::Taken(pid)) => Err(DaemonError::AlreadyRunning {
                dir: data_dir.to_owned(),
                pid,
            }),
            Err(source) => Err(DaemonError::Lock { path, source }),
        }
    }
}

/// The pid of the daemon holding `data_dir`'s lock, if one runs (see
/// [`rollcall_shared::pidlock::holder`]).
pub fn holder(data_dir: &Path) -> Option<i32> {
    rollcall_shared::pidlock::holder(&data_dir.join(LOCK_FILE))
}

/// Runs the daemon until `shutdown` is cancelled. Fails before touching the data
/// directory when `cloud_public_key` is not configured.
pub async fn run_daemon(
    cfg: LoadedConfig,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let cloud_key = cfg.require_cloud_key()?;
    let data_dir = cfg.data_dir().to_owned();
    identity::ensure_data_dir(&data_dir)?;
    let _lock = DaemonLock::acquire(&data_dir)?;
    let identity = identity::load_or_create(&data_dir, cfg.device_id.as_ref())?;
    info!(
        device_id = %identity.device_id,
        public_key = %identity.key.public().to_base64(),
        data_dir = %data_dir.display(),
        "Agent starting"
    );
    let (open_cfg, c) = (cfg.clone(), clock.clone());
    let outbox: Arc<dyn Outbox> = tokio::task::spawn_blocking(move || open_cfg.open_outbox(c))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map(Arc::new)?;

    let socket_stop = CancellationToken::new();
    let socket_task = if cfg.raw.socket.enabled {
        let path = cfg.socket_path();
        let listener = socket::bind(&path).await?;
        info!(path = %path.display(), "Capture socket listening");
        let capture = Capture::new(outbox.clone(), clock.clone());
        Some((
            path,
            tokio::spawn(socket::serve(
                listener,
                capture,
                cfg.socket_limits(),
                socket_stop.clone(),
            )),
        ))
    } else {
        None
    };

    let rt = AgentRuntime {
        outbox,
        key: identity.key,
        device_id: identity.device_id,
        topics: cfg.topics(),
        mqtt: cfg.mqtt_settings(),
        uplink: cfg.uplink_settings(),
        cloud_key,
        clock,
        stats: UplinkStats::new(),
    };
    // Stop accepting capture requests as soon as shutdown starts, while the uplink
    // says goodbye to the broker.
    let stop_socket = {
        let (shutdown, socket_stop) = (shutdown.clone(), socket_stop.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            socket_stop.cancel();
        })
    };
    let result = run_uplink(rt, shutdown).await;
    socket_stop.cancel();
    stop_socket.abort();
    if let Some((path, task)) = socket_task {
        if let Err(e) = task.await {
            warn!(error = %e, "Capture socket task failed");
        }
        let _ = std::fs::remove_file(&path);
    }
    result?;
    info!("Agent stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// POSIX locks never conflict within one process, so the cross-process behaviour
    /// (a second `run` refused, `status` naming the pid) is tested in `tests/cli.rs`.
    #[test]
    fn the_lock_file_is_created_and_unheld_locks_are_not_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(holder(dir.path()), None);
        let lock = DaemonLock::acquire(dir.path()).unwrap();
        assert!(dir.path().join(LOCK_FILE).exists());
        drop(lock);
        assert_eq!(holder(dir.path()), None);
    }
}

//! A fixed pool of store readers: a few threads that each keep one read-only connection
//! open (with its page cache and prepared statements) and run the API's queries off the
//! async executor.
//!
//! Why not `spawn_blocking` with a connection per blocking thread: tokio's blocking pool
//! grows a thread whenever none is idle at the moment a task arrives, so under load it
//! reached about 150 threads, each with its own connection whose page cache was mostly
//! cold. The pool here has a fixed size (two connections per core, at most 16); a burst
//! of requests waits in its queue, first come first served, instead of oversubscribing
//! the cores and SQLite with threads.

use crate::store::StoreError;
use rusqlite::Connection;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&Connection) + Send>;

/// Why a read did not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The pool's threads have stopped.
    #[error("the store readers have stopped")]
    Stopped,
    /// The read panicked (the reader thread caught it and went on).
    #[error("the store read panicked")]
    Panicked,
}

/// A handle to the pool; clones share it. The threads stop when the last handle is
/// dropped and the queue is empty.
#[derive(Clone, Debug)]
pub struct ReaderPool {
    jobs: flume::Sender<Job>,
}

impl ReaderPool {
    /// Opens `size` (at least one) read connections to the store in `data_dir`, which must
    /// exist, and starts a thread for each.
    pub fn start(data_dir: &Path, size: usize) -> Result<Self, StoreError> {
        let (jobs, queue) = flume::unbounded::<Job>();
        for i in 0..size.max(1) {
            let conn = crate::store::open_reader(data_dir)?;
            conn.set_prepared_statement_cache_capacity(64);
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("store-reader-{i}"))
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        // A panic loses only its own answer (the caller sees `Panicked`).
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&conn)));
                    }
                })
                .map_err(StoreError::Thread)?;
        }
        Ok(Self { jobs })
    }

    /// The default size: two connections per core, at most 16.
    pub fn default_size() -> usize {
        std::thread::available_parallelism().map_or(2, |n| (n.get() * 2).min(16))
    }

    /// Runs `f` on one of the pool's connections once one is free, and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> T + Send + 'static,
    ) -> Result<T, ReadError> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                // A request given up while it queued (its client went away) is not run.
                if !done.is_closed() {
                    let _ = done.send(f(conn));
                }
            }))
            .map_err(|_| ReadError::Stopped)?;
        answer.await.map_err(|_| ReadError::Panicked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[tokio::test]
    async fn reads_run_on_the_pools_own_threads_and_a_panic_loses_only_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        drop(crate::store::open_writer(dir.path()).unwrap());
        let pool = ReaderPool::start(dir.path(), 2).unwrap();
        let mut names = HashSet::new();
        let reads: Vec<_> = (0..64)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    pool.run(|conn| {
                        let v: i64 = conn
                            .query_row("PRAGMA user_version", [], |r| r.get(0))
                            .unwrap();
                        (v, std::thread::current().name().unwrap().to_owned())
                    })
                    .await
                })
            })
            .collect();
        for r in reads {
            let (version, name) = r.await.unwrap().unwrap();
            assert_eq!(version, crate::store::SCHEMA_VERSION);
            names.insert(name);
        }
        assert!(names.is_subset(&HashSet::from([
            "store-reader-0".to_owned(),
            "store-reader-1".to_owned()
        ])));
        assert!(matches!(
            pool.run(|_| -> () { panic!("boom") }).await,
            Err(ReadError::Panicked)
        ));
        assert_eq!(pool.run(|_| 7).await.unwrap(), 7);
    }

    #[test]
    fn a_missing_store_is_reported_when_the_pool_starts() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ReaderPool::start(&dir.path().join("nothing here"), 2).is_err());
    }
}

//! SQLite helpers both sides need (feature `sqlite`).

use std::time::{Duration, Instant};

/// Puts the database in WAL mode and returns the mode SQLite reports, waiting up to
/// `budget` for other connections.
///
/// WAL is a property of the file, so the mode is read first: once a file is in WAL mode,
/// opening it takes no lock at all. Only a file not yet in WAL mode is converted, and that
/// is retried with backoff, because SQLite does not run the busy handler for the
/// journal-mode change. A second process opening the file while the first holds it (a
/// CLI command beside the running daemon) would otherwise fail at once with "database is
/// locked".
pub fn enable_wal(conn: &rusqlite::Connection, budget: Duration) -> rusqlite::Result<String> {
    let deadline = Instant::now() + budget;
    let mut pause = Duration::from_millis(5);
    let mut retry = |e: &rusqlite::Error| -> bool {
        let busy = matches!(
            e,
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        if busy && Instant::now() < deadline {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
            true
        } else {
            false
        }
    };
    loop {
        let mode = match conn.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0)) {
            Ok(m) => m,
            Err(e) if retry(&e) => continue,
            Err(e) => return Err(e),
        };
        if mode.eq_ignore_ascii_case("wal") {
            return Ok(mode);
        }
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
            Err(e) if retry(&e) => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_in_wal_mode_opens_while_another_connection_holds_the_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let first = rusqlite::Connection::open(&path).unwrap();
        assert_eq!(enable_wal(&first, Duration::from_secs(1)).unwrap(), "wal");
        first
            .execute_batch("CREATE TABLE t (x); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
            .unwrap();
        let second = rusqlite::Connection::open(&path).unwrap();
        assert_eq!(
            enable_wal(&second, Duration::from_millis(50)).unwrap(),
            "wal"
        );
        first.execute_batch("COMMIT").unwrap();
    }

    #[test]
    fn a_new_file_is_converted_once_the_other_connection_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.db");
        let first = rusqlite::Connection::open(&path).unwrap();
        first
            .execute_batch("CREATE TABLE t (x); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
            .unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            first.execute_batch("COMMIT").unwrap();
        });
        // No busy timeout on this connection (rusqlite sets 5 s by default): only
        // `enable_wal`'s own retries wait.
        let second = rusqlite::Connection::open(&path).unwrap();
        second.busy_timeout(Duration::ZERO).unwrap();
        assert_eq!(enable_wal(&second, Duration::from_secs(5)).unwrap(), "wal");
        releaser.join().unwrap();
        // Without the wait, the same situation fails at once.
        let third = rusqlite::Connection::open(dir.path().join("z.db")).unwrap();
        third
            .execute_batch("CREATE TABLE t (x); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
            .unwrap();
        let fourth = rusqlite::Connection::open(dir.path().join("z.db")).unwrap();
        fourth.busy_timeout(Duration::ZERO).unwrap();
        assert!(enable_wal(&fourth, Duration::ZERO).is_err());
    }
}

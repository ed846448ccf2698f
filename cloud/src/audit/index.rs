//! The audit log's index by member, in a file of its own ([`FILE`]), kept up to date
//! beside the log by the audit log's checkpointer thread.
//!
//! Why a file of its own: with the index inside the log's file, every lookup's commit
//! wrote a page at a random place of the index, the log's write-ahead file grew by
//! megabytes a second, and copying it into the database and restarting it stalled every
//! lookup waiting for the next commit for 35–65 ms every second or two (measured with
//! 100,000 members and 4.7 million audit rows). Now the log only appends, and a commit
//! writes the page or two at its end.
//!
//! Invariants:
//! - `member_rows` holds `(member_id, id)` for every row of the log that names a member
//!   and has `id <= upto` (table `progress`, with the `at_ms` of row `upto` as its
//!   fingerprint); both change in one transaction, and only from rows the log has
//!   committed and synced (the checkpointer indexes only rows it saw before its sync).
//! - [`super::list`] reads the index for ids up to `upto` and scans the log after it, in
//!   one statement (one snapshot of each file), and checks each row's member in the log
//!   itself, so an index that is behind, empty or missing costs speed, never rows, and a
//!   stale one can never show another member's rows. A query the index fails is run again
//!   as a scan.
//! - The log's ids only grow: rows are appended, never deleted. Rows moved in from an
//!   older version's store keep their old ids, so such a move (once, at the first start
//!   after an upgrade) first empties the index.
//! - At start the index is checked against the log ([`check`]): if row `upto` is missing
//!   or has another time (the log was restored from a backup, or lost its last rows to a
//!   power cut), the index is emptied and rebuilt.
//! - Nothing in it is the only copy of anything: deleting the file (server stopped)
//!   rebuilds it at the next start.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// The index's database file in the data directory.
pub const FILE: &str = "audit-index.db";

/// Most log rows one [`catch_up`] call reads.
pub const BATCH: usize = 20_000;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS member_rows (
        member_id TEXT NOT NULL,
        id INTEGER NOT NULL,
        PRIMARY KEY (member_id, id)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS progress (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        upto INTEGER NOT NULL,
        upto_at_ms INTEGER NOT NULL
    );
";

/// Opens (creating if need be) the index in `data_dir` for writing. It is rebuilt from
/// the log if lost, so its commits are not synced one by one (`synchronous = NORMAL`).
/// An index file with other tables than these is emptied and made anew.
pub fn open(data_dir: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(data_dir.join(FILE))?;
    // Only the checkpointer writes it; never wait long for anyone else.
    conn.busy_timeout(std::time::Duration::from_secs(1))?;
    rollcall_shared::sqlite::enable_wal(&conn, std::time::Duration::from_secs(1))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -32_000)?;
    // A rebuild commits large batches; cut the write-ahead file back after them.
    conn.pragma_update(None, "journal_size_limit", 16 << 20)?;
    conn.execute_batch(SCHEMA)?;
    if conn
        .prepare("SELECT upto, upto_at_ms FROM progress")
        .is_err()
    {
        conn.execute_batch(&format!(
            "DROP TABLE IF EXISTS member_rows; DROP TABLE IF EXISTS progress; {SCHEMA}"
        ))?;
    }
    Ok(conn)
}

/// The id of the last log row the index covers (0: none).
pub fn upto(index: &Connection) -> Result<i64, rusqlite::Error> {
    Ok(index
        .query_row("SELECT upto FROM progress", [], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Empties the index, so that it is rebuilt from the log.
pub fn reset(index: &mut Connection) -> Result<(), rusqlite::Error> {
    let tx = index.transaction()?;
    tx.execute("DELETE FROM member_rows", [])?;
    tx.execute("DELETE FROM progress", [])?;
    tx.commit()
}

/// Empties the index unless the log still has row `upto` with the time the index saw;
/// returns whether it did.
pub fn check(log: &Connection, index: &mut Connection) -> Result<bool, rusqlite::Error> {
    let Some((upto, at_ms)) = index
        .query_row("SELECT upto, upto_at_ms FROM progress", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()?
    else {
        return Ok(false);
    };
    let in_log: Option<i64> = log
        .query_row("SELECT at_ms FROM audit_log WHERE id = ?1", [upto], |r| {
            r.get(0)
        })
        .optional()?;
    if in_log == Some(at_ms) {
        return Ok(false);
    }
    tracing::warn!(
        upto,
        "The audit log's member index does not match the log (restored from a backup, or \
         rows lost to a power cut); rebuilding it"
    );
    reset(index)?;
    Ok(true)
}

/// Indexes the log's rows after [`upto`] and up to id `until`, at most `batch` of them,
/// and returns how many rows it read (0: nothing to do). `log` is a connection to the
/// audit log.
pub fn catch_up(
    log: &Connection,
    index: &mut Connection,
    until: i64,
    batch: usize,
) -> Result<usize, rusqlite::Error> {
    // Immediate: `upto` cannot move between reading it and writing it.
    let tx = index.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let from = upto(&tx)?;
    let rows = log
        .prepare_cached(
            "SELECT id, at_ms, member_id FROM audit_log WHERE id > ?1 AND id <= ?2
             ORDER BY id LIMIT ?3",
        )?
        .query_map(params![from, until, batch as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let Some(&(last, last_at_ms, _)) = rows.last() else {
        return Ok(0);
    };
    // In key order, each page of the index is written once per batch, not once per row.
    let mut keyed: Vec<(&str, i64)> = rows
        .iter()
        .filter_map(|(id, _, member)| Some((member.as_deref()?, *id)))
        .collect();
    keyed.sort_unstable();
    {
        let mut insert =
            tx.prepare_cached("INSERT OR IGNORE INTO member_rows (member_id, id) VALUES (?1, ?2)")?;
        for (member, id) in keyed {
            insert.execute(params![member, id])?;
        }
        tx.execute(
            "INSERT INTO progress (one, upto, upto_at_ms) VALUES (1, ?1, ?2)
             ON CONFLICT (one) DO UPDATE SET upto = excluded.upto, upto_at_ms = excluded.upto_at_ms",
            params![last, last_at_ms],
        )?;
    }
    tx.commit()?;
    Ok(rows.len())
}

/// Attaches the index in `data_dir` to `log` (a connection to the audit log) as `idx`, if
/// it exists and has its tables; returns whether it did.
pub fn attach(log: &Connection, data_dir: &Path) -> bool {
    let path = data_dir.join(FILE);
    if !path.exists() {
        return false;
    }
    let attached = log
        .execute(
            "ATTACH DATABASE ?1 AS idx",
            [path.to_string_lossy().as_ref()],
        )
        .and_then(|_| log.prepare("SELECT upto FROM idx.progress").map(drop));
    match attached {
        Ok(()) => true,
        Err(e) => {
            // The checkpointer warns about an index it cannot use; this runs per request.
            tracing::debug!(error = %e, file = %path.display(), "Not using the audit log's member index");
            let _ = log.execute("DETACH DATABASE idx", []);
            false
        }
    }
}

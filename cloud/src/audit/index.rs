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
//!   and has `id <= upto` (table `progress`); both change in one transaction, and only
//!   from rows the log has committed.
//! - The log's rows above `upto` are found by scanning its tail ([`super::list`] does), so
//!   an index that is behind, empty, missing or damaged costs speed, never rows.
//! - The log's ids only grow: rows are appended, never deleted. Rows moved in from an
//!   older version's store keep their old ids, so such a move (once, at the first start
//!   after an upgrade) sets `upto` back to 0 and the index is rebuilt.
//! - Nothing in it is the only copy of anything: deleting the file rebuilds it.

use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// The index's database file in the data directory.
pub const FILE: &str = "audit-index.db";

/// Most log rows one [`catch_up`] call reads.
pub const BATCH: usize = 50_000;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS member_rows (
        member_id TEXT NOT NULL,
        id INTEGER NOT NULL,
        PRIMARY KEY (member_id, id)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS progress (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        upto INTEGER NOT NULL
    );
";

/// Opens (creating if need be) the index in `data_dir` for writing. It is rebuilt from
/// the log if lost, so its commits are not synced one by one (`synchronous = NORMAL`).
pub fn open(data_dir: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(data_dir.join(FILE))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -32_000)?;
    // A rebuild commits large batches; cut the write-ahead file back after them.
    conn.pragma_update(None, "journal_size_limit", 16 << 20)?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// The id of the last log row the index covers (0: none).
pub fn upto(index: &Connection) -> Result<i64, rusqlite::Error> {
    Ok(index
        .query_row("SELECT upto FROM progress", [], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Makes the index cover no row, so that it is rebuilt from the log.
pub fn reset(index: &Connection) -> Result<(), rusqlite::Error> {
    index.execute("DELETE FROM progress", [])?;
    Ok(())
}

/// Indexes the log's rows after [`upto`], at most `batch` of them, and returns how many
/// rows it read (0: the index was up to date). `log` is a connection to the audit log.
pub fn catch_up(
    log: &Connection,
    index: &mut Connection,
    batch: usize,
) -> Result<usize, rusqlite::Error> {
    let from = upto(index)?;
    let rows = log
        .prepare_cached("SELECT id, member_id FROM audit_log WHERE id > ?1 ORDER BY id LIMIT ?2")?
        .query_map(params![from, batch as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let Some(&(last, _)) = rows.last() else {
        return Ok(0);
    };
    // In key order, each page of the index is written once per batch, not once per row.
    let mut keyed: Vec<(&str, i64)> = rows
        .iter()
        .filter_map(|(id, member)| Some((member.as_deref()?, *id)))
        .collect();
    keyed.sort_unstable();
    let tx = index.transaction()?;
    {
        let mut insert =
            tx.prepare_cached("INSERT OR IGNORE INTO member_rows (member_id, id) VALUES (?1, ?2)")?;
        for (member, id) in keyed {
            insert.execute(params![member, id])?;
        }
        tx.execute(
            "INSERT INTO progress (one, upto) VALUES (1, ?1)
             ON CONFLICT (one) DO UPDATE SET upto = excluded.upto",
            [last],
        )?;
    }
    tx.commit()?;
    Ok(rows.len())
}

/// Attaches the index in `data_dir` to `log` (a connection to the audit log) as `idx`, if
/// it exists and can be read; returns whether it did.
pub fn attach(log: &Connection, data_dir: &Path) -> bool {
    let path = data_dir.join(FILE);
    if !path.exists() {
        return false;
    }
    match log
        .execute(
            "ATTACH DATABASE ?1 AS idx",
            [path.to_string_lossy().as_ref()],
        )
        .and_then(|_| upto_attached(log))
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, file = %path.display(), "The audit log's member index cannot be read; member queries scan the log");
            let _ = log.execute("DETACH DATABASE idx", []);
            false
        }
    }
}

/// [`upto`] of the index attached as `idx`.
pub(super) fn upto_attached(log: &Connection) -> Result<i64, rusqlite::Error> {
    Ok(log
        .query_row("SELECT upto FROM idx.progress", [], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

//! The audit log of member lookups: who (which token), when, which member and why
//! (`search`, `call`, `view`, `greeting`, `export`, `erase`).
//!
//! Invariants:
//! - `audit_log` is append-only; rows are never updated or deleted (an erasure keeps the
//!   rows, whose member id no longer leads to a person).
//! - A lookup is answered only after its audit row is committed: handlers call
//!   [`AuditLog::record`], which resolves once the row is committed as [`Durability`]
//!   says (by default: on disk). Rows from concurrent requests are committed together
//!   (group commit), so auditing costs one fsync per batch, not one per request.
//! - The log lives in its own database file, [`FILE`] in the data directory, not in the
//!   store: its commits come with every lookup, and a commit to the store would empty the
//!   page cache of every store reader (SQLite drops a connection's cache whenever another
//!   connection has written to its file).
//! - The log's file holds no index besides its ids, so a commit only appends; the index
//!   by member is a file of its own, kept up to date by the checkpointer thread (see
//!   [`index`] for why and how a member's rows are never missed).
//! - Rows that versions before store migration 7 kept in the store are moved into it by
//!   [`open`] (the migration renamed their table `legacy_audit_log`, so those versions
//!   refuse the store from then on and cannot add rows behind the move). The copy keeps
//!   ids and skips rows already copied, and is committed before the store's rows are
//!   deleted: the two files commit separately, so a crash between the commits leaves the
//!   rows in both, and the next start deletes them without copying them again.
//! - The write-ahead file stays bounded: a checkpointer thread copies it into the
//!   database every [`CHECKPOINT_EVERY`] and syncs it, so with `audit_sync = "normal"`
//!   rows reach the disk within about a second too. Once it is longer than
//!   [`RESTART_FRAMES`], the checkpointer asks the writer to restart it between two
//!   commits: a writer that commits without pause starves any other connection that
//!   waits for it, so only the writer itself can restart the file for certain.

pub mod index;

use crate::tokens::Principal;
use chrono::{DateTime, Utc};
use prometheus_client::metrics::histogram::Histogram;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};

/// The audit log's database file in the data directory.
pub const FILE: &str = "audit.db";

/// When a lookup's audit row counts as written, and so when the lookup is answered
/// (`[http] audit_sync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// On disk: each group commit waits for its `fsync` (SQLite `synchronous = FULL`).
    /// Nothing answered is lost, even to a power cut.
    #[default]
    Full,
    /// In the log file but not yet synced (`synchronous = NORMAL`): safe against the
    /// server being killed, and synced by the checkpointer within about a second, so a
    /// power cut or kernel crash can lose the rows of the last second. Lookups no longer
    /// wait for the disk at each commit, only while the writer restarts its write-ahead
    /// file (under steady load about once a second: the last frames must be in the
    /// database, synced, before the file is written over).
    Normal,
}

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS audit_log (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        token_id INTEGER,
        actor TEXT NOT NULL,
        role TEXT NOT NULL,
        action TEXT NOT NULL,
        member_id TEXT,
        detail TEXT NOT NULL
    );
    -- Versions before the member index got a file of its own kept it here.
    DROP INDEX IF EXISTS audit_log_member;
";

/// Opens the audit log in `data_dir` for writing, creating it (and the store, if need be),
/// and moves into it the rows that older versions kept in the store.
pub fn open(data_dir: &Path) -> Result<Connection, crate::store::StoreError> {
    // The store must exist and be migrated before its legacy table can be read.
    drop(crate::store::open_writer(data_dir)?);
    let mut conn = open_file(data_dir)?;
    conn.execute_batch(SCHEMA)?;
    let store = data_dir.join(crate::store::FILE);
    // The moved rows keep their old ids, which the member index may have passed.
    move_legacy_rows(&mut conn, &store, || forget_index(data_dir)).map_err(|source| {
        crate::store::StoreError::AuditMove {
            from: store.display().to_string(),
            to: data_dir.join(FILE).display().to_string(),
            source,
        }
    })?;
    Ok(conn)
}

/// Empties the member index in `data_dir`, or deletes its files if it cannot be opened.
fn forget_index(data_dir: &Path) -> Result<(), rusqlite::Error> {
    let Err(e) = index::open(data_dir).and_then(|mut idx| index::reset(&mut idx)) else {
        return Ok(());
    };
    tracing::warn!(error = %e, "Cannot empty the audit log's member index; deleting it");
    for suffix in ["", "-wal", "-shm"] {
        match std::fs::remove_file(data_dir.join(format!("{}{suffix}", index::FILE))) {
            Ok(()) => {}
            Err(gone) if gone.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => return Err(e),
        }
    }
    Ok(())
}

/// A writing connection to the audit log's file, with the store's pragmas.
fn open_file(data_dir: &Path) -> Result<Connection, crate::store::StoreError> {
    let conn = Connection::open(data_dir.join(FILE))?;
    crate::store::configure(&conn)?;
    Ok(conn)
}

/// Moves the rows of the store's `legacy_audit_log` table into the audit log, keeping
/// their ids, after calling `before_copy` (only if there are rows). A row already copied
/// (same id, same content) is not copied again; a different row under the same id fails
/// the move, losing neither row.
fn move_legacy_rows(
    conn: &mut Connection,
    store: &Path,
    before_copy: impl FnOnce() -> Result<(), rusqlite::Error>,
) -> Result<usize, rusqlite::Error> {
    conn.execute(
        "ATTACH DATABASE ?1 AS store",
        [store.to_string_lossy().as_ref()],
    )?;
    let moved = (|| -> Result<usize, rusqlite::Error> {
        let any: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM store.legacy_audit_log)",
            [],
            |r| r.get(0),
        )?;
        if !any {
            return Ok(0);
        }
        before_copy()?;
        // The copy commits first (in the audit log's file), then the delete (in the
        // store's): WAL databases commit one by one.
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO main.audit_log (id, at_ms, token_id, actor, role, action, member_id, detail)
             SELECT s.id, s.at_ms, s.token_id, s.actor, s.role, s.action, s.member_id, s.detail
             FROM store.legacy_audit_log s
             WHERE NOT EXISTS (
                 SELECT 1 FROM main.audit_log a
                 WHERE a.id = s.id AND a.at_ms = s.at_ms AND a.token_id IS s.token_id
                   AND a.actor = s.actor AND a.role = s.role AND a.action = s.action
                   AND a.member_id IS s.member_id AND a.detail = s.detail)
             ORDER BY s.id",
            [],
        )?;
        tx.commit()?;
        conn.execute("DELETE FROM store.legacy_audit_log", [])
    })();
    let detached = conn.execute("DETACH DATABASE store", []);
    let n = moved?;
    detached?;
    if n > 0 {
        tracing::info!(rows = n, "Moved the audit log out of the store into {FILE}");
    }
    Ok(n)
}

/// Opens the audit log in `data_dir` for reading (it must exist: [`open`] creates it),
/// with its member index attached when there is one that can be read.
pub fn open_reader(data_dir: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        data_dir.join(FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    index::attach(&conn, data_dir);
    Ok(conn)
}

/// Why a member's data was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A search by phone, e-mail, device or name.
    Search,
    /// An incoming call matched the member's phone number.
    Call,
    /// The member's record was opened.
    View,
    /// The member's greeting was built.
    Greeting,
    /// A data access request: everything held about the member.
    Export,
    /// The member's personal data was erased.
    Erase,
    /// A list of members with names, or of callers' numbers, was read (no member id; the
    /// detail says which list and how many rows).
    List,
}

impl Action {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Search => "search",
            Action::Call => "call",
            Action::View => "view",
            Action::Greeting => "greeting",
            Action::Export => "export",
            Action::Erase => "erase",
            Action::List => "list",
        }
    }
}

/// One audit row to write.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When.
    pub at: DateTime<Utc>,
    /// Token id (`None` for the telephony webhook, which signs instead).
    pub token_id: Option<i64>,
    /// The token's name, or `telephony`.
    pub actor: String,
    /// The role it acted in.
    pub role: String,
    /// Why.
    pub action: Action,
    /// Which member (`None`: a search that matched nobody).
    pub member_id: Option<String>,
    /// What was asked (the search terms, the call sid).
    pub detail: String,
}

impl Entry {
    /// An entry for `principal` acting on `member_id`.
    pub fn by(
        principal: &Principal,
        at: DateTime<Utc>,
        action: Action,
        member_id: Option<&str>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            at,
            token_id: Some(principal.token_id),
            actor: principal.name.clone(),
            role: principal.role.as_str().to_owned(),
            action,
            member_id: member_id.map(str::to_owned),
            detail: detail.into(),
        }
    }
}

/// Why an audit row could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The store refused the write.
    #[error("audit log: {0}")]
    Store(String),
    /// The audit writer has stopped (the server is shutting down).
    #[error("audit log writer is not running")]
    Stopped,
}

/// What the writer thread is asked to do.
#[derive(Debug)]
enum Op {
    /// Append these rows.
    Write(Vec<Entry>),
    /// Redact what an erased member's rows tell about the member ([`AuditLog::redact_member`]).
    Redact(ErasureRows),
}

type Request = (Op, oneshot::Sender<Result<u64, String>>);

/// What an erased member's search and call rows say instead of their terms.
pub const REDACTED: &str = "redacted: member erased";

/// A handle to the audit writer thread.
#[derive(Clone, Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<Request>,
}

/// Most entries committed in one transaction.
const MAX_BATCH: usize = 1024;

impl AuditLog {
    /// Starts the writer thread on the audit log in `data_dir` (see [`open`]), committing
    /// with `sync` and observing how long each commit keeps it busy in `commit_seconds`.
    /// It stops when every handle is dropped.
    pub fn start(
        data_dir: &Path,
        sync: Durability,
        commit_seconds: Histogram,
    ) -> Result<Self, crate::store::StoreError> {
        let writer = Writer::new(open_writer(data_dir, sync)?);
        let restart = writer.restart.clone();
        let checkpointer = open_file(data_dir)?;
        // Its passive checkpoints never wait for a lock; this bounds only the reads of the
        // schema that preparing one may need.
        checkpointer.busy_timeout(std::time::Duration::from_millis(100))?;
        let member_index = MemberIndex::open(data_dir, &checkpointer);
        let (tx, rx) = mpsc::channel::<Request>(4096);
        let (running, stopped) = std::sync::mpsc::channel::<()>();
        let dir: PathBuf = data_dir.to_owned();
        let spawn_error = crate::store::StoreError::Thread;
        let wal = data_dir.join(format!("{FILE}-wal"));
        std::thread::Builder::new()
            .name("audit-checkpoint".into())
            .spawn(move || checkpoint(checkpointer, member_index, &wal, &restart, stopped))
            .map_err(spawn_error)?;
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                write_requests(writer, rx, dir, commit_seconds);
                drop(running);
            })
            .map_err(spawn_error)?;
        Ok(Self { tx })
    }

    /// Writes `entries` and returns once they are committed.
    pub async fn record(&self, entries: Vec<Entry>) -> Result<(), AuditError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.ask(Op::Write(entries)).await.map(|_| ())
    }

    /// Replaces by [`REDACTED`] the details that tell about an erased member (the phone
    /// numbers, e-mail addresses and names searched for, the caller's number), keeping who
    /// looked, when and why; returns how many rows changed. `rows` come from
    /// [`erasure_rows`]. The rows keep the old member id, which then leads to no one; rows
    /// for that id written later (a lookup that found the member just before the erasure)
    /// are written redacted.
    pub async fn redact_member(&self, rows: ErasureRows) -> Result<u64, AuditError> {
        self.ask(Op::Redact(rows)).await
    }

    async fn ask(&self, op: Op) -> Result<u64, AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((op, done))
            .await
            .map_err(|_| AuditError::Stopped)?;
        wait.await
            .map_err(|_| AuditError::Stopped)?
            .map_err(AuditError::Store)
    }
}

fn write_requests(
    mut writer: Writer,
    mut rx: mpsc::Receiver<Request>,
    dir: PathBuf,
    commit_seconds: Histogram,
) {
    let mut next = None;
    while let Some(first) = next.take().or_else(|| rx.blocking_recv()) {
        let started = std::time::Instant::now();
        match first {
            (Op::Redact(rows), done) => {
                let result = redact(&mut writer.conn, &rows).map_err(|e| e.to_string());
                match &result {
                    Ok(_) => {
                        writer.erased.insert(rows.member);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, data_dir = %dir.display(), "Failed to redact the audit log");
                    }
                }
                let _ = done.send(result);
            }
            (Op::Write(entries), done) => {
                let mut n = entries.len();
                let mut batch = vec![(entries, done)];
                while n < MAX_BATCH {
                    match rx.try_recv() {
                        Ok((Op::Write(e), d)) => {
                            n += e.len();
                            batch.push((e, d));
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let result = write(
                    &mut writer.conn,
                    &writer.erased,
                    batch.iter().flat_map(|(e, _)| e.iter()),
                )
                .map(|()| n as u64)
                .map_err(|e| e.to_string());
                if let Err(e) = &result {
                    tracing::error!(error = %e, data_dir = %dir.display(), "Failed to write the audit log");
                }
                for (entries, done) in batch {
                    let _ = done.send(result.clone().map(|_| entries.len() as u64));
                }
            }
        }
        if let Err(e) = writer.restart_if_asked() {
            tracing::warn!(error = %e, "Failed to restart the audit log's write-ahead file");
        }
        commit_seconds.observe(started.elapsed().as_secs_f64());
    }
}

/// The audit rows that tell about a member being erased ([`erasure_rows`]).
#[derive(Debug, Clone, Default)]
pub struct ErasureRows {
    /// The member's (old) id.
    pub member: String,
    /// The member's rows, through the member index; rows after the last of them are found
    /// by a scan of the log's tail when redacting.
    pub member_rows: Vec<i64>,
    /// Searches for the member's phone number or e-mail address that name another member
    /// or none.
    pub term_rows: Vec<i64>,
}

/// Finds the rows that tell about `member`: the member's own, and searches for one of
/// `terms` (as [`crate::lookup::Query::describe`] writes them, e.g. `phone=+12125550142`)
/// that found someone else or no one (a scan of the whole log, on this reader connection,
/// [`open_reader`]).
pub fn erasure_rows(
    conn: &Connection,
    member: &str,
    terms: &[String],
) -> Result<ErasureRows, rusqlite::Error> {
    let member_rows = member_rows(conn, member, None, "id", |r| r.get(0))?;
    let mut term_rows = Vec::new();
    let mut st = conn.prepare(
        "SELECT id FROM audit_log WHERE action = 'search' AND instr(detail, ?1) > 0
           AND member_id IS NOT ?2",
    )?;
    for t in terms {
        for id in st.query_map(params![t, member], |r| r.get(0))? {
            term_rows.push(id?);
        }
    }
    Ok(ErasureRows {
        member: member.to_owned(),
        member_rows,
        term_rows,
    })
}

/// Redacts the rows of `rows`: the member's search and call rows (those listed and every
/// one after the last of them), the other rows each of the member's searches wrote (one
/// per member found, with the same detail, written together), and the searches for the
/// member's terms.
fn redact(conn: &mut Connection, rows: &ErasureRows) -> Result<u64, rusqlite::Error> {
    const OWN: &str = "member_id = ?1 AND action IN ('search', 'call') AND detail != ?2";
    let member = rows.member.as_str();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut n = 0;
    {
        // The member's searches, before their details change: (id, at, token, detail).
        type Search = (i64, i64, Option<i64>, String);
        let after = rows.member_rows.iter().copied().max().unwrap_or(0);
        let mut searches: Vec<Search> = Vec::new();
        let mut listed = tx.prepare(
            "SELECT id, at_ms, token_id, detail FROM audit_log
             WHERE id = ?3 AND member_id = ?1 AND action = 'search' AND detail != ?2",
        )?;
        let row = |r: &rusqlite::Row| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?));
        for id in &rows.member_rows {
            searches.extend(
                listed
                    .query_row(params![member, REDACTED, id], row)
                    .optional()?,
            );
        }
        let mut tail = tx.prepare(
            "SELECT id, at_ms, token_id, detail FROM audit_log
             WHERE id > ?3 AND member_id = ?1 AND action = 'search' AND detail != ?2",
        )?;
        for s in tail.query_map(params![member, REDACTED, after], row)? {
            searches.push(s?);
        }
        let mut one = tx.prepare(&format!(
            "UPDATE audit_log SET detail = ?2 WHERE id = ?3 AND {OWN}"
        ))?;
        for id in &rows.member_rows {
            n += one.execute(params![member, REDACTED, id])?;
        }
        n += tx.execute(
            &format!("UPDATE audit_log SET detail = ?2 WHERE id > ?3 AND {OWN}"),
            params![member, REDACTED, after],
        )?;
        // One search writes a row per member found, one after another.
        let window = i64::from(crate::lookup::MAX_HITS);
        let mut siblings = tx.prepare(
            "UPDATE audit_log SET detail = ?1 WHERE id BETWEEN ?2 AND ?3 AND action = 'search'
               AND at_ms = ?4 AND token_id IS ?5 AND detail = ?6",
        )?;
        for (id, at, token, detail) in &searches {
            n += siblings.execute(params![
                REDACTED,
                id - window,
                id + window,
                at,
                token,
                detail
            ])?;
        }
        let mut term = tx.prepare(
            "UPDATE audit_log SET detail = ?1 WHERE id = ?2 AND action = 'search' AND detail != ?1",
        )?;
        for id in &rows.term_rows {
            n += term.execute(params![REDACTED, id])?;
        }
    }
    tx.commit()?;
    Ok(n as u64)
}

/// Longest the writer waits for readers of the log when it restarts the write-ahead file.
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// The audit writer's connection and the checkpointer's request to restart the
/// write-ahead file.
struct Writer {
    conn: Connection,
    /// Set by the checkpointer when the write-ahead file is longer than
    /// [`RESTART_FRAMES`]; taken by the writer between two commits.
    restart: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Members whose rows were redacted since the writer started (their later search and
    /// call rows are written redacted).
    erased: std::collections::HashSet<String>,
}

impl Writer {
    fn new(conn: Connection) -> Self {
        Self {
            conn,
            restart: Default::default(),
            erased: Default::default(),
        }
    }

    /// Restarts the write-ahead file if the checkpointer asked for it: `None` if it did
    /// not, else whether a reader (or the checkpointer's own round) kept the restart from
    /// finishing. Called between commits, when this connection holds no transaction and
    /// no other connection writes, so the checkpoint waits only for readers of the log
    /// (rare), and copies only what the last passive round left (little).
    fn restart_if_asked(&self) -> Result<Option<bool>, rusqlite::Error> {
        if !self
            .restart
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return Ok(None);
        }
        // Lookups wait for this thread's next commit: wait for readers only briefly, and
        // leave the restart to a later round if one holds on.
        let usual: i64 = self
            .conn
            .query_row("PRAGMA busy_timeout", [], |r| r.get(0))?;
        self.conn.busy_timeout(RESTART_WAIT)?;
        let busy = self
            .conn
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0));
        self.conn
            .busy_timeout(std::time::Duration::from_millis(usual.max(0) as u64))?;
        let busy = busy? != 0;
        if busy {
            // The checkpointer will ask again.
            tracing::debug!("The audit log's write-ahead file restart waited for a reader");
        }
        Ok(Some(busy))
    }
}

/// The audit writer's connection: the audit log ([`open`]), committing with `sync`, and
/// never checkpointing by itself (a checkpoint copies the log into the database file and
/// syncs it, and every lookup waiting for the next commit would wait for that too; the
/// checkpointer thread does it beside the writer instead, and the writer only finishes
/// the job when asked to restart the file, see [`Writer::restart_if_asked`]).
fn open_writer(data_dir: &Path, sync: Durability) -> Result<Connection, crate::store::StoreError> {
    let conn = open(data_dir)?;
    if sync == Durability::Normal {
        conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // When the write-ahead file restarts, it is cut back to this size.
    conn.pragma_update(None, "journal_size_limit", 16 << 20)?;
    Ok(conn)
}

/// How often the checkpointer copies the audit log's write-ahead file into its database.
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Frames (pages) in the write-ahead file above which the checkpointer restarts it.
pub const RESTART_FRAMES: i64 = 4096;

/// Longest one round of the checkpointer spends on the member index (a rebuild of a long
/// log takes several rounds).
const INDEX_ROUND: std::time::Duration = std::time::Duration::from_millis(500);

/// How long the checkpointer waits before it tries again to open a member index it could
/// not open or update (member queries scan the log meanwhile).
const INDEX_RETRY: std::time::Duration = if cfg!(test) {
    std::time::Duration::from_millis(200)
} else {
    std::time::Duration::from_secs(30)
};

/// The checkpointer's connection to the member index, opened again after a failure.
struct MemberIndex {
    data_dir: PathBuf,
    conn: Option<Connection>,
    /// When to try to open it again; `None` while it is open.
    retry_at: Option<std::time::Instant>,
}

impl MemberIndex {
    /// Opens and checks the index in `data_dir` against the `log`; on failure warns and
    /// leaves it to [`Self::get`] to try again.
    fn open(data_dir: &Path, log: &Connection) -> Self {
        let mut slot = Self {
            data_dir: data_dir.to_owned(),
            conn: None,
            retry_at: None,
        };
        if let Err(e) = slot.connect(log) {
            tracing::warn!(error = %e, retry_in_s = INDEX_RETRY.as_secs(), "Cannot open the audit log's member index; member queries scan the log until it opens");
        }
        slot
    }

    fn connect(&mut self, log: &Connection) -> Result<(), rusqlite::Error> {
        let opened = index::open(&self.data_dir)
            .and_then(|mut idx| index::check(log, &mut idx).map(|_| idx));
        match opened {
            Ok(idx) => {
                self.conn = Some(idx);
                self.retry_at = None;
                Ok(())
            }
            Err(e) => {
                self.retry_at = Some(std::time::Instant::now() + INDEX_RETRY);
                Err(e)
            }
        }
    }

    /// The open index; tries to open it again once its retry time has come.
    fn get(&mut self, log: &Connection) -> Option<&mut Connection> {
        if self.conn.is_none() && self.retry_at.is_none_or(|t| std::time::Instant::now() >= t) {
            match self.connect(log) {
                Ok(()) => tracing::info!("The audit log's member index is open again"),
                Err(e) => {
                    tracing::debug!(error = %e, "The audit log's member index still cannot be opened")
                }
            }
        }
        self.conn.as_mut()
    }

    /// Closes the index after a failed update, to open it afresh after [`INDEX_RETRY`].
    fn failed(&mut self) {
        self.conn = None;
        self.retry_at = Some(std::time::Instant::now() + INDEX_RETRY);
    }
}

/// Every [`CHECKPOINT_EVERY`] until the writer stops, then once more: checkpoints the
/// audit log and brings the member index up to date with the rows synced by that
/// checkpoint (within [`INDEX_ROUND`]).
fn checkpoint(
    conn: Connection,
    mut member_index: MemberIndex,
    wal: &Path,
    restart: &std::sync::atomic::AtomicBool,
    writer_stopped: std::sync::mpsc::Receiver<()>,
) {
    loop {
        let last = !matches!(
            writer_stopped.recv_timeout(CHECKPOINT_EVERY),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        // The rows committed before this round's sync; only those are indexed, so that the
        // index never covers rows a power cut could still take from the log.
        let synced: Result<i64, _> =
            conn.query_row("SELECT coalesce(max(id), 0) FROM audit_log", [], |r| {
                r.get(0)
            });
        let synced = match checkpoint_once(&conn, wal, restart) {
            // SQLite reports -1 frames when another checkpoint (the writer's restart) held
            // the checkpoint lock.
            Ok(Checkpoint { busy: true, frames }) if frames < 0 => {
                tracing::debug!("The audit log's checkpoint met the writer's restart");
                synced
            }
            Ok(Checkpoint { busy: true, frames }) => {
                tracing::debug!(frames, "The audit log's checkpoint waited for a reader");
                synced
            }
            Ok(_) => synced,
            Err(e) => {
                tracing::warn!(error = %e, "Failed to checkpoint the audit log");
                Ok(0)
            }
        };
        if let Ok(until) = synced {
            let mut failed = false;
            if let Some(idx) = member_index.get(&conn) {
                let started = std::time::Instant::now();
                loop {
                    match index::catch_up(&conn, idx, until, index::BATCH) {
                        Ok(n) if n == index::BATCH && started.elapsed() < INDEX_ROUND => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in_s = INDEX_RETRY.as_secs(), "Failed to update the audit log's member index; opening it again later");
                            failed = true;
                            break;
                        }
                    }
                }
            }
            if failed {
                member_index.failed();
            }
        }
        if last {
            return;
        }
    }
}

/// What one checkpoint found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checkpoint {
    /// A reader or the writer kept it from copying every frame.
    busy: bool,
    /// Frames in the write-ahead file when it ran.
    frames: i64,
}

/// One round of the checkpointer:
/// 1. a passive checkpoint copies what it can without waiting for the writer;
/// 2. if the write-ahead file has grown past [`RESTART_FRAMES`] (it only starts again
///    from the beginning once a checkpoint has copied all of it, which a busy writer
///    never lets a passive one do), it asks the writer to restart it after its next
///    commit (see [`Writer::restart_if_asked`]). Waiting for the writer here instead
///    would not do: SQLite's busy handler polls, and a writer that begins its next
///    transaction microseconds after the last one wins every race;
/// 3. the write-ahead file is synced, so that rows committed without a sync
///    (`audit_sync = "normal"`) are on disk even when no frame could be copied.
fn checkpoint_once(
    conn: &Connection,
    wal: &Path,
    restart: &std::sync::atomic::AtomicBool,
) -> Result<Checkpoint, std::io::Error> {
    let done = conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok(Checkpoint {
                busy: r.get::<_, i64>(0)? != 0,
                frames: r.get(1)?,
            })
        })
        .map_err(std::io::Error::other)?;
    if done.frames > RESTART_FRAMES {
        restart.store(true, std::sync::atomic::Ordering::Release);
    }
    match std::fs::File::open(wal) {
        Ok(f) => f.sync_data()?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(done)
}

/// Appends `entries` in one transaction; a search or call row for a member in `erased`
/// (a lookup that found the member just before the erasure) is written redacted.
fn write<'a>(
    conn: &mut Connection,
    erased: &std::collections::HashSet<String>,
    entries: impl Iterator<Item = &'a Entry>,
) -> Result<(), rusqlite::Error> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO audit_log (at_ms, token_id, actor, role, action, member_id, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for e in entries {
            let redacted = matches!(e.action, Action::Search | Action::Call)
                && e.member_id.as_ref().is_some_and(|m| erased.contains(m));
            st.execute(params![
                e.at.timestamp_millis(),
                e.token_id,
                e.actor,
                e.role,
                e.action.as_str(),
                e.member_id,
                if redacted {
                    REDACTED
                } else {
                    e.detail.as_str()
                },
            ])?;
        }
    }
    tx.commit()
}

/// A row of the audit log, as the member export and `audit list` show it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditView {
    /// When (RFC 3339).
    pub at: String,
    /// Token name, or `telephony`.
    pub actor: String,
    /// Role.
    pub role: String,
    /// Why.
    pub action: String,
    /// Member id.
    pub member_id: Option<String>,
    /// What was asked.
    pub detail: String,
}

/// The audit rows, newest first; optionally one member's. `conn` is a connection to the
/// audit log ([`open_reader`]); a member's rows come from the member index where it has
/// them and from a scan of the log's tail after it (the whole log without an index).
pub fn list(
    conn: &Connection,
    member_id: Option<&str>,
    limit: u32,
) -> Result<Vec<AuditView>, rusqlite::Error> {
    const COLUMNS: &str = "id, at_ms, actor, role, action, member_id, detail";
    let view = |r: &rusqlite::Row| {
        Ok(AuditView {
            at: crate::registry::ms_to_rfc3339(r.get(1)?),
            actor: r.get(2)?,
            role: r.get(3)?,
            action: r.get(4)?,
            member_id: r.get(5)?,
            detail: r.get(6)?,
        })
    };
    let Some(member) = member_id else {
        return conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM audit_log ORDER BY id DESC LIMIT CAST(?1 AS INTEGER)"
            ))?
            .query_map([limit], view)?
            .collect();
    };
    member_rows(conn, member, Some(limit), COLUMNS, view)
}

/// `columns` of `member`'s rows, newest first, at most `limit` (all if `None`), read
/// through the member index where it has them (see [`list`]).
fn member_rows<T>(
    conn: &Connection,
    member: &str,
    limit: Option<u32>,
    columns: &str,
    row: impl Fn(&rusqlite::Row) -> Result<T, rusqlite::Error>,
) -> Result<Vec<T>, rusqlite::Error> {
    // SQLite reads a negative limit as none.
    let limit = limit.map_or(-1, i64::from);
    let scan = || {
        conn.prepare_cached(&format!(
            "SELECT {columns} FROM audit_log WHERE member_id = ?1
             ORDER BY id DESC LIMIT ?2"
        ))?
        .query_map(params![member, limit], &row)?
        .collect()
    };
    let indexed: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_database_list WHERE name = 'idx')",
        [],
        |r| r.get(0),
    )?;
    if !indexed {
        return scan();
    }
    // One statement, so one snapshot of each file: the index for the ids up to its `upto`,
    // the log's tail after it, no id from both; each row's member checked in the log.
    let through_index = conn
        .prepare_cached(&format!(
            "WITH u(upto) AS (SELECT coalesce((SELECT upto FROM idx.progress), 0))
             SELECT {columns} FROM audit_log
             WHERE member_id = ?1 AND id IN (
                 SELECT id FROM idx.member_rows
                 WHERE member_id = ?1 AND id <= (SELECT upto FROM u))
             UNION ALL
             SELECT {columns} FROM audit_log
             WHERE member_id = ?1 AND id > (SELECT upto FROM u)
             ORDER BY id DESC LIMIT ?2"
        ))
        .and_then(|mut st| {
            st.query_map(params![member, limit], &row)?
                .collect::<Result<Vec<_>, _>>()
        });
    through_index.or_else(|e| {
        tracing::warn!(error = %e, "The audit log's member index failed a query; scanning the log");
        scan()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::Role;

    fn test_histogram() -> Histogram {
        Histogram::new([0.001, 0.01, 0.1])
    }

    #[tokio::test]
    async fn concurrent_lookups_are_all_committed_before_they_return() {
        let dir = tempfile::tempdir().unwrap();
        let commits = test_histogram();
        let log = AuditLog::start(dir.path(), Durability::Full, commits.clone()).unwrap();
        let p = Principal {
            token_id: 7,
            name: "desk".into(),
            role: Role::Support,
        };
        let mut tasks = Vec::new();
        for i in 0..50 {
            let log = log.clone();
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                log.record(vec![Entry::by(
                    &p,
                    Utc::now(),
                    Action::Search,
                    Some(&format!("m{i}")),
                    "phone=+12125550100",
                )])
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let conn = open_reader(dir.path()).unwrap();
        let rows = list(&conn, None, 1000).unwrap();
        assert_eq!(rows.len(), 50);
        assert!(rows
            .iter()
            .all(|r| r.actor == "desk" && r.role == "support" && r.action == "search"));
        assert_eq!(list(&conn, Some("m3"), 10).unwrap().len(), 1);
        // Every group commit is timed (50 rows in at least one, at most 50 commits).
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("audit_commit_seconds", "", commits);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let count: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("audit_commit_seconds_count "))
            .unwrap_or_else(|| panic!("{text}"))
            .parse()
            .unwrap();
        assert!((1..=50).contains(&count), "{count} commits timed");
    }

    fn legacy_row(conn: &Connection, id: i64, detail: &str) {
        row_in(conn, "legacy_audit_log", id, detail);
    }

    fn row_in(conn: &Connection, table: &str, id: i64, detail: &str) {
        conn.execute(
            &format!(
                "INSERT INTO {table} (id, at_ms, token_id, actor, role, action, member_id, detail)
                 VALUES (?1, 1700000000000, 3, 'desk', 'support', 'search', 'm1', ?2)"
            ),
            params![id, detail],
        )
        .unwrap();
    }

    fn store_rows(dir: &Path) -> i64 {
        crate::store::open_reader(dir)
            .unwrap()
            .query_row("SELECT count(*) FROM legacy_audit_log", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn rows_an_older_version_kept_in_the_store_move_to_the_audit_log_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open_writer(dir.path()).unwrap();
        legacy_row(&store, 1, "phone=+12125550100");
        legacy_row(&store, 2, "q=maria");
        let conn = open(dir.path()).unwrap();
        let rows = list(&conn, None, 10).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.detail.as_str()).collect::<Vec<_>>(),
            ["q=maria", "phone=+12125550100"]
        );
        assert_eq!(store_rows(dir.path()), 0);
        drop(conn);
        // A crash between the copy's commit and the delete's leaves a row in both files:
        // it is deleted from the store and not copied twice.
        legacy_row(&store, 2, "q=maria");
        let conn = open(dir.path()).unwrap();
        assert_eq!(list(&conn, None, 10).unwrap().len(), 2);
        assert_eq!(store_rows(dir.path()), 0);
        // New rows continue after the moved ids.
        write(
            &mut open(dir.path()).unwrap(),
            &Default::default(),
            std::iter::once(&Entry {
                at: Utc::now(),
                token_id: None,
                actor: "telephony".into(),
                role: "support".into(),
                action: Action::Call,
                member_id: None,
                detail: "CA1".into(),
            }),
        )
        .unwrap();
        let id: i64 = conn
            .query_row("SELECT max(id) FROM audit_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(id, 3);
    }

    #[test]
    fn a_legacy_row_that_clashes_with_a_different_row_stops_the_move_and_loses_neither() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open_writer(dir.path()).unwrap();
        drop(open(dir.path()).unwrap());
        row_in(
            &open_writer_audit(dir.path()),
            "audit_log",
            1,
            "in the audit log",
        );
        legacy_row(&store, 1, "in the store");
        assert!(open(dir.path()).is_err());
        assert_eq!(store_rows(dir.path()), 1);
        let conn = open_reader(dir.path()).unwrap();
        assert_eq!(list(&conn, None, 10).unwrap()[0].detail, "in the audit log");
    }

    fn open_writer_audit(dir: &Path) -> Connection {
        Connection::open(dir.join(FILE)).unwrap()
    }

    #[test]
    fn the_writer_syncs_each_commit_only_when_asked_to() {
        let dir = tempfile::tempdir().unwrap();
        for (sync, pragma) in [(Durability::Full, 2), (Durability::Normal, 1)] {
            let conn = open_writer(dir.path(), sync).unwrap();
            let level: i64 = conn
                .query_row("PRAGMA synchronous", [], |r| r.get(0))
                .unwrap();
            assert_eq!(level, pragma, "{sync:?}");
        }
    }

    /// A search by the `desk` token for member `m{n}`.
    fn search_entry(n: u64, detail: &str) -> Entry {
        Entry {
            at: Utc::now(),
            token_id: Some(1),
            actor: "desk".into(),
            role: "support".into(),
            action: Action::Search,
            member_id: Some(format!("m{n}")),
            detail: detail.into(),
        }
    }

    fn details(dir: &Path) -> Vec<(Option<String>, String)> {
        let conn = open_reader(dir).unwrap();
        let mut rows: Vec<(Option<String>, String)> = list(&conn, None, 1000)
            .unwrap()
            .into_iter()
            .map(|r| (r.member_id, r.detail))
            .collect();
        rows.reverse();
        rows
    }

    #[tokio::test]
    async fn an_erasure_redacts_what_the_log_tells_about_the_member_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::start(dir.path(), Durability::Normal, test_histogram()).unwrap();
        let mut other = search_entry(2, "name~Ma");
        other.token_id = Some(9);
        let mut nobody = search_entry(0, "phone=+12125550142");
        nobody.member_id = None;
        let call = Entry {
            action: Action::Call,
            ..search_entry(1, "from=+12125550142")
        };
        // One search that found m1 and m2 writes both rows at once.
        let both = search_entry(1, "name~Maria R");
        log.record(vec![
            both.clone(),
            Entry {
                member_id: Some("m2".into()),
                ..both
            },
        ])
        .await
        .unwrap();
        for e in [other, nobody, call, search_entry(3, "phone=+12125550199")] {
            log.record(vec![e]).await.unwrap();
        }
        let reader = open_reader(dir.path()).unwrap();
        // Half the log through the member index, the rest from the tail.
        let mut idx = index::open(dir.path()).unwrap();
        let writer = open_file(dir.path()).unwrap();
        index::catch_up(&writer, &mut idx, 3, 100).unwrap();
        let rows = erasure_rows(&reader, "m1", &["phone=+12125550142".into()]).unwrap();
        assert_eq!(rows.member_rows.len(), 2, "{rows:?}");
        assert_eq!(rows.term_rows.len(), 1, "{rows:?}");
        // A lookup of m1 that was under way writes after the redaction: written redacted.
        let (redacted, late) = tokio::join!(
            log.redact_member(rows),
            log.record(vec![search_entry(1, "email=maria@example.com")])
        );
        late.unwrap();
        assert_eq!(redacted.unwrap(), 4);
        log.record(vec![search_entry(1, "id=m1")]).await.unwrap();
        let r = REDACTED.to_owned();
        let m = |n: u32| Some(format!("m{n}"));
        assert_eq!(
            details(dir.path()),
            [
                (m(1), r.clone()),
                (m(2), r.clone()),
                (m(2), "name~Ma".into()),
                (None, r.clone()),
                (m(1), r.clone()),
                (m(3), "phone=+12125550199".into()),
                (m(1), r.clone()),
                (m(1), r.clone()),
            ]
        );
    }

    #[test]
    fn a_reader_holding_the_log_delays_a_restart_only_briefly() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::new(open_writer(dir.path(), Durability::Normal).unwrap());
        let e = |n: u64| search_entry(n, "");
        write(
            &mut writer.conn,
            &Default::default(),
            std::iter::once(&e(0)),
        )
        .unwrap();
        // A reader in the middle of a read transaction on the log (an audit page, say).
        let reader = open_reader(dir.path()).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let seen: i64 = reader
            .query_row("SELECT count(*) FROM audit_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 1);
        writer
            .restart
            .store(true, std::sync::atomic::Ordering::Release);
        let started = std::time::Instant::now();
        write(
            &mut writer.conn,
            &Default::default(),
            std::iter::once(&e(1)),
        )
        .unwrap();
        // The reader keeps the file from starting over ...
        assert_eq!(writer.restart_if_asked().unwrap(), Some(true));
        // ... and without the short wait the writer, and every lookup behind it, would
        // wait the store's 30 s busy timeout for it.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        // The next commit still waits for the write lock as long as before.
        let timeout: i64 = writer
            .conn
            .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
            .unwrap();
        assert_eq!(timeout, 30_000);
        reader.execute_batch("COMMIT").unwrap();
        // Not asked: nothing to do. Asked again once the reader is done: restarted.
        assert_eq!(writer.restart_if_asked().unwrap(), None);
        writer
            .restart
            .store(true, std::sync::atomic::Ordering::Release);
        assert_eq!(writer.restart_if_asked().unwrap(), Some(false));
    }

    #[test]
    fn the_write_ahead_file_stays_bounded_while_the_writer_keeps_committing() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::new(open_writer(dir.path(), Durability::Normal).unwrap());
        let restart = writer.restart.clone();
        let checkpointer = open_file(dir.path()).unwrap();
        checkpointer
            .busy_timeout(std::time::Duration::from_millis(100))
            .unwrap();
        let wal = dir.path().join(format!("{FILE}-wal"));
        // The writer commits one row after another, never pausing, as under load.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writing = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let e = search_entry(n, &"x".repeat(200));
                    write(&mut writer.conn, &Default::default(), std::iter::once(&e)).unwrap();
                    writer.restart_if_asked().unwrap();
                    n += 1;
                }
                (writer, n)
            })
        };
        // Each passive round that finds the file past RESTART_FRAMES asks the writer to
        // restart it; the writer does so after its next commit, so a later round sees
        // the file start over. How far it grows in between depends on the disk (each
        // round syncs), so what is checked is that it does start over, every time.
        const ROUNDS_TO_RESTART: u32 = 5;
        let (mut restarts_seen, mut last_frames, mut rounds_past) = (0, 0i64, None::<u32>);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while restarts_seen < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "three restarts did not happen within 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
            let c = checkpoint_once(&checkpointer, &wal, &restart).unwrap();
            if c.frames < 0 {
                // The writer's restart held the checkpoint lock: nothing seen this round.
                continue;
            }
            if c.frames < last_frames {
                restarts_seen += 1;
                rounds_past = None;
            } else if c.frames > RESTART_FRAMES {
                let n = rounds_past.map_or(0, |n| n + 1);
                assert!(
                    n < ROUNDS_TO_RESTART,
                    "{} frames: the write-ahead file was not restarted within {ROUNDS_TO_RESTART} rounds",
                    c.frames
                );
                rounds_past = Some(n);
            }
            last_frames = c.frames;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut writer, written) = writing.join().unwrap();
        let rows: i64 = checkpointer
            .query_row("SELECT count(*) FROM audit_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows as u64, written);
        // However long it grew, the file is cut back to journal_size_limit when the next
        // commit after a restart starts it over.
        checkpoint_once(&checkpointer, &wal, &restart).unwrap();
        restart.store(true, std::sync::atomic::Ordering::Release);
        assert_eq!(writer.restart_if_asked().unwrap(), Some(false));
        write(
            &mut writer.conn,
            &Default::default(),
            std::iter::once(&search_entry(written, "")),
        )
        .unwrap();
        let wal_bytes = std::fs::metadata(&wal).unwrap().len();
        assert!(
            wal_bytes <= (16 << 20) + (64 << 10),
            "{wal_bytes} bytes of write-ahead file"
        );
    }

    /// The details of `m{n}`'s rows as `list` gives them (newest first, at most `limit`).
    fn details_of(dir: &Path, n: u64, limit: u32) -> Vec<String> {
        let conn = open_reader(dir).unwrap();
        list(&conn, Some(&format!("m{n}")), limit)
            .unwrap()
            .into_iter()
            .map(|r| r.detail)
            .collect()
    }

    fn write_searches(conn: &mut Connection, range: std::ops::Range<u64>) {
        let entries: Vec<Entry> = range
            .map(|i| search_entry(i % 3, &format!("n{i}")))
            .collect();
        write(conn, &Default::default(), entries.iter()).unwrap();
    }

    /// How many rows of `member` the index holds.
    fn indexed_rows(idx: &Connection, member: &str) -> i64 {
        idx.query_row(
            "SELECT count(*) FROM member_rows WHERE member_id = ?1",
            [member],
            |r| r.get(0),
        )
        .unwrap()
    }

    fn remove_index(dir: &Path) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(dir.join(format!("{}{suffix}", index::FILE)));
        }
    }

    #[test]
    fn a_members_rows_are_listed_whole_and_once_however_far_the_index_has_got() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = open_writer(dir.path(), Durability::Full).unwrap();
        write_searches(&mut writer, 0..30);
        let expected: Vec<String> = (0..30)
            .rev()
            .filter(|i| i % 3 == 1)
            .map(|i| format!("n{i}"))
            .collect();
        // No index yet: the whole log is scanned.
        assert_eq!(details_of(dir.path(), 1, 100), expected);
        // An index part of the way: its rows and the tail after it, none twice.
        let mut idx = index::open(dir.path()).unwrap();
        assert_eq!(index::catch_up(&writer, &mut idx, i64::MAX, 7).unwrap(), 7);
        assert_eq!(index::upto(&idx).unwrap(), 7);
        assert_eq!(details_of(dir.path(), 1, 100), expected);
        assert_eq!(details_of(dir.path(), 1, 4), expected[..4]);
        // Caught up, then more rows after it.
        while index::catch_up(&writer, &mut idx, i64::MAX, 7).unwrap() > 0 {}
        assert_eq!(index::upto(&idx).unwrap(), 30);
        assert_eq!(indexed_rows(&idx, "m1"), 10);
        assert_eq!(details_of(dir.path(), 1, 100), expected);
        write_searches(&mut writer, 30..33);
        let mut expected_now = vec!["n31".to_owned()];
        expected_now.extend(expected.iter().cloned());
        assert_eq!(details_of(dir.path(), 1, 100), expected_now);
        assert_eq!(details_of(dir.path(), 7, 100), Vec::<String>::new());
        // A lost index costs nothing but speed, and is rebuilt.
        drop(idx);
        remove_index(dir.path());
        assert_eq!(details_of(dir.path(), 1, 100), expected_now);
        let mut idx = index::open(dir.path()).unwrap();
        while index::catch_up(&writer, &mut idx, i64::MAX, 1000).unwrap() > 0 {}
        assert_eq!(index::upto(&idx).unwrap(), 33);
        assert_eq!(details_of(dir.path(), 1, 100), expected_now);
        // A member's rows are found through the index, not by scanning the log.
        let reader = open_reader(dir.path()).unwrap();
        let plan: Vec<String> = reader
            .prepare(
                "EXPLAIN QUERY PLAN SELECT id FROM audit_log
                 WHERE id IN (SELECT id FROM idx.member_rows WHERE member_id = 'm1')",
            )
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|p| p.contains("INTEGER PRIMARY KEY (rowid=?)")),
            "{plan:?}"
        );
    }

    #[tokio::test]
    async fn the_checkpointer_keeps_the_member_index_up_to_date() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::start(dir.path(), Durability::Normal, test_histogram()).unwrap();
        for i in 0..12 {
            log.record(vec![search_entry(i % 3, &format!("n{i}"))])
                .await
                .unwrap();
        }
        let idx = index::open(dir.path()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while index::upto(&idx).unwrap() < 12 {
            assert!(
                std::time::Instant::now() < deadline,
                "the index stayed behind"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(indexed_rows(&idx, "m2"), 4);
    }

    #[tokio::test]
    async fn an_index_that_cannot_be_opened_at_start_is_opened_later_and_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the index file belongs: SQLite cannot open it.
        let blocker = dir.path().join(index::FILE);
        std::fs::create_dir(&blocker).unwrap();
        let log = AuditLog::start(dir.path(), Durability::Normal, test_histogram()).unwrap();
        for i in 0..6 {
            log.record(vec![search_entry(i % 2, &format!("n{i}"))])
                .await
                .unwrap();
        }
        // Meanwhile a member's rows come from the scan.
        let reader = open_reader(dir.path()).unwrap();
        assert_eq!(
            list(&reader, Some("m1"), 100).unwrap().len(),
            3,
            "rows listed without the index"
        );
        std::fs::remove_dir(&blocker).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Ok(idx) = index::open(dir.path()) {
                if index::upto(&idx).unwrap_or(0) >= 6 {
                    assert_eq!(indexed_rows(&idx, "m1"), 3);
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the index was never opened again"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    #[test]
    fn rows_moved_from_an_older_store_empty_the_index_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = open(dir.path()).unwrap();
        write_searches(&mut writer, 0..6);
        let mut idx = index::open(dir.path()).unwrap();
        while index::catch_up(&writer, &mut idx, i64::MAX, 100).unwrap() > 0 {}
        assert_eq!(indexed_rows(&idx, "m1"), 2);
        let store = crate::store::open_writer(dir.path()).unwrap();
        row_in(&store, "legacy_audit_log", 100, "phone=+12125550100");
        drop(open(dir.path()).unwrap());
        assert_eq!(index::upto(&idx).unwrap(), 0);
        assert_eq!(indexed_rows(&idx, "m1"), 0);
        assert_eq!(
            details_of(dir.path(), 1, 10),
            ["phone=+12125550100", "n4", "n1"]
        );
        while index::catch_up(&writer, &mut idx, i64::MAX, 100).unwrap() > 0 {}
        assert_eq!(
            details_of(dir.path(), 1, 10),
            ["phone=+12125550100", "n4", "n1"]
        );
    }

    #[test]
    fn an_index_that_does_not_match_the_log_never_shows_another_members_rows_and_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = open_writer(dir.path(), Durability::Full).unwrap();
        write_searches(&mut writer, 0..10);
        let mut idx = index::open(dir.path()).unwrap();
        while index::catch_up(&writer, &mut idx, i64::MAX, 100).unwrap() > 0 {}
        assert!(!index::check(&writer, &mut idx).unwrap());
        // The log is restored from an older backup (its rows 6..10 gone), and new rows
        // take those ids: ids 6..10 now belong to other members than the index says.
        writer
            .execute("DELETE FROM audit_log WHERE id > 5", [])
            .unwrap();
        let later: Vec<Entry> = (0..5)
            .map(|i| search_entry(2, &format!("late{i}")))
            .collect();
        write(&mut writer, &Default::default(), later.iter()).unwrap();
        // Before the check: ids 7 and 10, indexed as m1's, are m2's rows now and are not
        // shown as m1's; m2's new rows under ids the index gave to others are missed.
        assert_eq!(details_of(dir.path(), 1, 100), ["n4", "n1"]);
        assert_eq!(details_of(dir.path(), 2, 100), ["late3", "late0", "n2"]);
        assert!(index::check(&writer, &mut idx).unwrap());
        assert_eq!(index::upto(&idx).unwrap(), 0);
        while index::catch_up(&writer, &mut idx, i64::MAX, 3).unwrap() > 0 {}
        assert_eq!(
            details_of(dir.path(), 2, 100),
            ["late4", "late3", "late2", "late1", "late0", "n2"]
        );
        assert!(!index::check(&writer, &mut idx).unwrap());
    }

    #[test]
    fn the_index_covers_only_rows_up_to_the_id_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = open_writer(dir.path(), Durability::Full).unwrap();
        write_searches(&mut writer, 0..10);
        let mut idx = index::open(dir.path()).unwrap();
        while index::catch_up(&writer, &mut idx, 4, 100).unwrap() > 0 {}
        assert_eq!(index::upto(&idx).unwrap(), 4);
        assert_eq!(details_of(dir.path(), 0, 100), ["n9", "n6", "n3", "n0"]);
    }
}

//! The SQLite store: opening connections, pragmas and the numbered migrations.
//!
//! One writer per database (the ingest writer thread in `serve`; a CLI command that
//! changes the registry is a short second writer and waits on `busy_timeout`), readers on
//! their own connections. WAL mode; `synchronous = FULL` so a commit that the cloud acks is
//! on disk. Times are stored as Unix milliseconds (`*_ms`). A bound row limit is written
//! `LIMIT CAST(?N AS INTEGER)`: with a bare `LIMIT ?N`, SQLite re-prepares the statement
//! every time the parameter is bound again (it folds the value into the plan).
//! The bundled SQLite is built with the options in `.cargo/config.toml`
//! (`LIBSQLITE3_FLAGS`): without `SQLITE_ENABLE_MEMORY_MANAGEMENT`, so that each
//! connection has its own page cache instead of one shared behind a global mutex, and
//! without memory statistics (another global mutex, around every allocation).
//!
//! Dedup keys, enforced by the tables below:
//! - `events (device_id, seq)`: one row per device event, whatever the number of re-sends.
//!   `events.commit_seq` (migration 8) is the number of the transaction that stored it
//!   ([`next_commit_seq`]), so readers can follow new events in commit order.
//! - `reports (device_id, report_seq)`: one row per report, with a digest of its events,
//!   so a re-sent report is recognised and acked again without change.
//! - `quarantine (dedup_key)`: one row per rejected message (a held report from an unknown
//!   device is keyed by device and report number, others by the payload's SHA-256), within
//!   the limits in [`crate::ingest`] (`MAX_HELD_PER_DEVICE`, `MAX_HELD`, `MAX_REJECTED`;
//!   `quarantine_counts`, kept by triggers, has the rows per state); beyond them one row per
//!   reason, keyed `dropped:{reason}`, counts what was not kept.
//! - Imported usage (`usage import`) lives in `events` too, under the synthetic device
//!   `import:{member_id}` (a `:` can never appear in a real device id) with `seq` taken
//!   from a SHA-256 of the row's content and its occurrence number among identical rows
//!   of the file, so importing the same file again changes nothing.
//! - `member_scores (member_id)`: the latest score and state of each member, replaced by
//!   each scoring run that moves time forward (`scoring_runs.as_of_ms` never decreases,
//!   and is never later than the clock when the run was stored).
//! - `state_transitions`: append-only; one row per state change (and one, with no old
//!   state, when a member is first scored), written in the same transaction as the score.
//! - `engagement_daily (day, state)`: members per state at the last run of each UTC day.
//! - `model_fits`: append-only; every fit, adopted or not, with its convergence.
//! - `deliveries (idempotency_key)`: one row per message to deliver, whatever the number of
//!   enqueues; `delivery_attempts` is append-only, one row per attempt. Invariants in
//!   [`crate::delivery`].
//! - `outreach (rule, member_id, trigger_key, channel)`: one row per trigger occurrence and
//!   channel, so re-scanning triggers changes nothing; at most one row per
//!   `(rule, member_id, episode, channel)` is ever queued (the others are `skipped` with
//!   `duplicate_episode`). `outreach_log` is append-only: every policy decision.
//! - `consent (member_id, channel, category)`: opt-outs (`channel = '*'`: every channel).
//! - `orders (tx_id)` (migration 5): one row per device transaction id, whatever the
//!   number of re-sends; `payload_sha256` tells a re-send (same outcome) from a conflict.
//!   `devices.max_tx_counter` is the newest transaction counter seen per device (replays
//!   of older counters under new ids are refused). `member_policies (member_id)`: opt-in
//!   and limits. `ledger_*`: see [`crate::ledger`] (append-only, never updated).
//! - `legacy_audit_log` (migration 6 as `audit_log`, renamed by migration 7): no longer
//!   written. The audit log has its own file ([`crate::audit::FILE`]), and
//!   [`crate::audit::open`] moves any rows found here into it.
//! - `engagement_transitions_daily (day, old_state, new_state)`: state changes per UTC day,
//!   kept by a trigger on every insert into `state_transitions` (the engagement summary
//!   reads it instead of scanning the transitions).
//! - `calls (call_sid)`: one row per incoming call, whatever the number of webhook
//!   retries. `sink_messages (webhook_id)`: one row per message the built-in webhook sink
//!   received (its idempotency key), however often it was delivered.

use rusqlite::Connection;
use std::path::Path;
use std::time::Duration;

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The database was written by a newer Rollcall.
    #[error("the store is at schema version {found}, newer than this build's {supported}; upgrade rollcall-cloud")]
    TooNew {
        /// Version on disk.
        found: i64,
        /// Newest this build knows.
        supported: i64,
    },
    /// The database was written by an older Rollcall and not migrated yet (readers do not
    /// migrate; the writer does when it opens the store).
    #[error("the store is at schema version {found}, older than this build's {supported}; start `rollcall-cloud serve` (or any command that writes) once to migrate it")]
    TooOld {
        /// Version on disk.
        found: i64,
        /// Version this build reads.
        supported: i64,
    },
    /// A migration's own code (beyond its SQL) failed; nothing was changed.
    #[error("migrating the store to schema version {version}: {reason}")]
    Migration {
        /// The version being migrated to.
        version: usize,
        /// Why.
        reason: String,
    },
    /// The rows an older version kept in the store could not be moved into the audit log.
    #[error("moving the audit log rows of {from} into {to}: {source} (both files are unchanged; move the clashing rows by hand or ask for help)")]
    AuditMove {
        /// The store.
        from: String,
        /// The audit log.
        to: String,
        /// Why.
        source: rusqlite::Error,
    },
    /// A worker thread (store reader, audit writer) could not be started.
    #[error("could not start a thread: {0}")]
    Thread(std::io::Error),
}

const MIGRATIONS: &[&str] = &[
    // 1: registry, events, reports, quarantine.
    r#"
    CREATE TABLE members (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        phone TEXT,
        email TEXT,
        tz TEXT,
        plan TEXT,
        joined_ms INTEGER,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX members_phone ON members(phone);
    CREATE INDEX members_email ON members(email);
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        member_id TEXT NOT NULL REFERENCES members(id),
        public_key BLOB NOT NULL,
        registered_ms INTEGER NOT NULL,
        max_report_seq INTEGER NOT NULL DEFAULT 0,
        last_seen_ms INTEGER,
        presence TEXT,
        presence_ms INTEGER,
        status_session INTEGER,
        status_n INTEGER,
        health TEXT
    );
    CREATE INDEX devices_member ON devices(member_id);
    CREATE TABLE events (
        device_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        member_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        qty INTEGER NOT NULL,
        occurred_ms INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        attrs TEXT,
        clock_suspect INTEGER NOT NULL DEFAULT 0,
        fingerprint INTEGER NOT NULL,
        PRIMARY KEY (device_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX events_member_time ON events(member_id, occurred_ms);
    CREATE TABLE reports (
        device_id TEXT NOT NULL,
        report_seq INTEGER NOT NULL,
        digest INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        events INTEGER NOT NULL,
        PRIMARY KEY (device_id, report_seq)
    ) WITHOUT ROWID;
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY,
        dedup_key TEXT NOT NULL UNIQUE,
        received_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        seen_count INTEGER NOT NULL DEFAULT 1,
        topic TEXT NOT NULL,
        device_id TEXT,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        payload BLOB NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('held', 'rejected', 'released'))
    );
    CREATE INDEX quarantine_held ON quarantine(device_id) WHERE state = 'held';
    "#,
    // 2: membership scoring.
    r#"
    CREATE INDEX events_received ON events(received_ms);
    CREATE TABLE model_fits (
        id INTEGER PRIMARY KEY,
        fitted_ms INTEGER NOT NULL,
        as_of_ms INTEGER NOT NULL,
        model TEXT NOT NULL,
        r REAL NOT NULL,
        alpha REAL NOT NULL,
        a REAL NOT NULL,
        b REAL NOT NULL,
        log_likelihood REAL NOT NULL,
        members INTEGER NOT NULL,
        converged INTEGER NOT NULL,
        adopted INTEGER NOT NULL,
        note TEXT
    );
    CREATE TABLE scoring_runs (
        id INTEGER PRIMARY KEY,
        as_of_ms INTEGER NOT NULL,
        ran_ms INTEGER NOT NULL,
        members INTEGER NOT NULL,
        changed INTEGER NOT NULL,
        fit_id INTEGER REFERENCES model_fits(id)
    );
    CREATE TABLE member_scores (
        member_id TEXT PRIMARY KEY REFERENCES members(id),
        as_of_ms INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('new', 'active', 'champion', 'lapsing', 'lapsed')),
        state_since_ms INTEGER NOT NULL,
        last_active_at_entry INTEGER,
        score INTEGER NOT NULL,
        p_engaged REAL NOT NULL,
        p_silent_14d REAL NOT NULL,
        p_silent_30d REAL NOT NULL,
        expected_active_days_30d REAL NOT NULL,
        rhythm_per_week REAL NOT NULL,
        days_since_last INTEGER,
        tenure_days INTEGER NOT NULL,
        active_days INTEGER NOT NULL,
        reasons TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX member_scores_state ON member_scores(state);
    CREATE TABLE state_transitions (
        id INTEGER PRIMARY KEY,
        member_id TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        old_state TEXT,
        new_state TEXT NOT NULL,
        score INTEGER NOT NULL,
        p_engaged REAL NOT NULL,
        p_silent_14d REAL NOT NULL,
        days_since_last INTEGER,
        tenure_days INTEGER NOT NULL,
        active_days INTEGER NOT NULL,
        reasons TEXT NOT NULL
    );
    CREATE INDEX state_transitions_member ON state_transitions(member_id, at_ms);
    CREATE TABLE engagement_daily (
        day TEXT NOT NULL,
        state TEXT NOT NULL,
        members INTEGER NOT NULL,
        PRIMARY KEY (day, state)
    ) WITHOUT ROWID;
    "#,
    // 3: API tokens (stored as SHA-256 hashes; see tokens.rs).
    r#"
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('support', 'analyst', 'admin')),
        token_hash BLOB NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL,
        revoked_ms INTEGER,
        last_used_ms INTEGER
    );
    "#,
    // 4: the delivery queue and personalised outreach.
    r#"
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        channel TEXT NOT NULL,
        target TEXT NOT NULL,
        idempotency_key TEXT NOT NULL UNIQUE,
        purpose TEXT NOT NULL,
        payload TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'in_flight', 'awaiting_ack', 'delivered', 'dead', 'cancelled')),
        attempts INTEGER NOT NULL DEFAULT 0,
        extra_attempts INTEGER NOT NULL DEFAULT 0,
        not_before_ms INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        lease_until_ms INTEGER,
        delivered_ms INTEGER,
        last_status_code INTEGER,
        last_error TEXT
    );
    CREATE INDEX deliveries_due ON deliveries(not_before_ms) WHERE status IN ('pending', 'awaiting_ack');
    CREATE INDEX deliveries_status ON deliveries(status, id);
    CREATE TABLE delivery_attempts (
        id INTEGER PRIMARY KEY,
        delivery_id INTEGER NOT NULL REFERENCES deliveries(id),
        n INTEGER NOT NULL,
        started_ms INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        status_code INTEGER,
        error TEXT
    );
    CREATE INDEX delivery_attempts_delivery ON delivery_attempts(delivery_id, n);
    CREATE TABLE delivery_endpoints (
        channel TEXT NOT NULL,
        target TEXT NOT NULL,
        disabled_ms INTEGER NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (channel, target)
    ) WITHOUT ROWID;
    CREATE TABLE outreach (
        id INTEGER PRIMARY KEY,
        member_id TEXT NOT NULL,
        rule TEXT NOT NULL,
        trigger TEXT NOT NULL,
        trigger_key TEXT NOT NULL,
        episode TEXT NOT NULL,
        channel TEXT NOT NULL,
        category TEXT NOT NULL CHECK (category IN ('transactional', 'marketing')),
        priority INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued', 'held', 'skipped', 'cancelled')),
        reason TEXT,
        subject TEXT NOT NULL,
        body TEXT NOT NULL,
        trigger_data TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        due_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        queued_ms INTEGER,
        delivery_id INTEGER REFERENCES deliveries(id),
        UNIQUE (rule, member_id, trigger_key, channel)
    );
    CREATE INDEX outreach_member ON outreach(member_id, id);
    CREATE INDEX outreach_held ON outreach(due_ms) WHERE status = 'held';
    CREATE INDEX outreach_episode ON outreach(rule, member_id, episode, channel);
    CREATE INDEX outreach_caps ON outreach(member_id, channel, category, queued_ms) WHERE queued_ms IS NOT NULL;
    CREATE TABLE outreach_log (
        id INTEGER PRIMARY KEY,
        outreach_id INTEGER NOT NULL REFERENCES outreach(id),
        at_ms INTEGER NOT NULL,
        step TEXT NOT NULL,
        decision TEXT NOT NULL,
        reason TEXT
    );
    CREATE INDEX outreach_log_outreach ON outreach_log(outreach_id);
    CREATE TABLE consent (
        member_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        category TEXT NOT NULL,
        opted_out_ms INTEGER NOT NULL,
        source TEXT NOT NULL,
        PRIMARY KEY (member_id, channel, category)
    ) WITHOUT ROWID;
    CREATE TABLE outreach_cursor (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 5: device-initiated transactions (orders), member policies, the ledger.
    r#"
    ALTER TABLE devices ADD COLUMN max_tx_counter INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE member_policies (
        member_id TEXT PRIMARY KEY REFERENCES members(id),
        auto_reorder INTEGER NOT NULL,
        limit_per_order INTEGER,
        limit_30d INTEGER,
        limit_slot_qty INTEGER,
        updated_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE orders (
        tx_id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        member_id TEXT NOT NULL,
        slot TEXT NOT NULL,
        sku TEXT NOT NULL,
        qty INTEGER NOT NULL,
        unit_price INTEGER NOT NULL,
        amount INTEGER NOT NULL,
        currency TEXT NOT NULL,
        counter INTEGER NOT NULL,
        payload_sha256 TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('accepted', 'held_for_confirmation', 'rejected', 'cancelled', 'delivered')),
        reason TEXT,
        decided_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        cancel_until_ms INTEGER,
        ledger_index INTEGER NOT NULL,
        fulfilment_requested_ms INTEGER,
        notified_status TEXT
    ) WITHOUT ROWID;
    CREATE INDEX orders_member_time ON orders(member_id, decided_ms);
    CREATE INDEX orders_open_slot ON orders(device_id, slot)
        WHERE status IN ('accepted', 'held_for_confirmation');
    CREATE INDEX orders_unnotified ON orders(device_id) WHERE notified_status IS NOT status;
    CREATE TABLE ledger_entries (
        idx INTEGER PRIMARY KEY,
        entry BLOB NOT NULL,
        envelope BLOB,
        leaf_hash BLOB NOT NULL
    );
    CREATE TABLE ledger_checkpoints (
        tree_size INTEGER PRIMARY KEY,
        root BLOB NOT NULL,
        at_ms INTEGER NOT NULL,
        envelope TEXT NOT NULL
    );
    CREATE TABLE ledger_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        range BLOB NOT NULL,
        last_leaf BLOB NOT NULL
    );
    "#,
    // 6: support console: member language and erasure, the lookup audit log, incoming
    // calls (screen-pops), the built-in webhook sink.
    r#"
    ALTER TABLE members ADD COLUMN lang TEXT;
    ALTER TABLE members ADD COLUMN erased_ms INTEGER;
    CREATE INDEX members_email_nocase ON members(email COLLATE NOCASE);
    CREATE INDEX members_joined ON members(COALESCE(joined_ms, created_ms));
    CREATE TABLE engagement_transitions_daily (
        day TEXT NOT NULL,
        old_state TEXT NOT NULL,
        new_state TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (day, old_state, new_state)
    ) WITHOUT ROWID;
    INSERT INTO engagement_transitions_daily (day, old_state, new_state, n)
        SELECT date(at_ms / 1000, 'unixepoch'), COALESCE(old_state, 'none'), new_state, COUNT(*)
        FROM state_transitions GROUP BY 1, 2, 3;
    CREATE TRIGGER state_transitions_daily AFTER INSERT ON state_transitions BEGIN
        INSERT INTO engagement_transitions_daily (day, old_state, new_state, n)
        VALUES (date(NEW.at_ms / 1000, 'unixepoch'), COALESCE(NEW.old_state, 'none'), NEW.new_state, 1)
        ON CONFLICT (day, old_state, new_state) DO UPDATE SET n = n + 1;
    END;
    CREATE INDEX member_scores_state_score ON member_scores(state, score);
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        token_id INTEGER,
        actor TEXT NOT NULL,
        role TEXT NOT NULL,
        action TEXT NOT NULL,
        member_id TEXT,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_log_member ON audit_log(member_id, at_ms);
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY,
        call_sid TEXT NOT NULL UNIQUE,
        from_number TEXT NOT NULL,
        to_number TEXT,
        member_id TEXT,
        received_ms INTEGER NOT NULL
    );
    CREATE INDEX calls_member ON calls(member_id);
    CREATE TABLE sink_messages (
        id INTEGER PRIMARY KEY,
        webhook_id TEXT NOT NULL UNIQUE,
        received_ms INTEGER NOT NULL,
        verified INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    "#,
    // 7: the audit log has its own file (`crate::audit::FILE`). The old table is renamed
    // so that versions before this one refuse the store (their schema is older) rather
    // than go on writing rows there; `crate::audit::open` moves its rows and empties it.
    r#"
    ALTER TABLE audit_log RENAME TO legacy_audit_log;
    "#,
    // 8: the commit sequence. Each transaction that stores events takes the next number
    // ([`next_commit_seq`]) and stamps its events with it, so a reader can follow exactly
    // what was committed since it last looked, whatever the events' receive times (the
    // outreach milestones did it by `received_ms` with a 60 s overlap, and missed events
    // committed later: held reports released on registration, a backlog). Events stored
    // before keep 0; those the milestone scan had not looked at yet get 1 and are looked
    // at by its next run, which continues from a cursor of 0.
    r#"
    ALTER TABLE events ADD COLUMN commit_seq INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE commit_counter (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL
    );
    INSERT INTO commit_counter (id, seq) VALUES (1, 1);
    UPDATE events SET commit_seq = 1 WHERE received_ms >
        (SELECT value - 60000 FROM outreach_cursor WHERE name = 'events_received_ms');
    CREATE INDEX events_commit_seq ON events(commit_seq);
    INSERT INTO outreach_cursor (name, value)
        SELECT 'events_commit_seq', 0 FROM outreach_cursor WHERE name = 'events_received_ms';
    DELETE FROM outreach_cursor WHERE name = 'events_received_ms';
    "#,
    // 9: quarantine rows per state, kept by triggers, so the ingest can check the
    // quarantine's limits (`crate::ingest::MAX_REJECTED`, `MAX_HELD`) without counting.
    r#"
    CREATE TABLE quarantine_counts (
        state TEXT PRIMARY KEY,
        n INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO quarantine_counts (state, n)
        SELECT s.state, (SELECT COUNT(*) FROM quarantine q WHERE q.state = s.state)
        FROM (SELECT 'held' AS state UNION ALL SELECT 'rejected' UNION ALL SELECT 'released') s;
    CREATE TRIGGER quarantine_counts_insert AFTER INSERT ON quarantine BEGIN
        UPDATE quarantine_counts SET n = n + 1 WHERE state = NEW.state;
    END;
    CREATE TRIGGER quarantine_counts_update AFTER UPDATE OF state ON quarantine
    WHEN OLD.state IS NOT NEW.state BEGIN
        UPDATE quarantine_counts SET n = n - 1 WHERE state = OLD.state;
        UPDATE quarantine_counts SET n = n + 1 WHERE state = NEW.state;
    END;
    CREATE TRIGGER quarantine_counts_delete AFTER DELETE ON quarantine BEGIN
        UPDATE quarantine_counts SET n = n - 1 WHERE state = OLD.state;
    END;
    "#,
    // 10: nothing reads events by receive time any more (the milestone scan and the
    // scorer's refresh follow `commit_seq`), so its index goes: each stored event keeps
    // costing the ingest one index insert, as before migration 8, not two.
    r#"
    DROP INDEX events_received;
    "#,
    // 11: the ledger keeps the root of every perfect subtree (height ≥ 1; leaves are in
    // `ledger_entries`), so a proof reads O(log² n) hashes instead of every leaf. Filled
    // for the entries already there by `ledger::backfill_nodes`, run right after this.
    r#"
    CREATE TABLE ledger_nodes (
        height INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (height, idx)
    ) WITHOUT ROWID;
    "#,
    // 12: a join date given without a time (`members add --joined YYYY-MM-DD`, the `joined`
    // column of `members import`) was stored as midnight UTC: the day before in the zones
    // west of UTC, where the scorer reads it. Such dates are now stored as
    // `domain::date_instant` in the member's zone. SQL cannot convert between time zones:
    // `registry::move_date_only_joins`, run right after this, moves the join times stored
    // at exactly midnight UTC.
    r#"
    -- Nothing to change in the schema.
    "#,
    // 13: the offline device (and since when) that a member's stored reasons mention, so
    // that the scorer rewrites the reasons when a device goes offline or comes back, not
    // only when the numbers change. Empty for rows written before: those with an offline
    // device are rewritten once.
    r#"
    ALTER TABLE member_scores ADD COLUMN offline_note TEXT;
    "#,
    // 14: the quiet hours a delivery keeps (`delivery::QuietWindow`, as
    // `HH:MM-HH:MM IANA-zone`): a retry or re-send due inside them waits for their end.
    // Empty for rows queued before, and for deliveries without quiet hours (fulfilment).
    r#"
    ALTER TABLE deliveries ADD COLUMN quiet TEXT;
    "#,
];

/// The migration after which [`crate::ledger::backfill_nodes`] runs (1-based version).
const LEDGER_NODES_VERSION: usize = 11;

/// The migration after which [`crate::registry::move_date_only_joins`] runs (1-based).
const DATE_ONLY_JOINS_VERSION: usize = 12;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The store's database file in the data directory.
pub const FILE: &str = "rollcall.db";

/// Sets the pragmas every writing connection uses (WAL, `synchronous = FULL`, foreign
/// keys, a 32 MB page cache, in-memory temporary storage).
pub(crate) fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(Duration::from_secs(30))?;
    rollcall_shared::sqlite::enable_wal(conn, Duration::from_secs(30))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "cache_size", -32_000)?;
    // Statement journals (savepoints, e.g. each transaction the ingest records) and sorts
    // stay in memory rather than in temporary files.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// Takes the next commit sequence number (migration 8) inside the caller's write
/// transaction, for the events it stores (`events.commit_seq`). Write transactions are
/// serialised, so numbers grow in commit order: a reader that, inside a write transaction
/// of its own, reads [`last_commit_seq`] has seen every event stamped with a number up to
/// it, and every later commit stamps a larger one.
pub fn next_commit_seq(tx: &Connection) -> rusqlite::Result<i64> {
    tx.prepare_cached("UPDATE commit_counter SET seq = seq + 1 WHERE id = 1 RETURNING seq")?
        .query_row([], |r| r.get(0))
}

/// The newest commit sequence number taken so far (see [`next_commit_seq`]).
pub fn last_commit_seq(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT seq FROM commit_counter WHERE id = 1")?
        .query_row([], |r| r.get(0))
}

/// Opens the store under `data_dir` for writing, creating it and running migrations.
pub fn open_writer(data_dir: &Path) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let mut conn = Connection::open(data_dir.join(FILE))?;
    configure(&conn)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Opens a read connection (the store must exist: open a writer first).
pub fn open_reader(data_dir: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        data_dir.join(FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    match found.cmp(&SCHEMA_VERSION) {
        std::cmp::Ordering::Less => {
            return Err(StoreError::TooOld {
                found,
                supported: SCHEMA_VERSION,
            })
        }
        std::cmp::Ordering::Greater => {
            return Err(StoreError::TooNew {
                found,
                supported: SCHEMA_VERSION,
            })
        }
        std::cmp::Ordering::Equal => {}
    }
    // A page cache large enough for the engagement summary's index scans (allocated as
    // used; SQLite empties it whenever another connection has written).
    conn.pragma_update(None, "cache_size", -65_536)?;
    // No memory map: SQLite unmaps the whole map whenever another connection has
    // written since this one last read, and under a steady stream of writes (the
    // ingest) the unmapping and the page faults after it cost more than reading
    // pages with system calls.
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql)?;
        if i + 1 == LEDGER_NODES_VERSION {
            crate::ledger::backfill_nodes(&tx).map_err(|e| StoreError::Migration {
                version: i + 1,
                reason: e.to_string(),
            })?;
        }
        if i + 1 == DATE_ONLY_JOINS_VERSION {
            crate::registry::move_date_only_joins(&tx)?;
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()?;
    Ok(())
}

/// A store in a temporary directory with member `m1` and its device `d1`, registered
/// under `key`: the fixture most of the crate's unit tests start from.
#[cfg(test)]
pub(crate) fn test_store_with_device(
    key: &rollcall_shared::dsse::KeyPair,
) -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let conn = open_writer(dir.path()).expect("store");
    conn.execute(
        "INSERT INTO members (id, name, created_ms) VALUES ('m1', 'M', 0)",
        [],
    )
    .expect("member");
    conn.execute(
        "INSERT INTO devices (id, member_id, public_key, registered_ms) VALUES ('d1', 'm1', ?1, 0)",
        [key.public().as_bytes().as_slice()],
    )
    .expect("device");
    (dir, conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_and_reopen_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let c = open_writer(dir.path()).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        drop(c);
        let c = open_writer(dir.path()).unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        open_reader(dir.path()).unwrap();
    }

    #[test]
    fn sqlite_is_built_without_a_shared_page_cache_or_memory_statistics() {
        // Set by `.cargo/config.toml`; a build run from outside the workspace (cargo reads
        // its config from the working directory) would lose them and fail here.
        let conn = Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
    }

    #[test]
    fn a_limit_written_as_a_cast_is_bound_without_re_preparing_the_statement() {
        let dir = tempfile::tempdir().unwrap();
        let c = open_writer(dir.path()).unwrap();
        let mut st = c
            .prepare("SELECT id FROM members ORDER BY id LIMIT CAST(?1 AS INTEGER)")
            .unwrap();
        for limit in 1..5 {
            st.query_map([limit], |r| r.get::<_, String>(0))
                .unwrap()
                .for_each(drop);
        }
        assert_eq!(st.get_status(rusqlite::StatementStatus::RePrepare), 0);
        assert_eq!(st.get_status(rusqlite::StatementStatus::Run), 4);
    }

    #[test]
    fn the_commit_sequence_migration_leaves_unseen_events_to_the_next_milestone_scan() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join(FILE)).unwrap();
            for sql in &MIGRATIONS[..7] {
                c.execute_batch(sql).unwrap();
            }
            c.pragma_update(None, "user_version", 7).unwrap();
            for (seq, received_ms) in [(1, 1_000), (2, 100_000), (3, 200_000)] {
                c.execute(
                    "INSERT INTO events (device_id, seq, member_id, kind, qty, occurred_ms, received_ms, fingerprint)
                     VALUES ('d1', ?1, 'm1', 'brew', 1, ?2, ?2, 0)",
                    [seq, received_ms],
                )
                .unwrap();
            }
            // The scan last looked at 150 s, and looked back 60 s from there.
            c.execute(
                "INSERT INTO outreach_cursor (name, value) VALUES ('events_received_ms', 150000)",
                [],
            )
            .unwrap();
        }
        let c = open_writer(dir.path()).unwrap();
        let seqs: Vec<i64> = c
            .prepare("SELECT commit_seq FROM events ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(seqs, vec![0, 1, 1]);
        let cursors: Vec<(String, i64)> = c
            .prepare("SELECT name, value FROM outreach_cursor")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(cursors, vec![("events_commit_seq".to_owned(), 0)]);
        assert_eq!(last_commit_seq(&c).unwrap(), 1);
        let tx = c.unchecked_transaction().unwrap();
        assert_eq!(next_commit_seq(&tx).unwrap(), 2);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let c = open_writer(dir.path()).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(c);
        assert!(matches!(
            open_writer(dir.path()),
            Err(StoreError::TooNew { .. })
        ));
        assert!(matches!(
            open_reader(dir.path()),
            Err(StoreError::TooNew { .. })
        ));
    }

    #[test]
    fn a_reader_refuses_a_store_not_yet_migrated_and_says_how_to_migrate_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = open_writer(dir.path()).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION - 1)
            .unwrap();
        drop(c);
        let err = open_reader(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::TooOld { .. }), "{err:?}");
        assert!(err.to_string().contains("rollcall-cloud serve"), "{err}");
    }

    /// Store migration 12 moves join dates stored the old way (midnight UTC) to the
    /// member's local date; other join times stay.
    #[test]
    fn migration_12_moves_midnight_utc_join_dates_to_the_members_local_date() {
        let dir = tempfile::tempdir().unwrap();
        use chrono::{TimeZone as _, Utc};
        let old = Utc.with_ymd_and_hms(2026, 1, 3, 0, 0, 0).unwrap();
        let timed = Utc.with_ymd_and_hms(2026, 1, 3, 15, 0, 0).unwrap();
        {
            let c = Connection::open(dir.path().join(FILE)).unwrap();
            for sql in &MIGRATIONS[..11] {
                c.execute_batch(sql).unwrap();
            }
            c.pragma_update(None, "user_version", 11).unwrap();
            for (id, tz, joined) in [
                ("ny", Some("America/New_York"), Some(old)),
                ("akl", Some("Pacific/Auckland"), Some(old)),
                ("none", None, Some(old)),
                ("timed", Some("America/New_York"), Some(timed)),
                ("never", Some("America/New_York"), None),
            ] {
                c.execute(
                    "INSERT INTO members (id, name, tz, joined_ms, created_ms) VALUES (?1, 'X', ?2, ?3, 0)",
                    rusqlite::params![id, tz, joined.map(|j| j.timestamp_millis())],
                )
                .unwrap();
            }
        }
        let c = open_writer(dir.path()).unwrap();
        let joined = |id: &str| -> Option<i64> {
            c.query_row("SELECT joined_ms FROM members WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap()
        };
        let date = old.date_naive();
        let at = |tz: chrono_tz::Tz| Some(crate::domain::date_instant(date, tz).timestamp_millis());
        assert_eq!(joined("ny"), at(chrono_tz::America::New_York));
        assert_eq!(joined("akl"), at(chrono_tz::Pacific::Auckland));
        assert_eq!(joined("none"), at(chrono_tz::UTC));
        assert_eq!(joined("timed"), Some(timed.timestamp_millis()));
        assert_eq!(joined("never"), None);
    }
}

//! The SQLite outbox: one database file per device, shared by the daemon and the CLI.
//!
//! Schema (migration 1):
//! - `meta(key, value)`: counters (`next_seq`, `next_report_seq`, `event_count`,
//!   `event_bytes`, `evictions`, `rejected_full`, `rejected_by_cloud`, `session`,
//!   `last_ack_at_ms`) and the daemon's state as JSON (`daemon_state`).
//! - `reports(report_seq PRIMARY KEY, created_at_ms, events)`: reports built and not acked.
//! - `events(seq PRIMARY KEY, body, bytes, recorded_at_ms, report_seq)`: `body` is the
//!   event's wire JSON; `report_seq` is NULL until the event is put in a report.
//!
//! Migration 2 (display messages):
//! - `messages(n PRIMARY KEY, id UNIQUE, title, body, received_at_ms)`: the display
//!   messages the cloud sent, kept once each and bounded to the newest
//!   [`MAX_STORED_MESSAGES`](super::MAX_STORED_MESSAGES).
//!
//! Migration 3 (consumables):
//! - `slots(slot PRIMARY KEY, level, armed, open_tx)`: a slot's durable state; a slot
//!   without a row is full.
//! - `orders(tx_id PRIMARY KEY, counter UNIQUE, ..., state, envelope, payload_sha256)`:
//!   replenishment orders; `envelope` is NULL until the uplink signs the order. Never
//!   deleted or evicted. `meta.next_tx_counter` numbers them; `meta.auto_reorder` caches
//!   the policy pushed by the cloud (absent until one arrives).
//!
//! Every write is one `BEGIN IMMEDIATE` transaction, so the writer lock is taken before
//! anything is read and two processes never interleave. `busy_timeout` lets the CLI and
//! the daemon wait for each other instead of failing.

use super::*;
use crate::consumables::{must_order, new_tx_id, OrderState, SlotConfig};
use rollcall_shared::payload::{DeviceMessage, TxStatus};
use rollcall_shared::{Clock, Currency, Sku};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Numbered schema migrations; `PRAGMA user_version` is how many have run.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value
) WITHOUT ROWID;
CREATE TABLE reports (
    report_seq    INTEGER PRIMARY KEY,
    created_at_ms INTEGER NOT NULL,
    events        INTEGER NOT NULL
);
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY,
    body           TEXT    NOT NULL,
    bytes          INTEGER NOT NULL,
    recorded_at_ms INTEGER NOT NULL,
    report_seq     INTEGER REFERENCES reports(report_seq)
);
CREATE INDEX events_by_report ON events(report_seq, seq);
INSERT INTO meta(key, value) VALUES
    ('next_seq', 1), ('next_report_seq', 1), ('event_count', 0), ('event_bytes', 0),
    ('evictions', 0), ('rejected_full', 0), ('rejected_by_cloud', 0), ('session', 0);
"#,
    r#"
CREATE TABLE messages (
    n              INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    title          TEXT    NOT NULL,
    body           TEXT    NOT NULL,
    received_at_ms INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE slots (
    slot    TEXT PRIMARY KEY NOT NULL,
    level   INTEGER NOT NULL,
    armed   INTEGER NOT NULL,
    open_tx TEXT,
    delivered_tx TEXT
) WITHOUT ROWID;
CREATE TABLE orders (
    tx_id          TEXT PRIMARY KEY NOT NULL,
    counter        INTEGER NOT NULL UNIQUE,
    slot           TEXT NOT NULL,
    sku            TEXT NOT NULL,
    qty            INTEGER NOT NULL,
    unit_price     INTEGER NOT NULL,
    currency       TEXT NOT NULL,
    level          INTEGER NOT NULL,
    threshold      INTEGER NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    state          TEXT NOT NULL,
    reason         TEXT,
    envelope       BLOB,
    payload_sha256 TEXT,
    ledger_index   INTEGER,
    updated_at_ms  INTEGER NOT NULL,
    refilled       TEXT
) WITHOUT ROWID;
INSERT INTO meta(key, value) VALUES ('next_tx_counter', 1);
"#,
];

/// How long a writer waits for the other process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The outbox in a SQLite file (WAL, `synchronous=FULL`).
pub struct SqliteOutbox {
    conn: Mutex<Connection>,
    limits: OutboxLimits,
    clock: Arc<dyn Clock>,
    path: PathBuf,
    consumables: Option<Arc<Consumables>>,
}

impl std::fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOutbox")
            .field("path", &self.path)
            .field("limits", &self.limits)
            .finish()
    }
}

impl SqliteOutbox {
    /// Opens (creating and migrating if needed) the outbox at `path`.
    pub fn open(
        path: &Path,
        limits: OutboxLimits,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OutboxError> {
        let open_err = |source| OutboxError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let mode = rollcall_shared::sqlite::enable_wal(&conn, BUSY_TIMEOUT).map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), %mode, "SQLite refused WAL mode");
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        migrate(&mut conn, path)?;
        Ok(Self {
            conn: Mutex::new(conn),
            limits,
            clock,
            path: path.to_owned(),
            consumables: None,
        })
    }

    /// Tracks `consumables`: appends drain their slots and create orders (see
    /// [`crate::consumables`]).
    pub fn with_consumables(mut self, consumables: Arc<Consumables>) -> Self {
        self.consumables = Some(consumables);
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with_tx<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, OutboxError>,
    ) -> Result<T, OutboxError> {
        let mut conn = self.conn.lock().expect("outbox connection lock");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), OutboxError> {
    let known = MIGRATIONS.len() as i64;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == known {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Re-read under the write lock: another process may have migrated meanwhile.
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > known {
        return Err(OutboxError::SchemaTooNew {
            path: path.to_owned(),
            found: version,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()?;
    Ok(())
}

fn meta_get(tx: &Connection, key: &str) -> Result<i64, OutboxError> {
    tx.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
        r.get::<_, i64>(0)
    })
    .optional()?
    .ok_or_else(|| OutboxError::Corrupt(format!("meta key {key} is missing")))
}

fn meta_opt(tx: &Connection, key: &str) -> Result<Option<i64>, OutboxError> {
    Ok(tx
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .optional()?
        .flatten())
}

fn meta_add(tx: &Connection, key: &str, delta: i64) -> Result<(), OutboxError> {
    tx.execute(
        "UPDATE meta SET value = value + ?2 WHERE key = ?1",
        params![key, delta],
    )?;
    Ok(())
}

fn meta_set(tx: &Connection, key: &str, value: impl rusqlite::ToSql) -> Result<(), OutboxError> {
    tx.execute("INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value", params![key, value])?;
    Ok(())
}

fn decode(body: &str) -> Result<UsageEvent, OutboxError> {
    serde_json::from_str(body)
        .map_err(|e| OutboxError::Corrupt(format!("stored event does not decode: {e}")))
}

fn from_ms(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

fn corrupt(what: &str) -> impl Fn(rollcall_shared::IdError) -> OutboxError + '_ {
    move |e| OutboxError::Corrupt(format!("{what}: {e}"))
}

fn load_slot(tx: &Connection, cfg: &SlotConfig) -> Result<SlotState, OutboxError> {
    type SlotRow = (i64, bool, Option<String>, Option<String>);
    let row: Option<SlotRow> = tx
        .prepare_cached("SELECT level, armed, open_tx, delivered_tx FROM slots WHERE slot = ?1")?
        .query_row([cfg.slot.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let id = |v: Option<String>, what| {
        v.map(|o| TxId::parse(&o))
            .transpose()
            .map_err(corrupt(what))
    };
    Ok(match row {
        Some((level, armed, open, delivered)) => SlotState {
            slot: cfg.slot.clone(),
            level,
            armed,
            open_tx: id(open, "slots.open_tx")?,
            delivered_tx: id(delivered, "slots.delivered_tx")?,
        },
        None => SlotState {
            slot: cfg.slot.clone(),
            level: i64::from(cfg.capacity),
            armed: true,
            open_tx: None,
            delivered_tx: None,
        },
    })
}

fn save_slot(tx: &Connection, st: &SlotState) -> Result<(), OutboxError> {
    tx.prepare_cached(
        "INSERT INTO slots (slot, level, armed, open_tx, delivered_tx) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(slot) DO UPDATE SET level = excluded.level, armed = excluded.armed,
             open_tx = excluded.open_tx, delivered_tx = excluded.delivered_tx",
    )?
    .execute(params![
        st.slot.as_str(),
        st.level,
        st.armed,
        st.open_tx.as_ref().map(|t| t.as_str()),
        st.delivered_tx.as_ref().map(|t| t.as_str())
    ])?;
    Ok(())
}

const ORDER_COLUMNS: &str = "tx_id, counter, slot, sku, qty, unit_price, currency, level, threshold, created_at_ms, state, reason, payload_sha256, ledger_index, updated_at_ms, refilled";

fn order_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<OrderRecord, OutboxError>> {
    let tx_id: String = r.get(0)?;
    let slot: String = r.get(2)?;
    let sku: String = r.get(3)?;
    let currency: String = r.get(6)?;
    let state: String = r.get(10)?;
    let (created, updated): (i64, i64) = (r.get(9)?, r.get(14)?);
    let (counter, qty, unit_price, level, threshold): (i64, i64, i64, i64, i64) =
        (r.get(1)?, r.get(4)?, r.get(5)?, r.get(7)?, r.get(8)?);
    let (reason, sha, idx): (Option<String>, Option<String>, Option<i64>) =
        (r.get(11)?, r.get(12)?, r.get(13)?);
    let refilled: Option<String> = r.get(15)?;
    Ok((|| {
        Ok(OrderRecord {
            tx_id: TxId::parse(&tx_id).map_err(corrupt("orders.tx_id"))?,
            counter: counter as u64,
            slot: SlotId::parse(&slot).map_err(corrupt("orders.slot"))?,
            sku: Sku::parse(&sku).map_err(corrupt("orders.sku"))?,
            qty: qty as u32,
            unit_price,
            currency: Currency::parse(&currency).map_err(corrupt("orders.currency"))?,
            level,
            threshold,
            created_at: from_ms(created).unwrap_or_default(),
            state: OrderState::parse(&state)
                .ok_or_else(|| OutboxError::Corrupt(format!("orders.state {state:?}")))?,
            reason,
            payload_sha256: sha,
            ledger_index: idx.map(|i| i as u64),
            updated_at: from_ms(updated).unwrap_or_default(),
            refilled: refilled
                .map(|t| TxId::parse(&t))
                .transpose()
                .map_err(corrupt("orders.refilled"))?,
        })
    })())
}

fn query_orders(
    conn: &Connection,
    filter: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<OrderRecord>, OutboxError> {
    let mut st = conn.prepare_cached(&format!("SELECT {ORDER_COLUMNS} FROM orders {filter}"))?;
    let rows = st.query_map(params, order_row)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r??);
    }
    Ok(out)
}

/// Drains the slots `kind` uses and creates the orders that are due (inside `tx`).
fn drain(
    tx: &Connection,
    c: &Consumables,
    kind: &EventKind,
    qty: u32,
    now_ms: i64,
) -> Result<(), OutboxError> {
    let opted_in = meta_opt(tx, "auto_reorder")?.map_or(c.auto_reorder, |v| v != 0);
    for (cfg, units) in c.drain(kind, qty) {
        let mut st = load_slot(tx, cfg)?;
        st.level -= units;
        if must_order(cfg, &st, opted_in) {
            let counter = meta_get(tx, "next_tx_counter")?;
            meta_add(tx, "next_tx_counter", 1)?;
            let tx_id = new_tx_id();
            tx.prepare_cached(
                "INSERT INTO orders (tx_id, counter, slot, sku, qty, unit_price, currency, level, threshold,
                     created_at_ms, state, updated_at_ms, refilled)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending', ?10, ?11)",
            )?
            .execute(params![
                tx_id.as_str(),
                counter,
                cfg.slot.as_str(),
                cfg.sku.as_str(),
                cfg.reorder_qty,
                cfg.unit_price,
                cfg.currency.as_str(),
                st.level,
                i64::from(cfg.threshold),
                now_ms,
                st.delivered_tx.take().map(|t| t.to_string())
            ])?;
            st.open_tx = Some(tx_id);
            st.armed = false;
        }
        save_slot(tx, &st)?;
    }
    Ok(())
}

impl Outbox for SqliteOutbox {
    fn append(&self, event: NewEvent) -> Result<Seq, OutboxError> {
        let now_ms = self.now_ms();
        let limits = self.limits;
        // Refusals must be counted durably, so the transaction commits and the error is
        // returned afterwards.
        self.with_tx(|tx| {
            let next = meta_get(tx, "next_seq")?;
            let seq = Seq::new(next as u64).map_err(|e| OutboxError::Corrupt(e.to_string()))?;
            let (_, body) = event.with_seq(seq);
            let size = body.len() as u64;
            let mut count = meta_get(tx, "event_count")? as u64;
            let mut bytes = meta_get(tx, "event_bytes")? as u64;
            if let Some(full) = breaks_limit(&limits, count, bytes, size) {
                // Decide before touching anything: evicting only helps if the new event
                // fits once every unsent event is gone (invariant 5).
                let left = match limits.when_full {
                    FullPolicy::Reject => Some(full),
                    FullPolicy::DropOldest => {
                        let (inflight_count, inflight_bytes) = tx.query_row(
                            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM events WHERE report_seq IS NOT NULL",
                            [],
                            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
                        )?;
                        breaks_limit(&limits, inflight_count, inflight_bytes, size)
                    }
                };
                if let Some((limit, max)) = left {
                    meta_add(tx, "rejected_full", 1)?;
                    return Ok(Err(OutboxError::Full { limit, max }));
                }
            }
            while breaks_limit(&limits, count, bytes, size).is_some() {
                let (victim_seq, victim_bytes) = tx
                    .query_row(
                        "SELECT seq, bytes FROM events WHERE report_seq IS NULL ORDER BY seq LIMIT 1",
                        [],
                        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                    )
                    .optional()?
                    // Returning an error rolls the evictions back.
                    .ok_or_else(|| {
                        OutboxError::Corrupt("the event counters disagree with the events".into())
                    })?;
                tx.execute("DELETE FROM events WHERE seq = ?1", [victim_seq])?;
                count -= 1;
                bytes -= victim_bytes as u64;
                meta_add(tx, "evictions", 1)?;
                meta_add(tx, "event_count", -1)?;
                meta_add(tx, "event_bytes", -victim_bytes)?;
            }
            tx.execute(
                "INSERT INTO events(seq, body, bytes, recorded_at_ms, report_seq) VALUES (?1, ?2, ?3, ?4, NULL)",
                params![next, body, size as i64, now_ms],
            )?;
            if let Some(c) = &self.consumables {
                drain(tx, c, &event.kind, event.qty, now_ms)?;
            }
            meta_add(tx, "next_seq", 1)?;
            meta_add(tx, "event_count", 1)?;
            meta_add(tx, "event_bytes", size as i64)?;
            Ok(Ok(seq))
        })?
    }

    fn build_report(
        &self,
        max_events: usize,
        max_body_bytes: usize,
    ) -> Result<Option<ReportBatch>, OutboxError> {
        {
            // Cheap read first: most ticks find nothing and need no write lock.
            let conn = self.conn.lock().expect("outbox connection lock");
            let any: bool = conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM events WHERE report_seq IS NULL)",
                [],
                |r| r.get(0),
            )?;
            if !any {
                return Ok(None);
            }
        }
        let now_ms = self.now_ms();
        self.with_tx(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT seq, body FROM events WHERE report_seq IS NULL ORDER BY seq LIMIT CAST(?1 AS INTEGER)",
            )?;
            let rows: Vec<(i64, String)> = stmt
                .query_map([max_events.max(1) as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let n = fit_budget(
                rows.iter().map(|(_, b)| b.len()),
                max_events,
                max_body_bytes,
            );
            if n == 0 {
                return Ok(None);
            }
            let rows = &rows[..n];
            let report_seq = meta_get(tx, "next_report_seq")?;
            meta_add(tx, "next_report_seq", 1)?;
            tx.execute(
                "INSERT INTO reports(report_seq, created_at_ms, events) VALUES (?1, ?2, ?3)",
                params![report_seq, now_ms, n as i64],
            )?;
            let last_seq = rows[n - 1].0;
            tx.execute(
                "UPDATE events SET report_seq = ?1 WHERE report_seq IS NULL AND seq <= ?2",
                params![report_seq, last_seq],
            )?;
            let events = rows
                .iter()
                .map(|(_, b)| decode(b))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(ReportBatch {
                report_seq: report_seq as u64,
                events,
            }))
        })
    }

    fn inflight_reports(&self) -> Result<Vec<u64>, OutboxError> {
        let conn = self.conn.lock().expect("outbox connection lock");
        let mut stmt = conn.prepare_cached("SELECT report_seq FROM reports ORDER BY report_seq")?;
        let out = stmt
            .query_map([], |r| r.get::<_, i64>(0))?
            .map(|r| r.map(|v| v as u64))
            .collect::<Result<_, _>>()?;
        Ok(out)
    }

    fn report_events(&self, report_seq: u64) -> Result<Vec<UsageEvent>, OutboxError> {
        let conn = self.conn.lock().expect("outbox connection lock");
        let mut stmt =
            conn.prepare_cached("SELECT body FROM events WHERE report_seq = ?1 ORDER BY seq")?;
        let bodies: Vec<String> = stmt
            .query_map([report_seq as i64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        bodies.iter().map(|b| decode(b)).collect()
    }

    fn ack(&self, report_seq: u64, status: AckStatus) -> Result<AckOutcome, OutboxError> {
        let now_ms = self.now_ms();
        self.with_tx(|tx| {
            let known = tx
                .query_row(
                    "SELECT 1 FROM reports WHERE report_seq = ?1",
                    [report_seq as i64],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !known {
                return Ok(AckOutcome::UnknownReport);
            }
            let (n, bytes): (i64, i64) = tx.query_row(
                "SELECT count(*), coalesce(sum(bytes), 0) FROM events WHERE report_seq = ?1",
                [report_seq as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            tx.execute(
                "DELETE FROM events WHERE report_seq = ?1",
                [report_seq as i64],
            )?;
            tx.execute(
                "DELETE FROM reports WHERE report_seq = ?1",
                [report_seq as i64],
            )?;
            meta_add(tx, "event_count", -n)?;
            meta_add(tx, "event_bytes", -bytes)?;
            meta_set(tx, "last_ack_at_ms", now_ms)?;
            if status == AckStatus::Rejected {
                meta_add(tx, "rejected_by_cloud", 1)?;
            }
            Ok(AckOutcome::Deleted { events: n as u64 })
        })
    }

    fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let conn = self.conn.lock().expect("outbox connection lock");
        // One read transaction so the numbers agree with each other.
        let tx = conn.unchecked_transaction()?;
        let unsent: i64 = tx.query_row(
            "SELECT count(*) FROM events WHERE report_seq IS NULL",
            [],
            |r| r.get(0),
        )?;
        let inflight: i64 = tx.query_row("SELECT count(*) FROM reports", [], |r| r.get(0))?;
        let oldest_unsent: Option<i64> = tx
            .query_row(
                "SELECT recorded_at_ms FROM events WHERE report_seq IS NULL ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let oldest: Option<i64> = tx
            .query_row(
                "SELECT recorded_at_ms FROM events ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let stats = OutboxStats {
            depth: meta_get(&tx, "event_count")? as u64,
            bytes: meta_get(&tx, "event_bytes")? as u64,
            unsent: unsent as u64,
            inflight_reports: inflight as u64,
            oldest_unsent_recorded_at: oldest_unsent.and_then(from_ms),
            oldest_unacked_recorded_at: oldest.and_then(from_ms),
            evictions: meta_get(&tx, "evictions")? as u64,
            rejected_full: meta_get(&tx, "rejected_full")? as u64,
            rejected_by_cloud: meta_get(&tx, "rejected_by_cloud")? as u64,
            last_ack_at: meta_opt(&tx, "last_ack_at_ms")?.and_then(from_ms),
        };
        tx.finish()?;
        Ok(stats)
    }

    fn next_session(&self) -> Result<u64, OutboxError> {
        self.with_tx(|tx| {
            meta_add(tx, "session", 1)?;
            Ok(meta_get(tx, "session")? as u64)
        })
    }

    fn set_daemon_state(&self, state: &DaemonState) -> Result<(), OutboxError> {
        let json = serde_json::to_string(state).expect("daemon state serialises");
        self.with_tx(|tx| meta_set(tx, "daemon_state", json))
    }

    fn store_message(&self, m: &DeviceMessage) -> Result<bool, OutboxError> {
        let now = self.now_ms();
        self.with_tx(|tx| {
            let n = tx.execute(
                "INSERT INTO messages (id, title, body, received_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(id) DO NOTHING",
                rusqlite::params![m.id, m.title, m.body, now],
            )?;
            tx.execute(
                "DELETE FROM messages WHERE n <= (SELECT MAX(n) FROM messages) - ?1",
                [super::MAX_STORED_MESSAGES as i64],
            )?;
            Ok(n == 1)
        })
    }

    fn messages(&self) -> Result<Vec<super::StoredMessage>, OutboxError> {
        let conn = self.conn.lock().expect("outbox connection lock");
        let mut st =
            conn.prepare("SELECT id, title, body, received_at_ms FROM messages ORDER BY n DESC")?;
        let rows = st.query_map([], |r| {
            Ok(super::StoredMessage {
                id: r.get(0)?,
                title: r.get(1)?,
                body: r.get(2)?,
                received_at: chrono::DateTime::from_timestamp_millis(r.get(3)?).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn daemon_state(&self) -> Result<Option<DaemonState>, OutboxError> {
        let conn = self.conn.lock().expect("outbox connection lock");
        let json: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'daemon_state'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|e| OutboxError::Corrupt(format!("daemon state: {e}")))
        })
        .transpose()
    }

    fn consumables(&self) -> Option<&Consumables> {
        self.consumables.as_deref()
    }

    fn slots(&self) -> Result<Vec<SlotState>, OutboxError> {
        let Some(c) = &self.consumables else {
            return Ok(Vec::new());
        };
        let conn = self.conn.lock().expect("outbox connection lock");
        c.slots.iter().map(|cfg| load_slot(&conn, cfg)).collect()
    }

    fn refill(&self, slot: &SlotId, qty: Option<u32>) -> Result<SlotState, OutboxError> {
        let cfg = self
            .consumables
            .as_ref()
            .and_then(|c| c.slot(slot))
            .ok_or_else(|| OutboxError::UnknownSlot(slot.to_string()))?
            .clone();
        let now_ms = self.now_ms();
        self.with_tx(|tx| {
            let mut st = load_slot(tx, &cfg)?;
            let cap = i64::from(cfg.capacity);
            st.level = match qty {
                Some(q) => (st.level + i64::from(q)).min(cap),
                None => cap,
            };
            st.armed = true;
            if let Some(open) = st.open_tx.clone() {
                let state: Option<String> = tx
                    .query_row("SELECT state FROM orders WHERE tx_id = ?1", [open.as_str()], |r| r.get(0))
                    .optional()?;
                match state.as_deref().and_then(OrderState::parse) {
                    Some(OrderState::Accepted) => {
                        tx.execute(
                            "UPDATE orders SET state = 'delivered', updated_at_ms = ?2 WHERE tx_id = ?1",
                            params![open.as_str(), now_ms],
                        )?;
                        st.delivered_tx = st.open_tx.take();
                    }
                    Some(OrderState::HeldForConfirmation) | None => st.open_tx = None,
                    Some(_) => {}
                }
            }
            save_slot(tx, &st)?;
            Ok(st)
        })
    }

    fn set_policy(&self, auto_reorder: bool, sent_at: DateTime<Utc>) -> Result<bool, OutboxError> {
        let sent_at_us = sent_at.timestamp_micros();
        self.with_tx(|tx| {
            if meta_opt(tx, "policy_sent_at_us")?.is_some_and(|kept| sent_at_us <= kept) {
                return Ok(false);
            }
            meta_set(tx, "auto_reorder", i64::from(auto_reorder))?;
            meta_set(tx, "policy_sent_at_us", sent_at_us)?;
            Ok(true)
        })
    }

    fn policy(&self) -> Result<Option<bool>, OutboxError> {
        let conn = self.conn.lock().expect("outbox connection lock");
        Ok(meta_opt(&conn, "auto_reorder")?.map(|v| v != 0))
    }

    fn orders(&self) -> Result<Vec<OrderRecord>, OutboxError> {
        let conn = self.conn.lock().expect("outbox connection lock");
        query_orders(&conn, "ORDER BY counter DESC", [])
    }

    fn unsigned_orders(&self) -> Result<Vec<OrderRecord>, OutboxError> {
        let conn = self.conn.lock().expect("outbox connection lock");
        query_orders(&conn, "WHERE envelope IS NULL ORDER BY counter", [])
    }

    fn store_envelope(
        &self,
        tx_id: &TxId,
        envelope: &[u8],
        payload_sha256: &str,
    ) -> Result<(), OutboxError> {
        self.with_tx(|tx| {
            tx.execute(
                "UPDATE orders SET envelope = ?2, payload_sha256 = ?3 WHERE tx_id = ?1 AND envelope IS NULL",
                params![tx_id.as_str(), envelope, payload_sha256],
            )?;
            Ok(())
        })
    }

    fn unreceipted(&self) -> Result<Vec<(TxId, Vec<u8>)>, OutboxError> {
        let conn = self.conn.lock().expect("outbox connection lock");
        let mut st = conn.prepare_cached(
            "SELECT tx_id, envelope FROM orders WHERE state = 'pending' AND envelope IS NOT NULL ORDER BY counter",
        )?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (id, env) = r?;
            out.push((TxId::parse(&id).map_err(corrupt("orders.tx_id"))?, env));
        }
        Ok(out)
    }

    fn apply_receipt(&self, receipt: &Receipt) -> Result<ReceiptOutcome, OutboxError> {
        let now_ms = self.now_ms();
        self.with_tx(|tx| {
            let row: Option<(String, Option<String>, String)> = tx
                .query_row(
                    "SELECT state, payload_sha256, slot FROM orders WHERE tx_id = ?1",
                    [receipt.tx_id.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((state, sha, slot)) = row else {
                return Ok(ReceiptOutcome::UnknownOrder);
            };
            if sha.as_deref() != Some(receipt.tx_sha256.as_str()) {
                return Ok(ReceiptOutcome::Mismatch);
            }
            let state = OrderState::parse(&state)
                .ok_or_else(|| OutboxError::Corrupt(format!("orders.state {state:?}")))?;
            let Some(next) = state.after_receipt(receipt.status) else {
                return Ok(ReceiptOutcome::Unchanged);
            };
            tx.execute(
                "UPDATE orders SET state = ?2, reason = ?3, ledger_index = ?4, updated_at_ms = ?5 WHERE tx_id = ?1",
                params![
                    receipt.tx_id.as_str(),
                    next.as_str(),
                    receipt.reason,
                    receipt.ledger_index as i64,
                    now_ms
                ],
            )?;
            if next.is_final() {
                tx.execute(
                    "UPDATE slots SET open_tx = NULL WHERE slot = ?1 AND open_tx = ?2",
                    params![slot, receipt.tx_id.as_str()],
                )?;
            }
            Ok(ReceiptOutcome::Applied(next))
        })
    }

    fn open_orders(&self) -> Result<Vec<OpenOrder>, OutboxError> {
        let conn = self.conn.lock().expect("outbox connection lock");
        let mut st = conn.prepare_cached(
            "SELECT tx_id, state FROM orders WHERE state IN ('accepted', 'held_for_confirmation')
             ORDER BY counter",
        )?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (id, state) = r?;
            let status = match OrderState::parse(&state) {
                Some(OrderState::Accepted) => TxStatus::Accepted,
                Some(OrderState::HeldForConfirmation) => TxStatus::HeldForConfirmation,
                _ => return Err(OutboxError::Corrupt(format!("orders.state {state:?}"))),
            };
            out.push(OpenOrder {
                tx_id: TxId::parse(&id).map_err(corrupt("orders.tx_id"))?,
                status,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_shared::SystemClock;

    #[test]
    fn the_database_uses_wal_full_sync_and_the_latest_schema() {
        let dir = tempfile::tempdir().unwrap();
        let o = SqliteOutbox::open(
            &dir.path().join("o.sqlite"),
            OutboxLimits::default(),
            Arc::new(SystemClock),
        )
        .unwrap();
        let conn = o.conn.lock().unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL");
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.sqlite");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let e =
            SqliteOutbox::open(&path, OutboxLimits::default(), Arc::new(SystemClock)).unwrap_err();
        assert!(
            matches!(e, OutboxError::SchemaTooNew { found: 99, .. }),
            "{e}"
        );
    }
}

//! The outbox: usage events recorded on the device and not yet acknowledged by the cloud.
//!
//! # Invariants
//!
//! 1. **What is stored.** One entry per usage event, holding the event exactly as it will
//!    travel (its [`UsageEvent`] JSON), the agent-clock time it was recorded, and the
//!    report it belongs to (none until the uplink batches it). Counters live beside it:
//!    next seq, next report seq, evictions, refusals, reports rejected by the cloud, last
//!    ack time, the connection session counter and the daemon's last written state.
//! 2. **Identity.** `seq` is assigned here from a persisted counter, in the same
//!    (SQLite: `BEGIN IMMEDIATE`) transaction as the insert, so the CLI and the daemon
//!    appending at the same time never get the same seq, and a seq is never reused, even
//!    after its row is deleted. `(device_id, seq)` is the key the cloud deduplicates on.
//! 3. **Reports are fixed once built.** [`Outbox::build_report`] takes the oldest events
//!    not yet in a report and assigns them the next `report_seq` (a persisted counter) in
//!    one transaction. Membership never changes afterwards, so an agent that restarts
//!    re-sends exactly the same events under the same `report_seq`.
//! 4. **Delete only after the cloud's ack.** [`Outbox::ack`] is the only way an event
//!    leaves normally: it runs when the cloud's signed application-level ack for the report
//!    arrives (`stored`, `duplicate` or `rejected`). A broker PUBACK, or `publish()`
//!    returning `Ok`, deletes nothing. Acking an unknown report changes nothing.
//! 5. **Size limits.** `max_events` and `max_bytes` (the sum of stored event bodies) are
//!    checked on every append. Under [`FullPolicy::Reject`] the new event is refused with
//!    [`OutboxError::Full`] and counted in `rejected_full`. Under [`FullPolicy::DropOldest`]
//!    the oldest events *not in any report* are evicted (and counted in `evictions`) until
//!    the new one fits; events in flight are never evicted. Whether the new event can fit
//!    is decided *before* anything is evicted: when it would not fit even with every
//!    unsent event gone (the events in flight plus the new one break a limit), it is
//!    refused as under `Reject` and nothing is evicted, in the same transaction.
//! 6. **Order.** Seqs grow with insertion and reports take the oldest unsent events, so the
//!    unsent events are always the newest ones, and reports hold increasing,
//!    non-overlapping seq ranges (what `UsageReport::validate` requires).
//! 7. **Durability** (SQLite). WAL with `synchronous=FULL`: `append` returns after the
//!    commit is on disk, so a `record` that printed its seq survives a power cut.
//! 8. **Consumables and orders** (when the outbox is given [`Consumables`]). `append`
//!    drains the slots the event's kind uses and creates replenishment orders, in the same
//!    transaction as the event (rules in [`crate::consumables`]). Orders live beside the
//!    events, keyed by `tx_id`, with a persisted per-device counter; they are **never
//!    evicted** and do not count against `max_events`/`max_bytes`. An order is signed once
//!    ([`Outbox::store_envelope`]); afterwards exactly those bytes are re-sent until a
//!    receipt for them arrives. Orders are kept after their final state, as the device's
//!    history (`rollcall-agent orders`). Orders with a receipt but no final state are
//!    listed in every online status ([`Outbox::open_orders`]) so the cloud can repair a
//!    lost receipt. The reorder policy pushed by the cloud is kept
//!    with the cloud time its downlink was sent at; a policy not sent later than the one
//!    kept is ignored (a replayed old policy, or two cloud workers' pushes crossing).
//!
//! # Implementations
//!
//! - [`SqliteOutbox`]: the daemon's and the CLI's, one file per device, schema in numbered
//!   migrations (`PRAGMA user_version`). Its calls block on disk: async code calls it via
//!   `spawn_blocking` (see [`Outbox::may_block`]).
//! - [`MemoryOutbox`]: the same rules in memory, for simulating thousands of agents in one
//!   process and for tests.

mod memory;
mod sqlite;

#[cfg(test)]
mod suite;

pub use memory::MemoryOutbox;
pub use sqlite::SqliteOutbox;

use crate::consumables::{Consumables, OrderRecord, ReceiptOutcome, SlotState};
use chrono::{DateTime, Utc};
use rollcall_shared::ids::{EventKind, Seq, SlotId, TxId};
use rollcall_shared::payload::{AckStatus, DeviceMessage, OpenOrder, Receipt, UsageEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Why an outbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The outbox is at a configured limit and the event was refused.
    #[error("outbox full: {limit} = {max} reached; the event was not recorded")]
    Full {
        /// The configuration key of the limit reached (`outbox.max_events` or `outbox.max_bytes`).
        limit: &'static str,
        /// Its value.
        max: u64,
    },
    /// The database could not be opened or prepared.
    #[error("{}: cannot open the outbox: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// The database was written by a newer agent.
    #[error("{}: outbox schema version {found} is newer than this agent understands ({known})", path.display())]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// A database operation failed (disk, lock timeout, ...). Retrying may help.
    #[error("outbox database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value does not decode: the database was damaged or edited by hand.
    #[error("outbox data is corrupt: {0}")]
    Corrupt(String),
    /// No such consumable slot in the configuration.
    #[error("no consumable slot {0:?} is configured")]
    UnknownSlot(String),
}

/// What to do with a new event when the outbox is at a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Refuse the new event.
    #[default]
    Reject,
    /// Evict the oldest events not in flight to make room.
    DropOldest,
}

/// Size limits of an outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Most events held.
    pub max_events: u64,
    /// Most bytes of event bodies held.
    pub max_bytes: u64,
    /// What to do at a limit.
    pub when_full: FullPolicy,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        Self {
            max_events: 1_000_000,
            max_bytes: 256 * 1024 * 1024,
            when_full: FullPolicy::Reject,
        }
    }
}

/// An event to append; the outbox gives it its seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// What happened.
    pub kind: EventKind,
    /// How much (1..=`MAX_QTY`).
    pub qty: u32,
    /// When, by the device clock.
    pub occurred_at: DateTime<Utc>,
    /// Validated attributes.
    pub attrs: BTreeMap<String, String>,
    /// The device clock was not believable when it was recorded.
    pub clock_suspect: bool,
}

impl NewEvent {
    /// The event as it will travel, with its seq, and its JSON body.
    fn with_seq(&self, seq: Seq) -> (UsageEvent, String) {
        let ev = UsageEvent {
            seq,
            kind: self.kind.clone(),
            qty: self.qty,
            occurred_at: self.occurred_at,
            attrs: self.attrs.clone(),
            clock_suspect: self.clock_suspect,
        };
        let body = serde_json::to_string(&ev).expect("events serialise");
        (ev, body)
    }
}

/// A report's fixed membership: its number and its events, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportBatch {
    /// The report's number (starts at 1, never reused).
    pub report_seq: u64,
    /// Its events in increasing seq order.
    pub events: Vec<UsageEvent>,
}

/// What an ack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The report's events were deleted.
    Deleted {
        /// How many.
        events: u64,
    },
    /// No such report in flight (already acked, or never built): nothing changed.
    UnknownReport,
}

/// Counters and gauges of an outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    /// Events held (not yet acknowledged).
    pub depth: u64,
    /// Bytes of event bodies held.
    pub bytes: u64,
    /// Events not yet in any report.
    pub unsent: u64,
    /// Reports built and not yet acknowledged.
    pub inflight_reports: u64,
    /// When the oldest unsent event was recorded (agent clock).
    pub oldest_unsent_recorded_at: Option<DateTime<Utc>>,
    /// When the oldest unacknowledged event was recorded (agent clock).
    pub oldest_unacked_recorded_at: Option<DateTime<Utc>>,
    /// Events evicted under `drop_oldest`, ever.
    pub evictions: u64,
    /// Events refused because the outbox was full, ever.
    pub rejected_full: u64,
    /// Reports the cloud acknowledged as `rejected`, ever.
    pub rejected_by_cloud: u64,
    /// When the cloud last acknowledged a report (agent clock).
    pub last_ack_at: Option<DateTime<Utc>>,
}

/// The daemon's connection state as last written by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Connected to the broker.
    Connected,
    /// Running but not connected.
    Disconnected,
    /// Shut down cleanly.
    Stopped,
}

/// What the daemon writes about itself for `status` to read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonState {
    /// Connection state.
    pub state: ConnectionState,
    /// The daemon's process id.
    pub pid: u32,
    /// When this was written (agent clock).
    pub at: DateTime<Utc>,
    /// The connection session counter in use.
    pub session: u64,
    /// Successful reconnects since the daemon started.
    pub reconnects: u64,
}

/// Most display messages an outbox keeps.
pub const MAX_STORED_MESSAGES: usize = 100;

/// A display message from the cloud, as kept on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredMessage {
    /// The cloud's id for it.
    pub id: String,
    /// Title.
    pub title: String,
    /// Text.
    pub body: String,
    /// When it arrived (agent clock).
    pub received_at: DateTime<Utc>,
}

/// Durable store of unacknowledged usage events. See the module doc for the invariants
/// every implementation keeps.
pub trait Outbox: Send + Sync {
    /// Stores one event and returns its newly assigned seq (see invariants 2 and 5).
    fn append(&self, event: NewEvent) -> Result<Seq, OutboxError>;

    /// Puts the oldest events not yet in a report into a new report and returns it, or
    /// `None` when there are none. At most `max_events` events, and at most
    /// `max_body_bytes` of event JSON including the commas between them (the caller
    /// subtracts the report's own fields from its body limit). A report always holds at
    /// least one event.
    fn build_report(
        &self,
        max_events: usize,
        max_body_bytes: usize,
    ) -> Result<Option<ReportBatch>, OutboxError>;

    /// The reports built and not yet acknowledged, oldest first.
    fn inflight_reports(&self) -> Result<Vec<u64>, OutboxError>;

    /// The events of an in-flight report, in seq order (empty when unknown).
    fn report_events(&self, report_seq: u64) -> Result<Vec<UsageEvent>, OutboxError>;

    /// Handles the cloud's ack of a report: deletes its events, records the ack time,
    /// counts `Rejected`. Unknown reports are a no-op.
    fn ack(&self, report_seq: u64, status: AckStatus) -> Result<AckOutcome, OutboxError>;

    /// Current counters.
    fn stats(&self) -> Result<OutboxStats, OutboxError>;

    /// Increments and returns the persisted connection session counter
    /// (`DeviceStatus.session`); never returns the same value twice.
    fn next_session(&self) -> Result<u64, OutboxError>;

    /// Records the daemon's state for `status`.
    fn set_daemon_state(&self, state: &DaemonState) -> Result<(), OutboxError>;

    /// The daemon's last written state, `None` if no daemon ever ran.
    fn daemon_state(&self) -> Result<Option<DaemonState>, OutboxError>;

    /// Keeps a display message from the cloud (idempotent by id; the oldest beyond
    /// [`MAX_STORED_MESSAGES`] are dropped). Returns true when the id was new.
    fn store_message(&self, message: &DeviceMessage) -> Result<bool, OutboxError>;

    /// The display messages kept, newest first.
    fn messages(&self) -> Result<Vec<StoredMessage>, OutboxError>;

    /// Whether calls may block on I/O (async callers then use `spawn_blocking`).
    fn may_block(&self) -> bool {
        true
    }

    /// The consumables this outbox tracks (none unless given).
    fn consumables(&self) -> Option<&Consumables>;

    /// The state of every configured slot (a slot never drained is full).
    fn slots(&self) -> Result<Vec<SlotState>, OutboxError>;

    /// Records a refill of `slot`: by `qty` units (capped at the capacity) or, without
    /// `qty`, to full. Re-arms the slot and marks its accepted order delivered.
    fn refill(&self, slot: &SlotId, qty: Option<u32>) -> Result<SlotState, OutboxError>;

    /// Caches the member's reorder policy as pushed by the cloud at `sent_at` (the
    /// downlink's cloud time), unless a policy sent at the same time or later is already
    /// kept: a replayed or reordered older policy must not override a newer one. Returns
    /// whether it was applied.
    fn set_policy(&self, auto_reorder: bool, sent_at: DateTime<Utc>) -> Result<bool, OutboxError>;

    /// The policy last pushed by the cloud, if any.
    fn policy(&self) -> Result<Option<bool>, OutboxError>;

    /// Every order, newest first.
    fn orders(&self) -> Result<Vec<OrderRecord>, OutboxError>;

    /// Orders created but not yet signed, oldest first.
    fn unsigned_orders(&self) -> Result<Vec<OrderRecord>, OutboxError>;

    /// Stores an order's signed envelope and the SHA-256 of its payload. Only the first
    /// call for an order stores anything.
    fn store_envelope(
        &self,
        tx_id: &TxId,
        envelope: &[u8],
        payload_sha256: &str,
    ) -> Result<(), OutboxError>;

    /// Signed orders still waiting for their first receipt, oldest first, with the exact
    /// envelope bytes to (re-)send.
    fn unreceipted(&self) -> Result<Vec<(TxId, Vec<u8>)>, OutboxError>;

    /// Applies a receipt that verified under the cloud's key.
    fn apply_receipt(&self, receipt: &Receipt) -> Result<ReceiptOutcome, OutboxError>;

    /// Orders that have had a receipt and are not final (`accepted` or
    /// `held_for_confirmation`, whether or not still their slot's open order), oldest
    /// first, each with the status of the last receipt applied: what the agent lists in its
    /// status so the cloud can re-send a receipt that was lost. Pending orders are left
    /// out (their transaction is re-sent until a receipt comes).
    fn open_orders(&self) -> Result<Vec<OpenOrder>, OutboxError>;
}

/// How many of the leading `sizes` fit `max_events` and `max_body_bytes` (bodies plus
/// one comma between each two); at least one if there is any.
fn fit_budget(
    sizes: impl IntoIterator<Item = usize>,
    max_events: usize,
    max_body_bytes: usize,
) -> usize {
    let mut used = 0usize;
    let mut n = 0usize;
    for size in sizes.into_iter().take(max_events.max(1)) {
        let add = size + usize::from(n > 0);
        if n > 0 && used + add > max_body_bytes {
            break;
        }
        used += add;
        n += 1;
    }
    n
}

/// Checks whether one more event of `size` fits; returns the limit it breaks.
fn breaks_limit(
    limits: &OutboxLimits,
    count: u64,
    bytes: u64,
    size: u64,
) -> Option<(&'static str, u64)> {
    if count + 1 > limits.max_events {
        Some(("outbox.max_events", limits.max_events))
    } else if bytes + size > limits.max_bytes {
        Some(("outbox.max_bytes", limits.max_bytes))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_commas_and_keeps_at_least_one_event() {
        assert_eq!(fit_budget([10, 10, 10], 10, 21), 2);
        assert_eq!(fit_budget([10, 10, 10], 10, 20), 1);
        assert_eq!(fit_budget([10, 10, 10], 2, 1000), 2);
        assert_eq!(fit_budget([100], 10, 5), 1);
        assert_eq!(fit_budget([], 10, 5), 0);
    }
}

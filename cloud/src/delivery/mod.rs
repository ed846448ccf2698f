//! The durable delivery queue: every message that leaves the cloud for the outside world
//! (outreach webhooks, e-mails, device display messages, and order-fulfilment webhooks)
//! goes through one SQLite table, `deliveries`, and one dispatcher.
//!
//! # Invariants
//!
//! 1. **Durable before it counts.** A delivery is a row in `deliveries`, inserted by
//!    [`enqueue`] **in the caller's transaction**, together with the business change that
//!    caused it (an outreach decision, an accepted order). Either both commit or neither.
//! 2. **Dedup key.** `idempotency_key` is `UNIQUE`: enqueueing the same key again changes
//!    nothing and returns the existing row ([`Enqueued::created`] is false). The key travels
//!    with every attempt (the webhook's `webhook-id`, the device message id, the e-mail's
//!    `Message-ID`), so receivers deduplicate retries and re-sends after a crash.
//! 3. **At least once.** The dispatcher claims due rows (`pending` with `not_before ≤ now`,
//!    `awaiting_ack` whose ack did not come, or `in_flight` whose lease expired), counts the
//!    attempt *at claim time*, delivers, then records the outcome. A cloud killed between
//!    the send and the record re-sends after restart (in-flight rows are released at
//!    start-up: one dispatcher per store); the receiver sees the same idempotency key twice
//!    and keeps one.
//! 4. **Every attempt is recorded** in `delivery_attempts` (append-only): number, start,
//!    latency, outcome, HTTP status code, error.
//! 5. **Retries** follow capped exponential backoff with jitter
//!    ([`Backoff`], by default 10 attempts over about three days). After the last attempt
//!    the row is `dead`. An HTTP `410 Gone` disables the endpoint (`delivery_endpoints`):
//!    that delivery and every later one to the endpoint go `dead` with
//!    `endpoint_disabled` until `deliveries retry` re-enables it.
//! 6. **Quiet hours hold.** A row queued with a [`QuietWindow`] (an outreach message's
//!    quiet hours in the member's zone) that falls due inside it (a retry, a re-send to a
//!    device, an expired lease, a manual retry) is not claimed: its `not_before` moves to
//!    the window's end, with `last_error` `quiet_hours: waits until …`, and no attempt is
//!    counted. A row that would be given up anyway (attempts used up, endpoint disabled)
//!    is given up first.
//! 7. **Rows are never deleted.** `delivered`, `dead` and `cancelled` are final;
//!    `deliveries retry` moves a `dead` row back to `pending` with one more attempt.
//! 8. **Size limits.** A payload is at most [`MAX_PAYLOAD_BYTES`] of JSON; keys are
//!    1–200 characters of `[A-Za-z0-9._:-]`.
//!
//! # States
//!
//! ```text
//!  enqueue ─► pending ──claim──► in_flight ──2xx / SMTP 250──────────► delivered
//!               ▲  │                 │ ├──device published──► awaiting_ack ──receipt──► delivered
//!               │  │ cancel          │ ├──error, attempts left──► pending (not_before = now + backoff)
//!               │  │ quiet hours: not_before = their end (pending / awaiting_ack; an expired
//!               │  │ lease back to pending), no attempt counted
//!               │  ▼                 │ └──last attempt / 410 / disabled──► dead
//!               │ cancelled          │
//!               └──── retry ◄──── dead
//! ```
//!
//! # Using it from other modules (orders, ledger)
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use rollcall_cloud::delivery::{self, DeliveryChannel, NewDelivery, IdempotencyKey};
//! let mut conn = rollcall_cloud::store::open_writer(std::path::Path::new("data"))?;
//! let now = chrono::Utc::now();
//! let tx = conn.transaction()?;
//! // ... the business change (append the order to the ledger) ...
//! delivery::enqueue(&tx, NewDelivery {
//!     channel: DeliveryChannel::Webhook,
//!     target: "fulfilment".into(),                       // a `[[outreach.webhooks]]` name
//!     idempotency_key: IdempotencyKey::parse("order:42:fulfil")?,
//!     payload: serde_json::json!({"type": "order.accepted", "order_id": 42}),
//!     not_before: now,
//!     purpose: "fulfilment".into(),
//!     quiet: None,                                       // no quiet hours
//! })?;
//! tx.commit()?;
//! # Ok(()) }
//! ```
//!
//! The webhook payload is posted as it is (JSON), signed per the Standard Webhooks
//! specification ([`webhook`]). A device payload is a [`DeviceMessagePayload`], an e-mail
//! payload an [`EmailPayload`]. The dispatcher ([`dispatcher::Dispatcher`]) runs in
//! `serve`; [`dispatcher::Dispatcher::dispatch_once`] is one step for tests.
//!
//! # Layout
//! - [`webhook`]: Standard Webhooks signing and verification, the SSRF guard, the sender.
//! - [`email`]: SMTP with lettre.
//! - [`device`]: display messages on the device's MQTT downlink, and the agents' receipts.
//! - [`dispatcher`]: claim → deliver → record, and its loop.
//! - [`bench`](mod@bench): the webhook throughput benchmark.

pub mod bench;
pub mod device;
pub mod dispatcher;
pub mod email;
pub mod webhook;

use crate::registry::ms_to_rfc3339;
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Largest payload accepted by [`enqueue`], in bytes of JSON.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;

/// Why a queue operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An idempotency key that is empty, too long or has odd characters.
    #[error("idempotency key {0:?} must be 1-200 characters of [A-Za-z0-9._:-]")]
    BadKey(String),
    /// A payload over [`MAX_PAYLOAD_BYTES`].
    #[error("payload is {0} bytes; the limit is {MAX_PAYLOAD_BYTES}")]
    TooLarge(usize),
    /// An id that is not in the queue.
    #[error("no delivery with id {0}")]
    NoSuchDelivery(i64),
    /// [`enqueue_in_transaction`] outside a transaction: the delivery would not commit
    /// together with the change that caused it.
    #[error("deliveries are enqueued inside the transaction of the change that causes them")]
    NotInTransaction,
    /// A status name the queue does not know.
    #[error("unknown delivery status {0:?}")]
    BadStatus(String),
}

impl From<rusqlite::Error> for DeliveryError {
    fn from(e: rusqlite::Error) -> Self {
        DeliveryError::Store(StoreError::Sqlite(e))
    }
}

/// An idempotency key: 1–200 characters of `[A-Za-z0-9._:-]`.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a key.
    pub fn parse(s: &str) -> Result<Self, DeliveryError> {
        let ok = !s.is_empty()
            && s.len() <= 200
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(DeliveryError::BadKey(s.to_owned()))
        }
    }
    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a delivery travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryChannel {
    /// JSON POST signed per Standard Webhooks; `target` names a configured webhook.
    Webhook,
    /// A display message on the device's MQTT downlink; `target` is the device id.
    Device,
    /// An e-mail over SMTP; `target` is the address.
    Email,
}

impl DeliveryChannel {
    /// Every channel.
    pub const ALL: [DeliveryChannel; 3] = [
        DeliveryChannel::Webhook,
        DeliveryChannel::Device,
        DeliveryChannel::Email,
    ];
    /// The channel's name.
    pub fn name(self) -> &'static str {
        match self {
            DeliveryChannel::Webhook => "webhook",
            DeliveryChannel::Device => "device",
            DeliveryChannel::Email => "email",
        }
    }
    /// Parses a channel name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }
}

impl fmt::Display for DeliveryChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A delivery's state (see the diagram in the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for `not_before`.
    Pending,
    /// Claimed by the dispatcher; being delivered.
    InFlight,
    /// Published to a device; waiting for its receipt.
    AwaitingAck,
    /// Delivered (final).
    Delivered,
    /// Given up (final until `deliveries retry`).
    Dead,
    /// Cancelled before it was sent (final).
    Cancelled,
}

impl DeliveryStatus {
    /// Every status.
    pub const ALL: [DeliveryStatus; 6] = [
        DeliveryStatus::Pending,
        DeliveryStatus::InFlight,
        DeliveryStatus::AwaitingAck,
        DeliveryStatus::Delivered,
        DeliveryStatus::Dead,
        DeliveryStatus::Cancelled,
    ];
    /// The status's name.
    pub fn name(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::InFlight => "in_flight",
            DeliveryStatus::AwaitingAck => "awaiting_ack",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
            DeliveryStatus::Cancelled => "cancelled",
        }
    }
    /// Parses a status name.
    pub fn parse(s: &str) -> Result<Self, DeliveryError> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| DeliveryError::BadStatus(s.to_owned()))
    }
}

/// A message to deliver.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// How it travels.
    pub channel: DeliveryChannel,
    /// Where to: a webhook name, a device id or an e-mail address.
    pub target: String,
    /// The dedup key (also the receiver's idempotency key).
    pub idempotency_key: IdempotencyKey,
    /// What to send (JSON; see the channel's payload type).
    pub payload: serde_json::Value,
    /// Not before this instant (by the injected clock). Also recorded as the creation time.
    pub not_before: DateTime<Utc>,
    /// Who asked, for reports: `outreach`, `fulfilment`, ….
    pub purpose: String,
    /// Hours in which no attempt may be made (the member's quiet hours), if any.
    pub quiet: Option<QuietWindow>,
}

/// Hours of the day, in a member's time zone, in which a delivery is never attempted: an
/// outreach message's quiet hours. The planner holds a message until they end before it
/// queues it; the window travels with the delivery so that a retry after a failure, or a
/// re-send to a device that did not acknowledge, that falls due inside the window waits
/// for its end too. Stored as `HH:MM-HH:MM IANA-zone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietWindow {
    /// The member's time zone.
    pub tz: chrono_tz::Tz,
    /// Local start.
    pub start: chrono::NaiveTime,
    /// Local end; earlier than `start` when the window spans midnight.
    pub end: chrono::NaiveTime,
}

impl QuietWindow {
    /// The stored form, `21:00-08:00 Europe/Berlin`.
    pub fn to_column(&self) -> String {
        format!(
            "{}-{} {}",
            self.start.format("%H:%M"),
            self.end.format("%H:%M"),
            self.tz.name()
        )
    }

    /// Parses [`QuietWindow::to_column`]'s form (`None` for anything else).
    pub fn parse_column(s: &str) -> Option<Self> {
        let (times, tz) = s.split_once(' ')?;
        let (start, end) = times.split_once('-')?;
        let time = |t: &str| chrono::NaiveTime::parse_from_str(t, "%H:%M").ok();
        Some(Self {
            tz: tz.parse().ok()?,
            start: time(start)?,
            end: time(end)?,
        })
    }

    /// When the window that holds `at` ends; `None` when `at` is outside it.
    pub fn ends_after(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        crate::outreach::engine::quiet_until(at, self.tz, self.start, self.end)
    }
}

/// What [`enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The delivery's id.
    pub id: i64,
    /// False when the idempotency key was already queued (nothing changed).
    pub created: bool,
}

/// Inserts a delivery in the caller's transaction (idempotent by key).
pub fn enqueue(tx: &Transaction<'_>, d: NewDelivery) -> Result<Enqueued, DeliveryError> {
    enqueue_in_transaction(tx, d)
}

/// [`enqueue`] for code that holds the connection of a transaction it opened itself
/// (a `&Transaction` derefs to it). Refuses to run outside a transaction.
pub fn enqueue_in_transaction(tx: &Connection, d: NewDelivery) -> Result<Enqueued, DeliveryError> {
    if tx.is_autocommit() {
        return Err(DeliveryError::NotInTransaction);
    }
    let payload = serde_json::to_string(&d.payload).expect("JSON values serialise");
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(DeliveryError::TooLarge(payload.len()));
    }
    let ms = d.not_before.timestamp_millis();
    let n = tx.execute(
        "INSERT INTO deliveries (channel, target, idempotency_key, purpose, payload, status, attempts,
            not_before_ms, created_ms, updated_ms, quiet)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?6, ?6, ?7)
         ON CONFLICT(idempotency_key) DO NOTHING",
        params![
            d.channel.name(),
            d.target,
            d.idempotency_key.as_str(),
            d.purpose,
            payload,
            ms,
            d.quiet.map(|q| q.to_column())
        ],
    )?;
    let id = tx.query_row(
        "SELECT id FROM deliveries WHERE idempotency_key = ?1",
        [d.idempotency_key.as_str()],
        |r| r.get(0),
    )?;
    Ok(Enqueued {
        id,
        created: n == 1,
    })
}

/// Cancels a delivery that has not been claimed yet; returns true when it was cancelled.
/// `reason` is stored in `last_error`.
pub fn cancel(
    conn: &Connection,
    id: i64,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<bool, DeliveryError> {
    let n = conn.execute(
        "UPDATE deliveries SET status = 'cancelled', last_error = ?2, updated_ms = ?3
         WHERE id = ?1 AND status = 'pending'",
        params![id, reason, now.timestamp_millis()],
    )?;
    Ok(n == 1)
}

/// Capped exponential backoff with jitter: the delay after attempt `n` (1-based) is
/// `min(max, initial · 2^(n-1))`, scaled by a random factor in `1 ± jitter`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay after the first failed attempt.
    pub initial: Duration,
    /// Cap on any delay.
    pub max: Duration,
    /// Relative jitter, 0 ≤ jitter < 1.
    pub jitter: f64,
}

impl Backoff {
    /// The nominal delay (no jitter) after attempt `n`.
    pub fn nominal(&self, n: u32) -> Duration {
        let factor = 1u64 << n.saturating_sub(1).min(40);
        let ms = (self.initial.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(ms.min(self.max.as_millis() as u64))
    }
    /// The delay after attempt `n`, with jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let base = self.nominal(n).as_secs_f64();
        let f = 1.0 + self.jitter * (2.0 * fastrand::f64() - 1.0);
        Duration::from_secs_f64((base * f).max(0.0))
    }
}

/// One delivery as `deliveries list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryView {
    /// Id.
    pub id: i64,
    /// Channel.
    pub channel: String,
    /// Target (webhook name, device id, address).
    pub target: String,
    /// Idempotency key.
    pub idempotency_key: String,
    /// Who enqueued it.
    pub purpose: String,
    /// Status.
    pub status: String,
    /// Attempts made.
    pub attempts: u32,
    /// Not before (RFC 3339): the next attempt for pending rows.
    pub not_before: String,
    /// Created.
    pub created_at: String,
    /// Delivered at, if delivered.
    pub delivered_at: Option<String>,
    /// Last HTTP status code.
    pub last_status_code: Option<u16>,
    /// Last error (or cancellation reason).
    pub last_error: Option<String>,
}

/// One recorded attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptView {
    /// Attempt number (1-based).
    pub n: u32,
    /// When it started.
    pub started_at: String,
    /// How long it took.
    pub latency_ms: u64,
    /// `delivered`, `published`, `retry`, `gone`, `dead`, `ack_timeout`, ….
    pub outcome: String,
    /// HTTP status code, if any.
    pub status_code: Option<u16>,
    /// Error, if any.
    pub error: Option<String>,
}

fn view(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryView> {
    Ok(DeliveryView {
        id: r.get(0)?,
        channel: r.get(1)?,
        target: r.get(2)?,
        idempotency_key: r.get(3)?,
        purpose: r.get(4)?,
        status: r.get(5)?,
        attempts: r.get::<_, i64>(6)? as u32,
        not_before: ms_to_rfc3339(r.get(7)?),
        created_at: ms_to_rfc3339(r.get(8)?),
        delivered_at: r.get::<_, Option<i64>>(9)?.map(ms_to_rfc3339),
        last_status_code: r.get::<_, Option<i64>>(10)?.map(|c| c as u16),
        last_error: r.get(11)?,
    })
}

const VIEW_COLUMNS: &str = "id, channel, target, idempotency_key, purpose, status, attempts, not_before_ms, created_ms, delivered_ms, last_status_code, last_error";

/// Deliveries, newest first, optionally of one status.
pub fn list(
    conn: &Connection,
    status: Option<DeliveryStatus>,
    limit: u32,
) -> Result<Vec<DeliveryView>, DeliveryError> {
    let mut st = conn.prepare(&format!(
        "SELECT {VIEW_COLUMNS} FROM deliveries WHERE ?1 IS NULL OR status = ?1 ORDER BY id DESC LIMIT CAST(?2 AS INTEGER)"
    ))?;
    let rows = st.query_map(params![status.map(|s| s.name()), limit], view)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One delivery.
pub fn get(conn: &Connection, id: i64) -> Result<Option<DeliveryView>, DeliveryError> {
    Ok(conn
        .query_row(
            &format!("SELECT {VIEW_COLUMNS} FROM deliveries WHERE id = ?1"),
            [id],
            view,
        )
        .optional()?)
}

/// The attempts of one delivery, in order.
pub fn attempts(conn: &Connection, id: i64) -> Result<Vec<AttemptView>, DeliveryError> {
    let mut st = conn.prepare(
        "SELECT n, started_ms, latency_ms, outcome, status_code, error FROM delivery_attempts
         WHERE delivery_id = ?1 ORDER BY n, id",
    )?;
    let rows = st.query_map([id], |r| {
        Ok(AttemptView {
            n: r.get::<_, i64>(0)? as u32,
            started_at: ms_to_rfc3339(r.get(1)?),
            latency_ms: r.get::<_, i64>(2)? as u64,
            outcome: r.get(3)?,
            status_code: r.get::<_, Option<i64>>(4)?.map(|c| c as u16),
            error: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// `deliveries retry ID`: a `dead` delivery, or a `pending` one waiting out a backoff, is due
/// again now with one attempt more allowed than before, and its endpoint is re-enabled if a
/// 410 had disabled it. A `pending` delivery never tried yet keeps its time: it waits on
/// purpose (a fulfilment webhook until the order's cancellation window closes).
pub fn retry(conn: &mut Connection, id: i64, now: DateTime<Utc>) -> Result<(), DeliveryError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let row: Option<(String, String, String)> = tx
        .query_row(
            "SELECT channel, target, status FROM deliveries WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((channel, target, status)) = row else {
        return Err(DeliveryError::NoSuchDelivery(id));
    };
    if matches!(status.as_str(), "dead" | "pending") {
        // One attempt more than the ones made so far, whatever the configured number.
        tx.execute(
            "UPDATE deliveries SET status = 'pending', updated_ms = ?2,
                not_before_ms = CASE WHEN status = 'pending' AND attempts = 0
                                     THEN MAX(not_before_ms, ?2) ELSE ?2 END,
                extra_attempts = extra_attempts + 1 WHERE id = ?1",
            params![id, now.timestamp_millis()],
        )?;
        tx.execute(
            "DELETE FROM delivery_endpoints WHERE channel = ?1 AND target = ?2",
            params![channel, target],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// Counts of deliveries per status.
pub fn counts(conn: &Connection) -> Result<std::collections::BTreeMap<String, u64>, DeliveryError> {
    let mut st = conn.prepare("SELECT status, COUNT(*) FROM deliveries GROUP BY status")?;
    let mut out = std::collections::BTreeMap::new();
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (s, n) = row?;
        out.insert(s, n as u64);
    }
    Ok(out)
}

/// A display message for a device (the payload of a [`DeliveryChannel::Device`] delivery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceMessagePayload {
    /// Short title.
    pub title: String,
    /// The text.
    pub body: String,
}

/// An e-mail (the payload of a [`DeliveryChannel::Email`] delivery; the target is the address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailPayload {
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// The member's opt-out URL, sent as `List-Unsubscribe` with
    /// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058), so that mail
    /// clients offer their own unsubscribe button; marketing messages only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_backoff_spreads_ten_attempts_over_about_three_days() {
        let b = crate::config::DeliveryConfig::default().backoff();
        let total: Duration = (1..10).map(|n| b.nominal(n)).sum();
        let days = total.as_secs_f64() / 86_400.0;
        assert!((2.5..3.5).contains(&days), "{days}");
        for n in 1..20 {
            let d = b.delay(n).as_secs_f64();
            let nominal = b.nominal(n).as_secs_f64();
            assert!(d >= nominal * 0.79 && d <= nominal * 1.21);
        }
        assert_eq!(b.nominal(30), b.max);
    }

    #[test]
    fn idempotency_keys_parse() {
        assert!(IdempotencyKey::parse("outreach:12:webhook").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("a b").is_err());
        assert!(IdempotencyKey::parse(&"x".repeat(201)).is_err());
    }

    #[test]
    fn enqueue_is_idempotent_by_key_and_cancel_only_touches_pending_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::store::open_writer(dir.path()).unwrap();
        let now = Utc::now();
        let d = NewDelivery {
            channel: DeliveryChannel::Webhook,
            target: "crm".into(),
            idempotency_key: IdempotencyKey::parse("k1").unwrap(),
            payload: serde_json::json!({"a": 1}),
            not_before: now,
            purpose: "test".into(),
            quiet: None,
        };
        let tx = conn.transaction().unwrap();
        let a = enqueue(&tx, d.clone()).unwrap();
        let b = enqueue(&tx, d.clone()).unwrap();
        tx.commit().unwrap();
        assert!(a.created && !b.created && a.id == b.id);
        // Not committed: nothing is queued.
        let tx = conn.transaction().unwrap();
        let mut d2 = d.clone();
        d2.idempotency_key = IdempotencyKey::parse("k2").unwrap();
        enqueue(&tx, d2).unwrap();
        drop(tx);
        assert_eq!(list(&conn, None, 10).unwrap().len(), 1);
        assert!(cancel(&conn, a.id, "no_longer_relevant", now).unwrap());
        assert!(!cancel(&conn, a.id, "again", now).unwrap());
        let v = get(&conn, a.id).unwrap().unwrap();
        assert_eq!(v.status, "cancelled");
        assert_eq!(v.last_error.as_deref(), Some("no_longer_relevant"));
    }

    #[test]
    fn retry_skips_a_backoff_but_not_a_delivery_that_waits_on_purpose() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::store::open_writer(dir.path()).unwrap();
        let now = Utc::now();
        let later = now + chrono::Duration::hours(24);
        let enq = |conn: &mut Connection, key: &str| {
            let tx = conn.transaction().unwrap();
            let d = enqueue(
                &tx,
                NewDelivery {
                    channel: DeliveryChannel::Webhook,
                    target: "shop".into(),
                    idempotency_key: IdempotencyKey::parse(key).unwrap(),
                    payload: serde_json::json!({}),
                    not_before: later,
                    purpose: "fulfilment".into(),
                    quiet: None,
                },
            )
            .unwrap();
            tx.commit().unwrap();
            d.id
        };
        let due = |conn: &Connection, id: i64| -> i64 {
            conn.query_row(
                "SELECT not_before_ms FROM deliveries WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
        };
        // Never tried, held until the cancellation window closes: it keeps its time.
        let held = enq(&mut conn, "order:1");
        retry(&mut conn, held, now).unwrap();
        assert_eq!(due(&conn, held), later.timestamp_millis());
        // Tried and waiting out a backoff: due now.
        let backing_off = enq(&mut conn, "order:2");
        conn.execute(
            "UPDATE deliveries SET attempts = 1 WHERE id = ?1",
            [backing_off],
        )
        .unwrap();
        retry(&mut conn, backing_off, now).unwrap();
        assert_eq!(due(&conn, backing_off), now.timestamp_millis());
    }
}

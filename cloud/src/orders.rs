//! Device-initiated replenishment transactions: the decision, the orders table, member
//! consent and limits, later status changes, and the hand-off to fulfilment.
//!
//! # Decision (in this order; the first rule that applies wins)
//!
//! | outcome | reason | when |
//! |---|---|---|
//! | rejected | `replayed_counter` | the counter is not above the device's newest one |
//! | rejected | `not_opted_in` | the member has not opted in to automatic reordering |
//! | rejected | `unknown_sku` | the SKU is not in the catalogue (`[[orders.catalogue]]`) |
//! | rejected | `open_order_exists` | the slot already has an accepted or held order (an accepted order named in the transaction's `refilled` is first closed as `delivered`, reason `refilled_on_device`) |
//! | rejected | `over_slot_qty_limit` | `qty` above the member's per-slot quantity limit |
//! | rejected | `over_order_limit` | the amount above the member's per-order limit |
//! | rejected | `over_30d_limit` | accepted + delivered amounts of the last 30 days plus this one above the member's 30-day limit |
//!
//! Limits compare the larger of the quoted amount and `qty` × the catalogue price.
//! | held_for_confirmation | `price_changed` | the quote differs from the catalogue price by more than `orders.price_tolerance_bp`, or in currency |
//! | accepted | — | otherwise; cancellable until `decided + orders.cancel_window_h` |
//!
//! Signature, registration, payload and device checks come first, in
//! [`crate::ingest::check`]; what fails them goes to quarantine and never reaches the
//! ledger. A transaction id seen before with the same payload gets the same receipt again
//! and changes nothing; with a different payload it is quarantined as `conflict`.
//!
//! Every decision and every later status (`accepted` after confirmation, `cancelled`,
//! `delivered`) is appended to the [`crate::ledger`] in the same SQLite transaction as
//! the `orders` row it describes.
//!
//! # Fulfilment
//!
//! Accepted orders (at decision, or when a held order is confirmed) pass through
//! [`hand_off_to_fulfilment`] inside the deciding transaction, once per order (it records
//! the hand-off time on the order and does nothing the second time). It enqueues a webhook
//! to the commerce back end (`orders.fulfilment_webhook`, a `[[outreach.webhooks]]` name)
//! into the one durable delivery queue ([`crate::delivery`]), idempotency key
//! `order:{tx_id}`, purpose `fulfilment`, due just after the cancellation window closes
//! (`cancel_until`), so the shop only hears of orders that can no longer be cancelled.
//! Cancelling an accepted order within the window cancels that delivery in the same
//! transaction; when it has already been attempted (the dispatcher's and the canceller's
//! clocks disagreeing at the end of the window), the cancellation is refused
//! ([`OrdersError::HandedOver`]) rather than recorded while the shop ships. It also
//! raises the member's outreach message
//! ([`crate::outreach::Outreach::raise_order`]): `order_cancellable` while the cancellation
//! window is open, `order_accepted` otherwise. Both commit or roll back with the
//! acceptance, so an order is queued for fulfilment exactly when it is accepted. An outreach
//! failure is logged and rolled back to a savepoint; it never blocks the order.

use crate::config::{CloudConfig, OrdersConfig};
use crate::delivery::{DeliveryChannel, DeliveryError, IdempotencyKey, NewDelivery};
use crate::ledger::{Appender, EntryKind, LedgerError, NewEntry};
use crate::outreach::triggers::OrderTrigger;
use crate::outreach::{OrderEvent, Outreach, OutreachError};
use chrono::{DateTime, Duration, Utc};
use rollcall_shared::dsse::KeyPair;
use rollcall_shared::payload::{OpenOrder, Receipt, ReorderPolicy, Transaction, TxStatus};
use rollcall_shared::{DeviceId, MemberId, TxId};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Why an orders operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OrdersError {
    /// SQLite said no.
    #[error("orders store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The ledger could not be appended to.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The fulfilment delivery could not be enqueued.
    #[error("fulfilment hand-off: {0}")]
    Delivery(#[from] DeliveryError),
    /// The member's messages about the order could not be withdrawn.
    #[error("order messages: {0}")]
    Outreach(#[from] OutreachError),
    /// No order with that id.
    #[error("no order with transaction id {0:?}")]
    NoSuchOrder(String),
    /// No member with that id.
    #[error("no member with id {0:?}")]
    NoSuchMember(String),
    /// The order's status does not allow the action.
    #[error("order {tx_id} is {status}; it cannot be {action}")]
    NotAllowed {
        /// The order.
        tx_id: String,
        /// Its status.
        status: &'static str,
        /// What was asked (`cancelled`, `confirmed`, `delivered`).
        action: &'static str,
    },
    /// The cancellation window has closed.
    #[error("order {tx_id} could be cancelled until {until}; the window has closed")]
    WindowClosed {
        /// The order.
        tx_id: String,
        /// The end of the window.
        until: String,
    },
    /// The order's fulfilment webhook has been sent, or is being sent: cancelling the order
    /// here would no longer stop the shop.
    #[error("order {tx_id} has already been handed to fulfilment (delivery {delivery} is {status}); cancel it with the shop")]
    HandedOver {
        /// The order.
        tx_id: String,
        /// The fulfilment delivery.
        delivery: i64,
        /// Its status (`in_flight`, `delivered`, `dead`, or `pending` after a failed attempt).
        status: String,
    },
}

/// One catalogue article.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueItem {
    /// Price per unit, minor units.
    pub unit_price: i64,
    /// ISO 4217 currency.
    pub currency: String,
}

/// What the decision needs from the configuration.
#[derive(Debug, Clone)]
pub struct OrderRules {
    /// SKU → price.
    pub catalogue: HashMap<String, CatalogueItem>,
    /// Largest accepted difference between quote and catalogue price, in basis points.
    pub price_tolerance_bp: u32,
    /// How long an accepted order may be cancelled.
    pub cancel_window: Duration,
    /// The webhook (a `[[outreach.webhooks]]` name) accepted orders are handed to.
    pub fulfilment_webhook: Option<String>,
    /// The outreach planner, to tell the member (`order_accepted`, `order_cancellable`).
    pub outreach: Option<Arc<Outreach>>,
}

impl OrderRules {
    /// The rules of `[orders]`.
    pub fn from_config(c: &OrdersConfig) -> Self {
        Self {
            catalogue: c
                .catalogue
                .iter()
                .map(|i| {
                    (
                        i.sku.clone(),
                        CatalogueItem {
                            unit_price: i.unit_price,
                            currency: i.currency.clone(),
                        },
                    )
                })
                .collect(),
            price_tolerance_bp: c.price_tolerance_bp,
            cancel_window: Duration::hours(c.cancel_window_h as i64),
            fulfilment_webhook: c.fulfilment_webhook.clone(),
            outreach: None,
        }
    }

    /// The rules of a running cloud: `[orders]`, and the outreach planner when
    /// `outreach.enabled`.
    pub fn for_cloud(cfg: &CloudConfig) -> Result<Self, OutreachError> {
        let mut rules = Self::from_config(&cfg.orders);
        if cfg.outreach.enabled {
            rules.outreach = Some(Arc::new(Outreach::new(cfg)?));
        }
        Ok(rules)
    }
}

/// A transaction whose envelope verified under its device's registered key.
#[derive(Debug, Clone)]
pub struct VerifiedTx {
    /// The device (verified).
    pub device: DeviceId,
    /// Its member when checked; the ingest's commit replaces it by the device's member
    /// as the store has it then (an erasure moves devices to the member's pseudonym).
    pub member: MemberId,
    /// The transaction.
    pub tx: Transaction,
    /// The device's envelope, byte for byte.
    pub envelope: Vec<u8>,
    /// Hex SHA-256 of the payload (the idempotency fingerprint).
    pub payload_sha256: String,
    /// When the cloud received it.
    pub received_at: DateTime<Utc>,
}

/// What [`record`] did.
#[derive(Debug, Clone)]
pub enum TxResult {
    /// Decided now (and appended to the ledger).
    Decided(Receipt),
    /// Seen before with the same content: the receipt of its current status.
    Duplicate(Receipt),
    /// Seen before with different content.
    Conflict,
}

/// A member's consent and limits (amounts in minor units of the order's currency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Policy {
    /// Opted in to automatic reordering.
    pub auto_reorder: bool,
    /// Most per order.
    pub limit_per_order: Option<i64>,
    /// Most over any rolling 30 days.
    pub limit_30d: Option<i64>,
    /// Most units per slot and order.
    pub limit_slot_qty: Option<i64>,
}

/// Reads a member's policy (default: not opted in, no limits).
pub fn policy(conn: &Connection, member: &str) -> Result<Policy, OrdersError> {
    Ok(conn
        .prepare_cached(
            "SELECT auto_reorder, limit_per_order, limit_30d, limit_slot_qty FROM member_policies WHERE member_id = ?1",
        )?
        .query_row([member], |r| {
            Ok(Policy {
                auto_reorder: r.get(0)?,
                limit_per_order: r.get(1)?,
                limit_30d: r.get(2)?,
                limit_slot_qty: r.get(3)?,
            })
        })
        .optional()?
        .unwrap_or_default())
}

/// Stores a member's consent and limits (replacing earlier ones).
pub fn set_policy(
    conn: &Connection,
    member: &MemberId,
    p: &Policy,
    now: DateTime<Utc>,
) -> Result<(), OrdersError> {
    let exists = conn
        .query_row(
            "SELECT 1 FROM members WHERE id = ?1",
            [member.as_str()],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists {
        return Err(OrdersError::NoSuchMember(member.to_string()));
    }
    conn.execute(
        "INSERT INTO member_policies (member_id, auto_reorder, limit_per_order, limit_30d, limit_slot_qty, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(member_id) DO UPDATE SET auto_reorder = excluded.auto_reorder,
             limit_per_order = excluded.limit_per_order, limit_30d = excluded.limit_30d,
             limit_slot_qty = excluded.limit_slot_qty, updated_ms = excluded.updated_ms",
        params![
            member.as_str(),
            p.auto_reorder,
            p.limit_per_order,
            p.limit_30d,
            p.limit_slot_qty,
            now.timestamp_millis()
        ],
    )?;
    Ok(())
}

enum Decision {
    Accepted,
    Held(&'static str),
    Rejected(&'static str),
}

fn decide(
    tx: &Connection,
    rules: &OrderRules,
    v: &VerifiedTx,
) -> Result<(Decision, i64), OrdersError> {
    let t = &v.tx;
    let max_counter: i64 = tx
        .prepare_cached("SELECT max_tx_counter FROM devices WHERE id = ?1")?
        .query_row([v.device.as_str()], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let amount = t.amount;
    if t.counter as i64 <= max_counter {
        return Ok((Decision::Rejected("replayed_counter"), amount));
    }
    let p = policy(tx, v.member.as_str())?;
    if !p.auto_reorder {
        return Ok((Decision::Rejected("not_opted_in"), amount));
    }
    let Some(item) = rules.catalogue.get(t.sku.as_str()) else {
        return Ok((Decision::Rejected("unknown_sku"), amount));
    };
    let open = tx
        .prepare_cached(
            "SELECT 1 FROM orders WHERE device_id = ?1 AND slot = ?2 AND status IN ('accepted', 'held_for_confirmation')",
        )?
        .query_row(params![v.device.as_str(), t.slot.as_str()], |_| Ok(()))
        .optional()?
        .is_some();
    if open {
        return Ok((Decision::Rejected("open_order_exists"), amount));
    }
    // Limits are checked against the larger of the quote and the catalogue price, so the
    // member's limit holds whichever price is finally charged.
    let at_catalogue = i64::from(t.qty).saturating_mul(item.unit_price);
    let charged = amount.max(at_catalogue);
    if p.limit_slot_qty.is_some_and(|l| i64::from(t.qty) > l) {
        return Ok((Decision::Rejected("over_slot_qty_limit"), amount));
    }
    if p.limit_per_order.is_some_and(|l| charged > l) {
        return Ok((Decision::Rejected("over_order_limit"), amount));
    }
    if let Some(l) = p.limit_30d {
        let since = (v.received_at - Duration::days(30)).timestamp_millis();
        let spent: i64 = tx
            .prepare_cached(
                "SELECT coalesce(sum(amount), 0) FROM orders WHERE member_id = ?1 AND decided_ms > ?2
                 AND status IN ('accepted', 'delivered', 'held_for_confirmation')",
            )?
            .query_row(params![v.member.as_str(), since], |r| r.get(0))?;
        if spent.saturating_add(charged) > l {
            return Ok((Decision::Rejected("over_30d_limit"), amount));
        }
    }
    let diff = (t.unit_price - item.unit_price).unsigned_abs() as u128;
    let allowed = item.unit_price.unsigned_abs() as u128 * u128::from(rules.price_tolerance_bp);
    if item.currency != t.currency.as_str() || diff * 10_000 > allowed {
        // What the member would be asked to confirm: the catalogue price.
        return Ok((Decision::Held("price_changed"), at_catalogue));
    }
    Ok((Decision::Accepted, amount))
}

/// Hands an accepted order to fulfilment, inside the transaction that accepted it.
///
/// Hands an accepted order over, inside the accepting transaction (see the module doc,
/// "Fulfilment"): records when, enqueues the fulfilment webhook (if configured) and
/// raises the member's outreach message (if outreach runs). Only the first call for an
/// order does anything.
pub fn hand_off_to_fulfilment(
    tx: &Connection,
    rules: &OrderRules,
    tx_id: &str,
    now: DateTime<Utc>,
) -> Result<(), OrdersError> {
    let first = tx
        .prepare_cached(
            "UPDATE orders SET fulfilment_requested_ms = ?2 WHERE tx_id = ?1 AND fulfilment_requested_ms IS NULL",
        )?
        .execute(params![tx_id, now.timestamp_millis()])?
        == 1;
    if !first || (rules.fulfilment_webhook.is_none() && rules.outreach.is_none()) {
        return Ok(());
    }
    let o = tx
        .prepare_cached(
            "SELECT member_id, device_id, sku, qty, amount, currency, cancel_until_ms FROM orders WHERE tx_id = ?1",
        )?
        .query_row([tx_id], |r| {
            Ok(HandOff {
                member_id: r.get(0)?,
                device_id: r.get(1)?,
                sku: r.get(2)?,
                qty: r.get(3)?,
                amount: r.get(4)?,
                currency: r.get(5)?,
                cancel_until: ms(r.get(6)?),
            })
        })?;
    if let Some(webhook) = &rules.fulfilment_webhook {
        crate::delivery::enqueue_in_transaction(
            tx,
            NewDelivery {
                channel: DeliveryChannel::Webhook,
                target: webhook.clone(),
                idempotency_key: IdempotencyKey::parse(&format!("order:{tx_id}"))?,
                payload: serde_json::json!({
                    "type": "order.accepted",
                    "tx_id": tx_id,
                    "member_id": o.member_id,
                    "device_id": o.device_id,
                    "sku": o.sku,
                    "qty": o.qty,
                    "amount": o.amount,
                    "currency": o.currency,
                }),
                // Due just after the cancellation window closes: the shop only ever hears
                // of an order that can no longer be cancelled, and a cancellation within
                // the window withdraws this delivery before anything was sent.
                not_before: o
                    .cancel_until
                    .map_or(now, |until| until + Duration::milliseconds(1))
                    .max(now),
                purpose: "fulfilment".into(),
                quiet: None,
            },
        )?;
    }
    if let Some(outreach) = &rules.outreach {
        let member_id = MemberId::parse(&o.member_id)
            .map_err(|e| LedgerError::Corrupt(format!("order {tx_id}: {e}")))?;
        let cancellable_until = o.cancel_until.filter(|u| *u > now);
        let ev = OrderEvent {
            kind: if cancellable_until.is_some() {
                OrderTrigger::Cancellable
            } else {
                OrderTrigger::Accepted
            },
            member_id,
            order_id: tx_id.to_owned(),
            sku: o.sku,
            amount_minor: o.amount,
            currency: o.currency,
            cancellable_until,
        };
        // A failed message must not block the order: undo only its own writes.
        tx.execute_batch("SAVEPOINT order_outreach")?;
        match outreach.raise_order(tx, &ev, now) {
            Ok(_) => tx.execute_batch("RELEASE order_outreach")?,
            Err(error) => {
                tracing::warn!(%error, tx_id, "Could not plan the order's outreach message");
                tx.execute_batch("ROLLBACK TO order_outreach; RELEASE order_outreach")?;
            }
        }
    }
    Ok(())
}

/// Withdraws the fulfilment webhook of an order being cancelled, inside the cancelling
/// transaction. The webhook waits for the cancellation window to close, so within the
/// window it is normally still `pending` and never tried, and is cancelled
/// (`order_cancelled`). Once an attempt was made (a receiver may have acted on it even
/// when it failed), the cancellation is refused with [`OrdersError::HandedOver`]; the
/// caller's transaction then rolls back. Orders handed over without a webhook have no
/// delivery to withdraw.
fn withdraw_fulfilment(
    tx: &Connection,
    tx_id: &str,
    now: DateTime<Utc>,
) -> Result<(), OrdersError> {
    match withdraw_unsent_fulfilment(tx, tx_id, "order_cancelled", now)? {
        Withdrawal::Withdrawn | Withdrawal::Nothing => Ok(()),
        Withdrawal::Attempted { delivery, status } => Err(OrdersError::HandedOver {
            tx_id: tx_id.to_owned(),
            delivery,
            status,
        }),
    }
}

/// What [`withdraw_unsent_fulfilment`] found.
enum Withdrawal {
    /// The webhook had never been tried; it is cancelled now.
    Withdrawn,
    /// No webhook (handed over without one), or it was cancelled already.
    Nothing,
    /// It has been attempted (the shop may have acted on it): left as it is.
    Attempted {
        /// The delivery.
        delivery: i64,
        /// Its status.
        status: String,
    },
}

/// Cancels the order's fulfilment webhook with `reason` if it has never been tried.
fn withdraw_unsent_fulfilment(
    tx: &Connection,
    tx_id: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<Withdrawal, OrdersError> {
    let key = IdempotencyKey::parse(&format!("order:{tx_id}"))?;
    let row: Option<(i64, String, i64)> = tx
        .prepare_cached("SELECT id, status, attempts FROM deliveries WHERE idempotency_key = ?1")?
        .query_row([key.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((delivery, status, attempts)) = row else {
        return Ok(Withdrawal::Nothing);
    };
    if status == "cancelled" {
        return Ok(Withdrawal::Nothing);
    }
    if attempts == 0 && crate::delivery::cancel(tx, delivery, reason, now)? {
        return Ok(Withdrawal::Withdrawn);
    }
    Ok(Withdrawal::Attempted { delivery, status })
}

/// What [`hand_off_to_fulfilment`] reads of an order.
struct HandOff {
    member_id: String,
    device_id: String,
    sku: String,
    qty: i64,
    amount: i64,
    currency: String,
    cancel_until: Option<DateTime<Utc>>,
}

fn ms(t: Option<i64>) -> Option<DateTime<Utc>> {
    t.and_then(DateTime::from_timestamp_millis)
}

/// The receipt of the order's current status; only when it is `device`'s order, if given.
fn receipt_of(
    conn: &Connection,
    tx_id: &str,
    device: Option<&DeviceId>,
) -> Result<Option<Receipt>, OrdersError> {
    let row = conn
        .prepare_cached(
            "SELECT payload_sha256, status, reason, ledger_index, cancel_until_ms, updated_ms FROM orders
             WHERE tx_id = ?1 AND (?2 IS NULL OR device_id = ?2)",
        )?
        .query_row(params![tx_id, device.map(DeviceId::as_str)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .optional()?;
    let Some((sha, status, reason, idx, until, updated)) = row else {
        return Ok(None);
    };
    let status = TxStatus::parse(&status)
        .ok_or_else(|| LedgerError::Corrupt(format!("order {tx_id} has status {status:?}")))?;
    Ok(Some(Receipt {
        tx_id: TxId::parse(tx_id).map_err(|e| LedgerError::Corrupt(e.to_string()))?,
        tx_sha256: sha,
        status,
        reason,
        ledger_index: idx as u64,
        cancel_until: if status == TxStatus::Accepted {
            ms(until)
        } else {
            None
        },
        at: ms(Some(updated)).unwrap_or_default(),
    }))
}

/// Decides a verified transaction, or recognises a re-send; writes the order, the ledger
/// entry and the counter inside the caller's transaction.
pub fn record(
    tx: &Connection,
    ledger: &mut Appender,
    rules: &OrderRules,
    v: &VerifiedTx,
) -> Result<TxResult, OrdersError> {
    let t = &v.tx;
    let seen: Option<String> = tx
        .prepare_cached("SELECT payload_sha256 FROM orders WHERE tx_id = ?1")?
        .query_row([t.tx_id.as_str()], |r| r.get(0))
        .optional()?;
    match seen {
        Some(sha) if sha == v.payload_sha256 => {
            let r = receipt_of(tx, t.tx_id.as_str(), None)?.expect("the order exists");
            mark_notified(tx, t.tx_id.as_str())?;
            return Ok(TxResult::Duplicate(r));
        }
        Some(_) => return Ok(TxResult::Conflict),
        None => {}
    }
    let now = v.received_at;
    if let Some(prev) = &t.refilled {
        close_refilled(tx, ledger, v, prev.as_str())?;
    }
    let (decision, amount) = decide(tx, rules, v)?;
    let (status, reason) = match decision {
        Decision::Accepted => (TxStatus::Accepted, None),
        Decision::Held(r) => (TxStatus::HeldForConfirmation, Some(r)),
        Decision::Rejected(r) => (TxStatus::Rejected, Some(r)),
    };
    let index = ledger.push(
        tx,
        &NewEntry {
            kind: EntryKind::Decision,
            tx_id: t.tx_id.as_str(),
            device_id: v.device.as_str(),
            member_id: v.member.as_str(),
            status: status.as_str(),
            reason,
            at: now,
            envelope: Some(&v.envelope),
        },
    )?;
    let cancel_until = (status == TxStatus::Accepted).then(|| now + rules.cancel_window);
    tx.prepare_cached(
        "INSERT INTO orders (tx_id, device_id, member_id, slot, sku, qty, unit_price, amount, currency, counter,
             payload_sha256, status, reason, decided_ms, updated_ms, cancel_until_ms, ledger_index, notified_status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14, ?15, ?16, ?12)",
    )?
    .execute(params![
        t.tx_id.as_str(),
        v.device.as_str(),
        v.member.as_str(),
        t.slot.as_str(),
        t.sku.as_str(),
        t.qty,
        t.unit_price,
        amount,
        t.currency.as_str(),
        t.counter as i64,
        v.payload_sha256,
        status.as_str(),
        reason,
        now.timestamp_millis(),
        cancel_until.map(|c| c.timestamp_millis()),
        index as i64,
    ])?;
    tx.prepare_cached("UPDATE devices SET max_tx_counter = MAX(max_tx_counter, ?2) WHERE id = ?1")?
        .execute(params![v.device.as_str(), t.counter as i64])?;
    if status == TxStatus::Accepted {
        hand_off_to_fulfilment(tx, rules, t.tx_id.as_str(), now)?;
    }
    Ok(TxResult::Decided(Receipt {
        tx_id: t.tx_id.clone(),
        tx_sha256: v.payload_sha256.clone(),
        status,
        reason: reason.map(str::to_owned),
        ledger_index: index,
        cancel_until,
        at: now,
    }))
}

/// Closes the slot's previous order as `delivered` when the device's new, validly signed
/// and not replayed transaction says the slot was refilled since (`Transaction::refilled`).
/// Only an accepted order of the same device and slot is closed; anything else is left alone.
fn close_refilled(
    tx: &Connection,
    ledger: &mut Appender,
    v: &VerifiedTx,
    prev: &str,
) -> Result<(), OrdersError> {
    let max_counter: i64 = tx
        .prepare_cached("SELECT max_tx_counter FROM devices WHERE id = ?1")?
        .query_row([v.device.as_str()], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    if v.tx.counter as i64 <= max_counter {
        return Ok(());
    }
    let open = tx
        .prepare_cached(
            "SELECT 1 FROM orders WHERE tx_id = ?1 AND device_id = ?2 AND slot = ?3 AND status = 'accepted'",
        )?
        .query_row(
            params![prev, v.device.as_str(), v.tx.slot.as_str()],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !open {
        return Ok(());
    }
    // Refilled before the shop was told of the order: it must not ship it too.
    withdraw_unsent_fulfilment(tx, prev, "order_delivered", v.received_at)?;
    let index = ledger.push(
        tx,
        &NewEntry {
            kind: EntryKind::Status,
            tx_id: prev,
            device_id: v.device.as_str(),
            member_id: v.member.as_str(),
            status: TxStatus::Delivered.as_str(),
            reason: Some("refilled_on_device"),
            at: v.received_at,
            envelope: None,
        },
    )?;
    tx.prepare_cached(
        "UPDATE orders SET status = 'delivered', reason = 'refilled_on_device', updated_ms = ?2, ledger_index = ?3
         WHERE tx_id = ?1",
    )?
    .execute(params![prev, v.received_at.timestamp_millis(), index as i64])?;
    Ok(())
}

/// What a device should hear when it says it is online: its member's policy, and a
/// receipt for every order whose status changed since the device was last told, and for
/// every order the device lists as open (`reported`, [`Health::orders`]) with another
/// status than the one stored.
///
/// Marks the receipts as sent (the caller publishes them after the commit), so call it
/// only for an online status that is newer than the one stored: a Last Will, or a status
/// replayed from an earlier session, reaches a device that cannot hear anything.
///
/// `notified_status` covers agents that list nothing (older ones): a receipt marked as
/// sent whose publish is then lost is not sent again. The list repairs exactly that: it
/// is the device's own word on what it last heard, so whenever it is present and differs
/// from the stored status the receipt goes again, at every online status until the
/// device has applied it. Only a stored status further along than the listed one is
/// re-sent ([`TxStatus::rank`]): the agent would ignore any other. Listed orders of
/// another device, or unknown to the cloud, are ignored. One primary-key lookup per
/// listed order; nothing more when the list is empty.
///
/// [`Health::orders`]: rollcall_shared::payload::Health::orders
pub fn on_status(
    tx: &Connection,
    device: &DeviceId,
    reported: &[OpenOrder],
) -> Result<(Option<ReorderPolicy>, Vec<Receipt>), OrdersError> {
    let member: Option<String> = tx
        .prepare_cached("SELECT member_id FROM devices WHERE id = ?1")?
        .query_row([device.as_str()], |r| r.get(0))
        .optional()?;
    let Some(member) = member else {
        return Ok((None, Vec::new()));
    };
    let p = policy(tx, &member)?;
    let ids: Vec<String> = tx
        .prepare_cached(
            "SELECT tx_id FROM orders WHERE device_id = ?1 AND notified_status IS NOT status",
        )?
        .query_map([device.as_str()], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut receipts = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(r) = receipt_of(tx, &id, Some(device))? {
            receipts.push(r);
        }
        mark_notified(tx, &id)?;
    }
    for o in reported {
        if receipts.iter().any(|r| r.tx_id == o.tx_id) {
            continue;
        }
        let Some(r) = receipt_of(tx, o.tx_id.as_str(), Some(device))? else {
            continue;
        };
        // Only a status further along: the agent ignores a receipt that would move its
        // order back, so re-sending one would repeat at every status for ever.
        if r.status.rank() > o.status.rank() {
            mark_notified(tx, o.tx_id.as_str())?;
            receipts.push(r);
        }
    }
    Ok((
        Some(ReorderPolicy {
            auto_reorder: p.auto_reorder,
        }),
        receipts,
    ))
}

/// Records that the device has been sent the order's current status.
fn mark_notified(tx: &Connection, tx_id: &str) -> Result<(), OrdersError> {
    tx.prepare_cached("UPDATE orders SET notified_status = status WHERE tx_id = ?1")?
        .execute([tx_id])?;
    Ok(())
}

/// A later status change asked for by staff or the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `held_for_confirmation` → `accepted`.
    Confirm,
    /// `accepted` (within the window, and its fulfilment webhook not yet attempted) or
    /// `held_for_confirmation` → `cancelled`; withdraws the pending fulfilment webhook.
    Cancel,
    /// `accepted` → `delivered`.
    Deliver,
}

/// Applies `action` to an order: updates it, appends the ledger entry, signs the
/// checkpoint, all in one transaction. Returns the order afterwards.
pub fn change(
    conn: &mut Connection,
    key: &KeyPair,
    rules: &OrderRules,
    tx_id: &str,
    action: Action,
    note: Option<&str>,
    now: DateTime<Utc>,
) -> Result<OrderView, OrdersError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let row: Option<(String, String, String, Option<i64>)> = tx
        .query_row(
            "SELECT status, device_id, member_id, cancel_until_ms FROM orders WHERE tx_id = ?1",
            [tx_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((status, device, member, until)) = row else {
        return Err(OrdersError::NoSuchOrder(tx_id.to_owned()));
    };
    let status = TxStatus::parse(&status)
        .ok_or_else(|| LedgerError::Corrupt(format!("order {tx_id} has status {status:?}")))?;
    let not_allowed = |action: &'static str| OrdersError::NotAllowed {
        tx_id: tx_id.to_owned(),
        status: status.as_str(),
        action,
    };
    let (new, cancel_until) = match (action, status) {
        (Action::Confirm, TxStatus::HeldForConfirmation) => {
            (TxStatus::Accepted, Some(now + rules.cancel_window))
        }
        (Action::Confirm, _) => return Err(not_allowed("confirmed")),
        (Action::Cancel, TxStatus::HeldForConfirmation) => (TxStatus::Cancelled, None),
        (Action::Cancel, TxStatus::Accepted) => {
            let until = ms(until).unwrap_or(now);
            if now > until {
                return Err(OrdersError::WindowClosed {
                    tx_id: tx_id.to_owned(),
                    until: until.to_rfc3339(),
                });
            }
            withdraw_fulfilment(&tx, tx_id, now)?;
            (TxStatus::Cancelled, None)
        }
        (Action::Cancel, _) => return Err(not_allowed("cancelled")),
        (Action::Deliver, TxStatus::Accepted) => {
            // Delivered before the shop was told (the goods came from elsewhere): the shop
            // must not ship it as well. Once told, the shop's own delivery is this one.
            withdraw_unsent_fulfilment(&tx, tx_id, "order_delivered", now)?;
            (TxStatus::Delivered, None)
        }
        (Action::Deliver, _) => return Err(not_allowed("delivered")),
    };
    let mut ledger = Appender::begin(&tx)?;
    let index = ledger.push(
        &tx,
        &NewEntry {
            kind: EntryKind::Status,
            tx_id,
            device_id: &device,
            member_id: &member,
            status: new.as_str(),
            reason: note,
            at: now,
            envelope: None,
        },
    )?;
    ledger.finish(&tx, key, now)?;
    tx.execute(
        "UPDATE orders SET status = ?2, updated_ms = ?3, ledger_index = ?4,
             cancel_until_ms = COALESCE(?5, cancel_until_ms),
             reason = CASE WHEN ?6 IS NULL THEN reason ELSE ?6 END
         WHERE tx_id = ?1",
        params![
            tx_id,
            new.as_str(),
            now.timestamp_millis(),
            index as i64,
            cancel_until.map(|c| c.timestamp_millis()),
            note
        ],
    )?;
    if action == Action::Confirm {
        hand_off_to_fulfilment(&tx, rules, tx_id, now)?;
    }
    if matches!(new, TxStatus::Cancelled | TxStatus::Delivered) {
        // "You can still cancel" (and, for a cancellation, "accepted") no longer fit.
        crate::outreach::engine::withdraw_order_messages(
            &tx,
            tx_id,
            new == TxStatus::Cancelled,
            now,
        )?;
    }
    tx.commit()?;
    list(conn, None, Some(tx_id))?
        .pop()
        .ok_or_else(|| OrdersError::NoSuchOrder(tx_id.to_owned()))
}

/// One order as `orders list` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct OrderView {
    /// Transaction id.
    pub tx_id: String,
    /// Member.
    pub member_id: String,
    /// Device.
    pub device_id: String,
    /// Slot on the device.
    pub slot: String,
    /// Article.
    pub sku: String,
    /// Units.
    pub qty: i64,
    /// Unit price quoted by the device, minor units.
    pub unit_price: i64,
    /// Amount, minor units (at the catalogue price for held orders).
    pub amount: i64,
    /// Currency.
    pub currency: String,
    /// `accepted`, `held_for_confirmation`, `rejected`, `cancelled` or `delivered`.
    pub status: String,
    /// Reason code, or the note of a cancellation.
    pub reason: Option<String>,
    /// When it was decided.
    pub decided_at: String,
    /// Until when an accepted order may be cancelled.
    pub cancel_until: Option<String>,
    /// When it was handed to fulfilment.
    pub fulfilment_requested_at: Option<String>,
    /// The latest ledger entry of this transaction.
    pub ledger_index: i64,
}

/// Orders, newest first; optionally one member's, or one transaction.
pub fn list(
    conn: &Connection,
    member: Option<&str>,
    tx_id: Option<&str>,
) -> Result<Vec<OrderView>, OrdersError> {
    let mut st = conn.prepare(
        "SELECT tx_id, member_id, device_id, slot, sku, qty, unit_price, amount, currency, status, reason,
                decided_ms, cancel_until_ms, fulfilment_requested_ms, ledger_index
         FROM orders WHERE (?1 IS NULL OR member_id = ?1) AND (?2 IS NULL OR tx_id = ?2)
         ORDER BY decided_ms DESC, tx_id",
    )?;
    let fmt = |m: Option<i64>| m.map(crate::registry::ms_to_rfc3339);
    let rows = st.query_map(params![member, tx_id], |r| {
        Ok(OrderView {
            tx_id: r.get(0)?,
            member_id: r.get(1)?,
            device_id: r.get(2)?,
            slot: r.get(3)?,
            sku: r.get(4)?,
            qty: r.get(5)?,
            unit_price: r.get(6)?,
            amount: r.get(7)?,
            currency: r.get(8)?,
            status: r.get(9)?,
            reason: r.get(10)?,
            decided_at: crate::registry::ms_to_rfc3339(r.get(11)?),
            cancel_until: fmt(r.get(12)?),
            fulfilment_requested_at: fmt(r.get(13)?),
            ledger_index: r.get(14)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{self, Checked, Inbound, TxContext};
    use rollcall_shared::dsse::{STATUS_PAYLOAD_TYPE, TRANSACTION_PAYLOAD_TYPE};
    use rollcall_shared::payload::{DeviceStatus, Health, Presence, ReorderReason};
    use rollcall_shared::topics::Topics;
    use rollcall_shared::{Currency, Sku, SlotId};

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-24T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    struct World {
        _dir: tempfile::TempDir,
        conn: Connection,
        device: KeyPair,
        cloud: KeyPair,
        rules: OrderRules,
    }

    fn world(policy: Policy) -> World {
        let device = KeyPair::generate();
        let (dir, conn) = crate::store::test_store_with_device(&device);
        set_policy(&conn, &MemberId::parse("m1").unwrap(), &policy, t0()).unwrap();
        let rules = OrderRules {
            catalogue: HashMap::from([(
                "POD".to_owned(),
                CatalogueItem {
                    unit_price: 100,
                    currency: "EUR".into(),
                },
            )]),
            price_tolerance_bp: 100,
            cancel_window: Duration::hours(24),
            fulfilment_webhook: None,
            outreach: None,
        };
        World {
            _dir: dir,
            conn,
            device,
            cloud: KeyPair::generate(),
            rules,
        }
    }

    fn tx(id: &str, counter: u64, slot: &str, sku: &str, qty: u32, price: i64) -> Transaction {
        Transaction {
            v: 1,
            tx_id: TxId::parse(id).unwrap(),
            device_id: DeviceId::parse("d1").unwrap(),
            counter,
            slot: SlotId::parse(slot).unwrap(),
            sku: Sku::parse(sku).unwrap(),
            qty,
            unit_price: price,
            currency: Currency::parse("EUR").unwrap(),
            amount: i64::from(qty) * price,
            reason: ReorderReason {
                level: 1,
                threshold: 2,
            },
            created_at: t0(),
            refilled: None,
        }
    }

    impl World {
        /// Staff change order `tx_id` at `now`, as the API and the CLI do.
        fn change(
            &mut self,
            tx_id: &str,
            action: Action,
            note: Option<&str>,
            now: DateTime<Utc>,
        ) -> Result<OrderView, OrdersError> {
            let (key, rules) = (self.cloud.clone(), self.rules.clone());
            change(&mut self.conn, &key, &rules, tx_id, action, note, now)
        }
        fn send(&mut self, t: &Transaction) -> ingest::BatchOutcome {
            let topic = Topics::default().tx(&t.device_id);
            let outcome =
                self.commit_signed(&t.device_id, topic, TRANSACTION_PAYLOAD_TYPE, &t.encode());
            assert!(outcome.1, "the transaction passed the checks");
            outcome.0
        }
        /// Commits the device's signed status message, as the ingest does.
        fn presence(&mut self, state: Presence, session: u64, n: u64) -> ingest::BatchOutcome {
            self.status_message(state, session, n, None)
        }
        /// Commits the device's signed online status listing `open` as the orders it
        /// holds open, with the status it last heard for each.
        fn online_listing(
            &mut self,
            session: u64,
            n: u64,
            open: &[(&str, TxStatus)],
        ) -> ingest::BatchOutcome {
            let health = Health {
                orders: open
                    .iter()
                    .map(|(id, status)| OpenOrder {
                        tx_id: TxId::parse(id).unwrap(),
                        status: *status,
                    })
                    .collect(),
                ..Health::default()
            };
            self.status_message(Presence::Online, session, n, Some(health))
        }
        fn status_message(
            &mut self,
            state: Presence,
            session: u64,
            n: u64,
            health: Option<Health>,
        ) -> ingest::BatchOutcome {
            let device = DeviceId::parse("d1").unwrap();
            let status = DeviceStatus {
                v: rollcall_shared::PROTOCOL_VERSION,
                device_id: device.clone(),
                state,
                at: t0(),
                session,
                n,
                health,
            };
            let topic = Topics::default().status(&device);
            let outcome = self.commit_signed(&device, topic, STATUS_PAYLOAD_TYPE, &status.encode());
            assert!(outcome.1, "the status passed the checks");
            outcome.0
        }
        /// Signs `payload` with the device key, checks it as the ingest does (as sent by
        /// `device`) and commits it; also says whether it passed the checks.
        fn commit_signed(
            &mut self,
            device: &DeviceId,
            topic: String,
            payload_type: &str,
            payload: &[u8],
        ) -> (ingest::BatchOutcome, bool) {
            let info = crate::registry::device_info(&self.conn, device).unwrap();
            let msg = Inbound {
                topic,
                payload: self.device.sign(payload_type, payload).to_json(),
                received_at: t0(),
            };
            let checked = ingest::check(&Topics::default(), msg, &|_| info.clone());
            let passed = matches!(checked, Checked::Transaction(_) | Checked::Status { .. });
            let ctx = TxContext {
                rules: &self.rules,
                key: &self.cloud,
            };
            let outcome = ingest::commit(&mut self.conn, &[checked], 4096, Some(&ctx)).unwrap();
            (outcome, passed)
        }
        fn notified(&self, tx_id: &str) -> Option<String> {
            self.conn
                .query_row(
                    "SELECT notified_status FROM orders WHERE tx_id = ?1",
                    [tx_id],
                    |r| r.get(0),
                )
                .unwrap()
        }
        fn status(&mut self, t: &Transaction) -> (TxStatus, Option<String>) {
            let out = self.send(t);
            let r = &out.receipts.last().expect("a receipt").1;
            (r.status, r.reason.clone())
        }
    }

    #[test]
    fn each_rule_gives_its_reason() {
        let mut w = world(Policy {
            auto_reorder: true,
            limit_per_order: Some(1000),
            limit_30d: None,
            limit_slot_qty: Some(8),
        });
        assert_eq!(
            w.status(&tx("a", 1, "pods", "INK", 1, 100)).1.as_deref(),
            Some("unknown_sku")
        );
        assert_eq!(
            w.status(&tx("b", 2, "pods", "POD", 9, 100)).1.as_deref(),
            Some("over_slot_qty_limit")
        );
        assert_eq!(
            w.status(&tx("c", 3, "pods", "POD", 5, 101)).0,
            TxStatus::Accepted,
            "1 % is tolerated"
        );
        assert_eq!(
            w.status(&tx("d", 4, "pods", "POD", 1, 100)).1.as_deref(),
            Some("open_order_exists")
        );
        assert_eq!(
            w.status(&tx("e", 5, "milk", "POD", 1, 110)).1.as_deref(),
            Some("price_changed")
        );
        let again = w.send(&tx("e", 5, "milk", "POD", 1, 110));
        assert_eq!((again.tx_duplicate, again.tx_decided.len()), (1, 0));
        let conflict = w.send(&tx("e", 5, "milk", "POD", 2, 110));
        assert_eq!(conflict.rejected, vec![ingest::Reason::Conflict]);
        assert_eq!(list(&w.conn, Some("m1"), None).unwrap().len(), 5);
    }

    /// An order held for the member's confirmation counts against the 30-day limit: once
    /// confirmed it is spent, and nothing decided meanwhile may have used its share.
    #[test]
    fn a_held_order_counts_against_the_30_day_limit() {
        let mut w = world(Policy {
            auto_reorder: true,
            limit_30d: Some(2000),
            ..Policy::default()
        });
        // Held at the catalogue price: 15 pods, 1500.
        assert_eq!(
            w.status(&tx("a", 1, "pods", "POD", 15, 110)).1.as_deref(),
            Some("price_changed")
        );
        assert_eq!(
            w.status(&tx("b", 2, "milk", "POD", 15, 100)).1.as_deref(),
            Some("over_30d_limit")
        );
        assert_eq!(
            w.status(&tx("c", 3, "milk", "POD", 5, 100)).0,
            TxStatus::Accepted
        );
        let o = w.change("a", Action::Confirm, None, t0()).unwrap();
        assert_eq!(o.status, "accepted");
        let spent: i64 = w
            .conn
            .query_row(
                "SELECT sum(amount) FROM orders WHERE status = 'accepted'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(spent <= 2000, "{spent}");
    }

    #[test]
    fn status_changes_follow_the_rules_and_are_ledgered() {
        let mut w = world(Policy {
            auto_reorder: true,
            ..Policy::default()
        });
        w.status(&tx("a", 1, "pods", "POD", 1, 100));
        w.status(&tx("b", 2, "milk", "POD", 1, 200));
        let late = t0() + Duration::hours(25);
        assert!(matches!(
            w.change("a", Action::Cancel, Some("x"), late),
            Err(OrdersError::WindowClosed { .. })
        ));
        assert!(matches!(
            w.change("a", Action::Confirm, None, late),
            Err(OrdersError::NotAllowed { .. })
        ));
        let o = w.change("a", Action::Deliver, None, late).unwrap();
        assert_eq!(o.status, "delivered");
        let o = w.change("b", Action::Confirm, None, late).unwrap();
        assert_eq!(
            (o.status.as_str(), o.fulfilment_requested_at.is_some()),
            ("accepted", true)
        );
        assert!(matches!(
            w.change("zz", Action::Deliver, None, late),
            Err(OrdersError::NoSuchOrder(_))
        ));
        // The device hears about the changes with its next status.
        let (policy, receipts) = on_status(&w.conn, &DeviceId::parse("d1").unwrap(), &[]).unwrap();
        assert_eq!(policy, Some(ReorderPolicy { auto_reorder: true }));
        assert_eq!(receipts.len(), 2);
        assert!(on_status(&w.conn, &DeviceId::parse("d1").unwrap(), &[])
            .unwrap()
            .1
            .is_empty());
        let v = crate::ledger::verify(&w.conn, &w.cloud.public(), 1, |_, _| {}).unwrap();
        assert_eq!((v.ok, v.entries), (true, Some(4)));
    }

    #[test]
    fn a_last_will_sends_no_receipts_and_the_next_online_status_does() {
        let mut w = world(Policy {
            auto_reorder: true,
            ..Policy::default()
        });
        w.status(&tx("a", 1, "pods", "POD", 1, 100));
        assert!(w.presence(Presence::Online, 7, 1).receipts.is_empty());
        w.change("a", Action::Cancel, Some("x"), t0()).unwrap();

        // The device drops: its Last Will reaches nobody, so nothing is sent or marked.
        let will = w.presence(Presence::Offline, 7, u64::MAX);
        assert_eq!(will.statuses, 1);
        assert!(will.receipts.is_empty(), "{:?}", will.receipts);
        assert!(will.policies.is_empty(), "{:?}", will.policies);
        assert_eq!(w.notified("a").as_deref(), Some("accepted"));
        // A status of the old session delivered late changes nothing either.
        assert!(w.presence(Presence::Online, 7, 2).receipts.is_empty());
        assert_eq!(w.notified("a").as_deref(), Some("accepted"));

        // Back online: the cancellation reaches the device, once.
        let online = w.presence(Presence::Online, 8, 1);
        assert_eq!(online.receipts.len(), 1);
        assert_eq!(online.receipts[0].1.status, TxStatus::Cancelled);
        assert_eq!(w.notified("a").as_deref(), Some("cancelled"));
        assert!(
            w.presence(Presence::Online, 8, 1).receipts.is_empty(),
            "a replay"
        );
        assert!(w.presence(Presence::Online, 8, 2).receipts.is_empty());
    }

    #[test]
    fn a_lost_receipt_is_sent_again_while_the_devices_status_lists_the_order_with_another_status() {
        use TxStatus::{Accepted, Cancelled, HeldForConfirmation as Held};
        let mut w = world(Policy {
            auto_reorder: true,
            ..Policy::default()
        });
        let decided = w.send(&tx("a", 1, "pods", "POD", 1, 100)).receipts;
        assert_eq!(decided[0].1.status, Accepted);
        assert_eq!(w.status(&tx("b", 2, "milk", "POD", 1, 110)).0, Held);
        assert_eq!(w.notified("a").as_deref(), Some("accepted"));
        let statuses = |out: ingest::BatchOutcome| -> Vec<(String, TxStatus)> {
            out.receipts
                .iter()
                .map(|(d, r)| {
                    assert_eq!(d.as_str(), "d1");
                    (r.tx_id.to_string(), r.status)
                })
                .collect()
        };
        // What the device lists is what the cloud has: nothing to send.
        assert_eq!(
            statuses(w.online_listing(1, 1, &[("a", Accepted), ("b", Held)])),
            vec![]
        );

        // Staff cancel `a`; the next online status carries the cancellation and marks it
        // told, but the publish is lost (the device dropped off mid-publish).
        w.change("a", Action::Cancel, Some("x"), t0()).unwrap();
        let lost = w.online_listing(1, 2, &[("a", Accepted), ("b", Held)]);
        assert_eq!(statuses(lost), vec![("a".to_owned(), Cancelled)]);
        assert_eq!(w.notified("a").as_deref(), Some("cancelled"));

        // An agent that lists nothing (an older one) is not told again...
        assert_eq!(statuses(w.presence(Presence::Online, 1, 3)), vec![]);
        // ...but the device's list says it still believes `a` accepted: sent again, the
        // same receipt, at every online status until the device has applied it.
        let again = w.online_listing(1, 4, &[("a", Accepted), ("b", Held)]);
        assert_eq!(again.receipts.len(), 1, "{:?}", again.receipts);
        let r = &again.receipts[0].1;
        assert_eq!(
            (r.tx_sha256.as_str(), r.status),
            (decided[0].1.tx_sha256.as_str(), Cancelled)
        );
        assert_eq!(
            statuses(w.online_listing(1, 5, &[("a", Accepted), ("b", Held)])),
            vec![("a".to_owned(), Cancelled)]
        );
        // A replayed older status, or a Last Will, sends nothing, whatever it lists.
        assert_eq!(statuses(w.online_listing(1, 5, &[("a", Accepted)])), vec![]);
        assert_eq!(statuses(w.online_listing(1, 4, &[("a", Accepted)])), vec![]);

        // Applied: the device lists only `b`, as held, which it is.
        assert_eq!(statuses(w.online_listing(1, 6, &[("b", Held)])), vec![]);
        // A device that claims to be further along than the cloud (a faulty one) gets
        // nothing: the agent would ignore a receipt moving its order back, for ever.
        assert_eq!(statuses(w.online_listing(1, 7, &[("b", Accepted)])), vec![]);

        // Unknown ids and another device's orders are ignored.
        let other = KeyPair::generate();
        w.conn
            .execute(
                "INSERT INTO devices (id, member_id, public_key, registered_ms) VALUES ('d2', 'm1', ?1, 0)",
                [other.public().as_bytes().as_slice()],
            )
            .unwrap();
        let mut c = tx("c", 1, "pods", "POD", 1, 100);
        c.device_id = DeviceId::parse("d2").unwrap();
        let d1_key = std::mem::replace(&mut w.device, other);
        assert_eq!(w.send(&c).receipts[0].1.status, Accepted);
        w.device = d1_key;
        w.change("c", Action::Cancel, None, t0()).unwrap();
        assert_eq!(
            statuses(w.online_listing(1, 8, &[("c", Accepted), ("zz", Held), ("b", Held)])),
            vec![]
        );

        // Confirmed while the device was away: the receipt goes at its return, is lost,
        // and goes again while the device still lists the order as held.
        w.change("b", Action::Confirm, None, t0()).unwrap();
        assert_eq!(statuses(w.presence(Presence::Offline, 1, u64::MAX)), vec![]);
        assert_eq!(
            statuses(w.online_listing(2, 1, &[("b", Held)])),
            vec![("b".to_owned(), Accepted)]
        );
        assert_eq!(
            statuses(w.online_listing(2, 2, &[("b", Held)])),
            vec![("b".to_owned(), Accepted)]
        );
        assert_eq!(statuses(w.online_listing(2, 3, &[("b", Accepted)])), vec![]);
    }

    #[test]
    fn a_policy_changed_while_the_device_was_offline_reaches_it_at_its_next_online_status() {
        let mut w = world(Policy {
            auto_reorder: true,
            ..Policy::default()
        });
        let mut pushes = crate::worker::PolicyPushes::default();
        let mut sent = |out: ingest::BatchOutcome| -> Vec<bool> {
            out.policies
                .iter()
                .filter(|p| pushes.should_send(p))
                .map(|p| p.policy.auto_reorder)
                .collect()
        };
        assert_eq!(sent(w.presence(Presence::Online, 1, 1)), vec![true]);
        assert_eq!(sent(w.presence(Presence::Online, 1, 2)), Vec::<bool>::new());
        let will = w.presence(Presence::Offline, 1, u64::MAX);
        assert!(will.policies.is_empty(), "{:?}", will.policies);
        set_policy(
            &w.conn,
            &MemberId::parse("m1").unwrap(),
            &Policy::default(),
            t0(),
        )
        .unwrap();
        assert_eq!(sent(w.presence(Presence::Online, 2, 1)), vec![false]);
        // Unchanged, but a new session: the agent may have missed it, so it goes again.
        w.presence(Presence::Offline, 2, u64::MAX);
        assert_eq!(sent(w.presence(Presence::Online, 3, 1)), vec![false]);
        assert_eq!(sent(w.presence(Presence::Online, 3, 2)), Vec::<bool>::new());
    }

    #[test]
    fn an_accepted_order_is_handed_to_fulfilment_once_and_told_to_the_member() {
        let mut w = world(Policy {
            auto_reorder: true,
            ..Policy::default()
        });
        let cfg = CloudConfig {
            data_dir: w._dir.path().to_path_buf(),
            ..CloudConfig::default()
        };
        w.rules.fulfilment_webhook = Some("shop".into());
        w.rules.outreach = Some(Arc::new(Outreach::new(&cfg).unwrap()));
        let fulfilment = |c: &Connection| -> Vec<(String, String, String, serde_json::Value)> {
            c.prepare(
                "SELECT channel, target, idempotency_key, payload FROM deliveries
                 WHERE purpose = 'fulfilment' ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    serde_json::from_str(&r.get::<_, String>(3)?).unwrap(),
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
        };
        let told = |c: &Connection, tx_id: &str| -> i64 {
            c.query_row(
                "SELECT COUNT(*) FROM outreach WHERE member_id = 'm1' AND rule = 'order_cancellable'
                 AND trigger_key = ?1",
                [format!("order:{tx_id}:cancellable")],
                |r| r.get(0),
            )
            .unwrap()
        };

        let a = tx("a", 1, "pods", "POD", 2, 100);
        assert_eq!(w.status(&a).0, TxStatus::Accepted);
        let planned = told(&w.conn, "a");
        assert!(planned > 0, "the member is told the order can be cancelled");
        let again = w.send(&a);
        assert_eq!(again.tx_duplicate, 1);
        let f = fulfilment(&w.conn);
        assert_eq!(f.len(), 1, "one fulfilment delivery, whatever the re-sends");
        assert_eq!(
            (f[0].0.as_str(), f[0].1.as_str(), f[0].2.as_str()),
            ("webhook", "shop", "order:a")
        );
        assert_eq!(
            f[0].3,
            serde_json::json!({
                "type": "order.accepted", "tx_id": "a", "member_id": "m1", "device_id": "d1",
                "sku": "POD", "qty": 2, "amount": 200, "currency": "EUR",
            })
        );
        assert_eq!(told(&w.conn, "a"), planned, "told once");

        // Rejected and held orders are not handed over; a confirmed one is, once.
        w.status(&tx("r", 2, "pods", "POD", 1, 100));
        assert_eq!(
            w.status(&tx("b", 3, "milk", "POD", 1, 200)).0,
            TxStatus::HeldForConfirmation
        );
        assert_eq!(fulfilment(&w.conn).len(), 1);
        w.change("b", Action::Confirm, None, t0()).unwrap();
        let f = fulfilment(&w.conn);
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].2, "order:b");
        assert!(told(&w.conn, "b") > 0);
    }
}

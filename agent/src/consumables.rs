//! Consumables and replenishment: what each slot holds, how usage drains it, and when
//! the device orders more by itself.
//!
//! # Rules
//!
//! - Each slot (`[[consumables]]` in the agent config) has a capacity, units used per
//!   usage kind (`usage = { brew = 1 }`), a threshold, a reorder quantity and the price
//!   quote the member consented to. Levels are durable, in the outbox, and change in the
//!   same transaction as the usage event that drains them (so the CLI, the socket and an
//!   in-process simulator all drain them the same way). A slot starts full.
//! - **Ordering.** After a usage event, a slot whose level is below its threshold orders
//!   `reorder_qty` when (1) the member opted in — the policy last pushed by the cloud on
//!   the downlink, or `[orders] auto_reorder` from the config until one was pushed —,
//!   (2) the slot is *armed* and (3) it has no open order. The order is stored in the
//!   outbox in the same transaction; its per-device counter comes from a persisted counter.
//! - **Armed.** A slot is armed when full or refilled. Creating an order disarms it, and
//!   so does a rejection or cancellation: a refused order is not retried until the next
//!   refill, so a member who is over a limit is not asked again on every brew.
//! - **At most one open order per slot.** An order is open from creation until it is
//!   rejected, cancelled or delivered, or (accepted or held) until the slot is refilled.
//!   `rollcall-agent refill SLOT [--qty N]` (or [`crate::outbox::Outbox::refill`]) fills the slot,
//!   re-arms it, and marks its accepted order delivered; the slot's next order names that
//!   order in `refilled`, so the cloud closes it as delivered too.
//! - **Sending.** The uplink signs each new order once (DSSE,
//!   [`TRANSACTION_PAYLOAD_TYPE`](rollcall_shared::dsse::TRANSACTION_PAYLOAD_TYPE)),
//!   stores the envelope, and publishes exactly those bytes on `.../tx` until a receipt
//!   for them arrives: after each (re)connect and every `uplink.ack_timeout_s`. Orders are
//!   never evicted, whatever the outbox's `when_full` policy.
//! - **Receipts** must verify under the configured `cloud_public_key` and name the
//!   SHA-256 of the exact payload the device signed. Status only moves forward
//!   (`pending` → `accepted`/`held_for_confirmation`/`rejected` → `cancelled`/`delivered`).
//!
//! # In process (simulators)
//!
//! Give the outbox the consumables: `MemoryOutbox::new(limits, clock).with_consumables(Arc::new(consumables))`
//! (or `SqliteOutbox::open(..)?.with_consumables(..)`), and run [`crate::run_uplink`] with
//! that outbox as usual. Every `Outbox::append` of a usage event then drains the slots,
//! and the uplink signs, sends and re-sends the device's orders and applies the cloud's
//! receipts and policy; set `Consumables::auto_reorder` to order before the cloud has
//! pushed a policy. Nothing else in `AgentRuntime` changes.

use chrono::{DateTime, Utc};
use rollcall_shared::payload::{ReorderReason, Transaction, TxStatus};
use rollcall_shared::{Currency, DeviceId, EventKind, Sku, SlotId, TxId, PROTOCOL_VERSION};
use serde::Serialize;
use std::collections::BTreeMap;

/// One slot's configuration (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotConfig {
    /// The slot's name.
    pub slot: SlotId,
    /// What it holds.
    pub sku: Sku,
    /// Units when full.
    pub capacity: u32,
    /// Units used per usage event of each kind (times the event's qty).
    pub usage: BTreeMap<EventKind, u32>,
    /// Order when the level falls below this.
    pub threshold: u32,
    /// Units to order.
    pub reorder_qty: u32,
    /// Price per unit the member consented to, minor units.
    pub unit_price: i64,
    /// Its currency.
    pub currency: Currency,
}

/// Every slot of a device, and the opt-in used until the cloud pushes a policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consumables {
    /// The slots.
    pub slots: Vec<SlotConfig>,
    /// Opt-in from the config (`[orders] auto_reorder`); a policy pushed by the cloud wins.
    pub auto_reorder: bool,
}

impl Consumables {
    /// The slot named `slot`.
    pub fn slot(&self, slot: &SlotId) -> Option<&SlotConfig> {
        self.slots.iter().find(|s| s.slot == *slot)
    }

    /// Units each slot loses to `qty` events of `kind`.
    pub fn drain<'a>(
        &'a self,
        kind: &'a EventKind,
        qty: u32,
    ) -> impl Iterator<Item = (&'a SlotConfig, i64)> + 'a {
        self.slots.iter().filter_map(move |s| {
            s.usage
                .get(kind)
                .map(|per| (s, i64::from(*per) * i64::from(qty)))
        })
    }
}

/// Where an order stands on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    /// Created; no receipt yet (being sent and re-sent).
    Pending,
    /// Accepted by the cloud.
    Accepted,
    /// Held until the member confirms.
    HeldForConfirmation,
    /// Refused; `reason` says why.
    Rejected,
    /// Cancelled by the member or staff.
    Cancelled,
    /// Delivered (by the cloud's word, or the slot was refilled).
    Delivered,
}

impl OrderState {
    /// The storage and display name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Pending => "pending",
            OrderState::Accepted => "accepted",
            OrderState::HeldForConfirmation => "held_for_confirmation",
            OrderState::Rejected => "rejected",
            OrderState::Cancelled => "cancelled",
            OrderState::Delivered => "delivered",
        }
    }

    /// Parses the storage name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => OrderState::Pending,
            "accepted" => OrderState::Accepted,
            "held_for_confirmation" => OrderState::HeldForConfirmation,
            "rejected" => OrderState::Rejected,
            "cancelled" => OrderState::Cancelled,
            "delivered" => OrderState::Delivered,
            _ => return None,
        })
    }

    fn rank(self) -> u8 {
        match self {
            OrderState::Pending => 0,
            OrderState::HeldForConfirmation => 1,
            OrderState::Accepted => 2,
            OrderState::Rejected | OrderState::Cancelled | OrderState::Delivered => 3,
        }
    }

    /// The state after a receipt saying `status`, or `None` when it would move backwards
    /// (a stale or repeated receipt).
    pub fn after_receipt(self, status: TxStatus) -> Option<OrderState> {
        let next = match status {
            TxStatus::Accepted => OrderState::Accepted,
            TxStatus::HeldForConfirmation => OrderState::HeldForConfirmation,
            TxStatus::Rejected => OrderState::Rejected,
            TxStatus::Cancelled => OrderState::Cancelled,
            TxStatus::Delivered => OrderState::Delivered,
        };
        (next.rank() > self.rank()).then_some(next)
    }

    /// Whether an order in this state keeps its slot from ordering again.
    pub fn is_final(self) -> bool {
        self.rank() == 3
    }
}

/// A slot's durable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotState {
    /// The slot.
    pub slot: SlotId,
    /// Units left (negative when usage outran the believed capacity).
    pub level: i64,
    /// May order when low (see the module doc).
    pub armed: bool,
    /// The open order, if any.
    pub open_tx: Option<TxId>,
    /// The last order a refill marked delivered, to be reported in the slot's next order
    /// (`Transaction::refilled`) so the cloud closes it too.
    pub delivered_tx: Option<TxId>,
}

/// An order as the outbox holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderRecord {
    /// Idempotency key.
    pub tx_id: TxId,
    /// Per-device counter.
    pub counter: u64,
    /// Slot.
    pub slot: SlotId,
    /// Article.
    pub sku: Sku,
    /// Units.
    pub qty: u32,
    /// Quote per unit, minor units.
    pub unit_price: i64,
    /// Currency.
    pub currency: Currency,
    /// Level when ordered.
    pub level: i64,
    /// Threshold crossed.
    pub threshold: i64,
    /// Device time of creation.
    pub created_at: DateTime<Utc>,
    /// Where it stands.
    pub state: OrderState,
    /// Reason from the cloud (rejections, holds).
    pub reason: Option<String>,
    /// Hex SHA-256 of the signed payload, once signed.
    pub payload_sha256: Option<String>,
    /// The cloud's ledger entry for the latest status.
    pub ledger_index: Option<u64>,
    /// When the state last changed (agent clock).
    pub updated_at: DateTime<Utc>,
    /// The slot's previous order, delivered by a refill since (reported to the cloud).
    pub refilled: Option<TxId>,
}

impl OrderRecord {
    /// The transaction this order becomes, for `device`.
    pub fn transaction(&self, device: &DeviceId) -> Transaction {
        Transaction {
            v: PROTOCOL_VERSION,
            tx_id: self.tx_id.clone(),
            device_id: device.clone(),
            counter: self.counter,
            slot: self.slot.clone(),
            sku: self.sku.clone(),
            qty: self.qty,
            unit_price: self.unit_price,
            currency: self.currency.clone(),
            amount: i64::from(self.qty) * self.unit_price,
            reason: ReorderReason {
                level: self.level,
                threshold: self.threshold,
            },
            created_at: crate::capture::protocol_time(self.created_at),
            refilled: self.refilled.clone(),
        }
    }
}

/// A fresh, unguessable transaction id.
pub fn new_tx_id() -> TxId {
    TxId::parse(&format!(
        "tx-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    ))
    .expect("a valid id")
}

/// Whether a slot in `state`, after draining, must order now.
pub fn must_order(cfg: &SlotConfig, state: &SlotState, opted_in: bool) -> bool {
    opted_in && state.armed && state.open_tx.is_none() && state.level < i64::from(cfg.threshold)
}

/// What applying a receipt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// The order moved to a new state.
    Applied(OrderState),
    /// Already in that state or beyond (a repeated receipt): nothing changed.
    Unchanged,
    /// No such order here.
    UnknownOrder,
    /// The receipt is about other bytes than the ones this device signed.
    Mismatch,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_only_move_forward() {
        use OrderState::*;
        assert_eq!(Pending.after_receipt(TxStatus::Accepted), Some(Accepted));
        assert_eq!(Accepted.after_receipt(TxStatus::Accepted), None);
        assert_eq!(Delivered.after_receipt(TxStatus::Accepted), None);
        assert_eq!(
            HeldForConfirmation.after_receipt(TxStatus::Accepted),
            Some(Accepted)
        );
        assert_eq!(Accepted.after_receipt(TxStatus::Cancelled), Some(Cancelled));
        assert_eq!(Rejected.after_receipt(TxStatus::Delivered), None);
        for s in [
            Pending,
            Accepted,
            HeldForConfirmation,
            Rejected,
            Cancelled,
            Delivered,
        ] {
            assert_eq!(OrderState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn a_slot_orders_only_when_low_armed_free_and_opted_in() {
        let cfg = SlotConfig {
            slot: SlotId::parse("pods").unwrap(),
            sku: Sku::parse("POD").unwrap(),
            capacity: 10,
            usage: BTreeMap::from([(EventKind::parse("brew").unwrap(), 1)]),
            threshold: 3,
            reorder_qty: 10,
            unit_price: 100,
            currency: Currency::parse("EUR").unwrap(),
        };
        let mut s = SlotState {
            slot: cfg.slot.clone(),
            level: 3,
            armed: true,
            open_tx: None,
            delivered_tx: None,
        };
        assert!(!must_order(&cfg, &s, true));
        s.level = 2;
        assert!(must_order(&cfg, &s, true));
        assert!(!must_order(&cfg, &s, false));
        s.armed = false;
        assert!(!must_order(&cfg, &s, true));
        s.armed = true;
        s.open_tx = Some(new_tx_id());
        assert!(!must_order(&cfg, &s, true));
    }
}

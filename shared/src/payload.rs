//! The messages carried inside the envelopes, each with one type that encodes and
//! decodes itself. Decoding is strict: unknown fields and versions are rejected, and
//! every limit in [`crate::limits`] is checked, so a value you hold is a valid message.

use crate::ids::{Currency, DeviceId, EventKind, Seq, Sku, SlotId, TxId};
use crate::limits::*;
use crate::PROTOCOL_VERSION;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Why a payload was refused. [`PayloadError::reason`] gives the quarantine reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The payload's `v` is not a version this build speaks.
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(String),
    /// The payload does not parse, or breaks a rule other than size.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// The payload breaks a size limit.
    #[error("payload too large: {0}")]
    TooLarge(String),
}

impl PayloadError {
    /// The machine-readable reason code (`unsupported_version`, `malformed`, `too_large`).
    /// None of these can succeed on retry: the same bytes will fail the same way.
    pub fn reason(&self) -> &'static str {
        match self {
            PayloadError::UnsupportedVersion(_) => "unsupported_version",
            PayloadError::Malformed(_) => "malformed",
            PayloadError::TooLarge(_) => "too_large",
        }
    }
}

#[derive(Deserialize)]
struct VersionProbe {
    #[serde(default)]
    v: Option<serde_json::Value>,
}

/// Strict decode with a version check that distinguishes "unknown version" from "broken".
fn decode_versioned<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    max: usize,
    version: impl Fn(&T) -> u32,
) -> Result<T, PayloadError> {
    if bytes.len() > max {
        return Err(PayloadError::TooLarge(format!(
            "{} bytes; the limit is {max}",
            bytes.len()
        )));
    }
    match serde_json::from_slice::<T>(bytes) {
        Ok(t) if version(&t) == PROTOCOL_VERSION => Ok(t),
        Ok(t) => Err(PayloadError::UnsupportedVersion(version(&t).to_string())),
        Err(e) => match serde_json::from_slice::<VersionProbe>(bytes) {
            Ok(VersionProbe { v: Some(v) }) if v != serde_json::json!(PROTOCOL_VERSION) => {
                Err(PayloadError::UnsupportedVersion(v.to_string()))
            }
            Ok(VersionProbe { v: None }) => {
                Err(PayloadError::Malformed("missing version field `v`".into()))
            }
            _ => Err(PayloadError::Malformed(e.to_string())),
        },
    }
}

fn check_time(what: &str, t: &DateTime<Utc>) -> Result<(), PayloadError> {
    let s = t.timestamp();
    if !(MIN_TIMESTAMP_S..MAX_TIMESTAMP_S).contains(&s) {
        return Err(PayloadError::Malformed(format!(
            "{what} {t} is outside 2000..2100"
        )));
    }
    Ok(())
}

/// One usage event as it travels: what happened, how much, when (device time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageEvent {
    /// Per-device monotonic sequence number; `(device_id, seq)` is the event's identity.
    pub seq: Seq,
    /// What happened.
    pub kind: EventKind,
    /// How much (pods, pages, minutes); at least 1.
    pub qty: u32,
    /// When it happened, by the device's clock.
    pub occurred_at: DateTime<Utc>,
    /// Free-form attributes (`drink=latte`), bounded in count and length.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: BTreeMap<String, String>,
    /// Set when the device's clock was not trustworthy when the event was recorded
    /// (before the agent's build date, or far in the future).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clock_suspect: bool,
}

impl UsageEvent {
    /// Checks one event against the protocol limits.
    pub fn validate(&self) -> Result<(), PayloadError> {
        if self.qty == 0 || self.qty > MAX_QTY {
            return Err(PayloadError::Malformed(format!(
                "event {}: qty {} is outside 1..={MAX_QTY}",
                self.seq, self.qty
            )));
        }
        check_time("occurred_at", &self.occurred_at)?;
        validate_attrs(&self.attrs).map_err(|e| match e {
            PayloadError::Malformed(m) => {
                PayloadError::Malformed(format!("event {}: {m}", self.seq))
            }
            other => other,
        })
    }

    /// A 64-bit fingerprint of the event's content, to tell a re-sent event (same
    /// fingerprint) from a different event reusing a sequence number.
    pub fn fingerprint(&self) -> i64 {
        let bytes = serde_json::to_vec(self).expect("events serialise");
        let d = Sha256::digest(bytes);
        i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
    }

    /// True when `occurred_at` is not believable against `now` (see [`UsageEvent::clock_suspect`]).
    pub fn time_is_suspect(occurred_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        occurred_at.timestamp() < BUILD_EPOCH_S
            || (occurred_at - now).num_seconds() > MAX_FUTURE_SKEW_S
    }
}

/// Checks an attribute map against the limits (also used by the agent before it stores one).
pub fn validate_attrs(attrs: &BTreeMap<String, String>) -> Result<(), PayloadError> {
    if attrs.len() > MAX_ATTRS_PER_EVENT {
        return Err(PayloadError::Malformed(format!(
            "{} attributes; the limit is {MAX_ATTRS_PER_EVENT}",
            attrs.len()
        )));
    }
    for (k, v) in attrs {
        if k.is_empty() || k.len() > MAX_ATTR_KEY_LEN {
            return Err(PayloadError::Malformed(format!(
                "attribute key {k:?} must be 1..={MAX_ATTR_KEY_LEN} bytes"
            )));
        }
        if !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(PayloadError::Malformed(format!(
                "attribute key {k:?} may only contain ASCII letters, digits, '_', '-' and '.'"
            )));
        }
        if v.len() > MAX_ATTR_VALUE_LEN {
            return Err(PayloadError::Malformed(format!(
                "attribute {k:?} value is {} bytes; the limit is {MAX_ATTR_VALUE_LEN}",
                v.len()
            )));
        }
    }
    Ok(())
}

/// A batch of usage events from one device: one MQTT message on `.../usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    /// Protocol version; must be [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The device that recorded the events (must match the signing key's device).
    pub device_id: DeviceId,
    /// Per-device monotonic report number; the cloud acks by it.
    pub report_seq: u64,
    /// When the report was (re)sent, by the device's clock.
    pub sent_at: DateTime<Utc>,
    /// Changes every time the agent starts; helps tell reboots apart.
    pub boot_id: String,
    /// The events, in strictly increasing `seq` order.
    pub events: Vec<UsageEvent>,
}

impl UsageReport {
    /// Decodes and validates a report body.
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let r: UsageReport = decode_versioned(bytes, MAX_REPORT_BODY_BYTES, |r: &UsageReport| r.v)?;
        r.validate()?;
        Ok(r)
    }

    /// The JSON body.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("reports serialise")
    }

    /// Checks the report against every protocol rule.
    pub fn validate(&self) -> Result<(), PayloadError> {
        if self.v != PROTOCOL_VERSION {
            return Err(PayloadError::UnsupportedVersion(self.v.to_string()));
        }
        if self.events.is_empty() {
            return Err(PayloadError::Malformed(
                "a report carries at least one event".into(),
            ));
        }
        if self.events.len() > MAX_EVENTS_PER_REPORT {
            return Err(PayloadError::TooLarge(format!(
                "{} events; the limit is {MAX_EVENTS_PER_REPORT}",
                self.events.len()
            )));
        }
        if self.report_seq == 0 {
            return Err(PayloadError::Malformed("report_seq starts at 1".into()));
        }
        if self.boot_id.is_empty() || self.boot_id.len() > MAX_BOOT_ID_LEN {
            return Err(PayloadError::Malformed(format!(
                "boot_id must be 1..={MAX_BOOT_ID_LEN} bytes"
            )));
        }
        check_time("sent_at", &self.sent_at)?;
        let mut prev: Option<Seq> = None;
        for e in &self.events {
            if let Some(p) = prev {
                if e.seq <= p {
                    return Err(PayloadError::Malformed(format!(
                        "event seq {} follows {p}: not increasing",
                        e.seq
                    )));
                }
            }
            prev = Some(e.seq);
            e.validate()?;
        }
        Ok(())
    }
}

/// Whether a device is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Connected (published by the agent on connect and periodically).
    Online,
    /// Disconnected (the agent's Last Will, or its clean shutdown).
    Offline,
}

/// The agent's view of its own health, carried in status messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Events in the outbox not yet acknowledged by the cloud.
    pub outbox_depth: u64,
    /// Age of the oldest unacknowledged event, in seconds.
    pub oldest_unsent_age_s: Option<u64>,
    /// When the cloud last acknowledged a report.
    pub last_ack_at: Option<DateTime<Utc>>,
    /// Successful reconnects since the agent started.
    pub reconnects: u64,
    /// Events evicted from a full outbox (only under the `drop_oldest` policy).
    pub evictions: u64,
    /// Events refused because the outbox was full (under the `reject` policy).
    pub rejected_full: u64,
    /// Consumable slots and their levels (agents that track consumables; at most
    /// [`MAX_STATUS_SLOTS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumables: Vec<SlotLevel>,
    /// The orders the agent still holds open (a receipt came, the status is not final:
    /// `accepted` or `held_for_confirmation`) with the status it last heard for each; at
    /// most [`MAX_STATUS_ORDERS`]. The cloud sends the receipt again for every listed order
    /// whose status it knows to be different, so a lost receipt of a later status change
    /// is repaired by the next status. Orders still waiting for their first receipt are
    /// not listed: the agent re-sends their transaction, which is answered with a receipt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orders: Vec<OpenOrder>,
}

/// An order the agent holds open, as listed in its status ([`Health::orders`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenOrder {
    /// The order's transaction.
    pub tx_id: TxId,
    /// The status of the last receipt the agent applied for it.
    pub status: TxStatus,
}

/// A consumable slot's level, as the agent believes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotLevel {
    /// The slot.
    pub slot: SlotId,
    /// The article it holds.
    pub sku: Sku,
    /// Units left (negative when usage outran the believed capacity).
    pub level: i64,
    /// Units when full.
    pub capacity: u32,
}

/// A retained status message on `.../status`; also the Last Will.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceStatus {
    /// Protocol version.
    pub v: u32,
    /// The device.
    pub device_id: DeviceId,
    /// Online or offline.
    pub state: Presence,
    /// Device time of the message (for a Last Will: when the session began).
    pub at: DateTime<Utc>,
    /// Connection counter of the agent; with `n` orders status messages so old ones
    /// (and replays) never overwrite newer ones.
    pub session: u64,
    /// Position within the session; a Last Will uses `u64::MAX`, the last word of its session.
    pub n: u64,
    /// Agent health (absent in a Last Will).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

impl DeviceStatus {
    /// Decodes and validates a status body.
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let s: DeviceStatus =
            decode_versioned(bytes, MAX_STATUS_BODY_BYTES, |s: &DeviceStatus| s.v)?;
        check_time("at", &s.at)?;
        if let Some(h) = &s.health {
            if h.consumables.len() > MAX_STATUS_SLOTS {
                return Err(PayloadError::TooLarge(format!(
                    "{} consumable slots; the limit is {MAX_STATUS_SLOTS}",
                    h.consumables.len()
                )));
            }
            if h.orders.len() > MAX_STATUS_ORDERS {
                return Err(PayloadError::TooLarge(format!(
                    "{} open orders; the limit is {MAX_STATUS_ORDERS}",
                    h.orders.len()
                )));
            }
        }
        Ok(s)
    }
    /// The JSON body.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("status serialises")
    }
}

/// What the cloud did with a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Committed to the store now.
    Stored,
    /// Already stored before (the ack had been lost); nothing changed.
    Duplicate,
    /// Validly signed but refused for good (kept in quarantine with `reason`);
    /// re-sending cannot help, so the agent drops it from the outbox and counts it.
    Rejected,
}

/// The cloud's acknowledgement of one usage report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// The report acknowledged.
    pub report_seq: u64,
    /// What happened to it.
    pub status: AckStatus,
    /// Events newly stored by this report.
    pub stored: u32,
    /// Quarantine reason code when rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why the device ordered: the slot's level fell below its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReorderReason {
    /// The slot's level (units) when the order was created; may be negative when usage
    /// outran the capacity the device believed it had.
    pub level: i64,
    /// The threshold it crossed.
    pub threshold: i64,
}

/// A device-initiated replenishment transaction: the payload of a DSSE envelope of
/// [`crate::dsse::TRANSACTION_PAYLOAD_TYPE`] on `.../tx`.
///
/// `tx_id` is the idempotency key: the same id with the same content always gets the same
/// outcome; the same id with other content is a conflict. `counter` is per device and
/// strictly increasing over the device's transactions, so an old envelope under a new id
/// (a replay) is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transaction {
    /// Protocol version.
    pub v: u32,
    /// The idempotency key.
    pub tx_id: TxId,
    /// The ordering device (must match the signing key's device).
    pub device_id: DeviceId,
    /// Per-device monotonic transaction counter, from 1.
    pub counter: u64,
    /// The device's slot being replenished.
    pub slot: SlotId,
    /// What to order.
    pub sku: Sku,
    /// How many units (1..=[`MAX_ORDER_QTY`]).
    pub qty: u32,
    /// The unit price quote the member consented to, in minor units (cents).
    pub unit_price: i64,
    /// The quote's currency.
    pub currency: Currency,
    /// `qty * unit_price`, in minor units.
    pub amount: i64,
    /// Level and threshold when the order was created.
    pub reason: ReorderReason,
    /// Device time of creation.
    pub created_at: DateTime<Utc>,
    /// The slot's previous order, which the device has seen delivered (the slot was
    /// refilled) since: the cloud closes it as `delivered` before judging this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refilled: Option<TxId>,
}

impl Transaction {
    /// Decodes and validates a transaction body.
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let t: Transaction = decode_versioned(bytes, MAX_TX_BODY_BYTES, |t: &Transaction| t.v)?;
        t.validate()?;
        Ok(t)
    }

    /// The JSON body (what the device signs).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("transactions serialise")
    }

    /// Checks the transaction against the protocol rules.
    pub fn validate(&self) -> Result<(), PayloadError> {
        if self.v != PROTOCOL_VERSION {
            return Err(PayloadError::UnsupportedVersion(self.v.to_string()));
        }
        if self.counter == 0 {
            return Err(PayloadError::Malformed("counter starts at 1".into()));
        }
        if self.qty == 0 || self.qty > MAX_ORDER_QTY {
            return Err(PayloadError::Malformed(format!(
                "qty {} is outside 1..={MAX_ORDER_QTY}",
                self.qty
            )));
        }
        if !(0..=MAX_UNIT_PRICE).contains(&self.unit_price) {
            return Err(PayloadError::Malformed(format!(
                "unit_price {} is outside 0..={MAX_UNIT_PRICE}",
                self.unit_price
            )));
        }
        if self.amount != i64::from(self.qty) * self.unit_price {
            return Err(PayloadError::Malformed(format!(
                "amount {} is not qty {} x unit_price {}",
                self.amount, self.qty, self.unit_price
            )));
        }
        check_time("created_at", &self.created_at)
    }
}

/// Where a transaction stands. The cloud decides `accepted`, `held_for_confirmation` or
/// `rejected`; later `cancelled` (within the cancellation window) or `delivered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxStatus {
    /// Accepted and handed to fulfilment.
    Accepted,
    /// Valid, but the member must confirm it first (e.g. the price changed).
    HeldForConfirmation,
    /// Refused for good; `reason` says why.
    Rejected,
    /// Cancelled by the member or staff.
    Cancelled,
    /// Delivered.
    Delivered,
}

impl TxStatus {
    /// The wire and storage name.
    pub fn as_str(self) -> &'static str {
        match self {
            TxStatus::Accepted => "accepted",
            TxStatus::HeldForConfirmation => "held_for_confirmation",
            TxStatus::Rejected => "rejected",
            TxStatus::Cancelled => "cancelled",
            TxStatus::Delivered => "delivered",
        }
    }
    /// Parses the storage name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "accepted" => TxStatus::Accepted,
            "held_for_confirmation" => TxStatus::HeldForConfirmation,
            "rejected" => TxStatus::Rejected,
            "cancelled" => TxStatus::Cancelled,
            "delivered" => TxStatus::Delivered,
            _ => return None,
        })
    }
    /// How far along an order's life the status is: held (1), accepted (2), final (3).
    /// A receipt only ever moves an order forward; agents ignore one that would not.
    pub fn rank(self) -> u8 {
        match self {
            TxStatus::HeldForConfirmation => 1,
            TxStatus::Accepted => 2,
            TxStatus::Rejected | TxStatus::Cancelled | TxStatus::Delivered => 3,
        }
    }
    /// True when nothing can change the status any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TxStatus::Rejected | TxStatus::Cancelled | TxStatus::Delivered
        )
    }
}

/// The cloud's answer to a transaction, on the device's downlink (signed, like every
/// downlink, by the cloud's key). Sent when the transaction is decided, again for every
/// re-send of it, and when its status later changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The transaction answered.
    pub tx_id: TxId,
    /// Hex SHA-256 of the transaction payload answered: a device ignores a receipt that
    /// is not about the exact bytes it signed.
    pub tx_sha256: String,
    /// Where it stands.
    pub status: TxStatus,
    /// Machine-readable reason when rejected or held (`over_order_limit`, `price_changed`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The ledger entry that records the decision.
    pub ledger_index: u64,
    /// Until when the order may be cancelled (accepted orders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_until: Option<DateTime<Utc>>,
    /// Cloud time of the status.
    pub at: DateTime<Utc>,
}

/// The member's replenishment policy as the device should apply it, pushed on the downlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReorderPolicy {
    /// The member opted in to automatic reordering.
    pub auto_reorder: bool,
}

/// The body of a downlink message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DownBody {
    /// Acknowledgement of a usage report, sent only after the durable commit.
    Ack(Ack),
    /// A message for the device's display; the agent stores it and answers with a
    /// [`MessageReceipt`] on `.../receipt`.
    Message(DeviceMessage),
    /// The outcome (or a later status) of a replenishment transaction.
    Receipt(Receipt),
    /// The member's current replenishment policy.
    Policy(ReorderPolicy),
}

/// A message for the device's display (outreach: "welcome back", "100 brews!").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceMessage {
    /// The message's id (the cloud's idempotency key): the same on every re-send.
    pub id: String,
    /// Short title.
    pub title: String,
    /// The text.
    pub body: String,
}

impl DeviceMessage {
    /// Checks the limits.
    pub fn validate(&self) -> Result<(), PayloadError> {
        if self.id.is_empty() || self.id.len() > MAX_MESSAGE_ID_LEN {
            return Err(PayloadError::Malformed(format!(
                "message id must be 1..={MAX_MESSAGE_ID_LEN} bytes"
            )));
        }
        if self.title.len() > MAX_MESSAGE_TITLE_LEN || self.body.len() > MAX_MESSAGE_BODY_LEN {
            return Err(PayloadError::TooLarge(format!(
                "message title/body over {MAX_MESSAGE_TITLE_LEN}/{MAX_MESSAGE_BODY_LEN} bytes"
            )));
        }
        Ok(())
    }
}

/// The agent's receipt for display messages it has stored, on `.../receipt`, signed
/// with the device key. Receipts are idempotent: re-sending one changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageReceipt {
    /// Protocol version.
    pub v: u32,
    /// The device.
    pub device_id: DeviceId,
    /// Ids of the messages stored.
    pub message_ids: Vec<String>,
    /// Device time.
    pub at: DateTime<Utc>,
}

impl MessageReceipt {
    /// Decodes and validates a receipt body.
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let r: MessageReceipt = decode_versioned(bytes, 64 * 1024, |r: &MessageReceipt| r.v)?;
        if r.message_ids.is_empty() || r.message_ids.len() > MAX_RECEIPT_IDS {
            return Err(PayloadError::Malformed(format!(
                "a receipt names 1..={MAX_RECEIPT_IDS} messages"
            )));
        }
        if r.message_ids
            .iter()
            .any(|m| m.is_empty() || m.len() > MAX_MESSAGE_ID_LEN)
        {
            return Err(PayloadError::Malformed("bad message id in receipt".into()));
        }
        check_time("at", &r.at)?;
        Ok(r)
    }
    /// The JSON body.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("receipts serialise")
    }
}

/// A message from the cloud to one device, on `.../down`, signed with the cloud's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Downlink {
    /// Protocol version.
    pub v: u32,
    /// The device addressed (the agent ignores messages for anyone else).
    pub device_id: DeviceId,
    /// Cloud time.
    pub sent_at: DateTime<Utc>,
    /// The message.
    pub body: DownBody,
}

impl Downlink {
    /// Decodes and validates a downlink body.
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let d: Downlink = decode_versioned(bytes, MAX_REPORT_BODY_BYTES, |d: &Downlink| d.v)?;
        if let DownBody::Message(m) = &d.body {
            m.validate()?;
        }
        Ok(d)
    }
    /// The JSON body.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("downlinks serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn event(seq: u64) -> UsageEvent {
        UsageEvent {
            seq: Seq::new(seq).unwrap(),
            kind: EventKind::parse("brew").unwrap(),
            qty: 1,
            occurred_at: t("2026-11-20T08:00:00Z"),
            attrs: BTreeMap::from([("drink".into(), "latte".into())]),
            clock_suspect: false,
        }
    }

    fn report(events: Vec<UsageEvent>) -> UsageReport {
        UsageReport {
            v: 1,
            device_id: DeviceId::parse("dev-1").unwrap(),
            report_seq: 1,
            sent_at: t("2026-11-20T08:00:01Z"),
            boot_id: "b1".into(),
            events,
        }
    }

    #[test]
    fn a_report_round_trips() {
        let r = report(vec![event(1), event(2)]);
        assert_eq!(UsageReport::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn unknown_versions_are_told_apart_from_malformed_reports() {
        let mut r = report(vec![event(1)]);
        r.v = 2;
        assert_eq!(
            UsageReport::decode(&r.encode()).unwrap_err().reason(),
            "unsupported_version"
        );
        let body = br#"{"v":"two","events":[]}"#;
        assert_eq!(
            UsageReport::decode(body).unwrap_err().reason(),
            "unsupported_version"
        );
        let body = br#"{"device_id":"x"}"#;
        assert_eq!(UsageReport::decode(body).unwrap_err().reason(), "malformed");
        assert_eq!(UsageReport::decode(b"{").unwrap_err().reason(), "malformed");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&report(vec![event(1)]).encode()).unwrap();
        v["extra"] = serde_json::json!(1);
        assert_eq!(
            UsageReport::decode(&serde_json::to_vec(&v).unwrap())
                .unwrap_err()
                .reason(),
            "malformed"
        );
        let mut v: serde_json::Value =
            serde_json::from_slice(&report(vec![event(1)]).encode()).unwrap();
        v["events"][0]["colour"] = serde_json::json!("red");
        assert_eq!(
            UsageReport::decode(&serde_json::to_vec(&v).unwrap())
                .unwrap_err()
                .reason(),
            "malformed"
        );
    }

    #[test]
    fn limits_are_enforced() {
        let too_many: Vec<_> = (1..=MAX_EVENTS_PER_REPORT as u64 + 1).map(event).collect();
        assert_eq!(
            report(too_many).validate().unwrap_err().reason(),
            "too_large"
        );
        let mut e = event(1);
        for i in 0..=MAX_ATTRS_PER_EVENT {
            e.attrs.insert(format!("k{i}"), "v".into());
        }
        assert_eq!(
            report(vec![e]).validate().unwrap_err().reason(),
            "malformed"
        );
        let mut e = event(1);
        e.attrs
            .insert("k".into(), "x".repeat(MAX_ATTR_VALUE_LEN + 1));
        assert!(report(vec![e]).validate().is_err());
        let mut e = event(1);
        e.qty = 0;
        assert!(report(vec![e]).validate().is_err());
        let mut e = event(1);
        e.occurred_at = t("2150-01-01T00:00:00Z");
        assert!(report(vec![e]).validate().is_err());
        assert!(report(vec![]).validate().is_err());
        assert!(report(vec![event(2), event(2)]).validate().is_err());
        let huge = vec![b' '; MAX_REPORT_BODY_BYTES + 1];
        assert_eq!(
            UsageReport::decode(&huge).unwrap_err().reason(),
            "too_large"
        );
    }

    #[test]
    fn a_full_report_of_maximal_events_fits_the_envelope_limit() {
        // The agent packs reports up to MAX_REPORT_BODY_BYTES; base64 plus the envelope must fit.
        let overhead = 4 * MAX_REPORT_BODY_BYTES.div_ceil(3) + 1024;
        assert!(overhead <= MAX_ENVELOPE_BYTES);
    }

    #[test]
    fn fingerprints_differ_when_content_differs() {
        let a = event(1);
        let mut b = event(1);
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.qty = 2;
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn suspect_times_are_those_before_the_build_or_far_ahead() {
        let now = t("2026-11-20T08:00:00Z");
        assert!(UsageEvent::time_is_suspect(t("2001-01-01T00:00:00Z"), now));
        assert!(UsageEvent::time_is_suspect(t("2026-11-21T08:00:00Z"), now));
        assert!(!UsageEvent::time_is_suspect(t("2026-11-20T08:05:00Z"), now));
    }

    fn tx() -> Transaction {
        Transaction {
            v: 1,
            tx_id: TxId::parse("tx-1").unwrap(),
            device_id: DeviceId::parse("dev-1").unwrap(),
            counter: 1,
            slot: SlotId::parse("pods").unwrap(),
            sku: Sku::parse("POD-50").unwrap(),
            qty: 2,
            unit_price: 1250,
            currency: Currency::parse("EUR").unwrap(),
            amount: 2500,
            reason: ReorderReason {
                level: 4,
                threshold: 5,
            },
            created_at: t("2026-11-20T08:00:00Z"),
            refilled: None,
        }
    }

    #[test]
    fn transactions_round_trip_and_check_their_arithmetic() {
        assert_eq!(Transaction::decode(&tx().encode()).unwrap(), tx());
        let mut bad = tx();
        bad.amount = 1;
        assert_eq!(
            Transaction::decode(&bad.encode()).unwrap_err().reason(),
            "malformed"
        );
        let mut bad = tx();
        bad.qty = 0;
        bad.amount = 0;
        assert!(bad.validate().is_err());
        let mut bad = tx();
        bad.counter = 0;
        assert!(bad.validate().is_err());
        let mut v: serde_json::Value = serde_json::from_slice(&tx().encode()).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(Transaction::decode(&serde_json::to_vec(&v).unwrap()).is_err());
    }

    #[test]
    fn receipts_and_policies_travel_as_downlinks() {
        for body in [
            DownBody::Receipt(Receipt {
                tx_id: TxId::parse("tx-1").unwrap(),
                tx_sha256: "00".repeat(32),
                status: TxStatus::HeldForConfirmation,
                reason: Some("price_changed".into()),
                ledger_index: 3,
                cancel_until: None,
                at: t("2026-11-20T08:00:00Z"),
            }),
            DownBody::Policy(ReorderPolicy { auto_reorder: true }),
        ] {
            let d = Downlink {
                v: 1,
                device_id: DeviceId::parse("dev-1").unwrap(),
                sent_at: t("2026-11-20T08:00:00Z"),
                body,
            };
            assert_eq!(Downlink::decode(&d.encode()).unwrap(), d);
        }
        for s in [
            "accepted",
            "held_for_confirmation",
            "rejected",
            "cancelled",
            "delivered",
        ] {
            assert_eq!(TxStatus::parse(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn downlinks_and_statuses_round_trip() {
        let d = Downlink {
            v: 1,
            device_id: DeviceId::parse("dev-1").unwrap(),
            sent_at: t("2026-11-20T08:00:00Z"),
            body: DownBody::Ack(Ack {
                report_seq: 4,
                status: AckStatus::Stored,
                stored: 3,
                reason: None,
            }),
        };
        assert_eq!(Downlink::decode(&d.encode()).unwrap(), d);
        let m = Downlink {
            body: DownBody::Message(DeviceMessage {
                id: "outreach:7".into(),
                title: "Welcome back".into(),
                body: "Hi Maria".into(),
            }),
            ..d.clone()
        };
        assert_eq!(Downlink::decode(&m.encode()).unwrap(), m);
        let mut big = m.clone();
        if let DownBody::Message(msg) = &mut big.body {
            msg.body = "x".repeat(MAX_MESSAGE_BODY_LEN + 1);
        }
        assert!(Downlink::decode(&big.encode()).is_err());
        let r = MessageReceipt {
            v: 1,
            device_id: DeviceId::parse("dev-1").unwrap(),
            message_ids: vec!["outreach:7".into()],
            at: t("2026-11-20T08:00:00Z"),
        };
        assert_eq!(MessageReceipt::decode(&r.encode()).unwrap(), r);
        let s = DeviceStatus {
            v: 1,
            device_id: DeviceId::parse("dev-1").unwrap(),
            state: Presence::Offline,
            at: t("2026-11-20T08:00:00Z"),
            session: 3,
            n: u64::MAX,
            health: None,
        };
        assert_eq!(DeviceStatus::decode(&s.encode()).unwrap(), s);
    }

    fn online(health: Health) -> DeviceStatus {
        DeviceStatus {
            v: 1,
            device_id: DeviceId::parse("dev-1").unwrap(),
            state: Presence::Online,
            at: t("2026-11-20T08:00:00Z"),
            session: 3,
            n: 1,
            health: Some(health),
        }
    }

    fn open_order(i: usize, status: TxStatus) -> OpenOrder {
        OpenOrder {
            tx_id: TxId::parse(&format!("tx-{i}")).unwrap(),
            status,
        }
    }

    #[test]
    fn a_status_listing_open_orders_round_trips_and_omits_an_empty_list() {
        let s = online(Health {
            orders: vec![
                open_order(1, TxStatus::Accepted),
                open_order(2, TxStatus::HeldForConfirmation),
            ],
            ..Health::default()
        });
        let body = s.encode();
        assert!(String::from_utf8_lossy(&body)
            .contains(r#""orders":[{"tx_id":"tx-1","status":"accepted"},"#));
        assert_eq!(DeviceStatus::decode(&body).unwrap(), s);
        let old_agent = online(Health::default()).encode();
        assert!(!String::from_utf8_lossy(&old_agent).contains("orders"));
        assert!(DeviceStatus::decode(&old_agent)
            .unwrap()
            .health
            .unwrap()
            .orders
            .is_empty());
    }

    #[test]
    fn a_status_with_too_many_orders_or_unknown_order_fields_is_refused() {
        let too_many = online(Health {
            orders: (0..=MAX_STATUS_ORDERS)
                .map(|i| open_order(i, TxStatus::Accepted))
                .collect(),
            ..Health::default()
        });
        let e = DeviceStatus::decode(&too_many.encode()).unwrap_err();
        assert_eq!(e.reason(), "too_large", "{e}");
        assert!(e.to_string().contains("open orders"), "{e}");

        let mut v: serde_json::Value = serde_json::from_slice(
            &online(Health {
                orders: vec![open_order(1, TxStatus::Accepted)],
                ..Health::default()
            })
            .encode(),
        )
        .unwrap();
        v["health"]["orders"][0]["slot"] = serde_json::json!("pods");
        let e = DeviceStatus::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert_eq!(e.reason(), "malformed", "{e}");
        v["health"]["orders"][0] = serde_json::json!({"tx_id": "tx-1", "status": "lost"});
        let e = DeviceStatus::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert_eq!(e.reason(), "malformed", "{e}");
    }

    #[test]
    fn a_status_with_every_slot_and_order_at_their_limits_fits_the_body_limit() {
        let id = |p: &str, i: usize| format!("{p}{i:0>w$}", w = MAX_ID_LEN - p.len());
        let s = online(Health {
            outbox_depth: u64::MAX,
            oldest_unsent_age_s: Some(u64::MAX),
            last_ack_at: Some(t("2026-11-20T08:00:00.123456Z")),
            reconnects: u64::MAX,
            evictions: u64::MAX,
            rejected_full: u64::MAX,
            consumables: (0..MAX_STATUS_SLOTS)
                .map(|i| SlotLevel {
                    slot: SlotId::parse(&id("s", i)).unwrap(),
                    sku: Sku::parse(&id("k", i)).unwrap(),
                    level: i64::MIN,
                    capacity: u32::MAX,
                })
                .collect(),
            orders: (0..MAX_STATUS_ORDERS)
                .map(|i| OpenOrder {
                    tx_id: TxId::parse(&id("tx-", i)).unwrap(),
                    status: TxStatus::HeldForConfirmation,
                })
                .collect(),
        });
        let body = s.encode();
        assert!(body.len() <= MAX_STATUS_BODY_BYTES, "{} bytes", body.len());
        assert_eq!(DeviceStatus::decode(&body).unwrap(), s);
    }
}

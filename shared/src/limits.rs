//! Protocol limits. Both sides enforce them: the agent never produces a message
//! that breaks one, and the cloud rejects (and quarantines) one that does.

/// Largest MQTT payload (a whole signed envelope) either side accepts, in bytes.
pub const MAX_ENVELOPE_BYTES: usize = 512 * 1024;
/// Largest decoded report body (the JSON inside the envelope), in bytes.
/// Base64 grows it by 4/3, which still fits [`MAX_ENVELOPE_BYTES`].
pub const MAX_REPORT_BODY_BYTES: usize = 360 * 1024;
/// Most events in one usage report.
pub const MAX_EVENTS_PER_REPORT: usize = 1_000;
/// Most attributes on one event.
pub const MAX_ATTRS_PER_EVENT: usize = 16;
/// Longest attribute key, in bytes.
pub const MAX_ATTR_KEY_LEN: usize = 32;
/// Longest attribute value, in bytes.
pub const MAX_ATTR_VALUE_LEN: usize = 128;
/// Longest device or member id, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest event kind, in bytes.
pub const MAX_KIND_LEN: usize = 32;
/// Longest boot id, in bytes.
pub const MAX_BOOT_ID_LEN: usize = 64;
/// Largest quantity on one event.
pub const MAX_QTY: u32 = 1_000_000;
/// Earliest timestamp accepted anywhere (2000-01-01T00:00:00Z), in Unix seconds.
pub const MIN_TIMESTAMP_S: i64 = 946_684_800;
/// Latest timestamp accepted anywhere (2100-01-01T00:00:00Z), in Unix seconds.
pub const MAX_TIMESTAMP_S: i64 = 4_102_444_800;
/// How far an event may lie ahead of the clock that judges it before it is flagged
/// as coming from an unsynchronised clock.
pub const MAX_FUTURE_SKEW_S: i64 = 10 * 60;
/// The agent's build date (2026-11-01): a device clock earlier than this has never synced.
pub const BUILD_EPOCH_S: i64 = 1_793_491_200;
/// Longest display-message id (the cloud's idempotency key), in bytes.
pub const MAX_MESSAGE_ID_LEN: usize = 200;
/// Longest display-message title, in bytes.
pub const MAX_MESSAGE_TITLE_LEN: usize = 200;
/// Longest display-message body, in bytes.
pub const MAX_MESSAGE_BODY_LEN: usize = 4 * 1024;
/// Most message ids in one receipt.
pub const MAX_RECEIPT_IDS: usize = 100;
/// Largest decoded transaction body, in bytes.
pub const MAX_TX_BODY_BYTES: usize = 4 * 1024;
/// Most units in one replenishment transaction.
pub const MAX_ORDER_QTY: u32 = 10_000;
/// Largest unit price, in minor units (ten million in major units).
pub const MAX_UNIT_PRICE: i64 = 1_000_000_000;

/// Most consumable slots an agent reports in one status message.
pub const MAX_STATUS_SLOTS: usize = 32;
/// Largest status message body, in bytes.
pub const MAX_STATUS_BODY_BYTES: usize = 16 * 1024;
/// Most open orders listed in one status message (`Health::orders`). With
/// [`MAX_STATUS_SLOTS`] slots and ids of [`MAX_ID_LEN`] bytes the status still fits
/// [`MAX_STATUS_BODY_BYTES`]; an agent with more open orders lists a window that moves on with every
/// status, so each is listed in turn.
pub const MAX_STATUS_ORDERS: usize = 64;

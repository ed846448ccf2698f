//! The Rollcall wire protocol, shared by the device agent and the cloud.
//!
//! # Layout
//! - [`ids`]: newtypes that can only hold valid values (`DeviceId`, `MemberId`, `Seq`, `EventKind`, ...).
//! - [`limits`]: every size and time limit of the protocol, in one place.
//! - [`dsse`]: the signed envelope (DSSE, Ed25519) and device/cloud keys.
//! - [`payload`]: the messages themselves: usage report, device status, downlink messages.
//! - [`topics`]: MQTT topic names and parsing.
//! - [`clock`]: the injected clock (`SystemClock`, `ManualClock`).
//! - [`secret`]: configuration secrets that never print.
//! - [`broker_url`]: `mqtt://` / `mqtts://` broker addresses.

pub mod broker_url;
pub mod clock;
pub mod dsse;
pub mod ids;
pub mod limits;
pub mod payload;
pub mod pidlock;
pub mod report;
pub mod secret;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod topics;

pub use broker_url::{BrokerUrl, BrokerUrlError};
pub use clock::{Clock, ManualClock, SystemClock};
pub use ids::{Currency, DeviceId, EventKind, IdError, MemberId, Seq, Sku, SlotId, TxId};
pub use secret::Secret;

/// Protocol version carried in every payload's `v` field.
pub const PROTOCOL_VERSION: u32 = 1;

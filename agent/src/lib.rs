//! The Rollcall device agent: records usage events durably on the device and reports
//! them to the cloud over MQTT as signed envelopes, deleting them only when the cloud
//! acknowledges them.
//!
//! # Layout
//!
//! - [`config`]: the TOML configuration, environment and flag overrides, validation.
//! - [`identity`]: the device's Ed25519 key and device id in the data directory.
//! - [`outbox`]: the durable store of unacknowledged events ([`outbox::Outbox`] trait,
//!   [`outbox::SqliteOutbox`], [`outbox::MemoryOutbox`]); its module doc lists the invariants.
//! - [`consumables`]: slots, levels and replenishment orders (rules, and how a simulator
//!   enables them in process).
//! - [`capture`]: validating "this happened" and appending it to the outbox (shared by
//!   the CLI and the socket).
//! - [`socket`]: the local Unix-socket capture server; its module doc is the line format.
//! - [`uplink`]: the MQTT session: batching, signing, acks, re-sends, status, Last Will,
//!   reconnect backoff as an explicit state machine. [`uplink::run_uplink`] is what a
//!   simulator runs per device.
//! - [`status`]: what `rollcall-agent status` shows.
//! - [`daemon`]: `rollcall-agent run`: lock, identity, outbox, socket and uplink together.
//! - [`cli`]: the command-line definitions, commands and exit codes.
//!
//! The binary (`src/main.rs`) only parses arguments, sets up logging and signals, and
//! calls [`cli::execute`].

#![warn(missing_docs)]

pub mod capture;
pub mod cli;
pub mod config;
pub mod consumables;
pub mod daemon;
pub mod identity;
pub mod outbox;
pub mod socket;
pub mod status;
pub mod uplink;

pub use outbox::{MemoryOutbox, Outbox, SqliteOutbox};
pub use uplink::{
    mqtt_options, run_uplink, AgentRuntime, MqttSettings, UplinkSettings, UplinkStats,
};

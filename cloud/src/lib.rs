//! Rollcall cloud: ingests signed usage reports from device agents over MQTT, stores
//! them, and serves the registry, API and metrics.
//!
//! # Layout
//! - [`config`]: `cloud.toml`, environment overrides, validation.
//! - [`domain`]: registry values that parse (`PhoneNumber` in E.164, `Email`, `TimeZone`).
//! - [`store`]: SQLite connections, pragmas, numbered migrations, dedup keys.
//! - [`registry`]: members and devices (add, import, show).
//! - [`ingest`]: checking and committing device messages; quarantine and reason codes.
//! - [`worker`]: the running ingest: MQTT subscriber → writer thread → ack publisher.
//! - [`broker`]: the embedded rumqttd broker.
//! - [`mqtt`]: broker URLs and client options (TLS, packet limits).
//! - [`keys`]: the cloud's own signing key.
//! - [`usage`]: the usage CSV format, and `usage import` (idempotent).
//! - [`scoring`]: membership scoring: active days, the fleet model, states and reasons.
//! - [`outreach`]: personalised outreach: triggers, rules, templates, policy.
//! - [`delivery`]: the durable delivery queue and its dispatcher (webhook, device, e-mail).
//! - [`orders`]: device-initiated transactions: decision, consent and limits, status changes.
//! - [`ledger`]: the tamper-evident transaction ledger (RFC 6962 Merkle tree, signed
//!   checkpoints, proofs, `ledger verify`, `ledger export`).
//! - [`metrics`]: Prometheus metrics.
//! - [`lookup`]: finding a member by phone (any format), e-mail, device, id or name.
//! - [`profile`]: a member's whole record, the data access export, erasure.
//! - [`greeting`]: what support staff say when a member calls, per language.
//! - [`telephony`]: the incoming-call webhook (Twilio signatures, TwiML, screen-pops).
//! - [`engagement`]: members per state over time, transitions, the member list, CSV.
//! - [`audit`]: the audit log of member lookups (group commit).
//! - [`http`]: the router, bearer tokens and roles, `/healthz`, `/metrics`, JSON errors.
//! - [`api`]: the support and engagement API handlers.
//! - [`console`]: the server-rendered web console and the built-in webhook sink.
//! - [`server`]: `serve`: broker + ingest + scoring + outreach + dispatcher + HTTP, started
//!   and stopped together.
//! - [`cli`]: the command-line interface of `rollcall-cloud`.

#![warn(missing_docs)]

pub mod api;
pub mod audit;
pub mod broker;
pub mod cli;
pub mod config;
pub mod console;
pub mod delivery;
pub mod domain;
pub mod engagement;
pub mod greeting;
pub mod http;
pub mod ingest;
pub mod keys;
pub mod ledger;
pub mod logging;
pub mod lookup;
pub mod metrics;
pub mod mqtt;
pub mod orders;
pub mod outreach;
pub mod profile;
pub mod readers;
pub mod registry;
pub mod scoring;
pub mod serve_lock;
pub mod server;
pub mod store;
pub mod telephony;
pub mod tokens;
pub mod usage;
pub mod worker;

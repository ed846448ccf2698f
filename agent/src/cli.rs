//! The command line: clap definitions and what each command does.
//!
//! | command | prints (stdout) | exit codes |
//! |---|---|---|
//! | `init` | `{"device_id": "...", "public_key": "<base64>"}` | 0, 1 |
//! | `record KIND [--qty N] [--at RFC3339] [--attr k=v]...` | the new event's seq | 0, 1, 2 (bad arguments), 3 (outbox full) |
//! | `run` | nothing (logs go to stderr); needs `cloud_public_key` | 0 after SIGTERM/SIGINT, 1 |
//! | `status [--json]` | a table, or one JSON object | 0, 1 |
//! | `refill SLOT [--qty N]` | the slot's new state as JSON | 0, 1, 2 (unknown slot) |
//! | `orders [--json]` | slots and orders as a table, or `{"policy", "slots", "orders"}` | 0, 1 |
//! | `messages [--json]` | display messages from the cloud, newest first (JSON: a list) | 0, 1 |
//!
//! Exit code 1 is any other failure (configuration, identity, disk); the message on
//! stderr names the file (or the flag or variable that gave the value) and key, or the
//! limit involved. Every command takes `--config`,
//! `--data-dir`, `--device-id` and `--mqtt-url`; the last three (and the MQTT
//! credentials) can also come from `ROLLCALL_DATA_DIR`, `ROLLCALL_DEVICE_ID`,
//! `ROLLCALL_MQTT_URL`, `ROLLCALL_MQTT_USERNAME` and `ROLLCALL_MQTT_PASSWORD`. A flag
//! beats the environment, which beats the file.

use crate::capture::{self, Capture, CaptureError};
use crate::config::{ConfigError, LoadedConfig, Overrides};
use crate::daemon::{self, DaemonError};
use crate::identity::{self, IdentityError};
use crate::outbox::{Outbox, OutboxError};
use crate::status;
use chrono::{DateTime, Utc};
use clap::{Args, CommandFactory, Parser, Subcommand};
use rollcall_shared::limits::MAX_QTY;
use rollcall_shared::{Clock, DeviceId, EventKind, SlotId};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Exit code for bad command-line arguments (clap's).
pub const EXIT_USAGE: u8 = 2;
/// Exit code when the outbox is full and refused the event.
pub const EXIT_OUTBOX_FULL: u8 = 3;

/// The Rollcall device agent.
#[derive(Debug, Parser)]
#[command(
    name = "rollcall-agent",
    version,
    about = "Records device usage durably and reports it to the Rollcall cloud over MQTT."
)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Configuration file (TOML). May be omitted when --data-dir is given.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (key, outbox, socket); overrides the file.
    #[arg(long, global = true, value_name = "DIR", env = "ROLLCALL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Device id; overrides the file.
    #[arg(long, global = true, value_name = "ID", env = "ROLLCALL_DEVICE_ID", value_parser = parse_device_id)]
    pub device_id: Option<String>,
    /// Broker URL (mqtt://host:port or mqtts://host:port); overrides the file.
    #[arg(long, global = true, value_name = "URL", env = "ROLLCALL_MQTT_URL")]
    pub mqtt_url: Option<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the device key (once) and print the device id and public key as JSON.
    Init,
    /// Durably record one usage event and print its seq.
    Record(RecordArgs),
    /// Run the daemon: capture socket and MQTT uplink, until SIGTERM or SIGINT. Needs
    /// `cloud_public_key` in the configuration file.
    Run,
    /// Show the outbox and connection state.
    Status(StatusArgs),
    /// List the display messages the cloud sent, newest first.
    Messages(StatusArgs),
    /// Record that a consumable slot was refilled (to full, or by --qty units).
    Refill(RefillArgs),
    /// Show the consumable slots and the device's replenishment orders.
    Orders(StatusArgs),
}

/// Arguments of `refill`.
#[derive(Debug, Clone, Args)]
pub struct RefillArgs {
    /// The slot, as named in `[[consumables]]`.
    #[arg(value_name = "SLOT")]
    pub slot: String,
    /// Units added (capped at the capacity); default: to full.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_QTY)))]
    pub qty: Option<u32>,
}

/// Arguments of `record`.
#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// Event kind: lowercase letters, digits and '_', starting with a letter (e.g. brew).
    #[arg(value_name = "KIND", value_parser = parse_kind)]
    pub kind: EventKind,
    /// Quantity.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_QTY)))]
    pub qty: u32,
    /// When it happened (RFC 3339); default now.
    #[arg(long, value_name = "RFC3339", value_parser = parse_at)]
    pub at: Option<DateTime<Utc>>,
    /// An attribute, KEY=VALUE; repeat for more.
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_attr)]
    pub attrs: Vec<(String, String)>,
}

/// Arguments of `status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_device_id(s: &str) -> Result<String, String> {
    DeviceId::parse(s)
        .map(|d| d.to_string())
        .map_err(|e| e.to_string())
}

fn parse_kind(s: &str) -> Result<EventKind, String> {
    capture::parse_kind(s).map_err(|e| e.to_string())
}

fn parse_at(s: &str) -> Result<DateTime<Utc>, String> {
    capture::parse_at(s).map_err(|e| e.to_string())
}

fn parse_attr(s: &str) -> Result<(String, String), String> {
    capture::parse_attr(s).map_err(|e| e.to_string())
}

/// Why a command failed; [`CliError::exit_code`] maps it to the process exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments found after parsing (exit 2, with usage).
    #[error(transparent)]
    Usage(Box<clap::Error>),
    /// The configuration could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The identity could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The outbox refused or failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The daemon failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// The process exit code: 2 usage, 3 outbox full, 1 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Outbox(OutboxError::Full { .. }) => EXIT_OUTBOX_FULL,
            _ => 1,
        }
    }
}

/// Where a value clap gave for an option with a flag and a variable came from: the
/// variable when it is set to exactly this value (a flag with the same value would be
/// just as wrong), otherwise the flag.
fn origin(value: &OsStr, flag: &str, var: &str) -> String {
    if std::env::var_os(var).as_deref() == Some(value) {
        var.to_owned()
    } else {
        flag.to_owned()
    }
}

fn usage_error(message: impl std::fmt::Display) -> CliError {
    CliError::Usage(Box::new(
        Cli::command().error(clap::error::ErrorKind::ValueValidation, message),
    ))
}

impl GlobalArgs {
    /// The overrides these flags (and the environment) give.
    pub fn overrides(&self) -> Overrides {
        let mut origins = BTreeMap::new();
        let mut note = |key: &'static str, value: Option<&OsStr>, flag: &str, var: &str| {
            if let Some(value) = value {
                origins.insert(key, origin(value, flag, var));
            }
        };
        note(
            "data_dir",
            self.data_dir.as_deref().map(|p| p.as_os_str()),
            "--data-dir",
            "ROLLCALL_DATA_DIR",
        );
        note(
            "device_id",
            self.device_id.as_deref().map(OsStr::new),
            "--device-id",
            "ROLLCALL_DEVICE_ID",
        );
        note(
            "mqtt.url",
            self.mqtt_url.as_deref().map(OsStr::new),
            "--mqtt-url",
            "ROLLCALL_MQTT_URL",
        );
        Overrides {
            data_dir: self.data_dir.clone(),
            device_id: self.device_id.clone(),
            mqtt_url: self.mqtt_url.clone(),
            origins,
            ..Overrides::default()
        }
        .with_env_credentials()
    }

    /// Loads and validates the configuration.
    pub fn load_config(&self) -> Result<LoadedConfig, CliError> {
        Ok(LoadedConfig::load(
            self.config.as_deref(),
            &self.overrides(),
        )?)
    }
}

/// Runs one command, writing its output to `out`. `shutdown` stops `run`.
pub async fn execute(
    cli: Cli,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let cfg = cli.global.load_config()?;
    match cli.command {
        Command::Init => {
            let id = identity::load_or_create(cfg.data_dir(), cfg.device_id.as_ref())?;
            writeln!(
                out,
                "{}",
                serde_json::to_string(&id.info()).expect("identity info serialises")
            )?;
        }
        Command::Record(args) => {
            let attrs = capture::collect_attrs(args.attrs).map_err(usage_error)?;
            identity::ensure_data_dir(cfg.data_dir())?;
            let outbox: Arc<dyn Outbox> = Arc::new(cfg.open_outbox(clock.clone())?);
            let capture = Capture::new(outbox, clock);
            let event = capture.event(args.kind, args.qty, args.at, attrs);
            if event.clock_suspect {
                eprintln!(
                    "warning: the event time {} is not believable (device clock unsynchronised or far ahead); \
                     recorded with clock_suspect = true",
                    event.occurred_at.to_rfc3339()
                );
            }
            let recorded = capture.store(event).map_err(|e| match e {
                CaptureError::Outbox(e) => CliError::Outbox(e),
                CaptureError::Invalid(m) => usage_error(m),
            })?;
            writeln!(out, "{}", recorded.seq)?;
        }
        Command::Status(args) => {
            identity::ensure_data_dir(cfg.data_dir())?;
            let outbox = cfg.open_outbox(clock.clone())?;
            let device_id = identity::read_device_id(cfg.data_dir())?
                .map(|d| d.to_string())
                .or_else(|| cfg.device_id.as_ref().map(|d| d.to_string()));
            let now = clock.now();
            let report = status::gather(&outbox, now, device_id, daemon::holder(cfg.data_dir()))?;
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&report).expect("status serialises")
                )?;
            } else {
                write!(out, "{}", report.to_table(now))?;
            }
        }
        Command::Messages(args) => {
            identity::ensure_data_dir(cfg.data_dir())?;
            let outbox = cfg.open_outbox(clock.clone())?;
            let messages = outbox.messages()?;
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&messages).expect("messages serialise")
                )?;
            } else if messages.is_empty() {
                writeln!(out, "no messages")?;
            } else {
                for m in messages {
                    writeln!(
                        out,
                        "{}  {}\n  {}\n",
                        m.received_at.to_rfc3339(),
                        m.title,
                        m.body.replace('\n', "\n  ")
                    )?;
                }
            }
        }
        Command::Run => daemon::run_daemon(cfg, clock, shutdown).await?,
        Command::Refill(args) => {
            let slot = SlotId::parse(&args.slot).map_err(usage_error)?;
            identity::ensure_data_dir(cfg.data_dir())?;
            let outbox = cfg.open_outbox(clock)?;
            let state = outbox.refill(&slot, args.qty).map_err(|e| match e {
                OutboxError::UnknownSlot(_) => usage_error(e),
                e => CliError::Outbox(e),
            })?;
            writeln!(
                out,
                "{}",
                serde_json::to_string(&state).expect("slot state serialises")
            )?;
        }
        Command::Orders(args) => {
            identity::ensure_data_dir(cfg.data_dir())?;
            let outbox = cfg.open_outbox(clock)?;
            let pushed = outbox.policy()?;
            let view = OrdersView {
                policy: PolicyView {
                    auto_reorder: pushed.unwrap_or(cfg.consumables.auto_reorder),
                    source: if pushed.is_some() { "cloud" } else { "config" },
                },
                slots: outbox.slots()?,
                orders: outbox.orders()?,
            };
            if args.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&view).expect("orders serialise")
                )?;
            } else {
                write!(out, "{}", view.to_table())?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// What `orders --json` prints.
#[derive(Debug, serde::Serialize)]
pub struct OrdersView {
    /// The opt-in in force and where it came from.
    pub policy: PolicyView,
    /// Every configured slot.
    pub slots: Vec<crate::consumables::SlotState>,
    /// Every order, newest first.
    pub orders: Vec<crate::consumables::OrderRecord>,
}

/// The opt-in in force.
#[derive(Debug, serde::Serialize)]
pub struct PolicyView {
    /// Automatic reordering allowed.
    pub auto_reorder: bool,
    /// `cloud` (pushed on the downlink) or `config`.
    pub source: &'static str,
}

impl OrdersView {
    /// The human-readable form.
    pub fn to_table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "auto reorder: {} (from {})",
            if self.policy.auto_reorder {
                "on"
            } else {
                "off"
            },
            self.policy.source
        );
        for slot in &self.slots {
            let _ = writeln!(
                s,
                "slot {:<16} level {:>6}  {}  open order {}",
                slot.slot.as_str(),
                slot.level,
                if slot.armed { "armed   " } else { "disarmed" },
                slot.open_tx.as_ref().map_or("-", |t| t.as_str())
            );
        }
        let _ = writeln!(
            s,
            "{:<36} {:<12} {:<12} {:>5} {:>10} {:<4} {:<22} reason",
            "tx_id", "slot", "sku", "qty", "amount", "cur", "state"
        );
        for o in &self.orders {
            let _ = writeln!(
                s,
                "{:<36} {:<12} {:<12} {:>5} {:>10} {:<4} {:<22} {}",
                o.tx_id.as_str(),
                o.slot.as_str(),
                o.sku.as_str(),
                o.qty,
                i64::from(o.qty) * o.unit_price,
                o.currency.as_str(),
                o.state.as_str(),
                o.reason.as_deref().unwrap_or("")
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn record_arguments_parse_and_bad_ones_are_usage_errors() {
        let cli = Cli::try_parse_from([
            "rollcall-agent",
            "--data-dir",
            "/tmp/x",
            "record",
            "brew",
            "--qty",
            "2",
            "--attr",
            "drink=latte",
            "--at",
            "2026-11-24T08:00:00Z",
        ])
        .unwrap();
        let Command::Record(r) = cli.command else {
            panic!()
        };
        assert_eq!((r.kind.as_str(), r.qty, r.attrs.len()), ("brew", 2, 1));
        for bad in [
            vec!["rollcall-agent", "record", "Brew"],
            vec!["rollcall-agent", "record", "brew", "--qty", "0"],
            vec!["rollcall-agent", "record", "brew", "--at", "tomorrow"],
            vec!["rollcall-agent", "record", "brew", "--attr", "novalue"],
            vec!["rollcall-agent", "record"],
            vec!["rollcall-agent", "frobnicate"],
        ] {
            let e = Cli::try_parse_from(&bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn global_flags_work_before_and_after_the_command() {
        let a = Cli::try_parse_from(["rollcall-agent", "--data-dir", "/d", "status"]).unwrap();
        let b = Cli::try_parse_from(["rollcall-agent", "status", "--data-dir", "/d", "--json"])
            .unwrap();
        assert_eq!(a.global.data_dir, b.global.data_dir);
    }

    #[test]
    fn outbox_full_exits_3_and_usage_exits_2() {
        let full = CliError::Outbox(OutboxError::Full {
            limit: "outbox.max_events",
            max: 3,
        });
        assert_eq!(full.exit_code(), 3);
        assert_eq!(usage_error("x").exit_code(), 2);
    }
}

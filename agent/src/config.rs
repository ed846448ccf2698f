//! The agent's configuration: one TOML file with a default for every key, overridden by
//! environment variables (`ROLLCALL_…`) and command-line flags, validated once at start-up.
//!
//! Precedence, highest first: flag, environment variable, file, default. The file is
//! optional when a data directory is given some other way.
//!
//! Every loading error names where the value came from and the key
//! (`config/agent.toml: uplink.batch_max_events: must be between 1 and 1000`; a value
//! that a flag or an environment variable gave is blamed on it: `ROLLCALL_MQTT_URL:
//! mqtt.url: ...`), so an operator knows what to fix without reading code. The MQTT password is a [`Secret`] and never appears in logs
//! or `Debug` output.

use crate::consumables::{Consumables, SlotConfig};
use crate::outbox::{FullPolicy, OutboxLimits};
use crate::socket::SocketLimits;
use crate::uplink::{BrokerUrl, MqttSettings, UplinkSettings};
use rollcall_shared::dsse::PublicKey;
use rollcall_shared::limits::MAX_EVENTS_PER_REPORT;
use rollcall_shared::limits::{MAX_ORDER_QTY, MAX_UNIT_PRICE};
use rollcall_shared::topics::{Topics, DEFAULT_PREFIX};
use rollcall_shared::{Currency, DeviceId, EventKind, Sku, SlotId};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where a configuration came from, for error messages when there is no file.
const NO_FILE: &str = "(defaults)";

/// Largest `socket.max_connections`: each connection holds a file descriptor, and the
/// usual soft limit is 1024, which the uplink and the outbox need too.
const MAX_SOCKET_CONNECTIONS: u64 = 512;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read the configuration file: {source}")]
    Read {
        /// The file.
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type, ...).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// The dotted key, then the parser's message with the line.
        message: String,
    },
    /// A key holds a value outside its allowed range or form.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        /// Where the value came from: the file (or `(defaults)` when there is none), or
        /// the flag or environment variable that overrode it (`--mqtt-url`,
        /// `ROLLCALL_MQTT_URL`).
        origin: String,
        /// The dotted key (`uplink.batch_max_events`).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Neither a configuration file nor a data directory was given.
    #[error("no configuration: pass --config FILE or --data-dir DIR (or set ROLLCALL_DATA_DIR)")]
    Missing,
    /// `rollcall-agent run` needs `cloud_public_key` and the configuration has none.
    #[error(
        "{file}: cloud_public_key: is required by `rollcall-agent run`: only downlinks signed \
         by the cloud are accepted, so that nobody else can delete reported events with a \
         forged ack; {}",
        cloud_key_hint(.file)
    )]
    CloudKeyRequired {
        /// The configuration file, or `(defaults)` when there is none.
        file: String,
    },
}

/// How to set `cloud_public_key`, for [`ConfigError::CloudKeyRequired`].
fn cloud_key_hint(file: &str) -> String {
    let place = if file == NO_FILE {
        "a configuration file and pass it with --config FILE"
    } else {
        file
    };
    format!(
        "run `rollcall-cloud keys show` on the cloud host and set \
         cloud_public_key = \"<its public_key>\" in {place}"
    )
}

/// A secret string: `Debug` and `Display` never show it.
pub use rollcall_shared::Secret;

/// The whole agent configuration (the TOML file's top level).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The device id; derived from the device key when absent.
    pub device_id: Option<String>,
    /// Where the key, the outbox and the socket live.
    pub data_dir: PathBuf,
    /// MQTT topic prefix.
    pub topic_prefix: String,
    /// The cloud's Ed25519 public key (standard base64); downlinks must verify under it.
    pub cloud_public_key: Option<String>,
    /// The MQTT connection.
    pub mqtt: MqttConfig,
    /// Batching, acks, status and reconnects.
    pub uplink: UplinkConfig,
    /// Outbox size limits.
    pub outbox: OutboxConfig,
    /// The local capture socket.
    pub socket: SocketConfig,
    /// Consumable slots (`[[consumables]]`).
    pub consumables: Vec<ConsumableConfig>,
    /// Replenishment orders (`[orders]`).
    pub orders: OrdersConfig,
}

/// One `[[consumables]]` slot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumableConfig {
    /// Slot name (`pods`).
    pub slot: String,
    /// Article number ordered for it.
    pub sku: String,
    /// Units when full.
    pub capacity: u32,
    /// Units used per usage event of each kind (`{ brew = 1 }`), times the event's qty.
    pub usage: BTreeMap<String, u32>,
    /// Order when the level falls below this.
    pub threshold: u32,
    /// Units to order.
    pub reorder_qty: u32,
    /// Price per unit the member consented to, in minor units (cents).
    pub unit_price: i64,
    /// ISO 4217 currency of the price.
    pub currency: String,
}

/// `[orders]`: replenishment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersConfig {
    /// The member opted in to automatic reordering (used until the cloud pushes the
    /// member's policy on the downlink; the pushed policy wins).
    pub auto_reorder: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            device_id: None,
            data_dir: PathBuf::from("/var/lib/rollcall-agent"),
            topic_prefix: DEFAULT_PREFIX.to_owned(),
            cloud_public_key: None,
            mqtt: MqttConfig::default(),
            uplink: UplinkConfig::default(),
            outbox: OutboxConfig::default(),
            socket: SocketConfig::default(),
            consumables: Vec::new(),
            orders: OrdersConfig::default(),
        }
    }
}

/// `[mqtt]`: how to reach the broker.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: String,
    /// PEM file of the CA(s) to trust for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// Broker user name; empty means none.
    pub username: String,
    /// Broker password; empty means none. Never logged.
    pub password: Secret,
    /// MQTT keep-alive, in seconds.
    pub keep_alive_s: u64,
}

impl fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttConfig")
            .field(
                "url",
                &rollcall_shared::broker_url::redact_userinfo(&self.url),
            )
            .field("ca_file", &self.ca_file)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("keep_alive_s", &self.keep_alive_s)
            .finish()
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".to_owned(),
            ca_file: None,
            username: String::new(),
            password: Secret::default(),
            keep_alive_s: 30,
        }
    }
}

/// `[uplink]`: batching, acks, status messages and reconnects.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// Most events in one report (at most `MAX_EVENTS_PER_REPORT`).
    pub batch_max_events: usize,
    /// How often the daemon looks for new events, in milliseconds.
    pub batch_interval_ms: u64,
    /// Re-send an unacked report after this many seconds.
    pub ack_timeout_s: u64,
    /// Most reports awaiting the cloud's ack at once.
    pub max_inflight_reports: usize,
    /// How often to publish the online status with health, in seconds.
    pub status_interval_s: u64,
    /// Smallest reconnect backoff ceiling, in milliseconds.
    pub reconnect_min_ms: u64,
    /// Largest reconnect backoff ceiling, in milliseconds.
    pub reconnect_max_ms: u64,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            batch_max_events: 500,
            batch_interval_ms: 200,
            ack_timeout_s: 10,
            max_inflight_reports: 16,
            status_interval_s: 60,
            reconnect_min_ms: 500,
            reconnect_max_ms: 60_000,
        }
    }
}

/// `[outbox]`: size limits and what to do when they are reached.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Most events held.
    pub max_events: u64,
    /// Most bytes of stored event bodies held.
    pub max_bytes: u64,
    /// `reject` or `drop_oldest`.
    pub when_full: FullPolicy,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_events: 1_000_000,
            max_bytes: 256 * 1024 * 1024,
            when_full: FullPolicy::Reject,
        }
    }
}

/// `[socket]`: the local capture socket.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketConfig {
    /// Serve the socket while `run` runs.
    pub enabled: bool,
    /// Socket path; empty means `{data_dir}/agent.sock`.
    pub path: PathBuf,
    /// Most connections served at once; further ones get an error line and are closed.
    pub max_connections: usize,
    /// Close a connection that neither sends a request nor reads a response for this
    /// many seconds.
    pub idle_timeout_s: u64,
}

impl Default for SocketConfig {
    fn default() -> Self {
        let limits = SocketLimits::default();
        Self {
            enabled: true,
            path: PathBuf::new(),
            max_connections: limits.max_connections,
            idle_timeout_s: limits.idle_timeout.as_secs(),
        }
    }
}

/// Values that beat the file: flags first, then environment variables (the CLI merges them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// `--data-dir` / `ROLLCALL_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--device-id` / `ROLLCALL_DEVICE_ID`.
    pub device_id: Option<String>,
    /// `--mqtt-url` / `ROLLCALL_MQTT_URL`.
    pub mqtt_url: Option<String>,
    /// `ROLLCALL_MQTT_USERNAME`.
    pub mqtt_username: Option<String>,
    /// `ROLLCALL_MQTT_PASSWORD`.
    pub mqtt_password: Option<Secret>,
    /// Where each override came from, by dotted key (`"mqtt.url"` →
    /// `"ROLLCALL_MQTT_URL"` or `"--mqtt-url"`), so that errors blame it rather than the
    /// file. An override with no entry here is blamed on `(override)`.
    pub origins: BTreeMap<&'static str, String>,
}

impl Overrides {
    /// Reads the overrides that only exist as environment variables (MQTT credentials).
    pub fn with_env_credentials(mut self) -> Self {
        if let Ok(u) = std::env::var("ROLLCALL_MQTT_USERNAME") {
            self.mqtt_username = Some(u);
            self.origins
                .insert("mqtt.username", "ROLLCALL_MQTT_USERNAME".into());
        }
        if let Ok(p) = std::env::var("ROLLCALL_MQTT_PASSWORD") {
            self.mqtt_password = Some(Secret::new(p));
            self.origins
                .insert("mqtt.password", "ROLLCALL_MQTT_PASSWORD".into());
        }
        self
    }

    /// Where the override of `key` came from, if `key` is overridden.
    fn origin(&self, key: &str) -> Option<String> {
        let set = match key {
            "data_dir" => self.data_dir.is_some(),
            "device_id" => self.device_id.is_some(),
            "mqtt.url" => self.mqtt_url.is_some(),
            "mqtt.username" => self.mqtt_username.is_some(),
            "mqtt.password" => self.mqtt_password.is_some(),
            _ => false,
        };
        set.then(|| {
            self.origins
                .get(key)
                .cloned()
                .unwrap_or_else(|| "(override)".to_owned())
        })
    }
}

/// A configuration that passed validation, with the values other modules need already parsed.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The configuration as read (after overrides).
    pub raw: AgentConfig,
    /// Where it came from (a path or `(defaults)`), for messages.
    pub source: String,
    /// The configured device id, if any.
    pub device_id: Option<DeviceId>,
    /// The cloud's key, if configured. Only `rollcall-agent run` needs it:
    /// [`LoadedConfig::require_cloud_key`].
    pub cloud_key: Option<PublicKey>,
    /// The broker URL.
    pub broker: BrokerUrl,
    /// The consumable slots and the configured opt-in, parsed.
    pub consumables: Arc<Consumables>,
}

impl LoadedConfig {
    /// Reads `file` (if given), applies `overrides` and validates.
    /// Without a file, `overrides.data_dir` must be set.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let (mut raw, source) = match file {
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    file: name.clone(),
                    source,
                })?;
                (AgentConfig::parse(&text, &name)?, name)
            }
            None if overrides.data_dir.is_some() => (AgentConfig::default(), NO_FILE.to_owned()),
            None => return Err(ConfigError::Missing),
        };
        raw.apply(overrides);
        Self::validate_overridden(raw, source, overrides)
    }

    /// Validates an already-built configuration (`source` names it in errors).
    pub fn validate(raw: AgentConfig, source: String) -> Result<Self, ConfigError> {
        Self::validate_overridden(raw, source, &Overrides::default())
    }

    /// Validates a configuration that `overrides` were applied to: errors about an
    /// overridden key name the override's origin instead of `source`.
    fn validate_overridden(
        raw: AgentConfig,
        source: String,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            origin: overrides.origin(key).unwrap_or_else(|| source.clone()),
            key,
            message,
        };
        let device_id = match raw.device_id.as_deref() {
            None | Some("") => None,
            Some(s) => Some(DeviceId::parse(s).map_err(|e| invalid("device_id", e.to_string()))?),
        };
        if raw.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty".into()));
        }
        check_topic_prefix(&raw.topic_prefix).map_err(|m| invalid("topic_prefix", m))?;
        let cloud_key = match raw.cloud_public_key.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(
                PublicKey::from_base64(s)
                    .map_err(|e| invalid("cloud_public_key", e.to_string()))?,
            ),
        };
        let broker: BrokerUrl = raw
            .mqtt
            .url
            .parse()
            .map_err(|e: rollcall_shared::BrokerUrlError| invalid("mqtt.url", e.to_string()))?;
        if broker.tls && raw.mqtt.ca_file.is_none() {
            return Err(invalid(
                "mqtt.ca_file",
                "is required for an mqtts:// url".into(),
            ));
        }
        range(
            &invalid,
            "mqtt.keep_alive_s",
            raw.mqtt.keep_alive_s,
            1,
            65_535,
        )?;
        let u = &raw.uplink;
        range(
            &invalid,
            "uplink.batch_max_events",
            u.batch_max_events as u64,
            1,
            MAX_EVENTS_PER_REPORT as u64,
        )?;
        range(
            &invalid,
            "uplink.batch_interval_ms",
            u.batch_interval_ms,
            10,
            60_000,
        )?;
        range(&invalid, "uplink.ack_timeout_s", u.ack_timeout_s, 1, 3_600)?;
        range(
            &invalid,
            "uplink.max_inflight_reports",
            u.max_inflight_reports as u64,
            1,
            256,
        )?;
        range(
            &invalid,
            "uplink.status_interval_s",
            u.status_interval_s,
            1,
            86_400,
        )?;
        range(
            &invalid,
            "uplink.reconnect_max_ms",
            u.reconnect_max_ms,
            1,
            3_600_000,
        )?;
        range(
            &invalid,
            "uplink.reconnect_min_ms",
            u.reconnect_min_ms,
            1,
            u.reconnect_max_ms,
        )?;
        range(
            &invalid,
            "outbox.max_events",
            raw.outbox.max_events,
            1,
            i64::MAX as u64,
        )?;
        range(
            &invalid,
            "outbox.max_bytes",
            raw.outbox.max_bytes,
            4_096,
            i64::MAX as u64,
        )?;
        range(
            &invalid,
            "socket.max_connections",
            raw.socket.max_connections as u64,
            1,
            MAX_SOCKET_CONNECTIONS,
        )?;
        range(
            &invalid,
            "socket.idle_timeout_s",
            raw.socket.idle_timeout_s,
            1,
            86_400,
        )?;
        let consumables = Arc::new(parse_consumables(&raw, &invalid)?);
        Ok(Self {
            raw,
            source,
            device_id,
            cloud_key,
            broker,
            consumables,
        })
    }

    /// The cloud's key, which the daemon needs to verify downlinks (acks delete events),
    /// or [`ConfigError::CloudKeyRequired`] naming the file and how to get the value.
    pub fn require_cloud_key(&self) -> Result<PublicKey, ConfigError> {
        self.cloud_key.ok_or_else(|| ConfigError::CloudKeyRequired {
            file: self.source.clone(),
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.raw.data_dir
    }

    /// The SQLite outbox file inside the data directory.
    pub fn outbox_path(&self) -> PathBuf {
        self.raw.data_dir.join("outbox.db")
    }

    /// The capture socket's path.
    pub fn socket_path(&self) -> PathBuf {
        if self.raw.socket.path.as_os_str().is_empty() {
            self.raw.data_dir.join("agent.sock")
        } else {
            self.raw.socket.path.clone()
        }
    }

    /// The capture socket's connection limits.
    pub fn socket_limits(&self) -> SocketLimits {
        SocketLimits {
            max_connections: self.raw.socket.max_connections,
            idle_timeout: Duration::from_secs(self.raw.socket.idle_timeout_s),
        }
    }

    /// The topic names.
    pub fn topics(&self) -> Topics {
        Topics::new(&self.raw.topic_prefix)
    }

    /// Opens the SQLite outbox with this configuration's limits, tracking the configured
    /// consumables (if any).
    pub fn open_outbox(
        &self,
        clock: Arc<dyn rollcall_shared::Clock>,
    ) -> Result<crate::outbox::SqliteOutbox, crate::outbox::OutboxError> {
        let o =
            crate::outbox::SqliteOutbox::open(&self.outbox_path(), self.outbox_limits(), clock)?;
        Ok(if self.consumables.slots.is_empty() {
            o
        } else {
            o.with_consumables(self.consumables.clone())
        })
    }

    /// The outbox limits.
    pub fn outbox_limits(&self) -> OutboxLimits {
        OutboxLimits {
            max_events: self.raw.outbox.max_events,
            max_bytes: self.raw.outbox.max_bytes,
            when_full: self.raw.outbox.when_full,
        }
    }

    /// The MQTT connection settings.
    pub fn mqtt_settings(&self) -> MqttSettings {
        let m = &self.raw.mqtt;
        MqttSettings {
            broker: self.broker.clone(),
            ca_file: m.ca_file.clone(),
            username: (!m.username.is_empty()).then(|| m.username.clone()),
            password: (!m.password.is_empty()).then(|| m.password.clone()),
            keep_alive: Duration::from_secs(m.keep_alive_s),
        }
    }

    /// The uplink's batching and timing settings.
    pub fn uplink_settings(&self) -> UplinkSettings {
        let u = &self.raw.uplink;
        UplinkSettings {
            batch_max_events: u.batch_max_events,
            batch_interval: Duration::from_millis(u.batch_interval_ms),
            ack_timeout: Duration::from_secs(u.ack_timeout_s),
            max_inflight_reports: u.max_inflight_reports,
            status_interval: Duration::from_secs(u.status_interval_s),
            reconnect_min: Duration::from_millis(u.reconnect_min_ms),
            reconnect_max: Duration::from_millis(u.reconnect_max_ms),
        }
    }
}

impl AgentConfig {
    /// Parses TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(
            |e: serde_path_to_error::Error<toml::de::Error>| ConfigError::Parse {
                file: file.to_owned(),
                message: rollcall_shared::report::config_parse_message(
                    &e.path().to_string(),
                    &e.inner().to_string(),
                ),
            },
        )
    }

    /// Applies overrides (they beat the file).
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(d) = &o.data_dir {
            self.data_dir = d.clone();
        }
        if let Some(id) = &o.device_id {
            self.device_id = Some(id.clone());
        }
        if let Some(url) = &o.mqtt_url {
            self.mqtt.url = url.clone();
        }
        if let Some(u) = &o.mqtt_username {
            self.mqtt.username = u.clone();
        }
        if let Some(p) = &o.mqtt_password {
            self.mqtt.password = p.clone();
        }
    }
}

fn parse_consumables(
    raw: &AgentConfig,
    invalid: &impl Fn(&'static str, String) -> ConfigError,
) -> Result<Consumables, ConfigError> {
    let mut slots: Vec<SlotConfig> = Vec::new();
    for c in &raw.consumables {
        let slot =
            SlotId::parse(&c.slot).map_err(|e| invalid("consumables.slot", e.to_string()))?;
        let named = |m: String| format!("slot {}: {m}", c.slot);
        if slots.iter().any(|s| s.slot == slot) {
            return Err(invalid(
                "consumables.slot",
                named("is configured twice".into()),
            ));
        }
        let sku =
            Sku::parse(&c.sku).map_err(|e| invalid("consumables.sku", named(e.to_string())))?;
        let currency = Currency::parse(&c.currency)
            .map_err(|e| invalid("consumables.currency", named(e.to_string())))?;
        if c.capacity == 0 {
            return Err(invalid(
                "consumables.capacity",
                named("must be at least 1".into()),
            ));
        }
        if c.threshold > c.capacity {
            return Err(invalid(
                "consumables.threshold",
                named(format!(
                    "{} is above the capacity {}",
                    c.threshold, c.capacity
                )),
            ));
        }
        if !(1..=MAX_ORDER_QTY).contains(&c.reorder_qty) {
            return Err(invalid(
                "consumables.reorder_qty",
                named(format!("must be between 1 and {MAX_ORDER_QTY}")),
            ));
        }
        if !(0..=MAX_UNIT_PRICE).contains(&c.unit_price) {
            return Err(invalid(
                "consumables.unit_price",
                named(format!("must be between 0 and {MAX_UNIT_PRICE}")),
            ));
        }
        if c.usage.is_empty() {
            return Err(invalid(
                "consumables.usage",
                named("names no usage kind (e.g. usage = { brew = 1 })".into()),
            ));
        }
        let mut usage = BTreeMap::new();
        for (k, v) in &c.usage {
            let kind = EventKind::parse(k)
                .map_err(|e| invalid("consumables.usage", named(e.to_string())))?;
            usage.insert(kind, *v);
        }
        slots.push(SlotConfig {
            slot,
            sku,
            capacity: c.capacity,
            usage,
            threshold: c.threshold,
            reorder_qty: c.reorder_qty,
            unit_price: c.unit_price,
            currency,
        });
    }
    Ok(Consumables {
        slots,
        auto_reorder: raw.orders.auto_reorder,
    })
}

fn range(
    invalid: &impl Fn(&'static str, String) -> ConfigError,
    key: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("must be between {min} and {max}, not {value}"),
        ))
    }
}

fn check_topic_prefix(p: &str) -> Result<(), String> {
    if p.trim_end_matches('/').is_empty() {
        return Err("must not be empty".into());
    }
    if p.len() > 128 {
        return Err("must be at most 128 bytes".into());
    }
    if p.starts_with('/')
        || p.contains("//")
        || p.chars()
            .any(|c| matches!(c, '+' | '#' | '\0') || c.is_whitespace())
    {
        return Err(format!(
            "{p:?} must not start with '/', contain empty levels, wildcards or whitespace"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<LoadedConfig, ConfigError> {
        let raw = AgentConfig::parse(text, "config/agent.toml")?;
        LoadedConfig::validate(raw, "config/agent.toml".into())
    }

    #[test]
    fn an_empty_file_gives_the_documented_defaults() {
        let c = load_text("").unwrap();
        assert_eq!(c.raw, AgentConfig::default());
        assert_eq!(c.raw.data_dir, PathBuf::from("/var/lib/rollcall-agent"));
        assert_eq!(c.raw.topic_prefix, "rollcall");
        assert_eq!(c.raw.mqtt.url, "mqtt://127.0.0.1:1883");
        assert_eq!(c.raw.mqtt.keep_alive_s, 30);
        assert_eq!(c.raw.uplink.batch_max_events, 500);
        assert_eq!(c.raw.uplink.batch_interval_ms, 200);
        assert_eq!(c.raw.uplink.ack_timeout_s, 10);
        assert_eq!(c.raw.uplink.max_inflight_reports, 16);
        assert_eq!(c.raw.uplink.status_interval_s, 60);
        assert_eq!(c.raw.uplink.reconnect_min_ms, 500);
        assert_eq!(c.raw.uplink.reconnect_max_ms, 60_000);
        assert_eq!(c.raw.outbox.max_events, 1_000_000);
        assert_eq!(c.raw.outbox.max_bytes, 268_435_456);
        assert_eq!(c.raw.outbox.when_full, FullPolicy::Reject);
        assert!(c.raw.socket.enabled);
        assert_eq!(c.raw.socket.max_connections, 64);
        assert_eq!(c.raw.socket.idle_timeout_s, 300);
        assert_eq!(
            c.socket_limits(),
            SocketLimits {
                max_connections: 64,
                idle_timeout: Duration::from_secs(300)
            }
        );
        assert_eq!(
            c.socket_path(),
            PathBuf::from("/var/lib/rollcall-agent/agent.sock")
        );
        assert!(c.device_id.is_none() && c.cloud_key.is_none());
        assert_eq!(
            (c.broker.host.as_str(), c.broker.port, c.broker.tls),
            ("127.0.0.1", 1883, false)
        );
    }

    #[test]
    fn a_full_file_is_read() {
        let key = rollcall_shared::dsse::KeyPair::generate()
            .public()
            .to_base64();
        let text = format!(
            r#"
device_id = "coffee-0001"
data_dir = "/tmp/x"
topic_prefix = "acme"
cloud_public_key = "{key}"
[mqtt]
url = "mqtts://broker.example:8884"
ca_file = "/etc/rollcall/ca.pem"
username = "dev"
password = "hunter2"
keep_alive_s = 15
[uplink]
batch_max_events = 100
[outbox]
max_events = 3
when_full = "drop_oldest"
[socket]
enabled = false
path = "/run/rollcall.sock"
max_connections = 8
idle_timeout_s = 60
"#
        );
        let c = load_text(&text).unwrap();
        assert_eq!(c.device_id.as_ref().unwrap().as_str(), "coffee-0001");
        assert_eq!(c.require_cloud_key().unwrap().to_base64(), key);
        assert!(c.broker.tls);
        assert_eq!(c.broker.port, 8884);
        assert_eq!(c.raw.outbox.when_full, FullPolicy::DropOldest);
        assert_eq!(c.socket_path(), PathBuf::from("/run/rollcall.sock"));
        assert_eq!(
            c.socket_limits(),
            SocketLimits {
                max_connections: 8,
                idle_timeout: Duration::from_secs(60)
            }
        );
        assert_eq!(c.mqtt_settings().password.unwrap().expose(), "hunter2");
        assert_eq!(
            c.topics().usage(&DeviceId::parse("d").unwrap()),
            "acme/v1/devices/d/usage"
        );
    }

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        let e = load_text("[uplink]\nbatch_max_event = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config/agent.toml: "), "{e}");
        assert!(e.contains("batch_max_event"), "{e}");
        let e = load_text("colour = 1\n").unwrap_err().to_string();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_by_its_dotted_key_in_words() {
        let e = load_text("[uplink]\nbatch_max_events = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config/agent.toml: uplink.batch_max_events: ")
                && e.contains("expected a whole number")
                && e.contains("line 2"),
            "{e}"
        );
        let e = load_text("[outbox]\nwhen_full = \"panic\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config/agent.toml: outbox.when_full: "),
            "{e}"
        );
    }

    #[test]
    fn out_of_range_values_name_the_file_and_key() {
        let e = load_text("[uplink]\nbatch_max_events = 5000\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "config/agent.toml: uplink.batch_max_events: must be between 1 and 1000, not 5000"
        );
        for (text, names) in [
            (
                "[uplink]\nreconnect_min_ms = 10\nreconnect_max_ms = 5\n",
                "uplink.reconnect_min_ms",
            ),
            ("[mqtt]\nkeep_alive_s = 0\n", "mqtt.keep_alive_s"),
            ("[outbox]\nmax_events = 0\n", "outbox.max_events"),
            (
                "[socket]\nmax_connections = 0\n",
                "socket.max_connections: must be between 1 and 512, not 0",
            ),
            ("[socket]\nidle_timeout_s = 0\n", "socket.idle_timeout_s"),
            // Unknown socket keys are refused.
            ("[socket]\nmax_connection = 5\n", "max_connection"),
        ] {
            let e = load_text(text).unwrap_err().to_string();
            assert!(
                e.starts_with("config/agent.toml: ") && e.contains(names),
                "{text:?}: {e}"
            );
        }
        let e = load_text("[outbox]\nwhen_full = \"panic\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("panic"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = load_text("device_id = \"a/b\"\n").unwrap_err().to_string();
        assert!(e.starts_with("config/agent.toml: device_id: "), "{e}");
        let e = load_text("cloud_public_key = \"AAAA\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cloud_public_key"), "{e}");
        let e = load_text("[mqtt]\nurl = \"http://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mqtt.url"), "{e}");
        let e = load_text("[mqtt]\nurl = \"mqtts://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mqtt.ca_file"), "{e}");
        let e = load_text("topic_prefix = \"a/+\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("topic_prefix"), "{e}");
    }

    #[test]
    fn overrides_beat_the_file_and_no_file_needs_a_data_dir() {
        let mut raw =
            AgentConfig::parse("data_dir = \"/a\"\n[mqtt]\nurl = \"mqtt://x:1\"\n", "f").unwrap();
        raw.apply(&Overrides {
            data_dir: Some("/b".into()),
            device_id: Some("dev-9".into()),
            mqtt_url: Some("mqtt://y:2".into()),
            mqtt_username: Some("u".into()),
            mqtt_password: Some(Secret::new("p")),
            ..Overrides::default()
        });
        let c = LoadedConfig::validate(raw, "f".into()).unwrap();
        assert_eq!(c.data_dir(), Path::new("/b"));
        assert_eq!(c.device_id.as_ref().unwrap().as_str(), "dev-9");
        assert_eq!(c.broker.host, "y");
        assert!(matches!(
            LoadedConfig::load(None, &Overrides::default()),
            Err(ConfigError::Missing)
        ));
        let c = load_without_a_file();
        assert_eq!(c.outbox_path(), PathBuf::from("/d/outbox.db"));
    }

    /// A configuration from defaults and a `--data-dir /d` flag alone, with no file.
    fn load_without_a_file() -> LoadedConfig {
        LoadedConfig::load(
            None,
            &Overrides {
                data_dir: Some("/d".into()),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn the_example_config_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/agent.toml");
        let c = LoadedConfig::load(Some(&p), &Overrides::default()).unwrap();
        assert_eq!(c.outbox_path(), PathBuf::from("agent-data/outbox.db"));
        assert_eq!(c.consumables.slots.len(), 1);
        assert_eq!(c.consumables.slots[0].usage.len(), 1);
        // The example leaves the key to provisioning (README step 1); `run` says so.
        let e = c.require_cloud_key().unwrap_err().to_string();
        assert!(e.contains("agent.toml: cloud_public_key: "), "{e}");
    }

    #[test]
    fn the_daemon_requires_the_cloud_key_and_says_where_to_get_it() {
        let e = load_text("data_dir = \"/d\"\n")
            .unwrap()
            .require_cloud_key()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "config/agent.toml: cloud_public_key: is required by `rollcall-agent run`"
            ),
            "{e}"
        );
        assert!(e.contains("`rollcall-cloud keys show`"), "{e}");
        assert!(e.ends_with("in config/agent.toml"), "{e}");
        // Without a file, the message says to write one.
        let c = load_without_a_file();
        let e = c.require_cloud_key().unwrap_err().to_string();
        assert!(
            e.starts_with("(defaults): cloud_public_key: ") && e.contains("--config FILE"),
            "{e}"
        );
    }

    #[test]
    fn consumables_are_validated_with_the_key_named() {
        let slot = |extra: &str| {
            format!(
                "data_dir = \"/d\"\n[[consumables]]\nslot = \"pods\"\nsku = \"POD\"\ncapacity = 10\n\
                 usage = {{ brew = 1 }}\nthreshold = 2\nreorder_qty = 10\nunit_price = 25\ncurrency = \"EUR\"\n{extra}"
            )
        };
        let load = |text: &str| {
            let raw = AgentConfig::parse(text, "a.toml")?;
            LoadedConfig::validate(raw, "a.toml".into())
        };
        let c = load(&slot("")).unwrap();
        assert_eq!(c.consumables.slots[0].capacity, 10);
        assert!(!c.consumables.auto_reorder);
        let e = load(&slot("[orders]\nauto_reorder = true\n")).unwrap();
        assert!(e.consumables.auto_reorder);
        let twice = slot("") + &slot("").replace("data_dir = \"/d\"\n", "");
        for (text, key) in [
            (
                slot("").replace("\"EUR\"", "\"eur\""),
                "consumables.currency",
            ),
            (
                slot("").replace("threshold = 2", "threshold = 20"),
                "consumables.threshold",
            ),
            (
                slot("").replace("brew = 1", "Brew = 1"),
                "consumables.usage",
            ),
            (
                slot("").replace("reorder_qty = 10", "reorder_qty = 0"),
                "consumables.reorder_qty",
            ),
            (twice, "consumables.slot"),
        ] {
            let e = load(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        assert!(
            load(&slot("colour = 1\n")).is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = LoadedConfig::load(
            Some(Path::new("/nonexistent/agent.toml")),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("/nonexistent/agent.toml: "), "{e}");
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let c = load_text("[mqtt]\npassword = \"hunter2\"\n").unwrap();
        let dbg = format!("{c:?} {:?}", c.mqtt_settings());
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("***"));
    }

    #[test]
    fn a_password_in_the_url_never_shows_in_errors_or_debug_output() {
        let text = "[mqtt]\nurl = \"mqtt://dev:hunter2@broker:1883\"\n";
        let e = load_text(text).unwrap_err().to_string();
        assert!(
            e.contains("mqtt.url") && e.contains("mqtt://***@broker:1883"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let raw = AgentConfig::parse(text, "config/agent.toml").unwrap();
        let dbg = format!("{raw:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn an_invalid_override_is_blamed_on_its_origin_and_a_valid_one_blames_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, "[mqtt]\nurl = \"mqtt://x:1\"\n").unwrap();
        let load = |o: Overrides| LoadedConfig::load(Some(&file), &o);
        let e = load(Overrides {
            mqtt_url: Some("bogus".into()),
            origins: BTreeMap::from([("mqtt.url", "ROLLCALL_MQTT_URL".to_owned())]),
            ..Overrides::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("ROLLCALL_MQTT_URL: mqtt.url: "), "{e}");
        let e = load(Overrides {
            data_dir: Some(PathBuf::new()),
            ..Overrides::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("(override): data_dir: "), "{e}");
        // An override that is fine leaves errors about the file's own keys to the file.
        std::fs::write(&file, "[mqtt]\nkeep_alive_s = 0\n").unwrap();
        let e = load(Overrides {
            mqtt_url: Some("mqtt://y:2".into()),
            origins: BTreeMap::from([("mqtt.url", "--mqtt-url".to_owned())]),
            ..Overrides::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!("{}: mqtt.keep_alive_s", file.display())),
            "{e}"
        );
    }
}

//! The cloud's configuration: a TOML file with defaults for every key,
//! `deny_unknown_fields`, environment overrides (`ROLLCALL_…`) and command-line
//! overrides, validated at start-up with errors that name the file and the key.
//! Secrets (`broker.password`) never appear in logs or `Debug` output.

use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A configuration error: names the file (when there is one) and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, unknown key or wrong type (toml's message names the key).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// toml's message.
        message: String,
    },
    /// A value out of range.
    #[error("{file}: {key}: {message}")]
    Invalid {
        /// The file, or `<defaults>`/`<environment>`.
        file: String,
        /// The dotted key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// A secret string: `Debug` and `Display` print `"***"`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True when no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// The whole cloud configuration (`config/cloud.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// Where the store (`rollcall.db`) and the cloud's key (`cloud.key`) live.
    pub data_dir: PathBuf,
    /// MQTT topic prefix (DESIGN §4).
    pub topic_prefix: String,
    /// The MQTT broker: embedded (default) or external.
    pub broker: BrokerConfig,
    /// The HTTP listener.
    pub http: HttpConfig,
    /// The ingest pipeline.
    pub ingest: IngestConfig,
    /// The member and device registry.
    pub registry: RegistryConfig,
}

impl Default for CloudConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            topic_prefix: rollcall_shared::topics::DEFAULT_PREFIX.into(),
            broker: BrokerConfig::default(),
            http: HttpConfig::default(),
            ingest: IngestConfig::default(),
            registry: RegistryConfig::default(),
        }
    }
}

/// `[broker]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// External broker URL (`mqtt://host:port` or `mqtts://host:port`); empty runs the embedded broker.
    pub url: String,
    /// Where the embedded broker listens (port 0 picks a free port; the chosen one is logged).
    pub listen: SocketAddr,
    /// Most concurrent connections the embedded broker accepts.
    pub max_connections: usize,
    /// Username for the external broker.
    pub username: String,
    /// Password for the external broker (secret).
    pub password: Secret,
    /// CA certificate (PEM) for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// Shared-subscription group for external brokers (`$share/<group>/…`), to spread
    /// ingest over several cloud workers; empty subscribes normally.
    pub shared_group: String,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            listen: "127.0.0.1:1883".parse().expect("valid address"),
            max_connections: 20_000,
            username: String::new(),
            password: Secret::default(),
            ca_file: None,
            shared_group: String::new(),
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where the HTTP API, console, `/healthz` and `/metrics` listen (port 0 picks a free port).
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
        }
    }
}

/// `[ingest]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Most reports committed in one SQLite transaction.
    pub batch_max_reports: usize,
    /// How many report numbers behind a device's newest report an unseen report may be
    /// before it is quarantined as `replayed`.
    pub replay_window: u64,
    /// Messages buffered between the MQTT client and the writer (back-pressure beyond).
    pub queue_capacity: usize,
    /// Threads that verify signatures in parallel.
    pub verify_threads: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            batch_max_reports: 512,
            replay_window: 4096,
            queue_capacity: 8192,
            verify_threads: 2,
        }
    }
}

/// `[registry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Region (ISO 3166 alpha-2) for phone numbers written without a country code.
    pub default_region: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            default_region: "US".into(),
        }
    }
}

impl CloudConfig {
    /// Loads `path`, or the defaults when `None`; then applies `ROLLCALL_*` environment
    /// overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (mut cfg, file) = match path {
            Some(p) => {
                let file = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    file: file.clone(),
                    source,
                })?;
                let cfg: CloudConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    file: file.clone(),
                    message: e.to_string(),
                })?;
                (cfg, file)
            }
            None => (CloudConfig::default(), "<defaults>".to_owned()),
        };
        cfg.apply_env(|k| std::env::var(k).ok());
        cfg.validate(&file)?;
        Ok(cfg)
    }

    /// Applies the documented environment overrides, read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        if let Some(v) = get("ROLLCALL_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = get("ROLLCALL_MQTT_URL") {
            self.broker.url = v;
        }
        if let Some(v) = get("ROLLCALL_MQTT_USERNAME") {
            self.broker.username = v;
        }
        if let Some(v) = get("ROLLCALL_MQTT_PASSWORD") {
            self.broker.password = Secret::new(v);
        }
        if let Some(v) = get("ROLLCALL_MQTT_LISTEN").and_then(|v| v.parse().ok()) {
            self.broker.listen = v;
        }
        if let Some(v) = get("ROLLCALL_HTTP_LISTEN").and_then(|v| v.parse().ok()) {
            self.http.listen = v;
        }
    }

    /// Checks ranges; `file` names the source in the error.
    pub fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key, message: String| {
            Err(ConfigError::Invalid {
                file: file.to_owned(),
                key,
                message,
            })
        };
        if !(1..=10_000).contains(&self.ingest.batch_max_reports) {
            return bad(
                "ingest.batch_max_reports",
                format!("{} is outside 1..=10000", self.ingest.batch_max_reports),
            );
        }
        if self.ingest.replay_window == 0 {
            return bad("ingest.replay_window", "must be at least 1".into());
        }
        if !(16..=1_000_000).contains(&self.ingest.queue_capacity) {
            return bad(
                "ingest.queue_capacity",
                format!("{} is outside 16..=1000000", self.ingest.queue_capacity),
            );
        }
        if !(1..=64).contains(&self.ingest.verify_threads) {
            return bad(
                "ingest.verify_threads",
                format!("{} is outside 1..=64", self.ingest.verify_threads),
            );
        }
        if self.topic_prefix.is_empty() || self.topic_prefix.contains(['+', '#']) {
            return bad(
                "topic_prefix",
                "must be non-empty and free of MQTT wildcards".into(),
            );
        }
        if !self.broker.url.is_empty() {
            if let Err(e) = crate::mqtt::BrokerUrl::parse(&self.broker.url) {
                return bad("broker.url", e.to_string());
            }
        }
        if self.broker.shared_group.contains(['/', '+', '#']) {
            return bad(
                "broker.shared_group",
                "must not contain '/', '+' or '#'".into(),
            );
        }
        if self
            .registry
            .default_region
            .parse::<phonenumber::country::Id>()
            .is_err()
        {
            return bad(
                "registry.default_region",
                format!(
                    "{:?} is not an ISO 3166 region code",
                    self.registry.default_region
                ),
            );
        }
        Ok(())
    }

    /// Path of the SQLite store.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("rollcall.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(s: &str) -> Result<CloudConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cloud.toml");
        std::fs::write(&p, s).unwrap();
        CloudConfig::load(Some(&p))
    }

    #[test]
    fn the_example_config_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/cloud.toml");
        CloudConfig::load(Some(&p)).unwrap();
    }

    #[test]
    fn unknown_keys_name_the_file_and_key() {
        let e = load_str("[ingest]\nbatch_size = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cloud.toml") && e.contains("batch_size"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let e = load_str("[ingest]\nbatch_max_reports = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ingest.batch_max_reports"), "{e}");
        let e = load_str("[broker]\nurl = \"http://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("broker.url"), "{e}");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let c = load_str("[broker]\npassword = \"hunter2\"\n").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.broker.password.expose(), "hunter2");
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c = CloudConfig::default();
        c.apply_env(|k| (k == "ROLLCALL_HTTP_LISTEN").then(|| "127.0.0.1:0".to_owned()));
        assert_eq!(c.http.listen.port(), 0);
    }
}

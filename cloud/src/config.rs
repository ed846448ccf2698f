//! The cloud's configuration: a TOML file with defaults for every key,
//! `deny_unknown_fields`, environment overrides (`ROLLCALL_…`) and command-line
//! overrides, validated at start-up with errors that name the file and the key.
//! Secrets (`broker.password`) never appear in logs or `Debug` output.

use serde::Deserialize;
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
        /// The file, `<defaults>`, or the environment variable that gave the value.
        file: String,
        /// The dotted key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// A secret string: `Debug` and `Display` never show it.
pub use rollcall_shared::Secret;

/// The whole cloud configuration (`config/cloud.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// Where the store (`rollcall.db`), the audit log (`audit.db`) and the cloud's key
    /// (`cloud.key`) live.
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
    /// Membership scoring (`[scoring]`).
    pub scoring: ScoringConfig,
    /// Personalised outreach (`[outreach]`): rules, templates, policy, webhooks.
    pub outreach: OutreachConfig,
    /// The delivery queue's dispatcher (`[delivery]`).
    pub delivery: DeliveryConfig,
    /// Device-initiated orders: catalogue, price tolerance, cancellation window (`[orders]`).
    pub orders: OrdersConfig,
    /// The incoming-call webhook (`[telephony]`).
    pub telephony: TelephonyConfig,
    /// The web console (`[console]`).
    pub console: ConsoleConfig,
}

/// `[telephony]`: the Twilio-style incoming-call webhook.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelephonyConfig {
    /// The provider's auth token: requests must carry a valid `X-Twilio-Signature`.
    /// Empty: the webhook requires a `support` or `admin` bearer token instead. Secret.
    pub auth_token: Secret,
    /// The base URL the provider calls (`https://rollcall.example.com`), used to check
    /// signatures behind a proxy. Empty: `http://` and the request's `Host` header.
    pub public_url: String,
}

/// `[console]`: the web console.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console at `/console`.
    pub enabled: bool,
    /// Serve the built-in webhook sink at `POST /sink/{webhook}` (checks the Standard
    /// Webhooks signature with that `[[outreach.webhooks]]` entry's secrets and keeps what
    /// arrives, shown at `/console/sink`): for trying outreach without a receiver.
    pub webhook_sink: bool,
    /// How long a console sign-in lasts, in hours.
    pub session_hours: u32,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            webhook_sink: false,
            session_hours: 12,
        }
    }
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
            scoring: ScoringConfig::default(),
            outreach: OutreachConfig::default(),
            delivery: DeliveryConfig::default(),
            orders: OrdersConfig::default(),
            telephony: TelephonyConfig::default(),
            console: ConsoleConfig::default(),
        }
    }
}

/// `[orders]`: how device-initiated transactions are judged.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersConfig {
    /// How long an accepted order may be cancelled, in hours; the fulfilment webhook goes
    /// out when this window closes.
    pub cancel_window_h: u64,
    /// Largest difference between a device's price quote and the catalogue price that is
    /// still accepted, in basis points of the catalogue price (100 = 1 %). Beyond it the
    /// order is `held_for_confirmation` with reason `price_changed`.
    pub price_tolerance_bp: u32,
    /// The articles devices may order (`[[orders.catalogue]]`).
    pub catalogue: Vec<CatalogueEntry>,
    /// The `[[outreach.webhooks]]` endpoint (by name) that accepted orders are handed to
    /// for fulfilment, through the delivery queue; `None`: no fulfilment webhook.
    pub fulfilment_webhook: Option<String>,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        Self {
            cancel_window_h: 24,
            price_tolerance_bp: 0,
            catalogue: Vec::new(),
            fulfilment_webhook: None,
        }
    }
}

/// One `[[orders.catalogue]]` article.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueEntry {
    /// Article number (what devices put in `sku`).
    pub sku: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Price per unit in minor units (cents).
    pub unit_price: i64,
    /// ISO 4217 currency (`EUR`).
    pub currency: String,
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
    /// When a lookup's audit row counts as written (see [`crate::audit::Durability`]).
    pub audit_sync: crate::audit::Durability,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid address"),
            audit_sync: crate::audit::Durability::default(),
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

/// `[scoring]`: the fleet model, its schedule, and the engagement state machine.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringConfig {
    /// Run the background scorer in `serve`.
    pub enabled: bool,
    /// `bgbb` (default: discrete daily opportunities), `mbgnbd` or `bgnbd`.
    pub model: crate::scoring::model::ModelKind,
    /// How often `serve` scores the fleet, in seconds of real time.
    pub score_interval_s: u64,
    /// Refit the model when the last fit is this many hours old (by the injected clock).
    pub refit_interval_h: u64,
    /// The fit uses members whose clock started within this many days before the fit.
    pub fit_window_days: u32,
    /// With fewer members than this in the window, the model is not refitted.
    pub min_fit_members: u32,
    /// Time zone for members without one (IANA name).
    pub default_tz: String,
    /// A member is `new` for this many days after joining.
    pub onboarding_days: u32,
    /// ... and until they have this many active days; after the onboarding window a member
    /// with fewer is flagged `lapsing` (the onboarding rule).
    pub onboarding_min_active_days: u32,
    /// A new member with no active day this many days after joining is flagged `lapsing`.
    pub no_start_days: u32,
    /// A member who joined fewer than this many days ago ...
    pub onboarding_watch_days: u32,
    /// ... and has been silent for this many days is flagged `lapsing` by the onboarding
    /// rule (started, then faded); 0 turns it off.
    pub onboarding_fade_days: u32,
    /// Enter `lapsing` when `p_engaged` falls below this.
    pub lapsing_enter_below: f64,
    /// ... or when the member's silence is one an engaged member with their own rhythm
    /// goes through less often than this (P(silent this long | engaged)); 0 turns it off.
    pub lapsing_silence_below: f64,
    /// Leave `lapsing` (or `lapsed`) only when `p_engaged` rises above this after new activity.
    pub lapsing_exit_above: f64,
    /// BG/BB also reads each member's days by weekday, and trusts that reading as far as
    /// it explains the member's history better than one daily chance (`docs/scoring.md`).
    pub weekly_rhythm: bool,
    /// `lapsed` (probably gone) below this `p_engaged`.
    pub lapsed_below: f64,
    /// `champion`: in this top fraction of members by expected active days …
    pub champion_top_fraction: f64,
    /// … and at least this `p_engaged`.
    pub champion_min_p_engaged: f64,
    /// A champion stays one while in this top fraction …
    pub champion_keep_fraction: f64,
    /// … and at or above this `p_engaged`.
    pub champion_keep_p_engaged: f64,
    /// No state change sooner than this many days after the previous one.
    pub min_dwell_days: u32,
    /// MBG/NBD and BG/NBD parameters used until the fleet is large enough to fit (per day).
    pub prior: crate::scoring::model::Params,
    /// BG/BB parameters used until the fleet is large enough to fit.
    pub prior_bgbb: crate::scoring::bgbb::BgbbParams,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            model: crate::scoring::model::ModelKind::Bgbb,
            score_interval_s: 300,
            refit_interval_h: 24,
            fit_window_days: 365,
            min_fit_members: 50,
            default_tz: "UTC".into(),
            onboarding_days: 14,
            onboarding_min_active_days: 3,
            no_start_days: 7,
            onboarding_watch_days: 45,
            onboarding_fade_days: 14,
            lapsing_enter_below: 0.02,
            lapsing_silence_below: 0.0,
            lapsing_exit_above: 0.7,
            weekly_rhythm: true,
            lapsed_below: 0.01,
            champion_top_fraction: 0.10,
            champion_min_p_engaged: 0.9,
            champion_keep_fraction: 0.20,
            champion_keep_p_engaged: 0.8,
            min_dwell_days: 3,
            prior: crate::scoring::model::Params {
                r: 1.0,
                alpha: 2.0,
                a: 1.0,
                b: 30.0,
            },
            prior_bgbb: crate::scoring::bgbb::BgbbParams {
                alpha: 1.5,
                beta: 1.0,
                gamma: 1.0,
                delta: 500.0,
            },
        }
    }
}

pub use crate::outreach::config::{
    CapConfig, OutreachConfig, QuietHours, RuleConfig, WebhookConfig,
};

/// `[delivery]`: the dispatcher of the delivery queue (`crate::delivery`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Run the dispatcher in `serve`.
    pub enabled: bool,
    /// Attempts before a delivery is `dead`.
    pub max_attempts: u32,
    /// Delay after the first failed attempt, in milliseconds (doubling after each).
    pub backoff_initial_ms: u64,
    /// Cap on the delay between attempts, in milliseconds.
    pub backoff_max_ms: u64,
    /// Relative jitter on each delay (0.2: ±20 %).
    pub backoff_jitter: f64,
    /// How often the dispatcher looks for due deliveries when idle (real milliseconds).
    pub poll_interval_ms: u64,
    /// Most deliveries claimed in one step.
    pub batch_size: usize,
    /// Most deliveries in flight at once.
    pub concurrency: usize,
    /// Whole-request timeout for webhooks, in milliseconds.
    pub request_timeout_ms: u64,
    /// Connect timeout for webhooks and SMTP, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Allow webhook URLs that resolve to private, loopback or link-local addresses (SSRF guard off).
    pub allow_private_addresses: bool,
    /// A device message not acknowledged by the agent within this many seconds is sent again.
    pub device_ack_timeout_s: u64,
    /// SMTP for the e-mail channel.
    pub smtp: SmtpConfig,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_attempts: 10,
            backoff_initial_ms: 10 * 60_000,
            backoff_max_ms: 24 * 3_600_000,
            backoff_jitter: 0.2,
            poll_interval_ms: 500,
            batch_size: 256,
            concurrency: 64,
            request_timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
            allow_private_addresses: false,
            device_ack_timeout_s: 300,
            smtp: SmtpConfig::default(),
        }
    }
}

impl DeliveryConfig {
    /// The retry schedule.
    pub fn backoff(&self) -> crate::delivery::Backoff {
        crate::delivery::Backoff {
            initial: std::time::Duration::from_millis(self.backoff_initial_ms),
            max: std::time::Duration::from_millis(self.backoff_max_ms),
            jitter: self.backoff_jitter,
        }
    }

    /// Checks ranges; errors name the `delivery.*` key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=100).contains(&self.max_attempts) {
            return Err((
                "delivery.max_attempts",
                format!("{} is outside 1..=100", self.max_attempts),
            ));
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            return Err((
                "delivery.backoff_max_ms",
                "backoff_initial_ms must be at least 1 and at most backoff_max_ms".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.backoff_jitter) {
            return Err((
                "delivery.backoff_jitter",
                format!("{} is outside [0, 1)", self.backoff_jitter),
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err((
                "delivery.batch_size",
                format!("{} is outside 1..=10000", self.batch_size),
            ));
        }
        if !(1..=4096).contains(&self.concurrency) {
            return Err((
                "delivery.concurrency",
                format!("{} is outside 1..=4096", self.concurrency),
            ));
        }
        if self.request_timeout_ms == 0 || self.connect_timeout_ms == 0 {
            return Err((
                "delivery.request_timeout_ms",
                "timeouts must be at least 1 ms".into(),
            ));
        }
        if self.poll_interval_ms == 0 {
            return Err(("delivery.poll_interval_ms", "must be at least 1".into()));
        }
        if !(1..=86_400).contains(&self.device_ack_timeout_s) {
            return Err((
                "delivery.device_ack_timeout_s",
                format!("{} is outside 1..=86400", self.device_ack_timeout_s),
            ));
        }
        if !matches!(self.smtp.security.as_str(), "none" | "starttls" | "tls") {
            return Err((
                "delivery.smtp.security",
                format!("{:?}: expected none, starttls or tls", self.smtp.security),
            ));
        }
        if !self.smtp.host.is_empty() && crate::domain::Email::parse(&self.smtp.from).is_err() {
            return Err((
                "delivery.smtp.from",
                format!("{:?} is not an e-mail address", self.smtp.from),
            ));
        }
        Ok(())
    }
}

/// `[delivery.smtp]`: the e-mail channel.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// SMTP server host; empty disables the e-mail channel (e-mails are skipped with `no_smtp`).
    pub host: String,
    /// Port.
    pub port: u16,
    /// `none` (plain, for local relays and tests), `starttls` or `tls` (rustls).
    pub security: String,
    /// User name (empty: no authentication).
    pub username: String,
    /// Password (secret).
    pub password: Secret,
    /// The From address.
    pub from: String,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 25,
            security: "starttls".into(),
            username: String::new(),
            password: Secret::default(),
            from: "rollcall@example.com".into(),
        }
    }
}

impl ScoringConfig {
    /// The prior parameters for `kind`, in [`crate::scoring::model::Params`] slots.
    pub fn prior_for(
        &self,
        kind: crate::scoring::model::ModelKind,
    ) -> crate::scoring::model::Params {
        if kind.is_discrete() {
            self.prior_bgbb.to_slots()
        } else {
            self.prior
        }
    }

    /// The default time zone (validated at load).
    pub fn default_tz(&self) -> chrono_tz::Tz {
        self.default_tz.parse().unwrap_or(chrono_tz::UTC)
    }

    /// Checks ranges and orderings; errors name the `scoring.*` key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let unit = |k: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 && v < 1.0 {
                Ok(())
            } else {
                Err((k, format!("{v} is outside (0, 1)")))
            }
        };
        unit("scoring.lapsing_enter_below", self.lapsing_enter_below)?;
        unit("scoring.lapsing_exit_above", self.lapsing_exit_above)?;
        unit("scoring.lapsed_below", self.lapsed_below)?;
        unit("scoring.champion_top_fraction", self.champion_top_fraction)?;
        unit(
            "scoring.champion_min_p_engaged",
            self.champion_min_p_engaged,
        )?;
        unit(
            "scoring.champion_keep_fraction",
            self.champion_keep_fraction,
        )?;
        unit(
            "scoring.champion_keep_p_engaged",
            self.champion_keep_p_engaged,
        )?;
        if self.lapsed_below >= self.lapsing_enter_below {
            return Err((
                "scoring.lapsed_below",
                format!(
                    "{} must be below scoring.lapsing_enter_below ({})",
                    self.lapsed_below, self.lapsing_enter_below
                ),
            ));
        }
        if self.lapsing_exit_above < self.lapsing_enter_below {
            return Err((
                "scoring.lapsing_exit_above",
                format!(
                    "{} must be at least scoring.lapsing_enter_below ({}): that gap is the hysteresis",
                    self.lapsing_exit_above, self.lapsing_enter_below
                ),
            ));
        }
        if self.champion_keep_fraction < self.champion_top_fraction {
            return Err((
                "scoring.champion_keep_fraction",
                "must be at least scoring.champion_top_fraction".into(),
            ));
        }
        if self.champion_keep_p_engaged > self.champion_min_p_engaged {
            return Err((
                "scoring.champion_keep_p_engaged",
                "must be at most scoring.champion_min_p_engaged".into(),
            ));
        }
        if self.score_interval_s == 0 || self.score_interval_s > 86_400 {
            return Err((
                "scoring.score_interval_s",
                format!("{} is outside 1..=86400", self.score_interval_s),
            ));
        }
        if self.refit_interval_h == 0 {
            return Err(("scoring.refit_interval_h", "must be at least 1".into()));
        }
        if self.fit_window_days == 0 {
            return Err(("scoring.fit_window_days", "must be at least 1".into()));
        }
        if self.onboarding_days == 0 || self.no_start_days > self.onboarding_days {
            return Err((
                "scoring.no_start_days",
                "must be at most scoring.onboarding_days, which must be at least 1".into(),
            ));
        }
        if self.default_tz.parse::<chrono_tz::Tz>().is_err() {
            return Err((
                "scoring.default_tz",
                format!("{:?} is not an IANA time zone name", self.default_tz),
            ));
        }
        if !self.prior.is_valid() {
            return Err((
                "scoring.prior",
                "r, alpha, a and b must be positive and finite".into(),
            ));
        }
        if !self.prior_bgbb.to_slots().is_valid() {
            return Err((
                "scoring.prior_bgbb",
                "alpha, beta, gamma and delta must be positive and finite".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.lapsing_silence_below) {
            return Err((
                "scoring.lapsing_silence_below",
                format!("{} is outside [0, 1)", self.lapsing_silence_below),
            ));
        }
        Ok(())
    }
}

impl CloudConfig {
    /// Loads `path`, or the defaults when `None`; then applies `ROLLCALL_*` environment
    /// overrides and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(path, |k| std::env::var(k).ok())
    }

    /// [`CloudConfig::load`] with the environment read through `env`.
    pub fn load_with(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let (mut cfg, file) = match path {
            Some(p) => {
                let file = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    file: file.clone(),
                    source,
                })?;
                let mut cfg: CloudConfig = serde_path_to_error::deserialize(
                    toml::Deserializer::new(&text),
                )
                .map_err(|e| ConfigError::Parse {
                    file: file.clone(),
                    message: parse_message(&e),
                })?;
                // Templates are found relative to the file that names them.
                if let Some(dir) = cfg.outreach.templates_dir.as_mut() {
                    if dir.is_relative() {
                        *dir = p.parent().unwrap_or(Path::new(".")).join(&*dir);
                    }
                }
                (cfg, file)
            }
            None => (CloudConfig::default(), "<defaults>".to_owned()),
        };
        let overridden = cfg.apply_env(env)?;
        cfg.validate(&file).map_err(|e| match e {
            // A bad value that came from the environment is blamed on its variable.
            ConfigError::Invalid { key, message, .. } => {
                match overridden.iter().find(|(k, _)| *k == key) {
                    Some((_, var)) => ConfigError::Invalid {
                        file: (*var).to_owned(),
                        key,
                        message,
                    },
                    None => ConfigError::Invalid { file, key, message },
                }
            }
            e => e,
        })?;
        Ok(cfg)
    }

    /// Applies the documented environment overrides, read through `get`. Returns the
    /// overridden keys with their variables; a value that does not parse is an error that
    /// names its variable (in place of the file).
    pub fn apply_env(
        &mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<(&'static str, &'static str)>, ConfigError> {
        let mut set = Vec::new();
        let mut var = |name: &'static str, key: &'static str| {
            let v = get(name);
            if v.is_some() {
                set.push((key, name));
            }
            v
        };
        let address = |name: &'static str, key: &'static str, v: String| {
            v.parse::<std::net::SocketAddr>()
                .map_err(|e| ConfigError::Invalid {
                    file: name.to_owned(),
                    key,
                    message: format!("{v:?} is not an address with a port (HOST:PORT): {e}"),
                })
        };
        if let Some(v) = var("ROLLCALL_DATA_DIR", "data_dir") {
            self.data_dir = v.into();
        }
        if let Some(v) = var("ROLLCALL_MQTT_URL", "broker.url") {
            self.broker.url = v;
        }
        if let Some(v) = var("ROLLCALL_MQTT_USERNAME", "broker.username") {
            self.broker.username = v;
        }
        if let Some(v) = var("ROLLCALL_MQTT_PASSWORD", "broker.password") {
            self.broker.password = Secret::new(v);
        }
        if let Some(v) = var("ROLLCALL_MQTT_LISTEN", "broker.listen") {
            self.broker.listen = address("ROLLCALL_MQTT_LISTEN", "broker.listen", v)?;
        }
        if let Some(v) = var("ROLLCALL_TWILIO_AUTH_TOKEN", "telephony.auth_token") {
            self.telephony.auth_token = Secret::new(v);
        }
        if let Some(v) = var("ROLLCALL_HTTP_LISTEN", "http.listen") {
            self.http.listen = address("ROLLCALL_HTTP_LISTEN", "http.listen", v)?;
        }
        Ok(set)
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
        if !(1..=720).contains(&self.console.session_hours) {
            return bad(
                "console.session_hours",
                format!("{} is outside 1..=720", self.console.session_hours),
            );
        }
        let url = self.telephony.public_url.trim_end_matches('/');
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return bad(
                "telephony.public_url",
                format!("{url:?} must start with http:// or https://"),
            );
        }
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
            if let Err(e) = self.broker.url.parse::<crate::mqtt::BrokerUrl>() {
                return bad("broker.url", e.to_string());
            }
        }
        if self.broker.shared_group.contains(['/', '+', '#']) {
            return bad(
                "broker.shared_group",
                "must not contain '/', '+' or '#'".into(),
            );
        }
        if !(1..=24 * 365).contains(&self.orders.cancel_window_h) {
            return bad(
                "orders.cancel_window_h",
                format!("{} is outside 1..=8760", self.orders.cancel_window_h),
            );
        }
        if self.orders.price_tolerance_bp > 10_000 {
            return bad(
                "orders.price_tolerance_bp",
                format!("{} is above 10000 (100 %)", self.orders.price_tolerance_bp),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for item in &self.orders.catalogue {
            if let Err(e) = rollcall_shared::Sku::parse(&item.sku) {
                return bad("orders.catalogue.sku", e.to_string());
            }
            if !seen.insert(item.sku.as_str()) {
                return bad(
                    "orders.catalogue.sku",
                    format!("{:?} is listed twice", item.sku),
                );
            }
            if !(0..=rollcall_shared::limits::MAX_UNIT_PRICE).contains(&item.unit_price) {
                return bad(
                    "orders.catalogue.unit_price",
                    format!("{}: {} is out of range", item.sku, item.unit_price),
                );
            }
            if let Err(e) = rollcall_shared::Currency::parse(&item.currency) {
                return bad("orders.catalogue.currency", format!("{}: {e}", item.sku));
            }
        }
        if let Some(name) = &self.orders.fulfilment_webhook {
            if !self.outreach.webhooks.iter().any(|w| &w.name == name) {
                return bad(
                    "orders.fulfilment_webhook",
                    format!("{name:?} is not in [[outreach.webhooks]]"),
                );
            }
        }
        if let Err((key, message)) = self.scoring.validate() {
            return bad(key, message);
        }
        if let Err((key, message)) = self.delivery.validate() {
            return bad(key, message);
        }
        if let Err((key, message)) = self.outreach.validate() {
            return bad(key, message);
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

/// A parse error as users read it ([`rollcall_shared::report::config_parse_message`]).
fn parse_message(e: &serde_path_to_error::Error<toml::de::Error>) -> String {
    rollcall_shared::report::config_parse_message(&e.path().to_string(), &e.inner().to_string())
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
    fn a_value_of_the_wrong_type_names_the_dotted_key_in_plain_words() {
        let e = load_str("[ingest]\nbatch_max_reports = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ingest.batch_max_reports: "), "{e}");
        assert!(
            e.contains("expected a whole number") && !e.contains("usize"),
            "{e}"
        );
        let e = load_str("[outreach]\npublic_url = \"not a url\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("outreach.public_url"), "{e}");
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
    fn scoring_thresholds_are_checked_and_name_the_key() {
        let c = load_str("[scoring]\nmodel = \"bgnbd\"\nmin_dwell_days = 5\n").unwrap();
        assert_eq!(c.scoring.model, crate::scoring::model::ModelKind::Bgnbd);
        assert_eq!(c.scoring.min_dwell_days, 5);
        let e = load_str("[scoring]\nlapsing_exit_above = 0.015\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("scoring.lapsing_exit_above"), "{e}");
        let e = load_str("[scoring]\nthreshold = 0.3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("threshold"), "{e}");
        let c = load_str("[scoring]\nmodel = \"bgbb\"\n").unwrap();
        assert_eq!(c.scoring.model, crate::scoring::model::ModelKind::Bgbb);
        let e = load_str("[scoring]\nmodel = \"pareto\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("model"), "{e}");
        let e = load_str("[scoring.prior]\nr = 1.0\nalpha = 1.0\na = 1.0\nb = -1.0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("scoring.prior"), "{e}");
    }

    #[test]
    fn outreach_templates_are_rendered_at_load_and_errors_name_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("t")).unwrap();
        std::fs::write(dir.path().join("t/hi.txt.j2"), "Hi {{ member.nmae }}").unwrap();
        let p = dir.path().join("cloud.toml");
        let rule = "[outreach.rules.hi]\ntrigger = \"to_lapsing\"\nchannels = [\"webhook\"]\ntemplate = \"hi\"\ncategory = \"marketing\"\n";
        std::fs::write(&p, format!("[outreach]\ntemplates_dir = \"t\"\n{rule}")).unwrap();
        let e = CloudConfig::load(Some(&p)).unwrap_err().to_string();
        assert!(
            e.contains("cloud.toml")
                && e.contains("outreach.rules")
                && e.contains("rule hi")
                && e.contains("undefined"),
            "{e}"
        );
        std::fs::write(dir.path().join("t/hi.txt.j2"), "Hi {{ member.first_name }}").unwrap();
        CloudConfig::load(Some(&p)).unwrap();
        let e = load_str("[outreach]\nbusiness_tz = \"Mars/Base\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("outreach.business_tz"), "{e}");
        let e = load_str(
            "[[outreach.webhooks]]\nname = \"x\"\nurl = \"http://h/\"\nsecrets = [\"nope\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("outreach.webhooks") && !e.contains("nope"),
            "{e}"
        );
        let c = load_str("[[outreach.webhooks]]\nname = \"x\"\nurl = \"http://h/\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n").unwrap();
        assert!(
            !format!("{c:?}").contains("MfKQ9r8G"),
            "secrets stay out of Debug"
        );
        let hook = "[[outreach.webhooks]]\nname = \"shop\"\nurl = \"http://h/\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n";
        let c = load_str(&format!("[orders]\nfulfilment_webhook = \"shop\"\n{hook}")).unwrap();
        assert_eq!(c.orders.fulfilment_webhook.as_deref(), Some("shop"));
        let e = load_str(&format!("[orders]\nfulfilment_webhook = \"erp\"\n{hook}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("orders.fulfilment_webhook") && e.contains("erp"),
            "{e}"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c = CloudConfig::default();
        let set = c
            .apply_env(|k| (k == "ROLLCALL_HTTP_LISTEN").then(|| "127.0.0.1:0".to_owned()))
            .unwrap();
        assert_eq!(c.http.listen.port(), 0);
        assert_eq!(set, [("http.listen", "ROLLCALL_HTTP_LISTEN")]);
    }

    #[test]
    fn a_bad_value_from_the_environment_is_blamed_on_its_variable_not_the_file() {
        let e = CloudConfig::load_with(None, |k| {
            (k == "ROLLCALL_MQTT_URL").then(|| "ftp://nowhere".to_owned())
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("ROLLCALL_MQTT_URL: broker.url:"), "{e}");
    }

    #[test]
    fn an_unparseable_environment_override_is_an_error_naming_its_variable() {
        let mut c = CloudConfig::default();
        let e = c
            .apply_env(|k| (k == "ROLLCALL_HTTP_LISTEN").then(|| "0.0.0.0".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("ROLLCALL_HTTP_LISTEN: http.listen:") && e.contains("\"0.0.0.0\""),
            "{e}"
        );
        assert_eq!(c.http.listen, CloudConfig::default().http.listen);
    }
}

//! `serve`: the embedded broker (unless an external one is configured), the ingest
//! worker and the HTTP listener, started together and stopped together.

use crate::broker;
use crate::config::CloudConfig;
use crate::http::{router, AppState};
use crate::metrics::Metrics;
use crate::mqtt::BrokerUrl;
use crate::worker::{self, WorkerSettings};
use rollcall_shared::dsse::PublicKey;
use rollcall_shared::Clock;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A running cloud: where it listens, and how to wait for it to stop.
pub struct RunningCloud {
    /// The MQTT broker address the ingest uses (the embedded broker's, if embedded).
    pub mqtt_addr: Option<SocketAddr>,
    /// The broker URL the ingest connected to.
    pub mqtt_url: String,
    /// The HTTP listener's address.
    pub http_addr: SocketAddr,
    /// The cloud's public key (devices verify downlinks with it).
    pub public_key: PublicKey,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningCloud {
    /// Waits until every task has stopped (after the shutdown token is cancelled).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts everything `serve` runs. Cancel `shutdown` to stop; then [`RunningCloud::wait`].
pub async fn start(
    cfg: CloudConfig,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningCloud> {
    use anyhow::Context;
    // Create the store (and run migrations) before anything reads it.
    drop(crate::store::open_writer(&cfg.data_dir).context("Failed to open the store")?);
    let key = crate::keys::load_or_create(&cfg.data_dir.join("cloud.key"))
        .context("Failed to load the cloud key")?;
    let (url, mqtt_addr) = if cfg.broker.url.is_empty() {
        let b = broker::start(cfg.broker.listen, cfg.broker.max_connections)?;
        (
            BrokerUrl {
                host: b.addr.ip().to_string(),
                port: b.addr.port(),
                tls: false,
            },
            Some(b.addr),
        )
    } else {
        (BrokerUrl::parse(&cfg.broker.url)?, None)
    };
    let mqtt_url = format!(
        "{}://{}:{}",
        if url.tls { "mqtts" } else { "mqtt" },
        url.host,
        url.port
    );
    let metrics = Arc::new(Metrics::new());
    let settings = WorkerSettings {
        url,
        username: cfg.broker.username.clone(),
        password: cfg.broker.password.expose().to_owned(),
        ca_file: cfg.broker.ca_file.clone(),
        shared_group: cfg.broker.shared_group.clone(),
    };
    let public_key = key.public();
    let ingest = worker::start(
        &cfg,
        settings,
        key,
        clock,
        metrics.clone(),
        shutdown.clone(),
    )
    .await?;

    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("Failed to listen for HTTP on {}", cfg.http.listen))?;
    let http_addr = listener.local_addr()?;
    let app = router(AppState {
        metrics: metrics.clone(),
    });
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    tracing::info!(%http_addr, mqtt = %mqtt_url, "Rollcall cloud is up");
    Ok(RunningCloud {
        mqtt_addr,
        mqtt_url,
        http_addr,
        public_key,
        metrics,
        tasks: vec![ingest, http],
    })
}

//! `serve`: the embedded broker (unless an external one is configured), the ingest
//! worker, the background scorer (`[scoring] enabled`) and the HTTP listener, started
//! together and stopped together.

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
    let clock_for_scoring = clock.clone();
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
        data_dir: cfg.data_dir.clone(),
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
    let mut tasks = vec![ingest, http];
    if cfg.scoring.enabled {
        let conn = crate::store::open_writer(&cfg.data_dir)
            .context("Failed to open the store for scoring")?;
        let scorer = crate::scoring::Scorer::new(conn, cfg.scoring.clone(), metrics.clone());
        tasks.push(tokio::spawn(scoring_loop(
            scorer,
            clock_for_scoring,
            std::time::Duration::from_secs(cfg.scoring.score_interval_s),
            shutdown.clone(),
        )));
    }
    tracing::info!(%http_addr, mqtt = %mqtt_url, "Rollcall cloud is up");
    Ok(RunningCloud {
        mqtt_addr,
        mqtt_url,
        http_addr,
        public_key,
        metrics,
        tasks,
    })
}

/// The background scorer: one [`crate::scoring::Scorer::tick`] at start and then every
/// `interval` (real time; the as-of instant comes from the injected clock, so a
/// compressed simulation refits once per simulated `refit_interval_h`). Stops on
/// `shutdown` after the run in progress.
async fn scoring_loop(
    scorer: crate::scoring::Scorer,
    clock: Arc<dyn Clock>,
    interval: std::time::Duration,
    shutdown: CancellationToken,
) {
    let scorer = Arc::new(std::sync::Mutex::new(scorer));
    loop {
        let now = clock.now();
        let s = scorer.clone();
        let run = tokio::task::spawn_blocking(move || s.lock().expect("scorer lock").tick(now));
        match run.await {
            Ok(Ok(t)) => tracing::info!(
                as_of = %t.as_of,
                refitted = t.refitted,
                written = t.written,
                counts = ?t.counts,
                "Scored the fleet"
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Scoring run failed; retrying at the next tick")
            }
            Err(e) => tracing::error!(error = %e, "Scoring task panicked"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

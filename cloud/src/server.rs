//! `serve`: the embedded broker (unless an external one is configured), the ingest
//! worker, the background scorer (`[scoring] enabled`), the outreach planner
//! (`[outreach] enabled`), the delivery dispatcher (`[delivery] enabled`) and the HTTP
//! listener, started together and stopped together.

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
    _lock: crate::serve_lock::ServeLock,
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
    let lock = crate::serve_lock::ServeLock::acquire(&cfg.data_dir)?;
    let key = crate::keys::load_or_create(&cfg.data_dir.join("cloud.key"))
        .context("Failed to load the cloud key")?;
    let (url, mqtt_addr) = if cfg.broker.url.is_empty() {
        let b = broker::start(cfg.broker.listen, cfg.broker.max_connections)?;
        (BrokerUrl::from_socket_addr(b.addr), Some(b.addr))
    } else {
        (
            cfg.broker
                .url
                .parse::<BrokerUrl>()
                .map_err(crate::mqtt::MqttSetupError::from)?,
            None,
        )
    };
    let mqtt_url = url.to_string();
    let metrics = Arc::new(Metrics::new());
    let settings = WorkerSettings {
        url,
        username: cfg.broker.username.clone(),
        password: cfg.broker.password.clone(),
        ca_file: cfg.broker.ca_file.clone(),
        shared_group: cfg.broker.shared_group.clone(),
    };
    let public_key = key.public();
    let clock_for_scoring = clock.clone();
    let clock_for_outreach = clock.clone();
    let delivery_key = key.clone();
    let device_settings = crate::delivery::device::DeviceChannelSettings {
        url: settings.url.clone(),
        username: settings.username.clone(),
        password: settings.password.clone(),
        ca_file: settings.ca_file.clone(),
        topic_prefix: cfg.topic_prefix.clone(),
        data_dir: cfg.data_dir.clone(),
    };
    // The HTTP state first: opening the audit log may move rows out of the store (once,
    // after an upgrade), which is best done before the ingest starts writing there.
    let (state_metrics, state_cfg) = (metrics.clone(), cfg.clone());
    let mut state = tokio::task::spawn_blocking(move || AppState::new(state_metrics, state_cfg))
        .await?
        .context("Failed to set up the HTTP API")?;
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
    let optout = crate::outreach::optout::OptOutKey::load(&cfg.data_dir)
        .context("Failed to load the opt-out key")?;
    state.optout = Some(optout);
    state.clock = clock_for_outreach.clone();
    let app = router(state);
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
    let wake = if cfg.delivery.enabled {
        let (d, device_task) = start_dispatcher(
            &cfg,
            device_settings,
            delivery_key,
            clock_for_outreach.clone(),
            metrics.clone(),
            shutdown.clone(),
        )?;
        let wake = d.notifier();
        tasks.push(device_task);
        tasks.push(tokio::spawn(d.run(shutdown.clone())));
        Some(wake)
    } else {
        None
    };
    if cfg.outreach.enabled {
        let outreach = crate::outreach::Outreach::new(&cfg).context("Failed to set up outreach")?;
        let conn = crate::store::open_writer(&cfg.data_dir)
            .context("Failed to open the store for outreach")?;
        tasks.push(tokio::spawn(outreach_loop(
            outreach,
            conn,
            clock_for_outreach,
            std::time::Duration::from_secs(cfg.outreach.tick_interval_s),
            metrics.clone(),
            wake,
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
        _lock: lock,
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

/// Builds the channel senders and the dispatcher (not yet running).
fn start_dispatcher(
    cfg: &CloudConfig,
    device: crate::delivery::device::DeviceChannelSettings,
    key: rollcall_shared::dsse::KeyPair,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    crate::delivery::dispatcher::Dispatcher,
    tokio::task::JoinHandle<()>,
)> {
    use crate::delivery::{
        device::DeviceSender, dispatcher, email::EmailSender, webhook::WebhookSender,
    };
    use anyhow::Context;
    let webhook = WebhookSender::new(&cfg.delivery, &cfg.outreach.webhooks)
        .context("Failed to build the webhook client")?;
    let email = if cfg.delivery.smtp.host.is_empty() {
        None
    } else {
        Some(
            EmailSender::new(
                &cfg.delivery.smtp,
                std::time::Duration::from_millis(cfg.delivery.request_timeout_ms),
            )
            .context("Failed to set up SMTP")?,
        )
    };
    let (device, task) = DeviceSender::start(device, key, clock.clone(), metrics.clone(), shutdown)
        .context("Failed to connect the device channel")?;
    let channels = dispatcher::Channels {
        webhook: Some(webhook),
        email,
        device: Some(device),
    };
    let conn = crate::store::open_writer(&cfg.data_dir)
        .context("Failed to open the store for the dispatcher")?;
    let d = dispatcher::Dispatcher::new(conn, cfg.delivery.clone(), clock, channels, metrics)?;
    Ok((d, task))
}

/// The outreach planner: one [`crate::outreach::Outreach::tick`] at start and then every
/// `interval` (real time; the instant comes from the injected clock). Wakes the
/// dispatcher when something was queued. Stops on `shutdown` after the tick in progress.
async fn outreach_loop(
    outreach: crate::outreach::Outreach,
    conn: rusqlite::Connection,
    clock: Arc<dyn Clock>,
    interval: std::time::Duration,
    metrics: Arc<Metrics>,
    wake: Option<Arc<tokio::sync::Notify>>,
    shutdown: CancellationToken,
) {
    let state = Arc::new(std::sync::Mutex::new((outreach, conn)));
    loop {
        let now = clock.now();
        let s = state.clone();
        let run = tokio::task::spawn_blocking(move || {
            let mut g = s.lock().expect("outreach lock");
            let (o, c) = &mut *g;
            o.tick(c, now)
        });
        match run.await {
            Ok(Ok(r)) => {
                for (d, n) in [
                    ("queued", r.queued),
                    ("held", r.held),
                    ("skipped", r.skipped),
                    ("cancelled", r.cancelled),
                ] {
                    metrics
                        .outreach_decisions
                        .get_or_create(&crate::metrics::DecisionLabel { decision: d.into() })
                        .inc_by(n);
                }
                if r.queued > 0 {
                    if let Some(w) = &wake {
                        w.notify_one();
                    }
                }
                if r != crate::outreach::TickReport::default() {
                    tracing::info!(?r, "Outreach tick");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Outreach tick failed; retrying at the next tick")
            }
            Err(e) => tracing::error!(error = %e, "Outreach task panicked"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

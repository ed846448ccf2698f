//! `rollcall demo`: the whole system on one box. Starts the cloud with its embedded
//! broker, a simulated fleet with months of history, scores everyone, creates an `admin`
//! API token, prints one JSON line (`console_url`, `api_url`, `token`, `data_dir`), then
//! keeps the fleet using its devices live until Ctrl-C.
//!
//! The data directory holds the cloud's store and key, the ground truth and `demo.json`
//! (seed, fleet size and window). Running again on the same directory resumes: the
//! devices continue their numbering and the days the demo was off are filled in as
//! history. `--fresh` (or no `--data-dir`: a new temporary directory) starts clean.

use crate::sim::{CloudTarget, FleetConfig, FleetSize, SimOptions, SimSummary, Simulation};
use anyhow::{bail, Context, Result};
use chrono::NaiveDate;
use rollcall_cloud::config::CloudConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio_util::sync::CancellationToken;

/// What the demo needs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Data directory; `None`: a new temporary directory.
    pub data_dir: Option<PathBuf>,
    /// Start clean even if the directory holds an earlier demo.
    pub fresh: bool,
    /// HTTP API and console address.
    pub http_listen: SocketAddr,
    /// Embedded MQTT broker address.
    pub mqtt_listen: SocketAddr,
    /// Members in the fleet.
    pub members: usize,
    /// Fleet seed.
    pub seed: u64,
    /// Days of history generated on first start.
    pub history_days: u32,
    /// Simulated seconds per real second once live (1: real time).
    pub speed: f64,
    /// The fleet mix.
    pub fleet: FleetConfig,
    /// Draw progress bars.
    pub progress: bool,
}

/// The line `rollcall demo` prints once it is ready.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReady {
    /// The web console.
    pub console_url: String,
    /// The HTTP API base.
    pub api_url: String,
    /// An `admin` bearer token for the API.
    pub token: String,
    /// The data directory (point `rollcall-cloud --data-dir` at it).
    pub data_dir: PathBuf,
    /// The embedded broker, for extra agents.
    pub mqtt_url: String,
    /// Members simulated.
    pub members: usize,
    /// Whether an earlier demo in this directory was resumed.
    pub resumed: bool,
}

/// `demo.json`: what a resumed demo must reproduce.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct DemoState {
    seed: u64,
    members: usize,
    start: NaiveDate,
    plan_days: i64,
}

const STATE_FILE: &str = "demo.json";

fn read_state(dir: &Path) -> Result<Option<DemoState>> {
    let path = dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is not a demo state file", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("Failed to read {}", path.display())),
    }
}

/// Runs the demo until `shutdown`; `on_ready` gets the ready line's content once.
pub async fn run(
    opts: DemoOptions,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&DemoReady),
) -> Result<SimSummary> {
    if opts.members == 0 {
        bail!("--members must be at least 1");
    }
    let data_dir = match &opts.data_dir {
        Some(d) => d.clone(),
        None => tempfile::Builder::new()
            .prefix("rollcall-demo-")
            .tempdir()
            .context("Failed to create a temporary data directory")?
            .keep(),
    };
    if opts.fresh && data_dir.exists() {
        if data_dir.join(STATE_FILE).exists() || data_dir.join("rollcall.db").exists() {
            std::fs::remove_dir_all(&data_dir)
                .with_context(|| format!("Failed to clear {}", data_dir.display()))?;
        } else if std::fs::read_dir(&data_dir)?.next().is_some() {
            bail!(
                "{} is not empty and holds no demo: refusing to delete it with --fresh",
                data_dir.display()
            );
        }
    }
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("Failed to create {}", data_dir.display()))?;
    let previous = read_state(&data_dir)?;
    if let Some(p) = &previous {
        if p.seed != opts.seed || p.members != opts.members {
            tracing::warn!(
                seed = p.seed,
                members = p.members,
                "Resuming the demo in this directory with its own seed and size; use --fresh for a new one"
            );
        }
    }
    let (seed, members) = previous
        .as_ref()
        .map_or((opts.seed, opts.members), |p| (p.seed, p.members));

    let mut cloud = CloudConfig {
        data_dir: data_dir.clone(),
        ..CloudConfig::default()
    };
    // Score often, so the console follows the live fleet closely.
    cloud.scoring.score_interval_s = 30;
    let sim_opts = SimOptions {
        fleet: opts.fleet.clone(),
        seed,
        size: FleetSize::Members(members),
        history_days: opts.history_days,
        live_days: None,
        speed: opts.speed,
        data_dir: data_dir.clone(),
        cloud: CloudTarget::InProcess {
            mqtt_listen: opts.mqtt_listen,
            http_listen: opts.http_listen,
        },
        cloud_config: Some(cloud.clone()),
        truth_path: data_dir.join("truth.json"),
        progress: opts.progress,
        consumables: true,
        window: previous.as_ref().map(|p| (p.start, p.plan_days)),
    };
    let mut sim = Simulation::start(sim_opts).await?;
    let state = DemoState {
        seed,
        members,
        start: sim.fleet().start,
        plan_days: sim.fleet().days,
    };
    std::fs::write(
        data_dir.join(STATE_FILE),
        serde_json::to_vec_pretty(&state)?,
    )?;
    sim.run_history(&shutdown).await?;

    // Score now rather than at the scorer's next tick, so the console is full at once.
    let as_of = rollcall_shared::Clock::now(sim.clock());
    let dir = data_dir.clone();
    let scoring = cloud.scoring.clone();
    let token = tokio::task::spawn_blocking(move || -> Result<String> {
        let mut conn = rollcall_cloud::store::open_writer(&dir)?;
        rollcall_cloud::scoring::score_once(&mut conn, &scoring, as_of, as_of)?;
        let t = rollcall_cloud::tokens::create(
            &conn,
            "demo",
            rollcall_cloud::tokens::Role::Admin,
            as_of,
        )?;
        Ok(t.token)
    })
    .await??;
    let http = sim
        .http_addr()
        .context("the in-process cloud has an HTTP address")?;
    on_ready(&DemoReady {
        console_url: format!("http://{http}/"),
        api_url: format!("http://{http}/api/v1"),
        token,
        data_dir: data_dir.clone(),
        mqtt_url: sim.mqtt_url().to_owned(),
        members,
        resumed: previous.is_some(),
    });
    sim.run_live(&shutdown).await?;
    sim.finish_within(std::time::Duration::from_secs(3)).await
}

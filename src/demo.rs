//! `rollcall demo`: the whole system on one box. Starts the cloud with its embedded
//! broker, a simulated fleet with months of history, scores everyone, creates an `admin`
//! API token, prints one JSON line (`console_url`, `api_url`, `token`, `data_dir`), then
//! keeps the fleet using its devices live until Ctrl-C.
//!
//! The console shows everything at work: outreach goes to the device displays and to the
//! cloud's built-in webhook sink (`/console/sink`), accepted orders are handed to
//! fulfilment there too (once their cancellation window has closed), and a simulated phone line calls the telephony webhook now and
//! then from a random member's number (signed like Twilio), so the screen-pop
//! (`/console/calls`) changes by itself.
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

    // The webhook sink's URL needs the HTTP port before the cloud starts.
    let http_listen = if opts.http_listen.port() == 0 {
        let l = std::net::TcpListener::bind(opts.http_listen)
            .with_context(|| format!("Failed to listen for HTTP on {}", opts.http_listen))?;
        l.local_addr()?
    } else {
        opts.http_listen
    };
    let mut cloud = CloudConfig {
        data_dir: data_dir.clone(),
        ..CloudConfig::default()
    };
    // Score often, so the console follows the live fleet closely.
    cloud.scoring.score_interval_s = 30;
    let telephony_token = demo_secret()?;
    configure_console(&mut cloud, http_listen, &telephony_token)?;
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
            http_listen,
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
        // The history went by faster than the live scorer ticks: replay it day by day so
        // the engagement chart has every day, then score now.
        let first: Option<i64> = conn.query_row(
            "SELECT MIN(occurred_ms) FROM events WHERE clock_suspect = 0",
            [],
            |r| r.get(0),
        )?;
        if let Some(first) = first.and_then(chrono::DateTime::from_timestamp_millis) {
            let from = (first + chrono::Duration::days(14)).max(as_of - chrono::Duration::days(89));
            let to = as_of - chrono::Duration::days(1);
            if from < to {
                rollcall_cloud::scoring::backfill_engagement(&mut conn, &scoring, from, to)?;
            }
        }
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
    let caller = tokio::spawn(phone_line(
        data_dir.clone(),
        format!("http://{http}/api/v1/telephony/incoming"),
        telephony_token,
        shutdown.clone(),
    ));
    on_ready(&DemoReady {
        console_url: format!("http://{http}/console"),
        api_url: format!("http://{http}/api/v1"),
        token,
        data_dir: data_dir.clone(),
        mqtt_url: sim.mqtt_url().to_owned(),
        members,
        resumed: previous.is_some(),
    });
    sim.run_live(&shutdown).await?;
    caller.abort();
    sim.finish_within(std::time::Duration::from_secs(3)).await
}

fn demo_secret() -> Result<String> {
    let mut b = [0u8; 24];
    for x in b.iter_mut() {
        *x = fastrand::u8(..);
    }
    // Not a production secret: it only guards the demo's own loopback webhook.
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The demo's console: the webhook sink as the outreach and fulfilment endpoint (on
/// loopback, so private addresses are allowed), and the telephony auth token.
fn configure_console(cloud: &mut CloudConfig, http: SocketAddr, telephony: &str) -> Result<()> {
    use rollcall_cloud::config::Secret;
    let mut key = [0u8; 32];
    for x in key.iter_mut() {
        *x = fastrand::u8(..);
    }
    let secret = rollcall_cloud::delivery::webhook::WebhookSecret::from_bytes(&key).to_whsec();
    cloud.console.webhook_sink = true;
    cloud.delivery.allow_private_addresses = true;
    cloud
        .outreach
        .webhooks
        .push(rollcall_cloud::outreach::config::WebhookConfig {
            name: "sink".into(),
            url: format!("http://{http}/sink/sink"),
            secrets: vec![Secret::new(secret)],
        });
    cloud.orders.fulfilment_webhook = Some("sink".into());
    cloud.outreach.public_url = format!("http://{http}");
    cloud.telephony.auth_token = Secret::new(telephony);
    cloud
        .validate("<demo>")
        .context("the demo's cloud configuration")?;
    Ok(())
}

/// A simulated phone line: every 20–40 s a random member (now and then an unknown
/// number) calls the telephony webhook, signed as the provider would.
async fn phone_line(
    data_dir: PathBuf,
    url: String,
    auth_token: String,
    shutdown: CancellationToken,
) {
    let http = reqwest::Client::new();
    let mut n = 0u64;
    loop {
        let wait = std::time::Duration::from_secs(if n == 0 { 5 } else { fastrand::u64(20..40) });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        n += 1;
        let dir = data_dir.clone();
        let phone = tokio::task::spawn_blocking(move || -> Option<String> {
            let conn = rollcall_cloud::store::open_reader(&dir).ok()?;
            conn.query_row(
                "SELECT phone FROM members WHERE phone IS NOT NULL ORDER BY random() LIMIT 1",
                [],
                |r| r.get(0),
            )
            .ok()
        })
        .await
        .ok()
        .flatten();
        let from = match phone {
            Some(p) if n % 5 != 0 => p,
            _ => "+12025550199".to_owned(),
        };
        let params: Vec<(String, String)> = [
            ("CallSid", format!("CAdemo{:x}{n:04}", fastrand::u64(..))),
            ("From", from),
            ("To", "+18005550100".to_owned()),
            ("CallStatus", "ringing".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let sig = rollcall_cloud::telephony::signature(&auth_token, &url, &params);
        match http
            .post(&url)
            .header("X-Twilio-Signature", sig)
            .form(&params)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => tracing::debug!("Simulated an incoming call"),
            Ok(r) => tracing::warn!(status = %r.status(), "The simulated call was refused"),
            Err(e) => tracing::warn!(error = %e, "The simulated call failed"),
        }
    }
}

//! `rollcall`: the fleet simulator and benchmarks (and, as they land, the demo and
//! evaluation).

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rollcall::hostcpu::CpuTimes;
use rollcall::sim::{CloudTarget, FleetConfig, FleetSize, SimOptions, Simulation};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// The allocator of `rollcall-cloud`: the demo and the benchmarks run the cloud in this
/// process, and should measure it as it runs on its own.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rollcall one-box tools.
#[derive(Debug, Parser)]
#[command(name = "rollcall", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The whole system on one box: cloud, broker and a simulated fleet with history;
    /// prints one JSON line with the console URL and an admin token, runs until Ctrl-C.
    Demo(DemoArgs),
    /// Simulate a fleet of members whose devices run the real agent code, with ground truth.
    Simulate(SimulateArgs),
    /// Compare the cloud's scoring with a simulation's ground truth (AUC, precision, recall,
    /// lead time, false alarms) for the model and two baselines.
    Eval(EvalArgs),
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
    /// Fit the fleet model on simulated members and score a large fleet (prints JSON).
    Scoring {
        /// Members to fit on.
        #[arg(long, default_value_t = 100_000)]
        fit_members: usize,
        /// Members to score.
        #[arg(long, default_value_t = 1_000_000)]
        score_members: usize,
    },
    /// The agent daemon's memory and CPU at 1, 10 and 100 events/s, its binary size and
    /// its local record throughput (prints JSON).
    Agent {
        /// Seconds at each rate.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Events recorded back to back for the throughput figure.
        #[arg(long, default_value_t = 2000)]
        burst: u64,
    },
    /// Webhook deliveries per second from the durable queue to a local receiver that
    /// checks every signature and counts duplicates (prints JSON).
    Outreach {
        /// Deliveries to enqueue and deliver.
        #[arg(long, default_value_t = 20_000)]
        deliveries: usize,
    },
    /// Device transactions verified, decided and appended to the ledger per second, and
    /// `ledger verify` over a large ledger (prints JSON).
    Ledger {
        /// Transactions for the append figure.
        #[arg(long, default_value_t = 50_000)]
        transactions: u64,
        /// Devices signing them.
        #[arg(long, default_value_t = 500)]
        devices: u32,
        /// Entries for the verify figure.
        #[arg(long, default_value_t = 1_000_000)]
        verify_entries: u64,
        /// Threads checking signatures.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// End-to-end ingest throughput, raw broker throughput, agent memory and size.
    Ingest {
        /// External broker (e.g. mqtt://127.0.0.1:1883 for Mosquitto); embedded by default.
        #[arg(long)]
        mqtt_url: Option<String>,
        /// Simulated devices.
        #[arg(long, default_value_t = 200)]
        devices: usize,
        /// Reports per device.
        #[arg(long, default_value_t = 100)]
        reports: usize,
        /// Events per report.
        #[arg(long, default_value_t = 15)]
        events: usize,
        /// MQTT connections the simulated devices share.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Skip the agent memory and size measurement.
        #[arg(long)]
        no_agent: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The support API under load: builds (or reuses) a store, starts the release
    /// `rollcall-cloud serve` and measures `GET /api/v1/lookup?phone=…&include=greeting`
    /// over many keep-alive connections, then the engagement summary (prints JSON).
    Lookup {
        /// Members in the store.
        #[arg(long, default_value_t = 100_000)]
        members: usize,
        /// Usage events in the store (all members together).
        #[arg(long, default_value_t = 10_000_000)]
        events: usize,
        /// Concurrent connections, each one request at a time.
        #[arg(long, default_value_t = 200)]
        connections: usize,
        /// Seconds measured, after 2 s of warm-up (for each of the two loads).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Requests per second of the second, open-loop load over the same connections
        /// (0: closed loop only).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Data directory; a store there with the same member count is reused (default: a
        /// new temporary directory).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Keep the temporary data directory.
        #[arg(long)]
        keep: bool,
        /// The server's `[http] audit_sync`: `full` (answer once the audit row is
        /// fsynced) or `normal` (once it is in the write-ahead file).
        #[arg(long, value_enum, default_value_t = rollcall::bench_lookup::AuditSync::Full)]
        audit_sync: rollcall::bench_lookup::AuditSync,
    },
}

/// `rollcall simulate`.
#[derive(Debug, Args)]
struct SimulateArgs {
    /// Fleet description (default: the built-in copy of config/fleet.toml).
    #[arg(long, value_name = "FILE")]
    fleet: Option<PathBuf>,
    /// Number of members (each with one or two devices).
    #[arg(long, conflicts_with = "devices")]
    members: Option<usize>,
    /// Number of devices (members are added until there are this many).
    #[arg(long)]
    devices: Option<usize>,
    /// Seed: the same seed gives the same members, events and ground truth.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Days of past usage replayed first, as fast as the cloud ingests.
    #[arg(long, default_value_t = 0, value_name = "DAYS")]
    history: u32,
    /// Days of live usage after the history; without it, runs until Ctrl-C.
    #[arg(long, value_name = "DAYS")]
    days: Option<u32>,
    /// Simulated seconds per real second during the live days (86400: a day per second).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// The cloud's data directory (default: a new temporary directory, kept).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Report to an external broker; a cloud must already serve --data-dir through it.
    #[arg(long, value_name = "URL")]
    mqtt_url: Option<String>,
    /// Where the in-process cloud's embedded broker listens.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    mqtt_listen: SocketAddr,
    /// Where the in-process cloud's HTTP API listens.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    http_listen: SocketAddr,
    /// Ground-truth file (default: DATA_DIR/truth.json).
    #[arg(long, value_name = "FILE")]
    truth: Option<PathBuf>,
    /// First day of the simulated window (YYYY-MM-DD, not in the future), to reproduce a
    /// run exactly; history then runs from it to now. Default: --history days ago.
    #[arg(long, value_name = "DATE")]
    start: Option<chrono::NaiveDate>,
}

/// `rollcall demo`.
#[derive(Debug, Args)]
struct DemoArgs {
    /// Data directory (resumed if it holds an earlier demo); default: a new temporary one.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Start clean even if --data-dir holds an earlier demo.
    #[arg(long)]
    fresh: bool,
    /// HTTP API and console address.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    http_listen: SocketAddr,
    /// Embedded MQTT broker address.
    #[arg(long, default_value = "127.0.0.1:1883", value_name = "ADDR")]
    mqtt_listen: SocketAddr,
    /// Members in the simulated fleet.
    #[arg(long, default_value_t = 300)]
    members: usize,
    /// Seed of the simulated fleet.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Days of history generated on first start.
    #[arg(long, default_value_t = 120, value_name = "DAYS")]
    history: u32,
    /// Simulated seconds per real second once live.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Fleet description (default: the built-in copy of config/fleet.toml).
    #[arg(long, value_name = "FILE")]
    fleet: Option<PathBuf>,
}

async fn demo(a: DemoArgs) -> anyhow::Result<()> {
    let fleet = match &a.fleet {
        Some(p) => FleetConfig::load(p)?,
        None => FleetConfig::builtin(),
    };
    let progress = std::io::stderr().is_terminal();
    let opts = rollcall::demo::DemoOptions {
        data_dir: a.data_dir,
        fresh: a.fresh,
        http_listen: a.http_listen,
        mqtt_listen: a.mqtt_listen,
        members: a.members,
        seed: a.seed,
        history_days: a.history,
        speed: a.speed,
        fleet,
        progress,
    };
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let summary = rollcall::demo::run(opts, shutdown, |ready| {
        println!("{}", serde_json::to_string(ready).expect("ready line serialises"));
        if progress {
            eprintln!(
                "\nRollcall demo is running with {} members.\n  console: {}\n  API:     {}  (Authorization: Bearer {})\n  data:    {}\nCtrl-C stops it; run again with --data-dir {} to resume.",
                ready.members,
                ready.console_url,
                ready.api_url,
                ready.token,
                ready.data_dir.display(),
                ready.data_dir.display()
            );
        }
    })
    .await?;
    eprintln!(
        "Stopped: {} events recorded, {} acknowledged, {} waiting in offline devices.",
        summary.events_recorded, summary.events_acked, summary.events_pending
    );
    Ok(())
}

/// `rollcall eval`.
#[derive(Debug, Args)]
struct EvalArgs {
    /// The cloud's data directory the simulation reported to.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Ground-truth file (default: DATA_DIR/truth.json).
    #[arg(long, value_name = "FILE")]
    truth: Option<PathBuf>,
    /// Cloud config whose `[scoring]` section to replay (default: the built-in defaults).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Days at the start of the window not evaluated (the model needs history first).
    #[arg(long, default_value_t = 28, value_name = "DAYS")]
    warmup: u32,
    /// Also sweep each predictor's flag threshold and show what an earlier flag costs in
    /// false alarms (replays the scoring once per model threshold).
    #[arg(long)]
    tradeoff: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let truth_path = a.truth.unwrap_or_else(|| a.data_dir.join("truth.json"));
    let truth = rollcall::sim::Truth::read(&truth_path)?;
    let scoring = match &a.config {
        Some(p) => rollcall_cloud::config::CloudConfig::load(Some(p))?.scoring,
        None => Default::default(),
    };
    let opts = rollcall::eval::EvalOptions {
        warmup_days: a.warmup,
        scoring,
        tradeoff: a.tradeoff,
    };
    let e = rollcall::eval::evaluate(&a.data_dir, &truth, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string(&e)?);
    } else {
        print!("{}", rollcall::eval::table(&e));
    }
    Ok(())
}

/// Cancels the token on Ctrl-C or SIGTERM.
fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        token.cancel();
    });
}

async fn simulate(a: SimulateArgs) -> anyhow::Result<()> {
    if a.start.is_some_and(|d| d > chrono::Utc::now().date_naive()) {
        anyhow::bail!("--start must not be in the future");
    }
    if a.history == 0 && a.days.is_none() && a.start.is_none() {
        anyhow::bail!("give --history DAYS, --days DAYS, or both (see `rollcall simulate --help`)");
    }
    let fleet = match &a.fleet {
        Some(p) => FleetConfig::load(p)?,
        None => FleetConfig::builtin(),
    };
    let size = match (a.members, a.devices) {
        (_, Some(0)) | (Some(0), _) => anyhow::bail!("--members and --devices must be at least 1"),
        (_, Some(d)) => FleetSize::Devices(d),
        (Some(m), None) => FleetSize::Members(m),
        (None, None) => FleetSize::Members(300),
    };
    let data_dir = match a.data_dir {
        Some(d) => d,
        None => tempfile::Builder::new()
            .prefix("rollcall-sim-")
            .tempdir()
            .context("Failed to create a temporary data directory")?
            .keep(),
    };
    let cloud = match a.mqtt_url {
        Some(mqtt_url) => CloudTarget::External { mqtt_url },
        None => CloudTarget::InProcess {
            mqtt_listen: a.mqtt_listen,
            http_listen: a.http_listen,
        },
    };
    let truth_path = a.truth.unwrap_or_else(|| data_dir.join("truth.json"));
    let opts = SimOptions {
        fleet,
        seed: a.seed,
        size,
        history_days: a.history,
        live_days: a.days,
        speed: a.speed,
        data_dir,
        cloud,
        truth_path,
        progress: std::io::stderr().is_terminal(),
        window: a.start.map(|d| {
            let past = (chrono::Utc::now().date_naive() - d).num_days();
            (d, past + i64::from(a.days.unwrap_or(30)) + 1)
        }),
        cloud_config: None,
        consumables: false,
    };
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let mut sim = Simulation::start(opts).await?;
    sim.run_history(&shutdown).await?;
    sim.run_live(&shutdown).await?;
    let summary = sim.finish().await?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROLLCALL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rumqttd=off")),
        )
        .init();
    match Cli::parse().command {
        Command::Demo(a) => demo(a).await?,
        Command::Simulate(a) => simulate(a).await?,
        Command::Eval(a) => tokio::task::spawn_blocking(move || eval(a)).await??,
        Command::Bench(BenchCmd::Scoring {
            fit_members,
            score_members,
        }) => {
            let cpu = CpuTimes::now();
            let f = tokio::task::spawn_blocking(move || {
                rollcall_cloud::scoring::bench::run(fit_members.max(1), score_members.max(1))
            })
            .await??;
            print_with_steal(&f, cpu)?;
        }
        Command::Bench(BenchCmd::Outreach { deliveries }) => {
            let cpu = CpuTimes::now();
            let r = rollcall_cloud::delivery::bench::run_async(deliveries.max(1)).await?;
            print_with_steal(&r, cpu)?;
        }
        Command::Bench(BenchCmd::Ledger {
            transactions,
            devices,
            verify_entries,
            threads,
        }) => {
            let opts = rollcall_cloud::ledger::bench::BenchOptions {
                transactions: transactions.max(1),
                devices: devices.max(1),
                verify_entries,
                threads: threads.clamp(1, 64),
                ..Default::default()
            };
            let cpu = CpuTimes::now();
            let r = tokio::task::spawn_blocking(move || {
                let dir = tempfile::tempdir()?;
                rollcall_cloud::ledger::bench::run(dir.path(), &opts).map_err(anyhow::Error::from)
            })
            .await??;
            print_with_steal(&r, cpu)?;
        }
        Command::Bench(BenchCmd::Agent { seconds, burst }) => {
            let cpu = CpuTimes::now();
            let f = rollcall::bench::agent(seconds.max(1), burst.max(1)).await?;
            print_with_steal(&f, cpu)?;
        }
        Command::Bench(BenchCmd::Ingest {
            mqtt_url,
            devices,
            reports,
            events,
            clients,
            no_agent,
            json,
        }) => {
            let b = rollcall::bench::IngestBench {
                devices,
                reports,
                events,
                clients,
                mqtt_url,
                agent: !no_agent,
            };
            let f = rollcall::bench::ingest(&b).await?;
            if json {
                println!("{}", serde_json::to_string(&f)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&f)?);
            }
        }
        Command::Bench(BenchCmd::Lookup {
            members,
            events,
            connections,
            seconds,
            rate,
            data_dir,
            keep,
            audit_sync,
        }) => {
            let b = rollcall::bench_lookup::LookupBench {
                members,
                events,
                connections,
                seconds,
                rate,
                data_dir,
                keep,
                audit_sync,
            };
            let f = rollcall::bench_lookup::run(&b).await?;
            println!("{}", serde_json::to_string(&f)?);
        }
    }
    Ok(())
}

/// Prints a benchmark's figures as one JSON line, with `host_steal_pct`: the share of the
/// machine's CPU time the hypervisor gave to other guests since `before` (null where unknown).
fn print_with_steal(
    figures: &impl serde::Serialize,
    before: Option<CpuTimes>,
) -> anyhow::Result<()> {
    let steal = rollcall::hostcpu::steal_pct_until_now(before);
    let mut v = serde_json::to_value(figures)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("host_steal_pct".into(), serde_json::json!(steal));
    }
    println!("{v}");
    Ok(())
}

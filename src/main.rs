//! `rollcall`: benchmarks (and, as they land, the demo, simulator and evaluation).

use clap::{Parser, Subcommand};

/// Rollcall one-box tools.
#[derive(Debug, Parser)]
#[command(name = "rollcall", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(BenchCmd),
}

#[derive(Debug, Subcommand)]
enum BenchCmd {
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROLLCALL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match Cli::parse().command {
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
    }
    Ok(())
}

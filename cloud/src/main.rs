//! `rollcall-cloud`: parses the command line, sets up logging, runs the command.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = rollcall_cloud::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROLLCALL_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,rumqttd=warn,rumqttc=warn")
            }),
        )
        .init();
    match rollcall_cloud::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

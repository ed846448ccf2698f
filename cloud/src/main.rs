//! `rollcall-cloud`: parses the command line, sets up logging, runs the command.

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// mimalloc: faster than glibc malloc for the server's many small, short-lived
/// allocations across threads (measured in `rollcall bench lookup`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The log filter unless `ROLLCALL_LOG` sets one (the embedded broker's disconnects,
/// which it logs as errors, are dropped by [`rollcall_cloud::logging`]).
const DEFAULT_LOG: &str = "info,rumqttd=warn,rumqttc=warn";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = rollcall_cloud::cli::Cli::parse();
    if !matches!(cli.command, rollcall_cloud::cli::Command::Serve { .. }) {
        // A one-shot command whose output is piped into `head` should end quietly when
        // the reader goes away, like other Unix tools; `serve` keeps Rust's default.
        // SAFETY: signal(2) only changes the process-wide SIGPIPE disposition; nothing in a
        // one-shot command relies on SIGPIPE being ignored.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROLLCALL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .finish()
        .with(rollcall_cloud::logging::QuietBrokerLifecycle)
        .init();
    match rollcall_cloud::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if let Some(usage) = e.downcast_ref::<rollcall_cloud::cli::UsageError>() {
                usage.exit();
            }
            eprintln!("error: {}", rollcall_shared::report::error_line(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

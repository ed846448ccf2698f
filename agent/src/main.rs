//! `rollcall-agent`: parses arguments, sets up logging (stderr) and signal handling, and
//! hands over to the library.

use anyhow::Context;
use clap::Parser;
use rollcall_agent::cli::{self, Cli, Command};
use rollcall_shared::SystemClock;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_daemon = matches!(cli.command, Command::Run);
    if !is_daemon {
        // One-shot commands piped into `head` end quietly when the reader goes away.
        // SAFETY: signal(2) only changes the process-wide SIGPIPE disposition; nothing in a
        // one-shot command relies on SIGPIPE being ignored.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let default_level = if is_daemon { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(log_filter(default_level))
        .init();

    match run(cli, is_daemon) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(cli::CliError::Usage(usage)) = err.downcast_ref::<cli::CliError>() {
                usage.exit();
            }
            let code = err
                .downcast_ref::<cli::CliError>()
                .map(cli::CliError::exit_code)
                .unwrap_or(1);
            eprintln!(
                "error: {}",
                rollcall_shared::report::error_line(err.as_ref())
            );
            ExitCode::from(code)
        }
    }
}

/// The log filter: `ROLLCALL_LOG`, else `RUST_LOG`, else `default_level`.
fn log_filter(default_level: &str) -> EnvFilter {
    EnvFilter::try_from_env("ROLLCALL_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_level))
}

fn run(cli: Cli, is_daemon: bool) -> anyhow::Result<()> {
    let runtime = if is_daemon {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .context("Failed to start the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        if is_daemon {
            tokio::spawn(stop_on_signal(shutdown.clone()));
        }
        let mut stdout = std::io::stdout().lock();
        cli::execute(cli, Arc::new(SystemClock), shutdown, &mut stdout).await?;
        Ok(())
    })
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("Cannot listen for signals; stop the agent with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}

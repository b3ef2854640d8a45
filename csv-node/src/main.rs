//! `csv-node`: the csv node agent. `run` is the cluster daemon (metadata store, admin
//! socket; `daemon/`, with the cluster state machine in `state/`); `export` serves image
//! files over NBD until stopped.

mod export;
mod image;
use csv_node::data::vhd_device;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "csv-node", version, about = "csv node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Export raw or VHD image files over NBD until stopped (SIGINT/SIGTERM).
    Export(export::ExportArgs),
    /// Run the cluster daemon (metadata store, admin socket) until SIGTERM/SIGINT.
    Run(csv_node::node::RunArgs),
    /// Check a node configuration as `run` would: print `ok`, or what is wrong (the
    /// field and why) and exit 1. The unit runs it as ExecStartPre=.
    CheckConfig(csv_node::node::CheckArgs),
    /// The lease watchdog `run` starts when `[lease] watchdog = true` (not run by hand).
    #[command(hide = true)]
    Watchdog(csv_node::lease::watchdog::WatchdogArgs),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let points = volume::failpoint::init_from_env().map_err(anyhow::Error::msg)?;
    if points > 0 {
        tracing::warn!(points, "fail points configured (FAILPOINTS): test use only");
    }
    match cli.command {
        Command::Export(args) => export::run(args),
        Command::Run(args) => csv_node::node::run(args),
        Command::CheckConfig(args) => {
            // One line naming the file, the field and the reason; exit 1 when invalid.
            if let Err(e) = csv_node::node::check_config(args) {
                eprintln!("csv-node check-config: {e}");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Watchdog(args) => csv_node::lease::watchdog::run(args),
    }
}

//! `csvadm`: the csv administration tool. `csvadm image ...` works offline on local VHD
//! files (as `qemu-img` works); `csvadm cluster ...` and `csvadm node ...` talk to a node's
//! daemon over its admin socket (`cluster.rs`, which documents the exit codes).

mod cluster;
mod image;
mod owner;
mod progress;
mod remote_progress;
mod size;
mod vhd;
mod volume;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "csvadm",
    version,
    about = "Cluster Shared Volumes administration"
)]
struct Cli {
    /// Admin socket of the node to talk to (default: $CSV_ADMIN, else the admin_socket of
    /// the node config at $CSV_CONFIG or /etc/csv/csv-node.toml).
    #[arg(long, global = true, env = "CSV_ADMIN", value_name = "SOCKET")]
    admin: Option<std::path::PathBuf>,
    /// Print JSON (cluster and node commands).
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Work on local VHD image files (offline, like qemu-img).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Create a cluster, show its status, move the coordinator role.
    Cluster(cluster::ClusterArgs),
    /// Add, promote and remove nodes; node liveness.
    Node(cluster::NodeArgs),
    /// VHD ownership: list, show, move, acquire, release.
    Owner(owner::OwnerArgs),
    /// Format the cluster volume on the shared LUN; its status.
    Volume(volume::VolumeArgs),
    /// VHDs on the cluster volume: create, attach as NBD exports, import, export.
    Vhd(vhd::VhdArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Image(cmd) => image::run(cmd),
        Command::Cluster(args) => {
            cluster_command(cli.admin, |s| cluster::run_cluster(s, args, cli.json))
        }
        Command::Node(args) => cluster_command(cli.admin, |s| cluster::run_node(s, args, cli.json)),
        Command::Owner(args) => cluster_command(cli.admin, |s| owner::run_owner(s, args, cli.json)),
        Command::Volume(args) => cluster_command(cli.admin, |s| volume::run(s, args, cli.json)),
        Command::Vhd(args) => cluster_command(cli.admin, |s| vhd::run(s, args, cli.json)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("csvadm: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs a command against the admin socket, mapping its failure to an exit code.
fn cluster_command(
    admin: Option<std::path::PathBuf>,
    f: impl FnOnce(&std::path::Path) -> Result<(), cluster::Failure>,
) -> anyhow::Result<u8> {
    let socket = cluster::admin_socket(admin)?;
    match f(&socket) {
        Ok(()) => Ok(0),
        Err(e) => {
            eprintln!("csvadm: error: {}", e.message);
            Ok(e.code)
        }
    }
}

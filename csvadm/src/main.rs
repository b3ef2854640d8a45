//! `csvadm`: the csv administration tool. `csvadm image ...` works offline on local VHD
//! files (as `qemu-img` works); the other commands talk to a node's daemon over its admin
//! socket (`client.rs`, which documents the exit codes).
//!
//! One module per noun of the command line; each builds views of its results that
//! `output.rs` prints as text or JSON. Views shared by two nouns have their own modules
//! (`attachment.rs`, `fence.rs`).

mod attachment;
mod certs;
mod chaos;
mod client;
mod cluster;
mod drain;
mod fence;
mod image;
mod metrics;
mod node;
mod output;
mod owner;
mod path;
mod progress;
mod remote_progress;
mod size;
mod vhd;
mod vm;
mod volume;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "csvadm",
    version,
    about = "Cluster Shared Volumes administration"
)]
struct Cli {
    /// Admin socket of the node to talk to (default: $CSV_ADMIN, else the admin_socket of
    /// the node config at $CSV_CONFIG or /etc/csv/node.toml).
    #[arg(long, global = true, env = "CSV_ADMIN", value_name = "SOCKET")]
    admin: Option<PathBuf>,
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
    /// Create a cluster, show its status, move the coordinator role; its CA.
    Cluster(cluster::ClusterArgs),
    /// Add, promote and remove nodes; node liveness.
    Node(node::NodeArgs),
    /// VHD ownership: list, show, move, acquire, release.
    Owner(owner::OwnerArgs),
    /// Format the cluster volume on the shared LUN; its status.
    Volume(volume::VolumeArgs),
    /// VHDs on the cluster volume: create, attach as NBD exports, import, export.
    Vhd(vhd::VhdArgs),
    /// Cluster VMs on QEMU: create, start, stop, list, show.
    Vm(vm::VmArgs),
    /// Chaos runs on a local cluster, and the checker of their histories.
    #[command(subcommand)]
    Chaos(chaos::ChaosCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let result = match cli.command {
        Command::Image(cmd) => image::run(cmd),
        Command::Cluster(args) => match args.offline() {
            Ok((certs, j)) => certs::run(certs, json || j),
            Err(args) => client::run(cli.admin, |s| cluster::run(s, args, json)),
        },
        Command::Node(args) => client::run(cli.admin, |s| node::run(s, args, json)),
        Command::Owner(args) => client::run(cli.admin, |s| owner::run(s, args, json)),
        Command::Volume(args) => client::run(cli.admin, |s| volume::run(s, args, json)),
        Command::Vhd(args) => client::run(cli.admin, |s| vhd::run(s, args, json)),
        Command::Vm(args) => client::run(cli.admin, |s| vm::run(s, args, json)),
        Command::Chaos(cmd) => chaos::run(cmd, json),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("csvadm: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

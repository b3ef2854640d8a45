//! `csvadm`: the csv administration tool. Today: `csvadm image ...`, offline commands on
//! local VHD files (as `qemu-img` works). Cluster commands (`csvadm vhd ...`, nodes,
//! volumes) will talk to the node's admin socket from their own modules.

mod image;
mod progress;
mod size;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "csvadm",
    version,
    about = "Cluster Shared Volumes administration"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Work on local VHD image files (offline, like qemu-img).
    #[command(subcommand)]
    Image(image::ImageCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Image(cmd) => image::run(cmd),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("csvadm: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

//! `csvadm chaos`: chaos runs (issue 15). `run` starts the chaos runner `csv-chaos`
//! (installed beside csvadm, or in `$CSV_BIN_DIR`): a 3-node local cluster of csv-node
//! processes on a file LUN behind one nbdkit per node, a workload of stamped blocks and a
//! seeded schedule of faults; it prints the summary and exits 0 only when no rule broke.
//! `check` judges a recorded history here, with no cluster (a failing run's history kept
//! and checked again).

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use chaos::check::check;
use chaos::history::History;
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum ChaosCommand {
    /// Drive a 3-node local cluster under seeded faults (kill -9, SIGSTOP, partitions,
    /// path cuts, late writes, slow fsync, moves) and judge the workload's history.
    /// Options: --seed S, --minutes M, --json, --history FILE, --classes a,b,...,
    /// --node-env KEY=VALUE, --blocks N (see `csv-chaos run --help`).
    Run {
        /// Options passed to `csv-chaos run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Judge a recorded history (JSON lines): exit 1 when a rule broke.
    Check {
        /// The history.
        file: PathBuf,
    },
}

fn runner() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CSV_BIN_DIR") {
        return Ok(PathBuf::from(dir).join("csv-chaos"));
    }
    let exe = std::env::current_exe().context("where csvadm is")?;
    let beside = exe.with_file_name("csv-chaos");
    if beside.exists() {
        return Ok(beside);
    }
    Ok(PathBuf::from("csv-chaos"))
}

/// Runs a chaos command; its exit code.
pub fn run(cmd: ChaosCommand, json: bool) -> Result<u8> {
    match cmd {
        ChaosCommand::Run { mut args } => {
            if json && !args.iter().any(|a| a == "--json") {
                args.push("--json".into());
            }
            let bin = runner()?;
            let err = std::process::Command::new(&bin)
                .arg("run")
                .args(&args)
                .exec();
            Err(err).with_context(|| format!("start the chaos runner {}", bin.display()))
        }
        ChaosCommand::Check { file } => {
            let f =
                std::fs::File::open(&file).with_context(|| format!("open {}", file.display()))?;
            let h = History::read(std::io::BufReader::new(f))
                .with_context(|| format!("{}", file.display()))?;
            let r = check(&h);
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{r}");
            }
            Ok(if r.ok() { 0 } else { 1 })
        }
    }
}

//! `csv-chaos`: the chaos runner behind `csvadm chaos` (issue 15).
//!
//! ```text
//! csv-chaos run [--seed S] [--minutes M] [--json] [--history FILE] [--classes a,b,...]
//!               [--node-env KEY=VALUE]...
//! csv-chaos check FILE [--json]
//! ```
//!
//! `run` starts a 3-node cluster (binaries from `CSV_BIN_DIR`, else beside this one),
//! runs the workload under a seeded schedule of faults, reads every block back, judges
//! the history and prints a summary. Exit status: 0 when no rule broke, every fault class
//! ran and every block was read back; 1 otherwise; 2 for bad arguments.
//! `check` judges a recorded history (exit 1 on a violation).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chaos::check::check;
use chaos::history::{FaultClass, History};
use clap::{Parser, Subcommand};
use csv_tests::chaos::{Config, Summary, run};

#[derive(Parser, Debug)]
#[command(name = "csv-chaos", about = "Chaos runs of csv and their checker")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Drive a 3-node cluster under seeded faults and judge what the workload saw.
    Run {
        /// Seed of the fault schedule and the workload (a run replays with its seed and
        /// commit).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Minutes of faults (at least one fault of every class runs, however long that
        /// takes).
        #[arg(long, default_value_t = 2.0)]
        minutes: f64,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Where the history goes (default: chaos-<seed>.jsonl in the current directory).
        #[arg(long)]
        history: Option<PathBuf>,
        /// Fault classes (default: all): kill, stop, partition, path, late, slow_fsync,
        /// move, migrate (a VM on the first VHD, live-migrated; needs the guest of
        /// scripts/guest-image, `$CSV_GUEST_DIR` or target/guest).
        #[arg(long, value_delimiter = ',')]
        classes: Vec<String>,
        /// Environment of every node (KEY=VALUE), e.g. a test build's FAILPOINTS.
        #[arg(long = "node-env")]
        node_env: Vec<String>,
        /// Blocks per VHD.
        #[arg(long, default_value_t = 64)]
        blocks: u64,
        /// Run the nodes without their lease watchdog (a paused owner's last write can
        /// then land after the takeover).
        #[arg(long)]
        no_watchdog: bool,
    },
    /// Judge a recorded history.
    Check {
        /// The history (JSON lines).
        file: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn print_summary(s: &Summary, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
        return;
    }
    println!(
        "seed {} for {:.0} s; history {}",
        s.seed, s.seconds, s.history
    );
    println!("{}", s.report);
    println!(
        "every block read back: {}; longest outage {} ms; nodes restarted after their watchdog: {}; classes not injected: {:?}",
        s.verified, s.longest_outage_ms, s.watchdog_restarts, s.missing_classes
    );
    if let Some(p) = &s.vm_problem {
        println!("VM: {p}");
    }
    println!("{}", if s.ok() { "PASS" } else { "FAIL" });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Check { file, json } => {
            let h = match std::fs::File::open(&file)
                .map_err(chaos::history::HistoryError::from)
                .and_then(|f| History::read(std::io::BufReader::new(f)))
            {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("csv-chaos: {}: {e}", file.display());
                    return ExitCode::from(2);
                }
            };
            let r = check(&h);
            if json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                println!("{r}");
            }
            if r.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Run {
            seed,
            minutes,
            json,
            history,
            classes,
            node_env,
            blocks,
            no_watchdog,
        } => {
            let classes: Result<Vec<FaultClass>, String> = if classes.is_empty() {
                Ok(FaultClass::ALL.to_vec())
            } else {
                classes
                    .iter()
                    .map(|c| {
                        FaultClass::parse(c).ok_or_else(|| format!("unknown fault class {c:?}"))
                    })
                    .collect()
            };
            let node_env: Result<Vec<(String, String)>, String> = node_env
                .iter()
                .map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| format!("--node-env {kv:?}: expected KEY=VALUE"))
                })
                .collect();
            let (classes, node_env) = match (classes, node_env) {
                (Ok(c), Ok(e)) => (c, e),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("csv-chaos: {e}");
                    return ExitCode::from(2);
                }
            };
            if !(minutes.is_finite() && minutes > 0.0 && minutes <= 7.0 * 24.0 * 60.0) {
                eprintln!("csv-chaos: --minutes must be in (0, 10080]");
                return ExitCode::from(2);
            }
            if blocks == 0 || blocks > 4096 {
                eprintln!("csv-chaos: --blocks must be in 1..=4096 (16 MiB VHDs)");
                return ExitCode::from(2);
            }
            let cfg = Config {
                seed,
                duration: Duration::from_secs_f64(minutes * 60.0),
                classes,
                history: history.unwrap_or_else(|| PathBuf::from(format!("chaos-{seed}.jsonl"))),
                node_env,
                blocks,
                depth: 4,
                write_percent: 55,
                watchdog: !no_watchdog,
            };
            let s = run(&cfg);
            print_summary(&s, json);
            if s.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

//! The lease watchdog (design note 030 §9, mitigation 2; `[lease] watchdog = true`).
//!
//! The fence is a check, the write a later syscall: a process paused between the two
//! (SIGSTOP, a stuck thread, a swap storm) could submit a write after its lease ended.
//! The watchdog is a separate process (`csv-node watchdog`, spawned by `csv-node run`
//! with a pipe on its stdin), so it keeps running while the node is paused. While the
//! node holds a write hold, the node arms it with a kill time on `CLOCK_BOOTTIME`: the
//! local lease deadline plus half of `io_timeout`, re-armed at every confirmed renewal.
//! If the kill time passes without a re-arm, the watchdog SIGKILLs the node: a paused
//! process is gone before any other node may take its VHDs over (the coordinator waits
//! the whole lease plus drift after the last renewal it saw, §8). With no write hold the
//! node disarms it (a paused idle node harms nobody). When the node exits, the pipe
//! closes and the watchdog exits too.
//!
//! Protocol on the pipe, one line each: `arm <boottime ns>` or `disarm`.

use std::io::{BufRead as _, Read as _, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use lock_manager::Time;

use super::clock::boottime;

/// Longest line the watchdog accepts (a longer one is a protocol error: it exits).
const MAX_LINE: usize = 64;
/// How long the watchdog sleeps at most between clock readings while disarmed.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// `csv-node watchdog` arguments (started by `csv-node run`, not by hand).
#[derive(Debug, Args)]
pub struct WatchdogArgs {
    /// The process to kill when the kill time passes (the node).
    #[arg(long)]
    pub pid: u32,
}

/// One message from the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// Kill the node when `CLOCK_BOOTTIME` reaches this time.
    At(Time),
    /// Kill nobody.
    Off,
}

impl Arm {
    fn line(self) -> String {
        match self {
            Arm::At(t) => format!("arm {}\n", t.as_nanos()),
            Arm::Off => "disarm\n".to_string(),
        }
    }

    /// Parses one protocol line.
    pub fn parse(line: &str) -> Result<Arm, String> {
        let line = line.trim_end();
        if line == "disarm" {
            return Ok(Arm::Off);
        }
        let ns = line
            .strip_prefix("arm ")
            .ok_or_else(|| format!("unknown watchdog message {line:?}"))?;
        let ns: u64 = ns
            .parse()
            .map_err(|e| format!("bad kill time {ns:?}: {e}"))?;
        Ok(Arm::At(Time::from_nanos(ns)))
    }
}

/// The node's side: the child process and its pipe.
#[derive(Debug)]
pub struct Watchdog {
    child: Child,
    stdin: ChildStdin,
    last: Option<Arm>,
}

impl Watchdog {
    /// Starts `csv-node watchdog --pid <this process>` from this executable.
    pub fn spawn() -> anyhow::Result<Watchdog> {
        let exe = std::env::current_exe().context("locate the csv-node executable")?;
        let mut child = Command::new(exe)
            .args(["watchdog", "--pid", &std::process::id().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("start the lease watchdog")?;
        let stdin = child.stdin.take().context("watchdog stdin")?;
        // The lease driver writes from a runtime worker: a watchdog that stops reading
        // must not block it (a full pipe is retried at the next update instead).
        rustix::fs::fcntl_setfl(&stdin, rustix::fs::OFlags::NONBLOCK)
            .context("make the watchdog pipe non-blocking")?;
        Ok(Watchdog {
            child,
            stdin,
            last: None,
        })
    }

    /// Sends `arm` unless it is what the watchdog has already. A failed write means the
    /// watchdog is gone: reported, so the node can say it runs unguarded.
    pub fn set(&mut self, arm: Arm) -> std::io::Result<()> {
        if self.last == Some(arm) {
            return Ok(());
        }
        // One line is shorter than PIPE_BUF: written whole or not at all.
        match self.stdin.write(arm.line().as_bytes()) {
            Ok(_) => {
                self.last = Some(arm);
                Ok(())
            }
            // The pipe is full: the newest arm goes at the next update.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The watchdog's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Disarm first: the pipe closing makes it exit, but not before a kill time that
        // passes meanwhile.
        let _ = self.set(Arm::Off);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `csv-node watchdog`: runs until its stdin closes, killing `--pid` if a kill time
/// passes without a re-arm.
pub fn run(args: WatchdogArgs) -> anyhow::Result<()> {
    let Some(pid) = i32::try_from(args.pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        bail!("bad pid {}", args.pid);
    };
    let (tx, rx) = channel::<Result<Arm, String>>();
    std::thread::Builder::new()
        .name("watchdog-reader".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            let mut line = String::new();
            loop {
                line.clear();
                match (&mut lock).take(MAX_LINE as u64).read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if !line.ends_with('\n') => {
                        let _ = tx.send(Err("message too long or cut".into()));
                        return;
                    }
                    Ok(_) => {
                        if tx.send(Arm::parse(&line)).is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .context("start the reader thread")?;
    let mut armed: Option<Time> = None;
    loop {
        let wait = match armed {
            Some(at) => at.saturating_since(boottime()).min(IDLE_POLL),
            None => IDLE_POLL,
        };
        match rx.recv_timeout(wait) {
            Ok(Ok(Arm::At(t))) => armed = Some(t),
            Ok(Ok(Arm::Off)) => armed = None,
            Ok(Err(e)) => bail!("watchdog: {e}"),
            // The node closed the pipe: it exited, or is stopping on purpose.
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Some(at) = armed
            && boottime() >= at
        {
            tracing::error!(
                pid = args.pid,
                "lease watchdog: the node was not re-armed before its lease ended; killing it"
            );
            rustix::process::kill_process(pid, rustix::process::Signal::KILL)
                .context("kill the node")?;
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_ones_are_refused() {
        for a in [Arm::Off, Arm::At(Time::from_nanos(123_456_789_000))] {
            assert_eq!(Arm::parse(&a.line()), Ok(a));
        }
        for bad in ["", "arm", "arm x", "arm -1", "fire 12", "arm 1 2"] {
            assert!(Arm::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest::proptest! {
        /// Any line is answered (a message or an error), never a panic; every kill time
        /// round-trips.
        #[test]
        fn any_line_parses_or_is_refused(line in ".{0,80}", ns in proptest::num::u64::ANY) {
            let _ = Arm::parse(&line);
            let a = Arm::At(Time::from_nanos(ns));
            proptest::prop_assert_eq!(Arm::parse(&a.line()), Ok(a));
        }
    }
}

//! The history of a run: one JSON object per line. The first line is the [`Header`];
//! every other line an [`Event`]. Times are microseconds since the run started, on the
//! runner's monotonic clock.
//!
//! ```text
//! {"event":"header","seed":7,"in_doubt_us":1400000,"block":4096,...}
//! {"event":"write","client":1,"vhd":3,"block":9,"id":41,"generation":12,"node":2,"invoke":1000,"complete":1900,"outcome":"ok"}
//! {"event":"read","client":1,"vhd":3,"block":9,"node":2,"invoke":2000,"complete":2300,"outcome":"ok","seen":{"kind":"stamp",...}}
//! {"event":"flush","client":1,"vhd":3,"node":2,"invoke":2400,"complete":2600,"outcome":"ok"}
//! {"event":"fault","class":"kill","node":2,"start":3000,"end":9000,"detail":"kill -9, restarted"}
//! ```

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::stamp::Seen;

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged.
    Ok,
    /// The server answered an error (a write may still have landed, in part).
    Error,
    /// No answer (timeout, connection lost): it may have happened or may still happen.
    Unknown,
}

/// Classes of faults the runner injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultClass {
    /// kill -9 of a node, then a restart: its memory is lost (a crash).
    Kill,
    /// SIGSTOP past the node's lease, then SIGCONT.
    Stop,
    /// The node cut off from its peers (network namespaces).
    Partition,
    /// The node's storage path cut (its SAN port killed), then restored.
    Path,
    /// The node's SAN port replaced by one that lands each write late, then restored.
    Late,
    /// Slow fsync of the node's metadata store.
    SlowFsync,
    /// A VHD's attachment moved to another node cooperatively.
    Move,
    /// The VM whose disk is one of the workload's VHDs migrated live to another node.
    Migrate,
}

impl FaultClass {
    /// Every class.
    pub const ALL: [FaultClass; 8] = [
        FaultClass::Kill,
        FaultClass::Stop,
        FaultClass::Partition,
        FaultClass::Path,
        FaultClass::Late,
        FaultClass::SlowFsync,
        FaultClass::Move,
        FaultClass::Migrate,
    ];

    /// The class's name in histories and summaries.
    pub fn name(self) -> &'static str {
        match self {
            FaultClass::Kill => "kill",
            FaultClass::Stop => "stop",
            FaultClass::Partition => "partition",
            FaultClass::Path => "path",
            FaultClass::Late => "late",
            FaultClass::SlowFsync => "slow_fsync",
            FaultClass::Move => "move",
            FaultClass::Migrate => "migrate",
        }
    }

    /// Parses [`Self::name`].
    pub fn parse(s: &str) -> Option<FaultClass> {
        FaultClass::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Whether the fault may lose a node's memory (unflushed writes may be lost): a kill,
    /// and a stop or a partition of an owner, which its lease watchdog SIGKILLs.
    pub fn crashes(self) -> bool {
        matches!(
            self,
            FaultClass::Kill | FaultClass::Stop | FaultClass::Partition
        )
    }
}

/// The first line of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The run's seed.
    pub seed: u64,
    /// How long after a write's client gave up the write may still land (the cluster's
    /// in-doubt bound for a request, plus the client's own slack).
    pub in_doubt_us: u64,
    /// Block size.
    pub block: u64,
    /// What ran (commit, settings), free text.
    #[serde(default)]
    pub detail: String,
}

/// One line after the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The header.
    Header(Header),
    /// A whole-block write.
    Write {
        client: u64,
        vhd: u64,
        block: u64,
        id: u64,
        generation: u64,
        node: u64,
        invoke: u64,
        complete: u64,
        outcome: Outcome,
    },
    /// A whole-block read; `seen` is set when it was acknowledged.
    Read {
        client: u64,
        vhd: u64,
        block: u64,
        node: u64,
        invoke: u64,
        complete: u64,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seen: Option<Seen>,
    },
    /// A FLUSH of a VHD's export.
    Flush {
        client: u64,
        vhd: u64,
        node: u64,
        invoke: u64,
        complete: u64,
        outcome: Outcome,
    },
    /// A fault, from its start to its end (healed).
    Fault {
        class: FaultClass,
        node: u64,
        start: u64,
        end: u64,
        #[serde(default)]
        detail: String,
    },
}

/// A history that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// I/O.
    #[error("read history: {0}")]
    Io(#[from] std::io::Error),
    /// A line that is not an event.
    #[error("history line {line}: {detail}")]
    Line {
        /// 1-based.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// No header first.
    #[error("history: the first line must be the header")]
    NoHeader,
}

/// A whole history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// Its header.
    pub header: Header,
    /// Its events, in the order written.
    pub events: Vec<Event>,
}

/// Longest line accepted (a read's torn detail is the longest thing in it).
pub const MAX_LINE: usize = 64 << 10;

impl History {
    /// Reads JSON lines.
    pub fn read(r: impl BufRead) -> Result<History, HistoryError> {
        let mut header = None;
        let mut events = Vec::new();
        for (i, line) in r.lines().enumerate() {
            let line = line?;
            let n = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            if line.len() > MAX_LINE {
                return Err(HistoryError::Line {
                    line: n,
                    detail: format!("{} bytes, at most {MAX_LINE}", line.len()),
                });
            }
            let e: Event = serde_json::from_str(&line).map_err(|e| HistoryError::Line {
                line: n,
                detail: e.to_string(),
            })?;
            match (e, header.is_some()) {
                (Event::Header(h), false) => header = Some(h),
                (Event::Header(_), true) => {
                    return Err(HistoryError::Line {
                        line: n,
                        detail: "a second header".into(),
                    });
                }
                (_, false) => return Err(HistoryError::NoHeader),
                (e, true) => events.push(e),
            }
        }
        Ok(History {
            header: header.ok_or(HistoryError::NoHeader)?,
            events,
        })
    }

    /// Parses a history held in memory.
    pub fn parse(text: &str) -> Result<History, HistoryError> {
        History::read(text.as_bytes())
    }

    /// Writes JSON lines.
    pub fn write(&self, mut w: impl Write) -> std::io::Result<()> {
        write_event(&mut w, &Event::Header(self.header.clone()))?;
        for e in &self.events {
            write_event(&mut w, e)?;
        }
        w.flush()
    }
}

/// Writes one event as a line.
pub fn write_event(mut w: impl Write, e: &Event) -> std::io::Result<()> {
    serde_json::to_writer(&mut w, e)?;
    w.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::Stamp;

    #[test]
    fn a_history_round_trips_and_bad_lines_name_their_number() {
        let h = History {
            header: Header {
                seed: 1,
                in_doubt_us: 5,
                block: 4096,
                detail: "x".into(),
            },
            events: vec![
                Event::Read {
                    client: 1,
                    vhd: 2,
                    block: 3,
                    node: 1,
                    invoke: 4,
                    complete: 5,
                    outcome: Outcome::Ok,
                    seen: Some(Seen::Stamp(Stamp {
                        vhd: 2,
                        block: 3,
                        client: 1,
                        id: 9,
                        generation: 4,
                        node: 1,
                    })),
                },
                Event::Fault {
                    class: FaultClass::Kill,
                    node: 2,
                    start: 1,
                    end: 2,
                    detail: String::new(),
                },
            ],
        };
        let mut out = Vec::new();
        h.write(&mut out).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(History::parse(&text).expect("parse"), h);
        let bad = format!("{text}{{\"event\":\"write\"}}\n");
        match History::parse(&bad) {
            Err(HistoryError::Line { line: 4, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            History::parse(
                "{\"event\":\"flush\",\"client\":1,\"vhd\":1,\"node\":1,\"invoke\":1,\"complete\":2,\"outcome\":\"ok\"}"
            ),
            Err(HistoryError::NoHeader)
        ));
        assert!(matches!(History::parse(""), Err(HistoryError::NoHeader)));
    }
}

//! `csvadm owner ...`: VHD ownership (who writes, generation, readers, the asked node's
//! local fence) through the addressed node's daemon (exit codes in `client.rs`).

use std::fmt;
use std::path::Path;

use clap::{Args, Subcommand};
use csv_api::admin::{HoldInfo, OwnerInfo, vhd_ref};
use serde::Serialize;

use crate::client::{Failure, connect};
use crate::fence::FenceView;
use crate::output::{Output, print};

#[derive(Args, Debug)]
pub struct OwnerArgs {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: OwnerCommand,
}

#[derive(Subcommand, Debug)]
enum OwnerCommand {
    /// Every VHD that has a writer or readers.
    List,
    /// One VHD's owner, generation and readers, and this node's fence for it.
    Show {
        /// VHD name or id.
        vhd: String,
    },
    /// Hand the VHD's write hold to another node (cooperative: the owner flushes,
    /// closes its fence and transfers; milliseconds).
    Move {
        /// VHD name or id.
        vhd: String,
        /// The node that becomes the writer.
        #[arg(long, value_name = "NODE")]
        to: u64,
    },
    /// Take a hold on the addressed node (write: acquire, or take over an expired owner).
    Acquire {
        /// VHD name or id.
        vhd: String,
        /// A read hold that tolerates a writer (migration target pre-open).
        #[arg(long, conflicts_with = "deny_write")]
        read_only: bool,
        /// A read hold that excludes every writer (differencing parent).
        #[arg(long)]
        deny_write: bool,
    },
    /// Drop the addressed node's hold.
    Release {
        /// VHD name or id.
        vhd: String,
    },
}

/// Runs `csvadm owner ...`; `json` is the top-level `--json`.
pub fn run(socket: &Path, args: OwnerArgs, json: bool) -> Result<(), Failure> {
    let out = Output::json_if(args.json || json);
    let mut c = connect(socket)?;
    match args.command {
        OwnerCommand::List => {
            let owners = c.owner_list()?.iter().map(OwnerView::from).collect();
            print(&OwnerListView { owners }, out)?;
        }
        OwnerCommand::Show { vhd } => {
            print(&OwnerView::from(&c.owner_show(vhd_ref(&vhd))?), out)?;
        }
        OwnerCommand::Move { vhd, to } => {
            print(&OwnerView::from(&c.owner_move(vhd_ref(&vhd), to)?), out)?;
        }
        OwnerCommand::Acquire {
            vhd,
            read_only,
            deny_write,
        } => {
            let mode = match (read_only, deny_write) {
                (true, _) => "read",
                (_, true) => "read_deny_write",
                _ => "write",
            };
            let hold = c.owner_acquire(vhd_ref(&vhd), mode)?;
            print(&HoldView::from(&hold), out)?;
        }
        OwnerCommand::Release { vhd } => {
            print(&OwnerView::from(&c.owner_release(vhd_ref(&vhd))?), out)?;
        }
    }
    Ok(())
}

/// One VHD's ownership: `owner show|move|release`, and each entry of `owner list`.
#[derive(Debug, Serialize)]
pub struct OwnerView {
    pub vhd: u64,
    pub name: String,
    /// The writer, `None` when nobody writes.
    pub owner: Option<u64>,
    /// The writer's epoch, `None` when nobody writes.
    pub owner_epoch: Option<u64>,
    /// Whether the writer's epoch is live (an expired owner can be taken over).
    pub owner_valid: bool,
    pub generation: u64,
    pub readers: Vec<ReaderView>,
    /// The asked node's fence, when it reports one (key left out otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_fence: Option<FenceView>,
}

/// A reader in [`OwnerView`].
#[derive(Debug, Serialize)]
pub struct ReaderView {
    pub node: u64,
    pub epoch: u64,
    pub mode: String,
    pub generation: u64,
}

impl From<&OwnerInfo> for OwnerView {
    fn from(o: &OwnerInfo) -> OwnerView {
        let writer = o.owner != 0;
        OwnerView {
            vhd: o.vhd,
            name: o.name.clone(),
            owner: writer.then_some(o.owner),
            owner_epoch: writer.then_some(o.owner_epoch),
            owner_valid: o.owner_valid,
            generation: o.generation,
            readers: o
                .readers
                .iter()
                .map(|r| ReaderView {
                    node: r.node,
                    epoch: r.epoch,
                    mode: r.mode.clone(),
                    generation: r.generation,
                })
                .collect(),
            local_fence: o.local_fence.as_ref().map(FenceView::from),
        }
    }
}

impl fmt::Display for OwnerView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let epoch = self.owner_epoch.unwrap_or_default();
        let who = match (self.owner, self.owner_valid) {
            (None, _) => "none".to_string(),
            (Some(n), true) => format!("node {n} (epoch {epoch})"),
            (Some(n), false) => format!("node {n} EXPIRED (epoch {epoch}): takeover-able"),
        };
        let readers: Vec<String> = self
            .readers
            .iter()
            .map(|r| format!("node {} ({})", r.node, r.mode))
            .collect();
        write!(
            f,
            "vhd {} {:?}: owner {who}, generation {}, readers [{}]",
            self.vhd,
            self.name,
            self.generation,
            readers.join(", ")
        )?;
        if let Some(fence) = &self.local_fence {
            let denied = if fence.denied.is_empty() {
                String::new()
            } else {
                format!(" ({})", fence.denied)
            };
            write!(
                f,
                "\nlocal fence (node {}): write {}{denied}; lease {} ({} ms left); {} holds lost",
                fence.node,
                if fence.write_open { "open" } else { "closed" },
                fence.lease(),
                fence.remaining_ms,
                fence.lost.len()
            )?;
        }
        Ok(())
    }
}

/// `owner list`: every held VHD (a JSON array).
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct OwnerListView {
    pub owners: Vec<OwnerView>,
}

impl fmt::Display for OwnerListView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.owners.is_empty() {
            return f.write_str("no VHD is held");
        }
        for (i, o) in self.owners.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{o}")?;
        }
        Ok(())
    }
}

/// `owner acquire`: the hold taken.
#[derive(Debug, Serialize)]
pub struct HoldView {
    pub vhd: u64,
    pub node: u64,
    /// `write`, `read` or `read_deny_write`.
    pub mode: String,
    pub generation: u64,
    /// Whether the node's fence already lets I/O at this generation through.
    pub fence_open: bool,
}

impl From<&HoldInfo> for HoldView {
    fn from(h: &HoldInfo) -> HoldView {
        HoldView {
            vhd: h.vhd,
            node: h.node,
            mode: h.mode.clone(),
            generation: h.generation,
            fence_open: h.fence_open,
        }
    }
}

impl fmt::Display for HoldView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vhd {} held by node {} ({}) at generation {}; fence {}",
            self.vhd,
            self.node,
            self.mode,
            self.generation,
            if self.fence_open {
                "open"
            } else {
                "not open yet"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::to_json;
    use csv_api::admin::{LocalFence, ReaderInfo};

    fn info(owner: u64, fence: bool) -> OwnerInfo {
        OwnerInfo {
            vhd: 7,
            name: "a".into(),
            owner,
            owner_epoch: 4,
            owner_valid: false,
            generation: 3,
            readers: vec![ReaderInfo {
                node: 2,
                epoch: 5,
                mode: "read".into(),
                generation: 3,
            }],
            local_fence: fence.then(|| LocalFence {
                node: 1,
                remaining_ms: 20,
                denied: "stale".into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn owner_text() {
        assert_eq!(
            OwnerView::from(&info(1, true)).to_string(),
            "vhd 7 \"a\": owner node 1 EXPIRED (epoch 4): takeover-able, generation 3, readers [node 2 (read)]\n\
             local fence (node 1): write closed (stale); lease lapsed (20 ms left); 0 holds lost"
        );
        let none = OwnerListView { owners: vec![] };
        assert_eq!(none.to_string(), "no VHD is held");
        let two = OwnerListView {
            owners: vec![
                OwnerView::from(&info(0, false)),
                OwnerView::from(&info(0, false)),
            ],
        };
        let line = "vhd 7 \"a\": owner none, generation 3, readers [node 2 (read)]";
        assert_eq!(two.to_string(), format!("{line}\n{line}"));
    }

    #[test]
    fn owner_json() {
        assert_eq!(
            to_json(
                &OwnerListView {
                    owners: vec![OwnerView::from(&info(0, false))]
                },
                false
            )
            .expect("json"),
            r#"[{"generation":3,"name":"a","owner":null,"owner_epoch":null,"owner_valid":false,"readers":[{"epoch":5,"generation":3,"mode":"read","node":2}],"vhd":7}]"#
        );
        let v: serde_json::Value =
            serde_json::from_str(&to_json(&OwnerView::from(&info(1, true)), false).expect("json"))
                .expect("parse");
        assert_eq!(v["local_fence"]["denied"], "stale");
        assert_eq!(v["local_fence"]["holds"], serde_json::json!([]));
        assert_eq!(v["owner_epoch"], 4);
    }

    #[test]
    fn hold_text_and_json() {
        let h = HoldView::from(&HoldInfo {
            vhd: 7,
            node: 1,
            mode: "read".into(),
            generation: 4,
            fence_open: false,
        });
        assert_eq!(
            h.to_string(),
            "vhd 7 held by node 1 (read) at generation 4; fence not open yet"
        );
        assert_eq!(
            to_json(&h, false).expect("json"),
            r#"{"fence_open":false,"generation":4,"mode":"read","node":1,"vhd":7}"#
        );
    }
}

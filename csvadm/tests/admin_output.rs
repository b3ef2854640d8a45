//! Output of the admin commands (`cluster`, `node`, `owner`, `volume`, `vhd`), text and
//! `--json`, with exit codes and error messages, pinned against
//! `tests/snapshots/admin_output.txt`. Each case runs the built binary against a fake
//! daemon on a Unix socket that answers every request with canned data (one profile of
//! answers per socket), so no node is needed. `CSVADM_UPDATE_SNAPSHOTS=1` rewrites the
//! snapshot after an intended change of output.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;

use csv_api::ErrorCode;
use csv_api::admin::frame::{read_frame, write_frame};
use csv_api::admin::volume::{Attachment, NodePath, PathEvent, PathEvents, Progress, VolumeStatus};
use csv_api::admin::{
    AdminRequest, AdminResponse, ClusterInitReply, Empty, ErrorReply, ExtentRun, HoldInfo,
    LivenessInfo, LocalFence, LocalHoldInfo, LostHoldInfo, Member, Membership, NodeLiveness,
    OwnerAnswer, OwnerInfo, OwnerList, OwnerOp, OwnerReply, PROTOCOL_VERSION, ReaderInfo, Request,
    Reservation, Response, Space, Status, Vhd, VhdPage, Volume,
};
use prost::Message as _;

/// Which answers a fake daemon gives.
#[derive(Clone, Copy, PartialEq)]
enum Profile {
    /// Rich answers: a leader's status, fences, holds, attachments, two list pages.
    Full,
    /// Sparse answers: a follower without progress, nothing held, empty lists, an
    /// unexpected answer kind for `vhd info`.
    Sparse,
    /// An uninitialized node.
    Uninitialized,
    /// A member that sees no coordinator.
    NoQuorum,
    /// Every request refused with `not_found`.
    Refused,
    /// Every request refused with `busy`.
    Busy,
    /// The connection closes without an answer.
    Closed,
}

fn fence(show: bool) -> LocalFence {
    LocalFence {
        node: 1,
        epoch: 4,
        lease_valid: show,
        remaining_ms: 2500,
        holds: vec![LocalHoldInfo {
            vhd: 7,
            mode: "write".into(),
            generation: 3,
            epoch: 4,
            handing_off: false,
        }],
        lost: vec![LostHoldInfo {
            vhd: 9,
            mode: "read".into(),
            generation: 2,
            old_epoch: 3,
            new_epoch: 4,
            at_unix_ms: 1_700_000_000_000,
        }],
        lapses: 1,
        last_lapse_unix_ms: 1_699_999_999_000,
        last_reopen_unix_ms: 1_700_000_000_500,
        write_open: !show,
        denied: if show {
            "generation 2 is stale".into()
        } else {
            String::new()
        },
    }
}

fn owner(vhd: u64, name: &str, owner: u64, valid: bool, with_fence: bool) -> OwnerInfo {
    OwnerInfo {
        vhd,
        name: name.into(),
        owner,
        owner_epoch: if owner == 0 { 0 } else { 4 },
        owner_valid: valid,
        generation: 3,
        readers: if owner == 0 {
            vec![]
        } else {
            vec![
                ReaderInfo {
                    node: 2,
                    epoch: 5,
                    mode: "read".into(),
                    generation: 3,
                },
                ReaderInfo {
                    node: 3,
                    epoch: 6,
                    mode: "read_deny_write".into(),
                    generation: 3,
                },
            ]
        },
        local_fence: with_fence.then(|| fence(true)),
    }
}

fn vhd(id: u64, name: &str, kind: i32, parent: u64, state: i32) -> Vhd {
    Vhd {
        id,
        name: name.into(),
        kind,
        virtual_size: 1 << 30,
        parent,
        runs: vec![
            ExtentRun { start: 4, count: 2 },
            ExtentRun {
                start: 10,
                count: 3,
            },
        ],
        length: 5 << 26,
        state,
        created_index: 12,
    }
}

fn attachment(name: &str, tcp: &str, error: &str, read_only: bool) -> Attachment {
    Attachment {
        name: name.into(),
        vhd: 7,
        node: 2,
        read_only,
        generation: 3,
        socket: "/run/csv/nbd.sock".into(),
        uri: format!("nbd+unix:///{name}?socket=/run/csv/nbd.sock"),
        tcp: tcp.into(),
        error: error.into(),
        path: if tcp.is_empty() { "" } else { "redirected" }.into(),
    }
}

fn node_path(node: u64, path: &str, reason: &str, peer: u64) -> NodePath {
    NodePath {
        node,
        path: path.into(),
        reason: reason.into(),
        since_unix_ms: 1_796_601_600_123,
        peer,
        user_request: node == 3,
        data_addr: format!("10.0.0.{node}:7400"),
        load: 3 * node,
    }
}

fn status(p: Profile) -> Status {
    let member = |id: u64, role: &str, coordinator: bool| Member {
        id,
        address: format!("10.0.0.{id}:7000"),
        role: role.into(),
        state: "active".into(),
        health: if id == 3 { "down" } else { "up" }.into(),
        match_index: 40 + id,
        lag: 3 - id,
        coordinator,
    };
    let mut s = Status {
        node_id: 1,
        node_state: "member".into(),
        cluster_id: "c0ffee".into(),
        cluster_name: "csv".into(),
        role: "leader".into(),
        coordinator: 1,
        term: 6,
        commit_index: 43,
        applied_index: 42,
        first_index: 1,
        last_index: 43,
        members: vec![
            member(1, "voter", true),
            member(2, "voter", false),
            member(3, "learner", false),
        ],
        progress_known: true,
        state_hash: 0xabc,
        persisted_hash: 0,
        pending_requests: 0,
    };
    match p {
        Profile::Sparse => {
            s.role = "follower".into();
            s.coordinator = 2;
            s.progress_known = false;
            for m in &mut s.members {
                m.coordinator = m.id == 2;
            }
        }
        Profile::NoQuorum => {
            s.role = "candidate".into();
            s.coordinator = 0;
            s.progress_known = false;
            for m in &mut s.members {
                m.coordinator = false;
            }
        }
        Profile::Uninitialized => {
            s = Status {
                node_id: 4,
                node_state: "uninitialized".into(),
                ..Default::default()
            }
        }
        _ => {}
    }
    s
}

fn volume_status(p: Profile) -> VolumeStatus {
    if p == Profile::Sparse {
        return VolumeStatus {
            node_id: 2,
            state: "unformatted".into(),
            ..Default::default()
        };
    }
    VolumeStatus {
        node_id: 1,
        volume: Some(Volume {
            volume_id: "v-1".into(),
            lun: "/dev/sdb".into(),
            description: "lab".into(),
            size: 1 << 40,
            extent_size: 1 << 26,
            extent_count: 16384,
            data_offset: 1 << 26,
        }),
        lun: "/dev/sdb".into(),
        state: "ready".into(),
        message: "superblock matches".into(),
        superblock_uuid: "1234-5678".into(),
        space: Some(Space {
            extent_count: 16384,
            free_extents: 16000,
            free_runs: 2,
            largest_free_run: 15000,
            reservations: vec![Reservation {
                node: 2,
                extents: 8,
                runs: vec![],
            }],
            mapped_extents: 376,
        }),
        attachments: vec![
            attachment("a", "10.0.0.2:10809", "", false),
            attachment("b", "", "export failed: busy", true),
        ],
        checkpoint_sequence: 9,
        checkpoint_index: 40,
        paths: vec![
            node_path(1, "redirected", "io_errors", 2),
            node_path(2, "direct", "healthy", 0),
            node_path(3, "paused", "user_request", 0),
        ],
        redirected_bytes: 1 << 20,
    }
}

fn answer(p: Profile, r: Request) -> Response {
    let vhd_a = || vhd(7, "a", 2, 0, 2);
    match r {
        Request::ClusterInit(_) => Response::ClusterInit(ClusterInitReply {
            cluster_id: "c0ffee".into(),
            node_id: 1,
        }),
        Request::Status(_) => Response::Status(status(p)),
        Request::LeaderTransfer(_) => Response::Done(Empty {}),
        Request::NodeAdd(_) | Request::NodePromote(_) | Request::NodeRemove(_) => {
            Response::Membership(Membership {
                voters: vec![1, 2],
                learners: if p == Profile::Sparse {
                    vec![]
                } else {
                    vec![3]
                },
            })
        }
        Request::Owner(o) => {
            let full = p != Profile::Sparse;
            let a = match o.op {
                Some(OwnerOp::List(_)) if full => OwnerAnswer::Owners(OwnerList {
                    owners: vec![owner(7, "a", 1, true, true), owner(9, "b", 3, false, false)],
                }),
                Some(OwnerOp::List(_)) => OwnerAnswer::Owners(OwnerList { owners: vec![] }),
                Some(OwnerOp::Acquire(a)) => OwnerAnswer::Hold(HoldInfo {
                    vhd: 7,
                    node: 1,
                    mode: a.mode,
                    generation: 4,
                    fence_open: full,
                }),
                Some(OwnerOp::Liveness(_)) => OwnerAnswer::Liveness(LivenessInfo {
                    node_id: 1,
                    coordinator: full,
                    nodes: vec![
                        NodeLiveness {
                            node: 1,
                            epoch: 4,
                            status: "live".into(),
                            renewals: 120,
                            tracked: full,
                            since_renewal_ms: 300,
                            expires_in_ms: 9700,
                        },
                        NodeLiveness {
                            node: 3,
                            epoch: 6,
                            status: "expired".into(),
                            renewals: 7,
                            tracked: false,
                            since_renewal_ms: 0,
                            expires_in_ms: 0,
                        },
                    ],
                    local_fence: full.then(|| fence(false)),
                    timing_ms: if full {
                        vec![10000, 8000, 6000, 12000]
                    } else {
                        vec![10000]
                    },
                }),
                Some(OwnerOp::Release(_)) => OwnerAnswer::Owner(owner(7, "a", 0, false, full)),
                _ => OwnerAnswer::Owner(owner(7, "a", 1, full, full)),
            };
            Response::Owner(OwnerReply { answer: Some(a) })
        }
        Request::VolumeFormat(_)
        | Request::VolumeStatus(_)
        | Request::VolumeRecover(_)
        | Request::VolumeRedirect(_) => Response::VolumeStatus(volume_status(p)),
        Request::VolumeEvents(_) => Response::PathEvents(PathEvents {
            events: vec![
                PathEvent {
                    seq: 4,
                    index: 120,
                    node: 1,
                    path: "quiescing".into(),
                    reason: "io_errors".into(),
                    peer: 0,
                    since_unix_ms: 1_796_601_600_000,
                },
                PathEvent {
                    seq: 5,
                    index: 122,
                    node: 1,
                    path: "redirected".into(),
                    reason: "io_errors".into(),
                    peer: 2,
                    since_unix_ms: 1_796_601_600_123,
                },
            ],
        }),
        Request::VhdList(l) if p == Profile::Sparse => Response::VhdList(VhdPage {
            vhds: vec![],
            next_after: 0,
            total: l.after,
        }),
        Request::VhdList(l) if l.after == 0 => Response::VhdList(VhdPage {
            vhds: vec![vhd_a(), vhd(8, "fixed-one", 1, 0, 1)],
            next_after: 8,
            total: 4,
        }),
        Request::VhdList(_) => Response::VhdList(VhdPage {
            vhds: vec![vhd(11, "child", 3, 7, 2), vhd(12, "orphan", 3, 99, 3)],
            next_after: 0,
            total: 4,
        }),
        Request::VhdGet(_) if p == Profile::Sparse => Response::Done(Empty {}),
        Request::VhdAttach(a) if p == Profile::Sparse => {
            Response::Attachment(attachment(&a.name, "", "", a.read_only))
        }
        Request::VhdAttach(a) => {
            Response::Attachment(attachment(&a.name, "10.0.0.2:10809", "", a.read_only))
        }
        Request::VhdDetach(_) | Request::VhdExport(_) => Response::Done(Empty {}),
        Request::VhdMerge(_) => Response::Vhd(vhd(7, "a", 2, 0, 2)),
        Request::OperationProgress(o) => Response::Progress(Progress {
            op_id: o.op_id,
            ..Default::default()
        }),
        _ => Response::Vhd(vhd_a()),
    }
}

fn serve(p: Profile, mut s: UnixStream) {
    while let Ok(Some(frame)) = read_frame(&mut s) {
        if p == Profile::Closed {
            return;
        }
        let req = AdminRequest::decode(frame.as_slice()).unwrap();
        let response = match p {
            Profile::Refused | Profile::Busy => {
                let code = if p == Profile::Busy {
                    ErrorCode::Busy
                } else {
                    ErrorCode::NotFound
                };
                Response::Error(ErrorReply {
                    code: code as u32,
                    name: code.name().into(),
                    message: "canned refusal".into(),
                })
            }
            _ => answer(p, req.request.unwrap()),
        };
        let resp = AdminResponse {
            version: PROTOCOL_VERSION,
            response: Some(response),
        };
        if write_frame(&mut s, &resp.encode_to_vec()).is_err() {
            return;
        }
    }
}

fn daemon(dir: &Path, name: &str, p: Profile) -> String {
    let path = dir.join(name);
    let l = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            std::thread::spawn(move || serve(p, s));
        }
    });
    path.display().to_string()
}

/// Commands run against a daemon, each as text and with the top-level `--json`.
const COMMANDS: &[&str] = &[
    "cluster init --name lab",
    "cluster status",
    "cluster transfer-leader --to 2",
    "node add 4 10.0.0.4:7000",
    "node add 5 10.0.0.5:7000 --learner",
    "node promote 4",
    "node remove 3",
    "node liveness",
    "owner list",
    "owner show a",
    "owner show 7",
    "owner move a --to 2",
    "owner acquire a",
    "owner acquire a --read-only",
    "owner acquire a --deny-write",
    "owner release a",
    "volume format --extent-size 64M --label lab",
    "volume status",
    "volume recover --lun /dev/sdc",
    "volume redirect --node 3 on",
    "volume redirect off",
    "volume events",
    "volume events --after 3 --limit 2",
    "vhd create a --size 1G",
    "vhd create c --parent a",
    "vhd list",
    "vhd info a",
    "vhd delete a",
    "vhd attach a",
    "vhd attach a --node 2 --read-only",
    "vhd detach a --node 2",
    "vhd import /srv/in.vhd a",
    "vhd expand a --size 2G",
    "vhd compact a",
    "vhd export a /srv/out.vhd",
    "vhd merge c",
];

fn run(out: &mut String, tmp: &str, admin: Option<&str>, args: &[&str], env: &[(&str, &str)]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_csvadm"));
    cmd.env_remove("CSV_ADMIN").env_remove("CSV_CONFIG");
    if let Some(a) = admin {
        cmd.arg("--admin").arg(a);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.args(args).output().unwrap();
    let norm = |b: &[u8]| String::from_utf8_lossy(b).replace(tmp, "<tmp>");
    out.push_str(&format!(
        "$ csvadm {}\nexit {}\n--- stdout\n{}--- stderr\n{}\n",
        args.join(" "),
        o.status.code().unwrap_or(-1),
        norm(&o.stdout),
        norm(&o.stderr)
    ));
}

#[test]
fn admin_output_matches_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().display().to_string();
    let mut out = String::new();
    let profiles = [
        ("full", Profile::Full),
        ("sparse", Profile::Sparse),
        ("uninitialized", Profile::Uninitialized),
        ("no-quorum", Profile::NoQuorum),
        ("refused", Profile::Refused),
        ("busy", Profile::Busy),
        ("closed", Profile::Closed),
    ];
    for (name, p) in profiles {
        let socket = daemon(dir.path(), name, p);
        out.push_str(&format!("##### profile {name}\n"));
        let commands: &[&str] = match p {
            Profile::Full | Profile::Sparse => COMMANDS,
            Profile::Uninitialized | Profile::NoQuorum => &["cluster status"],
            _ => &["cluster status", "owner show a", "vhd list"],
        };
        for c in commands {
            let args: Vec<&str> = c.split(' ').collect();
            run(&mut out, &tmp, Some(&socket), &args, &[]);
            let json: Vec<&str> = std::iter::once("--json").chain(args).collect();
            run(&mut out, &tmp, Some(&socket), &json, &[]);
        }
    }
    out.push_str("##### subcommand --json flags\n");
    let socket = dir.path().join("full").display().to_string();
    for c in [
        "cluster status --json",
        "node liveness --json",
        "owner show a --json",
        "volume status --json",
        "vhd info a --json",
    ] {
        let args: Vec<&str> = c.split(' ').collect();
        run(&mut out, &tmp, Some(&socket), &args, &[]);
    }
    out.push_str("##### no daemon, no config\n");
    let missing = dir.path().join("missing.sock").display().to_string();
    run(&mut out, &tmp, Some(&missing), &["cluster", "status"], &[]);
    let config = dir.path().join("missing.toml").display().to_string();
    run(
        &mut out,
        &tmp,
        None,
        &["cluster", "status"],
        &[("CSV_CONFIG", &config)],
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[paths]\n").unwrap();
    run(
        &mut out,
        &tmp,
        None,
        &["vhd", "list"],
        &[("CSV_CONFIG", &bad.display().to_string())],
    );
    let good = dir.path().join("good.toml");
    std::fs::write(&good, format!("[paths]\nadmin_socket = {socket:?}\n")).unwrap();
    run(
        &mut out,
        &tmp,
        None,
        &["--json", "cluster", "init"],
        &[("CSV_CONFIG", &good.display().to_string())],
    );

    let snapshot = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/admin_output.txt");
    if std::env::var_os("CSVADM_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
        std::fs::write(&snapshot, &out).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&snapshot).unwrap();
    if want != out {
        let got = snapshot.with_extension("new");
        std::fs::write(&got, &out).unwrap();
        panic!(
            "csvadm output differs from {}; the new output is in {} (diff them; set \
             CSVADM_UPDATE_SNAPSHOTS=1 to accept an intended change)",
            snapshot.display(),
            got.display()
        );
    }
}

//! The late-write hazard (070 §4) and the peer's checks (070 §5).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use csv_tests::volume::{VolumeCluster, need};
use redirector::wire::{Call, CallOp, Msg, Refusal, Reply, Writer, decode, encode};

use super::{SanCluster, path_of, wait_path};

/// qemu-io on an NBD URI; its output (it must succeed).
fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    need("qemu-io", "qemu-utils");
    let mut c = Command::new("qemu-io");
    c.arg("--image-opts")
        .arg(format!("driver=nbd,{}", nbd_opts(uri)));
    for x in cmds {
        c.args(["-c", x]);
    }
    let o = c.output().expect("qemu-io");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && !text.contains("failed"),
        "qemu-io {cmds:?}: {text}"
    );
    text
}

/// `nbd+unix:///NAME?socket=PATH` as qemu's `export=NAME,server.type=unix,server.path=PATH`.
fn nbd_opts(uri: &str) -> String {
    let rest = uri.trim_start_matches("nbd+unix:///");
    let (name, sock) = rest.split_once("?socket=").expect("unix NBD URI");
    format!("export={name},server.type=unix,server.path={sock}")
}

/// A write held back on the failed path (it lands 1 s after it was sent: after the
/// node's call bound of 0.68 s, within the bound of a write in doubt, 1.37 s; 042 §4)
/// lands before the node reissues anything through a peer, so the VM's next write of the
/// same bytes, made through the peer, is the one that stays. A node that reissued at
/// once (no quiesce) would see its newer write overwritten by the late one.
#[test]
fn a_write_held_back_on_the_failed_path_never_overwrites_a_newer_redirected_one() {
    // Probes off for the test's span: the one write is what finds the path failing.
    let mut sc = SanCluster::start(
        3,
        "[redirect]\nprobe_interval = \"60s\"\nsettle_time = \"60s\"\n",
    );
    sc.vc.ok(
        1,
        &["vhd", "create", "f", "--size", "64M", "--type", "fixed"],
    );
    sc.vc.ok(2, &["vhd", "attach", "f"]);
    let uri = sc.vc.uri(2, "f");
    qemu_io(&uri, &["write -P 0x11 0 64k", "flush"]);
    wait_path(&sc.vc, 2, "direct", Duration::from_secs(20));
    // Node 2's port of the target now runs every write 1 s late.
    sc.sans.get_mut(&2).expect("san").cut();
    let _late = csv_tests::san::LateTarget::start(&super::sock(sc._dir.path(), 2), &sc.vc.lun);
    let out = qemu_io(
        &uri,
        &["write -P 0xaa 0 64k", "write -P 0xbb 0 64k", "flush"],
    );
    eprintln!("{out}");
    let (_, reason, peer) = path_of(&sc.vc, 2, 2);
    assert_eq!(reason, "io_timeout");
    assert!(peer.is_some(), "node 2 is not redirected");
    // Every held write has landed by now.
    std::thread::sleep(Duration::from_secs(3));
    qemu_io(&uri, &["read -P 0xbb 0 64k"]);
    // And through another node's direct path.
    sc.vc.ok(2, &["vhd", "detach", "f"]);
    sc.vc.ok(3, &["vhd", "attach", "f"]);
    qemu_io(&sc.vc.uri(3, "f"), &["read -P 0xbb 0 64k"]);
}

/// A raw session to a node's data transport, as a (misbehaving) source would open it.
struct RawSession {
    s: TcpStream,
    session: u64,
    next: u64,
}

impl RawSession {
    fn open(vc: &VolumeCluster, peer: u64, source: u64, session: u64) -> RawSession {
        let start = std::time::Instant::now();
        let addr = loop {
            let st: serde_json::Value =
                serde_json::from_str(&vc.ok(peer, &["volume", "status", "--json"])).expect("json");
            let a = st["paths"]
                .as_array()
                .and_then(|a| a.iter().find(|p| p["node"] == peer))
                .and_then(|p| p["data_addr"].as_str())
                .unwrap_or_default()
                .to_string();
            if !a.is_empty() {
                break a;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no data address: {st}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let s = TcpStream::connect(&addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut r = RawSession {
            s,
            session,
            next: 1,
        };
        r.send(&Msg::Open {
            version: redirector::wire::VERSION,
            source,
            session,
        });
        match r.recv() {
            Msg::Opened { session: s, .. } => assert_eq!(s, session),
            m => panic!("open answered {m:?}"),
        }
        r
    }

    fn send(&mut self, m: &Msg) {
        let body = encode(m).expect("encode");
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&body);
        self.s.write_all(&f).expect("send");
    }

    fn recv(&mut self) -> Msg {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).expect("frame length");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut body).expect("frame");
        decode(Bytes::from(body)).expect("decode")
    }

    /// Writes `len` bytes at `offset` as `writer`; the peer's answer.
    fn write(&mut self, offset: u64, writer: Option<Writer>) -> Result<Bytes, Refusal> {
        let id = self.next;
        self.next += 1;
        self.send(&Msg::Call(Call {
            id,
            session: self.session,
            op: CallOp::Write,
            offset,
            len: 4096,
            writer,
            payload: Bytes::from(vec![0x5a; 4096]),
        }));
        loop {
            match self.recv() {
                Msg::Reply(Reply { id: rid, result }) if rid == id => {
                    return result.map_err(|f| f.refusal);
                }
                Msg::Pong { .. } => {}
                m => panic!("unexpected {m:?}"),
            }
        }
    }
}

/// The VHD's write hold as `owner show --json` reports it: (vhd id, owner, generation).
fn hold(vc: &VolumeCluster, name: &str) -> (u64, u64, u64) {
    let o: serde_json::Value =
        serde_json::from_str(&vc.ok(1, &["owner", "show", name, "--json"])).expect("json");
    (
        o["vhd"].as_u64().expect("vhd"),
        o["owner"].as_u64().unwrap_or(0),
        o["generation"].as_u64().expect("generation"),
    )
}

/// The peer runs a forwarded write only for the VHD's current writer at its current
/// generation (its own replica of the lock table), only for the session's own node, and
/// only while the session is renewed.
#[test]
fn the_peer_refuses_stale_generations_and_foreign_writers() {
    let sc = SanCluster::start(3, super::FAST_PROBES);
    sc.vc.ok(
        1,
        &["vhd", "create", "g", "--size", "64M", "--type", "fixed"],
    );
    sc.vc.ok(3, &["vhd", "attach", "g"]);
    let (vhd, _, old) = hold(&sc.vc, "g");
    sc.vc.ok(3, &["vhd", "detach", "g"]);
    sc.vc.ok(2, &["vhd", "attach", "g"]);
    let (_, owner, generation) = hold(&sc.vc, "g");
    assert_eq!(owner, 2);
    assert!(generation > old);
    wait_path(&sc.vc, 1, "direct", Duration::from_secs(20));
    // An offset inside the volume's data area (the VHD's bytes are not checked here).
    let offset = 1 << 30;
    let mut s = RawSession::open(&sc.vc, 1, 2, 77);
    let w = |node, generation| {
        Some(Writer {
            vhd,
            node,
            generation,
        })
    };
    assert_eq!(
        s.write(offset, w(2, old)),
        Err(Refusal::Stale),
        "old generation"
    );
    assert_eq!(
        s.write(offset, w(3, generation)),
        Err(Refusal::BadRequest),
        "foreign writer"
    );
    assert_eq!(s.write(offset, None), Err(Refusal::Fenced), "no writer");
    assert_eq!(
        s.write(offset, w(2, generation)),
        Ok(Bytes::new()),
        "the current writer"
    );
    // A session not renewed within its lease (2 s) is closed: nothing more runs on it.
    std::thread::sleep(Duration::from_secs(3));
    let id = s.next;
    let _ = s.s.write_all(&[]);
    s.send(&Msg::Call(Call {
        id,
        session: s.session,
        op: CallOp::Write,
        offset,
        len: 4096,
        writer: w(2, generation),
        payload: Bytes::from(vec![0x5a; 4096]),
    }));
    let mut len = [0u8; 4];
    let r = s.s.read_exact(&mut len);
    assert!(r.is_err(), "an expired session still answered");
    // The writer the peer confirmed above loses the VHD: its next write is refused (the
    // peer's confirmed writers last only while its replica applied nothing new).
    sc.vc.ok(2, &["vhd", "detach", "g"]);
    sc.vc.ok(3, &["vhd", "attach", "g"]);
    let (_, owner, newer) = hold(&sc.vc, "g");
    assert_eq!(owner, 3);
    let mut s = RawSession::open(&sc.vc, 1, 2, 78);
    assert_eq!(
        s.write(offset, w(2, generation)),
        Err(Refusal::Stale),
        "the writer confirmed before the hand-over"
    );
    assert_eq!(
        s.write(offset, w(2, newer)),
        Err(Refusal::Stale),
        "node 3's generation, sent by node 2"
    );
}

/// A network cut of node 2's path alone (its SAN packets dropped inside its network
/// namespace, so TCP holds them back for retransmission; the cluster network stays up):
/// the held write never lands after the VM rewrote the bytes through a peer, even once
/// the path heals (the node's SAN connection is reset and `TCP_USER_TIMEOUT` bounds it,
/// 042 §4).
#[test]
fn heavy_a_write_held_back_by_a_cut_link_never_lands_after_the_redirected_one() {
    use csv_tests::san::{Listen, San};
    use csv_tests::{Cluster, Options};
    need("iptables", "iptables");
    let mut c = Cluster::new(
        3,
        Options {
            netns: true,
            ..Options::default()
        },
    );
    let hub = c.net().hub_address();
    let dir = tempfile::tempdir().expect("dir");
    let lun = dir.path().join("lun.img");
    std::fs::File::create(&lun)
        .and_then(|f| f.set_len(2 << 30))
        .expect("LUN");
    let _san = San::start(
        Listen::Tcp {
            ip: hub.to_string(),
            port: 10809,
            netns: Some(c.net().hub_name()),
        },
        &lun,
        &[],
        &[],
    );
    c.set_extra_config(&format!(
        "{}[redirect]\nprobe_interval = \"60s\"\nsettle_time = \"60s\"\n[volume]\nlun = \"nbd://{hub}:10809/\"\n",
        super::LEASE
    ));
    c.bootstrap();
    c.wait_leader();
    csv_tests::leases::wait_leases(&c, &[1, 2, 3]);
    let vc = VolumeCluster::format_on(c, lun, dir);
    vc.ok(
        1,
        &["vhd", "create", "n", "--size", "64M", "--type", "fixed"],
    );
    vc.ok(2, &["vhd", "attach", "n"]);
    let uri = vc.uri(2, "n");
    qemu_io(&uri, &["write -P 0x11 0 1M", "flush"]);
    wait_path(&vc, 2, "direct", Duration::from_secs(20));
    let ns = vc.c.net().ns_name(2);
    let rule = |op: &str| {
        let st = Command::new("ip")
            .args(["netns", "exec", &ns, "iptables", op, "OUTPUT", "-p", "tcp"])
            .args(["-d", &hub.to_string(), "--dport", "10809", "-j", "DROP"])
            .status()
            .expect("iptables");
        assert!(st.success(), "iptables {op}");
    };
    rule("-A");
    qemu_io(&uri, &["write -P 0xaa 0 1M", "write -P 0xbb 0 1M", "flush"]);
    let (_, reason, peer) = path_of(&vc, 2, 2);
    assert!(peer.is_some(), "node 2 is not redirected ({reason})");
    rule("-D");
    // Long enough for any retransmission of the cut-off connection to arrive.
    std::thread::sleep(Duration::from_secs(10));
    qemu_io(&uri, &["read -P 0xbb 0 1M"]);
    vc.ok(2, &["vhd", "detach", "n"]);
    vc.ok(3, &["vhd", "attach", "n"]);
    qemu_io(&vc.uri(3, "n"), &["read -P 0xbb 0 1M"]);
}

//! Bad input at every outside edge of a running node (issue 16): the admin socket, the
//! cluster port (past mutual TLS, as an authenticated peer), the redirected-I/O port, NBD,
//! VHD files and the configuration. Each malformed or oversized input is refused with a
//! typed error or a closed connection, the node keeps serving, and the data written
//! before is intact.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use csv_api::ErrorCode;
use csv_api::admin::{AdminRequest, AdminResponse, Request, Response, StatusRequest};
use csv_tests::binary;
use csv_tests::volume::{VolumeCluster, cluster_on_lun_with};
use csv_tls::pki;
use prost::Message as _;

const TIMEOUT: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// One admin exchange of raw bytes; the response decoded.
fn admin_raw(sock: &std::path::Path, bytes: &[u8]) -> Option<AdminResponse> {
    let mut s = UnixStream::connect(sock).expect("admin socket");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s.write_all(bytes).expect("write");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    AdminResponse::decode(body.as_slice()).ok()
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn error_code(r: &Option<AdminResponse>) -> Option<u32> {
    match r.as_ref()?.response.as_ref()? {
        Response::Error(e) => Some(e.code),
        _ => None,
    }
}

/// A TLS connection to `addr` as node `me` (a certificate of the cluster CA), expecting
/// node `peer` there; writes `bytes` and reads until the server closes. True when the
/// server closed (or reset) without sending data.
fn tls_send(vc: &VolumeCluster, me: u64, peer: u64, addr: &str, bytes: &[u8]) -> bool {
    let dir = vc.c.pki();
    let files = pki::node_paths(&dir, me);
    if !files.cert.exists() {
        pki::issue_node(&dir, me, &[], 30).expect("issue");
    }
    let cfg =
        csv_tls::pem::client_config(&pki::ca_cert_path(&dir), Some((&files.cert, &files.key)))
            .expect("client config");
    let name = rustls::pki_types::ServerName::try_from(csv_tls::node_name(peer)).expect("name");
    let conn = rustls::ClientConnection::new(Arc::clone(&cfg), name).expect("conn");
    // The redirect listener opens once the volume is ready (polled every second).
    let start = std::time::Instant::now();
    let tcp = loop {
        match TcpStream::connect(addr) {
            Ok(t) => break t,
            Err(e) if start.elapsed() > TIMEOUT => panic!("connect {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    tcp.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    if tls.write_all(bytes).and_then(|()| tls.flush()).is_err() {
        return true;
    }
    let mut buf = [0u8; 256];
    matches!(tls.read(&mut buf), Ok(0) | Err(_))
}

fn qemu_io(uri: &str, cmd: &str) -> String {
    let o = Command::new("qemu-io")
        .args(["-f", "raw", "-c", cmd, uri])
        .output()
        .expect("qemu-io");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success() && !out.contains("fail"), "{cmd}: {out}");
    out
}

#[test]
fn every_edge_refuses_bad_input_and_the_node_keeps_serving() {
    let redirect_port = free_port();
    let lun_dir = tempfile::tempdir().expect("dir");
    let lun = lun_dir.path().join("lun.img");
    std::fs::File::create(&lun)
        .and_then(|f| f.set_len(1 << 30))
        .expect("LUN");
    let toml = format!(
        "[volume]\nlun = \"{{lun}}\"\n[redirect]\nlisten = \"127.0.0.1:{redirect_port}\"\n"
    );
    let c = cluster_on_lun_with(1, &lun, &toml, true);
    let vc = VolumeCluster::format_on(c, lun, lun_dir);
    vc.ok(1, &["vhd", "create", "d", "--size", "64M"]);
    vc.ok(1, &["vhd", "attach", "d"]);
    let uri = vc.uri(1, "d");
    qemu_io(&uri, "write -P 0xa7 0 4M");
    let admin = vc.c.nodes[&1].admin.clone();

    // Admin socket: oversized length, garbage in a frame, an unknown version, an empty
    // request. Each gets a typed `Malformed` answer.
    let malformed = ErrorCode::Malformed as u32;
    let r = admin_raw(&admin, &u32::MAX.to_be_bytes());
    assert_eq!(error_code(&r), Some(malformed), "oversized: {r:?}");
    let r = admin_raw(&admin, &framed(&[0xff; 64]));
    assert_eq!(error_code(&r), Some(malformed), "garbage: {r:?}");
    let req = AdminRequest {
        version: 999,
        request: Some(Request::Status(StatusRequest {})),
    };
    let r = admin_raw(&admin, &framed(&req.encode_to_vec()));
    assert!(error_code(&r).is_some(), "version 999: {r:?}");
    let empty = AdminRequest {
        version: csv_api::admin::PROTOCOL_VERSION,
        request: None,
    };
    let r = admin_raw(&admin, &framed(&empty.encode_to_vec()));
    assert_eq!(error_code(&r), Some(malformed), "empty: {r:?}");
    // A truncated frame (the length promises more than comes): nothing is answered and
    // the connection is dropped when the peer goes.
    {
        let mut s = UnixStream::connect(&admin).expect("admin");
        s.write_all(&[0, 0, 1, 0, 1, 2]).expect("write");
    }

    // Cluster port, as node 2 holding a genuine certificate: an oversized frame length,
    // then an undecodable hello. Closed either way, nothing delivered.
    let cluster = vc.c.nodes[&1].addr.to_string();
    assert!(tls_send(&vc, 2, 1, &cluster, &u32::MAX.to_be_bytes()));
    assert!(tls_send(&vc, 2, 1, &cluster, &framed(&[0x08; 200])));
    // Without a certificate the bytes never reach a parser.
    let mut t = TcpStream::connect(&cluster).expect("connect");
    t.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let _ = t.write_all(&[0x16; 4096]);
    let mut buf = [0u8; 64];
    let _ = t.read(&mut buf);

    // Redirected-I/O port: an oversized frame and garbage from an authenticated peer.
    let data = format!("127.0.0.1:{redirect_port}");
    assert!(tls_send(&vc, 2, 1, &data, &[0xff; 64]));
    assert!(tls_send(&vc, 2, 1, &data, &u32::MAX.to_be_bytes()));

    // NBD on the Unix socket: a client that answers the greeting with garbage flags,
    // one that sends an option of 4 GiB, one that disappears mid-handshake.
    let nbd = vc.nbd_socket(1);
    for tail in [
        vec![0xde, 0xad, 0xbe, 0xef],
        [
            &[0u8, 0, 0, 3][..],
            b"IHAVEOPT",
            &1u32.to_be_bytes(),
            &u32::MAX.to_be_bytes(),
        ]
        .concat(),
        vec![0],
    ] {
        let mut s = UnixStream::connect(&nbd).expect("nbd socket");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).expect("greeting");
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        let _ = s.write_all(&tail);
        let mut rest = Vec::new();
        // The server closes (or answers an error and closes); it never hangs.
        let _ = s.read_to_end(&mut rest);
    }

    // VHD files: a corrupt footer and a truncated file are refused with an error naming
    // the problem, by the offline tool and by the node's import.
    let work = tempfile::tempdir().expect("work");
    let good = work.path().join("good.vhd");
    let st = Command::new("qemu-img")
        .args(["create", "-f", "vpc", "-o", "subformat=dynamic"])
        .arg(&good)
        .arg("8M")
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let mut bytes = std::fs::read(&good).expect("read");
    let corrupt = work.path().join("corrupt.vhd");
    let n = bytes.len();
    bytes[n - 512 + 64] ^= 0xff; // inside the footer's checksum
    let footer = bytes[n - 512..].to_vec();
    bytes[..512].copy_from_slice(&footer);
    std::fs::write(&corrupt, &bytes).expect("write");
    let truncated = work.path().join("truncated.vhd");
    std::fs::write(&truncated, &bytes[..700]).expect("write");
    let huge_header = work.path().join("garbage.vhd");
    std::fs::write(&huge_header, vec![0xffu8; 4096]).expect("write");
    for f in [&corrupt, &truncated, &huge_header] {
        let o = Command::new(binary("csvadm"))
            .args(["image", "info"])
            .arg(f)
            .output()
            .expect("csvadm");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("error"),
            "{}: {err}",
            f.display()
        );
        assert!(!err.contains("panicked"), "{err}");
        let e = vc.refused(1, &["vhd", "import", f.to_str().expect("utf-8"), "bad"]);
        assert!(!e.contains("panicked") && !e.is_empty(), "{e}");
    }
    let list = vc.ok(1, &["vhd", "list"]);
    assert!(!list.contains("bad"), "a refused import left a VHD: {list}");

    // Configuration: junk, an oversized file, a bad value: the node refuses to start
    // and names the problem.
    for (text, want) in [
        ("[node\nid = ".to_string(), "parse config"),
        ("x".repeat(8 << 20), "parse config"),
        (
            "[node]\nid = 0\n[cluster]\nlisten = \"127.0.0.1:1\"\n[paths]\ndata_dir = \"/tmp/x\"\n[tls]\nplaintext = true\n"
                .to_string(),
            "node.id",
        ),
    ] {
        let f = work.path().join("bad.toml");
        std::fs::write(&f, text).expect("write");
        let o = Command::new(binary("csv-node"))
            .args(["run", "--config"])
            .arg(&f)
            .output()
            .expect("csv-node");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{want}: {err}");
    }

    // Nothing lost: the node answers, the VHD holds what was written.
    let st = vc.c.status(1).expect("status after the bad input");
    assert_eq!(st.node_state, "member");
    qemu_io(&uri, "read -P 0xa7 0 4M");
    qemu_io(&uri, "write -P 0x3c 4M 1M");
    qemu_io(&uri, "read -P 0x3c 4M 1M");
    let log = vc.c.log(1);
    assert!(!log.contains("panicked"), "{log}");
}

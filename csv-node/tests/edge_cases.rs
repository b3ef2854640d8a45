//! Protocol edge cases (edge_cases.py through python3-libnbd and raw sockets): the
//! right errno or a clean close, the server stays up, other connections unaffected.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;

#[test]
fn protocol_edge_cases_through_libnbd_and_raw_sockets() {
    require("/usr/bin/python3", "python3");
    let probe = Command::new("/usr/bin/python3")
        .args(["-c", "import nbd"])
        .status()
        .expect("python3");
    assert!(
        probe.success(),
        "python module nbd missing: install python3-libnbd"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("edge.raw");
    sparse_file(&img, SIZE);
    write_at(&img, MIB, &pattern(MIB as usize, 77));
    let ro = dir.path().join("ro.raw");
    sparse_file(&ro, SIZE);
    let mut srv = ExportServer::unix(&[img.to_str().expect("utf8"), "--max-connections", "16"]);
    let ro_srv = ExportServer::unix(&["--read-only", ro.to_str().expect("utf8")]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/edge_cases.py");
    let out = run(
        Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(&srv.socket)
            .arg(SIZE.to_string())
            .arg(&ro_srv.socket),
        std::time::Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("ALL EDGE CASES PASSED"),
        "edge cases failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        srv.log()
    );
    assert!(srv.is_running(), "server died:\n{}", srv.log());
    // the vanished writer's partial payload must not have landed
    assert!(read_at(&img, 0, 1000).iter().all(|b| *b != 0x99));
}

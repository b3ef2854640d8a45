//! `csv-node export` with TLS as qemu-img and nbdinfo use it (x509 certificates in a
//! directory), TLS-required mode, client certificates; and the process lifecycle:
//! SIGTERM shuts down cleanly with a client connected.

#[path = "../../nbd/tests/common/certs.rs"]
mod certs;
mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn tls_args<'a>(pki: &'a certs::Pki, mode: &'a str, with_ca: bool) -> Vec<String> {
    let mut v = vec![
        "--tls".to_owned(),
        mode.to_owned(),
        "--tls-cert".to_owned(),
        pki.server_cert.display().to_string(),
        "--tls-key".to_owned(),
        pki.server_key.display().to_string(),
    ];
    if with_ca {
        v.push("--tls-ca".to_owned());
        v.push(pki.ca.display().to_string());
    }
    v
}

#[test]
fn tls_with_qemu_img_and_nbdinfo() {
    require("qemu-img", "qemu-utils");
    require("nbdinfo", "libnbd-bin");
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = certs::generate(dir.path());
    let img = dir.path().join("tls.raw");
    sparse_file(&img, 8 * MIB);
    write_at(&img, MIB, &pattern(MIB as usize, 3));

    let mut args = tls_args(&pki, "require", true);
    args.push(img.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let srv = ExportServer::tcp(&args);
    let port = srv.port.expect("tcp");

    // nbdinfo over nbds:// with the client certificate
    let uri = format!(
        "nbds://localhost:{port}/?tls-certificates={}",
        pki.dir.display()
    );
    let info = ok(cmd("nbdinfo").args(["--json", &uri]));
    assert!(info.contains("\"TLS\": true"), "{info}");
    assert!(info.contains("\"export-size\": 8388608"), "{info}");

    // plain connections are refused in require mode
    let plain = format!("nbd://127.0.0.1:{port}/");
    let o = run(
        cmd("nbdinfo").args(["--size", &plain]),
        Duration::from_secs(20),
    );
    assert!(
        !o.status.success(),
        "plain client accepted in TLS-required mode"
    );

    // qemu-img with tls-creds-x509 reads the data and writes through TLS
    let obj = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        pki.dir.display()
    );
    let target = format!("driver=nbd,host=localhost,port={port},export=,tls-creds=tls0");
    let out = ok(cmd("qemu-io").args([
        "--object",
        &obj,
        "--image-opts",
        &target,
        "-c",
        "write -P 0x3c 4M 1M",
        "-c",
        "read -P 0x3c 4M 1M",
    ]));
    assert!(!out.contains("verification failed"), "{out}");
    assert!(
        read_at(&img, 4 * MIB, MIB as usize)
            .iter()
            .all(|b| *b == 0x3c)
    );
    let copy = dir.path().join("copy.raw");
    ok(cmd("qemu-img").args([
        "convert",
        "--object",
        &obj,
        "--image-opts",
        &target,
        "-O",
        "raw",
        copy.to_str().expect("utf8"),
    ]));
    assert_eq!(
        std::fs::read(&copy).expect("read"),
        std::fs::read(&img).expect("read")
    );

    // without a client certificate the handshake fails (client CA configured)
    let nocert = dir.path().join("nocert");
    std::fs::create_dir(&nocert).expect("mkdir");
    std::fs::copy(&pki.ca, nocert.join("ca-cert.pem")).expect("copy");
    let uri = format!(
        "nbds://localhost:{port}/?tls-certificates={}",
        nocert.display()
    );
    let o = run(
        cmd("nbdinfo").args(["--size", &uri]),
        Duration::from_secs(20),
    );
    assert!(!o.status.success(), "client without certificate accepted");
}

#[test]
fn tls_optional_serves_both() {
    require("nbdinfo", "libnbd-bin");
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = certs::generate(dir.path());
    let img = dir.path().join("opt.raw");
    sparse_file(&img, MIB);
    let mut args = tls_args(&pki, "on", false);
    args.push(img.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let srv = ExportServer::tcp(&args);
    let port = srv.port.expect("tcp");
    assert_eq!(
        ok(cmd("nbdinfo").args(["--size", &srv.uri("")])).trim(),
        "1048576"
    );
    let uri = format!(
        "nbds://localhost:{port}/?tls-certificates={}",
        pki.dir.display()
    );
    assert_eq!(ok(cmd("nbdinfo").args(["--size", &uri])).trim(), "1048576");
}

#[test]
fn sigterm_shuts_down_cleanly_with_a_client_connected() {
    require("/usr/bin/python3", "python3");
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("term.raw");
    sparse_file(&img, 4 * MIB);
    let mut srv = ExportServer::unix(&[img.to_str().expect("utf8")]);
    // a client that connects, writes, waits for the server to go away, and reports
    // what its next request got
    let script = r#"
import nbd, sys, time, errno
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"\x61" * 4096, 0)
print("connected", flush=True)
time.sleep(1.0)
try:
    h.pread(4096, 0)
    print("read ok")
except nbd.Error as e:
    print("error", e.errnum)
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script, &srv.uri("")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 10];
    std::io::Read::read_exact(&mut stdout, &mut first).expect("client connected");
    let status = srv.terminate();
    assert!(status.success(), "exit status {status}:\n{}", srv.log());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("read");
    let _ = child.wait();
    // the request made during the drain got ESHUTDOWN (108), not a hang or a reset
    assert!(rest.contains("error 108"), "client output: {rest}");
    assert!(!srv.socket.exists(), "socket file left behind");
    assert!(read_at(&img, 0, 4096).iter().all(|b| *b == 0x61));
}

/// NBD over TCP requires TLS: without credentials the server refuses to start unless
/// `--tls off` asks for plaintext; a Unix socket needs neither.
#[test]
fn tcp_without_tls_needs_an_explicit_tls_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("d.raw");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(MIB))
        .expect("image");
    let out = Command::new(bin())
        .args(["export", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg(&img)
        .output()
        .expect("run csv-node");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NBD over TCP requires TLS") && err.contains("--tls off"),
        "{err}"
    );
    // With --tls off it serves (checked by nbdinfo), and a Unix socket is plaintext.
    let s = ExportServer::tcp(&[img.to_str().expect("utf-8")]);
    let info = Command::new("nbdinfo")
        .args(["--size", &s.uri("")])
        .output()
        .expect("nbdinfo");
    assert_eq!(
        String::from_utf8_lossy(&info.stdout).trim(),
        MIB.to_string()
    );
    drop(s);
    let u = ExportServer::unix(&[img.to_str().expect("utf-8")]);
    let info = Command::new("nbdinfo")
        .args(["--size", &u.uri("")])
        .output()
        .expect("nbdinfo");
    assert_eq!(
        String::from_utf8_lossy(&info.stdout).trim(),
        MIB.to_string()
    );
}

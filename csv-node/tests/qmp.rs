//! The QMP client against a real QEMU (`qemu-system-x86_64 -machine none`, no guest):
//! greeting and capabilities, commands and their answers, a refused command, events,
//! and a closed socket failing the next command.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use csv_node::hypervisor::qmp::{Qmp, QmpError};
use serde_json::json;

const T: Duration = Duration::from_secs(10);

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_qemu(sock: &std::path::Path) -> Qemu {
    common::require("qemu-system-x86_64", "qemu-system-x86");
    let child = Command::new("qemu-system-x86_64")
        .args(["-machine", "none", "-nodefaults", "-display", "none", "-S"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-system-x86_64");
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < T, "QEMU made no QMP socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    Qemu(child)
}

#[tokio::test]
async fn qmp_commands_answers_errors_and_events_with_a_real_qemu() {
    let dir = tempfile::tempdir().expect("dir");
    let sock = dir.path().join("qmp.sock");
    let mut qemu = start_qemu(&sock);
    let (q, mut events) = Qmp::connect(&sock, T).await.expect("connect");
    assert!(q.version.0 >= 7, "QEMU version {:?}", q.version);
    let st = q.execute("query-status", None, T).await.expect("status");
    assert_eq!(st["status"], "prelaunch", "{st}");
    assert_eq!(st["running"], false);
    // A refused command is a typed error, and the connection stays usable.
    match q.execute("no-such-command", None, T).await {
        Err(QmpError::Command { class, .. }) => assert_eq!(class, "CommandNotFound"),
        other => panic!("unknown command answered {other:?}"),
    }
    match q
        .execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": "x"})),
            T,
        )
        .await
    {
        Err(QmpError::Command { class, .. }) => assert_eq!(class, "GenericError"),
        other => panic!("bad arguments answered {other:?}"),
    }
    // The capability the live migration's hand-off needs (docs/design/080 §4).
    q.execute(
        "migrate-set-capabilities",
        Some(json!({"capabilities": [
            {"capability": "events", "state": true},
            {"capability": "pause-before-switchover", "state": true}
        ]})),
        T,
    )
    .await
    .expect("capabilities");
    // Concurrent commands are each answered by id.
    let (a, b) = tokio::join!(
        q.execute("query-name", None, T),
        q.execute("query-migrate-capabilities", None, T)
    );
    a.expect("query-name");
    let caps = b.expect("capabilities");
    assert!(
        caps.as_array()
            .expect("a list")
            .iter()
            .any(|c| c["capability"] == "pause-before-switchover" && c["state"] == true),
        "{caps}"
    );
    q.execute("cont", None, T).await.expect("cont");
    let ev = tokio::time::timeout(T, events.recv())
        .await
        .expect("an event in time")
        .expect("events open");
    assert_eq!(ev.name, "RESUME", "{ev:?}");
    q.execute("quit", None, T).await.expect("quit");
    let ev = tokio::time::timeout(T, events.recv())
        .await
        .expect("an event in time")
        .expect("events open");
    assert_eq!(ev.name, "SHUTDOWN", "{ev:?}");
    let _ = qemu.0.wait();
    // The socket is gone: the next command fails at once, clearly.
    match q.execute("query-status", None, T).await {
        Err(QmpError::Closed(_)) => {}
        other => panic!("after quit: {other:?}"),
    }
}

#[tokio::test]
async fn qmp_connect_to_a_missing_socket_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("dir");
    let e = Qmp::connect(&dir.path().join("none.sock"), T)
        .await
        .expect_err("no socket");
    assert!(e.to_string().contains("none.sock"), "{e}");
}

//! Shared fixtures of the `csv-node export` tests: a server process on a unique Unix
//! socket (or a free TCP port) that is killed when dropped, external tools that must
//! exist (a missing one fails the test, naming its Debian package), image helpers.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_csv-node")
}

/// Panics (fails the test) when `tool` is not installed.
pub fn require(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is missing: install the Debian package {package} (scripts/install-deps)"
    );
}

/// A running `csv-node export`.
pub struct ExportServer {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub port: Option<u16>,
    log: PathBuf,
}

impl ExportServer {
    /// Starts `csv-node export --socket <dir>/nbd.sock <args...>`.
    pub fn unix(args: &[&str]) -> ExportServer {
        Self::start(args, false)
    }

    /// Starts `csv-node export --listen 127.0.0.1:<free port> <args...>`.
    pub fn tcp(args: &[&str]) -> ExportServer {
        Self::start(args, true)
    }

    fn start(args: &[&str], tcp: bool) -> ExportServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("nbd.sock");
        let log = dir.path().join("server.log");
        let mut cmd = Command::new(bin());
        cmd.arg("export");
        let port = if tcp {
            let p = free_port();
            cmd.arg("--listen").arg(format!("127.0.0.1:{p}"));
            // TCP requires TLS unless plaintext is asked for.
            if !args.iter().any(|a| a.starts_with("--tls")) {
                cmd.args(["--tls", "off"]);
            }
            Some(p)
        } else {
            cmd.arg("--socket").arg(&socket);
            None
        };
        cmd.args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let child = cmd.spawn().expect("spawn csv-node");
        let mut s = ExportServer {
            child: Some(child),
            dir,
            socket,
            port,
            log,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let t = Instant::now();
        loop {
            let up = match self.port {
                Some(p) => std::net::TcpStream::connect(("127.0.0.1", p)).is_ok(),
                None => UnixStream::connect(&self.socket).is_ok(),
            };
            if up {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("csv-node exited early ({st}):\n{}", self.log());
            }
            assert!(
                t.elapsed() < START_TIMEOUT,
                "server not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// URI of an export.
    pub fn uri(&self, export: &str) -> String {
        match self.port {
            Some(p) => format!("nbd://127.0.0.1:{p}/{export}"),
            None => format!("nbd+unix:///{export}?socket={}", self.socket.display()),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("server already stopped");
        signal(c.id(), "TERM");
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st;
            }
            if t.elapsed() > Duration::from_secs(40) {
                let _ = c.kill();
                panic!("server did not stop after SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ExportServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends SIGSTOP/SIGCONT/SIGTERM/SIGKILL (by name) to `pid`; a process already gone is fine.
pub fn signal(pid: u32, sig: &str) {
    use rustix::process::{Pid, Signal, kill_process};
    let s = match sig {
        "STOP" => Signal::STOP,
        "CONT" => Signal::CONT,
        "TERM" => Signal::TERM,
        "KILL" => Signal::KILL,
        other => panic!("unknown signal name {other}"),
    };
    if let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(p, s);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Runs a command with a time limit; returns its output (panics on timeout).
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let t = Instant::now();
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} timed out after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: o.join().unwrap_or_default(),
        stderr: e.join().unwrap_or_default(),
    }
}

/// Runs a command that must succeed; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let o = run(cmd, Duration::from_secs(60));
    assert!(
        o.status.success(),
        "{desc} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn cmd(program: &str) -> Command {
    Command::new(program)
}

/// A sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) {
    let f = std::fs::File::create(path).expect("create");
    f.set_len(size).expect("set_len");
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Bytes `[offset, offset+len)` of a file.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).expect("open");
    let mut b = vec![0u8; len];
    f.read_exact_at(&mut b, offset).expect("read");
    b
}

pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    f.write_all_at(data, offset).expect("write");
}

/// Blocks allocated on disk (du), in bytes.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("meta").blocks() * 512
}

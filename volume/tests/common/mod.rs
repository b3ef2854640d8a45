//! Shared helpers of the volume integration tests: a formatted LUN with a pool and
//! sinks, extent files and their reopening, gathering a file's bytes into a plain file,
//! external tools (which fail the test, naming the Debian package, when missing) and SAN
//! target processes (nbdkit, qemu-nbd) killed on drop.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use volume::superblock::{self, FormatParams, Superblock};
use volume::testing::{ExtentPool, RecordingSink};
use volume::{ExtentFile, ExtentMap, LunPath, OpenFence, WriteAccess, WriteFence};

pub mod scenario;

pub const MIB: u64 = 1 << 20;

/// Runs a tool and returns stdout; panics naming the package when it is missing and with
/// its stderr when it fails.
pub fn run(tool: &str, package: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run {tool} ({e}); install the Debian package {package} (scripts/install-deps)"
        )
    });
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} not found; install the Debian package {package} (scripts/install-deps)"
    );
}

/// A sparse LUN file.
pub fn lun_file(dir: &Path, size: u64) -> PathBuf {
    let p = dir.join("lun.img");
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// A formatted volume with a pool of all its extents.
pub struct Vol {
    pub lun: Arc<dyn LunPath>,
    pub sb: Superblock,
    pub pool: Arc<ExtentPool>,
}

impl Vol {
    pub fn format(lun: Arc<dyn LunPath>, extent_size: u64) -> Vol {
        let sb = superblock::format(
            lun.as_ref(),
            &FormatParams {
                extent_size,
                checkpoint_slot_size: MIB,
                label: "test".into(),
                ..FormatParams::default()
            },
        )
        .unwrap();
        // Not clean: extents must be zeroed before use, as after a delete.
        let pool = Arc::new(ExtentPool::new(0..sb.layout.extent_count, false));
        Vol { lun, sb, pool }
    }

    pub fn access(&self, sink: &Arc<RecordingSink>, fence: Arc<dyn WriteFence>) -> WriteAccess {
        WriteAccess {
            source: self.pool.clone(),
            sink: sink.clone(),
            fence,
            fence_wait: Duration::from_millis(300),
        }
    }

    /// A new, empty writable file and its sink.
    pub fn create(&self, name: &str) -> (Arc<ExtentFile>, Arc<RecordingSink>) {
        let sink = Arc::new(RecordingSink::new(Some(self.pool.clone())));
        let f = ExtentFile::open(
            self.lun.clone(),
            self.sb.layout,
            name,
            ExtentMap::new(),
            0,
            Some(self.access(&sink, Arc::new(OpenFence))),
        )
        .unwrap();
        (Arc::new(f), sink)
    }

    /// Reopens a file from what its sink last committed.
    pub fn reopen(&self, name: &str, sink: &Arc<RecordingSink>, writable: bool) -> Arc<ExtentFile> {
        let u = sink.last().expect("a committed map");
        let map = ExtentMap::from_runs(&u.runs).unwrap();
        let access = writable.then(|| self.access(sink, Arc::new(OpenFence)));
        Arc::new(
            ExtentFile::open(self.lun.clone(), self.sb.layout, name, map, u.len, access).unwrap(),
        )
    }

    /// "Deletes" a file: its committed extents go back to the pool (not clean).
    pub fn delete(&self, sink: &RecordingSink) {
        let u = sink.last().expect("a committed map");
        self.pool.release(&u.runs);
    }
}

/// Copies a file's logical bytes into a plain file.
pub fn gather(f: &ExtentFile, out: &Path) {
    let len = f.logical_len();
    let mut buf = vec![0u8; (4 * MIB) as usize];
    let file = std::fs::File::create(out).unwrap();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        f.read(&mut buf[..n], off).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &buf[..n], off).unwrap();
        off += n as u64;
    }
    file.set_len(len).unwrap();
}

/// Deterministic bytes of a pattern `seed` for offset `off`.
pub fn pattern(seed: u8, off: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let x = off + i as u64;
            (x as u8) ^ ((x >> 9) as u8) ^ seed.wrapping_mul(31)
        })
        .collect()
}

pub fn qemu_img(args: &[&str]) -> String {
    run("qemu-img", "qemu-utils", args)
}

/// A target process killed (and reaped) on drop.
pub struct Target {
    pub child: Child,
    pub uri: String,
    pub socket: PathBuf,
}

impl Target {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `socket` accepts a connection (the file appears at bind, before listen:
/// a connect in between is refused).
fn wait_for_socket(child: &mut Child, socket: &Path, what: &str) {
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited early: {st}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} did not listen on its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `nbdkit file` serving `lun` on a Unix socket in `dir`; `filters` e.g.
/// `["--filter=error", "error-rate=1"]`.
pub fn nbdkit(dir: &Path, lun: &Path, extra: &[&str]) -> Target {
    let socket = dir.join(format!(
        "nbdkit-{}.sock",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    nbdkit_at(&socket, lun, extra)
}

/// `nbdkit file` on a given socket path (a stale socket file is removed first).
pub fn nbdkit_at(socket: &Path, lun: &Path, extra: &[&str]) -> Target {
    require("nbdkit", "nbdkit");
    let _ = std::fs::remove_file(socket);
    let socket = socket.to_path_buf();
    let mut cmd = Command::new("nbdkit");
    cmd.args(["-f", "--exit-with-parent", "-U"]).arg(&socket);
    let (filters, params): (Vec<&str>, Vec<&str>) =
        extra.iter().partition(|a| a.starts_with("--filter"));
    cmd.args(&filters)
        .arg("file")
        .arg(format!("file={}", lun.display()))
        .args(&params)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .expect("cannot run nbdkit: install the Debian package nbdkit");
    wait_for_socket(&mut child, &socket, "nbdkit");
    let uri = format!("nbd+unix:///?socket={}", socket.display());
    Target { child, uri, socket }
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `nbdkit file` on TCP 127.0.0.1:`port`.
pub fn nbdkit_tcp(lun: &Path, port: u16) -> Target {
    require("nbdkit", "nbdkit");
    let mut child = Command::new("nbdkit")
        .args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .arg("file")
        .arg(format!("file={}", lun.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run nbdkit: install the Debian package nbdkit");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("nbdkit exited early: {st}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "nbdkit did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let uri = format!("nbd://127.0.0.1:{port}/");
    Target {
        child,
        uri,
        socket: PathBuf::new(),
    }
}

/// `qemu-nbd --shared=8` serving `lun` (raw) on a Unix socket in `dir`.
pub fn qemu_nbd(dir: &Path, lun: &Path) -> Target {
    require("qemu-nbd", "qemu-utils");
    let socket = dir.join("qemu-nbd.sock");
    let mut child = Command::new("qemu-nbd")
        .args([
            "-f",
            "raw",
            "--shared=8",
            "--persistent",
            "--cache=writeback",
        ])
        .arg("-k")
        .arg(&socket)
        .arg(lun)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run qemu-nbd: install the Debian package qemu-utils");
    wait_for_socket(&mut child, &socket, "qemu-nbd");
    let uri = format!("nbd+unix:///?socket={}", socket.display());
    Target { child, uri, socket }
}

/// An `NbdPath` to `uri` with `connections` connections and `io_timeout`.
pub fn connect_nbd(uri: &str, connections: usize, io_timeout: Duration) -> volume::path::NbdPath {
    volume::path::NbdPath::connect(
        volume::path::NbdTarget::parse(uri).unwrap(),
        volume::path::NbdOptions {
            io_timeout,
            connections,
        },
    )
    .unwrap()
}

/// A LUN file of `size` bytes in `dir` holding `pattern(seed, 0, size)`, and those bytes.
pub fn patterned_lun(dir: &Path, size: u64, seed: u8) -> (PathBuf, Vec<u8>) {
    let lun = lun_file(dir, size);
    let bytes = pattern(seed, 0, size as usize);
    std::fs::write(&lun, &bytes).unwrap();
    (lun, bytes)
}

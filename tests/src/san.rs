//! A SAN target for process tests: `nbdkit` serving a LUN file over a Unix socket or TCP
//! (optionally inside a network namespace), with nbdkit's filters (`error`, `delay`,
//! `nozero`, ...). It can be paused (SIGSTOP), resumed, killed and restarted on the same
//! address, as a storage array that hangs, recovers or reboots. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::send_signal;
use crate::volume::need;

/// Where the target listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// A Unix socket.
    Unix(PathBuf),
    /// TCP `ip:port`, in network namespace `netns` when set.
    Tcp {
        /// Address.
        ip: String,
        /// Port.
        port: u16,
        /// Namespace to run nbdkit in.
        netns: Option<String>,
    },
}

/// A running nbdkit.
#[derive(Debug)]
pub struct San {
    listen: Listen,
    lun: PathBuf,
    /// Filters and their parameters (`--filter=x` first, then `key=value`).
    extra: Vec<String>,
    /// Extra plugin/nbdkit arguments before the plugin (`-t 1`, ...).
    opts: Vec<String>,
    child: Option<Child>,
}

impl San {
    /// Starts `nbdkit [opts] [filters] file LUN [params]` on `listen`.
    pub fn start(listen: Listen, lun: &Path, opts: &[&str], extra: &[&str]) -> San {
        need("nbdkit", "nbdkit");
        let mut s = San {
            listen,
            lun: lun.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            opts: opts.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = match &self.listen {
            Listen::Tcp {
                netns: Some(ns), ..
            } => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "nbdkit"]);
                c
            }
            _ => Command::new("nbdkit"),
        };
        cmd.args(["--foreground", "--exit-with-parent"]);
        match &self.listen {
            Listen::Unix(p) => {
                let _ = std::fs::remove_file(p);
                cmd.arg("-U").arg(p);
            }
            Listen::Tcp { ip, port, .. } => {
                cmd.args(["-i", ip, "-p", &port.to_string()]);
            }
        }
        cmd.args(&self.opts);
        let (filters, params): (Vec<&String>, Vec<&String>) =
            self.extra.iter().partition(|a| a.starts_with("--filter"));
        cmd.args(filters)
            .arg("file")
            .arg(format!("file={}", self.lun.display()))
            .args(params)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("start nbdkit"));
        self.wait_listening();
    }

    fn wait_listening(&mut self) {
        let start = Instant::now();
        loop {
            let up = match &self.listen {
                Listen::Unix(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
                Listen::Tcp {
                    ip,
                    port,
                    netns: None,
                } => std::net::TcpStream::connect((ip.as_str(), *port)).is_ok(),
                // Probe from inside the namespace.
                Listen::Tcp {
                    ip,
                    port,
                    netns: Some(ns),
                } => Command::new("ip")
                    .args(["netns", "exec", ns, "bash", "-c"])
                    .arg(format!("exec 3<>/dev/tcp/{ip}/{port}"))
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
            };
            if up {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!("nbdkit exited early: {st}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nbdkit did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `[volume] lun` URI of this target.
    pub fn uri(&self) -> String {
        match &self.listen {
            Listen::Unix(p) => format!("nbd+unix:///?socket={}", p.display()),
            Listen::Tcp { ip, port, .. } => format!("nbd://{ip}:{port}/"),
        }
    }

    /// The LUN file behind the target.
    pub fn lun(&self) -> &Path {
        &self.lun
    }

    /// nbdkit's pid (the `ip netns exec` wrapper execs it, so the pid is nbdkit's).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("nbdkit runs").id()
    }

    /// SIGSTOP: the target stops answering (its sockets stay open).
    pub fn pause(&self) {
        send_signal(self.pid(), "STOP").expect("SIGSTOP nbdkit");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        send_signal(self.pid(), "CONT").expect("SIGCONT nbdkit");
    }

    /// kill -9: every connection drops.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A path cut: kill -9 (every connection drops, nothing it received runs later).
    pub fn cut(&mut self) {
        self.kill();
    }

    /// After [`Self::cut`]: a new nbdkit on the same address, LUN and filters.
    pub fn restore(&mut self) {
        if self.child.is_none() {
            self.spawn();
        }
    }

    /// kill -9, then a new nbdkit on the same address and LUN with other filters and
    /// parameters.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.kill();
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.spawn();
    }

    /// kill -9, then a new nbdkit on the same address and LUN.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for San {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            // A paused process does not die from SIGKILL until it is continued on some
            // kernels' job control paths: continue it first.
            let _ = send_signal(c.id(), "CONT");
        }
        self.kill();
    }
}

/// A target port that runs every write 1 s after it got it, whatever happens to the
/// connection meanwhile (nbdkit's eval plugin: the write's script runs to its end even
/// when the client has given up; the `delay` filter would drop it on disconnect).
#[derive(Debug)]
pub struct LateTarget(std::process::Child);

impl LateTarget {
    /// Listens on `sock` for `lun` (replacing what was there).
    pub fn start(sock: &std::path::Path, lun: &std::path::Path) -> LateTarget {
        let _ = std::fs::remove_file(sock);
        let lun = lun.display();
        let child = Command::new("nbdkit")
            .args(["--foreground", "--exit-with-parent", "-U"])
            .arg(sock)
            .arg("eval")
            .arg(format!("get_size=stat -c %s {lun}"))
            .arg(format!(
                "pread=dd if={lun} iflag=skip_bytes,count_bytes skip=$4 count=$3 status=none"
            ))
            .arg(format!(
                "pwrite=sleep 1; dd of={lun} oflag=seek_bytes conv=notrunc seek=$4 status=none"
            ))
            .arg(format!("flush=sync {lun}"))
            .arg("thread_model=echo parallel")
            .stdout(std::process::Stdio::null())
            // Its scripts complain of broken pipes when the port is cut under them.
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nbdkit eval");
        let start = std::time::Instant::now();
        while std::os::unix::net::UnixStream::connect(sock).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nbdkit eval did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        LateTarget(child)
    }
}

impl Drop for LateTarget {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

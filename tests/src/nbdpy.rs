//! Python scripts over libnbd (`python3-libnbd`, the library behind nbdsh and nbdcopy)
//! for the tests that need an NBD client doing exactly what they say: one request at a
//! time, a pause between a write and its flush, a log of what was acknowledged.
//! Scripts run with Debian's `/usr/bin/python3 -I` (isolated: the workspace's own `nbd/`
//! folder must not shadow the `nbd` module).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::volume::need;

fn python() -> Command {
    need("/usr/bin/python3", "python3");
    let mut c = Command::new("/usr/bin/python3");
    c.arg("-I");
    c
}

/// Runs `script` with `args` (`sys.argv[1:]`) to the end.
pub fn run(script: &str, args: &[&str]) -> Output {
    python()
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3 (install python3-libnbd)")
}

/// A script running in the background that the test talks to line by line: it prints
/// what it did and waits for a line on stdin before its next step. Killed on drop.
#[derive(Debug)]
pub struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
}

impl Script {
    /// Starts `script` with `args`.
    pub fn spawn(script: &str, args: &[&str]) -> Script {
        let mut child = python()
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run python3 (install python3-libnbd)");
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Script { child, stdin, out }
    }

    /// The next line the script prints (panics at EOF).
    pub fn line(&mut self) -> String {
        let mut s = String::new();
        let n = self.out.read_line(&mut s).expect("read script output");
        assert!(n > 0, "the script ended before printing a line");
        s.trim_end().to_string()
    }

    /// Reads lines until one starts with `prefix`; returns it.
    pub fn expect(&mut self, prefix: &str) -> String {
        loop {
            let l = self.line();
            if l.starts_with(prefix) {
                return l;
            }
        }
    }

    /// Tells the script to go on.
    pub fn go(&mut self) {
        let w = self.stdin.as_mut().expect("stdin");
        w.write_all(b"\n").and_then(|()| w.flush()).expect("write");
    }

    /// Waits for the script to end (at most `timeout`); the rest of its output.
    pub fn finish(mut self, timeout: Duration) -> String {
        self.stdin.take();
        let start = Instant::now();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            assert!(
                start.elapsed() < timeout,
                "the script did not end within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.out, &mut rest);
        rest
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

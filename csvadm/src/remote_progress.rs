//! Long operations on a node (import, export, merge, compact) with a progress bar. The
//! admin protocol answers each request once, so the request carries a random operation
//! id and, when stderr is a terminal, a second connection polls `OperationProgress` for
//! that id and feeds the bar until the answer arrives.

use std::hash::{BuildHasher, Hasher};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use csv_api::admin::volume::OperationProgress;
use csv_api::admin::{Client, Request, Response};

use crate::client::{Failure, failure};
use crate::progress::Bar;

/// Bound on a long operation's answer (a large import runs for hours).
pub const LONG_OP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// How often the bar asks for progress.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Bound on one progress request.
const POLL_TIMEOUT: Duration = Duration::from_secs(10);

/// A random non-zero operation id.
pub fn new_op_id() -> u64 {
    loop {
        let mut h = std::hash::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        let v = h.finish();
        if v != 0 {
            return v;
        }
    }
}

/// Sends `request` (which carries `op_id`) on `c` and, on a terminal, draws a bar from
/// a second connection to `socket` while it runs.
pub fn call_with_progress(
    socket: &Path,
    c: &mut Client,
    what: &str,
    op_id: u64,
    request: Request,
) -> Result<Response, Failure> {
    c.set_timeout(LONG_OP_TIMEOUT).map_err(failure)?;
    let (stop, stopped) = mpsc::channel::<()>();
    let poller = std::io::stderr().is_terminal().then(|| {
        let socket = socket.to_path_buf();
        let what = what.to_string();
        std::thread::spawn(move || poll(&socket, &what, op_id, &stopped))
    });
    let r = c.call(request);
    drop(stop);
    if let Some(h) = poller {
        let _ = h.join();
    }
    r.map_err(failure)
}

fn poll(socket: &Path, what: &str, op_id: u64, stopped: &mpsc::Receiver<()>) {
    let Ok(mut c) = Client::connect(socket) else {
        return;
    };
    if c.set_timeout(POLL_TIMEOUT).is_err() {
        return;
    }
    let bar = Bar::new(what);
    loop {
        match c.call(Request::OperationProgress(OperationProgress { op_id })) {
            Ok(Response::Progress(p)) => bar.update(p.done, p.total),
            // not started yet, or just ended: keep asking until the answer arrives
            Err(e) if e.code() == Some(csv_api::ErrorCode::NotFound) => {}
            _ => break,
        }
        match stopped.recv_timeout(POLL_EVERY) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => break,
        }
    }
    bar.finish();
}

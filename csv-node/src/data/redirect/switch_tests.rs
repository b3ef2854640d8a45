//! `SwitchPath` under a scripted driver: an in-memory LUN behind a fault-injecting path,
//! and a peer that answers as it is told.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use volume::LunPath;
use volume::path::{PathError, WriteGate};
use volume::testing::{FaultyPath, MemPath};

use super::link::{LinkError, LunCall, PeerLink};
use super::switch::{Report, Route, Shared, SwitchPath};

const SIZE: u64 = 16 << 20;

/// A peer over its own view of the same LUN, answering by script.
#[derive(Debug)]
struct Peer {
    lun: Arc<dyn LunPath>,
    session: u64,
    /// Answers to give before running calls: `None` runs the call.
    script: Mutex<Vec<Option<LinkError>>>,
    calls: AtomicU64,
    writers: Mutex<Vec<Option<redirector::wire::Writer>>>,
}

impl Peer {
    fn new(lun: Arc<dyn LunPath>, session: u64, script: Vec<Option<LinkError>>) -> Arc<Peer> {
        Arc::new(Peer {
            lun,
            session,
            script: Mutex::new(script),
            calls: AtomicU64::new(0),
            writers: Mutex::default(),
        })
    }
}

impl PeerLink for Peer {
    fn peer(&self) -> u64 {
        9
    }
    fn session(&self) -> u64 {
        self.session
    }
    fn call(&self, call: LunCall) -> Result<Bytes, LinkError> {
        self.calls.fetch_add(1, Ordering::AcqRel);
        let next = {
            let mut s = self.script.lock().expect("script");
            if s.is_empty() { None } else { s.remove(0) }
        };
        if let Some(e) = next {
            return Err(e);
        }
        let r = match call {
            LunCall::Read { offset, len } => {
                let mut b = vec![0u8; len as usize];
                self.lun.read_at(&mut b, offset).map(|()| Bytes::from(b))
            }
            LunCall::Write {
                offset,
                data,
                writer,
            } => {
                self.writers.lock().expect("writers").push(writer);
                self.lun.write_at(&data, offset).map(|()| Bytes::new())
            }
            LunCall::WriteZeroes { offset, len, .. } => {
                self.lun.write_zeroes(offset, len).map(|()| Bytes::new())
            }
            LunCall::Flush => self.lun.flush().map(|()| Bytes::new()),
        };
        r.map_err(LinkError::Refused)
    }
}

/// A gate that names a writer.
struct Holder;

impl WriteGate for Holder {
    fn check(&self) -> Result<(), PathError> {
        Ok(())
    }
    fn writer(&self) -> Option<volume::Writer> {
        Some(volume::Writer {
            vhd: 3,
            node: 2,
            generation: 7,
        })
    }
}

struct Rig {
    lun: Arc<MemPath>,
    faulty: Arc<FaultyPath>,
    shared: Arc<Shared>,
    switch: Arc<SwitchPath>,
    reports: tokio::sync::mpsc::UnboundedReceiver<Report>,
}

fn rig(pause: Duration) -> Rig {
    let lun = Arc::new(MemPath::new(SIZE).expect("mem"));
    let faulty = Arc::new(FaultyPath::new(lun.clone()));
    let (shared, reports) = Shared::new(pause);
    let switch = Arc::new(SwitchPath::new(faulty.clone(), shared.clone(), SIZE));
    Rig {
        lun,
        faulty,
        shared,
        switch,
        reports,
    }
}

fn next_report(r: &mut Rig, limit: Duration) -> Option<Report> {
    let start = Instant::now();
    loop {
        if let Ok(x) = r.reports.try_recv() {
            return Some(x);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn direct_calls_pass_through_and_failed_ones_wait_for_the_next_route() {
    let mut r = rig(Duration::from_secs(10));
    r.switch.write_at(&[1u8; 4096], 0).expect("direct write");
    assert_eq!(r.lun.to_vec()[..4096], [1u8; 4096]);
    // The path fails: the write is reported, not answered, until the driver routes it
    // through a peer; the peer gets the gate's writer.
    r.faulty.cut(true);
    let sw = r.switch.clone();
    let call = std::thread::spawn(move || sw.write_at_gated(&[2u8; 8192], 4096, &Holder));
    let rep = next_report(&mut r, Duration::from_secs(2)).expect("a report");
    assert_eq!(rep, Report::PathError { timeout: false });
    r.shared.set_route(Route::Hold);
    std::thread::sleep(Duration::from_millis(50));
    assert!(!call.is_finished(), "a failed write was answered on hold");
    let peer = Peer::new(r.lun.clone(), 1, vec![]);
    r.shared.set_route(Route::Peer(peer.clone()));
    call.join().expect("thread").expect("redirected write");
    assert_eq!(r.lun.to_vec()[4096..12288], [2u8; 8192]);
    let w = peer.writers.lock().expect("writers").clone();
    assert_eq!(
        w,
        vec![Some(redirector::wire::Writer {
            vhd: 3,
            node: 2,
            generation: 7
        })]
    );
    // Reads and flushes go the same way.
    let mut b = vec![0u8; 4096];
    r.switch.read_at(&mut b, 4096).expect("read");
    assert_eq!(b, vec![2u8; 4096]);
    r.switch.flush().expect("flush");
    assert!(r.switch.may_block(), "a redirected path waits on a network");
}

#[test]
fn a_lost_session_is_reported_and_the_call_waits_for_another_route() {
    let mut r = rig(Duration::from_secs(10));
    let lost = Peer::new(r.lun.clone(), 5, vec![Some(LinkError::Lost("gone".into()))]);
    r.shared.set_route(Route::Peer(lost));
    let sw = r.switch.clone();
    let call = std::thread::spawn(move || sw.write_at(&[4u8; 512], 0));
    let rep = next_report(&mut r, Duration::from_secs(2)).expect("a report");
    assert_eq!(rep, Report::PeerFailed { session: 5 });
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !call.is_finished(),
        "reissued on the failed session's route"
    );
    r.shared.set_route(Route::Direct);
    call.join().expect("thread").expect("direct again");
    assert_eq!(r.lun.to_vec()[..512], [4u8; 512]);
}

#[test]
fn not_yet_is_asked_again_and_refusals_reach_the_caller() {
    let r = rig(Duration::from_secs(10));
    let peer = Peer::new(
        r.lun.clone(),
        1,
        vec![
            Some(LinkError::NotYet),
            Some(LinkError::NotYet),
            None,
            Some(LinkError::Refused(PathError::Fenced {
                detail: "stale".into(),
            })),
        ],
    );
    r.shared.set_route(Route::Peer(peer.clone()));
    r.switch
        .write_at(&[5u8; 512], 0)
        .expect("after two not-yets");
    assert_eq!(peer.calls.load(Ordering::Acquire), 3);
    let e = r.switch.write_at(&[6u8; 512], 0).expect_err("refused");
    assert!(matches!(e, PathError::Fenced { .. }), "{e}");
    assert_eq!(r.lun.to_vec()[..512], [5u8; 512]);
}

#[test]
fn a_call_with_nowhere_to_go_fails_at_the_pause_limit() {
    let r = rig(Duration::from_millis(200));
    r.shared.set_route(Route::Hold);
    let start = Instant::now();
    let e = r
        .switch
        .write_at(&[1u8; 512], 0)
        .expect_err("paused too long");
    assert!(e.is_path_failure(), "{e}");
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn inside_the_non_blocking_scope_nothing_waits() {
    let mut r = rig(Duration::from_secs(10));
    r.shared.set_route(Route::Hold);
    let e = volume::nonblocking::run(|| r.switch.write_at(&[1u8; 512], 0)).expect_err("hold");
    assert!(matches!(e, PathError::WouldBlock { .. }), "{e}");
    r.shared.set_route(Route::Direct);
    volume::nonblocking::run(|| r.switch.write_at(&[1u8; 512], 0)).expect("direct inline");
    r.faulty.cut(true);
    let e = volume::nonblocking::run(|| r.switch.write_at(&[1u8; 512], 0)).expect_err("cut");
    assert!(matches!(e, PathError::WouldBlock { .. }), "{e}");
    assert_eq!(
        next_report(&mut r, Duration::from_secs(1)),
        Some(Report::PathError { timeout: false })
    );
    assert_eq!(r.shared.direct_in_flight(), 0);
}

#[test]
fn quiet_covers_the_sessions_in_doubt() {
    let r = rig(Duration::from_secs(10));
    assert!(r.switch.quiet_at().is_none());
    r.shared
        .peer_in_doubt_until(Instant::now() + Duration::from_millis(300));
    let q = r.switch.quiet_at().expect("in doubt");
    assert!(q > Instant::now());
    std::thread::sleep(Duration::from_millis(320));
    assert!(r.switch.quiet_at().is_none());
}

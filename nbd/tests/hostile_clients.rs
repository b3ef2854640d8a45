//! Clients that send what no sane client sends, over a raw Unix socket: refused WRITEs
//! whose payload must be dropped as it arrives (not buffered: a 4 GiB length would
//! otherwise cost the server 4 GiB of memory per connection) while the stream stays in
//! sync, and the error each one gets.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use nbd::mem::MemDevice;
use nbd::proto::*;
use nbd::server::{ExportOptions, Server, ServerConfig, listener};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Negotiates export "" with NBD_OPT_GO, no structured replies.
fn connect(path: &std::path::Path) -> UnixStream {
    let mut s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut greet = [0u8; 18];
    s.read_exact(&mut greet).expect("greeting");
    s.write_all(&3u32.to_be_bytes()).expect("flags");
    let mut payload = 0u32.to_be_bytes().to_vec();
    payload.extend_from_slice(&0u16.to_be_bytes());
    let mut opt = IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&OPT_GO.to_be_bytes());
    opt.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    opt.extend_from_slice(&payload);
    s.write_all(&opt).expect("GO");
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).expect("option reply");
        let ty = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
        let len = u32::from_be_bytes([h[16], h[17], h[18], h[19]]);
        let mut p = vec![0u8; len as usize];
        s.read_exact(&mut p).expect("option reply payload");
        if ty == REP_ACK {
            return s;
        }
        assert_eq!(ty, REP_INFO, "GO failed");
    }
}

fn request(cmd: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&cmd.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b
}

/// (error, cookie) of a simple reply.
fn reply(s: &mut UnixStream) -> (u32, u64) {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).expect("reply");
    assert_eq!(
        u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
        SIMPLE_REPLY_MAGIC
    );
    let err = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let mut c = [0u8; 8];
    c.copy_from_slice(&h[8..16]);
    (err, u64::from_be_bytes(c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_write_payloads_are_dropped_not_buffered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("s.sock");
    let server = Server::new(ServerConfig::default()).expect("server");
    server.spawn_listener(listener::bind_unix(&sock, 0o600).expect("bind"));
    server
        .add_export("", Arc::new(MemDevice::new(SIZE)), ExportOptions::default())
        .expect("add");

    let sock2 = sock.clone();
    tokio::task::spawn_blocking(move || {
        // A WRITE declaring almost 4 GiB: refused (longer than 32 MiB). 512 MiB of its
        // payload must not grow the server's memory by anything like that.
        let mut s = connect(&sock2);
        let before = rss_kib();
        s.write_all(&request(CMD_WRITE, 1, 0, 0xFFFF_FE00))
            .expect("header");
        let chunk = vec![0xABu8; MIB as usize];
        for _ in 0..512 {
            s.write_all(&chunk).expect("payload");
        }
        // a READ round trip on another connection makes sure the server has consumed
        // what was sent so far (same runtime, fair scheduling) before measuring
        let mut t = connect(&sock2);
        t.write_all(&request(CMD_READ, 2, 0, 4096)).expect("read");
        assert_eq!(reply(&mut t), (0, 2));
        std::thread::sleep(Duration::from_millis(200));
        let grown = rss_kib().saturating_sub(before);
        assert!(
            grown < 128 * 1024,
            "server memory grew by {grown} KiB while dropping a refused payload"
        );
        drop(s);

        // Refused WRITEs of every kind, each followed by its payload: the right
        // error, and the stream stays in sync (the next READ is answered).
        let mut s = connect(&sock2);
        let cases: [(u64, u32, u32); 3] = [
            (0, 48 << 20, errno::EINVAL), // longer than the maximum block size
            (SIZE, 4096, errno::ENOSPC),  // past the end
            (100, 4096, errno::EINVAL),   // unaligned
        ];
        for (i, (off, len, want)) in cases.into_iter().enumerate() {
            let cookie = 10 + i as u64;
            s.write_all(&request(CMD_WRITE, cookie, off, len))
                .expect("header");
            let payload = vec![0xEEu8; len as usize];
            s.write_all(&payload).expect("payload");
            assert_eq!(reply(&mut s), (want, cookie), "case {i}");
            s.write_all(&request(CMD_READ, 99, 0, 512)).expect("read");
            assert_eq!(reply(&mut s), (0, 99), "case {i}: stream out of sync");
            let mut data = [0u8; 512];
            s.read_exact(&mut data).expect("read data");
            assert!(data.iter().all(|b| *b == 0), "case {i}: payload landed");
        }
    })
    .await
    .expect("client");
    server.shutdown();
}

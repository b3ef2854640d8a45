//! raft-rs logs through `slog`; this drain turns each record into a `tracing` event with
//! target `raft`, so `RUST_LOG=raft=warn` filters it like any other module. The record's
//! and the logger's key-values (raft-rs adds `raft_id`) travel in the field `kv`.

use std::fmt::{self, Write as _};

use slog::{Drain, KV, Level, OwnedKVList, Record};

/// A `slog::Drain` that forwards to `tracing`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingDrain;

/// A slog logger writing through [`TracingDrain`].
pub fn raft_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        // Writing into a String cannot fail.
        let _ = write!(self.0, "{key}={val}");
        Ok(())
    }
}

fn kv_text(record: &Record<'_>, values: &OwnedKVList) -> String {
    let mut s = KvText(String::new());
    // Serialising into a String cannot fail; a failing KV impl only loses its own text.
    let _ = record.kv().serialize(record, &mut s);
    let _ = values.serialize(record, &mut s);
    s.0
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        macro_rules! emit {
            ($lvl:expr, $mac:ident) => {
                if tracing::enabled!(target: "raft", $lvl) {
                    let kv = kv_text(record, values);
                    tracing::$mac!(target: "raft", kv = %kv, "{}", record.msg());
                }
            };
        }
        match record.level() {
            Level::Critical | Level::Error => emit!(tracing::Level::ERROR, error),
            Level::Warning => emit!(tracing::Level::WARN, warn),
            Level::Info => emit!(tracing::Level::INFO, info),
            Level::Debug => emit!(tracing::Level::DEBUG, debug),
            Level::Trace => emit!(tracing::Level::TRACE, trace),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_become_tracing_events_with_target_raft() {
        let buf = Buf::default();
        let b2 = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_env_filter("raft=info")
            .with_writer(move || b2.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, || {
            let log = raft_logger().new(slog::o!("raft_id" => 7));
            slog::info!(log, "became leader at term {}", 3; "term" => 3);
            slog::debug!(log, "filtered out");
        });
        let out = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        assert!(out.contains("INFO raft: became leader at term 3"), "{out}");
        assert!(out.contains("term=3"), "{out}");
        assert!(out.contains("raft_id=7"), "{out}");
        assert!(!out.contains("filtered out"), "{out}");
    }
}

//! A QMP client (the QEMU Machine Protocol, docs/design/080 §2): JSON objects, one per
//! line, over QEMU's Unix socket. After the greeting and `qmp_capabilities`, commands
//! carry an `id` and are answered by `return` or `error` with that id, in any order with
//! the asynchronous `event`s, which go to the receiver `connect` returns. Every command
//! has a deadline; a connection that fails or closes fails every command waiting on it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

use crate::sync::lock;

/// Longest line accepted from QEMU (a `query-*` answer of a large VM stays far below).
const MAX_LINE: usize = 16 << 20;
/// Events buffered for a slow consumer; beyond it the oldest are dropped (counted).
const EVENT_BUFFER: usize = 1024;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("QMP: {0}")]
    Protocol(String),
    /// QEMU refused the command.
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP {command}: no answer within {timeout:?}")]
    Timeout { command: String, timeout: Duration },
    #[error("QMP connection closed: {0}")]
    Closed(String),
}

/// An asynchronous event: its name and data.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
}

type Waiters = Arc<Mutex<Result<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>, String>>>;

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    waiters: Waiters,
    next_id: AtomicU64,
    /// QEMU's version from the greeting: (major, minor, micro).
    pub version: (u64, u64, u64),
}

impl Qmp {
    /// Connects to the QMP socket at `path`, reads the greeting and enters command mode.
    pub async fn connect(
        path: &Path,
        timeout: Duration,
    ) -> Result<(Qmp, mpsc::Receiver<QmpEvent>), QmpError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Connect {
                path: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            })?
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (r, w) = stream.into_split();
        let mut lines = BufReader::new(r);
        let greeting = tokio::time::timeout(timeout, read_object(&mut lines))
            .await
            .map_err(|_| QmpError::Protocol(format!("no greeting within {timeout:?}")))??
            .ok_or_else(|| QmpError::Closed("before the greeting".into()))?;
        let version = greeting
            .get("QMP")
            .and_then(|q| q.get("version"))
            .and_then(|v| v.get("qemu"))
            .map(|q| {
                let n = |k: &str| q.get(k).and_then(Value::as_u64).unwrap_or(0);
                (n("major"), n("minor"), n("micro"))
            })
            .ok_or_else(|| QmpError::Protocol(format!("not a QMP greeting: {greeting:?}")))?;
        let waiters: Waiters = Arc::new(Mutex::new(Ok(HashMap::new())));
        let (tx, events) = mpsc::channel(EVENT_BUFFER);
        tokio::spawn(read_loop(lines, waiters.clone(), tx));
        let q = Qmp {
            writer: tokio::sync::Mutex::new(w),
            waiters,
            next_id: AtomicU64::new(1),
            version,
        };
        q.execute("qmp_capabilities", None, timeout).await?;
        Ok((q, events))
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = Map::new();
        msg.insert("execute".into(), Value::String(command.into()));
        if let Some(a) = arguments {
            msg.insert("arguments".into(), a);
        }
        msg.insert("id".into(), json!(id));
        let mut line = Value::Object(msg).to_string();
        line.push('\n');
        let (tx, rx) = oneshot::channel();
        match &mut *lock(&self.waiters) {
            Ok(w) => {
                w.insert(id, tx);
            }
            Err(why) => return Err(QmpError::Closed(why.clone())),
        }
        let sent = {
            let mut w = self.writer.lock().await;
            w.write_all(line.as_bytes()).await
        };
        if let Err(e) = sent {
            self.forget(id);
            return Err(QmpError::Closed(format!("send {command}: {e}")));
        }
        let r = tokio::time::timeout(timeout, rx).await;
        match r {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(QmpError::Command { class, desc, .. }))) => Err(QmpError::Command {
                command: command.into(),
                class,
                desc,
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(QmpError::Closed(format!("while running {command}"))),
            Err(_) => {
                self.forget(id);
                Err(QmpError::Timeout {
                    command: command.into(),
                    timeout,
                })
            }
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(w) = &mut *lock(&self.waiters) {
            w.remove(&id);
        }
    }
}

/// Reads one JSON object line; `None` at the end of the stream.
async fn read_object<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<Option<Map<String, Value>>, QmpError> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut *r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| QmpError::Closed(format!("receive: {e}")))?;
        if n == 0 {
            return Ok(None);
        }
        if buf.len() > MAX_LINE {
            return Err(QmpError::Protocol(format!(
                "a line longer than {MAX_LINE} bytes"
            )));
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return match serde_json::from_slice::<Value>(&buf) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            Ok(other) => Err(QmpError::Protocol(format!("not an object: {other}"))),
            Err(e) => Err(QmpError::Protocol(format!("bad JSON: {e}"))),
        };
    }
}

async fn read_loop<R: tokio::io::AsyncBufRead + Unpin>(
    mut r: R,
    waiters: Waiters,
    events: mpsc::Sender<QmpEvent>,
) {
    let why = loop {
        let m = match read_object(&mut r).await {
            Ok(Some(m)) => m,
            Ok(None) => break "QEMU closed the socket".to_string(),
            Err(e) => break e.to_string(),
        };
        if let Some(name) = m.get("event").and_then(Value::as_str) {
            let ev = QmpEvent {
                name: name.to_string(),
                data: m.get("data").cloned().unwrap_or(Value::Null),
            };
            if events.try_send(ev).is_err() {
                tracing::debug!(event = name, "QMP event dropped (nobody reads events)");
            }
            continue;
        }
        let Some(id) = m.get("id").and_then(Value::as_u64) else {
            let message = Value::Object(m).to_string();
            tracing::debug!(message, "QMP message without id ignored");
            continue;
        };
        let answer = if let Some(v) = m.get("return") {
            Ok(v.clone())
        } else if let Some(e) = m.get("error") {
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            Err(QmpError::Command {
                command: String::new(),
                class: s("class"),
                desc: s("desc"),
            })
        } else {
            Err(QmpError::Protocol(format!(
                "answer without return or error: {}",
                Value::Object(m.clone())
            )))
        };
        let waiter = match &mut *lock(&waiters) {
            Ok(w) => w.remove(&id),
            Err(_) => None,
        };
        if let Some(w) = waiter {
            let _ = w.send(answer);
        }
    };
    let pending = std::mem::replace(&mut *lock(&waiters), Err(why.clone()));
    if let Ok(pending) = pending {
        for (_, w) in pending {
            let _ = w.send(Err(QmpError::Closed(why.clone())));
        }
    }
}

//! Encoding helpers of the state's keys and records: integers big-endian in keys (key
//! order is numeric order), records as JSON.

use meta_store::KvRead;
use serde::{Deserialize, Serialize};

pub(super) fn key(prefix: &[u8], parts: &[u64]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for p in parts {
        k.extend_from_slice(&p.to_be_bytes());
    }
    k
}

pub(super) fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records are plain data and always serialize")
}

pub(super) fn u64_of(what: &str, v: &[u8]) -> Result<u64, String> {
    let a: [u8; 8] = v
        .try_into()
        .map_err(|_| format!("{what}: {} bytes, expected 8", v.len()))?;
    Ok(u64::from_be_bytes(a))
}

pub(super) fn ids_of(what: &str, k: &[u8], prefix: &[u8], n: usize) -> Result<Vec<u64>, String> {
    let rest = &k[prefix.len()..];
    if rest.len() != 8 * n {
        return Err(format!("{what}: key of {} bytes", k.len()));
    }
    rest.chunks(8).map(|c| u64_of(what, c)).collect()
}

pub(super) fn parse<T: for<'de> Deserialize<'de>>(what: &str, v: &[u8]) -> Result<T, String> {
    serde_json::from_slice(v).map_err(|e| format!("{what}: {e}"))
}

/// Visits every key under `prefix`.
pub(super) fn scan_prefix(
    r: &dyn KvRead,
    prefix: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let mut failure = None;
    r.scan(prefix, None, &mut |k, v| {
        if !k.starts_with(prefix) {
            return false;
        }
        match f(k, v) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        }
    })
    .map_err(|e| e.to_string())?;
    failure.map_or(Ok(()), Err)
}

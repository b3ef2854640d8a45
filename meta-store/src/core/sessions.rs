//! The replicated session table that makes retried requests apply at most once.
//!
//! Every proposal carries (origin node, origin incarnation, request id, lowest unanswered
//! request id). An origin re-sends a request when its leader changes or an answer is late;
//! the copies may all reach the log. Applying an entry first consults this table, in log
//! order on every replica (so deterministically): a request id seen before returns the
//! recorded result without applying again; an id below the origin's `lowest` is a late
//! copy of an answered or abandoned request and is ignored. Results are kept only for
//! unanswered ids, and the number of sessions is capped, oldest (by last activity index)
//! evicted first; the caps are constants because every replica must evict identically.
//!
//! Layout in the `sm_sessions` family: `origin(8) incarnation(8) 0x00` holds
//! `lowest(8) last_index(8)`; `origin(8) incarnation(8) 0x01 request_id(8)` holds a result.

use std::collections::BTreeMap;

use crate::engine::{Cf, KvEngine, WriteBatch};
use crate::error::StoreError;

/// Sessions kept in total.
pub const MAX_SESSIONS: usize = 1_024;
/// Sessions (incarnations) kept per origin node.
pub const MAX_SESSIONS_PER_NODE: usize = 4;
/// Results kept per session; beyond it the oldest is forgotten (and late copies of it
/// are ignored).
pub const MAX_RESULTS_PER_SESSION: usize = 65_536;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Session {
    lowest: u64,
    last_index: u64,
    results: BTreeMap<u64, Vec<u8>>,
}

/// What the table knows about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// First time: apply it.
    New,
    /// Applied before; its recorded result, if still kept.
    Duplicate(Option<Vec<u8>>),
}

/// The session table (in memory, mirrored in the `sm_sessions` family).
#[derive(Debug, Default)]
pub struct Sessions {
    map: BTreeMap<(u64, u64), Session>,
}

fn prefix(origin: u64, inc: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.extend_from_slice(&origin.to_be_bytes());
    k.extend_from_slice(&inc.to_be_bytes());
    k
}

fn meta_key(origin: u64, inc: u64) -> Vec<u8> {
    let mut k = prefix(origin, inc);
    k.push(0);
    k
}

fn result_key(origin: u64, inc: u64, rid: u64) -> Vec<u8> {
    let mut k = prefix(origin, inc);
    k.push(1);
    k.extend_from_slice(&rid.to_be_bytes());
    k
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl Sessions {
    /// Loads the table from the engine.
    pub fn load<E: KvEngine>(engine: &E) -> Result<Self, StoreError> {
        let mut map: BTreeMap<(u64, u64), Session> = BTreeMap::new();
        let mut bad = None;
        engine.scan(Cf::Sessions, &[], None, &mut |k, v| {
            match (k.len(), k.get(16)) {
                (17, Some(0)) if v.len() == 16 => {
                    let s = map.entry((u64_at(k, 0), u64_at(k, 8))).or_default();
                    s.lowest = u64_at(v, 0);
                    s.last_index = u64_at(v, 8);
                }
                (25, Some(1)) => {
                    map.entry((u64_at(k, 0), u64_at(k, 8)))
                        .or_default()
                        .results
                        .insert(u64_at(k, 17), v.to_vec());
                }
                _ => {
                    bad = Some(k.to_vec());
                    return false;
                }
            }
            true
        })?;
        if let Some(k) = bad {
            return Err(StoreError::corrupt(
                "session table",
                format!("record {k:02x?}"),
            ));
        }
        Ok(Sessions { map })
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Registers the entry at `index` for request `rid` of (`origin`, `inc`) and says
    /// whether it must be applied. Updates go into `batch`.
    pub fn begin(
        &mut self,
        origin: u64,
        inc: u64,
        rid: u64,
        lowest: u64,
        index: u64,
        batch: &mut WriteBatch,
    ) -> Seen {
        if !self.map.contains_key(&(origin, inc)) {
            self.make_room(origin, batch);
        }
        let s = self.map.entry((origin, inc)).or_default();
        s.last_index = index;
        if lowest > s.lowest {
            s.lowest = lowest;
            s.results = s.results.split_off(&lowest);
            batch.delete_range(
                Cf::Sessions,
                result_key(origin, inc, 0),
                result_key(origin, inc, lowest),
            );
        }
        let mut meta = s.lowest.to_be_bytes().to_vec();
        meta.extend_from_slice(&s.last_index.to_be_bytes());
        batch.put(Cf::Sessions, meta_key(origin, inc), meta);
        if rid < s.lowest {
            Seen::Duplicate(None)
        } else if let Some(r) = s.results.get(&rid) {
            Seen::Duplicate(Some(r.clone()))
        } else {
            Seen::New
        }
    }

    /// Records the result of a newly applied request.
    pub fn record(
        &mut self,
        origin: u64,
        inc: u64,
        rid: u64,
        result: &[u8],
        batch: &mut WriteBatch,
    ) {
        let Some(s) = self.map.get_mut(&(origin, inc)) else {
            return;
        };
        if rid < s.lowest {
            return;
        }
        s.results.insert(rid, result.to_vec());
        batch.put(Cf::Sessions, result_key(origin, inc, rid), result.to_vec());
        if s.results.len() > MAX_RESULTS_PER_SESSION
            && let Some((first, _)) = s.results.pop_first()
        {
            s.lowest = first + 1;
            batch.delete(Cf::Sessions, result_key(origin, inc, first));
            let mut meta = s.lowest.to_be_bytes().to_vec();
            meta.extend_from_slice(&s.last_index.to_be_bytes());
            batch.put(Cf::Sessions, meta_key(origin, inc), meta);
        }
    }

    fn make_room(&mut self, origin: u64, batch: &mut WriteBatch) {
        let oldest_of = |it: &mut dyn Iterator<Item = (&(u64, u64), &Session)>| {
            it.min_by_key(|(k, s)| (s.last_index, **k)).map(|(k, _)| *k)
        };
        let same = self.map.keys().filter(|k| k.0 == origin).count();
        if same >= MAX_SESSIONS_PER_NODE
            && let Some(k) = oldest_of(&mut self.map.iter().filter(|(k, _)| k.0 == origin))
        {
            self.evict(k, batch);
        }
        if self.map.len() >= MAX_SESSIONS
            && let Some(k) = oldest_of(&mut self.map.iter())
        {
            self.evict(k, batch);
        }
    }

    fn evict(&mut self, key: (u64, u64), batch: &mut WriteBatch) {
        self.map.remove(&key);
        let mut end = prefix(key.0, key.1);
        end.push(2);
        batch.delete_range(Cf::Sessions, meta_key(key.0, key.1), end);
    }
}

#[cfg(test)]
mod tests;

//! A replicated key-value map: the state machine of the store's tests, simulation and
//! benchmark, and a worked example of the [`StateMachine`] contract (persist through
//! `KvWrite`, rebuild in `load`, deterministic hash).
//!
//! It also keeps a hash chain over every applied command, so replicas can be compared at
//! equal applied index, and counts puts that overwrote an existing key (tests that use
//! unique keys expect zero: a non-zero count means a command was applied twice).

use std::collections::BTreeMap;

use bytes::Buf;

use crate::core::Fnv;
use crate::error::StoreError;
use crate::state_machine::{KvRead, KvWrite, StateMachine};

const DATA: &[u8] = b"d/";
const CHAIN: &[u8] = b"m/chain";
const OVERWRITES: &[u8] = b"m/overwrites";

/// Commands of [`KvStateMachine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCommand {
    /// Set a key.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Remove a key.
    Delete { key: Vec<u8> },
}

impl KvCommand {
    /// Binary form: tag byte, key length (u32 BE), key, value.
    pub fn encode(&self) -> Vec<u8> {
        let (tag, key, value): (u8, &[u8], &[u8]) = match self {
            KvCommand::Put { key, value } => (1, key, value),
            KvCommand::Delete { key } => (2, key, &[]),
        };
        let mut v = Vec::with_capacity(5 + key.len() + value.len());
        v.push(tag);
        v.extend_from_slice(&(key.len() as u32).to_be_bytes());
        v.extend_from_slice(key);
        v.extend_from_slice(value);
        v
    }

    /// Parses [`KvCommand::encode`].
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < 5 {
            return Err(format!("command of {} bytes is too short", b.len()));
        }
        let mut l = [0u8; 4];
        l.copy_from_slice(&b[1..5]);
        let klen = u32::from_be_bytes(l) as usize;
        let rest = &b[5..];
        if klen > rest.len() {
            return Err(format!(
                "key length {klen} exceeds the {} bytes left",
                rest.len()
            ));
        }
        let (key, value) = rest.split_at(klen);
        match b[0] {
            1 => Ok(KvCommand::Put {
                key: key.to_vec(),
                value: value.to_vec(),
            }),
            2 if value.is_empty() => Ok(KvCommand::Delete { key: key.to_vec() }),
            t => Err(format!("unknown command tag {t} or trailing bytes")),
        }
    }
}

/// Apply result: `b"ok"` plus the previous value's presence, or `b"err:"` and a message.
pub fn result_ok(existed: bool) -> Vec<u8> {
    if existed {
        b"ok:existed".to_vec()
    } else {
        b"ok:new".to_vec()
    }
}

/// A replicated map with a hash chain over applied commands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvStateMachine {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    chain: u64,
    chain_index: u64,
    overwrites: u64,
}

fn data_key(k: &[u8]) -> Vec<u8> {
    let mut v = DATA.to_vec();
    v.extend_from_slice(k);
    v
}

impl KvStateMachine {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The hash chain over applied commands and the index it covers.
    pub fn chain(&self) -> (u64, u64) {
        (self.chain_index, self.chain)
    }

    /// Puts that replaced an existing key.
    pub fn overwrites(&self) -> u64 {
        self.overwrites
    }

    /// Every key and value.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.map.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }
}

impl StateMachine for KvStateMachine {
    fn apply(&mut self, index: u64, command: &[u8], w: &mut dyn KvWrite) -> Vec<u8> {
        let mut h = Fnv::new();
        h.write(&self.chain.to_be_bytes());
        h.write(&index.to_be_bytes());
        h.write(command);
        self.chain = h.finish();
        self.chain_index = index;
        let mut chain = index.to_be_bytes().to_vec();
        chain.extend_from_slice(&self.chain.to_be_bytes());
        w.put(CHAIN, &chain);
        match KvCommand::decode(command) {
            Ok(KvCommand::Put { key, value }) => {
                w.put(&data_key(&key), &value);
                let existed = self.map.insert(key, value).is_some();
                if existed {
                    self.overwrites += 1;
                    w.put(OVERWRITES, &self.overwrites.to_be_bytes());
                }
                result_ok(existed)
            }
            Ok(KvCommand::Delete { key }) => {
                w.delete(&data_key(&key));
                result_ok(self.map.remove(&key).is_some())
            }
            Err(e) => format!("err:{e}").into_bytes(),
        }
    }

    fn load(&mut self, r: &dyn KvRead) -> Result<(), StoreError> {
        *self = KvStateMachine::default();
        let mut end = DATA.to_vec();
        end.push(0xff);
        let mut map = BTreeMap::new();
        r.scan(DATA, None, &mut |k, v| {
            if !k.starts_with(DATA) {
                return false;
            }
            map.insert(k[DATA.len()..].to_vec(), v.to_vec());
            true
        })?;
        self.map = map;
        if let Some(v) = r.get(CHAIN)? {
            if v.len() != 16 {
                return Err(StoreError::StateMachine(
                    "chain record is not 16 bytes".into(),
                ));
            }
            let mut v = v.as_slice();
            self.chain_index = v.get_u64();
            self.chain = v.get_u64();
        }
        if let Some(v) = r.get(OVERWRITES)? {
            let a: [u8; 8] = v
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::StateMachine("overwrite count is not 8 bytes".into()))?;
            self.overwrites = u64::from_be_bytes(a);
        }
        Ok(())
    }

    fn query(&self, key: &[u8]) -> Vec<u8> {
        match self.map.get(key) {
            Some(v) => {
                let mut out = vec![1];
                out.extend_from_slice(v);
                out
            }
            None => vec![0],
        }
    }

    fn state_hash(&self) -> Option<u64> {
        let mut h = Fnv::new();
        for (k, v) in &self.map {
            h.write(&(k.len() as u64).to_be_bytes());
            h.write(k);
            h.write(&(v.len() as u64).to_be_bytes());
            h.write(v);
        }
        h.write(&self.chain.to_be_bytes());
        h.write(&self.chain_index.to_be_bytes());
        h.write(&self.overwrites.to_be_bytes());
        Some(h.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Cf, KvEngine, MemEngine, WriteBatch};
    use crate::state_machine::{SmReader, SmWriter};

    #[test]
    fn commands_round_trip_and_reject_garbage() {
        for c in [
            KvCommand::Put {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
            },
            KvCommand::Delete { key: b"".to_vec() },
        ] {
            assert_eq!(KvCommand::decode(&c.encode()).expect("decode"), c);
        }
        assert!(KvCommand::decode(&[1, 0, 0]).is_err());
        assert!(KvCommand::decode(&[1, 0, 0, 0, 9, 1]).is_err());
        assert!(KvCommand::decode(&[7, 0, 0, 0, 0]).is_err());
        assert!(KvCommand::decode(&[2, 0, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn apply_persist_load_gives_the_same_state() {
        let e = MemEngine::new();
        let mut sm = KvStateMachine::new();
        let mut b = WriteBatch::new();
        let cmds = [
            KvCommand::Put {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
            },
            KvCommand::Put {
                key: b"a".to_vec(),
                value: b"2".to_vec(),
            },
            KvCommand::Put {
                key: b"b".to_vec(),
                value: b"3".to_vec(),
            },
            KvCommand::Delete { key: b"b".to_vec() },
        ];
        for (i, c) in cmds.iter().enumerate() {
            let r = sm.apply(10 + i as u64, &c.encode(), &mut SmWriter { batch: &mut b });
            assert!(r.starts_with(b"ok"));
        }
        assert_eq!(
            sm.apply(20, b"xx", &mut SmWriter { batch: &mut b })[..4],
            *b"err:"
        );
        e.write(b, true).expect("write");
        let mut loaded = KvStateMachine::new();
        loaded.load(&SmReader { engine: &e }).expect("load");
        assert_eq!(loaded, sm);
        assert_eq!(loaded.state_hash(), sm.state_hash());
        assert_eq!(sm.overwrites(), 1);
        assert_eq!(sm.query(b"a"), b"\x012".to_vec());
        assert_eq!(sm.query(b"b"), vec![0]);
        assert_eq!(sm.chain().0, 20);
        assert!(e.get(Cf::Sm, b"d/a").expect("get").is_some());
    }
}

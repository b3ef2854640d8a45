//! An in-memory key-value store for the state machine's tests.

use std::collections::BTreeMap;

use meta_store::engine::Visit;
use meta_store::{KvRead, KvWrite, StoreError};

/// An in-memory stand-in for the state-machine column family.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemKv(pub BTreeMap<Vec<u8>, Vec<u8>>);

impl KvWrite for MemKv {
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.0.insert(key.to_vec(), value.to_vec());
    }
    fn delete(&mut self, key: &[u8]) {
        self.0.remove(key);
    }
}

impl KvRead for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.get(key).cloned())
    }
    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        for (k, v) in self.0.range(start.to_vec()..) {
            if end.is_some_and(|e| k.as_slice() >= e) || !visit(k, v) {
                break;
            }
        }
        Ok(())
    }
}

//! The RocksDB engine: one database, one column family per [`Cf`], writes through one
//! `WriteBatch` with `sync` set when durability is required.

use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteOptions};

use super::{Cf, KvEngine, KvPairOwned, Op, Visit, WriteBatch};
use crate::error::StoreError;

/// RocksDB-backed engine.
pub struct RocksEngine {
    db: DB,
    path: PathBuf,
}

impl std::fmt::Debug for RocksEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksEngine")
            .field("path", &self.path)
            .finish()
    }
}

impl RocksEngine {
    /// Opens (creating when missing) the database at `path` with every column family.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // The metadata store is small: keep RocksDB's own resource use modest.
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        let cfs = Cf::ALL.map(|cf| ColumnFamilyDescriptor::new(cf.name(), Options::default()));
        let db = DB::open_cf_descriptors(&opts, &path, cfs)?;
        Ok(RocksEngine { db, path })
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cf(&self, cf: Cf) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| StoreError::Invalid(format!("column family {} missing", cf.name())))
    }
}

impl KvEngine for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf)?, key)?)
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let iter = self
            .db
            .iterator_cf(self.cf(cf)?, IteratorMode::From(start, Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            if end.is_some_and(|end| &*k >= end) {
                break;
            }
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn last(&self, cf: Cf) -> Result<Option<KvPairOwned>, StoreError> {
        let mut iter = self.db.iterator_cf(self.cf(cf)?, IteratorMode::End);
        match iter.next() {
            Some(item) => {
                let (k, v) = item?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut wb = rocksdb::WriteBatch::default();
        for op in batch.ops {
            match op {
                Op::Put(cf, k, v) => wb.put_cf(self.cf(cf)?, k, v),
                Op::Delete(cf, k) => wb.delete_cf(self.cf(cf)?, k),
                Op::DeleteRange(cf, s, e) => wb.delete_range_cf(self.cf(cf)?, s, e),
            }
        }
        if sync {
            // A slow metadata disk, for fault tests (off unless FAILPOINTS names it).
            fail::fail_point!("meta.fsync");
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let e = RocksEngine::open(dir.path()).expect("open");
            crate::engine::conformance::check(&e);
        }
        let e = RocksEngine::open(dir.path()).expect("reopen");
        assert_eq!(e.get(Cf::Sm, b"a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(
            e.get(Cf::Log, &3u64.to_be_bytes()).expect("get"),
            Some(vec![33])
        );
    }
}

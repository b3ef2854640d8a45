//! The catalog's VHD records with the indexes derived from them (id by name, children of
//! a parent, extents mapped) and the next VHD id. Every change goes through `insert`,
//! `replace`, `remove` or `take_id`, which keep the indexes and write the record's keys
//! (`h/<vhd>`, `c/next_vhd`); `load` rebuilds the table from those keys.

use std::collections::{BTreeMap, BTreeSet};

use csv_api::VhdId;
use meta_store::{KvRead, KvWrite};

use super::keys::{ids_of, json, key, parse, scan_prefix, u64_of};
use super::types::VhdRecord;

pub(super) const NEXT_VHD: &[u8] = b"c/next_vhd";
pub(super) const VHD: &[u8] = b"h/";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdTable {
    records: BTreeMap<VhdId, VhdRecord>,
    next: u64,
    names: BTreeMap<String, VhdId>,
    children: BTreeMap<VhdId, BTreeSet<VhdId>>,
    mapped: u64,
}

impl Default for VhdTable {
    fn default() -> Self {
        VhdTable {
            records: BTreeMap::new(),
            next: 1,
            names: BTreeMap::new(),
            children: BTreeMap::new(),
            mapped: 0,
        }
    }
}

impl VhdTable {
    pub fn get(&self, id: VhdId) -> Option<&VhdRecord> {
        self.records.get(&id)
    }

    pub fn by_name(&self, name: &str) -> Option<&VhdRecord> {
        self.names.get(name).and_then(|id| self.records.get(id))
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Every record in id order.
    pub fn records(&self) -> impl Iterator<Item = &VhdRecord> {
        self.records.values()
    }

    /// The records with an id above `after`, in id order.
    pub fn after(&self, after: u64) -> impl Iterator<Item = &VhdRecord> {
        self.records
            .range(VhdId(after.saturating_add(1))..)
            .map(|(_, v)| v)
    }

    /// How many VHDs name `id` as their parent.
    pub fn children(&self, id: VhdId) -> usize {
        self.children.get(&id).map_or(0, BTreeSet::len)
    }

    /// Extents mapped by every VHD.
    pub fn mapped(&self) -> u64 {
        self.mapped
    }

    /// The id the next VHD gets.
    pub fn next_id(&self) -> u64 {
        self.next
    }

    /// Takes the next VHD id.
    pub(super) fn take_id(&mut self, w: &mut dyn KvWrite) -> VhdId {
        let id = VhdId(self.next);
        self.next += 1;
        w.put(NEXT_VHD, &self.next.to_be_bytes());
        id
    }

    fn index(&mut self, rec: &VhdRecord) {
        self.names.insert(rec.name.clone(), rec.id);
        if let Some(p) = rec.parent {
            self.children.entry(p).or_default().insert(rec.id);
        }
        self.mapped += rec.extents();
    }

    /// Adds a new record (its id taken, its name free).
    pub(super) fn insert(&mut self, rec: VhdRecord, w: &mut dyn KvWrite) {
        debug_assert!(!self.records.contains_key(&rec.id) && !self.names.contains_key(&rec.name));
        self.index(&rec);
        w.put(&key(VHD, &[rec.id.0]), &json(&rec));
        self.records.insert(rec.id, rec);
    }

    /// Replaces a record by a new version of it (same id, name and parent).
    pub(super) fn replace(&mut self, rec: VhdRecord, w: &mut dyn KvWrite) {
        if let Some(old) = self.records.get(&rec.id) {
            debug_assert!(old.name == rec.name && old.parent == rec.parent);
            self.mapped = self.mapped - old.extents() + rec.extents();
        }
        w.put(&key(VHD, &[rec.id.0]), &json(&rec));
        self.records.insert(rec.id, rec);
    }

    /// Removes a record.
    pub(super) fn remove(&mut self, id: VhdId, w: &mut dyn KvWrite) -> Option<VhdRecord> {
        let rec = self.records.remove(&id)?;
        self.mapped -= rec.extents();
        self.names.remove(&rec.name);
        if let Some(p) = rec.parent
            && let Some(k) = self.children.get_mut(&p)
        {
            k.remove(&id);
            if k.is_empty() {
                self.children.remove(&p);
            }
        }
        w.delete(&key(VHD, &[id.0]));
        Some(rec)
    }

    /// Adds restored records (a recovered catalog), the next id past every one of them.
    pub(super) fn restore(&mut self, records: Vec<VhdRecord>, w: &mut dyn KvWrite) {
        let mut next = self.next;
        for rec in records {
            next = next.max(rec.id.0 + 1);
            self.insert(rec, w);
        }
        self.next = next;
        w.put(NEXT_VHD, &next.to_be_bytes());
    }

    /// The table as persisted under `r`.
    pub(super) fn load(r: &dyn KvRead) -> Result<VhdTable, String> {
        let mut t = VhdTable::default();
        if let Some(v) = r.get(NEXT_VHD).map_err(|e| e.to_string())? {
            t.next = u64_of("next vhd", &v)?;
        }
        scan_prefix(r, VHD, |k, v| {
            let id = ids_of("vhd key", k, VHD, 1)?[0];
            let rec: VhdRecord = parse("vhd", v)?;
            if rec.id.0 != id || rec.id.0 >= t.next {
                return Err(format!(
                    "vhd record {id} names {} (next {})",
                    rec.id, t.next
                ));
            }
            if t.names.contains_key(&rec.name) {
                return Err(format!("two VHDs named {:?}", rec.name));
            }
            t.index(&rec);
            t.records.insert(rec.id, rec);
            Ok(())
        })?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::runs::Run;
    use crate::state::test_kv::MemKv as Kv;
    use crate::state::types::{VhdKind, VhdState};

    fn rec(id: VhdId, name: &str, parent: Option<VhdId>, extents: u64) -> VhdRecord {
        VhdRecord {
            id,
            name: name.into(),
            kind: if parent.is_some() {
                VhdKind::Differencing
            } else {
                VhdKind::Dynamic
            },
            virtual_size: 1 << 30,
            parent,
            runs: vec![Run {
                start: 100 * id.0,
                count: extents,
            }],
            length: 0,
            state: VhdState::Ready,
            created_index: 1,
        }
    }

    #[test]
    fn indexes_follow_every_change_and_load_rebuilds_them() {
        let mut kv = Kv::default();
        let mut t = VhdTable::default();
        let base = t.take_id(&mut kv);
        t.insert(rec(base, "base", None, 3), &mut kv);
        let child = t.take_id(&mut kv);
        t.insert(rec(child, "child", Some(base), 2), &mut kv);
        assert_eq!((t.children(base), t.mapped()), (1, 5));
        assert_eq!(t.by_name("child").map(|r| r.id), Some(child));
        t.replace(rec(child, "child", Some(base), 4), &mut kv);
        assert_eq!(t.mapped(), 7);
        assert_eq!(VhdTable::load(&kv), Ok(t.clone()));
        let gone = t.remove(child, &mut kv).map(|r| r.id);
        assert_eq!(gone, Some(child));
        assert_eq!(
            (t.children(base), t.mapped(), t.by_name("child")),
            (0, 3, None)
        );
        assert_eq!(VhdTable::load(&kv), Ok(t.clone()));
        assert_eq!(t.after(0).count(), 1);
        assert_eq!(t.next_id(), 3);
    }
}

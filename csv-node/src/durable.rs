//! Files the node replaces whole: written to a temporary file in the same directory,
//! synced, renamed over the old one, and the directory synced, so a crash leaves the old
//! content or the new one.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Replaces `dir/name` with `bytes` atomically and durably (blocking: it syncs).
pub fn replace(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(name);
    let mut f = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.as_file().sync_all())
        .with_context(|| format!("write {}", f.path().display()))?;
    f.persist(&path)
        .map_err(|e| e.error)
        .with_context(|| format!("rename to {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn replace_leaves_only_the_new_content() {
        let d = tempfile::tempdir().expect("tempdir");
        super::replace(d.path(), "f", b"one").expect("first");
        super::replace(d.path(), "f", b"two").expect("second");
        assert_eq!(std::fs::read(d.path().join("f")).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path()).expect("dir").collect();
        assert_eq!(names.len(), 1, "no temporary file left behind");
    }
}

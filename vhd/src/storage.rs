//! The byte store under an image: a trait (positional reads/writes, flush, length) with a
//! local-file implementation (pread/pwrite, fdatasync, punch hole) and an in-memory one.
//! The cluster volume implements the same trait over LUN extents.

use rustix::fs::FallocateFlags;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::RwLock;

/// Positional byte storage. Implementations are shared between threads.
// `len` is the store's size in bytes (the API the cluster volume implements); an
// `is_empty` would mean nothing to callers.
#[allow(clippy::len_without_is_empty)]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Fills `buf` entirely; bytes past the end read as zero.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf`, growing the storage when it ends past the current length
    /// (the gap reads as zero).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (fdatasync for files).
    fn flush(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends (with zeros).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Hint that a range is no longer needed (punch hole for files); content after it is
    /// unspecified, so callers only discard space nothing points at.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
}

/// A local file.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
}

impl FileStorage {
    pub fn new(file: File) -> FileStorage {
        FileStorage { file }
    }

    pub fn open(path: &Path, read_only: bool) -> io::Result<FileStorage> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)?;
        Ok(FileStorage { file })
    }

    /// Creates (or truncates) a file for a new image.
    pub fn create(path: &Path) -> io::Result<FileStorage> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(FileStorage { file })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Allocates `len` bytes at `offset` on disk (fallocate mode 0).
    pub fn preallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        fallocate(&self.file, FallocateFlags::empty(), offset, len)
    }
}

fn fallocate(file: &File, mode: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
    // The kernel takes signed offsets: larger ones are refused before the call.
    if i64::try_from(offset).is_err() || i64::try_from(len).is_err() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    rustix::fs::fallocate(file, mode, offset, len).map_err(io::Error::from)
}

impl Storage for FileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) => {
                Ok(())
            }
            other => other,
        }
    }
}

/// An in-memory store (tests, fuzzing, staging).
#[derive(Debug, Default)]
pub struct MemStorage {
    data: RwLock<Vec<u8>>,
}

/// Largest in-memory store (guards against a bad offset allocating the machine away).
pub const MEM_STORAGE_LIMIT: u64 = 16 << 30;

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    pub fn from_vec(data: Vec<u8>) -> MemStorage {
        MemStorage {
            data: RwLock::new(data),
        }
    }

    /// A copy of the current bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn too_big() -> io::Error {
    io::Error::new(
        io::ErrorKind::OutOfMemory,
        "in-memory storage limit exceeded",
    )
}

impl Storage for MemStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.data.read().unwrap_or_else(|e| e.into_inner());
        let len = d.len() as u64;
        let start = offset.min(len) as usize;
        let end = offset.saturating_add(buf.len() as u64).min(len) as usize;
        let n = end - start;
        buf[..n].copy_from_slice(&d[start..end]);
        buf[n..].fill(0);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).ok_or_else(too_big)?;
        if end > MEM_STORAGE_LIMIT {
            return Err(too_big());
        }
        let mut d = self.data.write().unwrap_or_else(|e| e.into_inner());
        if (d.len() as u64) < end {
            d.resize(end as usize, 0);
        }
        d[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.data.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > MEM_STORAGE_LIMIT {
            return Err(too_big());
        }
        self.data
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .resize(len as usize, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_reads_zero_past_end_and_grows() {
        let m = MemStorage::new();
        m.write_at(b"abc", 10).unwrap();
        assert_eq!(m.len().unwrap(), 13);
        let mut b = [1u8; 8];
        m.read_at(&mut b, 9).unwrap();
        assert_eq!(&b, b"\0abc\0\0\0\0");
    }

    #[test]
    fn file_reads_zero_past_end() {
        let dir = tempfile::tempdir().unwrap();
        let f = FileStorage::create(&dir.path().join("x")).unwrap();
        f.write_at(b"xyz", 0).unwrap();
        let mut b = [9u8; 6];
        f.read_at(&mut b, 1).unwrap();
        assert_eq!(&b, b"yz\0\0\0\0");
        f.discard(0, 4096).unwrap();
    }
}

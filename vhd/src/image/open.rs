//! Opening an image: footer (trailing, or the copy at 0 after a torn allocation),
//! dynamic header, BAT and differencing bitmaps, each validated against the file before
//! use; then the parent chain (bounded depth, loop detection, UUID check).

use super::bitmaps::Bitmaps;
use super::{AllocState, DATA_ALIGN, Dyn, Image};
use crate::bat::{self, UNALLOCATED};
use crate::chain::{ChildRef, MAX_CHAIN_DEPTH, ParentHints, ParentResolver, PathResolver};
use crate::error::{Error, FormatError, Result};
use crate::footer::{DiskType, FOOTER_SIZE, Footer};
use crate::header::{DynamicHeader, HEADER_SIZE, bitmap_size};
use crate::locator::decode_path;
use crate::storage::{FileStorage, Storage};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex};

/// How to open an image file.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    pub read_only: bool,
    /// Parent of a differencing image, overriding its locators.
    pub parent: Option<PathBuf>,
}

#[derive(Default)]
struct Visited {
    identities: Vec<String>,
    uuids: Vec<uuid::Uuid>,
}

impl Image {
    /// Opens an image file (and, for differencing images, its parents read-only). A
    /// read-write open takes an exclusive lock on the file (flock) held until the image
    /// is dropped: a second read-write open fails with [`Error::Locked`].
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Image> {
        let canon = std::fs::canonicalize(path).map_err(|e| Error::Path(path.to_path_buf(), e))?;
        let fs =
            FileStorage::open(&canon, opts.read_only).map_err(|e| Error::Path(canon.clone(), e))?;
        if !opts.read_only {
            // One writer per file: a second read-write open (a second export of the same
            // file, a compact while it is exported) would allocate blocks over the first
            // one's. Readers do not lock (info, check, parents of a chain).
            match fs.file().try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Err(Error::Locked(canon)),
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::Path(canon, e)),
            }
        }
        let resolver = PathResolver {
            explicit: opts.parent.clone(),
        };
        let identity = canon.display().to_string();
        open_chain(
            Arc::new(fs),
            opts.read_only,
            identity,
            Some(canon),
            &resolver,
            0,
            &mut Visited::default(),
        )
    }

    /// Opens an image on any storage; parents come from `resolver` (opened read-only).
    pub fn open_storage(
        storage: Arc<dyn Storage>,
        read_only: bool,
        identity: &str,
        resolver: &dyn ParentResolver,
    ) -> Result<Image> {
        open_chain(
            storage,
            read_only,
            identity.to_string(),
            None,
            resolver,
            0,
            &mut Visited::default(),
        )
    }

    /// What this differencing image says about its parent (`None` for other types).
    pub fn parent_hints(&self) -> Option<ParentHints> {
        let d = self.dynamic.as_ref()?;
        if self.footer.disk_type != DiskType::Differencing {
            return None;
        }
        let len = self.storage.len().ok()?;
        let mut locators = Vec::new();
        for (i, loc) in d.header.locators.iter().enumerate() {
            if !loc.is_used() || loc.validate(i, len).is_err() {
                continue;
            }
            let mut data = vec![0u8; loc.data_length as usize];
            if self.storage.read_at(&mut data, loc.data_offset).is_err() {
                continue;
            }
            if let Ok(p) = decode_path(i, loc.platform_code, &data) {
                locators.push((loc.platform_code, p));
            }
        }
        Some(ParentHints {
            parent_uuid: d.header.parent_uuid,
            parent_timestamp: d.header.parent_timestamp,
            parent_name: d.header.parent_name_string(),
            locators,
        })
    }
}

fn open_chain(
    storage: Arc<dyn Storage>,
    read_only: bool,
    identity: String,
    path: Option<PathBuf>,
    resolver: &dyn ParentResolver,
    depth: usize,
    visited: &mut Visited,
) -> Result<Image> {
    if depth >= MAX_CHAIN_DEPTH {
        return Err(Error::ChainTooDeep(MAX_CHAIN_DEPTH));
    }
    if visited.identities.contains(&identity) {
        return Err(Error::ParentLoop(identity));
    }
    visited.identities.push(identity.clone());
    let mut img = load(storage, read_only, identity, path)?;
    if visited.uuids.contains(&img.footer.uuid) {
        return Err(Error::ParentLoop(format!(
            "{} (unique id {})",
            img.identity, img.footer.uuid
        )));
    }
    visited.uuids.push(img.footer.uuid);
    let Some(hints) = img.parent_hints() else {
        return Ok(img);
    };
    let child = ChildRef {
        identity: &img.identity,
        path: img.path.as_deref(),
        depth,
    };
    let (candidates, tried) = resolver.candidates(child, &hints);
    let mut first_err: Option<Error> = None;
    for c in candidates {
        if visited.identities.contains(&c.identity) {
            first_err.get_or_insert(Error::ParentLoop(c.identity.clone()));
            continue;
        }
        match read_footer(c.storage.as_ref()) {
            Ok(f) if f.uuid == hints.parent_uuid => {
                let parent = open_chain(
                    c.storage,
                    true,
                    c.identity,
                    c.path,
                    resolver,
                    depth + 1,
                    visited,
                )?;
                img.parent = Some(Arc::new(parent));
                return Ok(img);
            }
            Ok(f) => {
                first_err.get_or_insert(Error::ParentUuidMismatch {
                    path: c.identity.clone(),
                    expected: hints.parent_uuid,
                    found: f.uuid,
                });
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| Error::ParentNotFound(tried.join(", "))))
}

/// The footer of a store: trailing, else the copy at 0 of a dynamic/differencing image.
pub(crate) fn read_footer(storage: &dyn Storage) -> Result<Footer> {
    let len = storage.len()?;
    if len < FOOTER_SIZE as u64 {
        return Err(Error::Truncated {
            what: "footer",
            need: FOOTER_SIZE as u64,
            len,
        });
    }
    let mut tail = [0u8; FOOTER_SIZE];
    storage.read_at(&mut tail, len - FOOTER_SIZE as u64)?;
    match Footer::parse(&tail) {
        Ok(f) => Ok(f),
        Err(e) => {
            let mut head = [0u8; FOOTER_SIZE];
            storage.read_at(&mut head, 0)?;
            match Footer::parse(&head) {
                Ok(f) if f.disk_type != DiskType::Fixed => Ok(f),
                _ => Err(e.into()),
            }
        }
    }
}

/// Parses and validates one image without its parent.
pub(crate) fn load(
    storage: Arc<dyn Storage>,
    read_only: bool,
    identity: String,
    path: Option<PathBuf>,
) -> Result<Image> {
    let len = storage.len()?;
    if len < FOOTER_SIZE as u64 {
        return Err(Error::Truncated {
            what: "footer",
            need: FOOTER_SIZE as u64,
            len,
        });
    }
    let mut warnings = Vec::new();
    let mut tail = [0u8; FOOTER_SIZE];
    storage.read_at(&mut tail, len - FOOTER_SIZE as u64)?;
    let mut head = [0u8; FOOTER_SIZE];
    storage.read_at(&mut head, 0)?;
    let (footer, footer_pos, repair) = match Footer::parse(&tail) {
        Ok(f) => (f, len - FOOTER_SIZE as u64, false),
        Err(e) => match Footer::parse(&head) {
            Ok(f) if f.disk_type != DiskType::Fixed => {
                warnings.push(format!(
                    "no valid footer at the end of the file ({e}); using the copy at offset 0 \
                     (an interrupted block allocation leaves this; the space after the last \
                     block is leaked)"
                ));
                (f, len.next_multiple_of(512), true)
            }
            _ => return Err(Error::Format(e)),
        },
    };
    let size = footer.current_size;
    let mut img = Image {
        storage,
        read_only,
        size,
        dynamic: None,
        parent: None,
        identity,
        path,
        warnings,
        flush_lock: Mutex::new(()),
        poisoned: AtomicBool::new(false),
        footer,
    };
    if img.footer.disk_type == DiskType::Fixed {
        if footer_pos < size {
            return Err(Error::Truncated {
                what: "fixed disk data",
                need: size + 512,
                len,
            });
        }
        return Ok(img);
    }
    if !repair {
        match Footer::parse(&head) {
            Ok(f) if f == img.footer => {}
            Ok(_) => img
                .warnings
                .push("footer copy at offset 0 differs from the trailing footer".into()),
            Err(e) => img
                .warnings
                .push(format!("footer copy at offset 0 is invalid: {e}")),
        }
    }
    img.dynamic = Some(load_dynamic(&img, len, footer_pos)?);
    if repair && !read_only {
        let f = img.footer.encode();
        img.storage
            .write_at(&f, footer_pos)
            .map_err(|e| Error::io("rewrite trailing footer", e))?;
        img.storage
            .flush()
            .map_err(|e| Error::io("flush repaired footer", e))?;
        for w in &mut img.warnings {
            if w.starts_with("no valid footer") {
                *w = format!("repaired: {w}; footer rewritten at {footer_pos:#x}");
            }
        }
    }
    Ok(img)
}

fn load_dynamic(img: &Image, len: u64, footer_pos: u64) -> Result<Dyn> {
    let hdr_off = img
        .footer
        .data_offset
        .ok_or(FormatError::BadDataOffset(u64::MAX))?;
    let hdr_end = hdr_off
        .checked_add(HEADER_SIZE as u64)
        .ok_or(FormatError::BadDataOffset(hdr_off))?;
    if hdr_end > len {
        return Err(Error::Truncated {
            what: "dynamic header",
            need: hdr_end,
            len,
        });
    }
    let mut hb = vec![0u8; HEADER_SIZE];
    img.storage.read_at(&mut hb, hdr_off)?;
    let header = DynamicHeader::parse(&hb)?;
    header.check_covers(img.size)?;
    let bat_off = header.table_offset;
    let bat_end = bat_off
        .checked_add(header.bat_bytes())
        .ok_or(FormatError::BadTableOffset(bat_off))?;
    if bat_end > len {
        return Err(Error::Truncated {
            what: "BAT",
            need: bat_end,
            len,
        });
    }
    let overlaps = |s: u64, e: u64, s2: u64, e2: u64| s < e2 && s2 < e;
    if overlaps(bat_off, bat_end, 0, 512)
        || overlaps(bat_off, bat_end, hdr_off, hdr_end)
        || bat_end > footer_pos
    {
        return Err(FormatError::BadTableOffset(bat_off).into());
    }
    let mut meta = vec![
        (0, 512, "footer copy"),
        (hdr_off, hdr_end, "dynamic header"),
        (bat_off, bat_end, "BAT"),
    ];
    let is_diff = img.footer.disk_type == DiskType::Differencing;
    let mut warnings = Vec::new();
    if is_diff {
        for (i, loc) in header.locators.iter().enumerate() {
            if !loc.is_used() {
                continue;
            }
            match loc.validate(i, len) {
                Ok((s, e)) => meta.push((s, e, "parent locator data")),
                Err(e) => warnings.push(e.to_string()),
            }
        }
    }
    let entries = header.max_table_entries;
    let mut raw = vec![0u8; entries as usize * 4];
    img.storage.read_at(&mut raw, bat_off)?;
    let values = bat::parse(&raw, entries)?;
    let block_size = header.block_size;
    let bm_bytes = bitmap_size(block_size);
    let block_span = u64::from(bm_bytes) + u64::from(block_size);
    for (i, &e) in values.iter().enumerate() {
        if e == UNALLOCATED {
            continue;
        }
        let start = u64::from(e) * 512;
        let end = start + block_span;
        if end > footer_pos {
            return Err(Error::BatEntryOutOfRange {
                block: i as u32,
                sector: e,
                end: footer_pos,
            });
        }
        if let Some(&(_, _, what)) = meta.iter().find(|&&(s, me, _)| overlaps(start, end, s, me)) {
            return Err(Error::BatOverlapsMetadata {
                block: i as u32,
                offset: start,
                what,
            });
        }
    }
    let bitmaps = if is_diff {
        let bms = Bitmaps::new(bm_bytes as usize, block_size / 512);
        let mut buf = vec![0u8; bm_bytes as usize];
        for (i, &e) in values.iter().enumerate() {
            if e != UNALLOCATED {
                img.storage.read_at(&mut buf, u64::from(e) * 512)?;
                bms.install(i as u32, buf.clone());
            }
        }
        Some(bms)
    } else {
        None
    };
    if !warnings.is_empty() {
        tracing::warn!(image = %img.identity, ?warnings, "parent locators skipped");
    }
    Ok(Dyn {
        header_offset: hdr_off,
        bat: values.into_iter().map(AtomicU32::new).collect(),
        block_shift: block_size.trailing_zeros(),
        block_size,
        bitmap_bytes: bm_bytes,
        align: DATA_ALIGN.min(u64::from(block_size)),
        alloc: Mutex::new(AllocState { footer_pos }),
        dirty_bat: Mutex::new(BTreeSet::new()),
        bitmaps,
        meta,
        header,
    })
}

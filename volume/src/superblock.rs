//! The volume superblock (docs/design/040 §2, 041 §2): a pure codec with validation and
//! crc32c, plus `format` (backup then primary, refusing to overwrite a volume unless
//! forced) and `read` (primary, else the backup with a warning).
//!
//! Layout of one 4 KiB copy, little-endian: magic `CSVVOL01` (0..8), version (8..12),
//! flags (12..16, zero), volume UUID (16..32), LUN size at format (32), extent size (40),
//! extent count (48), data offset (56), checkpoint offset (64), checkpoint slot size (72),
//! creation time in Unix seconds (80), label length (88..90), label (96..224, UTF-8,
//! zero-padded), crc32c of bytes 0..4092 (4092..4096).

use crate::layout::{
    CHECKPOINT_HEADER_SIZE, CHECKPOINT_SLOTS, Layout, LayoutError, SUPERBLOCK_SIZE, backup_offset,
};
use crate::le::{u32_at, u64_at};
use crate::path::{LunPath, PathError};
use uuid::Uuid;

pub const MAGIC: &[u8; 8] = b"CSVVOL01";
pub const VERSION: u32 = 1;
pub const MAX_LABEL: usize = 128;
const LABEL_AT: usize = 96;
const CRC_AT: usize = SUPERBLOCK_SIZE as usize - 4;

#[derive(Debug, thiserror::Error)]
pub enum SuperblockError {
    #[error("superblock needs {need} bytes, got {len}")]
    Short { len: usize, need: usize },
    #[error("no volume superblock (bad magic)")]
    BadMagic,
    #[error("superblock checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("unsupported superblock version {0} (this build reads {VERSION})")]
    UnsupportedVersion(u32),
    #[error("unknown superblock flags {0:#x}")]
    UnknownFlags(u32),
    #[error("invalid layout: {0}")]
    Layout(#[from] LayoutError),
    #[error("invalid label: {0}")]
    BadLabel(String),
    #[error("LUN is {actual} bytes, shorter than the {recorded} bytes recorded at format")]
    Truncated { recorded: u64, actual: u64 },
    #[error("the LUN already holds volume {uuid} ({copy} superblock); use force to overwrite")]
    Exists { uuid: Uuid, copy: Copy },
    #[error("not a volume: primary superblock: {primary}; backup superblock: {backup}")]
    NotFormatted { primary: String, backup: String },
    #[error(transparent)]
    Path(#[from] PathError),
}

/// Which copy a superblock came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    Primary,
    Backup,
}

impl std::fmt::Display for Copy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Copy::Primary => "primary",
            Copy::Backup => "backup",
        })
    }
}

/// A decoded, validated superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: Uuid,
    pub layout: Layout,
    /// Unix seconds.
    pub created: u64,
    pub label: String,
}

fn validate_label(label: &str) -> Result<(), SuperblockError> {
    if label.len() > MAX_LABEL {
        return Err(SuperblockError::BadLabel(format!(
            "{} bytes, at most {MAX_LABEL}",
            label.len()
        )));
    }
    if label.contains('\0') {
        return Err(SuperblockError::BadLabel("contains NUL".into()));
    }
    Ok(())
}

impl Superblock {
    /// Encodes one copy (4 KiB).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; SUPERBLOCK_SIZE as usize];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[16..32].copy_from_slice(self.uuid.as_bytes());
        let l = &self.layout;
        for (at, v) in [
            (32, l.lun_size),
            (40, l.extent_size),
            (48, l.extent_count),
            (56, l.data_offset),
            (64, l.checkpoint_offset),
            (72, l.checkpoint_slot_size),
            (80, self.created),
        ] {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        let label = self.label.as_bytes();
        let n = label.len().min(MAX_LABEL);
        b[88..90].copy_from_slice(&(n as u16).to_le_bytes());
        b[LABEL_AT..LABEL_AT + n].copy_from_slice(&label[..n]);
        let crc = crc32c::crc32c(&b[..CRC_AT]);
        b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates one copy.
    pub fn parse(b: &[u8]) -> Result<Superblock, SuperblockError> {
        let need = SUPERBLOCK_SIZE as usize;
        if b.len() < need {
            return Err(SuperblockError::Short { len: b.len(), need });
        }
        if &b[0..8] != MAGIC {
            return Err(SuperblockError::BadMagic);
        }
        let stored = u32_at(b, CRC_AT);
        let computed = crc32c::crc32c(&b[..CRC_AT]);
        if stored != computed {
            return Err(SuperblockError::BadChecksum { stored, computed });
        }
        let version = u32_at(b, 8);
        if version != VERSION {
            return Err(SuperblockError::UnsupportedVersion(version));
        }
        let flags = u32_at(b, 12);
        if flags != 0 {
            return Err(SuperblockError::UnknownFlags(flags));
        }
        let mut u = [0u8; 16];
        u.copy_from_slice(&b[16..32]);
        let layout = Layout {
            lun_size: u64_at(b, 32),
            extent_size: u64_at(b, 40),
            extent_count: u64_at(b, 48),
            data_offset: u64_at(b, 56),
            checkpoint_offset: u64_at(b, 64),
            checkpoint_slot_size: u64_at(b, 72),
        };
        layout.validate()?;
        let n = usize::from(u16::from_le_bytes([b[88], b[89]]));
        if n > MAX_LABEL {
            return Err(SuperblockError::BadLabel(format!(
                "length {n}, at most {MAX_LABEL}"
            )));
        }
        let label = std::str::from_utf8(&b[LABEL_AT..LABEL_AT + n])
            .map_err(|e| SuperblockError::BadLabel(e.to_string()))?
            .to_string();
        validate_label(&label)?;
        Ok(Superblock {
            uuid: Uuid::from_bytes(u),
            layout,
            created: u64_at(b, 80),
            label,
        })
    }
}

/// What `format` is asked to write.
#[derive(Debug, Clone)]
pub struct FormatParams {
    pub extent_size: u64,
    pub checkpoint_slot_size: u64,
    pub label: String,
    /// Fixed UUID (tests, recovery drills); a random one otherwise.
    pub uuid: Option<Uuid>,
    /// Unix seconds; now otherwise.
    pub created: Option<u64>,
    /// Overwrite a LUN that already holds a valid superblock (either copy).
    pub force: bool,
}

impl Default for FormatParams {
    fn default() -> Self {
        FormatParams {
            extent_size: crate::layout::DEFAULT_EXTENT_SIZE,
            checkpoint_slot_size: crate::layout::DEFAULT_SLOT_SIZE,
            label: String::new(),
            uuid: None,
            created: None,
            force: false,
        }
    }
}

fn read_copy(path: &dyn LunPath, offset: u64) -> Result<Superblock, SuperblockError> {
    let mut b = vec![0u8; SUPERBLOCK_SIZE as usize];
    path.read_at(&mut b, offset)?;
    Superblock::parse(&b)
}

/// Formats the LUN behind `path` as a volume and returns its superblock.
pub fn format(path: &dyn LunPath, params: &FormatParams) -> Result<Superblock, SuperblockError> {
    validate_label(&params.label)?;
    let lun_size = path.size()?;
    let layout = Layout::plan(lun_size, params.extent_size, params.checkpoint_slot_size)?;
    if !params.force {
        if let Ok(sb) = read_copy(path, 0) {
            return Err(SuperblockError::Exists {
                uuid: sb.uuid,
                copy: Copy::Primary,
            });
        }
        if let Some(off) = backup_offset(lun_size)
            && let Ok(sb) = read_copy(path, off)
        {
            return Err(SuperblockError::Exists {
                uuid: sb.uuid,
                copy: Copy::Backup,
            });
        }
    }
    let created = params.created.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let sb = Superblock {
        uuid: params.uuid.unwrap_or_else(Uuid::new_v4),
        layout,
        created,
        label: params.label.clone(),
    };
    let lost = path.lost_writes();
    // Old checkpoints must never be recovered into the new volume.
    for slot in 0..CHECKPOINT_SLOTS {
        path.write_zeroes(layout.slot_offset(slot), CHECKPOINT_HEADER_SIZE as u64)?;
    }
    let bytes = sb.encode();
    path.write_at(&bytes, layout.backup_offset())?;
    path.flush()?;
    crate::path::check_no_loss(path, lost, layout.backup_offset())?;
    path.write_at(&bytes, 0)?;
    path.flush()?;
    crate::path::check_no_loss(path, lost, 0)?;
    Ok(sb)
}

/// A superblock read from a LUN, with what was noticed on the way.
#[derive(Debug, Clone)]
pub struct Found {
    pub superblock: Superblock,
    pub copy: Copy,
    /// e.g. "primary superblock unreadable (...), using the backup".
    pub warnings: Vec<String>,
}

/// Reads the volume superblock: the primary, else the backup (with a warning).
pub fn read(path: &dyn LunPath) -> Result<Found, SuperblockError> {
    let size = path.size()?;
    let primary = read_copy(path, 0);
    let (superblock, copy, mut warnings) = match primary {
        Ok(sb) => {
            let mut w = Vec::new();
            match read_copy(path, sb.layout.backup_offset()) {
                Ok(b) if b == sb => {}
                Ok(_) => w.push("backup superblock differs from the primary".to_string()),
                Err(SuperblockError::Path(e)) if !matches!(e, PathError::OutOfRange { .. }) => {
                    return Err(SuperblockError::Path(e));
                }
                Err(e) => w.push(format!("backup superblock unreadable: {e}")),
            }
            (sb, Copy::Primary, w)
        }
        Err(SuperblockError::Path(e)) if e.is_path_failure() => {
            return Err(SuperblockError::Path(e));
        }
        Err(pe) => {
            let backup = match backup_offset(size) {
                Some(off) => read_copy(path, off),
                None => Err(SuperblockError::Short {
                    len: size as usize,
                    need: SUPERBLOCK_SIZE as usize,
                }),
            };
            match backup {
                Ok(sb) => (
                    sb,
                    Copy::Backup,
                    vec![format!(
                        "primary superblock unreadable ({pe}); using the backup copy"
                    )],
                ),
                Err(be) => {
                    return Err(SuperblockError::NotFormatted {
                        primary: pe.to_string(),
                        backup: be.to_string(),
                    });
                }
            }
        }
    };
    if size < superblock.layout.lun_size {
        return Err(SuperblockError::Truncated {
            recorded: superblock.layout.lun_size,
            actual: size,
        });
    }
    if size > superblock.layout.lun_size {
        warnings.push(format!(
            "LUN grew from {} to {size} bytes since format; the extra space is unused",
            superblock.layout.lun_size
        ));
    }
    Ok(Found {
        superblock,
        copy,
        warnings,
    })
}

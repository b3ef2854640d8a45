//! `csvadm image ...`: offline commands on local VHD files (create, info, check,
//! convert, expand, compact, merge), as qemu-img works on files. `csvadm vhd ...` stays
//! free for VHDs on the cluster volume.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use serde::Serialize;
use vhd::check::{CheckReport, Severity, check_path};
use vhd::create::{CreateOptions, create_differencing_file, create_file};
use vhd::ops::{ConvertTarget, MergeOptions, SourceFormat, convert, merge, open_source};
use vhd::{DEFAULT_BLOCK_SIZE, DiskType, Image, OpenOptions};

use crate::output::{Output, print};
use crate::progress::Bar;
use crate::size::parse_size;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CreateType {
    Fixed,
    Dynamic,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConvertTo {
    Raw,
    Fixed,
    Dynamic,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConvertFrom {
    Raw,
    Vpc,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Create an image: fixed or dynamic with --size, or differencing with --parent.
    Create {
        file: PathBuf,
        /// Virtual size (K, M, G, T suffixes, binary units).
        #[arg(long, value_parser = parse_size, required_unless_present = "parent")]
        size: Option<u64>,
        #[arg(long = "type", value_enum, default_value = "dynamic")]
        disk_type: CreateType,
        /// Block size of dynamic and differencing images (power of two; default 2M).
        #[arg(long, value_parser = parse_size)]
        block_size: Option<u64>,
        /// Create a differencing image over this parent.
        #[arg(long, conflicts_with = "size")]
        parent: Option<PathBuf>,
        /// Fixed images: allocate the data area on disk instead of a sparse file.
        #[arg(long)]
        preallocate: bool,
    },
    /// Show an image's type, sizes, allocation, creator, UUID and parent chain.
    Info {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        /// Parent of a differencing image, overriding its locators.
        #[arg(long)]
        parent: Option<PathBuf>,
    },
    /// Check an image; exit status 0 clean, 2 corruption, 3 leaked space only.
    Check {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        parent: Option<PathBuf>,
    },
    /// Convert between raw, fixed and dynamic (a differencing chain is flattened).
    Convert {
        src: PathBuf,
        dst: PathBuf,
        #[arg(long, value_enum)]
        to: ConvertTo,
        /// Source format (probed when omitted).
        #[arg(long, value_enum)]
        from: Option<ConvertFrom>,
        #[arg(long, value_parser = parse_size)]
        block_size: Option<u64>,
        #[arg(long)]
        parent: Option<PathBuf>,
    },
    /// Grow the virtual size.
    Expand {
        file: PathBuf,
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// Reclaim zero blocks and leaked space of a dynamic or differencing image.
    Compact { file: PathBuf },
    /// Merge a differencing image into its parent, then remove it.
    Merge {
        child: PathBuf,
        /// Keep the child file after merging.
        #[arg(long)]
        keep_child: bool,
        #[arg(long)]
        parent: Option<PathBuf>,
    },
}

fn block_size_arg(v: Option<u64>) -> Result<Option<u32>> {
    v.map(|b| u32::try_from(b).context("block size too large"))
        .transpose()
}

/// Runs `csvadm image ...`; the exit code (`check` reports what it found in it).
pub fn run(cmd: ImageCommand) -> Result<u8> {
    match cmd {
        ImageCommand::Create {
            file,
            size,
            disk_type,
            block_size,
            parent,
            preallocate,
        } => {
            let bs = block_size_arg(block_size)?;
            if let Some(p) = parent {
                create_differencing_file(&file, &p, bs)
                    .with_context(|| format!("create differencing image {}", file.display()))?;
                let view = CreatedView {
                    file: file.display().to_string(),
                    disk_type: DiskType::Differencing.name(),
                    size: None,
                    parent: Some(p.display().to_string()),
                };
                print(&view, Output::Text)?;
                return Ok(0);
            }
            let Some(size) = size else {
                bail!("--size or --parent is required")
            };
            let t = match disk_type {
                CreateType::Fixed => DiskType::Fixed,
                CreateType::Dynamic => DiskType::Dynamic,
            };
            if preallocate && t != DiskType::Fixed {
                bail!("--preallocate applies to fixed images only");
            }
            let mut o = CreateOptions::new(t, size);
            o.block_size = bs.unwrap_or(DEFAULT_BLOCK_SIZE);
            o.preallocate = preallocate;
            create_file(&file, &o).with_context(|| format!("create image {}", file.display()))?;
            let view = CreatedView {
                file: file.display().to_string(),
                disk_type: t.name(),
                size: Some(size),
                parent: None,
            };
            print(&view, Output::Text)?;
            Ok(0)
        }
        ImageCommand::Info { file, json, parent } => {
            print(&info(&file, parent)?, pretty_if(json))?;
            Ok(0)
        }
        ImageCommand::Check { file, json, parent } => {
            let r = check_path(&file, parent.as_deref())
                .with_context(|| format!("check {}", file.display()))?;
            let view = CheckView::from(&r);
            print(&view, pretty_if(json))?;
            Ok(view.exit_code)
        }
        ImageCommand::Convert {
            src,
            dst,
            to,
            from,
            block_size,
            parent,
        } => {
            let format = from.map(|f| match f {
                ConvertFrom::Raw => SourceFormat::Raw,
                ConvertFrom::Vpc => SourceFormat::Vpc,
            });
            let source = open_source(&src, format, parent.as_deref())
                .with_context(|| format!("open source {}", src.display()))?;
            let target = match to {
                ConvertTo::Raw => ConvertTarget::Raw,
                ConvertTo::Fixed => ConvertTarget::Fixed,
                ConvertTo::Dynamic => ConvertTarget::Dynamic {
                    block_size: block_size_arg(block_size)?.unwrap_or(DEFAULT_BLOCK_SIZE),
                },
            };
            let bar = Bar::new("converting");
            convert(&source, &dst, target, &mut |d, t| bar.update(d, t))
                .with_context(|| format!("convert {} to {}", src.display(), dst.display()))?;
            bar.finish();
            Ok(0)
        }
        ImageCommand::Expand { file, size } => {
            let mut img = open_rw(&file)?;
            img.expand(size)
                .with_context(|| format!("expand {}", file.display()))?;
            img.close()
                .with_context(|| format!("close {}", file.display()))?;
            let view = ExpandedView {
                file: file.display().to_string(),
                virtual_size: size,
            };
            print(&view, Output::Text)?;
            Ok(0)
        }
        ImageCommand::Compact { file } => {
            let mut img = open_rw(&file)?;
            let bar = Bar::new("compacting");
            let s = img
                .compact(&mut |d, t| bar.update(d, t))
                .with_context(|| format!("compact {}", file.display()))?;
            bar.finish();
            img.close()
                .with_context(|| format!("close {}", file.display()))?;
            let view = CompactedView {
                file: file.display().to_string(),
                bytes_before: s.bytes_before,
                bytes_after: s.bytes_after,
                blocks_deallocated: s.blocks_deallocated,
                blocks_moved: s.blocks_moved,
            };
            print(&view, Output::Text)?;
            Ok(0)
        }
        ImageCommand::Merge {
            child,
            keep_child,
            parent,
        } => {
            let bar = Bar::new("merging");
            let s = merge(&child, &MergeOptions { keep_child, parent }, &mut |d, t| {
                bar.update(d, t)
            })
            .with_context(|| format!("merge {}", child.display()))?;
            bar.finish();
            let view = MergedView {
                child: child.display().to_string(),
                parent: s.parent.display().to_string(),
                bytes_merged: s.bytes_merged,
                child_removed: s.child_removed,
            };
            print(&view, Output::Text)?;
            Ok(0)
        }
    }
}

/// `csvadm image` prints indented JSON, as qemu-img does.
fn pretty_if(json: bool) -> Output {
    if json {
        Output::PrettyJson
    } else {
        Output::Text
    }
}

fn open_rw(file: &Path) -> Result<Image> {
    Image::open(
        file,
        &OpenOptions {
            read_only: false,
            parent: None,
        },
    )
    .with_context(|| format!("open image {}", file.display()))
}

use crate::size::human;

fn info(file: &Path, parent: Option<PathBuf>) -> Result<InfoView> {
    let img = Image::open(
        file,
        &OpenOptions {
            read_only: true,
            parent,
        },
    )
    .with_context(|| format!("open image {}", file.display()))?;
    let f = img.footer();
    let file_size = std::fs::metadata(file)
        .with_context(|| format!("stat {}", file.display()))?
        .len();
    let chain = img.chain();
    Ok(InfoView {
        filename: file.display().to_string(),
        format: "vpc",
        disk_type: img.disk_type().name(),
        virtual_size: img.virtual_size(),
        qemu_virtual_size: f.qemu_size(),
        file_size,
        block_size: img.block_size(),
        allocated_blocks: img.allocated_blocks(),
        total_blocks: img.header().map(|h| h.max_table_entries),
        uuid: f.uuid.to_string(),
        creator_app: f.creator_app_str(),
        creator_version: format!("{}.{}", f.creator_version >> 16, f.creator_version & 0xFFFF),
        creator_host_os: String::from_utf8_lossy(&f.creator_host_os).into_owned(),
        timestamp: f.timestamp,
        geometry: GeometryView {
            cylinders: f.geometry.cylinders,
            heads: f.geometry.heads,
            sectors_per_track: f.geometry.sectors_per_track,
        },
        parent: chain.get(1).map(|c| c.identity.clone()),
        parent_uuid: img
            .header()
            .filter(|_| img.disk_type() == DiskType::Differencing)
            .map(|h| h.parent_uuid.to_string()),
        chain: chain
            .iter()
            .map(|c| ChainView {
                file: c.identity.clone(),
                disk_type: c.disk_type.name(),
                uuid: c.uuid.to_string(),
                virtual_size: c.virtual_size,
            })
            .collect(),
        warnings: img.warnings().to_vec(),
    })
}

/// `image info`: an image's type, sizes, allocation, creator, UUID and parent chain.
#[derive(Debug, Serialize)]
pub struct InfoView {
    pub filename: String,
    /// Always `vpc`, qemu's name of the VHD format.
    pub format: &'static str,
    #[serde(rename = "type")]
    pub disk_type: &'static str,
    pub virtual_size: u64,
    /// The size qemu reports (CHS geometry of some creators), for comparison.
    pub qemu_virtual_size: u64,
    pub file_size: u64,
    /// Dynamic and differencing images only, like the two block counts.
    pub block_size: Option<u32>,
    pub allocated_blocks: Option<u64>,
    pub total_blocks: Option<u32>,
    pub uuid: String,
    pub creator_app: String,
    /// `major.minor`.
    pub creator_version: String,
    pub creator_host_os: String,
    /// Seconds since 2000-01-01 UTC, as the footer stores it.
    pub timestamp: u32,
    pub geometry: GeometryView,
    /// The parent's identity (differencing images).
    pub parent: Option<String>,
    pub parent_uuid: Option<String>,
    /// The image first, then its parents.
    pub chain: Vec<ChainView>,
    pub warnings: Vec<String>,
}

/// CHS geometry of the footer.
#[derive(Debug, Serialize)]
pub struct GeometryView {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
}

/// An image of the parent chain in [`InfoView`].
#[derive(Debug, Serialize)]
pub struct ChainView {
    pub file: String,
    #[serde(rename = "type")]
    pub disk_type: &'static str,
    pub uuid: String,
    pub virtual_size: u64,
}

impl fmt::Display for InfoView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut lines = vec![
            format!("image:            {}", self.filename),
            "format:           vpc (VHD)".to_string(),
            format!("type:             {}", self.disk_type),
            format!(
                "virtual size:     {} ({} bytes)",
                human(self.virtual_size),
                self.virtual_size
            ),
        ];
        if self.qemu_virtual_size != self.virtual_size {
            lines.push(format!(
                "qemu size:        {} bytes (CHS geometry of a `{}` creator)",
                self.qemu_virtual_size, self.creator_app
            ));
        }
        lines.push(format!(
            "file size:        {} ({} bytes)",
            human(self.file_size),
            self.file_size
        ));
        if let (Some(bs), Some(n), Some(total)) =
            (self.block_size, self.allocated_blocks, self.total_blocks)
        {
            lines.push(format!("block size:       {}", human(u64::from(bs))));
            lines.push(format!("allocated blocks: {n} of {total}"));
        }
        lines.push(format!(
            "creator:          {} {} ({})",
            self.creator_app, self.creator_version, self.creator_host_os
        ));
        let g = &self.geometry;
        lines.push(format!(
            "geometry:         {}/{}/{}",
            g.cylinders, g.heads, g.sectors_per_track
        ));
        lines.push(format!("uuid:             {}", self.uuid));
        if self.chain.len() > 1 {
            lines.push("parent chain:".to_string());
            for (i, c) in self.chain.iter().enumerate() {
                lines.push(format!(
                    "  {}{} ({}, {})",
                    "  ".repeat(i),
                    c.file,
                    c.disk_type,
                    c.uuid
                ));
            }
        }
        for w in &self.warnings {
            lines.push(format!("warning:          {w}"));
        }
        f.write_str(&lines.join("\n"))
    }
}

/// `image check`: the findings and the counts; the exit code is not part of the JSON.
#[derive(Debug, Serialize)]
pub struct CheckView {
    pub findings: Vec<FindingView>,
    pub corruptions: usize,
    pub leaks: usize,
    pub leaked_bytes: u64,
    pub allocated_blocks: u64,
    pub total_blocks: u64,
    /// 0 clean, 2 corruption, 3 leaked space only.
    #[serde(skip)]
    pub exit_code: u8,
}

/// One finding of [`CheckView`].
#[derive(Debug, Serialize)]
pub struct FindingView {
    pub severity: SeverityView,
    pub message: String,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SeverityView {
    Corruption,
    Leak,
    Warning,
}

impl From<&CheckReport> for CheckView {
    fn from(r: &CheckReport) -> CheckView {
        CheckView {
            findings: r
                .findings
                .iter()
                .map(|f| FindingView {
                    severity: match f.severity {
                        Severity::Corruption => SeverityView::Corruption,
                        Severity::Leak => SeverityView::Leak,
                        Severity::Warning => SeverityView::Warning,
                    },
                    message: f.message.clone(),
                })
                .collect(),
            corruptions: r.corruptions(),
            leaks: r.leaks(),
            leaked_bytes: r.leaked_bytes,
            allocated_blocks: r.allocated_blocks,
            total_blocks: r.total_blocks,
            exit_code: u8::try_from(r.exit_code()).unwrap_or(2),
        }
    }
}

impl fmt::Display for CheckView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            let tag = match finding.severity {
                SeverityView::Corruption => "ERROR",
                SeverityView::Leak => "Leak",
                SeverityView::Warning => "Warning",
            };
            writeln!(f, "{tag}: {}", finding.message)?;
        }
        if self.total_blocks > 0 {
            writeln!(
                f,
                "{}/{} blocks allocated",
                self.allocated_blocks, self.total_blocks
            )?;
        }
        match self.exit_code {
            0 => write!(f, "No errors were found on the image."),
            2 => write!(f, "{} errors were found on the image.", self.corruptions),
            _ => write!(
                f,
                "{} leaked bytes were found on the image; `csvadm image compact` reclaims them.",
                self.leaked_bytes
            ),
        }
    }
}

/// `image create` (text only).
#[derive(Debug, Serialize)]
pub struct CreatedView {
    pub file: String,
    #[serde(rename = "type")]
    pub disk_type: &'static str,
    /// Virtual size; `None` for a differencing image (its parent's).
    pub size: Option<u64>,
    pub parent: Option<String>,
}

impl fmt::Display for CreatedView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.parent, self.size) {
            (Some(p), _) => write!(f, "created {} ({}, parent {p})", self.file, self.disk_type),
            (None, size) => write!(
                f,
                "created {} ({}, {} bytes)",
                self.file,
                self.disk_type,
                size.unwrap_or_default()
            ),
        }
    }
}

/// `image expand` (text only).
#[derive(Debug, Serialize)]
pub struct ExpandedView {
    pub file: String,
    pub virtual_size: u64,
}

impl fmt::Display for ExpandedView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expanded {} to {} bytes", self.file, self.virtual_size)
    }
}

/// `image compact` (text only).
#[derive(Debug, Serialize)]
pub struct CompactedView {
    pub file: String,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Zero blocks freed.
    pub blocks_deallocated: u64,
    pub blocks_moved: u64,
}

impl fmt::Display for CompactedView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "compacted {}: {} -> {} bytes ({} zero blocks freed, {} blocks moved)",
            self.file,
            self.bytes_before,
            self.bytes_after,
            self.blocks_deallocated,
            self.blocks_moved
        )
    }
}

/// `image merge` (text only).
#[derive(Debug, Serialize)]
pub struct MergedView {
    pub child: String,
    pub parent: String,
    pub bytes_merged: u64,
    pub child_removed: bool,
}

impl fmt::Display for MergedView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "merged {} into {} ({} bytes){}",
            self.child,
            self.parent,
            self.bytes_merged,
            if self.child_removed {
                ", child removed"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::to_json;
    use vhd::check::Finding;

    #[test]
    fn check_text_and_json() {
        let r = CheckReport {
            findings: vec![Finding {
                severity: Severity::Leak,
                message: "4096 bytes after the last block".into(),
            }],
            leaked_bytes: 4096,
            allocated_blocks: 1,
            total_blocks: 8,
        };
        let v = CheckView::from(&r);
        assert_eq!(v.exit_code, 3);
        assert_eq!(
            v.to_string(),
            "Leak: 4096 bytes after the last block\n1/8 blocks allocated\n\
             4096 leaked bytes were found on the image; `csvadm image compact` reclaims them."
        );
        assert_eq!(
            to_json(&v, false).expect("json"),
            r#"{"allocated_blocks":1,"corruptions":0,"findings":[{"message":"4096 bytes after the last block","severity":"leak"}],"leaked_bytes":4096,"leaks":1,"total_blocks":8}"#
        );
        let clean = CheckView::from(&CheckReport {
            findings: vec![],
            leaked_bytes: 0,
            allocated_blocks: 0,
            total_blocks: 0,
        });
        assert_eq!(clean.to_string(), "No errors were found on the image.");
    }

    #[test]
    fn info_of_a_new_image() {
        let d = tempfile::tempdir().expect("tempdir");
        let file = d.path().join("d.vhd");
        create_file(&file, &CreateOptions::new(DiskType::Dynamic, 8 << 20)).expect("create");
        let v = info(&file, None).expect("info");
        let text = v.to_string();
        assert!(text.contains("type:             dynamic\n"), "{text}");
        assert!(
            text.contains("virtual size:     8.0 MiB (8388608 bytes)\n"),
            "{text}"
        );
        assert!(text.contains("block size:       2.0 MiB\n"), "{text}");
        assert!(text.contains("allocated blocks: 0 of "), "{text}");
        assert!(!text.ends_with('\n'));
        let j: serde_json::Value =
            serde_json::from_str(&to_json(&v, true).expect("json")).expect("parse");
        assert_eq!(j["type"], "dynamic");
        assert_eq!(j["allocated_blocks"], 0);
        assert_eq!(j["block_size"], 2 << 20);
        assert!(j["parent"].is_null());
        assert_eq!(j["chain"].as_array().map(Vec::len), Some(1));
        assert_eq!(j["geometry"]["heads"], v.geometry.heads);
    }

    #[test]
    fn created_text() {
        let fixed = CreatedView {
            file: "f.vhd".into(),
            disk_type: "fixed",
            size: Some(1024),
            parent: None,
        };
        assert_eq!(fixed.to_string(), "created f.vhd (fixed, 1024 bytes)");
        let child = CreatedView {
            file: "c.vhd".into(),
            disk_type: "differencing",
            size: None,
            parent: Some("p.vhd".into()),
        };
        assert_eq!(
            child.to_string(),
            "created c.vhd (differencing, parent p.vhd)"
        );
    }
}

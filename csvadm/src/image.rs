//! `csvadm image ...`: offline commands on local VHD files (create, info, check,
//! convert, expand, compact, merge), as qemu-img works on files. `csvadm vhd ...` stays
//! free for VHDs on the cluster volume.

use crate::progress::Bar;
use crate::size::parse_size;
use anyhow::{Context, Result, bail};
use clap::{Subcommand, ValueEnum};
use serde_json::json;
use std::path::{Path, PathBuf};
use vhd::check::{Severity, check_path};
use vhd::create::{CreateOptions, create_differencing_file, create_file};
use vhd::ops::{ConvertTarget, MergeOptions, SourceFormat, convert, merge, open_source};
use vhd::{DEFAULT_BLOCK_SIZE, DiskType, Image, OpenOptions};

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
                println!(
                    "created {} (differencing, parent {})",
                    file.display(),
                    p.display()
                );
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
            println!("created {} ({}, {} bytes)", file.display(), t, size);
            Ok(0)
        }
        ImageCommand::Info { file, json, parent } => info(&file, json, parent),
        ImageCommand::Check { file, json, parent } => {
            let r = check_path(&file, parent.as_deref())
                .with_context(|| format!("check {}", file.display()))?;
            if json {
                let findings: Vec<_> = r
                    .findings
                    .iter()
                    .map(|f| json!({"severity": format!("{:?}", f.severity).to_lowercase(), "message": f.message}))
                    .collect();
                let v = json!({
                    "findings": findings,
                    "corruptions": r.corruptions(),
                    "leaks": r.leaks(),
                    "leaked_bytes": r.leaked_bytes,
                    "allocated_blocks": r.allocated_blocks,
                    "total_blocks": r.total_blocks,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for f in &r.findings {
                    let tag = match f.severity {
                        Severity::Corruption => "ERROR",
                        Severity::Leak => "Leak",
                        Severity::Warning => "Warning",
                    };
                    println!("{tag}: {}", f.message);
                }
                if r.total_blocks > 0 {
                    println!("{}/{} blocks allocated", r.allocated_blocks, r.total_blocks);
                }
                match r.exit_code() {
                    0 => println!("No errors were found on the image."),
                    2 => println!("{} errors were found on the image.", r.corruptions()),
                    _ => println!(
                        "{} leaked bytes were found on the image; `csvadm image compact` reclaims them.",
                        r.leaked_bytes
                    ),
                }
            }
            Ok(r.exit_code() as u8)
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
            println!("expanded {} to {} bytes", file.display(), size);
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
            println!(
                "compacted {}: {} -> {} bytes ({} zero blocks freed, {} blocks moved)",
                file.display(),
                s.bytes_before,
                s.bytes_after,
                s.blocks_deallocated,
                s.blocks_moved
            );
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
            println!(
                "merged {} into {} ({} bytes){}",
                child.display(),
                s.parent.display(),
                s.bytes_merged,
                if s.child_removed {
                    ", child removed"
                } else {
                    ""
                }
            );
            Ok(0)
        }
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

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn info(file: &Path, as_json: bool, parent: Option<PathBuf>) -> Result<u8> {
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
    let parent_path = chain.get(1).map(|c| c.identity.clone());
    let creator_version = format!("{}.{}", f.creator_version >> 16, f.creator_version & 0xFFFF);
    let host = String::from_utf8_lossy(&f.creator_host_os).into_owned();
    if as_json {
        let v = json!({
            "filename": file.display().to_string(),
            "format": "vpc",
            "type": img.disk_type().name(),
            "virtual_size": img.virtual_size(),
            "qemu_virtual_size": f.qemu_size(),
            "file_size": file_size,
            "block_size": img.block_size(),
            "allocated_blocks": img.allocated_blocks(),
            "total_blocks": img.header().map(|h| h.max_table_entries),
            "uuid": f.uuid.to_string(),
            "creator_app": f.creator_app_str(),
            "creator_version": creator_version,
            "creator_host_os": host,
            "timestamp": f.timestamp,
            "geometry": {"cylinders": f.geometry.cylinders, "heads": f.geometry.heads, "sectors_per_track": f.geometry.sectors_per_track},
            "parent": parent_path,
            "parent_uuid": img.header().filter(|_| img.disk_type() == DiskType::Differencing).map(|h| h.parent_uuid.to_string()),
            "chain": chain.iter().map(|c| json!({"file": c.identity, "type": c.disk_type.name(), "uuid": c.uuid.to_string(), "virtual_size": c.virtual_size})).collect::<Vec<_>>(),
            "warnings": img.warnings(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("image:            {}", file.display());
    println!("format:           vpc (VHD)");
    println!("type:             {}", img.disk_type());
    println!(
        "virtual size:     {} ({} bytes)",
        human(img.virtual_size()),
        img.virtual_size()
    );
    if f.qemu_size() != img.virtual_size() {
        println!(
            "qemu size:        {} bytes (CHS geometry of a `{}` creator)",
            f.qemu_size(),
            f.creator_app_str()
        );
    }
    println!(
        "file size:        {} ({} bytes)",
        human(file_size),
        file_size
    );
    if let (Some(bs), Some(n), Some(h)) = (img.block_size(), img.allocated_blocks(), img.header()) {
        println!("block size:       {}", human(u64::from(bs)));
        println!("allocated blocks: {} of {}", n, h.max_table_entries);
    }
    println!(
        "creator:          {} {} ({})",
        f.creator_app_str(),
        creator_version,
        host
    );
    println!(
        "geometry:         {}/{}/{}",
        f.geometry.cylinders, f.geometry.heads, f.geometry.sectors_per_track
    );
    println!("uuid:             {}", f.uuid);
    if chain.len() > 1 {
        println!("parent chain:");
        for (i, c) in chain.iter().enumerate() {
            println!(
                "  {}{} ({}, {})",
                "  ".repeat(i),
                c.identity,
                c.disk_type,
                c.uuid
            );
        }
    }
    for w in img.warnings() {
        println!("warning:          {w}");
    }
    Ok(0)
}

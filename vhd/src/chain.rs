//! Parent resolution of differencing images: the hints a child gives (parent UUID, name,
//! decoded locators), the resolver trait that turns them into candidate stores, and the
//! path-based resolver (explicit path, then `W2ru` relative to the child's directory, then
//! `W2ku`, `MacX`, other locators, and the parent name beside the child).

use crate::error::Result;
use crate::locator::{PLATFORM_MACX, PLATFORM_W2KU, PLATFORM_W2RU};
use crate::storage::{FileStorage, Storage};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// Longest chain opened (child plus ancestors). Deeper chains fail with `ChainTooDeep`.
pub const MAX_CHAIN_DEPTH: usize = 32;

/// What a differencing child says about its parent.
#[derive(Debug, Clone)]
pub struct ParentHints {
    pub parent_uuid: Uuid,
    pub parent_timestamp: u32,
    /// The parent unicode name (lossy UTF-16 decode).
    pub parent_name: String,
    /// Decoded locators in header order: (platform code, path with `/` separators).
    pub locators: Vec<(u32, String)>,
}

/// A store that may be the parent.
#[derive(Debug, Clone)]
pub struct ParentCandidate {
    pub storage: Arc<dyn Storage>,
    /// Stable identity for loop detection (canonical path for files).
    pub identity: String,
    pub path: Option<PathBuf>,
}

/// The child a parent is looked up for.
#[derive(Debug, Clone, Copy)]
pub struct ChildRef<'a> {
    pub identity: &'a str,
    pub path: Option<&'a Path>,
    /// 0 for the image being opened, 1 for its parent, ...
    pub depth: usize,
}

/// Maps a child's hints to candidate parent stores, in preference order. The opener checks
/// each candidate's UUID and takes the first that matches.
pub trait ParentResolver {
    /// Returns the candidates and a description of every place tried (for errors).
    fn candidates(
        &self,
        child: ChildRef<'_>,
        hints: &ParentHints,
    ) -> (Vec<ParentCandidate>, Vec<String>);
}

/// A resolver that finds nothing (images without parents, or storage-only callers).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoParents;

impl ParentResolver for NoParents {
    fn candidates(&self, _: ChildRef<'_>, _: &ParentHints) -> (Vec<ParentCandidate>, Vec<String>) {
        (Vec::new(), vec!["(no parent resolver)".into()])
    }
}

/// A resolver from a closure.
pub struct FnResolver<F>(pub F);

impl<F> std::fmt::Debug for FnResolver<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnResolver")
    }
}

impl<F> ParentResolver for FnResolver<F>
where
    F: Fn(ChildRef<'_>, &ParentHints) -> (Vec<ParentCandidate>, Vec<String>),
{
    fn candidates(
        &self,
        child: ChildRef<'_>,
        hints: &ParentHints,
    ) -> (Vec<ParentCandidate>, Vec<String>) {
        (self.0)(child, hints)
    }
}

/// Resolves parents as files. `explicit` overrides the locators of the first child only.
#[derive(Debug, Default, Clone)]
pub struct PathResolver {
    pub explicit: Option<PathBuf>,
}

impl PathResolver {
    fn push(out: &mut Vec<ParentCandidate>, tried: &mut Vec<String>, p: PathBuf) {
        tried.push(p.display().to_string());
        let Ok(canon) = std::fs::canonicalize(&p) else {
            return;
        };
        let identity = canon.display().to_string();
        if out.iter().any(|c| c.identity == identity) {
            return;
        }
        if let Ok(fs) = FileStorage::open(&canon, true) {
            out.push(ParentCandidate {
                storage: Arc::new(fs),
                identity,
                path: Some(canon),
            });
        }
    }
}

impl ParentResolver for PathResolver {
    fn candidates(
        &self,
        child: ChildRef<'_>,
        hints: &ParentHints,
    ) -> (Vec<ParentCandidate>, Vec<String>) {
        let mut out = Vec::new();
        let mut tried = Vec::new();
        let dir = child
            .path
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        if let (0, Some(p)) = (child.depth, &self.explicit) {
            Self::push(&mut out, &mut tried, p.clone());
        }
        let ordered = [PLATFORM_W2RU, PLATFORM_W2KU, PLATFORM_MACX];
        for code in ordered {
            for (c, path) in hints.locators.iter().filter(|(c, _)| *c == code) {
                let p = Path::new(path);
                let full = if *c == PLATFORM_W2RU || p.is_relative() {
                    dir.join(p)
                } else {
                    p.to_path_buf()
                };
                Self::push(&mut out, &mut tried, full);
            }
        }
        for (c, path) in &hints.locators {
            if !ordered.contains(c) {
                Self::push(&mut out, &mut tried, dir.join(path));
            }
        }
        // Last resort, as libvhdi does: the parent's file name beside the child.
        let name = hints.parent_name.replace('\\', "/");
        if let Some(base) = name.rsplit('/').next().filter(|b| !b.is_empty()) {
            Self::push(&mut out, &mut tried, dir.join(base));
        }
        (out, tried)
    }
}

/// Relative path from directory `from` to `to` (both absolute, canonical), e.g. `../b/p.vhd`.
pub fn relative_path(from_dir: &Path, to: &Path) -> PathBuf {
    let a: Vec<_> = from_dir.components().collect();
    let b: Vec<_> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..a.len() {
        out.push("..");
    }
    for c in &b[common..] {
        out.push(c.as_os_str());
    }
    out
}

/// Result alias re-exported for resolvers written outside the crate.
pub type ResolveResult<T> = Result<T>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_path(Path::new("/a/b"), Path::new("/a/b/p.vhd")),
            PathBuf::from("p.vhd")
        );
        assert_eq!(
            relative_path(Path::new("/a/b"), Path::new("/a/c/p.vhd")),
            PathBuf::from("../c/p.vhd")
        );
    }
}

//! The cache directory as files: where a blob lives, what is under a directory, for
//! tests that look at (or damage) the store behind hoard's back.

use std::io::Read;
use std::path::{Path, PathBuf};

/// `cache/blobs/<algorithm>/<2 hex>/<hex>` of an `<algorithm>:<hex>` digest.
pub fn blob_file(cache: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("<algorithm>:<hex> digest");
    cache.join("blobs").join(alg).join(&hex[..2]).join(hex)
}

/// Every regular file under `dir`, recursively (none if `dir` is absent).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => todo.push(entry.path()),
                Ok(t) if t.is_file() => out.push(entry.path()),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Sum of the sizes of the regular files under `dir`.
pub fn bytes_under(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Files under `dir` whose name is `name`.
pub fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| p.file_name().and_then(|n| n.to_str()) == Some(name))
        .collect()
}

/// `sha256:<hex>` of a file's content.
pub fn file_digest(path: &Path) -> String {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    super::sha256_digest(&data)
}

/// A human-readable listing of the files under `dir`, with sizes.
pub fn listing(dir: &Path) -> String {
    files_under(dir)
        .iter()
        .map(|p| {
            let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            format!(
                "  {} ({len} bytes)",
                p.strip_prefix(dir).unwrap_or(p).display()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

//! File helpers: atomic writes (never leave a half-written result), bundle reading with context.

use anyhow::{Context, Result};
use shared::Bundle;
use std::path::Path;

pub use runtime::hash::{sha256_file, sha256_hex};

/// Writes via a temporary file in the same directory and a rename, so a crash or Ctrl-C never
/// leaves a truncated file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating directory {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

pub fn read_bundle(path: &Path) -> Result<Bundle> {
    let file =
        std::fs::File::open(path).with_context(|| format!("opening bundle {}", path.display()))?;
    // SAFETY: the map is read-only and dropped before returning; this tool replaces bundles by
    // rename (`write_atomic`), never in place, so the mapped bytes do not change under it.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("reading bundle {}", path.display()))?;
    Bundle::decode(&map).with_context(|| format!("bundle {}", path.display()))
}

pub fn write_bundle(path: &Path, bundle: &Bundle) -> Result<usize> {
    let bytes = bundle
        .encode()
        .with_context(|| format!("encoding bundle for {}", path.display()))?;
    write_atomic(path, &bytes)?;
    Ok(bytes.len())
}

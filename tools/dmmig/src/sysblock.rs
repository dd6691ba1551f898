//! Block devices as `/sys/block` shows them: a disk with its partitions, and their holders.

use std::fs;
use std::path::{Path, PathBuf};

/// The sysfs folders of the disk at `folder` (`/sys/block/NAME`) and of its partitions (the
/// folders `NAMEpM`, or `NAMEM` for names that end in a letter, inside its own).
pub fn with_partitions(folder: &Path) -> Vec<PathBuf> {
    let mut folders = vec![folder.to_path_buf()];
    let Some(name) = folder.file_name().map(|n| n.to_string_lossy().to_string()) else {
        return folders;
    };
    folders.extend(
        fs::read_dir(folder)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.path().join("partition").exists())
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(&name))
            .map(|entry| entry.path()),
    );
    folders
}

/// The kernel names of what holds the device at sysfs folder `folder` (its `holders`).
pub fn holders(folder: &Path) -> Vec<String> {
    fs::read_dir(folder.join("holders"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().to_string())
        .collect()
}

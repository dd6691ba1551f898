//! The migrate target's sysfs counters (`/sys/block/dm-N/migrate/`), named by the engine's one
//! list of them ([`SysfsFile`]).

pub use dm_migrate_engine::status::SysfsFile;
use std::fs;
use std::path::{Path, PathBuf};

/// The folder of the counters of the dm device `major:minor`: there while a migrate table is
/// live on it.
pub fn dir_of(major: u32, minor: u32) -> PathBuf {
    PathBuf::from(format!("/sys/dev/block/{major}:{minor}/migrate"))
}

/// The folder of the counters of the dm device with kernel name `kernel_name` (`dm-N`).
pub fn dir_of_kernel_name(kernel_name: &str) -> PathBuf {
    PathBuf::from(format!("/sys/block/{kernel_name}/migrate"))
}

/// One counter of folder `dir`, trimmed; `None` when it is not there.
pub fn read(dir: &Path, file: SysfsFile) -> Option<String> {
    fs::read_to_string(dir.join(file.name()))
        .ok()
        .map(|s| s.trim().to_string())
}

//! `/dev/mapper/NAME` nodes: made by udev where it runs, by dmmig where it does not.

use crate::error::{Error, Result};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where device nodes live.
pub const MAPPER_DIR: &str = "/dev/mapper";

/// Whether udev runs here and so manages `/dev/mapper` (its control socket exists). Without it,
/// and when `DM_DISABLE_UDEV` is set, dmmig makes and removes the nodes itself.
pub fn udev_running() -> bool {
    std::env::var_os("DM_DISABLE_UDEV").is_none() && Path::new("/run/udev/control").exists()
}

/// The node path of a device.
pub fn node_path(name: &str) -> PathBuf {
    Path::new(MAPPER_DIR).join(name)
}

/// Makes `/dev/mapper/NAME` a block node for `major:minor`, replacing a wrong one.
pub fn ensure_node(name: &str, major: u32, minor: u32) -> Result<()> {
    let path = node_path(name);
    let want = makedev(u64::from(major), u64::from(minor));
    if let Ok(meta) = fs::symlink_metadata(&path) {
        if meta.file_type().is_block_device() && meta.rdev() == want {
            return Ok(());
        }
        fs::remove_file(&path).map_err(|e| io_error("remove stale", &path, e))?;
    }
    fs::create_dir_all(MAPPER_DIR).map_err(|e| io_error("create", Path::new(MAPPER_DIR), e))?;
    mknod(&path, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), want)
        .map_err(|e| Error::Failed(format!("cannot create {}: {e}", path.display())))
}

/// Removes `/dev/mapper/NAME` if it is there.
pub fn remove_node(name: &str) -> Result<()> {
    let path = node_path(name);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("remove", &path, e)),
        _ => Ok(()),
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Failed(format!("cannot {what} {}: {e}", path.display()))
}

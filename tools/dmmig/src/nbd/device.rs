//! NBD devices in `/dev` and `/sys/block`: a device's path and index, the export it is connected
//! to, whether it is still the keeper's, and the dm devices stacked on it.

use std::fs;
use std::path::{Path, PathBuf};

use super::url::BackendId;
use crate::error::{Error, Result};

/// The device of NBD index `index`.
pub fn device_path(index: u32) -> PathBuf {
    PathBuf::from(format!("/dev/nbd{index}"))
}

/// The index of an NBD device path (`/dev/nbd3` is 3).
pub fn index_of(device: &Path) -> Result<u32> {
    device
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("nbd"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::Usage(format!("{} is not an NBD device", device.display())))
}

/// The export an NBD device was connected to (its `backend` file), if it is one of ours.
pub fn backend(index: u32) -> Option<String> {
    fs::read_to_string(format!("/sys/block/nbd{index}/backend"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether NBD device `index` is still the keeper's: connected, with the backend identifier
/// of the keeper's connection (its URL and token, the same in every PID namespace; the device's
/// `pid` file holds the connecting task's pid in the initial namespace, which a keeper in a
/// container does not know itself by).
pub(super) fn still_ours(index: u32, id: &BackendId) -> bool {
    fs::metadata(format!("/sys/block/nbd{index}/pid")).is_ok()
        && backend(index).is_some_and(|b| b == id.as_str())
}

/// The device-mapper devices stacked on NBD device `index`: (kernel name, dm name).
pub(super) fn dm_holders(index: u32) -> Vec<(String, String)> {
    let Ok(entries) = fs::read_dir(format!("/sys/block/nbd{index}/holders")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let kernel_name = entry.ok()?.file_name().to_str()?.to_string();
            let name = fs::read_to_string(format!("/sys/block/{kernel_name}/dm/name")).ok()?;
            Some((kernel_name, name.trim().to_string()))
        })
        .collect()
}

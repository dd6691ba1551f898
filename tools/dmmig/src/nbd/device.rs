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

/// What is stacked on NBD device `index`, directly or not: a partition of it, an LV, a LUKS
/// mapping or any dm device over those, and the dm devices over that, all the way up.
#[derive(Debug, Default)]
pub(super) struct Stack {
    /// The dm devices above the NBD device.
    pub holders: Vec<Holder>,
    /// The numbers (`major:minor`) of every device that carries the NBD device's data up to a
    /// holder: the device, its partitions and every dm device in between. A migrate target
    /// whose destination is one of them writes through the connection.
    pub carriers: Vec<String>,
}

/// A dm device in the stack above an NBD device.
#[derive(Debug)]
pub(super) struct Holder {
    /// Its kernel name, `dm-N`.
    pub kernel_name: String,
    /// Its dm name.
    pub name: String,
    /// Whether nothing is stacked on it in turn: a disk, not a layer under one.
    pub top: bool,
}

/// The stack above NBD device `index` (see [`Stack`]), read from sysfs: the `holders` folders
/// of the device, of its partitions, and of each holder in turn.
pub(super) fn stack(index: u32) -> Stack {
    let mut stack = Stack::default();
    let base = format!("/sys/block/nbd{index}");
    // The device and its partitions.
    let mut folders = crate::sysblock::with_partitions(Path::new(&base));
    let mut seen = std::collections::HashSet::new();
    while let Some(folder) = folders.pop() {
        if let Ok(number) = fs::read_to_string(folder.join("dev")) {
            stack.carriers.push(number.trim().to_string());
        }
        for kernel_name in crate::sysblock::holders(&folder) {
            if !seen.insert(kernel_name.clone()) {
                continue;
            }
            if let Ok(name) = fs::read_to_string(format!("/sys/block/{kernel_name}/dm/name")) {
                let folder = PathBuf::from(format!("/sys/block/{kernel_name}"));
                let top = crate::sysblock::holders(&folder).is_empty();
                stack.holders.push(Holder {
                    kernel_name: kernel_name.clone(),
                    name: name.trim().to_string(),
                    top,
                });
            }
            folders.push(PathBuf::from(format!("/sys/block/{kernel_name}")));
        }
    }
    stack
}

/// The addresses `url`'s host resolves to, with its port; none if it does not resolve.
fn addresses(url: &super::NbdUrl) -> Vec<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let host = url.host.trim_start_matches('[').trim_end_matches(']');
    (host, url.port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .unwrap_or_default()
}

/// The connected NBD device that already serves the export `url` names, if any: the same export
/// on the same port of the same host, also under another name of the host (the addresses it
/// resolves to). Two devices writing one export would each overwrite what the other wrote.
pub fn attached_as(url: &super::NbdUrl) -> Option<PathBuf> {
    let wanted = addresses(url);
    let entries = fs::read_dir("/sys/block").ok()?;
    entries.flatten().find_map(|entry| {
        let name = entry.file_name().to_str()?.to_string();
        let index: u32 = name.strip_prefix("nbd")?.parse().ok()?;
        fs::metadata(format!("/sys/block/nbd{index}/pid")).ok()?;
        let other = BackendId::parse(&backend(index)?)?.url;
        let same_export = other.port == url.port && other.export == url.export;
        let same_host =
            other.host == url.host || addresses(&other).iter().any(|a| wanted.contains(a));
        (same_export && same_host).then(|| device_path(index))
    })
}

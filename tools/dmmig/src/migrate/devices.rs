//! The devices of a move: block devices, loop devices, the destination and the metadata, and
//! what `move` created and undoes.

use super::record::state_dir;
use super::retire::MetadataLeft;
use crate::error::{Error, Result};
use dm_migrate_engine::table::DeviceGeometry;
use dm_migrate_engine::SECTOR_SIZE;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A block device's `major:minor` and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BlockDev {
    pub(super) major: u32,
    pub(super) minor: u32,
    pub(super) sectors: u64,
}

impl BlockDev {
    pub(super) fn number(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }

    fn sysfs(&self) -> PathBuf {
        PathBuf::from(format!("/sys/dev/block/{}:{}", self.major, self.minor))
    }

    /// Size and logical block size, as the target's constructor sees them.
    pub(super) fn geometry(&self) -> DeviceGeometry {
        let read = |file: &str| {
            fs::read_to_string(self.sysfs().join(file))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        DeviceGeometry {
            sectors: read("size").unwrap_or(0),
            logical_block_size: read("queue/logical_block_size").unwrap_or(512) as u32,
        }
    }

    pub(super) fn of_path(path: &Path) -> Result<Self> {
        let meta =
            fs::metadata(path).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
        if !meta.file_type().is_block_device() {
            return Err(Error::Usage(format!(
                "{} is not a block device",
                path.display()
            )));
        }
        let rdev = meta.rdev();
        let (major, minor) = (libc_major(rdev), libc_minor(rdev));
        Self::of_number(major, minor)
    }

    pub(super) fn of_number(major: u32, minor: u32) -> Result<Self> {
        let size = fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/size"))
            .map_err(|e| Error::Failed(format!("cannot read the size of {major}:{minor}: {e}")))?;
        let sectors = size
            .trim()
            .parse()
            .map_err(|_| Error::Failed("bad size in sysfs".into()))?;
        Ok(Self {
            major,
            minor,
            sectors,
        })
    }

    /// The backing file of a loop device, if it is one.
    pub(super) fn loop_backing_file(&self) -> Option<PathBuf> {
        let text = fs::read_to_string(self.sysfs().join("loop/backing_file")).ok()?;
        Some(PathBuf::from(text.trim_end()))
    }

    /// The kernel name (`loop0`), for /dev paths.
    pub(super) fn kernel_name(&self) -> Option<String> {
        let link = fs::read_link(self.sysfs()).ok()?;
        Some(link.file_name()?.to_string_lossy().into_owned())
    }
}

fn libc_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)) as u32
}

fn libc_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0xff)) as u32
}

/// What `move` created for the destination, undone on rollback.
#[derive(Default)]
pub(super) struct Created {
    pub(super) image: Option<PathBuf>,
    pub(super) loop_dev: Option<PathBuf>,
    pub(super) meta_image: Option<PathBuf>,
    meta_loop: Option<PathBuf>,
    /// A metadata device given with `--metadata`, wiped when the move ends.
    meta_given: Option<PathBuf>,
    /// The NBD device an nbd:// destination was connected as.
    pub(super) nbd: Option<PathBuf>,
    /// Its keeper, which exits when it gives the device up.
    pub(super) nbd_keeper: Option<std::process::Child>,
}

impl Created {
    /// Removes the metadata `move` made once no table uses it. A device it was given is wiped
    /// after a rollback (nothing may resume from bits the rollback made stale), and keeps its
    /// `switched` record after a finished move (a recover after a crash right after the swap
    /// then still finds the disk on the destination; the next move wipes it first).
    pub(super) fn remove_metadata(&mut self, rolled_back: bool) {
        if let Some(path) = self.meta_given.take() {
            if rolled_back {
                retire_metadata(&path, None, false);
            }
        }
        if let Some(dev) = self.meta_loop.take() {
            if let Ok(l) = loopdev::LoopDevice::open(&dev) {
                let _ = l.detach();
            }
        }
        if let Some(file) = self.meta_image.take() {
            let _ = fs::remove_file(file);
        }
    }

    /// The metadata of a move that has finished, for [`super::retire::retire`]: a file `move`
    /// made (removed there) or a device it was given (kept, switched).
    pub(super) fn take_metadata(&mut self) -> Option<MetadataLeft> {
        let loop_dev = self.meta_loop.take();
        if let Some(path) = self.meta_image.take() {
            return Some(MetadataLeft {
                path,
                loop_dev,
                created: true,
            });
        }
        self.meta_given.take().map(|path| MetadataLeft {
            path,
            loop_dev: None,
            created: false,
        })
    }

    pub(super) fn undo(&mut self) {
        self.remove_metadata(true);
        if let Some(dev) = self.nbd.take() {
            if let Ok(index) = crate::nbd::index_of(&dev) {
                let _ = crate::nbd::disconnect(index);
            }
        }
        if let Some(dev) = self.loop_dev.take() {
            if let Ok(l) = loopdev::LoopDevice::open(&dev) {
                let _ = l.detach();
            }
        }
        if let Some(image) = self.image.take() {
            let _ = fs::remove_file(image);
        }
    }
}

/// Attaches an image file to a free loop device; returns the loop device's path.
fn attach_loop(image: &Path) -> Result<PathBuf> {
    let control = loopdev::LoopControl::open()
        .map_err(|e| Error::Failed(format!("cannot open /dev/loop-control: {e}")))?;
    // Another process (or another disk of the same move) may take the free device between
    // `next_free` and the attach, which then fails busy: take the next one.
    let mut tries = 0;
    loop {
        let device = control
            .next_free()
            .map_err(|e| Error::Failed(format!("no free loop device: {e}")))?;
        match device.attach_file(image) {
            Ok(()) => {
                let path = device
                    .path()
                    .ok_or_else(|| Error::Failed("loop device has no path".into()))?;
                // Direct I/O, as `losetup --direct-io=on` (the README's own set-up): a VM with
                // cache=none must not run through the host's page cache after its move, and
                // writes acknowledged by the loop device are then in the image file, not in
                // the cache. A filesystem that cannot do it for this file keeps it buffered.
                if let Err(e) = device.set_direct_io(true) {
                    eprintln!(
                        "dmmig: {} cannot use direct I/O on {} ({e}); it goes through the page \
                         cache",
                        path.display(),
                        image.display()
                    );
                }
                return Ok(path);
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(Error::Failed(format!(
                    "cannot attach {}: {e}",
                    image.display()
                )))
            }
        }
    }
}

/// The metadata of a move: a small file next to a new image (or in the state folder), loop-
/// attached, or a device given with `--metadata`, checked for size and wiped of an old
/// migration's superblocks (a new move starts from scratch). Anything else on the device
/// refuses the move: it is not overwritten.
pub(super) fn prepare_metadata(
    name: &str,
    dest: &Path,
    dest_is_new: bool,
    given: Option<&Path>,
    bytes_needed: u64,
    allow_volatile: bool,
    created: &mut Created,
) -> Result<(BlockDev, PathBuf)> {
    let path = match given {
        Some(path) => path.to_path_buf(),
        None if dest_is_new => {
            let mut file = dest.as_os_str().to_owned();
            file.push(".dmmig-meta");
            PathBuf::from(file)
        }
        None => state_dir().join(format!("{name}.meta")),
    };
    match fs::metadata(&path) {
        Ok(meta) if meta.file_type().is_block_device() => {
            let dev = BlockDev::of_path(&path)?;
            if dev.sectors * SECTOR_SIZE < bytes_needed {
                return Err(Error::Usage(format!(
                    "metadata device {} is too small: {} bytes, this move needs {bytes_needed}",
                    path.display(),
                    dev.sectors * SECTOR_SIZE
                )));
            }
            if let Err(e) = crate::metadata::inspect(&path) {
                return Err(Error::Usage(format!(
                    "{e}; a metadata device must be blank or hold dm-migrate metadata"
                )));
            }
            let mut file = OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_EXCL)
                .open(&path)
                .map_err(|_| {
                    Error::Usage(format!("metadata device {} is in use", path.display()))
                })?;
            std::io::Write::write_all(&mut file, &[0u8; 8192])
                .and_then(|_| file.sync_all())
                .map_err(|e| Error::Failed(format!("cannot wipe {}: {e}", path.display())))?;
            created.meta_given = Some(path.clone());
            Ok((dev, path))
        }
        Ok(_) => Err(Error::Usage(format!(
            "{} exists; give a block device or a path that does not exist yet for the metadata",
            path.display()
        ))),
        Err(_) => {
            if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(dir)
                    .map_err(|e| Error::Usage(format!("cannot use {}: {e}", dir.display())))?;
            }
            check_durable(&path, "metadata file", allow_volatile)?;
            let file = File::options()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| Error::Usage(format!("cannot create {}: {e}", path.display())))?;
            created.meta_image = Some(path.clone());
            file.set_len(bytes_needed)
                .and_then(|_| file.sync_all())
                .map_err(|e| Error::Failed(format!("cannot size {}: {e}", path.display())))?;
            let loop_dev = attach_loop(&path)?;
            created.meta_loop = Some(loop_dev.clone());
            Ok((BlockDev::of_path(&loop_dev)?, path))
        }
    }
}

/// The space a new image of a disk of `bytes` over `origin` needs: the copy writes the origin's
/// zeros as holes (write-zeroes on a loop device punches them), so an origin that is itself a
/// sparse image needs about its allocated bytes, plus a tenth of the disk for what the guest
/// writes into holes meanwhile; anything else needs the whole size.
pub(super) fn space_needed(origin: &BlockDev, bytes: u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    origin
        .loop_backing_file()
        .and_then(|path| fs::metadata(path).ok())
        .filter(|meta| meta.is_file())
        .map_or(bytes, |meta| {
            (meta.blocks().saturating_mul(512))
                .saturating_add(bytes / 10)
                .min(bytes)
        })
}

/// Why a new file at `path` would not hold a disk across a reboot, if it would not: a path under
/// `/dev` names a device that does not exist (mistyped, or not attached yet: `rbd map`, an
/// iSCSI login), and creating it makes a file in memory (devtmpfs); a tmpfs or ramfs folder is
/// memory too. `fs_magic` is the folder's filesystem type (`statfs`).
pub fn volatile_reason(dir: &Path, fs_magic: i64) -> Option<&'static str> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    if dir.starts_with("/dev") {
        Some("is under /dev, where no such device exists (mistyped, or not attached yet?)")
    } else if fs_magic == TMPFS_MAGIC || fs_magic == RAMFS_MAGIC {
        Some("would be on a filesystem in memory (tmpfs or ramfs), lost at the next reboot")
    } else {
        None
    }
}

/// Refuses a new `what` at `path` that would not survive a reboot ([`volatile_reason`]), unless
/// allowed (a test rig).
fn check_durable(path: &Path, what: &str, allow_volatile: bool) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = fs::canonicalize(dir)
        .map_err(|e| Error::Usage(format!("cannot use {}: {e}", dir.display())))?;
    let magic = nix::sys::statfs::statfs(&dir)
        .map_err(|e| Error::Usage(format!("cannot use {}: {e}", dir.display())))?
        .filesystem_type()
        .0 as i64;
    match volatile_reason(&dir, magic) {
        // Under /dev no override: a device path that does not exist is a mistake.
        Some(reason) if dir.starts_with("/dev") || !allow_volatile => Err(Error::Usage(format!(
            "the new {what} {} {reason}; give an existing block device, or a path on durable \
             storage{}",
            path.display(),
            if dir.starts_with("/dev") {
                ""
            } else {
                " (--allow-volatile for a test rig)"
            }
        ))),
        _ => Ok(()),
    }
}

/// Opens (or creates, sparse and loop-attached) the destination; a new image file needs
/// `space` bytes free on its filesystem.
pub(super) fn prepare_destination(
    dest: &Path,
    bytes: u64,
    space: u64,
    allow_volatile: bool,
    force: bool,
    created: &mut Created,
) -> Result<BlockDev> {
    match fs::metadata(dest) {
        Ok(meta) if meta.file_type().is_block_device() => {
            let dev = BlockDev::of_path(dest)?;
            if dev.sectors * SECTOR_SIZE < bytes {
                return Err(Error::Usage(format!(
                    "destination {} is too small: {} bytes, the disk has {bytes}; use a device \
                     at least as large",
                    dest.display(),
                    dev.sectors * SECTOR_SIZE
                )));
            }
            // O_EXCL on a block device fails with EBUSY while anything holds it.
            let mut file = OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_EXCL)
                .open(dest)
                .map_err(|_| {
                    Error::Usage(format!(
                        "destination {} is in use (mounted, mapped or open); pick a free device",
                        dest.display()
                    ))
                })?;
            // Nor does anyone on this host have to hold a device for it to hold data: another
            // host's, a VM's, or an old one nobody wiped.
            let found = crate::signature::probe(&mut file).map_err(|e| {
                Error::Failed(format!("cannot read destination {}: {e}", dest.display()))
            })?;
            if let (Some(what), false) = (found, force) {
                return Err(Error::Usage(format!(
                    "destination {} holds {what}, which the move would overwrite: check that \
                     it is the device you mean, and wipe it (wipefs -a) or give --force",
                    dest.display()
                )));
            }
            Ok(dev)
        }
        Ok(_) => Err(Error::Usage(format!(
            "{} exists; give a block device or a path that does not exist yet",
            dest.display()
        ))),
        Err(_) => {
            check_durable(dest, "image", allow_volatile)?;
            let dir = dest
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let stat = nix::sys::statvfs::statvfs(dir)
                .map_err(|e| Error::Usage(format!("cannot use {}: {e}", dir.display())))?;
            let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
            if free < space {
                return Err(Error::Usage(format!(
                    "not enough space for {}: {free} bytes free on its filesystem, the disk \
                     needs {space}; free space or choose another filesystem",
                    dest.display()
                )));
            }
            let file = File::options()
                .write(true)
                .create_new(true)
                .open(dest)
                .map_err(|e| Error::Usage(format!("cannot create {}: {e}", dest.display())))?;
            created.image = Some(dest.to_path_buf());
            file.set_len(bytes)
                .map_err(|e| Error::Failed(format!("cannot size {}: {e}", dest.display())))?;
            let path = attach_loop(dest)?;
            created.loop_dev = Some(path.clone());
            BlockDev::of_path(&path)
        }
    }
}

/// The loop device an image file is attached to, if any.
pub(super) fn loop_of(image: &Path) -> Option<PathBuf> {
    let image = fs::canonicalize(image).ok()?;
    fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let backing = fs::read_to_string(entry.path().join("loop/backing_file")).ok()?;
            (Path::new(backing.trim_end()) == image)
                .then(|| PathBuf::from("/dev").join(entry.file_name()))
        })
}

/// A block device, or an image file attached to a loop device (again, after a reboot). Returns
/// the device and the loop device this attached, if any.
pub(super) fn open_device(path: &Path) -> Result<(BlockDev, Option<PathBuf>)> {
    let meta = fs::metadata(path).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    if meta.file_type().is_block_device() {
        return Ok((BlockDev::of_path(path)?, None));
    }
    if let Some(dev) = loop_of(path) {
        return Ok((BlockDev::of_path(&dev)?, None));
    }
    let dev = attach_loop(path)?;
    Ok((BlockDev::of_path(&dev)?, Some(dev)))
}

pub(super) fn detach(dev: &Path) {
    if let Ok(l) = loopdev::LoopDevice::open(dev) {
        let _ = l.detach();
    }
}

/// Retires a move's metadata once the move has ended: a file `move` made is detached and
/// removed; a device given with `--metadata` is wiped (its superblocks zeroed), so that nothing
/// later trusts bits a rollback made stale.
pub(super) fn retire_metadata(path: &Path, loop_dev: Option<PathBuf>, created: bool) {
    if let Some(dev) = loop_dev.or_else(|| loop_of(path)) {
        detach(&dev);
    }
    if created {
        let _ = fs::remove_file(path);
    } else if let Ok(mut file) = OpenOptions::new().write(true).open(path) {
        let _ = std::io::Write::write_all(&mut file, &[0u8; 8192]).and_then(|_| file.sync_all());
    }
}

/// Whether `path` is `device`: the block device itself, or an image its loop device is attached
/// to.
pub(super) fn same_device(path: &Path, device: &BlockDev) -> bool {
    if let Ok(dev) = BlockDev::of_path(path) {
        return dev.major == device.major && dev.minor == device.minor;
    }
    device
        .loop_backing_file()
        .is_some_and(|image| same_file(&image, path))
}

/// Whether two paths name the same file.
pub(super) fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_files_in_memory_or_under_dev_are_volatile() {
        let tmpfs = 0x0102_1994;
        let ramfs = 0x8584_58f6;
        let ext4 = 0xef53;
        assert!(
            volatile_reason(Path::new("/dev"), tmpfs).is_some(),
            "/dev/sdx"
        );
        assert!(volatile_reason(Path::new("/dev/disk/by-id"), tmpfs).is_some());
        assert!(
            volatile_reason(Path::new("/dev"), ext4).is_some(),
            "whatever /dev is"
        );
        assert!(volatile_reason(Path::new("/run/vm"), tmpfs).is_some());
        assert!(volatile_reason(Path::new("/mnt/ram"), ramfs).is_some());
        assert!(volatile_reason(Path::new("/var/lib/images"), ext4).is_none());
        assert!(
            volatile_reason(Path::new("/devices"), ext4).is_none(),
            "not /dev itself"
        );
    }

    #[test]
    fn splits_device_numbers() {
        // makedev(253, 5) and makedev(259, 70000) as glibc packs them.
        assert_eq!((libc_major(0xfd05), libc_minor(0xfd05)), (253, 5));
        let dev = nix::sys::stat::makedev(259, 70000);
        assert_eq!((libc_major(dev), libc_minor(dev)), (259, 70000));
    }
}

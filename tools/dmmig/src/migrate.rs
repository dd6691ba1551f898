//! `dmmig move`: moves a live dm-linear disk to a new device or image file with the `migrate`
//! target, swaps the table to a linear on the destination, and retires the old image.
//!
//! Whatever happens (a destination error, a failed migration, Ctrl-C or SIGTERM), the disk keeps
//! serving from its origin: the original table is put back, and what `move` created (a loop
//! device, an image file) is removed.

use crate::dm::Dm;
use crate::error::{Error, Result};
use crate::table::TableLine;
use dm_migrate_engine::state::{Progress, State};
use dm_migrate_engine::table::{DeviceGeometry, Geometry, Options, TableArgs};
use dm_migrate_engine::SECTOR_SIZE;
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `dmmig move`.
#[derive(Debug, Clone, Default)]
pub struct MoveOptions {
    /// The copy rate's ceiling in KiB/s (0: none).
    pub max_rate: Option<u64>,
    /// The adaptive copy rate's floor in KiB/s.
    pub min_rate: Option<u64>,
    /// Region size in sectors.
    pub region_size: Option<u64>,
    /// Copy batches in flight.
    pub depth: Option<u32>,
    /// Keep the old image file and its loop device.
    pub keep_source: bool,
    /// Print no progress bar.
    pub no_progress: bool,
    /// The metadata device or file to use instead of the default one.
    pub metadata: Option<PathBuf>,
    /// Run without a metadata device: a crash then loses the copy's progress.
    pub no_metadata: bool,
    /// Several disks switching together: the migration is loaded with `no_switch`, waits in
    /// sync at this gate until every disk of the move is, and only then may switch.
    pub gate: Option<Arc<crate::multi::SwitchGate>>,
    /// The NBD client's timeouts, for an nbd:// destination.
    pub nbd: crate::nbd::Timeouts,
    /// Allow new images (and metadata files) in memory (tmpfs, ramfs): for test rigs only;
    /// also `DMMIG_ALLOW_VOLATILE=1`.
    pub allow_volatile: bool,
    /// Overwrite a destination device that holds a filesystem, partition table or other
    /// signature.
    pub force: bool,
}

/// What `move` records for `recover`: enough to load the migrate table again after a reboot.
/// Written atomically before the migrate table is loaded, removed when the move has ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MoveRecord {
    /// The dm device.
    pub name: String,
    /// Its length in sectors.
    pub length: u64,
    /// The origin: an image file (attached to a loop device again after a reboot) or a block
    /// device.
    pub origin: PathBuf,
    /// The destination, likewise.
    pub destination: PathBuf,
    /// For an NBD destination, its URL: `destination` is then the `/dev/nbdN` it was attached
    /// as, which a reboot disconnects, and `recover` attaches the URL again.
    #[serde(default)]
    pub destination_url: Option<String>,
    /// The metadata file or device.
    pub metadata: PathBuf,
    /// Whether `move` created the metadata (and removes it at the end).
    pub metadata_created: bool,
    /// Region size, copy depth and rates of the migrate table (`rate` is the ceiling).
    pub region_size: Option<u64>,
    pub depth: Option<u32>,
    pub rate: Option<u64>,
    #[serde(default)]
    pub min_rate: Option<u64>,
    /// Keep the old image at the end.
    pub keep_source: bool,
}

/// Where `move` keeps its records (`DMMIG_STATE_DIR`, default `/var/lib/dmmig`): it must
/// survive a reboot.
pub fn state_dir() -> PathBuf {
    std::env::var_os("DMMIG_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/dmmig"))
}

impl MoveRecord {
    fn path(name: &str) -> PathBuf {
        state_dir().join(format!("{name}.json"))
    }

    /// Reads the record of a move of `name`.
    pub fn read(name: &str) -> Result<Self> {
        let path = Self::path(name);
        let text = fs::read_to_string(&path).map_err(|e| {
            Error::Usage(format!(
                "no record of a move of '{name}' ({}: {e}); give --origin, --dest and --metadata",
                path.display()
            ))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Failed(format!("{} is damaged: {e}", path.display())))
    }

    /// Writes the record atomically (a temporary file, synced, renamed over, the folder synced).
    fn write(&self) -> Result<()> {
        let dir = state_dir();
        let fail = |e: std::io::Error| {
            Error::Failed(format!("cannot record the move in {}: {e}", dir.display()))
        };
        fs::create_dir_all(&dir).map_err(fail)?;
        let path = Self::path(&self.name);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Failed(format!("cannot format the record: {e}")))?;
        let mut file = File::create(&tmp).map_err(fail)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        fs::rename(&tmp, &path).map_err(fail)?;
        File::open(&dir).and_then(|d| d.sync_all()).map_err(fail)
    }

    fn remove(name: &str) {
        let _ = fs::remove_file(Self::path(name));
    }
}

/// What `move` reports at the end.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The dm device moved.
    pub device: String,
    /// The destination block device.
    pub destination: String,
    /// Bytes in the disk.
    pub bytes: u64,
    /// Seconds from the start of the migration to the end of the table swap.
    pub seconds: f64,
    /// Mean copy rate, MiB/s.
    pub mean_mib_per_s: f64,
    /// The longest time I/O was held: the suspend/resume of a table swap, in milliseconds.
    pub longest_pause_ms: f64,
    /// The old image file that was unlinked, if any.
    pub removed_image: Option<String>,
}

/// A block device's `major:minor` and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BlockDev {
    major: u32,
    minor: u32,
    sectors: u64,
}

impl BlockDev {
    fn number(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }

    fn sysfs(&self) -> PathBuf {
        PathBuf::from(format!("/sys/dev/block/{}:{}", self.major, self.minor))
    }

    /// Size and logical block size, as the target's constructor sees them.
    fn geometry(&self) -> DeviceGeometry {
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

    fn of_path(path: &Path) -> Result<Self> {
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

    fn of_number(major: u32, minor: u32) -> Result<Self> {
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
    fn loop_backing_file(&self) -> Option<PathBuf> {
        let text = fs::read_to_string(self.sysfs().join("loop/backing_file")).ok()?;
        Some(PathBuf::from(text.trim_end()))
    }

    /// The kernel name (`loop0`), for /dev paths.
    fn kernel_name(&self) -> Option<String> {
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

/// The device's only table line, which must be a linear at offset 0 of a whole origin.
fn linear_origin(dm: &Dm, name: &str) -> Result<(TableLine, BlockDev)> {
    let table = dm.table(name)?;
    let [line] = table.as_slice() else {
        return Err(Error::Usage(format!(
            "'{name}' has {} table lines; move needs a single linear segment",
            table.len()
        )));
    };
    if line.target_type != "linear" || line.start != 0 {
        return Err(Error::Usage(format!(
            "'{name}' is a '{}' device; move needs a single linear segment over its origin",
            line.target_type
        )));
    }
    let mut words = line.params.split(' ');
    let (Some(dev), Some("0")) = (words.next(), words.next()) else {
        return Err(Error::Usage(format!(
            "'{name}' maps its origin from an offset ({}); move needs offset 0",
            line.params
        )));
    };
    let (major, minor) = dev
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| Error::Failed(format!("unexpected origin '{dev}' in the table")))?;
    Ok((line.clone(), BlockDev::of_number(major, minor)?))
}

/// What `move` created for the destination, undone on rollback.
#[derive(Default)]
struct Created {
    image: Option<PathBuf>,
    loop_dev: Option<PathBuf>,
    meta_image: Option<PathBuf>,
    meta_loop: Option<PathBuf>,
    /// A metadata device given with `--metadata`, wiped when the move ends.
    meta_given: Option<PathBuf>,
    /// The NBD device an nbd:// destination was connected as.
    nbd: Option<PathBuf>,
    /// Its keeper, which exits when it gives the device up.
    nbd_keeper: Option<std::process::Child>,
}

impl Created {
    /// Removes the metadata `move` made once no table uses it. A device it was given is wiped
    /// after a rollback (nothing may resume from bits the rollback made stale), and keeps its
    /// `switched` record after a finished move (a recover after a crash right after the swap
    /// then still finds the disk on the destination; the next move wipes it first).
    fn remove_metadata(&mut self, rolled_back: bool) {
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

    fn undo(&mut self) {
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
fn prepare_metadata(
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
fn space_needed(origin: &BlockDev, bytes: u64) -> u64 {
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
fn prepare_destination(
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

/// Reads one sysfs counter of a migrate device.
fn counter(dir: &Path, file: &str) -> Option<String> {
    fs::read_to_string(dir.join(file))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Which device holds every write of a migration that `move` gives up on.
enum Holder {
    Origin,
    Destination,
}

/// Ends a migration that `move` gives up on (interrupted, failed), for good, and says which
/// device holds every write. A cancelled, failed or cancelled-again migration keeps everything
/// on the origin and can no longer switch; the kernel refuses `cancel` only once the target has
/// switched, and then only the destination has the writes made since. Rolling back to the
/// origin without this would lose them if the switch came just before.
fn settle(dm: &Dm, name: &str) -> Result<Holder> {
    if dm.message(name, 0, "cancel").is_ok() {
        return Ok(Holder::Origin);
    }
    if let Some(line) = dm
        .table(name)?
        .first()
        .filter(|l| l.target_type != "migrate")
    {
        return Err(Error::Failed(format!(
            "the disk runs a '{}' table now, not the migration: nothing is changed or removed",
            line.target_type
        )));
    }
    let status = dm.status(name)?;
    let line = status
        .first()
        .map(|line| line.params.as_str())
        .unwrap_or_default();
    match Progress::parse_info(line).map(|p| p.state) {
        Some(State::Switched) => Ok(Holder::Destination),
        Some(State::Failed(_) | State::Cancelled) => Ok(Holder::Origin),
        _ => Err(Error::Failed(format!(
            "cannot stop the migration (status '{line}'): the disk is left on the migrate table"
        ))),
    }
}

/// Swaps the live table (suspend, load, resume) and returns how long I/O was held.
fn swap_table(dm: &Dm, name: &str, table: &[TableLine]) -> Result<Duration> {
    dm.load(name, table)?;
    activate(dm, name)
}

/// Makes a loaded table live (suspend, resume); returns how long I/O was held.
fn activate(dm: &Dm, name: &str) -> Result<Duration> {
    let start = Instant::now();
    dm.suspend(name, false)?;
    dm.resume(name)?;
    Ok(start.elapsed())
}

/// Makes sure the kernel has the `migrate` target before anything is created: if it is not
/// loaded, asks for the module as the kernel's own autoload would (the `modprobe` of
/// /proc/sys/kernel/modprobe, `-q -- dm-migrate`), and refuses the move if it is still missing.
fn ensure_migrate_target(dm: &Dm) -> Result<()> {
    if dm.has_target("migrate")? {
        return Ok(());
    }
    let helper = fs::read_to_string("/proc/sys/kernel/modprobe")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/sbin/modprobe".into());
    let _ = std::process::Command::new(&helper)
        .args(["-q", "--", "dm-migrate"])
        .stdin(std::process::Stdio::null())
        .status();
    if dm.has_target("migrate")? {
        return Ok(());
    }
    Err(Error::Failed(
        "the kernel has no 'migrate' target: dm-migrate.ko is not loaded and could not be \
         (install it with 'make install', or load it with 'insmod dm-migrate.ko'); nothing \
         was changed"
            .into(),
    ))
}

/// Follows a migration until it switches, with a progress bar unless `no_progress`; fails when
/// it fails or is cancelled, or when `stop` is set.
fn wait_for_switch(
    dm: &Dm,
    name: &str,
    no_progress: bool,
    bytes: u64,
    stop: &AtomicBool,
) -> Result<()> {
    wait_for_state(dm, name, no_progress, bytes, stop, "switched")
}

/// Follows a migration until its state is `want` (`switched`, or `synced` with no_switch), as
/// [`wait_for_switch`].
fn wait_for_state(
    dm: &Dm,
    name: &str,
    no_progress: bool,
    bytes: u64,
    stop: &AtomicBool,
    want: &str,
) -> Result<()> {
    let info = dm.info(name)?;
    let sysfs = PathBuf::from(format!(
        "/sys/dev/block/{}:{}/migrate",
        info.major, info.minor
    ));
    let bar = progress_bar(no_progress, bytes);
    let outcome = loop {
        if stop.load(Ordering::Relaxed) {
            break Err(Error::Failed("interrupted".into()));
        }
        let Some(state) = counter(&sysfs, "state") else {
            // The counters are there while the migrate table is live and resumed. Without
            // them, a table that is no longer `migrate` was swapped in by someone else: there
            // is no migration to follow (and no telling what it did).
            let live = dm.table(name)?;
            if live.first().is_some_and(|l| l.target_type != "migrate") {
                break Err(Error::Failed(format!(
                    "the disk's migrate table was replaced by another (now '{}'): the \
                     migration is no longer dmmig's",
                    live.first().map(|l| l.target_type.as_str()).unwrap_or("")
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        if let Some(bar) = &bar {
            let copied = counter(&sysfs, "copied_bytes")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let rate = counter(&sysfs, "rate_kibps").unwrap_or_default();
            bar.set_position(copied);
            bar.set_message(format!("{state} {rate} KiB/s"));
        }
        match state.as_str() {
            s if s == want => break Ok(()),
            "failed" | "cancelled" => {
                let status = dm
                    .status(name)?
                    .first()
                    .map(|l| l.params.clone())
                    .unwrap_or_default();
                break Err(Error::Failed(format!("the migration {state}: {status}")));
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    outcome
}

/// Where an origin can be found again after a reboot: its image file, or its device node.
fn origin_path(origin: &BlockDev) -> PathBuf {
    origin
        .loop_backing_file()
        .or_else(|| {
            origin
                .kernel_name()
                .map(|n| PathBuf::from(format!("/dev/{n}")))
        })
        .unwrap_or_else(|| PathBuf::from(origin.number()))
}

/// The migrate table's options of a move, checked as the kernel checks them, before anything is
/// created (or the control device opened): a bad value is refused in the words the kernel
/// would log.
pub fn table_options(opts: &MoveOptions) -> Result<Options> {
    let options = Options {
        region_size: opts.region_size,
        copy_depth: opts.depth,
        max_rate: opts.max_rate,
        min_rate: opts.min_rate,
        no_switch: opts.gate.is_some(),
        metadata: !opts.no_metadata,
        ..Options::default()
    };
    let mut words = String::from("origin destination");
    options
        .write(&mut words, "metadata")
        .map_err(|_| Error::Failed("table text".into()))?;
    TableArgs::parse(&words.split_whitespace().collect::<Vec<_>>())
        .map_err(|e| Error::Usage(format!("{e}")))?;
    Ok(options)
}

/// Runs a whole move. `stop` is set by SIGINT, SIGTERM and SIGHUP.
pub fn run_move(
    name: &str,
    dest: &Path,
    opts: &MoveOptions,
    stop: Arc<AtomicBool>,
) -> Result<Summary> {
    let options = table_options(opts)?;
    let dm = Dm::open()?;
    let info = dm.info(name)?;
    let _lock = lock(name)?;
    let (original, origin) = linear_origin(&dm, name)?;
    ensure_migrate_target(&dm)?;
    let bytes = original.length * SECTOR_SIZE;
    let mut created = Created::default();
    // Whether a table (live or loaded) may use the destination: from the migrate table's load
    // until a rollback has put the original table back. Until then, what move created stays,
    // whatever fails: removing the image of a disk that may be writing to it loses the writes.
    let mut destination_in_use = false;
    // Whether `move` recorded itself for `recover`.
    let mut recorded = false;
    // An nbd:// destination is connected first, and is then a block device like any other.
    let nbd_device;
    let mut dest_url = None;
    let dest = match dest
        .to_str()
        .map(crate::nbd::NbdUrl::parse)
        .transpose()?
        .flatten()
    {
        Some(url) => {
            let keeper;
            (nbd_device, keeper) = crate::nbd::connect(&url, opts.nbd)?;
            created.nbd_keeper = Some(keeper);
            eprintln!("dmmig: {url} is {}", nbd_device.display());
            dest_url = Some(url.to_string());
            created.nbd = Some(nbd_device.clone());
            nbd_device.as_path()
        }
        None => dest,
    };
    let result = (|| {
        if let Ok(dev) = BlockDev::of_path(dest) {
            if (dev.major, dev.minor) == (info.major, info.minor) {
                return Err(Error::Usage(format!(
                    "{} is the disk itself; give another device or a new image path",
                    dest.display()
                )));
            }
        }
        let space = space_needed(&origin, bytes);
        let allow_volatile = opts.allow_volatile
            || std::env::var_os("DMMIG_ALLOW_VOLATILE").is_some_and(|v| v == "1");
        let destination =
            prepare_destination(dest, bytes, space, allow_volatile, opts.force, &mut created)?;
        // And against the devices, as the constructor will.
        Geometry::validate(
            &options,
            original.length,
            origin.geometry(),
            destination.geometry(),
            (origin.major, origin.minor) == (destination.major, destination.minor),
        )
        .map_err(|e| Error::Usage(format!("{e}")))?;
        let dest_is_new = created.image.is_some();
        let metadata = if opts.no_metadata {
            None
        } else {
            let needed = crate::metadata::size_for(original.length, options.region_sectors());
            let (dev, path) = prepare_metadata(
                name,
                dest,
                dest_is_new,
                opts.metadata.as_deref(),
                needed,
                allow_volatile,
                &mut created,
            )?;
            if [
                (origin.major, origin.minor),
                (destination.major, destination.minor),
            ]
            .contains(&(dev.major, dev.minor))
            {
                return Err(Error::Usage(format!(
                    "metadata {} is the origin or the destination",
                    path.display()
                )));
            }
            MoveRecord {
                name: name.to_string(),
                length: original.length,
                origin: origin_path(&origin),
                destination: dest.to_path_buf(),
                destination_url: dest_url.clone(),
                metadata: path,
                metadata_created: created.meta_image.is_some(),
                region_size: opts.region_size,
                depth: opts.depth,
                rate: opts.max_rate,
                min_rate: opts.min_rate,
                keep_source: opts.keep_source,
            }
            .write()?;
            recorded = true;
            Some(dev)
        };
        let metadata_number = metadata.map_or(String::new(), |m| m.number());
        // The migrate table of the move, with `options`.
        let migrate_line = |options: &Options| -> Result<TableLine> {
            let mut params = format!("{} {}", origin.number(), destination.number());
            options
                .write(&mut params, &metadata_number)
                .map_err(|_| Error::Failed("table text".into()))?;
            Ok(TableLine {
                start: 0,
                length: original.length,
                target_type: "migrate".into(),
                params,
            })
        };
        let started = Instant::now();
        // A table the kernel refuses was never loaded: nothing uses the destination, and all
        // that move created is undone. Once loaded, the inactive table holds it.
        dm.load(name, &[migrate_line(&options)?])?;
        destination_in_use = true;
        let mut longest = activate(&dm, name)?;
        let outcome = match &opts.gate {
            None => wait_for_switch(&dm, name, opts.no_progress, bytes, &stop),
            // In sync (mirrored, not switching) until every disk is, then the same migration
            // without no_switch: the target switches at once, as each disk of the move does.
            Some(gate) => wait_for_state(&dm, name, opts.no_progress, bytes, &stop, "synced")
                .and_then(|()| {
                    let sysfs = PathBuf::from(format!(
                        "/sys/dev/block/{}:{}/migrate",
                        info.major, info.minor
                    ));
                    let in_sync = || counter(&sysfs, "state").as_deref() == Some("synced");
                    gate.pass(&stop, &in_sync)?;
                    // Once more just before the reload: a failed or cancelled copy must not be
                    // started again (an identical reload retries it) while the others switch.
                    if !in_sync() {
                        return Err(Error::Failed(
                            "the migration left its sync at the switch".into(),
                        ));
                    }
                    Ok(())
                })
                .and_then(|()| {
                    let switching = migrate_line(&Options {
                        no_switch: false,
                        ..options
                    })?;
                    longest = longest.max(swap_table(&dm, name, &[switching])?);
                    wait_for_switch(&dm, name, opts.no_progress, bytes, &stop)
                }),
        };
        if outcome.is_err() {
            if let Some(gate) = &opts.gate {
                gate.abort();
            }
        }
        if let Err(e) = outcome {
            match settle(&dm, name)? {
                // Back to the original table: the migration is over without a switch, so the
                // origin has every write.
                Holder::Origin => {
                    swap_table(&dm, name, std::slice::from_ref(&original))?;
                    destination_in_use = false;
                    created.remove_metadata(true);
                    MoveRecord::remove(name);
                    return Err(e);
                }
                // It switched before it could be stopped: only the destination has the writes
                // since, so the move is finished rather than rolled back.
                Holder::Destination => {
                    eprintln!("dmmig: {e}, but the disk had switched already: finishing the move")
                }
            }
        }
        let linear = TableLine {
            params: format!("{} 0", destination.number()),
            ..original.clone()
        };
        longest = longest.max(swap_table(&dm, name, &[linear])?);
        // No table uses the metadata any more.
        created.remove_metadata(false);
        MoveRecord::remove(name);
        let seconds = started.elapsed().as_secs_f64();
        Ok((destination, seconds, longest))
    })();
    let (destination, seconds, longest) = match result {
        Ok(done) => done,
        Err(e) => {
            // The NBD keeper gives up a migration whose destination's link died before the
            // switch: it cancels it, disconnects the device and exits (a timeout ends none).
            let keeper_gave_up = created
                .nbd_keeper
                .as_mut()
                .is_some_and(|keeper| matches!(keeper.try_wait(), Ok(Some(_))));
            if destination_in_use {
                eprintln!(
                    "dmmig: '{name}' may still use {}: it is left in place (see 'dmmig table {name}')",
                    dest.display()
                );
                if recorded {
                    eprintln!("dmmig: to finish the move later: dmmig recover {name}");
                }
            } else {
                created.undo();
                if recorded {
                    MoveRecord::remove(name);
                }
            }
            return Err(match e {
                Error::Failed(why) if keeper_gave_up => Error::Failed(format!(
                    "{why} (the NBD connection to the destination died; the keeper gave up \
                         the migration and disconnected it, which leaves every write on the \
                         origin: see dmmig's lines in the kernel log, and run the move again to \
                         retry)"
                )),
                e => e,
            });
        }
    };
    // The disk is on the destination now: what `move` made is the disk's, keep it.
    let dest_name = created
        .loop_dev
        .take()
        .map(|p| p.display().to_string())
        .or_else(|| destination.kernel_name().map(|n| format!("/dev/{n}")))
        .unwrap_or_else(|| destination.number());
    created.image = None;
    // The disk now lives on the NBD device alone: it needs its keeper, which may have died
    // meanwhile (killed, or stopped with the service that ran this move).
    if let (Some(keeper), Some(device)) = (created.nbd_keeper.as_mut(), created.nbd.as_ref()) {
        if matches!(keeper.try_wait(), Ok(Some(_))) {
            match crate::nbd::attach_keeper(device) {
                Ok(new_keeper) => {
                    eprintln!(
                        "dmmig: the keeper of {} had ended: started a new one",
                        device.display()
                    );
                    *keeper = new_keeper;
                }
                Err(e) => eprintln!(
                    "dmmig: the keeper of {} has ended and a new one did not start ({e}): run \
                     'dmmig nbd keep {}', or a dead link will not be reconnected",
                    device.display(),
                    device.display()
                ),
            }
        }
    }
    let mut removed_image = None;
    if !opts.keep_source {
        if let Some(image) = origin.loop_backing_file() {
            if let Some(kname) = origin.kernel_name() {
                if let Ok(l) = loopdev::LoopDevice::open(format!("/dev/{kname}")) {
                    let _ = l.detach();
                }
            }
            if fs::remove_file(&image).is_ok() {
                removed_image = Some(image.display().to_string());
            }
        }
    }
    Ok(Summary {
        device: name.to_string(),
        destination: dest_name,
        bytes,
        seconds,
        mean_mib_per_s: bytes as f64 / (1 << 20) as f64 / seconds.max(1e-9),
        longest_pause_ms: longest.as_secs_f64() * 1000.0,
        removed_image,
    })
}

/// Options of `dmmig recover`; what is not given comes from the record `move` left.
#[derive(Debug, Clone, Default)]
pub struct RecoverOptions {
    pub origin: Option<PathBuf>,
    pub destination: Option<PathBuf>,
    pub metadata: Option<PathBuf>,
    pub no_progress: bool,
}

/// The loop device an image file is attached to, if any.
fn loop_of(image: &Path) -> Option<PathBuf> {
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
fn open_device(path: &Path) -> Result<(BlockDev, Option<PathBuf>)> {
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

fn detach(dev: &Path) {
    if let Ok(l) = loopdev::LoopDevice::open(dev) {
        let _ = l.detach();
    }
}

/// Retires a move's metadata once the move has ended: a file `move` made is detached and
/// removed; a device given with `--metadata` is wiped (its superblocks zeroed), so that nothing
/// later trusts bits a rollback made stale.
fn retire_metadata(path: &Path, loop_dev: Option<PathBuf>, created: bool) {
    if let Some(dev) = loop_dev.or_else(|| loop_of(path)) {
        detach(&dev);
    }
    if created {
        let _ = fs::remove_file(path);
    } else if let Ok(mut file) = OpenOptions::new().write(true).open(path) {
        let _ = std::io::Write::write_all(&mut file, &[0u8; 8192]).and_then(|_| file.sync_all());
    }
}

/// Refuses to recover over a table that is neither absent, nor the move's own migrate table,
/// nor its final linear: whatever the device runs may have taken writes the metadata knows
/// nothing about (a boot script that brought the disk back on its origin, say).
fn check_live_table(dm: &Dm, name: &str, destination: &BlockDev) -> Result<()> {
    if dm.info(name).is_err() {
        return Ok(());
    }
    let table = dm.table(name)?;
    let dest = destination.number();
    let ours = match table.as_slice() {
        [line] if line.target_type == "migrate" => {
            line.params.split(' ').nth(1) == Some(dest.as_str())
        }
        [line] if line.target_type == "linear" => line.params == format!("{dest} 0"),
        _ => false,
    };
    if ours {
        return Ok(());
    }
    let text: Vec<String> = table.iter().map(|l| l.to_string()).collect();
    Err(Error::Usage(format!(
        "'{name}' runs another table ({}): it may hold writes the metadata does not know of; \
         remove the device (or load the move's table) before recovering",
        text.join("; ")
    )))
}

/// Loads `table` on `name`, creating the device if it does not exist (after a reboot).
fn put_table(dm: &Dm, name: &str, table: &[TableLine]) -> Result<Duration> {
    if dm.info(name).is_ok() {
        swap_table(dm, name, table)
    } else {
        dm.create(name, Some(table))?;
        // Without udev nothing else makes /dev/mapper/NAME.
        if !crate::nodes::udev_running() {
            let info = dm.info(name)?;
            crate::nodes::ensure_node(name, info.major, info.minor)?;
        }
        Ok(Duration::ZERO)
    }
}

/// The device of the NBD destination `url` of a move, recorded as `recorded`: that device if it
/// is still connected to the URL, or a newly attached one (with its keeper) if not.
fn reattach_nbd(url: &str, recorded: &Path) -> Result<PathBuf> {
    let url = crate::nbd::NbdUrl::parse(url)?
        .ok_or_else(|| Error::Failed(format!("the record's destination URL '{url}' is not one")))?;
    let connected = crate::nbd::index_of(recorded)
        .ok()
        .and_then(crate::nbd::backend)
        .is_some_and(|backend| backend == url.to_string());
    if connected {
        return Ok(recorded.to_path_buf());
    }
    let (device, _keeper) = crate::nbd::connect(&url, crate::nbd::Timeouts::default())?;
    eprintln!(
        "dmmig: {} is no longer {url}: attached it again as {}",
        recorded.display(),
        device.display()
    );
    Ok(device)
}

/// Finishes a move after a crash or reboot from what its metadata records: a switched move
/// gets its linear table on the destination at once; any other loads the migrate table again,
/// which resumes the copy where the metadata says, and then swaps. The old image is unlinked
/// and the metadata removed as `move` would have.
pub fn run_recover(name: &str, opts: &RecoverOptions, stop: Arc<AtomicBool>) -> Result<Summary> {
    let record = MoveRecord::read(name);
    let pick = |given: &Option<PathBuf>, what: &str, from: fn(&MoveRecord) -> &PathBuf| {
        given
            .clone()
            .or_else(|| record.as_ref().ok().map(|r| from(r).clone()))
            .ok_or_else(|| match &record {
                Err(e) => Error::Usage(format!("{e}: no --{what}")),
                Ok(_) => Error::Usage(format!("no --{what}")),
            })
    };
    let origin_path = pick(&opts.origin, "origin", |r| &r.origin)?;
    let mut dest_path = pick(&opts.destination, "dest", |r| &r.destination)?;
    let meta_path = pick(&opts.metadata, "metadata", |r| &r.metadata)?;
    let record = record.ok();
    let inspection = crate::metadata::inspect(&meta_path)?;
    let switched = inspection.phase() == Some(dm_migrate_engine::metadata::Phase::Switched);
    let length = match (inspection.phase(), &record) {
        (Some(_), _) => inspection.target_sectors,
        (None, Some(r)) => r.length,
        (None, None) => {
            return Err(Error::Usage(format!(
                "{} is blank and there is no record of the move: nothing to recover",
                meta_path.display()
            )))
        }
    };
    let dm = Dm::open()?;
    let _lock = lock(name)?;
    // An NBD destination that a reboot disconnected is attached again from its URL (unless the
    // user named the destination).
    let url = record
        .as_ref()
        .filter(|_| opts.destination.is_none())
        .and_then(|r| r.destination_url.as_deref());
    if let Some(text) = url {
        dest_path = reattach_nbd(text, &dest_path)?;
    }
    let (destination, _) = open_device(&dest_path)?;
    if inspection.phase().is_some() && destination.sectors != inspection.destination_sectors {
        return Err(Error::Usage(format!(
            "{} has {} sectors; the metadata is for a destination of {}: not this move's",
            dest_path.display(),
            destination.sectors,
            inspection.destination_sectors
        )));
    }
    check_live_table(&dm, name, &destination)?;
    let (meta, meta_loop) = open_device(&meta_path)?;
    // A switched move does not need its origin (its image may be gone already).
    let mut origin_loop = None;
    let started = Instant::now();
    let mut longest = Duration::ZERO;
    if !switched {
        let (origin, attached) = open_device(&origin_path)?;
        origin_loop = attached;
        let options = Options {
            region_size: record
                .as_ref()
                .and_then(|r| r.region_size)
                .or((inspection.region_sectors > 0).then_some(inspection.region_sectors)),
            copy_depth: record.as_ref().and_then(|r| r.depth),
            max_rate: record.as_ref().and_then(|r| r.rate),
            min_rate: record.as_ref().and_then(|r| r.min_rate),
            metadata: true,
            ..Options::default()
        };
        let mut params = format!("{} {}", origin.number(), destination.number());
        options
            .write(&mut params, &meta.number())
            .map_err(|_| Error::Failed("table text".into()))?;
        let migrate = TableLine {
            start: 0,
            length,
            target_type: "migrate".into(),
            params,
        };
        longest = put_table(&dm, name, &[migrate])?;
        if let Err(e) = wait_for_switch(&dm, name, opts.no_progress, length * SECTOR_SIZE, &stop) {
            if let Holder::Origin = settle(&dm, name)? {
                let linear = TableLine {
                    start: 0,
                    length,
                    target_type: "linear".into(),
                    params: format!("{} 0", origin.number()),
                };
                swap_table(&dm, name, &[linear])?;
                eprintln!("dmmig: the recovered migration ended on the origin: '{name}' is on it");
                // Over, as a rolled-back move: nothing may resume from this metadata later.
                MoveRecord::remove(name);
                retire_metadata(
                    &meta_path,
                    meta_loop,
                    record.as_ref().is_some_and(|r| r.metadata_created),
                );
                return Err(e);
            }
        }
    }
    let linear = TableLine {
        start: 0,
        length,
        target_type: "linear".into(),
        params: format!("{} 0", destination.number()),
    };
    longest = longest.max(put_table(&dm, name, &[linear])?);
    let seconds = started.elapsed().as_secs_f64();
    // The move is done: retire the record and the metadata, then the origin, as `move` would
    // have (in that order: a recover after a crash in between needs no origin once switched).
    MoveRecord::remove(name);
    if let Some(dev) = meta_loop.or_else(|| loop_of(&meta_path)) {
        detach(&dev);
    }
    if record.as_ref().is_some_and(|r| r.metadata_created) {
        let _ = fs::remove_file(&meta_path);
    }
    let keep_source = record.as_ref().is_some_and(|r| r.keep_source);
    let mut removed_image = None;
    if let Some(dev) = origin_loop.or_else(|| loop_of(&origin_path)) {
        detach(&dev);
    }
    if !keep_source
        && fs::metadata(&origin_path).is_ok_and(|m| m.is_file())
        && fs::remove_file(&origin_path).is_ok()
    {
        removed_image = Some(origin_path.display().to_string());
    }
    Ok(Summary {
        device: name.to_string(),
        destination: dest_path.display().to_string(),
        bytes: length * SECTOR_SIZE,
        seconds,
        mean_mib_per_s: (length * SECTOR_SIZE) as f64 / (1 << 20) as f64 / seconds.max(1e-9),
        longest_pause_ms: longest.as_secs_f64() * 1000.0,
        removed_image,
    })
}

/// What `finish` did.
#[derive(Debug, Clone)]
pub enum Finish {
    /// The disk was on its destination's migrate table, switched: it is on a linear there now.
    Done(Summary),
    /// Nothing to finish, and why (not a migrate table, not switched yet, a `move` at work).
    Nothing(String),
}

/// Finishes a migration that has switched, with nobody watching it (run by the udev rule on the
/// `switched` uevent, or by hand): swaps `name` to a linear table on the destination, then, if
/// `move` left a record of this very move, retires what it recorded as `move` would have (the
/// metadata, the origin's loop device and, unless it was to be kept, its image). Without a
/// record nothing is detached or removed. Anything else (no such device, another table, a
/// migration still copying, a `move` or `recover` of the disk still running, which finishes
/// the move itself) is left as it is.
pub fn run_finish(name: &str) -> Result<Finish> {
    let nothing = |why: String| Ok(Finish::Nothing(why));
    let dm = Dm::open()?;
    let _lock = match lock(name) {
        Ok(lock) => lock,
        Err(Error::Usage(_)) => {
            return nothing(format!(
                "a dmmig move or recover of '{name}' is running: it finishes"
            ))
        }
        Err(e) => return Err(e),
    };
    if dm.info(name).is_err() {
        return nothing(format!("no device '{name}'"));
    }
    let table = dm.table(name)?;
    let line = match table.as_slice() {
        [line] if line.target_type == "migrate" => line.clone(),
        _ => return nothing(format!("'{name}' is not on a migrate table")),
    };
    let status = dm.status(name)?;
    let state = status
        .first()
        .and_then(|l| Progress::parse_info(&l.params))
        .map(|p| p.state);
    if state != Some(State::Switched) {
        return nothing(format!("the migration of '{name}' has not switched"));
    }
    let mut words = line.params.split(' ');
    let (Some(origin), Some(dest)) = (words.next(), words.next()) else {
        return Err(Error::Failed(format!("cannot read the table of '{name}'")));
    };
    let device = |number: &str| {
        let (major, minor) = number
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| Error::Failed(format!("bad device '{number}' in the table")))?;
        BlockDev::of_number(major, minor)
    };
    let (origin, destination) = (device(origin)?, device(dest)?);
    // Only the record of this move: the same destination (a block device, or the image the
    // destination's loop device is attached to).
    let record = MoveRecord::read(name)
        .ok()
        .filter(|r| same_device(&r.destination, &destination));
    let started = Instant::now();
    let linear = TableLine {
        start: 0,
        length: line.length,
        target_type: "linear".into(),
        params: format!("{} 0", destination.number()),
    };
    let pause = swap_table(&dm, name, &[linear])?;
    let seconds = started.elapsed().as_secs_f64();
    let mut removed_image = None;
    if let Some(record) = &record {
        // The old image first, then the metadata, then the record: a crash in between leaves
        // the record and the switched metadata, with which `recover` keeps the disk on the
        // destination (it needs no origin); never an old image without a record, which a boot
        // script could bring the disk back on.
        let image = origin.loop_backing_file();
        if !record.keep_source
            && image
                .as_deref()
                .is_some_and(|i| same_file(i, &record.origin))
        {
            if let Some(kname) = origin.kernel_name() {
                detach(Path::new(&format!("/dev/{kname}")));
            }
            if fs::remove_file(&record.origin).is_ok() {
                removed_image = Some(record.origin.display().to_string());
            }
        }
        if let Some(dev) = loop_of(&record.metadata) {
            detach(&dev);
        }
        if record.metadata_created {
            let _ = fs::remove_file(&record.metadata);
        }
        MoveRecord::remove(name);
        sync_dir(&state_dir());
        if let Some(dir) = record.origin.parent() {
            sync_dir(dir);
        }
    }
    Ok(Finish::Done(Summary {
        device: name.to_string(),
        destination: destination
            .kernel_name()
            .map(|n| format!("/dev/{n}"))
            .unwrap_or_else(|| destination.number()),
        bytes: line.length * SECTOR_SIZE,
        seconds,
        mean_mib_per_s: 0.0,
        longest_pause_ms: pause.as_secs_f64() * 1000.0,
        removed_image,
    }))
}

/// Runs `dmmig finish NAME` in a process of its own and returns without waiting for it: a
/// transient systemd unit (`systemd-run`) where systemd is the init system, whose udev kills
/// whatever a RUN program leaves behind; otherwise a child in a process group of its own. Its output
/// goes where this process's goes.
pub fn spawn_finish(name: &str) -> Result<()> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()
        .map_err(|e| Error::Failed(format!("cannot find dmmig's own path: {e}")))?;
    let failed =
        |e: std::io::Error| Error::Failed(format!("cannot start dmmig finish {name}: {e}"));
    if Path::new("/run/systemd/system").exists() {
        let status = Command::new("systemd-run")
            .args(["--no-block", "--collect", "--quiet", "--description"])
            .arg(format!("dmmig finish {name}"))
            .arg(&exe)
            .args(["finish", name])
            .stdin(Stdio::null())
            .status()
            .map_err(failed)?;
        return if status.success() {
            Ok(())
        } else {
            Err(Error::Failed(format!(
                "systemd-run dmmig finish {name}: {status}"
            )))
        };
    }
    // A process group of its own: nothing that signals the caller's group reaches it.
    Command::new(&exe)
        .args(["finish", name])
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
        .map_err(failed)
}

/// Whether `path` is `device`: the block device itself, or an image its loop device is attached
/// to.
fn same_device(path: &Path, device: &BlockDev) -> bool {
    if let Ok(dev) = BlockDev::of_path(path) {
        return dev.major == device.major && dev.minor == device.minor;
    }
    device
        .loop_backing_file()
        .is_some_and(|image| same_file(&image, path))
}

/// Makes the removals in folder `dir` durable, as far as it can.
fn sync_dir(dir: &Path) {
    let _ = File::open(dir).and_then(|d| d.sync_all());
}

/// Whether two paths name the same file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn progress_bar(hidden: bool, bytes: u64) -> Option<indicatif::ProgressBar> {
    if hidden {
        return None;
    }
    let bar = indicatif::ProgressBar::new(bytes);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:24} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

/// Refuses a second `move` of the same device: an exclusive lock held for the whole move.
fn lock(name: &str) -> Result<nix::fcntl::Flock<File>> {
    let path = format!("/run/dmmig-{name}.lock");
    let file = File::create(&path)
        .map_err(|e| Error::Failed(format!("cannot create the lock {path}: {e}")))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        Error::Usage(format!(
            "another dmmig move of '{name}' is running; wait for it to end"
        ))
    })
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

    /// A record written before NBD URLs were recorded still reads, with no URL; a new one
    /// keeps its URL.
    #[test]
    fn records_keep_an_nbd_url() {
        let old = r#"{"name":"vm1","length":8,"origin":"/a.img","destination":"/dev/nbd0",
            "metadata":"/m","metadata_created":true,"region_size":null,"depth":null,
            "rate":null,"keep_source":false}"#;
        let record: MoveRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.destination_url, None);
        let record = MoveRecord {
            destination_url: Some("nbd://[::1]:10809/x".into()),
            ..record
        };
        let text = serde_json::to_string(&record).unwrap();
        let back: MoveRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back.destination_url.as_deref(), Some("nbd://[::1]:10809/x"));
    }

    #[test]
    fn splits_device_numbers() {
        // makedev(253, 5) and makedev(259, 70000) as glibc packs them.
        assert_eq!((libc_major(0xfd05), libc_minor(0xfd05)), (253, 5));
        let dev = nix::sys::stat::makedev(259, 70000);
        assert_eq!((libc_major(dev), libc_minor(dev)), (259, 70000));
    }
}

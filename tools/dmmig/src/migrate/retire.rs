//! Retiring a move whose disk runs on its destination alone: one order for `move`, `recover`
//! and `finish`.
//!
//! What a move leaves besides the disk is the old image (and its loop device), the move's record
//! and its metadata (switched). They go in that order, each step made durable before the next:
//!
//! 1. **The old image.** Until the record is gone, a crash here is finished by `recover`: the
//!    record names the metadata, which says `switched`, and a switched recovery needs no origin.
//!    The image never outlives the record: an old image with no record of the move is what a boot
//!    script (or a person) would bring the disk back up on, and every write since the switch
//!    would be lost with it. So an image that cannot be removed keeps the record too (a later
//!    `recover` retires both), and so does one that something else still uses (another dm
//!    device on part of it, a second loop device), which is kept: unlinking it would leave
//!    them on a file a reboot loses. `--keep-source` keeps the image on purpose, and the
//!    record goes: the user asked for the stale copy.
//! 2. **The record.** A crash after it leaves at most a metadata file that nothing names: no
//!    risk (the next move of the disk refuses to reuse an existing file, and wipes a device).
//! 3. **The metadata.** Its loop device is detached and a file `move` made is removed. A device
//!    given with `--metadata` keeps its `switched` superblock: a recovery from it puts the disk on
//!    the destination, and the next move wipes it first.
//!
//! The other order (record, metadata, image) leaves the dangerous state: after a crash between
//! the record and the image, the old image lies there with nothing to say it is stale.

use super::devices::{detach, loop_of};
use super::record::{state_dir, MoveRecord};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// The old image of a move that has finished.
#[derive(Debug, Clone)]
pub(super) struct OldImage {
    /// The image file.
    pub file: PathBuf,
    /// The loop device it is attached to, if known (else it is looked up).
    pub loop_dev: Option<PathBuf>,
    /// Whether to unlink it (not with `--keep-source`); its loop device is then detached.
    pub remove: bool,
    /// Whether this process attached its loop device (a recovery): detached in any case.
    pub attached_here: bool,
}

/// The metadata of a move that has finished.
#[derive(Debug, Clone)]
pub(super) struct MetadataLeft {
    /// The metadata file or device.
    pub path: PathBuf,
    /// The loop device a file is attached to, if known (else it is looked up).
    pub loop_dev: Option<PathBuf>,
    /// Whether `move` made the file (removed), or was given the device (kept as it is).
    pub created: bool,
}

/// Retires the move of `name`, whose disk runs on its destination alone (its linear table
/// read back: `confirm_table`), in the order argued above: the old image, the record (if
/// `recorded`), the metadata. Returns the image file it removed.
pub(super) fn retire(
    name: &str,
    recorded: bool,
    old: Option<OldImage>,
    metadata: Option<MetadataLeft>,
) -> Option<String> {
    let mut removed = None;
    // Whether an image that was to go is still there: the record stays with it.
    let mut image_left = false;
    if let Some(old) = old {
        let loop_dev = old.loop_dev.clone().or_else(|| loop_of(&old.file));
        let users = if old.remove {
            other_users(&old.file)
        } else {
            Vec::new()
        };
        if !users.is_empty() {
            eprintln!(
                "dmmig: kept {}: {} still use it",
                old.file.display(),
                users.join(", ")
            );
        } else {
            if old.remove || old.attached_here {
                if let Some(dev) = loop_dev {
                    detach(&dev);
                }
            }
            if old.remove && fs::metadata(&old.file).is_ok_and(|m| m.is_file()) {
                match fs::remove_file(&old.file) {
                    Ok(()) => {
                        removed = Some(old.file.display().to_string());
                        if let Some(dir) = old.file.parent().filter(|d| !d.as_os_str().is_empty()) {
                            sync_dir(dir);
                        }
                    }
                    Err(e) => eprintln!("dmmig: cannot remove {}: {e}", old.file.display()),
                }
            }
        }
        image_left = old.remove && fs::symlink_metadata(&old.file).is_ok();
    }
    crash_point("retire:image");
    if image_left {
        // The old image is stale and still there: the record that says so stays, and a later
        // `recover` (which needs no origin once switched) retires it.
        eprintln!(
            "dmmig: the record of the move of '{name}' stays while its old image does: run \
             'dmmig recover {name}' to retire both"
        );
        return None;
    }
    if recorded {
        MoveRecord::remove(name);
        sync_dir(&state_dir());
    }
    crash_point("retire:record");
    if let Some(meta) = metadata {
        if let Some(dev) = meta
            .loop_dev
            .clone()
            .or_else(|| meta.created.then(|| loop_of(&meta.path)).flatten())
        {
            detach(&dev);
        }
        if meta.created {
            let _ = fs::remove_file(&meta.path);
        }
    }
    removed
}

/// A crash for the tests (selftests/test_dmmig_retire_crash.sh): when `DMMIG_CRASH_AT` names
/// `point`, the process ends here at once (SIGABRT: no destructor, no cleanup), as in a crash.
fn crash_point(point: &str) {
    if std::env::var("DMMIG_CRASH_AT").is_ok_and(|at| at == point) {
        std::process::abort();
    }
}

/// What still uses the image file `file` besides the disk that moved off it: a holder of a loop
/// device attached to it (another dm device mapping part of it, a partition's holder), or a
/// second loop device. Unlinking it would leave them on a file a reboot loses.
fn other_users(file: &Path) -> Vec<String> {
    let Ok(file) = fs::canonicalize(file) else {
        return Vec::new();
    };
    let mut users = Vec::new();
    let mut loops = 0;
    for entry in fs::read_dir("/sys/block").into_iter().flatten().flatten() {
        let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        if Path::new(backing.trim_end()) != file {
            continue;
        }
        loops += 1;
        // The loop device's own holders, and those of its partitions.
        for folder in crate::sysblock::with_partitions(&entry.path()) {
            users.extend(crate::sysblock::holders(&folder));
        }
    }
    if loops > 1 {
        users.push(format!("{loops} loop devices"));
    }
    users
}

/// Makes the removals in folder `dir` durable, as far as it can.
fn sync_dir(dir: &Path) {
    let _ = File::open(dir).and_then(|d| d.sync_all());
}

//! `dmmig finish`: finishes a switched migration nobody is watching.

use super::devices::{same_device, same_file, BlockDev};
use super::record::{lock, MoveRecord};
use super::retire::{retire, MetadataLeft, OldImage};
use super::tables::{confirm_table, swap_table};
use super::Summary;
use crate::dm::Dm;
use crate::error::{Error, Result};
use crate::table::TableLine;
use dm_migrate_engine::state::{Progress, State};
use dm_migrate_engine::SECTOR_SIZE;
use std::path::PathBuf;
use std::time::Instant;

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
    let linear = TableLine::linear(line.length, &destination.number());
    let pause = swap_table(&dm, name, std::slice::from_ref(&linear))?;
    confirm_table(&dm, name, &[linear])?;
    let seconds = started.elapsed().as_secs_f64();
    // Only what the record of this very move names is retired, in retire's order. The old
    // image is the record's origin only if the origin's loop device is attached to it.
    let removed_image = record.as_ref().and_then(|record| {
        let is_recorded_image = origin
            .loop_backing_file()
            .as_deref()
            .is_some_and(|i| same_file(i, &record.origin));
        let old = is_recorded_image.then(|| OldImage {
            file: record.origin.clone(),
            loop_dev: origin
                .kernel_name()
                .map(|kname| PathBuf::from(format!("/dev/{kname}"))),
            remove: !record.keep_source,
            attached_here: false,
        });
        let metadata = MetadataLeft {
            path: record.metadata.clone(),
            loop_dev: None,
            created: record.metadata_created,
        };
        retire(name, true, old, Some(metadata))
    });
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
    if crate::host::systemd_manages_us() {
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

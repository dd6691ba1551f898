//! Putting tables on a disk: swapping the live table, creating the device, and the checks
//! before (the `migrate` target, the table a recover would replace).

use super::devices::BlockDev;
use crate::dm::Dm;
use crate::error::{Error, Result};
use crate::table::TableLine;
use std::fs;
use std::time::{Duration, Instant};

/// Swaps the live table (suspend, load, resume) and returns how long I/O was held.
pub(super) fn swap_table(dm: &Dm, name: &str, table: &[TableLine]) -> Result<Duration> {
    dm.load(name, table)?;
    activate(dm, name)
}

/// Makes a loaded table live (suspend, resume); returns how long I/O was held.
pub(super) fn activate(dm: &Dm, name: &str) -> Result<Duration> {
    let start = Instant::now();
    dm.suspend(name, false)?;
    dm.resume(name)?;
    Ok(start.elapsed())
}

/// Makes sure the kernel has the `migrate` target before anything is created: if it is not
/// loaded, asks for the module as the kernel's own autoload would (the `modprobe` of
/// /proc/sys/kernel/modprobe, `-q -- dm-migrate`), and refuses the move if it is still missing.
pub(super) fn ensure_migrate_target(dm: &Dm) -> Result<()> {
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

/// Refuses to recover over a table that is neither absent, nor the move's own migrate table,
/// nor its final linear: whatever the device runs may have taken writes the metadata knows
/// nothing about (a boot script that brought the disk back on its origin, say).
pub(super) fn check_live_table(dm: &Dm, name: &str, destination: &BlockDev) -> Result<()> {
    if dm.info(name).is_err() {
        return Ok(());
    }
    let table = dm.table(name)?;
    let dest = destination.number();
    let ours = match table.as_slice() {
        [line] if line.target_type == "migrate" => {
            line.params.split(' ').nth(1) == Some(dest.as_str())
        }
        [line] if line.target_type == "linear" => {
            line.params == TableLine::linear(line.length, &dest).params
        }
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
pub(super) fn put_table(dm: &Dm, name: &str, table: &[TableLine]) -> Result<Duration> {
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

/// Reads the live table of `name` back and checks that it is `expected`: what is said of the
/// disk, and what is retired because of it, rests on the table the kernel runs, not on the one
/// that was loaded (another loader may have filled the inactive slot in between).
pub(super) fn confirm_table(dm: &Dm, name: &str, expected: &[TableLine]) -> Result<()> {
    let live = dm.table(name)?;
    if live.as_slice() == expected {
        return Ok(());
    }
    let text: Vec<String> = live.iter().map(|l| l.to_string()).collect();
    Err(Error::Failed(format!(
        "'{name}' runs '{}', not the table dmmig loaded ('{}'): nothing is retired",
        text.join("; "),
        expected.first().map(|l| l.to_string()).unwrap_or_default()
    )))
}

//! Following a migration: its sysfs counters, the progress bar, waiting for a state, and
//! settling one that is given up.

use crate::counters::SysfsFile;
use crate::dm::Dm;
use crate::error::{Error, Result};
pub(super) use crate::giveup::Holder;
use crate::giveup::{give_up, GivenUp};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub(super) use crate::counters::read as counter;

/// Ends a migration that `move` or `recover` gives up on (interrupted, failed), for good, and
/// says which device holds every write, through the one give-up path ([`give_up`]). A
/// cancelled, failed or cancelled-again migration keeps everything on the origin and can no
/// longer switch; the kernel refuses `cancel` only once the target has switched, and then only
/// the destination has the writes made since. Rolling back to the origin without this would
/// lose them if the switch came just before.
pub(super) fn settle(dm: &Dm, name: &str) -> Result<Holder> {
    let info = dm.info(name)?;
    match give_up(name, &format!("dm-{}", info.minor), None) {
        GivenUp::Holder(holder) => Ok(holder),
        GivenUp::Replaced(target_type) => Err(Error::Failed(format!(
            "the disk runs a '{target_type}' table now, not the migration: nothing is changed \
             or removed"
        ))),
        GivenUp::Unconfirmed(state) => Err(Error::Failed(format!(
            "cannot stop the migration (state '{state}'): the disk is left on the migrate table"
        ))),
    }
}

/// Follows a migration until it switches, with a progress bar unless `no_progress`; fails when
/// it fails or is cancelled, or when `stop` is set.
pub(super) fn wait_for_switch(
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
pub(super) fn wait_for_state(
    dm: &Dm,
    name: &str,
    no_progress: bool,
    bytes: u64,
    stop: &AtomicBool,
    want: &str,
) -> Result<()> {
    let info = dm.info(name)?;
    let sysfs = crate::counters::dir_of(info.major, info.minor);
    let bar = progress_bar(no_progress, bytes);
    let outcome = loop {
        if stop.load(Ordering::Relaxed) {
            break Err(Error::Failed("interrupted".into()));
        }
        let Some(state) = counter(&sysfs, SysfsFile::State) else {
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
            let copied = counter(&sysfs, SysfsFile::CopiedBytes)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let rate = counter(&sysfs, SysfsFile::RateKibps).unwrap_or_default();
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

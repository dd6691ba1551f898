//! Moving several disks of one VM in one command: a `move` per disk, in parallel, with a shared
//! rate budget, one progress display, and either each disk finished as it switches or, with
//! `--switch-together`, every disk held in sync until all are and then switched.
//!
//! One flag stops them all: a signal, or any disk's failure. A disk that has not switched then
//! goes back on its origin (its `move` cancels the migration and puts the original table back);
//! one that had switched is finished, as a single `move` does, since only its destination has its
//! newest writes. With `--switch-together` no disk may switch before every disk is in sync, so a
//! failure during the copy leaves every disk on its origin.

use crate::counters::{self, SysfsFile};
use crate::dm::Dm;
use crate::error::{Error, Result};
use crate::migrate::{run_move, MoveOptions, Summary, SwitchGate};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where each disk goes: `--to DIR` (an existing folder: a new image `DIR/NAME.img` per disk) or
/// one destination per disk, in order.
pub fn destinations(names: &[&str], to: &[PathBuf]) -> Result<Vec<PathBuf>> {
    match to {
        [dir] if dir.is_dir() => Ok(names.iter().map(|n| dir.join(format!("{n}.img"))).collect()),
        _ if to.len() == names.len() => Ok(to.to_vec()),
        _ => Err(Error::Usage(format!(
            "{} disks and {} destinations: give --to DIR (a folder for new images) or one \
             destination per disk",
            names.len(),
            to.len()
        ))),
    }
}

/// What a destination is, to tell two apart: a device number, a file, a path to create, or an
/// NBD export (its URL in the one spelling `NbdUrl` prints, so that `nbd://h/x` and
/// `nbd://h:10809/x` are one destination).
#[derive(Debug, PartialEq, Eq)]
enum Identity {
    Device(u64),
    File(u64, u64),
    New(PathBuf),
    Nbd(String),
}

fn identity(path: &Path) -> Identity {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if let Some(Ok(Some(url))) = path.to_str().map(crate::nbd::NbdUrl::parse) {
        return Identity::Nbd(url.to_string());
    }
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_block_device() => Identity::Device(m.rdev()),
        Ok(m) => Identity::File(m.dev(), m.ino()),
        // A new image: its folder resolved, so that two spellings of one path compare equal.
        Err(_) => Identity::New(
            path.parent()
                .and_then(|p| {
                    std::fs::canonicalize(if p.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        p
                    })
                    .ok()
                })
                .map_or_else(
                    || path.to_path_buf(),
                    |dir| dir.join(path.file_name().unwrap_or_default()),
                ),
        ),
    }
}

/// Refuses destinations that are one device (or file) under two names, and a destination that is
/// a disk of the move: each disk's exclusive check of its destination is over before any table
/// holds it, so two disks of one move could otherwise both be loaded onto the same device.
pub fn check_destinations(dm: &Dm, names: &[&str], dests: &[PathBuf]) -> Result<()> {
    let ids: Vec<Identity> = dests.iter().map(|d| identity(d)).collect();
    for (i, id) in ids.iter().enumerate() {
        if let Some(j) = ids[..i].iter().position(|other| other == id) {
            return Err(Error::Usage(format!(
                "{} and {} are the same destination: each disk needs its own",
                dests[j].display(),
                dests[i].display()
            )));
        }
        for name in names {
            let info = dm.info(name)?;
            let disk = nix::sys::stat::makedev(u64::from(info.major), u64::from(info.minor));
            if *id == Identity::Device(disk) {
                return Err(Error::Usage(format!(
                    "{} is the disk {name} of this move: give another device or a new image path",
                    dests[i].display()
                )));
            }
        }
    }
    Ok(())
}

/// The options of one disk of an `n`-disk move: the rate budget shared evenly.
fn share(opts: &MoveOptions, n: u64) -> MoveOptions {
    let split = |kibps: Option<u64>| kibps.map(|k| if k == 0 { 0 } else { (k / n).max(1) });
    MoveOptions {
        max_rate: split(opts.max_rate),
        min_rate: split(
            opts.min_rate
                .or(Some(dm_migrate_engine::throttle::DEFAULT_MIN_RATE_KIBPS)),
        ),
        no_progress: true,
        ..opts.clone()
    }
}

/// Moves every disk `names[i]` to `dests[i]` at once; returns each disk's outcome, in order.
/// `stop` (a signal) stops them all, as does any disk's failure.
pub fn run_moves(
    names: &[&str],
    dests: &[PathBuf],
    opts: &MoveOptions,
    switch_together: bool,
    stop: Arc<AtomicBool>,
) -> Vec<Result<Summary>> {
    let n = names.len();
    let show_progress = !opts.no_progress;
    let mut opts = share(opts, n as u64);
    opts.gate = switch_together.then(|| Arc::new(SwitchGate::new(n)));
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let progress = show_progress.then(|| scope.spawn(|| draw_progress(names, &done)));
        let movers: Vec<_> = names
            .iter()
            .zip(dests)
            .map(|(name, dest)| {
                let (opts, stop) = (&opts, stop.clone());
                scope.spawn(move || {
                    // A disk that fails (or whose thread panics) stops every other: back on
                    // its origin, or finished if it had switched.
                    let mut stop_all = StopAll {
                        stop: &stop,
                        gate: opts.gate.as_deref(),
                        armed: true,
                    };
                    let outcome = run_move(name, dest, opts, stop.clone());
                    stop_all.armed = outcome.is_err();
                    outcome
                })
            })
            .collect();
        let outcomes = movers
            .into_iter()
            .map(|m| {
                m.join()
                    .unwrap_or_else(|_| Err(Error::Failed("the move's thread panicked".into())))
            })
            .collect();
        done.store(true, Ordering::Relaxed);
        if let Some(progress) = progress {
            let _ = progress.join();
        }
        outcomes
    })
}

/// Stops every disk of the move when dropped armed: at a disk's failure, and when its thread
/// unwinds from a panic.
struct StopAll<'a> {
    stop: &'a AtomicBool,
    gate: Option<&'a SwitchGate>,
    armed: bool,
}

impl Drop for StopAll<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(gate) = self.gate {
                gate.abort();
            }
        }
    }
}

/// One progress bar per disk and a total with its ETA, from the targets' sysfs counters, until
/// `done`.
fn draw_progress(names: &[&str], done: &AtomicBool) {
    let Ok(dm) = Dm::open() else { return };
    let multi = indicatif::MultiProgress::new();
    let style = |template: &str| {
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    };
    let sizes: Vec<u64> = names
        .iter()
        .map(|name| {
            dm.table(name)
                .map(|t| t.iter().map(|l| l.length).sum::<u64>() * dm_migrate_engine::SECTOR_SIZE)
                .unwrap_or(0)
        })
        .collect();
    let bars: Vec<_> = names
        .iter()
        .zip(&sizes)
        .map(|(name, &bytes)| {
            let bar = multi.add(indicatif::ProgressBar::new(bytes));
            bar.set_style(style(&format!(
                "{name:>16} {{bar:24}} {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}} {{msg}}"
            )));
            bar
        })
        .collect();
    let total = multi.add(indicatif::ProgressBar::new(sizes.iter().sum()));
    total.set_style(style(
        "           total {bar:24} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    ));
    // The sysfs folder of a disk is read again each round: its migrate table comes and goes.
    let counter = |name: &str, file: SysfsFile| -> Option<String> {
        let info = dm.info(name).ok()?;
        counters::read(&counters::dir_of(info.major, info.minor), file)
    };
    while !done.load(Ordering::Relaxed) {
        let mut sum = 0;
        for ((name, bar), &bytes) in names.iter().zip(&bars).zip(&sizes) {
            let state = counter(name, SysfsFile::State);
            let copied = match state.as_deref() {
                Some(_) => counter(name, SysfsFile::CopiedBytes)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                // No migrate table: not loaded yet, or finished (a linear on the destination).
                None => bar.position(),
            };
            bar.set_position(copied);
            bar.set_message(state.unwrap_or_default());
            sum += copied.min(bytes);
        }
        total.set_position(sum);
        std::thread::sleep(Duration::from_millis(200));
    }
    for bar in bars.iter().chain([&total]) {
        bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_a_folder_or_one_each() {
        let dir = std::env::temp_dir();
        let names = ["vm1-root", "vm1-data"];
        assert_eq!(
            destinations(&names, std::slice::from_ref(&dir)).unwrap(),
            [dir.join("vm1-root.img"), dir.join("vm1-data.img")]
        );
        let two = [PathBuf::from("/dev/sdb"), PathBuf::from("/dev/sdc")];
        assert_eq!(destinations(&names, &two).unwrap(), two);
        let err = destinations(&names, &two[..1]).unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err}");
    }

    #[test]
    fn one_destination_under_two_names_is_one() {
        let dir = std::env::temp_dir();
        let a = dir.join("dmmig-identity-test.img");
        let b = dir.join(".").join("dmmig-identity-test.img");
        assert_eq!(identity(&a), identity(&b), "a new image");
        std::fs::write(&a, b"x").unwrap();
        assert_eq!(identity(&a), identity(&b), "an existing file");
        assert_ne!(identity(&a), identity(&dir.join("other.img")));
        // One NBD export, spelt three ways; another port or export is another destination.
        let nbd = |url: &str| identity(Path::new(url));
        assert_eq!(nbd("nbd://Store/x"), nbd("nbd://store:10809/x"));
        assert_eq!(nbd("nbd://[::1]/x"), nbd("nbd://[0:0::1]:10809/x"));
        assert_ne!(nbd("nbd://store/x"), nbd("nbd://store:10810/x"));
        assert_ne!(nbd("nbd://store/x"), nbd("nbd://store/y"));
        std::fs::remove_file(&a).unwrap();
    }

    #[test]
    fn the_rate_budget_is_shared() {
        let opts = MoveOptions {
            max_rate: Some(30000),
            min_rate: None,
            ..Default::default()
        };
        let one = share(&opts, 3);
        assert_eq!((one.max_rate, one.min_rate), (Some(10000), Some(10240 / 3)));
        let unlimited = share(
            &MoveOptions {
                max_rate: Some(0),
                min_rate: Some(0),
                ..Default::default()
            },
            3,
        );
        assert_eq!((unlimited.max_rate, unlimited.min_rate), (Some(0), Some(0)));
    }
}

//! `dmmig move`: moves a live dm-linear disk to a new device or image file with the `migrate`
//! target, swaps the table to a linear on the destination, and retires the old image.
//!
//! Whatever happens (a destination error, a failed migration, Ctrl-C or SIGTERM), the disk keeps
//! serving from its origin: the original table is put back, and what `move` created (a loop
//! device, an image file) is removed.

mod devices;
mod finish;
mod gate;
mod record;
mod recover;
mod retire;
mod tables;
mod watch;

pub use devices::volatile_reason;
pub use finish::{run_finish, spawn_finish, Finish};
pub use gate::SwitchGate;
pub use record::{state_dir, MoveRecord};
pub use recover::{run_recover, RecoverOptions};

use crate::counters::SysfsFile;
use crate::dm::Dm;
use crate::error::{Error, Result};
use crate::table::TableLine;
use devices::{prepare_destination, prepare_metadata, space_needed, BlockDev, Created};
use dm_migrate_engine::behind::MirrorMode;
use dm_migrate_engine::status::TableParams;
use dm_migrate_engine::table::{Geometry, Options, TableArgs};
use dm_migrate_engine::SECTOR_SIZE;
use record::lock;
use retire::{retire, OldImage};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;
use tables::{activate, confirm_table, ensure_migrate_target, swap_table};
use watch::{counter, settle, wait_for_state, wait_for_switch, Holder};

/// Options of `dmmig move`: the command line's (their doc comments are its help) and what a
/// multi-disk move adds.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MoveOptions {
    /// The copy rate's ceiling in KiB/s (0: unlimited, the default).
    #[arg(long = "max-rate", visible_alias = "rate")]
    pub max_rate: Option<u64>,
    /// The adaptive copy rate's floor in KiB/s: the copy takes what the guest leaves, and
    /// never less than this (default 10240; 0: no adaptation, always --max-rate).
    #[arg(long)]
    pub min_rate: Option<u64>,
    /// Region size in 512-byte sectors (a power of two).
    #[arg(long)]
    pub region_size: Option<u64>,
    /// Copy batches in flight, 1 to 16.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub depth: Option<u32>,
    /// Whether a guest write to a copied region completes once both devices have it (sync)
    /// or once the origin has it, its copy following to the destination within --mirror-lag
    /// (async: a far destination then costs the guest little). The target's default where not
    /// given (sync).
    #[arg(long, value_parser = ["sync", "async"])]
    pub mirror: Option<String>,
    /// With --mirror async: the most KiB of writes the destination may be behind (default
    /// 8192); past it writes wait for the destination.
    #[arg(long, value_name = "KiB", value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub mirror_lag: Option<u64>,
    /// Keep the old image file and its loop device.
    #[arg(long)]
    pub keep_source: bool,
    /// Allow a new image or metadata file on a filesystem in memory (tmpfs, ramfs), which a
    /// reboot loses: for test rigs only (also DMMIG_ALLOW_VOLATILE=1). A new file under /dev
    /// is always refused: it is a device name that does not exist.
    #[arg(long)]
    pub allow_volatile: bool,
    /// Overwrite a destination device that already holds a filesystem, partition table,
    /// LVM, RAID, LUKS or swap signature (refused without it).
    #[arg(long)]
    pub force: bool,
    /// Do not draw the progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Keep the migration's state on this device (or new file) instead of a file next to
    /// the new image (or in the state folder, /var/lib/dmmig or $DMMIG_STATE_DIR).
    #[arg(long, conflicts_with = "no_metadata")]
    pub metadata: Option<PathBuf>,
    /// No metadata device: a host crash during the move loses its progress, and one after
    /// the switch needs the admin to put the disk on the destination.
    #[arg(long)]
    pub no_metadata: bool,
    /// For an nbd:// destination: seconds an NBD request may take before the connection is
    /// called dead (default 10). Before the switch a dead connection cancels the migration,
    /// which leaves the disk on its origin; after it, the connection is reconnected.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub nbd_timeout: Option<u64>,
    /// For an nbd:// destination: seconds the kernel holds requests for a reconnect after
    /// the switch before it fails them (default 30).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub nbd_dead_conn_timeout: Option<u64>,
    /// Several disks switching together: the migration is loaded with `no_switch`, waits in
    /// sync at this gate until every disk of the move is, and only then may switch.
    #[arg(skip)]
    pub gate: Option<Arc<SwitchGate>>,
}

impl MoveOptions {
    /// The NBD client's timeouts, for an nbd:// destination: the defaults where none was given.
    pub fn nbd_timeouts(&self) -> crate::nbd::Timeouts {
        let defaults = crate::nbd::Timeouts::default();
        crate::nbd::Timeouts {
            request_s: self.nbd_timeout.unwrap_or(defaults.request_s),
            dead_conn_s: self.nbd_dead_conn_timeout.unwrap_or(defaults.dead_conn_s),
        }
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
        mirror: opts.mirror.as_deref().and_then(MirrorMode::parse),
        mirror_lag: opts.mirror_lag,
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
            if let Some(device) = crate::nbd::attached_as(&url) {
                return Err(Error::Usage(format!(
                    "{url} is attached already, as {}: two devices writing one export would \
                     overwrite each other's writes (see 'dmmig table' of what uses it)",
                    device.display()
                )));
            }
            let keeper;
            (nbd_device, keeper) = crate::nbd::connect(&url, opts.nbd_timeouts())?;
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
        let (origin_number, destination_number) = (origin.number(), destination.number());
        let migrate_line = |options: &Options| {
            TableLine::migrate(
                original.length,
                &TableParams {
                    origin: &origin_number,
                    destination: &destination_number,
                    metadata: &metadata_number,
                    options,
                },
            )
        };
        let started = Instant::now();
        // A table the kernel refuses was never loaded: nothing uses the destination, and all
        // that move created is undone. Once loaded, the inactive table holds it.
        dm.load(name, &[migrate_line(&options)])?;
        destination_in_use = true;
        let mut longest = activate(&dm, name)?;
        let outcome = match &opts.gate {
            None => wait_for_switch(&dm, name, opts.no_progress, bytes, &stop),
            // In sync (mirrored, not switching) until every disk is, then the same migration
            // without no_switch: the target switches at once, as each disk of the move does.
            Some(gate) => wait_for_state(&dm, name, opts.no_progress, bytes, &stop, "synced")
                .and_then(|()| {
                    let sysfs = crate::counters::dir_of(info.major, info.minor);
                    let in_sync = || counter(&sysfs, SysfsFile::State).as_deref() == Some("synced");
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
                    });
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
        let linear = TableLine::linear(original.length, &destination.number());
        longest = longest.max(swap_table(&dm, name, std::slice::from_ref(&linear))?);
        confirm_table(&dm, name, &[linear])?;
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
    // The old image, the record and the metadata go in the one order of retire.rs.
    let old = origin.loop_backing_file().map(|file| OldImage {
        file,
        loop_dev: origin
            .kernel_name()
            .map(|kname| PathBuf::from(format!("/dev/{kname}"))),
        remove: !opts.keep_source,
        attached_here: false,
    });
    let removed_image = retire(name, recorded, old, created.take_metadata());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_options_reach_the_table_line_only_when_given() {
        let plain = table_options(&MoveOptions::default()).unwrap();
        assert_eq!((plain.mirror, plain.mirror_lag), (None, None));
        let opts = MoveOptions {
            mirror: Some("async".into()),
            mirror_lag: Some(1024),
            ..Default::default()
        };
        let options = table_options(&opts).unwrap();
        let mut line = String::new();
        options.write(&mut line, "m").unwrap();
        assert_eq!(line, " 6 metadata m mirror async mirror_lag 1024");
    }
}

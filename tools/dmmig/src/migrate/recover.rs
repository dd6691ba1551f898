//! `dmmig recover`: finishes a move after a crash or reboot.

use super::devices::{open_device, retire_metadata};
use super::record::{lock, MoveRecord};
use super::retire::{retire, MetadataLeft, OldImage};
use super::tables::{check_live_table, confirm_table, put_table, swap_table};
use super::watch::{settle, wait_for_switch, Holder};
use super::Summary;
use crate::dm::Dm;
use crate::error::{Error, Result};
use crate::table::TableLine;
use dm_migrate_engine::status::TableParams;
use dm_migrate_engine::table::Options;
use dm_migrate_engine::SECTOR_SIZE;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `dmmig recover`; what is not given comes from the record `move` left.
#[derive(Debug, Clone, Default)]
pub struct RecoverOptions {
    pub origin: Option<PathBuf>,
    pub destination: Option<PathBuf>,
    pub metadata: Option<PathBuf>,
    pub no_progress: bool,
}

/// The device of the NBD destination `url` of a move, recorded as `recorded`: that device if it
/// is still connected to the URL, or a newly attached one (with its keeper) if not, which the
/// returned guard lets go again unless a table holds it at the end.
fn reattach_nbd(url: &str, recorded: &Path) -> Result<(PathBuf, AttachedNbd)> {
    let url = crate::nbd::NbdUrl::parse(url)?
        .ok_or_else(|| Error::Failed(format!("the record's destination URL '{url}' is not one")))?;
    // Connected (a device that was disconnected keeps its backend file while a table still
    // holds it, and serves nothing), and to the URL.
    let connected = crate::nbd::index_of(recorded).ok().is_some_and(|index| {
        fs::metadata(format!("/sys/block/nbd{index}/pid")).is_ok()
            && crate::nbd::backend(index)
                .and_then(|backend| crate::nbd::BackendId::parse(&backend))
                .is_some_and(|backend| backend.url.to_string() == url.to_string())
    });
    if connected {
        return Ok((recorded.to_path_buf(), AttachedNbd(None)));
    }
    if let Some(device) = crate::nbd::attached_as(&url) {
        return Err(Error::Usage(format!(
            "{url} is attached already, as {} (the record says {}): two devices writing one \
             export would overwrite each other's writes; recover with --dest {} if it is this \
             move's",
            device.display(),
            recorded.display(),
            device.display()
        )));
    }
    let (device, _keeper) = crate::nbd::connect(&url, crate::nbd::Timeouts::default())?;
    eprintln!(
        "dmmig: {} is no longer {url}: attached it again as {}",
        recorded.display(),
        device.display()
    );
    Ok((device.clone(), AttachedNbd(Some(device))))
}

/// An NBD device a recovery attached. When the recovery ends, it is disconnected (which ends
/// its keeper) if nothing holds it, that is, if the recovery failed before a table used it or
/// rolled the disk back onto its origin; a device a table holds is the disk's and stays.
struct AttachedNbd(Option<PathBuf>);

impl Drop for AttachedNbd {
    fn drop(&mut self) {
        let Some(device) = self.0.take() else {
            return;
        };
        let Ok(index) = crate::nbd::index_of(&device) else {
            return;
        };
        let held = fs::read_dir(format!("/sys/block/nbd{index}/holders"))
            .map_or(true, |mut holders| holders.next().is_some());
        if !held && crate::nbd::disconnect(index).is_ok() {
            eprintln!(
                "dmmig: disconnected {}, which no table uses",
                device.display()
            );
        }
    }
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
    let mut _attached = AttachedNbd(None);
    if let Some(text) = url {
        let recorded = dest_path.clone();
        (dest_path, _attached) = reattach_nbd(text, &recorded)?;
        // The record names the device the disk now uses, for anyone who reads it; a later
        // recover attaches by the URL in any case.
        if dest_path != recorded {
            if let Some(mut record) = record.clone() {
                record.destination = dest_path.clone();
                record.write()?;
            }
        }
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
        let migrate = TableLine::migrate(
            length,
            &TableParams {
                origin: &origin.number(),
                destination: &destination.number(),
                metadata: &meta.number(),
                options: &options,
            },
        );
        longest = put_table(&dm, name, &[migrate])?;
        if let Err(e) = wait_for_switch(&dm, name, opts.no_progress, length * SECTOR_SIZE, &stop) {
            if let Holder::Origin = settle(&dm, name)? {
                let linear = TableLine::linear(length, &origin.number());
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
    let linear = TableLine::linear(length, &destination.number());
    longest = longest.max(put_table(&dm, name, std::slice::from_ref(&linear))?);
    confirm_table(&dm, name, &[linear])?;
    let seconds = started.elapsed().as_secs_f64();
    // The move is done: retired as `move` and `finish` do (see retire.rs for the order). The
    // origin's loop device is detached also when the image is kept if this recovery attached it.
    let keep_source = record.as_ref().is_some_and(|r| r.keep_source);
    let old = fs::metadata(&origin_path)
        .is_ok_and(|m| m.is_file())
        .then(|| OldImage {
            file: origin_path.clone(),
            attached_here: origin_loop.is_some(),
            loop_dev: origin_loop,
            remove: !keep_source,
        });
    let metadata = MetadataLeft {
        path: meta_path.clone(),
        created: record.as_ref().is_some_and(|r| r.metadata_created),
        loop_dev: meta_loop,
    };
    let removed_image = retire(name, true, old, Some(metadata));
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

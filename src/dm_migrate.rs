// SPDX-License-Identifier: GPL-2.0

//! dm-migrate: a device-mapper target that moves a live disk from one block device to another.
//!
//! A kernel thread copies the origin to the destination region by region. Reads go to the
//! origin; writes go to the origin, and also to the destination once their region is copied;
//! a write to a region being copied waits for that copy. When everything is copied the target
//! flushes the destination, switches all I/O to it and raises an event. The decisions live in
//! `engine` (plain Rust, tested in userspace); this file wires them to bios, devices and the
//! copier thread through the safe binding layer in `dm`. See `Documentation/dm-migrate.rst`.

// The `pin_init!` of `Migrator` has more fields than the default macro recursion limit allows.
#![recursion_limit = "256"]
// Safe Rust only, in every module but the binding layer (`dm`), the one place allowed
// `unsafe_code` (each use with its `// SAFETY:` comment).
#![deny(unsafe_code)]

// Both are `pub` so that the kernel's `unreachable_pub` lint accepts the `pub` items they share
// with their userspace build and with later users in this crate.
#[path = "../rust/mod.rs"]
#[allow(unsafe_code)]
pub mod dm;
pub mod engine;

mod copier;
mod meta_thread;
mod migration;
mod persist;

use copier::CopierThread;
use core::ffi::CStr;
use core::fmt::Write;
use core::sync::atomic::Ordering;
use dm::behind::BehindSet;
use dm::bio::{Bio, BioSet, Status};
use dm::device::Device;
use dm::event::Event;
use dm::kthread::KThread;
use dm::memalloc::noio_scope;
use dm::sysfs::{SysfsDir, SysfsShow};
use dm::target::{
    CtrError, DeviceVisitor, MapResult, Registration, StatusType, Target, TargetContext,
};
use engine::message::{Message, MessageError};
use engine::status::{write_table, SysfsFile};
use engine::table::{DeviceGeometry, Geometry, TableArgs, TableError};
use engine::tracker::Handover;
use engine::writer::SliceWriter;
use engine::SECTOR_SIZE;
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};
use meta_thread::MetaThread;
use migration::{HandoverError, Membership, MigrationKey, Migrator, Registry};
use persist::Loaded;

module! {
    type: MigrateModule,
    name: "dm_migrate",
    author: "The dm-migrate developers",
    description: "device-mapper target for live migration of a block device",
    license: "GPL",
}

/// The target's version, reported by `dmsetup targets`.
const VERSION: [u32; 3] = [0, 3, 0];

struct MigrateModule {
    _registration: Registration<Migrate>,
}

impl kernel::Module for MigrateModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let registry = Arc::pin_init(
            new_mutex!(Registry::default(), "migrate:registry"),
            GFP_KERNEL,
        )?;
        Ok(Self {
            _registration: Registration::new(c"migrate", VERSION, module, registry)?,
        })
    }
}

/// One `migrate` target. Fields drop in order: the copier stops before anything it uses goes.
#[pin_data]
struct Migrate {
    /// The copier: created parked with the target, running between resume and suspend.
    #[pin]
    copier: Mutex<KThread<CopierThread>>,
    /// The metadata thread, with a metadata device: running between resume and postsuspend.
    #[pin]
    meta_thread: Mutex<Option<KThread<MetaThread>>>,
    /// The progress counters in sysfs, present while the device is resumed.
    #[pin]
    sysfs: Mutex<Option<SysfsDir<Migrator>>>,
    migrator: Arc<Migrator>,
    /// The target's place in the registry of migrations.
    membership: Membership,
    /// How the target went live (took over from the table it replaces): `None` until its
    /// preresume or a first message. Held across the hand-over, so a message and the resume
    /// cannot race on it; a refused hand-over keeps refusing.
    #[pin]
    live: Mutex<Option<Result>>,
}

impl From<TableError> for CtrError {
    fn from(e: TableError) -> Self {
        CtrError {
            code: if e.is_out_of_memory() { ENOMEM } else { EINVAL },
            message: e.message(),
        }
    }
}

fn geometry_of(device: &Device) -> DeviceGeometry {
    DeviceGeometry {
        sectors: device.sectors(),
        logical_block_size: device.logical_block_size(),
    }
}

/// `/sys/block/dm-N/migrate/<file>`: one value per file, documented in
/// `Documentation/dm-migrate.rst`.
impl SysfsShow for Migrator {
    const FILES: &'static [&'static CStr] = &SysfsFile::C_NAMES;

    fn show(&self, index: usize, out: &mut SliceWriter<'_>) {
        let progress = self.progress();
        let region_bytes = self.geometry.region_sectors * SECTOR_SIZE;
        let total_bytes = self.geometry.target_sectors * SECTOR_SIZE;
        let Some(&file) = SysfsFile::ALL.get(index) else {
            return;
        };
        let _ = match file {
            SysfsFile::State => writeln!(out, "{}", progress.state_word()),
            SysfsFile::TotalBytes => writeln!(out, "{total_bytes}"),
            SysfsFile::CopiedBytes => writeln!(
                out,
                "{}",
                (progress.copied_regions * region_bytes).min(total_bytes)
            ),
            SysfsFile::PendingRegions => writeln!(out, "{}", progress.pending_regions),
            SysfsFile::Inflight => writeln!(out, "{}", progress.inflight_regions),
            SysfsFile::RateKibps => writeln!(out, "{}", progress.rate_kibps),
            SysfsFile::Errors => writeln!(out, "{}", progress.errors),
            SysfsFile::RateLimitKibps => writeln!(
                out,
                "{}",
                if progress.state == engine::state::State::Copying {
                    self.rate_limit_kibps.load(Ordering::Relaxed)
                } else {
                    0
                }
            ),
            SysfsFile::ZeroedBytes => writeln!(out, "{}", progress.zeroed_bytes),
            SysfsFile::Mirror => writeln!(out, "{}", self.behind.mode().word()),
            SysfsFile::BehindBytes => writeln!(out, "{}", self.behind.stats().bytes),
            SysfsFile::BehindMaxBytes => writeln!(out, "{}", self.behind.stats().max_bytes),
            SysfsFile::BehindWrites => writeln!(out, "{}", self.behind.stats().behind_total),
            SysfsFile::CappedWrites => writeln!(out, "{}", self.behind.stats().capped_total),
            // Without a metadata device there is no write-intent log: nothing held, no waits.
            SysfsFile::IntentChunks => writeln!(
                out,
                "{}",
                self.migration
                    .intent_stats()
                    .map_or(0, |(chunks, _)| chunks)
            ),
            SysfsFile::IntentPlaneWaits => writeln!(
                out,
                "{}",
                self.migration.intent_stats().map_or(0, |(_, waits)| waits)
            ),
        };
    }
}

impl Migrate {
    fn wake_copier(&self) {
        self.migrator.wake_copier();
    }

    /// When the target first goes live: a reload never rolls back (see
    /// `Membership::go_live`). Called by `preresume`, and by `message`, which can reach a new
    /// table between the swap and its resume.
    fn go_live(&self) -> Result {
        let mut live = self.live.lock();
        if let Some(outcome) = *live {
            return outcome;
        }
        let name = self.migrator.handle.device_name();
        let outcome = match self.membership.go_live(self.migrator.options.no_switch) {
            Ok(handover) => 'live: {
                if let Err(e) = self.migrator.persist_handover(handover) {
                    pr_err!(
                        "{}: {}: cannot record the reload; not resuming\n",
                        name,
                        e.message().to_str().unwrap_or("")
                    );
                    break 'live Err(EIO);
                }
                let what = match handover {
                    None => "",
                    Some(Handover::Continued) => "continuing where the copy was",
                    Some(Handover::Switched) => "switched already",
                    Some(Handover::StartedOver) => "starting the copy over",
                };
                if !what.is_empty() {
                    pr_info!("{}: Reloaded: {}\n", name, what);
                }
                Ok(())
            }
            Err(HandoverError::SwitchedElsewhere) => {
                pr_err!(
                    "{}: The device's last migration switched to other devices or another \
                     length; its data is on that destination: load a table on it\n",
                    name
                );
                Err(EINVAL)
            }
        };
        *live = Some(outcome);
        outcome
    }
}

/// Construct a migrate target:
///
/// ```text
/// <origin_dev> <dest_dev> [<#opt_args> <opt_arg>...]
///
/// opt_arg: region_size <sectors> | copy_depth <n> | rate <KiB/s> | no_switch |
///          metadata <dev> | commit_interval <ms>
/// ```
///
/// The words are parsed by the engine (`engine::table`), which owns the grammar and every error
/// message; this only opens the devices and hands their geometry in. Anything built before a
/// later step fails is released by its `Drop`.
#[vtable]
impl Target for Migrate {
    type Data = Arc<Mutex<Registry>>;
    type Mirror = Migrator;

    fn mirror_done(&self) -> &Migrator {
        &self.migrator
    }

    fn new(
        ti: &mut TargetContext<'_>,
        args: &[&str],
        registry: &Arc<Mutex<Registry>>,
    ) -> Result<Pin<KBox<Self>>, CtrError> {
        let table = TableArgs::parse(args)?;
        if ti.is_read_only() {
            return Err(TableError::ReadOnlyTable.into());
        }
        let origin = ti
            .get_device(table.origin)
            .map_err(|_| TableError::OriginOpen)?;
        let destination = ti
            .get_device(table.destination)
            .map_err(|_| TableError::DestinationOpen)?;
        let geometry = Geometry::validate(
            &table.options,
            ti.len(),
            geometry_of(&origin),
            geometry_of(&destination),
            origin.devt() == destination.devt(),
        )?;
        let metadata = match table.metadata {
            Some(path) => {
                let device = ti.get_device(path).map_err(|_| TableError::MetadataOpen)?;
                if device.devt() == origin.devt() || device.devt() == destination.devt() {
                    return Err(TableError::MetadataSameDevice.into());
                }
                Some(device)
            }
            None => None,
        };
        let handle = ti.handle();
        let key = MigrationKey {
            device: handle.device_id(),
            begin: ti.begin(),
            origin: origin.devt(),
            destination: destination.devt(),
            target_sectors: geometry.target_sectors,
            region_sectors: geometry.region_sectors,
            metadata: metadata.as_ref().map_or(0, |m| m.devt()),
        };
        let membership = Membership::join(
            registry,
            key,
            ti.table_id(),
            &geometry,
            table.options.no_switch,
        )?;
        let oom = |_| CtrError::from(TableError::OutOfMemory);
        let bios = BioSet::new(64).map_err(oom)?;
        // Flushes, discards and write-zeroes come one per bio, like any other bio.
        ti.set_num_bios(1, 1, 1);
        let migrator = Arc::new(
            Migrator::new(
                origin,
                destination,
                metadata,
                ti.begin(),
                geometry,
                table.options,
                bios,
                handle,
                membership.migration().clone(),
                BehindSet::new(16).map_err(oom)?,
                migration::behind_slots().map_err(|_| TableError::OutOfMemory)?,
                Event::new().map_err(oom)?,
            ),
            GFP_KERNEL,
        )
        .map_err(|_| TableError::OutOfMemory)?;
        // Created here, where failing is a clean refusal of the table; resume and
        // presuspend_undo only unpark it, which cannot fail.
        let copier = Arc::new(
            CopierThread {
                migrator: migrator.clone(),
            },
            GFP_KERNEL,
        )
        .map_err(|_| TableError::OutOfMemory)?;
        let copier = KThread::new_parked(c"copier", copier).map_err(|_| TableError::OutOfMemory)?;
        let meta_thread = if migrator.metadata.is_some() {
            let context = Arc::new(
                MetaThread {
                    migrator: migrator.clone(),
                },
                GFP_KERNEL,
            )
            .map_err(|_| TableError::OutOfMemory)?;
            Some(KThread::new_parked(c"metadata", context).map_err(|_| TableError::OutOfMemory)?)
        } else {
            None
        };
        // A target that starts the migration takes its state from the metadata device; one
        // that joins the migration of an identical table shares its state in memory, which is
        // newer than the device.
        if membership.is_new() {
            let loaded = migrator
                .load_metadata(dm::kthread::now_ns(), membership.replaces_live_pair())
                .map_err(TableError::Metadata)?;
            if migrator.metadata.is_some() {
                let progress = migrator.progress();
                let what = match loaded {
                    Loaded::New => "new metadata",
                    Loaded::Copying => "resuming the copy",
                    Loaded::Switched => "switched already",
                    Loaded::StartedOver => "failed or cancelled before: starting the copy over",
                    Loaded::ForHandover => {
                        "the live table's, of another region size: taken over at the resume"
                    }
                };
                pr_info!(
                    "{}: Metadata: {}, {}/{} regions copied\n",
                    migrator.handle.device_name(),
                    what,
                    progress.copied_regions,
                    progress.total_regions
                );
            }
        }
        KBox::pin_init(
            pin_init!(Migrate {
                copier <- new_mutex!(copier, "migrate:copier"),
                meta_thread <- new_mutex!(meta_thread, "migrate:meta_thread"),
                sysfs <- new_mutex!(None, "migrate:sysfs"),
                migrator,
                membership,
                live <- new_mutex!(None, "migrate:live"),
            }),
            GFP_KERNEL,
        )
        .map_err(|_| TableError::OutOfMemory.into())
    }

    fn map(&self, bio: Bio) -> MapResult {
        self.migrator.guest_started(&bio);
        let result = self.migrator.dispatch(bio);
        // The core ends a killed bio without `end_io`: its accounting ends here.
        if let MapResult::Kill(bio) = &result {
            self.migrator.guest_done(bio);
        }
        result
    }

    fn end_io(&self, bio: &Bio, _status: Status) {
        self.migrator.write_done(bio.tag());
        self.migrator.guest_done(bio);
    }

    fn presuspend(&self) {
        // Parking waits for the copier's round to end, the writes it held back included.
        self.copier.lock().park();
    }

    fn presuspend_undo(&self) {
        self.copier.lock().unpark();
    }

    fn postsuspend(&self) {
        // The device is suspended: no allocation here (the last commit's pages) may wait for
        // its I/O.
        noio_scope(|| {
            // Every guest write has ended by now (the core waited for them, those that waited
            // for an intent included), but the core knows nothing of the writes behind, which
            // the guest no longer waits for: once they have landed too, the metadata thread
            // can stop, and a last commit records the copy with every intent bit clear.
            self.migrator.behind_set.drain();
            if let Some(thread) = self.meta_thread.lock().as_mut() {
                thread.park();
            }
            self.migrator.check_mirror_failure();
            self.migrator.meta_commit(true);
            // With `no_switch`, userspace may swap to the destination while suspended: make
            // what the copy and the mirrored writes put there durable first.
            if self.migrator.migration.state() == engine::state::State::Synced
                && self.migrator.flush_destination().is_err()
            {
                self.migrator
                    .fail(engine::state::FailReason::DestinationFlush);
            }
            // A table reload resumes the new target before the old one is destroyed: give the
            // folder up here so the new target can create it.
            drop(self.sysfs.lock().take());
        });
    }

    fn preresume(&self) -> Result {
        self.go_live()
    }

    fn resume(&self) {
        // The device is still suspended: no allocation here may wait for its I/O.
        noio_scope(|| {
            let mut sysfs = self.sysfs.lock();
            if sysfs.is_none() {
                match SysfsDir::new(&self.migrator.handle, c"migrate", self.migrator.clone()) {
                    Ok(dir) => *sysfs = Some(dir),
                    Err(_) => pr_warn!("Cannot create the sysfs counters\n"),
                }
            }
            drop(sysfs);
            if let Some(thread) = self.meta_thread.lock().as_mut() {
                thread.unpark();
            }
            self.copier.lock().unpark();
        })
    }

    /// Status, in `Documentation/dm-migrate.rst`:
    ///
    /// ```text
    /// INFO:  <state> <copied>/<total> <pending> <inflight> <copied_bytes> <rate_kibps> <errors>
    ///        <fail_reason>
    /// TABLE: <origin_dev> <dest_dev> [<#opt_args> <opt_arg>...]
    /// ```
    fn status(&self, kind: StatusType, out: &mut SliceWriter<'_>) {
        let migrator = &self.migrator;
        // A status that does not fit is cut short, as `DMEMIT` does; there is nothing to report.
        let _ = match kind {
            StatusType::Info => migrator.progress().write_info(out),
            StatusType::Table => write_table(
                out,
                migrator.origin.name(),
                migrator.destination.name(),
                migrator.metadata.as_ref().map_or("", |m| m.name()),
                &migrator.options,
            ),
            StatusType::Ima => out.write_fmt(format_args!(
                "target_name=migrate,target_version={}.{}.{},origin={},destination={};",
                VERSION[0],
                VERSION[1],
                VERSION[2],
                migrator.origin.name(),
                migrator.destination.name()
            )),
        };
    }

    fn iterate_devices(&self, visitor: &mut DeviceVisitor<'_>) -> i32 {
        let migrator = &self.migrator;
        let len = migrator.geometry.target_sectors;
        match visitor.visit(&migrator.origin, 0, len) {
            0 => visitor.visit(&migrator.destination, 0, len),
            stop => stop,
        }
    }

    /// Messages: `pause`, `resume`, `cancel`, `rate <KiB/s>`, `depth <n>`, `mirror <mode>`,
    /// `mirror_lag <KiB>` (`engine::message`).
    fn message(&self, args: &[&str], _out: &mut SliceWriter<'_>) -> Result {
        let report = |e: MessageError| {
            pr_err!(
                "{}: {} \"{}\"\n",
                self.migrator.handle.device_name(),
                e.message().to_str().unwrap_or("Bad message"),
                args.first().copied().unwrap_or("")
            );
            EINVAL
        };
        let message = Message::parse(args).map_err(report)?;
        self.go_live()?;
        let migrator = &self.migrator;
        let shared = &migrator.migration.shared;
        match message {
            Message::Pause => shared.lock().tracker.set_paused(true),
            Message::Resume => {
                shared.lock().tracker.set_paused(false);
                self.wake_copier();
            }
            // A message may come while the device is suspended: the event's allocations must
            // not wait for its I/O (the uevent helper sees to that).
            Message::Cancel => migrator.cancel().map_err(report)?,
            Message::Rate(kibps) => {
                migrator.max_rate_kibps.store(kibps, Ordering::Relaxed);
                self.wake_copier();
            }
            Message::MinRate(kibps) => {
                migrator.min_rate_kibps.store(kibps, Ordering::Relaxed);
                self.wake_copier();
            }
            Message::Depth(depth) => {
                migrator.depth.store(depth, Ordering::Relaxed);
                self.wake_copier();
            }
            // Writes already behind stay behind; every write routed after this follows the
            // new mode or cap.
            Message::Mirror(mode) => migrator.behind.set_mode(mode),
            Message::MirrorLag(kib) => migrator.behind.set_lag_kib(kib),
        }
        Ok(())
    }
}

// SPDX-License-Identifier: GPL-2.0

//! dm-migrate: a device-mapper target that moves a live disk from one block device to another.
//!
//! A kernel thread copies the origin to the destination region by region. Reads go to the
//! origin; writes go to the origin, and also to the destination once their region is copied;
//! a write to a region being copied waits for that copy. When everything is copied the target
//! flushes the destination, switches all I/O to it and raises an event. The decisions live in
//! `engine` (plain Rust, tested in userspace); this file wires them to bios, devices and the
//! copier thread through the safe binding layer in `dm`. See `Documentation/dm-migrate.rst`.

// The `pin_init!` of `Engine` has more fields than the default macro recursion limit allows.
#![recursion_limit = "256"]

// Both are `pub` so that the kernel's `unreachable_pub` lint accepts the `pub` items they share
// with their userspace build and with later users in this crate.
#[path = "../rust/mod.rs"]
pub mod dm;
pub mod engine;

use core::ffi::CStr;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use dm::bio::{Bio, BioKind, BioList, BioSet, MirrorDone, Status};
use dm::copy::{flush, IoBatch, PageBuffer};
use dm::device::Device;
use dm::kthread::{self, KThread, ThreadMain};
use dm::sysfs::{SysfsDir, SysfsShow};
use dm::target::{
    CtrError, DeviceVisitor, MapResult, Registration, StatusType, Target, TargetContext,
    TargetHandle,
};
use engine::message::{Message, MessageError};
use engine::status::{write_table, FailReason, Progress, SliceWriter, State};
use engine::table::{DeviceGeometry, Geometry, Options, TableArgs, TableError};
use engine::tracker::{bitmap_words, AfterBatch, Batch, CopyResult, IoKind, Route, Tracker};
use kernel::prelude::*;
use kernel::sync::{Arc, CondVar, Mutex, SpinLock};
use kernel::{new_condvar, new_mutex, new_spinlock};

module! {
    type: MigrateModule,
    name: "dm_migrate",
    author: "The dm-migrate developers",
    description: "device-mapper target for live migration of a block device",
    license: "GPL",
}

/// The target's version, reported by `dmsetup targets`.
const VERSION: [u32; 3] = [0, 2, 0];

/// The size of one copy I/O: contiguous regions are batched up to this (512 KiB).
const BATCH_BYTES: u64 = 512 * 1024;

/// How long the copier sleeps when it has nothing to do, in milliseconds.
const IDLE_MS: u32 = 50;

/// Bit 1 of a bio's tag: the bio is a write counted in the epoch given by bit 0.
const TAG_COUNTED: u8 = 2;

struct MigrateModule {
    _registration: Registration<Migrate>,
}

impl kernel::Module for MigrateModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        Ok(Self {
            _registration: Registration::new(c"migrate", VERSION, module)?,
        })
    }
}

/// What the lock protects: the region tracker and the bios waiting for a copy to land.
struct Shared {
    tracker: Tracker<KVVec<u64>>,
    deferred: BioList,
    /// The epoch new writes are counted in (0 or 1).
    epoch: u8,
}

/// The migration, shared by the target's callbacks, bio completions and the copier thread.
#[pin_data]
struct Engine {
    origin: Device,
    destination: Device,
    /// The target's first sector in the mapped device.
    begin: u64,
    geometry: Geometry,
    options: Options,
    bios: BioSet,
    handle: TargetHandle,
    #[pin]
    shared: SpinLock<Shared>,
    /// Writes routed to the origin and not yet completed there, per epoch. The copier flips the
    /// epoch after taking a batch and waits for the old one to drain before reading the batch,
    /// so it never reads a region under a write that was routed before the region was taken.
    writes_in_flight: [AtomicU64; 2],
    /// The epoch the copier is draining, plus one, or 0. The write that ends the last of that
    /// epoch's writes wakes the copier through `drained`, so a round starts as soon as the
    /// writes it must wait for have landed instead of a whole timer tick later (4 ms at
    /// HZ=250, paid by every write deferred behind the round).
    draining: AtomicU8,
    #[pin]
    drained: CondVar,
    /// Only for waiting on `drained`; the epoch counters are atomics.
    #[pin]
    drain_lock: SpinLock<()>,
    /// Set by a failed destination write of a mirrored bio (in completion context), acted on by
    /// `map` and the copier, which may take the lock.
    dest_failed: AtomicBool,
    /// Errors of mirrored destination writes.
    mirror_errors: AtomicU64,
    rate_kibps: AtomicU64,
    depth: AtomicU32,
    /// The measured copy rate, KiB/s.
    measured_kibps: AtomicU64,
    /// Where every bio goes once the migration has ended ([`FINAL_ORIGIN`], [`FINAL_DEST`]), or
    /// 0 while it runs. Switched, failed and cancelled are final states, so once set this never
    /// changes, and `map` routes without taking the lock.
    final_route: AtomicU8,
}

/// `Engine::final_route`: failed or cancelled, everything to the origin.
const FINAL_ORIGIN: u8 = 1;
/// `Engine::final_route`: switched, everything to the destination.
const FINAL_DEST: u8 = 2;

/// One `migrate` target.
#[pin_data]
struct Migrate {
    engine: Arc<Engine>,
    /// The copier, running between resume and suspend.
    #[pin]
    copier: Mutex<Option<KThread>>,
    /// The progress counters in sysfs, present while the device is resumed.
    #[pin]
    sysfs: Mutex<Option<SysfsDir<Engine>>>,
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

impl Engine {
    /// Routes a bio by the tracker's decision; shared by `map` and the re-dispatch of deferred
    /// bios. Never sleeps under the lock.
    fn dispatch(self: &Arc<Self>, mut bio: Bio) -> MapResult {
        let sectors = u64::from(bio.sectors());
        let kind = match bio.kind() {
            BioKind::Read => IoKind::Read,
            BioKind::Write => IoKind::Write,
            BioKind::Flush => IoKind::Flush,
        };
        let sector = if sectors == 0 {
            0
        } else {
            // The core only sends bios inside the target; one outside would be a core bug, and
            // failing it beats writing somewhere else.
            match bio.sector().checked_sub(self.begin) {
                Some(s) if s.saturating_add(sectors) <= self.geometry.target_sectors => s,
                _ => return MapResult::Kill(bio),
            }
        };
        // After the migration has ended the route never changes: no lock, no accounting.
        let device = match self.final_route.load(Ordering::Acquire) {
            FINAL_ORIGIN => Some(&self.origin),
            FINAL_DEST => Some(&self.destination),
            _ => None,
        };
        if let Some(device) = device {
            bio.set_tag(0);
            bio.remap(device, sector);
            return MapResult::Remapped(bio);
        }
        let mut shared = self.shared.lock();
        if self.dest_failed.load(Ordering::Relaxed) {
            shared.tracker.fail(FailReason::DestinationWrite);
        }
        let route = shared.tracker.route(kind, sector, sectors);
        match shared.tracker.state() {
            State::Switched => self.final_route.store(FINAL_DEST, Ordering::Release),
            State::Failed(_) | State::Cancelled => {
                self.final_route.store(FINAL_ORIGIN, Ordering::Release)
            }
            State::Copying | State::Synced => {}
        }
        let counted = kind == IoKind::Write && matches!(route, Route::Origin | Route::Both);
        let tag = if counted {
            let epoch = shared.epoch;
            self.writes_in_flight[usize::from(epoch)].fetch_add(1, Ordering::Relaxed);
            TAG_COUNTED | epoch
        } else {
            0
        };
        bio.set_tag(tag);
        match route {
            Route::Defer => {
                shared.deferred.push(bio);
                MapResult::Submitted
            }
            Route::Origin => {
                drop(shared);
                bio.remap(&self.origin, sector);
                MapResult::Remapped(bio)
            }
            Route::Destination => {
                drop(shared);
                bio.remap(&self.destination, sector);
                MapResult::Remapped(bio)
            }
            Route::Both => {
                drop(shared);
                bio.mirror(
                    (&self.origin, sector),
                    (&self.destination, sector),
                    &self.bios,
                    self.clone(),
                );
                MapResult::Submitted
            }
        }
    }

    /// The counters of the status line and sysfs.
    fn progress(&self) -> Progress {
        let mut progress = self
            .shared
            .lock()
            .tracker
            .progress(self.measured_kibps.load(Ordering::Relaxed));
        progress.errors += self.mirror_errors.load(Ordering::Relaxed);
        if progress.paused || !matches!(progress.state, State::Copying) {
            progress.rate_kibps = 0;
        }
        progress
    }

    /// Ends the accounting of a bio routed by `dispatch`; called from `end_io` for every bio
    /// the target ends, remapped, mirrored or re-dispatched.
    fn write_done(&self, tag: u8) {
        if tag & TAG_COUNTED != 0 {
            let epoch = tag & 1;
            // Sequentially consistent with the copier's store of `draining` and its load of the
            // counter: either the copier sees this write gone, or this sees the copier waiting.
            let before = self.writes_in_flight[usize::from(epoch)].fetch_sub(1, Ordering::SeqCst);
            if before == 1 && self.draining.load(Ordering::SeqCst) == epoch + 1 {
                self.drained.notify_all();
            }
        }
    }

    /// Sends deferred bios on, now that the batch they waited for has landed. Each is popped
    /// under the lock and routed again outside it; only the copier takes batches, so none is
    /// deferred again by this.
    fn release_deferred(self: &Arc<Self>) {
        loop {
            let Some(bio) = self.shared.lock().deferred.pop() else {
                return;
            };
            self.send_on(bio);
        }
    }

    /// Routes a bio the target holds, and submits it itself.
    fn send_on(self: &Arc<Self>, bio: Bio) {
        match self.dispatch(bio) {
            MapResult::Remapped(bio) => bio.submit(),
            MapResult::Kill(bio) => bio.endio(Status::IOERR),
            MapResult::Submitted => {}
        }
    }

    /// Acts on a destination failure seen by a mirrored write. Returns whether it failed now.
    fn check_failure(&self) -> bool {
        if !self.dest_failed.load(Ordering::Relaxed) {
            return false;
        }
        let mut shared = self.shared.lock();
        let was_active = shared.tracker.is_active();
        shared.tracker.fail(FailReason::DestinationWrite);
        was_active
    }

    /// Waits until every write counted in `epoch` has completed.
    fn drain_epoch(&self, epoch: u8) {
        self.draining.store(epoch + 1, Ordering::SeqCst);
        let mut guard = self.drain_lock.lock();
        while self.writes_in_flight[usize::from(epoch)].load(Ordering::SeqCst) != 0 {
            // The last write may end between the check and the wait, and its wake-up is then
            // lost: the one-jiffy timeout bounds what that costs. A stop request only wakes
            // the thread early; the writes still have to land before the batch is read.
            let _ = self.drained.wait_interruptible_timeout(&mut guard, 1);
        }
        drop(guard);
        self.draining.store(0, Ordering::Relaxed);
    }

    /// Copies a set of batches: reads them all from the origin, then writes them all to the
    /// destination, one buffer's worth of each batch at a time. A batch is longer than its
    /// buffer only when a region is (regions above [`BATCH_BYTES`]); the buffers stay small
    /// whatever the region size.
    fn copy_batches(
        &self,
        batches: &[Option<Batch>],
        buffers: &[PageBuffer],
        io: &mut IoBatch,
    ) -> CopyResult {
        let bytes_of = |b: &Batch| (b.sectors.end - b.sectors.start) * 512;
        let longest = batches.iter().flatten().map(bytes_of).max().unwrap_or(0);
        // Every buffer has the same, non-zero size.
        let Some(chunk) = buffers.first().map(|b| b.len() as u64).filter(|&c| c > 0) else {
            return CopyResult::ReadError;
        };
        let mut offset = 0;
        while offset < longest {
            for write in [false, true] {
                let device = if write {
                    &self.destination
                } else {
                    &self.origin
                };
                let mut submitted = true;
                for (batch, buf) in batches.iter().zip(buffers) {
                    let Some(batch) = batch else { continue };
                    let left = bytes_of(batch).saturating_sub(offset);
                    if left == 0 {
                        continue;
                    }
                    let len = left.min(chunk) as usize;
                    let sector = batch.sectors.start + offset / 512;
                    if io.add(device, sector, buf, len, write, &self.bios).is_err() {
                        submitted = false;
                    }
                }
                if !io.wait().is_ok() || !submitted {
                    return if write {
                        CopyResult::WriteError
                    } else {
                        CopyResult::ReadError
                    };
                }
            }
            offset += chunk;
        }
        CopyResult::Done
    }

    /// Flushes the destination and switches all I/O to it.
    fn switch(&self) {
        if flush(&self.destination).is_err() {
            self.shared
                .lock()
                .tracker
                .fail(FailReason::DestinationFlush);
            pr_err!(
                "{}: Destination flush failed; staying on the origin\n",
                self.handle.device_name()
            );
            self.handle.raise_event(c"failed");
            return;
        }
        if self.shared.lock().tracker.switch() {
            pr_info!(
                "{}: Switched to the destination\n",
                self.handle.device_name()
            );
            self.handle.raise_event(c"switched");
        }
    }
}

/// `/sys/block/dm-N/migrate/<file>`: one value per file, documented in
/// `Documentation/dm-migrate.rst`.
impl SysfsShow for Engine {
    const FILES: &'static [&'static CStr] = &[
        c"state",
        c"total_bytes",
        c"copied_bytes",
        c"pending_regions",
        c"inflight",
        c"rate_kibps",
        c"errors",
    ];

    fn show(&self, index: usize, out: &mut SliceWriter<'_>) {
        let progress = self.progress();
        let region_bytes = self.geometry.region_sectors * 512;
        let total_bytes = self.geometry.target_sectors * 512;
        let _ = match index {
            0 => writeln!(out, "{}", progress.state_word()),
            1 => writeln!(out, "{total_bytes}"),
            2 => writeln!(
                out,
                "{}",
                (progress.copied_regions * region_bytes).min(total_bytes)
            ),
            3 => writeln!(out, "{}", progress.pending_regions),
            4 => writeln!(out, "{}", progress.inflight_regions),
            5 => writeln!(out, "{}", progress.rate_kibps),
            _ => writeln!(out, "{}", progress.errors),
        };
    }
}

impl MirrorDone for Engine {
    /// Records a failed destination write. The write's epoch accounting is left to `end_io`,
    /// which the core calls for every bio of the target, mirrored ones included, when it ends.
    fn mirror_done(&self, _origin: Status, dest: Status) {
        if !dest.is_ok() {
            self.mirror_errors.fetch_add(1, Ordering::Relaxed);
            self.dest_failed.store(true, Ordering::Relaxed);
        }
    }
}

/// The copier's loop, run by [`CopierThread`].
struct CopierThread {
    engine: Arc<Engine>,
}

impl ThreadMain for CopierThread {
    fn thread_main(&self) {
        let engine = &self.engine;
        let region_bytes = engine.geometry.region_sectors * 512;
        let max_regions = (BATCH_BYTES / region_bytes).max(1);
        // A batch is one region when regions are larger than BATCH_BYTES; it is then copied
        // through the buffer in pieces (see `copy_batches`).
        let buffer_bytes = (max_regions * region_bytes).min(BATCH_BYTES) as usize;
        let mut buffers = KVec::new();
        let mut io = match IoBatch::new() {
            Ok(io) => io,
            Err(_) => return self.wait_for_stop("Cannot allocate copy I/O"),
        };
        let mut meter = RateMeter::new();
        let mut throttle = Throttle::new();
        while !kthread::should_stop() {
            if engine.check_failure() {
                pr_err!("Destination write failed; staying on the origin\n");
                engine.handle.raise_event(c"failed");
            }
            let should_switch = engine.shared.lock().tracker.should_switch();
            if should_switch {
                engine.switch();
                continue;
            }
            let now = kthread::now_ns();
            engine
                .measured_kibps
                .store(meter.kibps(now), Ordering::Relaxed);
            if let Some(wait_ms) = throttle.wait_ms(engine.rate_kibps.load(Ordering::Relaxed), now)
            {
                kthread::sleep_ms(wait_ms);
                continue;
            }
            let depth = engine.depth.load(Ordering::Relaxed) as usize;
            while buffers.len() < depth {
                match PageBuffer::new(buffer_bytes) {
                    Ok(buf) => {
                        if buffers.push(buf, GFP_KERNEL).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            if buffers.is_empty() {
                return self.wait_for_stop("Cannot allocate copy buffers");
            }
            let depth = depth.min(buffers.len()).max(1);
            let mut batches: [Option<Batch>; engine::tracker::MAX_DEPTH] = Default::default();
            let old_epoch = {
                let mut shared = engine.shared.lock();
                for slot in batches.iter_mut().take(depth) {
                    *slot = shared.tracker.next_batch(max_regions);
                }
                let old = shared.epoch;
                shared.epoch ^= 1;
                old
            };
            if batches.iter().all(Option::is_none) {
                kthread::sleep_ms(IDLE_MS);
                continue;
            }
            engine.drain_epoch(old_epoch);
            let result = engine.copy_batches(&batches[..depth], &buffers[..depth], &mut io);
            let mut failed = false;
            let mut copied = 0;
            {
                let mut shared = engine.shared.lock();
                for batch in batches.iter().flatten() {
                    if shared.tracker.batch_done(batch, result) == AfterBatch::Failed {
                        failed = true;
                    }
                    if result == CopyResult::Done {
                        copied += (batch.sectors.end - batch.sectors.start) * 512;
                    }
                }
            }
            meter.add(copied);
            throttle.add(copied);
            engine.release_deferred();
            // On a device that completes in the submitter (a ram disk), a round never sleeps.
            kthread::cond_resched();
            if failed {
                pr_err!(
                    "{}: Copy failed; staying on the origin\n",
                    engine.handle.device_name()
                );
                engine.handle.raise_event(c"failed");
            }
        }
    }
}

/// Measures the copy rate over windows of about a second.
struct RateMeter {
    start_ns: u64,
    bytes: u64,
    kibps: u64,
}

impl RateMeter {
    fn new() -> Self {
        Self {
            start_ns: kthread::now_ns(),
            bytes: 0,
            kibps: 0,
        }
    }

    fn add(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// The rate of the last full window, starting a new window when this one is over.
    fn kibps(&mut self, now_ns: u64) -> u64 {
        let elapsed = now_ns.saturating_sub(self.start_ns);
        if elapsed >= 1_000_000_000 {
            // No 128-bit division in the kernel: KiB times nanoseconds fits in 64 bits for any
            // rate below 18 PiB/s.
            self.kibps = (self.bytes / 1024).saturating_mul(1_000_000_000) / elapsed;
            self.start_ns = now_ns;
            self.bytes = 0;
        }
        self.kibps
    }
}

/// Holds the copy to `rate` KiB/s: bytes copied since the rate was set may not run ahead of
/// the time since then.
struct Throttle {
    rate: u64,
    start_ns: u64,
    bytes: u64,
}

impl Throttle {
    fn new() -> Self {
        Self {
            rate: 0,
            start_ns: 0,
            bytes: 0,
        }
    }

    fn add(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// How long to wait before the next round, or `None` to go on now. A new rate starts a new
    /// account, so lifting a limit takes effect at once.
    fn wait_ms(&mut self, rate_kibps: u64, now_ns: u64) -> Option<u32> {
        if rate_kibps != self.rate {
            *self = Self {
                rate: rate_kibps,
                start_ns: now_ns,
                bytes: 0,
            };
        }
        if rate_kibps == 0 {
            return None;
        }
        let bytes_per_s = rate_kibps.saturating_mul(1024);
        let elapsed_ms = now_ns.saturating_sub(self.start_ns) / 1_000_000;
        let allowed = bytes_per_s.saturating_mul(elapsed_ms) / 1000;
        let owed = self.bytes.checked_sub(allowed).filter(|&b| b > 0)?;
        // Sleep in short steps so messages and suspend are seen soon.
        Some((owed.saturating_mul(1000) / bytes_per_s).clamp(1, 100) as u32)
    }
}

impl CopierThread {
    /// Fails the migration and idles until stopped; the thread must not exit on its own.
    fn wait_for_stop(&self, why: &str) {
        pr_err!("{}: {}\n", self.engine.handle.device_name(), why);
        self.engine
            .shared
            .lock()
            .tracker
            .fail(FailReason::OriginRead);
        self.engine.handle.raise_event(c"failed");
        while !kthread::should_stop() {
            kthread::sleep_ms(1000);
        }
    }
}

impl Migrate {
    fn start_copier(&self) {
        let mut copier = self.copier.lock();
        if copier.is_some() {
            return;
        }
        let thread = Arc::new(
            CopierThread {
                engine: self.engine.clone(),
            },
            GFP_KERNEL,
        )
        .map_err(|_| ENOMEM)
        .and_then(|t| KThread::run(c"copier", t));
        match thread {
            Ok(thread) => *copier = Some(thread),
            Err(_) => pr_err!("Cannot start the copier thread\n"),
        }
    }

    fn stop_copier(&self) {
        // Dropping the thread stops it and waits: its last round ends, deferred bios included.
        drop(self.copier.lock().take());
    }

    fn wake_copier(&self) {
        if let Some(thread) = self.copier.lock().as_ref() {
            thread.wake();
        }
    }
}

/// Construct a migrate target:
///
/// ```text
/// <origin_dev> <dest_dev> [<#opt_args> <opt_arg>...]
///
/// opt_arg: region_size <sectors> | copy_depth <n> | rate <KiB/s> | no_switch
/// ```
///
/// The words are parsed by the engine (`engine::table`), which owns the grammar and every error
/// message; this only opens the devices and hands their geometry in. Anything built before a
/// later step fails is released by its `Drop`.
#[vtable]
impl Target for Migrate {
    fn new(ti: &mut TargetContext<'_>, args: &[&str]) -> Result<Pin<KBox<Self>>, CtrError> {
        let table = TableArgs::parse(args)?;
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
        let oom = |_| CtrError::from(TableError::OutOfMemory);
        // One bit per region, from kvmalloc: no large contiguous allocation for large devices.
        let words = usize::try_from(bitmap_words(geometry.nr_regions))
            .map_err(|_| TableError::OutOfMemory)?;
        let bitmap =
            KVVec::from_elem(0u64, words, GFP_KERNEL).map_err(|_| TableError::OutOfMemory)?;
        let tracker = Tracker::new(
            bitmap,
            geometry.target_sectors,
            geometry.region_sectors,
            table.options.no_switch,
        )
        .ok_or(TableError::OutOfMemory)?;
        let shared = Shared {
            tracker,
            deferred: BioList::new().map_err(oom)?,
            epoch: 0,
        };
        let bios = BioSet::new(64).map_err(oom)?;
        // Flushes, discards and write-zeroes come one per bio, like any other bio.
        ti.set_num_bios(1, 1, 1);
        let engine = Arc::pin_init(
            pin_init!(Engine {
                origin,
                destination,
                begin: ti.begin(),
                geometry,
                options: table.options,
                bios,
                handle: ti.handle(),
                shared <- new_spinlock!(shared, "migrate:shared"),
                writes_in_flight: [AtomicU64::new(0), AtomicU64::new(0)],
                draining: AtomicU8::new(0),
                drained <- new_condvar!("migrate:drained"),
                drain_lock <- new_spinlock!((), "migrate:drain_lock"),
                dest_failed: AtomicBool::new(false),
                mirror_errors: AtomicU64::new(0),
                rate_kibps: AtomicU64::new(table.options.rate.unwrap_or(0)),
                depth: AtomicU32::new(table.options.depth()),
                measured_kibps: AtomicU64::new(0),
                final_route: AtomicU8::new(0),
            }),
            GFP_KERNEL,
        )
        .map_err(|_| TableError::OutOfMemory)?;
        KBox::pin_init(
            pin_init!(Migrate {
                engine,
                copier <- new_mutex!(None, "migrate:copier"),
                sysfs <- new_mutex!(None, "migrate:sysfs"),
            }),
            GFP_KERNEL,
        )
        .map_err(|_| TableError::OutOfMemory.into())
    }

    fn map(&self, bio: Bio) -> MapResult {
        self.engine.dispatch(bio)
    }

    fn end_io(&self, bio: &Bio, _status: Status) {
        self.engine.write_done(bio.tag());
    }

    fn presuspend(&self) {
        self.stop_copier();
    }

    fn postsuspend(&self) {
        // A table reload resumes the new target before the old one is destroyed: give the
        // folder up here so the new target can create it.
        drop(self.sysfs.lock().take());
    }

    fn resume(&self) {
        let mut sysfs = self.sysfs.lock();
        if sysfs.is_none() {
            match SysfsDir::new(&self.engine.handle, c"migrate", self.engine.clone()) {
                Ok(dir) => *sysfs = Some(dir),
                Err(_) => pr_warn!("Cannot create the sysfs counters\n"),
            }
        }
        drop(sysfs);
        self.start_copier();
    }

    /// Status, in `Documentation/dm-migrate.rst`:
    ///
    /// ```text
    /// INFO:  <state> <copied>/<total> <pending> <inflight> <copied_bytes> <rate_kibps> <errors>
    ///        <fail_reason>
    /// TABLE: <origin_dev> <dest_dev> [<#opt_args> <opt_arg>...]
    /// ```
    fn status(&self, kind: StatusType, out: &mut SliceWriter<'_>) {
        let engine = &self.engine;
        // A status that does not fit is cut short, as `DMEMIT` does; there is nothing to report.
        let _ = match kind {
            StatusType::Info => engine.progress().write_info(out),
            StatusType::Table => write_table(
                out,
                engine.origin.name(),
                engine.destination.name(),
                &engine.options,
            ),
            StatusType::Ima => out.write_fmt(format_args!(
                "target_name=migrate,target_version={}.{}.{},origin={},destination={};",
                VERSION[0],
                VERSION[1],
                VERSION[2],
                engine.origin.name(),
                engine.destination.name()
            )),
        };
    }

    fn iterate_devices(&self, visitor: &mut DeviceVisitor<'_>) -> i32 {
        let engine = &self.engine;
        let len = engine.geometry.target_sectors;
        match visitor.visit(&engine.origin, 0, len) {
            0 => visitor.visit(&engine.destination, 0, len),
            stop => stop,
        }
    }

    /// Messages: `pause`, `resume`, `cancel`, `rate <KiB/s>`, `depth <n>` (`engine::message`).
    fn message(&self, args: &[&str], _out: &mut SliceWriter<'_>) -> Result {
        let report = |e: MessageError| {
            pr_err!(
                "{}: {} \"{}\"\n",
                self.engine.handle.device_name(),
                e.message().to_str().unwrap_or("Bad message"),
                args.first().copied().unwrap_or("")
            );
            EINVAL
        };
        let message = Message::parse(args).map_err(report)?;
        let engine = &self.engine;
        match message {
            Message::Pause => engine.shared.lock().tracker.set_paused(true),
            Message::Resume => {
                engine.shared.lock().tracker.set_paused(false);
                self.wake_copier();
            }
            Message::Cancel => {
                if !engine.shared.lock().tracker.cancel() {
                    return Err(report(MessageError::AlreadySwitched));
                }
                engine.release_deferred();
                engine.handle.raise_event(c"cancelled");
            }
            Message::Rate(kibps) => {
                engine.rate_kibps.store(kibps, Ordering::Relaxed);
                self.wake_copier();
            }
            Message::Depth(depth) => engine.depth.store(depth, Ordering::Relaxed),
        }
        Ok(())
    }
}

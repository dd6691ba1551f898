// SPDX-License-Identifier: GPL-2.0

//! One migration and the routing of every bio by it.
//!
//! A [`Migration`] is the state that must survive a table reload: the region tracker, the
//! bios deferred behind a copy, the write epochs, and whether a mirrored write failed on the
//! destination. A [`Migrator`] is one target's view of it: the devices the target opened, its
//! bio set, its handle for events, and its copy settings. An identical reload (same mapped
//! device, devices, place and regions) shares the old target's migration through the
//! [`Registry`], so it goes on exactly where it was; only one of the two tables is ever live,
//! and the old one is suspended, its I/O drained, before the new one resumes.
//!
//! By protocol: the registry and the reload hand-over (`registry`), the routing of bios and
//! their completions (`routing`), the phase changes and the drains and flushes they wait for
//! (`phase`), and the metadata device (`commit`).

use crate::dm::behind::{BehindDone, BehindSet};
use crate::dm::bio::{Bio, BioKind, BioList, BioSet, MirrorDone, Status};
use crate::dm::copy::flush;
use crate::dm::device::Device;
use crate::dm::event::Event;
use crate::dm::target::{MapResult, TargetHandle};
use crate::engine::behind::{BehindLog, Slot, SLOTS};
use crate::engine::bitmap::{self, Chunk, ChunkedBitmap};
use crate::engine::dispatch::{self, FinalRoute, Io};
use crate::engine::epoch::{BioTag, Counted, Epoch, WriteEpochs};
use crate::engine::intent::{self, IntentLog};
use crate::engine::message::MessageError;
use crate::engine::metadata::{BitmapKind, MetadataError, Phase};
use crate::engine::phase::{decide, Decision, DestinationHealth, PhaseView, Request};
use crate::engine::state::{FailReason, Progress, State};
use crate::engine::table::{Geometry, Options, TableError};
use crate::engine::throttle::GuestLoad;
use crate::engine::tracker::{pending_chunks, CancelOutcome, Handover, IoKind, Route, Tracker};
use crate::persist::{Loaded, MetaStore};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use kernel::prelude::*;
use kernel::sync::lock::{mutex::MutexBackend, Guard};
use kernel::sync::{Arc, Mutex, SpinLock};
use kernel::{new_mutex, new_spinlock};

mod commit;
mod phase;
mod registry;
mod routing;

pub(crate) use registry::{HandoverError, Membership, MigrationKey, Registry};

/// A page of the pending bitmap: [`BITMAP_PAGE_WORDS`] words from `kmalloc`. The tracker drops
/// a page whose regions are all copied under its spinlock, where `vfree` may not be called: a
/// type of its own, made only by [`BitmapPage::new`], so that no page can come from `vmalloc`
/// or have another length.
pub(crate) struct BitmapPage(KVec<u64>);

impl BitmapPage {
    /// A new page, all zero.
    pub(crate) fn new() -> Result<Self, kernel::alloc::AllocError> {
        Ok(Self(KVec::from_elem(0u64, BITMAP_PAGE_WORDS, GFP_KERNEL)?))
    }
}

impl core::ops::Deref for BitmapPage {
    type Target = [u64];

    fn deref(&self) -> &[u64] {
        &self.0
    }
}

impl core::ops::DerefMut for BitmapPage {
    fn deref_mut(&mut self) -> &mut [u64] {
        &mut self.0
    }
}

/// The words of a page of the pending bitmap: 4 KiB, the bits of 32768 regions (2 GiB at 64 KiB).
pub(crate) const BITMAP_PAGE_WORDS: usize = 512;

/// The region tracker of the kernel: its chunk array from `kvmalloc`, pages from `kmalloc`.
pub(crate) type KernelTracker = Tracker<KVVec<Chunk<BitmapPage>>, BitmapPage>;

/// A bitmap in chunks with pages only where it is mixed (`engine::bitmap`): a commit's snapshot
/// of the pending bitmap, and the metadata device's bitmaps as last written.
pub(crate) type PagedBitmap = ChunkedBitmap<KVVec<Chunk<BitmapPage>>, BitmapPage>;

/// The write-intent log of the kernel: a chunk's five planes in one [`BitmapPage`] (they take
/// `intent::CHUNK_WORDS` of its words), only for chunks with a region not clean.
pub(crate) type KernelIntentLog = IntentLog<KVVec<Option<BitmapPage>>, BitmapPage>;

/// A paged bitmap of `nr_bits` bits, every bit clear, with no page yet.
pub(crate) fn paged_bitmap(nr_bits: u64) -> Result<PagedBitmap, kernel::alloc::AllocError> {
    let nr_chunks = usize::try_from(bitmap::nr_chunks(nr_bits, BITMAP_PAGE_WORDS))
        .map_err(|_| kernel::alloc::AllocError)?;
    let mut chunks = KVVec::with_capacity(nr_chunks, GFP_KERNEL)?;
    for _ in 0..nr_chunks {
        // Within the capacity: no allocation.
        chunks.push(Chunk::Clear, GFP_KERNEL)?;
    }
    let mut bitmap =
        ChunkedBitmap::new(chunks, BITMAP_PAGE_WORDS, nr_bits).ok_or(kernel::alloc::AllocError)?;
    bitmap.fill(false);
    Ok(bitmap)
}

const _: () = assert!(intent::CHUNK_WORDS <= BITMAP_PAGE_WORDS);

/// A held phase lock (`Migration::meta`).
type MetaGuard<'a> = Guard<'a, Option<MetaStore>, MutexBackend>;

/// What the lock protects: the region tracker, the write-intent log, and the bios waiting for
/// a copy or an intent to land.
pub(crate) struct Shared {
    pub(crate) tracker: KernelTracker,
    /// Present when the migration keeps its state on a metadata device.
    intent: Option<KernelIntentLog>,
    deferred: BioList,
    /// A reload's hand-over that changed this migration but is not yet on its metadata device
    /// (its write failed, and the table was refused): an identical table's retry writes it
    /// before it goes live, instead of finding the change made and recording nothing.
    unrecorded: Option<Handover>,
}

/// `Migration::final_route`: failed or cancelled, everything to the origin.
const FINAL_ORIGIN: u8 = 1;
/// `Migration::final_route`: switched, everything to the destination.
const FINAL_DEST: u8 = 2;

/// The state of one migration, shared by the targets of identical reloads.
#[pin_data]
pub(crate) struct Migration {
    #[pin]
    pub(crate) shared: SpinLock<Shared>,
    /// Writes routed to the origin and not yet completed, per epoch (see `engine::epoch`).
    epochs: WriteEpochs,
    /// Signalled by the write that ends the epoch a drain waits for, so a round starts as soon
    /// as the writes it waits for have landed.
    drained_event: Event,
    /// Wakes the copier: a batch's I/O is done, a message changed what it should do, a
    /// mirrored write failed. Held by the copier's batches too, which signal it.
    pub(crate) copier_event: Arc<Event>,
    /// Mirrored writes in flight, per epoch: a write-intent bit is cleared only after the
    /// epoch its last write was admitted in has drained (`engine::intent::IntentLog`).
    intent_epochs: WriteEpochs,
    /// The metadata device's state, when there is one. Its lock is also the *phase lock*:
    /// every change of phase (switch, failure, cancel, start over) writes the phase and changes
    /// the tracker's state under it, in that order, so the device never says less than what
    /// the routing already acts on.
    #[pin]
    meta: Mutex<Option<MetaStore>>,
    /// Wakes the metadata thread when a write waits for its intent.
    meta_event: Event,
    /// Guest bios mapped while the migration runs (`Migrator::guest_started`).
    guest_started: AtomicU64,
    /// Those of them that completed, and the sum of their latencies in nanoseconds.
    guest_completed: AtomicU64,
    guest_latency_ns: AtomicU64,
    /// Bytes of the copy written as write-zeroes.
    pub(crate) zeroed_bytes: AtomicU64,
    /// Whether the destination may have lost data: set by a failed destination half of a
    /// mirrored bio (in completion context: a flush's or a FUA write's as soon as that half
    /// completes, a write's once both halves have, when the origin took it) and by a failed
    /// flush of the target's own, before it is uncounted. Sticky until a restart. The copier
    /// turns it into the failure, and every decision to switch or commit reads it under the
    /// phase lock (`engine::phase::decide`); until the failure is carried out the status
    /// reports it.
    health: DestinationHealth,
    /// Mirrored flushes in flight, counted in `dispatch` under the lock like writes in an
    /// epoch: the switch waits for them (`Migrator::switch`).
    mirrored_flushes: AtomicU64,
    /// Every flush of the destination in flight, by its destination half: a guest's mirrored
    /// flush until its destination clone completes, and the target's own
    /// (`Migrator::flush_destination`). A loop device over a file reports a write-back error to
    /// one flush only; a decision that marks data safe on the destination (a commit, the
    /// switch) therefore waits, after its own flush, for every destination flush that began
    /// before it ended, each of which records its failure before it is uncounted.
    dest_flushes: WriteEpochs,
    /// Serialises the flip and drain of `dest_flushes` (a flip must drain before the next).
    #[pin]
    dest_flush_drain: Mutex<()>,
    /// Set when a flush of the origin issued by the target failed: the origin may have lost
    /// a write the guest was told succeeded, and the write-back error was taken by the target's
    /// flush, not the guest's. The next guest flush that goes to the origin fails instead
    /// (`Migrator::dispatch`), as the guest's own flush would have.
    owed_origin_flush_error: AtomicBool,
    /// The pending bitmap whose copied regions a commit records, snapshotted under the phase
    /// lock and written after the drains and flushes, which run without it (with a metadata
    /// device). Held for a whole commit: one at a time.
    #[pin]
    commit_copied: Mutex<Option<PagedBitmap>>,
    /// The metadata thread's last allocation of the intent log's planes failed.
    planes_short: AtomicBool,
    /// Errors of mirrored destination writes.
    mirror_errors: AtomicU64,
    /// Where every bio goes once the migration has ended ([`FINAL_ORIGIN`], [`FINAL_DEST`]), or
    /// 0 while it runs, so that `map` routes without the lock. Set under the lock when the
    /// tracker reaches a final state; cleared only by a restart, while no table is live.
    final_route: AtomicU8,
}

impl Migration {
    /// A migration of `geometry` with every region pending.
    fn new(geometry: &Geometry, no_switch: bool, metadata: bool) -> Result<Arc<Self>, TableError> {
        use TableError::OutOfMemory;
        // With a metadata device: the commit's snapshot, a page only where the copy is going
        // on; the intent log, a chunk entry per 6528 regions and planes only for the chunks
        // the guest wrote lately, with a few spares to begin with (issue 24: flat bitmaps took
        // 16 MiB per TiB at 64 KiB regions).
        let commit_copied = if metadata {
            Some(paged_bitmap(geometry.nr_regions).map_err(|_| OutOfMemory)?)
        } else {
            None
        };
        let intent = if metadata {
            let nr_chunks = usize::try_from(intent::chunk_entries(geometry.nr_regions))
                .map_err(|_| OutOfMemory)?;
            let mut chunks =
                KVVec::with_capacity(nr_chunks, GFP_KERNEL).map_err(|_| OutOfMemory)?;
            for _ in 0..nr_chunks {
                // Within the capacity: no allocation.
                chunks.push(None, GFP_KERNEL).map_err(|_| OutOfMemory)?;
            }
            let mut log = IntentLog::new(chunks, geometry.nr_regions).ok_or(OutOfMemory)?;
            while log.spares_wanted() > 0 {
                let _ = log.give(BitmapPage::new().map_err(|_| OutOfMemory)?);
            }
            Some(log)
        } else {
            None
        };
        // The pending bitmap costs a chunk entry per page of bits, and a page only where the
        // copy is going on (`engine::bitmap`).
        let nr_chunks = pending_chunks(
            geometry.target_sectors,
            geometry.region_sectors,
            BITMAP_PAGE_WORDS,
        );
        let nr_chunks = usize::try_from(nr_chunks).map_err(|_| OutOfMemory)?;
        let mut chunks = KVVec::with_capacity(nr_chunks, GFP_KERNEL).map_err(|_| OutOfMemory)?;
        for _ in 0..nr_chunks {
            // Within the capacity: no allocation.
            chunks
                .push(Chunk::Set, GFP_KERNEL)
                .map_err(|_| OutOfMemory)?;
        }
        let tracker = Tracker::new(
            chunks,
            BITMAP_PAGE_WORDS,
            geometry.target_sectors,
            geometry.region_sectors,
            no_switch,
        )
        .ok_or(OutOfMemory)?;
        let shared = Shared {
            tracker,
            intent,
            deferred: BioList::new().map_err(|_| OutOfMemory)?,
            unrecorded: None,
        };
        let event = || Event::new().map_err(|_| OutOfMemory);
        let copier_event = Arc::new(event()?, GFP_KERNEL).map_err(|_| OutOfMemory)?;
        let (drained_event, meta_event) = (event()?, event()?);
        Arc::pin_init(
            pin_init!(Migration {
                shared <- new_spinlock!(shared, "migrate:shared"),
                epochs: WriteEpochs::new(),
                drained_event,
                copier_event,
                intent_epochs: WriteEpochs::new(),
                meta <- new_mutex!(None, "migrate:meta"),
                meta_event,
                guest_started: AtomicU64::new(0),
                guest_completed: AtomicU64::new(0),
                guest_latency_ns: AtomicU64::new(0),
                zeroed_bytes: AtomicU64::new(0),
                health: DestinationHealth::new(),
                mirrored_flushes: AtomicU64::new(0),
                dest_flushes: WriteEpochs::new(),
                dest_flush_drain <- new_mutex!((), "migrate:dest_flush_drain"),
                owed_origin_flush_error: AtomicBool::new(false),
                commit_copied <- new_mutex!(commit_copied, "migrate:commit_copied"),
                planes_short: AtomicBool::new(false),
                mirror_errors: AtomicU64::new(0),
                final_route: AtomicU8::new(0),
            }),
            GFP_KERNEL,
        )
        .map_err(|_| OutOfMemory)
    }

    /// With a metadata device: the write-intent log's chunks held in memory now, and the
    /// writes that waited for planes since the migration began (`None` without one).
    pub(crate) fn intent_stats(&self) -> Option<(usize, u64)> {
        let shared = self.shared.lock();
        shared
            .intent
            .as_ref()
            .map(|i| (i.chunks_in_use(), i.starved_total()))
    }

    /// Where the migration stands, as the status reports it.
    pub(crate) fn state(&self) -> State {
        let state = self.shared.lock().tracker.state();
        self.with_mirror_failure(state)
    }

    /// A failed mirrored write makes an active migration failed at once in what is reported,
    /// even before the copier has carried the failure out.
    fn with_mirror_failure(&self, state: State) -> State {
        match (state, self.health.failure()) {
            (State::Copying | State::Synced, Some(reason)) => State::Failed(reason),
            (state, _) => state,
        }
    }

    /// Ends a destination flush counted in `dest_flushes`.
    fn dest_flushes_exit(&self, flush: Counted) {
        if self.dest_flushes.exit(flush) {
            self.drained_event.signal();
        }
    }

    /// The write epochs, for the copier's rounds.
    pub(crate) fn epochs(&self) -> &WriteEpochs {
        &self.epochs
    }

    /// The failure the destination recorded, not yet carried out (or carried out already).
    pub(crate) fn dest_failure(&self) -> Option<FailReason> {
        self.health.failure()
    }

    /// The guest's I/O since the migration began, for the rate controller (which takes the
    /// difference of two of these as one interval's load).
    pub(crate) fn guest_load(&self) -> GuestLoad {
        // Completed first: a bio that ends between the two reads is then counted as started
        // and not completed (in flight), never the other way round.
        let completed = self.guest_completed.load(Ordering::Acquire);
        let latency_ns = self.guest_latency_ns.load(Ordering::Relaxed);
        let started = self.guest_started.load(Ordering::Acquire);
        GuestLoad {
            completed,
            latency_ns,
            in_flight: started.saturating_sub(completed),
        }
    }
}

impl Shared {
    /// Counts a destination flush in `epochs`, under this lock (see `engine::epoch`).
    fn flush_enter(&mut self, epochs: &WriteEpochs) -> Counted {
        epochs.enter()
    }

    /// Flips `epochs` under this lock, for a drain of the epoch it left.
    fn flush_flip(&mut self, epochs: &WriteEpochs) -> Epoch {
        epochs.flip()
    }

    /// Notes that `handover` changed the migration: with a metadata device, it is unrecorded
    /// until `Migrator::persist_handover` has written it.
    fn set_unrecorded(&mut self, handover: Handover) {
        if self.intent.is_some() && handover != Handover::Continued {
            self.unrecorded = Some(handover);
        }
    }
}

/// One target's view of its migration: what it routes with and copies between.
pub(crate) struct Migrator {
    /// The bios of the writes behind. First, so that it is dropped first: its drop waits for
    /// the writes behind still in flight, whose completions use the fields below. Each of them
    /// holds a reference to this `Migrator` until just before it ends, which must never be the
    /// last one (its drop sleeps, and the completion may run in interrupt context): the target
    /// holds its own until its destructor, which the core calls only after postsuspend, and
    /// postsuspend waits for every write behind (`BehindSet::drain`).
    pub(crate) behind_set: BehindSet<Migrator>,
    /// The writes behind in flight, the mirror's mode and its cap (`engine::behind`).
    pub(crate) behind: BehindLog<KVec<Slot>>,
    /// Signalled by every write behind that completes: a write that overlapped it waits in
    /// `map` for this.
    pub(crate) behind_event: Event,
    pub(crate) origin: Device,
    pub(crate) destination: Device,
    /// The metadata device, if the table has one.
    pub(crate) metadata: Option<Device>,
    /// The target's first sector in the mapped device.
    begin: u64,
    pub(crate) geometry: Geometry,
    pub(crate) options: Options,
    pub(crate) bios: BioSet,
    pub(crate) handle: TargetHandle,
    pub(crate) migration: Arc<Migration>,
    /// The adaptive rate's floor (`min_rate`), KiB/s.
    pub(crate) min_rate_kibps: AtomicU64,
    /// The rate's ceiling (`max_rate`), KiB/s; 0 for none.
    pub(crate) max_rate_kibps: AtomicU64,
    /// The limit the controller set last, KiB/s; 0 for none.
    pub(crate) rate_limit_kibps: AtomicU64,
    /// The copy depth set by the table's `copy_depth` or a `depth` message; 0 for none (the
    /// controller picks it: `RateController::copy_depth`).
    pub(crate) depth: AtomicU32,
    /// The measured copy rate, KiB/s.
    pub(crate) measured_kibps: AtomicU64,
    /// Whether chunks that read as zeros go to the destination as write-zeroes.
    pub(crate) skip_zeroes: AtomicBool,
}

/// The slots of a migrator's writes behind, free, from the heap: 4 KiB, which the constructor
/// must not carry on its stack (with a metadata device its frames already come near the end of
/// the kernel stack).
pub(crate) fn behind_slots() -> Result<KVec<Slot>, kernel::alloc::AllocError> {
    let mut slots = KVec::with_capacity(SLOTS, GFP_KERNEL)?;
    for _ in 0..SLOTS {
        slots.push(Slot::new(), GFP_KERNEL)?;
    }
    Ok(slots)
}

impl Migrator {
    /// Assembles a target's view of its migration.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        origin: Device,
        destination: Device,
        metadata: Option<Device>,
        begin: u64,
        geometry: Geometry,
        options: Options,
        bios: BioSet,
        handle: TargetHandle,
        migration: Arc<Migration>,
        behind_set: BehindSet<Migrator>,
        behind_slots: KVec<Slot>,
        behind_event: Event,
    ) -> Self {
        // Zeros are written as write-zeroes where the destination takes them, unless the table
        // says otherwise; `skip_zeroes` on a destination that does not falls back to data.
        let skip_zeroes =
            options.skip_zeroes.unwrap_or(true) && destination.supports_write_zeroes();
        Self {
            behind_set,
            behind: BehindLog::new(
                behind_slots,
                options.mirror_mode(),
                options.mirror_lag_kib(),
            ),
            behind_event,
            origin,
            destination,
            metadata,
            begin,
            geometry,
            min_rate_kibps: AtomicU64::new(options.min_rate_kibps()),
            max_rate_kibps: AtomicU64::new(options.max_rate_kibps()),
            rate_limit_kibps: AtomicU64::new(options.max_rate_kibps()),
            depth: AtomicU32::new(options.copy_depth.unwrap_or(0)),
            skip_zeroes: AtomicBool::new(skip_zeroes),
            options,
            bios,
            handle,
            migration,
            measured_kibps: AtomicU64::new(0),
        }
    }

    /// Starts the guest accounting of a bio in `map`: the time it came, while the migration
    /// runs (after it, the rate controller is gone and the bio costs nothing).
    pub(crate) fn guest_started(&self, bio: &Bio) {
        let migration = &*self.migration;
        if migration.final_route.load(Ordering::Relaxed) != 0 {
            bio.set_start_ns(0);
            return;
        }
        bio.set_start_ns(crate::dm::kthread::now_ns().max(1));
        migration.guest_started.fetch_add(1, Ordering::Release);
    }

    /// Ends the guest accounting of a bio in `end_io`.
    pub(crate) fn guest_done(&self, bio: &Bio) {
        let start = bio.start_ns();
        if start == 0 {
            return;
        }
        let migration = &*self.migration;
        let latency = crate::dm::kthread::now_ns().saturating_sub(start);
        migration
            .guest_latency_ns
            .fetch_add(latency, Ordering::Relaxed);
        migration.guest_completed.fetch_add(1, Ordering::Release);
    }

    /// Wakes the copier: what it should do changed.
    pub(crate) fn wake_copier(&self) {
        self.migration.copier_event.signal();
    }

    /// The counters of the status line and sysfs.
    pub(crate) fn progress(&self) -> Progress {
        let migration = &*self.migration;
        let mut progress = migration
            .shared
            .lock()
            .tracker
            .progress(self.measured_kibps.load(Ordering::Relaxed));
        progress.state = migration.with_mirror_failure(progress.state);
        progress.errors += migration.mirror_errors.load(Ordering::Relaxed);
        progress.zeroed_bytes = migration.zeroed_bytes.load(Ordering::Relaxed);
        if progress.paused || !matches!(progress.state, State::Copying) {
            progress.rate_kibps = 0;
        }
        progress
    }
}

// SPDX-License-Identifier: GPL-2.0

//! One migration and the routing of every bio by it.
//!
//! A [`Migration`] is the state that must survive a table reload: the region tracker, the
//! bios deferred behind a copy, the write epochs, and whether a mirrored write failed on the
//! destination. An [`Engine`] is one target's view of it: the devices the target opened, its
//! bio set, its handle for events, and its copy settings. An identical reload (same mapped
//! device, devices, place and regions) shares the old target's migration through the
//! [`Registry`], so it goes on exactly where it was; only one of the two tables is ever live,
//! and the old one is suspended, its I/O drained, before the new one resumes.

// Safe Rust only: the binding layer (`crate::dm`) is the one place allowed `unsafe_code`.
#![deny(unsafe_code)]

use crate::dm::bio::{Bio, BioKind, BioList, BioSet, MirrorDone, Status};
use crate::dm::copy::flush;
use crate::dm::device::Device;
use crate::dm::event::Event;
use crate::dm::target::{MapResult, TargetHandle};
use crate::engine::epoch::{BioTag, Counted, Epoch, WriteEpochs};
use crate::engine::message::MessageError;
use crate::engine::metadata::{Admit, BitmapKind, IntentLog, MetadataError, Phase};
use crate::engine::state::{FailReason, Progress, State};
use crate::engine::table::{Geometry, Options, TableError};
use crate::engine::throttle::GuestLoad;
use crate::engine::bitmap::{self, Chunk};
use crate::engine::tracker::{
    bitmap_words, pending_chunks, CancelOutcome, Handover, IoKind, Route, Tracker,
};
use crate::persist::{Loaded, MetaStore};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use kernel::prelude::*;
use kernel::sync::lock::{mutex::MutexBackend, Guard};
use kernel::sync::{Arc, Mutex, SpinLock};
use kernel::{new_mutex, new_spinlock};

/// A page of the pending bitmap: [`BITMAP_PAGE_WORDS`] words. It comes from `kmalloc`, not
/// `vmalloc`: the tracker drops a page whose regions are all copied under the spinlock.
pub(crate) type BitmapPage = KVec<u64>;

/// The words of a page of the pending bitmap: 4 KiB, the bits of 32768 regions (2 GiB at 64 KiB).
pub(crate) const BITMAP_PAGE_WORDS: usize = 512;

/// The region tracker of the kernel: its chunk array from `kvmalloc`, pages from `kmalloc`.
pub(crate) type KernelTracker = Tracker<KVVec<Chunk<BitmapPage>>, BitmapPage>;

/// A new page of the pending bitmap.
pub(crate) fn new_bitmap_page() -> Result<BitmapPage, kernel::alloc::AllocError> {
    KVec::from_elem(0u64, BITMAP_PAGE_WORDS, GFP_KERNEL)
}

/// A held phase lock (`Migration::meta`).
type MetaGuard<'a> = Guard<'a, Option<MetaStore>, MutexBackend>;

/// What the lock protects: the region tracker, the write-intent log, and the bios waiting for
/// a copy or an intent to land.
pub(crate) struct Shared {
    pub(crate) tracker: KernelTracker,
    /// Present when the migration keeps its state on a metadata device.
    intent: Option<IntentLog<KVVec<u64>>>,
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
    /// epoch its last write was admitted in has drained (`engine::metadata::IntentLog`).
    intent_epochs: WriteEpochs,
    /// The metadata device's state, when there is one. Its lock is also the *phase lock*:
    /// every change of phase (switch, failure, cancel, start over) writes the phase and changes
    /// the tracker's state under it, in that order, so the device never says less than what
    /// the routing already acts on.
    #[pin]
    meta: Mutex<Option<MetaStore>>,
    /// Wakes the metadata thread when a write waits for its intent.
    meta_event: Event,
    /// Guest bios mapped while the migration runs (`Engine::guest_started`).
    guest_started: AtomicU64,
    /// Those of them that completed, and the sum of their latencies in nanoseconds.
    guest_completed: AtomicU64,
    guest_latency_ns: AtomicU64,
    /// Bytes of the copy written as write-zeroes.
    pub(crate) zeroed_bytes: AtomicU64,
    /// Set by a failed destination half of a mirrored bio (in completion context) before the
    /// bio ends: a flush's as soon as that half completes, a write's once both halves have
    /// (only a write the origin took counts). Sticky until a restart. The copier turns it into
    /// the failure, and every decision to switch or commit reads it under the phase lock;
    /// until the failure is carried out the status reports it.
    dest_failed: AtomicBool,
    /// Mirrored flushes in flight, counted in `dispatch` under the lock like writes in an
    /// epoch: the switch waits for them (`Engine::switch`).
    mirrored_flushes: AtomicU64,
    /// Every flush of the destination in flight, by its destination half: a guest's mirrored
    /// flush until its destination clone completes, and the target's own
    /// (`Engine::flush_destination`). A loop device over a file reports a write-back error to
    /// one flush only; a decision that marks data safe on the destination (a commit, the
    /// switch) therefore waits, after its own flush, for every destination flush that began
    /// before it ended, each of which records its failure before it is uncounted.
    dest_flushes: WriteEpochs,
    /// Serialises the flip and drain of `dest_flushes` (a flip must drain before the next).
    #[pin]
    dest_flush_drain: Mutex<()>,
    /// Set when a flush of the destination issued by the target failed: the data it covered
    /// may be lost there, whichever decision that flush was for. Sticky until a restart.
    dest_flush_failed: AtomicBool,
    /// Set when a flush of the origin issued by the target failed: the origin may have lost
    /// a write the guest was told succeeded, and the write-back error was taken by the target's
    /// flush, not the guest's. The next guest flush that goes to the origin fails instead
    /// (`Engine::dispatch`), as the guest's own flush would have.
    owed_origin_flush_error: AtomicBool,
    /// The copied bitmap a commit records, snapshotted under the phase lock and written after
    /// the drains and flushes, which run without it. Held for a whole commit: one at a time.
    #[pin]
    commit_copied: Mutex<KVVec<u64>>,
    /// Errors of mirrored destination writes.
    mirror_errors: AtomicU64,
    /// Where every bio goes once the migration has ended ([`FINAL_ORIGIN`], [`FINAL_DEST`]), or
    /// 0 while it runs, so that `map` routes without the lock. Set under the lock when the
    /// tracker reaches a final state; cleared only by a restart, while no table is live.
    final_route: AtomicU8,
}

impl Migration {
    /// A migration of `geometry` with every region pending.
    fn new(
        geometry: &Geometry,
        no_switch: bool,
        metadata: bool,
    ) -> Result<Arc<Self>, TableError> {
        use TableError::OutOfMemory;
        // The intent log's bitmaps: one bit per region, from kvmalloc (no large contiguous
        // allocation for large devices).
        let words = usize::try_from(bitmap_words(geometry.nr_regions)).map_err(|_| OutOfMemory)?;
        let new_bitmap = || KVVec::from_elem(0u64, words, GFP_KERNEL).map_err(|_| OutOfMemory);
        let commit_copied = if metadata {
            new_bitmap()?
        } else {
            KVVec::new()
        };
        let intent = if metadata {
            Some(IntentLog::new(
                new_bitmap()?,
                new_bitmap()?,
                new_bitmap()?,
                new_bitmap()?,
                new_bitmap()?,
            ))
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
            chunks.push(Chunk::Set, GFP_KERNEL).map_err(|_| OutOfMemory)?;
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
                dest_failed: AtomicBool::new(false),
                mirrored_flushes: AtomicU64::new(0),
                dest_flushes: WriteEpochs::new(),
                dest_flush_drain <- new_mutex!((), "migrate:dest_flush_drain"),
                dest_flush_failed: AtomicBool::new(false),
                owed_origin_flush_error: AtomicBool::new(false),
                commit_copied <- new_mutex!(commit_copied, "migrate:commit_copied"),
                mirror_errors: AtomicU64::new(0),
                final_route: AtomicU8::new(0),
            }),
            GFP_KERNEL,
        )
        .map_err(|_| OutOfMemory)
    }

    /// Where the migration stands, as the status reports it.
    pub(crate) fn state(&self) -> State {
        let state = self.shared.lock().tracker.state();
        self.with_mirror_failure(state)
    }

    /// A failed mirrored write makes an active migration failed at once in what is reported,
    /// even before the copier has carried the failure out.
    fn with_mirror_failure(&self, state: State) -> State {
        match (state, self.dest_failure()) {
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

    /// Whether a destination flush failed, the target's own or a guest's: the destination may
    /// have lost data it held.
    fn dest_failure(&self) -> Option<FailReason> {
        if self.dest_flush_failed.load(Ordering::Acquire) {
            Some(FailReason::DestinationFlush)
        } else if self.dest_failed.load(Ordering::Acquire) {
            Some(FailReason::DestinationWrite)
        } else {
            None
        }
    }

    /// The write epochs, for the copier's rounds.
    pub(crate) fn epochs(&self) -> &WriteEpochs {
        &self.epochs
    }

    /// Whether a mirrored write failed on the destination.
    pub(crate) fn dest_failed(&self) -> bool {
        self.dest_failed.load(Ordering::Acquire)
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


/// What identifies a migration across a reload: the same mapped device, origin and
/// destination at the same place, with the same regions.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct MigrationKey {
    pub(crate) device: usize,
    pub(crate) begin: u64,
    pub(crate) origin: u32,
    pub(crate) destination: u32,
    pub(crate) target_sectors: u64,
    pub(crate) region_sectors: u64,
    /// The metadata device, 0 for none.
    pub(crate) metadata: u32,
}

/// A migration, how many targets use it, and when a target last took it live.
pub(crate) struct Entry {
    key: MigrationKey,
    migration: Arc<Migration>,
    users: usize,
    /// The registry's generation when a target of this migration last went live, or 0 if none
    /// has yet: of the migrations at one place, the one with the highest is the live one.
    resumed: u64,
    /// Set when this migration's table was refused over a switched migration (see
    /// `Membership::go_live`): it stands for that one, whose table is gone by then, so that
    /// the next table still sees the switch.
    stands_for: Option<MigrationKey>,
}

/// The migrations of every `migrate` target that exists, live or not, and the tables that hold
/// one. Slots are reused; a `KVec` of this kernel cannot remove elements.
#[derive(Default)]
pub(crate) struct Registry {
    migrations: KVec<Option<Entry>>,
    tables: KVec<Option<usize>>,
    /// Counts first resumes, for `Entry::resumed`.
    generation: u64,
}

impl Registry {
    /// Forgets that `table` holds a `migrate` target.
    fn forget_table(&mut self, table: usize) {
        if let Some(slot) = self.tables.iter_mut().find(|slot| **slot == Some(table)) {
            *slot = None;
        }
    }
}

/// Fills a free slot of `slots` with `value`, or adds one.
fn put<T>(slots: &mut KVec<Option<T>>, value: T) -> Result<(), TableError> {
    match slots.iter_mut().find(|slot| slot.is_none()) {
        Some(slot) => *slot = Some(value),
        None => slots
            .push(Some(value), GFP_KERNEL)
            .map_err(|_| TableError::OutOfMemory)?,
    }
    Ok(())
}

/// A target's use of a migration in the [`Registry`], given up on drop.
pub(crate) struct Membership {
    registry: Arc<Mutex<Registry>>,
    key: MigrationKey,
    table: usize,
    migration: Arc<Migration>,
    is_new: bool,
}

impl Membership {
    /// Joins the migration of an identical table, or starts a new one, for a target of table
    /// `table`. A table may hold one `migrate` target: each would want the same sysfs folder,
    /// and one migration per device is what a live move needs.
    pub(crate) fn join(
        registry: &Arc<Mutex<Registry>>,
        key: MigrationKey,
        table: usize,
        geometry: &Geometry,
        no_switch: bool,
    ) -> Result<Self, TableError> {
        let mut guard = registry.lock();
        let registry_ref = &mut *guard;
        if registry_ref.tables.iter().flatten().any(|&t| t == table) {
            return Err(TableError::SecondTarget);
        }
        put(&mut registry_ref.tables, table)?;
        let migration = match Self::find_or_add(registry_ref, key, geometry, no_switch) {
            Ok(found) => found,
            Err(e) => {
                registry_ref.forget_table(table);
                return Err(e);
            }
        };
        let (migration, is_new) = migration;
        Ok(Self {
            registry: registry.clone(),
            key,
            table,
            migration,
            is_new,
        })
    }

    /// Whether this target started the migration (rather than joining one of an identical
    /// table): only then is its state loaded from the metadata device.
    pub(crate) fn is_new(&self) -> bool {
        self.is_new
    }

    /// The migration of `key`, with one more user, or a new one.
    fn find_or_add(
        registry: &mut Registry,
        key: MigrationKey,
        geometry: &Geometry,
        no_switch: bool,
    ) -> Result<(Arc<Migration>, bool), TableError> {
        if let Some(entry) = registry
            .migrations
            .iter_mut()
            .flatten()
            .find(|entry| entry.key == key)
        {
            entry.users += 1;
            return Ok((entry.migration.clone(), false));
        }
        let migration = Migration::new(geometry, no_switch, key.metadata != 0)?;
        let entry = Entry {
            key,
            migration: migration.clone(),
            users: 1,
            resumed: 0,
            stands_for: None,
        };
        put(&mut registry.migrations, entry)?;
        Ok((migration, true))
    }

    /// Whether the device's live table (the last to go live at this place) is a migration of
    /// the same devices, length and metadata device as this one, in another region size: this
    /// table then takes over that migration at its hand-over, metadata included.
    pub(crate) fn replaces_live_pair(&self) -> bool {
        let registry = self.registry.lock();
        let place = (self.key.device, self.key.begin);
        registry
            .migrations
            .iter()
            .flatten()
            .filter(|e| (e.key.device, e.key.begin) == place && e.resumed > 0)
            .max_by_key(|e| e.resumed)
            .is_some_and(|e| {
                let key = e.key;
                e.stands_for.is_none()
                    && key.origin == self.key.origin
                    && key.destination == self.key.destination
                    && key.target_sectors == self.key.target_sectors
                    && key.metadata == self.key.metadata
                    && key.region_sectors != self.key.region_sectors
            })
    }

    /// The migration.
    pub(crate) fn migration(&self) -> &Arc<Migration> {
        &self.migration
    }

    /// Called when a target goes live (its preresume, or a message that reaches it first),
    /// once: makes a reload never roll back. The table it replaces is suspended by now.
    ///
    /// The migration this place (mapped device and first sector) last went live with is the
    /// predecessor. If that is this very migration, the table is an identical reload: it goes
    /// on where it was, and a failed or cancelled migration starts over (the way to retry).
    /// Otherwise, with the same devices and length, a switched predecessor makes this one
    /// switched, and anything else starts the copy over from the origin. A switched
    /// predecessor on other devices or another length is refused unless this table copies
    /// away from its destination: neither of this table's devices has all the data. The new
    /// table's `no_switch` applies in every case.
    pub(crate) fn go_live(&self, no_switch: bool) -> Result<Option<Handover>, HandoverError> {
        let mut registry = self.registry.lock();
        registry.generation += 1;
        let generation = registry.generation;
        let place = (self.key.device, self.key.begin);
        let last = registry
            .migrations
            .iter()
            .flatten()
            .filter(|e| (e.key.device, e.key.begin) == place && e.resumed > 0)
            .max_by_key(|e| e.resumed)
            .map(|e| match e.stands_for {
                Some(key) => (false, key, State::Switched),
                None => {
                    let identical = Arc::ptr_eq(&e.migration, &self.migration);
                    (identical, e.key, e.migration.state())
                }
            });
        let refused = match last {
            Some((false, key, State::Switched)) => {
                let same = key.origin == self.key.origin
                    && key.destination == self.key.destination
                    && key.target_sectors == self.key.target_sectors;
                // Moving on from where the last migration put the data is a new move.
                (!same && self.key.origin != key.destination).then_some(key)
            }
            _ => None,
        };
        if let Some(entry) = registry
            .migrations
            .iter_mut()
            .flatten()
            .find(|e| Arc::ptr_eq(&e.migration, &self.migration))
        {
            entry.resumed = generation;
            entry.stands_for = refused;
        }
        drop(registry);
        if refused.is_some() {
            return Err(HandoverError::SwitchedElsewhere);
        }
        let migration = &self.migration;
        let mut shared = migration.shared.lock();
        shared.tracker.set_no_switch(no_switch);
        let Some((identical, last_key, last_state)) = last else {
            return Ok(None);
        };
        if identical {
            // The hand-over of a table of this migration that was refused because its record
            // could not be written: the change is made, the record is still to write.
            if let Some(handover) = shared.unrecorded {
                return Ok(Some(handover));
            }
            // A mirrored write's failure not yet carried out counts as the failure it is.
            if migration.dest_failed() {
                shared.tracker.fail(FailReason::DestinationWrite);
            }
            if !shared.tracker.restart() {
                return Ok(Some(Handover::Continued));
            }
            if let Some(intent) = shared.intent.as_mut() {
                intent.reset();
            }
            migration.dest_failed.store(false, Ordering::Release);
            migration.dest_flush_failed.store(false, Ordering::Release);
            migration.final_route.store(0, Ordering::Release);
            shared.set_unrecorded(Handover::StartedOver);
            return Ok(Some(Handover::StartedOver));
        }
        let continues = last_key.origin == self.key.origin
            && last_key.destination == self.key.destination
            && last_key.target_sectors == self.key.target_sectors;
        let last_state = if continues {
            last_state
        } else {
            // A new move away from where the last one put the data: from scratch.
            State::Copying
        };
        // This migration may have been live before another took its place: whatever its
        // bitmap says is stale, so it is set anew.
        let handover = shared.tracker.after_reload(last_state);
        if let Some(intent) = shared.intent.as_mut() {
            intent.reset();
        }
        migration.dest_failed.store(false, Ordering::Release);
        migration.dest_flush_failed.store(false, Ordering::Release);
        migration.final_route.store(
            if handover == Handover::Switched {
                FINAL_DEST
            } else {
                0
            },
            Ordering::Release,
        );
        shared.set_unrecorded(handover);
        Ok(Some(handover))
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
    /// until `Engine::persist_handover` has written it.
    fn set_unrecorded(&mut self, handover: Handover) {
        if self.intent.is_some() && handover != Handover::Continued {
            self.unrecorded = Some(handover);
        }
    }
}

/// Why a table cannot take over from the one it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandoverError {
    /// The device's last migration switched, to devices or a length this table does not
    /// continue.
    SwitchedElsewhere,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut registry = self.registry.lock();
        registry.forget_table(self.table);
        for slot in registry.migrations.iter_mut() {
            let Some(entry) = slot else { continue };
            if entry.key == self.key && Arc::ptr_eq(&entry.migration, &self.migration) {
                entry.users -= 1;
                if entry.users == 0 {
                    *slot = None;
                }
                return;
            }
        }
    }
}

/// One target's view of its migration: what it routes with and copies between.
pub(crate) struct Engine {
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

impl Engine {
    /// Assembles a target's engine.
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
    ) -> Self {
        // Zeros are written as write-zeroes where the destination takes them, unless the table
        // says otherwise; `skip_zeroes` on a destination that does not falls back to data.
        let skip_zeroes =
            options.skip_zeroes.unwrap_or(true) && destination.supports_write_zeroes();
        Self {
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

    /// Routes a bio by the tracker's decision; shared by `map` and the re-dispatch of deferred
    /// bios. Never sleeps under the lock.
    pub(crate) fn dispatch(self: &Arc<Self>, mut bio: Bio) -> MapResult {
        let migration = &*self.migration;
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
        // A write-back error of the origin that a flush of the target took is the guest's
        // next flush's to report (unless the migration has switched: the origin is then left).
        if kind == IoKind::Flush
            && migration.final_route.load(Ordering::Acquire) != FINAL_DEST
            && migration.owed_origin_flush_error.swap(false, Ordering::AcqRel)
        {
            bio.set_tag(0);
            return MapResult::Kill(bio);
        }
        // After the migration has ended the route never changes: no lock, no accounting.
        let device = match migration.final_route.load(Ordering::Acquire) {
            FINAL_ORIGIN => Some(&self.origin),
            FINAL_DEST => Some(&self.destination),
            _ => None,
        };
        if let Some(device) = device {
            bio.set_tag(0);
            bio.remap(device, sector);
            return MapResult::Remapped(bio);
        }
        let mut shared = migration.shared.lock();
        let Shared {
            tracker, intent, ..
        } = &mut *shared;
        let mut route = tracker.route(kind, sector, sectors);
        // The first mirrored write to a copied region waits until its intent bit is durable:
        // after a crash, the region is then copied again whichever half landed.
        let mut intent_counted = false;
        if let (Route::Both, IoKind::Write, Some(intent)) = (route, kind, intent.as_mut()) {
            let regions = tracker.regions_of(sector, sectors);
            match intent.admit(regions, |region| !tracker.is_pending(region)) {
                Admit::Go => intent_counted = true,
                Admit::Wait => {
                    route = Route::Defer;
                    migration.meta_event.signal();
                }
            }
        }
        // A flush that comes while the switch is under way goes to the origin alone. Every write
        // it covers (one that completed before it came) was routed before the switch began,
        // since writes are held from then on, so the switch's own flush of the destination,
        // after those writes drained, covers them there; the origin covers them if the switch
        // fails instead. On the destination it would only be one more flush the switch has to
        // wait for, and one that could take a write-back error (which a loop device reports to
        // one flush only) away from the switch's flush.
        if kind == IoKind::Flush && route == Route::Both && shared.tracker.is_switching() {
            route = Route::Origin;
        }
        match shared.tracker.state() {
            State::Switched => migration.final_route.store(FINAL_DEST, Ordering::Release),
            State::Failed(_) | State::Cancelled => {
                migration.final_route.store(FINAL_ORIGIN, Ordering::Release)
            }
            State::Copying | State::Synced => {}
        }
        // Counted under the lock, so that a round taken after this decision waits for the
        // write (see `engine::epoch`).
        let counted = kind == IoKind::Write
            && shared.tracker.is_active()
            && matches!(route, Route::Origin | Route::Both);
        // A mirrored FUA write's destination half flushes the destination on a device that
        // emulates FUA (a loop device): counted like a flush's, until that half completes.
        let fua_mirrored = kind == IoKind::Write && route == Route::Both && bio.is_fua();
        let mut tag = BioTag::write(
            counted.then(|| migration.epochs.enter()),
            intent_counted.then(|| migration.intent_epochs.enter()),
            fua_mirrored.then(|| migration.dest_flushes.enter()),
        );
        // A mirrored flush is counted too, under the lock, so that the switch, which holds the
        // flushes that come once it has begun (above), can wait for every one before it.
        // Its destination half is counted apart, until that half completes (`dest_done`).
        if kind == IoKind::Flush && route == Route::Both {
            migration.mirrored_flushes.fetch_add(1, Ordering::Relaxed);
            tag = BioTag::mirrored_flush(migration.dest_flushes.enter());
        }
        bio.set_tag(tag.raw());
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

    /// Ends the accounting of a bio routed by `dispatch`; called from `end_io` for every bio
    /// the target ends, remapped, mirrored or re-dispatched.
    pub(crate) fn write_done(&self, tag: u8) {
        let migration = &*self.migration;
        let tag = BioTag::from_raw(tag);
        if let Some(write) = tag.copy_write() {
            if migration.epochs.exit(write) {
                migration.drained_event.signal();
            }
        }
        if let Some(write) = tag.intent_write() {
            if migration.intent_epochs.exit(write) {
                migration.drained_event.signal();
            }
        }
        // A destination half that flushes was uncounted by `dest_done`.
        if tag.is_mirrored_flush() {
            // Release: a failure the flush recorded (`MirrorDone`) is seen by whoever sees the
            // count drop.
            if migration.mirrored_flushes.fetch_sub(1, Ordering::AcqRel) == 1 {
                migration.drained_event.signal();
            }
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

    /// Sends deferred bios on, now that what they waited for is over. Each is popped under the
    /// lock and routed again outside it.
    ///
    /// Only the bios on the list when this starts are taken (a bio deferred again goes to the
    /// back and waits for the next call), so this ends also while other regions are still being
    /// copied. Taking a bio that a concurrent call or `map` added does no harm: it is routed
    /// again like any other.
    pub(crate) fn release_deferred(self: &Arc<Self>) {
        let waiting = self.migration.shared.lock().deferred.len();
        for _ in 0..waiting {
            let Some(bio) = self.migration.shared.lock().deferred.pop() else {
                return;
            };
            match self.dispatch(bio) {
                MapResult::Remapped(bio) => bio.submit(),
                MapResult::Kill(bio) => bio.endio(Status::IOERR),
                MapResult::Submitted => {}
            }
        }
    }

    /// Fails the migration for `reason`: everything stays on the origin. The one place a
    /// migration fails; process context. The first failure logs and raises the `failed` event;
    /// later ones change nothing.
    pub(crate) fn fail(self: &Arc<Self>, reason: FailReason) {
        self.fail_locked(self.migration.meta.lock(), reason);
    }

    /// Fails the migration for `reason` under the phase lock, which the caller holds (`meta`),
    /// and only then releases it. A path that found the failure under the lock must not let go
    /// of it first: a switch waiting for the lock, past its own checks, would take it and
    /// switch, and the failure would then find the migration ended and do nothing.
    fn fail_locked(self: &Arc<Self>, mut meta: MetaGuard<'_>, reason: FailReason) {
        let failed = self.end_phase_locked(&mut meta, Phase::Failed, Some(reason), |tracker| {
            tracker.fail(reason)
        });
        drop(meta);
        if failed {
            pr_err!(
                "{}: Migration failed ({}); staying on the origin\n",
                self.handle.device_name(),
                reason.as_str()
            );
            self.handle.raise_event(c"failed");
        }
        self.release_deferred();
    }

    /// Ends an active migration on the origin (`phase` failed or cancelled) by `end`, under the
    /// phase lock: the phase is written to the metadata device first, so that after a crash
    /// the stale bitmaps are never trusted for writes that went to the origin alone. A phase
    /// that cannot be written is logged; the migration ends all the same (everything stays on
    /// the origin). Returns what `end` returned, or false for a migration that is not active.
    fn end_phase(
        &self,
        phase: Phase,
        reason: Option<FailReason>,
        end: impl FnOnce(&mut KernelTracker) -> bool,
    ) -> bool {
        self.end_phase_locked(&mut self.migration.meta.lock(), phase, reason, end)
    }

    /// [`Engine::end_phase`] for a caller that holds the phase lock (`meta`).
    fn end_phase_locked(
        &self,
        meta: &mut MetaGuard<'_>,
        phase: Phase,
        reason: Option<FailReason>,
        end: impl FnOnce(&mut KernelTracker) -> bool,
    ) -> bool {
        let migration = &*self.migration;
        if !migration.shared.lock().tracker.is_active() {
            return false;
        }
        if let (Some(store), Some(device)) = (meta.as_mut(), &self.metadata) {
            if let Err(e) = store.write_phase(device, phase, reason) {
                pr_err!(
                    "{}: {}: the {} phase is not recorded\n",
                    self.handle.device_name(),
                    e.message().to_str().unwrap_or(""),
                    phase.as_str()
                );
            }
        }
        end(&mut migration.shared.lock().tracker)
    }

    /// Turns a failed mirrored write into the failure of the migration.
    pub(crate) fn check_mirror_failure(self: &Arc<Self>) {
        if self.migration.dest_failed() {
            self.fail(FailReason::DestinationWrite);
        }
    }

    /// Cancels the migration (the `cancel` message): everything stays on the origin.
    pub(crate) fn cancel(self: &Arc<Self>) -> Result<(), MessageError> {
        let mut outcome = CancelOutcome::AlreadyEnded;
        self.end_phase(Phase::Cancelled, None, |tracker| {
            outcome = tracker.cancel();
            outcome == CancelOutcome::Cancelled
        });
        if outcome == CancelOutcome::AlreadyEnded {
            // `end_phase` does not ask an ended migration; a switched one says so.
            outcome = self.migration.shared.lock().tracker.cancel();
        }
        match outcome {
            CancelOutcome::Switched => return Err(MessageError::AlreadySwitched),
            CancelOutcome::AlreadyEnded => {}
            CancelOutcome::Cancelled => {
                pr_info!(
                    "{}: Migration cancelled; staying on the origin\n",
                    self.handle.device_name()
                );
                self.handle.raise_event(c"cancelled");
            }
        }
        self.release_deferred();
        Ok(())
    }

    /// Loads the migration's state from the metadata device, for a target that started the
    /// migration (`Membership::is_new`) before it goes live; formats a blank device. Refuses
    /// metadata that does not describe this migration.
    ///
    /// `replaces_live` says the table replaces a live one of the same devices and length
    /// (`Membership::replaces_live_pair`): its metadata in another region size is taken over
    /// at the hand-over.
    pub(crate) fn load_metadata(
        &self,
        format_id: u64,
        replaces_live: bool,
    ) -> Result<Loaded, MetadataError> {
        let Some(device) = &self.metadata else {
            return Ok(Loaded::New);
        };
        let migration = &*self.migration;
        let identity = crate::engine::metadata::Identity {
            target_sectors: self.geometry.target_sectors,
            region_sectors: self.geometry.region_sectors,
            origin_sectors: self.origin.sectors(),
            destination_sectors: self.destination.sectors(),
        };
        let mut meta = migration.meta.lock();
        let (store, loaded) = MetaStore::open(
            device,
            &self.origin,
            &self.destination,
            identity,
            format_id,
            replaces_live,
        )?;
        // The pages the recorded bitmap needs, allocated before the spinlock, every one: a
        // part of the bitmap restored as all pending without its page would be more pending in
        // memory than on the device, and a write to a region copied on the device would then go
        // to the origin alone, with no intent bit, to be lost by a crash before the next commit.
        let mut pages = KVec::new();
        if loaded == Loaded::Copying {
            let needed = bitmap::pages_needed(
                self.geometry.nr_regions,
                BITMAP_PAGE_WORDS,
                |word| store.pending_word(word),
            );
            for _ in 0..needed {
                let page = new_bitmap_page().map_err(|_| MetadataError::OutOfMemory)?;
                pages
                    .push(Some(page), GFP_KERNEL)
                    .map_err(|_| MetadataError::OutOfMemory)?;
            }
        }
        let mut shared = migration.shared.lock();
        let Shared {
            tracker, intent, ..
        } = &mut *shared;
        match loaded {
            // The hand-over sets the tracker and the device.
            Loaded::New | Loaded::StartedOver | Loaded::ForHandover => {}
            Loaded::Copying => {
                let mut page = || pages.iter_mut().find_map(Option::take);
                if !tracker.restore(|word| store.pending_word(word), &mut page) {
                    // Never: the pages were counted with the same rule, under the same mutex.
                    return Err(MetadataError::OutOfMemory);
                }
                if let Some(intent) = intent.as_mut() {
                    for word in 0..tracker.nr_words() {
                        intent.load(word, store.intent_word(word));
                    }
                }
            }
            Loaded::Switched => {
                tracker.after_reload(State::Switched);
                migration.final_route.store(FINAL_DEST, Ordering::Release);
            }
        }
        drop(shared);
        *meta = Some(store);
        Ok(loaded)
    }

    /// Records on the metadata device what a table reload's hand-over did to the migration
    /// (`Membership::go_live`; `None` when there was no table before), before the target goes
    /// live.
    pub(crate) fn persist_handover(&self, handover: Option<Handover>) -> Result<(), MetadataError> {
        let Some(device) = &self.metadata else {
            return Ok(());
        };
        let mut meta = self.migration.meta.lock();
        let Some(store) = meta.as_mut() else {
            return Ok(());
        };
        store.reload_for_handover(device)?;
        match handover {
            // Metadata of another region size was loaded for a hand-over that did not happen
            // (the table it replaced is gone): it describes nothing this table could go on from.
            None | Some(Handover::Continued) if store.handover_due() => {
                Err(MetadataError::RegionSizeMismatch)
            }
            None | Some(Handover::Continued) => Ok(()),
            Some(Handover::StartedOver) => store.reset(device),
            Some(Handover::Switched) => {
                let sample = self
                    .flush_origin()
                    .ok()
                    .and_then(|()| store.sample_origin(&self.origin).ok());
                store.set_origin_sample(sample);
                store.write_phase(device, Phase::Switched, None)
            }
        }?;
        // Under the phase lock, which the write was made under: no other hand-over between.
        self.migration.shared.lock().unrecorded = None;
        Ok(())
    }

    /// Makes the wanted intent bits durable and lets the writes that waited for them go. The
    /// metadata thread's first job; a write error fails the migration.
    pub(crate) fn meta_send(self: &Arc<Self>) {
        let Some(device) = &self.metadata else { return };
        let migration = &*self.migration;
        let mut meta = migration.meta.lock();
        let Some(store) = meta.as_mut() else { return };
        {
            let mut shared = migration.shared.lock();
            let Shared {
                tracker, intent, ..
            } = &mut *shared;
            let Some(intent) = intent.as_mut() else { return };
            if !tracker.is_active() {
                // Ended: its waiting writes are routed again (by the end's own release) to one
                // device, with no intent.
                intent.drop_wanted();
                return;
            }
            if !intent.start_send() {
                return;
            }
            for word in 0..tracker.nr_words() {
                store.next[word] = intent.on_disk_word(word);
            }
        }
        if store.write_bitmap(device, BitmapKind::Intent).is_err() {
            // The waiting writes go to the origin alone once the migration has failed.
            return self.fail_locked(meta, FailReason::MetadataWrite);
        }
        drop(meta);
        if let Some(intent) = migration.shared.lock().intent.as_mut() {
            intent.sent();
        }
        self.release_deferred();
    }

    /// Commits progress to the metadata device: the regions copied so far (after a destination
    /// flush that covers their copies), and the clearing of intent bits whose writes have all
    /// landed (after a drain of the mirrored writes admitted before, and the same flush). With
    /// `quiesced` (no write in flight or waiting: postsuspend), every intent bit is cleared.
    ///
    /// The phase lock is held only to take the snapshot and to write the bitmaps, never across
    /// the drain and the flushes, which can take as long as the destination likes: a cancel, a
    /// failure or a switch decides meanwhile, and the commit then writes nothing (the phase's
    /// generation changed) or fails the migration (a destination failure).
    pub(crate) fn meta_commit(self: &Arc<Self>, quiesced: bool) {
        let Some(device) = &self.metadata else { return };
        let migration = &*self.migration;
        // One commit at a time; a cancel, a failure or a switch never waits for this lock.
        let mut copied = migration.commit_copied.lock();
        let (epoch, writes_something, generation) = {
            let meta = migration.meta.lock();
            let Some(store) = meta.as_ref() else { return };
            let mut shared = migration.shared.lock();
            let Shared {
                tracker, intent, ..
            } = &mut *shared;
            let Some(intent) = intent.as_mut() else { return };
            if !tracker.is_active() {
                return;
            }
            let mut differs = false;
            for (word, slot) in copied.iter_mut().enumerate().take(tracker.nr_words()) {
                *slot = tracker.copied_word(word);
                differs |= *slot != store.disk_copied_word(word);
            }
            if quiesced {
                intent.start_clear_all();
            } else {
                intent.start_clear();
            }
            (
                migration.intent_epochs.flip(),
                differs || intent.is_clearing(),
                store.generation(),
            )
        };
        // Also when there is nothing to write: a flip must be drained before the next one.
        self.drain_epochs(&migration.intent_epochs, epoch);
        if !writes_something {
            return;
        }
        // A phase decided meanwhile (a switch under way, a cancel, a failure) supersedes this
        // commit, and the devices are no longer its to flush.
        {
            let shared = migration.shared.lock();
            if !shared.tracker.is_active() || shared.tracker.is_switching() {
                return;
            }
        }
        // The origin too: what the copies read and the mirrored writes put there must not be
        // lost to its cache in a crash while the destination keeps it, or a clean region would
        // read differently after the switch. A failure is owed to the guest's next flush.
        if self.flush_origin().is_err() {
            pr_warn!(
                "{}: Flushing the origin failed; progress not committed\n",
                self.handle.device_name()
            );
            return;
        }
        // A failure of this flush is recorded by it, and found below.
        if self.flush_destination_for_commit().is_none() {
            return;
        }
        // Every destination flush that began before this one ended has recorded its failure:
        // a write-back error that one of them took instead of this flush is seen below.
        self.drain_dest_flushes();
        let mut meta = migration.meta.lock();
        // A mirrored write or a flush that missed the destination: its regions must stay
        // dirty, and the migration fails.
        if let Some(reason) = migration.dest_failure() {
            return self.fail_locked(meta, reason);
        }
        let Some(store) = meta.as_mut() else { return };
        if store.generation() != generation || !migration.shared.lock().tracker.is_active() {
            // A phase was written meanwhile (a switch, a failure, a cancel): it supersedes
            // this snapshot.
            return;
        }
        for (next, word) in store.next.iter_mut().zip(copied.iter()) {
            *next = *word;
        }
        let mut result = store.write_bitmap(device, BitmapKind::Copied);
        if result.is_ok() {
            let mut shared = migration.shared.lock();
            let Shared {
                tracker, intent, ..
            } = &mut *shared;
            if let Some(intent) = intent.as_mut() {
                intent.cleared();
                for word in 0..tracker.nr_words() {
                    store.next[word] = intent.on_disk_word(word);
                }
            }
            drop(shared);
            result = store.write_bitmap(device, BitmapKind::Intent);
        }
        if result.is_err() {
            self.fail_locked(meta, FailReason::MetadataWrite);
        }
    }

    /// Sleeps up to `ms` milliseconds, or until a write waits for its intent, or the thread is
    /// asked to stop or park.
    pub(crate) fn meta_wait(&self, ms: u32) {
        let migration = &*self.migration;
        let shared = migration.shared.lock();
        if shared.tracker.is_active() && shared.intent.as_ref().is_some_and(|i| i.has_wanted()) {
            return;
        }
        // Read under the lock that `dispatch` signals under: a write that waits from now on
        // ends the sleep.
        let seen = migration.meta_event.count();
        drop(shared);
        migration.meta_event.wait(seen, ms.max(1), true);
    }

    /// Waits until every write counted in `epoch` has completed.
    pub(crate) fn drain(&self, epoch: Epoch) {
        self.drain_epochs(&self.migration.epochs, epoch);
    }

    /// Waits until every write counted in `epoch` of `epochs` has completed.
    fn drain_epochs(&self, epochs: &WriteEpochs, epoch: Epoch) {
        let migration = &*self.migration;
        epochs.start_drain(epoch);
        loop {
            // The count is read before the check: the write that drains the epoch after the
            // check signals after it, and the wait returns at once.
            let seen = migration.drained_event.count();
            if epochs.is_drained(epoch) {
                break;
            }
            // Not stoppable: a stop or park request does not end a drain, the writes still
            // have to land.
            migration.drained_event.wait(seen, 0, false);
        }
        epochs.end_drain();
    }

    /// Flushes the origin for the target. A failure is owed to the guest's next flush of the
    /// origin (`Migration::owed_origin_flush_error`): this flush may have taken a write-back
    /// error of the guest's data.
    fn flush_origin(&self) -> Result {
        let result = flush(&self.origin);
        if result.is_err() {
            self.migration
                .owed_origin_flush_error
                .store(true, Ordering::Release);
        }
        result
    }

    /// Flushes the destination for the target (the switch, the flush once in sync), counted
    /// in `dest_flushes` until its failure, if any, is recorded.
    pub(crate) fn flush_destination(&self) -> Result {
        let migration = &*self.migration;
        // Entered under the lock that a drain's flip is made under (`engine::epoch`).
        let counted = migration.shared.lock().flush_enter(&migration.dest_flushes);
        self.flush_destination_counted(counted)
    }

    /// [`Engine::flush_destination`] for a commit: only while the migration is active and not
    /// switching, decided under the lock the flush is counted under. A switch that began
    /// before waits for no commit flush, and needs none; one that begins after drains this
    /// one and sees its failure. After the end, the destination is not this commit's to flush
    /// (a flush could take a write-back error of the guest's writes there after a switch).
    /// Returns `None` when it does not flush.
    fn flush_destination_for_commit(&self) -> Option<Result> {
        let migration = &*self.migration;
        let counted = {
            let mut shared = migration.shared.lock();
            if !shared.tracker.is_active() || shared.tracker.is_switching() {
                return None;
            }
            shared.flush_enter(&migration.dest_flushes)
        };
        Some(self.flush_destination_counted(counted))
    }

    /// Flushes the destination, counted as `counted` in `dest_flushes`.
    fn flush_destination_counted(&self, counted: Counted) -> Result {
        let migration = &*self.migration;
        let result = flush(&self.destination);
        if result.is_err() {
            migration.dest_flush_failed.store(true, Ordering::Release);
            migration.copier_event.signal();
        }
        migration.dest_flushes_exit(counted);
        result
    }

    /// Waits until every destination flush that began before this call has completed and
    /// recorded its failure (see `Migration::dest_flushes`). Unbounded: never under the phase
    /// lock.
    fn drain_dest_flushes(&self) {
        let migration = &*self.migration;
        let _one_drain = migration.dest_flush_drain.lock();
        let epoch = migration.shared.lock().flush_flip(&migration.dest_flushes);
        self.drain_epochs(&migration.dest_flushes, epoch);
    }

    /// Waits until no mirrored flush is in flight. Only the switch calls this, once it has
    /// begun: flushes are not counted from then on, so the wait ends.
    fn drain_flushes(&self) {
        let migration = &*self.migration;
        loop {
            // As in `drain_epochs`: the count is read before the check.
            let seen = migration.drained_event.count();
            if migration.mirrored_flushes.load(Ordering::Acquire) == 0 {
                break;
            }
            migration.drained_event.wait(seen, 0, false);
        }
    }

    /// Switches all I/O to the destination, quiesced: new writes wait while every write in
    /// flight (mirrored ones included) and every mirrored flush completes, the destination is
    /// flushed, and no write or flush is known to have missed it; only then does anything go to
    /// the destination alone. A failure found on the way fails the migration instead.
    pub(crate) fn switch(self: &Arc<Self>) {
        let migration = &*self.migration;
        if !migration.shared.lock().tracker.begin_switch() {
            return;
        }
        loop {
            for epoch in Epoch::BOTH {
                self.drain(epoch);
            }
            self.drain_flushes();
            // What identifies the origin from now on, when nothing writes it any more (writes
            // are held, the copy is over); flushed first, so that the sample is what a crash
            // leaves there. The flush is made before the phase lock; the sample's few reads
            // need the store's buffer, and so the lock. A sample that cannot be taken is not
            // recorded (a load then checks none); a failed flush is owed to the guest's next
            // flush of the origin, in case the switch fails.
            let sample = match &self.metadata {
                Some(_) => self.flush_origin().ok().and_then(|()| {
                    let mut meta = migration.meta.lock();
                    meta.as_mut().and_then(|store| store.sample_origin(&self.origin).ok())
                }),
                None => None,
            };
            // A failure of this flush is recorded by it, and found below.
            let _ = self.flush_destination();
            // Every mirrored write and flush has ended by now, each after recording its
            // failure, and so has every other flush of the destination that began before this
            // one ended (one of them may have taken a write-back error this flush did not see).
            self.drain_dest_flushes();
            // The phase lock: `switched` is durable before anything goes to the destination
            // alone, and no failure or cancel slips in between.
            let mut meta = migration.meta.lock();
            // The decision, under the phase lock, before the switch takes effect: a failure
            // recorded by now wins. Nothing records one later: writes are held, flushes go to
            // the origin alone, the copy is this thread's, and a commit that had not flushed the
            // destination when this switch began does not (`flush_destination_for_commit`).
            if let Some(reason) = migration.dest_failure() {
                return self.fail_locked(meta, reason);
            }
            if let (Some(store), Some(device)) = (meta.as_mut(), &self.metadata) {
                if migration.shared.lock().tracker.is_switching() {
                    store.set_origin_sample(sample);
                    if store.write_phase(device, Phase::Switched, None).is_err() {
                        if !store.first_copy_written() {
                            return self.fail_locked(meta, FailReason::MetadataWrite);
                        }
                        // Copy 0 says switched, with the higher generation: a load would act on
                        // it, so the target must too (the destination is complete: drained,
                        // flushed). Failing to the origin would strand the writes from now on.
                        pr_err!(
                            "{}: Only one superblock copy records the switch; switching\n",
                            self.handle.device_name()
                        );
                    }
                }
            }
            let mut shared = migration.shared.lock();
            let switched = shared.tracker.switch(&migration.epochs);
            drop(meta);
            if switched {
                migration.final_route.store(FINAL_DEST, Ordering::Release);
                drop(shared);
                pr_info!(
                    "{}: Switched to the destination\n",
                    self.handle.device_name()
                );
                self.handle.raise_event(c"switched");
                return self.release_deferred();
            }
            if !shared.tracker.is_switching() {
                // Cancelled or failed meanwhile: the deferred writes go to the origin.
                drop(shared);
                return self.release_deferred();
            }
            // Writes are deferred while switching, so none can be counted now; this only
            // guards the tracker's refusal against a lost drain.
        }
    }
}

impl Engine {
    /// Records that a mirrored bio failed on the destination: the sticky flag every decision to
    /// switch or commit reads under the phase lock. Any context.
    fn record_dest_failure(&self) {
        self.migration.mirror_errors.fetch_add(1, Ordering::Relaxed);
        self.migration.dest_failed.store(true, Ordering::Release);
        // The copier carries the failure out.
        self.migration.copier_event.signal();
    }
}

impl MirrorDone for Engine {
    /// Records a flush that failed on the destination as soon as its destination half
    /// completes, whatever its origin half does or will do: the destination may have lost
    /// writes the guest was told succeeded, and a switch or a commit must not be decided while
    /// the origin half (a slow device) keeps the bio from ending. A FUA write's destination
    /// half is recorded the same way: it may carry the flush that took a write-back error.
    fn dest_done(&self, kind: BioKind, dest: Status, tag: u8) {
        let flush_half = BioTag::from_raw(tag).dest_flush_half();
        if (kind == BioKind::Flush || flush_half.is_some()) && !dest.is_ok() {
            self.record_dest_failure();
        }
        // Uncounted after the failure is recorded: whoever drains the count sees it.
        if let Some(flush) = flush_half {
            self.migration.dest_flushes_exit(flush);
        }
    }

    /// Records a failed destination write, before the bio ends. The write's epoch accounting is
    /// left to `end_io`, which the core calls for every bio of the target when it ends; every
    /// decision to switch or commit first drains the writes it depends on, so it sees this.
    ///
    /// Only a write the guest is told succeeded (the origin's half did) and the destination
    /// missed fails the migration. A write the origin failed ends with that error: the guest
    /// knows, and the range's contents are undefined after it whatever the destination did
    /// (a write-zeroes both loop devices refuse, for one, as mkfs sends). Flushes were recorded
    /// by `dest_done`.
    fn mirror_done(&self, kind: BioKind, origin: Status, dest: Status) {
        if kind != BioKind::Flush && origin.is_ok() && !dest.is_ok() {
            self.record_dest_failure();
        }
    }
}

// SPDX-License-Identifier: GPL-2.0

//! Bios handed to a target's `map`, and the target's own bios.

use super::bindings;
use super::device::Device;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering};
use kernel::prelude::*;

/// What a bio does (`bio_op`), as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BioKind {
    /// A read.
    Read,
    /// A write, discard, write-zeroes or secure erase: anything that changes data.
    Write,
    /// An empty flush.
    Flush,
}

/// The [`BioKind`] of a `migrate_bio_kind` value.
fn bio_kind(kind: bindings::migrate_bio_kind) -> BioKind {
    match kind {
        bindings::migrate_bio_kind_MIGRATE_BIO_WRITE => BioKind::Write,
        bindings::migrate_bio_kind_MIGRATE_BIO_FLUSH => BioKind::Flush,
        _ => BioKind::Read,
    }
}

/// A block layer status (`blk_status_t`): zero is success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u8);

impl Status {
    /// Success (`BLK_STS_OK`).
    pub const OK: Status = Status(bindings::MIGRATE_BLK_STS_OK);
    /// An I/O error (`BLK_STS_IOERR`).
    pub const IOERR: Status = Status(bindings::MIGRATE_BLK_STS_IOERR);

    /// Whether this is success.
    pub fn is_ok(self) -> bool {
        self == Self::OK
    }
}

/// A bio the device-mapper core handed to the target's `map`.
///
/// A `Bio` is either given back to the core from `map` (in [`super::target::MapResult`]), which
/// then submits or fails it, or kept by the target, which must then end it with [`Bio::endio`] or
/// send it on with [`Bio::submit`], from any context and at any later time before the target is
/// destroyed. Dropping a kept bio ends it with an I/O error, so no bio is ever lost.
///
/// # Invariants
///
/// `ptr` points to a bio that belongs to the holder of this value: nothing else submits or ends
/// it while the `Bio` exists. Its per-bio data is a [`BioData`].
pub struct Bio {
    ptr: NonNull<bindings::bio>,
}

// SAFETY: A bio may be submitted or ended from any thread; the holder is the only user.
unsafe impl Send for Bio {}

/// The per-bio data the binding layer keeps for every bio of a target (`per_io_data_size`).
///
/// The core hands this memory over uninitialised; the `map` trampoline writes a fresh value
/// ([`Bio::from_map`]) before anything reads it.
#[repr(C)]
#[derive(Default)]
pub struct BioData {
    /// Clones still in flight for a mirrored bio.
    remaining: AtomicU32,
    /// The origin clone's status.
    origin_status: AtomicU8,
    /// The destination clone's status.
    dest_status: AtomicU8,
    /// A value the target attaches to the bio in `map` and reads back in `end_io`.
    tag: AtomicU8,
    /// A time the target attaches to the bio in `map` and reads back in `end_io`.
    start_ns: AtomicU64,
    /// The target whose `map` received the bio: the only one whose devices the bio may go to,
    /// and the one a mirrored bio's halves are told to. Written once, in `map`.
    target: AtomicPtr<bindings::dm_target>,
    /// Tells `target` how a mirrored bio's halves went; set by the `map` trampoline, the one
    /// place that knows the target's type.
    notify: Option<MirrorNotify>,
}

/// What the target of a mirrored bio is told, by its [`MirrorNotify`].
pub(super) enum MirrorEvent {
    /// The destination's half completed: [`MirrorDone::dest_done`].
    Dest {
        kind: BioKind,
        dest: Status,
        tag: u8,
    },
    /// Both halves completed: [`MirrorDone::mirror_done`].
    Both {
        kind: BioKind,
        origin: Status,
        dest: Status,
    },
}

/// Passes a [`MirrorEvent`] to the [`MirrorDone`] of a target.
///
/// # Safety
///
/// The first argument is a constructed target of the type the function was made for, whose
/// destructor has not run.
pub(super) type MirrorNotify = unsafe fn(*mut bindings::dm_target, MirrorEvent);

impl Bio {
    /// Wraps a bio of a `map` call.
    ///
    /// # Safety
    ///
    /// `ptr` must be the bio of a `map` callback of a target whose per-bio data size is
    /// `size_of::<BioData>()`, handed over to this value.
    pub(super) unsafe fn from_raw(ptr: NonNull<bindings::bio>) -> Self {
        // INVARIANT: The caller hands the bio over.
        Self { ptr }
    }

    /// Wraps the bio of a `map` call of `target`, after giving it fresh per-bio data.
    ///
    /// # Safety
    ///
    /// As for [`Bio::from_raw`]; the per-bio data is not in use yet (this is the bio's `map`),
    /// `target` is the target of the call, and `notify` may be called with it until the bio ends.
    pub(super) unsafe fn from_map(
        ptr: NonNull<bindings::bio>,
        target: NonNull<bindings::dm_target>,
        notify: MirrorNotify,
    ) -> Self {
        let data = BioData {
            target: AtomicPtr::new(target.as_ptr()),
            notify: Some(notify),
            ..BioData::default()
        };
        // SAFETY: The core allocated `per_io_data_size` bytes, set to `size_of::<BioData>()`
        // and suitably aligned, for this bio, and nothing reads them before this write.
        unsafe {
            bindings::dm_per_bio_data(ptr.as_ptr(), core::mem::size_of::<BioData>())
                .cast::<BioData>()
                .write(data)
        };
        // SAFETY: Forwarded from the caller.
        unsafe { Self::from_raw(ptr) }
    }

    /// Gives the bio back, for the core to submit or end.
    pub(super) fn into_raw(self) -> *mut bindings::bio {
        let ptr = self.ptr.as_ptr();
        core::mem::forget(self);
        ptr
    }

    pub(super) fn raw(&self) -> *mut bindings::bio {
        self.ptr.as_ptr()
    }

    /// The per-bio data.
    pub(super) fn data(&self) -> &BioData {
        // SAFETY: The core allocates `per_io_data_size` bytes, set to `size_of::<BioData>()`, for
        // every bio of the target; the memory lives as long as the bio, and `map` initialised it
        // (`from_map`) before any `Bio` of it could be read.
        unsafe {
            &*bindings::dm_per_bio_data(self.raw(), core::mem::size_of::<BioData>())
                .cast::<BioData>()
        }
    }

    /// The first sector, `bio->bi_iter.bi_sector`.
    pub fn sector(&self) -> u64 {
        // SAFETY: `ptr` is a valid bio by the type invariant.
        unsafe { bindings::migrate_bio_sector(self.raw()) }
    }

    /// The length in sectors; zero for an empty flush.
    pub fn sectors(&self) -> u32 {
        // SAFETY: `ptr` is a valid bio by the type invariant.
        unsafe { bindings::migrate_bio_sectors(self.raw()) }
    }

    /// What the bio does.
    pub fn kind(&self) -> BioKind {
        // SAFETY: `ptr` is a valid bio by the type invariant.
        bio_kind(unsafe { bindings::migrate_bio_kind(self.raw()) })
    }

    /// Whether the bio is a plain write with data: not a flush, discard, write-zeroes or
    /// secure erase.
    pub fn is_plain_write(&self) -> bool {
        // SAFETY: `ptr` is a valid bio by the type invariant.
        unsafe { bindings::migrate_bio_is_plain_write(self.raw()) }
    }

    /// Whether the bio is a write with forced unit access: on a device without FUA the block
    /// layer follows it with a flush of its own.
    pub fn is_fua(&self) -> bool {
        // SAFETY: `ptr` is a valid bio by the type invariant.
        unsafe { bindings::migrate_bio_is_fua(self.raw()) }
    }

    /// The value attached with [`Bio::set_tag`].
    pub fn tag(&self) -> u8 {
        self.data().tag.load(Ordering::Relaxed)
    }

    /// Attaches a value to the bio, read back in `end_io`.
    pub fn set_tag(&self, tag: u8) {
        self.data().tag.store(tag, Ordering::Relaxed);
    }

    /// The time attached with [`Bio::set_start_ns`], 0 if none.
    pub fn start_ns(&self) -> u64 {
        self.data().start_ns.load(Ordering::Relaxed)
    }

    /// Attaches a time to the bio, read back in `end_io`.
    pub fn set_start_ns(&self, ns: u64) {
        self.data().start_ns.store(ns, Ordering::Relaxed);
    }

    /// Whether `device` belongs to the target whose `map` received the bio: the devices a bio
    /// may go to. Such a device stays open until the target is destroyed, which the core does
    /// only once all of the target's bios have ended, so it outlives the bio's I/O.
    pub(super) fn may_use(&self, device: &Device) -> bool {
        core::ptr::eq(self.data().target.load(Ordering::Relaxed), device.target())
    }

    /// Points the bio at `device`, starting at `sector` of it; an empty flush keeps its sector.
    /// Refused (`EXDEV`) for a device of another target, which could close before the bio ends.
    pub fn remap(&mut self, device: &Device, sector: u64) -> Result {
        if !self.may_use(device) {
            pr_err!("bio remapped to a device of another target; failing it\n");
            return Err(EXDEV);
        }
        let empty = self.sectors() == 0;
        // SAFETY: `ptr` is a bio we may change (type invariant); `device` is one of the bio's
        // target's (`may_use`), open until the target is destroyed, which the core does only
        // once all of its bios have ended.
        unsafe {
            bindings::migrate_bio_set_dev(self.raw(), device.bdev());
            if !empty {
                bindings::migrate_bio_set_sector(self.raw(), sector);
            }
        }
        Ok(())
    }

    /// Submits a kept bio, after [`Bio::remap`]; it completes through the target's `end_io`.
    pub fn submit(self) {
        // SAFETY: The bio is ours to submit (type invariant) and is handed to the block layer.
        unsafe { bindings::migrate_submit_bio_noacct(self.into_raw()) };
    }

    /// Ends a kept bio with `status`.
    pub fn endio(self, status: Status) {
        let bio = self.into_raw();
        // SAFETY: The bio is ours to end (type invariant); it is not used after this.
        unsafe {
            bindings::migrate_bio_set_status(bio, status.0);
            bindings::bio_endio(bio);
        }
    }

    /// Sends the bio to both devices at once, each at its own sector, and ends it when both
    /// clones have completed, with the origin's status: a destination error is never seen by the
    /// bio's issuer. The target's [`MirrorDone::dest_done`] learns the destination's status as
    /// soon as its clone completes, and before the bio ends its [`MirrorDone::mirror_done`]
    /// learns both statuses. The target is told, not a value passed here, because only the
    /// target is sure to outlive the bio: the core destroys it only after all of its bios.
    ///
    /// The clones come from `bios`, whose mempool makes this wait rather than fail (and which,
    /// dropped, waits for them); a clone that cannot be made all the same (its integrity
    /// payload) fails its half with an I/O error. A device of another target fails the bio.
    pub fn mirror(self, origin: (&Device, u64), dest: (&Device, u64), bios: &BioSet) {
        let refused = !self.may_use(origin.0) || !self.may_use(dest.0);
        let data = self.data();
        data.remaining.store(2, Ordering::Relaxed);
        data.origin_status.store(Status::OK.0, Ordering::Relaxed);
        data.dest_status.store(Status::OK.0, Ordering::Relaxed);
        let empty = self.sectors() == 0;
        let parent = self.into_raw();
        if refused {
            pr_err!("bio mirrored to a device of another target; failing it\n");
            // Both halves fail as if their devices had failed them: the target hears of the
            // bio as of any mirrored one (what it counted at `map` is uncounted), and it ends.
            for is_dest in [false, true] {
                // SAFETY: `parent` was mirrored (the per-bio data set just above) and is ours;
                // each half is done with once, and the parent ends after the second.
                unsafe { half_done(parent, is_dest, Status::IOERR.0) };
            }
            return;
        }
        let clones: [(&Device, u64, unsafe extern "C" fn(*mut bindings::bio), bool); 2] = [
            (origin.0, origin.1, origin_endio, false),
            (dest.0, dest.1, dest_endio, true),
        ];
        for (device, sector, end_io, is_dest) in clones {
            // SAFETY: `parent` is a valid bio we own until both clones complete; a clone shares
            // its pages, which the parent keeps until it ends in `clone_done`. The device is one
            // of the bio's target's (checked above), open until the target is destroyed, after
            // all of its bios; `bios` waits for its clones when dropped. The stores above happen
            // before the submissions, which order them before the completions. A half that
            // fails here is done with at once; the parent ends only after both halves.
            unsafe {
                let clone = bindings::migrate_clone_bio(
                    parent,
                    device.bdev(),
                    if empty { 0 } else { sector },
                    bios.raw(),
                    Some(end_io),
                    parent.cast(),
                );
                if clone.is_null() {
                    // The clone's integrity payload could not be allocated (the bio itself
                    // comes from the mempool, which waits): this half fails as if its device
                    // had failed it, and is done with.
                    half_done(parent, is_dest, Status::IOERR.0);
                } else {
                    bindings::migrate_submit_bio_noacct(clone);
                }
            }
        }
    }
}

impl Drop for Bio {
    fn drop(&mut self) {
        pr_warn!("bio dropped without completion; failing it\n");
        // SAFETY: The bio is ours to end (type invariant) and `self` is not used again.
        unsafe {
            bindings::migrate_bio_set_status(self.raw(), Status::IOERR.0);
            bindings::bio_endio(self.raw());
        }
    }
}

/// What learns how a mirrored bio went: its destination half as soon as that completes, and
/// both halves just before the bio ends.
///
/// Both methods are called in the completion's context (possibly interrupt context: no
/// sleeping, no sleeping locks), on the [`super::target::Target::Mirror`] of the bio's target.
pub trait MirrorDone: Send + Sync {
    /// Called once per mirrored bio of `kind` when its destination clone completes, with that
    /// clone's status and the bio's tag ([`Bio::set_tag`]), before the bio can end and whether
    /// or not the origin's clone has completed yet.
    fn dest_done(&self, kind: BioKind, dest: Status, tag: u8);

    /// Called once per mirrored bio of `kind`, when its last clone has completed, with both
    /// statuses, before the bio ends.
    fn mirror_done(&self, kind: BioKind, origin: Status, dest: Status);
}

/// Called by the block layer when the origin clone of a mirrored bio completes.
///
/// # Safety
///
/// `clone` is a clone made by [`Bio::mirror`].
unsafe extern "C" fn origin_endio(clone: *mut bindings::bio) {
    // SAFETY: Forwarded from the caller.
    unsafe { clone_done(clone, false) };
}

/// Called by the block layer when the destination clone of a mirrored bio completes.
///
/// # Safety
///
/// As for [`origin_endio`].
unsafe extern "C" fn dest_endio(clone: *mut bindings::bio) {
    // SAFETY: Forwarded from the caller.
    unsafe { clone_done(clone, true) };
}

/// Records a clone's status and ends the parent after the last clone.
///
/// # Safety
///
/// `clone` is a clone made by [`Bio::mirror`], completing once.
unsafe fn clone_done(clone: *mut bindings::bio, is_dest: bool) {
    // SAFETY: The clone is valid until put; its `bi_private` is the parent, which lives until
    // its last clone completes, at the earliest now. Its per-bio data is a `BioData`.
    let (parent, status) = unsafe {
        let parent = bindings::migrate_bio_private(clone).cast::<bindings::bio>();
        let status = bindings::migrate_bio_status(clone);
        bindings::migrate_bio_put(clone);
        (parent, status)
    };
    // SAFETY: Forwarded from the caller: `parent` is the mirrored bio, this half's once.
    unsafe { half_done(parent, is_dest, status) };
}

/// Records the status of one half of a mirrored bio and ends the bio after the last half.
///
/// # Safety
///
/// `parent` is a bio mirrored by [`Bio::mirror`], and this is its origin (`is_dest` false) or
/// destination half's only call.
unsafe fn half_done(parent: *mut bindings::bio, is_dest: bool, status: u8) {
    // SAFETY: As above.
    let data = unsafe {
        &*bindings::dm_per_bio_data(parent, core::mem::size_of::<BioData>()).cast::<BioData>()
    };
    // SAFETY: The parent is valid (see above).
    let kind = bio_kind(unsafe { bindings::migrate_bio_kind(parent) });
    let target = data.target.load(Ordering::Relaxed);
    let tell = |event| {
        // `map` set it (`from_map`), before the bio could be mirrored.
        if let Some(notify) = data.notify {
            // SAFETY: `notify` was made by the `map` trampoline of `target`'s type; the
            // target lives until its destructor, which the core calls only after all of its
            // bios have ended, and this one has not yet.
            unsafe { notify(target, event) };
        }
    };
    if is_dest {
        data.dest_status.store(status, Ordering::Relaxed);
        // The destination's status is told at once, not when the last clone completes: the
        // origin's half of the same bio may take much longer, and a decision made meanwhile
        // (the switch, a metadata commit) must already see a failure here.
        let event = MirrorEvent::Dest {
            kind,
            dest: Status(status),
            tag: data.tag.load(Ordering::Relaxed),
        };
        tell(event);
    } else {
        data.origin_status.store(status, Ordering::Relaxed);
    }
    // The decrement orders the status store before the last clone's loads below.
    if data.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
        return;
    }
    let origin = Status(data.origin_status.load(Ordering::Relaxed));
    let dest = Status(data.dest_status.load(Ordering::Relaxed));
    tell(MirrorEvent::Both { kind, origin, dest });
    // SAFETY: Every clone has completed; the parent is ours to end, once.
    unsafe {
        bindings::migrate_bio_set_status(parent, origin.0);
        bindings::bio_endio(parent);
    }
}

/// A pool of bios for clones and copy I/O (`struct bio_set`).
///
/// # Invariants
///
/// `ptr` is a bio set from `migrate_bioset_create`, destroyed on drop.
pub struct BioSet {
    ptr: NonNull<bindings::bio_set>,
}

// SAFETY: A bio set is used through its mempool, which is thread-safe.
unsafe impl Send for BioSet {}
// SAFETY: As for `Send`.
unsafe impl Sync for BioSet {}

impl BioSet {
    /// Creates a bio set whose mempool keeps `pool_size` bios in reserve.
    pub fn new(pool_size: u32) -> Result<Self> {
        // SAFETY: No preconditions.
        let ptr = unsafe { bindings::migrate_bioset_create(pool_size) };
        // INVARIANT: Created just above.
        Ok(Self {
            ptr: NonNull::new(ptr).ok_or(ENOMEM)?,
        })
    }

    pub(super) fn raw(&self) -> *mut bindings::bio_set {
        self.ptr.as_ptr()
    }
}

impl Drop for BioSet {
    /// Waits until every bio taken from the set has been put, then frees it: the bios borrow
    /// the set only for the call that submits them ([`Bio::mirror`], [`super::copy::IoBatch`]),
    /// so a set dropped with I/O in flight must not go before it. Sleeps.
    fn drop(&mut self) {
        // SAFETY: Created by `migrate_bioset_create` (type invariant), and not used after this;
        // the destroy waits for the bios still out of it.
        unsafe { bindings::migrate_bioset_destroy(self.ptr.as_ptr()) };
    }
}

/// A FIFO of bios the target holds back (`struct bio_list`, linked through the bios).
///
/// # Invariants
///
/// `ptr` comes from `migrate_bio_list_create` and is freed on drop; every bio on it is a bio
/// handed to the target (as a [`Bio`]) and owned by the list.
pub struct BioList {
    ptr: NonNull<bindings::bio_list>,
    /// How many bios are on the list.
    len: usize,
}

// SAFETY: The list and the bios on it may move between threads; access needs `&mut self`.
unsafe impl Send for BioList {}

impl BioList {
    /// Allocates an empty list.
    pub fn new() -> Result<Self> {
        // SAFETY: No preconditions.
        let ptr = unsafe { bindings::migrate_bio_list_create() };
        // INVARIANT: Created just above, empty.
        Ok(Self {
            ptr: NonNull::new(ptr).ok_or(ENOMEM)?,
            len: 0,
        })
    }

    /// Appends a bio; no allocation.
    pub fn push(&mut self, bio: Bio) {
        // SAFETY: The list is valid; the bio is handed over to it (type invariant).
        unsafe { bindings::migrate_bio_list_add(self.ptr.as_ptr(), bio.into_raw()) };
        self.len += 1;
    }

    /// How many bios are on the list.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes the oldest bio.
    pub fn pop(&mut self) -> Option<Bio> {
        // SAFETY: The list is valid.
        let bio = NonNull::new(unsafe { bindings::migrate_bio_list_pop(self.ptr.as_ptr()) })?;
        self.len -= 1;
        // SAFETY: Every bio on the list was handed to the target and is now handed back.
        Some(unsafe { Bio::from_raw(bio) })
    }
}

impl Drop for BioList {
    fn drop(&mut self) {
        // Bios left behind are ended (with an error, by `Bio`'s drop) rather than lost.
        while self.pop().is_some() {}
        // SAFETY: Created by `migrate_bio_list_create` and now empty.
        unsafe { bindings::migrate_bio_list_destroy(self.ptr.as_ptr()) };
    }
}

// SPDX-License-Identifier: GPL-2.0

//! Writes behind: copies of guest writes' data that go to a device on their own, completing
//! after the guest's bio (the asynchronous mirror, `crate::engine::behind`).

use super::bindings;
use super::bio::{Bio, Status};
use super::device::Device;
use core::marker::PhantomData;
use core::ptr::NonNull;
use kernel::prelude::*;
use kernel::sync::Arc;

/// What learns that a write behind completed.
pub trait BehindDone: Send + Sync {
    /// Called once per write behind when it completes, in its completion's context (possibly
    /// interrupt context: no sleeping), with the cookie it was submitted with and its status.
    /// The write's bio and pages are already freed; the owner's reference is dropped after the
    /// call.
    fn behind_done(&self, cookie: u32, status: Status);
}

/// A pool of bios for writes behind, and the count of those in flight.
///
/// # Invariants
///
/// `ptr` is a bio set from `migrate_behind_set_create`, destroyed on drop; every bio taken
/// from it was submitted by [`BehindBio::submit`] with an owner of type `T`, or freed unsent.
pub struct BehindSet<T: BehindDone> {
    ptr: NonNull<bindings::bio_set>,
    _owner: PhantomData<T>,
}

// SAFETY: A bio set is used through its mempool, which is thread-safe.
unsafe impl<T: BehindDone> Send for BehindSet<T> {}
// SAFETY: As for `Send`.
unsafe impl<T: BehindDone> Sync for BehindSet<T> {}

impl<T: BehindDone> BehindSet<T> {
    /// A set whose mempool keeps `pool_size` bios in reserve.
    pub fn new(pool_size: u32) -> Result<Self> {
        // SAFETY: No preconditions.
        let ptr = unsafe { bindings::migrate_behind_set_create(pool_size) };
        // INVARIANT: Created just above.
        Ok(Self {
            ptr: NonNull::new(ptr).ok_or(ENOMEM)?,
            _owner: PhantomData,
        })
    }

    /// A copy of `bio`'s data for `device`, or `None` when the bio is not a plain write with
    /// data, or the memory cannot be had without waiting. Any context `map` runs in.
    pub fn copy_of(&self, bio: &Bio, device: &Device) -> Option<BehindBio<'_, T>> {
        if !bio.may_use(device) {
            return None;
        }
        let (bio, bdev, set) = (bio.raw(), device.bdev(), self.ptr.as_ptr());
        // SAFETY: `bio` is a valid bio of ours whose data stays put while we hold it; the
        // device is one of its target's, open until after its last bio; the set is valid.
        let raw = unsafe { bindings::migrate_behind_copy(bio, bdev, set) };
        NonNull::new(raw).map(|ptr| BehindBio { ptr, set: self })
    }

    /// Waits until every write behind of the set has completed and its owner was told, and its
    /// bio put. Sleeps.
    pub fn drain(&self) {
        // SAFETY: The set is valid (type invariant).
        unsafe { bindings::migrate_bioset_drain(self.ptr.as_ptr()) };
    }
}

impl<T: BehindDone> Drop for BehindSet<T> {
    /// Waits for the writes behind still in flight (their completions hold the set until they
    /// put their bio), then frees the set. Sleeps.
    fn drop(&mut self) {
        // SAFETY: Created by `migrate_behind_set_create` (type invariant), not used after this;
        // the destroy waits for the bios still out of it.
        unsafe { bindings::migrate_bioset_destroy(self.ptr.as_ptr()) };
    }
}

/// A write behind made but not yet submitted: freed if dropped.
///
/// # Invariants
///
/// `ptr` is a bio from `migrate_behind_copy` of `set`, owned by this value.
pub struct BehindBio<'a, T: BehindDone> {
    ptr: NonNull<bindings::bio>,
    set: &'a BehindSet<T>,
}

impl<T: BehindDone> BehindBio<'_, T> {
    /// Sends the copy to its device at `sector`; `owner` is told of its completion
    /// ([`BehindDone::behind_done`] with `cookie`), and holds a reference until then.
    pub fn submit(self, owner: Arc<T>, sector: u64, cookie: u32) {
        let ptr = self.ptr.as_ptr();
        let _ = self.set;
        core::mem::forget(self);
        let owner = Arc::into_raw(owner);
        // SAFETY: `ptr` is an unsent bio of a behind set (type invariant), given up above; its
        // completion, `behind_endio::<T>`, takes the owner's reference back.
        unsafe {
            bindings::migrate_behind_submit(
                ptr,
                sector,
                Some(behind_endio::<T>),
                owner.cast_mut().cast(),
                cookie,
            )
        };
    }
}

impl<T: BehindDone> Drop for BehindBio<'_, T> {
    fn drop(&mut self) {
        // SAFETY: The bio is ours and unsent (type invariant); not used after this.
        unsafe { bindings::migrate_behind_free(self.ptr.as_ptr()) };
    }
}

/// Called by the block layer when a write behind completes.
///
/// # Safety
///
/// `bio` is a bio submitted by [`BehindBio::submit`] with an owner of type `T`, completing once.
unsafe extern "C" fn behind_endio<T: BehindDone>(bio: *mut bindings::bio) {
    // SAFETY: Forwarded from the caller: the bio carries the owner's reference and cookie that
    // `submit` stored, and its status.
    let (owner, cookie, status) = unsafe {
        (
            Arc::from_raw(bindings::migrate_behind_owner(bio).cast::<T>().cast_const()),
            bindings::migrate_behind_cookie(bio),
            Status(bindings::migrate_bio_status(bio)),
        )
    };
    owner.behind_done(cookie, status);
    drop(owner);
    // The last access to the set: `BehindSet::drain` and its drop wait for it, so the owner
    // (which holds the set) was told, and let go of, before either returns.
    // SAFETY: The bio is ours (above), done with; its pages go with it.
    unsafe { bindings::migrate_behind_free(bio) };
}

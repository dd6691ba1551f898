// SPDX-License-Identifier: GPL-2.0

//! Bios handed to a target's `map`.

use super::bindings;
use super::device::Device;
use core::marker::PhantomData;
use core::ptr::NonNull;

/// A bio the device-mapper core passed to `map`, borrowed for the duration of the call.
///
/// # Invariants
///
/// `ptr` points to a valid `struct bio` that the target may change until `map` returns (the
/// device-mapper core hands over a clone that only this target sees).
pub struct Bio<'a> {
    ptr: NonNull<bindings::bio>,
    _map_call: PhantomData<&'a mut bindings::bio>,
}

impl Bio<'_> {
    /// Wraps the bio of a `map` call.
    ///
    /// # Safety
    ///
    /// `ptr` must be the bio of a `map` callback that has not returned yet.
    pub(super) unsafe fn from_raw(ptr: NonNull<bindings::bio>) -> Self {
        // INVARIANT: The caller guarantees that the bio is ours until `map` returns.
        Self {
            ptr,
            _map_call: PhantomData,
        }
    }

    /// The first sector, `bio->bi_iter.bi_sector`.
    pub fn sector(&self) -> u64 {
        // SAFETY: `ptr` is a valid bio by the type invariant.
        unsafe { bindings::migrate_bio_sector(self.ptr.as_ptr()) }
    }

    /// The length in sectors; zero for an empty flush.
    pub fn sectors(&self) -> u32 {
        // SAFETY: `ptr` is a valid bio by the type invariant.
        unsafe { bindings::migrate_bio_sectors(self.ptr.as_ptr()) }
    }

    /// Points the bio at `device`, starting at `sector` of it.
    pub fn remap(&mut self, device: &Device, sector: u64) {
        // SAFETY: `ptr` is a valid bio we may change (type invariant), and `device.bdev()` is an
        // open block device for as long as `device` lives, which covers the bio's I/O because a
        // target's devices are put only after all of its I/O has completed.
        unsafe {
            bindings::migrate_bio_set_dev(self.ptr.as_ptr(), device.bdev());
            bindings::migrate_bio_set_sector(self.ptr.as_ptr(), sector);
        }
    }

    /// Points the bio at `device` without moving it; for empty flushes, which carry no sector.
    pub fn set_device(&mut self, device: &Device) {
        // SAFETY: As in `remap`.
        unsafe { bindings::migrate_bio_set_dev(self.ptr.as_ptr(), device.bdev()) };
    }
}

// SPDX-License-Identifier: GPL-2.0

//! Block devices held open by a target.

use super::bindings;
use super::handle::Handles;
use core::ptr::NonNull;
use kernel::sync::Arc;

/// A block device opened for a target with `dm_get_device`, released on drop.
///
/// # Invariants
///
/// `dev` was returned by a successful `dm_get_device(ti, ..)` and has not been put yet, and `ti`
/// outlives this value: the value is counted in `handles`, the live handles of `ti`, which the
/// target's destructor waits to see at zero before the core may free `ti`.
pub struct Device {
    ti: NonNull<bindings::dm_target>,
    dev: NonNull<bindings::dm_dev>,
    handles: Arc<Handles>,
}

// SAFETY: A `dm_dev` is a reference-counted handle that the device-mapper core lets any context
// use; `put` happens once, in `drop`, which needs `&mut self`.
unsafe impl Send for Device {}

// SAFETY: Every `&self` method only reads fields that stay constant while the device is open.
unsafe impl Sync for Device {}

impl Device {
    /// Wraps a device returned by `dm_get_device`.
    ///
    /// # Safety
    ///
    /// `dev` must come from a successful `dm_get_device(ti, ..)` whose reference the caller hands
    /// over, and `handles` must be the live handles of `ti`.
    pub(super) unsafe fn from_raw(
        ti: NonNull<bindings::dm_target>,
        dev: NonNull<bindings::dm_dev>,
        handles: Arc<Handles>,
    ) -> Self {
        handles.get();
        // INVARIANT: The caller guarantees the device and the handles; counted just above.
        Self { ti, dev, handles }
    }

    /// The target that opened the device.
    pub(super) fn target(&self) -> *mut bindings::dm_target {
        self.ti.as_ptr()
    }

    /// The raw `dm_dev`, for the binding layer.
    pub(super) fn as_raw(&self) -> *mut bindings::dm_dev {
        self.dev.as_ptr()
    }

    /// The block device.
    pub(super) fn bdev(&self) -> *mut bindings::block_device {
        // SAFETY: `self.dev` is valid by the type invariant, and `bdev` is set for its lifetime.
        unsafe { (*self.dev.as_ptr()).bdev }
    }

    /// The device's name as device-mapper reports it in table lines: `major:minor`.
    pub fn name(&self) -> &str {
        // SAFETY: `self.dev` is valid by the type invariant; `name` is a NUL-terminated array
        // written once by `dm_get_device` and never changed while the device is held.
        let name = unsafe { &(*self.dev.as_ptr()).name };
        let bytes = name
            .iter()
            .map(|&c| c as u8)
            .take_while(|&c| c != 0)
            .count();
        // SAFETY: `bytes` counts the leading non-NUL elements of `name`, and `c_char` and `u8`
        // have the same layout.
        let bytes = unsafe { core::slice::from_raw_parts(name.as_ptr().cast::<u8>(), bytes) };
        // The core formats the name as `%u:%u`, which is ASCII.
        core::str::from_utf8(bytes).unwrap_or("?")
    }

    /// The device number (`dev_t`), which tells whether two paths name the same device.
    pub fn devt(&self) -> u32 {
        // SAFETY: `bdev` is a valid block device while the device is held (type invariant).
        unsafe { bindings::migrate_bdev_dev(self.bdev()) }
    }

    /// The device's size in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        // SAFETY: As in `devt`.
        unsafe { bindings::migrate_bdev_nr_sectors(self.bdev()) }
    }

    /// Whether the device takes write-zeroes requests.
    pub fn supports_write_zeroes(&self) -> bool {
        // SAFETY: As in `devt`.
        unsafe { bindings::migrate_bdev_write_zeroes(self.bdev()) }
    }

    /// The device's logical block size in bytes.
    pub fn logical_block_size(&self) -> u32 {
        // SAFETY: As in `devt`.
        unsafe { bindings::migrate_bdev_logical_block_size(self.bdev()) }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: By the type invariant `dev` is held from `dm_get_device(ti, ..)` and `ti` is
        // alive; this is the one put that matches it.
        unsafe { bindings::dm_put_device(self.ti.as_ptr(), self.dev.as_ptr()) };
        // The last use of `ti`: from here on the destructor may return.
        self.handles.put();
    }
}

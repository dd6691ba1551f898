// SPDX-License-Identifier: GPL-2.0

//! The copier's I/O: page buffers, and batches of bios waited for together.

use super::bindings;
use super::bio::{BioSet, Status};
use super::device::Device;
use core::ptr::NonNull;
use kernel::page::{Page, PAGE_SIZE};
use kernel::prelude::*;

/// Pages the copier reads into and writes from.
pub struct PageBuffer {
    _pages: KVec<Page>,
    ptrs: KVec<*mut bindings::page>,
}

// SAFETY: The raw pointers are to the pages in `_pages`, owned by this value.
unsafe impl Send for PageBuffer {}
// SAFETY: `&self` gives no access to the pages' contents.
unsafe impl Sync for PageBuffer {}

impl PageBuffer {
    /// Allocates `bytes` rounded up to whole pages, one page at a time (no large contiguous
    /// allocation).
    pub fn new(bytes: usize) -> Result<Self> {
        let nr = bytes.div_ceil(PAGE_SIZE);
        let mut pages = KVec::with_capacity(nr, GFP_KERNEL)?;
        let mut ptrs = KVec::with_capacity(nr, GFP_KERNEL)?;
        for _ in 0..nr {
            let page = Page::alloc_page(GFP_KERNEL)?;
            ptrs.push(page.as_ptr().cast(), GFP_KERNEL)?;
            pages.push(page, GFP_KERNEL)?;
        }
        Ok(Self {
            _pages: pages,
            ptrs,
        })
    }

    /// The buffer's size in bytes.
    pub fn len(&self) -> usize {
        self.ptrs.len() * PAGE_SIZE
    }
}

/// Bios submitted together and waited for together.
///
/// # Invariants
///
/// `ptr` comes from `migrate_io_batch_create` and is freed on drop; no bio of the batch is in
/// flight when it is freed, because `wait` is the only way to learn a batch's end and `&mut
/// self` methods cannot be called again before it.
pub struct IoBatch {
    ptr: NonNull<bindings::migrate_io_batch>,
    /// Whether bios were added since the last `wait`.
    started: bool,
}

// SAFETY: The batch is used by one thread at a time (`&mut self`), and completions only touch
// its atomic counter and completion.
unsafe impl Send for IoBatch {}
// SAFETY: No `&self` methods.
unsafe impl Sync for IoBatch {}

impl IoBatch {
    /// Allocates a batch.
    pub fn new() -> Result<Self> {
        // SAFETY: No preconditions.
        let ptr = unsafe { bindings::migrate_io_batch_create() };
        // INVARIANT: Created just above.
        Ok(Self {
            ptr: NonNull::new(ptr).ok_or(ENOMEM)?,
            started: false,
        })
    }

    /// Submits a read (or a write) of `bytes` from the start of `buf` at `sector` of `device`.
    ///
    /// `buf` must not be used by another bio until [`IoBatch::wait`] returns; the borrow
    /// checker cannot see that, so the copier keeps one buffer per batch slot.
    pub fn add(
        &mut self,
        device: &Device,
        sector: u64,
        buf: &PageBuffer,
        bytes: usize,
        write: bool,
        bios: &BioSet,
    ) -> Result {
        if bytes == 0 || bytes > buf.len() {
            return Err(EINVAL);
        }
        if !self.started {
            // SAFETY: The batch is valid and idle (type invariant).
            unsafe { bindings::migrate_io_batch_start(self.ptr.as_ptr()) };
            self.started = true;
        }
        let bytes = u32::try_from(bytes).map_err(|_| EINVAL)?;
        // SAFETY: The batch is started; `buf` holds at least `bytes` of pages, alive until the
        // caller's `wait`; the device stays open while the target lives, which outlasts the
        // copier.
        kernel::error::to_result(unsafe {
            bindings::migrate_io_batch_add(
                self.ptr.as_ptr(),
                device.bdev(),
                sector,
                buf.ptrs.as_ptr().cast_mut(),
                bytes,
                write,
                bios.raw(),
            )
        })
    }

    /// Waits for every bio added since the last wait; the first error, if any, is returned.
    pub fn wait(&mut self) -> Status {
        if !self.started {
            return Status::OK;
        }
        self.started = false;
        // SAFETY: The batch is started (type invariant); this drops the waiter's reference.
        Status(unsafe { bindings::migrate_io_batch_wait(self.ptr.as_ptr()) })
    }
}

impl Drop for IoBatch {
    fn drop(&mut self) {
        // Never free a batch with bios in flight.
        self.wait();
        // SAFETY: Created by `migrate_io_batch_create` and idle (type invariant).
        unsafe { bindings::migrate_io_batch_destroy(self.ptr.as_ptr()) };
    }
}

/// Flushes a device's volatile cache.
pub fn flush(device: &Device) -> Result {
    // SAFETY: The device is open.
    kernel::error::to_result(unsafe { bindings::migrate_flush(device.bdev()) })
}

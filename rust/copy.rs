// SPDX-License-Identifier: GPL-2.0

//! The copier's I/O: page buffers, and batches of bios waited for together.

use super::bindings;
use super::bio::{BioSet, Status};
use super::device::Device;
use super::event::Event;
use core::marker::PhantomData;
use core::ptr::NonNull;
use kernel::page::{Page, PAGE_SIZE};
use kernel::prelude::*;
use kernel::sync::Arc;

/// Pages the copier reads into and writes from.
struct PageBuffer {
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
    fn new(bytes: usize) -> Result<Self> {
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
    fn len(&self) -> usize {
        self.ptrs.len() * PAGE_SIZE
    }
}

/// What one copy I/O of an [`IoBatch`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyOp {
    /// Reads into the buffer.
    Read,
    /// Writes the buffer.
    Write,
    /// Zeroes the range, allowing the device to unmap it; the buffer is not used.
    WriteZeroes,
}

/// One read or write through a buffer of its own, split into as many bios as it takes. Owning
/// the buffer, and taking one I/O between waits, makes it impossible for two I/Os to use the
/// same pages at once, or for the pages to go while a bio uses them.
///
/// The I/O can be waited for ([`IoBatch::wait`]), or polled ([`IoBatch::is_done`]): its last
/// completion signals the [`Event`] the batch was made with, so that one thread can drive many
/// batches, each on to its next step as soon as it is done.
///
/// The batch borrows the devices and bio set of its I/O for `'dev`: it cannot outlive them, and
/// since it waits for its I/O when dropped, neither can the I/O.
///
/// # Invariants
///
/// `ptr` comes from `migrate_io_batch_create` and is freed on drop; no bio of the batch is in
/// flight when it is freed or when `buffer` is, because `drop` waits first. `started` says
/// whether an I/O was submitted since the last `wait`. `_event` is the event the batch
/// signals, held so that it outlives the batch.
pub struct IoBatch<'dev> {
    ptr: NonNull<bindings::migrate_io_batch>,
    buffer: PageBuffer,
    started: bool,
    _event: Arc<Event>,
    _devices: PhantomData<(&'dev Device, &'dev BioSet)>,
}

// SAFETY: The batch is used by one thread at a time (`&mut self`), and completions only touch
// its atomic counter and completion.
unsafe impl Send for IoBatch<'_> {}
// SAFETY: `&self` methods only read the completion, which is safe from any thread.
unsafe impl Sync for IoBatch<'_> {}

impl<'dev> IoBatch<'dev> {
    /// Allocates a batch with a buffer of `bytes` rounded up to whole pages, whose completions
    /// signal `event`.
    pub fn new(bytes: usize, event: Arc<Event>) -> Result<Self> {
        let buffer = PageBuffer::new(bytes)?;
        // SAFETY: The event is valid, and kept alive by the batch, which holds a reference.
        let ptr = unsafe { bindings::migrate_io_batch_create(event.raw()) };
        // INVARIANT: Created just above, idle; the event is held.
        Ok(Self {
            ptr: NonNull::new(ptr).ok_or(ENOMEM)?,
            buffer,
            started: false,
            _event: event,
            _devices: PhantomData,
        })
    }

    /// The buffer's size in bytes.
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    /// Submits `op` over `bytes` (from the start of the buffer, for a read or write) at `sector`
    /// of `device`. Refused (`EBUSY`) until the previous I/O has been waited for. On an error
    /// the bios already submitted are still in flight: wait for them all the same.
    pub fn submit(
        &mut self,
        device: &'dev Device,
        sector: u64,
        bytes: usize,
        op: CopyOp,
        bios: &'dev BioSet,
    ) -> Result {
        if self.started {
            return Err(EBUSY);
        }
        if bytes == 0 || bytes > self.buffer.len() {
            return Err(EINVAL);
        }
        let bytes = u32::try_from(bytes).map_err(|_| EINVAL)?;
        let op = match op {
            CopyOp::Read => bindings::migrate_copy_op_MIGRATE_COPY_READ,
            CopyOp::Write => bindings::migrate_copy_op_MIGRATE_COPY_WRITE,
            CopyOp::WriteZeroes => bindings::migrate_copy_op_MIGRATE_COPY_WRITE_ZEROES,
        };
        // SAFETY: The batch is valid and idle (type invariant).
        unsafe { bindings::migrate_io_batch_start(self.ptr.as_ptr()) };
        self.started = true;
        // SAFETY: The batch is started; the buffer holds at least `bytes` of pages, which live
        // as long as the batch and no other I/O uses until `wait`; the device and the bio set
        // are borrowed for `'dev`, which the batch, waiting for its I/O on drop, cannot outlive.
        let added = kernel::error::to_result(unsafe {
            bindings::migrate_io_batch_add(
                self.ptr.as_ptr(),
                device.bdev(),
                sector,
                self.buffer.ptrs.as_ptr().cast_mut(),
                bytes,
                op,
                bios.raw(),
            )
        });
        // SAFETY: The batch is started and this is the end of its submission.
        unsafe { bindings::migrate_io_batch_submitted(self.ptr.as_ptr()) };
        added
    }

    /// Whether the I/O submitted since the last wait is over (or none was submitted): a
    /// [`IoBatch::wait`] then returns at once, or after the completer's last instructions. True
    /// before the batch's event is signalled, so a poller that read the event's count first
    /// never misses the end.
    pub fn is_done(&self) -> bool {
        // SAFETY: The batch is valid (type invariant).
        !self.started || unsafe { bindings::migrate_io_batch_done(self.ptr.as_ptr()) }
    }

    /// Waits for the I/O submitted since the last wait; the first error, if any, is returned.
    pub fn wait(&mut self) -> Status {
        if !self.started {
            return Status::OK;
        }
        self.started = false;
        // SAFETY: The batch is started (type invariant).
        Status(unsafe { bindings::migrate_io_batch_wait(self.ptr.as_ptr()) })
    }

    /// Whether the first `bytes` of the buffer are all zero bytes. Only meaningful between the
    /// wait for a read and the next submission.
    pub fn is_zero(&self, bytes: usize) -> bool {
        if self.started {
            return false;
        }
        let bytes = u32::try_from(bytes.min(self.buffer.len())).unwrap_or(0);
        // SAFETY: The pages are the buffer's, alive, and no I/O uses them (not started); they
        // hold at least `bytes`.
        unsafe { bindings::migrate_pages_zero(self.buffer.ptrs.as_ptr().cast_mut(), bytes) }
    }
}

impl Drop for IoBatch<'_> {
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

/// One metadata block in a page of its own, read and written synchronously.
pub struct MetaBlock {
    page: Page,
}

/// The size of a [`MetaBlock`].
pub const META_BLOCK_SIZE: usize = 4096;

impl MetaBlock {
    /// Allocates a block.
    pub fn new() -> Result<Self> {
        const { assert!(META_BLOCK_SIZE <= PAGE_SIZE) };
        Ok(Self {
            page: Page::alloc_page(GFP_KERNEL)?,
        })
    }

    /// Reads the block at `sector` of `device` into `out`.
    pub fn read(
        &mut self,
        device: &Device,
        sector: u64,
        out: &mut [u8; META_BLOCK_SIZE],
    ) -> Result {
        self.io(device, sector, false, false)?;
        // SAFETY: `out` is valid for writes of its whole length, which the page holds; nobody
        // else uses the page (`&mut self`).
        unsafe { self.page.read_raw(out.as_mut_ptr(), 0, META_BLOCK_SIZE) }
    }

    /// Writes `data` to the block at `sector` of `device`; with `fua`, it is durable when this
    /// returns.
    pub fn write(
        &mut self,
        device: &Device,
        sector: u64,
        data: &[u8; META_BLOCK_SIZE],
        fua: bool,
    ) -> Result {
        // SAFETY: `data` is valid for reads of its whole length, which the page holds; nobody
        // else uses the page (`&mut self`).
        unsafe { self.page.write_raw(data.as_ptr(), 0, META_BLOCK_SIZE) }?;
        self.io(device, sector, true, fua)
    }

    fn io(&mut self, device: &Device, sector: u64, write: bool, fua: bool) -> Result {
        // SAFETY: The device is open; the page is ours and outlives the call, which waits for
        // the I/O.
        kernel::error::to_result(unsafe {
            bindings::migrate_page_io(
                device.bdev(),
                sector,
                self.page.as_ptr().cast(),
                META_BLOCK_SIZE as u32,
                write,
                fua,
            )
        })
    }
}

// SPDX-License-Identifier: GPL-2.0

//! A folder of read-only sysfs files under a mapped device: `/sys/block/dm-N/<name>/`.

use super::bindings;
use super::target::TargetHandle;
use crate::engine::writer::SliceWriter;
use core::ffi::CStr;
use core::ptr::NonNull;
use kernel::ffi::{c_char, c_long, c_uint, c_void};
use kernel::prelude::*;
use kernel::sync::Arc;

/// What fills the files of a [`SysfsDir`].
pub trait SysfsShow: Send + Sync + 'static {
    /// The file names, in order; their index is passed to `show`.
    const FILES: &'static [&'static CStr];

    /// Writes the contents of file `index` (one value and a newline, by sysfs custom).
    fn show(&self, index: usize, out: &mut SliceWriter<'_>);
}

/// A sysfs folder whose files are filled by a `T`; removed on drop.
///
/// # Invariants
///
/// `sysfs` comes from `migrate_sysfs_create` with `owner` (an `Arc<T>` from `Arc::into_raw`) as
/// the owner, and is destroyed once, on drop, before that reference is released.
pub struct SysfsDir<T: SysfsShow> {
    sysfs: NonNull<bindings::migrate_sysfs>,
    owner: *const T,
}

// SAFETY: The folder may be removed from any process context; `T` is `Send + Sync`.
unsafe impl<T: SysfsShow> Send for SysfsDir<T> {}
// SAFETY: No `&self` methods.
unsafe impl<T: SysfsShow> Sync for SysfsDir<T> {}

/// Called by sysfs to read a file.
///
/// # Safety
///
/// `owner` is the `T` of a live [`SysfsDir`]; `buf` is a page-sized buffer.
unsafe extern "C" fn show_callback<T: SysfsShow>(
    owner: *mut c_void,
    file: c_uint,
    buf: *mut c_char,
) -> c_long {
    // SAFETY: The folder, and so the reference behind `owner`, outlives every read: its drop
    // removes the files, which waits for readers, before releasing the reference.
    let owner = unsafe { &*owner.cast::<T>() };
    // SAFETY: sysfs hands a buffer of a page.
    let buf = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), kernel::page::PAGE_SIZE) };
    let mut out = SliceWriter::new(buf);
    owner.show(file as usize, &mut out);
    out.as_bytes().len() as c_long
}

impl<T: SysfsShow> SysfsDir<T> {
    /// Creates `/sys/block/<dm device>/<name>/` with the files of `T`, filled by `owner`.
    pub fn new(handle: &TargetHandle, name: &CStr, owner: Arc<T>) -> Result<Self> {
        let mut names = [core::ptr::null::<c_char>(); 16];
        if T::FILES.len() > names.len() {
            return Err(EINVAL);
        }
        for (slot, file) in names.iter_mut().zip(T::FILES) {
            *slot = file.as_ptr().cast();
        }
        let owner = Arc::into_raw(owner);
        // SAFETY: The target behind the handle is alive; the names are static C strings (sysfs
        // keeps pointers to them); `show_callback::<T>` matches `owner`'s type.
        let sysfs = unsafe {
            bindings::migrate_sysfs_create(
                handle.raw(),
                name.as_ptr().cast(),
                names.as_ptr(),
                T::FILES.len() as c_uint,
                Some(show_callback::<T>),
                owner.cast_mut().cast(),
            )
        };
        match NonNull::new(sysfs) {
            // INVARIANT: Created just above with `owner`.
            Some(sysfs) => Ok(Self { sysfs, owner }),
            None => {
                // SAFETY: Not handed to sysfs, so the reference is still ours.
                drop(unsafe { Arc::from_raw(owner) });
                Err(ENOMEM)
            }
        }
    }
}

impl<T: SysfsShow> Drop for SysfsDir<T> {
    fn drop(&mut self) {
        // SAFETY: Created by `migrate_sysfs_create` and not destroyed yet (type invariant);
        // this waits for readers, so no `show_callback` runs after it.
        unsafe { bindings::migrate_sysfs_destroy(self.sysfs.as_ptr()) };
        // SAFETY: The reference from `Arc::into_raw` in `new`, released once.
        drop(unsafe { Arc::from_raw(self.owner) });
    }
}

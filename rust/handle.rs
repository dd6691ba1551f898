// SPDX-License-Identifier: GPL-2.0

//! The values that hold a target's raw `ti` beyond a callback ([`TargetHandle`], and
//! [`super::device::Device`]), counted so that the destructor can wait for them.

use super::bindings;
use core::ffi::CStr;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use kernel::prelude::*;
use kernel::sync::Arc;

/// The count of the values that hold a target's raw `ti` ([`super::device::Device`], [`TargetHandle`]): they
/// may be kept anywhere, but the core frees `ti` once the destructor returns, so the destructor
/// waits until none is left. Kept inside the target object, as they should be, they are all
/// gone when the destructor has dropped it, and the wait ends at once.
pub(super) struct Handles {
    live: AtomicUsize,
}

impl Handles {
    pub(super) fn new() -> Result<Arc<Self>, kernel::alloc::AllocError> {
        Arc::new(
            Self {
                live: AtomicUsize::new(0),
            },
            GFP_KERNEL,
        )
    }

    /// Counts a new handle.
    pub(super) fn get(&self) {
        self.live.fetch_add(1, Ordering::Relaxed);
    }

    /// Uncounts a handle, after its last use of `ti`.
    pub(super) fn put(&self) {
        self.live.fetch_sub(1, Ordering::Release);
    }

    /// Waits until no handle is left; sleeps. Polled: the count lives as long as the `Arc`s,
    /// so a handle's last `put` and this check need no wake-up between them.
    pub(super) fn wait_none_left(&self) {
        let mut waited_ms = 0u32;
        while self.live.load(Ordering::Acquire) != 0 {
            if waited_ms == 10_000 {
                pr_warn!("target destructor waits for a device or handle still held\n");
            }
            waited_ms = waited_ms.saturating_add(1);
            // SAFETY: The destructor and the constructor run in process context.
            unsafe { bindings::migrate_msleep(1) };
        }
    }
}

/// A handle on a constructed target for raising events.
///
/// # Invariants
///
/// `ti` is a target that lives at least as long as this handle: the handle is counted in
/// `handles`, the live handles of `ti`, which the destructor waits to see at zero.
pub struct TargetHandle {
    ti: NonNull<bindings::dm_target>,
    handles: Arc<Handles>,
}

impl Drop for TargetHandle {
    fn drop(&mut self) {
        self.handles.put();
    }
}

// SAFETY: Raising an event is allowed from any process context.
unsafe impl Send for TargetHandle {}
// SAFETY: As for `Send`.
unsafe impl Sync for TargetHandle {}

impl TargetHandle {
    /// A handle on `ti`, counted in `handles`, its live handles.
    pub(super) fn new(ti: NonNull<bindings::dm_target>, handles: Arc<Handles>) -> Self {
        handles.get();
        // INVARIANT: Counted in the live handles of `ti` just above.
        Self { ti, handles }
    }

    /// The raw target, for the binding layer.
    pub(super) fn raw(&self) -> *mut bindings::dm_target {
        self.ti.as_ptr()
    }

    /// An identity of the mapped device, equal for every target of the same device and
    /// distinct between devices that exist at the same time (its address).
    pub fn device_id(&self) -> usize {
        // SAFETY: `ti` is alive (type invariant) and its table is set.
        unsafe { bindings::migrate_md_id(self.ti.as_ptr()) }
    }

    /// The mapped device's name for log lines, `major:minor`.
    pub fn device_name(&self) -> &str {
        // SAFETY: `ti` is alive (type invariant) and its table is set.
        let name = unsafe { bindings::migrate_device_name(self.ti.as_ptr()) };
        // SAFETY: The name is a NUL-terminated string that lives as long as the mapped device,
        // which outlives its targets.
        let name = unsafe { CStr::from_ptr(name.cast()) };
        name.to_str().unwrap_or("?")
    }

    /// Wakes `dmsetup wait` (`dm_table_event`) and sends a `KOBJ_CHANGE` uevent on the mapped
    /// device with `DM_MIGRATE_STATE=<state>`. May sleep.
    pub fn raise_event(&self, state: &CStr) {
        // SAFETY: `ti` is alive (type invariant) and its table is set; `state` is a C string.
        unsafe {
            bindings::migrate_uevent(self.ti.as_ptr(), state.as_ptr().cast());
            bindings::migrate_table_event(self.ti.as_ptr());
        }
    }
}

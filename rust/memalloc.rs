// SPDX-License-Identifier: GPL-2.0

//! Allocation scopes: what allocations may wait for while the device is suspended.

use super::bindings;
use core::marker::PhantomData;

/// Allocations in the scope of this guard do not wait for I/O (`memalloc_noio_save`): while a
/// device is suspended, an allocation that reclaims through it would wait forever. The scope
/// belongs to the task that entered it, so the guard cannot move to another thread.
pub struct NoIo {
    flags: kernel::ffi::c_uint,
    _same_task: PhantomData<*mut ()>,
}

impl NoIo {
    /// Starts the scope.
    pub fn enter() -> Self {
        // SAFETY: No preconditions; `drop` restores the flags in the same task.
        let flags = unsafe { bindings::migrate_noio_save() };
        Self {
            flags,
            _same_task: PhantomData,
        }
    }
}

impl Drop for NoIo {
    fn drop(&mut self) {
        // SAFETY: `flags` came from `migrate_noio_save` in this task.
        unsafe { bindings::migrate_noio_restore(self.flags) };
    }
}

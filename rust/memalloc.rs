// SPDX-License-Identifier: GPL-2.0

//! Allocation scopes: what allocations may wait for while the device is suspended.

use super::bindings;

/// Runs `body` with allocations that do not wait for I/O (`memalloc_noio_save`): while a
/// device is suspended, an allocation that reclaims through it would wait forever, and a
/// thread that guest writes wait for must not reclaim through the device either.
///
/// A scope, not a guard: the flags are restored when `body` returns, in this task, in the
/// order scopes were entered, and a scope cannot be forgotten or outlive its task.
pub fn noio_scope<R>(body: impl FnOnce() -> R) -> R {
    /// Restores the flags also if `body` unwinds (the kernel panics instead, but the scope
    /// stays right by construction).
    struct Restore(kernel::ffi::c_uint);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: The flags came from `migrate_noio_save` in this task, in the scope that
            // ends here; nested scopes ended before it.
            unsafe { bindings::migrate_noio_restore(self.0) };
        }
    }
    // SAFETY: No preconditions; `Restore` undoes it in this task when `body` returns.
    let _restore = Restore(unsafe { bindings::migrate_noio_save() });
    body()
}

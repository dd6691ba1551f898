// SPDX-License-Identifier: GPL-2.0

//! An event a kernel thread sleeps on until something signals it.

use super::bindings;
use core::ptr::NonNull;
use kernel::prelude::*;

/// A counter and a wait queue: [`Event::signal`] bumps the counter and wakes the sleepers;
/// [`Event::wait`] sleeps until the counter differs from a value read before the sleeper
/// checked for work. Reading the count first makes a signal between the check and the sleep
/// impossible to miss, without any lock shared with the signaller, which may be a bio
/// completion in interrupt context.
///
/// # Invariants
///
/// `ptr` comes from `migrate_event_create` and is freed on drop.
pub struct Event {
    ptr: NonNull<bindings::migrate_event>,
}

// SAFETY: Every operation on the event is safe from any thread and context.
unsafe impl Send for Event {}
// SAFETY: As for `Send`.
unsafe impl Sync for Event {}

impl Event {
    /// Allocates an event.
    pub fn new() -> Result<Self> {
        // SAFETY: No preconditions.
        let ptr = unsafe { bindings::migrate_event_create() };
        // INVARIANT: Created just above.
        Ok(Self {
            ptr: NonNull::new(ptr).ok_or(ENOMEM)?,
        })
    }

    /// The raw event, for the binding layer.
    pub(super) fn raw(&self) -> *mut bindings::migrate_event {
        self.ptr.as_ptr()
    }

    /// The count to hand to [`Event::wait`]: read it before checking for work.
    pub fn count(&self) -> u32 {
        // SAFETY: The event is valid (type invariant).
        unsafe { bindings::migrate_event_count(self.raw()) }
    }

    /// Wakes every sleeper. Any context.
    pub fn signal(&self) {
        // SAFETY: The event is valid (type invariant).
        unsafe { bindings::migrate_event_signal(self.raw()) }
    }

    /// Sleeps until the event is signalled after its count was `seen`, or `timeout_ms` passed
    /// (0: no timeout), or, when `stoppable`, the calling kernel thread is asked to stop or
    /// park. Process context; may return early.
    pub fn wait(&self, seen: u32, timeout_ms: u32, stoppable: bool) {
        // SAFETY: The event is valid (type invariant); sleeping is allowed in process context.
        unsafe { bindings::migrate_event_wait(self.raw(), seen, timeout_ms, stoppable) }
    }
}

impl Event {
    /// Sleeps until the event is signalled after its count was `seen`, uninterruptibly: a
    /// bio's submitter waiting for other I/O to land. Process context.
    pub fn wait_io(&self, seen: u32) {
        // SAFETY: The event is valid (type invariant); sleeping is allowed in process context.
        unsafe { bindings::migrate_event_wait_io(self.raw(), seen) }
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: Created by `migrate_event_create` (type invariant); nobody can signal or wait
        // on it any more, as that takes a reference.
        unsafe { bindings::migrate_event_destroy(self.raw()) };
    }
}

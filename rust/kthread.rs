// SPDX-License-Identifier: GPL-2.0

//! A kernel thread that runs a method of a shared object until it is stopped.

use super::bindings;
use core::ffi::CStr;
use core::ptr::NonNull;
use kernel::ffi::{c_int, c_void};
use kernel::prelude::*;
use kernel::sync::Arc;

/// The body of a [`KThread`].
pub trait ThreadMain: Send + Sync + 'static {
    /// Runs in the thread, in process context; must return soon after [`should_stop`] becomes
    /// true, which it checks between units of work (and [`sleep_ms`] wakes up for).
    fn thread_main(&self);
}

/// A running kernel thread, stopped (and waited for) on drop.
///
/// # Invariants
///
/// `task` is a thread started by `migrate_kthread_run` that has not been stopped yet.
pub struct KThread {
    task: NonNull<bindings::task_struct>,
}

// SAFETY: A task pointer may be woken up and stopped from any thread.
unsafe impl Send for KThread {}
// SAFETY: `wake` may be called concurrently.
unsafe impl Sync for KThread {}

/// Called by the kthread core as the thread's function.
///
/// # Safety
///
/// `data` is an `Arc<T>` turned into a raw pointer by [`KThread::run`].
unsafe extern "C" fn thread_fn<T: ThreadMain>(data: *mut c_void) -> c_int {
    // SAFETY: `run` handed over one reference as `data`.
    let context = unsafe { Arc::<T>::from_raw(data.cast::<T>()) };
    context.thread_main();
    // The body returns only when asked to stop, so `kthread_stop` is waiting for this exit and
    // still holds the task.
    0
}

impl KThread {
    /// Starts `context.thread_main()` in a thread named `dm-migrate/<name>`.
    pub fn run<T: ThreadMain>(name: &CStr, context: Arc<T>) -> Result<Self> {
        let data = Arc::into_raw(context).cast_mut();
        // SAFETY: `thread_fn::<T>` takes `data` back as an `Arc<T>`; `name` is NUL-terminated.
        let task = unsafe {
            bindings::migrate_kthread_run(Some(thread_fn::<T>), data.cast(), name.as_ptr().cast())
        };
        match NonNull::new(task) {
            // INVARIANT: Started just above.
            Some(task) => Ok(Self { task }),
            None => {
                // SAFETY: The thread was not created, so the reference is still ours.
                drop(unsafe { Arc::from_raw(data) });
                Err(ENOMEM)
            }
        }
    }

    /// Wakes the thread from [`sleep_ms`].
    pub fn wake(&self) {
        // SAFETY: The task is running and not stopped (type invariant).
        unsafe { bindings::migrate_kthread_wake(self.task.as_ptr()) };
    }
}

impl Drop for KThread {
    fn drop(&mut self) {
        // SAFETY: The task has not been stopped (type invariant); this waits for it to exit.
        unsafe { bindings::migrate_kthread_stop(self.task.as_ptr()) };
    }
}

/// Whether the calling kernel thread has been asked to stop.
pub fn should_stop() -> bool {
    // SAFETY: Only called from a thread started by `KThread::run` (the body of `ThreadMain`).
    unsafe { bindings::migrate_kthread_should_stop() }
}

/// Sleeps up to `ms` milliseconds, or until woken by [`KThread::wake`] or a stop request.
pub fn sleep_ms(ms: u32) {
    // SAFETY: Only called from a thread started by `KThread::run`.
    unsafe { bindings::migrate_kthread_sleep_ms(ms) };
}

/// Lets other tasks on this CPU run if they are due. A thread that loops without sleeping (the
/// copier on a device that completes bios in the submitter, like brd) calls it once per round:
/// without kernel preemption nothing else would take the CPU from it.
pub fn cond_resched() {
    // SAFETY: No preconditions; called from process context.
    unsafe { bindings::migrate_cond_resched() };
}

/// Nanoseconds of the monotonic clock.
pub fn now_ns() -> u64 {
    // SAFETY: No preconditions.
    unsafe { bindings::migrate_now_ns() }
}

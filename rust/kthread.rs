// SPDX-License-Identifier: GPL-2.0

//! A kernel thread that runs a method of a shared object until it is stopped.

use super::bindings;
use core::ffi::CStr;
use core::mem::ManuallyDrop;
use core::ptr::NonNull;
use kernel::ffi::{c_int, c_void};
use kernel::prelude::*;
use kernel::sync::Arc;

/// The body of a [`KThread`].
pub trait ThreadMain: Send + Sync + 'static {
    /// Runs in the thread, in process context; must return soon after
    /// [`ThreadContext::should_stop`] becomes true, which it checks between units of work (a
    /// stop or park request ends a stoppable [`super::event::Event::wait`]).
    fn thread_main(&self, thread: &ThreadContext);
}

/// Proof of running in a thread started by [`KThread::run`]: only such a thread may ask
/// whether it should stop (and park when asked).
pub struct ThreadContext {
    /// Not constructible outside this module.
    _private: (),
}

impl ThreadContext {
    /// Whether this thread has been asked to stop. If it has been asked to park
    /// ([`KThread::park`]), it parks here first, until unparked or stopped. It may sleep: a
    /// call in atomic context (under a spinlock) is reported by `might_sleep` on a debug
    /// kernel even when no park was asked for.
    pub fn should_stop(&self) -> bool {
        // SAFETY: A `ThreadContext` exists only inside a thread started by `KThread::run`.
        unsafe { bindings::migrate_kthread_should_stop() }
    }

    /// Whether this thread has been asked to stop or to park, without parking: a thread with
    /// work in flight finishes it before it calls [`ThreadContext::should_stop`].
    pub fn stop_requested(&self) -> bool {
        // SAFETY: As in `should_stop`.
        unsafe { bindings::migrate_kthread_stop_requested() }
    }
}

/// A kernel thread, created parked, that runs while unparked and is stopped (and waited for) on
/// drop. It owns the thread's context, which the thread only borrows: whether or not the thread
/// function ever ran (a thread stopped before it was first unparked never does), the context is
/// released once, here. Parking and unparking allocate nothing and cannot fail, so they are fit
/// for suspend and resume paths, also those of a task being killed.
///
/// # Invariants
///
/// `task` is a thread created by `migrate_kthread_create_parked` with a pointer to `*context`
/// that has not been stopped yet, and holds a reference on the task; `parked` says whether it
/// was last parked or unparked.
pub struct KThread<T: ThreadMain> {
    task: NonNull<bindings::task_struct>,
    /// Borrowed by the thread; released only after it has stopped, and never if the thread
    /// itself drops this value (see `drop`).
    context: ManuallyDrop<Arc<T>>,
    parked: bool,
}

// SAFETY: A task pointer may be woken up and stopped from any thread; `T` is `Send + Sync`.
unsafe impl<T: ThreadMain> Send for KThread<T> {}
// SAFETY: No `&self` method touches the task; park, unpark and stop take `&mut self`.
unsafe impl<T: ThreadMain> Sync for KThread<T> {}

/// Called by the kthread core as the thread's function.
///
/// # Safety
///
/// `data` points to the `T` of the [`KThread`] that started this thread, which keeps it alive
/// until the thread has exited (`kthread_stop` waits for that).
unsafe extern "C" fn thread_fn<T: ThreadMain>(data: *mut c_void) -> c_int {
    // SAFETY: As above.
    let context = unsafe { &*data.cast::<T>() };
    context.thread_main(&ThreadContext { _private: () });
    0
}

impl<T: ThreadMain> KThread<T> {
    /// Creates a thread named `dm-migrate/<name>` that will run `context.thread_main()` once
    /// unparked.
    pub fn new_parked(name: &CStr, context: Arc<T>) -> Result<Self> {
        let data: *const T = &*context;
        // SAFETY: `thread_fn::<T>` only borrows `data`, which `context`, kept in the returned
        // value, keeps alive until the thread is stopped; `name` is NUL-terminated.
        let task = unsafe {
            bindings::migrate_kthread_create_parked(
                Some(thread_fn::<T>),
                data.cast_mut().cast(),
                name.as_ptr().cast(),
            )
        };
        // INVARIANT: Created and parked just above, with a reference on the task.
        Ok(Self {
            task: NonNull::new(task).ok_or(ENOMEM)?,
            context: ManuallyDrop::new(context),
            parked: true,
        })
    }

    /// Asks the thread to park and waits until it has, at its next
    /// [`ThreadContext::should_stop`]. Does nothing if it is parked.
    pub fn park(&mut self) {
        if !self.parked {
            // SAFETY: The task is alive and not stopped (type invariant), and not parked.
            unsafe { bindings::migrate_kthread_park(self.task.as_ptr()) };
            self.parked = true;
        }
    }

    /// Lets a parked thread run again. Does nothing if it runs.
    pub fn unpark(&mut self) {
        if self.parked {
            // SAFETY: The task is alive and not stopped (type invariant).
            unsafe { bindings::migrate_kthread_unpark(self.task.as_ptr()) };
            self.parked = false;
        }
    }
}

impl<T: ThreadMain> Drop for KThread<T> {
    fn drop(&mut self) {
        // SAFETY: The task is alive: we hold a reference on it (type invariant).
        if unsafe { bindings::migrate_task_is_current(self.task.as_ptr()) } {
            // The thread drops its own handle (it dropped the last reference to what owns
            // it): stopping it would wait for itself forever, and its function still borrows
            // the context. Leave both: the thread ends when its function returns, and the
            // context is leaked for good, with all it holds (a target's destructor that waits
            // for its devices then waits forever, visibly, instead of freeing what is in use).
            pr_warn!("kthread dropped by itself; leaving it to end on its own\n");
            // SAFETY: We hold a reference on the task (type invariant), dropped here once.
            unsafe { bindings::migrate_task_put(self.task.as_ptr()) };
            return;
        }
        // SAFETY: The task has not been stopped and we hold a reference on it (type
        // invariant); this unparks it if needed, waits for the thread to exit, or makes sure
        // its function never runs, and drops the reference.
        unsafe { bindings::migrate_kthread_stop(self.task.as_ptr()) };
        // SAFETY: The thread has exited, or its function will never run: nothing borrows the
        // context any more, and it is not used after this.
        unsafe { ManuallyDrop::drop(&mut self.context) };
    }
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

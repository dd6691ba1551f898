// SPDX-License-Identifier: GPL-2.0

//! The metadata thread: makes write-intent bits durable as soon as a write waits for one, and
//! commits the copy's progress every `commit_interval`.

use crate::dm::kthread::{self, ThreadContext, ThreadMain};
use crate::dm::memalloc::noio_scope;
use crate::migration::Migrator;
use kernel::sync::Arc;

/// The metadata thread of a target with a metadata device, run by a
/// [`crate::dm::kthread::KThread`] between resume and postsuspend (it must run while the
/// device drains at suspend: writes may wait for it).
pub(crate) struct MetaThread {
    pub(crate) migrator: Arc<Migrator>,
}

impl ThreadMain for MetaThread {
    fn thread_main(&self, thread: &ThreadContext) {
        // Guest writes can wait for this thread (a copy, an intent bit): an allocation of its
        // that reclaimed by writing back through the migrating device could wait on itself.
        // Like kcopyd's GFP_NOIO, every allocation of the thread's life avoids I/O.
        noio_scope(|| self.run(thread));
    }
}

impl MetaThread {
    /// The thread's life, in its no-I/O scope.
    fn run(&self, thread: &ThreadContext) {
        let migrator = &self.migrator;
        let interval_ns = migrator.options.commit_interval_ms() * 1_000_000;
        let mut next_commit_ns = kthread::now_ns() + interval_ns;
        while !thread.should_stop() {
            migrator.meta_send();
            let now = kthread::now_ns();
            if now >= next_commit_ns {
                migrator.meta_commit(false);
                next_commit_ns = kthread::now_ns() + interval_ns;
                continue;
            }
            let ms = (next_commit_ns - now).div_ceil(1_000_000).max(1);
            migrator.meta_wait(ms.min(u64::from(u32::MAX)) as u32);
        }
    }
}

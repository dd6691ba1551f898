// SPDX-License-Identifier: GPL-2.0

//! The routing of every bio by the migration's state, and the accounting of its end.

use super::*;

impl Migrator {
    /// Records that a mirrored bio failed on the destination: the sticky flag every decision to
    /// switch or commit reads under the phase lock. Any context.
    pub(super) fn record_dest_failure(&self) {
        self.migration.mirror_errors.fetch_add(1, Ordering::Relaxed);
        self.migration.health.record_write_failure();
        // The copier carries the failure out.
        self.migration.copier_event.signal();
    }
}

impl MirrorDone for Migrator {
    /// Records a flush that failed on the destination as soon as its destination half
    /// completes, whatever its origin half does or will do: the destination may have lost
    /// writes the guest was told succeeded, and a switch or a commit must not be decided while
    /// the origin half (a slow device) keeps the bio from ending. A FUA write's destination
    /// half is recorded the same way: it may carry the flush that took a write-back error.
    fn dest_done(&self, kind: BioKind, dest: Status, tag: u8) {
        let flush_half = BioTag::from_raw(tag).dest_flush_half();
        if (kind == BioKind::Flush || flush_half.is_some()) && !dest.is_ok() {
            self.record_dest_failure();
        }
        // Uncounted after the failure is recorded: whoever drains the count sees it.
        if let Some(flush) = flush_half {
            self.migration.dest_flushes_exit(flush);
        }
    }

    /// Records a failed destination write, before the bio ends. The write's epoch accounting is
    /// left to `end_io`, which the core calls for every bio of the target when it ends; every
    /// decision to switch or commit first drains the writes it depends on, so it sees this.
    ///
    /// Only a write the guest is told succeeded (the origin's half did) and the destination
    /// missed fails the migration. A write the origin failed ends with that error: the guest
    /// knows, and the range's contents are undefined after it whatever the destination did
    /// (a write-zeroes both loop devices refuse, for one, as mkfs sends). Flushes were recorded
    /// by `dest_done`.
    fn mirror_done(&self, kind: BioKind, origin: Status, dest: Status) {
        if kind != BioKind::Flush && origin.is_ok() && !dest.is_ok() {
            self.record_dest_failure();
        }
    }
}

impl BehindDone for Migrator {
    /// Ends a write behind: frees its slot, records a failure (the guest was told the write
    /// succeeded, so a destination that missed it fails the migration onto the origin, which
    /// has it), hands back the counts it held, and wakes the writes that wait for it.
    fn behind_done(&self, slot: u32, status: Status) {
        let (tag, _) = self.behind.release(slot as usize);
        if !status.is_ok() {
            self.record_dest_failure();
        }
        // After the failure is recorded: whoever drains the counts sees it.
        self.write_done(tag);
        self.behind_event.signal();
    }
}

impl Migrator {
    /// Routes a bio by the tracker's decision; shared by `map` and the re-dispatch of deferred
    /// bios. Never sleeps under the lock.
    pub(crate) fn dispatch(self: &Arc<Self>, bio: Bio) -> MapResult {
        let migration = &*self.migration;
        let sectors = u64::from(bio.sectors());
        let kind = match bio.kind() {
            BioKind::Read => IoKind::Read,
            BioKind::Write => IoKind::Write,
            BioKind::Flush => IoKind::Flush,
        };
        let sector = if sectors == 0 {
            0
        } else {
            // The core only sends bios inside the target; one outside would be a core bug, and
            // failing it beats writing somewhere else.
            match bio.sector().checked_sub(self.begin) {
                Some(s) if s.saturating_add(sectors) <= self.geometry.target_sectors => s,
                _ => return MapResult::Kill(bio),
            }
        };
        // A write-back error of the origin that a flush of the target took is the guest's
        // next flush's to report, wherever that flush goes: a write the guest was told
        // succeeded may be lost, also on the destination if its region was copied after.
        if kind == IoKind::Flush
            && migration
                .owed_origin_flush_error
                .swap(false, Ordering::AcqRel)
        {
            bio.set_tag(0);
            return MapResult::Kill(bio);
        }
        // After the migration has ended the route never changes: no lock, no accounting.
        let device = match migration.final_route.load(Ordering::Acquire) {
            FINAL_ORIGIN => Some(&self.origin),
            FINAL_DEST => Some(&self.destination),
            _ => None,
        };
        if let Some(device) = device {
            bio.set_tag(0);
            return remapped(bio, device, sector);
        }
        // A copy of a write's data for the destination, made outside the lock (a copy is no
        // work for a spinlock) once the plan says the write may go behind; freed unused if the
        // plan made with it does not take it after all. A copy that cannot be made without
        // waiting for memory leaves the write to be mirrored synchronously.
        let mut copy = None;
        let mut io = Io {
            kind,
            sector,
            sectors,
            fua: bio.is_fua(),
            plain_write: kind == IoKind::Write && bio.is_plain_write(),
            copied: false,
        };
        let (mut shared, plan) = loop {
            // Read before planning: a write behind that lands from here on ends the wait.
            let seen = self.behind_event.count();
            let mut shared = migration.shared.lock();
            let Shared {
                tracker, intent, ..
            } = &mut *shared;
            let plan = dispatch::plan(tracker, intent.as_mut(), Some(&self.behind), io);
            if plan.wants_copy {
                drop(shared);
                copy = self.behind_set.copy_of(&bio, &self.destination);
                // Without a copy the write is planned as one that cannot go behind.
                io.copied = copy.is_some();
                io.plain_write = io.copied;
                continue;
            }
            if !plan.wait_behind {
                break (shared, plan);
            }
            drop(shared);
            // The write overlaps a write behind still in flight to the destination: it waits
            // for that one to land (`engine::behind`), in the submitter's context, as md's
            // write-behind does.
            self.behind_event.wait_io(seen);
        };
        if plan.wake_metadata {
            migration.meta_event.signal();
        }
        match plan.final_route {
            Some(FinalRoute::Destination) => {
                migration.final_route.store(FINAL_DEST, Ordering::Release)
            }
            Some(FinalRoute::Origin) => {
                migration.final_route.store(FINAL_ORIGIN, Ordering::Release)
            }
            None => {}
        }
        // Counted under the lock, so that a drain flipped after this decision waits for the bio
        // (see `engine::epoch`).
        // The write behind holds its own counts, entered with the guest bio's under the lock,
        // so that a round, a commit or the switch that drains them waits for the destination's
        // copy as well as for the origin's write.
        let behind = match (plan.behind_slot, copy.take()) {
            (Some(slot), Some(copy)) => {
                let tag = BioTag::write(
                    plan.copy_write.then(|| migration.epochs.enter()),
                    plan.intent_write.then(|| migration.intent_epochs.enter()),
                    None,
                );
                self.behind.set_tag(slot, tag.raw());
                Some((slot, copy))
            }
            (Some(slot), None) => {
                // Not planned (a slot is taken only for a write with a copy); given back.
                self.behind.release(slot);
                None
            }
            (None, _) => None,
        };
        let tag = if plan.mirrored_flush {
            migration.mirrored_flushes.fetch_add(1, Ordering::Relaxed);
            BioTag::mirrored_flush(migration.dest_flushes.enter())
        } else {
            BioTag::write(
                plan.copy_write.then(|| migration.epochs.enter()),
                plan.intent_write.then(|| migration.intent_epochs.enter()),
                plan.dest_flush.then(|| migration.dest_flushes.enter()),
            )
        };
        let route = plan.route;
        bio.set_tag(tag.raw());
        match route {
            Route::Defer => {
                shared.deferred.push(bio);
                MapResult::Submitted
            }
            Route::Origin => {
                drop(shared);
                remapped(bio, &self.origin, sector)
            }
            Route::Destination => {
                drop(shared);
                remapped(bio, &self.destination, sector)
            }
            Route::Both if behind.is_some() => {
                drop(shared);
                if let Some((slot, copy)) = behind {
                    // The slot number is below `behind::SLOTS`.
                    copy.submit(self.clone(), sector, slot as u32);
                }
                remapped(bio, &self.origin, sector)
            }
            Route::Both => {
                drop(shared);
                bio.mirror(
                    (&self.origin, sector),
                    (&self.destination, sector),
                    &self.bios,
                );
                MapResult::Submitted
            }
        }
    }

    /// Ends the accounting of a bio routed by `dispatch`; called from `end_io` for every bio
    /// the target ends, remapped, mirrored or re-dispatched.
    pub(crate) fn write_done(&self, tag: u8) {
        let migration = &*self.migration;
        let tag = BioTag::from_raw(tag);
        if let Some(write) = tag.copy_write() {
            if migration.epochs.exit(write) {
                migration.drained_event.signal();
            }
        }
        if let Some(write) = tag.intent_write() {
            if migration.intent_epochs.exit(write) {
                migration.drained_event.signal();
            }
        }
        // A destination half that flushes was uncounted by `dest_done`.
        if tag.is_mirrored_flush() {
            // Release: a failure the flush recorded (`MirrorDone`) is seen by whoever sees the
            // count drop.
            if migration.mirrored_flushes.fetch_sub(1, Ordering::AcqRel) == 1 {
                migration.drained_event.signal();
            }
        }
    }

    /// Sends deferred bios on, now that what they waited for is over. Each is popped under the
    /// lock and routed again outside it.
    ///
    /// Only the bios on the list when this starts are taken (a bio deferred again goes to the
    /// back and waits for the next call), so this ends also while other regions are still being
    /// copied. Taking a bio that a concurrent call or `map` added does no harm: it is routed
    /// again like any other.
    pub(crate) fn release_deferred(self: &Arc<Self>) {
        let waiting = self.migration.shared.lock().deferred.len();
        for _ in 0..waiting {
            let Some(bio) = self.migration.shared.lock().deferred.pop() else {
                return;
            };
            match self.dispatch(bio) {
                MapResult::Remapped(bio) => bio.submit(),
                MapResult::Kill(bio) => bio.endio(Status::IOERR),
                MapResult::Submitted => {}
            }
        }
    }
}

/// The bio sent on to `device` at `sector`. A device the binding refuses (one not of the bio's
/// target: never ours) fails the bio through `end_io`, which ends its accounting; a killed bio
/// would skip `end_io`.
fn remapped(mut bio: Bio, device: &Device, sector: u64) -> MapResult {
    match bio.remap(device, sector) {
        Ok(()) => MapResult::Remapped(bio),
        Err(_) => {
            bio.endio(Status::IOERR);
            MapResult::Submitted
        }
    }
}

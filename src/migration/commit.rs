// SPDX-License-Identifier: GPL-2.0

//! The metadata device: the load before a target goes live, the record of a hand-over, the
//! write-intent bits, and the periodic commit of progress.

use super::*;

impl Migrator {
    /// Loads the migration's state from the metadata device, for a target that started the
    /// migration (`Membership::is_new`) before it goes live; formats a blank device. Refuses
    /// metadata that does not describe this migration.
    ///
    /// `replaces_live` says the table replaces a live one of the same devices and length
    /// (`Membership::replaces_live_pair`): its metadata in another region size is taken over
    /// at the hand-over.
    pub(crate) fn load_metadata(
        &self,
        format_id: u64,
        replaces_live: bool,
    ) -> Result<Loaded, MetadataError> {
        let Some(device) = &self.metadata else {
            return Ok(Loaded::New);
        };
        let migration = &*self.migration;
        let identity = crate::engine::metadata::Identity {
            target_sectors: self.geometry.target_sectors,
            region_sectors: self.geometry.region_sectors,
            origin_sectors: self.origin.sectors(),
            destination_sectors: self.destination.sectors(),
        };
        let mut meta = migration.meta.lock();
        let (store, loaded) = MetaStore::open(
            device,
            &self.origin,
            &self.destination,
            identity,
            format_id,
            replaces_live,
        )?;
        // The pages the recorded bitmap needs, allocated before the spinlock, every one: a
        // part of the bitmap restored as all pending without its page would be more pending in
        // memory than on the device, and a write to a region copied on the device would then go
        // to the origin alone, with no intent bit, to be lost by a crash before the next commit.
        let mut pages = KVec::new();
        // The same for the intent log's planes: a chunk with a bit set on the device.
        let mut planes = KVec::new();
        if loaded == Loaded::Copying {
            let needed =
                bitmap::pages_needed(self.geometry.nr_regions, BITMAP_PAGE_WORDS, |word| {
                    store.pending_word(word)
                });
            let nr_words = self.geometry.nr_regions.div_ceil(64) as usize;
            if self.metadata.is_some() {
                for _ in 0..intent::chunks_needed(nr_words, |word| store.intent_word(word)) {
                    let page = BitmapPage::new().map_err(|_| MetadataError::OutOfMemory)?;
                    planes
                        .push(Some(page), GFP_KERNEL)
                        .map_err(|_| MetadataError::OutOfMemory)?;
                }
            }
            for _ in 0..needed {
                let page = BitmapPage::new().map_err(|_| MetadataError::OutOfMemory)?;
                pages
                    .push(Some(page), GFP_KERNEL)
                    .map_err(|_| MetadataError::OutOfMemory)?;
            }
        }
        let mut shared = migration.shared.lock();
        let Shared {
            tracker, intent, ..
        } = &mut *shared;
        match loaded {
            // The hand-over sets the tracker and the device.
            Loaded::New | Loaded::StartedOver | Loaded::ForHandover => {}
            Loaded::Copying => {
                let mut page = || pages.iter_mut().find_map(Option::take);
                if !tracker.restore(|word| store.pending_word(word), &mut page) {
                    // Never: the pages were counted with the same rule, under the same mutex.
                    return Err(MetadataError::OutOfMemory);
                }
                if let Some(intent) = intent.as_mut() {
                    let mut plane = || planes.iter_mut().find_map(Option::take);
                    for word in 0..tracker.nr_words() {
                        if !intent.load(word, store.intent_word(word), &mut plane) {
                            // Never: counted with the same rule, under the same mutex.
                            return Err(MetadataError::OutOfMemory);
                        }
                    }
                }
            }
            Loaded::Switched => {
                tracker.after_reload(State::Switched);
                migration.final_route.store(FINAL_DEST, Ordering::Release);
            }
        }
        drop(shared);
        *meta = Some(store);
        Ok(loaded)
    }

    /// Records on the metadata device what a table reload's hand-over did to the migration
    /// (`Membership::go_live`; `None` when there was no table before), before the target goes
    /// live.
    pub(crate) fn persist_handover(&self, handover: Option<Handover>) -> Result<(), MetadataError> {
        let Some(device) = &self.metadata else {
            return Ok(());
        };
        let mut meta = self.migration.meta.lock();
        let Some(store) = meta.as_mut() else {
            return Ok(());
        };
        store.reload_for_handover(device)?;
        match handover {
            // Metadata of another region size was loaded for a hand-over that did not happen
            // (the table it replaced is gone): it describes nothing this table could go on from.
            None | Some(Handover::Continued) if store.handover_due() => {
                Err(MetadataError::RegionSizeMismatch)
            }
            None | Some(Handover::Continued) => Ok(()),
            Some(Handover::StartedOver) => store.reset(device),
            Some(Handover::Switched) => {
                let sample = self
                    .flush_origin()
                    .ok()
                    .and_then(|()| store.sample_origin(&self.origin).ok());
                store.set_origin_sample(sample);
                store.write_phase(device, Phase::Switched, None)
            }
        }?;
        // Under the phase lock, which the write was made under: no other hand-over between.
        self.migration.shared.lock().unrecorded = None;
        Ok(())
    }

    /// Makes the wanted intent bits durable and lets the writes that waited for them go. The
    /// metadata thread's first job; a write error fails the migration.
    pub(crate) fn meta_send(self: &Arc<Self>) {
        let Some(device) = &self.metadata else { return };
        let migration = &*self.migration;
        // Spare planes for the intent log, allocated here where the thread may sleep: a write
        // to a chunk with no planes takes one under the spinlock, or waits for this.
        if self.give_intent_planes() {
            self.release_deferred();
        }
        let mut meta = migration.meta.lock();
        let Some(store) = meta.as_mut() else { return };
        {
            let mut shared = migration.shared.lock();
            let Shared {
                tracker, intent, ..
            } = &mut *shared;
            let Some(intent) = intent.as_mut() else {
                return;
            };
            if !tracker.is_active() {
                // Ended: its waiting writes are routed again (by the end's own release) to one
                // device, with no intent.
                intent.drop_wanted();
                return;
            }
            if !intent.start_send() {
                return;
            }
        }
        // Block by block, each under the spinlock: what a block holds when it is written is
        // all the sending bits (set by the start above) and more, never less: until this send
        // is recorded no bit can go (a clear is the commit's, under the phase lock held here),
        // and writes only add wanted bits meanwhile, which the disk may hold early.
        if store
            .write_bitmap(device, BitmapKind::Intent, &mut |words, out| {
                self.fill_intent(words, out)
            })
            .is_err()
        {
            // The waiting writes go to the origin alone once the migration has failed.
            return self.fail_locked(meta, FailReason::MetadataWrite);
        }
        drop(meta);
        if let Some(intent) = migration.shared.lock().intent.as_mut() {
            intent.sent();
        }
        self.release_deferred();
    }

    /// Commits progress to the metadata device: the regions copied so far (after a destination
    /// flush that covers their copies), and the clearing of intent bits whose writes have all
    /// landed (after a drain of the mirrored writes admitted before, and the same flush). With
    /// `quiesced` (no write in flight or waiting: postsuspend), every intent bit is cleared.
    ///
    /// The phase lock is held only to take the snapshot and to write the bitmaps, never across
    /// the drain and the flushes, which can take as long as the destination likes: a cancel, a
    /// failure or a switch decides meanwhile, and the commit then writes nothing (the phase's
    /// generation changed) or fails the migration (a destination failure).
    pub(crate) fn meta_commit(self: &Arc<Self>, quiesced: bool) {
        let Some(device) = &self.metadata else { return };
        let migration = &*self.migration;
        // One commit at a time; a cancel, a failure or a switch never waits for this lock.
        let mut snapshot = migration.commit_copied.lock();
        let Some(copied) = snapshot.as_mut() else {
            return;
        };
        // Pages for the snapshot's mixed parts (those the copy is in: a few), allocated here
        // where the thread may sleep, and one for a part the copier may enter meanwhile; the
        // snapshot's own pages from the last commit are used again. A part that finds none is
        // recorded as pending, for the next commit to record.
        let needed =
            (migration.shared.lock().tracker.pending_pages() + 1).saturating_sub(copied.pages());
        let mut pages = KVec::new();
        for _ in 0..needed {
            let Ok(page) = BitmapPage::new() else { break };
            if pages.push(Some(page), GFP_KERNEL).is_err() {
                break;
            }
        }
        let (epoch, writes_something, generation) = {
            let meta = migration.meta.lock();
            let Some(store) = meta.as_ref() else { return };
            let (epoch, clearing) = {
                let mut shared = migration.shared.lock();
                let Shared {
                    tracker, intent, ..
                } = &mut *shared;
                let Some(intent) = intent.as_mut() else {
                    return;
                };
                if !tracker.is_active() {
                    return;
                }
                tracker.snapshot_pending(copied, &mut || pages.iter_mut().find_map(Option::take));
                if quiesced {
                    intent.start_clear_all();
                } else {
                    intent.start_clear();
                }
                (migration.intent_epochs.flip(), intent.is_clearing())
            };
            // Outside the spinlock: the snapshot is this commit's, and the device's bitmap
            // changes only under the phase lock held here.
            let differs = store.copied_stale()
                || (0..copied.nr_words())
                    .any(|word| copied.complement_word(word) != store.disk_copied_word(word));
            (epoch, differs || clearing, store.generation())
        };
        drop(pages);
        // Also when there is nothing to write: a flip must be drained before the next one.
        self.drain_epochs(&migration.intent_epochs, epoch);
        if !writes_something {
            return;
        }
        // A phase decided meanwhile (a switch under way, a cancel, a failure) supersedes this
        // commit: it does not flush. (One decided right after this check may still see the
        // origin flushed: a failure of that flush is owed to the guest's next flush.)
        {
            let shared = migration.shared.lock();
            if !shared.tracker.is_active() || shared.tracker.is_switching() {
                return;
            }
        }
        // The origin too: what the copies read and the mirrored writes put there must not be
        // lost to its cache in a crash while the destination keeps it, or a clean region would
        // read differently after the switch. A failure is owed to the guest's next flush.
        if self.flush_origin().is_err() {
            pr_warn!(
                "{}: Flushing the origin failed; progress not committed\n",
                self.handle.device_name()
            );
            return;
        }
        // A failure of this flush is recorded by it, and found below.
        if self.flush_destination_for_commit().is_none() {
            return;
        }
        // Every destination flush that began before this one ended has recorded its failure:
        // a write-back error that one of them took instead of this flush is seen below.
        self.drain_dest_flushes();
        let mut meta = migration.meta.lock();
        // A mirrored write or a flush that missed the destination: its regions must stay
        // dirty, and the migration fails. A phase written meanwhile (a switch, a failure, a
        // cancel) supersedes the snapshot: nothing is written.
        match self.decide_locked(&mut meta, Request::Commit { seen: generation }) {
            Decision::Commit => {}
            decision => {
                drop(meta);
                if matches!(decision, Decision::Fail(_)) {
                    self.after_decision(decision);
                }
                return;
            }
        }
        let Some(store) = meta.as_mut() else { return };
        let nr_words = copied.nr_words();
        let mut result = store.write_bitmap(device, BitmapKind::Copied, &mut |words, out| {
            for (slot, word) in out.iter_mut().zip(words) {
                if word < nr_words {
                    *slot = copied.complement_word(word);
                }
            }
        });
        if result.is_ok() {
            if let Some(intent) = migration.shared.lock().intent.as_mut() {
                intent.cleared();
            }
            // As in `meta_send`: block by block, each under the spinlock; from the clear on,
            // bits are only added (wanted) until the next commit, which this one holds off.
            result = store.write_bitmap(device, BitmapKind::Intent, &mut |words, out| {
                self.fill_intent(words, out)
            });
        }
        if result.is_err() {
            self.fail_locked(meta, FailReason::MetadataWrite);
        }
    }

    /// Puts the intent bitmap's words `words` as the disk must have them now into `out`, under
    /// the spinlock (one hold for one bitmap block).
    fn fill_intent(&self, words: core::ops::Range<usize>, out: &mut [u64]) {
        let shared = self.migration.shared.lock();
        let nr_words = shared.tracker.nr_words();
        if let Some(intent) = shared.intent.as_ref() {
            for (slot, word) in out.iter_mut().zip(words) {
                if word < nr_words {
                    *slot = intent.on_disk_word(word);
                }
            }
        }
    }

    /// Gives the intent log the spare planes it wants, from where the metadata thread may
    /// sleep. Returns whether writes were waiting for planes and may now have them (given here,
    /// or given back by a commit's clear): the caller routes the waiting writes again. An
    /// allocation that fails is noted for [`Migrator::meta_wait`], which then waits a little
    /// before the next try instead of spinning.
    fn give_intent_planes(&self) -> bool {
        let migration = &*self.migration;
        loop {
            let wanted = migration
                .shared
                .lock()
                .intent
                .as_ref()
                .map_or(0, |i| i.spares_wanted());
            if wanted == 0 {
                migration.planes_short.store(false, Ordering::Relaxed);
                break;
            }
            let Ok(page) = BitmapPage::new() else {
                migration.planes_short.store(true, Ordering::Relaxed);
                break;
            };
            let mut shared = migration.shared.lock();
            let Some(intent) = shared.intent.as_mut() else {
                return false;
            };
            if intent.give(page).is_some() {
                break;
            }
        }
        migration
            .shared
            .lock()
            .intent
            .as_mut()
            .is_some_and(|i| i.end_starvation())
    }

    /// Sleeps up to `ms` milliseconds, or until a write waits for its intent, or the thread is
    /// asked to stop or park.
    pub(crate) fn meta_wait(&self, ms: u32) {
        let migration = &*self.migration;
        let shared = migration.shared.lock();
        let intent = shared.intent.as_ref();
        let starved = intent.is_some_and(|i| i.is_starved());
        // A write waits for its intent, or for planes (unless their allocation just failed:
        // then it is tried again in a while).
        let short = starved && migration.planes_short.load(Ordering::Relaxed);
        if shared.tracker.is_active() && intent.is_some_and(|i| i.has_wanted()) && !short {
            return;
        }
        let ms = if short { ms.min(PLANES_RETRY_MS) } else { ms };
        // Read under the lock that `dispatch` signals under: a write that waits from now on
        // ends the sleep.
        let seen = migration.meta_event.count();
        drop(shared);
        migration.meta_event.wait(seen, ms.max(1), true);
    }
}

/// How long the metadata thread waits before it tries again to allocate the intent log's
/// planes for a write that waits for them.
const PLANES_RETRY_MS: u32 = 10;

// SPDX-License-Identifier: GPL-2.0

//! The phase changes: failure, cancel and switch, each decided under the phase lock, and the
//! drains and flushes they wait for without it.

use super::*;

impl Migrator {
    /// Fails the migration for `reason`: everything stays on the origin. Process context. The
    /// first failure logs and raises the `failed` event; later ones change nothing.
    pub(crate) fn fail(self: &Arc<Self>, reason: FailReason) {
        self.fail_locked(self.migration.meta.lock(), reason);
    }

    /// Fails the migration for `reason` under the phase lock, which the caller holds (`meta`),
    /// and only then releases it. A path that found the failure under the lock must not let go
    /// of it first: a switch waiting for the lock, past its own checks, would take it and
    /// switch, and the failure would then find the migration ended and do nothing.
    pub(super) fn fail_locked(self: &Arc<Self>, mut meta: MetaGuard<'_>, reason: FailReason) {
        let decision = self.decide_locked(&mut meta, Request::Fail(reason));
        drop(meta);
        self.after_decision(decision);
    }

    /// The one place a phase changes: decides `request` (`engine::phase::decide`) under the
    /// phase lock, which the caller holds (`meta`), from the tracker's state, the destination's
    /// health and the phase's generation; and carries an end (a failure, a cancel) out under
    /// it: the phase is written to the metadata device first, so that after a crash the stale
    /// bitmaps are never trusted for writes that went to the origin alone, then the tracker
    /// ends. A phase that cannot be written is logged; the migration ends all the same
    /// (everything stays on the origin). A switch or a commit is the caller's to carry out,
    /// under the same lock. Events and the release of deferred writes come after the unlock
    /// ([`Migrator::after_decision`]).
    pub(super) fn decide_locked(&self, meta: &mut MetaGuard<'_>, request: Request) -> Decision {
        let decision = self.decide_now(meta, request);
        if matches!(decision, Decision::Fail(_) | Decision::Cancel) {
            // A failure ends the migration whether or not its phase is recorded: the
            // destination cannot be used. (`cancel` asks `end_locked` itself, to refuse.)
            let _ = self.end_locked(meta, decision, true);
        }
        decision
    }

    /// [`decide`] for `request`, under the phase lock, without carrying anything out.
    fn decide_now(&self, meta: &MetaGuard<'_>, request: Request) -> Decision {
        let migration = &*self.migration;
        let generation = meta.as_ref().map_or(0, |store| store.generation());
        let view = {
            let shared = migration.shared.lock();
            PhaseView {
                state: shared.tracker.state(),
                switching: shared.tracker.is_switching(),
            }
        };
        decide(view, &migration.health, generation, request)
    }

    /// Carries an end out under the phase lock: its phase written to the metadata device,
    /// then the tracker ended. A phase that cannot be written is logged; with `always` the
    /// migration ends all the same, otherwise nothing changes and the error is returned.
    fn end_locked(
        &self,
        meta: &mut MetaGuard<'_>,
        decision: Decision,
        always: bool,
    ) -> Result<(), MetadataError> {
        let (phase, reason) = match decision {
            Decision::Fail(reason) => (Phase::Failed, Some(reason)),
            Decision::Cancel => (Phase::Cancelled, None),
            _ => return Ok(()),
        };
        let mut result = Ok(());
        if let (Some(store), Some(device)) = (meta.as_mut(), &self.metadata) {
            if let Err(e) = store.write_phase(device, phase, reason) {
                if store.first_copy_written() {
                    // Copy 0 says it, with the higher generation: a load would act on it, so
                    // the target does too.
                    pr_err!(
                        "{}: Only one superblock copy records the {} phase\n",
                        self.handle.device_name(),
                        phase.as_str()
                    );
                } else {
                    pr_err!(
                        "{}: {}: the {} phase is not recorded\n",
                        self.handle.device_name(),
                        e.message().to_str().unwrap_or(""),
                        phase.as_str()
                    );
                    result = Err(e);
                }
            }
        }
        if result.is_err() && !always {
            return result;
        }
        let mut shared = self.migration.shared.lock();
        match reason {
            Some(reason) => shared.tracker.fail(reason),
            None => shared.tracker.cancel() == CancelOutcome::Cancelled,
        };
        result
    }

    /// What follows a decision once the phase lock is released: the log line and the event of
    /// an end, and the deferred writes sent on (to the device the migration ended on).
    pub(super) fn after_decision(self: &Arc<Self>, decision: Decision) {
        match decision {
            Decision::Fail(reason) => {
                pr_err!(
                    "{}: Migration failed ({}); staying on the origin\n",
                    self.handle.device_name(),
                    reason.as_str()
                );
                self.handle.raise_event(c"failed");
            }
            Decision::Cancel => {
                pr_info!(
                    "{}: Migration cancelled; staying on the origin\n",
                    self.handle.device_name()
                );
                self.handle.raise_event(c"cancelled");
            }
            Decision::Switch | Decision::Commit | Decision::AlreadySwitched | Decision::Nothing => {
            }
        }
        self.release_deferred();
    }

    /// Turns a failure the destination recorded into the failure of the migration.
    pub(crate) fn check_mirror_failure(self: &Arc<Self>) {
        if let Some(reason) = self.migration.dest_failure() {
            self.fail(reason);
        }
    }

    /// Cancels the migration (the `cancel` message): everything stays on the origin. Never
    /// waits for the destination: the phase lock is only held across metadata writes. A cancel
    /// that cannot be recorded on the metadata device is refused and the migration goes on (a
    /// crash would reload metadata that trusts regions the writes no longer reach); a failure
    /// the destination recorded first is carried out instead.
    pub(crate) fn cancel(self: &Arc<Self>) -> Result<(), MessageError> {
        let mut meta = self.migration.meta.lock();
        let decision = self.decide_now(&meta, Request::Cancel);
        let recorded = self.end_locked(&mut meta, decision, decision != Decision::Cancel);
        drop(meta);
        if recorded.is_err() && decision == Decision::Cancel {
            return Err(MessageError::CancelNotRecorded);
        }
        self.after_decision(decision);
        match decision {
            Decision::AlreadySwitched => Err(MessageError::AlreadySwitched),
            _ => Ok(()),
        }
    }

    /// Waits until every write counted in `epoch` has completed.
    pub(crate) fn drain(&self, epoch: Epoch) {
        self.drain_epochs(&self.migration.epochs, epoch);
    }

    /// Waits until every write counted in `epoch` of `epochs` has completed.
    pub(super) fn drain_epochs(&self, epochs: &WriteEpochs, epoch: Epoch) {
        let migration = &*self.migration;
        epochs.start_drain(epoch);
        loop {
            // The count is read before the check: the write that drains the epoch after the
            // check signals after it, and the wait returns at once.
            let seen = migration.drained_event.count();
            if epochs.is_drained(epoch) {
                break;
            }
            // Not stoppable: a stop or park request does not end a drain, the writes still
            // have to land.
            migration.drained_event.wait(seen, 0, false);
        }
        epochs.end_drain();
    }

    /// Flushes the origin for the target. A failure is owed to the guest's next flush of the
    /// origin (`Migration::owed_origin_flush_error`): this flush may have taken a write-back
    /// error of the guest's data.
    pub(super) fn flush_origin(&self) -> Result {
        let result = flush(&self.origin);
        if result.is_err() {
            self.migration
                .owed_origin_flush_error
                .store(true, Ordering::Release);
        }
        result
    }

    /// Flushes the destination for the target (the switch, the flush once in sync), counted
    /// in `dest_flushes` until its failure, if any, is recorded.
    pub(crate) fn flush_destination(&self) -> Result {
        let migration = &*self.migration;
        // Entered under the lock that a drain's flip is made under (`engine::epoch`).
        let counted = migration.shared.lock().flush_enter(&migration.dest_flushes);
        self.flush_destination_counted(counted)
    }

    /// [`Migrator::flush_destination`] for a commit: only while the migration is active and not
    /// switching, decided under the lock the flush is counted under. A switch that began
    /// before waits for no commit flush, and needs none; one that begins after drains this
    /// one and sees its failure. After the end, the destination is not this commit's to flush
    /// (a flush could take a write-back error of the guest's writes there after a switch).
    /// Returns `None` when it does not flush.
    pub(super) fn flush_destination_for_commit(&self) -> Option<Result> {
        let migration = &*self.migration;
        let counted = {
            let mut shared = migration.shared.lock();
            if !shared.tracker.is_active() || shared.tracker.is_switching() {
                return None;
            }
            shared.flush_enter(&migration.dest_flushes)
        };
        Some(self.flush_destination_counted(counted))
    }

    /// Flushes the destination, counted as `counted` in `dest_flushes`.
    pub(super) fn flush_destination_counted(&self, counted: Counted) -> Result {
        let migration = &*self.migration;
        let result = flush(&self.destination);
        if result.is_err() {
            migration.health.record_flush_failure();
            migration.copier_event.signal();
        }
        migration.dest_flushes_exit(counted);
        result
    }

    /// Waits until every destination flush that began before this call has completed and
    /// recorded its failure (see `Migration::dest_flushes`). Unbounded: never under the phase
    /// lock.
    pub(super) fn drain_dest_flushes(&self) {
        let migration = &*self.migration;
        let _one_drain = migration.dest_flush_drain.lock();
        let epoch = migration.shared.lock().flush_flip(&migration.dest_flushes);
        self.drain_epochs(&migration.dest_flushes, epoch);
    }

    /// Waits until no mirrored flush is in flight. Only the switch calls this, once it has
    /// begun: flushes are not counted from then on, so the wait ends.
    pub(super) fn drain_flushes(&self) {
        let migration = &*self.migration;
        loop {
            // As in `drain_epochs`: the count is read before the check.
            let seen = migration.drained_event.count();
            if migration.mirrored_flushes.load(Ordering::Acquire) == 0 {
                break;
            }
            migration.drained_event.wait(seen, 0, false);
        }
    }

    /// Switches all I/O to the destination, quiesced: new writes wait while every write in
    /// flight (mirrored ones included) and every mirrored flush completes, the destination is
    /// flushed, and no write or flush is known to have missed it; only then does anything go to
    /// the destination alone. A failure found on the way fails the migration instead.
    pub(crate) fn switch(self: &Arc<Self>) {
        let migration = &*self.migration;
        if !migration.shared.lock().tracker.begin_switch() {
            return;
        }
        loop {
            for epoch in Epoch::BOTH {
                self.drain(epoch);
            }
            self.drain_flushes();
            // What identifies the origin from now on, when nothing writes it any more (writes
            // are held, the copy is over); flushed first, so that the sample is what a crash
            // leaves there. The flush is made before the phase lock; the sample's few reads
            // need the store's buffer, and so the lock. A sample that cannot be taken is not
            // recorded (a load then checks none); a failed flush is owed to the guest's next
            // flush of the origin, in case the switch fails.
            let sample = match &self.metadata {
                Some(_) => self.flush_origin().ok().and_then(|()| {
                    let mut meta = migration.meta.lock();
                    meta.as_mut()
                        .and_then(|store| store.sample_origin(&self.origin).ok())
                }),
                None => None,
            };
            // A failure of this flush is recorded by it, and found below.
            let _ = self.flush_destination();
            // Every mirrored write and flush has ended by now, each after recording its
            // failure, and so has every other flush of the destination that began before this
            // one ended (one of them may have taken a write-back error this flush did not see).
            self.drain_dest_flushes();
            // The phase lock: `switched` is durable before anything goes to the destination
            // alone, and no failure or cancel slips in between.
            let mut meta = migration.meta.lock();
            // The decision, under the phase lock, before the switch takes effect: a failure
            // recorded by now wins (`decide`), and a cancel or failure carried out meanwhile
            // ended the switch. Nothing records one later: writes are held, flushes go to the
            // origin alone, the copy is this thread's, and a commit that had not flushed the
            // destination when this switch began does not (`flush_destination_for_commit`).
            match self.decide_locked(&mut meta, Request::Switch) {
                Decision::Switch => {}
                decision @ Decision::Fail(_) => {
                    drop(meta);
                    return self.after_decision(decision);
                }
                _ => {
                    drop(meta);
                    if migration.shared.lock().tracker.is_switching() {
                        // Never while the switch holds writes (Synced cannot be left while
                        // active): look again rather than hold them for good.
                        continue;
                    }
                    // Cancelled or failed meanwhile: the deferred writes go to the origin.
                    return self.release_deferred();
                }
            }
            if let (Some(store), Some(device)) = (meta.as_mut(), &self.metadata) {
                store.set_origin_sample(sample);
                if store.write_phase(device, Phase::Switched, None).is_err() {
                    if !store.first_copy_written() {
                        return self.fail_locked(meta, FailReason::MetadataWrite);
                    }
                    // Copy 0 says switched, with the higher generation: a load would act on
                    // it, so the target must too (the destination is complete: drained,
                    // flushed). Failing to the origin would strand the writes from now on.
                    pr_err!(
                        "{}: Only one superblock copy records the switch; switching\n",
                        self.handle.device_name()
                    );
                }
            }
            let mut shared = migration.shared.lock();
            let switched = shared.tracker.switch(&migration.epochs);
            drop(meta);
            if switched {
                migration.final_route.store(FINAL_DEST, Ordering::Release);
                drop(shared);
                pr_info!(
                    "{}: Switched to the destination\n",
                    self.handle.device_name()
                );
                self.handle.raise_event(c"switched");
                return self.release_deferred();
            }
            if !shared.tracker.is_switching() {
                // Cancelled or failed meanwhile: the deferred writes go to the origin.
                drop(shared);
                return self.release_deferred();
            }
            // Writes are deferred while switching, so none can be counted now; this only
            // guards the tracker's refusal against a lost drain.
        }
    }
}

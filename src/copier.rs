// SPDX-License-Identifier: GPL-2.0

//! The copier thread: a pipeline of batches driven by their completions. Each slot of the
//! pipeline holds one batch and moves it on as soon as its I/O is done: read from the origin,
//! then write to the destination (or, for a chunk that read as zeros, write-zeroes), chunk by
//! chunk for a batch longer than the slot's buffer, and then the batch is recorded and the
//! writes deferred behind it go on, while the other slots' reads and writes are in flight. A
//! free slot takes a new batch at once, within the rate the controller allows. Once everything
//! is copied, the copier switches.
//!
//! The thread sleeps on the migration's copier event whenever it has nothing to do: a batch's
//! last completion signals it, as do messages and failed mirrored writes; a timeout is set only
//! when the rate holds the next batch back, or a failed read waits for its retry.

use crate::dm::copy::{CopyOp, IoBatch};
use crate::dm::kthread::{self, ThreadContext, ThreadMain};
use crate::dm::memalloc::noio_scope;
use crate::engine::state::{FailReason, State};
use crate::engine::throttle::{GuestLoad, Pacer, RateController, RateMeter, TICK_NS};
use crate::engine::tracker::{AfterBatch, Batch, CopyResult};
use crate::engine::SECTOR_SIZE;
use crate::migration::{BitmapPage, Migrator};
use core::sync::atomic::Ordering;
use kernel::prelude::*;
use kernel::sync::Arc;

/// The size of one copy I/O: contiguous regions are batched up to this (512 KiB).
const BATCH_BYTES: u64 = 512 * 1024;

/// Pages of the pending bitmap the copier keeps at hand: a batch reaches into two of them at
/// most (a page holds 32768 regions, a batch 512 KiB of them), and a round that needs more ends
/// early, the next one going on with a refilled pool.
const BITMAP_POOL: usize = 4;

/// How long the copier waits for memory when its pool of bitmap pages could not be refilled.
const PAGE_RETRY_MS: u32 = 100;

/// The copier of one target, run by a [`crate::dm::kthread::KThread`] between resume and
/// suspend.
pub(crate) struct CopierThread {
    pub(crate) migrator: Arc<Migrator>,
}

/// What a slot's I/O in flight does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Read,
    Write,
    WriteZeroes,
}

/// A batch in a slot, and how far its copy got.
struct Job {
    batch: Batch,
    /// Bytes of the batch on the destination so far.
    done: u64,
    /// The length of the chunk in flight.
    len: usize,
    step: Step,
    /// How the job ends, once its I/O in flight is over, after a failure.
    failed: Option<CopyResult>,
    /// Bytes written as write-zeroes.
    zeroed: u64,
}

impl Job {
    fn bytes(&self) -> u64 {
        (self.batch.sectors.end - self.batch.sectors.start) * SECTOR_SIZE
    }

    /// The sector of the chunk in flight.
    fn sector(&self) -> u64 {
        self.batch.sectors.start + self.done / SECTOR_SIZE
    }
}

/// A buffer with its I/O, and the batch it copies, if any.
struct Slot<'a> {
    io: IoBatch<'a>,
    job: Option<Job>,
}

/// The copier's state between its steps.
struct Copier<'a> {
    migrator: &'a Arc<Migrator>,
    slots: KVec<Slot<'a>>,
    /// Pages for the pending bitmap, allocated here, where the copier may sleep, and handed to
    /// the tracker under its spinlock when a batch reaches a part of the bitmap with none.
    pages: [Option<BitmapPage>; BITMAP_POOL],
    /// The most regions a batch takes.
    max_regions: u64,
    /// The size of a slot's buffer.
    buffer_bytes: usize,
    meter: RateMeter,
    pacer: Pacer,
    controller: RateController,
    /// The guest's counters at the last controller tick.
    last_completed: u64,
    last_latency_ns: u64,
    next_tick_ns: u64,
    retry_at_ns: u64,
    synced_flushed: bool,
}

impl ThreadMain for CopierThread {
    fn thread_main(&self, thread: &ThreadContext) {
        // Guest writes can wait for this thread (a copy, an intent bit): an allocation of its
        // that reclaimed by writing back through the migrating device could wait on itself.
        // Like kcopyd's GFP_NOIO, every allocation of the thread's life avoids I/O.
        noio_scope(|| self.run(thread));
    }
}

impl CopierThread {
    /// The thread's life, in its no-I/O scope.
    fn run(&self, thread: &ThreadContext) {
        let migrator = &self.migrator;
        let region_bytes = migrator.geometry.region_sectors * SECTOR_SIZE;
        let max_regions = (BATCH_BYTES / region_bytes).max(1);
        let now = kthread::now_ns();
        // A batch is one region when regions are larger than BATCH_BYTES; it is then copied
        // through the buffer in pieces.
        let mut copier = Copier {
            migrator,
            slots: KVec::new(),
            pages: Default::default(),
            max_regions,
            buffer_bytes: (max_regions * region_bytes).min(BATCH_BYTES) as usize,
            meter: RateMeter::new(now),
            pacer: Pacer::new(),
            controller: RateController::new(
                migrator.min_rate_kibps.load(Ordering::Relaxed),
                migrator.max_rate_kibps.load(Ordering::Relaxed),
            ),
            last_completed: 0,
            last_latency_ns: 0,
            next_tick_ns: now,
            retry_at_ns: 0,
            synced_flushed: false,
        };
        let event = &migrator.migration.copier_event;
        loop {
            // Read before looking for work: a signal from here on ends the sleep below.
            let seen = event.count();
            let in_flight = copier.in_flight();
            // A stop or park request is carried out with no batch in flight: the writes
            // deferred behind a batch go on only once it has landed.
            if in_flight == 0 && thread.should_stop() {
                break;
            }
            let mut progressed = copier.advance();
            migrator.check_mirror_failure();
            if copier.in_flight() == 0 && copier.control() {
                continue;
            }
            let now = kthread::now_ns();
            copier.tick(now);
            let mut timeout_ms = 0;
            if !thread.stop_requested() {
                match copier.start(now) {
                    Start::Started => progressed = true,
                    Start::Nothing => {}
                    Start::WaitMs(ms) => timeout_ms = ms,
                    Start::OutOfMemory => {
                        migrator.fail(FailReason::OutOfMemory);
                    }
                }
            }
            if progressed {
                // On a device that completes in the submitter (a ram disk), the copier never
                // sleeps.
                kthread::cond_resched();
                continue;
            }
            if copier.in_flight() == 0 && timeout_ms == 0 {
                // Nothing to copy until something changes: no rate to report meanwhile.
                copier.meter.restart(now);
                migrator.measured_kibps.store(0, Ordering::Relaxed);
            }
            event.wait(seen, timeout_ms, copier.in_flight() == 0);
        }
    }
}

/// What [`Copier::start`] did.
enum Start {
    /// Batches went out.
    Started,
    /// Nothing to start: nothing to copy now, or every slot busy.
    Nothing,
    /// The rate or a retry holds the next batch back this long.
    WaitMs(u32),
    /// Not even one buffer could be allocated.
    OutOfMemory,
}

impl Copier<'_> {
    /// Batches in flight.
    fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.job.is_some()).count()
    }

    /// The actions taken with no batch in flight: the switch once all is copied, and the
    /// flush once in sync. Returns whether the loop should look again at once.
    fn control(&mut self) -> bool {
        let migrator = self.migrator;
        let (should_switch, synced) = {
            let shared = migrator.migration.shared.lock();
            (
                shared.tracker.should_switch(),
                shared.tracker.state() == State::Synced,
            )
        };
        if should_switch {
            migrator.switch();
            return true;
        }
        // In sync and told to wait (`no_switch`): userspace may swap to the destination at any
        // time, so what the copy wrote there is made durable once.
        if synced && !self.synced_flushed {
            self.synced_flushed = true;
            if migrator.flush_destination().is_err() {
                migrator.fail(FailReason::DestinationFlush);
            }
        }
        self.synced_flushed &= synced;
        false
    }

    /// Hands the controller the guest's load of the intervals since its last tick, and
    /// publishes the limit and the measured rate.
    fn tick(&mut self, now: u64) {
        let migrator = self.migrator;
        let (min, max) = (
            migrator.min_rate_kibps.load(Ordering::Relaxed),
            migrator.max_rate_kibps.load(Ordering::Relaxed),
        );
        self.controller.set_bounds(min, max);
        migrator
            .measured_kibps
            .store(self.meter.kibps(now), Ordering::Relaxed);
        if now < self.next_tick_ns {
            return;
        }
        self.next_tick_ns = now + TICK_NS;
        let guest = migrator.migration.guest_load();
        let load = GuestLoad {
            completed: guest.completed - self.last_completed,
            latency_ns: guest.latency_ns - self.last_latency_ns,
            in_flight: guest.in_flight,
        };
        self.last_completed = guest.completed;
        self.last_latency_ns = guest.latency_ns;
        let limit = self.controller.tick(load);
        migrator.rate_limit_kibps.store(limit, Ordering::Relaxed);
    }

    /// Starts batches in free slots, as many as the copy depth and the rate allow.
    fn start(&mut self, now: u64) -> Start {
        let migrator = self.migrator;
        let migration = &*migrator.migration;
        if now < self.retry_at_ns {
            return Start::WaitMs(ms_until(self.retry_at_ns, now));
        }
        // A failed mirrored write is carried out first (`check_mirror_failure`), with no new
        // batch in its way.
        if migration.dest_failure().is_some() {
            return Start::Nothing;
        }
        let limit = self.controller.limit_kibps();
        if let Some(wait_ns) = self.pacer.wait_ns(limit, now) {
            // Wake at the next controller tick at the latest: the guest may have gone idle.
            let wait_ns = wait_ns.min(self.next_tick_ns.saturating_sub(now).max(1));
            return Start::WaitMs(ms_until(now + wait_ns, now));
        }
        let configured = migrator.depth.load(Ordering::Relaxed);
        let depth = self
            .controller
            .copy_depth((configured != 0).then_some(configured)) as usize;
        while self.slots.len() < depth {
            let Ok(io) = IoBatch::new(self.buffer_bytes, migration.copier_event.clone()) else {
                break;
            };
            if self.slots.push(Slot { io, job: None }, GFP_KERNEL).is_err() {
                break;
            }
        }
        if self.slots.is_empty() {
            return Start::OutOfMemory;
        }
        let usable = depth.min(self.slots.len());
        let free = self.slots[..usable]
            .iter()
            .filter(|s| s.job.is_none())
            .count();
        // Under a limit too, every free slot takes a batch (a round of `copy_depth` batches
        // at the start): the pacer spaces the rounds by what they cost.
        if free == 0 {
            return Start::Nothing;
        }
        for page in self.pages.iter_mut().filter(|p| p.is_none()) {
            *page = BitmapPage::new().ok();
        }
        // With a full pool a batch always finds its pages (it reaches into two at most).
        let pool_short = self.pages.iter().any(Option::is_none);
        let pages = &mut self.pages;
        let round = migration.shared.lock().tracker.start_round(
            free,
            self.max_regions,
            migration.epochs(),
            &mut || pages.iter_mut().find_map(Option::take),
        );
        let Some(round) = round else {
            // Nothing to copy now, or no page for what there is: memory is short, and is
            // tried again soon (nothing else would wake the copier).
            return if pool_short {
                Start::WaitMs(PAGE_RETRY_MS)
            } else {
                Start::Nothing
            };
        };
        // The writes routed to these regions before the round have to land before the reads.
        migrator.drain(round.drain);
        let mut slots = self.slots[..usable].iter_mut().filter(|s| s.job.is_none());
        for batch in round.batches() {
            let Some(slot) = slots.next() else {
                // Never: the round took at most as many batches as there are free slots.
                migration
                    .shared
                    .lock()
                    .tracker
                    .batch_done(batch, CopyResult::ReadError);
                continue;
            };
            let mut job = Job {
                batch: batch.clone(),
                done: 0,
                len: 0,
                step: Step::Read,
                failed: None,
                zeroed: 0,
            };
            self.pacer.add(job.bytes(), limit, now);
            job.len = job.bytes().min(slot.io.len() as u64) as usize;
            if slot
                .io
                .submit(
                    &migrator.origin,
                    job.sector(),
                    job.len,
                    CopyOp::Read,
                    &migrator.bios,
                )
                .is_err()
            {
                job.failed = Some(CopyResult::ReadError);
            }
            slot.job = Some(job);
        }
        Start::Started
    }

    /// Moves every slot whose I/O is done on to its next step. Returns whether any was.
    fn advance(&mut self) -> bool {
        let mut progressed = false;
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if slot.job.is_none() || !slot.io.is_done() {
                continue;
            }
            progressed = true;
            let ok = slot.io.wait().is_ok();
            let Some(mut job) = slot.job.take() else {
                continue;
            };
            if let Some(result) = self.step(i, &mut job, ok) {
                self.finish(job, result);
            } else {
                self.slots[i].job = Some(job);
            }
        }
        progressed
    }

    /// Submits the next I/O of `job` in slot `i`, whose last I/O ended (`ok`), or returns how
    /// the job ended.
    fn step(&mut self, i: usize, job: &mut Job, ok: bool) -> Option<CopyResult> {
        let migrator = self.migrator;
        if let Some(result) = job.failed {
            return Some(result);
        }
        let io = &mut self.slots[i].io;
        let (device, op) = match (job.step, ok) {
            (Step::Read, false) => return Some(CopyResult::ReadError),
            (Step::Write, false) => return Some(CopyResult::WriteError),
            (Step::WriteZeroes, false) => {
                // The destination refused write-zeroes after all (a table of it reloaded, a
                // device that claims more than it does): the buffer still holds the zeros
                // read, so they go as data, and so does every later chunk.
                migrator.skip_zeroes.store(false, Ordering::Relaxed);
                (&migrator.destination, Step::Write)
            }
            (Step::Read, true) => {
                let zeroes = migrator.skip_zeroes.load(Ordering::Relaxed) && io.is_zero(job.len);
                let step = if zeroes {
                    Step::WriteZeroes
                } else {
                    Step::Write
                };
                (&migrator.destination, step)
            }
            (Step::Write | Step::WriteZeroes, true) => {
                if job.step == Step::WriteZeroes {
                    job.zeroed += job.len as u64;
                }
                job.done += job.len as u64;
                if job.done >= job.bytes() {
                    return Some(CopyResult::Done);
                }
                job.len = (job.bytes() - job.done).min(io.len() as u64) as usize;
                (&migrator.origin, Step::Read)
            }
        };
        job.step = op;
        let (copy_op, error) = match op {
            Step::Read => (CopyOp::Read, CopyResult::ReadError),
            Step::Write => (CopyOp::Write, CopyResult::WriteError),
            Step::WriteZeroes => (CopyOp::WriteZeroes, CopyResult::WriteError),
        };
        if io
            .submit(device, job.sector(), job.len, copy_op, &migrator.bios)
            .is_err()
        {
            // What was submitted is waited for; the job ends then.
            job.failed = Some(error);
        }
        None
    }

    /// Records how a job ended, and lets the writes deferred behind its batch go on.
    fn finish(&mut self, job: Job, result: CopyResult) {
        let migrator = self.migrator;
        let migration = &*migrator.migration;
        let (after, retry_ms) = {
            let mut shared = migration.shared.lock();
            let after = shared.tracker.batch_done(&job.batch, result);
            (after, shared.tracker.retry_delay_ms())
        };
        if result == CopyResult::Done {
            self.meter.add(job.bytes());
            migration
                .zeroed_bytes
                .fetch_add(job.zeroed, Ordering::Relaxed);
        }
        if retry_ms > 0 {
            self.retry_at_ns = kthread::now_ns() + u64::from(retry_ms) * 1_000_000;
        }
        match after {
            // `fail` releases every deferred write, to the origin.
            AfterBatch::Fail(reason) => migrator.fail(reason),
            _ => migrator.release_deferred(),
        }
    }
}

/// Milliseconds from `now` to `at`, rounded up, at least 1.
fn ms_until(at: u64, now: u64) -> u32 {
    at.saturating_sub(now)
        .div_ceil(1_000_000)
        .clamp(1, u64::from(u32::MAX)) as u32
}

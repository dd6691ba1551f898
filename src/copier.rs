// SPDX-License-Identifier: GPL-2.0

//! The copier thread: takes rounds of batches from the tracker, waits for the writes routed
//! before each round, copies the batches from the origin to the destination, and switches once
//! everything is copied.

// Safe Rust only: the binding layer (`crate::dm`) is the one place allowed `unsafe_code`.
#![deny(unsafe_code)]

use crate::dm::copy::{flush, IoBatch};
use crate::dm::kthread::{self, ThreadContext, ThreadMain};
use crate::engine::state::{FailReason, State};
use crate::engine::SECTOR_SIZE;
use crate::engine::throttle::{RateMeter, Throttle};
use crate::engine::tracker::{AfterBatch, Batch, CopyResult, Round, MAX_DEPTH};
use crate::migration::Engine;
use core::sync::atomic::Ordering;
use kernel::prelude::*;
use kernel::sync::Arc;

/// The size of one copy I/O: contiguous regions are batched up to this (512 KiB).
const BATCH_BYTES: u64 = 512 * 1024;

/// How long the copier sleeps when it has nothing to do, in milliseconds.
const IDLE_MS: u32 = 50;

/// The longest single sleep while waiting for a retry, so that a stop is seen soon.
const MAX_SLEEP_MS: u64 = 100;

/// The copier of one target, run by a [`crate::dm::kthread::KThread`] between resume and
/// suspend.
pub(crate) struct CopierThread {
    pub(crate) engine: Arc<Engine>,
}

impl ThreadMain for CopierThread {
    fn thread_main(&self, thread: &ThreadContext) {
        let engine = &self.engine;
        let migration = &*engine.migration;
        let region_bytes = engine.geometry.region_sectors * SECTOR_SIZE;
        let max_regions = (BATCH_BYTES / region_bytes).max(1);
        // A batch is one region when regions are larger than BATCH_BYTES; it is then copied
        // through the buffer in pieces (see `copy_round`).
        let buffer_bytes = (max_regions * region_bytes).min(BATCH_BYTES) as usize;
        // One per batch slot of a round: the buffer its data passes through, and its bios.
        let mut slots: KVec<IoBatch> = KVec::new();
        let mut meter = RateMeter::new(kthread::now_ns());
        let mut throttle = Throttle::new();
        let mut retry_at_ns = 0;
        let mut synced_flushed = false;
        while !thread.should_stop() {
            engine.check_mirror_failure();
            let (should_switch, synced) = {
                let shared = migration.shared.lock();
                let synced = shared.tracker.state() == State::Synced;
                (shared.tracker.should_switch(), synced)
            };
            if should_switch {
                engine.switch();
                continue;
            }
            // In sync and told to wait (`no_switch`): userspace may swap to the destination
            // at any time, so what the copy wrote there is made durable once.
            if synced && !synced_flushed {
                synced_flushed = true;
                if flush(&engine.destination).is_err() {
                    engine.fail(FailReason::DestinationFlush);
                }
            }
            synced_flushed &= synced;
            let now = kthread::now_ns();
            engine
                .measured_kibps
                .store(meter.kibps(now), Ordering::Relaxed);
            if now < retry_at_ns {
                let ms = ((retry_at_ns - now) / 1_000_000).clamp(1, MAX_SLEEP_MS);
                thread.sleep_ms(ms as u32);
                continue;
            }
            if let Some(wait_ms) = throttle.wait_ms(engine.rate_kibps.load(Ordering::Relaxed), now)
            {
                thread.sleep_ms(wait_ms);
                continue;
            }
            let depth = engine.depth.load(Ordering::Relaxed) as usize;
            while slots.len() < depth {
                match IoBatch::new(buffer_bytes) {
                    Ok(slot) => {
                        if slots.push(slot, GFP_KERNEL).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            if slots.is_empty() {
                return self.wait_for_stop(thread, FailReason::OutOfMemory);
            }
            let depth = depth.min(slots.len()).max(1);
            let round =
                migration
                    .shared
                    .lock()
                    .tracker
                    .start_round(depth, max_regions, migration.epochs());
            let Some(round) = round else {
                thread.sleep_ms(IDLE_MS);
                continue;
            };
            engine.drain(round.drain);
            let mut failure = None;
            let mut copied = 0;
            // Each batch is recorded once its last write was waited for (in slot order), and
            // the writes deferred behind it go on then instead of after the whole round. (A
            // copier driven by completions, batch by batch, is issue 11's pipeline.)
            copy_round(engine, &round, &mut slots[..depth], |batch, result| {
                let after = migration.shared.lock().tracker.batch_done(batch, result);
                if let AfterBatch::Fail(reason) = after {
                    failure.get_or_insert(reason);
                }
                if result == CopyResult::Done {
                    copied += (batch.sectors.end - batch.sectors.start) * SECTOR_SIZE;
                }
                // After a failure everything is released at once, by `Engine::fail`.
                if failure.is_none() {
                    engine.release_deferred();
                }
            });
            let retry_ms = migration.shared.lock().tracker.retry_delay_ms();
            if retry_ms > 0 {
                retry_at_ns = kthread::now_ns() + u64::from(retry_ms) * 1_000_000;
            }
            meter.add(copied);
            throttle.add(copied);
            if let Some(reason) = failure {
                engine.fail(reason);
            }
            // On a device that completes in the submitter (a ram disk), a round never sleeps.
            kthread::cond_resched();
        }
    }
}

impl CopierThread {
    /// Fails the migration and idles until stopped; the thread must not exit on its own.
    fn wait_for_stop(&self, thread: &ThreadContext, reason: FailReason) {
        self.engine.fail(reason);
        while !thread.should_stop() {
            thread.sleep_ms(1000);
        }
    }
}

/// Copies the batches of a round: reads them all from the origin, then writes those read to
/// the destination, one buffer's worth of each batch at a time, and calls `landed` once per
/// batch with how it ended once its last write (or its first failure) was waited for; slots
/// are waited for in order, so a batch that landed early waits for the slots before it. A batch
/// is longer than its buffer only when a region is (regions above [`BATCH_BYTES`]); the buffers
/// stay small whatever the region size.
fn copy_round(
    engine: &Engine,
    round: &Round,
    slots: &mut [IoBatch],
    mut landed: impl FnMut(&Batch, CopyResult),
) {
    let mut results = [CopyResult::Done; MAX_DEPTH];
    let mut reported = [false; MAX_DEPTH];
    let bytes_of = |sectors: &core::ops::Range<u64>| (sectors.end - sectors.start) * SECTOR_SIZE;
    let longest = round
        .batches()
        .map(|b| bytes_of(&b.sectors))
        .max()
        .unwrap_or(0);
    // Every buffer has the same size; none at all fails every batch (they are retried).
    let chunk = slots.first().map_or(0, |s| s.len() as u64);
    if chunk == 0 {
        results = [CopyResult::ReadError; MAX_DEPTH];
    }
    let mut offset = 0;
    while chunk > 0 && offset < longest {
        for (write, device, error) in [
            (false, &engine.origin, CopyResult::ReadError),
            (true, &engine.destination, CopyResult::WriteError),
        ] {
            for ((batch, slot), result) in
                round.batches.iter().zip(slots.iter_mut()).zip(&mut results)
            {
                let Some(batch) = batch else { continue };
                let left = bytes_of(&batch.sectors).saturating_sub(offset);
                if left == 0 || *result != CopyResult::Done {
                    continue;
                }
                let len = left.min(chunk) as usize;
                let sector = batch.sectors.start + offset / SECTOR_SIZE;
                if slot
                    .submit(device, sector, len, write, &engine.bios)
                    .is_err()
                {
                    *result = error;
                }
            }
            // Every slot is waited for, also one whose submission failed half-way; in slot
            // order, so the first batches of a round are reported first.
            for (i, (slot, batch)) in slots.iter_mut().zip(round.batches.iter()).enumerate() {
                if !slot.wait().is_ok() && results[i] == CopyResult::Done {
                    results[i] = error;
                }
                let Some(batch) = batch else { continue };
                let finished = results[i] != CopyResult::Done
                    || (write && offset + chunk >= bytes_of(&batch.sectors));
                if finished && !reported[i] {
                    reported[i] = true;
                    landed(batch, results[i]);
                }
            }
        }
        offset += chunk;
    }
    for (i, batch) in round.batches.iter().enumerate() {
        if let Some(batch) = batch {
            if !reported[i] {
                landed(batch, results[i]);
            }
        }
    }
}

// SPDX-License-Identifier: GPL-2.0

//! Region tracking and the routing of every I/O: the decisions of a live migration.
//!
//! The target is cut into regions. One bit per region says whether it still has to be copied
//! (*pending*). The copier takes runs of pending regions as *batches*; while a batch is in flight
//! its regions are *copying*, and once it lands they are *copied*. Every bio is routed by the
//! state of the regions it touches:
//!
//! | I/O                            | pending only | any copying | otherwise (some copied) |
//! |--------------------------------|--------------|-------------|-------------------------|
//! | read                           | origin       | origin      | origin                  |
//! | write, discard, write-zeroes   | origin       | defer       | both                    |
//! | empty flush                    | both         | both        | both                    |
//!
//! A write to a region being copied is *deferred* until the batch lands, then routed again (it
//! then goes to both). Waiting, rather than marking the region to copy again, is what makes the
//! copy converge in one pass whatever the guest writes: a region is copied exactly once. Writing a
//! pending region on the destination too (when the same bio also touches a copied one) is
//! harmless, because that region's copy later reads the origin, which has the write.
//!
//! The copier must read a batch only after every write that was routed before the batch was taken
//! has completed on the origin: [`Tracker::start_round`] takes the batches of a round and flips the
//! write epochs ([`super::epoch`]) in one step, and hands back the epoch to drain.
//!
//! The switch is quiesced: [`Tracker::begin_switch`] defers every new write, the kernel drains
//! both epochs (every write in flight, mirrored ones included), checks that no destination write
//! failed, flushes the destination, and only then [`Tracker::switch`]es. After the switch
//! everything goes to the destination; after a failure or a cancel, everything goes to the
//! origin.

use super::bitmap::{self, Chunk, ChunkedBitmap};
use super::epoch::{Epoch, WriteEpochs};
use super::state::{FailReason, Progress, State};
use core::ops::{DerefMut, Range};

/// The most batches in flight at once (`copy_depth`).
pub const MAX_DEPTH: usize = 16;

/// Where a bio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the origin only.
    Origin,
    /// To the destination only.
    Destination,
    /// To both devices; the bio completes when both have, and only the origin's result counts.
    Both,
    /// Held back until the copy of a region it touches lands, then routed again.
    Defer,
}

/// What a bio does to the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    /// Reads data.
    Read,
    /// Writes, discards or zeroes a range: anything that changes the data.
    Write,
    /// An empty flush (a pre-flush of a write arrives as its own empty flush).
    Flush,
}

/// A run of regions the copier copies with one read and one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The regions, first included, last excluded.
    pub regions: Range<u64>,
    /// The same run in sectors, clipped to the target's end.
    pub sectors: Range<u64>,
}

/// How a batch copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyResult {
    /// Read from the origin and written to the destination.
    Done,
    /// Reading the origin failed.
    ReadError,
    /// Writing the destination failed.
    WriteError,
}

/// What the copier should do after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterBatch {
    /// Go on.
    Continue,
    /// Try the same batch again (an origin read error, not yet retried too often), after
    /// [`Tracker::retry_delay_ms`].
    Retry,
    /// The migration must fail for this reason: the caller fails it (one transition, one
    /// event), so that every failure goes through the same place.
    Fail(FailReason),
}

/// How often the origin read of a batch is retried before the migration fails.
pub const READ_RETRIES: u32 = 4;

/// The wait before the first retry of a failed origin read, doubled for each further one
/// (0.5, 1, 2 and 4 s): a device that fails for a moment (a path failover, a transient media
/// error) gets several seconds to recover before the migration gives up.
pub const RETRY_DELAY_MS: u32 = 500;

/// The batches of one copier round, and the write epoch to drain before reading them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Round {
    /// The batches, in the order they were taken; `None` past the last one.
    pub batches: [Option<Batch>; MAX_DEPTH],
    /// Every write counted in this epoch must complete before the batches are read.
    pub drain: Epoch,
}

impl Round {
    /// The batches of the round.
    pub fn batches(&self) -> impl Iterator<Item = &Batch> {
        self.batches.iter().flatten()
    }
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The migration was active and is now cancelled.
    Cancelled,
    /// The migration had already failed or been cancelled; nothing changed.
    AlreadyEnded,
    /// The migration has switched; there is nothing to cancel.
    Switched,
}

/// What a new target took over from the target it replaces in a table reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// The copy goes on where it was: copied regions stay copied.
    Continued,
    /// The old target had switched: the new one is switched from its first bio.
    Switched,
    /// The old target had failed or been cancelled, or its regions differ: the copy starts over
    /// from the origin, which holds every write.
    StartedOver,
}

/// The migration's bookkeeping. The pending bitmap, one bit per region, is a
/// [`ChunkedBitmap`]: `C` its array of chunks and `P` a page of bits, both allocated by the
/// caller.
pub struct Tracker<C, P> {
    pending: ChunkedBitmap<C, P>,
    nr_regions: u64,
    region_sectors: u64,
    target_sectors: u64,
    inflight: [Option<Range<u64>>; MAX_DEPTH],
    nr_inflight: u64,
    cursor: u64,
    state: State,
    no_switch: bool,
    paused: bool,
    /// Set by [`Tracker::begin_switch`]: new writes wait while the switch drains and flushes.
    switching: bool,
    /// Origin read failures of batches being retried, by their first region, and how many.
    read_failures: [Option<(u64, u32)>; MAX_DEPTH],
    copied_bytes: u64,
    errors: u64,
}

/// The number of `u64` words a bitmap of `nr_regions` bits takes.
pub fn bitmap_words(nr_regions: u64) -> u64 {
    nr_regions.div_ceil(64)
}

/// The number of chunks the pending bitmap of `target_sectors` in regions of `region_sectors`
/// takes at `chunk_words` words per chunk (see [`Tracker::new`]).
pub fn pending_chunks(target_sectors: u64, region_sectors: u64, chunk_words: usize) -> u64 {
    bitmap::nr_chunks(target_sectors.div_ceil(region_sectors.max(1)), chunk_words)
}

impl<C, P> Tracker<C, P>
where
    C: DerefMut<Target = [Chunk<P>]>,
    P: DerefMut<Target = [u64]>,
{
    /// Starts a migration with every region pending. `chunks` has [`pending_chunks`] entries of
    /// `chunk_words` words each (a power of two); returns `None` when it has not, or the regions
    /// are not a power of two, or their number does not fit this machine's words.
    pub fn new(
        chunks: C,
        chunk_words: usize,
        target_sectors: u64,
        region_sectors: u64,
        no_switch: bool,
    ) -> Option<Self> {
        if region_sectors == 0 || !region_sectors.is_power_of_two() {
            return None;
        }
        let nr_regions = target_sectors.div_ceil(region_sectors);
        // Word indexes are `usize`.
        usize::try_from(bitmap_words(nr_regions)).ok()?;
        let pending = ChunkedBitmap::new(chunks, chunk_words, nr_regions)?;
        let mut tracker = Self {
            pending,
            nr_regions,
            region_sectors,
            target_sectors,
            inflight: Default::default(),
            nr_inflight: 0,
            cursor: 0,
            state: State::Copying,
            no_switch,
            paused: false,
            switching: false,
            read_failures: [None; MAX_DEPTH],
            copied_bytes: 0,
            errors: 0,
        };
        tracker.settle();
        Some(tracker)
    }

    /// Whether `region` still has to be copied (in flight included).
    pub fn is_pending(&self, region: u64) -> bool {
        self.pending.get(region)
    }

    /// The number of regions still to copy (in flight included).
    fn nr_pending(&self) -> u64 {
        self.pending.count()
    }

    /// Records `region` as copied. Its chunk has a page: `next_batch` gave it one before the
    /// batch was taken (a region without one would stay pending, to be copied again).
    fn clear_pending(&mut self, region: u64) {
        self.pending.clear(region);
    }

    /// Whether every region in `regions` is pending, a word at a time.
    fn all_pending(&self, regions: Range<u64>) -> bool {
        self.pending.all_set(regions)
    }

    fn is_inflight(&self, regions: &Range<u64>) -> bool {
        self.inflight
            .iter()
            .flatten()
            .any(|r| r.start < regions.end && regions.start < r.end)
    }

    /// The regions a sector range touches; empty for an empty range.
    pub fn regions_of(&self, sector: u64, sectors: u64) -> Range<u64> {
        if sectors == 0 {
            return 0..0;
        }
        let first = sector / self.region_sectors;
        let last = sector.saturating_add(sectors - 1) / self.region_sectors;
        first..(last + 1).min(self.nr_regions)
    }

    /// Whether the migration still mirrors writes (it has neither switched nor stopped).
    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Copying | State::Synced)
    }

    /// Decides where a bio of `kind` over `sectors` sectors from `sector` (relative to the
    /// target) goes.
    pub fn route(&self, kind: IoKind, sector: u64, sectors: u64) -> Route {
        match self.state {
            State::Switched => return Route::Destination,
            State::Failed(_) | State::Cancelled => return Route::Origin,
            State::Copying | State::Synced => {}
        }
        match kind {
            IoKind::Read => Route::Origin,
            IoKind::Flush => Route::Both,
            IoKind::Write => {
                let regions = self.regions_of(sector, sectors);
                if self.switching || self.is_inflight(&regions) {
                    Route::Defer
                } else if self.all_pending(regions) {
                    Route::Origin
                } else {
                    Route::Both
                }
            }
        }
    }

    /// Takes the batches of a copier round, at most `depth` runs of at most `max_regions` pending
    /// regions each, and flips the write epochs, or returns `None` without flipping when there is
    /// nothing to copy now (all copied or in flight, paused, stopped). Call under the lock that
    /// routes writes; drain [`Round::drain`] before reading the batches.
    ///
    /// A batch that reaches into a part of the bitmap with no page yet takes one from `pages`
    /// (see [`ChunkedBitmap`]); the round ends early when they run out.
    pub fn start_round(
        &mut self,
        depth: usize,
        max_regions: u64,
        epochs: &WriteEpochs,
        pages: &mut dyn FnMut() -> Option<P>,
    ) -> Option<Round> {
        let mut batches: [Option<Batch>; MAX_DEPTH] = Default::default();
        let mut taken = 0;
        for slot in batches.iter_mut().take(depth) {
            *slot = self.next_batch(max_regions, pages);
            taken += usize::from(slot.is_some());
        }
        // An idle round must not flip: see `super::epoch`.
        (taken > 0).then(|| Round {
            batches,
            drain: epochs.flip(),
        })
    }

    /// Takes the next run of at most `max_regions` pending regions, or `None` when there is
    /// nothing to start now (all copied or in flight, paused, stopped, or the in-flight table
    /// full). Only [`Tracker::start_round`] may take batches in the kernel.
    fn next_batch(
        &mut self,
        max_regions: u64,
        pages: &mut dyn FnMut() -> Option<P>,
    ) -> Option<Batch> {
        // Regions in flight are pending until their batch lands (`batch_done`): when every
        // pending region is in flight there is nothing to take, and no need to scan the bitmap
        // (twice, under the routing lock) to find that out.
        #[cfg(test)]
        assert!(self.nr_inflight <= self.nr_pending());
        if self.state != State::Copying || self.paused || self.nr_pending() <= self.nr_inflight {
            return None;
        }
        let slot = self.inflight.iter().position(Option::is_none)?;
        let max_regions = max_regions.max(1);
        // Look from the cursor to the end, then from the start: the copy is sequential, but a
        // region skipped while in flight elsewhere is picked up on the next round.
        for _ in 0..2 {
            let mut from = self.cursor;
            while let Some(region) = self.pending.next_set(from) {
                from = region + 1;
                if self.is_inflight(&(region..region + 1)) {
                    continue;
                }
                let mut end = region + 1;
                while end < self.nr_regions
                    && end - region < max_regions
                    && self.is_pending(end)
                    && !self.is_inflight(&(end..end + 1))
                {
                    end += 1;
                }
                // Every chunk of the batch's regions needs its page before the batch is taken,
                // for `batch_done` to record them copied.
                if !self.pending.prepare(region..end, pages) {
                    return None;
                }
                self.cursor = end;
                self.inflight[slot] = Some(region..end);
                self.nr_inflight += end - region;
                return Some(Batch {
                    regions: region..end,
                    sectors: region * self.region_sectors
                        ..(end * self.region_sectors).min(self.target_sectors),
                });
            }
            self.cursor = 0;
        }
        None
    }

    /// Records how the copy of `batch` ended and says what the copier does next.
    pub fn batch_done(&mut self, batch: &Batch, result: CopyResult) -> AfterBatch {
        if let Some(slot) = self
            .inflight
            .iter_mut()
            .find(|r| r.as_ref() == Some(&batch.regions))
        {
            *slot = None;
            self.nr_inflight -= batch.regions.end - batch.regions.start;
        }
        let after = match result {
            CopyResult::Done => {
                for entry in self.read_failures.iter_mut() {
                    if entry.is_some_and(|(region, _)| batch.regions.contains(&region)) {
                        *entry = None;
                    }
                }
                if self.state == State::Copying {
                    for region in batch.regions.clone() {
                        self.clear_pending(region);
                    }
                    self.copied_bytes +=
                        (batch.sectors.end - batch.sectors.start) * super::SECTOR_SIZE;
                }
                AfterBatch::Continue
            }
            CopyResult::ReadError => {
                self.errors += 1;
                if self.count_read_failure(batch.regions.start) > READ_RETRIES {
                    AfterBatch::Fail(FailReason::OriginRead)
                } else {
                    // The regions stay pending; the next round starts again from this batch, so
                    // the retry begins at the same region and its count goes on.
                    self.cursor = self.cursor.min(batch.regions.start);
                    AfterBatch::Retry
                }
            }
            CopyResult::WriteError => {
                self.errors += 1;
                AfterBatch::Fail(FailReason::DestinationWrite)
            }
        };
        self.settle();
        after
    }

    /// Counts a failed origin read of the batch starting at `region`; returns how often it
    /// failed. A failure that finds no free entry counts as one too many.
    fn count_read_failure(&mut self, region: u64) -> u32 {
        let entry = match self
            .read_failures
            .iter()
            .position(|e| e.is_some_and(|(r, _)| r == region))
            .or_else(|| self.read_failures.iter().position(Option::is_none))
        {
            Some(i) => &mut self.read_failures[i],
            None => return READ_RETRIES + 1,
        };
        let count = entry.map_or(0, |(_, n)| n) + 1;
        *entry = Some((region, count));
        count
    }

    /// How long the copier waits before its next round: a batch whose origin read failed `n`
    /// times is retried after `RETRY_DELAY_MS * 2^(n-1)`; 0 when nothing is being retried.
    pub fn retry_delay_ms(&self) -> u32 {
        let most = self
            .read_failures
            .iter()
            .flatten()
            .map(|&(_, n)| n)
            .max()
            .unwrap_or(0);
        match most {
            0 => 0,
            n => RETRY_DELAY_MS << (n - 1).min(16),
        }
    }

    /// Moves to `Synced` when everything is copied and nothing is in flight.
    fn settle(&mut self) {
        if self.state == State::Copying && self.nr_pending() == 0 && self.nr_inflight == 0 {
            self.state = State::Synced;
        }
    }

    /// Whether the target may start to switch to the destination now: in sync, not switching
    /// already, and not told to wait for userspace (`no_switch`).
    pub fn should_switch(&self) -> bool {
        self.state == State::Synced && !self.no_switch && !self.switching
    }

    /// Starts the switch: from now on every write is deferred, so that the writes in flight can
    /// drain (both epochs) and the destination be flushed before anything goes to it alone.
    /// Returns whether it started.
    pub fn begin_switch(&mut self) -> bool {
        if !self.should_switch() {
            return false;
        }
        self.switching = true;
        true
    }

    /// Whether a switch has begun and not yet ended.
    pub fn is_switching(&self) -> bool {
        self.switching
    }

    /// Sends all further I/O to the destination. Only valid after [`Tracker::begin_switch`],
    /// once every write in flight has completed (refused otherwise) and none failed on the
    /// destination, and the destination has been flushed; returns whether it switched (a
    /// cancel or failure since `begin_switch` wins).
    pub fn switch(&mut self, epochs: &WriteEpochs) -> bool {
        if self.state != State::Synced || !self.switching || epochs.in_flight() != 0 {
            return false;
        }
        self.switching = false;
        self.state = State::Switched;
        true
    }

    /// Fails the migration for `reason`: everything stays on the origin. Returns whether it
    /// failed now; a switched, failed or cancelled migration does not change.
    pub fn fail(&mut self, reason: FailReason) -> bool {
        if !self.is_active() {
            return false;
        }
        self.state = State::Failed(reason);
        self.switching = false;
        self.errors = self.errors.max(1);
        true
    }

    /// Stops the migration for good, staying on the origin.
    pub fn cancel(&mut self) -> CancelOutcome {
        match self.state {
            State::Switched => CancelOutcome::Switched,
            State::Failed(_) | State::Cancelled => CancelOutcome::AlreadyEnded,
            State::Copying | State::Synced => {
                self.state = State::Cancelled;
                self.switching = false;
                CancelOutcome::Cancelled
            }
        }
    }

    /// Starts a failed or cancelled migration over, every region pending again, as an
    /// identical table reload does: the origin holds every write, so copying it all again is
    /// safe. Returns false (and changes nothing) for a migration that has not ended that way.
    pub fn restart(&mut self) -> bool {
        if !matches!(self.state, State::Failed(_) | State::Cancelled) || self.nr_inflight != 0 {
            return false;
        }
        self.start_over();
        true
    }

    /// Every region pending again, copying, nothing in flight: the copy starts from scratch.
    fn start_over(&mut self) {
        self.pending.fill(true);
        self.inflight = Default::default();
        self.nr_inflight = 0;
        self.cursor = 0;
        self.read_failures = [None; MAX_DEPTH];
        self.switching = false;
        self.state = State::Copying;
        self.settle();
    }

    /// Takes over from the migration this one replaces in a table reload of the same mapped
    /// device, at the same place, whose state was `predecessor` once suspended: after a switch
    /// the new table is switched from its first bio; otherwise the copy starts over from the
    /// origin, which holds every write (also if this tracker was live before: what it knew is
    /// stale). A reload never rolls back. (An identical reload of the live migration shares it
    /// instead.) Call before this tracker routes a bio again.
    pub fn after_reload(&mut self, predecessor: State) -> Handover {
        if predecessor != State::Switched {
            self.start_over();
            return Handover::StartedOver;
        }
        self.pending.fill(false);
        self.inflight = Default::default();
        self.nr_inflight = 0;
        self.switching = false;
        self.state = State::Switched;
        Handover::Switched
    }

    /// Word `word` of the pending bitmap: the regions not copied (or in flight).
    pub fn pending_word(&self, word: usize) -> u64 {
        self.pending.word(word)
    }

    /// Word `word` of the copied bitmap: the regions whose copy landed.
    pub fn copied_word(&self, word: usize) -> u64 {
        self.pending.complement_word(word)
    }

    /// The pages the pending bitmap holds now: what a [`Tracker::snapshot_pending`] takes.
    pub fn pending_pages(&self) -> usize {
        self.pending.pages()
    }

    /// Copies the pending bitmap into `into` (of the same geometry), for a commit that records
    /// it after a flush. A part of it that finds no page in `pages` is recorded as pending,
    /// which only costs a copy again after a crash; returns whether every part found one.
    pub fn snapshot_pending<C2, P2>(
        &self,
        into: &mut ChunkedBitmap<C2, P2>,
        pages: &mut dyn FnMut() -> Option<P2>,
    ) -> bool
    where
        C2: DerefMut<Target = [Chunk<P2>]>,
        P2: DerefMut<Target = [u64]>,
    {
        into.copy_from(&self.pending, pages)
    }

    /// The number of words of the bitmaps.
    pub fn nr_words(&self) -> usize {
        // Fits: checked in `new`.
        self.pending.nr_words()
    }

    /// Starts from what the metadata device recorded: `pending(word)` gives the regions to
    /// copy, and nothing is in flight. Bits past the last region are ignored. A part of the
    /// bitmap that is neither all pending nor all copied takes a page from `pages` (the caller
    /// counts them with [`bitmap::pages_needed`]); one that finds none is copied again whole.
    /// Returns whether every part found its page.
    pub fn restore(
        &mut self,
        pending: impl Fn(usize) -> u64,
        pages: &mut dyn FnMut() -> Option<P>,
    ) -> bool {
        let exact = self.pending.load(pending, pages);
        self.inflight = Default::default();
        self.nr_inflight = 0;
        self.cursor = 0;
        self.state = State::Copying;
        self.settle();
        exact
    }

    /// Whether to stay in sync rather than switch, from the table that runs the migration now.
    pub fn set_no_switch(&mut self, no_switch: bool) {
        self.no_switch = no_switch;
    }

    /// Pauses or resumes the copier; writes go on being mirrored.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Where the migration stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// The counters for the status line; `rate_kibps` is measured by the caller.
    pub fn progress(&self, rate_kibps: u64) -> Progress {
        Progress {
            state: self.state,
            paused: self.paused,
            total_regions: self.nr_regions,
            copied_regions: self.nr_regions - self.nr_pending(),
            pending_regions: self.nr_pending(),
            inflight_regions: self.nr_inflight,
            copied_bytes: self.copied_bytes,
            rate_kibps,
            errors: self.errors,
            zeroed_bytes: 0,
        }
    }

    /// The number of regions.
    pub fn nr_regions(&self) -> u64 {
        self.nr_regions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::epoch::Counted;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    const REGION: u64 = 4;

    type TestTracker = Tracker<Vec<Chunk<Vec<u64>>>, Vec<u64>>;

    /// A chunk array of `n` chunks, for `Tracker::new`.
    fn chunks(n: u64) -> Vec<Chunk<Vec<u64>>> {
        (0..n).map(|_| Chunk::Clear).collect()
    }

    /// The smallest chunks (a word, 64 regions), for the pages to come and go often.
    fn tracker(sectors: u64, no_switch: bool) -> TestTracker {
        let n = pending_chunks(sectors, REGION, 1);
        Tracker::new(chunks(n), 1, sectors, REGION, no_switch).unwrap()
    }

    /// A page of the bitmap, always at hand.
    fn page() -> Option<Vec<u64>> {
        Some(vec![0; 1])
    }

    #[test]
    fn new_marks_every_region_pending_and_nothing_else() {
        let t = tracker(4 * 70 - 1, false);
        assert_eq!(t.nr_regions, 70);
        assert_eq!(
            [t.pending_word(0), t.pending_word(1)],
            [u64::MAX, (1 << 6) - 1]
        );
        assert_eq!(t.progress(0).pending_regions, 70);
        assert!(TestTracker::new(chunks(1), 1, 4 * 70, REGION, false).is_none());
        assert!(TestTracker::new(chunks(2), 1, 4 * 70, 3, false).is_none());
    }

    #[test]
    fn routes_follow_region_states() {
        let mut t = tracker(64, false);
        assert_eq!(t.route(IoKind::Read, 0, 8), Route::Origin);
        assert_eq!(t.route(IoKind::Write, 0, 8), Route::Origin);
        assert_eq!(t.route(IoKind::Flush, 0, 0), Route::Both);
        let b = t.next_batch(2, &mut page).unwrap();
        assert_eq!(
            b,
            Batch {
                regions: 0..2,
                sectors: 0..8
            }
        );
        assert_eq!(t.route(IoKind::Write, 7, 1), Route::Defer);
        assert_eq!(t.route(IoKind::Write, 8, 4), Route::Origin);
        assert_eq!(t.route(IoKind::Read, 0, 8), Route::Origin);
        assert_eq!(t.batch_done(&b, CopyResult::Done), AfterBatch::Continue);
        assert_eq!(t.route(IoKind::Write, 7, 1), Route::Both);
        // A write over a copied and a pending region goes to both.
        assert_eq!(t.route(IoKind::Write, 6, 4), Route::Both);
        assert_eq!(t.progress(0).copied_regions, 2);
        assert_eq!(t.progress(0).copied_bytes, 8 * 512);
    }

    #[test]
    fn converges_in_one_pass_and_switches() {
        let mut t = tracker(4 * 100 + 2, false);
        let mut batches = 0;
        while let Some(b) = t.next_batch(8, &mut page) {
            batches += 1;
            t.batch_done(&b, CopyResult::Done);
        }
        assert_eq!(batches, 13);
        assert_eq!(t.state(), State::Synced);
        assert!(t.should_switch());
        let epochs = WriteEpochs::new();
        assert!(!t.switch(&epochs), "a switch must begin first");
        assert!(t.begin_switch() && t.switch(&epochs));
        assert_eq!(t.route(IoKind::Read, 0, 1), Route::Destination);
        assert_eq!(t.route(IoKind::Write, 0, 1), Route::Destination);
        assert_eq!(t.cancel(), CancelOutcome::Switched);
    }

    #[test]
    fn restore_starts_from_the_recorded_bitmap() {
        let mut t = tracker(4 * 70, false);
        assert!(t.restore(|w| if w == 0 { 0b101 } else { u64::MAX }, &mut page));
        assert_eq!(t.progress(0).pending_regions, 2 + 6);
        assert_eq!(t.next_batch(8, &mut page).unwrap().regions, 0..1);
        assert_eq!(t.next_batch(8, &mut page).unwrap().regions, 2..3);
        assert_eq!(t.next_batch(8, &mut page).unwrap().regions, 64..70);
        assert!(t.restore(|_| 0, &mut page));
        assert_eq!(t.state(), State::Synced);
    }

    #[test]
    fn a_copy_holds_pages_only_where_it_is() {
        let epochs = WriteEpochs::new();
        let mut t = tracker(REGION * 64 * 10, false);
        let mut most = 0;
        while let Some(round) = t.start_round(4, 6, &epochs, &mut page) {
            most = most.max(t.pending.pages());
            for b in round.batches() {
                t.batch_done(b, CopyResult::Done);
            }
        }
        // A round of 24 regions reaches into at most two chunks of 64.
        assert_eq!(most, 2);
        assert_eq!(t.pending.pages(), 0);
        assert_eq!(t.state(), State::Synced);
    }

    #[test]
    fn no_page_holds_the_copy_back_and_loses_nothing() {
        let epochs = WriteEpochs::new();
        let mut t = tracker(REGION * 128, false);
        let mut none = || None;
        assert!(t.start_round(4, 8, &epochs, &mut none).is_none());
        assert_eq!(t.progress(0).pending_regions, 128);
        // A restore that finds no page for a mixed part copies that part again whole.
        assert!(!t.restore(|w| if w == 0 { 0b101 } else { 0 }, &mut none));
        assert_eq!(t.progress(0).pending_regions, 64);
        assert_eq!(
            t.start_round(1, 8, &epochs, &mut page)
                .unwrap()
                .batches()
                .next()
                .unwrap()
                .regions,
            0..8
        );
    }

    #[test]
    fn no_switch_stays_synced() {
        let mut t = tracker(8, true);
        while let Some(b) = t.next_batch(8, &mut page) {
            t.batch_done(&b, CopyResult::Done);
        }
        assert_eq!(t.state(), State::Synced);
        assert!(!t.should_switch());
        assert_eq!(t.route(IoKind::Write, 0, 8), Route::Both);
    }

    #[test]
    fn read_errors_are_retried_then_fail() {
        let mut t = tracker(16, false);
        for n in 0..READ_RETRIES {
            let b = t.next_batch(1, &mut page).unwrap();
            assert_eq!(b.regions, 0..1);
            assert_eq!(t.batch_done(&b, CopyResult::ReadError), AfterBatch::Retry);
            assert_eq!(t.retry_delay_ms(), RETRY_DELAY_MS << n);
        }
        let b = t.next_batch(1, &mut page).unwrap();
        assert_eq!(
            t.batch_done(&b, CopyResult::ReadError),
            AfterBatch::Fail(FailReason::OriginRead)
        );
        assert!(t.fail(FailReason::OriginRead));
        assert_eq!(t.state(), State::Failed(FailReason::OriginRead));
        assert_eq!(t.next_batch(1, &mut page), None);
        assert_eq!(t.route(IoKind::Write, 0, 16), Route::Origin);
        assert_eq!(t.progress(0).errors, u64::from(READ_RETRIES) + 1);
    }

    #[test]
    fn read_retries_are_counted_per_batch_not_per_round() {
        // Four batches fail in each round: each is retried READ_RETRIES times, and a success
        // clears its count.
        let epochs = WriteEpochs::new();
        let mut t = tracker(64, false);
        for _ in 0..READ_RETRIES {
            let round = t.start_round(4, 2, &epochs, &mut page).unwrap();
            assert_eq!(round.batches().count(), 4);
            for b in round.batches() {
                assert_eq!(t.batch_done(b, CopyResult::ReadError), AfterBatch::Retry);
            }
        }
        assert_eq!(t.state(), State::Copying);
        let round = t.start_round(4, 2, &epochs, &mut page).unwrap();
        let firsts: Vec<u64> = round.batches().map(|b| b.regions.start).collect();
        assert_eq!(
            firsts,
            [0, 2, 4, 6],
            "the retry starts at the failed batches"
        );
        let mut after = round.batches().map(|b| {
            let result = if b.regions.start == 0 {
                CopyResult::Done
            } else {
                CopyResult::ReadError
            };
            t.batch_done(b, result)
        });
        let fail = Some(AfterBatch::Fail(FailReason::OriginRead));
        assert_eq!(after.next(), Some(AfterBatch::Continue));
        assert_eq!(after.next(), fail);
        assert_eq!(after.next(), fail);
        drop(after);
        assert_eq!(t.progress(0).errors, 4 * u64::from(READ_RETRIES) + 2);
        assert!(t.fail(FailReason::OriginRead));
        assert!(!t.fail(FailReason::OriginRead), "one transition, one event");
    }

    #[test]
    fn a_transient_read_error_is_survived() {
        let epochs = WriteEpochs::new();
        let mut t = tracker(16, false);
        let round = t.start_round(1, 1, &epochs, &mut page).unwrap();
        let b = round.batches().next().unwrap();
        assert_eq!(t.batch_done(b, CopyResult::ReadError), AfterBatch::Retry);
        let round = t.start_round(1, 1, &epochs, &mut page).unwrap();
        let b = round.batches().next().unwrap();
        assert_eq!(t.batch_done(b, CopyResult::Done), AfterBatch::Continue);
        assert_eq!(t.retry_delay_ms(), 0);
        while let Some(round) = t.start_round(2, 8, &epochs, &mut page) {
            for b in round.batches() {
                t.batch_done(b, CopyResult::Done);
            }
        }
        assert_eq!(t.state(), State::Synced);
    }

    #[test]
    fn idle_rounds_do_not_flip_the_epoch() {
        let epochs = WriteEpochs::new();
        let mut t = tracker(16, false);
        let before = epochs.enter();
        t.set_paused(true);
        for _ in 0..3 {
            assert!(t.start_round(4, 1, &epochs, &mut page).is_none());
        }
        t.set_paused(false);
        let round = t.start_round(4, 1, &epochs, &mut page).unwrap();
        epochs.start_drain(round.drain);
        assert!(
            !epochs.is_drained(round.drain),
            "the round must wait for the older write"
        );
        assert!(epochs.exit(before));
        assert!(epochs.is_drained(round.drain));
    }

    #[test]
    fn the_switch_defers_writes_until_it_ends() {
        let epochs = WriteEpochs::new();
        let mut t = tracker(8, false);
        while let Some(round) = t.start_round(4, 8, &epochs, &mut page) {
            for b in round.batches() {
                t.batch_done(b, CopyResult::Done);
            }
        }
        assert!(t.begin_switch());
        assert!(!t.begin_switch());
        assert_eq!(t.route(IoKind::Write, 0, 1), Route::Defer);
        assert_eq!(t.route(IoKind::Read, 0, 1), Route::Origin);
        assert_eq!(t.state(), State::Synced);
        let w = epochs.enter();
        assert!(!t.switch(&epochs), "not while a write is in flight");
        epochs.exit(w);
        assert!(t.switch(&epochs));
        assert_eq!(t.route(IoKind::Write, 0, 1), Route::Destination);
        // A failure during the switch wins over it.
        let mut t = tracker(8, false);
        let round = t.start_round(1, 8, &epochs, &mut page).unwrap();
        t.batch_done(round.batches().next().unwrap(), CopyResult::Done);
        assert!(t.begin_switch());
        assert!(t.fail(FailReason::DestinationWrite));
        assert!(!t.fail(FailReason::DestinationWrite), "one transition");
        assert!(!t.switch(&epochs));
        assert_eq!(t.route(IoKind::Write, 0, 1), Route::Origin);
        assert_eq!(t.cancel(), CancelOutcome::AlreadyEnded);
    }

    #[test]
    fn a_reload_never_rolls_back() {
        let epochs = WriteEpochs::new();
        // Other regions while copying: the copy starts over, from the origin that has every
        // write.
        let mut other = tracker(64, false);
        assert_eq!(other.after_reload(State::Copying), Handover::StartedOver);
        assert_eq!(other.progress(0).copied_regions, 0);
        // After the switch, whatever the regions, the new table is switched.
        assert_eq!(other.after_reload(State::Switched), Handover::Switched);
        assert_eq!(other.route(IoKind::Read, 0, 1), Route::Destination);
        assert_eq!(other.cancel(), CancelOutcome::Switched);
        // An identical reload of a failed migration starts it over; of a live one, nothing.
        let mut t = tracker(64, false);
        assert!(!t.restart());
        let round = t.start_round(2, 3, &epochs, &mut page).unwrap();
        for b in round.batches() {
            t.batch_done(b, CopyResult::Done);
        }
        t.fail(FailReason::OriginRead);
        assert!(t.restart());
        assert_eq!(t.state(), State::Copying);
        assert_eq!(t.progress(0).pending_regions, 16);
        assert_eq!(t.route(IoKind::Write, 0, 1), Route::Origin);
    }

    #[test]
    fn huge_writes_are_routed_a_word_at_a_time() {
        let mut t = TestTracker::new(chunks(1 << 14), 1, 1 << 20, 1, false).unwrap();
        assert_eq!(t.route(IoKind::Write, 0, 1 << 20), Route::Origin);
        assert_eq!(t.route(IoKind::Write, 3, (1 << 20) - 70), Route::Origin);
        let copied = (1 << 19) + 5;
        assert!(t.pending.prepare(copied..copied + 1, &mut page));
        t.clear_pending(copied);
        assert_eq!(t.route(IoKind::Write, 3, (1 << 20) - 70), Route::Both);
        assert_eq!(t.route(IoKind::Write, (1 << 19) + 6, 100), Route::Origin);
    }

    #[test]
    fn write_error_fails_and_pause_stops_batches() {
        let mut t = tracker(16, false);
        t.set_paused(true);
        assert_eq!(t.next_batch(1, &mut page), None);
        t.set_paused(false);
        let b = t.next_batch(1, &mut page).unwrap();
        let after = t.batch_done(&b, CopyResult::WriteError);
        assert_eq!(after, AfterBatch::Fail(FailReason::DestinationWrite));
        t.fail(FailReason::DestinationWrite);
        assert_eq!(t.state(), State::Failed(FailReason::DestinationWrite));
        assert_eq!(t.route(IoKind::Flush, 0, 0), Route::Origin);
    }

    /// One step of a random interleaving, for the model test.
    #[derive(Debug, Clone)]
    enum Op {
        Write {
            sector: u64,
            len: u64,
        },
        /// A write where the copy is: `back` sectors before the copier's cursor, so that also
        /// on a large device writes meet the batches in flight and the chunk boundaries the
        /// copy crosses.
        WriteAtCopy {
            back: u64,
            len: u64,
        },
        Read {
            sector: u64,
            len: u64,
        },
        Flush,
        /// One half of a write in flight completes: the destination's (`dest_half`) or the
        /// origin's, or the other one when that has already; a destination half may fail.
        Complete {
            pick: usize,
            dest_half: bool,
            dest_fails: bool,
        },
        /// The copier takes a round for its free slots (and flips the epochs if it took a
        /// batch), also while other batches are in flight: the pipeline.
        StartRound {
            depth: usize,
            max: u64,
        },
        /// The round's epoch has drained: its batches go out.
        ReadRound,
        /// One batch in flight reads the origin.
        ReadBatch {
            pick: usize,
        },
        /// One batch in flight ends: written to the destination, or failed, and recorded; the
        /// writes deferred behind it go on.
        FinishBatch {
            pick: usize,
            result: u8,
        },
        /// The copier checks for a failed mirrored write, as at the top of each loop.
        CheckFailure,
        /// The copier moves the switch on one step.
        SwitchStep {
            flush_fails: bool,
        },
        Pause(bool),
        /// The copier's pool of bitmap pages runs dry (`true`) or is refilled.
        NoPages(bool),
        Cancel,
        Fail,
        /// A table reload while suspended: an identical table shares the migration (and starts a
        /// failed one over); a table with other regions takes over from the old state.
        Reload {
            identical: bool,
        },
    }

    fn op(sectors: u64) -> impl Strategy<Value = Op> {
        let range = (0..sectors).prop_flat_map(move |s| (Just(s), 1..=(sectors - s).min(24)));
        // Batches of up to a sixth of the regions: a round of a large device reaches the next
        // chunk of the bitmap, and a batch may straddle two.
        let max = (sectors.div_ceil(REGION) / 6).max(4);
        prop_oneof![
            50 => range.clone().prop_map(|(sector, len)| Op::Write { sector, len }),
            30 => (0..3 * REGION, 1..=24u64).prop_map(|(back, len)| Op::WriteAtCopy { back, len }),
            40 => range.prop_map(|(sector, len)| Op::Read { sector, len }),
            5 => Just(Op::Flush),
            120 => (any::<usize>(), any::<bool>(), prop::bool::weighted(0.03)).prop_map(
                |(pick, dest_half, dest_fails)| Op::Complete {
                    pick,
                    dest_half,
                    dest_fails
                }
            ),
            40 => (1usize..4, 1..=max).prop_map(|(depth, max)| Op::StartRound { depth, max }),
            40 => Just(Op::ReadRound),
            40 => any::<usize>().prop_map(|pick| Op::ReadBatch { pick }),
            40 => (any::<usize>(), any::<u8>()).prop_map(|(pick, result)| Op::FinishBatch { pick, result }),
            10 => Just(Op::CheckFailure),
            20 => prop::bool::weighted(0.05).prop_map(|flush_fails| Op::SwitchStep { flush_fails }),
            15 => prop::bool::weighted(0.3).prop_map(Op::Pause),
            10 => prop::bool::weighted(0.3).prop_map(Op::NoPages),
            1 => Just(Op::Cancel),
            1 => Just(Op::Fail),
            4 => any::<bool>().prop_map(|identical| Op::Reload { identical }),
        ]
    }

    /// A write the target has routed and not yet completed.
    #[derive(Debug)]
    struct InFlight {
        range: Range<usize>,
        version: u32,
        counted: Option<Counted>,
        origin_left: bool,
        dest_left: bool,
    }

    /// Where the copier is: a pipeline of batches, each on its own.
    #[derive(Debug, Default)]
    struct Copier {
        /// A round taken, waiting for its epoch to drain before its batches go out.
        draining: Option<Round>,
        /// Batches in flight, with the origin data once read.
        flight: Vec<(Batch, Option<Vec<u32>>)>,
        /// Began the switch: waits for both epochs to drain.
        switching: bool,
    }

    impl Copier {
        fn is_idle(&self) -> bool {
            self.draining.is_none() && self.flight.is_empty() && !self.switching
        }
    }

    /// A disk modelled as one version number per sector.
    struct Model {
        tracker: TestTracker,
        epochs: WriteEpochs,
        no_switch: bool,
        /// The acknowledged contents: what the guest expects to read back.
        truth: Vec<u32>,
        origin: Vec<u32>,
        dest: Vec<u32>,
        writes: Vec<InFlight>,
        deferred: Vec<(u64, u64, u32)>,
        copier: Copier,
        /// A mirrored write's destination half failed (the kernel's `DestinationHealth`).
        dest_failed: bool,
        version: u32,
        /// The copier's pool of bitmap pages is empty.
        no_pages: bool,
    }

    impl Model {
        /// A disk of `sectors` whose first `copied` regions were copied before, as when the
        /// copy resumes from its metadata.
        fn new(sectors: u64, no_switch: bool, copied: u64) -> Self {
            let n = sectors as usize;
            let mut tracker = tracker(sectors, no_switch);
            if copied > 0 {
                let pending = |w: usize| match copied.saturating_sub(w as u64 * 64) {
                    0 => u64::MAX,
                    c if c >= 64 => 0,
                    c => u64::MAX << c,
                };
                assert!(tracker.restore(pending, &mut page));
                assert_eq!(tracker.progress(0).copied_regions, copied);
            }
            // The destination starts with garbage that no write ever produces, but where the
            // copy was before.
            let mut dest = vec![u32::MAX; n];
            dest[..((copied * REGION) as usize).min(n)].fill(0);
            Self {
                tracker,
                epochs: WriteEpochs::new(),
                no_switch,
                truth: vec![0; n],
                origin: vec![0; n],
                dest,
                writes: Vec::new(),
                deferred: Vec::new(),
                copier: Copier::default(),
                dest_failed: false,
                version: 0,
                no_pages: false,
            }
        }

        /// Which sectors a write in flight or deferred covers: their contents are not settled.
        fn busy_sectors(&self) -> Vec<bool> {
            let mut busy = vec![false; self.truth.len()];
            for w in &self.writes {
                busy[w.range.clone()].fill(true);
            }
            for &(s, l, _) in &self.deferred {
                busy[s as usize..(s + l) as usize].fill(true);
            }
            busy
        }

        fn busy(&self, r: &Range<usize>) -> bool {
            self.writes
                .iter()
                .any(|w| w.range.start < r.end && r.start < w.range.end)
                || self
                    .deferred
                    .iter()
                    .any(|&(s, l, _)| (s as usize) < r.end && r.start < (s + l) as usize)
        }

        /// Routes a write as `map` does: counted in the current epoch when it goes to the origin.
        /// Returns false when it is deferred.
        fn dispatch(&mut self, sector: u64, len: u64, version: u32) -> bool {
            let range = sector as usize..(sector + len) as usize;
            let route = self.tracker.route(IoKind::Write, sector, len);
            let (origin_left, dest_left) = match route {
                Route::Defer => return false,
                Route::Origin => (true, false),
                Route::Destination => (false, true),
                Route::Both => (true, true),
            };
            let counted = origin_left.then(|| self.epochs.enter());
            self.writes.push(InFlight {
                range,
                version,
                counted,
                origin_left,
                dest_left,
            });
            true
        }

        fn release_deferred(&mut self) {
            for (sector, len, v) in core::mem::take(&mut self.deferred) {
                if !self.dispatch(sector, len, v) {
                    self.deferred.push((sector, len, v));
                }
            }
        }

        /// Completes one half of write `idx`: the destination's when `dest_half` (and it is
        /// still in flight) or when the origin's has completed, else the origin's. A mirrored
        /// write's halves so land in either order, each whenever the interleaving says.
        fn complete(&mut self, idx: usize, dest_half: bool, dest_fails: bool) {
            let w = &mut self.writes[idx];
            let r = w.range.clone();
            if w.dest_left && (dest_half || !w.origin_left) {
                w.dest_left = false;
                // Only a mirrored half may fail unseen; after the switch the destination's
                // error is the guest's, and is not modelled.
                if dest_fails && w.counted.is_some() {
                    self.dest_failed = true;
                } else {
                    self.dest[r].fill(w.version);
                }
            } else {
                assert!(w.origin_left, "a write in flight with neither half left");
                w.origin_left = false;
                self.origin[r].fill(w.version);
            }
            let w = &self.writes[idx];
            if !w.origin_left && !w.dest_left {
                let w = self.writes.remove(idx);
                if let Some(c) = w.counted {
                    self.epochs.exit(c);
                }
                // Acknowledged: the guest now expects to read it back.
                self.truth[w.range].fill(w.version);
            }
        }

        fn fail(&mut self, reason: FailReason) {
            self.tracker.fail(reason);
            self.release_deferred();
        }

        /// The guest writes `len` sectors from `sector`, unless that overlaps a write in
        /// flight: a guest does not do that.
        fn write(&mut self, sector: u64, len: u64) {
            let r = sector as usize..(sector + len) as usize;
            if !self.busy(&r) {
                self.version += 1;
                let v = self.version;
                if !self.dispatch(sector, len, v) {
                    self.deferred.push((sector, len, v));
                }
            }
        }

        fn step(&mut self, op: Op) {
            match op {
                Op::Write { sector, len } => self.write(sector, len),
                Op::WriteAtCopy { back, len } => {
                    let sectors = self.truth.len() as u64;
                    let len = len.min(sectors);
                    let at = (self.tracker.cursor * REGION).saturating_sub(back);
                    self.write(at.min(sectors - len), len);
                }
                Op::Read { sector, len } => {
                    let r = sector as usize..(sector + len) as usize;
                    let data = match self.tracker.route(IoKind::Read, sector, len) {
                        Route::Origin => &self.origin,
                        Route::Destination => &self.dest,
                        other => panic!("read routed to {other:?}"),
                    };
                    if !self.busy(&r) {
                        assert_eq!(data[r.clone()], self.truth[r], "read returned stale data");
                    }
                }
                Op::Flush => {
                    let route = self.tracker.route(IoKind::Flush, 0, 0);
                    let expected = match self.tracker.state() {
                        State::Switched => Route::Destination,
                        State::Copying | State::Synced => Route::Both,
                        _ => Route::Origin,
                    };
                    assert_eq!(route, expected);
                }
                Op::Complete {
                    pick,
                    dest_half,
                    dest_fails,
                } => {
                    if !self.writes.is_empty() {
                        self.complete(pick % self.writes.len(), dest_half, dest_fails);
                    }
                }
                Op::StartRound { depth, max } => {
                    let free = depth.saturating_sub(self.copier.flight.len());
                    let no_pages = self.no_pages;
                    let mut pages = || (!no_pages).then(|| vec![0; 1]);
                    if self.copier.draining.is_none() && !self.copier.switching && free > 0 {
                        if let Some(round) =
                            self.tracker
                                .start_round(free, max, &self.epochs, &mut pages)
                        {
                            for b in round.batches() {
                                assert!(b.regions.end - b.regions.start <= max);
                                assert!(b.sectors.end <= self.truth.len() as u64);
                                // Only pending regions are copied, each by one batch at a time.
                                for region in b.regions.clone() {
                                    assert!(self.tracker.is_pending(region));
                                }
                                let others = round
                                    .batches()
                                    .chain(self.copier.flight.iter().map(|(b, _)| b));
                                assert_eq!(
                                    others
                                        .filter(|o| {
                                            o.regions.start < b.regions.end
                                                && b.regions.start < o.regions.end
                                        })
                                        .count(),
                                    1,
                                    "batch {b:?} overlaps another in flight"
                                );
                            }
                            self.copier.draining = Some(round);
                        }
                    }
                }
                Op::ReadRound => {
                    if let Some(round) = &self.copier.draining {
                        if self.epochs.is_drained(round.drain) {
                            let round = self.copier.draining.take().unwrap();
                            for b in round.batches() {
                                self.copier.flight.push((b.clone(), None));
                            }
                        }
                    }
                }
                Op::ReadBatch { pick } => {
                    let n = self.copier.flight.len();
                    if n > 0 {
                        let (b, data) = &mut self.copier.flight[pick % n];
                        if data.is_none() {
                            let r = b.sectors.start as usize..b.sectors.end as usize;
                            *data = Some(self.origin[r].to_vec());
                        }
                    }
                }
                Op::FinishBatch { pick, result } => {
                    let n = self.copier.flight.len();
                    if n > 0 {
                        let (b, data) = self.copier.flight.remove(pick % n);
                        // A batch not read yet reads the origin now, or fails to.
                        let result = match result % 16 {
                            0 => CopyResult::ReadError,
                            1 => CopyResult::WriteError,
                            _ => CopyResult::Done,
                        };
                        let r = b.sectors.start as usize..b.sectors.end as usize;
                        let data = data.unwrap_or_else(|| self.origin[r.clone()].to_vec());
                        match result {
                            // The copy writes what it read, whatever happened since.
                            CopyResult::Done => self.dest[r].copy_from_slice(&data),
                            CopyResult::WriteError => self.dest[r].fill(u32::MAX - 1),
                            CopyResult::ReadError => {}
                        }
                        let copying = self.tracker.state() == State::Copying;
                        let after = self.tracker.batch_done(&b, result);
                        if copying && result == CopyResult::Done {
                            // Recorded copied, every region of it, whichever chunks of the
                            // bitmap it spans: a region is copied once.
                            for region in b.regions.clone() {
                                assert!(
                                    !self.tracker.is_pending(region),
                                    "region {region} of {b:?} landed and is still pending"
                                );
                            }
                        }
                        if let AfterBatch::Fail(reason) = after {
                            self.tracker.fail(reason);
                        }
                        self.release_deferred();
                    }
                }
                Op::CheckFailure => {
                    if self.dest_failed {
                        self.fail(FailReason::DestinationWrite);
                    }
                }
                Op::SwitchStep { flush_fails } => match self.copier.switching {
                    false if self.copier.is_idle() && self.tracker.begin_switch() => {
                        self.copier.switching = true;
                    }
                    // The kernel waits for both epochs to drain before anything else.
                    true if Epoch::BOTH.iter().all(|&e| self.epochs.is_drained(e)) => {
                        self.copier.switching = false;
                        if self.dest_failed {
                            self.fail(FailReason::DestinationWrite);
                        } else if flush_fails {
                            self.fail(FailReason::DestinationFlush);
                        } else {
                            if self.tracker.switch(&self.epochs) {
                                assert_eq!(
                                    self.dest, self.truth,
                                    "destination differs at the switch"
                                );
                            }
                            self.release_deferred();
                        }
                    }
                    _ => {}
                },
                Op::Pause(p) => self.tracker.set_paused(p),
                Op::NoPages(none) => self.no_pages = none,
                Op::Cancel => {
                    self.tracker.cancel();
                    self.release_deferred();
                }
                Op::Fail => self.fail(FailReason::DestinationWrite),
                Op::Reload { identical } => {
                    // A reload happens while suspended: nothing in flight, the copier stopped
                    // after its last round (a switch that began is carried to its end first).
                    if self.writes.is_empty() && self.deferred.is_empty() && self.copier.is_idle() {
                        if identical {
                            // A failed mirrored write stays a failure until the copier sees it.
                            if self.tracker.restart() {
                                self.dest_failed = false;
                            }
                        } else {
                            let mut new = tracker(self.truth.len() as u64, self.no_switch);
                            let old = if self.dest_failed {
                                State::Failed(FailReason::DestinationWrite)
                            } else {
                                self.tracker.state()
                            };
                            if new.after_reload(old) == Handover::StartedOver {
                                self.dest_failed = false;
                            }
                            self.tracker = new;
                        }
                    }
                }
            }
            self.check();
        }

        fn check(&self) {
            let busy = self.busy_sectors();
            let stable = |s: usize| !busy[s];
            let (device, what) = match self.tracker.state() {
                State::Switched => (&self.dest, "destination"),
                _ => (&self.origin, "origin"),
            };
            for s in (0..self.truth.len()).filter(|&s| stable(s)) {
                assert_eq!(
                    device[s], self.truth[s],
                    "{what} lost an acknowledged write at {s}"
                );
            }
            if self.tracker.is_active() && !self.dest_failed {
                // Every copied region, not in flight, is identical on the destination.
                for region in 0..self.tracker.nr_regions {
                    let copied = !self.tracker.is_pending(region)
                        && !self.tracker.is_inflight(&(region..region + 1));
                    if copied {
                        let s = (region * REGION) as usize;
                        let e = (((region + 1) * REGION) as usize).min(self.truth.len());
                        for s in (s..e).filter(|&s| stable(s)) {
                            assert_eq!(self.dest[s], self.truth[s], "copied region {region} stale");
                        }
                    }
                }
            }
            let p = self.tracker.progress(0);
            assert_eq!(p.copied_regions + p.pending_regions, p.total_regions);
            assert!(p.inflight_regions <= p.pending_regions);
        }

        /// Lets every write land and the copier run to the end, as once the guest goes quiet.
        fn drain(&mut self) {
            self.tracker.set_paused(false);
            self.no_pages = false;
            for _ in 0..10_000 {
                if self.dest_failed && self.copier.is_idle() {
                    self.step(Op::CheckFailure);
                }
                if self.writes.is_empty()
                    && self.deferred.is_empty()
                    && self.copier.is_idle()
                    && !self.tracker.should_switch()
                    && !matches!(self.tracker.state(), State::Copying)
                {
                    break;
                }
                if !self.writes.is_empty() {
                    // Mirrored writes land destination half first every other time.
                    let dest_half = self.writes.len().is_multiple_of(2);
                    self.step(Op::Complete {
                        pick: 0,
                        dest_half,
                        dest_fails: false,
                    });
                    continue;
                }
                if self.copier.switching || (self.copier.is_idle() && self.tracker.should_switch())
                {
                    self.step(Op::SwitchStep { flush_fails: false });
                } else if self.copier.draining.is_some() {
                    self.step(Op::ReadRound);
                } else if let Some(pick) = self
                    .copier
                    .flight
                    .iter()
                    .position(|(_, data)| data.is_none())
                {
                    self.step(Op::ReadBatch { pick });
                } else if !self.copier.flight.is_empty() {
                    // The last batch first: batches land in any order.
                    let pick = self.copier.flight.len() - 1;
                    self.step(Op::FinishBatch { pick, result: 7 });
                } else {
                    self.step(Op::CheckFailure);
                    self.step(Op::StartRound { depth: 2, max: 3 });
                }
            }
            assert!(self.deferred.is_empty(), "deferred writes never released");
            assert!(self.writes.is_empty());
            match self.tracker.state() {
                State::Switched => assert_eq!(self.dest, self.truth),
                State::Synced => {
                    assert!(self.no_switch);
                    assert_eq!(self.dest, self.truth, "synced, but the destination differs");
                }
                State::Failed(_) | State::Cancelled => assert_eq!(self.origin, self.truth),
                other => panic!("migration ended in {other:?}"),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Random interleavings of unaligned writes that stay in flight and complete in any
        /// order (each half of a mirrored write on its own, the destination's before or after
        /// the origin's, a destination half failing late), reads, flushes, a pipelined copier
        /// (rounds taken for free slots while other batches are in flight, each draining its
        /// epoch; batches read and landing one at a time, in any order), pause/resume and idle
        /// rounds, the quiesced switch, errors, cancel and reloads, on devices of one bitmap
        /// chunk and of several (a copy from the start, or resumed just before a chunk ends),
        /// against a reference model: reads return the latest acknowledged write, a landed
        /// batch is recorded copied, the destination equals the model at the switch, and the
        /// origin equals it after a failure or cancel.
        #[test]
        fn random_interleavings_keep_every_acknowledged_write(
            (sectors, copied, ops) in prop_oneof![
                // Up to 20 regions: writes and batches meet all the time.
                1 => 1u64..80,
                // Two to four chunks of the bitmap (64 regions each), their boundaries crossed
                // by the copy, by batches and by writes.
                2 => 64 * REGION + 1..=3 * 64 * REGION + 40,
            ]
            .prop_flat_map(|n| {
                // The copy starts from the first region, or resumes a little before the end of
                // a chunk.
                let regions = n.div_ceil(REGION);
                let copied = (0..=regions / 64, 1..16u64)
                    .prop_map(move |(chunk, back)| (chunk * 64).saturating_sub(back).min(regions));
                (Just(n), copied, prop::collection::vec(op(n), 1..300))
            }),
            no_switch in any::<bool>(),
        ) {
            let mut model = Model::new(sectors, no_switch, copied);
            for op in ops {
                model.step(op);
            }
            model.drain();
        }
    }
}

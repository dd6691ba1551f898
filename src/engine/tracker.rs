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
//! has completed on the origin. The kernel side does that with two write epochs; this module
//! only decides.
//!
//! After the switch everything goes to the destination; after a failure or a cancel, everything
//! goes to the origin.

use super::status::{FailReason, Progress, State};
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
    /// Try the same batch again (an origin read error, not yet retried too often).
    Retry,
    /// The migration failed; stop.
    Failed,
}

/// How often an origin read error is retried before the migration fails.
pub const READ_RETRIES: u32 = 3;

/// The migration's bookkeeping. `B` is the pending bitmap, one bit per region, allocated by the
/// caller (`ceil(nr_regions / 64)` words).
pub struct Tracker<B> {
    pending: B,
    nr_regions: u64,
    nr_pending: u64,
    region_sectors: u64,
    target_sectors: u64,
    inflight: [Option<Range<u64>>; MAX_DEPTH],
    nr_inflight: u64,
    cursor: u64,
    state: State,
    no_switch: bool,
    paused: bool,
    read_failures: u32,
    copied_bytes: u64,
    errors: u64,
}

/// The number of `u64` words a bitmap of `nr_regions` bits takes.
pub fn bitmap_words(nr_regions: u64) -> u64 {
    nr_regions.div_ceil(64)
}

impl<B: DerefMut<Target = [u64]>> Tracker<B> {
    /// Starts a migration with every region pending. Returns `None` when `pending` is too small.
    pub fn new(
        mut pending: B,
        target_sectors: u64,
        region_sectors: u64,
        no_switch: bool,
    ) -> Option<Self> {
        if region_sectors == 0 || !region_sectors.is_power_of_two() {
            return None;
        }
        let nr_regions = target_sectors.div_ceil(region_sectors);
        let words = usize::try_from(bitmap_words(nr_regions)).ok()?;
        if pending.len() < words {
            return None;
        }
        let full_words = usize::try_from(nr_regions / 64).ok()?;
        pending.fill(0);
        pending[..full_words].fill(u64::MAX);
        if !nr_regions.is_multiple_of(64) {
            pending[full_words] = (1u64 << (nr_regions % 64)) - 1;
        }
        let mut tracker = Self {
            pending,
            nr_regions,
            nr_pending: nr_regions,
            region_sectors,
            target_sectors,
            inflight: Default::default(),
            nr_inflight: 0,
            cursor: 0,
            state: State::Copying,
            no_switch,
            paused: false,
            read_failures: 0,
            copied_bytes: 0,
            errors: 0,
        };
        tracker.settle();
        Some(tracker)
    }

    fn is_pending(&self, region: u64) -> bool {
        // Regions are below `nr_regions`, whose word count fits `usize` (checked in `new`).
        self.pending[(region / 64) as usize] & (1 << (region % 64)) != 0
    }

    fn clear_pending(&mut self, region: u64) {
        let word = &mut self.pending[(region / 64) as usize];
        let bit = 1 << (region % 64);
        if *word & bit != 0 {
            *word &= !bit;
            self.nr_pending -= 1;
        }
    }

    fn is_inflight(&self, regions: &Range<u64>) -> bool {
        self.inflight
            .iter()
            .flatten()
            .any(|r| r.start < regions.end && regions.start < r.end)
    }

    /// The regions a sector range touches; empty for an empty range.
    fn regions_of(&self, sector: u64, sectors: u64) -> Range<u64> {
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
                if self.is_inflight(&regions) {
                    Route::Defer
                } else if regions.clone().all(|r| self.is_pending(r)) {
                    Route::Origin
                } else {
                    Route::Both
                }
            }
        }
    }

    /// Takes the next run of at most `max_regions` pending regions for the copier, or `None` when
    /// there is nothing to start now (all copied or in flight, paused, stopped, or the in-flight
    /// table full).
    pub fn next_batch(&mut self, max_regions: u64) -> Option<Batch> {
        if self.state != State::Copying || self.paused || self.nr_pending == 0 {
            return None;
        }
        let slot = self.inflight.iter().position(Option::is_none)?;
        let max_regions = max_regions.max(1);
        // Look from the cursor to the end, then from the start: the copy is sequential, but a
        // region skipped while in flight elsewhere is picked up on the next round.
        for _ in 0..2 {
            let mut region = self.cursor;
            while region < self.nr_regions {
                let word = self.pending[(region / 64) as usize] >> (region % 64);
                if word == 0 {
                    region = (region / 64 + 1) * 64;
                    continue;
                }
                region += u64::from(word.trailing_zeros());
                if region >= self.nr_regions {
                    break;
                }
                if self.is_inflight(&(region..region + 1)) {
                    region += 1;
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
                self.read_failures = 0;
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
                self.read_failures += 1;
                if self.read_failures > READ_RETRIES {
                    self.fail(FailReason::OriginRead);
                    AfterBatch::Failed
                } else {
                    // The regions stay pending; start again from this batch.
                    self.cursor = batch.regions.start;
                    AfterBatch::Retry
                }
            }
            CopyResult::WriteError => {
                self.errors += 1;
                self.fail(FailReason::DestinationWrite);
                AfterBatch::Failed
            }
        };
        self.settle();
        after
    }

    /// Moves to `Synced` when everything is copied and nothing is in flight.
    fn settle(&mut self) {
        if self.state == State::Copying && self.nr_pending == 0 && self.nr_inflight == 0 {
            self.state = State::Synced;
        }
    }

    /// Whether the target may switch to the destination now: in sync, and not told to wait for
    /// userspace (`no_switch`).
    pub fn should_switch(&self) -> bool {
        self.state == State::Synced && !self.no_switch
    }

    /// Sends all further I/O to the destination. Only valid when in sync; returns whether it
    /// switched.
    pub fn switch(&mut self) -> bool {
        if self.state != State::Synced {
            return false;
        }
        self.state = State::Switched;
        true
    }

    /// Fails the migration for `reason`: everything stays on the origin. A switched, failed or
    /// cancelled migration does not change.
    pub fn fail(&mut self, reason: FailReason) {
        if self.is_active() {
            self.state = State::Failed(reason);
        }
        if let State::Failed(_) = self.state {
            self.errors = self.errors.max(1);
        }
    }

    /// Stops the migration for good, staying on the origin. Returns false once switched.
    pub fn cancel(&mut self) -> bool {
        match self.state {
            State::Switched => false,
            State::Failed(_) | State::Cancelled => true,
            State::Copying | State::Synced => {
                self.state = State::Cancelled;
                true
            }
        }
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
            copied_regions: self.nr_regions - self.nr_pending,
            pending_regions: self.nr_pending,
            inflight_regions: self.nr_inflight,
            copied_bytes: self.copied_bytes,
            rate_kibps,
            errors: self.errors,
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
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    const REGION: u64 = 4;

    fn tracker(sectors: u64, no_switch: bool) -> Tracker<Vec<u64>> {
        let words = bitmap_words(sectors.div_ceil(REGION)) as usize;
        Tracker::new(vec![0u64; words], sectors, REGION, no_switch).unwrap()
    }

    #[test]
    fn new_marks_every_region_pending_and_nothing_else() {
        let t = tracker(4 * 70 - 1, false);
        assert_eq!(t.nr_regions, 70);
        assert_eq!(t.pending, vec![u64::MAX, (1 << 6) - 1]);
        assert_eq!(t.progress(0).pending_regions, 70);
        assert!(Tracker::new(vec![0u64; 1], 4 * 70, REGION, false).is_none());
        assert!(Tracker::new(vec![0u64; 2], 4 * 70, 3, false).is_none());
    }

    #[test]
    fn routes_follow_region_states() {
        let mut t = tracker(64, false);
        assert_eq!(t.route(IoKind::Read, 0, 8), Route::Origin);
        assert_eq!(t.route(IoKind::Write, 0, 8), Route::Origin);
        assert_eq!(t.route(IoKind::Flush, 0, 0), Route::Both);
        let b = t.next_batch(2).unwrap();
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
        while let Some(b) = t.next_batch(8) {
            batches += 1;
            t.batch_done(&b, CopyResult::Done);
        }
        assert_eq!(batches, 13);
        assert_eq!(t.state(), State::Synced);
        assert!(t.should_switch());
        assert!(t.switch());
        assert_eq!(t.route(IoKind::Read, 0, 1), Route::Destination);
        assert_eq!(t.route(IoKind::Write, 0, 1), Route::Destination);
        assert!(!t.cancel());
    }

    #[test]
    fn no_switch_stays_synced() {
        let mut t = tracker(8, true);
        while let Some(b) = t.next_batch(8) {
            t.batch_done(&b, CopyResult::Done);
        }
        assert_eq!(t.state(), State::Synced);
        assert!(!t.should_switch());
        assert_eq!(t.route(IoKind::Write, 0, 8), Route::Both);
    }

    #[test]
    fn read_errors_are_retried_then_fail() {
        let mut t = tracker(16, false);
        for _ in 0..READ_RETRIES {
            let b = t.next_batch(1).unwrap();
            assert_eq!(b.regions, 0..1);
            assert_eq!(t.batch_done(&b, CopyResult::ReadError), AfterBatch::Retry);
        }
        let b = t.next_batch(1).unwrap();
        assert_eq!(t.batch_done(&b, CopyResult::ReadError), AfterBatch::Failed);
        assert_eq!(t.state(), State::Failed(FailReason::OriginRead));
        assert_eq!(t.next_batch(1), None);
        assert_eq!(t.route(IoKind::Write, 0, 16), Route::Origin);
        assert_eq!(t.progress(0).errors, u64::from(READ_RETRIES) + 1);
    }

    #[test]
    fn write_error_fails_and_pause_stops_batches() {
        let mut t = tracker(16, false);
        t.set_paused(true);
        assert_eq!(t.next_batch(1), None);
        t.set_paused(false);
        let b = t.next_batch(1).unwrap();
        assert_eq!(t.batch_done(&b, CopyResult::WriteError), AfterBatch::Failed);
        assert_eq!(t.state(), State::Failed(FailReason::DestinationWrite));
        assert_eq!(t.route(IoKind::Flush, 0, 0), Route::Origin);
    }

    /// One step of a random interleaving, for the model test.
    #[derive(Debug, Clone)]
    enum Op {
        Write { sector: u64, len: u64 },
        Read { sector: u64, len: u64 },
        Flush,
        StartBatch { max: u64 },
        FinishBatch { pick: usize, result: CopyResult },
        Pause(bool),
        Cancel,
        Fail,
    }

    fn op(sectors: u64) -> impl Strategy<Value = Op> {
        let range = (0..sectors).prop_flat_map(move |s| (Just(s), 1..=(sectors - s).min(24)));
        let result = prop_oneof![
            20 => Just(CopyResult::Done),
            1 => Just(CopyResult::ReadError),
            1 => Just(CopyResult::WriteError),
        ];
        prop_oneof![
            80 => range.clone().prop_map(|(sector, len)| Op::Write { sector, len }),
            40 => range.prop_map(|(sector, len)| Op::Read { sector, len }),
            10 => Just(Op::Flush),
            60 => (1u64..5).prop_map(|max| Op::StartBatch { max }),
            60 => (any::<usize>(), result).prop_map(|(pick, result)| Op::FinishBatch { pick, result }),
            10 => any::<bool>().prop_map(Op::Pause),
            1 => Just(Op::Cancel),
            1 => Just(Op::Fail),
        ]
    }

    /// A disk modelled as one version number per sector.
    struct Model {
        tracker: Tracker<Vec<u64>>,
        truth: Vec<u32>,
        origin: Vec<u32>,
        dest: Vec<u32>,
        /// Batches in flight with the origin data their read returned.
        inflight: Vec<(Batch, Vec<u32>)>,
        deferred: Vec<(u64, u64, u32)>,
        version: u32,
    }

    impl Model {
        fn new(sectors: u64, no_switch: bool) -> Self {
            let n = sectors as usize;
            Self {
                tracker: tracker(sectors, no_switch),
                truth: vec![0; n],
                origin: vec![0; n],
                // The destination starts with garbage that no write ever produces.
                dest: vec![u32::MAX; n],
                inflight: Vec::new(),
                deferred: Vec::new(),
                version: 0,
            }
        }

        /// Routes a write and applies it, or keeps it deferred; returns whether it landed.
        fn write(&mut self, sector: u64, len: u64, v: u32) -> bool {
            let r = sector as usize..(sector + len) as usize;
            match self.tracker.route(IoKind::Write, sector, len) {
                Route::Defer => return false,
                Route::Origin => self.origin[r.clone()].fill(v),
                Route::Destination => self.dest[r.clone()].fill(v),
                Route::Both => {
                    self.origin[r.clone()].fill(v);
                    self.dest[r.clone()].fill(v);
                }
            }
            // Acknowledged: the guest now expects to read it back.
            self.truth[r].fill(v);
            true
        }

        fn release_deferred(&mut self) {
            let deferred = core::mem::take(&mut self.deferred);
            for (sector, len, v) in deferred {
                if !self.write(sector, len, v) {
                    self.deferred.push((sector, len, v));
                }
            }
        }

        fn finish(&mut self, idx: usize, result: CopyResult) {
            let (b, data) = self.inflight.remove(idx);
            let r = b.sectors.start as usize..b.sectors.end as usize;
            match result {
                // The copy writes what it read when the batch started, whatever happened since.
                CopyResult::Done => self.dest[r].copy_from_slice(&data),
                CopyResult::WriteError => self.dest[r].fill(u32::MAX - 1),
                CopyResult::ReadError => {}
            }
            self.tracker.batch_done(&b, result);
            self.release_deferred();
        }

        fn step(&mut self, op: Op) {
            match op {
                Op::Write { sector, len } => {
                    self.version += 1;
                    let v = self.version;
                    if !self.write(sector, len, v) {
                        self.deferred.push((sector, len, v));
                    }
                }
                Op::Read { sector, len } => {
                    let r = sector as usize..(sector + len) as usize;
                    let data = match self.tracker.route(IoKind::Read, sector, len) {
                        Route::Origin => &self.origin[r.clone()],
                        Route::Destination => &self.dest[r.clone()],
                        other => panic!("read routed to {other:?}"),
                    };
                    assert_eq!(data, &self.truth[r], "read returned stale data");
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
                Op::StartBatch { max } => {
                    if let Some(b) = self.tracker.next_batch(max) {
                        assert!(b.regions.end - b.regions.start <= max);
                        assert!(b.sectors.end <= self.truth.len() as u64);
                        // The kernel reads the batch once every write routed before it has
                        // completed: here, at once.
                        let data =
                            self.origin[b.sectors.start as usize..b.sectors.end as usize].to_vec();
                        self.inflight.push((b, data));
                    }
                }
                Op::FinishBatch { pick, result } => {
                    if !self.inflight.is_empty() {
                        let idx = pick % self.inflight.len();
                        self.finish(idx, result);
                    }
                }
                Op::Pause(p) => self.tracker.set_paused(p),
                Op::Cancel => {
                    self.tracker.cancel();
                    self.release_deferred();
                }
                Op::Fail => {
                    self.tracker.fail(FailReason::DestinationWrite);
                    self.release_deferred();
                }
            }
            if self.tracker.should_switch() {
                assert!(self.tracker.switch());
                assert_eq!(self.dest, self.truth, "destination differs at the switch");
            }
            self.check();
        }

        fn check(&self) {
            match self.tracker.state() {
                State::Switched => assert_eq!(self.dest, self.truth),
                _ => assert_eq!(self.origin, self.truth, "origin lost an acknowledged write"),
            }
            if self.tracker.is_active() {
                // Every copied region, not in flight, is identical on the destination.
                for region in 0..self.tracker.nr_regions {
                    let copied = !self.tracker.is_pending(region)
                        && !self.tracker.is_inflight(&(region..region + 1));
                    if copied {
                        let s = (region * REGION) as usize;
                        let e = (((region + 1) * REGION) as usize).min(self.truth.len());
                        assert_eq!(
                            self.dest[s..e],
                            self.truth[s..e],
                            "copied region {region} stale"
                        );
                    }
                }
            }
            let p = self.tracker.progress(0);
            assert_eq!(p.copied_regions + p.pending_regions, p.total_regions);
            assert!(p.inflight_regions <= p.pending_regions);
        }

        /// Lets the copier run to the end, as the kernel would once the guest goes quiet.
        fn drain(&mut self) {
            self.tracker.set_paused(false);
            while !self.inflight.is_empty() {
                self.finish(0, CopyResult::Done);
            }
            while let Some(b) = self.tracker.next_batch(3) {
                let data = self.origin[b.sectors.start as usize..b.sectors.end as usize].to_vec();
                self.inflight.push((b, data));
                self.finish(0, CopyResult::Done);
            }
            assert!(self.deferred.is_empty(), "deferred writes never released");
            if self.tracker.should_switch() {
                assert!(self.tracker.switch());
            }
            self.check();
            match self.tracker.state() {
                State::Switched => assert_eq!(self.dest, self.truth),
                State::Synced => assert!(self.tracker.no_switch),
                State::Failed(_) | State::Cancelled => assert_eq!(self.origin, self.truth),
                other => panic!("migration ended in {other:?}"),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Random interleavings of unaligned writes, reads, flushes, copy starts and completions,
        /// errors, pause and cancel against a reference model: reads always return the latest
        /// acknowledged write, the destination equals the model at the switch, and the origin
        /// equals it after a failure or cancel.
        #[test]
        fn random_interleavings_keep_every_acknowledged_write(
            (sectors, ops) in (1u64..80).prop_flat_map(|n| (Just(n), prop::collection::vec(op(n), 1..200))),
            no_switch in any::<bool>(),
        ) {
            let mut model = Model::new(sectors, no_switch);
            for op in ops {
                model.step(op);
            }
            model.drain();
        }
    }
}

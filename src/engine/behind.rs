// SPDX-License-Identifier: GPL-2.0

//! Writes behind: the asynchronous mirror (`mirror async`).
//!
//! A guest write to a copied region goes to both devices. With the synchronous mirror the
//! guest waits for both; with the asynchronous one it waits for the origin alone, and the
//! destination's half goes out from a copy of the data (the guest may reuse its pages once it
//! is told the write succeeded) and completes later: a *write behind*. The origin is the system
//! of record until the switch, so nothing the guest was told is lost when the destination is
//! behind: every step that makes the destination the record (the switch, a metadata commit, a
//! suspend that userspace may follow with a table swap) first drains the writes behind.
//!
//! This log holds the writes behind in flight, each in a slot with its sector range and the
//! bio tag of the counts it holds (`super::epoch::BioTag`). It decides, under the routing
//! lock, what a mirrored write does ([`BehindLog::admit`]):
//!
//! - A write that overlaps a write behind in flight waits until that one has landed, whatever
//!   mode: two writes to the same sectors in flight to the destination at once may land in
//!   either order, and the older one landing last would leave the destination with data the
//!   origin no longer has (md's write-behind serialises overlapping writes the same way).
//! - Otherwise, in `async` mode, a plain data write goes behind if a slot is free and the
//!   bytes behind stay within the cap (`mirror_lag`).
//! - Otherwise (sync mode, the cap reached, no slot, a write without data such as a discard
//!   or write-zeroes) the write is mirrored synchronously, as md's write-behind falls back to
//!   synchronous writes past its limit: the guest then waits for the destination, which
//!   throttles it to what the destination takes, and nothing more is held in memory.
//!
//! A write behind ends ([`BehindLog::release`]) in its completion, any context, without the
//! lock: its slot is freed with an atomic store. An admission that still sees the slot taken
//! only waits one wake-up longer.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

/// The most writes behind in flight at once. Every mirrored write looks at each slot in use
/// under the routing lock, so the number stays small; with 4 KiB writes it still allows
/// 512 KiB behind, and larger writes reach the byte cap first.
pub const SLOTS: usize = 128;

/// The default cap on bytes behind (`mirror_lag`), in KiB: 8 MiB, a few milliseconds of a
/// fast guest's writes, enough to hide a destination some milliseconds away.
pub const DEFAULT_LAG_KIB: u64 = 8192;

/// The largest `mirror_lag` in KiB (1 GiB): the bytes behind are pages held in memory.
pub const MAX_LAG_KIB: u64 = 1 << 20;

/// What a mirrored write does, decided by [`BehindLog::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// It overlaps a write behind in flight: wait until one lands and decide again.
    Wait,
    /// Mirror it synchronously: the guest waits for both devices.
    Mirror,
    /// It goes behind, in this slot: the guest waits for the origin alone.
    Behind(usize),
}

/// The mirror's mode: `mirror sync|async`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorMode {
    /// The guest's write completes when both devices have it.
    Sync,
    /// The guest's write completes when the origin has it; the destination follows within the
    /// cap.
    Async,
}

impl MirrorMode {
    /// The word of the table line and of the message.
    pub fn word(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Async => "async",
        }
    }

    /// Parses `sync` or `async`, in any case.
    pub fn parse(word: &str) -> Option<Self> {
        if word.eq_ignore_ascii_case("sync") {
            Some(Self::Sync)
        } else if word.eq_ignore_ascii_case("async") {
            Some(Self::Async)
        } else {
            None
        }
    }
}

/// One write behind: its sectors `[start, end)`, `end` 0 when the slot is free (a write has at
/// least one sector, so a write's `end` is never 0). The slots live out of line, in storage the
/// caller allocates ([`BehindLog::new`]): 4 KiB of them would not belong on a kernel stack.
pub struct Slot {
    start: AtomicU64,
    end: AtomicU64,
    bytes: AtomicU64,
    tag: AtomicU8,
}

impl Default for Slot {
    fn default() -> Self {
        Self::new()
    }
}

impl Slot {
    /// A free slot.
    pub const fn new() -> Self {
        Self {
            start: AtomicU64::new(0),
            end: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            tag: AtomicU8::new(0),
        }
    }
}

/// The writes behind in flight, the mode and the cap, and what was seen of them. `S` holds the
/// slots, [`SLOTS`] of them (a `Vec` in userspace, a `KVec` in the kernel).
pub struct BehindLog<S> {
    slots: S,
    /// One past the highest slot that may be in use: admissions look no further.
    high: AtomicU64,
    asynchronous: AtomicBool,
    cap_bytes: AtomicU64,
    /// Bytes behind now.
    bytes: AtomicU64,
    /// Writes behind in flight now.
    count: AtomicU64,
    /// The most bytes behind seen at once since the target was made.
    max_bytes: AtomicU64,
    /// Writes that went behind, that were mirrored synchronously because the cap or the slots
    /// were used up, and that waited for an overlapping write behind.
    behind_total: AtomicU64,
    capped_total: AtomicU64,
    waited_total: AtomicU64,
}

/// The counters of a [`BehindLog`], for status and sysfs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BehindStats {
    /// The mode now.
    pub mode: Option<MirrorMode>,
    /// The cap on bytes behind.
    pub cap_bytes: u64,
    /// Bytes behind now.
    pub bytes: u64,
    /// Writes behind in flight now.
    pub count: u64,
    /// The most bytes behind seen at once.
    pub max_bytes: u64,
    /// Writes that went behind.
    pub behind_total: u64,
    /// Writes mirrored synchronously because the cap or the slots were used up.
    pub capped_total: u64,
    /// Writes that waited for an overlapping write behind.
    pub waited_total: u64,
}

impl<S: core::ops::Deref<Target = [Slot]>> BehindLog<S> {
    /// An empty log in `mode` with a cap of `lag_kib` KiB, over `slots`: free slots, at most
    /// [`SLOTS`] of them used.
    pub fn new(slots: S, mode: MirrorMode, lag_kib: u64) -> Self {
        Self {
            slots,
            high: AtomicU64::new(0),
            asynchronous: AtomicBool::new(matches!(mode, MirrorMode::Async)),
            cap_bytes: AtomicU64::new(lag_kib * 1024),
            bytes: AtomicU64::new(0),
            count: AtomicU64::new(0),
            max_bytes: AtomicU64::new(0),
            behind_total: AtomicU64::new(0),
            capped_total: AtomicU64::new(0),
            waited_total: AtomicU64::new(0),
        }
    }

    /// The mode now.
    pub fn mode(&self) -> MirrorMode {
        if self.asynchronous.load(Ordering::Relaxed) {
            MirrorMode::Async
        } else {
            MirrorMode::Sync
        }
    }

    /// Changes the mode (the `mirror` message). Writes already behind stay behind; every later
    /// write follows the new mode.
    pub fn set_mode(&self, mode: MirrorMode) {
        self.asynchronous
            .store(mode == MirrorMode::Async, Ordering::Relaxed);
    }

    /// Changes the cap (the `mirror_lag` message). A lower cap than the bytes behind now only
    /// keeps new writes synchronous until enough have landed.
    pub fn set_lag_kib(&self, kib: u64) {
        self.cap_bytes.store(kib * 1024, Ordering::Relaxed);
    }

    /// The cap in KiB.
    pub fn lag_kib(&self) -> u64 {
        self.cap_bytes.load(Ordering::Relaxed) / 1024
    }

    /// Writes behind in flight.
    pub fn in_flight(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Whether a write behind in flight overlaps `[sector, sector + sectors)`.
    pub fn overlaps(&self, sector: u64, sectors: u64) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let end = sector.saturating_add(sectors.max(1));
        let high = self.high.load(Ordering::Relaxed) as usize;
        let used = high.min(self.slots.len());
        self.slots[..used].iter().any(|slot| {
            let slot_end = slot.end.load(Ordering::Acquire);
            slot_end != 0 && slot.start.load(Ordering::Relaxed) < end && sector < slot_end
        })
    }

    /// Whether a mirrored write over `[sector, sector + sectors)` must wait for a write behind
    /// that overlaps it; counted when it must. Call under the routing lock.
    pub fn must_wait(&self, sector: u64, sectors: u64) -> bool {
        let wait = self.overlaps(sector, sectors);
        if wait {
            self.waited_total.fetch_add(1, Ordering::Relaxed);
        }
        wait
    }

    /// Whether a write of `bytes` could go behind now (async mode, a slot free, room under the
    /// cap): worth making a copy of its data for. A write that finds no room in async mode is
    /// counted as mirrored at the cap.
    pub fn has_room(&self, bytes: u64) -> bool {
        if self.mode() == MirrorMode::Sync {
            return false;
        }
        let room = (self.count.load(Ordering::Relaxed) as usize) < self.slots.len().min(SLOTS)
            && self.bytes.load(Ordering::Relaxed).saturating_add(bytes)
                <= self.cap_bytes.load(Ordering::Relaxed);
        if !room {
            self.capped_total.fetch_add(1, Ordering::Relaxed);
        }
        room
    }

    /// Decides what a mirrored write of `bytes` over `sectors` sectors from `sector` does;
    /// `may_go_behind` says whether it is a plain data write (not a discard, write-zeroes or
    /// flush, which have no data to copy). Call under the routing lock: admissions are
    /// serialised by it, releases are not.
    pub fn admit(&self, sector: u64, sectors: u64, bytes: u64, may_go_behind: bool) -> Admit {
        if self.must_wait(sector, sectors) {
            return Admit::Wait;
        }
        self.claim(sector, sectors, bytes, may_go_behind)
    }

    /// The second half of [`BehindLog::admit`], for a write already found to overlap no write
    /// behind (under the same hold of the routing lock): a slot, or `Mirror`.
    pub fn claim(&self, sector: u64, sectors: u64, bytes: u64, may_go_behind: bool) -> Admit {
        if !may_go_behind || self.mode() == MirrorMode::Sync || sectors == 0 {
            return Admit::Mirror;
        }
        let now = self.bytes.load(Ordering::Acquire);
        if now.saturating_add(bytes) > self.cap_bytes.load(Ordering::Relaxed) {
            self.capped_total.fetch_add(1, Ordering::Relaxed);
            return Admit::Mirror;
        }
        let Some(index) = self.slots[..self.slots.len().min(SLOTS)]
            .iter()
            .position(|slot| slot.end.load(Ordering::Acquire) == 0)
        else {
            self.capped_total.fetch_add(1, Ordering::Relaxed);
            return Admit::Mirror;
        };
        let slot = &self.slots[index];
        slot.start.store(sector, Ordering::Relaxed);
        slot.bytes.store(bytes, Ordering::Relaxed);
        slot.tag.store(0, Ordering::Relaxed);
        // Release: an admission that sees the end sees the start.
        slot.end.store(sector + sectors, Ordering::Release);
        if index as u64 >= self.high.load(Ordering::Relaxed) {
            self.high.store(index as u64 + 1, Ordering::Relaxed);
        }
        let total = self.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        self.max_bytes.fetch_max(total, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::AcqRel);
        self.behind_total.fetch_add(1, Ordering::Relaxed);
        Admit::Behind(index)
    }

    /// Attaches the bio tag of the counts the write behind in `slot` holds, before it is
    /// submitted; [`BehindLog::release`] hands it back.
    pub fn set_tag(&self, slot: usize, tag: u8) {
        self.slots[slot].tag.store(tag, Ordering::Relaxed);
    }

    /// Ends the write behind in `slot`, any context; returns the tag it held and whether it
    /// was the last write behind in flight.
    pub fn release(&self, slot: usize) -> (u8, bool) {
        let slot = &self.slots[slot];
        let tag = slot.tag.load(Ordering::Relaxed);
        let bytes = slot.bytes.load(Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        // Release: whoever sees the slot free or the count drop sees the write landed.
        slot.end.store(0, Ordering::Release);
        let last = self.count.fetch_sub(1, Ordering::AcqRel) == 1;
        (tag, last)
    }

    /// The counters now.
    pub fn stats(&self) -> BehindStats {
        BehindStats {
            mode: Some(self.mode()),
            cap_bytes: self.cap_bytes.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
            max_bytes: self.max_bytes.load(Ordering::Relaxed),
            behind_total: self.behind_total.load(Ordering::Relaxed),
            capped_total: self.capped_total.load(Ordering::Relaxed),
            waited_total: self.waited_total.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn log(mode: MirrorMode, kib: u64) -> BehindLog<Vec<Slot>> {
        BehindLog::new((0..SLOTS).map(|_| Slot::new()).collect(), mode, kib)
    }

    #[test]
    fn sync_mode_mirrors_and_async_goes_behind() {
        let s = log(MirrorMode::Sync, 64);
        assert_eq!(s.admit(0, 8, 4096, true), Admit::Mirror);
        let a = log(MirrorMode::Async, 64);
        assert_eq!(a.admit(0, 8, 4096, true), Admit::Behind(0));
        assert_eq!(a.admit(8, 8, 4096, false), Admit::Mirror, "no data to copy");
        assert_eq!(a.in_flight(), 1);
    }

    #[test]
    fn an_overlapping_write_waits_in_either_mode_until_the_first_lands() {
        let a = log(MirrorMode::Async, 64);
        let Admit::Behind(slot) = a.admit(16, 8, 4096, true) else {
            panic!()
        };
        a.set_tag(slot, 7);
        assert_eq!(a.admit(20, 1, 512, true), Admit::Wait);
        assert_eq!(a.admit(8, 9, 4608, false), Admit::Wait, "a discard too");
        a.set_mode(MirrorMode::Sync);
        assert_eq!(a.admit(23, 8, 4096, true), Admit::Wait, "sync mode too");
        assert_eq!(a.admit(24, 8, 4096, true), Admit::Mirror, "adjacent only");
        assert_eq!(a.admit(8, 8, 4096, true), Admit::Mirror, "adjacent only");
        assert_eq!(a.release(slot), (7, true));
        assert_eq!(a.admit(20, 1, 512, true), Admit::Mirror);
        assert_eq!(a.stats().waited_total, 3);
    }

    #[test]
    fn the_cap_holds_and_past_it_writes_are_synchronous() {
        let a = log(MirrorMode::Async, 8);
        assert_eq!(a.admit(0, 8, 4096, true), Admit::Behind(0));
        assert_eq!(a.admit(8, 8, 4096, true), Admit::Behind(1));
        assert_eq!(a.admit(16, 8, 4096, true), Admit::Mirror);
        assert_eq!(a.stats().bytes, 8192);
        a.release(0);
        assert_eq!(a.admit(16, 8, 4096, true), Admit::Behind(0));
        let st = a.stats();
        assert_eq!(
            (st.max_bytes, st.capped_total, st.behind_total),
            (8192, 1, 3)
        );
    }

    #[test]
    fn the_slots_run_out_before_the_bytes() {
        let a = log(MirrorMode::Async, MAX_LAG_KIB);
        for i in 0..SLOTS as u64 {
            assert!(matches!(a.admit(i * 8, 8, 4096, true), Admit::Behind(_)));
        }
        assert_eq!(a.admit(SLOTS as u64 * 8, 8, 4096, true), Admit::Mirror);
    }

    /// One step of a guest and a destination that completes writes behind in any order.
    #[derive(Debug, Clone)]
    enum Step {
        /// The guest writes `len` sectors from `sector` (values 0..4 of data `value`).
        Write { sector: u64, len: u64, value: u8 },
        /// The destination completes the write behind in flight with this index (modulo).
        Land(usize),
        /// The mode changes.
        Mode(bool),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u64..32, 1u64..9, any::<u8>()).prop_map(|(sector, len, value)| Step::Write { sector, len, value }),
            4 => any::<usize>().prop_map(Step::Land),
            1 => any::<bool>().prop_map(Step::Mode),
        ]
    }

    proptest! {
        /// Against a reference model: sectors on the origin hold the guest's last write to
        /// them; on the destination, writes behind land in any order. Once every write has
        /// landed the destination equals the origin, the bytes behind never passed the cap,
        /// and a waiting write is retried once something landed (it is never lost).
        #[test]
        fn writes_behind_landing_out_of_order_leave_the_destination_equal(
            steps in proptest::collection::vec(step(), 1..200),
            cap_kib in 1u64..16,
        ) {
            let a = log(MirrorMode::Async, cap_kib);
            let mut origin = [0u8; 40];
            let mut dest = [0u8; 40];
            // Writes behind in flight: slot, sector, len, value.
            let mut flying: Vec<(usize, u64, u64, u8)> = Vec::new();
            // A write that waits: retried after each landing.
            let mut waiting: Vec<(u64, u64, u8)> = Vec::new();
            let issue = |a: &BehindLog<Vec<Slot>>, flying: &mut Vec<(usize, u64, u64, u8)>,
                             origin: &mut [u8; 40], dest: &mut [u8; 40],
                             sector: u64, len: u64, value: u8| -> bool {
                match a.admit(sector, len, len * 512, true) {
                    Admit::Wait => false,
                    Admit::Mirror => {
                        for s in sector..sector + len {
                            origin[s as usize] = value;
                            dest[s as usize] = value;
                        }
                        true
                    }
                    Admit::Behind(slot) => {
                        for s in sector..sector + len {
                            origin[s as usize] = value;
                        }
                        flying.push((slot, sector, len, value));
                        true
                    }
                }
            };
            // The destination completes the write behind `index`; the waiting write, if any,
            // is tried again.
            #[allow(clippy::type_complexity)]
            fn land(
                a: &BehindLog<Vec<Slot>>,
                flying: &mut Vec<(usize, u64, u64, u8)>,
                waiting: &mut Vec<(u64, u64, u8)>,
                origin: &mut [u8; 40],
                dest: &mut [u8; 40],
                index: usize,
                issue: &dyn Fn(&BehindLog<Vec<Slot>>, &mut Vec<(usize, u64, u64, u8)>,
                               &mut [u8; 40], &mut [u8; 40], u64, u64, u8) -> bool,
            ) {
                let (slot, sector, len, value) = flying.remove(index);
                for s in sector..sector + len {
                    dest[s as usize] = value;
                }
                a.release(slot);
                if let Some(&(sector, len, value)) = waiting.first() {
                    if issue(a, flying, origin, dest, sector, len, value) {
                        waiting.clear();
                    }
                }
            }
            for step in steps {
                match step {
                    Step::Write { sector, len, value } => {
                        // A guest that waits for one write does not issue the next (its
                        // order is the order of the acknowledgements).
                        if waiting.is_empty()
                            && !issue(&a, &mut flying, &mut origin, &mut dest, sector, len, value)
                        {
                            waiting.push((sector, len, value));
                        }
                    }
                    Step::Land(i) if !flying.is_empty() => {
                        let index = i % flying.len();
                        land(&a, &mut flying, &mut waiting, &mut origin, &mut dest, index, &issue);
                    }
                    Step::Land(_) => {}
                    Step::Mode(on) => a.set_mode(if on { MirrorMode::Async } else { MirrorMode::Sync }),
                }
                prop_assert!(a.stats().bytes <= cap_kib * 1024);
                prop_assert_eq!(a.stats().count as usize, flying.len());
            }
            while !flying.is_empty() {
                land(&a, &mut flying, &mut waiting, &mut origin, &mut dest, 0, &issue);
            }
            prop_assert!(waiting.is_empty(), "a waiting write was never issued");
            prop_assert_eq!(origin, dest);
            prop_assert_eq!(a.stats().bytes, 0);
        }
    }
}

// SPDX-License-Identifier: GPL-2.0

//! The write-intent log: which copied regions may take a mirrored write now, and which bits
//! the intent bitmap on the metadata device must hold (see `Documentation/dm-migrate.rst`,
//! "What is recorded, and when").

/// The write-intent log in memory: which regions may take a mirrored write now, and what the
/// intent bitmap on the metadata device must say.
///
/// A region is in at most one of four states, and the on-disk bit is 1 in all but the first:
///
/// - clean: a mirrored write must first make its bit durable (it is *wanted*, and the write
///   waits);
/// - durable: mirrored writes go at once and mark the region *touched*;
/// - sending: its bit is being written; writes still wait;
/// - clearing: chosen to be cleared (untouched for a whole commit interval); a write takes it
///   back to durable at once, since its bit is still 1 on disk.
///
/// Wanted regions are collected while a write of the bitmap is in flight and go out with the
/// next one. A clear is only written after every mirrored write admitted before the previous
/// commit has completed and the destination was flushed (the caller's part, see
/// [`IntentLog::start_clear`]).
///
/// # Memory
///
/// Almost every region is clean almost all the time: only the regions the guest wrote in the
/// last commit intervals are not. So the five bit planes (durable, wanted, sending, clearing,
/// touched) are kept per chunk of [`CHUNK_REGIONS`] regions, and a chunk whose regions are all
/// clean has no planes at all (issue 24: five flat bitmaps took 10 MiB per TiB at 64 KiB
/// regions). `C` is the caller's array of chunks, [`nr_chunks`] long; `P` holds one chunk's
/// planes, at least [`CHUNK_WORDS`] words.
///
/// Planes are never allocated here: an admission runs under the routing spinlock. The caller
/// keeps a few spare planes in the log ([`IntentLog::give`]), from where it may sleep (the
/// metadata thread). A write to a clean chunk takes a spare; when none is left the write waits
/// like any write whose intent is not durable ([`Admit::Wait`]), the log says it is *starved*
/// ([`IntentLog::has_wanted`]), and the metadata thread gives more and routes the waiting
/// writes again. The spares live at the end of the caller's chunk array (its last [`SPARES`]
/// entries), not in the log: the log is built on a constructor's stack, which is deep already.
/// A chunk that becomes all clean gives its planes back to the spares (or drops
/// them: the kernel's pages come from `kmalloc`, whose `kfree` is fine under a spinlock).
pub struct IntentLog<C, P> {
    chunks: C,
    /// The chunks of the regions; the array's last [`SPARES`] entries are the spares.
    nr_chunks: usize,
    /// Regions past the last one have no state (the last chunk may reach past it).
    nr_regions: u64,
    nr_wanted: u64,
    /// An admission found a clean chunk and no spare planes for it.
    starved: bool,
    /// Admissions that found no spare planes, since the log was made.
    starved_total: u64,
    /// Chunks that have planes now.
    in_use: usize,
    /// The spares the log keeps, at most [`SPARES`].
    spare_cap: usize,
    planes: core::marker::PhantomData<P>,
}

/// Words of one bit plane of a chunk: the five planes fill a page of 512 words (510 of them).
pub const PLANE_WORDS: usize = 102;
/// Regions per chunk.
pub const CHUNK_REGIONS: u64 = PLANE_WORDS as u64 * 64;
/// The planes of a chunk, in this order in its words.
const PLANES: usize = 5;
const DURABLE: usize = 0;
const WANTED: usize = 1;
const SENDING: usize = 2;
const CLEARING: usize = 3;
const TOUCHED: usize = 4;
/// Words a chunk's planes take.
pub const CHUNK_WORDS: usize = PLANES * PLANE_WORDS;
/// Spare planes the log keeps for admissions to clean chunks.
pub const SPARES: usize = 16;

/// The chunks a log over `nr_regions` regions takes.
pub fn nr_chunks(nr_regions: u64) -> u64 {
    nr_regions.div_ceil(CHUNK_REGIONS)
}

/// The entries of the chunk array a log over `nr_regions` regions takes: its chunks and, after
/// them, its spares.
pub fn chunk_entries(nr_regions: u64) -> u64 {
    nr_chunks(nr_regions) + SPARES as u64
}

/// The chunks a log loaded from an on-disk bitmap (word `w` is `word(w)`, `nr_words` words)
/// needs planes for: those with a bit set.
pub fn chunks_needed(nr_words: usize, word: impl Fn(usize) -> u64) -> usize {
    (0..nr_words.div_ceil(PLANE_WORDS))
        .filter(|&chunk| {
            let first = chunk * PLANE_WORDS;
            (first..(first + PLANE_WORDS).min(nr_words)).any(|w| word(w) != 0)
        })
        .count()
}

/// What [`IntentLog::admit`] decided for a mirrored write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Every region's intent is durable: the write may go.
    Go,
    /// Some region's intent must be written first (or its chunk's planes must be given): the
    /// write waits for the metadata thread.
    Wait,
}

/// Region `region`'s chunk, and its word and bit within each plane.
fn place(region: u64) -> (usize, usize, u64) {
    (
        (region / CHUNK_REGIONS) as usize,
        ((region / 64) as usize) % PLANE_WORDS,
        1 << (region % 64),
    )
}

impl<C, P> IntentLog<C, P>
where
    C: core::ops::DerefMut<Target = [Option<P>]>,
    P: core::ops::DerefMut<Target = [u64]>,
{
    /// An empty log of `nr_regions` regions over `chunks` ([`chunk_entries`] of them, which
    /// it empties), with no spare planes. Returns `None` for a chunk array of another length.
    pub fn new(mut chunks: C, nr_regions: u64) -> Option<Self> {
        if chunks.len() as u64 != chunk_entries(nr_regions) {
            return None;
        }
        chunks.iter_mut().for_each(|c| *c = None);
        let nr_chunks = chunks.len() - SPARES;
        Some(Self {
            chunks,
            nr_chunks,
            nr_regions,
            nr_wanted: 0,
            starved: false,
            starved_total: 0,
            in_use: 0,
            spare_cap: SPARES,
            planes: core::marker::PhantomData,
        })
    }

    /// The log keeps at most `cap` spares (at most [`SPARES`]), for a model with few chunks.
    pub fn with_spares(mut self, cap: usize) -> Self {
        self.spare_cap = cap.min(SPARES);
        self
    }

    /// The spare slots, at the end of the chunk array.
    fn spares(&self) -> &[Option<P>] {
        &self.chunks[self.nr_chunks..self.nr_chunks + self.spare_cap]
    }

    fn spares_mut(&mut self) -> &mut [Option<P>] {
        let (first, cap) = (self.nr_chunks, self.spare_cap);
        &mut self.chunks[first..first + cap]
    }

    /// The chunks of the regions, without the spares.
    fn regions_chunks(&self) -> &[Option<P>] {
        &self.chunks[..self.nr_chunks]
    }

    /// The spare planes the log would take now.
    pub fn spares_wanted(&self) -> usize {
        self.spares().iter().filter(|s| s.is_none()).count()
    }

    /// Gives the log spare planes, of at least [`CHUNK_WORDS`] words; returns them when it has
    /// enough (or they are too short).
    pub fn give(&mut self, planes: P) -> Option<P> {
        if planes.len() < CHUNK_WORDS {
            return Some(planes);
        }
        let Some(slot) = self.spares_mut().iter_mut().find(|s| s.is_none()) else {
            return Some(planes);
        };
        *slot = Some(planes);
        None
    }

    /// Ends a starvation once spare planes are at hand again, given by the caller or given
    /// back by chunks that became clean: returns whether writes waited for planes, which the
    /// caller must now route again (nothing else would: a waiting write is only retried when
    /// something it waits for happens).
    pub fn end_starvation(&mut self) -> bool {
        if self.starved && self.spares().iter().any(Option::is_some) {
            self.starved = false;
            return true;
        }
        false
    }

    /// The chunks that have planes now.
    pub fn chunks_in_use(&self) -> usize {
        self.in_use
    }

    /// Gives chunk `chunk` planes from the spares, all clean; false when none is left.
    fn take_planes(&mut self, chunk: usize) -> bool {
        if self.chunks[chunk].is_some() {
            return true;
        }
        let Some(mut planes) = self.spares_mut().iter_mut().find_map(Option::take) else {
            return false;
        };
        planes[..CHUNK_WORDS].fill(0);
        self.chunks[chunk] = Some(planes);
        self.in_use += 1;
        true
    }

    /// Drops the planes of every chunk that is all clean (back to the spares while they have
    /// room).
    fn release_clean(&mut self) {
        for chunk in 0..self.nr_chunks {
            let clean = self.chunks[chunk]
                .as_ref()
                .is_some_and(|p| p[..(TOUCHED + 1) * PLANE_WORDS].iter().all(|&w| w == 0));
            if !clean {
                continue;
            }
            if let Some(planes) = self.chunks[chunk].take() {
                self.in_use -= 1;
                if let Some(slot) = self.spares_mut().iter_mut().find(|s| s.is_none()) {
                    *slot = Some(planes);
                }
            }
        }
    }

    /// For every chunk with planes: `f(planes)`.
    fn each(&mut self, mut f: impl FnMut(&mut [u64])) {
        let nr_chunks = self.nr_chunks;
        for planes in self.chunks[..nr_chunks].iter_mut().flatten() {
            f(&mut planes[..CHUNK_WORDS]);
        }
    }

    /// Starts from an on-disk intent bitmap, word `word` of it being `on_disk` (after a crash
    /// its regions are copied again, and their bits are cleared by the first commits). A chunk
    /// with bits set takes planes from `planes` (counted with [`chunks_needed`]); returns
    /// false when none was left: the caller must then refuse to go on, since a bit it could
    /// not hold would be lost.
    pub fn load(
        &mut self,
        word: usize,
        on_disk: u64,
        planes: &mut dyn FnMut() -> Option<P>,
    ) -> bool {
        if on_disk == 0 {
            return true;
        }
        let chunk = word / PLANE_WORDS;
        if chunk >= self.nr_chunks {
            // Past the last region: no bit may be set there.
            return false;
        }
        if self.chunks[chunk].is_none() {
            let Some(mut p) = planes() else {
                return false;
            };
            if p.len() < CHUNK_WORDS {
                return false;
            }
            p[..CHUNK_WORDS].fill(0);
            self.chunks[chunk] = Some(p);
            self.in_use += 1;
        }
        if let Some(p) = self.chunks[chunk].as_mut() {
            p[CLEARING * PLANE_WORDS + word % PLANE_WORDS] = on_disk;
        }
        true
    }

    /// Admissions that found no spare planes (and waited for the metadata thread to give
    /// some), since the log was made: a write routed again while the spares are still short
    /// counts again.
    pub fn starved_total(&self) -> u64 {
        self.starved_total
    }

    /// Decides for a mirrored write over `regions`; `copied` says which regions the copier has
    /// copied (a pending region is copied again later, so a write to it needs no intent).
    pub fn admit(&mut self, regions: core::ops::Range<u64>, copied: impl Fn(u64) -> bool) -> Admit {
        let starved = self.starved;
        self.starved = false;
        let admit = self.admit_regions(regions, copied);
        if self.starved {
            // Counted once per admission.
            self.starved_total += 1;
        }
        self.starved |= starved;
        admit
    }

    fn admit_regions(
        &mut self,
        regions: core::ops::Range<u64>,
        copied: impl Fn(u64) -> bool,
    ) -> Admit {
        let mut admit = Admit::Go;
        for region in regions {
            if !copied(region) || region >= self.nr_regions {
                continue;
            }
            let (chunk, w, b) = place(region);
            if !self.take_planes(chunk) {
                // No planes to record its wish in: the write waits until the metadata thread
                // gave some, and is then routed again.
                self.starved = true;
                admit = Admit::Wait;
                continue;
            }
            let Some(p) = self.chunks[chunk].as_mut() else {
                continue;
            };
            let at = |plane: usize| plane * PLANE_WORDS + w;
            if p[at(DURABLE)] & b != 0 {
                p[at(TOUCHED)] |= b;
            } else if p[at(CLEARING)] & b != 0 {
                p[at(CLEARING)] &= !b;
                p[at(DURABLE)] |= b;
                p[at(TOUCHED)] |= b;
            } else {
                if p[at(WANTED)] & b == 0 {
                    p[at(WANTED)] |= b;
                    self.nr_wanted += 1;
                }
                admit = Admit::Wait;
            }
        }
        admit
    }

    /// Whether writes wait for the metadata thread: for an intent write, or for spare planes.
    pub fn has_wanted(&self) -> bool {
        self.nr_wanted > 0 || self.starved
    }

    /// Whether an admission found no spare planes, and no [`IntentLog::end_starvation`] has
    /// routed the waiting writes again since.
    pub fn is_starved(&self) -> bool {
        self.starved
    }

    /// Whether a clear is under way (regions chosen to be cleared by the next bitmap write).
    pub fn is_clearing(&self) -> bool {
        self.regions_chunks().iter().flatten().any(|p| {
            p[CLEARING * PLANE_WORDS..(CLEARING + 1) * PLANE_WORDS]
                .iter()
                .any(|&w| w != 0)
        })
    }

    /// Starts a write of the wanted bits: they become *sending*. Returns false when nothing is
    /// wanted or a write is still in flight (its end must be recorded first).
    pub fn start_send(&mut self) -> bool {
        let sending = self.regions_chunks().iter().flatten().any(|p| {
            p[SENDING * PLANE_WORDS..(SENDING + 1) * PLANE_WORDS]
                .iter()
                .any(|&w| w != 0)
        });
        if self.nr_wanted == 0 || sending {
            return false;
        }
        self.each(|p| {
            let (wanted, sending) =
                p[WANTED * PLANE_WORDS..(SENDING + 1) * PLANE_WORDS].split_at_mut(PLANE_WORDS);
            for (s, w) in sending.iter_mut().zip(wanted.iter()) {
                *s = *w;
            }
            wanted.fill(0);
        });
        self.nr_wanted = 0;
        true
    }

    /// Records that the bitmap holding the sending bits is durable: their writes may go.
    pub fn sent(&mut self) {
        self.each(|p| {
            for i in 0..PLANE_WORDS {
                p[DURABLE * PLANE_WORDS + i] |= p[SENDING * PLANE_WORDS + i];
                p[SENDING * PLANE_WORDS + i] = 0;
            }
        });
    }

    /// Starts a clear: durable regions untouched since the last one become *clearing*, and the
    /// touched marks start over. The caller flips the mirrored writes' epoch in the same step
    /// (under the same lock), drains the epoch it left, flushes the destination, and then calls
    /// [`IntentLog::cleared`] and writes the bitmap. Safety comes from the drain: every write
    /// to a clearing region was admitted before the flip (a later one takes the region back to
    /// durable). Leaving out the regions touched in the last interval only spares hot regions a
    /// bitmap write each interval.
    pub fn start_clear(&mut self) {
        self.each(|p| {
            for i in 0..PLANE_WORDS {
                let clear = p[DURABLE * PLANE_WORDS + i] & !p[TOUCHED * PLANE_WORDS + i];
                p[CLEARING * PLANE_WORDS + i] |= clear;
                p[DURABLE * PLANE_WORDS + i] &= !clear;
                p[TOUCHED * PLANE_WORDS + i] = 0;
            }
        });
    }

    /// Ends a clear begun by [`IntentLog::start_clear`]: the clearing regions (those no write
    /// took back meanwhile) are clean from now on; the next bitmap write records it. Chunks
    /// left all clean give their planes back.
    pub fn cleared(&mut self) {
        self.each(|p| p[CLEARING * PLANE_WORDS..(CLEARING + 1) * PLANE_WORDS].fill(0));
        self.release_clean();
    }

    /// Forgets everything, for a copy that starts over (every region pending: none needs an
    /// intent) while no write is in flight or waiting.
    pub fn reset(&mut self) {
        self.each(|p| p.fill(0));
        self.release_clean();
        self.nr_wanted = 0;
        self.starved = false;
    }

    /// Drops the wanted marks: for a migration that has ended, whose waiting writes are routed
    /// again without an intent.
    pub fn drop_wanted(&mut self) {
        self.each(|p| p[WANTED * PLANE_WORDS..(WANTED + 1) * PLANE_WORDS].fill(0));
        self.release_clean();
        self.nr_wanted = 0;
        self.starved = false;
    }

    /// Starts a clear of every durable region, touched or not: for a quiesced device (at
    /// suspend), where no write is in flight. The rest is as [`IntentLog::start_clear`]: until
    /// [`IntentLog::cleared`], after the flushes, the disk keeps the bits.
    pub fn start_clear_all(&mut self) {
        // Untouched, every durable region is chosen.
        self.each(|p| p[TOUCHED * PLANE_WORDS..(TOUCHED + 1) * PLANE_WORDS].fill(0));
        self.start_clear();
    }

    /// The intent bitmap's word `word` as the disk must have it now: every region that may have
    /// (or is about to have) a mirrored write in flight, or whose clear is not yet written.
    pub fn on_disk_word(&self, word: usize) -> u64 {
        match self.regions_chunks().get(word / PLANE_WORDS) {
            Some(Some(p)) => {
                let i = word % PLANE_WORDS;
                p[DURABLE * PLANE_WORDS + i]
                    | p[SENDING * PLANE_WORDS + i]
                    | p[CLEARING * PLANE_WORDS + i]
                    | p[WANTED * PLANE_WORDS + i]
            }
            _ => 0,
        }
    }

    /// The number of regions whose intent bit the disk must have set now.
    pub fn dirty_regions(&self) -> u64 {
        let mut count = 0;
        for (chunk, planes) in self.regions_chunks().iter().enumerate() {
            if planes.is_some() {
                let first = chunk * PLANE_WORDS;
                count += (first..first + PLANE_WORDS)
                    .map(|w| u64::from(self.on_disk_word(w).count_ones()))
                    .sum::<u64>();
            }
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    type TestLog = IntentLog<Vec<Option<Vec<u64>>>, Vec<u64>>;

    /// A log of `regions` regions with no spare planes.
    fn starving(regions: u64) -> TestLog {
        IntentLog::new(vec![None; chunk_entries(regions) as usize], regions).unwrap()
    }

    /// A log of `words` words of regions, with every spare it takes.
    fn log(words: usize) -> TestLog {
        let mut l = starving(words as u64 * 64);
        while l.spares_wanted() > 0 {
            assert!(l.give(vec![0; CHUNK_WORDS]).is_none());
        }
        l
    }

    #[test]
    fn a_write_to_a_clean_chunk_without_spare_planes_waits_until_some_are_given() {
        let mut l = starving(3 * CHUNK_REGIONS);
        let copied = |_| true;
        assert!(!l.has_wanted());
        assert_eq!(l.admit(5..6, copied), Admit::Wait);
        assert!(
            l.is_starved() && l.has_wanted(),
            "the metadata thread must come"
        );
        assert_eq!(l.starved_total(), 1);
        assert_eq!(l.on_disk_word(0), 0, "nothing to record it in");
        assert!(!l.start_send(), "nothing wanted yet");
        assert!(l.give(vec![0; CHUNK_WORDS]).is_none());
        assert!(
            l.is_starved(),
            "until the caller ends it, and routes the writes again"
        );
        assert!(l.end_starvation());
        assert!(!l.is_starved() && !l.end_starvation());
        // Routed again: now it is wanted like any first write.
        assert_eq!(l.admit(5..6, copied), Admit::Wait);
        assert_eq!(l.on_disk_word(0), 1 << 5);
        assert!(l.start_send());
        l.sent();
        assert_eq!(l.admit(5..6, copied), Admit::Go);
        // A write over two chunks with one spare: the first chunk's bit is wanted, the
        // second starves.
        assert!(l.give(vec![0; CHUNK_WORDS]).is_none());
        let edge = 2 * CHUNK_REGIONS;
        assert_eq!(l.admit(edge - 1..edge + 1, copied), Admit::Wait);
        assert!(l.is_starved());
        assert_eq!(l.starved_total(), 2, "one admission, counted once");
        assert_eq!(l.chunks_in_use(), 2);
        assert!(
            l.give(vec![0; 3]).is_some(),
            "too short for a chunk's planes"
        );
    }

    /// The metadata thread gives no spares while it has them all; a clear that gave them
    /// back must still end a starvation (found in review: the write waited forever, and
    /// suspend with it).
    #[test]
    fn a_clear_that_refills_the_spares_ends_a_starvation() {
        let mut l = starving(3 * CHUNK_REGIONS).with_spares(2);
        while l.spares_wanted() > 0 {
            l.give(vec![0; CHUNK_WORDS]);
        }
        let copied = |_| true;
        let (a, b, c) = (0, CHUNK_REGIONS, 2 * CHUNK_REGIONS);
        assert_eq!(l.admit(a..a + 1, copied), Admit::Wait);
        assert_eq!(l.admit(b..b + 1, copied), Admit::Wait);
        assert_eq!(l.admit(c..c + 1, copied), Admit::Wait);
        assert!(l.is_starved());
        assert!(l.start_send());
        l.sent();
        // Routed again after the send: still no spare.
        assert_eq!(l.admit(c..c + 1, copied), Admit::Wait);
        assert!(!l.end_starvation());
        l.start_clear();
        l.cleared();
        assert_eq!(l.spares_wanted(), 0, "the clear gave both spares back");
        assert!(l.has_wanted(), "the metadata thread must not sleep");
        assert!(
            l.end_starvation(),
            "spares at hand: the waiting write must be routed again"
        );
        assert_eq!(l.admit(c..c + 1, copied), Admit::Wait);
        assert_eq!(l.on_disk_word((c / 64) as usize), 1, "wanted now");
    }

    #[test]
    fn planes_go_back_once_their_chunk_is_clean_again() {
        let mut l = log(3 * PLANE_WORDS);
        let copied = |_| true;
        for r in [0, CHUNK_REGIONS + 7, 2 * CHUNK_REGIONS + 63] {
            assert_eq!(l.admit(r..r + 1, copied), Admit::Wait);
        }
        assert_eq!(l.chunks_in_use(), 3);
        assert_eq!(l.spares_wanted(), 3);
        assert!(l.start_send());
        l.sent();
        assert_eq!(l.dirty_regions(), 3);
        // Touched before the first clear (the first write's admission does not count), then
        // untouched for an interval, then cleared.
        l.start_clear();
        l.cleared();
        assert_eq!(
            l.chunks_in_use(),
            0,
            "never touched after the send: cleared at once"
        );
        assert_eq!(l.spares_wanted(), 0, "the planes went back to the spares");
        assert_eq!(l.dirty_regions(), 0);
        assert_eq!(l.admit(7..8, copied), Admit::Wait);
        l.drop_wanted();
        assert_eq!(l.chunks_in_use(), 0);
    }

    #[test]
    fn a_load_takes_planes_for_the_chunks_with_bits_only() {
        let words = 3 * PLANE_WORDS;
        let disk = |w: usize| {
            if w == 1 || w == 2 * PLANE_WORDS + 5 {
                0b101
            } else {
                0
            }
        };
        assert_eq!(chunks_needed(words, disk), 2);
        let mut l = starving(words as u64 * 64);
        let mut pool = vec![vec![0u64; CHUNK_WORDS], vec![0u64; CHUNK_WORDS]];
        for w in 0..words {
            assert!(l.load(w, disk(w), &mut || pool.pop()));
        }
        assert_eq!(l.chunks_in_use(), 2);
        assert_eq!(l.on_disk_word(2 * PLANE_WORDS + 5), 0b101);
        assert_eq!(l.dirty_regions(), 4);
        // One more chunk with bits and no planes left: refused, not dropped.
        assert!(!l.load(PLANE_WORDS, 1, &mut || None));
        l.start_clear_all();
        l.cleared();
        assert_eq!(l.chunks_in_use(), 0);
    }

    #[test]
    fn a_first_write_waits_for_its_intent_and_later_ones_do_not() {
        let mut l = log(1);
        let copied = |_| true;
        assert_eq!(l.admit(3..5, copied), Admit::Wait);
        assert_eq!(l.on_disk_word(0), 0b11000);
        assert!(l.start_send());
        assert_eq!(l.admit(4..5, copied), Admit::Wait, "still being written");
        l.sent();
        assert_eq!(l.admit(3..4, copied), Admit::Go);
        // Region 4 was wanted again while sending: it goes with the next write, which finds
        // the bit already set.
        assert!(l.start_send());
        l.sent();
        assert_eq!(l.admit(3..5, copied), Admit::Go);
        assert_eq!(l.admit(7..8, |r| r != 7), Admit::Go, "pending: no intent");
        assert_eq!(l.dirty_regions(), 2);
    }

    #[test]
    fn a_clear_needs_an_untouched_interval_and_a_write_takes_it_back() {
        let mut l = log(1);
        let copied = |_| true;
        assert_eq!(l.admit(0..2, copied), Admit::Wait);
        assert!(l.start_send());
        l.sent();
        assert_eq!(l.admit(0..2, copied), Admit::Go);
        l.start_clear();
        l.cleared();
        assert_eq!(l.on_disk_word(0), 0b11, "touched in the last interval");
        assert_eq!(l.admit(1..2, copied), Admit::Go);
        l.start_clear();
        assert_eq!(l.on_disk_word(0), 0b11, "not cleared before the flush");
        assert_eq!(l.admit(0..1, copied), Admit::Go, "taken back from clearing");
        l.cleared();
        assert_eq!(l.on_disk_word(0), 0b11, "1 touched, 0 taken back");
        l.start_clear();
        l.cleared();
        assert_eq!(l.on_disk_word(0), 0b01, "1 untouched for an interval");
        l.start_clear();
        l.cleared();
        assert_eq!(l.on_disk_word(0), 0);
        assert_eq!(l.admit(1..2, copied), Admit::Wait);
    }

    /// A reference model of the intent log's one promise: a region is never clean on disk
    /// while a mirrored write to it may be in flight, or after one whose destination half was
    /// not yet made durable by a flush. Writes are admitted, sent, completed; the metadata
    /// thread sends and clears; the disk's bitmap is only what was written.
    #[derive(Debug, Clone)]
    enum Op {
        Write(u64),
        Complete,
        Send,
        SendDone,
        StartClear,
        StartClearAll,
        DrainFlushAndClear,
        /// The metadata thread gives a spare and routes the waiting writes again.
        Give,
    }

    /// The model's region `r` (0 to 7) in the log: spread over three chunks, so that writes
    /// need planes and find none.
    fn actual(r: u64) -> u64 {
        (r % 3) * CHUNK_REGIONS + r
    }

    /// The log's on-disk bits of the model's regions, as the model's word.
    fn disk_bits(l: &TestLog) -> u64 {
        (0..8u64)
            .filter(|&r| l.on_disk_word((actual(r) / 64) as usize) & (1 << (actual(r) % 64)) != 0)
            .fold(0, |word, r| word | 1 << r)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..8).prop_map(Op::Write),
            3 => Just(Op::Complete),
            2 => Just(Op::Send),
            2 => Just(Op::SendDone),
            1 => Just(Op::StartClear),
            1 => Just(Op::StartClearAll),
            1 => Just(Op::DrainFlushAndClear),
            1 => Just(Op::Give),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        #[test]
        fn no_unsettled_write_is_ever_clean_on_disk(ops in proptest::collection::vec(op(), 1..200)) {
            // Two spares at most, one to begin with: the other comes with Give, and a clear
            // of two chunks fills the spares with no Give.
            let mut l = starving(3 * CHUNK_REGIONS).with_spares(2);
            l.give(vec![0; CHUNK_WORDS]);
            // The disk's intent word, and the one being written.
            let mut disk = 0u64;
            let mut in_write: Option<u64> = None;
            // Writes waiting for their intent, and writes in flight with the epoch they were
            // admitted in.
            let mut waiting: Vec<u64> = Vec::new();
            let mut in_flight: Vec<(u64, u64)> = Vec::new();
            // Regions whose last write completed but was not yet flushed.
            let mut unflushed = 0u64;
            let mut epoch = 0u64;
            let mut clearing = false;
            for op in ops {
                match op {
                    Op::Write(r) => {
                        if l.admit(actual(r)..actual(r) + 1, |_| true) == Admit::Go {
                            in_flight.push((r, epoch));
                        } else {
                            waiting.push(r);
                        }
                    }
                    Op::Complete => {
                        if let Some((r, _)) = in_flight.first().copied() {
                            in_flight.remove(0);
                            unflushed |= 1 << r;
                        }
                    }
                    Op::Send => {
                        if in_write.is_none() && l.start_send() {
                            in_write = Some(disk_bits(&l));
                        }
                    }
                    Op::SendDone => {
                        if let Some(word) = in_write.take() {
                            disk = word;
                            l.sent();
                            // The metadata thread releases the waiting writes, which route
                            // again.
                            for r in core::mem::take(&mut waiting) {
                                if l.admit(actual(r)..actual(r) + 1, |_| true) == Admit::Go {
                                    in_flight.push((r, epoch));
                                } else {
                                    waiting.push(r);
                                }
                            }
                        }
                    }
                    Op::StartClear => {
                        if !clearing && in_write.is_none() {
                            l.start_clear();
                            epoch += 1;
                            clearing = true;
                        }
                    }
                    Op::StartClearAll => {
                        if !clearing && in_write.is_none() {
                            l.start_clear_all();
                            epoch += 1;
                            clearing = true;
                        }
                    }
                    Op::DrainFlushAndClear => {
                        // Only once the epoch before the flip has drained.
                        if clearing && in_write.is_none()
                            && in_flight.iter().all(|&(_, e)| e >= epoch)
                        {
                            unflushed = 0;
                            l.cleared();
                            disk = disk_bits(&l);
                            clearing = false;
                        }
                    }
                    Op::Give => {
                        // As `give_intent_planes`: the writes are routed again only when a
                        // starvation ended.
                        l.give(vec![0; CHUNK_WORDS]);
                        if l.end_starvation() {
                            for r in core::mem::take(&mut waiting) {
                                if l.admit(actual(r)..actual(r) + 1, |_| true) == Admit::Go {
                                    in_flight.push((r, epoch));
                                } else {
                                    waiting.push(r);
                                }
                            }
                        }
                    }
                }
                // The promise, checked after every step (a crash may come at any of them).
                for &(r, _) in &in_flight {
                    prop_assert!(disk & (1 << r) != 0, "write to {} in flight, clean on disk", r);
                }
                prop_assert_eq!(unflushed & !disk, 0, "unflushed write clean on disk");
            }
            // Every waiting write goes once the metadata thread has run a few rounds as it does:
            // spares given while it wants them (a clear may have given some back), a starvation
            // ended, a send; the writes in flight complete meanwhile.
            let mut routed = false;
            if in_write.take().is_some() {
                l.sent();
                routed = true;
            }
            for _ in 0..4 {
                in_flight.clear();
                while l.spares_wanted() > 0 {
                    l.give(vec![0; CHUNK_WORDS]);
                }
                routed |= l.end_starvation();
                if l.start_send() {
                    l.sent();
                    routed = true;
                }
                if routed {
                    for r in core::mem::take(&mut waiting) {
                        if l.admit(actual(r)..actual(r) + 1, |_| true) == Admit::Go {
                            in_flight.push((r, epoch));
                        } else {
                            waiting.push(r);
                        }
                    }
                }
                routed = false;
            }
            prop_assert!(waiting.is_empty(), "writes still wait: {:?}", waiting);
            in_flight.clear();
            // Quiet, with nothing in flight or waiting: a send of what is still wanted (a
            // region wanted again while its bit was being written) and a clear of everything
            // leave no planes in use.
            if waiting.is_empty() && in_flight.is_empty() && in_write.is_none() && !clearing {
                if l.start_send() {
                    l.sent();
                }
                l.start_clear_all();
                l.cleared();
                prop_assert_eq!(l.chunks_in_use(), 0, "planes kept for clean chunks");
                prop_assert_eq!(disk_bits(&l), 0);
            }
        }
    }
}

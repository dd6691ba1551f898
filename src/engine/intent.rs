// SPDX-License-Identifier: GPL-2.0

//! The write-intent log: which copied regions may take a mirrored write now, and which bits
//! the intent bitmap on the metadata device must hold (see `Documentation/dm-migrate.rst`,
//! "What is recorded, and when").

/// The write-intent log in memory: which regions may take a mirrored write now, and what the
/// intent bitmap on the metadata device must say. `B` is a bitmap of one bit per region.
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
pub struct IntentLog<B> {
    durable: B,
    wanted: B,
    sending: B,
    clearing: B,
    touched: B,
    nr_wanted: u64,
}

/// What [`IntentLog::admit`] decided for a mirrored write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Every region's intent is durable: the write may go.
    Go,
    /// Some region's intent must be written first: the write waits for the metadata thread.
    Wait,
}

fn bit(region: u64) -> (usize, u64) {
    ((region / 64) as usize, 1 << (region % 64))
}

impl<B: core::ops::DerefMut<Target = [u64]>> IntentLog<B> {
    /// An empty log over five zeroed bitmaps of the same size.
    pub fn new(
        mut durable: B,
        mut wanted: B,
        mut sending: B,
        mut clearing: B,
        mut touched: B,
    ) -> Self {
        for b in [
            &mut durable,
            &mut wanted,
            &mut sending,
            &mut clearing,
            &mut touched,
        ] {
            b.fill(0);
        }
        Self {
            durable,
            wanted,
            sending,
            clearing,
            touched,
            nr_wanted: 0,
        }
    }

    /// Starts from an on-disk intent bitmap (after a crash its regions are copied again, and
    /// their bits are cleared by the first commits).
    pub fn load(&mut self, word: usize, on_disk: u64) {
        self.clearing[word] = on_disk;
    }

    /// Decides for a mirrored write over `regions`; `copied` says which regions the copier has
    /// copied (a pending region is copied again later, so a write to it needs no intent).
    pub fn admit(&mut self, regions: core::ops::Range<u64>, copied: impl Fn(u64) -> bool) -> Admit {
        let mut admit = Admit::Go;
        for region in regions {
            if !copied(region) {
                continue;
            }
            let (w, b) = bit(region);
            if self.durable[w] & b != 0 {
                self.touched[w] |= b;
            } else if self.clearing[w] & b != 0 {
                self.clearing[w] &= !b;
                self.durable[w] |= b;
                self.touched[w] |= b;
            } else {
                if self.wanted[w] & b == 0 {
                    self.wanted[w] |= b;
                    self.nr_wanted += 1;
                }
                admit = Admit::Wait;
            }
        }
        admit
    }

    /// Whether writes wait for an intent write.
    pub fn has_wanted(&self) -> bool {
        self.nr_wanted > 0
    }

    /// Whether a clear is under way (regions chosen to be cleared by the next bitmap write).
    pub fn is_clearing(&self) -> bool {
        self.clearing.iter().any(|&w| w != 0)
    }

    /// Starts a write of the wanted bits: they become *sending*. Returns false when nothing is
    /// wanted or a write is still in flight (its end must be recorded first).
    pub fn start_send(&mut self) -> bool {
        if self.nr_wanted == 0 || self.sending.iter().any(|&w| w != 0) {
            return false;
        }
        core::mem::swap(&mut self.wanted, &mut self.sending);
        self.nr_wanted = 0;
        true
    }

    /// Records that the bitmap holding the sending bits is durable: their writes may go.
    pub fn sent(&mut self) {
        for (d, s) in self.durable.iter_mut().zip(self.sending.iter_mut()) {
            *d |= *s;
            *s = 0;
        }
    }

    /// Starts a clear: durable regions untouched since the last one become *clearing*, and the
    /// touched marks start over. The caller flips the mirrored writes' epoch in the same step
    /// (under the same lock), drains the epoch it left, flushes the destination, and then calls
    /// [`IntentLog::cleared`] and writes the bitmap. Safety comes from the drain: every write
    /// to a clearing region was admitted before the flip (a later one takes the region back to
    /// durable). Leaving out the regions touched in the last interval only spares hot regions a
    /// bitmap write each interval.
    pub fn start_clear(&mut self) {
        for ((d, c), t) in self
            .durable
            .iter_mut()
            .zip(self.clearing.iter_mut())
            .zip(self.touched.iter_mut())
        {
            let clear = *d & !*t;
            *c |= clear;
            *d &= !clear;
            *t = 0;
        }
    }

    /// Ends a clear begun by [`IntentLog::start_clear`]: the clearing regions (those no write
    /// took back meanwhile) are clean from now on; the next bitmap write records it.
    pub fn cleared(&mut self) {
        self.clearing.fill(0);
    }

    /// Forgets everything, for a copy that starts over (every region pending: none needs an
    /// intent) while no write is in flight or waiting.
    pub fn reset(&mut self) {
        for b in [
            &mut self.durable,
            &mut self.wanted,
            &mut self.sending,
            &mut self.clearing,
            &mut self.touched,
        ] {
            b.fill(0);
        }
        self.nr_wanted = 0;
    }

    /// Drops the wanted marks: for a migration that has ended, whose waiting writes are routed
    /// again without an intent.
    pub fn drop_wanted(&mut self) {
        self.wanted.fill(0);
        self.nr_wanted = 0;
    }

    /// Starts a clear of every durable region, touched or not: for a quiesced device (at
    /// suspend), where no write is in flight. The rest is as [`IntentLog::start_clear`]: until
    /// [`IntentLog::cleared`], after the flushes, the disk keeps the bits.
    pub fn start_clear_all(&mut self) {
        // Untouched, every durable region is chosen.
        self.touched.fill(0);
        self.start_clear();
    }

    /// The intent bitmap's word `word` as the disk must have it now: every region that may have
    /// (or is about to have) a mirrored write in flight, or whose clear is not yet written.
    pub fn on_disk_word(&self, word: usize) -> u64 {
        self.durable[word] | self.sending[word] | self.clearing[word] | self.wanted[word]
    }

    /// The number of regions whose intent bit the disk must have set now.
    pub fn dirty_regions(&self) -> u64 {
        (0..self.durable.len())
            .map(|w| u64::from(self.on_disk_word(w).count_ones()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    fn log(words: usize) -> IntentLog<Vec<u64>> {
        IntentLog::new(
            vec![0; words],
            vec![0; words],
            vec![0; words],
            vec![0; words],
            vec![0; words],
        )
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
        ]
    }

    proptest! {
        #[test]
        fn no_unsettled_write_is_ever_clean_on_disk(ops in proptest::collection::vec(op(), 1..200)) {
            let mut l = log(1);
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
                        if l.admit(r..r + 1, |_| true) == Admit::Go {
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
                            in_write = Some(l.on_disk_word(0));
                        }
                    }
                    Op::SendDone => {
                        if let Some(word) = in_write.take() {
                            disk = word;
                            l.sent();
                            // The metadata thread releases the waiting writes, which route
                            // again.
                            for r in core::mem::take(&mut waiting) {
                                if l.admit(r..r + 1, |_| true) == Admit::Go {
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
                            disk = l.on_disk_word(0);
                            clearing = false;
                        }
                    }
                }
                // The promise, checked after every step (a crash may come at any of them).
                for &(r, _) in &in_flight {
                    prop_assert!(disk & (1 << r) != 0, "write to {} in flight, clean on disk", r);
                }
                prop_assert_eq!(unflushed & !disk, 0, "unflushed write clean on disk");
            }
        }
    }
}

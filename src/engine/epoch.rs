// SPDX-License-Identifier: GPL-2.0

//! Write epochs: how the copier knows that no write routed before it took a batch is still in
//! flight when it reads that batch from the origin.
//!
//! Every write routed to the origin (alone or mirrored) is counted in the *current* epoch, 0 or
//! 1, when it is routed, and uncounted when it completes. Right after the copier takes the
//! batches of a round, under the same lock as the routing, it flips the current epoch and then
//! waits for the old one to drain before it reads the batches. Writes routed after the flip see
//! the batches in flight and are deferred (or go to regions the round does not touch), so they
//! need no waiting.
//!
//! This is sound only because each flip is followed by a full drain of the epoch it left before
//! the next flip: the epoch a flip enters is then always empty of older writes. A flip without a
//! drain (an idle round that takes no batch) would leave old writes in the epoch that the next
//! round does not wait for. So the only way to flip is [`super::tracker::Tracker::start_round`],
//! which flips only when it took a batch, and hands back the epoch to drain.
//!
//! The counters are atomics, so that a completion (any context) ends a write without the lock;
//! `enter` and `flip` must be called under the lock that orders routing decisions.

use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// An epoch, 0 or 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch(u8);

impl Epoch {
    fn index(self) -> usize {
        usize::from(self.0)
    }

    /// Both epochs, for a drain of every write in flight (the switch).
    pub const BOTH: [Epoch; 2] = [Epoch(0), Epoch(1)];
}

/// The bit of a bio tag saying that the bio is a counted write; the low bit is its epoch.
const TAG_COUNTED: u8 = 2;

/// A write counted by [`WriteEpochs::enter`], to be handed back to [`WriteEpochs::exit`] once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted(Epoch);

impl Counted {
    /// The tag a bio carries from `map` to `end_io`; never 0, which means "not counted".
    pub fn to_tag(self) -> u8 {
        TAG_COUNTED | self.0 .0
    }

    /// The counted write a bio tag stands for, or `None` for a bio that was not counted.
    pub fn from_tag(tag: u8) -> Option<Self> {
        (tag & TAG_COUNTED != 0).then_some(Counted(Epoch(tag & 1)))
    }
}

/// The two epochs' counters of writes in flight.
pub struct WriteEpochs {
    current: AtomicU8,
    in_flight: [AtomicU64; 2],
    /// The epoch the copier is waiting for, plus one, or 0: the write that ends it wakes the
    /// copier.
    draining: AtomicU8,
}

impl Default for WriteEpochs {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteEpochs {
    /// No write in flight, epoch 0 current.
    pub const fn new() -> Self {
        Self {
            current: AtomicU8::new(0),
            in_flight: [AtomicU64::new(0), AtomicU64::new(0)],
            draining: AtomicU8::new(0),
        }
    }

    /// Counts a write routed to the origin in the current epoch. Call under the routing lock.
    pub fn enter(&self) -> Counted {
        let epoch = Epoch(self.current.load(Ordering::Relaxed));
        self.in_flight[epoch.index()].fetch_add(1, Ordering::Relaxed);
        Counted(epoch)
    }

    /// Ends a counted write. Returns whether the copier waits for exactly this write's epoch and
    /// it has now drained: the caller then wakes it.
    pub fn exit(&self, write: Counted) -> bool {
        let epoch = write.0;
        // Sequentially consistent with the copier's store of `draining` and its load of the
        // counter: either the copier sees this write gone, or this sees the copier waiting.
        let before = self.in_flight[epoch.index()].fetch_sub(1, Ordering::SeqCst);
        before == 1 && self.draining.load(Ordering::SeqCst) == epoch.0 + 1
    }

    /// Moves new writes to the other epoch and returns the one they left. Only
    /// [`super::tracker::Tracker::start_round`] calls it, under the routing lock, when it took
    /// a batch; the caller must drain the returned epoch before the next flip.
    pub(crate) fn flip(&self) -> Epoch {
        let old = self.current.load(Ordering::Relaxed);
        self.current.store(old ^ 1, Ordering::Relaxed);
        Epoch(old)
    }

    /// Announces that the caller waits for `epoch` to drain (see [`WriteEpochs::exit`]).
    pub fn start_drain(&self, epoch: Epoch) {
        self.draining.store(epoch.0 + 1, Ordering::SeqCst);
    }

    /// Whether every write counted in `epoch` has completed.
    pub fn is_drained(&self, epoch: Epoch) -> bool {
        self.in_flight[epoch.index()].load(Ordering::SeqCst) == 0
    }

    /// Ends a wait started by [`WriteEpochs::start_drain`].
    pub fn end_drain(&self) {
        self.draining.store(0, Ordering::Relaxed);
    }

    /// Counted writes in flight, both epochs.
    pub fn in_flight(&self) -> u64 {
        self.in_flight[0].load(Ordering::Relaxed) + self.in_flight[1].load(Ordering::Relaxed)
    }
}

/// What a bio routed by the target carries from `map` to its end in one byte (the bio's tag):
/// the counts it is in, each handed back once it ends.
///
/// Bits 0-1: the write's count in the copier's epochs. Bits 2-3: a mirrored write's count in
/// the intent epochs (with a metadata device). Bits 4-5: the count of a mirrored bio's
/// destination half that flushes the destination (a flush, or a FUA write on a device that
/// emulates FUA with a flush), ended as that half completes. Bit 6: a mirrored flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BioTag(u8);

/// The bits of a count: [`Counted::to_tag`] uses two.
const COUNT_MASK: u8 = 0b11;
/// Where each count sits.
const INTENT_SHIFT: u8 = 2;
const DEST_FLUSH_SHIFT: u8 = 4;
/// The bit of a mirrored flush.
const FLUSH_BIT: u8 = 1 << 6;

impl BioTag {
    /// A bio in no count.
    pub const NONE: BioTag = BioTag(0);

    /// A write, counted in the copier's epochs, in the intent epochs if it is mirrored with a
    /// metadata device, and as a destination flush if it is a mirrored FUA write.
    pub fn write(
        copy: Option<Counted>,
        intent: Option<Counted>,
        dest_flush: Option<Counted>,
    ) -> Self {
        let count = |c: Option<Counted>| c.map_or(0, Counted::to_tag);
        BioTag(
            count(copy) | (count(intent) << INTENT_SHIFT) | (count(dest_flush) << DEST_FLUSH_SHIFT),
        )
    }

    /// A flush mirrored to both devices, its destination half counted as `dest_half`.
    pub fn mirrored_flush(dest_half: Counted) -> Self {
        BioTag(FLUSH_BIT | (dest_half.to_tag() << DEST_FLUSH_SHIFT))
    }

    /// The tag as the bio stores it.
    pub fn raw(self) -> u8 {
        self.0
    }

    /// The tag a bio stored.
    pub fn from_raw(raw: u8) -> Self {
        BioTag(raw)
    }

    /// The write's count in the copier's epochs.
    pub fn copy_write(self) -> Option<Counted> {
        Counted::from_tag(self.0 & COUNT_MASK)
    }

    /// The write's count in the intent epochs.
    pub fn intent_write(self) -> Option<Counted> {
        Counted::from_tag((self.0 >> INTENT_SHIFT) & COUNT_MASK)
    }

    /// Whether the bio is a mirrored flush.
    pub fn is_mirrored_flush(self) -> bool {
        self.0 & FLUSH_BIT != 0
    }

    /// The count of the destination half, when that half flushes the destination.
    pub fn dest_flush_half(self) -> Option<Counted> {
        Counted::from_tag((self.0 >> DEST_FLUSH_SHIFT) & COUNT_MASK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bio_tags_keep_every_count_apart() {
        let (copy, intent, flushes) = (WriteEpochs::new(), WriteEpochs::new(), WriteEpochs::new());
        assert_eq!(BioTag::NONE.raw(), 0);
        assert_eq!(BioTag::NONE.copy_write(), None);
        assert_eq!(BioTag::NONE.intent_write(), None);
        assert_eq!(BioTag::NONE.dest_flush_half(), None);
        assert!(!BioTag::NONE.is_mirrored_flush());
        for flip in 0..2 {
            if flip == 1 {
                copy.flip();
                flushes.flip();
            }
            let (c, f) = (copy.enter(), flushes.enter());
            for intent_flip in 0..2 {
                if intent_flip == 1 {
                    intent.flip();
                }
                let i = intent.enter();
                for cw in [Some(c), None] {
                    for iw in [Some(i), None] {
                        for fw in [Some(f), None] {
                            let tag = BioTag::from_raw(BioTag::write(cw, iw, fw).raw());
                            assert_eq!(tag.copy_write(), cw);
                            assert_eq!(tag.intent_write(), iw);
                            assert_eq!(tag.dest_flush_half(), fw);
                            assert!(!tag.is_mirrored_flush());
                        }
                    }
                }
            }
            let tag = BioTag::from_raw(BioTag::mirrored_flush(f).raw());
            assert!(tag.is_mirrored_flush());
            assert_eq!(tag.dest_flush_half(), Some(f));
            assert_eq!(tag.copy_write(), None, "a flush is no counted write");
            assert_eq!(tag.intent_write(), None, "a flush is no intent write");
        }
    }

    #[test]
    fn tags_round_trip_and_zero_is_uncounted() {
        let epochs = WriteEpochs::new();
        let w = epochs.enter();
        assert_ne!(w.to_tag(), 0);
        assert_eq!(Counted::from_tag(w.to_tag()), Some(w));
        assert_eq!(Counted::from_tag(0), None);
    }

    #[test]
    fn a_flip_separates_old_writes_from_new_ones() {
        let epochs = WriteEpochs::new();
        let old = epochs.enter();
        let drain = epochs.flip();
        let new = epochs.enter();
        assert!(!epochs.is_drained(drain));
        epochs.start_drain(drain);
        assert!(!epochs.exit(new), "a write of the other epoch wakes nobody");
        assert!(
            epochs.exit(old),
            "the last write of the drained epoch wakes the copier"
        );
        assert!(epochs.is_drained(drain));
        epochs.end_drain();
        assert_eq!(epochs.in_flight(), 0);
    }
}

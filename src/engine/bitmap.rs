// SPDX-License-Identifier: GPL-2.0

//! The pending bitmap, one bit per region, kept in chunks so that it costs memory only where the
//! copy is going on.
//!
//! A flat bitmap of a 1 TiB disk at 64 KiB regions takes 2 MiB for the whole migration, although
//! almost all of it is either all ones (not reached yet) or all zeros (copied): the copy is
//! sequential, and a region only ever goes from pending to copied while the copy runs (a write
//! to a copied region is mirrored, it does not make the region pending again). So the bitmap is
//! cut into chunks of `chunk_words` words. A chunk that is all set or all clear is a word of state
//! with no page behind it; only a chunk that holds both (the one under the copy's cursor, the
//! ones with a region the copy skipped) has a page of words.
//!
//! A page is never allocated here: the caller hands pages in, from a pool it fills where it may
//! sleep, through a `FnMut() -> Option<P>` called under its lock. When no page is at hand a bit
//! of an all-set chunk cannot be cleared; the bitmap then keeps it set, which is always safe: a
//! pending region is copied (again) from the origin, which holds every write until the switch.
//! A page whose chunk becomes all clear is dropped at once (the kernel's pages come from
//! `kmalloc`, whose `kfree` is fine under a spinlock).

use core::marker::PhantomData;
use core::num::NonZeroU64;
use core::ops::{DerefMut, Range};

/// One chunk of the bitmap: `chunk_words` words of bits, or a state that stands for them.
pub enum Chunk<P> {
    /// Every bit of the chunk is clear.
    Clear,
    /// Every bit of the chunk (below the bitmap's length) is set.
    Set,
    /// Some bits are set (or all, in a page given for clearing some).
    Mixed {
        /// The bits, none past the bitmap's length.
        words: P,
        /// The number of bits set.
        set: u32,
    },
}

/// A bitmap of `nr_bits` bits in chunks; see the module's documentation.
///
/// `C` is the caller's array of chunks, `ceil(nr_bits / (64 * chunk_words))` long; `P` a page of
/// at least `chunk_words` words.
pub struct ChunkedBitmap<C, P> {
    chunks: C,
    chunk_words: usize,
    /// `log2(64 * chunk_words)`: a bit's chunk is `bit >> chunk_shift`.
    chunk_shift: u32,
    nr_bits: u64,
    nr_set: u64,
    page: PhantomData<P>,
}

/// The number of chunks a bitmap of `nr_bits` bits takes, at `chunk_words` words per chunk.
pub fn nr_chunks(nr_bits: u64, chunk_words: usize) -> u64 {
    // No division that can panic (the kernel's objtool does not know Rust's panics end).
    match (64u64)
        .checked_mul(chunk_words as u64)
        .and_then(NonZeroU64::new)
    {
        Some(per) => nr_bits / per + u64::from(nr_bits % per != 0),
        None => 0,
    }
}

/// The number of pages a bitmap of `nr_bits` bits whose word `w` is `word(w)` needs: one for each
/// chunk that is neither all set nor all clear. Bits past `nr_bits` are ignored.
pub fn pages_needed(nr_bits: u64, chunk_words: usize, word: impl Fn(usize) -> u64) -> usize {
    let bits_per_chunk = 64 * chunk_words as u64;
    (0..nr_chunks(nr_bits, chunk_words))
        .filter(|&chunk| {
            let bits = chunk * bits_per_chunk..(nr_bits.min((chunk + 1) * bits_per_chunk));
            let set = count_ones(bits.clone(), &word);
            set != 0 && set != bits.end - bits.start
        })
        .count()
}

/// The number of ones of `word` over the bits `bits`.
fn count_ones(bits: Range<u64>, word: &impl Fn(usize) -> u64) -> u64 {
    let mut count = 0;
    let mut bit = bits.start;
    while bit < bits.end {
        let span = (64 - bit % 64).min(bits.end - bit);
        let value = word((bit / 64) as usize) >> (bit % 64);
        let mask = if span == 64 {
            u64::MAX
        } else {
            (1u64 << span) - 1
        };
        count += u64::from((value & mask).count_ones());
        bit += span;
    }
    count
}

impl<C, P> ChunkedBitmap<C, P>
where
    C: DerefMut<Target = [Chunk<P>]>,
    P: DerefMut<Target = [u64]>,
{
    /// A bitmap of `nr_bits` bits, all set. Returns `None` when `chunk_words` is not a power of
    /// two or `chunks` has not [`nr_chunks`] entries.
    pub fn new(chunks: C, chunk_words: usize, nr_bits: u64) -> Option<Self> {
        let chunk_shift = 6 + chunk_words.trailing_zeros();
        if !chunk_words.is_power_of_two()
            || chunk_shift >= 64
            || chunks.len() as u64 != nr_chunks(nr_bits, chunk_words)
        {
            return None;
        }
        let mut bitmap = Self {
            chunks,
            chunk_words,
            chunk_shift,
            nr_bits,
            nr_set: 0,
            page: PhantomData,
        };
        bitmap.fill(true);
        Some(bitmap)
    }

    fn bits_per_chunk(&self) -> u64 {
        1 << self.chunk_shift
    }

    /// The chunk of bit `bit`.
    fn chunk_of(&self, bit: u64) -> usize {
        (bit >> self.chunk_shift) as usize
    }

    /// The index of word `word` in its chunk's page.
    fn in_page(&self, word: usize) -> usize {
        word & (self.chunk_words - 1)
    }

    /// The bits of chunk `chunk`.
    fn chunk_bits(&self, chunk: usize) -> Range<u64> {
        let start = chunk as u64 * self.bits_per_chunk();
        start..self.nr_bits.min(start + self.bits_per_chunk())
    }

    /// The valid bits of word `word`: ones below `nr_bits`.
    fn word_mask(&self, word: usize) -> u64 {
        match self.nr_bits.saturating_sub(word as u64 * 64) {
            n if n >= 64 => u64::MAX,
            n => (1u64 << n) - 1,
        }
    }

    /// Sets every bit (`true`) or clears every bit, dropping every page.
    pub fn fill(&mut self, set: bool) {
        for chunk in self.chunks.iter_mut() {
            *chunk = if set { Chunk::Set } else { Chunk::Clear };
        }
        self.nr_set = if set { self.nr_bits } else { 0 };
    }

    /// The number of bits.
    pub fn len(&self) -> u64 {
        self.nr_bits
    }

    /// Whether the bitmap has no bits.
    pub fn is_empty(&self) -> bool {
        self.nr_bits == 0
    }

    /// The number of set bits.
    pub fn count(&self) -> u64 {
        self.nr_set
    }

    /// The number of words of the bitmap as a flat array.
    pub fn nr_words(&self) -> usize {
        // The caller's chunk array has `nr_words / chunk_words` entries: it fits `usize`.
        self.nr_bits.div_ceil(64) as usize
    }

    /// Word `word` of the bitmap as a flat array, with no bits past `nr_bits`.
    pub fn word(&self, word: usize) -> u64 {
        match &self.chunks[word >> (self.chunk_shift - 6)] {
            Chunk::Clear => 0,
            Chunk::Set => self.word_mask(word),
            Chunk::Mixed { words, .. } => words[self.in_page(word)],
        }
    }

    /// Word `word` with every bit flipped, none past `nr_bits`: of a pending bitmap, the
    /// regions copied.
    pub fn complement_word(&self, word: usize) -> u64 {
        !self.word(word) & self.word_mask(word)
    }

    /// Whether bit `bit` is set.
    pub fn get(&self, bit: u64) -> bool {
        self.word((bit / 64) as usize) & (1 << (bit % 64)) != 0
    }

    /// Whether every bit of `bits` is set, a word at a time (whole chunks at once).
    pub fn all_set(&self, bits: Range<u64>) -> bool {
        let mut bit = bits.start;
        while bit < bits.end {
            let chunk = self.chunk_of(bit);
            match &self.chunks[chunk] {
                Chunk::Clear => return false,
                Chunk::Set => bit = self.chunk_bits(chunk).end,
                Chunk::Mixed { words, .. } => {
                    let span = (64 - bit % 64).min(bits.end - bit);
                    let mask = if span == 64 {
                        u64::MAX
                    } else {
                        ((1u64 << span) - 1) << (bit % 64)
                    };
                    if words[self.in_page((bit / 64) as usize)] & mask != mask {
                        return false;
                    }
                    bit += span;
                }
            }
        }
        true
    }

    /// The first set bit at or after `from`, if any, skipping clear chunks whole.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        let mut bit = from;
        while bit < self.nr_bits {
            let chunk = self.chunk_of(bit);
            match &self.chunks[chunk] {
                Chunk::Clear => bit = self.chunk_bits(chunk).end,
                Chunk::Set => return Some(bit),
                Chunk::Mixed { words, .. } => {
                    let value = words[self.in_page((bit / 64) as usize)] >> (bit % 64);
                    if value != 0 {
                        let found = bit + u64::from(value.trailing_zeros());
                        return (found < self.nr_bits).then_some(found);
                    }
                    bit = (bit / 64 + 1) * 64;
                }
            }
        }
        None
    }

    /// Gives every all-set chunk that `bits` touches a page of its own, so that any of its bits
    /// can be cleared. Returns `false` when `page` ran out first (the chunks that got a page keep
    /// it, all set).
    pub fn prepare(&mut self, bits: Range<u64>, page: &mut dyn FnMut() -> Option<P>) -> bool {
        if bits.is_empty() {
            return true;
        }
        let first = self.chunk_of(bits.start);
        let last = self.chunk_of(bits.end - 1);
        for chunk in first..=last.min(self.chunks.len().saturating_sub(1)) {
            if matches!(self.chunks[chunk], Chunk::Set) {
                let Some(words) = page() else {
                    return false;
                };
                self.set_page(chunk, words);
            }
        }
        true
    }

    /// Makes all-set chunk `chunk` a page of ones (below `nr_bits`).
    fn set_page(&mut self, chunk: usize, mut words: P) {
        let first_word = chunk * self.chunk_words;
        for (i, w) in words[..self.chunk_words].iter_mut().enumerate() {
            *w = self.word_mask(first_word + i);
        }
        let bits = self.chunk_bits(chunk);
        self.chunks[chunk] = Chunk::Mixed {
            words,
            set: (bits.end - bits.start) as u32,
        };
    }

    /// Clears bit `bit`. Returns whether it was set and is now clear: a bit of an all-set chunk
    /// with no page (see [`ChunkedBitmap::prepare`]) stays set.
    pub fn clear(&mut self, bit: u64) -> bool {
        let chunk = self.chunk_of(bit);
        let at = self.in_page((bit / 64) as usize);
        let Chunk::Mixed { words, set } = &mut self.chunks[chunk] else {
            return false;
        };
        let word = &mut words[at];
        let mask = 1u64 << (bit % 64);
        if *word & mask == 0 {
            return false;
        }
        *word &= !mask;
        *set -= 1;
        if *set == 0 {
            self.chunks[chunk] = Chunk::Clear;
        }
        self.nr_set -= 1;
        true
    }

    /// Loads the bitmap from `word(w)`, a flat bitmap (bits past `nr_bits` ignored). A chunk
    /// that is neither all set nor all clear takes a page from `page`; when none is left it is
    /// loaded all set. Returns whether every chunk was loaded exactly.
    pub fn load(
        &mut self,
        word: impl Fn(usize) -> u64,
        page: &mut dyn FnMut() -> Option<P>,
    ) -> bool {
        let mut exact = true;
        let mut nr_set = 0;
        for chunk in 0..self.chunks.len() {
            let bits = self.chunk_bits(chunk);
            let set = count_ones(bits.clone(), &word);
            let all = bits.end - bits.start;
            let first_word = chunk * self.chunk_words;
            let loaded = if set == 0 {
                Chunk::Clear
            } else if set == all {
                Chunk::Set
            } else if let Some(mut words) = page() {
                let nr_words = self.nr_words();
                for (i, w) in words[..self.chunk_words].iter_mut().enumerate() {
                    // The last chunk may reach past the last word: no bits there.
                    let at = first_word + i;
                    *w = if at < nr_words {
                        word(at) & self.word_mask(at)
                    } else {
                        0
                    };
                }
                Chunk::Mixed {
                    words,
                    set: set as u32,
                }
            } else {
                exact = false;
                Chunk::Set
            };
            nr_set += if matches!(loaded, Chunk::Set) {
                all
            } else {
                set
            };
            self.chunks[chunk] = loaded;
        }
        self.nr_set = nr_set;
        exact
    }

    /// Sets word `word` to `value` (bits past `nr_bits` dropped). A chunk that holds both set
    /// and clear bits afterwards takes a page from `page`; returns false when none was at hand
    /// (the word is then unchanged). A chunk left all set or all clear drops its page.
    pub fn set_word(
        &mut self,
        word: usize,
        value: u64,
        page: &mut dyn FnMut() -> Option<P>,
    ) -> bool {
        let value = value & self.word_mask(word);
        let old = self.word(word);
        if old == value {
            return true;
        }
        let chunk = word >> (self.chunk_shift - 6);
        if !matches!(self.chunks[chunk], Chunk::Mixed { .. }) {
            let set = matches!(self.chunks[chunk], Chunk::Set);
            let Some(words) = page() else {
                return false;
            };
            if set {
                self.set_page(chunk, words);
            } else {
                self.clear_page(chunk, words);
            }
        }
        let at = self.in_page(word);
        let all = {
            let bits = self.chunk_bits(chunk);
            bits.end - bits.start
        };
        let Chunk::Mixed { words, set } = &mut self.chunks[chunk] else {
            return false;
        };
        words[at] = value;
        // Within the chunk: its count stays in 0..=all, which fits the u32 it is kept in.
        let count = u64::from(*set) + u64::from(value.count_ones()) - u64::from(old.count_ones());
        *set = count as u32;
        self.nr_set = self.nr_set + u64::from(value.count_ones()) - u64::from(old.count_ones());
        if count == 0 {
            self.chunks[chunk] = Chunk::Clear;
        } else if count == all {
            self.chunks[chunk] = Chunk::Set;
        }
        true
    }

    /// Makes all-clear chunk `chunk` a page of zeros.
    fn clear_page(&mut self, chunk: usize, mut words: P) {
        words[..self.chunk_words].fill(0);
        self.chunks[chunk] = Chunk::Mixed { words, set: 0 };
    }

    /// Makes this bitmap a copy of `other`, which has the same length and chunk size (else
    /// nothing is copied and false returned). A chunk of `other` that holds both set and clear
    /// bits takes a page from `page` (or reuses this bitmap's page of the same chunk); when none
    /// is at hand it is copied as all set, and false is returned. For a pending bitmap that is
    /// the safe side: a region recorded as pending is copied again.
    pub fn copy_from<C2, P2>(
        &mut self,
        other: &ChunkedBitmap<C2, P2>,
        page: &mut dyn FnMut() -> Option<P>,
    ) -> bool
    where
        C2: DerefMut<Target = [Chunk<P2>]>,
        P2: DerefMut<Target = [u64]>,
    {
        if other.nr_bits != self.nr_bits || other.chunk_words != self.chunk_words {
            return false;
        }
        let mut exact = true;
        let mut nr_set = 0;
        for chunk in 0..self.chunks.len() {
            let copied = match &other.chunks[chunk] {
                Chunk::Clear => Chunk::Clear,
                Chunk::Set => Chunk::Set,
                Chunk::Mixed { words: theirs, set } => {
                    let own = match core::mem::replace(&mut self.chunks[chunk], Chunk::Set) {
                        Chunk::Mixed { words, .. } => Some(words),
                        _ => page(),
                    };
                    match own {
                        Some(mut words) => {
                            // Word by word: `copy_from_slice`'s length check panics, which
                            // the kernel's objtool takes for a fall-through.
                            for (mine, theirs) in
                                words.iter_mut().zip(theirs.iter()).take(self.chunk_words)
                            {
                                *mine = *theirs;
                            }
                            Chunk::Mixed { words, set: *set }
                        }
                        None => {
                            exact = false;
                            Chunk::Set
                        }
                    }
                }
            };
            nr_set += match &copied {
                Chunk::Clear => 0,
                Chunk::Set => {
                    let bits = self.chunk_bits(chunk);
                    bits.end - bits.start
                }
                Chunk::Mixed { set, .. } => u64::from(*set),
            };
            self.chunks[chunk] = copied;
        }
        self.nr_set = nr_set;
        exact
    }

    /// The number of chunks that hold a page now.
    pub fn pages(&self) -> usize {
        self.chunks
            .iter()
            .filter(|c| matches!(c, Chunk::Mixed { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;
    use std::vec::Vec;

    type Bitmap = ChunkedBitmap<Vec<Chunk<Vec<u64>>>, Vec<u64>>;

    fn bitmap(nr_bits: u64, chunk_words: usize) -> Bitmap {
        let chunks = (0..nr_chunks(nr_bits, chunk_words))
            .map(|_| Chunk::Set)
            .collect();
        ChunkedBitmap::new(chunks, chunk_words, nr_bits).unwrap()
    }

    #[test]
    fn starts_all_set_with_no_page() {
        let b = bitmap(1000, 2);
        assert_eq!(b.count(), 1000);
        assert_eq!(b.pages(), 0);
        assert_eq!(b.word(15), (1 << (1000 - 960)) - 1);
        assert!(b.all_set(0..1000));
        assert_eq!(b.next_set(999), Some(999));
        assert_eq!(b.next_set(1000), None);
    }

    #[test]
    fn rejects_a_wrong_chunk_array() {
        let chunks: Vec<Chunk<Vec<u64>>> = (0..3).map(|_| Chunk::Set).collect();
        assert!(ChunkedBitmap::new(chunks, 2, 1000).is_none());
        let chunks: Vec<Chunk<Vec<u64>>> = (0..8).map(|_| Chunk::Set).collect();
        assert!(ChunkedBitmap::new(chunks, 3, 1000).is_none());
    }

    #[test]
    fn a_bit_of_an_all_set_chunk_needs_a_page() {
        let mut b = bitmap(256, 1);
        assert!(!b.clear(70));
        assert!(b.get(70));
        assert!(b.prepare(70..71, &mut || Some(vec![7; 1])));
        assert!(b.clear(70));
        assert!(!b.get(70));
        assert_eq!(b.count(), 255);
        assert_eq!(b.pages(), 1);
    }

    #[test]
    fn a_chunk_cleared_to_the_last_bit_drops_its_page() {
        let mut b = bitmap(130, 1);
        assert!(b.prepare(0..130, &mut || Some(vec![0; 1])));
        assert_eq!(b.pages(), 3);
        for bit in 128..130 {
            assert!(b.clear(bit));
        }
        assert_eq!(b.pages(), 2);
        assert_eq!(b.next_set(128), None);
        assert_eq!(b.count(), 128);
    }

    #[test]
    fn prepare_stops_when_pages_run_out() {
        let mut b = bitmap(64 * 4, 1);
        let mut left = 1;
        let mut page = || {
            (left > 0).then(|| {
                left -= 1;
                vec![0u64; 1]
            })
        };
        assert!(!b.prepare(0..256, &mut page));
        assert_eq!(b.pages(), 1);
        assert!(b.all_set(0..256));
    }

    #[test]
    fn load_takes_pages_only_for_mixed_chunks_and_sets_the_rest() {
        let flat = [u64::MAX, 0, 5, 1 << 3];
        let mut b = bitmap(250, 1);
        assert_eq!(pages_needed(250, 1, |w| flat[w]), 2);
        // Bits past the last one do not count: a last word all ones is an all-set chunk.
        assert_eq!(pages_needed(250, 1, |w| [0, 0, 0, u64::MAX][w]), 0);
        let mut left = 1;
        let exact = b.load(|w| flat[w], &mut || {
            (left > 0).then(|| {
                left -= 1;
                vec![0u64; 1]
            })
        });
        assert!(!exact);
        // Chunk 2 got the page; chunk 3, mixed, found none and is loaded all set.
        assert_eq!(b.word(0), u64::MAX);
        assert_eq!(b.word(1), 0);
        assert_eq!(b.word(2), 5);
        assert_eq!(b.word(3), (1 << 58) - 1);
        assert_eq!(b.count(), 64 + 2 + 58);
        assert_eq!(b.pages(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Prepare(u64, u64),
        Clear(u64),
        Fill(bool),
        Load(Vec<u64>),
        SetWord(usize, u64),
        CopyFrom,
    }

    fn op(nr_bits: u64) -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..nr_bits, 1..200u64).prop_map(|(a, n)| Op::Prepare(a, n)),
            6 => (0..nr_bits).prop_map(Op::Clear),
            1 => any::<bool>().prop_map(Op::Fill),
            1 => proptest::collection::vec(
                prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
                nr_bits.div_ceil(64) as usize
            )
            .prop_map(Op::Load),
            3 => (0..nr_bits.div_ceil(64) as usize, prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()])
                .prop_map(|(w, v)| Op::SetWord(w, v)),
            1 => Just(Op::CopyFrom),
        ]
    }

    proptest! {
        /// Against a plain `Vec<bool>`: every bit, the count, `all_set` and `next_set` agree,
        /// whatever the pages at hand; a bit is only ever cleared by `clear`, and only with a
        /// page.
        #[test]
        fn agrees_with_a_flat_bitmap(
            chunk_words in prop_oneof![Just(1usize), Just(2), Just(4)],
            ops in proptest::collection::vec(op(700), 1..120),
            pages in proptest::collection::vec(any::<bool>(), 120),
        ) {
            let nr_bits = 700;
            let mut b = bitmap(nr_bits, chunk_words);
            let mut model = vec![true; nr_bits as usize];
            let mut pages = pages.into_iter().cycle();
            for op in ops {
                let mut page = || pages.next().unwrap().then(|| vec![u64::MAX; chunk_words]);
                match op {
                    Op::Prepare(a, n) => {
                        b.prepare(a..(a + n).min(nr_bits), &mut page);
                    }
                    Op::Clear(bit) => {
                        let was = model[bit as usize];
                        let cleared = b.clear(bit);
                        prop_assert!(!cleared || was);
                        if cleared {
                            model[bit as usize] = false;
                        }
                    }
                    Op::Fill(set) => {
                        b.fill(set);
                        model.iter_mut().for_each(|m| *m = set);
                    }
                    Op::Load(words) => {
                        let exact = b.load(|w| words[w], &mut page);
                        for (i, m) in model.iter_mut().enumerate() {
                            let loaded = words[i / 64] & (1 << (i % 64)) != 0;
                            // A chunk loaded without a page is all set: more pending, never less.
                            prop_assert!(b.get(i as u64) || !loaded);
                            prop_assert!(!exact || b.get(i as u64) == loaded);
                            *m = b.get(i as u64);
                        }
                    }
                    Op::SetWord(w, value) => {
                        if b.set_word(w, value, &mut page) {
                            let end = ((w + 1) * 64).min(nr_bits as usize);
                            for (i, m) in model.iter_mut().enumerate().take(end).skip(w * 64) {
                                *m = value & (1 << (i % 64)) != 0;
                            }
                        }
                    }
                    Op::CopyFrom => {
                        // Into a bitmap with pages of its own in other chunks.
                        let mut copy = bitmap(nr_bits, chunk_words);
                        copy.fill(false);
                        copy.set_word(3, 0b1010, &mut || Some(vec![0; chunk_words]));
                        let exact = copy.copy_from(&b, &mut page);
                        for i in 0..nr_bits {
                            // A mixed chunk copied without a page is all set: never fewer bits.
                            prop_assert!(copy.get(i) || !b.get(i));
                            prop_assert!(!exact || copy.get(i) == b.get(i));
                        }
                        prop_assert_eq!(copy.count(), (0..nr_bits).filter(|&i| copy.get(i)).count() as u64);
                    }
                }
                for (i, &m) in model.iter().enumerate() {
                    prop_assert_eq!(b.get(i as u64), m, "bit {}", i);
                }
                prop_assert_eq!(b.count(), model.iter().filter(|&&m| m).count() as u64);
                for w in 0..b.nr_words() {
                    prop_assert_eq!(b.word(w) & !b.word_mask(w), 0);
                    // The complement against the model: the clear bits, none past the end.
                    let expect = (0..64)
                        .filter(|i| w * 64 + i < nr_bits as usize && !model[w * 64 + i])
                        .fold(0u64, |word, i| word | 1 << i);
                    prop_assert_eq!(b.complement_word(w), expect, "complement of word {}", w);
                }
                for from in [0u64, 63, 64, 130, 699] {
                    let expect = (from..nr_bits).find(|&i| model[i as usize]);
                    prop_assert_eq!(b.next_set(from), expect);
                    let to = (from + 150).min(nr_bits);
                    let all = (from..to).all(|i| model[i as usize]);
                    prop_assert_eq!(b.all_set(from..to), all);
                }
                // No chunk keeps a page it does not need for long: an all-clear page is dropped.
                for c in b.chunks.iter() {
                    if let Chunk::Mixed { set, .. } = c {
                        prop_assert!(*set > 0);
                    }
                }
            }
        }
    }
}

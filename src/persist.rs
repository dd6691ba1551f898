// SPDX-License-Identifier: GPL-2.0

//! The metadata device's I/O: loading what a crash left, and writing phases and bitmaps.
//!
//! The format and what each bit promises are in `engine::metadata`; this reads and writes
//! blocks, synchronously, from the contexts that may sleep (the constructor, preresume,
//! postsuspend, the metadata thread, the switch and the failure paths).

use crate::dm::copy::{MetaBlock, META_BLOCK_SIZE};
use crate::dm::device::Device;
use crate::engine::metadata::{
    compare_sample, crc32c_update, decode_bitmap_block, encode_bitmap_block, pending_word,
    sample_regions, BitmapKind, Identity, Layout, MetadataError, Phase, Sample, SampleTally,
    Superblock, BLOCK_SIZE, SUPERBLOCK_COPIES, WORDS_PER_BLOCK,
};
use crate::engine::state::FailReason;
use crate::engine::SECTOR_SIZE;
use crate::migration::{paged_bitmap, BitmapPage, PagedBitmap};
use core::ops::Range;
use kernel::prelude::*;

/// How many copied regions a load compares on the origin and the destination.
const CONTENT_SAMPLES: u64 = 8;

const _: () = assert!(BLOCK_SIZE == META_BLOCK_SIZE);

/// What a load found on the metadata device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loaded {
    /// Blank: formatted now, every region to copy.
    New,
    /// A copy in progress: the store's bitmaps say which regions are done.
    Copying,
    /// Switched: everything goes to the destination.
    Switched,
    /// Failed or cancelled before: the copy starts over (the bitmaps were reset).
    StartedOver,
    /// The metadata of the live table this one replaces, recorded with another region size:
    /// nothing is taken from it, and the reload's hand-over (a switch kept, or the copy started
    /// over) is the first thing written, in this table's region size.
    ForHandover,
}

/// The metadata device as this migration last wrote it.
pub(crate) struct MetaStore {
    superblock: Superblock,
    layout: Layout,
    block: MetaBlock,
    buf: KBox<[u8; BLOCK_SIZE]>,
    /// The copied and intent bitmaps as on the device, in pages only where they are mixed:
    /// the copied bitmap is all ones behind the copy and all zeros ahead of it, the intent
    /// bitmap all zeros but where the guest wrote lately (issue 24).
    disk_copied: PagedBitmap,
    disk_intent: PagedBitmap,
    /// One bitmap block's words, as a bitmap write fills them.
    words: KVec<u64>,
    /// The copy of the copied (0) or intent (1) bitmap may differ from the device: a page for
    /// it could not be allocated after a block was written. Until a write of every block
    /// succeeds in full, no block is skipped as unchanged.
    stale: [bool; 2],
    /// See [`MetaStore::first_copy_written`].
    first_copy_written: bool,
    /// Loaded as [`Loaded::ForHandover`], and the hand-over is not written yet: the device
    /// still describes another region size.
    handover_due: bool,
}

fn alloc_bitmap(words: usize) -> Result<PagedBitmap, MetadataError> {
    paged_bitmap(words as u64 * 64).map_err(|_| MetadataError::OutOfMemory)
}

/// A page for a bitmap of the store, from where the store may sleep.
fn new_page() -> Option<BitmapPage> {
    BitmapPage::new().ok()
}

impl MetaStore {
    /// Loads the metadata of a migration of `identity` from `metadata`, or formats a blank
    /// device. Returns the store and what it found; for [`Loaded::Copying`], the caller takes
    /// the bitmaps with [`MetaStore::pending_word`] and [`MetaStore::intent_word`].
    ///
    /// With `replaces_live`, the table replaces a live table of the same devices and length:
    /// metadata of another region size is then that table's, taken over at the hand-over
    /// ([`Loaded::ForHandover`]).
    pub(crate) fn open(
        metadata: &Device,
        origin: &Device,
        destination: &Device,
        identity: Identity,
        format_id: u64,
        replaces_live: bool,
    ) -> Result<(Self, Loaded), MetadataError> {
        let nr_regions = identity.nr_regions();
        let layout = Layout::new(nr_regions);
        if metadata.sectors() < layout.device_sectors() {
            return Err(MetadataError::TooSmall);
        }
        let words = (layout.bitmap_blocks as usize) * WORDS_PER_BLOCK;
        let mut store = Self {
            superblock: Superblock {
                generation: 0,
                phase: Phase::Copying,
                fail_reason: None,
                format_id,
                identity,
                origin_sample: None,
            },
            layout,
            block: MetaBlock::new().map_err(|_| MetadataError::ReadError)?,
            // Zeroed in place: `KBox::new` would build the 4 KiB on the constructor's stack,
            // which is deep already.
            buf: <KBox<[u8; BLOCK_SIZE]> as kernel::init::InPlaceInit<_>>::init(
                kernel::init::zeroed(),
                GFP_KERNEL,
            )
            .map_err(|_| MetadataError::OutOfMemory)?,
            disk_copied: alloc_bitmap(words)?,
            disk_intent: alloc_bitmap(words)?,
            words: KVec::from_elem(0u64, WORDS_PER_BLOCK, GFP_KERNEL)
                .map_err(|_| MetadataError::OutOfMemory)?,
            stale: [false; 2],
            first_copy_written: false,
            handover_due: false,
        };
        let mut copies = [Ok(crate::engine::metadata::SuperblockCopy::Blank); 2];
        for (copy, slot) in copies.iter_mut().enumerate() {
            let copy = copy as u64;
            store.read(metadata, Layout::superblock_sector(copy))?;
            *slot = Superblock::decode(copy, &store.buf);
        }
        let Some(superblock) = Superblock::choose(copies)? else {
            store.format(metadata)?;
            return Ok((store, Loaded::New));
        };
        match superblock.check(&identity, metadata.sectors()) {
            Err(MetadataError::RegionSizeMismatch) if replaces_live => {
                // Its generation and phase, until the hand-over writes this table's.
                store.superblock = Superblock {
                    identity,
                    ..superblock
                };
                store.handover_due = true;
                return Ok((store, Loaded::ForHandover));
            }
            result => result?,
        }
        store.superblock = superblock;
        match superblock.phase {
            Phase::Switched => {
                // The origin is frozen from the switch on: it must be the one the switch saw.
                if let Some(expected) = superblock.origin_sample {
                    let sample = store
                        .sample_origin(origin)
                        .map_err(|_| MetadataError::OriginSampleUnreadable)?;
                    if sample != expected {
                        return Err(MetadataError::SwitchedFromAnotherOrigin);
                    }
                }
                Ok((store, Loaded::Switched))
            }
            Phase::Failed | Phase::Cancelled => {
                store.reset(metadata)?;
                Ok((store, Loaded::StartedOver))
            }
            Phase::Copying => {
                store.read_bitmap(metadata, BitmapKind::Copied)?;
                store.read_bitmap(metadata, BitmapKind::Intent)?;
                store.check_content(origin, destination)?;
                Ok((store, Loaded::Copying))
            }
        }
    }

    fn read(&mut self, device: &Device, sector: u64) -> Result<(), MetadataError> {
        self.block
            .read(device, sector, &mut self.buf)
            .map_err(|_| MetadataError::ReadError)
    }

    fn write_block(&mut self, device: &Device, sector: u64) -> Result<(), MetadataError> {
        self.block
            .write(device, sector, &self.buf, true)
            .map_err(|_| MetadataError::WriteError)
    }

    fn read_bitmap(&mut self, device: &Device, kind: BitmapKind) -> Result<(), MetadataError> {
        for index in 0..self.layout.bitmap_blocks {
            self.read(device, self.layout.bitmap_sector(kind, index))?;
            let start = index as usize * WORDS_PER_BLOCK;
            let format_id = self.superblock.format_id;
            let Self {
                buf,
                disk_copied,
                disk_intent,
                words,
                ..
            } = self;
            if !decode_bitmap_block(kind, format_id, index, &**buf, words) {
                pr_warn!(
                    "Metadata {:?} bitmap block {} fails its checksum (a torn write?): its \
                     regions will be copied again\n",
                    kind,
                    index
                );
            }
            let disk = match kind {
                BitmapKind::Copied => disk_copied,
                BitmapKind::Intent => disk_intent,
            };
            for (i, &value) in words.iter().enumerate() {
                if !disk.set_word(start + i, value, &mut new_page) {
                    return Err(MetadataError::OutOfMemory);
                }
            }
        }
        Ok(())
    }

    /// Compares a few regions the metadata says are copied and clean on the two devices: a
    /// difference means the metadata was written for another pair. A sample where one side
    /// reads as one byte repeated (zeroes, or 0xff) and the other does not proves nothing on
    /// its own: the guest may have discarded that region, and a device need not return the
    /// same bytes for discarded blocks as another. Such samples pass only while no more of them
    /// than of samples with matching real data are found (`SampleTally`).
    fn check_content(
        &mut self,
        origin: &Device,
        destination: &Device,
    ) -> Result<(), MetadataError> {
        let identity = self.superblock.identity;
        let nr_regions = identity.nr_regions();
        let region_bytes = identity.region_sectors * SECTOR_SIZE;
        let compare = region_bytes.min(BLOCK_SIZE as u64) as usize;
        let clean: u64 = (0..nr_regions.div_ceil(64) as usize)
            .map(|w| {
                u64::from(
                    (!pending_word(self.disk_copied.word(w), self.disk_intent.word(w)))
                        .count_ones(),
                )
            })
            .sum();
        if clean == 0 {
            return Ok(());
        }
        let mut theirs =
            KVVec::from_elem(0u8, BLOCK_SIZE, GFP_KERNEL).map_err(|_| MetadataError::ReadError)?;
        let mut nth = 0;
        let mut tally = SampleTally::default();
        let step = clean.div_ceil(CONTENT_SAMPLES).max(1);
        for region in 0..nr_regions {
            let (w, b) = ((region / 64) as usize, 1u64 << (region % 64));
            if pending_word(self.disk_copied.word(w), self.disk_intent.word(w)) & b != 0 {
                continue;
            }
            nth += 1;
            if (nth - 1) % step != 0 {
                continue;
            }
            let sector = region * identity.region_sectors;
            // A whole block must lie inside both devices.
            let end = sector + BLOCK_SIZE as u64 / SECTOR_SIZE;
            if end > origin.sectors() || end > destination.sectors() {
                continue;
            }
            self.read(origin, sector)?;
            for (t, b) in theirs.iter_mut().zip(self.buf.iter()) {
                *t = *b;
            }
            self.read(destination, sector)?;
            let last = (identity.target_sectors - sector).saturating_mul(SECTOR_SIZE);
            let len = compare.min(last as usize);
            let sample = compare_sample(&theirs[..len], &self.buf[..len]);
            tally.add(sample);
            match sample {
                Sample::Differs => {
                    pr_err!(
                        "Region {} is copied by the metadata but differs on the two devices\n",
                        region
                    );
                    return Err(MetadataError::ContentMismatch);
                }
                Sample::MaybeDiscarded => pr_warn!(
                    "Region {} is copied by the metadata but blank on one device only \
                     (discarded?)\n",
                    region
                ),
                Sample::Matches | Sample::Neutral => {}
            }
        }
        if !tally.accepts() {
            pr_err!(
                "More copied regions are blank on one device only than hold the same data on \
                 both\n"
            );
            return Err(MetadataError::ContentMismatch);
        }
        Ok(())
    }

    /// A checksum of the first bytes (up to 4 KiB) of the origin's sample regions.
    pub(crate) fn sample_origin(&mut self, origin: &Device) -> Result<u32, MetadataError> {
        let identity = self.superblock.identity;
        let region_bytes = identity.region_sectors * SECTOR_SIZE;
        let mut crc = !0;
        for region in sample_regions(identity.nr_regions()) {
            let sector = region * identity.region_sectors;
            if sector + BLOCK_SIZE as u64 / SECTOR_SIZE > origin.sectors() {
                continue;
            }
            self.read(origin, sector)?;
            let left = (identity.target_sectors - sector) * SECTOR_SIZE;
            let len = region_bytes.min(left).min(BLOCK_SIZE as u64) as usize;
            crc = crc32c_update(crc, &self.buf[..len]);
        }
        Ok(!crc)
    }

    /// Reads the superblock again before a hand-over over the metadata of another region
    /// size: the table it replaces may have written a phase since this one loaded it, and the
    /// hand-over's generation must be above it (a tie would let a torn write pick either).
    pub(crate) fn reload_for_handover(&mut self, device: &Device) -> Result<(), MetadataError> {
        if !self.handover_due {
            return Ok(());
        }
        let mut copies = [Ok(crate::engine::metadata::SuperblockCopy::Blank); 2];
        for (copy, slot) in copies.iter_mut().enumerate() {
            let copy = copy as u64;
            self.read(device, Layout::superblock_sector(copy))?;
            *slot = Superblock::decode(copy, &self.buf);
        }
        if let Some(on_disk) = Superblock::choose(copies)? {
            self.superblock = Superblock {
                identity: self.superblock.identity,
                ..on_disk
            };
        }
        Ok(())
    }

    /// The generation of the last phase written: it changes with every phase (a switch, a
    /// failure, a cancel, a hand-over), so a commit that let go of the phase lock can tell
    /// whether its snapshot still belongs to the phase it was taken in.
    pub(crate) fn generation(&self) -> u64 {
        self.superblock.generation
    }

    /// Whether the device still describes the region size of the table this one replaced:
    /// nothing but the hand-over may be written, and a table that goes live without one is
    /// refused.
    pub(crate) fn handover_due(&self) -> bool {
        self.handover_due
    }

    /// Sets the origin sample the next `switched` phase records.
    pub(crate) fn set_origin_sample(&mut self, sample: Option<u32>) {
        self.superblock.origin_sample = sample;
    }

    /// Formats a blank device: clean bitmaps, then the superblock.
    fn format(&mut self, device: &Device) -> Result<(), MetadataError> {
        self.write_zero_bitmaps(device)?;
        self.write_phase(device, Phase::Copying, None)
    }

    /// Starts the copy over on the device: the old bitmaps are marked stale first (a crash
    /// half-way must not trust them), then cleared, then the phase says copying again.
    pub(crate) fn reset(&mut self, device: &Device) -> Result<(), MetadataError> {
        // Also over `switched`: the device must not route anywhere while half reset.
        if !matches!(self.superblock.phase, Phase::Cancelled | Phase::Failed) {
            self.write_phase(device, Phase::Cancelled, None)?;
        }
        self.write_zero_bitmaps(device)?;
        self.write_phase(device, Phase::Copying, None)
    }

    fn write_zero_bitmaps(&mut self, device: &Device) -> Result<(), MetadataError> {
        let format_id = self.superblock.format_id;
        for kind in [BitmapKind::Copied, BitmapKind::Intent] {
            for index in 0..self.layout.bitmap_blocks {
                encode_bitmap_block(kind, format_id, index, &[], &mut self.buf);
                self.write_block(device, self.layout.bitmap_sector(kind, index))?;
            }
        }
        self.disk_copied.fill(false);
        self.disk_intent.fill(false);
        self.stale = [false; 2];
        Ok(())
    }

    /// Records a phase: both superblock copies, one after the other, each durable (FUA)
    /// before the next; the phase counts only once both are written.
    pub(crate) fn write_phase(
        &mut self,
        device: &Device,
        phase: Phase,
        fail_reason: Option<FailReason>,
    ) -> Result<(), MetadataError> {
        let mut superblock = self.superblock;
        superblock.generation += 1;
        superblock.phase = phase;
        superblock.fail_reason = fail_reason;
        if phase != Phase::Switched {
            superblock.origin_sample = None;
        }
        // A generation is used once, also when its write fails half-way: the next phase never
        // ties with a copy of this one.
        self.superblock.generation = superblock.generation;
        self.first_copy_written = false;
        for copy in 0..SUPERBLOCK_COPIES {
            superblock.encode(&mut self.buf);
            self.write_block(device, Layout::superblock_sector(copy))?;
            self.first_copy_written = true;
        }
        self.superblock = superblock;
        // Both copies describe this table now (a reset writes the bitmaps before the last
        // phase).
        self.handover_due = false;
        Ok(())
    }

    /// Whether the last [`MetaStore::write_phase`] wrote superblock copy 0 (which then wins a
    /// load, with its higher generation), also if it failed after.
    pub(crate) fn first_copy_written(&self) -> bool {
        self.first_copy_written
    }

    /// Word `word` of the pending bitmap a load found: copied regions with no intent are done.
    pub(crate) fn pending_word(&self, word: usize) -> u64 {
        pending_word(self.disk_copied.word(word), self.disk_intent.word(word))
    }

    /// Word `word` of the intent bitmap a load found.
    pub(crate) fn intent_word(&self, word: usize) -> u64 {
        self.disk_intent.word(word)
    }

    /// Writes the blocks of bitmap `kind` that differ from the device, each durable when this
    /// returns; `fill(words, out)` puts the words the device must have for the word range
    /// `words` into `out` (one block's, at most; zeros when it leaves them). Called block by
    /// block, so that the caller takes its lock for one block at a time. Returns how many
    /// blocks it wrote. When no page can be allocated for the store's own copy of the bitmap,
    /// the copy is marked stale and every block is written until it is whole again: a block
    /// skipped on a wrong copy could leave an intent bit off the device.
    pub(crate) fn write_bitmap(
        &mut self,
        device: &Device,
        kind: BitmapKind,
        fill: &mut dyn FnMut(Range<usize>, &mut [u64]),
    ) -> Result<u64, MetadataError> {
        let format_id = self.superblock.format_id;
        let mut written = 0;
        let mut words = core::mem::take(&mut self.words);
        let which = match kind {
            BitmapKind::Copied => 0,
            BitmapKind::Intent => 1,
        };
        let stale = self.stale[which];
        let mut whole = true;
        let result = (|| {
            for index in 0..self.layout.bitmap_blocks {
                let first = index as usize * WORDS_PER_BLOCK;
                let range = first..first + WORDS_PER_BLOCK;
                words.fill(0);
                fill(range.clone(), &mut words);
                let disk = match kind {
                    BitmapKind::Copied => &self.disk_copied,
                    BitmapKind::Intent => &self.disk_intent,
                };
                if !stale
                    && range
                        .clone()
                        .zip(words.iter())
                        .all(|(w, &v)| disk.word(w) == v)
                {
                    continue;
                }
                encode_bitmap_block(kind, format_id, index, &words, &mut self.buf);
                self.write_block(device, self.layout.bitmap_sector(kind, index))?;
                let disk = match kind {
                    BitmapKind::Copied => &mut self.disk_copied,
                    BitmapKind::Intent => &mut self.disk_intent,
                };
                for (w, &v) in range.zip(words.iter()) {
                    whole &= disk.set_word(w, v, &mut new_page);
                }
                written += 1;
            }
            Ok(written)
        })();
        self.words = words;
        if result.is_ok() {
            self.stale[which] = !whole;
        } else if !whole {
            self.stale[which] = true;
        }
        result
    }

    /// Whether the store's copy of the copied bitmap may differ from the device (see
    /// `stale`): a commit then writes it whole even when the snapshot equals the copy.
    pub(crate) fn copied_stale(&self) -> bool {
        self.stale[0]
    }

    /// Word `word` of the copied bitmap as the device has it.
    pub(crate) fn disk_copied_word(&self, word: usize) -> u64 {
        if word < self.disk_copied.nr_words() {
            self.disk_copied.word(word)
        } else {
            0
        }
    }
}

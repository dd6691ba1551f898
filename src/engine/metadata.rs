// SPDX-License-Identifier: GPL-2.0

//! The metadata device: its on-disk format, what a crash leaves behind, and how a load reads it.
//!
//! Version 1, documented in `Documentation/dm-migrate.rst`. The device is cut into 4 KiB
//! blocks, little-endian throughout:
//!
//! ```text
//! block 0, 1                       superblock, two copies, each written on every update
//! block 2 .. 2+n                   copied bitmap: 1 = the region's copy is on the destination
//! block 2+n .. 2+2n                write-intent bitmap: 1 = mirrored writes may be half done
//! ```
//!
//! where `n` is [`Layout::bitmap_blocks`]. A bitmap block is a 16-byte header (kind, crc32c,
//! format id) and 510 words of 64 regions each. Every block carries a crc32c; a bitmap block's
//! also covers its index and the format id, so that a block from another format or place does
//! not pass.
//!
//! After a crash a region is copied again unless its copied bit is set and its intent bit is
//! clear. Each bit is safe on its own: a copied bit is written only after a destination flush
//! that covers the copy; an intent bit is durable before the first mirrored write to its region
//! is sent, and cleared only once every mirrored write to it has completed and the destination
//! was flushed. A bitmap block that fails its checksum (a torn write) reads as "copy all its
//! regions again", which is always safe while the origin holds the data.
//!
//! The superblock says which phase the migration is in. It is written to both copies, one after
//! the other, and a phase counts as durable only once both writes completed: so a crash leaves
//! either copy valid with a state that is safe to act on, and a single copy damaged later still
//! leaves the other one. A copy that fails its checksum is refused all the same: nothing that
//! came from this target damages a complete copy, so it is a fault to look at, not to guess past.

use super::state::FailReason;
use super::SECTOR_SIZE;

/// The size of a metadata block, also the unit of every metadata write.
pub const BLOCK_SIZE: usize = 4096;
/// Sectors per metadata block.
pub const BLOCK_SECTORS: u64 = BLOCK_SIZE as u64 / SECTOR_SIZE;
/// The superblock's magic number.
pub const MAGIC: [u8; 8] = *b"DMMIGRAT";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// The bitmap words in one bitmap block.
pub const WORDS_PER_BLOCK: usize = 510;
/// The regions one bitmap block covers.
pub const REGIONS_PER_BLOCK: u64 = WORDS_PER_BLOCK as u64 * 64;
/// The bytes before the bitmap words in a bitmap block.
const BITMAP_HEADER: usize = 16;
/// The superblock copies.
pub const SUPERBLOCK_COPIES: u64 = 2;

/// The phase of a migration, as the superblock records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Copying, or in sync and mirroring: the origin holds every write.
    Copying,
    /// Switched: the destination holds every write; the origin is stale.
    Switched,
    /// Cancelled: the origin holds every write; the bitmaps are stale.
    Cancelled,
    /// Failed: the origin holds every write; the bitmaps are stale.
    Failed,
}

impl Phase {
    fn code(self) -> u32 {
        match self {
            Self::Copying => 1,
            Self::Switched => 2,
            Self::Cancelled => 3,
            Self::Failed => 4,
        }
    }

    fn from_code(code: u32) -> Option<Self> {
        [Self::Copying, Self::Switched, Self::Cancelled, Self::Failed]
            .into_iter()
            .find(|p| p.code() == code)
    }

    /// The word for logs and `dmmig inspect`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Copying => "copying",
            Self::Switched => "switched",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }
}

/// Which bitmap a bitmap block belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitmapKind {
    /// Regions whose copy is durable on the destination.
    Copied,
    /// Regions whose mirrored writes may not have landed on both devices.
    Intent,
}

impl BitmapKind {
    fn magic(self) -> u32 {
        match self {
            Self::Copied => u32::from_le_bytes(*b"CPYD"),
            Self::Intent => u32::from_le_bytes(*b"INTN"),
        }
    }
}

/// What the metadata must agree with: the migration's shape and its devices' sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// The target's length in sectors.
    pub target_sectors: u64,
    /// The region size in sectors.
    pub region_sectors: u64,
    /// The origin device's size in sectors.
    pub origin_sectors: u64,
    /// The destination device's size in sectors.
    pub destination_sectors: u64,
}

impl Identity {
    /// The number of regions.
    pub fn nr_regions(&self) -> u64 {
        self.target_sectors.div_ceil(self.region_sectors.max(1))
    }
}

/// The superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    /// Counts updates; of two valid copies, the higher one is the newer.
    pub generation: u64,
    /// Where the migration stands.
    pub phase: Phase,
    /// Why it failed, for a failed phase.
    pub fail_reason: Option<FailReason>,
    /// A number chosen when the device was formatted; every bitmap block carries it.
    pub format_id: u64,
    /// The migration the metadata describes.
    pub identity: Identity,
    /// For a switched migration: a checksum of the origin's sample regions
    /// ([`sample_regions`]) taken at the switch, after which nothing writes the origin; a load
    /// compares it with the origin it is given. `None` when there is none.
    pub origin_sample: Option<u32>,
}

/// How many regions [`sample_regions`] picks.
pub const SAMPLE_REGIONS: u64 = 8;

/// The regions whose first bytes identify a device pair: spread evenly over the target.
pub fn sample_regions(nr_regions: u64) -> impl Iterator<Item = u64> {
    let n = nr_regions.min(SAMPLE_REGIONS);
    (0..n).map(move |i| i * nr_regions / n.max(1))
}

/// Why metadata was refused, each with the reason the kernel log gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataError {
    /// The metadata device cannot hold the bitmaps of this migration.
    TooSmall,
    /// A superblock copy has the magic but fails its checksum.
    CorruptSuperblock(u64),
    /// A superblock copy is neither blank nor a dm-migrate superblock.
    NotMetadata(u64),
    /// A superblock of a format version this code does not know.
    UnsupportedVersion(u32),
    /// The superblock has an unknown phase or impossible fields.
    BadSuperblock,
    /// The superblock describes a target of another length.
    TargetLengthMismatch,
    /// The superblock describes another region size.
    RegionSizeMismatch,
    /// The superblock describes an origin of another size.
    OriginMismatch,
    /// The superblock describes a destination of another size.
    DestinationMismatch,
    /// A region the metadata says is copied differs on the two devices: they are not the pair
    /// the metadata was written for.
    ContentMismatch,
    /// The origin's sample regions differ from those the switch recorded.
    SwitchedFromAnotherOrigin,
    /// The origin's sample regions cannot be read to check switched metadata.
    OriginSampleUnreadable,
    /// Reading the metadata device failed.
    ReadError,
    /// Writing the metadata device failed.
    WriteError,
    /// No memory for what the metadata records (the pages of a partly copied bitmap).
    OutOfMemory,
}

impl MetadataError {
    /// The reason, a capitalised phrase without a period.
    pub fn message(self) -> &'static core::ffi::CStr {
        match self {
            Self::TooSmall => c"Metadata device too small for this migration",
            Self::CorruptSuperblock(0) => c"Metadata superblock copy 0 fails its checksum",
            Self::CorruptSuperblock(_) => c"Metadata superblock copy 1 fails its checksum",
            Self::NotMetadata(_) => {
                c"Metadata device holds something else: not blank, no superblock"
            }
            Self::UnsupportedVersion(_) => c"Metadata format version not supported",
            Self::BadSuperblock => c"Metadata superblock has invalid fields",
            Self::TargetLengthMismatch => c"Metadata is for a target of another length",
            Self::RegionSizeMismatch => c"Metadata is for another region size",
            Self::OriginMismatch => c"Metadata is for an origin of another size",
            Self::DestinationMismatch => c"Metadata is for a destination of another size",
            Self::ContentMismatch => {
                c"Metadata is for another pair: a region it says is copied differs"
            }
            Self::SwitchedFromAnotherOrigin => {
                c"Metadata is for another pair: it switched away from another origin"
            }
            Self::OriginSampleUnreadable => {
                c"Cannot read the origin to check switched metadata: load a linear on the destination"
            }
            Self::ReadError => c"Error reading the metadata device",
            Self::WriteError => c"Error writing the metadata device",
            Self::OutOfMemory => c"Out of memory loading the metadata",
        }
    }
}

/// Where things are on a metadata device for a number of regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Blocks per bitmap.
    pub bitmap_blocks: u64,
}

impl Layout {
    /// The layout for `nr_regions` regions.
    pub fn new(nr_regions: u64) -> Self {
        Self {
            bitmap_blocks: nr_regions.div_ceil(REGIONS_PER_BLOCK).max(1),
        }
    }

    /// The first block of a bitmap.
    pub fn first_block(&self, kind: BitmapKind) -> u64 {
        match kind {
            BitmapKind::Copied => SUPERBLOCK_COPIES,
            BitmapKind::Intent => SUPERBLOCK_COPIES + self.bitmap_blocks,
        }
    }

    /// The sector of a bitmap's `index`-th block.
    pub fn bitmap_sector(&self, kind: BitmapKind, index: u64) -> u64 {
        (self.first_block(kind) + index) * BLOCK_SECTORS
    }

    /// The sector of a superblock copy.
    pub fn superblock_sector(copy: u64) -> u64 {
        copy * BLOCK_SECTORS
    }

    /// The smallest metadata device, in sectors.
    pub fn device_sectors(&self) -> u64 {
        (SUPERBLOCK_COPIES + 2 * self.bitmap_blocks) * BLOCK_SECTORS
    }
}

/// The crc32c (Castagnoli) table, built at compile time.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// Continues a crc32c over `bytes`; start from `!0` and invert the result, as [`crc32c`] does.
pub fn crc32c_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// The crc32c of `bytes` (the same value as the kernel's `~crc32c(~0, ...)`).
pub fn crc32c(bytes: &[u8]) -> u32 {
    !crc32c_update(!0, bytes)
}

/// The running crc32c (not yet inverted) of `buf` with its 4 bytes at `at` read as zeros: the
/// checksum a block was written with, whose own field was zero then. Computed in three runs
/// rather than on a copy of the block: a 4 KiB copy on the stack, in a constructor's deep call
/// chain, ran into the kernel stack's guard page.
fn crc32c_with_hole(buf: &[u8; BLOCK_SIZE], at: usize) -> u32 {
    let (head, rest) = buf.split_at(at.min(BLOCK_SIZE));
    let tail = rest.get(4..).unwrap_or(&[]);
    crc32c_update(crc32c_update(crc32c_update(!0, head), &[0; 4]), tail)
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

// Superblock field offsets.
const SB_MAGIC: usize = 0;
const SB_VERSION: usize = 8;
const SB_CRC: usize = 12;
const SB_GENERATION: usize = 16;
const SB_PHASE: usize = 24;
const SB_FAIL_REASON: usize = 28;
const SB_FORMAT_ID: usize = 32;
const SB_TARGET_SECTORS: usize = 40;
const SB_REGION_SECTORS: usize = 48;
const SB_ORIGIN_SECTORS: usize = 56;
const SB_DESTINATION_SECTORS: usize = 64;
const SB_BITMAP_BLOCKS: usize = 72;
const SB_SAMPLED: usize = 80;
const SB_ORIGIN_SAMPLE: usize = 84;
const SB_END: usize = 88;

fn fail_reason_code(reason: Option<FailReason>) -> u32 {
    match reason {
        None => 0,
        Some(FailReason::OriginRead) => 1,
        Some(FailReason::DestinationWrite) => 2,
        Some(FailReason::DestinationFlush) => 3,
        Some(FailReason::OutOfMemory) => 4,
        Some(FailReason::MetadataWrite) => 5,
    }
}

fn fail_reason_from(code: u32) -> Option<Option<FailReason>> {
    Some(match code {
        0 => None,
        1 => Some(FailReason::OriginRead),
        2 => Some(FailReason::DestinationWrite),
        3 => Some(FailReason::DestinationFlush),
        4 => Some(FailReason::OutOfMemory),
        5 => Some(FailReason::MetadataWrite),
        _ => return None,
    })
}

/// How a superblock copy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuperblockCopy {
    /// All zeros: never written.
    Blank,
    /// A valid superblock.
    Valid(Superblock),
}

impl Superblock {
    /// Writes the superblock into a block buffer.
    pub fn encode(&self, buf: &mut [u8; BLOCK_SIZE]) {
        buf.fill(0);
        buf[SB_MAGIC..SB_MAGIC + 8].copy_from_slice(&MAGIC);
        put_u32(buf, SB_VERSION, VERSION);
        put_u64(buf, SB_GENERATION, self.generation);
        put_u32(buf, SB_PHASE, self.phase.code());
        put_u32(buf, SB_FAIL_REASON, fail_reason_code(self.fail_reason));
        put_u64(buf, SB_FORMAT_ID, self.format_id);
        put_u64(buf, SB_TARGET_SECTORS, self.identity.target_sectors);
        put_u64(buf, SB_REGION_SECTORS, self.identity.region_sectors);
        put_u64(buf, SB_ORIGIN_SECTORS, self.identity.origin_sectors);
        put_u64(
            buf,
            SB_DESTINATION_SECTORS,
            self.identity.destination_sectors,
        );
        put_u64(
            buf,
            SB_BITMAP_BLOCKS,
            Layout::new(self.identity.nr_regions()).bitmap_blocks,
        );
        if let Some(sample) = self.origin_sample {
            put_u32(buf, SB_SAMPLED, 1);
            put_u32(buf, SB_ORIGIN_SAMPLE, sample);
        }
        let crc = crc32c(&buf[..]);
        put_u32(buf, SB_CRC, crc);
    }

    /// Reads superblock copy `copy` from a block buffer.
    pub fn decode(copy: u64, buf: &[u8; BLOCK_SIZE]) -> Result<SuperblockCopy, MetadataError> {
        if buf.iter().all(|&b| b == 0) {
            return Ok(SuperblockCopy::Blank);
        }
        if buf[SB_MAGIC..SB_MAGIC + 8] != MAGIC {
            return Err(MetadataError::NotMetadata(copy));
        }
        if !crc32c_with_hole(buf, SB_CRC) != get_u32(buf, SB_CRC) {
            return Err(MetadataError::CorruptSuperblock(copy));
        }
        let version = get_u32(buf, SB_VERSION);
        if version != VERSION {
            return Err(MetadataError::UnsupportedVersion(version));
        }
        let identity = Identity {
            target_sectors: get_u64(buf, SB_TARGET_SECTORS),
            region_sectors: get_u64(buf, SB_REGION_SECTORS),
            origin_sectors: get_u64(buf, SB_ORIGIN_SECTORS),
            destination_sectors: get_u64(buf, SB_DESTINATION_SECTORS),
        };
        let phase = Phase::from_code(get_u32(buf, SB_PHASE)).ok_or(MetadataError::BadSuperblock)?;
        let fail_reason =
            fail_reason_from(get_u32(buf, SB_FAIL_REASON)).ok_or(MetadataError::BadSuperblock)?;
        if !identity.region_sectors.is_power_of_two()
            || identity.target_sectors == 0
            || get_u64(buf, SB_BITMAP_BLOCKS) != Layout::new(identity.nr_regions()).bitmap_blocks
            || get_u32(buf, SB_SAMPLED) > 1
            || buf[SB_END..].iter().any(|&b| b != 0)
        {
            return Err(MetadataError::BadSuperblock);
        }
        Ok(SuperblockCopy::Valid(Superblock {
            generation: get_u64(buf, SB_GENERATION),
            phase,
            fail_reason,
            format_id: get_u64(buf, SB_FORMAT_ID),
            identity,
            origin_sample: (get_u32(buf, SB_SAMPLED) == 1).then(|| get_u32(buf, SB_ORIGIN_SAMPLE)),
        }))
    }

    /// The superblock of a device from its two copies: the valid one with the higher generation,
    /// `None` when both are blank (a new device). A copy that fails to decode refuses the whole
    /// device (see the module documentation).
    pub fn choose(
        copies: [Result<SuperblockCopy, MetadataError>; 2],
    ) -> Result<Option<Superblock>, MetadataError> {
        let [a, b] = copies;
        Ok(match (a?, b?) {
            (SuperblockCopy::Blank, SuperblockCopy::Blank) => None,
            (SuperblockCopy::Valid(s), SuperblockCopy::Blank)
            | (SuperblockCopy::Blank, SuperblockCopy::Valid(s)) => Some(s),
            (SuperblockCopy::Valid(s), SuperblockCopy::Valid(t)) => {
                Some(if t.generation > s.generation { t } else { s })
            }
        })
    }

    /// Checks that the superblock describes `identity`, and that a device of `device_sectors`
    /// holds its bitmaps.
    pub fn check(&self, identity: &Identity, device_sectors: u64) -> Result<(), MetadataError> {
        let ours = &self.identity;
        if ours.target_sectors != identity.target_sectors {
            return Err(MetadataError::TargetLengthMismatch);
        }
        if ours.region_sectors != identity.region_sectors {
            return Err(MetadataError::RegionSizeMismatch);
        }
        if ours.origin_sectors != identity.origin_sectors {
            return Err(MetadataError::OriginMismatch);
        }
        if ours.destination_sectors != identity.destination_sectors {
            return Err(MetadataError::DestinationMismatch);
        }
        if device_sectors < Layout::new(identity.nr_regions()).device_sectors() {
            return Err(MetadataError::TooSmall);
        }
        Ok(())
    }
}

/// Writes bitmap block `index` of `kind` with `words` (at most [`WORDS_PER_BLOCK`]; the rest is
/// zero) into a block buffer.
pub fn encode_bitmap_block(
    kind: BitmapKind,
    format_id: u64,
    index: u64,
    words: &[u64],
    buf: &mut [u8; BLOCK_SIZE],
) {
    buf.fill(0);
    put_u32(buf, 0, kind.magic());
    put_u64(buf, 8, format_id);
    for (i, word) in words.iter().take(WORDS_PER_BLOCK).enumerate() {
        put_u64(buf, BITMAP_HEADER + 8 * i, *word);
    }
    let crc = !crc32c_update(crc32c_update(!0, &buf[..]), &index.to_le_bytes());
    put_u32(buf, 4, crc);
}

/// Reads bitmap block `index` of `kind` into `words`; returns false when the block fails its
/// checksum or belongs elsewhere, and then fills `words` with what makes every region of the
/// block be copied again: no region copied, every region dirty.
pub fn decode_bitmap_block(
    kind: BitmapKind,
    format_id: u64,
    index: u64,
    buf: &[u8; BLOCK_SIZE],
    words: &mut [u64],
) -> bool {
    let crc = !crc32c_update(crc32c_with_hole(buf, 4), &index.to_le_bytes());
    let valid =
        get_u32(buf, 0) == kind.magic() && get_u64(buf, 8) == format_id && get_u32(buf, 4) == crc;
    let unknown = match kind {
        BitmapKind::Copied => 0,
        BitmapKind::Intent => u64::MAX,
    };
    for (i, word) in words.iter_mut().take(WORDS_PER_BLOCK).enumerate() {
        *word = if valid {
            get_u64(buf, BITMAP_HEADER + 8 * i)
        } else {
            unknown
        };
    }
    valid
}

/// What one sample of a copied region says about whether two devices are the pair the metadata
/// was written for (the check of a `copying` metadata device before it is trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// The same data, and not one byte repeated: evidence of the right pair.
    Matches,
    /// The same byte repeated on both: no evidence either way.
    Neutral,
    /// One side is one byte repeated (what a discard can leave) and the other is not: the
    /// guest may have discarded the region, or one device is blank.
    MaybeDiscarded,
    /// Different data on both sides: the metadata is for another pair.
    Differs,
}

/// The samples of a check so far: whether they still allow the pair.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SampleTally {
    matched: u32,
    maybe_discarded: u32,
    differs: bool,
}

impl SampleTally {
    /// Counts one sample.
    pub fn add(&mut self, sample: Sample) {
        match sample {
            Sample::Matches => self.matched += 1,
            Sample::Neutral => {}
            Sample::MaybeDiscarded => self.maybe_discarded += 1,
            Sample::Differs => self.differs = true,
        }
    }

    /// Whether the samples allow the pair: no sample differs, and the samples blank on one
    /// side only are no more than those that match with real data. A guest may have discarded
    /// some copied regions; a destination blank where the metadata says copied (a new device,
    /// one rolled back to an older snapshot) shows more blank samples than matching ones.
    pub fn accepts(&self) -> bool {
        !self.differs && self.maybe_discarded <= self.matched
    }
}

/// Compares the origin's and the destination's bytes of one sample.
pub fn compare_sample(origin: &[u8], destination: &[u8]) -> Sample {
    let uniform = |bytes: &[u8]| bytes.iter().all(|&b| Some(&b) == bytes.first());
    match (origin == destination, uniform(origin), uniform(destination)) {
        (true, true, _) => Sample::Neutral,
        (true, false, _) => Sample::Matches,
        (false, false, false) => Sample::Differs,
        (false, _, _) => Sample::MaybeDiscarded,
    }
}

/// The pending word a recovery starts from: a region is copied again unless it is copied and
/// its intent bit is clear.
pub fn pending_word(copied: u64, intent: u64) -> u64 {
    !copied | intent
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_tell_discards_from_another_pair() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        let other: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 1) as u8).collect();
        let (zero, ones) = (vec![0u8; 4096], vec![0xffu8; 4096]);
        assert_eq!(compare_sample(&data, &data), Sample::Matches);
        assert_eq!(compare_sample(&zero, &zero), Sample::Neutral);
        assert_eq!(compare_sample(&data, &other), Sample::Differs);
        assert_eq!(compare_sample(&data, &zero), Sample::MaybeDiscarded);
        assert_eq!(compare_sample(&zero, &data), Sample::MaybeDiscarded);
        assert_eq!(compare_sample(&ones, &data), Sample::MaybeDiscarded);
        assert_eq!(compare_sample(&zero, &ones), Sample::MaybeDiscarded);
        // One byte off in real data is another pair's data.
        let mut near = data.clone();
        near[4095] ^= 1;
        assert_eq!(compare_sample(&data, &near), Sample::Differs);
        assert_eq!(compare_sample(&[], &[]), Sample::Neutral);
    }

    #[test]
    fn a_tally_refuses_more_blanks_than_matches_and_any_difference() {
        let tally = |samples: &[Sample]| {
            let mut t = SampleTally::default();
            samples.iter().for_each(|&s| t.add(s));
            t.accepts()
        };
        use Sample::*;
        assert!(tally(&[]));
        assert!(tally(&[Neutral, Neutral]));
        assert!(tally(&[Matches, MaybeDiscarded]));
        assert!(tally(&[Matches, Matches, MaybeDiscarded, Neutral]));
        assert!(!tally(&[MaybeDiscarded]), "a blank destination");
        assert!(
            !tally(&[Matches, MaybeDiscarded, MaybeDiscarded]),
            "rolled back"
        );
        assert!(!tally(&[Matches, Matches, Differs]), "another pair");
    }

    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn identity() -> Identity {
        Identity {
            target_sectors: 1 << 20,
            region_sectors: 128,
            origin_sectors: 1 << 20,
            destination_sectors: (1 << 20) + 8,
        }
    }

    fn superblock(generation: u64, phase: Phase) -> Superblock {
        Superblock {
            generation,
            phase,
            fail_reason: None,
            format_id: 0x1234_5678_9abc_def0,
            identity: identity(),
            origin_sample: None,
        }
    }

    fn encoded(sb: &Superblock) -> [u8; BLOCK_SIZE] {
        let mut buf = [0; BLOCK_SIZE];
        sb.encode(&mut buf);
        buf
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn superblock_round_trips() {
        let mut sb = superblock(7, Phase::Failed);
        sb.fail_reason = Some(FailReason::MetadataWrite);
        assert_eq!(
            Superblock::decode(0, &encoded(&sb)),
            Ok(SuperblockCopy::Valid(sb))
        );
        let mut sb = superblock(8, Phase::Switched);
        sb.origin_sample = Some(0);
        assert_eq!(
            Superblock::decode(0, &encoded(&sb)),
            Ok(SuperblockCopy::Valid(sb))
        );
        assert_eq!(sample_regions(3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(
            sample_regions(80).collect::<Vec<_>>(),
            [0, 10, 20, 30, 40, 50, 60, 70]
        );
        assert_eq!(
            Superblock::decode(1, &[0; BLOCK_SIZE]),
            Ok(SuperblockCopy::Blank)
        );
    }

    #[test]
    fn superblock_damage_is_named() {
        let good = encoded(&superblock(3, Phase::Copying));
        for at in [0, 9, 13, 17, 25, 41, 100, 4095] {
            let mut bad = good;
            bad[at] ^= 0x10;
            let e = Superblock::decode(1, &bad).unwrap_err();
            let expected = if at < 8 {
                MetadataError::NotMetadata(1)
            } else {
                MetadataError::CorruptSuperblock(1)
            };
            assert_eq!(e, expected, "byte {at}");
        }
        let mut other = [0u8; BLOCK_SIZE];
        other[..4].copy_from_slice(b"XFSB");
        assert_eq!(
            Superblock::decode(0, &other),
            Err(MetadataError::NotMetadata(0))
        );
    }

    #[test]
    fn the_newer_valid_copy_wins_and_a_bad_copy_refuses() {
        let old = Superblock::decode(0, &encoded(&superblock(4, Phase::Copying)));
        let new = Superblock::decode(1, &encoded(&superblock(5, Phase::Switched)));
        let blank = Ok(SuperblockCopy::Blank);
        assert_eq!(
            Superblock::choose([old, new]).unwrap().unwrap().phase,
            Phase::Switched
        );
        assert_eq!(
            Superblock::choose([new, old]).unwrap().unwrap().phase,
            Phase::Switched
        );
        assert_eq!(
            Superblock::choose([old, blank])
                .unwrap()
                .unwrap()
                .generation,
            4
        );
        assert_eq!(Superblock::choose([blank, blank]).unwrap(), None);
        assert_eq!(
            Superblock::choose([old, Err(MetadataError::CorruptSuperblock(1))]),
            Err(MetadataError::CorruptSuperblock(1))
        );
    }

    #[test]
    fn identity_and_size_are_checked() {
        let sb = superblock(1, Phase::Copying);
        let need = Layout::new(identity().nr_regions()).device_sectors();
        assert_eq!(sb.check(&identity(), need), Ok(()));
        assert_eq!(
            sb.check(&identity(), need - 1),
            Err(MetadataError::TooSmall)
        );
        let mut other = identity();
        other.destination_sectors += 1;
        assert_eq!(
            sb.check(&other, need),
            Err(MetadataError::DestinationMismatch)
        );
        other = identity();
        other.region_sectors = 256;
        assert_eq!(
            sb.check(&other, need),
            Err(MetadataError::RegionSizeMismatch)
        );
    }

    #[test]
    fn layout_places_the_bitmaps_after_the_superblocks() {
        let layout = Layout::new(REGIONS_PER_BLOCK + 1);
        assert_eq!(layout.bitmap_blocks, 2);
        assert_eq!(layout.bitmap_sector(BitmapKind::Copied, 0), 16);
        assert_eq!(layout.bitmap_sector(BitmapKind::Intent, 1), 5 * 8);
        assert_eq!(layout.device_sectors(), 6 * 8);
        assert_eq!(Layout::new(1).device_sectors(), 4 * 8);
    }

    #[test]
    fn bitmap_blocks_round_trip_and_stray_blocks_mean_copy_again() {
        let words: Vec<u64> = (0..WORDS_PER_BLOCK as u64).map(|i| i * 0x0101).collect();
        let mut buf = [0; BLOCK_SIZE];
        encode_bitmap_block(BitmapKind::Copied, 9, 3, &words, &mut buf);
        let mut out = vec![0; WORDS_PER_BLOCK];
        assert!(decode_bitmap_block(
            BitmapKind::Copied,
            9,
            3,
            &buf,
            &mut out
        ));
        assert_eq!(out, words);
        for (kind, format, index) in [
            (BitmapKind::Intent, 9, 3),
            (BitmapKind::Copied, 8, 3),
            (BitmapKind::Copied, 9, 4),
        ] {
            assert!(!decode_bitmap_block(kind, format, index, &buf, &mut out));
        }
        // A torn block of either bitmap makes every region it covers pending.
        let mut torn = buf;
        torn[2048..].fill(0);
        let mut copied = vec![7; WORDS_PER_BLOCK];
        assert!(!decode_bitmap_block(
            BitmapKind::Copied,
            9,
            3,
            &torn,
            &mut copied
        ));
        encode_bitmap_block(BitmapKind::Intent, 9, 3, &words, &mut buf);
        torn = buf;
        torn[100] ^= 1;
        let mut intent = vec![7; WORDS_PER_BLOCK];
        assert!(!decode_bitmap_block(
            BitmapKind::Intent,
            9,
            3,
            &torn,
            &mut intent
        ));
        let mut good = vec![0; WORDS_PER_BLOCK];
        assert!(decode_bitmap_block(
            BitmapKind::Intent,
            9,
            3,
            &buf,
            &mut good
        ));
        for w in 0..WORDS_PER_BLOCK {
            assert_eq!(
                pending_word(copied[w], good[w]),
                u64::MAX,
                "torn copied block"
            );
            assert_eq!(
                pending_word(words[w], intent[w]),
                u64::MAX,
                "torn intent block"
            );
        }
    }
}

//! The metadata device of a migration, read from userspace with the target's own format code
//! (`dm_migrate_engine::metadata`): `dmmig inspect`, and the checks of `recover`.

use crate::error::{Error, Result};
use dm_migrate_engine::metadata::{
    decode_bitmap_block, pending_word, BitmapKind, Layout, Phase, Superblock, BLOCK_SIZE,
    WORDS_PER_BLOCK,
};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// What a metadata device says.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The file or device read.
    pub path: String,
    /// The format version.
    pub version: u32,
    /// `copying`, `switched`, `cancelled` or `failed`; `blank` for a device never written.
    pub phase: String,
    /// Why it failed, for a failed phase.
    pub fail_reason: Option<String>,
    /// The superblock's generation (counts phase changes).
    pub generation: u64,
    /// The target length, region size and device sizes the metadata is for, in sectors.
    pub target_sectors: u64,
    pub region_sectors: u64,
    pub origin_sectors: u64,
    pub destination_sectors: u64,
    /// Regions in the target.
    pub regions: u64,
    /// Regions whose copy is recorded.
    pub copied_regions: u64,
    /// Regions with a write-intent bit (mirrored writes possibly half done).
    pub dirty_regions: u64,
    /// Regions a recovery copies (not copied, or dirty).
    pub to_copy_regions: u64,
    /// Bitmap blocks that fail their checksum (read as "copy again").
    pub bad_blocks: u64,
}

impl Inspection {
    /// The phase, when the metadata has one.
    pub fn phase(&self) -> Option<Phase> {
        [
            Phase::Copying,
            Phase::Switched,
            Phase::Cancelled,
            Phase::Failed,
        ]
        .into_iter()
        .find(|p| p.as_str() == self.phase)
    }
}

/// A block-aligned buffer for O_DIRECT reads.
struct Aligned {
    bytes: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new() -> Self {
        let bytes = vec![0u8; 2 * BLOCK_SIZE];
        let start = bytes.as_ptr().align_offset(BLOCK_SIZE);
        Self { bytes, start }
    }

    fn block(&mut self) -> &mut [u8; BLOCK_SIZE] {
        let slice = &mut self.bytes[self.start..self.start + BLOCK_SIZE];
        slice.try_into().expect("the slice is BLOCK_SIZE long")
    }
}

/// Opens a metadata device or file for reading, bypassing the page cache where it can (a live
/// target writes the device with bios, which the cache of the device node does not see).
fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(path)
        .or_else(|_| File::open(path))
        .map_err(|e| Error::Usage(format!("cannot open {}: {e}", path.display())))
}

fn read_block(file: &File, buf: &mut Aligned, block: u64, path: &Path) -> Result<()> {
    file.read_exact_at(buf.block(), block * BLOCK_SIZE as u64)
        .map_err(|e| {
            Error::Failed(format!(
                "cannot read block {block} of {}: {e} (truncated?)",
                path.display()
            ))
        })
}

/// Reads and checks a metadata device or file.
pub fn inspect(path: &Path) -> Result<Inspection> {
    let file = open(path)?;
    let mut buf = Aligned::new();
    let mut copies = [Ok(dm_migrate_engine::metadata::SuperblockCopy::Blank); 2];
    for (copy, slot) in copies.iter_mut().enumerate() {
        read_block(&file, &mut buf, copy as u64, path)?;
        *slot = Superblock::decode(copy as u64, buf.block());
    }
    let refused = |e: dm_migrate_engine::metadata::MetadataError| {
        Error::Failed(format!(
            "{}: {}",
            path.display(),
            e.message().to_str().unwrap_or("invalid metadata")
        ))
    };
    let Some(superblock) = Superblock::choose(copies).map_err(refused)? else {
        return Ok(Inspection {
            path: path.display().to_string(),
            version: dm_migrate_engine::metadata::VERSION,
            phase: "blank".into(),
            fail_reason: None,
            generation: 0,
            target_sectors: 0,
            region_sectors: 0,
            origin_sectors: 0,
            destination_sectors: 0,
            regions: 0,
            copied_regions: 0,
            dirty_regions: 0,
            to_copy_regions: 0,
            bad_blocks: 0,
        });
    };
    let identity = superblock.identity;
    let regions = identity.nr_regions();
    let layout = Layout::new(regions);
    let mut copied = vec![0u64; layout.bitmap_blocks as usize * WORDS_PER_BLOCK];
    let mut intent = copied.clone();
    let mut bad_blocks = 0;
    for (kind, words) in [
        (BitmapKind::Copied, &mut copied),
        (BitmapKind::Intent, &mut intent),
    ] {
        for index in 0..layout.bitmap_blocks {
            read_block(&file, &mut buf, layout.first_block(kind) + index, path)?;
            let start = index as usize * WORDS_PER_BLOCK;
            if !decode_bitmap_block(
                kind,
                superblock.format_id,
                index,
                buf.block(),
                &mut words[start..start + WORDS_PER_BLOCK],
            ) {
                bad_blocks += 1;
            }
        }
    }
    let valid = |word: usize| {
        let first = word as u64 * 64;
        match regions.saturating_sub(first) {
            n if n >= 64 => u64::MAX,
            n => (1u64 << n) - 1,
        }
    };
    let words = regions.div_ceil(64) as usize;
    let count = |f: &dyn Fn(usize) -> u64| -> u64 {
        (0..words)
            .map(|w| u64::from((f(w) & valid(w)).count_ones()))
            .sum()
    };
    Ok(Inspection {
        path: path.display().to_string(),
        version: dm_migrate_engine::metadata::VERSION,
        phase: superblock.phase.as_str().into(),
        fail_reason: superblock.fail_reason.map(|r| r.as_str().into()),
        generation: superblock.generation,
        target_sectors: identity.target_sectors,
        region_sectors: identity.region_sectors,
        origin_sectors: identity.origin_sectors,
        destination_sectors: identity.destination_sectors,
        regions,
        copied_regions: count(&|w| copied[w]),
        dirty_regions: count(&|w| intent[w]),
        to_copy_regions: count(&|w| pending_word(copied[w], intent[w])),
        bad_blocks,
    })
}

/// The size a metadata file for `target_sectors` in regions of `region_sectors` needs, bytes.
pub fn size_for(target_sectors: u64, region_sectors: u64) -> u64 {
    let regions = target_sectors.div_ceil(region_sectors.max(1));
    Layout::new(regions).device_sectors() * dm_migrate_engine::SECTOR_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;
    use dm_migrate_engine::metadata::{encode_bitmap_block, Identity};
    use std::io::Write;

    #[test]
    fn inspects_what_the_format_writes() {
        let identity = Identity {
            target_sectors: 128 * 100,
            region_sectors: 128,
            origin_sectors: 128 * 100,
            destination_sectors: 128 * 100,
        };
        let superblock = Superblock {
            generation: 3,
            phase: Phase::Copying,
            fail_reason: None,
            format_id: 77,
            identity,
            origin_sample: None,
        };
        let mut file = Vec::new();
        let mut block = [0u8; BLOCK_SIZE];
        superblock.encode(&mut block);
        file.extend_from_slice(&block);
        file.extend_from_slice(&block);
        encode_bitmap_block(BitmapKind::Copied, 77, 0, &[u64::MAX, 0b1111], &mut block);
        file.extend_from_slice(&block);
        encode_bitmap_block(BitmapKind::Intent, 77, 0, &[0b11], &mut block);
        file.extend_from_slice(&block);
        let dir = std::env::temp_dir().join(format!("dmmig-inspect-{}", std::process::id()));
        std::fs::File::create(&dir)
            .unwrap()
            .write_all(&file)
            .unwrap();
        let seen = inspect(&dir).unwrap();
        assert_eq!(seen.phase, "copying");
        assert_eq!(seen.regions, 100);
        assert_eq!(seen.copied_regions, 68);
        assert_eq!(seen.dirty_regions, 2);
        assert_eq!(seen.to_copy_regions, 100 - 66);
        assert_eq!(seen.bad_blocks, 0);
        // A damaged superblock copy is refused with its reason.
        file[4096 + 20] ^= 1;
        std::fs::File::create(&dir)
            .unwrap()
            .write_all(&file)
            .unwrap();
        let err = inspect(&dir).unwrap_err().to_string();
        assert!(err.contains("copy 1 fails its checksum"), "{err}");
        // A truncated file cannot be read.
        std::fs::File::create(&dir)
            .unwrap()
            .write_all(&file[..8192])
            .unwrap();
        assert!(inspect(&dir).is_err());
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(size_for(128 * 100, 128), 4 * 4096);
    }
}

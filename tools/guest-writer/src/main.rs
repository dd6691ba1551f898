// SPDX-License-Identifier: GPL-2.0
//! The verifying writer of `make e2e`. It runs inside a nested QEMU guest whose virtio disk is the
//! device-mapper device being moved, and does what a database in a VM would: O_DIRECT writes of
//! 4 KiB to 64 KiB at random places, reads of what it wrote, and flushes. It times every I/O, so
//! that the longest stall the guest saw can be set beside the switch pause `dmmig move` reports.
//!
//! ```text
//! guest-writer write DISK CONTROL    write until the host puts "stop" in block 0 of CONTROL,
//!                                    then verify every block of DISK and store the table of
//!                                    what each block holds in CONTROL
//! guest-writer verify DISK CONTROL   verify every block of DISK against that table (after a
//!                                    reboot from the new image)
//! ```
//!
//! Every block the writer writes carries its index and a generation (a counter unique to each
//! write) in a header, and a pattern derived from both, so a block that holds stale data, another
//! block's data or zeroes is told apart from the right one. A block never written must read as
//! zeroes: the image starts sparse. Each ends with a line `writer: result ...` or
//! `verify: result ...` that the host parses, and exits 0 only with no I/O error and no mismatch.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

/// The unit of the writer's bookkeeping, and the alignment O_DIRECT needs.
const BLOCK: usize = 4096;
/// The largest write, in blocks: 64 KiB, which crosses regions of the target's smaller sizes.
const MAX_WRITE_BLOCKS: usize = 16;
const MAGIC: u64 = u64::from_le_bytes(*b"DMMIGE2E");
/// The generation of a block whose last write failed: its content is undefined, and not checked.
const UNKNOWN: u64 = u64::MAX;
/// Block 0 of the control disk is the host's command; the table of generations follows it.
const TABLE_OFFSET: u64 = BLOCK as u64;
const STOP: &[u8] = b"stop";
/// How many mismatches are printed one by one before the writer only counts them.
const MISMATCHES_PRINTED: u64 = 10;

/// A buffer aligned for O_DIRECT, carved out of a larger vector so that no unsafe code is needed.
struct AlignedBuffer {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuffer {
    fn new(len: usize) -> Self {
        let storage = vec![0u8; len + BLOCK];
        let start = storage.as_ptr().align_offset(BLOCK);
        Self {
            storage,
            start,
            len,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// A small, fast generator: the writer needs spread, not quality.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What block `index` holds after the write of generation `generation` (zeroes before any write).
fn fill_block(block: &mut [u8], index: u64, generation: u64) {
    if generation == 0 {
        block.fill(0);
        return;
    }
    block[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    block[8..16].copy_from_slice(&index.to_le_bytes());
    block[16..24].copy_from_slice(&generation.to_le_bytes());
    let mut pattern = XorShift(index.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ generation | 1);
    for word in block[24..].chunks_exact_mut(8) {
        word.copy_from_slice(&pattern.next().to_le_bytes());
    }
}

fn header_word(block: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(block[at..at + 8].try_into().expect("an 8-byte slice"))
}

/// The I/O counters, and the longest time any one I/O took (the stall the guest saw).
struct Stats {
    started: Instant,
    writes: u64,
    reads: u64,
    flushes: u64,
    errors: u64,
    mismatches: u64,
    longest: Duration,
    longest_at: Duration,
    longest_what: &'static str,
    /// The longest I/O since the last progress line, so that the host can tell the stalls during
    /// the move from those before it (TCG's own jitter).
    window_longest: Duration,
}

impl Stats {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            writes: 0,
            reads: 0,
            flushes: 0,
            errors: 0,
            mismatches: 0,
            longest: Duration::ZERO,
            longest_at: Duration::ZERO,
            longest_what: "none",
            window_longest: Duration::ZERO,
        }
    }

    /// Runs one I/O, times it, and counts an error as such (with a line saying what failed).
    fn timed<T>(&mut self, what: &'static str, io: impl FnOnce() -> io::Result<T>) -> Option<T> {
        let began = Instant::now();
        let result = io();
        let took = began.elapsed();
        self.window_longest = self.window_longest.max(took);
        if took > self.longest {
            self.longest = took;
            self.longest_at = began - self.started;
            self.longest_what = what;
        }
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.errors += 1;
                println!(
                    "writer: error: {what} at {:.1} s: {err}",
                    (began - self.started).as_secs_f64()
                );
                None
            }
        }
    }

    fn mismatch(&mut self, index: u64, expected: u64, found: &[u8]) {
        self.mismatches += 1;
        if self.mismatches <= MISMATCHES_PRINTED {
            let header = if header_word(found, 0) == MAGIC {
                format!(
                    "block {} generation {}",
                    header_word(found, 8),
                    header_word(found, 16)
                )
            } else if found.iter().all(|&b| b == 0) {
                "zeroes".to_string()
            } else {
                "no header".to_string()
            };
            println!(
                "writer: mismatch: block {index} should hold generation {expected}, holds {header}"
            );
        }
    }

    fn longest_ms(&self) -> f64 {
        self.longest.as_secs_f64() * 1000.0
    }
}

fn open_direct(path: &str) -> io::Result<(File, u64)> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let bytes = file.seek(SeekFrom::End(0))?;
    Ok((file, bytes / BLOCK as u64))
}

/// Reads `count` blocks from `first` and checks each against its generation.
fn verify_range(
    disk: &File,
    buffer: &mut AlignedBuffer,
    first: u64,
    generations: &[u64],
    stats: &mut Stats,
) {
    let count = generations.len();
    let bytes = &mut buffer.bytes_mut()[..count * BLOCK];
    if stats
        .timed("read", || disk.read_exact_at(bytes, first * BLOCK as u64))
        .is_none()
    {
        return;
    }
    stats.reads += 1;
    let mut expected = [0u8; BLOCK];
    for (i, &generation) in generations.iter().enumerate() {
        if generation == UNKNOWN {
            continue;
        }
        let index = first + i as u64;
        fill_block(&mut expected, index, generation);
        let found = &buffer.bytes()[i * BLOCK..(i + 1) * BLOCK];
        if found != expected {
            stats.mismatch(index, generation, found);
        }
    }
}

/// Verifies every block of the disk, 64 KiB at a time.
fn verify_all(disk: &File, generations: &[u64], stats: &mut Stats) {
    let mut buffer = AlignedBuffer::new(MAX_WRITE_BLOCKS * BLOCK);
    for (chunk_index, chunk) in generations.chunks(MAX_WRITE_BLOCKS).enumerate() {
        let first = (chunk_index * MAX_WRITE_BLOCKS) as u64;
        verify_range(disk, &mut buffer, first, chunk, stats);
    }
}

fn stop_requested(control: &File, buffer: &mut AlignedBuffer, stats: &mut Stats) -> bool {
    let block = &mut buffer.bytes_mut()[..BLOCK];
    stats
        .timed("control read", || control.read_exact_at(block, 0))
        .is_some()
        && buffer.bytes().starts_with(STOP)
}

fn table_bytes(blocks: u64) -> usize {
    (blocks as usize * 8).div_ceil(BLOCK) * BLOCK
}

fn write_mode(disk_path: &str, control_path: &str) -> io::Result<bool> {
    let (disk, blocks) = open_direct(disk_path)?;
    let (control, control_blocks) = open_direct(control_path)?;
    if blocks == 0 {
        return Err(io::Error::other(format!(
            "{disk_path} is smaller than a block"
        )));
    }
    if TABLE_OFFSET + table_bytes(blocks) as u64 > control_blocks * BLOCK as u64 {
        return Err(io::Error::other(format!(
            "{control_path} cannot hold the table of {blocks} blocks"
        )));
    }
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |t| t.as_nanos() as u64)
        | 1;
    let mut rng = XorShift(seed);
    let mut generations = vec![0u64; blocks as usize];
    let mut generation = 0u64;
    let mut stats = Stats::new();
    let mut buffer = AlignedBuffer::new(MAX_WRITE_BLOCKS * BLOCK);
    let mut control_buffer = AlignedBuffer::new(BLOCK);
    let mut last_report = Instant::now();
    println!("writer: running on {disk_path}: {blocks} blocks of 4 KiB");

    while !stop_requested(&control, &mut control_buffer, &mut stats) {
        for round in 0..32 {
            let first = rng.below(blocks);
            let count = (1 + rng.below(MAX_WRITE_BLOCKS as u64)).min(blocks - first) as usize;
            for i in 0..count {
                generation += 1;
                let block = &mut buffer.bytes_mut()[i * BLOCK..(i + 1) * BLOCK];
                fill_block(block, first + i as u64, generation);
            }
            let bytes = &buffer.bytes()[..count * BLOCK];
            let written = stats
                .timed("write", || disk.write_all_at(bytes, first * BLOCK as u64))
                .is_some();
            stats.writes += 1;
            let range = &mut generations[first as usize..first as usize + count];
            for (i, slot) in range.iter_mut().enumerate() {
                *slot = if written {
                    generation - (count - 1 - i) as u64
                } else {
                    UNKNOWN
                };
            }
            // Read back a random range now and then: a read must see the newest write.
            if round % 4 == 3 {
                let first = rng.below(blocks);
                let count = (1 + rng.below(MAX_WRITE_BLOCKS as u64)).min(blocks - first) as usize;
                let expected = generations[first as usize..first as usize + count].to_vec();
                verify_range(&disk, &mut buffer, first, &expected, &mut stats);
            }
        }
        if stats.timed("flush", || disk.sync_data()).is_some() {
            stats.flushes += 1;
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            println!(
                "writer: progress t={:.0}s writes={} reads={} flushes={} errors={} mismatches={} \
                 window_stall_ms={:.1}",
                stats.started.elapsed().as_secs_f64(),
                stats.writes,
                stats.reads,
                stats.flushes,
                stats.errors,
                stats.mismatches,
                stats.window_longest.as_secs_f64() * 1000.0
            );
            stats.window_longest = Duration::ZERO;
        }
    }

    println!("writer: stop: verifying every block");
    let written = generations.iter().filter(|&&g| g != 0).count();
    verify_all(&disk, &generations, &mut stats);

    // The table goes to the control disk, for the verification after a reboot.
    let mut table = AlignedBuffer::new(table_bytes(blocks));
    for (slot, generation) in table.bytes_mut().chunks_exact_mut(8).zip(&generations) {
        slot.copy_from_slice(&generation.to_le_bytes());
    }
    let table_bytes = table.bytes();
    stats.timed("table write", || {
        control.write_all_at(table_bytes, TABLE_OFFSET)?;
        control.sync_data()
    });
    println!(
        "writer: result writes={} reads={} flushes={} blocks={} written={} errors={} mismatches={} \
         longest_stall_ms={:.1} longest_stall_at_s={:.1} longest_stall_io={}",
        stats.writes,
        stats.reads,
        stats.flushes,
        blocks,
        written,
        stats.errors,
        stats.mismatches,
        stats.longest_ms(),
        stats.longest_at.as_secs_f64(),
        stats.longest_what
    );
    Ok(stats.errors == 0 && stats.mismatches == 0)
}

fn verify_mode(disk_path: &str, control_path: &str) -> io::Result<bool> {
    let (disk, blocks) = open_direct(disk_path)?;
    let (control, _) = open_direct(control_path)?;
    let mut stats = Stats::new();
    let mut table = AlignedBuffer::new(table_bytes(blocks));
    let table_bytes = table.bytes_mut();
    if stats
        .timed("table read", || {
            control.read_exact_at(table_bytes, TABLE_OFFSET)
        })
        .is_none()
    {
        return Ok(false);
    }
    let generations: Vec<u64> = table
        .bytes()
        .chunks_exact(8)
        .take(blocks as usize)
        .map(|word| u64::from_le_bytes(word.try_into().expect("an 8-byte slice")))
        .collect();
    let written = generations.iter().filter(|&&g| g != 0).count();
    if written == 0 {
        return Err(io::Error::other(
            "the table is empty: no write phase ran before",
        ));
    }
    verify_all(&disk, &generations, &mut stats);
    println!(
        "verify: result blocks={} written={} errors={} mismatches={}",
        blocks, written, stats.errors, stats.mismatches
    );
    Ok(stats.errors == 0 && stats.mismatches == 0)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let outcome = match args.get(1..).unwrap_or_default() {
        [mode, disk, control] if mode == "write" => write_mode(disk, control),
        [mode, disk, control] if mode == "verify" => verify_mode(disk, control),
        _ => {
            eprintln!("usage: guest-writer write|verify DISK CONTROL");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            println!("writer: error: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_differ_by_index_and_generation() {
        let mut a = [0u8; BLOCK];
        let mut b = [0u8; BLOCK];
        fill_block(&mut a, 7, 3);
        fill_block(&mut b, 7, 4);
        assert_ne!(a, b);
        fill_block(&mut b, 8, 3);
        assert_ne!(a, b);
        fill_block(&mut b, 7, 3);
        assert_eq!(a, b);
        fill_block(&mut b, 7, 0);
        assert!(b.iter().all(|&byte| byte == 0));
    }

    #[test]
    fn aligned_buffer_is_aligned() {
        for len in [BLOCK, 3 * BLOCK] {
            let buffer = AlignedBuffer::new(len);
            assert_eq!(buffer.bytes().as_ptr() as usize % BLOCK, 0);
            assert_eq!(buffer.bytes().len(), len);
        }
    }

    #[test]
    fn verify_counts_a_stale_block() {
        let path = std::env::temp_dir().join(format!("guest-writer-test-{}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let mut block = [0u8; BLOCK];
        fill_block(&mut block, 0, 5);
        file.write_all_at(&block, 0).unwrap();
        fill_block(&mut block, 1, 6);
        file.write_all_at(&block, BLOCK as u64).unwrap();
        file.set_len(4 * BLOCK as u64).unwrap();
        let mut stats = Stats::new();
        verify_all(&file, &[5, 6, 0, 0], &mut stats);
        assert_eq!((stats.errors, stats.mismatches), (0, 0));
        // Block 1 holds generation 6, the table says 7: a lost write.
        verify_all(&file, &[5, 7, 0, 0], &mut stats);
        assert_eq!(stats.mismatches, 1);
        // Block 2 should hold data and holds zeroes.
        verify_all(&file, &[5, 6, 1, 0], &mut stats);
        assert_eq!(stats.mismatches, 2);
        std::fs::remove_file(path).unwrap();
    }
}

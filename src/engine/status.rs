// SPDX-License-Identifier: GPL-2.0

//! The text of `dmsetup status` and `dmsetup table` for a `migrate` target.
//!
//! INFO (`dmsetup status`), positional, documented in `Documentation/dm-migrate.rst`:
//!
//! ```text
//! <state> <copied_regions>/<total_regions> <pending_regions> <inflight_regions> \
//!     <copied_bytes> <rate_kibps> <errors> <fail_reason> <zeroed_bytes>
//! ```
//!
//! `zeroed_bytes` counts the bytes of the copy that read as zeros and were written as
//! write-zeroes instead of data (`skip_zeroes`).
//!
//! `state` is one of `copying`, `paused`, `synced`, `switched`, `failed`, `cancelled`;
//! `fail_reason` is `-` unless the state is `failed`.
//!
//! TABLE (`dmsetup table`) re-emits the constructor arguments, devices as `major:minor`:
//!
//! ```text
//! <origin_dev> <dest_dev> [<#opt_args> <opt_arg>...]
//! ```

use super::state::FailReason;
use super::state::{Progress, State};
use super::table::{parse_u64, Options};
use core::ffi::CStr;
use core::fmt;

/// The files of `/sys/block/dm-N/migrate/`, one value each, documented in
/// `Documentation/dm-migrate.rst`: the one list the target shows and dmmig reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysfsFile {
    /// The state word, as in the INFO line.
    State,
    /// The bytes the migration covers.
    TotalBytes,
    /// The bytes copied (regions copied times the region size, at most the total).
    CopiedBytes,
    /// The regions still to copy.
    PendingRegions,
    /// The regions being copied.
    Inflight,
    /// The copy's rate, KiB/s.
    RateKibps,
    /// The I/O errors seen.
    Errors,
    /// The adaptive rate's current limit, KiB/s (0 unless copying).
    RateLimitKibps,
    /// The bytes of the copy written as write-zeroes.
    ZeroedBytes,
    /// The mirror's mode now, `sync` or `async`.
    Mirror,
    /// The bytes of writes behind in flight to the destination now.
    BehindBytes,
    /// The most bytes of writes behind in flight at once since the table was loaded.
    BehindMaxBytes,
    /// Guest writes that went behind, since the table was loaded.
    BehindWrites,
    /// Guest writes mirrored synchronously because the cap was reached, since the table was
    /// loaded.
    CappedWrites,
    /// With a metadata device: the chunks of 6528 regions whose write-intent state is held in
    /// memory now (a page each); the rest are clean and cost nothing.
    IntentChunks,
    /// With a metadata device: guest writes that found no spare page for their chunk's
    /// write-intent state and waited for the metadata thread to allocate one, since the table
    /// was loaded.
    IntentPlaneWaits,
}

impl SysfsFile {
    /// Every file, in the order the target creates them.
    pub const ALL: [SysfsFile; 16] = [
        SysfsFile::State,
        SysfsFile::TotalBytes,
        SysfsFile::CopiedBytes,
        SysfsFile::PendingRegions,
        SysfsFile::Inflight,
        SysfsFile::RateKibps,
        SysfsFile::Errors,
        SysfsFile::RateLimitKibps,
        SysfsFile::ZeroedBytes,
        SysfsFile::Mirror,
        SysfsFile::BehindBytes,
        SysfsFile::BehindMaxBytes,
        SysfsFile::BehindWrites,
        SysfsFile::CappedWrites,
        SysfsFile::IntentChunks,
        SysfsFile::IntentPlaneWaits,
    ];

    /// The file names, in the order of [`SysfsFile::ALL`], as the kernel's sysfs takes them.
    pub const C_NAMES: [&'static CStr; 16] = [
        c"state",
        c"total_bytes",
        c"copied_bytes",
        c"pending_regions",
        c"inflight",
        c"rate_kibps",
        c"errors",
        c"rate_limit_kibps",
        c"zeroed_bytes",
        c"mirror",
        c"behind_bytes",
        c"behind_max_bytes",
        c"behind_writes",
        c"capped_writes",
        c"intent_chunks",
        c"intent_plane_waits",
    ];

    /// The file's name.
    pub fn name(self) -> &'static str {
        // The names are ASCII literals: the conversion cannot fail.
        Self::C_NAMES[self as usize].to_str().unwrap_or("")
    }
}

impl Progress {
    /// Writes the INFO status line.
    pub fn write_info(&self, w: &mut impl fmt::Write) -> fmt::Result {
        let reason = match self.state {
            State::Failed(reason) => reason.as_str(),
            _ => "-",
        };
        write!(
            w,
            "{} {}/{} {} {} {} {} {} {} {}",
            self.state_word(),
            self.copied_regions,
            self.total_regions,
            self.pending_regions,
            self.inflight_regions,
            self.copied_bytes,
            self.rate_kibps,
            self.errors,
            reason,
            self.zeroed_bytes
        )
    }
}

impl Progress {
    /// Parses an INFO status line as [`Progress::write_info`] writes it: what userspace (dmmig)
    /// reads the target's state from. `None` for anything else, a field less included. Words
    /// after the last field are ignored, so that a newer target may append fields.
    pub fn parse_info(line: &str) -> Option<Self> {
        let mut words = line.split(' ');
        let mut next = || words.next();
        let word = next()?;
        let (regions, pending, inflight) = (next()?, next()?, next()?);
        let (bytes, rate, errors, reason) = (next()?, next()?, next()?, next()?);
        // A target from before zero skipping has no such field.
        let zeroed = next();
        let number = |w: &str| parse_u64(w);
        let (copied, total) = regions.split_once('/')?;
        let reason = match reason {
            "-" => None,
            r => Some(FailReason::parse(r)?),
        };
        let (state, paused) = match (word, reason) {
            ("copying", None) => (State::Copying, false),
            ("paused", None) => (State::Copying, true),
            ("synced", None) => (State::Synced, false),
            ("switched", None) => (State::Switched, false),
            ("cancelled", None) => (State::Cancelled, false),
            ("failed", Some(reason)) => (State::Failed(reason), false),
            _ => return None,
        };
        Some(Self {
            state,
            paused,
            total_regions: number(total)?,
            copied_regions: number(copied)?,
            pending_regions: number(pending)?,
            inflight_regions: number(inflight)?,
            copied_bytes: number(bytes)?,
            rate_kibps: number(rate)?,
            errors: number(errors)?,
            zeroed_bytes: match zeroed {
                Some(word) => number(word)?,
                None => 0,
            },
        })
    }
}

/// Writes the TABLE status line: the devices by name (`major:minor`) and the options as loaded.
pub fn write_table(
    w: &mut impl fmt::Write,
    origin: &str,
    destination: &str,
    metadata: &str,
    options: &Options,
) -> fmt::Result {
    write!(w, "{origin} {destination}")?;
    options.write(w, metadata)
}

/// The parameters of a `migrate` table line, displayed as [`write_table`] writes them: what a
/// tool that builds a table (dmmig) loads is then the same text the target prints back.
#[derive(Debug, Clone, Copy)]
pub struct TableParams<'a> {
    /// The origin, `major:minor` or a path.
    pub origin: &'a str,
    /// The destination, `major:minor` or a path.
    pub destination: &'a str,
    /// The metadata device, when `options.metadata` is set.
    pub metadata: &'a str,
    /// The options.
    pub options: &'a Options,
}

impl fmt::Display for TableParams<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_table(
            f,
            self.origin,
            self.destination,
            self.metadata,
            self.options,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_files_are_named_in_order() {
        for (index, file) in SysfsFile::ALL.iter().enumerate() {
            assert_eq!(*file as usize, index);
        }
        assert_eq!(SysfsFile::State.name(), "state");
        assert_eq!(SysfsFile::CopiedBytes.name(), "copied_bytes");
        assert_eq!(SysfsFile::ZeroedBytes.name(), "zeroed_bytes");
    }
    use crate::engine::behind::MirrorMode;
    use crate::engine::table::TableArgs;
    use crate::engine::writer::SliceWriter;
    use core::fmt::Write;
    use proptest::prelude::*;

    fn text(f: impl FnOnce(&mut SliceWriter<'_>) -> fmt::Result, buf: &mut [u8]) -> &str {
        let mut w = SliceWriter::new(buf);
        f(&mut w).unwrap();
        let len = w.as_bytes().len();
        core::str::from_utf8(&buf[..len]).unwrap()
    }

    #[test]
    fn info_lines() {
        let mut buf = [0u8; 128];
        let mut p = Progress {
            state: State::Copying,
            paused: false,
            total_regions: 4096,
            copied_regions: 1000,
            pending_regions: 3096,
            inflight_regions: 32,
            copied_bytes: 1000 * 65536,
            rate_kibps: 20480,
            errors: 0,
            zeroed_bytes: 4096,
        };
        let line = text(|w| p.write_info(w), &mut buf);
        assert_eq!(line, "copying 1000/4096 3096 32 65536000 20480 0 - 4096");
        assert_eq!(Progress::parse_info(line), Some(p));
        let old = Progress::parse_info("copying 1000/4096 3096 32 65536000 20480 0 -").unwrap();
        assert_eq!(old.zeroed_bytes, 0, "a target without the field");
        p.paused = true;
        assert!(text(|w| p.write_info(w), &mut buf).starts_with("paused "));
        p.state = State::Failed(FailReason::DestinationWrite);
        let line = text(|w| p.write_info(w), &mut buf);
        assert!(line.starts_with("failed "), "{line}");
        assert!(line.ends_with(" destination_write_error 4096"), "{line}");
    }

    #[test]
    fn table_line_without_and_with_options() {
        let mut buf = [0u8; 128];
        assert_eq!(
            text(
                |w| write_table(w, "7:0", "7:1", "7:2", &Options::default()),
                &mut buf
            ),
            "7:0 7:1"
        );
        let opts = Options {
            region_size: Some(256),
            ..Default::default()
        };
        assert_eq!(
            text(|w| write_table(w, "7:0", "7:1", "7:2", &opts), &mut buf),
            "7:0 7:1 2 region_size 256"
        );
    }

    #[test]
    fn slice_writer_truncates_and_terminates() {
        let mut buf = [0xffu8; 6];
        let mut w = SliceWriter::new(&mut buf);
        assert!(w.write_str("abc").is_ok());
        assert!(w.write_str("defgh").is_err());
        assert_eq!(w.as_bytes(), b"abcde");
        assert_eq!(buf, *b"abcde\0");
        let mut empty: [u8; 0] = [];
        assert!(SliceWriter::new(&mut empty).write_str("x").is_err());
    }

    proptest! {
        /// The TABLE line parses back to the same options: parse, format, parse is stable.
        #[test]
        fn table_line_round_trips(
            region in proptest::option::of(0u32..=21),
            depth in proptest::option::of(1u32..=16),
            min_rate in proptest::option::of(any::<u64>()),
            rate in proptest::option::of(any::<u64>()),
            as_rate in any::<bool>(),
            skip_zeroes in proptest::option::of(any::<bool>()),
            no_switch in any::<bool>(),
            metadata in any::<bool>(),
            commit in proptest::option::of(1u64..=3_600_000),
            mirror in proptest::option::of(any::<bool>()),
            lag in proptest::option::of(1u64..=1_048_576),
        ) {
            let options = Options {
                region_size: region.map(|shift| 1u64 << shift),
                copy_depth: depth,
                min_rate,
                max_rate: rate,
                max_rate_as_rate: as_rate && rate.is_some(),
                skip_zeroes,
                no_switch,
                metadata,
                commit_interval: commit.filter(|_| metadata),
                mirror: mirror.map(|a| if a { MirrorMode::Async } else { MirrorMode::Sync }),
                mirror_lag: lag,
            };
            let mut buf = [0u8; 400];
            let line = text(|w| write_table(w, "7:0", "7:1", "7:2", &options), &mut buf);
            let mut words = [""; 28];
            let mut n = 0;
            for word in line.split(' ') {
                words[n] = word;
                n += 1;
            }
            let parsed = TableArgs::parse(&words[..n]).unwrap();
            prop_assert_eq!(parsed.origin, "7:0");
            prop_assert_eq!(parsed.destination, "7:1");
            prop_assert_eq!(parsed.metadata, metadata.then_some("7:2"));
            prop_assert_eq!(parsed.options, options);
        }

        /// The INFO line parses back to the same progress, also with a word appended (a newer
        /// target's field), and a line with a word missing or changed into something else
        /// does not parse. (The last field, `zeroed_bytes`, may be missing: an older target's
        /// line; `cut` spares it.)
        #[test]
        fn info_line_round_trips(
            state in 0usize..9,
            paused in any::<bool>(),
            counters in proptest::array::uniform8(any::<u64>()),
            cut in 0usize..8,
        ) {
            let reasons = [
                FailReason::OriginRead,
                FailReason::DestinationWrite,
                FailReason::DestinationFlush,
                FailReason::OutOfMemory,
                FailReason::MetadataWrite,
            ];
            let state = match state {
                0 => State::Copying,
                1 => State::Synced,
                2 => State::Switched,
                3 => State::Cancelled,
                n => State::Failed(reasons[(n - 4) % reasons.len()]),
            };
            let [total, copied, pending, inflight, bytes, rate, errors, zeroed] = counters;
            let progress = Progress {
                state,
                // Only a copy is ever shown as paused.
                paused: paused && state == State::Copying,
                total_regions: total,
                copied_regions: copied,
                pending_regions: pending,
                inflight_regions: inflight,
                copied_bytes: bytes,
                rate_kibps: rate,
                errors,
                zeroed_bytes: zeroed,
            };
            let mut buf = [0u8; 320];
            let line = text(|w| progress.write_info(w), &mut buf);
            prop_assert_eq!(Progress::parse_info(line), Some(progress));
            let words: std::vec::Vec<&str> = line.split(' ').collect();
            let mut shorter = words.clone();
            shorter.remove(cut);
            prop_assert_eq!(Progress::parse_info(&shorter.join(" ")), None);
            prop_assert_eq!(Progress::parse_info(&std::format!("{line} 0")), Some(progress));
            let mut changed = words.clone();
            changed[cut] = "x";
            prop_assert_eq!(Progress::parse_info(&changed.join(" ")), None);
        }

        /// Whatever is written and however small the buffer, the writer never overruns it and
        /// keeps a prefix of the text, NUL-terminated.
        #[test]
        fn slice_writer_keeps_a_terminated_prefix(s in "[ -~]{0,64}", size in 1usize..48) {
            let mut buf = [0xffu8; 48];
            let mut w = SliceWriter::new(&mut buf[..size]);
            let fits = w.write_str(&s).is_ok();
            let len = w.as_bytes().len();
            prop_assert_eq!(fits, s.len() < size);
            prop_assert_eq!(&buf[..len], &s.as_bytes()[..len]);
            prop_assert_eq!(buf[len], 0);
            prop_assert!(buf[size..].iter().all(|&b| b == 0xff));
        }
    }
}

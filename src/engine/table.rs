// SPDX-License-Identifier: GPL-2.0

//! Parsing and validation of the `migrate` table line.
//!
//! The grammar, also in `Documentation/dm-migrate.rst`:
//!
//! ```text
//! <start> <len> migrate <origin_dev> <dest_dev> [<#opt_args> <opt_arg>...]
//!
//! opt_arg:
//!   region_size <sectors>   Unit of copying and dirty tracking: a power of two from 1 to
//!                           2097152 sectors and a multiple of both logical block sizes.
//!                           Default 128 (64 KiB).
//!   copy_depth <n>          Copy batches in flight at once, 1 to 16. Default: 16 while the
//!                           guest is idle, 4 while it is busy (4 with min_rate 0).
//!   min_rate <KiB/s>        The adaptive copy rate's floor: the copy never goes slower, so
//!                           it always finishes. Default 10240. 0 turns the adaptive rate off:
//!                           the copy then always runs at max_rate.
//!   max_rate <KiB/s>        The copy rate's ceiling; 0 (the default) is unlimited. `rate` is
//!                           the same option under its earlier name.
//!   skip_zeroes             Write chunks of the origin that read as zeros as write-zeroes
//!                           (unmapping) instead of data. The default where the destination
//!                           supports write-zeroes.
//!   no_skip_zeroes          Copy zeros as data.
//!   no_switch               Stay mirrored and in sync instead of switching to the destination.
//!   metadata <dev>          Keep the migration's state on this device, so that it survives a
//!                           crash (`super::metadata`). Without one, a crash loses the progress.
//!   commit_interval <ms>    How often copied regions are committed to the metadata device,
//!                           1 to 3600000. Default 1000.
//!   mirror <sync|async>     Whether a guest write to a copied region completes when both
//!                           devices have it (sync) or when the origin has it, the destination
//!                           following within `mirror_lag` (async). Default sync.
//!   mirror_lag <KiB>        The most bytes of asynchronous writes the destination may be
//!                           behind, 1 to 1048576. Default 8192. Past it writes are synchronous.
//! ```
//!
//! `#opt_args` counts words, so `2 region_size 256` sets one option. Keywords are
//! case-insensitive; numbers are plain decimal with nothing before or after them.

use super::behind::{MirrorMode, MAX_LAG_KIB};
use core::ffi::CStr;
use core::fmt;

/// The mirror's mode when the table line names none.
pub const DEFAULT_MIRROR: MirrorMode = MirrorMode::Sync;

/// The default region size in sectors (64 KiB).
pub const DEFAULT_REGION_SECTORS: u64 = 128;
/// The smallest region size in sectors: one sector. The logical block sizes of the two devices
/// usually set a higher floor, which [`Geometry::validate`] checks.
pub const MIN_REGION_SECTORS: u64 = 1;
/// The largest region size in sectors (1 GiB), as dm-clone.
pub const MAX_REGION_SECTORS: u64 = 1 << 21;
/// The most regions a target may have: one bit each, so the bitmap stays at most 128 MiB (a
/// 64 TiB device at the default 64 KiB regions has 2^30), well below the `INT_MAX` that
/// `kvmalloc` refuses.
pub const MAX_REGIONS: u64 = 1 << 30;
/// The default commit interval in milliseconds.
pub const DEFAULT_COMMIT_INTERVAL_MS: u64 = 1000;
/// The longest commit interval in milliseconds (an hour).
pub const MAX_COMMIT_INTERVAL_MS: u64 = 3_600_000;
/// The most copy batches in flight.
pub const MAX_COPY_DEPTH: u32 = super::tracker::MAX_DEPTH as u32;

/// Why a table line was refused.
///
/// Each variant has a static message for `ti->error`, which the device-mapper core prints to the
/// kernel log when the table load fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// Fewer than the two device arguments.
    ArgumentCount,
    /// `#opt_args` is not a number.
    OptionalCountInvalid,
    /// `#opt_args` does not match the number of words after it.
    OptionalCountMismatch,
    /// An optional argument keyword nobody knows.
    UnknownOption,
    /// An optional argument given twice.
    DuplicateOption,
    /// An optional argument keyword without its value.
    MissingValue,
    /// The region size is not a plain decimal number.
    RegionSizeInvalid,
    /// The region size is not a power of two.
    RegionSizeNotPowerOfTwo,
    /// The region size is below [`MIN_REGION_SECTORS`] or above [`MAX_REGION_SECTORS`].
    RegionSizeOutOfRange,
    /// The region size is not a multiple of a device's logical block size.
    RegionSizeNotBlockMultiple,
    /// `copy_depth` is not a number from 1 to [`MAX_COPY_DEPTH`].
    CopyDepthInvalid,
    /// `max_rate` (or `rate`) is not a plain decimal number.
    RateInvalid,
    /// `min_rate` is not a plain decimal number.
    MinRateInvalid,
    /// `skip_zeroes` together with `no_skip_zeroes`.
    SkipZeroesConflict,
    /// `commit_interval` is not a number from 1 to [`MAX_COMMIT_INTERVAL_MS`].
    CommitIntervalInvalid,
    /// `commit_interval` without a metadata device.
    CommitIntervalWithoutMetadata,
    /// `mirror` is neither `sync` nor `async`.
    MirrorInvalid,
    /// `mirror_lag` is not a number from 1 to [`super::behind::MAX_LAG_KIB`].
    MirrorLagInvalid,
    /// The metadata device could not be opened.
    MetadataOpen,
    /// The metadata device is the origin or the destination.
    MetadataSameDevice,
    /// The metadata device's contents were refused.
    Metadata(super::metadata::MetadataError),
    /// The origin device could not be opened.
    OriginOpen,
    /// The destination device could not be opened.
    DestinationOpen,
    /// Origin and destination are one device.
    SameDevice,
    /// The origin is shorter than the target.
    OriginTooSmall,
    /// The destination is shorter than the target.
    DestinationTooSmall,
    /// The destination's logical block size is larger than the origin's.
    DestinationBlockSizeLarger,
    /// More regions than [`MAX_REGIONS`]: the bitmap would be too large.
    TooManyRegions,
    /// The table is loaded read-only, but the copy writes the destination.
    ReadOnlyTable,
    /// The table already holds a `migrate` target.
    SecondTarget,
    /// Memory for the target could not be allocated.
    OutOfMemory,
}

impl TableError {
    /// The message for `ti->error`: static, capitalised, without a period.
    pub fn message(self) -> &'static CStr {
        match self {
            Self::ArgumentCount => c"Invalid argument count",
            Self::OptionalCountInvalid => c"Invalid number of optional arguments",
            Self::OptionalCountMismatch => {
                c"Number of optional arguments does not match the words given"
            }
            Self::UnknownOption => c"Unknown optional argument",
            Self::DuplicateOption => c"Duplicate optional argument",
            Self::MissingValue => c"Missing value for optional argument",
            Self::RegionSizeInvalid => c"Invalid region size",
            Self::RegionSizeNotPowerOfTwo => c"Region size is not a power of two",
            Self::RegionSizeOutOfRange => c"Region size out of range (1 to 2097152 sectors)",
            Self::RegionSizeNotBlockMultiple => {
                c"Region size is not a multiple of the logical block size"
            }
            Self::CopyDepthInvalid => c"Invalid copy depth (1 to 16)",
            Self::RateInvalid => c"Invalid rate",
            Self::MinRateInvalid => c"Invalid min_rate",
            Self::SkipZeroesConflict => c"skip_zeroes and no_skip_zeroes together",
            Self::CommitIntervalInvalid => c"Invalid commit interval (1 to 3600000 ms)",
            Self::CommitIntervalWithoutMetadata => c"commit_interval needs a metadata device",
            Self::MirrorInvalid => c"Invalid mirror mode (sync or async)",
            Self::MirrorLagInvalid => c"Invalid mirror_lag (1 to 1048576 KiB)",
            Self::MetadataOpen => c"Error opening metadata device",
            Self::MetadataSameDevice => c"Metadata device is the origin or the destination",
            Self::Metadata(e) => e.message(),
            Self::OriginOpen => c"Error opening origin device",
            Self::DestinationOpen => c"Error opening destination device",
            Self::SameDevice => c"Origin and destination are the same device",
            Self::OriginTooSmall => c"Origin device too small",
            Self::DestinationTooSmall => c"Destination device too small",
            Self::DestinationBlockSizeLarger => {
                c"Destination logical block size larger than the origin's"
            }
            Self::TooManyRegions => c"Too many regions: use a larger region_size",
            Self::ReadOnlyTable => c"Read-only table: the copy writes the destination",
            Self::SecondTarget => c"Only one migrate target per table",
            Self::OutOfMemory => c"Cannot allocate migrate context",
        }
    }

    /// Whether the error is a lack of memory (`-ENOMEM`) rather than bad input (`-EINVAL`).
    pub fn is_out_of_memory(self) -> bool {
        self == Self::OutOfMemory
    }
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The messages are ASCII literals, so the conversion cannot fail.
        f.write_str(self.message().to_str().unwrap_or("Invalid table"))
    }
}

/// The optional arguments, each `None` (or `false`) when the table line did not give it.
///
/// They are kept as given, not with defaults filled in, so that the TABLE status line re-emits
/// exactly what the user loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// `region_size <sectors>`.
    pub region_size: Option<u64>,
    /// `copy_depth <n>`.
    pub copy_depth: Option<u32>,
    /// `min_rate <KiB/s>`.
    pub min_rate: Option<u64>,
    /// `max_rate <KiB/s>`, or `rate <KiB/s>`.
    pub max_rate: Option<u64>,
    /// Whether `max_rate` was spelled `rate`: the table is written back as it was given.
    pub max_rate_as_rate: bool,
    /// `skip_zeroes` (true) or `no_skip_zeroes` (false).
    pub skip_zeroes: Option<bool>,
    /// `no_switch`.
    pub no_switch: bool,
    /// `metadata <dev>` (the device itself is in [`TableArgs::metadata`]).
    pub metadata: bool,
    /// `commit_interval <ms>`.
    pub commit_interval: Option<u64>,
    /// `mirror <sync|async>`.
    pub mirror: Option<MirrorMode>,
    /// `mirror_lag <KiB>`.
    pub mirror_lag: Option<u64>,
}

impl Options {
    /// The region size in sectors, the default when none was given.
    pub fn region_sectors(&self) -> u64 {
        self.region_size.unwrap_or(DEFAULT_REGION_SECTORS)
    }

    /// The adaptive rate's floor in KiB/s, the default when none was given.
    pub fn min_rate_kibps(&self) -> u64 {
        self.min_rate
            .unwrap_or(super::throttle::DEFAULT_MIN_RATE_KIBPS)
    }

    /// The rate's ceiling in KiB/s, 0 for none.
    pub fn max_rate_kibps(&self) -> u64 {
        self.max_rate.unwrap_or(0)
    }

    /// The commit interval in milliseconds, the default when none was given.
    pub fn commit_interval_ms(&self) -> u64 {
        self.commit_interval.unwrap_or(DEFAULT_COMMIT_INTERVAL_MS)
    }

    /// The mirror's mode, the default when none was given.
    pub fn mirror_mode(&self) -> MirrorMode {
        self.mirror.unwrap_or(DEFAULT_MIRROR)
    }

    /// The cap on bytes behind in KiB, the default when none was given.
    pub fn mirror_lag_kib(&self) -> u64 {
        self.mirror_lag.unwrap_or(super::behind::DEFAULT_LAG_KIB)
    }

    /// The number of words these options take on a table line, the `#opt_args` value.
    pub fn word_count(&self) -> usize {
        2 * (usize::from(self.region_size.is_some())
            + usize::from(self.copy_depth.is_some())
            + usize::from(self.min_rate.is_some())
            + usize::from(self.max_rate.is_some())
            + usize::from(self.metadata)
            + usize::from(self.commit_interval.is_some())
            + usize::from(self.mirror.is_some())
            + usize::from(self.mirror_lag.is_some()))
            + usize::from(self.no_switch)
            + usize::from(self.skip_zeroes.is_some())
    }

    /// Writes ` <#opt_args> <opt_arg>...`, or nothing when no option was given; `metadata`
    /// names the metadata device when the options have one.
    pub fn write(&self, w: &mut impl fmt::Write, metadata: &str) -> fmt::Result {
        let count = self.word_count();
        if count == 0 {
            return Ok(());
        }
        write!(w, " {count}")?;
        if self.metadata {
            write!(w, " metadata {metadata}")?;
        }
        if let Some(ms) = self.commit_interval {
            write!(w, " commit_interval {ms}")?;
        }
        if let Some(sectors) = self.region_size {
            write!(w, " region_size {sectors}")?;
        }
        if let Some(depth) = self.copy_depth {
            write!(w, " copy_depth {depth}")?;
        }
        if let Some(rate) = self.min_rate {
            write!(w, " min_rate {rate}")?;
        }
        if let Some(rate) = self.max_rate {
            let name = if self.max_rate_as_rate {
                "rate"
            } else {
                "max_rate"
            };
            write!(w, " {name} {rate}")?;
        }
        if self.no_switch {
            w.write_str(" no_switch")?;
        }
        if let Some(mode) = self.mirror {
            write!(w, " mirror {}", mode.word())?;
        }
        if let Some(kib) = self.mirror_lag {
            write!(w, " mirror_lag {kib}")?;
        }
        match self.skip_zeroes {
            Some(true) => w.write_str(" skip_zeroes")?,
            Some(false) => w.write_str(" no_skip_zeroes")?,
            None => {}
        }
        Ok(())
    }
}

/// Parses a copy depth: 1 to [`MAX_COPY_DEPTH`].
pub fn parse_depth(word: &str) -> Option<u32> {
    parse_u64(word)
        .and_then(|d| u32::try_from(d).ok())
        .filter(|d| (1..=MAX_COPY_DEPTH).contains(d))
}

/// A table line's arguments, parsed but not yet checked against the devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableArgs<'a> {
    /// The origin device as given (a path or `major:minor`).
    pub origin: &'a str,
    /// The destination device as given.
    pub destination: &'a str,
    /// The metadata device as given, if any.
    pub metadata: Option<&'a str>,
    /// The optional arguments.
    pub options: Options,
}

/// Parses a plain decimal number: digits only, no sign, no spaces, no overflow.
pub fn parse_u64(word: &str) -> Option<u64> {
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    word.bytes().try_fold(0u64, |acc, digit| {
        acc.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    })
}

fn parse_region_size(word: &str) -> Result<u64, TableError> {
    let sectors = parse_u64(word).ok_or(TableError::RegionSizeInvalid)?;
    if !sectors.is_power_of_two() {
        return Err(TableError::RegionSizeNotPowerOfTwo);
    }
    if !(MIN_REGION_SECTORS..=MAX_REGION_SECTORS).contains(&sectors) {
        return Err(TableError::RegionSizeOutOfRange);
    }
    Ok(sectors)
}

impl<'a> TableArgs<'a> {
    /// Parses the words after the target name.
    pub fn parse(args: &[&'a str]) -> Result<Self, TableError> {
        let [origin, destination, rest @ ..] = args else {
            return Err(TableError::ArgumentCount);
        };
        let mut options = Options::default();
        let mut metadata = None;
        if let [count, words @ ..] = rest {
            let count = parse_u64(count).ok_or(TableError::OptionalCountInvalid)?;
            if usize::try_from(count).ok() != Some(words.len()) {
                return Err(TableError::OptionalCountMismatch);
            }
            let mut words = words.iter();
            while let Some(keyword) = words.next() {
                let mut value = || words.next().ok_or(TableError::MissingValue);
                if keyword.eq_ignore_ascii_case("region_size") {
                    let value = value()?;
                    if options.region_size.is_some() {
                        return Err(TableError::DuplicateOption);
                    }
                    options.region_size = Some(parse_region_size(value)?);
                } else if keyword.eq_ignore_ascii_case("copy_depth") {
                    let value = value()?;
                    if options.copy_depth.is_some() {
                        return Err(TableError::DuplicateOption);
                    }
                    options.copy_depth =
                        Some(parse_depth(value).ok_or(TableError::CopyDepthInvalid)?);
                } else if keyword.eq_ignore_ascii_case("max_rate")
                    || keyword.eq_ignore_ascii_case("rate")
                {
                    let value = value()?;
                    if options.max_rate.is_some() {
                        return Err(TableError::DuplicateOption);
                    }
                    options.max_rate = Some(parse_u64(value).ok_or(TableError::RateInvalid)?);
                    options.max_rate_as_rate = keyword.eq_ignore_ascii_case("rate");
                } else if keyword.eq_ignore_ascii_case("min_rate") {
                    let value = value()?;
                    if options.min_rate.is_some() {
                        return Err(TableError::DuplicateOption);
                    }
                    options.min_rate = Some(parse_u64(value).ok_or(TableError::MinRateInvalid)?);
                } else if keyword.eq_ignore_ascii_case("skip_zeroes")
                    || keyword.eq_ignore_ascii_case("no_skip_zeroes")
                {
                    let skip = keyword.eq_ignore_ascii_case("skip_zeroes");
                    match options.skip_zeroes {
                        Some(given) if given == skip => return Err(TableError::DuplicateOption),
                        Some(_) => return Err(TableError::SkipZeroesConflict),
                        None => options.skip_zeroes = Some(skip),
                    }
                } else if keyword.eq_ignore_ascii_case("metadata") {
                    let value = value()?;
                    if metadata.is_some() {
                        return Err(TableError::DuplicateOption);
                    }
                    metadata = Some(*value);
                    options.metadata = true;
                } else if keyword.eq_ignore_ascii_case("commit_interval") {
                    let value = value()?;
                    if options.commit_interval.is_some() {
                        return Err(TableError::DuplicateOption);
                    }
                    options.commit_interval = Some(
                        parse_u64(value)
                            .filter(|ms| (1..=MAX_COMMIT_INTERVAL_MS).contains(ms))
                            .ok_or(TableError::CommitIntervalInvalid)?,
                    );
                } else if keyword.eq_ignore_ascii_case("mirror") {
                    let value = value()?;
                    if options.mirror.is_some() {
                        return Err(TableError::DuplicateOption);
                    }
                    options.mirror =
                        Some(MirrorMode::parse(value).ok_or(TableError::MirrorInvalid)?);
                } else if keyword.eq_ignore_ascii_case("mirror_lag") {
                    let value = value()?;
                    if options.mirror_lag.is_some() {
                        return Err(TableError::DuplicateOption);
                    }
                    options.mirror_lag = Some(
                        parse_u64(value)
                            .filter(|kib| (1..=MAX_LAG_KIB).contains(kib))
                            .ok_or(TableError::MirrorLagInvalid)?,
                    );
                } else if keyword.eq_ignore_ascii_case("no_switch") {
                    if options.no_switch {
                        return Err(TableError::DuplicateOption);
                    }
                    options.no_switch = true;
                } else {
                    return Err(TableError::UnknownOption);
                }
            }
        }
        if options.commit_interval.is_some() && !options.metadata {
            return Err(TableError::CommitIntervalWithoutMetadata);
        }
        Ok(Self {
            origin,
            destination,
            metadata,
            options,
        })
    }
}

/// What the target needs to know of a block device to accept it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceGeometry {
    /// The device's size in sectors.
    pub sectors: u64,
    /// The device's logical block size in bytes.
    pub logical_block_size: u32,
}

/// The checked shape of a migration: how the target is cut into regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// The target's length in sectors.
    pub target_sectors: u64,
    /// The region size in sectors, a power of two.
    pub region_sectors: u64,
    /// The number of regions; the last one may be partial.
    pub nr_regions: u64,
}

impl Geometry {
    /// Checks the parsed options against the two devices and the target's length.
    ///
    /// `same_device` says whether both arguments opened the same block device, which only the
    /// kernel can tell (two paths may name one device).
    pub fn validate(
        options: &Options,
        target_sectors: u64,
        origin: DeviceGeometry,
        destination: DeviceGeometry,
        same_device: bool,
    ) -> Result<Self, TableError> {
        if same_device {
            return Err(TableError::SameDevice);
        }
        if origin.sectors < target_sectors {
            return Err(TableError::OriginTooSmall);
        }
        if destination.sectors < target_sectors {
            return Err(TableError::DestinationTooSmall);
        }
        if destination.logical_block_size > origin.logical_block_size {
            return Err(TableError::DestinationBlockSizeLarger);
        }
        let region_sectors = options.region_sectors();
        let region_bytes = region_sectors * super::SECTOR_SIZE;
        for block in [origin.logical_block_size, destination.logical_block_size] {
            if block == 0 || !region_bytes.is_multiple_of(u64::from(block)) {
                return Err(TableError::RegionSizeNotBlockMultiple);
            }
        }
        let nr_regions = target_sectors.div_ceil(region_sectors);
        if nr_regions > MAX_REGIONS {
            return Err(TableError::TooManyRegions);
        }
        Ok(Self {
            target_sectors,
            region_sectors,
            nr_regions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISK: DeviceGeometry = DeviceGeometry {
        sectors: 2048,
        logical_block_size: 512,
    };

    fn parse(line: &str) -> Result<TableArgs<'_>, TableError> {
        let mut words = [""; 16];
        let mut n = 0;
        for w in line.split_ascii_whitespace() {
            words[n] = w;
            n += 1;
        }
        TableArgs::parse(&words[..n])
    }

    #[test]
    fn parses_the_two_devices() {
        let args = parse("/dev/loop0 7:1").unwrap();
        assert_eq!(args.origin, "/dev/loop0");
        assert_eq!(args.destination, "7:1");
        assert_eq!(args.options, Options::default());
        assert_eq!(args.options.region_sectors(), DEFAULT_REGION_SECTORS);
    }

    #[test]
    fn parses_region_size_in_any_case() {
        let args = parse("a b 2 REGION_size 256").unwrap();
        assert_eq!(args.options.region_size, Some(256));
    }

    #[test]
    fn parses_every_option() {
        let args = parse("a b 7 copy_depth 8 No_Switch rate 1024 region_size 16").unwrap();
        assert_eq!(
            args.options,
            Options {
                region_size: Some(16),
                copy_depth: Some(8),
                max_rate: Some(1024),
                max_rate_as_rate: true,
                no_switch: true,
                ..Default::default()
            }
        );
        assert_eq!(args.options.word_count(), 7);
        let args = parse("a b 4 metadata /dev/m commit_interval 250").unwrap();
        assert_eq!(args.metadata, Some("/dev/m"));
        assert!(args.options.metadata);
        assert_eq!(args.options.commit_interval_ms(), 250);
        assert_eq!(parse("a b 0").unwrap().options.commit_interval_ms(), 1000);
    }

    #[test]
    fn parses_the_rate_and_zero_options_and_writes_them_back_as_given() {
        let args = parse("a b 5 min_rate 2048 MAX_RATE 40960 no_skip_zeroes").unwrap();
        let options = args.options;
        assert_eq!(options.min_rate_kibps(), 2048);
        assert_eq!(options.max_rate_kibps(), 40960);
        assert_eq!(options.skip_zeroes, Some(false));
        let mut line = std::string::String::new();
        options.write(&mut line, "").unwrap();
        assert_eq!(line, " 5 min_rate 2048 max_rate 40960 no_skip_zeroes");
        let options = parse("a b 3 rate 100 skip_zeroes").unwrap().options;
        let mut line = std::string::String::new();
        options.write(&mut line, "").unwrap();
        assert_eq!(line, " 3 rate 100 skip_zeroes", "the old name is kept");
        let defaults = Options::default();
        assert_eq!(defaults.min_rate_kibps(), 10240);
        assert_eq!(defaults.max_rate_kibps(), 0);
    }

    #[test]
    fn parses_the_mirror_options_and_writes_them_back() {
        let options = parse("a b 4 MIRROR Async mirror_lag 1024").unwrap().options;
        assert_eq!(options.mirror_mode(), MirrorMode::Async);
        assert_eq!(options.mirror_lag_kib(), 1024);
        let mut line = std::string::String::new();
        options.write(&mut line, "").unwrap();
        assert_eq!(line, " 4 mirror async mirror_lag 1024");
        let defaults = Options::default();
        assert_eq!(defaults.mirror_mode(), DEFAULT_MIRROR);
        assert_eq!(defaults.mirror_lag_kib(), 8192);
    }

    #[test]
    fn zero_optional_arguments_are_accepted() {
        assert_eq!(parse("a b 0").unwrap().options, Options::default());
    }

    #[test]
    fn rejects_bad_lines_with_specific_errors() {
        use TableError::*;
        let cases = [
            ("", ArgumentCount),
            ("a", ArgumentCount),
            ("a b x", OptionalCountInvalid),
            ("a b 2x region_size 8", OptionalCountInvalid),
            ("a b -1", OptionalCountInvalid),
            ("a b 1 region_size 8", OptionalCountMismatch),
            ("a b 3 region_size 8", OptionalCountMismatch),
            (
                "a b 99999999999999999999999 region_size 8",
                OptionalCountInvalid,
            ),
            ("a b 1 region_size", MissingValue),
            ("a b 2 bogus 8", UnknownOption),
            ("a b 4 region_size 8 region_size 16", DuplicateOption),
            ("a b 2 region_size 128x", RegionSizeInvalid),
            ("a b 2 region_size +128", RegionSizeInvalid),
            ("a b 2 region_size 0x80", RegionSizeInvalid),
            (
                "a b 2 region_size 99999999999999999999999",
                RegionSizeInvalid,
            ),
            ("a b 2 region_size 100", RegionSizeNotPowerOfTwo),
            ("a b 2 region_size 0", RegionSizeNotPowerOfTwo),
            ("a b 2 region_size 4194304", RegionSizeOutOfRange),
            ("a b 2 copy_depth 0", CopyDepthInvalid),
            ("a b 2 copy_depth 17", CopyDepthInvalid),
            ("a b 2 copy_depth 4x", CopyDepthInvalid),
            ("a b 2 rate -1", RateInvalid),
            ("a b 2 no_switch no_switch", DuplicateOption),
            ("a b 4 rate 1 max_rate 2", DuplicateOption),
            ("a b 4 min_rate 1 min_rate 2", DuplicateOption),
            ("a b 2 min_rate 1M", MinRateInvalid),
            ("a b 2 max_rate -5", RateInvalid),
            ("a b 2 skip_zeroes skip_zeroes", DuplicateOption),
            ("a b 2 skip_zeroes no_skip_zeroes", SkipZeroesConflict),
            ("a b 1 rate", MissingValue),
            ("a b 1 metadata", MissingValue),
            ("a b 4 metadata m metadata n", DuplicateOption),
            ("a b 2 commit_interval 100", CommitIntervalWithoutMetadata),
            ("a b 4 metadata m commit_interval 0", CommitIntervalInvalid),
            (
                "a b 4 metadata m commit_interval 3600001",
                CommitIntervalInvalid,
            ),
            ("a b 4 metadata m commit_interval 1s", CommitIntervalInvalid),
            ("a b 2 mirror later", MirrorInvalid),
            ("a b 1 mirror", MissingValue),
            ("a b 4 mirror sync mirror async", DuplicateOption),
            ("a b 2 mirror_lag 0", MirrorLagInvalid),
            ("a b 2 mirror_lag 1048577", MirrorLagInvalid),
            ("a b 2 mirror_lag 8M", MirrorLagInvalid),
            ("a b 4 mirror_lag 1 mirror_lag 2", DuplicateOption),
        ];
        for (line, expected) in cases {
            assert_eq!(parse(line), Err(expected), "line {line:?}");
        }
    }

    #[test]
    fn numbers_are_strict() {
        assert_eq!(parse_u64("0"), Some(0));
        assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64("18446744073709551616"), None);
        for bad in ["", " 1", "1 ", "+1", "-1", "1e3", "0x10", "١"] {
            assert_eq!(parse_u64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn validation_checks_devices_in_order() {
        use TableError::*;
        let opts = Options::default();
        let small = DeviceGeometry {
            sectors: 1024,
            ..DISK
        };
        let big_block = DeviceGeometry {
            logical_block_size: 4096,
            ..DISK
        };
        assert_eq!(
            Geometry::validate(&opts, 2048, DISK, DISK, true),
            Err(SameDevice)
        );
        assert_eq!(
            Geometry::validate(&opts, 2048, small, DISK, false),
            Err(OriginTooSmall)
        );
        assert_eq!(
            Geometry::validate(&opts, 2048, DISK, small, false),
            Err(DestinationTooSmall)
        );
        assert_eq!(
            Geometry::validate(&opts, 2048, DISK, big_block, false),
            Err(DestinationBlockSizeLarger)
        );
        let tiny_regions = Options {
            region_size: Some(4),
            ..Default::default()
        };
        assert_eq!(
            Geometry::validate(&tiny_regions, 2048, big_block, DISK, false),
            Err(RegionSizeNotBlockMultiple)
        );
        // 16 TiB in 512-byte regions: 2^35 bits would need a 4 GiB bitmap.
        let huge = DeviceGeometry {
            sectors: 1 << 35,
            ..DISK
        };
        let sector_regions = Options {
            region_size: Some(1),
            ..Default::default()
        };
        assert_eq!(
            Geometry::validate(&sector_regions, 1 << 35, huge, huge, false),
            Err(TooManyRegions)
        );
        assert_eq!(
            Geometry::validate(&opts, 1 << 35, huge, huge, false).map(|g| g.nr_regions),
            Ok(1 << 28)
        );
    }

    #[test]
    fn geometry_counts_a_partial_last_region() {
        let opts = Options {
            region_size: Some(8),
            ..Default::default()
        };
        let geometry = Geometry::validate(&opts, 20, DISK, DISK, false).unwrap();
        assert_eq!(geometry.region_sectors, 8);
        assert_eq!(geometry.nr_regions, 3);
        // A larger destination and a smaller destination block size are fine.
        let dest = DeviceGeometry {
            sectors: 1 << 20,
            logical_block_size: 512,
        };
        let origin = DeviceGeometry {
            logical_block_size: 4096,
            ..DISK
        };
        assert!(Geometry::validate(&opts, 2048, origin, dest, false).is_ok());
    }

    #[test]
    fn every_message_is_a_capitalised_sentence_without_period() {
        use TableError::*;
        for e in [
            ArgumentCount,
            OptionalCountInvalid,
            OptionalCountMismatch,
            UnknownOption,
            DuplicateOption,
            MissingValue,
            RegionSizeInvalid,
            RegionSizeNotPowerOfTwo,
            RegionSizeOutOfRange,
            RegionSizeNotBlockMultiple,
            OriginOpen,
            DestinationOpen,
            SameDevice,
            OriginTooSmall,
            DestinationTooSmall,
            DestinationBlockSizeLarger,
            OutOfMemory,
        ] {
            let m = e.message().to_str().unwrap();
            assert!(m.starts_with(|c: char| c.is_ascii_uppercase()), "{m}");
            assert!(!m.ends_with('.'), "{m}");
        }
    }
}

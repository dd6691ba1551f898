//! Table lines: `<start> <length> <target type> <parameters>`, as dmsetup reads and prints them.

use crate::error::{Error, Result};
use dm_migrate_engine::status::TableParams;
use serde::Serialize;
use std::fmt;

/// One line of a device-mapper table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableLine {
    /// First sector covered.
    pub start: u64,
    /// Number of sectors covered.
    pub length: u64,
    /// The target type, e.g. `linear` or `migrate`.
    pub target_type: String,
    /// The target's parameters, words separated by single spaces.
    pub params: String,
}

impl TableLine {
    /// Parses one line; words may be separated by any whitespace.
    pub fn parse(line: &str) -> Result<Self> {
        let mut words = line.split_whitespace();
        let bad = |what: &str| Error::Usage(format!("invalid table line '{line}': {what}"));
        let start = words.next().ok_or_else(|| bad("empty"))?;
        let length = words.next().ok_or_else(|| bad("missing length"))?;
        let target_type = words.next().ok_or_else(|| bad("missing target type"))?;
        let number = |w: &str, what: &str| -> Result<u64> {
            if w.is_empty() || !w.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(&format!("{what} '{w}' is not a number")));
            }
            w.parse()
                .map_err(|_| bad(&format!("{what} '{w}' is too large")))
        };
        let line = TableLine {
            start: number(start, "start")?,
            length: number(length, "length")?,
            target_type: target_type.to_string(),
            params: words.collect::<Vec<_>>().join(" "),
        };
        if line.length == 0 {
            return Err(bad("length is zero"));
        }
        Ok(line)
    }

    /// Parses a whole table: one line per target, blank lines and `#` comments ignored.
    pub fn parse_table(text: &str) -> Result<Vec<Self>> {
        let lines: Vec<Self> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(Self::parse)
            .collect::<Result<_>>()?;
        if lines.is_empty() {
            return Err(Error::Usage("the table is empty".into()));
        }
        Ok(lines)
    }

    /// A `linear` line of `length` sectors from sector 0 onto the start of `device`
    /// (`major:minor` or a path).
    pub fn linear(length: u64, device: &str) -> Self {
        Self {
            start: 0,
            length,
            target_type: "linear".into(),
            params: format!("{device} 0"),
        }
    }

    /// A `migrate` line of `length` sectors from sector 0, its parameters written by the
    /// engine as the target prints them back.
    pub fn migrate(length: u64, params: &TableParams<'_>) -> Self {
        Self {
            start: 0,
            length,
            target_type: "migrate".into(),
            params: params.to_string(),
        }
    }

    /// The tuple the devicemapper crate loads.
    pub fn to_dm(&self) -> (u64, u64, String, String) {
        (
            self.start,
            self.length,
            self.target_type.clone(),
            self.params.clone(),
        )
    }

    /// From the tuple the devicemapper crate returns.
    pub fn from_dm((start, length, target_type, params): (u64, u64, String, String)) -> Self {
        Self {
            start,
            length,
            target_type,
            params,
        }
    }
}

impl fmt::Display for TableLine {
    /// Formats like dmsetup: `<start> <length> <type> <params>`, with the space before the
    /// parameters even when there are none (dmsetup prints `0 8 linear ` for an empty status).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.start, self.length, self.target_type, self.params
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_formats_a_line() {
        let line =
            TableLine::parse("0  16384\tmigrate /dev/loop0 /dev/loop1  2 region_size 256").unwrap();
        assert_eq!(line.start, 0);
        assert_eq!(line.length, 16384);
        assert_eq!(line.target_type, "migrate");
        assert_eq!(line.params, "/dev/loop0 /dev/loop1 2 region_size 256");
        assert_eq!(
            line.to_string(),
            "0 16384 migrate /dev/loop0 /dev/loop1 2 region_size 256"
        );
    }

    #[test]
    fn builds_lines_the_target_reads_back() {
        assert_eq!(
            TableLine::linear(2048, "7:1").to_string(),
            "0 2048 linear 7:1 0"
        );
        let options = dm_migrate_engine::table::Options {
            metadata: true,
            max_rate: Some(512),
            no_switch: true,
            ..Default::default()
        };
        let params = TableParams {
            origin: "7:0",
            destination: "7:1",
            metadata: "7:2",
            options: &options,
        };
        let line = TableLine::migrate(2048, &params);
        assert_eq!(
            line.to_string(),
            "0 2048 migrate 7:0 7:1 5 metadata 7:2 max_rate 512 no_switch"
        );
        // What the constructor parses from it is what was given.
        let words: Vec<&str> = line.params.split(' ').collect();
        let parsed = dm_migrate_engine::table::TableArgs::parse(&words).unwrap();
        assert_eq!(
            (parsed.origin, parsed.destination, parsed.metadata),
            ("7:0", "7:1", Some("7:2"))
        );
        assert_eq!(parsed.options, options);
    }

    #[test]
    fn refuses_bad_lines() {
        for bad in [
            "",
            "0",
            "0 8",
            "x 8 linear a 0",
            "0 8x linear a 0",
            "0 0 linear a 0",
            "-1 8 zero",
        ] {
            assert!(TableLine::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_a_table_with_comments() {
        let t = TableLine::parse_table("# disk\n0 8 linear 7:0 0\n\n8 8 zero\n").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].to_string(), "8 8 zero ");
        assert!(TableLine::parse_table("# nothing\n").is_err());
    }

    proptest! {
        /// parse -> format -> parse gives the same line.
        #[test]
        fn round_trips(start in any::<u64>(), length in 1u64.., ty in "[a-z][a-z0-9_-]{0,15}",
                       params in proptest::collection::vec("[!-~]{1,12}", 0..8)) {
            let text = format!("{start} {length} {ty} {}", params.join("   "));
            let line = TableLine::parse(&text).unwrap();
            let again = TableLine::parse(&line.to_string()).unwrap();
            prop_assert_eq!(&line, &again);
            prop_assert_eq!(line.params, params.join(" "));
        }
    }
}

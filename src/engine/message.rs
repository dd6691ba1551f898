// SPDX-License-Identifier: GPL-2.0

//! The `dmsetup message` verbs of a `migrate` target.
//!
//! ```text
//! pause            stop copying; writes are still mirrored to copied regions
//! resume           copy again after pause
//! cancel           stop the migration for good; all I/O stays on the origin
//! max_rate <KiB/s> the copy rate's ceiling; 0 is unlimited (`rate` is the same)
//! min_rate <KiB/s> the adaptive copy rate's floor; 0 turns the adaptive rate off
//! depth <n>        copy batches in flight, 1 to 16
//! mirror <sync|async>  whether a write to a copied region waits for the destination
//! mirror_lag <KiB> the cap on bytes of asynchronous writes the destination is behind
//! ```
//!
//! Verbs are case-insensitive; numbers are plain decimal.

use super::behind::{MirrorMode, MAX_LAG_KIB};
use super::table::{parse_depth, parse_u64};
use core::ffi::CStr;

/// A parsed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// `pause`.
    Pause,
    /// `resume`.
    Resume,
    /// `cancel`.
    Cancel,
    /// `max_rate <KiB/s>`, or `rate <KiB/s>`.
    Rate(u64),
    /// `min_rate <KiB/s>`.
    MinRate(u64),
    /// `depth <n>`.
    Depth(u32),
    /// `mirror <sync|async>`.
    Mirror(MirrorMode),
    /// `mirror_lag <KiB>`.
    MirrorLag(u64),
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageError {
    /// No verb, or a verb nobody knows.
    UnknownVerb,
    /// The verb takes another number of arguments.
    ArgumentCount,
    /// `rate` with something other than a plain number.
    InvalidRate,
    /// `depth` with something other than a number from 1 to 16.
    InvalidDepth,
    /// `mirror` with something other than `sync` or `async`.
    InvalidMirror,
    /// `mirror_lag` with something other than a number from 1 to 1048576.
    InvalidMirrorLag,
    /// The migration has switched, so the verb can no longer act.
    AlreadySwitched,
    /// The cancel could not be written to the metadata device: the migration goes on, since a
    /// crash would otherwise reload metadata that trusts regions the writes no longer reach.
    CancelNotRecorded,
}

impl MessageError {
    /// The message for the kernel log: capitalised, without a period.
    pub fn message(self) -> &'static CStr {
        match self {
            Self::UnknownVerb => c"Unsupported message",
            Self::ArgumentCount => c"Wrong number of message arguments",
            Self::InvalidRate => c"Invalid rate",
            Self::InvalidDepth => c"Invalid depth (1 to 16)",
            Self::InvalidMirror => c"Invalid mirror mode (sync or async)",
            Self::InvalidMirrorLag => c"Invalid mirror_lag (1 to 1048576 KiB)",
            Self::AlreadySwitched => c"Migration already switched",
            Self::CancelNotRecorded => {
                c"Cannot record the cancel on the metadata device; the migration goes on"
            }
        }
    }
}

impl Message {
    /// Parses the words of a message.
    pub fn parse(args: &[&str]) -> Result<Self, MessageError> {
        let (verb, rest) = args.split_first().ok_or(MessageError::UnknownVerb)?;
        let is = |name: &str| verb.eq_ignore_ascii_case(name);
        let no_args = |m: Message| {
            if rest.is_empty() {
                Ok(m)
            } else {
                Err(MessageError::ArgumentCount)
            }
        };
        let one_arg = || match rest {
            [value] => Ok(*value),
            _ => Err(MessageError::ArgumentCount),
        };
        if is("pause") {
            no_args(Message::Pause)
        } else if is("resume") {
            no_args(Message::Resume)
        } else if is("cancel") {
            no_args(Message::Cancel)
        } else if is("rate") || is("max_rate") {
            parse_u64(one_arg()?)
                .map(Message::Rate)
                .ok_or(MessageError::InvalidRate)
        } else if is("min_rate") {
            parse_u64(one_arg()?)
                .map(Message::MinRate)
                .ok_or(MessageError::InvalidRate)
        } else if is("depth") {
            parse_depth(one_arg()?)
                .map(Message::Depth)
                .ok_or(MessageError::InvalidDepth)
        } else if is("mirror") {
            MirrorMode::parse(one_arg()?)
                .map(Message::Mirror)
                .ok_or(MessageError::InvalidMirror)
        } else if is("mirror_lag") {
            parse_u64(one_arg()?)
                .filter(|kib| (1..=MAX_LAG_KIB).contains(kib))
                .map(Message::MirrorLag)
                .ok_or(MessageError::InvalidMirrorLag)
        } else {
            Err(MessageError::UnknownVerb)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_verb_in_any_case() {
        assert_eq!(Message::parse(&["PAUSE"]), Ok(Message::Pause));
        assert_eq!(Message::parse(&["resume"]), Ok(Message::Resume));
        assert_eq!(Message::parse(&["Cancel"]), Ok(Message::Cancel));
        assert_eq!(Message::parse(&["rate", "0"]), Ok(Message::Rate(0)));
        assert_eq!(Message::parse(&["rate", "20480"]), Ok(Message::Rate(20480)));
        assert_eq!(Message::parse(&["Max_Rate", "7"]), Ok(Message::Rate(7)));
        assert_eq!(
            Message::parse(&["min_rate", "4096"]),
            Ok(Message::MinRate(4096))
        );
        assert_eq!(Message::parse(&["depth", "16"]), Ok(Message::Depth(16)));
        assert_eq!(
            Message::parse(&["Mirror", "ASYNC"]),
            Ok(Message::Mirror(MirrorMode::Async))
        );
        assert_eq!(
            Message::parse(&["mirror_lag", "64"]),
            Ok(Message::MirrorLag(64))
        );
    }

    #[test]
    fn refuses_bad_messages() {
        use MessageError::*;
        let cases: [(&[&str], MessageError); 16] = [
            (&["mirror"], ArgumentCount),
            (&["mirror", "fast"], InvalidMirror),
            (&["mirror_lag", "0"], InvalidMirrorLag),
            (&["mirror_lag", "1048577"], InvalidMirrorLag),
            (&["mirror_lag", "1", "2"], ArgumentCount),
            (&[], UnknownVerb),
            (&["frobnicate"], UnknownVerb),
            (&["pause", "now"], ArgumentCount),
            (&["rate"], ArgumentCount),
            (&["rate", "1", "2"], ArgumentCount),
            (&["rate", "10k"], InvalidRate),
            (&["rate", "-1"], InvalidRate),
            (&["min_rate", "x"], InvalidRate),
            (&["min_rate"], ArgumentCount),
            (&["depth", "0"], InvalidDepth),
            (&["depth", "17"], InvalidDepth),
        ];
        for (args, expected) in cases {
            assert_eq!(Message::parse(args), Err(expected), "{args:?}");
        }
    }
}

// SPDX-License-Identifier: GPL-2.0

//! The migration's state machine: where it stands, why it failed, and the counters the tracker
//! keeps. The tracker drives it; the status line and sysfs report it.

/// Why a migration failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// Reading the origin failed more often than the retries allow.
    OriginRead,
    /// Writing the destination failed, from the copier or a mirrored write.
    DestinationWrite,
    /// Flushing the destination failed.
    DestinationFlush,
    /// The copier could not get the memory it copies through.
    OutOfMemory,
    /// Writing the metadata device failed.
    MetadataWrite,
}

impl FailReason {
    /// The word for the status line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OriginRead => "origin_read_error",
            Self::DestinationWrite => "destination_write_error",
            Self::DestinationFlush => "destination_flush_error",
            Self::OutOfMemory => "out_of_memory",
            Self::MetadataWrite => "metadata_write_error",
        }
    }

    /// The reason a status line's word names.
    pub fn parse(word: &str) -> Option<Self> {
        [
            Self::OriginRead,
            Self::DestinationWrite,
            Self::DestinationFlush,
            Self::OutOfMemory,
            Self::MetadataWrite,
        ]
        .into_iter()
        .find(|reason| reason.as_str() == word)
    }
}

/// Where a migration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Regions are being copied; writes to copied regions are mirrored.
    Copying,
    /// Everything is copied and writes are mirrored; waiting to switch (or for userspace, with
    /// `no_switch`).
    Synced,
    /// All I/O goes to the destination.
    Switched,
    /// The migration failed; all I/O goes to the origin.
    Failed(FailReason),
    /// The migration was cancelled; all I/O goes to the origin.
    Cancelled,
}

impl State {
    /// The word for the status line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Copying => "copying",
            Self::Synced => "synced",
            Self::Switched => "switched",
            Self::Failed(_) => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The counters behind the INFO status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Where the migration stands.
    pub state: State,
    /// Whether the copier is paused by a `pause` message.
    pub paused: bool,
    /// Regions in the target.
    pub total_regions: u64,
    /// Regions whose contents are on the destination.
    pub copied_regions: u64,
    /// Regions still to copy, including those written again since their copy.
    pub pending_regions: u64,
    /// Regions being copied right now.
    pub inflight_regions: u64,
    /// Bytes copied so far, counting regions copied again.
    pub copied_bytes: u64,
    /// The copy rate over the last measurement interval, in KiB/s.
    pub rate_kibps: u64,
    /// I/O errors the copier has seen.
    pub errors: u64,
    /// Bytes of the copy that read as zeros and went to the destination as write-zeroes.
    pub zeroed_bytes: u64,
}

impl Progress {
    /// The state word: the state, or `paused` for a paused copy.
    pub fn state_word(&self) -> &'static str {
        if self.paused && self.state == State::Copying {
            "paused"
        } else {
            self.state.as_str()
        }
    }
}

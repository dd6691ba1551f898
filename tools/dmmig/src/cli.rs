//! Command-line arguments (clap derive).

use clap::{Parser, Subcommand};

/// A dmsetup-like device-mapper tool, speaking the DM ioctls through /dev/mapper/control.
#[derive(Debug, Parser)]
#[command(
    name = "dmmig",
    version,
    after_help = "Exit codes: 0 success; 1 the operation failed (the kernel refused it, or I/O \
failed); 2 bad arguments or input; 3 no such device; 4 permission denied (run as root).\n\n\
Without udev (or with DM_DISABLE_UDEV set), dmmig creates and removes /dev/mapper/NAME itself."
)]
pub struct Cli {
    /// Print machine-readable JSON instead of dmsetup-style text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands, named and shaped like dmsetup's.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List devices: NAME (MAJOR:MINOR).
    Ls,
    /// Show a device's state, tables, counts and numbers (all devices without NAME).
    Info {
        /// The device.
        name: Option<String>,
    },
    /// Create a device, load TABLE and resume it (TABLE from stdin without --table).
    Create {
        /// The device's name.
        name: String,
        /// The table, one target per line: "<start> <length> <type> <params>".
        #[arg(long, conflicts_with = "notable")]
        table: Option<String>,
        /// Create the device without a table (suspended, like dmsetup --notable).
        #[arg(long)]
        notable: bool,
    },
    /// Load TABLE into the inactive slot of a device (TABLE from stdin without --table).
    Load {
        /// The device.
        name: String,
        /// The table, one target per line.
        #[arg(long)]
        table: Option<String>,
    },
    /// Suspend a device (flushing its I/O unless --noflush).
    Suspend {
        /// The device.
        name: String,
        /// Do not flush outstanding I/O.
        #[arg(long)]
        noflush: bool,
    },
    /// Resume a device, making a loaded table live.
    Resume {
        /// The device.
        name: String,
    },
    /// Remove a device.
    Remove {
        /// The device.
        name: String,
    },
    /// Print the status lines of a device's targets.
    Status {
        /// The device.
        name: String,
    },
    /// Print a device's live table.
    Table {
        /// The device.
        name: String,
    },
    /// Send a message to the target at SECTOR (0 for most targets).
    Message {
        /// The device.
        name: String,
        /// The sector of the target to send it to.
        sector: u64,
        /// The message words, e.g. "pause" or "rate 20480".
        #[arg(required = true, num_args = 1..)]
        message: Vec<String>,
    },
    /// Wait until the device's event counter passes EVENT_NR (default: its current value).
    Wait {
        /// The device.
        name: String,
        /// The event number to wait past.
        event_nr: Option<u32>,
    },
    /// Make /dev/mapper nodes for all devices, or for NAME.
    Mknodes {
        /// The device.
        name: Option<String>,
    },
}

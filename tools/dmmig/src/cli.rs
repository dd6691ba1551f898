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
    /// Print the status lines of a device's targets (on a terminal, a migration's progress too).
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
    /// Move a running disk to DESTINATION (or several: --to), then retire its old image.
    ///
    /// `dmmig move NAME DESTINATION`, or `dmmig move NAME... --to DIR|DEST...` for all of a VM's
    /// disks at once. A disk is a dm device that is one linear segment over its origin. A
    /// destination is a block device, a new image file (created sparse, sized to the disk and
    /// loop-attached with direct I/O), or an NBD export, nbd://HOST[:PORT]/EXPORT (PORT 10809 by
    /// default; an IPv6 address in brackets, nbd://[2001:db8::2]/EXPORT), attached as /dev/nbdN;
    /// `--to DIR` makes DIR/NAME.img for each disk. A destination device that holds a filesystem,
    /// partition table or volume signature is refused unless --force. Once a migrate target has
    /// switched, the table becomes a linear on the destination and the old loop device is
    /// detached and its image unlinked (unless --keep-source). On any failure, Ctrl-C or SIGTERM
    /// a disk that has not switched stays on its origin and what move created is removed. Several
    /// disks move in parallel under one rate budget (--max-rate and --min-rate are totals); one
    /// disk's failure stops them all, and with --switch-together none switches before all are in
    /// sync, so that all stay on their origins.
    Move {
        /// The dm devices (NAME or /dev/mapper/NAME); without --to, one device and then its
        /// DESTINATION.
        #[arg(required = true, value_name = "DEVICE")]
        devices: Vec<String>,
        /// Where the disks go: an existing folder for new images (DIR/NAME.img), or one block
        /// device or new image path per disk, in order.
        #[arg(long, num_args = 1.., value_name = "DIR|DEST")]
        to: Vec<std::path::PathBuf>,
        /// Hold every disk mirrored and in sync until all are, then switch them at once (each
        /// disk's copy is loaded with no_switch and reloaded without it at the end).
        #[arg(long)]
        switch_together: bool,
        #[command(flatten)]
        options: crate::migrate::MoveOptions,
    },
    /// Finish a move after a crash or reboot: resume the copy from the metadata, or swap to the
    /// destination if it had switched; then retire the old image as move would.
    Recover {
        /// The dm device: NAME or /dev/mapper/NAME (created if it does not exist).
        device: String,
        /// The origin (image file or block device); default: what move recorded.
        #[arg(long)]
        origin: Option<std::path::PathBuf>,
        /// The destination (image file or block device); default: what move recorded.
        #[arg(long)]
        dest: Option<std::path::PathBuf>,
        /// The metadata (file or block device); default: what move recorded.
        #[arg(long)]
        metadata: Option<std::path::PathBuf>,
        /// Do not draw the progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Finish a switched migration that nobody is watching (run by the udev rule).
    ///
    /// Swaps NAME to a linear table on the migration's destination, then retires what `dmmig
    /// move` recorded of the move, if anything: its metadata, the origin's loop device and image
    /// (unless kept). Run by the udev rule on the target's switched uevent. Does nothing, and
    /// succeeds, when there is nothing to finish or a `dmmig move` of NAME is still running.
    Finish {
        /// The dm device: NAME or /dev/mapper/NAME.
        device: String,
        /// Hand the work to a process of its own and return at once: through systemd-run where
        /// systemd runs, else a detached process. For udev's RUN, which must not wait for a
        /// change of the device whose event it handles (the resume's own uevent would wait for
        /// this one to end: a deadlock until udev's timeout).
        #[arg(long)]
        background: bool,
    },
    /// Print what a migration's metadata device or file records: phase, generation, copied,
    /// dirty and still-to-copy regions.
    Inspect {
        /// The metadata file or block device.
        metadata: std::path::PathBuf,
    },
    /// Pause a running migration (writes stay mirrored).
    Pause {
        /// The dm device.
        name: String,
    },
    /// Resume a paused migration (named so, as `resume` is the device-mapper resume).
    Continue {
        /// The dm device.
        name: String,
    },
    /// Cancel a migration for good; the disk stays on its origin.
    Cancel {
        /// The dm device.
        name: String,
    },
    /// Set a migration's copy rate limit in KiB/s (0: unlimited).
    Rate {
        /// The dm device.
        name: String,
        /// KiB/s.
        kibps: u64,
    },
    /// Make /dev/mapper nodes for all devices, or for NAME.
    Mknodes {
        /// The device.
        name: Option<String>,
    },
    /// Attach or detach a remote NBD export as a local /dev/nbdN (what an nbd:// destination of
    /// `move` uses).
    Nbd {
        #[command(subcommand)]
        action: NbdCommand,
    },
    /// Print the shell completion script for SHELL (e.g. `dmmig completions bash >
    /// /usr/share/bash-completion/completions/dmmig`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages, dmmig(8) and one per command (dmmig-move(8), ...), to DIR.
    #[command(hide = true)]
    Manpages {
        /// The folder to write them to (created if missing).
        dir: std::path::PathBuf,
    },
}

/// `dmmig nbd` commands.
#[derive(Debug, Subcommand)]
pub enum NbdCommand {
    /// Connect nbd://HOST[:PORT]/EXPORT as a new /dev/nbdN and print its path. A keeper process
    /// stays behind until the device is disconnected: when the kernel reports the connection
    /// dead, it cancels a migration onto the device that has not switched (and disconnects the
    /// device), and otherwise reconnects. It logs to the kernel log.
    Connect {
        /// nbd://HOST[:PORT]/EXPORT (port 10809 by default).
        url: String,
        /// Seconds an NBD request may take before the connection is called dead.
        #[arg(long, value_name = "SECONDS", default_value_t = crate::nbd::DEFAULT_TIMEOUT_S,
              value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
        /// Seconds the kernel holds requests for a reconnect before it fails them.
        #[arg(long, value_name = "SECONDS", default_value_t = crate::nbd::DEFAULT_DEAD_CONN_TIMEOUT_S,
              value_parser = clap::value_parser!(u64).range(1..))]
        dead_conn_timeout: u64,
    },
    /// Disconnect an NBD device (its keeper then exits).
    Disconnect {
        /// The device, e.g. /dev/nbd0.
        device: std::path::PathBuf,
    },
    /// Keep an NBD device connected: reconnect it after a dead link once a migration onto it
    /// has switched (or nothing else holds the data), give the migration up before. `move` and
    /// `nbd connect` start one; run it with /dev/nbdN to give a device whose keeper died a new
    /// one. It runs until the device is disconnected, and logs to the kernel log.
    Keep {
        /// nbd://HOST[:PORT]/EXPORT to attach, or /dev/nbdN to keep a device already attached.
        #[arg(value_name = "URL|DEVICE")]
        url: String,
        /// Be the keeper in this process (how `dmmig` starts one), instead of starting one in
        /// the background and returning once it keeps the device.
        #[arg(long, hide = true)]
        foreground: bool,
        /// Seconds an NBD request may take before the connection is called dead.
        #[arg(long, value_name = "SECONDS", default_value_t = crate::nbd::DEFAULT_TIMEOUT_S,
              value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
        /// Seconds the kernel holds requests for a reconnect before it fails them.
        #[arg(long, value_name = "SECONDS", default_value_t = crate::nbd::DEFAULT_DEAD_CONN_TIMEOUT_S,
              value_parser = clap::value_parser!(u64).range(1..))]
        dead_conn_timeout: u64,
    },
}

/// The disks of a `move` and where each goes: `NAME DESTINATION`, or `NAME... --to DIR|DEST...`
/// (see `Command::Move`).
pub fn move_targets(
    devices: &[String],
    to: &[std::path::PathBuf],
) -> Result<Vec<(String, std::path::PathBuf)>, String> {
    if to.is_empty() {
        return match devices {
            [device, destination] => Ok(vec![(device.clone(), destination.into())]),
            [_] => Err("no destination: dmmig move NAME DESTINATION, or NAME... --to DIR".into()),
            _ => {
                Err("several disks need --to DIR (a folder for new images) or --to DEST...".into())
            }
        };
    }
    let names: Vec<&str> = devices.iter().map(String::as_str).collect();
    let dests = crate::multi::destinations(&names, to).map_err(|e| e.to_string())?;
    Ok(devices.iter().cloned().zip(dests).collect())
}

/// The whole command line's definition, for the generators.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("dmmig").chain(args.iter().copied()))
    }

    #[test]
    fn parses_dmsetup_like_commands() {
        let cli = parse(&["--json", "message", "disk", "0", "rate", "20480"]).unwrap();
        assert!(cli.json);
        let Command::Message {
            name,
            sector,
            message,
        } = cli.command
        else {
            panic!()
        };
        assert_eq!((name.as_str(), sector), ("disk", 0));
        assert_eq!(message, ["rate", "20480"]);
        assert!(matches!(
            parse(&["wait", "d", "7"]).unwrap().command,
            Command::Wait {
                event_nr: Some(7),
                ..
            }
        ));
        assert!(matches!(
            parse(&["suspend", "d", "--noflush"]).unwrap().command,
            Command::Suspend { noflush: true, .. }
        ));
    }

    #[test]
    fn parses_move_options() {
        let cli = parse(&[
            "move",
            "disk",
            "/srv/new.img",
            "--rate",
            "1024",
            "--min-rate",
            "512",
            "--depth",
            "8",
            "--region-size",
            "256",
            "--keep-source",
            "--no-progress",
        ])
        .unwrap();
        let Command::Move {
            devices,
            to,
            switch_together,
            options:
                crate::migrate::MoveOptions {
                    max_rate: rate,
                    min_rate,
                    region_size,
                    depth,
                    keep_source,
                    no_progress,
                    metadata,
                    no_metadata,
                    ..
                },
        } = cli.command
        else {
            panic!()
        };
        assert_eq!(
            move_targets(&devices, &to).unwrap(),
            [("disk".to_string(), std::path::PathBuf::from("/srv/new.img"))]
        );
        assert!(!switch_together);
        assert_eq!((rate, region_size, depth), (Some(1024), Some(256), Some(8)));
        assert_eq!(min_rate, Some(512));
        assert!(keep_source && no_progress);
        assert_eq!((metadata, no_metadata), (None, false));
        assert!(matches!(
            parse(&["recover", "disk", "--metadata", "/m"])
                .unwrap()
                .command,
            Command::Recover {
                metadata: Some(_),
                origin: None,
                ..
            }
        ));
        assert!(matches!(
            parse(&["inspect", "/m"]).unwrap().command,
            Command::Inspect { .. }
        ));
    }

    #[test]
    fn moves_several_disks_with_to() {
        let cli = parse(&[
            "move",
            "r",
            "d",
            "l",
            "--to",
            "/a",
            "/b",
            "/c",
            "--switch-together",
        ])
        .unwrap();
        let Command::Move {
            devices,
            to,
            switch_together,
            ..
        } = cli.command
        else {
            panic!()
        };
        assert!(switch_together);
        let targets = move_targets(&devices, &to).unwrap();
        assert_eq!(targets.len(), 3);
        assert_eq!(
            targets[2],
            ("l".to_string(), std::path::PathBuf::from("/c"))
        );
        for (devices, to) in [
            (&["disk"][..], &[][..]),
            (&["a", "b", "c"], &[]),
            (&["a", "b"], &["/x", "/y", "/z"]),
        ] {
            let devices: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
            let to: Vec<std::path::PathBuf> = to.iter().map(std::path::PathBuf::from).collect();
            assert!(move_targets(&devices, &to).is_err(), "{devices:?} {to:?}");
        }
    }

    #[test]
    fn refuses_bad_arguments() {
        for bad in [
            &["move"][..],
            &["move", "disk", "x", "--depth", "17"],
            &["move", "disk", "x", "--rate", "fast"],
            &["move", "disk", "x", "--metadata", "/m", "--no-metadata"],
            &["inspect"],
            &["message", "disk", "0"],
            &["message", "disk", "x", "pause"],
            &["create", "d", "--table", "t", "--notable"],
            &["bogus"],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }
}

//! The manual pages and shell completions, generated from the clap definitions so that they
//! cover every command and option exactly as the parser takes them.

use crate::cli;
use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> Result<()> {
    let mut command = cli::command();
    clap_complete::generate(shell, &mut command, "dmmig", out);
    Ok(())
}

/// Writes dmmig.8 and a page per command (dmmig-move.8, ...) to `dir`.
pub fn manpages(dir: &Path) -> Result<()> {
    let failed = |e: std::io::Error| Error::Failed(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(failed)?;
    // `dmmig help` is the parser's, not a command with a page of its own.
    let command = cli::command()
        .display_name("dmmig")
        .long_about(DESCRIPTION)
        .disable_help_subcommand(true);
    let mut names = Vec::new();
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        names.push(format!("dmmig-{}", sub.get_name()));
    }
    write_page(dir, "dmmig", command.clone(), &names).map_err(failed)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("dmmig-{}", sub.get_name());
        let words = format!("dmmig {}", sub.get_name());
        // Commands of commands (`dmmig nbd connect`) get pages of their own too.
        for inner in sub.get_subcommands().filter(|s| !s.is_hide_set()) {
            let inner_name = format!("{name}-{}", inner.get_name());
            let inner = inner
                .clone()
                .name(inner_name.clone())
                .display_name(inner_name.clone())
                .bin_name(format!("{words} {}", inner.get_name()));
            write_page(dir, &inner_name, inner, std::slice::from_ref(&name)).map_err(failed)?;
        }
        let sub = sub
            .clone()
            .disable_help_subcommand(true)
            .name(name.clone())
            .display_name(name.clone())
            .bin_name(words);
        write_page(dir, &name, sub, &["dmmig".to_string()]).map_err(failed)?;
    }
    Ok(())
}

/// Writes the page `name`.8 for `command`: clap's sections, then those the parser does not know
/// (examples, exit status, environment, files, see also), with `related` pages under SEE ALSO.
fn write_page(
    dir: &Path,
    name: &str,
    command: clap::Command,
    related: &[String],
) -> std::io::Result<()> {
    // Section 8: dmmig administers the system's block devices (as dmsetup(8)).
    let mut command = command;
    command.build();
    let has_options = command.get_arguments().any(|a| !a.is_hide_set());
    let has_commands = command.get_subcommands().any(|s| !s.is_hide_set());
    let man = clap_mangen::Man::new(command).section("8");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    if has_options {
        man.render_options_section(&mut page)?;
    }
    if has_commands {
        man.render_subcommands_section(&mut page)?;
    }
    if let Some((_, examples)) = EXAMPLES.iter().find(|(page, _)| *page == name) {
        section(&mut page, "EXAMPLES")?;
        for (command, what) in *examples {
            writeln!(page, ".TP\n.B {}\n{}", roff(command), roff(what))?;
        }
    }
    section(&mut page, "EXIT STATUS")?;
    for (code, meaning) in EXIT_STATUS {
        writeln!(page, ".TP\n.B {code}\n{}", roff(meaning))?;
    }
    section(&mut page, "ENVIRONMENT")?;
    for (variable, meaning) in ENVIRONMENT {
        writeln!(page, ".TP\n.B {variable}\n{}", roff(meaning))?;
    }
    section(&mut page, "FILES")?;
    for (file, meaning) in FILES {
        writeln!(page, ".TP\n.I {}\n{}", roff(file), roff(meaning))?;
    }
    section(&mut page, "SEE ALSO")?;
    let mut see_also: Vec<String> = related.iter().map(|p| format!("{}(8)", roff(p))).collect();
    see_also.extend(SEE_ALSO.iter().map(|p| roff(p)));
    writeln!(page, "{}", see_also.join(", "))?;
    std::fs::write(dir.join(format!("{name}.8")), page)
}

fn section(page: &mut Vec<u8>, title: &str) -> std::io::Result<()> {
    writeln!(page, ".SH \"{title}\"")
}

/// `text` as roff prose: backslashes and hyphens escaped, no line taken for a request.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    match escaped.chars().next() {
        Some('.') | Some('\'') => format!("\\&{escaped}"),
        _ => escaped,
    }
}

/// The main page's description: what dmmig is for, beyond the one-line summary.
const DESCRIPTION: &str = "\
dmmig speaks the device-mapper ioctls through /dev/mapper/control, as dmsetup(8) does, and \
drives live migrations with the dm-migrate target (module dm-migrate): `dmmig move NAME DEST` \
moves a running disk (a dm device that is a linear over its origin) to a block device, a new \
image file or an NBD export (nbd://HOST[:PORT]/EXPORT) without stopping its users, switches it \
to the destination, and retires the old image. The target's table, status and messages are \
described in the kernel documentation shipped with dm-migrate (Documentation/dm-migrate.rst).";

/// Exit codes, as `dmmig --help` gives them.
const EXIT_STATUS: &[(&str, &str)] = &[
    ("0", "Success."),
    (
        "1",
        "The operation failed: the kernel refused it, or I/O failed. Where a move leaves the \
         disk is printed from its table as read back.",
    ),
    ("2", "Bad arguments or input: nothing was changed."),
    ("3", "No such device."),
    ("4", "Permission denied: run as root."),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "DMMIG_STATE_DIR",
        "The folder of move records (default /var/lib/dmmig). It must survive a reboot: \
         `dmmig recover` reads it.",
    ),
    (
        "DMMIG_ALLOW_VOLATILE",
        "1 allows new images and metadata files on a filesystem in memory (tmpfs, ramfs), as \
         --allow-volatile: for test rigs only.",
    ),
    (
        "DM_DISABLE_UDEV",
        "Set, dmmig creates and removes /dev/mapper/NAME itself instead of leaving it to udev.",
    ),
];

const FILES: &[(&str, &str)] = &[
    (
        "/var/lib/dmmig/NAME.json",
        "The record of a move of NAME in progress (origin, destination, metadata), written \
         before the migrate table is loaded and removed when the move has ended.",
    ),
    (
        "/run/dmmig-NAME.lock",
        "Held by a running move, recover or finish of NAME, so that two never run at once.",
    ),
    (
        "IMAGE.dmmig-meta",
        "A move's metadata file, next to its new image IMAGE, removed with the record; for a \
         destination device, /var/lib/dmmig/NAME.meta.",
    ),
    (
        "/dev/mapper/control",
        "The device-mapper control device the ioctls go through.",
    ),
];

const SEE_ALSO: &[&str] = &["dmsetup(8)", "losetup(8)", "qemu-nbd(8)", "nbd-client(8)"];

/// Examples, by page.
const EXAMPLES: &[(&str, &[(&str, &str)])] = &[
    (
        "dmmig",
        &[
            (
                "dmmig move vm1-root /srv/fast/vm1-root.img",
                "Move the running disk vm1-root to a new image file, then retire its old image.",
            ),
            (
                "dmmig status vm1-root",
                "Print the disk's table status, as dmsetup status does.",
            ),
        ],
    ),
    (
        "dmmig-move",
        &[
            (
                "dmmig move vm1-root /srv/fast/vm1-root.img",
                "Move the disk to a new image file (sparse, loop-attached with direct I/O).",
            ),
            (
                "dmmig move vm1-root /dev/nvme1n1p3 --max-rate 51200",
                "Move it to a partition, copying at most 50 MiB/s.",
            ),
            (
                "dmmig move vm1-root vm1-data --to /srv/fast --switch-together",
                "Move both disks of a VM to /srv/fast/vm1-root.img and /srv/fast/vm1-data.img, \
                 switching them at once.",
            ),
            (
                "dmmig move vm1-root nbd://storage2/vm1-root",
                "Move the disk to the NBD export vm1-root of the host storage2 (port 10809).",
            ),
            (
                "dmmig move vm1-root nbd://[2001:db8::2]:10810/vm1-root",
                "The same over IPv6, to port 10810.",
            ),
        ],
    ),
    (
        "dmmig-recover",
        &[(
            "dmmig recover vm1-root",
            "After a crash or reboot during a move: resume the copy, or finish the switch.",
        )],
    ),
    (
        "dmmig-nbd-keep",
        &[(
            "dmmig nbd keep /dev/nbd0",
            "Give /dev/nbd0, whose keeper was killed, a new keeper; it runs in the background \
             until the device is disconnected.",
        )],
    ),
    (
        "dmmig-nbd-connect",
        &[(
            "dmmig nbd connect nbd://storage2/vm1-root",
            "Attach the export as /dev/nbdN and print the device.",
        )],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible command has a page, and every completion script names every command.
    #[test]
    fn pages_and_completions_cover_every_command() {
        let dir = std::env::temp_dir().join(format!("dmmig-man-{}", std::process::id()));
        manpages(&dir).unwrap();
        let main = std::fs::read_to_string(dir.join("dmmig.8")).unwrap();
        let commands: Vec<String> = cli::command()
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| s.get_name().to_string())
            .collect();
        assert!(commands.len() >= 20, "{commands:?}");
        for name in &commands {
            assert!(main.contains(name.as_str()), "dmmig.8 lacks {name}");
            let page = std::fs::read_to_string(dir.join(format!("dmmig-{name}.8"))).unwrap();
            assert!(page.contains(&format!("dmmig\\-{name}")), "dmmig-{name}.8");
        }
        for name in ["connect", "disconnect"] {
            let page = std::fs::read_to_string(dir.join(format!("dmmig-nbd-{name}.8"))).unwrap();
            assert!(
                page.contains(&format!("dmmig\\-nbd\\-{name}")),
                "dmmig-nbd-{name}.8"
            );
        }
        let keep = std::fs::read_to_string(dir.join("dmmig-nbd-keep.8")).unwrap();
        assert!(
            keep.contains("/dev/nbdN"),
            "dmmig-nbd-keep.8 says how to re-attach"
        );
        assert!(
            !keep.contains("foreground"),
            "dmmig-nbd-keep.8 shows the internal flag"
        );
        assert!(!main.contains("dmmig\\-help"), "dmmig.8 lists a help page");
        let mv = std::fs::read_to_string(dir.join("dmmig-move.8")).unwrap();
        // The synopsis is the command as typed; the page has the sections the parser has not.
        assert!(mv.contains("\\fBdmmig move\\fR"), "dmmig-move.8 synopsis");
        for section in [
            "EXAMPLES",
            "EXIT STATUS",
            "ENVIRONMENT",
            "FILES",
            "SEE ALSO",
        ] {
            assert!(
                mv.contains(&format!(".SH \"{section}\"")),
                "dmmig-move.8 lacks {section}"
            );
        }
        assert!(!mv.contains("EXTRA"), "dmmig-move.8 has an EXTRA section");
        for text in [
            "nbd://HOST[:PORT]/EXPORT",
            "DMMIG_STATE_DIR",
            "/var/lib/dmmig",
        ] {
            assert!(mv.contains(text), "dmmig-move.8 lacks {text}");
        }
        let connect = std::fs::read_to_string(dir.join("dmmig-nbd-connect.8")).unwrap();
        assert!(
            connect.contains("\\fBdmmig nbd connect\\fR"),
            "dmmig-nbd-connect.8 synopsis"
        );
        for option in [
            "max\\-rate",
            "min\\-rate",
            "keep\\-source",
            "metadata",
            "nbd\\-timeout",
        ] {
            assert!(mv.contains(option), "dmmig-move.8 lacks {option}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            completions(shell, &mut out).unwrap();
            let script = String::from_utf8(out).unwrap();
            for name in &commands {
                assert!(script.contains(name.as_str()), "{shell:?} lacks {name}");
            }
            assert!(script.contains("min-rate"), "{shell:?} lacks --min-rate");
        }
    }
}

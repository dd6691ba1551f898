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
    let command = cli::command()
        .display_name("dmmig")
        .long_about(DESCRIPTION)
        .after_long_help(EXIT_STATUS);
    // Section 8: dmmig administers the system's block devices (as dmsetup(8)).
    let page = |command: clap::Command| clap_mangen::Man::new(command).section("8");
    write_page(&dir.join("dmmig.8"), page(command.clone())).map_err(failed)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("dmmig-{}", sub.get_name());
        // Commands of commands (`dmmig nbd connect`) get pages of their own too.
        for inner in sub.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("{name}-{}", inner.get_name());
            let inner = inner.clone().name(name.clone()).display_name(name.clone());
            write_page(&dir.join(format!("{name}.8")), page(inner)).map_err(failed)?;
        }
        let sub = sub.clone().name(name.clone()).display_name(name.clone());
        write_page(&dir.join(format!("{name}.8")), page(sub)).map_err(failed)?;
    }
    Ok(())
}

fn write_page(path: &Path, man: clap_mangen::Man) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    man.render(&mut bytes)?;
    std::fs::write(path, bytes)
}

/// The main page's description: what dmmig is for, beyond the one-line summary.
const DESCRIPTION: &str = "\
dmmig speaks the device-mapper ioctls through /dev/mapper/control, as dmsetup(8) does, and \
drives live migrations with the dm-migrate target (module dm-migrate): `dmmig move NAME DEST` \
moves a running disk (a dm device that is a linear over its origin) to a block device or a new \
image file without stopping its users, switches it to the destination, and retires the old \
image. The target's table, status and messages are described in the kernel documentation \
shipped with dm-migrate (Documentation/dm-migrate.rst).";

/// Exit codes, as `dmmig --help` gives them.
const EXIT_STATUS: &str = "\
Exit status: 0 success; 1 the operation failed (the kernel refused it, or I/O failed); 2 bad \
arguments or input; 3 no such device; 4 permission denied (run as root).";

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
        assert!(
            !dir.join("dmmig-nbd-keep.8").exists(),
            "a page for the hidden keeper"
        );
        let mv = std::fs::read_to_string(dir.join("dmmig-move.8")).unwrap();
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

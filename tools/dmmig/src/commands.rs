//! The subcommands: each takes the parsed arguments and an open control device and prints its
//! result, as dmsetup text or (with --json) JSON.

use crate::cli::Command;
use crate::dm::{Dm, Info};
use crate::docs;
use crate::error::{Error, Result};
use crate::migrate::{
    run_finish, run_move, run_recover, spawn_finish, Finish, MoveOptions, RecoverOptions,
};
use crate::nodes;
use crate::table::TableLine;
use dm_migrate_engine::state::{Progress, State};
use dm_migrate_engine::SECTOR_SIZE;
use serde::Serialize;
use std::io::{IsTerminal, Read};

/// Runs one command.
pub fn run(command: Command, json: bool) -> Result<()> {
    // The generators need no device-mapper (nor root): they run at build and install time.
    let command = match command {
        Command::Completions { shell } => return docs::completions(shell, &mut std::io::stdout()),
        Command::Manpages { dir } => return docs::manpages(&dir),
        Command::Nbd { action } => return nbd_command(action),
        // It reads a file: no device-mapper either.
        Command::Inspect { metadata } => return inspect(Output { json }, &metadata),
        command => command,
    };
    // The arguments are checked before the control device is opened: a usage error is one
    // (exit 2) also for a user who may not open it (exit 4).
    let mut table = match &command {
        Command::Create {
            table,
            notable: false,
            ..
        }
        | Command::Load { table, .. } => Some(read_table(table.clone())?),
        _ => None,
    };
    let move_plan = match command {
        Command::Move {
            ref devices,
            ref to,
            switch_together,
            ref options,
        } => {
            let targets = crate::cli::move_targets(devices, to).map_err(Error::Usage)?;
            let options = options.clone();
            crate::migrate::table_options(&options)?;
            Some((targets, options, switch_together))
        }
        _ => None,
    };
    let dm = Dm::open()?;
    let out = Output { json };
    match command {
        Command::Ls => ls(&dm, out),
        Command::Info { name } => info(&dm, out, name.as_deref()),
        Command::Create { name, .. } => {
            dm.create(&name, table.take().as_deref())?;
            sync_node(&dm, &name)
        }
        Command::Load { name, .. } => dm.load(&name, &table.take().unwrap_or_default()),
        Command::Suspend { name, noflush } => dm.suspend(&name, noflush),
        Command::Resume { name } => resume(&dm, &name),
        Command::Remove { name } => remove(&dm, &name),
        Command::Status { name } => {
            let lines = dm.status(&name)?;
            out.lines(&lines)?;
            if !json && std::io::stdout().is_terminal() {
                // On a terminal, a migrate target's progress also in words; scripts (and the
                // comparison with dmsetup) see only the dmsetup lines.
                for line in lines.iter().filter(|l| l.target_type == "migrate") {
                    if let Some(text) = describe_migration(line) {
                        println!("{text}");
                    }
                }
            }
            Ok(())
        }
        Command::Table { name } => out.lines(&dm.table(&name)?),
        Command::Message {
            name,
            sector,
            message,
        } => {
            let answer = dm.message(&name, sector, &message.join(" "))?;
            out.message(answer)
        }
        Command::Wait { name, event_nr } => {
            let event_nr = dm.wait(&name, event_nr)?;
            out.json_only(&serde_json::json!({ "name": name, "event_nr": event_nr }))
        }
        Command::Mknodes { name } => mknodes(&dm, name.as_deref()),
        Command::Move { .. } => {
            let (targets, options, switch_together) =
                move_plan.ok_or_else(|| Error::Failed("the move was not planned".into()))?;
            match targets.as_slice() {
                [(device, destination)] if !switch_together => {
                    do_move(out, device, destination, &options)
                }
                _ => do_move_many(out, &targets, &options, switch_together),
            }
        }
        Command::Recover {
            device,
            origin,
            dest,
            metadata,
            no_progress,
        } => {
            let options = RecoverOptions {
                origin,
                destination: dest,
                metadata,
                no_progress,
            };
            do_recover(out, &device, &options)
        }
        Command::Finish {
            device,
            background: true,
        } => spawn_finish(device_name(&device)?),
        Command::Finish { device, .. } => {
            match run_finish(device_name(&device)?)? {
                Finish::Done(summary) => {
                    if json {
                        return out.print_json(&summary);
                    }
                    println!(
                        "{}: finished on {} (I/O held {:.1} ms){}",
                        summary.device,
                        summary.destination,
                        summary.longest_pause_ms,
                        summary
                            .removed_image
                            .map(|i| format!(", removed {i}"))
                            .unwrap_or_default()
                    );
                }
                Finish::Nothing(why) => {
                    if json {
                        return out.print_json(&serde_json::json!({ "nothing": why }));
                    }
                    eprintln!("dmmig: nothing to finish: {why}");
                }
            }
            Ok(())
        }
        Command::Pause { name } => dm.message(&name, 0, "pause").map(drop),
        Command::Continue { name } => dm.message(&name, 0, "resume").map(drop),
        Command::Cancel { name } => dm.message(&name, 0, "cancel").map(drop),
        Command::Rate { name, kibps } => dm.message(&name, 0, &format!("rate {kibps}")).map(drop),
        // Carried out above, before the control device is opened.
        Command::Completions { .. }
        | Command::Manpages { .. }
        | Command::Nbd { .. }
        | Command::Inspect { .. } => Ok(()),
    }
}

/// `dmmig inspect`: what a metadata device or file holds.
fn inspect(out: Output, metadata: &std::path::Path) -> Result<()> {
    let seen = crate::metadata::inspect(metadata)?;
    if out.json {
        return out.print_json(&seen);
    }
    println!(
        "{}: version {}, phase {}{}, generation {}",
        seen.path,
        seen.version,
        seen.phase,
        seen.fail_reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        seen.generation
    );
    if seen.phase != "blank" {
        println!(
            "{} regions of {} sectors: {} copied, {} dirty, {} to copy on recovery; \
             {} bad bitmap blocks",
            seen.regions,
            seen.region_sectors,
            seen.copied_regions,
            seen.dirty_regions,
            seen.to_copy_regions,
            seen.bad_blocks
        );
        println!(
            "target {} sectors, origin {} sectors, destination {} sectors",
            seen.target_sectors, seen.origin_sectors, seen.destination_sectors
        );
    }
    Ok(())
}

/// How results are printed.
#[derive(Clone, Copy)]
struct Output {
    json: bool,
}

impl Output {
    fn print_json(&self, value: &impl Serialize) -> Result<()> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| Error::Failed(format!("cannot format JSON: {e}")))?;
        println!("{text}");
        Ok(())
    }

    fn json_only(&self, value: &impl Serialize) -> Result<()> {
        if self.json {
            self.print_json(value)?;
        }
        Ok(())
    }

    fn lines(&self, lines: &[TableLine]) -> Result<()> {
        if self.json {
            return self.print_json(&lines);
        }
        for line in lines {
            println!("{line}");
        }
        Ok(())
    }

    fn message(&self, answer: Option<String>) -> Result<()> {
        if self.json {
            return self.print_json(&serde_json::json!({ "answer": answer }));
        }
        match answer {
            Some(text) if !text.is_empty() => println!("{text}"),
            _ => {}
        }
        Ok(())
    }
}

fn ls(dm: &Dm, out: Output) -> Result<()> {
    let list = dm.list()?;
    if out.json {
        return out.print_json(&list);
    }
    if list.is_empty() {
        println!("No devices found");
    }
    for entry in list {
        println!("{}\t({}:{})", entry.name, entry.major, entry.minor);
    }
    Ok(())
}

/// A migrate status line in words: "copying: 45.0% (115 of 256 MiB), 20480 KiB/s, ETA 7 s".
pub fn describe_migration(line: &TableLine) -> Option<String> {
    let progress = Progress::parse_info(&line.params)?;
    let total = progress.total_regions.max(1);
    let bytes = line.length * SECTOR_SIZE;
    let done = bytes * progress.copied_regions / total;
    let mut text = format!(
        "{}: {:.1}% ({} of {} MiB)",
        progress.state_word(),
        100.0 * progress.copied_regions as f64 / total as f64,
        done >> 20,
        bytes >> 20
    );
    if progress.state == State::Copying && !progress.paused && progress.rate_kibps > 0 {
        let left = bytes * progress.pending_regions / total;
        text.push_str(&format!(
            ", {} KiB/s, ETA {} s",
            progress.rate_kibps,
            left / 1024 / progress.rate_kibps
        ));
    }
    if progress.errors != 0 {
        text.push_str(&format!(", {} errors", progress.errors));
    }
    if let State::Failed(reason) = progress.state {
        text.push_str(&format!(", reason: {}", reason.as_str()));
    }
    Some(text)
}

/// The dm device name from NAME or /dev/mapper/NAME.
fn device_name(device: &str) -> Result<&str> {
    let name = device.strip_prefix("/dev/mapper/").unwrap_or(device);
    if name.contains('/') {
        return Err(Error::Usage(format!(
            "{device} is not a device-mapper device: give its name (see 'dmmig ls') or \
             /dev/mapper/NAME"
        )));
    }
    Ok(name)
}

/// Where a disk is after a failed move, from its table read back now, never assumed: the same
/// table as before the move ("stays on its origin"), a linear on another device, a migrate
/// table still loaded (with its state), or no device at all. `before` is the table read before
/// the move began.
fn whereabouts(name: &str, before: Option<&[crate::table::TableLine]>) -> String {
    let Ok(dm) = Dm::open() else {
        return "where the disk is could not be read back: see 'dmmig table NAME'".into();
    };
    let after = match dm.table(name) {
        Ok(table) => table,
        Err(_) => return format!("'{name}' cannot be read back (is it gone?)"),
    };
    let device = |params: &str| {
        let number = params.split_whitespace().next().unwrap_or("?").to_string();
        let kernel = std::fs::read_to_string(format!("/sys/dev/block/{number}/uevent"))
            .ok()
            .and_then(|u| {
                u.lines()
                    .find_map(|l| l.strip_prefix("DEVNAME=").map(|n| format!(" (/dev/{n})")))
            })
            .unwrap_or_default();
        format!("{number}{kernel}")
    };
    match after.as_slice() {
        [line] if before == Some(after.as_slice()) && line.target_type == "linear" => format!(
            "the disk stays on its origin: its table is the one it had, a linear on {}",
            device(&line.params)
        ),
        [line] if line.target_type == "linear" => {
            format!("the disk is a linear on {} now", device(&line.params))
        }
        [line] if line.target_type == "migrate" => {
            let state = dm
                .status(name)
                .ok()
                .and_then(|s| s.first().map(|l| l.params.clone()))
                .and_then(|p| p.split_whitespace().next().map(str::to_string))
                .unwrap_or_else(|| "unknown".into());
            format!(
                "the disk still runs its migrate table (state {state}, origin {}): see 'dmmig \
                 status {name}'",
                device(&line.params)
            )
        }
        _ => format!("the disk's table changed: see 'dmmig table {name}'"),
    }
}

fn do_move(out: Output, device: &str, dest: &std::path::Path, options: &MoveOptions) -> Result<()> {
    let name = device_name(device)?;
    let before = Dm::open().ok().and_then(|dm| dm.table(name).ok());
    let stop = crate::signals::stop_flag()?;
    let summary = run_move(name, dest, options, stop).inspect_err(|e| {
        // Input errors are found before anything changes; say so only when the move had begun.
        if matches!(e, Error::Failed(_)) {
            eprintln!(
                "dmmig: move of '{name}' failed; {}",
                whereabouts(name, before.as_deref())
            );
        }
    })?;
    if out.json {
        return out.print_json(&summary);
    }
    println!(
        "moved {} ({} bytes) to {} in {:.1} s, {:.1} MiB/s; longest I/O pause {:.1} ms",
        summary.device,
        summary.bytes,
        summary.destination,
        summary.seconds,
        summary.mean_mib_per_s,
        summary.longest_pause_ms
    );
    if let Some(image) = &summary.removed_image {
        println!("removed the old image {image}");
    }
    Ok(())
}

fn do_move_many(
    out: Output,
    targets: &[(String, std::path::PathBuf)],
    options: &MoveOptions,
    switch_together: bool,
) -> Result<()> {
    if options.metadata.is_some() && targets.len() > 1 {
        return Err(Error::Usage(
            "--metadata names one device or file: with several disks each gets its own \
             (next to its new image, or in the state folder)"
                .into(),
        ));
    }
    let names = targets
        .iter()
        .map(|(device, _)| device_name(device))
        .collect::<Result<Vec<_>>>()?;
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    if unique.len() != names.len() {
        return Err(Error::Usage("a disk is named twice".into()));
    }
    let dests: Vec<_> = targets.iter().map(|(_, dest)| dest.clone()).collect();
    crate::multi::check_destinations(&Dm::open()?, &names, &dests)?;
    let stop = crate::signals::stop_flag()?;
    let before: Vec<_> = names
        .iter()
        .map(|name| Dm::open().ok().and_then(|dm| dm.table(name).ok()))
        .collect();
    let outcomes = crate::multi::run_moves(&names, &dests, options, switch_together, stop);
    let mut first_error = None;
    let mut summaries = Vec::new();
    // With --json, one entry per disk in order: its summary, or its error and where it is.
    let mut entries = Vec::new();
    for ((name, outcome), before) in names.iter().zip(outcomes).zip(&before) {
        match outcome {
            Ok(summary) => {
                if !out.json {
                    println!(
                        "moved {} ({} bytes) to {} in {:.1} s, {:.1} MiB/s; longest I/O pause {:.1} ms{}",
                        summary.device,
                        summary.bytes,
                        summary.destination,
                        summary.seconds,
                        summary.mean_mib_per_s,
                        summary.longest_pause_ms,
                        summary
                            .removed_image
                            .as_ref()
                            .map(|i| format!("; removed {i}"))
                            .unwrap_or_default()
                    );
                }
                entries.push(
                    serde_json::to_value(&summary)
                        .map_err(|e| Error::Failed(format!("cannot encode the summary: {e}")))?,
                );
                summaries.push(summary);
            }
            Err(e) => {
                eprintln!("dmmig: {name}: {e}");
                entries.push(serde_json::json!({
                    "device": name,
                    "error": e.to_string(),
                    "where": whereabouts(name, before.as_deref()),
                }));
                // The cause, rather than a disk that was stopped because of it.
                let stopped = |e: &Error| e.to_string().starts_with("interrupted");
                if first_error
                    .as_ref()
                    .is_none_or(|f| stopped(f) && !stopped(&e))
                {
                    first_error = Some(e);
                }
            }
        }
    }
    if out.json {
        out.print_json(&entries)?;
    }
    match first_error {
        None => Ok(()),
        Some(e) => {
            eprintln!("dmmig: the move failed; read back now:");
            for (name, before) in names.iter().zip(&before) {
                let moved = summaries.iter().any(|s| s.device == *name);
                eprintln!(
                    "dmmig:   {name}: {}{}",
                    if moved { "moved (switched); " } else { "" },
                    whereabouts(name, before.as_deref())
                );
            }
            Err(e)
        }
    }
}

fn do_recover(out: Output, device: &str, options: &RecoverOptions) -> Result<()> {
    let name = device_name(device)?;
    let stop = crate::signals::stop_flag()?;
    let summary = run_recover(name, options, stop)?;
    if out.json {
        return out.print_json(&summary);
    }
    println!(
        "recovered {} ({} bytes): on {} after {:.1} s",
        summary.device, summary.bytes, summary.destination, summary.seconds
    );
    if let Some(image) = &summary.removed_image {
        println!("removed the old image {image}");
    }
    Ok(())
}

/// The read-ahead of a device in sectors, as `dmsetup info` prints it.
fn read_ahead(info: &Info) -> u64 {
    std::fs::read_to_string(format!(
        "/sys/dev/block/{}:{}/queue/read_ahead_kb",
        info.major, info.minor
    ))
    .ok()
    .and_then(|kb| kb.trim().parse::<u64>().ok())
    .map_or(0, |kb| kb * 2)
}

/// `dmsetup info` text for one device.
pub fn format_info(info: &Info, read_ahead: u64) -> String {
    let tables = match (info.live_table, info.inactive_table) {
        (true, true) => "LIVE & INACTIVE",
        (true, false) => "LIVE",
        (false, true) => "INACTIVE",
        (false, false) => "None",
    };
    let state = if info.read_only {
        format!("{} (READ-ONLY)", info.state)
    } else {
        info.state.clone()
    };
    let mut text = format!(
        "Name:              {}\nState:             {}\nRead Ahead:        {}\n\
         Tables present:    {}\nOpen count:        {}\nEvent number:      {}\n\
         Major, minor:      {}, {}\nNumber of targets: {}\n",
        info.name,
        state,
        read_ahead,
        tables,
        info.open_count,
        info.event_nr,
        info.major,
        info.minor,
        info.target_count
    );
    if let Some(uuid) = &info.uuid {
        text.push_str(&format!("UUID: {uuid}\n"));
    }
    text
}

fn info(dm: &Dm, out: Output, name: Option<&str>) -> Result<()> {
    let names: Vec<String> = match name {
        Some(name) => vec![name.to_string()],
        None => dm.list()?.into_iter().map(|e| e.name).collect(),
    };
    let infos = names
        .iter()
        .map(|n| dm.info(n))
        .collect::<Result<Vec<_>>>()?;
    if out.json {
        return if name.is_some() {
            out.print_json(&infos[0])
        } else {
            out.print_json(&infos)
        };
    }
    if infos.is_empty() {
        println!("No devices found");
    }
    let texts: Vec<String> = infos
        .iter()
        .map(|i| format_info(i, read_ahead(i)))
        .collect();
    print!("{}", texts.join("\n"));
    Ok(())
}

/// The table given with --table, or read from stdin.
fn read_table(table: Option<String>) -> Result<Vec<TableLine>> {
    let text = match table {
        Some(text) => text,
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Error::Usage(format!("cannot read the table from stdin: {e}")))?;
            text
        }
    };
    TableLine::parse_table(&text)
}

fn resume(dm: &Dm, name: &str) -> Result<()> {
    dm.resume(name)?;
    sync_node(dm, name)
}

fn remove(dm: &Dm, name: &str) -> Result<()> {
    dm.remove(name)?;
    if !nodes::udev_running() {
        nodes::remove_node(name)?;
    }
    Ok(())
}

/// Makes the node when nothing else does.
fn sync_node(dm: &Dm, name: &str) -> Result<()> {
    if nodes::udev_running() {
        return Ok(());
    }
    let info = dm.info(name)?;
    nodes::ensure_node(name, info.major, info.minor)
}

fn mknodes(dm: &Dm, name: Option<&str>) -> Result<()> {
    let list = dm.list()?;
    let mut found = false;
    for entry in list.iter().filter(|e| name.is_none_or(|n| n == e.name)) {
        found = true;
        nodes::ensure_node(&entry.name, entry.major, entry.minor)?;
    }
    match name {
        Some(name) if !found => Err(Error::NotFound(name.to_string())),
        _ => Ok(()),
    }
}

/// Starts a keeper of `target` (an NBD URL to attach, or a device to keep), in the background,
/// and prints the device it keeps. Only root may hand the kernel an NBD socket: that is said
/// before any handshake, with the status of every other permission error.
fn start_keeper(
    target: &str,
    what: &'static str,
    timeout: u64,
    dead_conn_timeout: u64,
) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::Permission(what));
    }
    let (device, _keeper) = crate::nbd::start_keeper(
        target,
        crate::nbd::Timeouts {
            request_s: timeout,
            dead_conn_s: dead_conn_timeout,
        },
    )?;
    println!("{}", device.display());
    Ok(())
}

/// `dmmig nbd ...`: attach and detach NBD exports.
fn nbd_command(action: crate::cli::NbdCommand) -> Result<()> {
    use crate::cli::NbdCommand;
    use crate::nbd::{NbdUrl, Timeouts};
    let url = |text: &str| {
        NbdUrl::parse(text)?
            .ok_or_else(|| Error::Usage(format!("'{text}' is not an nbd://HOST[:PORT]/EXPORT URL")))
    };
    match action {
        NbdCommand::Connect {
            url: text,
            timeout,
            dead_conn_timeout,
        } => {
            // Checked before the handshake: a bad URL is a usage error.
            let url = url(&text)?;
            start_keeper(
                &url.to_string(),
                "attaching an NBD device",
                timeout,
                dead_conn_timeout,
            )
        }
        NbdCommand::Disconnect { device } => crate::nbd::disconnect(crate::nbd::index_of(&device)?),
        NbdCommand::Keep {
            url: text,
            timeout,
            dead_conn_timeout,
            foreground: false,
        } => start_keeper(&text, "keeping an NBD device", timeout, dead_conn_timeout),
        NbdCommand::Keep {
            url: text,
            timeout,
            dead_conn_timeout,
            foreground: true,
        } => {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(signal, stop.clone())
                    .map_err(|e| Error::Failed(format!("cannot handle signals: {e}")))?;
            }
            // A hang-up of the terminal it was started from is no reason to stop keeping.
            let hangups = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGHUP, hangups)
                .map_err(|e| Error::Failed(format!("cannot handle signals: {e}")))?;
            crate::nbd::keep(
                &text,
                Timeouts {
                    request_s: timeout,
                    dead_conn_s: dead_conn_timeout,
                },
                stop,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Info {
        Info {
            name: "disk".into(),
            state: "ACTIVE".into(),
            read_only: false,
            live_table: true,
            inactive_table: false,
            open_count: 0,
            event_nr: 2,
            major: 253,
            minor: 0,
            target_count: 1,
            uuid: None,
        }
    }

    #[test]
    fn info_text_matches_dmsetup() {
        assert_eq!(
            format_info(&sample(), 256),
            "Name:              disk\nState:             ACTIVE\nRead Ahead:        256\n\
             Tables present:    LIVE\nOpen count:        0\nEvent number:      2\n\
             Major, minor:      253, 0\nNumber of targets: 1\n"
        );
        let mut i = sample();
        i.inactive_table = true;
        i.state = "SUSPENDED".into();
        i.uuid = Some("MIG-1".into());
        let text = format_info(&i, 0);
        assert!(text.contains("State:             SUSPENDED\n"));
        assert!(text.contains("Tables present:    LIVE & INACTIVE\n"));
        assert!(text.ends_with("UUID: MIG-1\n"));
    }

    #[test]
    fn info_json_shape() {
        let value = serde_json::to_value(sample()).unwrap();
        for key in [
            "name",
            "state",
            "read_only",
            "live_table",
            "inactive_table",
            "open_count",
            "event_nr",
            "major",
            "minor",
            "target_count",
            "uuid",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        assert_eq!(value["event_nr"], 2);
    }

    #[test]
    fn describes_a_migration() {
        let line =
            TableLine::parse("0 524288 migrate copying 1024/4096 3072 32 67108864 20480 0 -")
                .unwrap();
        assert_eq!(
            describe_migration(&line).unwrap(),
            "copying: 25.0% (64 of 256 MiB), 20480 KiB/s, ETA 9 s"
        );
        let failed =
            TableLine::parse("0 8 migrate failed 0/1 1 0 0 0 2 destination_write_error").unwrap();
        assert_eq!(
            describe_migration(&failed).unwrap(),
            "failed: 0.0% (0 of 0 MiB), 2 errors, reason: destination_write_error"
        );
        assert!(describe_migration(&TableLine::parse("0 8 migrate 7:0 7:1").unwrap()).is_none());
    }

    #[test]
    fn table_json_shape() {
        let line = TableLine::parse("0 8 linear 7:0 0").unwrap();
        let value = serde_json::to_value([line]).unwrap();
        assert_eq!(value[0]["start"], 0);
        assert_eq!(value[0]["length"], 8);
        assert_eq!(value[0]["target_type"], "linear");
        assert_eq!(value[0]["params"], "7:0 0");
    }
}

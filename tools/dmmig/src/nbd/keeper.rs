//! The keeper (`dmmig nbd keep`): the process that holds an NBD device's connection, its loop,
//! what it does about a dead link, its lock, and how a command starts one or attaches one.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{recv, MsgFlags};

use super::device::{backend, device_path, index_of, stack, still_ours};
use super::handshake::negotiate;
use super::netlink::{
    attr_u32, disconnect, kernel_connect, kernel_reconfigure, parse_attrs, Genl, NBD_ATTR_INDEX,
    NBD_CMD_LINK_DEAD,
};
use super::url::{BackendId, NbdUrl};
use super::Timeouts;
use crate::error::{Error, Result};
use crate::giveup::{give_up, GivenUp, Holder};

/// Whether the connection of `stream`, a socket handed to the kernel, has ended: the kernel
/// shuts a socket down when it calls the link dead, and the peer's close or a reset ends it too.
fn hung_up(stream: &TcpStream) -> bool {
    // A peek without waiting reads the end of the stream (0) or its error, and consumes
    // nothing the kernel, which reads this socket, would miss.
    let mut byte = [0u8; 1];
    match recv(
        stream.as_raw_fd(),
        &mut byte,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(0) => true,
        Ok(_) | Err(nix::Error::EAGAIN | nix::Error::EINTR) => false,
        Err(_) => true,
    }
}

/// Takes the keeper's lock of NBD device `index` (`/run/dmmig-nbdN.keeper`): one keeper per
/// device, whoever started it.
fn lock_keeper(index: u32) -> Result<nix::fcntl::Flock<fs::File>> {
    let path = format!("/run/dmmig-nbd{index}.keeper");
    let file = fs::File::create(&path)
        .map_err(|e| Error::Failed(format!("cannot create the lock {path}: {e}")))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        Error::Usage(format!(
            "/dev/nbd{index} already has a keeper (it holds {path})"
        ))
    })
}

/// A line from the keeper, to the kernel log: the keeper outlives the command that started it,
/// and has no terminal to write to after that. It goes to stderr too, for as long as the starter
/// reads it (a failed write there must not end the keeper).
fn note(text: std::fmt::Arguments) {
    let line = format!("dmmig[{}]: {text}", std::process::id());
    // <13>: facility user, level notice.
    if let Ok(mut kmsg) = fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = kmsg.write_all(format!("<13>{line}\n").as_bytes());
    }
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// What a dead link means for the users of an NBD device.
#[derive(Debug, PartialEq, Eq)]
enum AfterDeadLink {
    /// Some migration onto the device was cancelled: its origin has every write, and the device
    /// is to be disconnected.
    GiveUp(Vec<String>),
    /// The device holds the only copy of its data (or nobody uses it): reconnect.
    Reconnect,
}

/// Decides what to do about the dead link of NBD device `index`, cancelling every migration
/// onto it that has not switched.
fn after_dead_link(index: u32) -> AfterDeadLink {
    // A device without its `dev` file is gone: nothing holds it, and the reconnect loop,
    // which asks whether the device is still the keeper's before each try, ends at once.
    if fs::metadata(format!("/sys/block/nbd{index}/dev")).is_err() {
        return AfterDeadLink::Reconnect;
    }
    // Every dm device above it, also through a partition, an LV or a LUKS mapping: a migrate
    // target whose destination is any device that carries the connection's data.
    let stack = stack(index);
    let mut on_origin = Vec::new();
    let mut unconfirmed = false;
    // The disks (holders with nothing on them) that still need the device: a migration that
    // switched, or a table that is no migration onto it (a linear after a move, an LV in use).
    let mut needed_by = Vec::new();
    for holder in &stack.holders {
        let name = holder.name.clone();
        // Only a migrate target may lose a write to a reconnect; a linear or anything else on
        // the device is served by reconnecting (give_up tells them apart, also when the table
        // cannot be read). A migration that switched, or a table that is no longer one onto
        // the device, has no other copy to fall back on.
        match give_up(&name, &holder.kernel_name, Some(&stack.carriers)) {
            GivenUp::Holder(Holder::Origin) => on_origin.push(name),
            // Not a reason to reconnect: a reconnect before the switch is the one thing the
            // keeper must not do. Disconnecting fails the destination's I/O, so an unswitched
            // migration fails onto its origin.
            GivenUp::Unconfirmed(state) => {
                note(format_args!(
                    "nbd{index}: could not confirm that {name} cancelled or switched (state \
                     '{state}'); disconnecting, which fails a migration that has not switched \
                     onto its origin"
                ));
                unconfirmed = true;
                on_origin.push(name);
            }
            GivenUp::Holder(Holder::Destination) | GivenUp::Replaced(_) => {
                if holder.top {
                    needed_by.push(name);
                }
            }
        }
    }
    if on_origin.is_empty() {
        return AfterDeadLink::Reconnect;
    }
    // Every migration onto the device is over on its origin (a cancelled copy's writes on the
    // destination no longer matter), and other disks live on the device: they are served by
    // the reconnect, as after a move.
    if !unconfirmed && !needed_by.is_empty() {
        note(format_args!(
            "nbd{index}: gave up the migration of {} onto it (the origin has every write); \
             reconnecting for {}",
            on_origin.join(", "),
            needed_by.join(", ")
        ));
        return AfterDeadLink::Reconnect;
    }
    AfterDeadLink::GiveUp(on_origin)
}

/// `dmmig nbd keep TARGET`: with a URL, connects it as a new NBD device; with a device
/// (`/dev/nbdN`, already connected, whose keeper is gone), takes it over. Prints the device's
/// path on stdout (the line its starter waits for), then keeps it connected until it is
/// disconnected.
pub fn keep(target: &str, mut timeouts: Timeouts, stop: Arc<AtomicBool>) -> Result<()> {
    // Subscribed before the connect: no dead link of the device can go unheard.
    let events = Genl::open()?;
    events.subscribe()?;
    let mut genl = Genl::open()?;
    let mut handshake_timeout = Duration::from_secs(timeouts.request_s.max(1));
    let mut user_timeout = timeouts.tcp_user_timeout();
    // The socket the kernel was handed, watched for a hang-up: a LINK_DEAD can be lost (the
    // group's socket overflowed, or the kernel could not allocate the event), the socket's end
    // cannot. A keeper that took a device over has no such socket, and hears LINK_DEAD only.
    let mut watched: Option<TcpStream>;
    let (id, index, size, _lock) = match NbdUrl::parse(target)? {
        Some(url) => {
            let export = negotiate(&url, handshake_timeout, user_timeout)?;
            let size = export.size;
            let id = BackendId::new(&url);
            let index = kernel_connect(&mut genl, &id, &export, timeouts)?;
            watched = Some(export.stream);
            // A device nobody keeps is not left behind: without its lock, it is let go.
            let lock = lock_keeper(index).inspect_err(|_| {
                let _ = disconnect(index);
            })?;
            note(format_args!("nbd{index}: connected to {url}"));
            (id, index, size, lock)
        }
        None => {
            let index = index_of(Path::new(target))?;
            let lock = lock_keeper(index)?;
            let id = backend(index)
                .filter(|_| fs::metadata(format!("/sys/block/nbd{index}/pid")).is_ok())
                .and_then(|b| BackendId::parse(&b))
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "{target} is not connected by dmmig (no nbd:// backend): nothing to keep"
                    ))
                })?;
            let size = fs::read_to_string(format!("/sys/block/nbd{index}/size"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map_or(0, |sectors| sectors * 512);
            // The device's own request timeout, not a default: the pause before a reconnect
            // must cover the TCP user timeout of the socket it was connected with.
            if let Some(ms) = fs::read_to_string(format!("/sys/block/nbd{index}/queue/io_timeout"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|&ms| ms >= 1000)
            {
                timeouts.request_s = ms / 1000;
                handshake_timeout = Duration::from_secs(timeouts.request_s);
                user_timeout = timeouts.tcp_user_timeout();
            }
            note(format_args!(
                "nbd{index}: keeping it connected to {}",
                id.url
            ));
            watched = None;
            (id, index, size, lock)
        }
    };
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{}", device_path(index).display());
    let _ = stdout.flush();
    let url = &id.url;
    let stopped = || {
        note(format_args!(
            "nbd{index}: keeper stopped by a signal; the device stays connected with no keeper \
             (a dead link is then not reconnected): run 'dmmig nbd keep /dev/nbd{index}'"
        ));
        Ok(())
    };
    loop {
        if stop.load(Ordering::Relaxed) {
            return stopped();
        }
        if !still_ours(index, &id) {
            return Ok(());
        }
        let messages = match events.receive() {
            Ok(m) => m,
            // ENOBUFS: the socket overflowed and some multicast was lost; the watched socket
            // still tells a dead connection.
            Err(nix::Error::EAGAIN | nix::Error::EINTR | nix::Error::ENOBUFS) => Vec::new(),
            Err(e) => return Err(Error::Failed(format!("netlink: {e}"))),
        };
        let link_dead = messages.iter().any(|m| {
            m.kind == events.family
                && m.cmd == NBD_CMD_LINK_DEAD
                && attr_u32(&parse_attrs(&m.attrs), NBD_ATTR_INDEX) == Some(index)
        });
        let hung_up = !link_dead && watched.as_ref().is_some_and(hung_up);
        if hung_up {
            note(format_args!(
                "nbd{index}: the connection to {url} hung up (no LINK_DEAD was heard)"
            ));
        }
        let dead = link_dead || hung_up;
        if !dead || !still_ours(index, &id) {
            continue;
        }
        if let AfterDeadLink::GiveUp(names) = after_dead_link(index) {
            note(format_args!(
                "nbd{index}: the connection to {url} is dead before the switch: gave up the \
                 migration of {} onto it (the origin has every write), disconnecting",
                names.join(", ")
            ));
            if let Err(e) = disconnect(index) {
                note(format_args!("nbd{index}: disconnect failed: {e}"));
            }
            return Ok(());
        }
        note(format_args!(
            "nbd{index}: the connection to {url} is dead; reconnecting"
        ));
        // What the dead socket had not delivered is dropped by TCP within its user timeout;
        // a new connection writes only after that.
        std::thread::sleep(user_timeout);
        let mut tries = 0u64;
        loop {
            if stop.load(Ordering::Relaxed) {
                return stopped();
            }
            if !still_ours(index, &id) {
                return Ok(());
            }
            tries += 1;
            let attempt = negotiate(url, handshake_timeout, user_timeout).and_then(|export| {
                if size != 0 && export.size != size {
                    return Err(Error::Failed(format!(
                        "the export's size changed from {size} to {} bytes",
                        export.size
                    )));
                }
                kernel_reconfigure(&mut genl, index, &id, &export)?;
                Ok(export.stream)
            });
            match attempt {
                Ok(stream) => {
                    // The dead connection's socket is let go only now, after the kernel has
                    // the new one.
                    watched = Some(stream);
                    // A report of the death just handled that was still queued (LINK_DEAD
                    // after the hang-up was seen, or the other way round) must not start a
                    // second reconnect of a connection that works.
                    events.drain();
                    note(format_args!(
                        "nbd{index}: reconnected to {url} (try {tries})"
                    ));
                    break;
                }
                Err(e) => {
                    if tries == 1 || tries.is_multiple_of(30) {
                        note(format_args!(
                            "nbd{index}: reconnect failed (try {tries}): {e}"
                        ));
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Starts a keeper (`dmmig nbd keep`) in a process group of its own, waits for it to connect,
/// and returns the device's path and the keeper. The keeper outlives this process (nothing
/// needs to wait for it); its stderr is read only
/// until it has connected, so that nothing it writes later can hold up or break a caller that
/// collects this process's output.
pub fn connect(url: &NbdUrl, timeouts: Timeouts) -> Result<(PathBuf, std::process::Child)> {
    start_keeper(&url.to_string(), timeouts)
}

/// Starts a keeper for NBD device `device`, already connected (its keeper died).
pub fn attach_keeper(device: &Path) -> Result<std::process::Child> {
    start_keeper(&device.to_string_lossy(), Timeouts::default()).map(|(_, keeper)| keeper)
}

/// Starts `dmmig nbd keep TARGET` and waits for the device it keeps. Under systemd the keeper
/// runs in a scope unit of its own (`systemd-run --scope`), so that stopping or restarting the
/// service that started it (its cgroup) does not stop the keeper; elsewhere, in a process group
/// of its own.
pub fn start_keeper(target: &str, timeouts: Timeouts) -> Result<(PathBuf, std::process::Child)> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()
        .map_err(|e| Error::Failed(format!("cannot find dmmig's own path: {e}")))?;
    let mut command = if crate::host::systemd_manages_us() {
        let mut command = Command::new("systemd-run");
        command
            .args(["--scope", "--collect", "--quiet", "--description"])
            .arg(format!("dmmig NBD keeper of {target}"))
            .arg(exe);
        command
    } else {
        Command::new(exe)
    };
    let mut child = command
        .args(["nbd", "keep", "--foreground", "--timeout"])
        .arg(timeouts.request_s.to_string())
        .arg("--dead-conn-timeout")
        .arg(timeouts.dead_conn_s.to_string())
        .arg(target)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Failed(format!("cannot start the NBD keeper: {e}")))?;
    let stdout = child.stdout.take().expect("a piped stdout");
    let stderr = child.stderr.take().expect("a piped stderr");
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    let device = line.trim();
    if device.is_empty() {
        let mut why = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut why);
        let status = child.wait().ok();
        let why = why
            .lines()
            .map(|l| l.split_once("]: ").map_or(l, |(_, text)| text))
            .map(|l| l.strip_prefix("dmmig: ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::Failed(format!(
            "cannot keep {target}: {}",
            if why.is_empty() {
                status.map_or("the keeper failed".to_string(), |s| format!("keeper: {s}"))
            } else {
                why
            }
        )));
    }
    Ok((PathBuf::from(device), child))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watched socket tells the end of its connection: the peer's close, or its own
    /// shutdown (what the kernel does to a connection it calls dead).
    #[test]
    fn a_socket_that_ended_is_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(!hung_up(&client), "a live connection");
        drop(server);
        std::thread::sleep(Duration::from_millis(50));
        assert!(hung_up(&client), "the peer closed");
        let other = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        other.shutdown(std::net::Shutdown::Both).unwrap();
        assert!(hung_up(&other), "shut down here");
    }
}

//! The device-mapper operations dmmig needs, over the `devicemapper` crate's ioctls.

use crate::error::{dm_error, ioctl_errno, Error, Result};
use crate::table::TableLine;
use devicemapper::{DevId, DmFlags, DmName, DmOptions, DM};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::Serialize;
use std::os::fd::AsFd;
use std::time::Duration;

/// A device in `ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The device's name.
    pub name: String,
    /// Its block device major number.
    pub major: u32,
    /// Its block device minor number.
    pub minor: u32,
}

/// What `info` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Info {
    /// The device's name.
    pub name: String,
    /// `ACTIVE` or `SUSPENDED`.
    pub state: String,
    /// Whether the device is read-only.
    pub read_only: bool,
    /// Whether a live table is loaded.
    pub live_table: bool,
    /// Whether an inactive (loaded, not yet resumed) table is present.
    pub inactive_table: bool,
    /// How many openers the device has.
    pub open_count: i32,
    /// The event counter (`dmsetup wait`).
    pub event_nr: u32,
    /// Block device major number.
    pub major: u32,
    /// Block device minor number.
    pub minor: u32,
    /// Targets in the live table.
    pub target_count: u32,
    /// The device's UUID, if it has one.
    pub uuid: Option<String>,
}

/// An open `/dev/mapper/control`.
pub struct Dm {
    dm: DM,
}

fn dm_name(name: &str) -> Result<&DmName> {
    DmName::new(name)
        .map_err(|_| Error::Usage(format!("'{name}' is not a valid device-mapper name")))
}

impl Dm {
    /// Opens the control device.
    pub fn open() -> Result<Self> {
        DM::new().map(|dm| Self { dm }).map_err(|e| {
            let text = e.to_string();
            if text.contains("ermission") || text.contains("EACCES") || text.contains("EPERM") {
                Error::Permission("opening /dev/mapper/control")
            } else {
                Error::Failed(format!(
                    "cannot open /dev/mapper/control ({text}): is device-mapper (dm-mod) loaded?"
                ))
            }
        })
    }

    /// Whether the kernel has the target type `target` (the DM target versions list).
    pub fn has_target(&self, target: &str) -> Result<bool> {
        self.dm
            .list_versions()
            .map(|versions| versions.iter().any(|(name, ..)| name == target))
            .map_err(|e| Error::Failed(format!("cannot list the device-mapper targets: {e}")))
    }

    /// All devices, sorted by name.
    pub fn list(&self) -> Result<Vec<Entry>> {
        let mut list: Vec<Entry> = self
            .dm
            .list_devices()
            .map_err(|e| dm_error("listing", "devices", e))?
            .into_iter()
            .map(|(name, dev, _)| Entry {
                name: name.to_string(),
                major: dev.major,
                minor: dev.minor,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    /// The state of a device.
    pub fn info(&self, name: &str) -> Result<Info> {
        let info = self
            .dm
            .device_info(&DevId::Name(dm_name(name)?))
            .map_err(|e| dm_error("info of", name, e))?;
        let flags = info.flags();
        let dev = info.device();
        Ok(Info {
            name: name.to_string(),
            state: if flags.contains(DmFlags::DM_SUSPEND) {
                "SUSPENDED"
            } else {
                "ACTIVE"
            }
            .into(),
            read_only: flags.contains(DmFlags::DM_READONLY),
            live_table: flags.contains(DmFlags::DM_ACTIVE_PRESENT),
            inactive_table: flags.contains(DmFlags::DM_INACTIVE_PRESENT),
            open_count: info.open_count(),
            event_nr: info.event_nr(),
            major: dev.major,
            minor: dev.minor,
            target_count: self.table(name)?.len() as u32,
            uuid: info.uuid().map(|u| u.to_string()),
        })
    }

    /// Creates a device; with a table, loads and resumes it, as `dmsetup create` does.
    pub fn create(&self, name: &str, table: Option<&[TableLine]>) -> Result<()> {
        let dm_name = dm_name(name)?;
        self.dm
            .device_create(dm_name, None, DmOptions::default())
            .map_err(|e| dm_error("create", name, e))?;
        if let Some(table) = table {
            let loaded = self.load(name, table).and_then(|()| self.resume(name));
            if let Err(e) = loaded {
                // Leave nothing behind, like dmsetup.
                let _ = self
                    .dm
                    .device_remove(&DevId::Name(dm_name), DmOptions::default());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Loads a table into the inactive slot.
    pub fn load(&self, name: &str, table: &[TableLine]) -> Result<()> {
        let targets: Vec<_> = table.iter().map(TableLine::to_dm).collect();
        self.dm
            .table_load(&DevId::Name(dm_name(name)?), &targets, DmOptions::default())
            .map(|_| ())
            .map_err(|e| {
                let mut error = dm_error("load", name, e);
                // The errno says little ("Invalid argument"); the kernel logged why.
                if let (Error::Failed(text), Ok(info)) = (&mut error, self.info(name)) {
                    if let Some(reason) = table_refusal(info.major, info.minor) {
                        *text = format!("{text}: the kernel says \"{reason}\"");
                    }
                }
                error
            })
    }

    /// Suspends a device, flushing its I/O unless `noflush`.
    pub fn suspend(&self, name: &str, noflush: bool) -> Result<()> {
        let mut flags = DmFlags::DM_SUSPEND;
        if noflush {
            flags |= DmFlags::DM_NOFLUSH;
        }
        // The kernel waits for I/O in flight interruptibly: a signal (a second Ctrl-C) makes
        // the suspend fail with EINTR, which is no reason to give up.
        let mut tries = 0;
        loop {
            let result = self.dm.device_suspend(
                &DevId::Name(dm_name(name)?),
                DmOptions::default().set_flags(flags),
            );
            match result {
                Ok(_) => return Ok(()),
                Err(e) if tries < 10 && ioctl_errno(&e) == Some(nix::errno::Errno::EINTR) => {
                    tries += 1;
                }
                Err(e) => return Err(dm_error("suspend", name, e)),
            }
        }
    }

    /// Resumes a device, making an inactive table live.
    pub fn resume(&self, name: &str) -> Result<()> {
        self.dm
            .device_suspend(&DevId::Name(dm_name(name)?), DmOptions::default())
            .map(|_| ())
            .map_err(|e| dm_error("resume", name, e))
    }

    /// Removes a device.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.dm
            .device_remove(&DevId::Name(dm_name(name)?), DmOptions::default())
            .map(|_| ())
            .map_err(|e| dm_error("remove", name, e))
    }

    fn table_status(&self, name: &str, flags: DmFlags) -> Result<Vec<TableLine>> {
        let (_, lines) = self
            .dm
            .table_status(
                &DevId::Name(dm_name(name)?),
                DmOptions::default().set_flags(flags),
            )
            .map_err(|e| dm_error("status of", name, e))?;
        Ok(lines.into_iter().map(TableLine::from_dm).collect())
    }

    /// The status lines of the live table.
    pub fn status(&self, name: &str) -> Result<Vec<TableLine>> {
        self.table_status(name, DmFlags::empty())
    }

    /// The live table.
    pub fn table(&self, name: &str) -> Result<Vec<TableLine>> {
        self.table_status(name, DmFlags::DM_STATUS_TABLE)
    }

    /// Sends a message to the target at `sector`; returns its answer, if any.
    pub fn message(&self, name: &str, sector: u64, message: &str) -> Result<Option<String>> {
        self.dm
            .target_msg(&DevId::Name(dm_name(name)?), Some(sector), message)
            .map(|(_, answer)| answer)
            .map_err(|e| dm_error("message to", name, e))
    }

    /// Waits until the device's event counter passes `event_nr` (or, without one, the current
    /// counter), and returns the new counter.
    ///
    /// The crate's `device_wait` cannot wait for a given event number (it puts udev flags where
    /// the kernel expects the number), so this arms the control device's event poll instead and
    /// rechecks the counter on each wake-up.
    pub fn wait(&self, name: &str, event_nr: Option<u32>) -> Result<u32> {
        let start = self.info(name)?.event_nr;
        let target = event_nr.unwrap_or(start);
        loop {
            self.dm
                .arm_poll()
                .map_err(|e| dm_error("wait for", name, e))?;
            let now = self.info(name)?.event_nr;
            if now > target {
                return Ok(now);
            }
            // A timeout or an interrupted poll just rechecks the counter.
            let mut fds = [PollFd::new(self.dm.file().as_fd(), PollFlags::POLLIN)];
            let _ = poll(
                &mut fds,
                PollTimeout::from(Duration::from_secs(1).as_millis() as u16),
            );
        }
    }
}

/// The reason device-mapper logged for refusing a table of device `major:minor` (its lines read
/// `device-mapper: table: M:m: <target>: <reason>`), the newest in the kernel log.
fn table_refusal(major: u32, minor: u32) -> Option<String> {
    use nix::fcntl::OFlag;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut kmsg = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open("/dev/kmsg")
        .ok()?;
    let prefix = format!("table: {major}:{minor}: ");
    let mut newest = None;
    let mut record = vec![0u8; 8192];
    // One record per read, until there are no more (EAGAIN).
    while let Ok(n) = kmsg.read(&mut record) {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&record[..n]);
        let message = text.split_once(';').map_or(&*text, |(_, m)| m);
        let message = message.lines().next().unwrap_or_default();
        if let Some((_, reason)) = message.split_once(&prefix) {
            newest = Some(reason.trim().to_string());
        }
    }
    newest
}

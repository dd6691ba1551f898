//! Giving a migration up: one path for `move`, `recover` and the NBD keeper. It sends `cancel`
//! and reads back which device holds every write, asking again while neither is confirmed.
//!
//! The target decides a cancel atomically against the switch: it accepts it before the switch
//! (the migration ends `cancelled`, every write on the origin) and refuses it after (only the
//! destination has the writes made since). A refusal alone proves nothing: the control device
//! may not open, the table may be in a reload, the target may refuse a cancel it cannot record.
//! So a refusal counts as a switch only when the state reads `switched`, and an unconfirmed
//! outcome is never taken for either.

use crate::counters::{self, SysfsFile};
use crate::dm::Dm;
use dm_migrate_engine::state::Progress;
use std::time::Duration;

/// How many times a cancel that neither took effect nor was refused by a switch is asked, and
/// how long the wait is between two asks.
const TRIES: u32 = 10;
const RETRY: Duration = Duration::from_millis(200);

/// How long one `cancel` may take before the asker stops waiting for it. The target answers a
/// cancel without waiting for the destination (it decides under a lock no device I/O is done
/// under), so this only guards against a kernel that would block.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// Which device holds every write of a migration that was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Cancelled, or already failed or cancelled: the origin.
    Origin,
    /// Switched: the destination, alone.
    Destination,
}

/// What giving a migration up came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GivenUp {
    /// The migration is over, and this device holds every write.
    Holder(Holder),
    /// The device no longer runs the migration (another table, named, or no migrate target at
    /// all): there is nothing to cancel, and no telling what holds what.
    Replaced(String),
    /// Neither a cancel nor a switch could be confirmed: the last state read, for the message.
    Unconfirmed(String),
}

/// What a cancel's answer and the migration state read after it say; `None` if neither is
/// conclusive, and the cancel is to be asked again.
pub fn judge(accepted: bool, state: &str) -> Option<Holder> {
    match state {
        "switched" => Some(Holder::Destination),
        "failed" | "cancelled" => Some(Holder::Origin),
        _ if accepted => Some(Holder::Origin),
        _ => None,
    }
}

/// The state of the migration on dm device `kernel_name` (`dm-N`, its sysfs `migrate/state`),
/// empty when it runs none.
pub fn migration_state(kernel_name: &str) -> String {
    counters::read(&counters::dir_of_kernel_name(kernel_name), SysfsFile::State).unwrap_or_default()
}

/// The state of the `migrate` line at `start` of dm device `name`, from its own status line
/// (the sysfs folder is the device's, one for all its lines, and is gone while it is
/// suspended); `None` if the status cannot be read.
fn line_state(name: &str, start: u64) -> Option<String> {
    let status = Dm::open().and_then(|dm| dm.status(name)).ok()?;
    let line = status
        .iter()
        .find(|l| l.start == start && l.target_type == "migrate")?;
    Progress::parse_info(&line.params).map(|p| p.state_word().to_string())
}

/// Sends `cancel` to the target at `sector` of dm device `name`; whether the target accepted
/// it, or `None` if it did not answer within [`CANCEL_WAIT`].
fn send_cancel(name: &str, sector: u64) -> Option<bool> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let target = name.to_string();
    // In a thread of its own, so that a cancel that blocks cannot hold the caller.
    std::thread::spawn(move || {
        let accepted = Dm::open()
            .and_then(|dm| dm.message(&target, sector, "cancel"))
            .is_ok();
        let _ = sender.send(accepted);
    });
    receiver.recv_timeout(CANCEL_WAIT).ok()
}

/// Gives up the migration of dm device `name` (kernel name `kernel_name`): its `migrate` line
/// whose destination is one of `destinations` (`major:minor`), or its first one if `None`.
pub fn give_up(name: &str, kernel_name: &str, destinations: Option<&[String]>) -> GivenUp {
    let mut last_state = String::new();
    for _ in 0..TRIES {
        // Read again each time: the table may have been swapped meanwhile.
        let table = Dm::open().and_then(|dm| dm.table(name));
        let line = match table {
            Ok(table) => {
                let line = table.iter().find(|line| {
                    line.target_type == "migrate"
                        && destinations.is_none_or(|d| {
                            line.params
                                .split(' ')
                                .nth(1)
                                .is_some_and(|dest| d.iter().any(|x| x == dest))
                        })
                });
                match line {
                    Some(line) => line.clone(),
                    None => {
                        return GivenUp::Replaced(
                            table
                                .first()
                                .map(|l| l.target_type.clone())
                                .unwrap_or_default(),
                        )
                    }
                }
            }
            // The table cannot be read: the migrate target's own sysfs still tells a switched
            // (or ended) migration, and a device without one runs no migration at all.
            Err(_) => {
                last_state = migration_state(kernel_name);
                if last_state.is_empty() {
                    return GivenUp::Replaced(String::new());
                }
                if let Some(holder) = judge(false, &last_state) {
                    return GivenUp::Holder(holder);
                }
                std::thread::sleep(RETRY);
                continue;
            }
        };
        let accepted = send_cancel(name, line.start);
        last_state = line_state(name, line.start).unwrap_or_else(|| migration_state(kernel_name));
        if let Some(holder) = judge(accepted == Some(true), &last_state) {
            return GivenUp::Holder(holder);
        }
        std::thread::sleep(RETRY);
    }
    GivenUp::Unconfirmed(last_state)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused cancel is a switch only when the state says so: a cancel that failed for any
    /// other reason while the migration still copies is asked again, never taken for a switch.
    #[test]
    fn a_refused_cancel_is_not_taken_for_a_switch() {
        assert_eq!(judge(false, "switched"), Some(Holder::Destination));
        assert_eq!(judge(true, "cancelled"), Some(Holder::Origin));
        assert_eq!(judge(false, "failed"), Some(Holder::Origin));
        assert_eq!(judge(true, "copying"), Some(Holder::Origin));
        for state in ["copying", "synced", "paused", "switching", ""] {
            assert_eq!(judge(false, state), None, "{state}");
        }
    }
}

//! The signals that stop a command that changes things over time (`move`, `recover`, `nbd
//! connect`): SIGINT (Ctrl-C), SIGTERM and SIGHUP (a closed terminal or SSH session). Each sets
//! the command's stop flag, so that it undoes what it made and says where the disk is, instead
//! of dying half-way; the process then exits with 128 + the signal's number, as a shell reports
//! a command killed by it.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The last stopping signal received, 0 for none.
static RECEIVED: OnceLock<Arc<AtomicUsize>> = OnceLock::new();

/// The signals that stop a command.
const STOPPING: [i32; 3] = [
    signal_hook::consts::SIGINT,
    signal_hook::consts::SIGTERM,
    signal_hook::consts::SIGHUP,
];

/// A flag that the stopping signals set, from now on.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let received = RECEIVED
        .get_or_init(|| Arc::new(AtomicUsize::new(0)))
        .clone();
    let failed = |e: std::io::Error| Error::Failed(format!("cannot handle signals: {e}"));
    for signal in STOPPING {
        // A hang-up the process was started ignoring (under `nohup`) stays ignored. SIGINT and
        // SIGTERM always stop: a shell starts background commands with SIGINT ignored, and a
        // `kill -INT` of one is still meant.
        if signal == signal_hook::consts::SIGHUP && ignored_at_start(signal) {
            continue;
        }
        signal_hook::flag::register(signal, stop.clone()).map_err(failed)?;
        signal_hook::flag::register_usize(signal, received.clone(), signal as usize)
            .map_err(failed)?;
    }
    Ok(stop)
}

/// Whether `signal` was ignored when the process started: its bit in the `SigIgn` mask of
/// /proc/self/status (read before any handler of ours replaces the disposition).
fn ignored_at_start(signal: i32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

/// The stopping signal received since [`stop_flag`], if any.
pub fn received() -> Option<i32> {
    let signal = RECEIVED.get()?.load(Ordering::Relaxed);
    (signal != 0).then_some(signal as i32)
}

/// The exit status of a command that a signal stopped: 128 + its number (130 for Ctrl-C).
pub fn exit_status(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopping_signal_sets_the_flag_and_the_status() {
        if ignored_at_start(signal_hook::consts::SIGHUP) {
            eprintln!("started with SIGHUP ignored (nohup): skipped");
            return;
        }
        let stop = stop_flag().unwrap();
        assert_eq!(received(), None);
        signal_hook::low_level::raise(signal_hook::consts::SIGHUP).unwrap();
        assert!(stop.load(Ordering::Relaxed), "SIGHUP did not stop");
        assert_eq!(received(), Some(signal_hook::consts::SIGHUP));
        assert_eq!(exit_status(signal_hook::consts::SIGINT), 130);
        assert_eq!(exit_status(signal_hook::consts::SIGTERM), 143);
    }
}

//! The gate where the disks of a `--switch-together` move wait until every one is in sync.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Where the disks of a `--switch-together` move wait, each in sync, until every one is.
#[derive(Debug)]
pub struct SwitchGate {
    disks: usize,
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    in_sync: usize,
    aborted: bool,
}

impl SwitchGate {
    /// A gate for `disks` disks.
    pub fn new(disks: usize) -> Self {
        Self {
            disks,
            state: Mutex::new(GateState::default()),
            changed: Condvar::new(),
        }
    }

    /// Says that this disk is in sync, and waits until every disk is; fails when the move is
    /// given up meanwhile (a disk failed, or `stop` was set), and gives it up when this disk
    /// leaves its sync while it waits (`in_sync` says false: failed, cancelled): it would not
    /// be in sync when the others switch.
    pub fn pass(&self, stop: &AtomicBool, in_sync: &dyn Fn() -> bool) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.in_sync += 1;
        self.changed.notify_all();
        loop {
            if state.aborted || stop.load(Ordering::Relaxed) {
                return Err(Error::Failed(
                    "another disk of the move failed, or the move was interrupted".into(),
                ));
            }
            if !in_sync() {
                state.aborted = true;
                self.changed.notify_all();
                return Err(Error::Failed(
                    "the migration left its sync while the other disks caught up".into(),
                ));
            }
            if state.in_sync >= self.disks {
                return Ok(());
            }
            // Woken by each arrival and by an abort; the timeout is for `stop` (a signal).
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Gives the move up: every disk waiting at the gate, and every one to come, fails.
    pub fn abort(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).aborted = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_when_every_disk_is_in_sync_and_an_abort_fails_all() {
        let stop = AtomicBool::new(false);
        let gate = SwitchGate::new(2);
        let ok = || true;
        std::thread::scope(|s| {
            let first = s.spawn(|| gate.pass(&stop, &ok));
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                !first.is_finished(),
                "passed before the second disk was in sync"
            );
            assert!(gate.pass(&stop, &ok).is_ok());
            assert!(first.join().unwrap().is_ok());
        });
        let gate = SwitchGate::new(2);
        std::thread::scope(|s| {
            let waiting = s.spawn(|| gate.pass(&stop, &ok));
            gate.abort();
            assert!(waiting.join().unwrap().is_err());
        });
        assert!(gate.pass(&stop, &ok).is_err(), "a disk after the abort");
        // A disk that leaves its sync while it waits gives the move up for all.
        let gate = SwitchGate::new(2);
        let failed = AtomicBool::new(false);
        let synced = || !failed.load(Ordering::Relaxed);
        std::thread::scope(|s| {
            let waiting = s.spawn(|| gate.pass(&stop, &synced));
            std::thread::sleep(Duration::from_millis(50));
            failed.store(true, Ordering::Relaxed);
            assert!(waiting.join().unwrap().is_err());
            assert!(gate.pass(&stop, &ok).is_err(), "the other disk");
        });
    }
}

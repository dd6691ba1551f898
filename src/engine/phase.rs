// SPDX-License-Identifier: GPL-2.0

//! The phase decisions: one function decides every change of phase (a failure, a cancel, the
//! switch) and whether a commit may still write, under the phase lock, from the tracker's state
//! and the destination's health.
//!
//! The destination's health is a pair of sticky flags that every destination completion sets
//! (a mirrored write's or flush's destination half, the target's own flushes) in any context,
//! before it is uncounted; a decision that depends on the destination first drains what it
//! depends on and then calls [`decide`] under the lock, so a failure recorded by then always
//! wins. The caller carries the decision out under the same lock (the phase written to the
//! metadata device, then the tracker changed) and raises events and releases the deferred
//! writes after it lets go: a failure, a cancel and a switch can never both win.

use super::state::{FailReason, State};
use core::sync::atomic::{AtomicBool, Ordering};

/// Whether the destination may have lost data the migration relies on: sticky until a restart.
#[derive(Debug, Default)]
pub struct DestinationHealth {
    /// A mirrored write, a guest's mirrored flush or a FUA write's flush missed the
    /// destination (`destination_write_error`).
    write_failed: AtomicBool,
    /// A flush of the destination made by the target failed (`destination_flush_error`).
    flush_failed: AtomicBool,
}

impl DestinationHealth {
    /// A healthy destination.
    pub const fn new() -> Self {
        Self {
            write_failed: AtomicBool::new(false),
            flush_failed: AtomicBool::new(false),
        }
    }

    /// Records a write the destination missed. Any context.
    pub fn record_write_failure(&self) {
        self.write_failed.store(true, Ordering::Release);
    }

    /// Records a failed flush of the destination. Any context.
    pub fn record_flush_failure(&self) {
        self.flush_failed.store(true, Ordering::Release);
    }

    /// The failure recorded, if any: a failed flush names itself first (it may have hidden a
    /// write-back error of any write before it).
    pub fn failure(&self) -> Option<FailReason> {
        if self.flush_failed.load(Ordering::Acquire) {
            Some(FailReason::DestinationFlush)
        } else if self.write_failed.load(Ordering::Acquire) {
            Some(FailReason::DestinationWrite)
        } else {
            None
        }
    }

    /// Forgets every failure: for a copy that starts over, while no table is live.
    pub fn clear(&self) {
        self.write_failed.store(false, Ordering::Release);
        self.flush_failed.store(false, Ordering::Release);
    }
}

/// Where the tracker stands, as a decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhaseView {
    /// The tracker's state.
    pub state: State,
    /// Whether a switch has begun (writes held) and not ended.
    pub switching: bool,
}

impl PhaseView {
    fn is_active(self) -> bool {
        matches!(self.state, State::Copying | State::Synced)
    }
}

/// What the holder of the phase lock asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// End on the origin for `reason` (the copier's failures, a metadata write error).
    Fail(FailReason),
    /// The `cancel` message.
    Cancel,
    /// The switch, once drained and flushed.
    Switch,
    /// A commit's bitmap write, of a snapshot taken when the phase's generation was `seen`.
    Commit {
        /// The generation of the phase when the snapshot was taken.
        seen: u64,
    },
}

/// What the holder of the phase lock must do: write the phase (for an end or the switch) to the
/// metadata device, then change the tracker; or write the commit; or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Fail for this reason: `failed` first, then the tracker, then the event.
    Fail(FailReason),
    /// Cancel: `cancelled` first, then the tracker, then the event.
    Cancel,
    /// Switch: `switched` first, then the tracker, then the event.
    Switch,
    /// Write the commit's bitmaps.
    Commit,
    /// A cancel of a migration that has switched: refused.
    AlreadySwitched,
    /// Nothing: the migration has ended, a switch was cancelled meanwhile, or a commit's
    /// snapshot belongs to an earlier phase.
    Nothing,
}

/// Decides `request` for a migration that stands at `view`, with the destination's `health`
/// and the phase's `generation` now. Call under the phase lock, and carry the decision out
/// under it.
///
/// - An ended migration changes no more: a cancel of a switched one is refused, anything else
///   does nothing.
/// - A failure the destination recorded wins over a switch and a commit (each drained the
///   completions it depends on before it asked): they fail the migration instead.
/// - A failure asked for is carried out as asked; so is a cancel, unless the destination
///   recorded a failure first, which is then carried out instead (what happened first).
/// - A switch needs a switch under way and everything copied; a commit needs the phase it
///   was snapshotted in.
pub fn decide(
    view: PhaseView,
    health: &DestinationHealth,
    generation: u64,
    request: Request,
) -> Decision {
    if !view.is_active() {
        return match (request, view.state) {
            (Request::Cancel, State::Switched) => Decision::AlreadySwitched,
            _ => Decision::Nothing,
        };
    }
    match request {
        Request::Fail(reason) => Decision::Fail(reason),
        Request::Cancel | Request::Switch | Request::Commit { .. }
            if health.failure().is_some() =>
        {
            // Checked just above.
            Decision::Fail(health.failure().unwrap_or(FailReason::DestinationWrite))
        }
        Request::Cancel => Decision::Cancel,
        Request::Switch if view.switching && view.state == State::Synced => Decision::Switch,
        Request::Switch => Decision::Nothing,
        Request::Commit { seen } if seen == generation => Decision::Commit,
        Request::Commit { .. } => Decision::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_ended_migration_changes_no_more() {
        let health = DestinationHealth::new();
        for state in [
            State::Switched,
            State::Cancelled,
            State::Failed(FailReason::OriginRead),
        ] {
            let view = PhaseView {
                state,
                switching: false,
            };
            let cancel = decide(view, &health, 0, Request::Cancel);
            let want = if state == State::Switched {
                Decision::AlreadySwitched
            } else {
                Decision::Nothing
            };
            assert_eq!(cancel, want);
            for request in [
                Request::Fail(FailReason::MetadataWrite),
                Request::Switch,
                Request::Commit { seen: 0 },
            ] {
                assert_eq!(decide(view, &health, 0, request), Decision::Nothing);
            }
        }
    }

    #[test]
    fn a_recorded_failure_beats_the_switch_and_the_commit() {
        let health = DestinationHealth::new();
        let view = PhaseView {
            state: State::Synced,
            switching: true,
        };
        assert_eq!(decide(view, &health, 3, Request::Switch), Decision::Switch);
        assert_eq!(
            decide(view, &health, 3, Request::Commit { seen: 3 }),
            Decision::Commit
        );
        assert_eq!(
            decide(view, &health, 3, Request::Commit { seen: 2 }),
            Decision::Nothing
        );
        health.record_write_failure();
        assert_eq!(
            decide(view, &health, 3, Request::Switch),
            Decision::Fail(FailReason::DestinationWrite)
        );
        health.record_flush_failure();
        assert_eq!(
            decide(view, &health, 3, Request::Commit { seen: 3 }),
            Decision::Fail(FailReason::DestinationFlush)
        );
        assert_eq!(
            decide(view, &health, 3, Request::Cancel),
            Decision::Fail(FailReason::DestinationFlush),
            "a recorded failure came first"
        );
        health.clear();
        assert_eq!(decide(view, &health, 3, Request::Cancel), Decision::Cancel);
        assert_eq!(health.failure(), None);
    }

    /// What happens, in any order: the destination fails a write or a flush (a completion, in
    /// any context, at any time), a cancel or a failure comes, the switch begins or decides,
    /// a commit snapshots or writes, an identical reload restarts an ended migration.
    #[derive(Debug, Clone, Copy)]
    enum Event {
        DestWriteError,
        DestFlushError,
        Cancel,
        Fail,
        Copied,
        BeginSwitch,
        DecideSwitch,
        Snapshot,
        CommitWrite,
        Restart,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            1 => Just(Event::DestWriteError),
            1 => Just(Event::DestFlushError),
            1 => Just(Event::Cancel),
            1 => Just(Event::Fail),
            3 => Just(Event::Copied),
            3 => Just(Event::BeginSwitch),
            3 => Just(Event::DecideSwitch),
            3 => Just(Event::Snapshot),
            3 => Just(Event::CommitWrite),
            1 => Just(Event::Restart),
        ]
    }

    /// The migration as the kernel keeps it: the tracker's state, the metadata device's phase
    /// and generation, and the commit's snapshot.
    struct Model {
        view: PhaseView,
        health: DestinationHealth,
        generation: u64,
        on_disk: State,
        snapshot: Option<u64>,
        /// A destination failure was recorded before the decision being made.
        failed_before: bool,
    }

    impl Model {
        /// Carries a decision out, as the kernel does under the phase lock.
        fn apply(&mut self, decision: Decision) {
            let end = |m: &mut Model, state: State| {
                m.generation += 1;
                m.on_disk = state;
                m.view = PhaseView {
                    state,
                    switching: false,
                };
            };
            match decision {
                Decision::Fail(reason) => end(self, State::Failed(reason)),
                Decision::Cancel => end(self, State::Cancelled),
                Decision::Switch => end(self, State::Switched),
                Decision::Commit | Decision::AlreadySwitched | Decision::Nothing => {}
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Never `switched` after a destination failure was recorded; never a commit written
        /// over a later phase or after a recorded failure; once ended, the phase on the device
        /// and the tracker agree and change only by a restart; the device never says less
        /// than the tracker does.
        #[test]
        fn failure_cancel_and_switch_never_both_win(events in proptest::collection::vec(event(), 1..60)) {
            let mut m = Model {
                view: PhaseView { state: State::Copying, switching: false },
                health: DestinationHealth::new(),
                generation: 1,
                on_disk: State::Copying,
                snapshot: None,
                failed_before: false,
            };
            for e in events {
                let before = m.view.state;
                match e {
                    Event::DestWriteError => { m.health.record_write_failure(); m.failed_before = true; }
                    Event::DestFlushError => { m.health.record_flush_failure(); m.failed_before = true; }
                    Event::Cancel => {
                        let d = decide(m.view, &m.health, m.generation, Request::Cancel);
                        prop_assert!(matches!(d, Decision::Cancel | Decision::Fail(_) | Decision::AlreadySwitched | Decision::Nothing));
                        if m.failed_before && matches!(m.view.state, State::Copying | State::Synced) {
                            prop_assert!(matches!(d, Decision::Fail(_)), "a cancel hid a recorded failure");
                        }
                        m.apply(d);
                    }
                    Event::Fail => {
                        let d = decide(m.view, &m.health, m.generation, Request::Fail(FailReason::OriginRead));
                        m.apply(d);
                    }
                    Event::Copied => {
                        if m.view.state == State::Copying {
                            m.view.state = State::Synced;
                        }
                    }
                    Event::BeginSwitch => {
                        if m.view.state == State::Synced {
                            m.view.switching = true;
                        }
                    }
                    Event::DecideSwitch => {
                        let d = decide(m.view, &m.health, m.generation, Request::Switch);
                        if d == Decision::Switch {
                            prop_assert!(!m.failed_before, "switched past a recorded failure");
                        }
                        if m.failed_before && m.view.switching && matches!(m.view.state, State::Synced) {
                            prop_assert!(matches!(d, Decision::Fail(_)));
                        }
                        m.apply(d);
                    }
                    Event::Snapshot => {
                        if matches!(m.view.state, State::Copying | State::Synced) {
                            m.snapshot = Some(m.generation);
                        }
                    }
                    Event::CommitWrite => {
                        if let Some(seen) = m.snapshot.take() {
                            let d = decide(m.view, &m.health, m.generation, Request::Commit { seen });
                            if d == Decision::Commit {
                                prop_assert_eq!(seen, m.generation, "a commit over a later phase");
                                prop_assert!(!m.failed_before, "a commit after a recorded failure");
                                prop_assert!(matches!(m.on_disk, State::Copying | State::Synced));
                            }
                            m.apply(d);
                        }
                    }
                    Event::Restart => {
                        if matches!(m.view.state, State::Failed(_) | State::Cancelled) {
                            m.health.clear();
                            m.failed_before = false;
                            m.generation += 1;
                            m.on_disk = State::Copying;
                            m.view = PhaseView { state: State::Copying, switching: false };
                        }
                    }
                }
                // An end is final but for a restart, and the device says it first.
                let ended = |s: State| matches!(s, State::Switched | State::Failed(_) | State::Cancelled);
                if ended(before) && !matches!(e, Event::Restart) {
                    prop_assert_eq!(m.view.state, before, "an ended migration changed");
                }
                if ended(m.view.state) {
                    prop_assert_eq!(m.on_disk, m.view.state, "the device says less than the tracker");
                }
            }
        }
    }
}

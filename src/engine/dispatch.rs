// SPDX-License-Identifier: GPL-2.0

//! The decision half of `map`: where one bio goes and which counts it enters, decided under the
//! routing lock from the tracker and the write-intent log. The kernel side only carries the
//! plan out (enters the counts, tags the bio, remaps, mirrors or defers it).

use super::behind::{Admit as BehindAdmit, BehindLog, MirrorMode, Slot};
use super::bitmap::Chunk;
use super::intent::{Admit, IntentLog};
use super::state::State;
use super::tracker::{IoKind, Route, Tracker};
use core::ops::DerefMut;

/// Where every bio goes once the migration has ended: the route never changes again, so `map`
/// takes it without the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalRoute {
    /// Failed or cancelled: the origin.
    Origin,
    /// Switched: the destination.
    Destination,
}

/// What `map` does with one bio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Where the bio goes.
    pub route: Route,
    /// A write routed to the origin while the migration runs: counted in the copier's epochs,
    /// so that a round taken after this decision waits for it (`engine::epoch`).
    pub copy_write: bool,
    /// A mirrored write whose regions' intent bits are durable: counted in the intent epochs,
    /// so that their bits are cleared only once it has landed.
    pub intent_write: bool,
    /// The destination half flushes the destination (a mirrored flush, or a mirrored FUA write
    /// on a device that emulates FUA with a flush): counted until that half completes.
    pub dest_flush: bool,
    /// A flush sent to both devices: the switch waits for every one before it.
    pub mirrored_flush: bool,
    /// The write waits for its intent bits: the metadata thread must write them.
    pub wake_metadata: bool,
    /// The migration has ended: where every bio goes from now on.
    pub final_route: Option<FinalRoute>,
    /// A mirrored write that overlaps a write behind in flight: nothing is done with it (no
    /// count entered, no route); `map` waits until a write behind lands and plans it again.
    pub wait_behind: bool,
    /// A mirrored write that goes behind, in this slot of the log: the guest's bio goes to the
    /// origin alone, and a copy of its data to the destination, counted on its own.
    pub behind_slot: Option<usize>,
    /// A mirrored write that could go behind but came without a copy of its data: nothing is
    /// done with it; `map` makes the copy outside the lock and plans it again. (A copy is made
    /// only for a write that needs one: most writes while copying go to the origin alone.)
    pub wants_copy: bool,
}

impl Plan {
    /// A plan that does nothing yet: `map` waits (`wait_behind`) or copies (`wants_copy`) and
    /// plans again.
    fn hold(wait_behind: bool, wants_copy: bool) -> Self {
        Plan {
            route: Route::Defer,
            copy_write: false,
            intent_write: false,
            dest_flush: false,
            mirrored_flush: false,
            wake_metadata: false,
            final_route: None,
            wait_behind,
            behind_slot: None,
            wants_copy,
        }
    }
}

/// What `map` knows of one bio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Io {
    /// What it does.
    pub kind: IoKind,
    /// Its first sector, relative to the target.
    pub sector: u64,
    /// Its length in sectors.
    pub sectors: u64,
    /// A write with forced unit access.
    pub fua: bool,
    /// A plain write with data (not a discard or write-zeroes): one that may go behind.
    pub plain_write: bool,
    /// A copy of its data for the destination is at hand.
    pub copied: bool,
}

/// Plans the bio `io`. Call under the routing lock; `intent` is the write-intent log, with a
/// metadata device; `behind` the log of writes behind (`super::behind`).
///
/// - A mirrored write that overlaps a write behind waits for it (`wait_behind`), before
///   anything else is decided: it must not reach the destination while the older write may
///   still land after it.
/// - The tracker routes (`Tracker::route`).
/// - The first mirrored write to a copied region waits until its intent bit is durable: after
///   a crash, the region is then copied again whichever half landed.
/// - In `async` mode a mirrored write with data goes behind when the log takes it, and a flush
///   goes to the origin alone: the origin is the system of record until the switch (after a
///   crash, every region with an intent bit is copied again from it; without a metadata
///   device the copy starts over), and everything that makes the destination the record (the
///   switch, a commit, a suspend) drains the writes behind and flushes the destination itself.
/// - A flush that comes while the switch is under way goes to the origin alone. Every write it
///   covers (one that completed before it came) was routed before the switch began, since
///   writes are held from then on, so the switch's own flush of the destination, after those
///   writes drained, covers them there; the origin covers them if the switch fails instead. On
///   the destination it would only be one more flush the switch has to wait for, and one that
///   could take a write-back error (which a loop device reports to one flush only) away from
///   the switch's flush.
pub fn plan<C, P, IC, IP, S>(
    tracker: &Tracker<C, P>,
    intent: Option<&mut IntentLog<IC, IP>>,
    behind: Option<&BehindLog<S>>,
    io: Io,
) -> Plan
where
    C: DerefMut<Target = [Chunk<P>]>,
    P: DerefMut<Target = [u64]>,
    IC: DerefMut<Target = [Option<IP>]>,
    IP: DerefMut<Target = [u64]>,
    S: core::ops::Deref<Target = [Slot]>,
{
    let Io {
        kind,
        sector,
        sectors,
        fua,
        plain_write,
        copied,
    } = io;
    let bytes = sectors * super::SECTOR_SIZE;
    let mut route = tracker.route(kind, sector, sectors);
    if let (Route::Both, IoKind::Write, Some(log)) = (route, kind, behind) {
        if log.must_wait(sector, sectors) {
            return Plan::hold(true, false);
        }
        if plain_write && !copied && log.has_room(bytes) {
            return Plan::hold(false, true);
        }
    }
    let mut intent_write = false;
    let mut wake_metadata = false;
    if let (Route::Both, IoKind::Write, Some(intent)) = (route, kind, intent) {
        let regions = tracker.regions_of(sector, sectors);
        match intent.admit(regions, |region| !tracker.is_pending(region)) {
            Admit::Go => intent_write = true,
            Admit::Wait => {
                route = Route::Defer;
                wake_metadata = true;
            }
        }
    }
    let asynchronous = behind.is_some_and(|log| log.mode() == MirrorMode::Async);
    if kind == IoKind::Flush && route == Route::Both && (tracker.is_switching() || asynchronous) {
        route = Route::Origin;
    }
    let mut behind_slot = None;
    if let (Route::Both, IoKind::Write, Some(log)) = (route, kind, behind) {
        if let BehindAdmit::Behind(slot) = log.claim(sector, sectors, bytes, plain_write && copied)
        {
            behind_slot = Some(slot);
        }
    }
    let final_route = match tracker.state() {
        State::Switched => Some(FinalRoute::Destination),
        State::Failed(_) | State::Cancelled => Some(FinalRoute::Origin),
        State::Copying | State::Synced => None,
    };
    let mirrored = route == Route::Both;
    Plan {
        route,
        copy_write: kind == IoKind::Write
            && tracker.is_active()
            && matches!(route, Route::Origin | Route::Both),
        intent_write,
        // A write behind's copy goes without FUA: the origin's half carries it, and the
        // destination is made durable by whatever makes it the record.
        dest_flush: mirrored
            && behind_slot.is_none()
            && (kind == IoKind::Flush || (kind == IoKind::Write && fua)),
        mirrored_flush: mirrored && kind == IoKind::Flush,
        wake_metadata,
        final_route,
        wait_behind: false,
        behind_slot,
        wants_copy: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::FailReason;
    use crate::tracker::pending_chunks;
    use std::vec;
    use std::vec::Vec;

    const REGION: u64 = 8;
    type TestTracker = Tracker<Vec<Chunk<Vec<u64>>>, Vec<u64>>;

    fn tracker(regions: u64) -> TestTracker {
        let sectors = regions * REGION;
        let n = pending_chunks(sectors, REGION, 1);
        Tracker::new(
            (0..n).map(|_| Chunk::Set).collect(),
            1,
            sectors,
            REGION,
            false,
        )
        .unwrap()
    }

    fn io(kind: IoKind, sector: u64, sectors: u64, fua: bool) -> Io {
        Io {
            kind,
            sector,
            sectors,
            fua,
            plain_write: kind == IoKind::Write,
            copied: kind == IoKind::Write,
        }
    }

    fn behind_log() -> BehindLog<Vec<Slot>> {
        BehindLog::new(
            (0..crate::behind::SLOTS).map(|_| Slot::new()).collect(),
            MirrorMode::Async,
            64,
        )
    }

    fn log(words: usize) -> IntentLog<Vec<Option<Vec<u64>>>, Vec<u64>> {
        let regions = words as u64 * 64;
        let chunks = crate::intent::chunk_entries(regions) as usize;
        let mut l = IntentLog::new(vec![None; chunks], regions).unwrap();
        while l.spares_wanted() > 0 {
            l.give(vec![0; crate::intent::CHUNK_WORDS]);
        }
        l
    }

    /// Copies every region, as the copier would, with no write in between.
    fn copy_all(t: &mut TestTracker) {
        let epochs = crate::epoch::WriteEpochs::new();
        let mut page = || Some(vec![0u64; 1]);
        while let Some(round) = t.start_round(4, 8, &epochs, &mut page) {
            for b in round.batches() {
                t.batch_done(b, crate::tracker::CopyResult::Done);
            }
        }
        assert_eq!(t.state(), State::Synced);
    }

    #[test]
    fn a_pending_region_takes_writes_on_the_origin_alone_counted_for_the_copier() {
        let t = tracker(4);
        let p = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            None,
            io(IoKind::Write, 0, 8, true),
        );
        assert_eq!(p.route, Route::Origin);
        assert!(p.copy_write && !p.intent_write && !p.dest_flush && !p.mirrored_flush);
        assert_eq!(p.final_route, None);
        let r = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            None,
            io(IoKind::Read, 0, 8, false),
        );
        assert_eq!(r.route, Route::Origin);
        assert!(!r.copy_write, "a read is not counted");
    }

    #[test]
    fn a_copied_region_mirrors_and_waits_for_its_intent_once() {
        let mut t = tracker(4);
        copy_all(&mut t);
        let mut l = log(1);
        let first =
            plan::<_, _, _, _, Vec<Slot>>(&t, Some(&mut l), None, io(IoKind::Write, 8, 8, false));
        assert_eq!(first.route, Route::Defer);
        assert!(first.wake_metadata && !first.copy_write && !first.intent_write);
        assert!(l.start_send());
        l.sent();
        let again =
            plan::<_, _, _, _, Vec<Slot>>(&t, Some(&mut l), None, io(IoKind::Write, 8, 8, true));
        assert_eq!(again.route, Route::Both);
        assert!(again.copy_write && again.intent_write);
        assert!(
            again.dest_flush,
            "a mirrored FUA write flushes the destination"
        );
        assert!(!again.mirrored_flush);
        let no_meta = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            None,
            io(IoKind::Write, 8, 8, false),
        );
        assert_eq!(no_meta.route, Route::Both);
        assert!(no_meta.copy_write && !no_meta.intent_write && !no_meta.dest_flush);
    }

    #[test]
    fn in_async_mode_a_copied_region_s_write_goes_behind_and_flushes_stay_on_the_origin() {
        let mut t = tracker(4);
        let behind = behind_log();
        let b = Some(&behind);
        let big = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            b,
            io(IoKind::Write, 0, 256, false),
        );
        assert!(!big.wants_copy, "pending: no copy");
        let pending = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            b,
            io(IoKind::Write, 0, 8, true),
        );
        assert_eq!((pending.route, pending.behind_slot), (Route::Origin, None));
        copy_all(&mut t);
        let uncopied = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            b,
            Io {
                copied: false,
                ..io(IoKind::Write, 8, 8, true)
            },
        );
        assert!(uncopied.wants_copy && !uncopied.copy_write && uncopied.behind_slot.is_none());
        let capped = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            b,
            Io {
                copied: false,
                ..io(IoKind::Write, 0, 256, false)
            },
        );
        assert!(
            !capped.wants_copy && capped.behind_slot.is_none(),
            "128 KiB > 64 KiB cap"
        );
        assert_eq!(behind.stats().capped_total, 1);
        let w = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            b,
            io(IoKind::Write, 8, 8, true),
        );
        assert_eq!((w.route, w.behind_slot), (Route::Both, Some(0)));
        assert!(w.copy_write && !w.dest_flush, "the copy goes without FUA");
        let over = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            b,
            io(IoKind::Write, 12, 1, false),
        );
        assert!(over.wait_behind && !over.copy_write && over.behind_slot.is_none());
        let zeroes = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            b,
            Io {
                plain_write: false,
                copied: false,
                ..io(IoKind::Write, 16, 8, false)
            },
        );
        assert_eq!((zeroes.route, zeroes.behind_slot), (Route::Both, None));
        let f = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            b,
            io(IoKind::Flush, 0, 0, false),
        );
        assert_eq!(f.route, Route::Origin);
        assert!(!f.mirrored_flush && !f.dest_flush);
        behind.set_mode(MirrorMode::Sync);
        let f = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            b,
            io(IoKind::Flush, 0, 0, false),
        );
        assert!(f.mirrored_flush, "sync mode mirrors flushes");
        let s = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            b,
            io(IoKind::Write, 24, 8, true),
        );
        assert_eq!((s.route, s.behind_slot), (Route::Both, None));
        assert!(s.dest_flush);
    }

    /// The contract `map` keeps with the switch: the write behind enters the copier's epochs on
    /// its own, so the switch, which drains them, is refused until the copy has landed even
    /// though the guest was told of the write when the origin's half completed.
    #[test]
    fn a_write_behind_holds_the_switch_until_it_lands() {
        use crate::epoch::{BioTag, WriteEpochs};
        let mut t = tracker(2);
        copy_all(&mut t);
        let behind = behind_log();
        let epochs = WriteEpochs::new();
        let p = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            Some(&behind),
            io(IoKind::Write, 0, 8, false),
        );
        let slot = p.behind_slot.unwrap();
        assert!(p.copy_write);
        let guest = epochs.enter();
        behind.set_tag(slot, BioTag::write(Some(epochs.enter()), None, None).raw());
        epochs.exit(guest);
        assert!(t.begin_switch());
        assert!(!t.switch(&epochs), "the write behind has not landed");
        let (tag, last) = behind.release(slot);
        assert!(last);
        epochs.exit(BioTag::from_raw(tag).copy_write().unwrap());
        assert!(t.switch(&epochs));
    }

    #[test]
    fn a_write_waiting_for_its_intent_bit_takes_no_slot() {
        let mut t = tracker(4);
        copy_all(&mut t);
        let mut l = log(1);
        let behind = behind_log();
        let p = plan(
            &t,
            Some(&mut l),
            Some(&behind),
            io(IoKind::Write, 8, 8, false),
        );
        assert_eq!((p.route, p.behind_slot), (Route::Defer, None));
        assert_eq!(behind.in_flight(), 0);
        assert!(l.start_send());
        l.sent();
        let p = plan(
            &t,
            Some(&mut l),
            Some(&behind),
            io(IoKind::Write, 8, 8, false),
        );
        assert_eq!(p.behind_slot, Some(0));
        assert!(p.intent_write && p.copy_write);
    }

    #[test]
    fn flushes_are_mirrored_until_the_switch_begins() {
        let mut t = tracker(2);
        let f = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            None,
            io(IoKind::Flush, 0, 0, false),
        );
        assert_eq!(f.route, Route::Both);
        assert!(f.mirrored_flush && f.dest_flush && !f.copy_write);
        copy_all(&mut t);
        assert!(t.begin_switch());
        let during = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            None,
            io(IoKind::Flush, 0, 0, false),
        );
        assert_eq!(
            during.route,
            Route::Origin,
            "the switch's own flush covers the destination"
        );
        assert!(!during.mirrored_flush && !during.dest_flush);
        let write = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            None,
            io(IoKind::Write, 0, 8, false),
        );
        assert_eq!(
            write.route,
            Route::Defer,
            "writes are held during the switch"
        );
        assert!(!write.copy_write);
    }

    #[test]
    fn an_ended_migration_names_its_final_route() {
        let mut t = tracker(2);
        t.fail(FailReason::DestinationWrite);
        let p = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &t,
            None,
            None,
            io(IoKind::Write, 0, 8, false),
        );
        assert_eq!(
            (p.route, p.final_route),
            (Route::Origin, Some(FinalRoute::Origin))
        );
        assert!(!p.copy_write, "nothing is counted once ended");
        let mut s = tracker(2);
        copy_all(&mut s);
        assert!(s.begin_switch());
        let epochs = crate::epoch::WriteEpochs::new();
        assert!(s.switch(&epochs));
        let p = plan::<_, _, Vec<Option<Vec<u64>>>, Vec<u64>, Vec<Slot>>(
            &s,
            None,
            None,
            io(IoKind::Flush, 0, 0, false),
        );
        assert_eq!(
            (p.route, p.final_route),
            (Route::Destination, Some(FinalRoute::Destination))
        );
        assert!(!p.mirrored_flush && !p.dest_flush);
    }
}

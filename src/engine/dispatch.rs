// SPDX-License-Identifier: GPL-2.0

//! The decision half of `map`: where one bio goes and which counts it enters, decided under the
//! routing lock from the tracker and the write-intent log. The kernel side only carries the
//! plan out (enters the counts, tags the bio, remaps, mirrors or defers it).

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
}

/// Plans a bio of `kind` over `sectors` sectors at `sector` (`fua`: a write with forced unit
/// access). Call under the routing lock; `intent` is the write-intent log, with a metadata
/// device.
///
/// - The tracker routes (`Tracker::route`).
/// - The first mirrored write to a copied region waits until its intent bit is durable: after
///   a crash, the region is then copied again whichever half landed.
/// - A flush that comes while the switch is under way goes to the origin alone. Every write it
///   covers (one that completed before it came) was routed before the switch began, since
///   writes are held from then on, so the switch's own flush of the destination, after those
///   writes drained, covers them there; the origin covers them if the switch fails instead. On
///   the destination it would only be one more flush the switch has to wait for, and one that
///   could take a write-back error (which a loop device reports to one flush only) away from
///   the switch's flush.
pub fn plan<C, P, B>(
    tracker: &Tracker<C, P>,
    intent: Option<&mut IntentLog<B>>,
    kind: IoKind,
    sector: u64,
    sectors: u64,
    fua: bool,
) -> Plan
where
    C: DerefMut<Target = [Chunk<P>]>,
    P: DerefMut<Target = [u64]>,
    B: DerefMut<Target = [u64]>,
{
    let mut route = tracker.route(kind, sector, sectors);
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
    if kind == IoKind::Flush && route == Route::Both && tracker.is_switching() {
        route = Route::Origin;
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
        dest_flush: mirrored && (kind == IoKind::Flush || (kind == IoKind::Write && fua)),
        mirrored_flush: mirrored && kind == IoKind::Flush,
        wake_metadata,
        final_route,
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

    fn log(words: usize) -> IntentLog<Vec<u64>> {
        IntentLog::new(
            vec![0; words],
            vec![0; words],
            vec![0; words],
            vec![0; words],
            vec![0; words],
        )
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
        let p = plan::<_, _, Vec<u64>>(&t, None, IoKind::Write, 0, 8, true);
        assert_eq!(p.route, Route::Origin);
        assert!(p.copy_write && !p.intent_write && !p.dest_flush && !p.mirrored_flush);
        assert_eq!(p.final_route, None);
        let r = plan::<_, _, Vec<u64>>(&t, None, IoKind::Read, 0, 8, false);
        assert_eq!(r.route, Route::Origin);
        assert!(!r.copy_write, "a read is not counted");
    }

    #[test]
    fn a_copied_region_mirrors_and_waits_for_its_intent_once() {
        let mut t = tracker(4);
        copy_all(&mut t);
        let mut l = log(1);
        let first = plan(&t, Some(&mut l), IoKind::Write, 8, 8, false);
        assert_eq!(first.route, Route::Defer);
        assert!(first.wake_metadata && !first.copy_write && !first.intent_write);
        assert!(l.start_send());
        l.sent();
        let again = plan(&t, Some(&mut l), IoKind::Write, 8, 8, true);
        assert_eq!(again.route, Route::Both);
        assert!(again.copy_write && again.intent_write);
        assert!(
            again.dest_flush,
            "a mirrored FUA write flushes the destination"
        );
        assert!(!again.mirrored_flush);
        let no_meta = plan::<_, _, Vec<u64>>(&t, None, IoKind::Write, 8, 8, false);
        assert_eq!(no_meta.route, Route::Both);
        assert!(no_meta.copy_write && !no_meta.intent_write && !no_meta.dest_flush);
    }

    #[test]
    fn flushes_are_mirrored_until_the_switch_begins() {
        let mut t = tracker(2);
        let f = plan::<_, _, Vec<u64>>(&t, None, IoKind::Flush, 0, 0, false);
        assert_eq!(f.route, Route::Both);
        assert!(f.mirrored_flush && f.dest_flush && !f.copy_write);
        copy_all(&mut t);
        assert!(t.begin_switch());
        let during = plan::<_, _, Vec<u64>>(&t, None, IoKind::Flush, 0, 0, false);
        assert_eq!(
            during.route,
            Route::Origin,
            "the switch's own flush covers the destination"
        );
        assert!(!during.mirrored_flush && !during.dest_flush);
        let write = plan::<_, _, Vec<u64>>(&t, None, IoKind::Write, 0, 8, false);
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
        let p = plan::<_, _, Vec<u64>>(&t, None, IoKind::Write, 0, 8, false);
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
        let p = plan::<_, _, Vec<u64>>(&s, None, IoKind::Flush, 0, 0, false);
        assert_eq!(
            (p.route, p.final_route),
            (Route::Destination, Some(FinalRoute::Destination))
        );
        assert!(!p.mirrored_flush && !p.dest_flush);
    }
}

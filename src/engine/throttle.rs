// SPDX-License-Identifier: GPL-2.0

//! The copier's pace: the measured copy rate, the adaptive rate controller that picks the
//! copy's limit from the guest's own I/O, and the pacer that holds the copy to that limit.
//! Times are nanoseconds of a monotonic clock, handed in by the caller.
//!
//! # The controller
//!
//! Every [`TICK_NS`] the target hands the controller what the guest did in that interval: the
//! guest bios that completed, the sum of their latencies (from `map` to `end_io`), and those
//! still in flight. The controller keeps the copy's limit between `min_rate` (the floor: the
//! copy always progresses, so it always finishes) and `max_rate` (the ceiling, 0 for none):
//!
//! - A guest that did nothing for [`QUIET_TICKS`] intervals is idle: the limit goes to the
//!   ceiling at once, and the copy runs flat out.
//! - A guest that shows up after being idle gets the floor at once, as md's resync drops to
//!   `speed_limit_min` and DRBD's to `c-min-rate`: the guest never waits for the copy to notice.
//! - While the guest is busy, its mean latency is compared with its *baseline*, the latency it
//!   had while the copy ran at the floor (a moving average over those intervals). Within
//!   [`RAISE_PERCENT`] of it, the copy takes more, an additive step per interval; beyond
//!   [`LOWER_PERCENT`], the limit halves, down to the floor. The copy so takes what the guest
//!   leaves, and backs off as soon as the guest's latency says it is paying for it.
//!
//! With `min_rate 0`, or a floor at or above a ceiling, there is nothing to choose: the limit is
//! the ceiling.

/// The controller's interval: 100 ms.
pub const TICK_NS: u64 = 100_000_000;

/// Intervals without any guest I/O after which the guest counts as idle.
pub const QUIET_TICKS: u32 = 2;

/// The guest's latency may be this much above its baseline, in percent, and the copy still
/// takes more.
pub const RAISE_PERCENT: u64 = 110;

/// Beyond this much of its baseline, in percent, the guest pays for the copy: the limit halves.
pub const LOWER_PERCENT: u64 = 125;

/// The default floor, `min_rate`, in KiB/s.
pub const DEFAULT_MIN_RATE_KIBPS: u64 = 10240;

/// Copy batches in flight while the guest is idle, when the table sets no `copy_depth`: on a
/// device with latency (a network, a loop device's worker) more bytes in flight is more speed,
/// and no guest pays for it.
pub const IDLE_COPY_DEPTH: u32 = 16;

/// Copy batches in flight while the guest is busy, when the table sets no `copy_depth`.
pub const BUSY_COPY_DEPTH: u32 = 4;

/// The least step the limit rises by per interval, in KiB/s.
const MIN_STEP_KIBPS: u64 = 1024;

/// Measures the copy rate over windows of about a second.
pub struct RateMeter {
    start_ns: u64,
    bytes: u64,
    kibps: u64,
}

impl RateMeter {
    /// Starts the first window at `now_ns`.
    pub fn new(now_ns: u64) -> Self {
        Self {
            start_ns: now_ns,
            bytes: 0,
            kibps: 0,
        }
    }

    /// Counts bytes copied.
    pub fn add(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// The rate of the last full window, starting a new window when this one is over.
    pub fn kibps(&mut self, now_ns: u64) -> u64 {
        let elapsed = now_ns.saturating_sub(self.start_ns);
        if elapsed >= 1_000_000_000 {
            // No 128-bit division in the kernel: KiB times nanoseconds fits in 64 bits for any
            // rate below 18 PiB/s.
            self.kibps = (self.bytes / 1024).saturating_mul(1_000_000_000) / elapsed;
            self.start_ns = now_ns;
            self.bytes = 0;
        }
        self.kibps
    }

    /// Forgets the current window: the copy stopped, and a rate measured over a window it
    /// spent asleep would say nothing.
    pub fn restart(&mut self, now_ns: u64) {
        *self = Self::new(now_ns);
    }
}

/// Holds the copy to a limit: every batch copied moves the time the next may start by its
/// length at the limit. What was copied and not yet paid for is a debt in bytes: a changed
/// limit pays the rest of it at the new limit (a raised limit shortens the wait at once, a
/// lowered one lengthens it), and no credit is saved up while the copy is idle.
#[derive(Default)]
pub struct Pacer {
    next_ns: u64,
    /// The limit `next_ns` was reckoned at, KiB/s; 0 for none.
    kibps: u64,
}

impl Pacer {
    /// No limit yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reckons the debt at a new limit.
    fn set_limit(&mut self, kibps: u64, now_ns: u64) {
        if kibps == self.kibps {
            return;
        }
        let left = self.next_ns.saturating_sub(now_ns);
        self.next_ns = if kibps == 0 || self.kibps == 0 {
            now_ns
        } else {
            // Without 128-bit arithmetic: the exact product when it fits in 64 bits (any wait
            // below about 5 hours at limits below 1 GiB/s), else the coarser order.
            let scaled = match left.checked_mul(self.kibps) {
                Some(product) => product / kibps,
                None => (left / kibps).saturating_mul(self.kibps),
            };
            now_ns.saturating_add(scaled)
        };
        self.kibps = kibps;
    }

    /// Counts `bytes` copied at `now_ns` under a limit of `kibps` (0 for none).
    pub fn add(&mut self, bytes: u64, kibps: u64, now_ns: u64) {
        self.set_limit(kibps, now_ns);
        if kibps == 0 {
            return;
        }
        // Bytes times 10^9 fits in 64 bits for any batch below 18 GB.
        let cost_ns = bytes.saturating_mul(1_000_000_000) / kibps.saturating_mul(1024);
        self.next_ns = self.next_ns.max(now_ns).saturating_add(cost_ns);
    }

    /// How long to wait before the next batch under a limit of `kibps` (0 for none), in
    /// nanoseconds, or `None` to go on now.
    pub fn wait_ns(&mut self, kibps: u64, now_ns: u64) -> Option<u64> {
        self.set_limit(kibps, now_ns);
        (self.next_ns > now_ns).then(|| self.next_ns - now_ns)
    }
}

/// What the guest did in one controller interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestLoad {
    /// Guest bios that completed in the interval.
    pub completed: u64,
    /// The sum of their latencies, from `map` to `end_io`, in nanoseconds.
    pub latency_ns: u64,
    /// Guest bios in flight at the end of the interval.
    pub in_flight: u64,
}

impl GuestLoad {
    /// Whether the guest did any I/O in the interval.
    pub fn is_busy(&self) -> bool {
        self.completed > 0 || self.in_flight > 0
    }
}

/// Picks the copy's limit from the guest's load (see the module's documentation).
#[derive(Debug, Clone)]
pub struct RateController {
    min_kibps: u64,
    max_kibps: u64,
    /// The limit in force; 0 for none.
    limit_kibps: u64,
    /// The guest's mean latency while the copy ran at the floor, in nanoseconds; 0 until known.
    baseline_ns: u64,
    /// Intervals in a row without guest I/O.
    quiet_ticks: u32,
}

impl RateController {
    /// A controller between `min_kibps` and `max_kibps` (0: no ceiling). It starts at the
    /// ceiling: until the guest shows up, the copy runs as fast as it may.
    pub fn new(min_kibps: u64, max_kibps: u64) -> Self {
        Self {
            min_kibps,
            max_kibps,
            limit_kibps: max_kibps,
            baseline_ns: 0,
            quiet_ticks: QUIET_TICKS,
        }
    }

    /// Whether there is a choice to make: a floor below the ceiling.
    pub fn is_adaptive(&self) -> bool {
        self.min_kibps > 0 && (self.max_kibps == 0 || self.min_kibps < self.max_kibps)
    }

    /// Whether the guest did nothing for [`QUIET_TICKS`] intervals (as at the start).
    pub fn is_guest_idle(&self) -> bool {
        self.quiet_ticks >= QUIET_TICKS
    }

    /// The copy batches to keep in flight: `configured` (the table's `copy_depth`, or a
    /// message's) when there is one; otherwise [`IDLE_COPY_DEPTH`] while the controller sees an
    /// idle guest and [`BUSY_COPY_DEPTH`] while it sees a busy one or does not adapt (`min_rate
    /// 0`: the copy's rate and depth are as configured, whatever the guest does).
    pub fn copy_depth(&self, configured: Option<u32>) -> u32 {
        match configured {
            Some(depth) => depth,
            None if self.is_adaptive() && self.is_guest_idle() => IDLE_COPY_DEPTH,
            None => BUSY_COPY_DEPTH,
        }
    }

    /// Changes the bounds (a message); the limit moves inside them at once. A controller that
    /// starts to adapt while the guest is busy starts at the floor, as when the guest shows up.
    pub fn set_bounds(&mut self, min_kibps: u64, max_kibps: u64) {
        let was_adaptive = self.is_adaptive();
        self.min_kibps = min_kibps;
        self.max_kibps = max_kibps;
        self.limit_kibps = if !self.is_adaptive() || self.is_guest_idle() {
            max_kibps
        } else if !was_adaptive {
            min_kibps
        } else {
            self.clamp(self.limit_kibps)
        };
    }

    /// The limit in force, KiB/s; 0 for none.
    pub fn limit_kibps(&self) -> u64 {
        self.limit_kibps
    }

    /// `kibps` inside the bounds; 0 stands for no limit.
    fn clamp(&self, kibps: u64) -> u64 {
        let kibps = kibps.max(self.min_kibps);
        if self.max_kibps != 0 && (kibps == 0 || kibps > self.max_kibps) {
            self.max_kibps
        } else {
            kibps
        }
    }

    /// Takes one interval's guest load and returns the limit for the next, KiB/s (0: none).
    pub fn tick(&mut self, load: GuestLoad) -> u64 {
        // Whether the guest is idle is followed also while there is nothing to choose, for
        // when a message gives the controller bounds to choose between.
        let was_idle = self.is_guest_idle();
        self.quiet_ticks = if load.is_busy() {
            0
        } else {
            self.quiet_ticks.saturating_add(1)
        };
        if !self.is_adaptive() {
            self.limit_kibps = self.max_kibps;
            return self.limit_kibps;
        }
        if !load.is_busy() {
            if self.is_guest_idle() {
                self.limit_kibps = self.max_kibps;
            }
            return self.limit_kibps;
        }
        if was_idle {
            // The interval's latencies were made beside a copy at the ceiling: not a baseline.
            self.limit_kibps = self.min_kibps;
            return self.limit_kibps;
        }
        if load.completed == 0 {
            // Guest I/O in flight and none completed for a whole interval: it is waiting for
            // something, maybe for the copy.
            self.limit_kibps = self.clamp(self.limit_kibps / 2);
            return self.limit_kibps;
        }
        let latency_ns = load.latency_ns / load.completed;
        if self.limit_kibps == self.min_kibps {
            self.baseline_ns = if self.baseline_ns == 0 {
                latency_ns
            } else {
                (self.baseline_ns * 3 + latency_ns) / 4
            };
        }
        let baseline = self.baseline_ns;
        if latency_ns.saturating_mul(100) > baseline.saturating_mul(LOWER_PERCENT) {
            self.limit_kibps = self.clamp(self.limit_kibps / 2);
        } else if latency_ns.saturating_mul(100) <= baseline.saturating_mul(RAISE_PERCENT) {
            let step = (self.min_kibps / 2).max(MIN_STEP_KIBPS);
            self.limit_kibps = self.clamp(self.limit_kibps.saturating_add(step));
        }
        self.limit_kibps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_depth_is_deep_only_for_an_idle_guest_unless_configured() {
        let mut c = RateController::new(10240, 0);
        assert_eq!(c.copy_depth(None), IDLE_COPY_DEPTH, "no guest yet");
        assert_eq!(c.copy_depth(Some(2)), 2);
        let busy = GuestLoad {
            completed: 100,
            latency_ns: 100 * 50_000,
            in_flight: 16,
        };
        c.tick(busy);
        assert_eq!(c.copy_depth(None), BUSY_COPY_DEPTH, "the guest showed up");
        assert_eq!(c.copy_depth(Some(16)), 16);
        for _ in 0..QUIET_TICKS {
            c.tick(GuestLoad::default());
        }
        assert_eq!(c.copy_depth(None), IDLE_COPY_DEPTH, "idle again");
        let fixed = RateController::new(0, 0);
        assert_eq!(
            fixed.copy_depth(None),
            BUSY_COPY_DEPTH,
            "min_rate 0: as before"
        );
    }

    #[test]
    fn a_controller_turned_on_under_load_starts_at_the_floor() {
        // A floor above the ceiling: nothing to choose, the limit is the ceiling; the guest is
        // busy meanwhile.
        let mut c = RateController::new(2048, 1);
        let busy = GuestLoad {
            completed: 100,
            latency_ns: 100 * 50_000,
            in_flight: 16,
        };
        for _ in 0..5 {
            assert_eq!(c.tick(busy), 1);
        }
        // A max_rate message makes it adaptive: the guest is known to be busy, so the copy
        // starts at the floor with the busy depth, not at the ceiling with 16 batches.
        c.set_bounds(2048, 65536);
        assert_eq!(c.limit_kibps(), 2048);
        assert_eq!(c.copy_depth(None), BUSY_COPY_DEPTH);
        // The same bounds again (every tick sets them) change nothing.
        c.set_bounds(2048, 65536);
        assert_eq!(c.limit_kibps(), 2048);
        // Turned on while the guest is idle: the ceiling.
        let mut c = RateController::new(2048, 1);
        for _ in 0..QUIET_TICKS {
            c.tick(GuestLoad::default());
        }
        c.set_bounds(2048, 65536);
        assert_eq!(c.limit_kibps(), 65536);
        assert_eq!(c.copy_depth(None), IDLE_COPY_DEPTH);
    }

    #[test]
    fn the_meter_reports_the_last_full_second() {
        let mut m = RateMeter::new(0);
        m.add(4 << 20);
        assert_eq!(m.kibps(S / 2), 0, "no full window yet");
        assert_eq!(m.kibps(S), 4096);
        assert_eq!(m.kibps(S + S / 2), 4096, "kept until the next window ends");
        assert_eq!(m.kibps(2 * S), 0);
    }

    #[test]
    fn the_pacer_holds_the_limit_and_a_new_limit_applies_from_then_on() {
        let mut p = Pacer::new();
        assert_eq!(p.wait_ns(0, 0), None, "no limit");
        assert_eq!(p.wait_ns(1024, 0), None, "nothing copied yet");
        // 1 MiB at 1 MiB/s: a second before the next batch.
        p.add(1 << 20, 1024, 0);
        assert_eq!(p.wait_ns(1024, 0), Some(S));
        assert_eq!(p.wait_ns(1024, S / 2), Some(S / 2));
        assert_eq!(p.wait_ns(1024, S), None);
        // Lifting the limit takes effect at once.
        p.add(10 << 20, 1024, S);
        assert_eq!(p.wait_ns(0, S), None);
        p.add(1 << 20, 0, S);
        assert_eq!(
            p.wait_ns(1024, S),
            None,
            "what was copied unlimited costs nothing"
        );
        // Idle time is not saved up: a batch after a long pause waits its own length.
        p.add(1 << 20, 2048, 10 * S);
        assert_eq!(p.wait_ns(2048, 10 * S), Some(S / 2));
        // A debt made at a crawl is paid at the new limit: 2 MiB at 1 KiB/s would take 2048 s;
        // at 2 MiB/s it takes one.
        let mut p = Pacer::new();
        p.add(2 << 20, 1, 0);
        assert_eq!(p.wait_ns(1, 0), Some(2048 * S));
        assert_eq!(p.wait_ns(2048, 0), Some(S));
        assert_eq!(
            p.wait_ns(1024, S / 2),
            Some(S),
            "half paid; the rest at half the rate"
        );
    }

    /// Runs `ticks` intervals of `load` and returns the limits chosen.
    fn run(c: &mut RateController, load: GuestLoad, ticks: usize) -> std::vec::Vec<u64> {
        (0..ticks).map(|_| c.tick(load)).collect()
    }

    const IDLE: GuestLoad = GuestLoad {
        completed: 0,
        latency_ns: 0,
        in_flight: 0,
    };

    /// `completed` bios of `latency_us` each in an interval.
    fn busy(completed: u64, latency_us: u64) -> GuestLoad {
        GuestLoad {
            completed,
            latency_ns: completed * latency_us * 1000,
            in_flight: 16,
        }
    }

    #[test]
    fn an_idle_guest_gets_the_ceiling_and_a_busy_one_the_floor_at_once() {
        let mut c = RateController::new(10240, 0);
        assert_eq!(c.limit_kibps(), 0, "flat out until the guest shows up");
        assert_eq!(run(&mut c, IDLE, 3), [0, 0, 0]);
        assert_eq!(
            c.tick(busy(1000, 100)),
            10240,
            "the guest arrives: the floor at once"
        );
        // The load stops: the ceiling after QUIET_TICKS quiet intervals, not before.
        assert_eq!(c.tick(IDLE), 10240);
        assert_eq!(c.tick(IDLE), 0);
        let mut c = RateController::new(10240, 500_000);
        assert_eq!(c.limit_kibps(), 500_000);
        assert_eq!(c.tick(busy(1000, 100)), 10240);
        assert_eq!(run(&mut c, IDLE, 2), [10240, 500_000]);
    }

    #[test]
    fn a_guest_that_does_not_suffer_lets_the_copy_take_more() {
        let mut c = RateController::new(10240, 0);
        c.tick(busy(1000, 100));
        // Same latency as at the floor: the limit rises a step per interval.
        let limits = run(&mut c, busy(1000, 100), 4);
        assert_eq!(
            limits,
            [
                10240 + 5120,
                10240 + 2 * 5120,
                10240 + 3 * 5120,
                10240 + 4 * 5120
            ]
        );
        // Latency in between the two thresholds: the limit holds.
        assert_eq!(run(&mut c, busy(1000, 115), 2), [30720, 30720]);
        // The guest pays: the limit halves, down to the floor and no lower.
        assert_eq!(run(&mut c, busy(800, 200), 3), [15360, 10240, 10240]);
    }

    #[test]
    fn the_ceiling_bounds_the_rise() {
        let mut c = RateController::new(10240, 20000);
        c.tick(busy(1000, 100));
        assert_eq!(run(&mut c, busy(1000, 100), 3), [15360, 20000, 20000]);
    }

    #[test]
    fn a_stalled_guest_halves_the_limit() {
        let mut c = RateController::new(4096, 0);
        c.tick(busy(1000, 100));
        run(&mut c, busy(1000, 100), 10);
        let before = c.limit_kibps();
        let stalled = GuestLoad {
            completed: 0,
            latency_ns: 0,
            in_flight: 3,
        };
        assert_eq!(c.tick(stalled), before / 2);
    }

    #[test]
    fn without_a_floor_below_the_ceiling_the_limit_is_the_ceiling() {
        for (min, max) in [(0, 0), (0, 4096), (4096, 4096), (8192, 4096)] {
            let mut c = RateController::new(min, max);
            assert!(!c.is_adaptive());
            assert_eq!(run(&mut c, busy(1000, 100), 3), [max, max, max]);
            assert_eq!(run(&mut c, IDLE, 3), [max, max, max]);
        }
    }

    #[test]
    fn new_bounds_move_the_limit_inside_them() {
        let mut c = RateController::new(10240, 0);
        c.tick(busy(1000, 100));
        c.set_bounds(2048, 0);
        assert_eq!(c.limit_kibps(), 10240, "still inside");
        c.set_bounds(20480, 0);
        assert_eq!(c.limit_kibps(), 20480, "raised to the new floor");
        c.set_bounds(20480, 15000);
        assert_eq!(
            c.limit_kibps(),
            15000,
            "a floor above the ceiling: fixed at the ceiling"
        );
        c.set_bounds(0, 0);
        assert_eq!(c.limit_kibps(), 0, "the controller off: no limit");
    }

    /// A synthetic guest whose latency grows with the copy rate, as on a shared device: the
    /// guest alone sees 100 us; every MiB/s of copy adds `cost_us_per_mibps`.
    fn guest_beside_copy(limit_kibps: u64, cost_us_per_mibps: u64) -> GuestLoad {
        let copy_mibps = if limit_kibps == 0 {
            1000
        } else {
            limit_kibps / 1024
        };
        let latency_us = 100 + copy_mibps * cost_us_per_mibps / 10;
        // A closed loop of 16 bios: completions in 100 ms fall as latency grows.
        busy(16 * 100_000 / latency_us, latency_us)
    }

    #[test]
    fn under_a_trace_the_guest_keeps_its_latency_and_the_copy_still_finishes() {
        // A trace: idle 1 s, busy 5 s, idle 1 s, busy 5 s.
        // The copy itself runs at most 400 MiB/s on this device.
        let (floor, cost, device_kibps) = (10240, 3, 400 * 1024);
        let mut c = RateController::new(floor, 0);
        // The KiB copied while the guest was busy, and in how many intervals.
        let (mut loaded_kib, mut loaded_ticks) = (0, 0);
        let mut trace = std::vec::Vec::new();
        for (busy_phase, ticks) in [(false, 10), (true, 50), (false, 10), (true, 50)] {
            for _ in 0..ticks {
                let limit = c.limit_kibps();
                let load = if busy_phase {
                    guest_beside_copy(limit, cost)
                } else {
                    IDLE
                };
                let rate = if limit == 0 {
                    device_kibps
                } else {
                    limit.min(device_kibps)
                };
                if busy_phase {
                    loaded_kib += rate / 10;
                    loaded_ticks += 1;
                }
                trace.push((busy_phase, load, c.tick(load)));
            }
        }
        let latency = |load: GuestLoad| load.latency_ns / load.completed;
        let floor_latency = latency(guest_beside_copy(floor, cost));
        assert_eq!(floor_latency, 100_000 + 10 * 3 * 100);
        for (i, &(busy_phase, load, limit)) in trace.iter().enumerate() {
            assert!(limit == 0 || limit >= floor, "tick {i}: below the floor");
            if busy_phase && i % 60 > 15 {
                // After settling, the guest's latency stays within LOWER_PERCENT of what it
                // has beside a copy at the floor, plus one step of overshoot.
                let latency = latency(load);
                assert!(
                    latency * 100 <= floor_latency * (LOWER_PERCENT + 10),
                    "tick {i}: latency {latency} ns against {floor_latency} ns at the floor"
                );
            }
        }
        // The idle phases ran flat out.
        assert_eq!(trace[9].2, 0);
        assert_eq!(trace[69].2, 0);
        // The bytes copied under load alone, not the idle phases', are bounded on both sides.
        // The copy moved at least its floor all along.
        assert!(
            loaded_kib >= loaded_ticks * floor / 10,
            "{loaded_kib} KiB copied under load, below the floor"
        );
        // The controller learns that the guest arrived at the end of the guest's first
        // interval, which the copy ran at the ceiling; from then on it starts at the floor and
        // rises only while the guest's latency is within RAISE_PERCENT of its baseline, by one
        // step past it at most.
        let raise_kibps = (1..device_kibps / 1024)
            .map(|mibps| mibps * 1024)
            .take_while(|&kibps| {
                latency(guest_beside_copy(kibps, cost)) * 100 <= floor_latency * RAISE_PERCENT
            })
            .last()
            .unwrap();
        let step_kibps = (floor / 2).max(MIN_STEP_KIBPS);
        let arrivals = 2;
        let most_kib = arrivals * device_kibps / 10
            + (loaded_ticks - arrivals) * (raise_kibps + step_kibps) / 10;
        assert!(
            loaded_kib <= most_kib,
            "{loaded_kib} KiB copied under load, more than the guest leaves ({most_kib} KiB)"
        );
        // The controller went above the floor while the guest could take it.
        assert!(trace.iter().any(|&(b, _, l)| b && l > floor));
    }
}

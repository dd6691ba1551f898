// SPDX-License-Identifier: GPL-2.0

//! The copier's pace: the measured copy rate, and the `rate` limit. Times are nanoseconds of a
//! monotonic clock, handed in by the caller.

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
}

/// Holds the copy to `rate` KiB/s: bytes copied since the rate was set may not run ahead of
/// the time since then.
#[derive(Default)]
pub struct Throttle {
    rate: u64,
    start_ns: u64,
    bytes: u64,
}

impl Throttle {
    /// No limit yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts bytes copied.
    pub fn add(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// How long to wait before the next round, or `None` to go on now. A new rate starts a new
    /// account, so lifting a limit takes effect at once.
    pub fn wait_ms(&mut self, rate_kibps: u64, now_ns: u64) -> Option<u32> {
        if rate_kibps != self.rate {
            *self = Self {
                rate: rate_kibps,
                start_ns: now_ns,
                bytes: 0,
            };
        }
        if rate_kibps == 0 {
            return None;
        }
        let bytes_per_s = rate_kibps.saturating_mul(1024);
        let elapsed_ms = now_ns.saturating_sub(self.start_ns) / 1_000_000;
        let allowed = bytes_per_s.saturating_mul(elapsed_ms) / 1000;
        let owed = self.bytes.checked_sub(allowed).filter(|&b| b > 0)?;
        // Sleep in short steps so messages and suspend are seen soon.
        Some((owed.saturating_mul(1000) / bytes_per_s).clamp(1, 100) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

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
    fn the_throttle_holds_the_rate_and_a_new_rate_starts_afresh() {
        let mut t = Throttle::new();
        assert_eq!(t.wait_ms(0, 0), None, "no limit");
        assert_eq!(t.wait_ms(1024, 0), None, "nothing copied yet");
        t.add(1 << 20);
        // 1 MiB at 1 MiB/s: a second owed, in steps of at most 100 ms.
        assert_eq!(t.wait_ms(1024, 0), Some(100));
        assert_eq!(t.wait_ms(1024, S / 2), Some(100));
        assert_eq!(t.wait_ms(1024, S - 5_000_000), Some(5));
        assert_eq!(t.wait_ms(1024, S), None);
        // Lifting the limit takes effect at once, and a new one does not inherit a debt.
        t.add(10 << 20);
        assert_eq!(t.wait_ms(0, S), None);
        assert_eq!(t.wait_ms(1024, S), None);
    }
}

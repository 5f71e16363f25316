//! Time since the trace began, read for every event.
//!
//! A busy trace has a million events a second, and reading the clock costs tens of
//! nanoseconds (25 on a virtual machine here, more with its `Instant` arithmetic): a
//! tenth of the reader's time. The CPU's time stamp counter costs less than half
//! that, so it decides when the clock is read again: once a few microseconds have
//! gone by, or when it went backwards (another CPU's counter). An event is never
//! stamped more than that late, however long the program slept before it (with a
//! counter that runs on while the CPU sleeps, as every x86-64 of the last decade
//! has: `constant_tsc`, `nonstop_tsc`).

use crate::ptrace::time_stamp;
use std::time::Instant;

/// Time stamp counter ticks after which the clock is read again: 16 µs or less for a
/// counter of 1 GHz or more.
const REFRESH_TICKS: u64 = 16_384;

#[derive(Clone, Debug)]
pub struct EventClock {
    started: Instant,
    ns: u64,
    /// The counter when `ns` was read (`None` before the first read).
    at: Option<u64>,
}

impl EventClock {
    pub fn new(started: Instant) -> EventClock {
        EventClock {
            started,
            ns: 0,
            at: None,
        }
    }

    /// Nanoseconds since `started`, at most [`REFRESH_TICKS`] ticks old.
    #[inline]
    pub fn now_ns(&mut self) -> u64 {
        let t = time_stamp();
        let fresh = self.at.is_some_and(|at| t >= at && t - at < REFRESH_TICKS);
        if !fresh {
            self.ns = self.started.elapsed().as_nanos() as u64;
            self.at = Some(t);
        }
        self.ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_pause_is_seen_at_the_next_read() {
        let mut c = EventClock::new(Instant::now());
        let first = c.now_ns();
        std::thread::sleep(Duration::from_millis(20));
        let later = c.now_ns();
        assert!(later >= first + 20_000_000, "{first} then {later}");
    }

    #[test]
    fn reads_in_a_burst_never_go_back_nor_ahead_of_the_real_time() {
        let started = Instant::now();
        let mut c = EventClock::new(started);
        let mut last = 0;
        for _ in 0..100_000 {
            let ns = c.now_ns();
            assert!(ns >= last);
            last = ns;
            // Never later than the real time, nor behind it by much (a 1 GHz counter's
            // refresh, with room for a descheduled moment).
            let real = started.elapsed().as_nanos() as u64;
            assert!(ns <= real);
        }
        let ns = c.now_ns();
        let real = started.elapsed().as_nanos() as u64;
        assert!(real - ns < 50_000_000, "{ns} at {real}");
    }
}

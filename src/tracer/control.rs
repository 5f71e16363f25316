//! What another thread (the live view) asks of the tracer while the program runs:
//! pause and resume it, classify the heap now, arm a site breakpoint, read its
//! memory every second (the mappings view), detach. Commands come through a
//! channel and wake the stop loop (`ptrace::Waiter`); a closed channel means detach.

use super::stopall::AllStopped;
use super::{Command, Tracer};
use std::sync::mpsc::TryRecvError;
use std::time::{Duration, Instant};

/// How often the process's memory is read while the live view shows its census.
const MEMORY_EVERY: Duration = Duration::from_secs(1);

/// The shortest and the longest wait before the ring is read again when nothing
/// else wakes the loop.
const LOOK_MIN: Duration = Duration::from_micros(250);
const LOOK_MAX: Duration = Duration::from_millis(20);

/// The stop loop's timing beyond the target's own stops.
#[derive(Debug, Default)]
pub(super) struct Control {
    /// The threads held by a pause, until the resume.
    pub paused: Option<AllStopped>,
    /// How often the sink gets a tick when nothing stops (the live view's refresh).
    pub tick: Option<Duration>,
    pub next_tick: Option<Instant>,
    /// When the process's memory is read next, while the live view wants it.
    pub next_memory: Option<Instant>,
}

impl Tracer<'_> {
    /// Wakes the stop loop at least every `every` to call `Sink::tick`, so that a
    /// live view goes on refreshing while the program neither allocates nor frees
    /// (and the collector hands new stacks' objects to the symbolizer).
    pub fn set_tick(&mut self, every: Duration) {
        self.control.tick = Some(every);
        self.control.next_tick = Some(Instant::now() + every);
    }

    pub(super) fn is_paused(&self) -> bool {
        self.control.paused.is_some()
    }

    /// When the loop must wake if nothing stops: the end of `--duration` or the next
    /// tick, whichever is first.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        [
            self.deadline,
            self.control.next_tick,
            self.control.next_memory,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// `next_wake`, or sooner: the next look at the ring. It waits longer the
    /// longer the ring stays empty (a program that does not allocate costs memtrace
    /// little), never more than [`LOOK_MAX`]: writers that find the ring full wait
    /// for memtrace to read it.
    pub(super) fn next_wake_or_look(&mut self) -> Option<Instant> {
        let Some(rec) = self.rec.as_mut() else {
            return self.next_wake();
        };
        let idle = rec.idle_looks.saturating_add(1);
        rec.idle_looks = idle;
        let wait = LOOK_MIN.saturating_mul(1 << idle.min(8)).min(LOOK_MAX);
        let look = Instant::now() + wait;
        Some(self.next_wake().map_or(look, |w| w.min(look)))
    }

    /// `next_wake`, or a little later than now: the reader caught up with the
    /// writers, and lets records pile up a moment.
    pub(super) fn next_wake_or_look_soon(&self) -> Option<Instant> {
        let look = Instant::now() + LOOK_MIN;
        Some(self.next_wake().map_or(look, |w| w.min(look)))
    }

    /// The wait ended at `next_wake`: true when it is the end of the trace.
    pub(super) fn on_wake_time(&mut self) -> bool {
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            return true;
        }
        if let Some(every) = self.control.tick {
            self.control.next_tick = Some(now + every);
            self.sink.tick(&self.stacks);
        }
        if self.control.next_memory.is_some_and(|t| now >= t) {
            self.control.next_memory = Some(now + MEMORY_EVERY);
            self.read_memory_now();
        }
        false
    }

    /// The process's memory for the sink, read while it runs: the census of the
    /// live view's mappings view.
    fn read_memory_now(&mut self) {
        let own = self.own_ranges();
        self.tell_memory(&own, Vec::new());
    }

    /// Carries out every command waiting; true when one (or a closed channel) asks
    /// to detach.
    pub(super) fn on_commands(&mut self) -> bool {
        loop {
            let Some(rx) = &self.commands else {
                return false;
            };
            let command = match rx.try_recv() {
                Ok(c) => c,
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => return true,
            };
            match command {
                Command::Detach => return true,
                Command::Pause => self.pause(),
                Command::Resume => self.unpause(),
                Command::Scan => self.scan_on_demand(),
                Command::Break(spec) => self.arm_break(spec),
                Command::WatchMemory(on) => {
                    self.control.next_memory = on.then(|| Instant::now() + MEMORY_EVERY);
                    if on {
                        self.read_memory_now();
                    }
                }
            }
        }
    }

    fn pause(&mut self) {
        if self.control.paused.is_none() {
            self.control.paused = Some(self.stop_all(None));
            // Every call made before the pause, in the view that says "paused".
            self.flush();
            self.sink.paused(true, &self.stacks);
        }
    }

    /// Lets the threads a pause held go on (a detach does this first, too).
    pub(super) fn unpause(&mut self) {
        if let Some(all) = self.control.paused.take() {
            self.resume_all(all);
            self.sink.paused(false, &self.stacks);
        }
    }

    fn scan_on_demand(&mut self) {
        let result = match self.control.paused.take() {
            // Already stopped: scan them where they are.
            Some(all) => {
                let r = self.scan_paused(&all);
                self.control.paused = Some(all);
                r
            }
            None => self.scan_now(),
        };
        if let Err(e) = result {
            eprintln!("memtrace: the leak check could not be made: {e}");
        }
    }
}

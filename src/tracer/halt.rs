//! Stopping every other thread while one is examined, and letting them go again.
//!
//! A minimal primitive for the debugger: each running thread gets PTRACE_INTERRUPT
//! and we wait for that one thread's next stop. Usually that is the interrupt's own
//! stop (PTRACE_EVENT_STOP): the thread is parked, and resumed afterwards. But a
//! thread may have stopped for something else first (it hit an allocator
//! breakpoint, got a signal, exited): that stop is kept in `deferred` and handled by
//! the stop loop afterwards, as if it came from `waitpid` then. The interrupt stays
//! queued for such a thread and shows up later as a PTRACE_EVENT_STOP, which the stop
//! loop already treats as "resume".

use super::Tracer;
use crate::event::Tid;
use crate::ptrace::{self, PtraceEvent, Stop};

impl Tracer<'_> {
    /// Stops every started thread of the program but `tid`; returns those parked
    /// by the interrupt, for [`Tracer::resume_halted`], and how many threads are held
    /// in all (also those with a deferred stop, and new threads whose first stop the
    /// stop loop has not seen: none of them runs until the stop loop resumes it).
    pub(super) fn halt_others(&mut self, tid: Tid) -> (Vec<Tid>, usize) {
        let held = self
            .threads
            .keys()
            .filter(|&&t| t != tid && !self.children.contains_key(&t))
            .count();
        let others: Vec<Tid> = self
            .threads
            .iter()
            .filter(|(&t, th)| t != tid && th.started && !self.children.contains_key(&t))
            .map(|(&t, _)| t)
            .collect();
        let mut parked = Vec::new();
        for t in others {
            // ESRCH: it is exiting; its exit is reported to the stop loop.
            if ptrace::interrupt(t).is_err() {
                continue;
            }
            match ptrace::wait_tid(t) {
                Ok(Stop::Event {
                    event: PtraceEvent::Stop,
                    ..
                }) => parked.push(t),
                Ok(other) => self.deferred.push_back(other),
                Err(_) => {}
            }
        }
        (parked, held)
    }

    /// Resumes the threads [`Tracer::halt_others`] parked.
    pub(super) fn resume_halted(&mut self, parked: &[Tid]) {
        for &t in parked {
            self.resume(t);
        }
    }
}

//! Stopping every thread of the target at once, and letting them go again.
//!
//! A reachability scan needs every thread's registers and a heap that does not move
//! under it; a detach needs every thread stopped to take its breakpoints out. Both
//! use this: [`Tracer::stop_all`] interrupts every running thread (PTRACE_INTERRUPT)
//! and waits until each has stopped, [`Tracer::resume_all`] continues the ones it
//! stopped.
//!
//! A thread may stop for another reason before the interrupt takes (a breakpoint hit
//! that was already on its way, a clone, its exit): it is stopped all the same, and
//! that stop is kept in `Tracer::deferred` to be handled, in order, by the stop loop
//! afterwards. Its interrupt stop then comes later and just resumes it. Stops of
//! threads not waited for (a new thread's first stop, a fork child) are deferred too.

use super::stopwait::StopWait;
use super::Tracer;
use crate::event::Tid;
use crate::ptrace::{self, PtraceEvent, Stop};
use memtrace_arch::Regs;
use std::collections::HashSet;
use std::time::Duration;

/// Threads held stopped by [`Tracer::stop_all`].
#[derive(Debug, Default)]
pub struct AllStopped {
    /// The registers of every stopped thread (the caller's own included).
    pub regs: Vec<(Tid, Regs)>,
    /// Threads whose interrupt stop was consumed: [`Tracer::resume_all`] continues them.
    interrupted: Vec<Tid>,
    /// Threads that did not stop in time (their registers are unknown).
    pub missed: usize,
}

impl Tracer<'_> {
    /// Stops every thread except `already` (a thread stopped by the caller, or None),
    /// and reads every stopped thread's registers. A thread that does not stop within
    /// the stop timeout (one in uninterruptible sleep, or dying in an exit_group) is
    /// given up on (`missed`), as it is at Ctrl-C.
    pub(super) fn stop_all(&mut self, already: Option<Tid>) -> AllStopped {
        let timeout = self.waiter.stop_timeout();
        self.stop_all_within(already, timeout)
    }

    /// [`Tracer::stop_all`], giving up on the threads not stopped after `timeout`.
    pub(super) fn stop_all_within(
        &mut self,
        already: Option<Tid>,
        timeout: Duration,
    ) -> AllStopped {
        let mut waiting: HashSet<Tid> = HashSet::new();
        let mut stopped: Vec<Tid> = already.into_iter().collect();
        let mut listening = 0;
        for (&tid, thread) in &self.threads {
            // A thread in a job-control stop stays there: interrupting it would end
            // that stop when it is resumed. Its registers are not known.
            if thread.listening {
                listening += 1;
                continue;
            }
            if Some(tid) == already {
                continue;
            }
            // Held already by an outer stop (a pause, a debugger stop, and now the scan
            // at exit): stopped, and the outer one will resume it. Interrupting it
            // again would get no answer until then.
            if self.holding.contains(&tid) {
                stopped.push(tid);
                continue;
            }
            if ptrace::interrupt(tid).is_ok() {
                waiting.insert(tid);
            }
        }
        let mut all = AllStopped::default();
        let mut wait = StopWait::new(timeout);
        while !waiting.is_empty() {
            let stop = match self.next_stop(&mut wait, &waiting) {
                Ok(Some(stop)) => stop,
                Ok(None) | Err(_) => break,
            };
            let tid = stop.tid();
            if waiting.contains(&tid) {
                wait.progress();
            }
            match stop {
                Stop::Event {
                    event: PtraceEvent::Stop,
                    signal: libc::SIGTRAP,
                    ..
                } if waiting.contains(&tid) => {
                    // Our interrupt: nobody else needs to see it.
                    waiting.remove(&tid);
                    stopped.push(tid);
                    all.interrupted.push(tid);
                }
                Stop::Exited { .. } | Stop::Killed { .. } => {
                    waiting.remove(&tid);
                    self.deferred.push_back(stop);
                }
                _ => {
                    if waiting.remove(&tid) {
                        stopped.push(tid);
                    }
                    self.deferred.push_back(stop);
                }
            }
        }
        all.missed = waiting.len() + listening;
        self.holding.extend(all.interrupted.iter().copied());
        all.regs = stopped
            .into_iter()
            .filter_map(|tid| ptrace::get_regs(tid).ok().map(|r| (tid, r)))
            .collect();
        all
    }

    /// Continues the threads [`Tracer::stop_all`] interrupted. Threads whose stop was
    /// deferred stay stopped until the stop loop handles it.
    pub(super) fn resume_all(&mut self, all: AllStopped) {
        for tid in all.interrupted {
            self.holding.remove(&tid);
            self.resume(tid);
        }
    }
}

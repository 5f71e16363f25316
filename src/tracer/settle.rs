//! Stopping every thread of the traced process for good: before a detach.
//!
//! Unlike `stopall.rs` (which holds the threads for a moment and hands every other
//! stop back to the stop loop), nothing is handled after this: each thread gets a
//! PTRACE_INTERRUPT, then stops are collected, the ones the stop loop had put aside
//! first, until every thread is in one. A thread may report something else (a
//! breakpoint it hit, a signal, a clone, its exit): each is settled here as that
//! thread's stop, so nothing is lost and nothing is resumed.
//!
//! A thread that does not stop within the stop timeout (or before Ctrl-C) is left
//! out (`unstopped`): it cannot be detached (PTRACE_DETACH needs a stopped thread),
//! but it runs no code of the program's until it stops, since the interrupt is still
//! pending, and it is let go when memtrace's tracing thread ends.

use super::stopwait::StopWait;
use super::{Child, End, Thread, TraceError, Tracer};
use crate::event::Tid;
use crate::ptrace::{self, PtraceEvent, Stop};
use memtrace_arch::{Arch, Native};
use std::collections::{HashMap, HashSet};

/// How one thread is stopped.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Held {
    /// A signal to deliver when the thread goes on.
    pub signal: i32,
    /// At a signal-delivery-stop: only there can PTRACE_DETACH deliver a signal.
    pub at_signal_stop: bool,
    /// At PTRACE_EVENT_EXIT: it is exiting and runs no more code of its own.
    pub exiting: bool,
    /// In a group-stop (job control).
    pub group_stop: bool,
    /// At a clone, fork or vfork-done event: inside that system call (see
    /// `settle_in_place`), not yet fit for an injected one.
    pub in_syscall: bool,
    /// At a vfork event: the call returns only once the child has exec'd or exited.
    pub in_vfork: bool,
}

pub(super) struct Settled {
    pub held: HashMap<Tid, Held>,
    /// The process ended while being stopped.
    pub end: Option<End>,
    /// Threads (and vfork children) that did not stop in time.
    pub unstopped: HashSet<Tid>,
}

impl Tracer<'_> {
    pub(super) fn stop_all_to_detach(&mut self) -> Result<Settled, TraceError> {
        let mut held: HashMap<Tid, Held> = HashMap::new();
        // Fork children already stopped whose fork event has not come stay held: the
        // forking thread is one of those waited for, and its next stop is that event.
        let mut want: HashSet<Tid> = self.threads.keys().copied().collect();
        want.extend(self.children.keys().copied());
        for &tid in &want {
            // ESRCH: it is exiting; its exit comes through waitpid.
            let _ = ptrace::interrupt(tid);
        }
        let mut wait = StopWait::new(self.waiter.stop_timeout());
        while !want.is_empty() {
            let next = match self.deferred.pop_front() {
                Some(stop) => Ok(Some(stop)),
                None => self.next_stop(&mut wait, &want),
            };
            let stop = match next {
                Ok(Some(s)) => s,
                // The time limit passed, or Ctrl-C: the threads still wanted stay out.
                Ok(None) => break,
                Err(e) if e.raw_os_error() == Some(libc::ECHILD) => break,
                Err(e) => return Err(TraceError::Wait(e)),
            };
            if want.contains(&stop.tid()) {
                wait.progress();
            }
            let (tid, h) = match stop {
                Stop::Exited { tid, code } => {
                    if tid == self.pid {
                        return Ok(Settled {
                            held,
                            end: Some(End::Exited(code)),
                            unstopped: HashSet::new(),
                        });
                    }
                    self.forget(tid, &mut want, &mut held);
                    continue;
                }
                Stop::Killed { tid, signal } => {
                    if tid == self.pid {
                        return Ok(Settled {
                            held,
                            end: Some(End::Signaled(signal)),
                            unstopped: HashSet::new(),
                        });
                    }
                    self.forget(tid, &mut want, &mut held);
                    continue;
                }
                _ if matches!(self.children.get(&stop.tid()), Some(Child::ForkPending(_))) => {
                    let child = stop.tid();
                    want.remove(&child);
                    if let Some(Child::ForkPending(swapped)) = self.children.remove(&child) {
                        self.let_child_go(child, &swapped);
                    }
                    continue;
                }
                Stop::Signal { tid, signal } => (tid, self.held_at_signal(tid, signal)),
                Stop::Event { tid, event, signal } => {
                    let mut h = Held::default();
                    match event {
                        PtraceEvent::Stop if trap_pending(tid) => {
                            // It trapped at a breakpoint and was interrupted before the
                            // SIGTRAP was dequeued: detached now, it would die of it.
                            // Let it take the signal (a signal-delivery-stop comes next).
                            let _ = ptrace::cont(tid, 0);
                            continue;
                        }
                        PtraceEvent::Stop => {
                            if !self.threads.contains_key(&tid) && !self.children.contains_key(&tid)
                            {
                                if super::thread_group_of(tid) != Some(self.pid) {
                                    // A fork child whose fork event is still to come:
                                    // cleaned there.
                                    self.early_children.insert(tid);
                                    continue;
                                }
                                self.threads.insert(tid, Thread::default());
                            }
                            h.group_stop = matches!(
                                signal,
                                libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                            );
                        }
                        PtraceEvent::Clone => {
                            h.in_syscall = true;
                            if let Ok(new) = ptrace::event_msg(tid) {
                                let new = new as Tid;
                                if !held.contains_key(&new) && !super::stopwait::reaped(new) {
                                    self.threads.entry(new).or_default();
                                    want.insert(new);
                                }
                            }
                        }
                        PtraceEvent::VforkDone => h.in_syscall = true,
                        PtraceEvent::Fork | PtraceEvent::Vfork => {
                            h.in_syscall = event == PtraceEvent::Fork;
                            h.in_vfork = event == PtraceEvent::Vfork;
                            if let Ok(child) = ptrace::event_msg(tid) {
                                // A vfork child too: it is let go with the rest.
                                let child = child as Tid;
                                let swapped = self.pending_at_fork(tid);
                                if self.early_children.remove(&child) {
                                    self.let_child_go(child, &swapped);
                                } else {
                                    self.children.insert(child, Child::ForkPending(swapped));
                                    want.insert(child);
                                }
                            }
                        }
                        PtraceEvent::Exec => {
                            // A new image: nothing of ours is left in it, and its other
                            // threads are gone.
                            self.images.push(super::ExecImage::of(self.pid));
                            self.forget_image();
                            held.retain(|&t, _| t == tid);
                            want.clear();
                        }
                        PtraceEvent::Exit => h.exiting = true,
                        _ => {}
                    }
                    (tid, h)
                }
            };
            want.remove(&tid);
            held.insert(tid, h);
        }
        // Children whose forking thread died (or did not stop) before its fork event:
        // nothing is known of its pending calls, the breakpoints at least go.
        for child in std::mem::take(&mut self.early_children) {
            self.let_child_go(child, &[]);
        }
        // A fork child that never had its first stop has run none of its code yet:
        // its copy is cleaned in place, and it is let go with the rest.
        let pending: Vec<(Tid, Vec<super::fork::Swapped>)> = want
            .iter()
            .filter_map(|&t| match self.children.get(&t) {
                Some(Child::ForkPending(s)) => Some((t, s.clone())),
                _ => None,
            })
            .collect();
        for (child, swapped) in pending {
            self.clean_fork_child(child, &swapped);
            self.children.remove(&child);
            want.remove(&child);
        }
        Ok(Settled {
            held,
            end: None,
            unstopped: want,
        })
    }

    fn forget(&mut self, tid: Tid, want: &mut HashSet<Tid>, held: &mut HashMap<Tid, Held>) {
        want.remove(&tid);
        held.remove(&tid);
        self.gone(tid);
    }

    /// A signal-delivery-stop while stopping: a trap at one of our breakpoints is
    /// undone (the call will run natively once the original bytes are back), a return
    /// into the trampoline is finished; any other signal is delivered at detach.
    fn held_at_signal(&mut self, tid: Tid, signal: i32) -> Held {
        let mut h = Held {
            signal,
            at_signal_stop: true,
            ..Held::default()
        };
        if signal != libc::SIGTRAP {
            return h;
        }
        let Ok(mut regs) = ptrace::get_regs(tid) else {
            return h;
        };
        let at = Native::pc(&regs).wrapping_sub(Native::TRAP_PC_ADJUST);
        let ours = if self.scratch.is_trampoline(at) {
            self.finish_return(tid, &mut regs)
        } else if self.bps.contains(at) {
            Native::set_pc(&mut regs, at);
            true
        } else {
            false
        };
        if ours {
            h.signal = 0;
            let _ = ptrace::set_regs(tid, &regs);
        }
        h
    }

    /// A fork child with a copy of our breakpoints: clean its copy and let it go.
    fn let_child_go(&mut self, child: Tid, swapped: &[super::fork::Swapped]) {
        self.clean_fork_child(child, swapped);
        self.stats.forks_cleaned += 1;
        let _ = ptrace::detach(child, 0);
    }
}

/// Whether a SIGTRAP is pending for thread `tid` (SigPnd in `/proc/TID/status`: the
/// signals sent to this very thread, as a breakpoint's is).
pub(super) fn trap_pending(tid: Tid) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return false;
    };
    s.lines()
        .find_map(|l| l.strip_prefix("SigPnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTRAP - 1)) != 0)
}

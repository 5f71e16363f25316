//! Attaching to a running process: seize and stop every thread, plant the hooks,
//! resume.
//!
//! Threads are seized one by one from `/proc/PID/task`. A thread created by a thread
//! already seized is traced by the kernel on its own (PTRACE_O_TRACECLONE); one created
//! by a thread not yet seized appears in the next listing, so the listing is read again
//! until it brings no new thread.

use super::stopwait::StopWait;
use super::{Mode, Thread, TraceError, Tracer};
use crate::event::Tid;
use crate::ptrace::{self, Memory, PtraceEvent, Stop, Waiter};
use std::collections::HashSet;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// PTRACE_SEIZE refused (EPERM, ESRCH...): the caller explains why.
    #[error("cannot attach to thread {tid}: {err}")]
    Seize { tid: Tid, err: io::Error },
    #[error("the process ended while memtrace attached")]
    Ended,
    #[error("the process executed a new program while memtrace attached; try again")]
    Exec,
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// The thread ids of process `pid`.
fn tasks(pid: i32) -> io::Result<Vec<Tid>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = e?.file_name().to_str().and_then(|s| s.parse().ok()) {
            v.push(tid);
        }
    }
    Ok(v)
}

/// The tracer of thread `tid`, from `/proc/TID/status` (0: none).
fn tracer_of(tid: Tid) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn is_stop_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

impl<'s> Tracer<'s> {
    /// Attaches to every thread of `pid`, hooks its allocator and lets it go on.
    pub fn attach(
        pid: i32,
        sink: &'s mut dyn super::Sink,
        waiter: Waiter,
        setup: super::Setup,
    ) -> Result<Tracer<'s>, AttachError> {
        let seized = seize_all(pid)?;
        let mem = Memory::open(pid).map_err(|e| TraceError::Setup(e.to_string()))?;
        let mut t = Tracer::new(pid, sink, mem, waiter, Mode::Attach);
        t.apply(setup);
        t.images.push(super::ExecImage::of(pid));
        // Before anything is planted: nothing to restore yet.
        match ptrace::Guardian::start(pid, t.mem.raw_fd()) {
            Ok(g) => t.guardian = Some(g),
            Err(e) => eprintln!(
                "memtrace: warning: no guardian ({e}): if memtrace is killed, the process may die at its next allocation"
            ),
        }
        let held = match t.wait_attached(seized) {
            Ok(h) => h,
            Err(e) => {
                t.let_go();
                return Err(e);
            }
        };
        t.stats.threads_seen = t.threads.len() as u64;
        // Inject into a thread that is neither in a group-stop nor exiting nor inside
        // a vfork; best one that is not inside a system call of its own (a thread
        // inside a clone or fork is let out of it first).
        let inject = t
            .threads
            .iter()
            .filter(|(_, thread)| thread.started)
            .map(|(&tid, _)| tid)
            .filter(|tid| {
                !held.group_stopped.contains(tid)
                    && !held.exiting.contains(tid)
                    && !held.in_vfork.contains(tid)
            })
            .min_by_key(|&tid| (held.in_syscall.contains(&tid), tid != pid, tid));
        let Some(inject) = inject else {
            t.let_go();
            return Err(TraceError::Setup(
                "every thread is stopped (job control), exiting or unstoppable: nothing can run the setup"
                    .into(),
            )
            .into());
        };
        if held.in_syscall.contains(&inject) {
            if let Err(e) = t.settle_in_place(inject) {
                t.let_go();
                return Err(e.into());
            }
        }
        if let Err(e) = t.setup_hooks(inject) {
            // Whatever was planted is taken out again: the process must not be harmed.
            let _ = t.detach_without_scan();
            return Err(e.into());
        }
        t.note_calls_in_flight();
        let tids: Vec<Tid> = t.threads.keys().copied().collect();
        // Every thread known to the recorder, then the entries jump to their thunks
        // (each thread stepped out of the bytes that change first).
        for &tid in &tids {
            if let Ok(regs) = ptrace::get_regs(tid) {
                t.register_thread(tid, &regs);
            }
        }
        let running: Vec<Tid> = tids
            .iter()
            .copied()
            .filter(|tid| !held.group_stopped.contains(tid) && !held.exiting.contains(tid))
            .collect();
        t.set_inline(true, &running);
        for tid in tids {
            if held.group_stopped.contains(&tid) {
                // Stopped by job control before we came: it stays stopped.
                let _ = ptrace::listen(tid);
            } else {
                t.resume(tid);
            }
        }
        Ok(t)
    }

    /// Waits for the first stop of every seized thread; threads created meanwhile are
    /// waited for too.
    fn wait_attached(&mut self, mut waiting: HashSet<Tid>) -> Result<Held, AttachError> {
        let mut held = Held::default();
        let mut known = waiting.clone();
        // Fork children let go at a first stop that came before their fork event.
        let mut early_children: HashSet<Tid> = HashSet::new();
        let mut wait = StopWait::new(self.waiter.stop_timeout());
        while !waiting.is_empty() {
            let Some(stop) = self
                .next_stop(&mut wait, &waiting)
                .map_err(TraceError::Wait)?
            else {
                // Time limit or Ctrl-C: the threads that have not stopped are traced
                // all the same. They run none of the program's code until they stop
                // (the interrupt is pending), and that first stop resumes them.
                eprintln!(
                    "memtrace: {} did not stop: traced from when it does",
                    super::stopwait::threads(&waiting)
                );
                for &tid in &waiting {
                    self.threads.insert(tid, Thread::default());
                }
                break;
            };
            if waiting.contains(&stop.tid()) {
                wait.progress();
            }
            match stop {
                Stop::Exited { tid, .. } | Stop::Killed { tid, .. } => {
                    if tid == self.pid {
                        return Err(AttachError::Ended);
                    }
                    waiting.remove(&tid);
                    self.threads.remove(&tid);
                    continue;
                }
                Stop::Event {
                    tid,
                    event: PtraceEvent::Stop,
                    ..
                } if self.children.contains_key(&tid) => {
                    // A child forked during attach: nothing planted yet, let it go.
                    self.children.remove(&tid);
                    let _ = ptrace::detach(tid, 0);
                    continue;
                }
                Stop::Event { tid, .. } | Stop::Signal { tid, .. }
                    if !known.contains(&tid)
                        && super::thread_group_of(tid).is_some_and(|g| g != self.pid) =>
                {
                    // The same, stopped before its parent's fork event came: not a
                    // thread of the process (taken for one, it would be resumed as
                    // one, planted in, injected into).
                    let _ = ptrace::detach(tid, 0);
                    early_children.insert(tid);
                    continue;
                }
                Stop::Event { tid, event, signal } => match event {
                    PtraceEvent::Stop if is_stop_signal(signal) => {
                        held.group_stopped.insert(tid);
                    }
                    PtraceEvent::Clone => {
                        held.in_syscall.insert(tid);
                        if let Ok(new) = ptrace::event_msg(tid) {
                            let new = new as Tid;
                            if known.insert(new) && !super::stopwait::reaped(new) {
                                waiting.insert(new);
                            }
                        }
                    }
                    PtraceEvent::VforkDone => {
                        held.in_syscall.insert(tid);
                    }
                    PtraceEvent::Fork | PtraceEvent::Vfork => {
                        if event == PtraceEvent::Fork {
                            held.in_syscall.insert(tid);
                        } else {
                            held.in_vfork.insert(tid);
                        }
                        if let Ok(child) = ptrace::event_msg(tid) {
                            if !early_children.remove(&(child as Tid)) {
                                self.children
                                    .insert(child as Tid, super::Child::ForkPending(Vec::new()));
                            }
                        }
                    }
                    PtraceEvent::Exit => {
                        held.exiting.insert(tid);
                    }
                    PtraceEvent::Exec => return Err(AttachError::Exec),
                    _ => {}
                },
                Stop::Signal { tid, signal } => {
                    // Delivered when the thread is resumed, not swallowed.
                    self.held_signals.insert(tid, signal);
                }
            }
            let tid = stop.tid();
            // A thread cloned by a seized one may stop before its clone event.
            known.insert(tid);
            waiting.remove(&tid);
            self.threads.insert(
                tid,
                Thread {
                    started: true,
                    ..Thread::default()
                },
            );
        }
        Ok(held)
    }

    /// Detaches every thread without touching anything (nothing was planted).
    fn let_go(&mut self) {
        if let Some(g) = &self.guardian {
            g.disarm();
        }
        let tids: Vec<Tid> = self.threads.keys().copied().collect();
        for tid in tids {
            let sig = self.held_signals.remove(&tid).unwrap_or(0);
            let _ = ptrace::detach(tid, sig);
        }
    }
}

/// Threads of the attached process found stopped in particular states.
#[derive(Debug, Default)]
struct Held {
    group_stopped: HashSet<Tid>,
    exiting: HashSet<Tid>,
    /// At a clone, fork or vfork-done event: inside that system call.
    in_syscall: HashSet<Tid>,
    /// At a vfork event: inside a call that returns once the child exec'd or exited.
    in_vfork: HashSet<Tid>,
}

/// Seizes and interrupts every thread of `pid`, reading the thread list until it is
/// stable. Returns the threads seized.
fn seize_all(pid: i32) -> Result<HashSet<Tid>, AttachError> {
    // TracerPid names the tracing thread: with the live view that is not memtrace's
    // main thread.
    let me = ptrace::gettid();
    let mut seized = HashSet::new();
    loop {
        let list = tasks(pid).map_err(|err| AttachError::Seize { tid: pid, err })?;
        let new: Vec<Tid> = list.into_iter().filter(|t| !seized.contains(t)).collect();
        if new.is_empty() {
            return Ok(seized);
        }
        for tid in new {
            match ptrace::seize(tid, ptrace::ATTACH_OPTIONS) {
                Ok(()) => {
                    // ESRCH: it exited meanwhile; its exit is reported.
                    let _ = ptrace::interrupt(tid);
                    seized.insert(tid);
                }
                // Already ours: cloned by a thread we seized (its stop is coming).
                Err(_) if !seized.is_empty() && tracer_of(tid) == Some(me) => {
                    seized.insert(tid);
                }
                // Gone meanwhile, or dead and not yet reaped (the kernel refuses a
                // thread that has exited).
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) && tid != pid => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EPERM)
                        && tid != pid
                        && super::stopwait::dead(tid) => {}
                Err(err) => {
                    for &t in &seized {
                        let _ = ptrace::detach(t, 0);
                    }
                    return Err(AttachError::Seize { tid, err });
                }
            }
        }
    }
}

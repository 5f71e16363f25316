//! The debugger's [`Target`]: one stopped thread, driven instruction by instruction
//! while the others stay stopped, with memtrace's machinery kept out of sight.
//!
//! - A step from an allocator breakpoint's address runs the hook's entry logic (so
//!   the call is recorded, its return stub set) and then the displaced instruction in
//!   its out-of-line slot; the pc is mapped back to the original code after it.
//! - A step that lands in a return stub runs the stub through (four instructions:
//!   store the value, set done, jump to the real return address); one that lands on
//!   the trampoline takes the return there. The user never sees memtrace's pages.
//! - Code read for display has the original bytes under memtrace's breakpoints.
//! - Runs to an address (`next`, `finish`) plant a temporary int3 there; allocator
//!   hooks hit on the way are handled as the stop loop would, without resuming.

use super::scratch::BpKind;
use super::Tracer;
use crate::debug::{DebugError, Progress, Target};
use crate::event::Tid;
use crate::ptrace::{self, PtraceEvent, Stop};
use crate::unwind::Start;
use memtrace_arch::{Arch, Native, Regs};

/// How a thread was set going, to set it going the same way after an unrelated stop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Go {
    Step,
    Cont,
}

pub(super) struct Live<'a, 's> {
    pub t: &'a mut Tracer<'s>,
    pub tid: Tid,
    pub regs: Regs,
    /// The allocator breakpoint at the pc whose entry logic already ran (the stop at
    /// a site breakpoint): leaving it must not run it again.
    pub entered: Option<u64>,
}

impl Live<'_, '_> {
    fn err(&self, err: std::io::Error) -> DebugError {
        DebugError::Ptrace { tid: self.tid, err }
    }

    fn set_regs(&self) -> Result<(), DebugError> {
        ptrace::set_regs(self.tid, &self.regs).map_err(|e| self.err(e))
    }

    fn pc(&self) -> u64 {
        Native::pc(&self.regs)
    }

    /// A breakpoint's work, as `Tracer::on_trap` does it, without resuming.
    fn enter(&mut self, kind: BpKind) {
        let (t, tid) = (&mut *self.t, self.tid);
        t.drain_all();
        t.on_breakpoint(tid, kind, &mut self.regs);
    }

    /// At a breakpoint whose entry already ran: go to its slot instead.
    fn leave_entered(&mut self) -> Result<(), DebugError> {
        let pc = self.pc();
        if self.entered.take() == Some(pc) {
            if let Some(bp) = self.t.bps.get(pc) {
                Native::set_pc(&mut self.regs, bp.ool);
                self.set_regs()?;
            }
        }
        Ok(())
    }

    /// Sets the thread going and waits for it to stop with a trap.
    fn go(&mut self, how: Go) -> Result<Progress, DebugError> {
        let tid = self.tid;
        let start = |how| match how {
            Go::Step => ptrace::single_step(tid, 0),
            Go::Cont => ptrace::cont(tid, 0),
        };
        start(how).map_err(|e| self.err(e))?;
        loop {
            let stop = ptrace::wait_tid(tid).map_err(|e| self.err(e))?;
            match stop {
                Stop::Signal {
                    signal: libc::SIGTRAP,
                    ..
                } => {
                    self.regs = ptrace::get_regs(tid).map_err(|e| self.err(e))?;
                    return Ok(Progress::Stopped);
                }
                // The program's own signal: held, delivered when it runs on.
                Stop::Signal { signal, .. } => {
                    // One held signal per thread: a second one (rare) takes its place,
                    // as a standard signal already pending would be merged.
                    self.t.held_signals.insert(tid, signal);
                }
                Stop::Event {
                    event: PtraceEvent::Clone,
                    ..
                } => {
                    if let Ok(new) = ptrace::event_msg(tid) {
                        self.t.stats.threads_seen += 1;
                        // Its first stop waits in the kernel for the stop loop (unless
                        // its whole life is over already).
                        if !super::stopwait::reaped(new as Tid) {
                            self.t.threads.entry(new as Tid).or_default();
                        }
                    }
                }
                // As the stop loop does: harvest, and the end-of-process scan if
                // this exit ends the process.
                Stop::Event {
                    event: PtraceEvent::Exit,
                    ..
                } => {
                    self.t.drain_all();
                    self.t.on_thread_exit(tid);
                    self.t.release_thread_slot(tid);
                }
                Stop::Event {
                    event: PtraceEvent::Stop,
                    ..
                } => {}
                Stop::Event { event, .. } => {
                    self.t.deferred.push_back(stop);
                    return Ok(Progress::Gone(format!(
                        "thread {tid} stopped for {event:?} (fork or exec): the debugger lets it go"
                    )));
                }
                Stop::Exited { code, .. } => {
                    self.t.deferred.push_back(stop);
                    return Ok(Progress::Gone(format!(
                        "thread {tid} exited (status {code})"
                    )));
                }
                Stop::Killed { signal, .. } => {
                    self.t.deferred.push_back(stop);
                    return Ok(Progress::Gone(format!(
                        "thread {tid} was killed by {}",
                        crate::report::signal_name(signal)
                    )));
                }
            }
            start(how).map_err(|e| self.err(e))?;
        }
    }

    /// After a step: out of the return stub or the trampoline, to the real return
    /// address.
    fn leave_memtrace_pages(&mut self) -> Result<Progress, DebugError> {
        // The stub is a few dozen instructions; a shadow stack full of abandoned
        // frames makes it loop a little more.
        for _ in 0..2000 {
            let pc = self.pc();
            let stub = self.t.rec.as_ref().map(|r| r.stub);
            match stub {
                Some((start, _)) if pc == start => {
                    if !self.t.finish_stub_return(self.tid, &mut self.regs) {
                        break;
                    }
                    self.set_regs()?;
                }
                Some((start, end)) if start < pc && pc < end => {
                    if let p @ Progress::Gone(_) = self.go(Go::Step)? {
                        return Ok(p);
                    }
                }
                _ if self.t.scratch.is_trampoline(pc) => {
                    if !self.t.finish_return(self.tid, &mut self.regs) {
                        break;
                    }
                    self.set_regs()?;
                }
                _ => break,
            }
        }
        Ok(Progress::Stopped)
    }

    /// Readies the thread to run on (the session is over): out of an entry already
    /// taken, its registers written. The caller resumes it.
    pub fn prepare_resume(&mut self) {
        if self.leave_entered().is_ok() {
            let _ = self.set_regs();
        }
    }

    fn run_to_planted(
        &mut self,
        addr: u64,
        min_sp: u64,
        planted: Option<&[u8]>,
    ) -> Result<Progress, DebugError> {
        loop {
            self.leave_entered()?;
            if let p @ Progress::Gone(_) = self.go(Go::Cont)? {
                return Ok(p);
            }
            let at = self.pc().wrapping_sub(Native::TRAP_PC_ADJUST);
            if at == addr {
                Native::set_pc(&mut self.regs, addr);
                self.set_regs()?;
                if Native::sp(&self.regs) >= min_sp {
                    self.t.drain_all();
                    return Ok(Progress::Stopped);
                }
                // A deeper call returning to the same place (recursion): past it.
                let p = match planted {
                    Some(orig) => {
                        let _ = self.t.mem.write(addr, orig);
                        let p = self.go(Go::Step);
                        let _ = self.t.mem.write(addr, Native::BREAKPOINT);
                        p?
                    }
                    None => self.step_instruction()?,
                };
                if let Progress::Gone(_) = p {
                    return Ok(p);
                }
                continue;
            }
            if let Some(bp) = self.t.bps.get(at).cloned() {
                Native::set_pc(&mut self.regs, at);
                self.enter(bp.kind);
                Native::set_pc(&mut self.regs, bp.ool);
                self.set_regs()?;
            } else if self.t.scratch.is_trampoline(at) {
                if self.t.finish_return(self.tid, &mut self.regs) {
                    self.set_regs()?;
                }
            } else {
                // A trap of the program's own: delivered when it runs on.
                self.t.held_signals.insert(self.tid, libc::SIGTRAP);
            }
        }
    }
}

impl Target for Live<'_, '_> {
    fn tid(&self) -> i32 {
        self.tid
    }

    fn regs(&self) -> Regs {
        self.regs
    }

    fn read(&mut self, addr: u64, buf: &mut [u8]) -> usize {
        let n = self.t.mem.read_partial(addr, buf).unwrap_or(0);
        let end = addr + n as u64;
        for (at, bp) in self.t.bps.iter() {
            for (i, &b) in bp.original.iter().enumerate() {
                let a = at + i as u64;
                if a >= addr && a < end {
                    buf[(a - addr) as usize] = b;
                }
            }
        }
        n
    }

    fn step_instruction(&mut self) -> Result<Progress, DebugError> {
        let pc = self.pc();
        if let Some(bp) = self.t.bps.get(pc).cloned() {
            if self.entered.take() != Some(pc) {
                self.enter(bp.kind);
            }
            Native::set_pc(&mut self.regs, bp.ool);
            self.set_regs()?;
            if let p @ Progress::Gone(_) = self.go(Go::Step)? {
                return Ok(p);
            }
            if self.pc() == bp.ool + bp.ool_len {
                Native::set_pc(&mut self.regs, bp.resume);
                self.set_regs()?;
            }
        } else if let p @ Progress::Gone(_) = self.go(Go::Step)? {
            return Ok(p);
        }
        let p = self.leave_memtrace_pages()?;
        self.t.drain_all();
        Ok(p)
    }

    fn run_to(&mut self, addr: u64, min_sp: u64) -> Result<Progress, DebugError> {
        if self.t.bps.contains(addr) {
            // memtrace's own breakpoint is there already.
            return self.run_to_planted(addr, min_sp, None);
        }
        let mut orig = vec![0u8; Native::BREAKPOINT.len()];
        self.t.mem.read(addr, &mut orig).map_err(|e| self.err(e))?;
        self.t
            .mem
            .write(addr, Native::BREAKPOINT)
            .map_err(|e| self.err(e))?;
        let r = self.run_to_planted(addr, min_sp, Some(&orig));
        // Other threads are stopped: nobody ran over the temporary int3 but this one.
        let _ = self.t.mem.write(addr, &orig);
        r
    }

    fn backtrace(&mut self, depth: usize) -> Vec<u64> {
        let regs = self.regs;
        // Return addresses memtrace swapped for its stub, put back for the unwinder.
        let swapped = self.t.swapped_returns(self.tid, &regs);
        let start = Start {
            return_address: Native::pc(&regs),
            sp: Native::sp(&regs),
            frame_pointer: Native::frame_pointer(&regs),
            stack_top: if self.tid == self.t.pid {
                self.t.image.stack_top
            } else {
                0
            },
        };
        let Tracer { walker, mem, .. } = &mut *self.t;
        let mut read = |addr: u64, buf: &mut [u8]| {
            let n = mem.read_vm_partial(addr, buf).unwrap_or(0);
            for &(slot, real) in &swapped {
                if slot >= addr && slot + 8 <= addr + n as u64 {
                    let i = (slot - addr) as usize;
                    buf[i..i + 8].copy_from_slice(&real.to_le_bytes());
                }
            }
            n
        };
        let mut out = Vec::new();
        walker.walk_from_pc(start, &mut read, depth, &mut out);
        out
    }
}

//! Detaching: leave the process exactly as it was, and let it run on untraced.
//!
//! First the recorder is told to let every call through (its thunks and stub then
//! record nothing and no writer waits for room). Then, with every thread stopped: the
//! records so far are read; a thread whose pc is in memtrace's code (a thunk, the
//! displaced instructions, an out-of-line slot, the return stub, the trampoline) is
//! moved to the program's own code; every swapped return address on a stack gets
//! its real value back; every breakpoint and entry jump gets its original bytes; the
//! scratch pages and the recorder's memory are unmapped with an injected munmap;
//! then each thread is detached with any signal it was about to receive.

use super::settle::Held;
use super::{End, TraceError, Tracer};
use crate::event::Tid;
use crate::ptrace::{self, Stop};
use memtrace_arch::{Arch, Native};
use std::collections::{HashMap, HashSet};

/// At most this many single steps to leave an out-of-line slot or displaced code
/// (a few relocated instructions, then the jump back).
const MAX_STEPS: usize = 32;
/// At most this many to leave the return stub (a few dozen instructions, more with
/// abandoned frames to pop).
const MAX_STUB_STEPS: usize = 2000;

impl Tracer<'_> {
    /// When the detach could not stop every thread: what it left, in one line (the
    /// process runs on; memtrace should exit non-zero).
    pub fn left_behind(&self) -> Option<&str> {
        self.left_behind.as_deref()
    }

    /// After a detach that left a launched program's thread traced: waits for the
    /// program's end here, on the tracing thread, letting such a thread go at its
    /// first stop. A launched program has PTRACE_O_EXITKILL: were this thread to end
    /// first (the live view's tracer thread does), the kernel would kill it. Returns
    /// the program's exit status as a shell gives it, or None when there was nothing
    /// to wait for.
    pub fn wait_for_left_behind(&mut self) -> Option<i32> {
        if self.mode != super::Mode::Launch || self.left_behind.is_none() {
            return None;
        }
        match ptrace::wait_exit_letting_go(self.pid) {
            Ok(Stop::Exited { code, .. }) => Some(code),
            Ok(Stop::Killed { signal, .. }) => Some(128 + signal),
            _ => Some(1),
        }
    }

    /// Restores everything and detaches from every thread. Returns how the trace
    /// ended: detached, or the process's own end if it came first.
    pub(super) fn detach(&mut self) -> Result<End, TraceError> {
        // Held by a pause: let them go, to stop them again below for good.
        self.unpause();
        // The heap as it is now, classified: the report's leak kinds (the end of
        // `--duration`, a signal, the live view's q). A scan that cannot be made
        // leaves the leaks unclassified; the detach goes on.
        if let Err(e) = self.scan_now() {
            self.scan_failed(e);
        }
        self.detach_without_scan()
    }

    /// The detach itself (also when an attach fails half-way: nothing to report).
    pub(super) fn detach_without_scan(&mut self) -> Result<End, TraceError> {
        // From now on the thunks and the stub let every call through unrecorded, and
        // writers waiting for room in the ring leave: no thread stays in memtrace's
        // code for long.
        if let Some(r) = &self.rec {
            r.ring.set_flags(memtrace_arch::recorder::FLAG_BYPASS);
        }
        let mut all = self.stop_all_to_detach()?;
        if let Some(end) = all.end {
            if let Some(g) = &self.guardian {
                g.disarm();
            }
            return Ok(end);
        }
        self.flush();
        let tids: Vec<Tid> = all.held.keys().copied().collect();
        for &tid in &tids {
            if let Some(h) = all.held.get_mut(&tid) {
                self.leave_our_code(tid, h);
            }
        }
        // A thread that did not stop runs none of the program's code until it does
        // (the interrupt is pending): its stack can be written all the same.
        for &tid in tids.iter().chain(&all.unstopped) {
            self.restore_return_addresses(tid);
        }
        for (addr, bp) in self.bps.iter() {
            if bp.original.is_empty() {
                continue; // a thunk's own trap: unmapped with it
            }
            if let Err(e) = self.mem.write(addr, &bp.original) {
                eprintln!("memtrace: warning: cannot restore the code at {addr:#x}: {e}");
            }
        }
        for s in self.rec.iter().flat_map(|r| r.sites.iter()) {
            if let Err(e) = self.mem.write(s.entry, &s.original) {
                eprintln!(
                    "memtrace: warning: cannot restore the code at {:#x}: {e}",
                    s.entry
                );
            }
        }
        // A thread let out of a thunk or the stub may have committed its record.
        self.flush();
        if all.unstopped.is_empty() {
            self.unmap_ours(&mut all.held);
        } else {
            // Where such a thread will go on is unknown (a signal handler's saved
            // context may point into a slot), and an injected munmap could wait
            // behind it (a page fault on a hung file holds the address space's lock):
            // the pages stay.
            self.left_behind = Some(self.left_behind_message(&all.unstopped));
        }
        for (tid, h) in all.held {
            let sig = if h.signal != 0 {
                h.signal
            } else {
                self.held_signals.remove(&tid).unwrap_or(0)
            };
            if h.at_signal_stop {
                let _ = ptrace::detach(tid, sig);
            } else {
                let _ = ptrace::detach(tid, 0);
                if sig != 0 {
                    // Not at a signal-delivery-stop, where detach could deliver it:
                    // send it again, as the kernel would have delivered it.
                    let _ = ptrace::tgkill(self.pid, tid, sig);
                }
            }
        }
        if let Some(g) = &self.guardian {
            g.disarm();
        }
        self.threads.clear();
        self.children.clear();
        Ok(End::Detached)
    }

    /// What a detach that could not stop every thread left, in one line.
    fn left_behind_message(&self, unstopped: &HashSet<Tid>) -> String {
        let bytes: u64 = self
            .scratch
            .regions()
            .map(|(_, len)| len)
            .chain(
                self.rec
                    .iter()
                    .flat_map(|r| r.ring.addrs.ranges())
                    .map(|(s, e)| e - s),
            )
            .sum();
        let when = match self.mode {
            super::Mode::Attach => "when memtrace exits",
            super::Mode::Launch => "as soon as it stops",
        };
        format!(
            "{} did not stop, so the detach is incomplete: it is let go {when}; the original code is back, but memtrace's pages ({} KiB, unused) stay mapped in the process",
            super::stopwait::threads(unstopped),
            bytes / 1024
        )
    }

    /// Moves a thread whose pc is in memtrace's code back to the program's.
    fn leave_our_code(&mut self, tid: Tid, h: &mut Held) {
        let Ok(mut regs) = ptrace::get_regs(tid) else {
            return;
        };
        let pc = Native::pc(&regs);
        let stub = self.rec.as_ref().map(|r| r.stub);
        let site = self
            .rec
            .as_ref()
            .and_then(|r| r.site_at(pc))
            .map(|s| (s.entry, s.thunk, s.displaced, s.slow_trap));
        if let Some((start, end)) = stub.filter(|&(s, e)| s <= pc && pc < e) {
            if pc != start {
                // Past its first instruction: let it finish (it records nothing now).
                self.run_out_of(tid, h, start, end);
                return;
            }
            if !self.finish_stub_return(tid, &mut regs) {
                return;
            }
        } else if self.scratch.is_trampoline(pc) {
            // About to trap at the trampoline: that is the call's return.
            if !self.finish_return(tid, &mut regs) {
                return;
            }
        } else if let Some((entry, thunk, displaced, slow)) = site {
            if pc == slow || pc == displaced || pc == thunk {
                // Registers as at the function's entry: run the original code.
                Native::set_pc(&mut regs, entry);
            } else if pc < displaced {
                // Inside the thunk: run it to its end (the displaced code, or the
                // slow path's trap), then start the function over natively.
                match self.run_to_trap(tid, h, &[displaced, slow]) {
                    Some(at) if at == displaced || at == slow => {
                        let Ok(r) = ptrace::get_regs(tid) else { return };
                        regs = r;
                        Native::set_pc(&mut regs, entry);
                    }
                    _ => return,
                }
            } else {
                self.step_out_of_scratch(tid, h);
                return;
            }
        } else if self.scratch.contains(pc) {
            let origin = self.bps.iter().find(|(_, bp)| bp.ool == pc).map(|(a, _)| a);
            match origin {
                // The displaced instruction has not run: run the original one.
                Some(addr) => Native::set_pc(&mut regs, addr),
                None => {
                    self.step_out_of_scratch(tid, h);
                    return;
                }
            }
        } else {
            return;
        }
        let _ = ptrace::set_regs(tid, &regs);
    }

    /// Single-steps a thread until its pc leaves `[start, end)`.
    fn run_out_of(&mut self, tid: Tid, h: &mut Held, start: u64, end: u64) {
        for _ in 0..MAX_STUB_STEPS {
            if !self.step_once(tid, h) {
                return;
            }
            match ptrace::get_regs(tid) {
                Ok(r) if !(start <= Native::pc(&r) && Native::pc(&r) < end) => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
        eprintln!("memtrace: warning: thread {tid} did not leave the return stub");
    }

    /// Runs one thread (the others stay stopped) until it traps at one of `at`,
    /// planted for the while; returns where. Signals that come meanwhile are held.
    fn run_to_trap(&mut self, tid: Tid, h: &mut Held, at: &[u64]) -> Option<u64> {
        let mut saved = Vec::new();
        for &a in at {
            let mut b = [0u8; 1];
            if self.mem.read(a, &mut b).is_ok() && b != *Native::BREAKPOINT {
                let _ = self.mem.write(a, Native::BREAKPOINT);
                saved.push((a, b));
            }
        }
        let mut stopped = None;
        if ptrace::cont(tid, 0).is_ok() {
            loop {
                match ptrace::wait_tid(tid) {
                    Ok(Stop::Signal {
                        signal: libc::SIGTRAP,
                        ..
                    }) => {
                        stopped = ptrace::get_regs(tid)
                            .ok()
                            .map(|r| Native::pc(&r).wrapping_sub(Native::TRAP_PC_ADJUST));
                        break;
                    }
                    Ok(Stop::Signal { signal, .. }) => {
                        if h.signal == 0 {
                            h.signal = signal;
                        }
                        if ptrace::cont(tid, 0).is_err() {
                            break;
                        }
                    }
                    Ok(Stop::Event { .. }) => {
                        if ptrace::cont(tid, 0).is_err() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
        for (a, b) in saved {
            let _ = self.mem.write(a, &b);
        }
        h.at_signal_stop = true;
        stopped.filter(|p| at.contains(p))
    }

    fn step_once(&mut self, tid: Tid, h: &mut Held) -> bool {
        if ptrace::single_step(tid, 0).is_err() {
            return false;
        }
        match ptrace::wait_tid(tid) {
            Ok(Stop::Signal { signal, .. }) => {
                h.at_signal_stop = true;
                if signal != libc::SIGTRAP && h.signal == 0 {
                    h.signal = signal;
                }
                true
            }
            Ok(Stop::Event { .. }) => true,
            _ => false,
        }
    }

    /// Single-steps a thread until its pc leaves the scratch pages (it is past the
    /// relocated instructions, at the jump back).
    fn step_out_of_scratch(&mut self, tid: Tid, h: &mut Held) {
        for _ in 0..MAX_STEPS {
            if !self.step_once(tid, h) {
                return;
            }
            match ptrace::get_regs(tid) {
                Ok(r) if !self.scratch.contains(Native::pc(&r)) => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
        eprintln!("memtrace: warning: thread {tid} did not leave the scratch page");
    }

    /// Puts the real return address back in place of the stub's or the trampoline's
    /// address wherever this thread's pending calls still have one on its stack.
    /// Works on a thread that could not be stopped too: its shadow stack is found by
    /// the thread pointer it was registered with, and its stack is memory.
    fn restore_return_addresses(&mut self, tid: Tid) {
        let mut regs = ptrace::get_regs(tid).ok();
        let stub = self.rec.as_ref().map_or(0, |r| r.ring.addrs.ret_stub);
        let tramp = self.scratch.trampoline().unwrap_or(0);
        let tp = match (&regs, self.threads.get(&tid)) {
            (Some(r), _) => Native::thread_pointer(r),
            (None, Some(t)) => t.tp,
            (None, None) => 0,
        };
        let shadow = self
            .rec
            .as_ref()
            .map(|r| r.ring.shadow(tp))
            .unwrap_or_default();
        let frames = self
            .threads
            .get_mut(&tid)
            .map(|t| std::mem::take(&mut t.frames))
            .unwrap_or_default();
        let mut scratch_regs = memtrace_arch::Regs::default();
        let r = regs.as_mut().unwrap_or(&mut scratch_regs);
        for f in shadow.iter().rev() {
            // Only if the slot still holds our address: a frame left by longjmp may
            // have had its slot reused since.
            self.put_back(r, f.sp, stub, f.ret);
        }
        for f in frames.iter().rev() {
            self.put_back(r, f.entry_sp, tramp, f.real_ret);
        }
        if let Some(rec) = self.rec.as_mut() {
            rec.ring.truncate_shadow(tp, 0);
        }
        if let Some(r) = regs {
            let _ = ptrace::set_regs(tid, &r);
        }
    }

    /// Unmaps the scratch regions and the recorder's memory, with munmap injected
    /// into a stopped thread. The syscall instruction is written over the code at
    /// that thread's pc for the duration (every thread is stopped), not taken from
    /// the scratch page being unmapped.
    fn unmap_ours(&mut self, held: &mut HashMap<Tid, Held>) {
        let regions: Vec<(u64, u64)> = self
            .scratch
            .regions()
            .chain(
                self.rec
                    .iter()
                    .flat_map(|r| r.ring.addrs.ranges())
                    .map(|(s, e)| (s, e - s)),
            )
            .collect();
        if regions.is_empty() {
            return;
        }
        // Best a thread that is not inside a system call of its own; one inside a
        // clone or fork is first let out of it.
        let Some(tid) = held
            .iter()
            .filter(|(_, h)| !h.exiting && !h.group_stop && !h.in_vfork)
            .min_by_key(|&(&t, h)| (h.in_syscall, t != self.pid, t))
            .map(|(&t, _)| t)
        else {
            eprintln!("memtrace: warning: no thread can run munmap: memtrace's pages stay mapped (unused)");
            return;
        };
        if held.get(&tid).is_some_and(|h| h.in_syscall) {
            if let Err(e) = self.settle_in_place(tid) {
                eprintln!("memtrace: warning: {e}: memtrace's pages stay mapped (unused)");
                return;
            }
            if let Some(h) = held.get_mut(&tid) {
                h.in_syscall = false;
                h.at_signal_stop = true;
            }
        }
        // From now on no scratch page is used: the injection patches code at the pc.
        self.scratch = Default::default();
        if let Some(r) = self.record_stats() {
            self.stats.recording = Some(r);
        }
        self.rec = None;
        for (addr, len) in regions {
            match self.inject_syscall(tid, Native::SYS_MUNMAP, [addr, len, 0, 0, 0, 0]) {
                Ok(0) => {}
                Ok(r) => eprintln!("memtrace: warning: munmap of {addr:#x} failed: {r}"),
                Err(e) => eprintln!("memtrace: warning: munmap of {addr:#x}: {e}"),
            }
        }
        if let Some(h) = held.get_mut(&tid) {
            // The injection ended at its breakpoint: a signal-delivery-stop.
            h.at_signal_stop = true;
        }
    }
}

//! Detaching: leave the process exactly as it was, and let it run on untraced.
//!
//! With every thread stopped: calls that finished are harvested; a thread whose pc is
//! in memtrace's code (an out-of-line slot, a return stub, the trampoline) is moved
//! to the program's own code; every swapped return address on a stack gets its real
//! value back; every breakpoint gets its original bytes; the scratch pages and the
//! stub region are unmapped with an injected munmap; then each thread is detached
//! with any signal it was about to receive.

use super::settle::Held;
use super::{End, TraceError, Tracer};
use crate::event::{Event, Tid};
use crate::ptrace::{self, Stop};
use memtrace_arch::{Arch, Native, ReturnSlot, STUB_CODE_SIZE, STUB_RET};
use std::collections::{HashMap, HashSet};

/// At most this many single steps to leave an out-of-line slot (one relocated
/// instruction, then the jump back).
const MAX_STEPS: usize = 16;

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
        let mut all = self.stop_all_to_detach()?;
        if let Some(end) = all.end {
            if let Some(g) = &self.guardian {
                g.disarm();
            }
            return Ok(end);
        }
        self.harvest();
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
            if let Err(e) = self.mem.write(addr, &bp.original) {
                eprintln!("memtrace: warning: cannot restore the code at {addr:#x}: {e}");
            }
        }
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
            .chain(self.stubs.mapping())
            .map(|(_, len)| len)
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
        if self.stubs.is_stub_code(pc) {
            self.leave_stub(tid, &mut regs, pc);
        } else if self.scratch.is_trampoline(pc) {
            // About to trap at the trampoline: that is the call's return.
            if !self.finish_return(tid, &mut regs) {
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

    /// A thread inside a return stub: the stub only stores the return value (rax is
    /// left as it is) and jumps to the real return address kept in its data. Do that
    /// jump for it, and record the call's result if the stub had not yet done so.
    fn leave_stub(&mut self, tid: Tid, regs: &mut memtrace_arch::Regs, pc: u64) {
        let k = ((pc - self.stubs.code_addr(0)) / STUB_CODE_SIZE) as u32;
        let Ok(real) = self.mem.read_u64(self.stubs.data_addr(k) + STUB_RET) else {
            return;
        };
        let at_start = pc == self.stubs.code_addr(k);
        let frame = self.threads.get_mut(&tid).and_then(|t| {
            let i = t.frames.iter().position(|f| f.stub == Some(k))?;
            let f = t.frames[i];
            t.frames.truncate(i);
            Some(f)
        });
        if let Some(f) = frame {
            self.stubs.release(k);
            // Past the first instruction the stub may have stored the value already;
            // at the first, rax is the call's result.
            if at_start {
                let ret = Native::return_value(regs);
                let ev = if f.nested {
                    Some(Event::Nested { ptr: ret })
                } else {
                    f.func.exit(tid, f.args, ret, None, f.stack)
                };
                if let Some(ev) = ev {
                    self.sink.event(ev);
                }
            }
        }
        Native::set_pc(regs, real);
    }

    /// Single-steps a thread until its pc leaves the scratch pages (it is past the
    /// relocated instruction, at the jump back).
    fn step_out_of_scratch(&mut self, tid: Tid, h: &mut Held) {
        for _ in 0..MAX_STEPS {
            if ptrace::single_step(tid, 0).is_err() {
                return;
            }
            match ptrace::wait_tid(tid) {
                Ok(Stop::Signal { signal, .. }) => {
                    h.at_signal_stop = true;
                    if signal != libc::SIGTRAP && h.signal == 0 {
                        h.signal = signal;
                    }
                }
                Ok(Stop::Event { .. }) => {}
                _ => return,
            }
            match ptrace::get_regs(tid) {
                Ok(r) if !self.scratch.contains(Native::pc(&r)) => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
        eprintln!("memtrace: warning: thread {tid} did not leave the scratch page");
    }

    /// Puts the real return address back in place of every stub or trampoline address
    /// this thread's pending calls still have on its stack.
    fn restore_return_addresses(&mut self, tid: Tid) {
        let Some(t) = self.threads.get_mut(&tid) else {
            return;
        };
        let frames = std::mem::take(&mut t.frames);
        for f in frames {
            if let Some(k) = f.stub {
                self.stubs.release(k);
            }
            if f.synthetic {
                continue;
            }
            let ours = match f.stub {
                Some(k) => self.stubs.code_addr(k),
                None => self.scratch.trampoline().unwrap_or(0),
            };
            match Native::return_slot_at(f.entry_sp) {
                ReturnSlot::Stack(a) => {
                    // Only if the slot still holds our address: a frame left by longjmp
                    // may have had its slot reused since.
                    if self.mem.read_u64(a).ok() == Some(ours) {
                        let _ = self.mem.write_u64(a, f.real_ret);
                    }
                }
                ReturnSlot::LinkRegister => {
                    if let Ok(mut r) = ptrace::get_regs(tid) {
                        if Native::link_register(&r) == ours {
                            Native::set_link_register(&mut r, f.real_ret);
                            let _ = ptrace::set_regs(tid, &r);
                        }
                    }
                }
            }
        }
    }

    /// Unmaps the scratch regions and the stub region, with munmap injected into a
    /// stopped thread. The syscall instruction is written over the code at that
    /// thread's pc for the duration (every thread is stopped), not taken from the
    /// scratch page being unmapped.
    fn unmap_ours(&mut self, held: &mut HashMap<Tid, Held>) {
        let regions: Vec<(u64, u64)> = self.scratch.regions().chain(self.stubs.mapping()).collect();
        if regions.is_empty() {
            return;
        }
        let Some(tid) = held
            .iter()
            .filter(|(_, h)| !h.exiting && !h.group_stop)
            .map(|(&t, _)| t)
            .min_by_key(|&t| (t != self.pid, t))
        else {
            eprintln!("memtrace: warning: no thread can run munmap: memtrace's pages stay mapped (unused)");
            return;
        };
        // From now on no scratch page is used: the injection patches code at the pc.
        self.scratch = Default::default();
        self.stubs = Default::default();
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

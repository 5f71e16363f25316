//! One hooked call that memtrace stopped at (`--stops`, or the slow path): its entry
//! becomes a record (see `recording.rs`), its return goes through the return stub,
//! or through the trampoline (a stop) when the shadow stack has no room.

use super::{Frame, Tracer};
use crate::event::{StackId, Tid};
use crate::hooks::HookFn;
use crate::ptrace;
use crate::unwind::Start;
use memtrace_arch::{Arch, Native, Regs};

impl Tracer<'_> {
    pub(super) fn on_entry(&mut self, tid: Tid, func: HookFn, regs: &mut Regs) {
        if self.children.contains_key(&tid) {
            return; // a vfork child: not the target's heap
        }
        let Some(e) = self.record_entry(tid, func, regs) else {
            return;
        };
        if self.breaks_armed() {
            let args = [e.args[0], e.args[1], e.args[2]];
            if func.requested_size(args).is_some() {
                let stack = self.capture_stack(tid, regs, e.ret);
                self.check_break(tid, func, args, stack, e.ret);
            }
        }
    }

    /// Unwinds the calling thread's stack from the allocator's entry and interns it
    /// (a site breakpoint is armed: its match needs the stack now).
    fn capture_stack(&mut self, tid: Tid, regs: &Regs, ret_addr: u64) -> StackId {
        let start = Start {
            return_address: ret_addr,
            sp: Native::sp_after_return(Native::sp(regs)),
            frame_pointer: Native::frame_pointer(regs),
            stack_top: if tid == self.pid {
                self.image.stack_top
            } else {
                0
            },
        };
        let mem = &self.mem;
        let ending = self.walker.walk(
            start,
            &mut |addr, buf| mem.read_vm_partial(addr, buf).unwrap_or(0),
            self.depth,
            &mut self.frame_buf,
        );
        self.stacks
            .intern(&self.frame_buf, ending.truncated(), self.generation)
    }

    pub(super) fn on_return(&mut self, tid: Tid, mut regs: Regs) {
        if !self.finish_return(tid, &mut regs) {
            // No frame for this return: we cannot know where to go. This is a bug in
            // memtrace; say so rather than guess.
            let sp = Native::sp(&regs);
            eprintln!("memtrace: internal error: thread {tid} returned to the trampoline with no pending call (sp {sp:#x})");
            let _ = ptrace::cont(tid, libc::SIGSEGV);
            return;
        }
        let _ = ptrace::set_regs(tid, &regs);
        self.resume(tid);
    }

    /// A call returning through the trampoline: records its return and points `regs`
    /// at the real return address. False when the thread has no such pending call.
    pub(super) fn finish_return(&mut self, tid: Tid, regs: &mut Regs) -> bool {
        self.stats.return_hits += 1;
        let sp = Native::sp(regs);
        let frame = self.threads.get_mut(&tid).and_then(|t| {
            let i = t
                .frames
                .iter()
                .rposition(|f| Native::sp_after_return(f.entry_sp) == sp)?;
            let f = t.frames[i];
            t.frames.truncate(i);
            Some(f)
        });
        let Some(f): Option<Frame> = frame else {
            return false;
        };
        self.record_trampoline_return(tid, &f, Native::return_value(regs));
        Native::set_pc(regs, f.real_ret);
        true
    }

    /// A thread at the first instruction of the return stub (a debugger step, a
    /// detach): does what the stub would, from outside. False when its shadow stack
    /// has no frame for this return.
    pub(super) fn finish_stub_return(&mut self, tid: Tid, regs: &mut Regs) -> bool {
        let tp = Native::thread_pointer(regs);
        let entry_sp = Native::sp(regs).wrapping_sub(8);
        let Some(rec) = self.rec.as_mut() else {
            return false;
        };
        let shadow = rec.ring.shadow(tp);
        let Some(i) = shadow.iter().rposition(|f| f.sp == entry_sp) else {
            return false;
        };
        let f = shadow[i];
        rec.ring.truncate_shadow(tp, i);
        let frame = Frame {
            func: HookFn::Malloc,
            entry_sp: f.sp,
            real_ret: f.ret,
            pos: f.pos,
            out_ptr: f.out_ptr,
        };
        let value = Native::return_value(regs);
        let out = if f.out_ptr != 0 && value as u32 == 0 {
            Frame {
                func: HookFn::PosixMemalign,
                ..frame
            }
        } else {
            frame
        };
        self.record_trampoline_return(tid, &out, value);
        Native::set_pc(regs, f.ret);
        true
    }
}

//! One hooked call: its entry (the one stop), its return (through a stub, harvested
//! at a later stop, or through the trampoline), and what happens to pending calls
//! when a thread unwinds past them.

use super::{Frame, Tracer};
use crate::event::{Event, StackId, Tid};
use crate::hooks::HookFn;
use crate::ptrace;
use crate::unwind::Start;
use memtrace_arch::{Arch, Native, Regs, ReturnSlot};

/// The stack of a call that records nothing (a nested call, free(NULL)): never
/// interned, never looked at.
const NO_STACK: StackId = StackId(u32::MAX);

impl Tracer<'_> {
    pub(super) fn on_entry(&mut self, tid: Tid, func: HookFn, regs: &mut Regs) {
        if self.children.contains_key(&tid) {
            return; // a vfork child: not the target's heap
        }
        let sp = Native::sp(regs);
        let thread = self.threads.entry(tid).or_default();
        // A pending frame whose stack slot is above the current stack pointer was
        // unwound without returning through us (longjmp): forget it.
        while thread.frames.last().is_some_and(|f| f.entry_sp < sp) {
            if let Some(k) = thread.frames.pop().and_then(|f| f.stub) {
                self.stubs.release(k);
            }
            self.stats.abandoned_frames += 1;
        }
        let nested = !thread.frames.is_empty();
        if nested {
            // Called by another hooked function (operator new -> malloc): the outer
            // call is the program's, this one is the allocator's business. Only the
            // pointer a plain allocator hands out is watched, so that its free is
            // known for no error (the exception object of a failing operator new).
            self.stats.nested_calls += 1;
            if !func.watched_when_nested() {
                return;
            }
        }
        let slot = Native::return_slot(regs);
        let ret_addr = match slot {
            ReturnSlot::Stack(a) => match self.mem.read_u64(a) {
                Ok(v) => v,
                Err(_) => return,
            },
            ReturnSlot::LinkRegister => Native::link_register(regs),
        };
        if Some(ret_addr) == self.scratch.trampoline() || self.stubs.is_stub_code(ret_addr) {
            // Tail-called from a hooked function whose return we hold.
            if !nested {
                self.stats.nested_calls += 1;
            }
            return;
        }
        let args = [
            Native::arg(regs, 0),
            Native::arg(regs, 1),
            Native::arg(regs, 2),
        ];
        let stack = if nested {
            NO_STACK
        } else {
            let stack = if func.needs_stack(args) {
                self.capture_stack(tid, regs, ret_addr)
            } else {
                NO_STACK
            };
            self.check_break(tid, func, args, stack, ret_addr);
            let internal = self.image.is_internal(ret_addr);
            let entry = func.entry(tid, args, stack, internal);
            if let Some(ev) = entry.event {
                self.sink.event(ev);
            }
            if !entry.hook_return {
                return;
            }
            stack
        };
        let stub = if func == HookFn::PosixMemalign {
            // Its result is read through a pointer, which must happen at the return
            // itself: the program may change the pointed-to word right after.
            None
        } else {
            self.stubs.alloc(tid)
        };
        if nested && stub.is_none() {
            return; // not worth a stop at the trampoline
        }
        let (ret_to, data) = match stub {
            Some(k) => {
                let mut d = [0u8; 16];
                d[8..].copy_from_slice(&ret_addr.to_le_bytes());
                (self.stubs.code_addr(k), Some((self.stubs.data_addr(k), d)))
            }
            None => match self.scratch.trampoline() {
                Some(t) => (t, None),
                None => return,
            },
        };
        let ret_bytes = ret_to.to_le_bytes();
        let hooked = match slot {
            ReturnSlot::Stack(a) => match data {
                // One system call writes the stub's data (done = 0, real return
                // address) and the swapped return address.
                Some((at, d)) => self
                    .mem
                    .write_vectored(&[(at, &d), (a, &ret_bytes)])
                    .is_ok(),
                None => self.mem.write_u64(a, ret_to).is_ok(),
            },
            ReturnSlot::LinkRegister => {
                let ok = data.is_none_or(|(at, d)| self.mem.write_vectored(&[(at, &d)]).is_ok());
                if ok {
                    Native::set_link_register(regs, ret_to);
                }
                ok
            }
        };
        if !hooked {
            if let Some(k) = stub {
                self.stubs.release(k);
            }
            return;
        }
        if let Some(t) = self.threads.get_mut(&tid) {
            t.frames.push(Frame {
                synthetic: false,
                func,
                args,
                entry_sp: sp,
                real_ret: ret_addr,
                stack,
                stub,
                nested,
            });
        }
    }

    /// Unwinds the calling thread's stack from the allocator's entry and interns it.
    /// The first frame is `ret_addr`, whatever the unwinder makes of the rest.
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
        let started = std::time::Instant::now();
        let mem = &self.mem;
        let ending = self.walker.walk(
            start,
            &mut |addr, buf| mem.read_vm_partial(addr, buf).unwrap_or(0),
            self.depth,
            &mut self.frame_buf,
        );
        self.stats.unwind_ns += started.elapsed().as_nanos() as u64;
        self.stats.stacks_captured += 1;
        self.stats.frames_captured += self.frame_buf.len() as u64;
        self.stacks
            .intern(&self.frame_buf, ending.truncated(), self.generation)
    }

    /// Turns every call that has returned through its stub since the last stop into
    /// its event, and frees the stubs.
    pub(super) fn harvest(&mut self) {
        let Some((addr, len)) = self.stubs.range_in_use() else {
            return;
        };
        self.stub_data.resize(len, 0);
        if self.mem.read_vm(addr, &mut self.stub_data).is_err() {
            return;
        }
        let mut finished = self.stubs.finished(&self.stub_data);
        if finished.is_empty() {
            return;
        }
        // Read the values again, after the done flags were seen: the kernel's copy
        // need not load in address order, so a value read in the same copy as its
        // flag could predate the flag. A finished stub's value no longer changes.
        if self.mem.read_vm(addr, &mut self.stub_data).is_err() {
            return;
        }
        for f in &mut finished {
            f.value = self.stubs.value(&self.stub_data, f.stub);
        }
        // A thread's inner calls first: an outer call's return drops the frames above
        // it, and a nested call that returned must be seen before that.
        let depth = |f: &super::stubs::Finished| {
            self.threads
                .get(&f.tid)
                .and_then(|t| t.frames.iter().position(|fr| fr.stub == Some(f.stub)))
                .unwrap_or(0)
        };
        finished.sort_by_key(|f| std::cmp::Reverse(depth(f)));
        for done in finished {
            self.stubs.release(done.stub);
            let frame = self.threads.get_mut(&done.tid).and_then(|t| {
                let i = t.frames.iter().position(|f| f.stub == Some(done.stub))?;
                let f = t.frames[i];
                // Anything deeper was left without returning (cannot happen for calls
                // that return in order; kept consistent all the same).
                for deeper in t.frames.drain(i..).skip(1) {
                    if let Some(k) = deeper.stub {
                        self.stubs.release(k);
                    }
                }
                Some(f)
            });
            if let Some(f) = frame {
                self.stats.stub_returns += 1;
                let ev = if f.nested {
                    Some(Event::Nested { ptr: done.value })
                } else {
                    f.func.exit(done.tid, f.args, done.value, None, f.stack)
                };
                if let Some(ev) = ev {
                    self.sink.event(ev);
                }
            }
        }
    }

    /// Puts the real return addresses of every pending hooked call of `tid` back where
    /// they were and forgets those calls: the thread is about to unwind its stack
    /// (an exception thrown by operator new, say), and those calls will not return.
    pub(super) fn unhook_returns(&mut self, tid: Tid, regs: &mut Regs) {
        let Some(t) = self.threads.get_mut(&tid) else {
            return;
        };
        for f in t.frames.drain(..).rev() {
            self.stats.abandoned_frames += 1;
            if let Some(k) = f.stub {
                self.stubs.release(k);
            }
            if f.synthetic {
                continue;
            }
            match Native::return_slot_at(f.entry_sp) {
                ReturnSlot::Stack(a) => {
                    let _ = self.mem.write_u64(a, f.real_ret);
                }
                ReturnSlot::LinkRegister => Native::set_link_register(regs, f.real_ret),
            }
        }
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
            let i = t.frames.iter().rposition(|f| {
                !f.synthetic && f.stub.is_none() && Native::sp_after_return(f.entry_sp) == sp
            })?;
            let f = t.frames[i];
            t.frames.truncate(i);
            Some(f)
        });
        let Some(f) = frame else {
            return false;
        };
        let ret = Native::return_value(regs);
        let ev = if f.nested {
            Some(Event::Nested { ptr: ret })
        } else {
            let out_ptr = if f.func == HookFn::PosixMemalign && ret as u32 == 0 {
                self.mem.read_u64(f.args[0]).ok()
            } else {
                None
            };
            f.func.exit(tid, f.args, ret, out_ptr, f.stack)
        };
        if let Some(ev) = ev {
            self.sink.event(ev);
        }
        Native::set_pc(regs, f.real_ret);
        true
    }
}

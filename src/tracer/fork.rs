//! Forked children: the child of a `fork` is a copy of the target, our breakpoints
//! and swapped return addresses included. It is not traced (the contract): at its
//! first stop its copy gets the original bytes back, and the return addresses of the
//! calls the forking thread had pending at the fork, then it is let go.
//!
//! Which calls those are is taken at the fork event, not at the child's first stop:
//! the forking thread is stopped in `fork` there, while by the child's first stop it
//! may have returned from `fork` and made new calls, whose stack slots in the child
//! hold the child's own return addresses. And a slot is written only if it still
//! holds memtrace's address: a call that returned has left its slot to others (the
//! call of `fork` itself, typically), and writing its old return address there sent
//! the child back into `fork`.
//!
//! A vfork child shares the target's memory and runs on the forking thread's slot in
//! the recorder's table until it execs or exits: that slot takes the slow path (a
//! stop) meanwhile, and the child's calls are not recorded.

use super::{Child, Tracer};
use crate::event::Tid;
use crate::ptrace::{self, Memory};
use memtrace_arch::{Arch, Native, ReturnSlot};

/// A return address swapped for one of memtrace's in a pending call's stack slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Swapped {
    /// The stack slot.
    pub slot: u64,
    /// What memtrace wrote there: a stub's or the trampoline's address.
    pub ours: u64,
    /// The real return address.
    pub real: u64,
}

impl Tracer<'_> {
    /// PTRACE_EVENT_FORK / VFORK of thread `parent` (stopped in the call): `child`
    /// is cleaned now if its first stop came already, or at that stop.
    pub(super) fn on_fork_event(&mut self, parent: Tid, child: Tid, vfork: bool) {
        let kind = if vfork {
            // The child runs on this thread's stack and thread pointer, so on its
            // slot: until it execs or exits, every call made there stops, and the
            // child's calls are kept out of the heap.
            let tp = self.threads.get(&parent).map_or(0, |t| t.tp);
            if let Some(r) = self.rec.as_mut() {
                r.ring.set_slow(tp, true);
            }
            self.vfork_slots.insert(child, tp);
            Child::Vfork
        } else {
            Child::ForkPending(self.pending_at_fork(parent))
        };
        if self.early_children.remove(&child) {
            self.child_started(child, kind);
        } else {
            self.children.insert(child, kind);
        }
    }

    /// A vfork child no longer runs on its parent's slot (it exec'd or exited).
    pub(super) fn vfork_done(&mut self, child: Tid) {
        if let Some(tp) = self.vfork_slots.remove(&child) {
            // A slot two threads share stays on the slow path for good.
            if let Some(r) = self.rec.as_mut().filter(|r| !r.shared_tps.contains(&tp)) {
                r.ring.set_slow(tp, false);
            }
        }
    }

    /// The return addresses of `tid`'s pending calls, as they are now. Its shadow
    /// stack is exact at any stop (the return stub pops a frame as the call
    /// returns), and so are the calls returning through the trampoline.
    pub(super) fn pending_at_fork(&mut self, tid: Tid) -> Vec<Swapped> {
        let tp = self.threads.get(&tid).map_or(0, |t| t.tp);
        let stub = self.rec.as_ref().map(|r| r.ring.addrs.ret_stub);
        let shadow = self
            .rec
            .as_ref()
            .map(|r| r.ring.shadow(tp))
            .unwrap_or_default();
        let tramp = self.scratch.trampoline();
        let frames = self
            .threads
            .get(&tid)
            .map(|t| t.frames.clone())
            .unwrap_or_default();
        shadow
            .iter()
            .filter_map(|f| Some((f.sp, stub?, f.ret)))
            .chain(
                frames
                    .iter()
                    .filter_map(|f| Some((f.entry_sp, tramp?, f.real_ret))),
            )
            .filter_map(|(sp, ours, real)| match Native::return_slot_at(sp) {
                ReturnSlot::Stack(slot) => Some(Swapped { slot, ours, real }),
                // In a register: the child's copy of it was taken at the fork and the
                // callee may have spilled it anywhere since. Not on x86_64.
                ReturnSlot::LinkRegister => None,
            })
            .collect()
    }

    /// A fork or vfork child had its first stop (and its fork event was seen).
    pub(super) fn child_started(&mut self, child: Tid, kind: Child) {
        match kind {
            Child::ForkPending(swapped) => {
                self.clean_fork_child(child, &swapped);
                self.stats.forks_cleaned += 1;
                let _ = ptrace::detach(child, 0);
            }
            Child::Vfork => {
                self.children.insert(child, Child::Vfork);
                self.resume(child);
            }
        }
    }

    /// Puts the original bytes under every breakpoint and entry jump of the child's
    /// copy of memory, and the real return addresses in the slots that still hold
    /// ours. memtrace's code pages stay mapped in the child, unused; the recorder's
    /// memory was never the child's (fork leaves it out).
    pub(super) fn clean_fork_child(&mut self, child: Tid, swapped: &[Swapped]) {
        let Ok(mem) = Memory::open(child) else { return };
        for (addr, bp) in self.bps.iter() {
            if !bp.original.is_empty() {
                let _ = mem.write(addr, &bp.original);
            }
        }
        for s in self.rec.iter().flat_map(|r| r.sites.iter()) {
            let _ = mem.write(s.entry, &s.original);
        }
        for s in swapped {
            if mem.read_u64(s.slot).ok() == Some(s.ours) {
                let _ = mem.write_u64(s.slot, s.real);
            }
        }
    }
}

//! Forked children: the child of a `fork` is a copy of the target, our breakpoints
//! and swapped return addresses included. It is not traced (the contract): at its
//! first stop its copy gets the original bytes back, and the return addresses of the
//! calls the forking thread had pending at the fork, then it is let go.
//!
//! Which calls those are is taken at the fork event, not at the child's first stop:
//! the forking thread is stopped in `fork` there, while by the child's first stop it
//! may have returned from `fork` and made new calls, whose stack slots in the child
//! hold the child's own return addresses. The calls that returned through their stubs
//! are harvested first for the same reason: such a call's slot was reused (by the call
//! of `fork` itself, typically), and writing its old return address there sent the
//! child back into `fork`.

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
            Child::Vfork
        } else {
            Child::ForkPending(self.swapped_returns(parent))
        };
        if self.early_children.remove(&child) {
            self.child_started(child, kind);
        } else {
            self.children.insert(child, kind);
        }
    }

    /// The return addresses of `tid`'s pending calls, as they are now: the calls
    /// that returned are harvested first (their slots are no longer theirs).
    pub(super) fn swapped_returns(&mut self, tid: Tid) -> Vec<Swapped> {
        self.harvest();
        let Some(t) = self.threads.get(&tid) else {
            return Vec::new();
        };
        t.frames
            .iter()
            .filter(|f| !f.synthetic)
            .filter_map(|f| {
                let ours = match f.stub {
                    Some(k) => self.stubs.code_addr(k),
                    None => self.scratch.trampoline()?,
                };
                match Native::return_slot_at(f.entry_sp) {
                    ReturnSlot::Stack(slot) => Some(Swapped {
                        slot,
                        ours,
                        real: f.real_ret,
                    }),
                    // In a register: the child's copy of it was taken at the fork and
                    // the callee may have spilled it anywhere since. Not on x86_64.
                    ReturnSlot::LinkRegister => None,
                }
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

    /// Puts the original bytes under every breakpoint of the child's copy of memory,
    /// and the real return addresses in the slots that still hold ours. memtrace's
    /// pages stay mapped in the child, unused.
    pub(super) fn clean_fork_child(&mut self, child: Tid, swapped: &[Swapped]) {
        let Ok(mem) = Memory::open(child) else { return };
        for (addr, bp) in self.bps.iter() {
            let _ = mem.write(addr, &bp.original);
        }
        for s in swapped {
            if mem.read_u64(s.slot).ok() == Some(s.ours) {
                let _ = mem.write_u64(s.slot, s.real);
            }
        }
    }
}

//! Allocator calls already in flight when memtrace attaches.
//!
//! A thread stopped inside `operator new` (or realloc) at attach will call malloc
//! from there after the hooks are planted. Seen as the program's own call, that
//! malloc would be recorded in the wrong family (a later `delete` of the block: a
//! false mismatched free). So at attach each thread's stack is walked; if its pc or a
//! return address lies inside a hooked function, a synthetic pending frame is pushed
//! for the outermost such call: the calls it makes are then nested, as they would be
//! for a call seen from its entry. Its own result is ignored. The frame is dropped at
//! the thread's first hooked call made above it (the tracer already drops pending
//! frames whose stack slot lies below the stack pointer).

use super::Tracer;
use crate::hooks::HookFn;
use crate::unwind::Start;
use memtrace_arch::{Arch, Native};

/// How far above the stack pointer the outermost call's return address is looked for.
const SCAN_BYTES: usize = 64 * 1024;

/// The outermost hooked call in a stack: `frames[0]` is the pc, the rest return
/// addresses, innermost first. Returns the index of that frame and the function. A pc
/// at a function's very first byte has not entered it yet (it will trap there).
pub fn outermost_in_flight(
    frames: &[u64],
    hooked: &[(u64, u64, HookFn)],
) -> Option<(usize, HookFn)> {
    let inside = |i: usize, a: u64| {
        // A return address follows its call: the call itself is at a - 1.
        let a = if i == 0 { a } else { a.wrapping_sub(1) };
        hooked
            .iter()
            .find(|&&(s, e, _)| (if i == 0 { s < a } else { s <= a }) && a < e)
            .map(|&(_, _, f)| f)
    };
    frames
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, &a)| inside(i, a).map(|f| (i, f)))
}

impl Tracer<'_> {
    /// Pushes a synthetic frame for each thread caught inside a hooked call.
    pub(super) fn note_calls_in_flight(&mut self) {
        let tids: Vec<_> = self.threads.keys().copied().collect();
        for tid in tids {
            let Ok(regs) = crate::ptrace::get_regs(tid) else {
                continue;
            };
            let (pc, sp) = (Native::pc(&regs), Native::sp(&regs));
            let start = Start {
                // The pc, for `walk_from_pc`.
                return_address: pc,
                sp,
                frame_pointer: Native::frame_pointer(&regs),
                stack_top: 0,
            };
            let mem = &self.mem;
            self.walker.walk_from_pc(
                start,
                &mut |addr, buf| mem.read_vm_partial(addr, buf).unwrap_or(0),
                64,
                &mut self.frame_buf,
            );
            let Some((i, func)) = outermost_in_flight(&self.frame_buf, &self.image.hooked) else {
                continue;
            };
            // The outermost call's return address, and where it is on the stack: the
            // stack pointer at that call's entry.
            let Some(&ret) = self.frame_buf.get(i + 1) else {
                continue;
            };
            let Some(slot) = self.find_on_stack(sp, ret) else {
                continue;
            };
            self.stats.in_flight_at_attach += 1;
            if let Some(r) = self.rec.as_mut() {
                // One below the slot: a call made later from the same depth (stack
                // pointer at the slot) is above it and drops it.
                r.calls.push_in_flight(tid, func, slot - 1);
            }
        }
    }

    /// The address of the first word equal to `value` at or above `sp`.
    fn find_on_stack(&self, sp: u64, value: u64) -> Option<u64> {
        let mut buf = vec![0u8; SCAN_BYTES];
        let n = self.mem.read_vm_partial(sp, &mut buf).ok()?;
        buf[..n]
            .chunks_exact(8)
            .position(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()) == value)
            .map(|i| sp + 8 * i as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOOKED: &[(u64, u64, HookFn)] = &[
        (0x1000, 0x1100, HookFn::Malloc),
        (0x2000, 0x2200, HookFn::new_op(false)),
        (0x3000, 0x3300, HookFn::Realloc),
    ];

    #[test]
    fn the_outermost_hooked_frame_is_found() {
        // In malloc, called from operator new, called from main.
        let f = [0x1050, 0x2010, 0x9000];
        assert_eq!(
            outermost_in_flight(&f, HOOKED),
            Some((1, HookFn::new_op(false)))
        );
        // In realloc itself.
        assert_eq!(
            outermost_in_flight(&[0x3001, 0x9000], HOOKED),
            Some((0, HookFn::Realloc))
        );
        // In some other function called by realloc (a lock wait).
        assert_eq!(
            outermost_in_flight(&[0x7777, 0x3100, 0x9000], HOOKED),
            Some((1, HookFn::Realloc))
        );
    }

    #[test]
    fn a_thread_about_to_enter_is_not_in_flight() {
        // At malloc's first byte: it traps there once the hook is planted.
        assert_eq!(outermost_in_flight(&[0x1000, 0x9000], HOOKED), None);
        assert_eq!(outermost_in_flight(&[0x9000, 0x9100], HOOKED), None);
        // A return address just past the end of a function (a call as its last
        // instruction) belongs to it.
        assert_eq!(
            outermost_in_flight(&[0x9000, 0x1100], HOOKED),
            Some((1, HookFn::Malloc))
        );
    }
}

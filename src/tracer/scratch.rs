//! memtrace's scratch pages inside the target, and the breakpoints that use them.
//!
//! A breakpoint is never lifted while the target runs: the instruction it displaced is
//! relocated into a slot of a scratch page, followed by a jump back, and a thread that
//! hits the breakpoint is simply moved to that slot. Every thread sees the int3 at all
//! times, so none can slip past unseen.
//!
//! Page layout: the return trampoline (one breakpoint) at offset 0, a
//! `syscall; int3` stub at offset 8 (for injecting system calls without touching code
//! that other threads may run), then out-of-line slots.

use crate::hooks::HookFn;
use memtrace_arch::{Arch, Native};
use std::collections::HashMap;

pub const REGION_SIZE: u64 = 64 * 1024;
const TRAMPOLINE_OFFSET: u64 = 0;
const SYSCALL_OFFSET: u64 = 8;
/// A name for the system calls that take one (the recorder's memfd).
const NAME_OFFSET: u64 = 32;
pub const NAME: &[u8] = b"memtrace\0";
const FIRST_SLOT: u64 = 64;
/// How far (in either direction) a RIP-relative operand reaches.
const REACH: u64 = 0x7000_0000;

/// The bytes a new region starts with.
pub fn region_header() -> Vec<u8> {
    let mut page = vec![Native::BREAKPOINT[0]; FIRST_SLOT as usize];
    let tramp = TRAMPOLINE_OFFSET as usize;
    page[tramp..tramp + Native::BREAKPOINT.len()].copy_from_slice(Native::BREAKPOINT);
    let sys = SYSCALL_OFFSET as usize;
    page[sys..sys + Native::SYSCALL_THEN_BREAK.len()].copy_from_slice(Native::SYSCALL_THEN_BREAK);
    let name = NAME_OFFSET as usize;
    page[name..name + NAME.len()].copy_from_slice(NAME);
    page
}

#[derive(Debug)]
struct Region {
    start: u64,
    next: u64,
}

/// The scratch regions mapped in one process image.
#[derive(Debug, Default)]
pub struct Scratch {
    regions: Vec<Region>,
}

impl Scratch {
    pub fn add_region(&mut self, start: u64) {
        self.regions.push(Region {
            start,
            next: start + FIRST_SLOT,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Every region, as (start, length).
    pub fn regions(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.regions.iter().map(|r| (r.start, REGION_SIZE))
    }

    /// The return trampoline: a hooked function returns here, into a breakpoint.
    pub fn trampoline(&self) -> Option<u64> {
        self.regions.first().map(|r| r.start + TRAMPOLINE_OFFSET)
    }

    pub fn is_trampoline(&self, addr: u64) -> bool {
        self.regions
            .iter()
            .any(|r| r.start + TRAMPOLINE_OFFSET == addr)
    }

    pub fn syscall_stub(&self) -> Option<u64> {
        self.regions.first().map(|r| r.start + SYSCALL_OFFSET)
    }

    /// The address of [`NAME`] in the first region.
    pub fn name(&self) -> Option<u64> {
        self.regions.first().map(|r| r.start + NAME_OFFSET)
    }

    /// Whether `addr` is inside any scratch region.
    pub fn contains(&self, addr: u64) -> bool {
        self.regions
            .iter()
            .any(|r| r.start <= addr && addr < r.start + REGION_SIZE)
    }

    /// Every region as `[start, end)`.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.regions
            .iter()
            .map(|r| (r.start, r.start + REGION_SIZE))
    }

    /// A free slot within RIP-relative reach of `near`, if a region has one.
    pub fn take_slot(&mut self, near: u64) -> Option<u64> {
        self.take(Native::MAX_RELOCATED_LEN as u64, near)
    }

    /// `size` bytes of code within RIP-relative reach of `near` (0: anywhere).
    pub fn take(&mut self, size: u64, near: u64) -> Option<u64> {
        let r = self.regions.iter_mut().find(|r| {
            r.next + size <= r.start + REGION_SIZE && (near == 0 || r.start.abs_diff(near) < REACH)
        })?;
        let slot = r.next;
        r.next += size.next_multiple_of(16);
        Some(slot)
    }

    /// A hint for mapping a new region within reach of `addr`: 256 MiB below it, or,
    /// for code mapped low (a non-PIE executable at 0x400000), 1 GiB above it, clear of
    /// its heap's first growth.
    pub fn hint_near(addr: u64) -> u64 {
        let hint = if addr > 0x1_0000_0000 {
            addr - 0x1000_0000
        } else {
            addr + 0x4000_0000
        };
        hint & !0xfff
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BpKind {
    /// The dynamic loader's `_dl_debug_state`: the set of loaded objects changed.
    Loader,
    /// The C++/C unwinder starts unwinding this thread's stack (an exception, thread
    /// cancellation): return addresses we swapped must be real again before it reads them.
    Unwind,
    /// libc's `exit`: where the exiting thread's live stack ends (see `scan.rs`).
    ExitCall,
    /// libc's `_exit`: the program ends, every thread is still there to be scanned.
    Exit,
    Hook(HookFn),
}

#[derive(Clone, Debug)]
pub struct Breakpoint {
    pub kind: BpKind,
    /// Where the displaced instruction runs.
    pub ool: u64,
    /// Length of the relocated instruction in its slot: a thread single-stepped to
    /// `ool + ool_len` is at the jump back, and belongs at `resume`.
    pub ool_len: u64,
    /// The address after the original instruction.
    pub resume: u64,
    /// The original bytes under the breakpoint.
    pub original: Vec<u8>,
    /// The module (by base address) the breakpoint lives in.
    pub module_base: u64,
}

/// Planted breakpoints by address. One breakpoint per address, however many names the
/// symbol table gives that address.
#[derive(Debug, Default)]
pub struct Breakpoints {
    by_addr: HashMap<u64, Breakpoint>,
}

impl Breakpoints {
    pub fn get(&self, addr: u64) -> Option<&Breakpoint> {
        self.by_addr.get(&addr)
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.by_addr.contains_key(&addr)
    }

    pub fn insert(&mut self, addr: u64, bp: Breakpoint) {
        self.by_addr.insert(addr, bp);
    }

    /// Forgets the breakpoints of a module that was unmapped (its bytes are gone).
    pub fn forget_module(&mut self, base: u64) {
        self.by_addr.retain(|_, bp| bp.module_base != base);
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &Breakpoint)> {
        self.by_addr.iter().map(|(&a, b)| (a, b))
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stay_within_reach_and_region() {
        let mut s = Scratch::default();
        assert_eq!(s.take_slot(0x7f00_0000_0000), None);
        s.add_region(0x7f00_0000_0000);
        assert_eq!(s.trampoline(), Some(0x7f00_0000_0000));
        assert!(s.is_trampoline(0x7f00_0000_0000));
        let a = s.take_slot(0x7f00_1000_0000).unwrap();
        let b = s.take_slot(0x7f00_1000_0000).unwrap();
        assert!(a >= 0x7f00_0000_0000 + FIRST_SLOT && b > a);
        assert!(s.contains(b));
        assert_eq!(Scratch::hint_near(0x40_1234), 0x4040_1000);
        assert!(Scratch::hint_near(0x7f00_1000_0000).abs_diff(0x7f00_1000_0000) < REACH);
        // Too far for a 32-bit displacement: no slot.
        assert_eq!(s.take_slot(0x5555_0000_0000), None);
        // The region fills up.
        let n = (0..10_000)
            .filter_map(|_| s.take_slot(0x7f00_0000_0000))
            .count();
        let per_region = (REGION_SIZE - FIRST_SLOT) / 48;
        assert!(n as u64 <= per_region && n > 100, "{n}");
        // Room of any size, anywhere.
        let mut t = Scratch::default();
        t.add_region(0x1000_0000);
        assert_eq!(t.take(1000, 0), Some(0x1000_0000 + FIRST_SLOT));
        assert_eq!(t.take(10, 0), Some(0x1000_0000 + FIRST_SLOT + 1008));
        assert_eq!(t.take(REGION_SIZE, 0), None);
    }

    #[test]
    fn header_has_trampoline_and_syscall_stub() {
        let h = region_header();
        assert_eq!(&h[..1], Native::BREAKPOINT);
        let s = SYSCALL_OFFSET as usize;
        assert_eq!(
            &h[s..s + Native::SYSCALL_THEN_BREAK.len()],
            Native::SYSCALL_THEN_BREAK
        );
    }
}

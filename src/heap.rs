//! The heap model: every live block, and totals with valgrind memcheck's accounting.
//!
//! Fed with [`Event`]s only; knows nothing of processes. The accounting follows the
//! report contract: an alloc is every successful allocation (realloc of NULL included),
//! a free is every release of a live block, a realloc that succeeds on a live block is
//! one free and one alloc, a failed realloc is neither, and a free of a pointer that is
//! not live is never a free (it is an error, or the allocator's own bookkeeping).

use crate::event::{AllocKind, Event, StackId, Tid};
use serde::Serialize;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub size: u64,
    pub stack: StackId,
    pub kind: AllocKind,
    pub tid: Tid,
    /// Position of the allocating event in the trace (0-based), for ordering by age.
    pub seq: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub allocs: u64,
    pub frees: u64,
    pub bytes_allocated: u64,
    pub live_blocks: u64,
    pub live_bytes: u64,
    pub peak_live_bytes: u64,
}

/// Frees that are not the program's frees of live blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Uncounted {
    /// Frees, by the program, of a pointer that is not live (double or invalid frees).
    pub frees_not_live: u64,
    /// Frees made by the allocator's own object of pointers it never handed out to the
    /// program (glibc emptying a thread's cache at thread exit).
    pub internal_frees: u64,
}

/// Live blocks that share one allocation stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakGroup {
    pub stack: StackId,
    pub blocks: u64,
    pub bytes: u64,
}

#[derive(Default, Debug)]
pub struct Heap {
    live: HashMap<u64, Block>,
    /// Blocks whose realloc is in flight, by thread.
    in_realloc: HashMap<Tid, (u64, Option<Block>)>,
    totals: Totals,
    uncounted: Uncounted,
    seq: u64,
}

impl Heap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    pub fn uncounted(&self) -> Uncounted {
        self.uncounted
    }

    pub fn get(&self, ptr: u64) -> Option<&Block> {
        self.live.get(&ptr)
    }

    pub fn live_blocks(&self) -> impl Iterator<Item = (u64, &Block)> {
        self.live.iter().map(|(&p, b)| (p, b))
    }

    pub fn apply(&mut self, ev: &Event) {
        match *ev {
            Event::Alloc {
                tid,
                kind,
                ptr,
                size,
                stack,
            } => self.alloc(tid, kind, ptr, size, stack),
            Event::Free { ptr, internal, .. } => {
                if !self.release(ptr) {
                    if internal {
                        self.uncounted.internal_frees += 1;
                    } else {
                        self.uncounted.frees_not_live += 1;
                    }
                }
            }
            Event::ReallocStart { tid, old } => {
                let block = self.take(old);
                self.in_realloc.insert(tid, (old, block));
            }
            Event::ReallocEnd {
                tid,
                old,
                new,
                size,
                stack,
            } => {
                let (started, block) = match self.in_realloc.remove(&tid) {
                    Some((o, b)) if o == old => (true, b),
                    Some((_, b)) => {
                        // A start without its end (the thread left the call some other
                        // way): put that block back before handling this one.
                        if let Some(b) = b {
                            self.restore(old, b);
                        }
                        (false, None)
                    }
                    None => (false, None),
                };
                let block = if started { block } else { self.take(old) };
                if new != 0 {
                    // Success: the old block (if we knew it) is freed, the new one allocated.
                    if block.is_some() {
                        self.totals.frees += 1;
                    } else if old != 0 {
                        self.uncounted.frees_not_live += 1;
                    }
                    self.alloc(tid, AllocKind::Malloc, new, size, stack);
                } else if size == 0 && old != 0 {
                    // glibc's realloc(p, 0) frees p and returns NULL.
                    if block.is_some() {
                        self.totals.frees += 1;
                    }
                } else if let Some(b) = block {
                    // Failure: the old block is untouched and still live.
                    self.restore(old, b);
                }
            }
            Event::Exec => *self = Heap::new(),
        }
    }

    fn alloc(&mut self, tid: Tid, kind: AllocKind, ptr: u64, size: u64, stack: StackId) {
        if ptr == 0 {
            return;
        }
        // The allocator handed out an address we still had as live: its free was made
        // by code we do not hook. Forget the stale block; it was no free of ours.
        self.take(ptr);
        let t = &mut self.totals;
        t.allocs += 1;
        t.bytes_allocated += size;
        t.live_blocks += 1;
        t.live_bytes += size;
        t.peak_live_bytes = t.peak_live_bytes.max(t.live_bytes);
        self.live.insert(
            ptr,
            Block {
                size,
                stack,
                kind,
                tid,
                seq: self.seq,
            },
        );
        self.seq += 1;
    }

    /// Removes a live block without counting anything.
    fn take(&mut self, ptr: u64) -> Option<Block> {
        let b = self.live.remove(&ptr)?;
        self.totals.live_blocks -= 1;
        self.totals.live_bytes -= b.size;
        Some(b)
    }

    fn restore(&mut self, ptr: u64, b: Block) {
        self.totals.live_blocks += 1;
        self.totals.live_bytes += b.size;
        self.live.insert(ptr, b);
    }

    /// Frees a live block; false when `ptr` was not live.
    fn release(&mut self, ptr: u64) -> bool {
        let live = self.take(ptr).is_some();
        if live {
            self.totals.frees += 1;
        }
        live
    }

    /// Live blocks grouped by allocation stack, largest bytes first (ties: more blocks,
    /// then older stack first, so the order is stable).
    pub fn leak_groups(&self) -> Vec<LeakGroup> {
        let mut by_stack: HashMap<StackId, LeakGroup> = HashMap::new();
        for b in self.live.values() {
            let g = by_stack.entry(b.stack).or_insert(LeakGroup {
                stack: b.stack,
                blocks: 0,
                bytes: 0,
            });
            g.blocks += 1;
            g.bytes += b.size;
        }
        let mut v: Vec<LeakGroup> = by_stack.into_values().collect();
        v.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then(b.blocks.cmp(&a.blocks))
                .then(a.stack.cmp(&b.stack))
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FreeKind;

    const S: StackId = StackId(0);

    fn alloc(ptr: u64, size: u64) -> Event {
        Event::Alloc {
            tid: 1,
            kind: AllocKind::Malloc,
            ptr,
            size,
            stack: S,
        }
    }
    fn free(ptr: u64) -> Event {
        Event::Free {
            tid: 1,
            kind: FreeKind::Free,
            ptr,
            stack: S,
            internal: false,
        }
    }
    fn realloc(h: &mut Heap, old: u64, new: u64, size: u64) {
        h.apply(&Event::ReallocStart { tid: 1, old });
        h.apply(&Event::ReallocEnd {
            tid: 1,
            old,
            new,
            size,
            stack: S,
        });
    }

    #[test]
    fn alloc_and_free() {
        let mut h = Heap::new();
        h.apply(&alloc(0x10, 30));
        h.apply(&alloc(0x20, 40));
        h.apply(&free(0x10));
        let t = h.totals();
        assert_eq!((t.allocs, t.frees, t.bytes_allocated), (2, 1, 70));
        assert_eq!(
            (t.live_blocks, t.live_bytes, t.peak_live_bytes),
            (1, 40, 70)
        );
    }

    #[test]
    fn double_free_is_not_a_free() {
        let mut h = Heap::new();
        h.apply(&alloc(0x10, 8));
        h.apply(&free(0x10));
        h.apply(&free(0x10));
        assert_eq!(h.totals().frees, 1);
        assert_eq!(h.uncounted().frees_not_live, 1);
    }

    #[test]
    fn internal_frees_are_counted_apart() {
        let mut h = Heap::new();
        h.apply(&Event::Free {
            tid: 1,
            kind: FreeKind::Free,
            ptr: 0x99,
            stack: S,
            internal: true,
        });
        assert_eq!(h.totals().frees, 0);
        assert_eq!(h.uncounted().internal_frees, 1);
    }

    #[test]
    fn realloc_accounting_matches_memcheck() {
        let mut h = Heap::new();
        realloc(&mut h, 0, 0x10, 10); // realloc(NULL) = malloc
        realloc(&mut h, 0x10, 0x20, 20); // moves: one free, one alloc
        realloc(&mut h, 0x20, 0x20, 25); // in place: still one free, one alloc
        realloc(&mut h, 0x20, 0, 1 << 62); // fails: neither
        let t = h.totals();
        assert_eq!((t.allocs, t.frees, t.bytes_allocated), (3, 2, 55));
        assert_eq!((t.live_blocks, t.live_bytes), (1, 25));
        realloc(&mut h, 0x20, 0, 0); // realloc(p, 0) frees
        let t = h.totals();
        assert_eq!(
            (t.allocs, t.frees, t.live_blocks, t.live_bytes),
            (3, 3, 0, 0)
        );
    }

    #[test]
    fn address_reused_during_realloc_on_another_thread() {
        let mut h = Heap::new();
        h.apply(&alloc(0x10, 8));
        h.apply(&Event::ReallocStart { tid: 1, old: 0x10 });
        // Thread 2 is handed 0x10 while thread 1's realloc moves the block.
        h.apply(&Event::Alloc {
            tid: 2,
            kind: AllocKind::Malloc,
            ptr: 0x10,
            size: 4,
            stack: S,
        });
        h.apply(&Event::ReallocEnd {
            tid: 1,
            old: 0x10,
            new: 0x30,
            size: 16,
            stack: S,
        });
        let t = h.totals();
        assert_eq!(
            (t.allocs, t.frees, t.live_blocks, t.live_bytes),
            (3, 1, 2, 20)
        );
        assert_eq!(h.get(0x10).map(|b| b.tid), Some(2));
    }

    #[test]
    fn groups_by_stack_largest_first() {
        let mut h = Heap::new();
        for (i, (stack, size)) in [(0, 10), (1, 100), (0, 10), (2, 5)].iter().enumerate() {
            h.apply(&Event::Alloc {
                tid: 1,
                kind: AllocKind::Malloc,
                ptr: 0x100 + i as u64 * 16,
                size: *size,
                stack: StackId(*stack),
            });
        }
        let g = h.leak_groups();
        assert_eq!(g.len(), 3);
        assert_eq!((g[0].stack, g[0].blocks, g[0].bytes), (StackId(1), 1, 100));
        assert_eq!((g[1].stack, g[1].blocks, g[1].bytes), (StackId(0), 2, 20));
    }

    #[test]
    fn exec_starts_afresh() {
        let mut h = Heap::new();
        h.apply(&alloc(0x10, 8));
        h.apply(&Event::Exec);
        assert_eq!(h.totals(), Totals::default());
    }
}

//! The heap model: every live block, and totals with valgrind memcheck's accounting.
//!
//! Fed with [`Event`]s only; knows nothing of processes. The accounting follows the
//! report contract: an alloc is every successful allocation (realloc of NULL included),
//! a free is every release of a live block, a realloc that succeeds on a live block is
//! one free and one alloc, a failed realloc is neither, and a free of a pointer that is
//! not live is never a free (it is an error, or the allocator's own bookkeeping).
//!
//! Heap errors are found here, at the free's entry (before the allocator sees the
//! pointer and glibc aborts): a free of a block already freed and not handed out
//! since (`double_free`, with the first free's stack), of a pointer never handed
//! out or into the middle of a block (`invalid_free`), or by the wrong family
//! (`mismatched_free`: `delete` of `malloc` memory and the like). Recently freed
//! blocks are remembered for this, the oldest forgotten past [`FREED_REMEMBERED`]:
//! a double free of a block forgotten since is reported as an invalid free, as
//! valgrind does once a block has left its freed-blocks queue.

use crate::event::{AllocKind, Event, FreeKind, StackId, Tid};
use crate::hooks::HookFn;
use crate::leakcheck::Kind;
use serde::Serialize;
// Fx hashing: the keys are addresses and ids that memtrace made, hashed once per
// allocator call, where SipHash's protection against chosen keys buys nothing.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::collections::VecDeque;

mod live;
use live::{Live, Table, Vacant};

/// How many freed blocks are remembered for double-free reports.
pub const FREED_REMEMBERED: usize = 1 << 18;

/// How many frees ahead the slot of the freed block to forget is loaded.
const FORGET_AHEAD: usize = 8;

/// A block freed and not handed out again since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Freed {
    size: u64,
    alloc_stack: StackId,
    free_stack: StackId,
    /// Sequence number of the free, to match the eviction queue.
    seq: u64,
    /// The functions that allocated and freed it (a report's allocator frames).
    alloc_func: HookFn,
    free_func: HookFn,
}

impl Vacant for Freed {
    const VACANT: Freed = Freed {
        size: 0,
        alloc_stack: StackId(0),
        free_stack: StackId(0),
        seq: 0,
        alloc_func: HookFn::Free,
        free_func: HookFn::Free,
    };
}

/// What went wrong in one bad free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    DoubleFree,
    InvalidFree,
    /// The block came from `alloc`'s family and went to `free`'s.
    MismatchedFree {
        alloc: AllocKind,
        free: FreeKind,
    },
}

impl ErrorKind {
    /// The contract's name.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::DoubleFree => "double_free",
            ErrorKind::InvalidFree => "invalid_free",
            ErrorKind::MismatchedFree { .. } => "mismatched_free",
        }
    }
}

/// What makes two errors alike: kind and stacks.
type ErrorKey = (ErrorKind, StackId, Option<StackId>, Option<StackId>);

/// One heap error, or several alike: same kind and same stacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapError {
    pub kind: ErrorKind,
    /// The pointer passed to the deallocator (the first time, when several).
    pub ptr: u64,
    /// The bad call's stack.
    pub stack: StackId,
    /// The block concerned, where there is one: its start, size and allocation stack
    /// (the block freed before, the block pointed into, the mismatched block).
    pub block: Option<(u64, u64)>,
    pub alloc_stack: Option<StackId>,
    /// Where a double-freed block was freed first.
    pub first_free_stack: Option<StackId>,
    /// How many times this very error happened.
    pub count: u64,
    /// The deallocator of the bad call, the allocator of the block concerned and
    /// the deallocator of a double free's first free: the first frame of each
    /// stack in valgrind's reports and suppressions.
    pub func: HookFn,
    pub alloc_func: Option<HookFn>,
    pub first_free_func: Option<HookFn>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub size: u64,
    pub stack: StackId,
    pub kind: AllocKind,
    pub tid: Tid,
    /// Position of the allocating event in the trace (0-based), for ordering by age.
    pub seq: u64,
    /// What the last reachability scan found; None: allocated since, or no scan.
    pub leak: Option<Kind>,
    /// For a definitely lost block, the bytes of the blocks lost through it.
    pub indirect_bytes: u64,
    /// When it was allocated: nanoseconds since the trace started.
    pub at_ns: u64,
    /// The function that allocated it.
    pub func: HookFn,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Totals {
    pub allocs: u64,
    pub frees: u64,
    pub bytes_allocated: u64,
    pub live_blocks: u64,
    pub live_bytes: u64,
    pub peak_live_bytes: u64,
    /// Frees of blocks allocated before memtrace attached (attach mode; 0 at launch,
    /// where every block is seen from its allocation). Not counted in `frees`.
    #[serde(default)]
    pub frees_of_unknown: u64,
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

/// What one allocation stack (a site) has done so far, kept up to date event by event
/// so that a live view never has to walk every live block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SiteCounts {
    /// Allocations made from this stack over the whole trace...
    pub allocs: u64,
    /// ...and the bytes they asked for.
    pub bytes: u64,
    pub live_blocks: u64,
    pub live_bytes: u64,
}

/// Live blocks that share one allocation stack and one kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakGroup {
    pub stack: StackId,
    /// None: not classified (no scan, or allocated after it).
    pub kind: Option<Kind>,
    pub blocks: u64,
    pub bytes: u64,
    /// Bytes lost through these blocks (definite blocks only).
    pub indirect_bytes: u64,
    pub ages: Ages,
    /// The function that allocated the oldest of them (one call site calls one
    /// allocator, so in practice all of them).
    pub func: HookFn,
}

/// When a group's live blocks were allocated, against the questions of [`AgeQuery`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ages {
    /// The oldest and the youngest block's allocation time (ns since the trace began).
    pub first_ns: u64,
    pub last_ns: u64,
    /// Blocks (and their bytes) at least `min_age_ns` old at `end_ns`.
    pub old_blocks: u64,
    pub old_bytes: u64,
    /// Bytes of the blocks allocated at or after `recent_from_ns`.
    pub recent_bytes: u64,
    /// The address of the oldest block (allocated first), and its place in the trace.
    pub oldest: u64,
    pub oldest_seq: u64,
}

/// What [`Heap::leak_groups`] tells about the age of each group's blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgeQuery {
    pub end_ns: u64,
    pub min_age_ns: u64,
    pub recent_from_ns: u64,
}

#[derive(Default, Debug)]
pub struct Heap {
    /// By address (see `live.rs`).
    live: Live,
    /// The history before the trace is unknown (attach): a free of a pointer never
    /// seen is most likely of a block allocated before, not an error.
    unknown_history: bool,
    /// Time of the events being applied (ns since the trace began).
    now_ns: u64,
    /// Blocks freed and not handed out again, and the order they were freed in.
    /// A table of memtrace's own (see `live.rs`): every free inserts into it and,
    /// once it is full, removes its oldest; every allocation removes its address. The
    /// slots are loaded ahead as the live table's are.
    freed: Table<Freed>,
    freed_order: VecDeque<(u64, u64)>,
    /// Blocks handed out inside another hooked call and not (yet) the program's.
    nested: HashSet<u64>,
    errors: Vec<HeapError>,
    /// Where each kind of error with its stacks is in `errors`.
    error_index: HashMap<ErrorKey, usize>,
    /// Blocks whose realloc is in flight, by thread, and whether the old pointer
    /// is of a block from before the trace.
    in_realloc: HashMap<Tid, (u64, Option<Block>, bool)>,
    totals: Totals,
    uncounted: Uncounted,
    /// Per allocation stack: allocations made, blocks and bytes live.
    sites: HashMap<StackId, SiteCounts>,
    seq: u64,
}

impl Heap {
    pub fn new() -> Self {
        Self::default()
    }

    /// A heap whose blocks from before the trace are unknown (attach mode).
    pub fn attached() -> Self {
        Heap {
            unknown_history: true,
            // Every free of a block from before the trace asks what it points into.
            live: Live::new(true),
            ..Self::default()
        }
    }

    /// The time of the events applied from now on (ns since the trace began).
    pub fn set_now(&mut self, ns: u64) {
        self.now_ns = ns;
    }

    /// A free of `ptr`, not live, that may be of a block from before the trace: never
    /// freed since the trace began and not inside a block allocated since.
    fn before_trace(&self, ptr: u64) -> bool {
        self.unknown_history && !self.freed.contains_key(&ptr) && self.inside(ptr).is_none()
    }

    /// The live block that `ptr` points into (not at its start).
    fn inside(&self, ptr: u64) -> Option<(u64, &Block)> {
        self.live.containing(ptr)
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    pub fn uncounted(&self) -> Uncounted {
        self.uncounted
    }

    /// Heap errors in the order first seen; alike ones counted together.
    pub fn errors(&self) -> &[HeapError] {
        &self.errors
    }

    pub fn get(&self, ptr: u64) -> Option<&Block> {
        self.live.get(&ptr)
    }

    /// Every allocation stack seen, with its counts (sites whose blocks are all freed
    /// included: their allocation rate still matters to a live view).
    pub fn sites(&self) -> impl Iterator<Item = (StackId, SiteCounts)> + '_ {
        self.sites.iter().map(|(&s, &c)| (s, c))
    }

    /// Every live block as `(start, size)`, by address: what a reachability scan needs.
    /// A block whose realloc is in flight is still the program's until the call
    /// returns (it may well still point to others): it counts.
    pub fn live_spans(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.live.iter().map(|(&p, b)| (p, b.size)).collect();
        v.sort_unstable();
        v.extend(
            self.in_realloc
                .values()
                .filter_map(|(old, b, _)| b.map(|b| (*old, b.size))),
        );
        v.sort_unstable();
        v
    }

    /// The trace ended with reallocs still in flight (the process died, or was
    /// detached, inside one): their old blocks were never released, so they are live.
    pub fn end_of_trace(&mut self) {
        for (_, (old, block, _)) in std::mem::take(&mut self.in_realloc) {
            if let Some(b) = block {
                self.restore(old, b);
            }
        }
    }

    /// Every live block, in address order.
    pub fn live_blocks(&self) -> impl Iterator<Item = (u64, &Block)> {
        let mut v: Vec<(u64, &Block)> = self.live.iter().map(|(&p, b)| (p, b)).collect();
        v.sort_unstable_by_key(|&(p, _)| p);
        v.into_iter()
    }

    pub fn apply(&mut self, ev: &Event) {
        match *ev {
            Event::Alloc {
                tid,
                kind,
                ptr,
                size,
                stack,
                func,
            } => self.alloc(tid, kind, ptr, size, stack, func),
            Event::Free {
                ptr,
                kind,
                stack,
                internal,
                func,
                ..
            } => {
                if let Some(b) = self.take(ptr) {
                    self.check_family(ptr, &b, kind, stack, func);
                    self.totals.frees += 1;
                    self.remember_freed(ptr, &b, stack, func);
                } else if internal || self.nested.remove(&ptr) {
                    self.uncounted.internal_frees += 1;
                } else if self.before_trace(ptr) {
                    self.totals.frees_of_unknown += 1;
                } else {
                    self.uncounted.frees_not_live += 1;
                    self.bad_free(ptr, stack, func);
                }
            }
            Event::ReallocStart {
                tid,
                old,
                stack,
                internal,
                func,
            } => {
                let block = self.take(old);
                let mut unknown = false;
                match block {
                    Some(b) => self.check_family(old, &b, FreeKind::Free, stack, func),
                    None if internal || self.nested.remove(&old) => {}
                    None if self.before_trace(old) => unknown = true,
                    None => self.bad_free(old, stack, func),
                }
                self.in_realloc.insert(tid, (old, block, unknown));
            }
            Event::ReallocEnd {
                tid,
                old,
                new,
                size,
                stack,
                func,
            } => {
                let (started, block, unknown) = match self.in_realloc.remove(&tid) {
                    Some((o, b, u)) if o == old => (true, b, u),
                    Some((_, b, _)) => {
                        // A start without its end (the thread left the call some other
                        // way): put that block back before handling this one.
                        if let Some(b) = b {
                            self.restore(old, b);
                        }
                        (false, None, false)
                    }
                    None => (false, None, false),
                };
                let block = if started { block } else { self.take(old) };
                if new != 0 {
                    // Success: the old block (if we knew it) is freed, the new one allocated.
                    if let Some(b) = block {
                        self.totals.frees += 1;
                        self.remember_freed(old, &b, stack, func);
                    } else if unknown {
                        self.totals.frees_of_unknown += 1;
                    } else if old != 0 {
                        self.uncounted.frees_not_live += 1;
                    }
                    // realloc(NULL, n) is malloc(n), and valgrind names it so.
                    let func = if old == 0 { HookFn::Malloc } else { func };
                    self.alloc(tid, AllocKind::Malloc, new, size, stack, func);
                } else if size == 0 && old != 0 {
                    // glibc's realloc(p, 0) frees p and returns NULL.
                    if let Some(b) = block {
                        self.totals.frees += 1;
                        self.remember_freed(old, &b, stack, func);
                    } else if unknown {
                        self.totals.frees_of_unknown += 1;
                    }
                } else if let Some(b) = block {
                    // Failure: the old block is untouched and still live.
                    self.restore(old, b);
                }
            }
            Event::Nested { ptr } => {
                if ptr != 0 && !self.live.contains_key(&ptr) {
                    self.nested.insert(ptr);
                }
            }
            // Memory outside malloc: the mapping model's (see `crate::mappings`).
            Event::Mapping(_) => {}
            // The new image's heap is seen from its start.
            Event::Exec => {
                *self = Heap {
                    now_ns: self.now_ns,
                    ..Heap::new()
                }
            }
        }
    }

    /// What applying `ev` (a free, or a realloc's start) would say: no error, an
    /// error, or a double free. The same decisions as [`Heap::apply`], made before it
    /// so that only an erroneous free's stack has to be unwound.
    pub fn check_free(&self, ev: &Event) -> crate::recorder::FreeCheck {
        use crate::recorder::FreeCheck;
        let (ptr, kind, internal) = match *ev {
            Event::Free {
                ptr,
                kind,
                internal,
                ..
            } => (ptr, kind, internal),
            Event::ReallocStart { old, internal, .. } => (old, FreeKind::Free, internal),
            _ => return FreeCheck::Fine,
        };
        if let Some(b) = self.live.get(&ptr) {
            return if kind.matches() == b.kind {
                FreeCheck::Fine
            } else {
                FreeCheck::Error
            };
        }
        if internal || self.nested.contains(&ptr) || self.before_trace(ptr) {
            FreeCheck::Fine
        } else if self.freed.contains_key(&ptr) {
            FreeCheck::DoubleFree
        } else {
            FreeCheck::Error
        }
    }

    /// `ev` will be applied soon: the place of its block in the live table is
    /// loaded now, so that the look-ups then do not wait for memory.
    pub fn prefetch(&self, ev: &Event) {
        let ptr = match *ev {
            Event::Alloc { ptr, .. } | Event::Free { ptr, .. } => ptr,
            Event::ReallocStart { old, .. } => old,
            Event::ReallocEnd { new, .. } => new,
            _ => return,
        };
        self.live.prefetch(ptr);
        // A free inserts there; an allocation removes its address if freed before.
        self.freed.prefetch(ptr);
    }

    /// The sequence number of the free that made `ptr` a freed block remembered here
    /// (not handed out again since): it tags the free for whoever keeps its stack
    /// unwound late. Rises with each free while the image lasts.
    pub fn freed_tag(&self, ptr: u64) -> Option<u64> {
        self.freed.get(&ptr).map(|f| f.seq)
    }

    /// The stacks of a freed block's allocation and free, unwound only now (a double
    /// free of it is coming).
    pub fn amend_freed(
        &mut self,
        ptr: u64,
        alloc_stack: Option<StackId>,
        free_stack: Option<StackId>,
    ) {
        if let Some(f) = self.freed.get_mut(&ptr) {
            if let Some(s) = alloc_stack {
                f.alloc_stack = s;
            }
            if let Some(s) = free_stack {
                f.free_stack = s;
            }
        }
    }

    fn alloc(
        &mut self,
        tid: Tid,
        kind: AllocKind,
        ptr: u64,
        size: u64,
        stack: StackId,
        func: HookFn,
    ) {
        if ptr == 0 {
            return;
        }
        let block = Block {
            size,
            stack,
            kind,
            tid,
            seq: self.seq,
            leak: None,
            indirect_bytes: 0,
            at_ns: self.now_ns,
            func,
        };
        self.seq += 1;
        // One look-up for both: the block goes in, and a stale one comes out when the
        // allocator handed out an address we still had as live (its free was made by
        // code we do not hook: forget it; it was no free of ours).
        if let Some(stale) = self.live.insert(ptr, block) {
            self.uncount_live(&stale);
        }
        // Handed out again: freeing it is right from now on.
        self.freed.remove(&ptr);
        self.nested.remove(&ptr);
        let t = &mut self.totals;
        t.allocs += 1;
        t.bytes_allocated += size;
        t.live_blocks += 1;
        t.live_bytes += size;
        t.peak_live_bytes = t.peak_live_bytes.max(t.live_bytes);
        let site = self.sites.entry(stack).or_default();
        site.allocs += 1;
        site.bytes += size;
        site.live_blocks += 1;
        site.live_bytes += size;
    }

    /// Removes a live block without counting anything.
    fn take(&mut self, ptr: u64) -> Option<Block> {
        let b = self.live.remove(&ptr)?;
        self.uncount_live(&b);
        Some(b)
    }

    /// A block that left the live table: out of the live totals and its site's.
    fn uncount_live(&mut self, b: &Block) {
        self.totals.live_blocks -= 1;
        self.totals.live_bytes -= b.size;
        if let Some(site) = self.sites.get_mut(&b.stack) {
            site.live_blocks -= 1;
            site.live_bytes -= b.size;
        }
    }

    fn restore(&mut self, ptr: u64, b: Block) {
        self.totals.live_blocks += 1;
        self.totals.live_bytes += b.size;
        let site = self.sites.entry(b.stack).or_default();
        site.live_blocks += 1;
        site.live_bytes += b.size;
        self.live.insert(ptr, b);
    }

    fn remember_freed(&mut self, ptr: u64, b: &Block, free_stack: StackId, free_func: HookFn) {
        self.seq += 1;
        self.freed.insert(
            ptr,
            Freed {
                size: b.size,
                alloc_stack: b.stack,
                free_stack,
                seq: self.seq,
                alloc_func: b.func,
                free_func,
            },
        );
        self.freed_order.push_back((ptr, self.seq));
        while self.freed_order.len() > FREED_REMEMBERED {
            if let Some((old, seq)) = self.freed_order.pop_front() {
                // Only if that entry is still the one queued (not freed again since).
                if self.freed.get(&old).is_some_and(|f| f.seq == seq) {
                    self.freed.remove(&old);
                }
            }
            // The one forgotten a few frees from now.
            if let Some(&(soon, _)) = self.freed_order.get(FORGET_AHEAD) {
                self.freed.prefetch(soon);
            }
        }
    }

    /// A live block released by the wrong family of deallocator.
    fn check_family(&mut self, ptr: u64, b: &Block, free: FreeKind, stack: StackId, func: HookFn) {
        if free.matches() != b.kind {
            self.error(HeapError {
                kind: ErrorKind::MismatchedFree {
                    alloc: b.kind,
                    free,
                },
                ptr,
                stack,
                block: Some((ptr, b.size)),
                alloc_stack: Some(b.stack),
                first_free_stack: None,
                count: 1,
                func,
                alloc_func: Some(b.func),
                first_free_func: None,
            });
        }
    }

    /// A free, by the program, of a pointer that is not live.
    fn bad_free(&mut self, ptr: u64, stack: StackId, func: HookFn) {
        let error = if let Some(f) = self.freed.get(&ptr) {
            HeapError {
                kind: ErrorKind::DoubleFree,
                ptr,
                stack,
                block: Some((ptr, f.size)),
                alloc_stack: Some(f.alloc_stack),
                first_free_stack: Some(f.free_stack),
                count: 1,
                func,
                alloc_func: Some(f.alloc_func),
                first_free_func: Some(f.free_func),
            }
        } else {
            // Into the middle of a live block?
            let inside = self.inside(ptr);
            HeapError {
                kind: ErrorKind::InvalidFree,
                ptr,
                stack,
                block: inside.map(|(start, b)| (start, b.size)),
                alloc_stack: inside.map(|(_, b)| b.stack),
                first_free_stack: None,
                count: 1,
                func,
                alloc_func: inside.map(|(_, b)| b.func),
                first_free_func: None,
            }
        };
        self.error(error);
    }

    /// Records an error, counting it with an earlier one of the same kind and stacks.
    fn error(&mut self, e: HeapError) {
        let key = (e.kind, e.stack, e.alloc_stack, e.first_free_stack);
        match self.error_index.get(&key) {
            Some(&i) => self.errors[i].count += 1,
            None => {
                self.error_index.insert(key, self.errors.len());
                self.errors.push(e);
            }
        }
    }

    /// Gives the live blocks the kinds a reachability scan found: `blocks[i]` (start,
    /// size) has `kinds[i]`, and `indirect[i]` bytes lost through it. A block freed, or
    /// freed and handed out again, since the scan's list was taken keeps no kind.
    pub fn classify(&mut self, blocks: &[(u64, u64)], kinds: &[Kind], indirect: &[u64]) {
        let mut in_flight: HashMap<u64, &mut Block> = self
            .in_realloc
            .values_mut()
            .filter_map(|(old, b, _)| Some((*old, b.as_mut()?)))
            .collect();
        for (i, (&(start, size), &kind)) in blocks.iter().zip(kinds).enumerate() {
            let block = match self.live.get_mut(&start) {
                Some(b) => Some(b),
                None => in_flight.remove(&start),
            };
            if let Some(b) = block.filter(|b| b.size == size) {
                b.leak = Some(kind);
                b.indirect_bytes = indirect.get(i).copied().unwrap_or(0);
            }
        }
    }

    /// Live blocks grouped by allocation stack and kind, largest bytes first (ties:
    /// more blocks, then older stack first, then kind, so the order is stable), with
    /// their ages.
    pub fn leak_groups(&self, q: AgeQuery) -> Vec<LeakGroup> {
        let mut groups: HashMap<(StackId, Option<Kind>), LeakGroup> = HashMap::default();
        for (&ptr, b) in self.live.iter() {
            let g = groups.entry((b.stack, b.leak)).or_insert(LeakGroup {
                stack: b.stack,
                kind: b.leak,
                blocks: 0,
                bytes: 0,
                indirect_bytes: 0,
                ages: Ages {
                    first_ns: u64::MAX,
                    ..Ages::default()
                },
                func: b.func,
            });
            g.blocks += 1;
            g.bytes += b.size;
            g.indirect_bytes += b.indirect_bytes;
            let a = &mut g.ages;
            if b.seq < a.oldest_seq || a.oldest == 0 {
                (a.oldest_seq, a.oldest) = (b.seq, ptr);
                g.func = b.func;
            }
            a.first_ns = a.first_ns.min(b.at_ns);
            a.last_ns = a.last_ns.max(b.at_ns);
            if q.end_ns.saturating_sub(b.at_ns) >= q.min_age_ns {
                a.old_blocks += 1;
                a.old_bytes += b.size;
            }
            if b.at_ns >= q.recent_from_ns {
                a.recent_bytes += b.size;
            }
        }
        let mut v: Vec<LeakGroup> = groups.into_values().collect();
        v.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then(b.blocks.cmp(&a.blocks))
                .then(a.stack.cmp(&b.stack))
                .then(a.kind.cmp(&b.kind))
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FreeKind;
    use crate::hooks::HookFn;

    const S: StackId = StackId(0);

    fn alloc(ptr: u64, size: u64) -> Event {
        Event::Alloc {
            tid: 1,
            kind: AllocKind::Malloc,
            ptr,
            size,
            stack: S,
            func: HookFn::Malloc,
        }
    }
    fn free(ptr: u64) -> Event {
        Event::Free {
            tid: 1,
            kind: FreeKind::Free,
            ptr,
            stack: S,
            internal: false,
            func: HookFn::Free,
        }
    }
    fn realloc(h: &mut Heap, old: u64, new: u64, size: u64) {
        h.apply(&Event::ReallocStart {
            tid: 1,
            old,
            stack: S,
            internal: false,
            func: HookFn::Realloc,
        });
        h.apply(&Event::ReallocEnd {
            tid: 1,
            old,
            new,
            size,
            stack: S,
            func: HookFn::Realloc,
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

    fn free_at(ptr: u64, kind: FreeKind, stack: u32) -> Event {
        Event::Free {
            tid: 1,
            kind,
            ptr,
            stack: StackId(stack),
            internal: false,
            func: HookFn::Free,
        }
    }

    #[test]
    fn double_free_has_both_frees_and_the_allocation() {
        let mut h = Heap::new();
        h.apply(&Event::Alloc {
            tid: 1,
            kind: AllocKind::Malloc,
            ptr: 0x10,
            size: 8,
            stack: StackId(7),
            func: HookFn::Malloc,
        });
        h.apply(&free_at(0x10, FreeKind::Free, 8));
        h.apply(&free_at(0x10, FreeKind::Free, 9));
        let e = h.errors();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].kind, ErrorKind::DoubleFree);
        assert_eq!(
            (e[0].stack, e[0].first_free_stack, e[0].alloc_stack),
            (StackId(9), Some(StackId(8)), Some(StackId(7)))
        );
        assert_eq!(e[0].block, Some((0x10, 8)));
    }

    #[test]
    fn blocks_and_errors_know_their_allocator_and_deallocator() {
        let mut h = Heap::new();
        h.apply(&Event::Alloc {
            tid: 1,
            kind: AllocKind::New,
            ptr: 0x10,
            size: 8,
            stack: S,
            func: HookFn::new_op(false),
        });
        h.apply(&Event::Alloc {
            tid: 1,
            kind: AllocKind::Malloc,
            ptr: 0x20,
            size: 8,
            stack: S,
            func: HookFn::Calloc,
        });
        assert_eq!(h.get(0x20).map(|b| b.func), Some(HookFn::Calloc));
        let group = h.leak_groups(AgeQuery::default());
        assert_eq!(group[0].func, HookFn::new_op(false));
        // free of new'd memory: a mismatch, by free, of a block from _Znwm.
        h.apply(&free(0x10));
        let e = h.errors()[0];
        assert_eq!(
            (e.func, e.alloc_func, e.first_free_func),
            (HookFn::Free, Some(HookFn::new_op(false)), None)
        );
        // A double delete: the second call's function, the first one's, the block's.
        h.apply(&Event::Free {
            tid: 1,
            kind: FreeKind::Free,
            ptr: 0x20,
            stack: S,
            internal: false,
            func: HookFn::Free,
        });
        h.apply(&Event::Free {
            tid: 1,
            kind: FreeKind::Delete,
            ptr: 0x20,
            stack: StackId(3),
            internal: false,
            func: HookFn::delete_op(false),
        });
        let e = h.errors()[1];
        assert_eq!(e.kind, ErrorKind::DoubleFree);
        assert_eq!(
            (e.func, e.alloc_func, e.first_free_func),
            (
                HookFn::delete_op(false),
                Some(HookFn::Calloc),
                Some(HookFn::Free)
            )
        );
        // realloc(NULL, n) is a malloc, as valgrind names it; a realloc that moves
        // a block is a realloc.
        h.apply(&Event::ReallocEnd {
            tid: 1,
            old: 0,
            new: 0x30,
            size: 4,
            stack: StackId(5),
            func: HookFn::Reallocarray,
        });
        assert_eq!(h.get(0x30).map(|b| b.func), Some(HookFn::Malloc));
        realloc(&mut h, 0x30, 0x40, 8);
        assert_eq!(h.get(0x40).map(|b| b.func), Some(HookFn::Realloc));
        // Allocated bytes per site, freed or not: two blocks of 8, both freed, and
        // the realloc's 8 live.
        let site = h.sites().find(|(s, _)| *s == S).map(|(_, c)| c);
        assert_eq!(
            site.map(|c| (c.allocs, c.bytes, c.live_blocks)),
            Some((3, 24, 1))
        );
    }

    #[test]
    fn a_reused_address_is_freed_without_error() {
        let mut h = Heap::new();
        for _ in 0..1000 {
            h.apply(&alloc(0x10, 8));
            h.apply(&free(0x10));
        }
        // And through realloc, in place and moving.
        h.apply(&alloc(0x10, 8));
        realloc(&mut h, 0x10, 0x10, 16);
        realloc(&mut h, 0x10, 0x20, 32);
        h.apply(&alloc(0x10, 8));
        h.apply(&free(0x10));
        h.apply(&free(0x20));
        assert!(h.errors().is_empty(), "{:?}", h.errors());
        assert_eq!(h.uncounted().frees_not_live, 0);
    }

    #[test]
    fn invalid_frees_say_which_block_they_point_into() {
        let mut h = Heap::new();
        h.apply(&alloc(0x100, 48));
        h.apply(&free(0x108));
        h.apply(&free(0x7ffd_0000));
        let e = h.errors();
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].kind, e[0].block, e[0].alloc_stack),
            (ErrorKind::InvalidFree, Some((0x100, 48)), Some(S))
        );
        assert_eq!((e[1].kind, e[1].block), (ErrorKind::InvalidFree, None));
        // The block is untouched.
        assert_eq!(h.totals().live_blocks, 1);
    }

    #[test]
    fn mismatched_families_are_errors_and_still_frees() {
        let pairs = [
            (AllocKind::New, FreeKind::Free),
            (AllocKind::NewArray, FreeKind::Free),
            (AllocKind::Malloc, FreeKind::Delete),
            (AllocKind::Malloc, FreeKind::DeleteArray),
            (AllocKind::New, FreeKind::DeleteArray),
            (AllocKind::NewArray, FreeKind::Delete),
        ];
        for (alloc, free) in pairs {
            let mut h = Heap::new();
            h.apply(&Event::Alloc {
                tid: 1,
                kind: alloc,
                ptr: 0x10,
                size: 4,
                stack: S,
                func: HookFn::Malloc,
            });
            h.apply(&free_at(0x10, free, 1));
            assert_eq!(
                h.errors().iter().map(|e| e.kind).collect::<Vec<_>>(),
                vec![ErrorKind::MismatchedFree { alloc, free }]
            );
            assert_eq!((h.totals().frees, h.totals().live_blocks), (1, 0));
        }
        let mut h = Heap::new();
        h.apply(&Event::Alloc {
            tid: 1,
            kind: AllocKind::NewArray,
            ptr: 0x10,
            size: 4,
            stack: S,
            func: HookFn::Malloc,
        });
        h.apply(&free_at(0x10, FreeKind::DeleteArray, 1));
        assert!(h.errors().is_empty());
    }

    #[test]
    fn alike_errors_are_counted_together() {
        let mut h = Heap::new();
        for i in 0..3 {
            h.apply(&free_at(0x1000 + i * 16, FreeKind::Free, 4));
        }
        h.apply(&free_at(0x2000, FreeKind::Free, 5));
        let counts: Vec<u64> = h.errors().iter().map(|e| e.count).collect();
        assert_eq!(counts, vec![3, 1]);
    }

    #[test]
    fn realloc_of_a_freed_block_is_a_double_free() {
        let mut h = Heap::new();
        h.apply(&alloc(0x10, 8));
        h.apply(&free(0x10));
        realloc(&mut h, 0x10, 0, 1 << 62);
        assert_eq!(h.errors()[0].kind, ErrorKind::DoubleFree);
    }

    #[test]
    fn the_oldest_freed_blocks_are_forgotten() {
        let mut h = Heap::new();
        let n = FREED_REMEMBERED as u64 + 10;
        for i in 0..n {
            h.apply(&alloc(0x10 + i * 16, 8));
            h.apply(&free(0x10 + i * 16));
        }
        assert_eq!(h.freed.len(), FREED_REMEMBERED);
        h.apply(&free(0x10));
        h.apply(&free(0x10 + (n - 1) * 16));
        let kinds: Vec<ErrorKind> = h.errors().iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![ErrorKind::InvalidFree, ErrorKind::DoubleFree]);
    }

    #[test]
    fn frees_of_nested_blocks_are_no_errors() {
        let mut h = Heap::new();
        // The exception object of a failing operator new, freed by the runtime.
        h.apply(&Event::Nested { ptr: 0x40 });
        h.apply(&free(0x40));
        // malloc under operator new: the outer call makes it the program's block.
        h.apply(&Event::Nested { ptr: 0x50 });
        h.apply(&Event::Alloc {
            tid: 1,
            kind: AllocKind::New,
            ptr: 0x50,
            size: 4,
            stack: S,
            func: HookFn::Malloc,
        });
        h.apply(&free_at(0x50, FreeKind::Delete, 1));
        h.apply(&free_at(0x50, FreeKind::Delete, 2));
        assert_eq!(
            h.errors().iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec![ErrorKind::DoubleFree]
        );
        assert_eq!((h.totals().allocs, h.totals().frees), (1, 1));
        assert_eq!(h.uncounted().internal_frees, 1);
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
            func: HookFn::Free,
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
        h.apply(&Event::ReallocStart {
            tid: 1,
            old: 0x10,
            stack: S,
            internal: false,
            func: HookFn::Realloc,
        });
        // Thread 2 is handed 0x10 while thread 1's realloc moves the block.
        h.apply(&Event::Alloc {
            tid: 2,
            kind: AllocKind::Malloc,
            ptr: 0x10,
            size: 4,
            stack: S,
            func: HookFn::Malloc,
        });
        h.apply(&Event::ReallocEnd {
            tid: 1,
            old: 0x10,
            new: 0x30,
            size: 16,
            stack: S,
            func: HookFn::Realloc,
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
                func: HookFn::Malloc,
            });
        }
        let g = h.leak_groups(AgeQuery::default());
        assert_eq!(g.len(), 3);
        h.apply(&free(0x100));
        let zero = h.sites().find(|(s, _)| *s == StackId(0)).map(|(_, c)| c);
        assert_eq!(
            zero,
            Some(SiteCounts {
                allocs: 2,
                bytes: 20,
                live_blocks: 1,
                live_bytes: 10
            })
        );
        assert_eq!((g[0].stack, g[0].blocks, g[0].bytes), (StackId(1), 1, 100));
        assert_eq!((g[1].stack, g[1].blocks, g[1].bytes), (StackId(0), 2, 20));
    }

    #[test]
    fn one_stack_gives_one_group_per_kind() {
        let mut h = Heap::new();
        for ptr in [0x100, 0x200, 0x300] {
            h.apply(&alloc(ptr, 10));
        }
        h.classify(
            &[(0x100, 10), (0x200, 10), (0x300, 99)],
            &[Kind::Definite, Kind::Reachable, Kind::Reachable],
            &[20, 0, 0],
        );
        // Allocated after the scan: not classified.
        h.apply(&alloc(0x400, 10));
        let g: Vec<(Option<Kind>, u64)> = h
            .leak_groups(AgeQuery::default())
            .iter()
            .map(|g| (g.kind, g.blocks))
            .collect();
        // 0x300's size differs from the scan's: that scan was of another block.
        assert_eq!(
            g,
            vec![
                (None, 2),
                (Some(Kind::Definite), 1),
                (Some(Kind::Reachable), 1)
            ]
        );
    }

    #[test]
    fn a_realloc_in_flight_at_the_end_keeps_its_block() {
        let mut h = Heap::new();
        h.apply(&alloc(0x100, 10));
        h.apply(&Event::ReallocStart {
            tid: 1,
            old: 0x100,
            stack: S,
            internal: false,
            func: HookFn::Realloc,
        });
        // A scan now sees the block, and classifies it.
        assert_eq!(h.live_spans(), vec![(0x100, 10)]);
        h.classify(&[(0x100, 10)], &[Kind::Reachable], &[0]);
        // The process ends inside the call: the block is still live, with its kind.
        h.end_of_trace();
        assert_eq!((h.totals().live_blocks, h.totals().live_bytes), (1, 10));
        assert_eq!(h.get(0x100).and_then(|b| b.leak), Some(Kind::Reachable));
    }

    #[test]
    fn frees_from_before_attach_are_counted_apart() {
        let mut h = Heap::attached();
        h.apply(&free(0x500));
        realloc(&mut h, 0x600, 0x700, 10); // moves an unknown block: one alloc
        realloc(&mut h, 0x800, 0, 0); // realloc(p, 0) of an unknown block frees it
        realloc(&mut h, 0x900, 0, 1 << 62); // fails: the unknown block stays
        assert!(h.errors().is_empty(), "{:?}", h.errors());
        let t = h.totals();
        assert_eq!((t.allocs, t.frees, t.frees_of_unknown), (1, 0, 3));
        assert_eq!(h.uncounted().frees_not_live, 0);
        // Known blocks are still checked: a double free and a free into a block.
        h.apply(&alloc(0x1000, 64));
        h.apply(&free(0x1000));
        h.apply(&free(0x1000));
        h.apply(&alloc(0x2000, 64));
        h.apply(&free(0x2008));
        let kinds: Vec<ErrorKind> = h.errors().iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![ErrorKind::DoubleFree, ErrorKind::InvalidFree]);
        // At launch the same unknown free is an error.
        let mut l = Heap::new();
        l.apply(&free(0x500));
        assert_eq!(l.errors()[0].kind, ErrorKind::InvalidFree);
    }

    #[test]
    fn groups_know_the_age_of_their_blocks() {
        let mut h = Heap::new();
        for (i, t) in [0u64, 100, 900].iter().enumerate() {
            h.set_now(*t);
            h.apply(&alloc(0x100 + i as u64 * 16, 10));
        }
        let q = AgeQuery {
            end_ns: 1000,
            min_age_ns: 500,
            recent_from_ns: 800,
        };
        let a = h.leak_groups(q)[0].ages;
        assert_eq!((a.first_ns, a.last_ns), (0, 900));
        assert_eq!((a.old_blocks, a.old_bytes, a.recent_bytes), (2, 20, 10));
    }

    #[test]
    fn exec_starts_afresh() {
        let mut h = Heap::new();
        h.apply(&alloc(0x10, 8));
        h.apply(&Event::Exec);
        assert_eq!(h.totals(), Totals::default());
    }
}

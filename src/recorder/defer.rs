//! Unwinding only what matters.
//!
//! Most blocks are freed within milliseconds of their allocation, and a stack is
//! only ever looked at for a block still live (a leak, the live view) or for a heap
//! error. So events wait here [`UNWIND_AGE`] before they reach the heap, with their
//! stacks still raw (the entry record's copy, in the ring). When one leaves:
//! - an allocation whose block was freed meanwhile (by the matching deallocator)
//!   gets no stack: [`NOT_UNWOUND`];
//! - any other allocation is unwound;
//! - a free is unwound only if the heap says it is an error; for a double free the
//!   first free's stack (and the block's, if it never lived long) is unwound too,
//!   from the copies kept of recent frees;
//! - a call that makes a mapping (mmap, a successful mremap, shmat) is always
//!   unwound: such calls are rare, and a mapping has no young-block shortcut (the
//!   blocks above are malloc's only).
//!
//! The copies stay in the ring until nothing here needs them (the ring's tail waits);
//! when the ring fills, they are taken out of it ([`RawStack::owned`]).

use super::calls::{Out, RawStack};
use crate::event::{AllocKind, Event, MapCall, StackId};
use std::collections::VecDeque;
use std::time::Duration;

/// How long events wait before they reach the heap.
pub const UNWIND_AGE: Duration = Duration::from_millis(100);
/// How long the stacks of frees are kept for double-free reports (at most: their
/// copies are in the ring, which reuses the space when it must).
pub const RECENT_FREES_KEPT: Duration = Duration::from_secs(2);
/// At most this many bytes of stack copies taken out of the ring; beyond it, the
/// oldest events leave early.
pub const OWNED_BUDGET: u64 = 64 << 20;

/// The stack of an allocation or free whose stack was never needed.
pub const NOT_UNWOUND: StackId = StackId(u32::MAX - 2);

/// What the heap says of a free about to be applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeCheck {
    /// A free of a live block, by the right family, or one that is no error.
    Fine,
    /// An error: its stack is needed.
    Error,
    /// A double free: also the first free's stack (and the block's).
    DoubleFree,
}

/// The heap's side of a release (implemented by the trace's sink).
pub trait Heap {
    fn check_free(&self, ev: &Event) -> FreeCheck;
    /// The tag of the free that made `ptr` a freed block the heap remembers (not
    /// handed out again since): the same for as long as it stays so, rising with
    /// each free while the image lasts. None when it remembers no such free.
    fn freed_tag(&self, ptr: u64) -> Option<u64>;
    /// The stacks of a freed block's allocation and free, unwound late.
    fn amend_freed(&mut self, ptr: u64, alloc_stack: Option<StackId>, free_stack: Option<StackId>);
    fn event(&mut self, ev: Event);
    /// `ev` will reach the heap soon: start loading what it looks up.
    fn prefetch(&self, _ev: &Event) {}
}

/// Unwinds raw stacks.
pub trait Unwind {
    fn unwind(&mut self, raw: &RawStack) -> StackId;
    /// A copy of a stack that nothing here holds in the ring any more, if the ring
    /// has not reused its space yet.
    fn still_there(&mut self, raw: &RawStack) -> Option<Box<[u8]>>;
    /// This stack will be unwound soon: start loading it.
    fn prefetch(&mut self, _raw: &RawStack) {}
}

/// Stale entries of the young blocks' map allowed beyond twice the queue's length.
const YOUNG_SLACK: usize = 4096;

/// How many events ahead the stacks to unwind are loaded.
const PREFETCH_AHEAD: usize = 6;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeferStats {
    /// Stacks unwound (allocations still live when their turn came, errors).
    pub unwound: u64,
    /// Stacks never unwound: blocks freed young, frees that were no error.
    pub never_needed: u64,
    /// Stack copies taken out of the ring because it filled up.
    pub evacuated: u64,
    /// Events that left before their time because the ring filled up.
    pub early: u64,
    /// Double frees whose first free's stack was gone from the ring.
    pub first_free_lost: u64,
}

#[derive(Debug)]
struct Item {
    ev: Event,
    raw: Option<RawStack>,
    /// When it was read (ns, any fixed origin).
    at: u64,
    /// An allocation whose block was freed by a later event here.
    freed_young: bool,
    /// A free of a block allocated by an event still here: no error can come of it.
    frees_young: bool,
    /// The young block's allocation stack, kept for a double free later.
    young_alloc: Option<RawStack>,
}

impl Item {
    /// The oldest ring position this item reads a stack copy from.
    fn pin(&self) -> Option<u64> {
        [&self.raw, &self.young_alloc]
            .into_iter()
            .flatten()
            .filter(|r| r.owned.is_none())
            .map(|r| r.pin)
            .min()
    }

    fn owned_bytes(&self) -> u64 {
        [&self.raw, &self.young_alloc]
            .into_iter()
            .flatten()
            .filter_map(|r| r.owned.as_ref())
            .map(|o| o.len() as u64)
            .sum()
    }
}

/// A free that was no error, kept a while: a double free of its block reports
/// where it was freed (and allocated, if the block never lived long enough to be
/// unwound). Its copies are not held: they are read if the ring still has them.
///
/// Found by the tag the heap gave the free ([`Heap::freed_tag`]): the heap knows
/// whether the block was handed out again or freed once more since, and these are
/// kept in the order of their tags, with no map of their own. (A `Defer` lasts one
/// image, as the tags do: after an exec, the recording starts anew.) A map from pointer to
/// free took an insert into a table as big as the frees of a lap of the ring, for
/// every free: the reader's costliest look-up.
#[derive(Debug)]
struct Recent {
    tag: u64,
    ptr: u64,
    at: u64,
    /// None once forgotten (its copies written over, or taken by a double free).
    kept: Option<Kept>,
}

#[derive(Debug)]
struct Kept {
    free: RawStack,
    alloc: Option<RawStack>,
}

type Map<K, V> = rustc_hash::FxHashMap<K, V>;

#[derive(Debug, Default)]
pub struct Defer {
    queue: VecDeque<Item>,
    /// Sequence number of the queue's front.
    first: u64,
    /// The smallest pin of the queue, as a monotonic queue: `(seq, pos)`, positions
    /// rising, front the minimum.
    pins: VecDeque<(u64, u64)>,
    /// Young blocks: pointer to the sequence number of their allocation. An entry
    /// whose allocation has left the queue is stale, and known as such by its number
    /// (below `first`): entries are not removed as their events leave, which would be
    /// a look-up more for every allocation; they are swept out now and then.
    young: Map<u64, u64>,
    /// Recent frees, in the order of their tags.
    recent: VecDeque<Recent>,
    /// Recent frees whose copies memtrace owns, moved out of `recent` to leave with
    /// their time without holding up those behind them; in the order of their tags.
    recent_owned: VecDeque<Recent>,
    owned_bytes: u64,
    pub stats: DeferStats,
}

fn is_alloc(ev: &Event) -> Option<u64> {
    match *ev {
        Event::Alloc { ptr, .. } => Some(ptr),
        Event::ReallocEnd { new, .. } if new != 0 => Some(new),
        _ => None,
    }
}

fn set_stack(ev: &mut Event, id: StackId) {
    match ev {
        Event::Alloc { stack, .. }
        | Event::Free { stack, .. }
        | Event::ReallocStart { stack, .. }
        | Event::ReallocEnd { stack, .. } => *stack = id,
        Event::Mapping(MapCall::Map { stack, .. } | MapCall::RemapEnd { stack, .. }) => *stack = id,
        Event::Mapping(_) => {}
        Event::Nested { .. } | Event::Exec => {}
    }
}

impl Defer {
    pub fn new() -> Defer {
        Defer::default()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The oldest ring position a stack copy held here is at.
    pub fn oldest_pin(&self) -> Option<u64> {
        self.pins.front().map(|&(_, p)| p)
    }

    /// An event made by a record, at `now`.
    pub fn push(&mut self, out: Out, now: u64) {
        let seq = self.first + self.queue.len() as u64;
        let mut item = Item {
            ev: out.ev,
            raw: out.raw,
            at: now,
            freed_young: false,
            frees_young: false,
            young_alloc: None,
        };
        match item.ev {
            Event::Free {
                ptr,
                kind,
                internal: false,
                ..
            } => {
                if let Some(young) = self.free_of_young(ptr, |k| kind.matches() == k) {
                    item.frees_young = true;
                    item.young_alloc = young;
                }
            }
            // The old block is gone (moved, or freed by realloc(p, 0)).
            Event::ReallocEnd { old, new, size, .. } if old != 0 && (new != 0 || size == 0) => {
                let _ = self.free_of_young(old, |k| k == AllocKind::Malloc);
            }
            _ => {}
        }
        if let Some(ptr) = is_alloc(&item.ev) {
            if self.young.len() >= 2 * self.queue.len() + YOUNG_SLACK {
                let first = self.first;
                self.young.retain(|_, s| *s >= first);
            }
            self.young.insert(ptr, seq);
        }
        if let Some(pin) = item.pin() {
            while self.pins.back().is_some_and(|&(_, p)| p >= pin) {
                self.pins.pop_back();
            }
            self.pins.push_back((seq, pin));
        }
        self.owned_bytes += item.owned_bytes();
        self.queue.push_back(item);
    }

    /// A free of `ptr`: if its allocation is still here and of the family `ok`
    /// accepts, neither needs a stack. Returns the allocation's raw stack then.
    fn free_of_young(
        &mut self,
        ptr: u64,
        ok: impl Fn(AllocKind) -> bool,
    ) -> Option<Option<RawStack>> {
        let s = self.young.remove(&ptr)?;
        let alloc = self.queue.get_mut(s.checked_sub(self.first)? as usize)?;
        let family = match alloc.ev {
            Event::Alloc { kind, .. } => kind,
            _ => AllocKind::Malloc,
        };
        if !ok(family) {
            return None;
        }
        alloc.freed_young = true;
        Some(alloc.raw.clone())
    }

    /// Hands the heap every event older than [`UNWIND_AGE`] (all of them with
    /// `all`), unwinding the stacks that matter.
    pub fn release(&mut self, now: u64, all: bool, unwind: &mut dyn Unwind, heap: &mut dyn Heap) {
        while let Some(front) = self.queue.front() {
            let due = now.saturating_sub(front.at) >= UNWIND_AGE.as_nanos() as u64;
            if !(all || due || self.owned_bytes > OWNED_BUDGET) {
                break;
            }
            self.prefetch_ahead(unwind, heap);
            self.pop(now, unwind, heap);
        }
        let kept = RECENT_FREES_KEPT.as_nanos() as u64;
        for recent in [&mut self.recent, &mut self.recent_owned] {
            while recent
                .front()
                .is_some_and(|r| r.kept.is_none() || now.saturating_sub(r.at) >= kept)
            {
                recent.pop_front();
            }
        }
    }

    /// Forgets the recent frees whose copies in the ring lie below `limit` (written
    /// over by now: a double free could not get their stacks back anyway). Without
    /// this, a program freeing millions of blocks a second kept millions of them.
    pub fn forget_overwritten(&mut self, limit: u64) {
        // Each entry looked at once: one whose copy memtrace owns (taken out of a
        // full ring) moves aside, to leave with its time, and holds up none behind it.
        while let Some(r) = self.recent.front() {
            match &r.kept {
                Some(k) if k.free.owned.is_some() => {
                    let r = self.recent.pop_front().expect("a front");
                    self.recent_owned.push_back(r);
                    continue;
                }
                Some(k) if k.free.pin >= limit => break,
                _ => {}
            }
            self.recent.pop_front();
        }
    }

    /// The pointers of the recent frees kept, in the order of their tags.
    #[cfg(test)]
    fn recent_kept(&self) -> Vec<u64> {
        let mut kept: Vec<&Recent> = self
            .recent
            .iter()
            .chain(&self.recent_owned)
            .filter(|r| r.kept.is_some())
            .collect();
        kept.sort_by_key(|r| r.tag);
        kept.into_iter().map(|r| r.ptr).collect()
    }

    /// The ring must reuse its space below `limit`: the events holding copies there
    /// leave now, younger than their time (a block freed young is still never
    /// unwound).
    pub fn relieve(&mut self, limit: u64, now: u64, unwind: &mut dyn Unwind, heap: &mut dyn Heap) {
        while self.oldest_pin().is_some_and(|p| p < limit) {
            if self.queue.is_empty() {
                break;
            }
            self.stats.early += 1;
            self.prefetch_ahead(unwind, heap);
            self.pop(now, unwind, heap);
        }
    }

    /// The stacks a few events ahead that will be unwound (allocations not freed
    /// young): their copies, written long ago, come from memory meanwhile; and the
    /// heap's entries that event will look up.
    fn prefetch_ahead(&self, unwind: &mut dyn Unwind, heap: &dyn Heap) {
        if let Some(item) = self.queue.get(PREFETCH_AHEAD) {
            heap.prefetch(&item.ev);
            if !item.freed_young && is_alloc(&item.ev).is_some() {
                if let Some(raw) = item.raw.as_ref().filter(|r| r.owned.is_none()) {
                    unwind.prefetch(raw);
                }
            }
        }
    }

    fn pop(&mut self, now: u64, unwind: &mut dyn Unwind, heap: &mut dyn Heap) {
        let Some(item) = self.queue.pop_front() else {
            return;
        };
        if self.pins.front().is_some_and(|&(s, _)| s == self.first) {
            self.pins.pop_front();
        }
        self.owned_bytes = self.owned_bytes.saturating_sub(item.owned_bytes());
        self.first += 1;
        self.leave(item, now, unwind, heap);
    }

    fn leave(&mut self, mut item: Item, now: u64, unwind: &mut dyn Unwind, heap: &mut dyn Heap) {
        let mut keep_free = false;
        let stack = match item.ev {
            Event::Alloc { .. } | Event::ReallocEnd { .. } => {
                if item.freed_young || is_alloc(&item.ev).is_none() {
                    None
                } else {
                    item.raw.as_ref().map(|r| unwind.unwind(r))
                }
            }
            Event::Free { ptr, .. } | Event::ReallocStart { old: ptr, .. } => {
                let check = if item.frees_young {
                    FreeCheck::Fine
                } else {
                    heap.check_free(&item.ev)
                };
                if check == FreeCheck::DoubleFree {
                    self.first_free(ptr, unwind, heap);
                }
                keep_free = matches!(item.ev, Event::Free { .. }) && check == FreeCheck::Fine;
                match check {
                    FreeCheck::Fine => None,
                    _ => item.raw.as_ref().map(|r| unwind.unwind(r)),
                }
            }
            Event::Mapping(ref mut m) => {
                let made = !matches!(m, MapCall::RemapEnd { new: u64::MAX, .. });
                match (m.stack_mut(), &item.raw) {
                    (Some(_), Some(r)) if made => Some(unwind.unwind(r)),
                    _ => None,
                }
            }
            Event::Nested { .. } | Event::Exec => None,
        };
        match stack {
            Some(s) => {
                self.stats.unwound += 1;
                set_stack(&mut item.ev, s);
            }
            None => {
                if item.raw.is_some() {
                    self.stats.never_needed += 1;
                }
                set_stack(&mut item.ev, NOT_UNWOUND);
            }
        }
        let ptr = match item.ev {
            Event::Free { ptr, .. } => ptr,
            _ => 0,
        };
        let keep_free = keep_free && ptr != 0 && item.raw.is_some();
        // The heap's tag for the address before this free (a free it does not
        // remember, libc's own or a nested block's, leaves an older one there).
        let before = if keep_free { heap.freed_tag(ptr) } else { None };
        heap.event(item.ev);
        if let (true, Some(free)) = (keep_free, item.raw) {
            // Kept only under a tag this very free got: it is above every tag kept
            // (the heap's tags rise), so the queue stays in tag order.
            if let Some(tag) = heap.freed_tag(ptr).filter(|&t| Some(t) != before) {
                self.recent.push_back(Recent {
                    tag,
                    ptr,
                    at: now,
                    kept: Some(Kept {
                        free,
                        alloc: item.young_alloc,
                    }),
                });
            }
        }
    }

    /// A double free of `ptr` is about to be applied: its first free's stack (and
    /// its allocation's, if never unwound), unwound now if the ring still has them.
    fn first_free(&mut self, ptr: u64, unwind: &mut dyn Unwind, heap: &mut dyn Heap) {
        let kept = heap.freed_tag(ptr).and_then(|tag| {
            [&mut self.recent, &mut self.recent_owned]
                .into_iter()
                .find_map(|recent| {
                    let at = recent.binary_search_by_key(&tag, |r| r.tag).ok()?;
                    Some(&mut recent[at])
                })
                .filter(|r| r.ptr == ptr)?
                .kept
                .take()
        });
        let Some(r) = kept else {
            self.stats.first_free_lost += 1;
            return;
        };
        let mut unwound = |raw: &RawStack, stats: &mut DeferStats| {
            let copy = match &raw.owned {
                Some(_) => None,
                None => Some(unwind.still_there(raw)?),
            };
            let raw = RawStack {
                owned: copy.or_else(|| raw.owned.clone()),
                ..raw.clone()
            };
            stats.unwound += 1;
            Some(unwind.unwind(&raw))
        };
        let free = unwound(&r.free, &mut self.stats);
        if free.is_none() {
            self.stats.first_free_lost += 1;
        }
        let alloc = r.alloc.as_ref().and_then(|a| unwound(a, &mut self.stats));
        heap.amend_freed(ptr, alloc, free);
    }

    /// Every stack copy still needed here is taken out of the ring (`copy` reads
    /// one): the ring may reuse all of it.
    pub fn evacuate(&mut self, copy: &mut dyn FnMut(&RawStack) -> Box<[u8]>) {
        let mut owned = 0;
        for item in &mut self.queue {
            for raw in [&mut item.raw, &mut item.young_alloc].into_iter().flatten() {
                if raw.owned.is_none() {
                    let bytes = copy(raw);
                    owned += bytes.len() as u64;
                    raw.owned = Some(bytes);
                    self.stats.evacuated += 1;
                }
            }
        }
        self.owned_bytes += owned;
        self.pins.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FreeKind;

    #[derive(Default)]
    struct FakeHeap {
        events: Vec<Event>,
        double: Vec<u64>,
        amended: Vec<(u64, Option<StackId>, Option<StackId>)>,
        /// The tag of each block freed and not handed out again.
        freed: std::collections::HashMap<u64, u64>,
    }

    impl Heap for FakeHeap {
        fn check_free(&self, ev: &Event) -> FreeCheck {
            match ev {
                Event::Free { ptr, .. } if self.double.contains(ptr) => FreeCheck::DoubleFree,
                _ => FreeCheck::Fine,
            }
        }
        fn amend_freed(&mut self, ptr: u64, a: Option<StackId>, f: Option<StackId>) {
            self.amended.push((ptr, a, f));
        }
        fn freed_tag(&self, ptr: u64) -> Option<u64> {
            self.freed.get(&ptr).copied()
        }
        fn event(&mut self, ev: Event) {
            match ev {
                Event::Free { ptr, .. } => {
                    self.freed.insert(ptr, self.events.len() as u64);
                }
                Event::Alloc { ptr, .. } => {
                    self.freed.remove(&ptr);
                }
                _ => {}
            }
            self.events.push(ev);
        }
    }

    /// "Unwinds" a raw stack to the id of its entry record's position; the ring
    /// still has every copy below `gone_from`.
    struct ById(u64);
    impl Unwind for ById {
        fn unwind(&mut self, raw: &RawStack) -> StackId {
            self.0 += 1;
            StackId(raw.pos as u32)
        }
        fn still_there(&mut self, raw: &RawStack) -> Option<Box<[u8]>> {
            (raw.pos < 1000).then(|| vec![0u8; 8].into_boxed_slice())
        }
    }

    fn raw(pos: u64) -> Option<RawStack> {
        Some(RawStack {
            pos,
            pin: pos,
            owned: None,
        })
    }

    fn alloc(ptr: u64, pos: u64) -> Out {
        Out {
            ev: Event::Alloc {
                tid: 1,
                kind: AllocKind::Malloc,
                ptr,
                size: 8,
                stack: super::super::calls::RAW,
                func: crate::hooks::HookFn::Malloc,
            },
            raw: raw(pos),
        }
    }

    fn free(ptr: u64, pos: u64, kind: FreeKind) -> Out {
        Out {
            ev: Event::Free {
                tid: 1,
                kind,
                ptr,
                stack: super::super::calls::RAW,
                internal: false,
                func: crate::hooks::HookFn::Free,
            },
            raw: raw(pos),
        }
    }

    fn stack_of(ev: &Event) -> StackId {
        match *ev {
            Event::Alloc { stack, .. } | Event::Free { stack, .. } => stack,
            _ => panic!(),
        }
    }

    #[test]
    fn a_block_freed_young_is_never_unwound_and_a_live_one_is() {
        let mut d = Defer::new();
        let t = 1_000u64;
        d.push(alloc(0x10, 100), t);
        d.push(alloc(0x20, 200), t);
        d.push(free(0x10, 300, FreeKind::Free), t);
        assert_eq!(d.oldest_pin(), Some(100));
        let (mut h, mut u) = (FakeHeap::default(), ById(0));
        // Not yet due.
        d.release(t, false, &mut u, &mut h);
        assert!(h.events.is_empty());
        d.release(t + UNWIND_AGE.as_nanos() as u64, false, &mut u, &mut h);
        assert_eq!(h.events.len(), 3);
        assert_eq!(stack_of(&h.events[0]), NOT_UNWOUND);
        assert_eq!(stack_of(&h.events[1]), StackId(200));
        assert_eq!(stack_of(&h.events[2]), NOT_UNWOUND);
        assert_eq!(u.0, 1);
        assert_eq!((d.stats.unwound, d.stats.never_needed), (1, 2));
        // Nothing holds the ring any more (the free's stack is read back if needed).
        assert_eq!(d.oldest_pin(), None);
        assert_eq!(d.recent_kept(), vec![0x10]);
        d.release(
            t + (UNWIND_AGE + RECENT_FREES_KEPT).as_nanos() as u64,
            false,
            &mut u,
            &mut h,
        );
        assert!(d.recent.is_empty() && d.recent_owned.is_empty());
    }

    #[test]
    fn a_free_after_its_allocation_left_is_not_young_and_stale_entries_go() {
        let mut d = Defer::new();
        let t = 1_000u64;
        let (mut h, mut u) = (FakeHeap::default(), ById(0));
        d.push(alloc(0x10, 100), t);
        d.release(t + UNWIND_AGE.as_nanos() as u64, false, &mut u, &mut h);
        // The allocation left (unwound, in the heap); its entry is stale, not gone.
        assert_eq!(u.0, 1);
        // Its free is an old block's: the heap is asked, and the stack kept.
        d.push(free(0x10, 300, FreeKind::Free), t);
        let item = d.queue.back().expect("queued");
        assert!(!item.frees_young && item.young_alloc.is_none());
        // Allocations that leave while others come: the map stays within its bound.
        let mut now = t;
        for i in 0..(4 * YOUNG_SLACK as u64) {
            d.push(alloc(0x1000 + i * 16, 400 + i), now);
            now += UNWIND_AGE.as_nanos() as u64;
            d.release(now, false, &mut u, &mut h);
            assert!(d.young.len() <= 2 * d.queue.len() + YOUNG_SLACK + 1);
        }
    }

    #[test]
    fn the_oldest_pin_follows_the_queue() {
        let mut d = Defer::new();
        let t = 1_000u64;
        d.push(alloc(0x10, 300), t);
        d.push(alloc(0x20, 100), t);
        d.push(alloc(0x30, 200), t);
        assert_eq!(d.oldest_pin(), Some(100));
        let (mut h, mut u) = (FakeHeap::default(), ById(0));
        // Make room below 150: the first two events leave early.
        d.relieve(150, t, &mut u, &mut h);
        assert_eq!(h.events.len(), 2);
        assert_eq!(d.oldest_pin(), Some(200));
        assert_eq!(d.stats.early, 2);
    }

    #[test]
    fn a_mismatched_free_of_a_young_block_keeps_both_stacks() {
        let mut d = Defer::new();
        let t = 1_000u64;
        d.push(alloc(0x10, 100), t);
        d.push(free(0x10, 200, FreeKind::Delete), t);
        let (mut h, mut u) = (FakeHeap::default(), ById(0));
        // Tell the heap the free is an error: the fake says Fine for non-doubles, so
        // check the allocation side: it must have been unwound.
        d.release(t, true, &mut u, &mut h);
        assert_eq!(stack_of(&h.events[0]), StackId(100));
    }

    #[test]
    fn a_double_free_gets_the_first_frees_stack() {
        let mut d = Defer::new();
        let t = 1_000u64;
        let (mut h, mut u) = (FakeHeap::default(), ById(0));
        d.push(alloc(0x10, 100), t);
        d.push(free(0x10, 200, FreeKind::Free), t);
        d.release(t, true, &mut u, &mut h);
        h.double.push(0x10);
        d.push(free(0x10, 300, FreeKind::Free), t);
        d.release(t, true, &mut u, &mut h);
        assert_eq!(stack_of(&h.events[2]), StackId(300));
        assert_eq!(
            h.amended,
            vec![(0x10, Some(StackId(100)), Some(StackId(200)))]
        );
    }

    #[test]
    fn a_mapping_is_always_unwound_and_never_taken_for_a_block() {
        let mut d = Defer::new();
        let t = 1_000u64;
        let map = |addr, pos, internal| Out {
            ev: Event::Mapping(MapCall::Map {
                tid: 1,
                addr,
                len: 4096,
                prot: 3,
                flags: 0x22,
                source: crate::event::MapSource::Anonymous,
                offset: 0,
                stack: super::super::calls::RAW,
                func: crate::hooks::HookFn::Mmap,
                internal,
            }),
            raw: raw(pos),
        };
        d.push(map(0x7000, 100, false), t);
        // A free of the same address (a bad free) does not make it young.
        d.push(free(0x7000, 200, FreeKind::Free), t);
        d.push(
            Out {
                ev: Event::Mapping(MapCall::Unmap {
                    tid: 1,
                    addr: 0x7000,
                    len: 4096,
                    internal: false,
                }),
                raw: None,
            },
            t,
        );
        d.push(map(0x9000, 300, true), t);
        let (mut h, mut u) = (FakeHeap::default(), ById(0));
        d.release(t, true, &mut u, &mut h);
        match &h.events[0] {
            Event::Mapping(MapCall::Map { stack, .. }) => assert_eq!(*stack, StackId(100)),
            other => panic!("{other:?}"),
        }
        // The C library's own mapping keeps no stack.
        match &h.events[3] {
            Event::Mapping(MapCall::Map { stack, .. }) => assert_eq!(*stack, NOT_UNWOUND),
            other => panic!("{other:?}"),
        }
        assert_eq!(u.0, 1);
    }

    #[test]
    fn evacuated_copies_free_the_ring() {
        let mut d = Defer::new();
        let t = 1_000u64;
        d.push(alloc(0x10, 100), t);
        d.evacuate(&mut |r| vec![0u8; r.pos as usize].into_boxed_slice());
        assert_eq!(d.oldest_pin(), None);
        assert_eq!(d.owned_bytes, 100);
        let (mut h, mut u) = (FakeHeap::default(), ById(0));
        d.release(t, true, &mut u, &mut h);
        assert_eq!(d.owned_bytes, 0);
        assert_eq!(stack_of(&h.events[0]), StackId(100));
    }

    /// The heap itself behind the queue.
    type RealHeap = crate::heap::Heap;

    impl Heap for RealHeap {
        fn check_free(&self, ev: &Event) -> FreeCheck {
            RealHeap::check_free(self, ev)
        }
        fn freed_tag(&self, ptr: u64) -> Option<u64> {
            RealHeap::freed_tag(self, ptr)
        }
        fn amend_freed(&mut self, ptr: u64, a: Option<StackId>, f: Option<StackId>) {
            RealHeap::amend_freed(self, ptr, a, f);
        }
        fn event(&mut self, ev: Event) {
            self.apply(&ev);
        }
    }

    fn internal_free(ptr: u64, pos: u64) -> Out {
        let mut f = free(ptr, pos, FreeKind::Free);
        if let Event::Free { internal, .. } = &mut f.ev {
            *internal = true;
        }
        f
    }

    fn new(ptr: u64, pos: u64) -> Out {
        let mut n = alloc(ptr, pos);
        if let Event::Alloc { kind, .. } = &mut n.ev {
            *kind = AllocKind::New;
        }
        n
    }

    fn first_free_of_double(h: &RealHeap) -> Option<StackId> {
        h.errors()
            .iter()
            .find(|e| e.kind == crate::heap::ErrorKind::DoubleFree)
            .expect("a double free")
            .first_free_stack
    }

    /// A double free's first free is the heap's last free of the block: never an
    /// older free of the same address kept here, whose block was handed out again
    /// (read in one batch, the free is kept when it leaves, after the allocation
    /// that follows it was read).
    #[test]
    fn a_double_free_never_gets_an_older_frees_stack() {
        let mut d = Defer::new();
        let t = 1_000u64;
        let (mut h, mut u) = (RealHeap::new(), ById(0));
        d.push(alloc(0x10, 100), t);
        // A free that is no error: kept here.
        d.push(free(0x10, 200, FreeKind::Free), t);
        // Handed out by operator new, then given to free(): an error, its stack
        // unwound there and then, and nothing kept here.
        d.push(new(0x10, 300), t);
        d.push(free(0x10, 400, FreeKind::Free), t);
        // Freed again: the first free is the one at 400.
        d.push(free(0x10, 500, FreeKind::Free), t);
        d.release(t, true, &mut u, &mut h);
        assert_eq!(first_free_of_double(&h), Some(StackId(400)));
    }

    /// A free the heap does not remember (the C library's own, or of a nested block)
    /// finds an older free's tag for its address: it is not kept under it, whether
    /// that free was an error (not kept) or left with its time.
    #[test]
    fn a_free_the_heap_does_not_remember_is_not_kept() {
        let t = 1_000u64;
        let later = t + 10 * RECENT_FREES_KEPT.as_nanos() as u64;
        for expired in [false, true] {
            let mut d = Defer::new();
            let (mut h, mut u) = (RealHeap::new(), ById(0));
            let mut step = |d: &mut Defer, out: Out, at: u64| {
                d.push(out, at);
                d.release(at, true, &mut u, &mut h);
            };
            let at = if expired {
                step(&mut d, alloc(0x10, 100), t);
                step(&mut d, free(0x10, 200, FreeKind::Free), t);
                assert_eq!(d.recent_kept(), vec![0x10]);
                // The free at 200 leaves with its time.
                step(&mut d, alloc(0x20, 250), later);
                assert!(d.recent_kept().is_empty());
                later
            } else {
                step(&mut d, new(0x10, 100), t);
                // Mismatched: unwound there and then (200), not kept.
                step(&mut d, free(0x10, 200, FreeKind::Free), t);
                t
            };
            step(&mut d, internal_free(0x10, 300), at);
            assert!(d.recent_kept().is_empty(), "expired {expired}");
            step(&mut d, free(0x10, 400, FreeKind::Free), at);
            let want = if expired { NOT_UNWOUND } else { StackId(200) };
            assert_eq!(first_free_of_double(&h), Some(want), "expired {expired}");
        }
    }

    /// Recent frees are kept for double-free reports only while the ring still holds
    /// their copies: those written over since are forgotten, whatever their age.
    #[test]
    fn recent_frees_written_over_in_the_ring_are_forgotten() {
        let mut d = Defer::new();
        let t = 1_000u64;
        for (i, ptr) in [0x10u64, 0x20, 0x30].into_iter().enumerate() {
            d.push(alloc(ptr, 100 + i as u64), t);
        }
        for (i, ptr) in [0x10u64, 0x20, 0x30].into_iter().enumerate() {
            d.push(free(ptr, 300 + 100 * i as u64, FreeKind::Free), t);
        }
        let (mut h, mut u) = (FakeHeap::default(), ById(0));
        d.release(t + UNWIND_AGE.as_nanos() as u64, false, &mut u, &mut h);
        assert_eq!(d.recent_kept(), vec![0x10, 0x20, 0x30]);
        d.forget_overwritten(450);
        assert_eq!(d.recent_kept(), vec![0x30]);
        assert_eq!(d.recent.len(), 1);
    }

    /// A recent free whose copy memtrace owns stays (until its time), and holds up
    /// none of those behind it.
    #[test]
    fn an_owned_copy_holds_up_no_forgetting() {
        let mut d = Defer::new();
        let t = 1_000u64;
        for (i, ptr) in [0x10u64, 0x20, 0x30].into_iter().enumerate() {
            d.push(alloc(ptr, 100 + i as u64), t);
        }
        d.push(free(0x10, 300, FreeKind::Free), t);
        d.evacuate(&mut |r| vec![0u8; r.pos as usize].into_boxed_slice());
        d.push(free(0x20, 400, FreeKind::Free), t);
        d.push(free(0x30, 500, FreeKind::Free), t);
        let (mut h, mut u) = (FakeHeap::default(), ById(0));
        d.release(t + UNWIND_AGE.as_nanos() as u64, false, &mut u, &mut h);
        assert_eq!(d.recent_kept(), vec![0x10, 0x20, 0x30]);
        d.forget_overwritten(450);
        assert_eq!(d.recent_kept(), vec![0x10, 0x30]);
        assert_eq!((d.recent.len(), d.recent_owned.len()), (1, 1));
        // Written over later, the owned one still stays, and its double free finds it.
        d.forget_overwritten(10_000);
        assert_eq!(d.recent_kept(), vec![0x10]);
        assert!(d.recent.is_empty());
        h.double.push(0x10);
        d.push(free(0x10, 600, FreeKind::Free), t);
        d.release(t, true, &mut u, &mut h);
        assert_eq!(
            h.amended,
            vec![(0x10, Some(StackId(100)), Some(StackId(300)))]
        );
        // It leaves with its time.
        d.release(
            t + (UNWIND_AGE + RECENT_FREES_KEPT).as_nanos() as u64,
            false,
            &mut u,
            &mut h,
        );
        assert!(d.recent_owned.is_empty());
    }
}

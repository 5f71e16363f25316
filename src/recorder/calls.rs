//! From records to events: each thread's calls still open, which calls are nested
//! (made by the allocator itself), and what each call means ([`HookFn::entry`] and
//! [`HookFn::exit`]). Pure: the same whatever wrote the records (the generated code,
//! or memtrace at a stop).
//!
//! A mapping call (mmap, munmap, mremap...) made while an allocator call is open on
//! its thread, from the C library's own code, is the allocator's: glibc's malloc
//! maps its large chunks and arenas from its own internal functions (sysmalloc,
//! new_heap), not from the hooked entry points, and those mappings are heap. One made
//! from the program's code meanwhile is the program's: a new_handler that operator
//! new calls back, a signal handler run while the thread is inside malloc. A mapping
//! call made from the C library's own code otherwise (a thread's stack, a locale
//! file, the munmap inside free, which has no open frame) is the library's: an event
//! marked `internal`, which the mapping model applies but never counts as the
//! program's.

use super::record::{Entry, Return};
use crate::event::{Event, StackId, Tid};
use crate::hooks::HookFn;
use rustc_hash::FxHashMap as HashMap;

/// A stack not known yet: the entry record's copy, unwound when needed. The record
/// itself says whose stack it is and where (read back when it is unwound).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawStack {
    /// The entry record that holds the copy.
    pub pos: u64,
    /// The oldest record the copy is read from (`pos`, or the start of its chain).
    pub pin: u64,
    /// The whole record, its stack whole, once taken out of the ring (which must
    /// reuse its space).
    pub owned: Option<Box<[u8]>>,
}

impl RawStack {
    pub fn of(e: &Entry) -> RawStack {
        RawStack {
            pos: e.pos,
            pin: e.base.min(e.pos),
            owned: None,
        }
    }
}

/// Placeholder stack of an event whose stack is still raw.
pub const RAW: StackId = StackId(u32::MAX - 1);

/// An event, and the raw stack its `stack` stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Out {
    pub ev: Event,
    pub raw: Option<RawStack>,
}

/// Where a call was made from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// From the allocator's own code (a hooked function, the C++ runtime, the return
    /// stub of a tail call): inside another hooked call, such a call is nested.
    pub allocator: bool,
    /// From the allocator's own object (libc): a free glibc makes on its own behalf.
    pub internal: bool,
    /// A mapping call from here, made while an allocator call is open, maps for the
    /// heap (the C library's code, or anywhere when malloc's internals have no names).
    pub heap_maps: bool,
}

#[derive(Clone, Debug)]
struct Open {
    pos: u64,
    func: HookFn,
    args: [u64; 6],
    sp: u64,
    nested: bool,
    /// Made from the allocator's own object (see [`Caller::internal`]).
    internal: bool,
    raw: Option<RawStack>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallStats {
    pub nested_calls: u64,
    /// Open calls dropped because their thread left them without returning
    /// (longjmp, an exception).
    pub abandoned_frames: u64,
    /// Returns with no open call (a call open before memtrace came).
    pub unmatched_returns: u64,
}

#[derive(Debug, Default)]
pub struct Calls {
    threads: HashMap<Tid, Vec<Open>>,
    pub stats: CallStats,
}

impl Calls {
    pub fn new() -> Calls {
        Calls::default()
    }

    /// An entry: returns the event it makes now (a free, a realloc's start).
    pub fn entry(&mut self, e: &Entry, caller: Caller) -> Option<Out> {
        let frames = self.threads.entry(e.tid).or_default();
        // An open call whose stack slot is below this entry's was left without
        // returning (longjmp): forget it.
        while frames.last().is_some_and(|f| f.sp < e.sp) {
            frames.pop();
            self.stats.abandoned_frames += 1;
        }
        let args = e.args;
        // Only an allocator call makes the calls inside it nested: a mapping call
        // makes no hooked call of its own.
        let allocator_open = frames.iter().any(|f| !f.func.is_mapping());
        // malloc's own mappings are made from libc's internals, not from a hooked
        // function: for them, the C library's code counts as the allocator's.
        let from_allocator = caller.allocator || (e.func.is_mapping() && caller.heap_maps);
        let nested = allocator_open && from_allocator;
        if nested {
            // operator new -> malloc: the outer call is the program's.
            self.stats.nested_calls += 1;
            if e.hooked_return {
                frames.push(Open {
                    pos: e.pos,
                    func: e.func,
                    args,
                    sp: e.sp,
                    nested: true,
                    internal: caller.internal,
                    raw: None,
                });
            }
            return None;
        }
        // The C library's own mappings are not the program's: no stack needed.
        let own_mapping = e.func.is_mapping() && caller.internal;
        let raw = (e.func.needs_stack(args) && !own_mapping).then(|| RawStack::of(e));
        let out = e
            .func
            .entry(e.tid, args, RAW, caller.internal)
            .event
            .map(|ev| Out {
                ev,
                raw: raw.clone(),
            });
        if e.hooked_return {
            frames.push(Open {
                pos: e.pos,
                func: e.func,
                args,
                sp: e.sp,
                nested: false,
                internal: caller.internal,
                raw,
            });
        }
        out
    }

    /// A return: the event it makes (an allocation, a realloc's end, a nested
    /// pointer).
    pub fn ret(&mut self, r: &Return) -> Option<Out> {
        let Some(frames) = self.threads.get_mut(&r.tid) else {
            self.stats.unmatched_returns += 1;
            return None;
        };
        let Some(i) = frames.iter().rposition(|f| f.pos == r.entry_pos) else {
            self.stats.unmatched_returns += 1;
            return None;
        };
        self.stats.abandoned_frames += (frames.len() - i - 1) as u64;
        let f = frames.drain(i..).next()?;
        if f.nested {
            return f.func.watched_when_nested().then_some(Out {
                ev: Event::Nested { ptr: r.value },
                raw: None,
            });
        }
        let out_ptr = (f.func == HookFn::PosixMemalign && r.value as u32 == 0).then_some(r.out);
        let ev = f
            .func
            .exit(r.tid, f.args, r.value, out_ptr, RAW, f.internal)?;
        Some(Out { ev, raw: f.raw })
    }

    /// The stack of the entry at `pos` (just made into `out`, and maybe an open
    /// call) is `copy`, out of the ring.
    pub fn own(&mut self, tid: Tid, pos: u64, copy: &[u8], out: Option<&mut Out>) {
        let opened = self.threads.get_mut(&tid).into_iter().flatten();
        let raws = opened
            .filter(|f| f.pos == pos)
            .filter_map(|f| f.raw.as_mut())
            .chain(out.and_then(|o| o.raw.as_mut()));
        for raw in raws.filter(|r| r.pos == pos) {
            raw.owned = Some(copy.into());
        }
    }

    /// The thread is unwinding its stack: none of its open calls will return.
    pub fn unwind(&mut self, tid: Tid) {
        if let Some(frames) = self.threads.get_mut(&tid) {
            self.stats.abandoned_frames += frames.len() as u64;
            frames.clear();
        }
    }

    /// The thread is gone, and every record reserved before `before` was read: its
    /// calls opened before then will not return. Calls opened since are a new
    /// thread's that has its id (kept).
    pub fn thread_gone(&mut self, tid: Tid, before: u64) {
        if let Some(frames) = self.threads.get_mut(&tid) {
            frames.retain(|f| f.pos >= before && f.pos != u64::MAX);
            if frames.is_empty() {
                self.threads.remove(&tid);
            }
        }
    }

    /// A call that was in flight when memtrace attached: its inner calls are nested.
    /// `sp` is below its return address's slot, so that a call made later from the
    /// same depth drops it.
    pub fn push_in_flight(&mut self, tid: Tid, func: HookFn, sp: u64) {
        self.threads.entry(tid).or_default().push(Open {
            pos: u64::MAX,
            func,
            args: [0; 6],
            sp,
            nested: true,
            internal: false,
            raw: None,
        });
    }

    /// Whether the thread has a call open (a debugger stop shows its block).
    pub fn open_calls(&self, tid: Tid) -> usize {
        self.threads.get(&tid).map_or(0, Vec::len)
    }

    /// The raw stacks open calls hold: their records must stay readable, or be
    /// taken out of the ring.
    pub fn raw_stacks_mut(&mut self) -> impl Iterator<Item = &mut RawStack> {
        self.threads
            .values_mut()
            .flat_map(|v| v.iter_mut())
            .filter_map(|f| f.raw.as_mut())
    }

    pub fn forget_all(&mut self) {
        self.threads.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AllocKind, MapCall};

    fn entry(pos: u64, tid: Tid, func: HookFn, a0: u64, sp: u64) -> Entry {
        Entry {
            pos,
            tid,
            func,
            hooked_return: func.hooks_return(),
            args: [a0, 0, 0, 0, 0, 0],
            ret: 0x5000,
            sp,
            fp: 0,
            stack_len: 0,
            full_len: 0,
            prev: memtrace_arch::recorder::NO_RECORD,
            base: pos,
            skipped: (0, 0),
        }
    }

    fn ret(pos: u64, tid: Tid, entry_pos: u64, value: u64) -> Return {
        Return {
            pos,
            tid,
            entry_pos,
            value,
            out: 0,
        }
    }

    const PROGRAM: Caller = Caller {
        allocator: false,
        internal: false,
        heap_maps: false,
    };
    const ALLOCATOR: Caller = Caller {
        allocator: true,
        internal: false,
        heap_maps: false,
    };
    /// The C library's own code, outside the hooked functions (sysmalloc, free's
    /// munmap_chunk, pthread_create's allocate_stack).
    const LIBC: Caller = Caller {
        allocator: false,
        internal: true,
        heap_maps: true,
    };

    fn mmap_entry(pos: u64, tid: Tid, len: u64, sp: u64) -> Entry {
        let mut e = entry(pos, tid, HookFn::Mmap, 0, sp);
        e.args = [
            0,
            len,
            3,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
            u64::MAX,
            0,
        ];
        e
    }

    #[test]
    fn a_gone_thread_forgets_only_the_calls_opened_before_its_end() {
        let mut c = Calls::new();
        c.entry(&entry(0, 7, HookFn::Malloc, 16, 0x1000), PROGRAM);
        // Thread 7 ended when the head was at 500; a new thread 7 (its id reused)
        // opened a call at 600 before the reading got there.
        c.entry(&entry(600, 7, HookFn::Malloc, 32, 0x8000), PROGRAM);
        c.thread_gone(7, 500);
        assert_eq!(c.open_calls(7), 1);
        assert_eq!(c.ret(&ret(100, 7, 0, 0x10)), None);
        assert_eq!(c.stats.unmatched_returns, 1);
        let alloc = c.ret(&ret(700, 7, 600, 0x20)).unwrap();
        assert!(matches!(alloc.ev, Event::Alloc { size: 32, .. }));
        c.thread_gone(7, 800);
        assert_eq!(c.open_calls(7), 0);
    }

    #[test]
    fn mmap_inside_malloc_is_the_heaps_when_the_c_library_calls_it() {
        let mut c = Calls::new();
        c.entry(&entry(0, 1, HookFn::Malloc, 1 << 20, 0x1000), PROGRAM);
        // sysmalloc (libc, not a hooked function) maps the chunk.
        assert_eq!(c.entry(&mmap_entry(112, 1, 1 << 20, 0xe00), LIBC), None);
        assert_eq!(c.ret(&ret(224, 1, 112, 0x7f00_0000_0000)), None);
        let alloc = c.ret(&ret(272, 1, 0, 0x7f00_0000_0010)).unwrap();
        assert!(matches!(alloc.ev, Event::Alloc { .. }));
        assert_eq!(c.stats.nested_calls, 1);
        // Another thread's mmap meanwhile is its own.
        c.entry(&entry(300, 2, HookFn::Realloc, 0x10, 0x9000), PROGRAM);
        c.entry(&mmap_entry(400, 3, 4096, 0x5000), PROGRAM);
        let map = c.ret(&ret(500, 3, 400, 0x7f00_0010_0000)).unwrap();
        assert!(matches!(
            map.ev,
            Event::Mapping(MapCall::Map {
                internal: false,
                len: 4096,
                ..
            })
        ));
        assert_eq!(map.raw.map(|r| r.pos), Some(400), "its stack is wanted");
    }

    #[test]
    fn the_programs_mmap_while_an_allocator_call_is_open_is_the_programs() {
        let mut c = Calls::new();
        c.entry(
            &entry(0, 1, HookFn::new_op(false), 1 << 20, 0x1000),
            PROGRAM,
        );
        c.entry(&entry(112, 1, HookFn::Malloc, 1 << 20, 0xf00), ALLOCATOR);
        // A signal handler on the same stack (or a new_handler operator new calls
        // back) maps memory: the call returns into the program's code.
        assert_eq!(c.entry(&mmap_entry(224, 1, 8192, 0xd00), PROGRAM), None);
        let map = c.ret(&ret(336, 1, 224, 0x7f00_0020_0000)).unwrap();
        assert!(matches!(
            map.ev,
            Event::Mapping(MapCall::Map {
                internal: false,
                len: 8192,
                ..
            })
        ));
        assert_eq!(map.raw.map(|r| r.pos), Some(224), "its stack is wanted");
        assert_eq!(c.stats.nested_calls, 1, "only malloc inside operator new");
    }

    #[test]
    fn the_c_librarys_own_mapping_calls_are_marked_and_need_no_stack() {
        let mut c = Calls::new();
        // free has no open frame: the munmap of an mmap'd chunk inside it.
        let mut unmap = entry(0, 1, HookFn::Munmap, 0x7f00_0000_0000, 0x1000);
        unmap.args[1] = 1 << 20;
        let out = c.entry(&unmap, LIBC).unwrap();
        assert!(matches!(
            out.ev,
            Event::Mapping(MapCall::Unmap { internal: true, .. })
        ));
        assert_eq!(out.raw, None);
        // pthread_create maps a thread's stack.
        c.entry(&mmap_entry(112, 1, 8 << 20, 0x1000), LIBC);
        let stack = c.ret(&ret(224, 1, 112, 0x7e00_0000_0000)).unwrap();
        assert!(matches!(
            stack.ev,
            Event::Mapping(MapCall::Map { internal: true, .. })
        ));
        assert_eq!(stack.raw, None);
    }

    #[test]
    fn an_open_mapping_call_nests_nothing() {
        let mut c = Calls::new();
        c.entry(&mmap_entry(0, 1, 4096, 0x1000), PROGRAM);
        // A signal handler's malloc on the same stack, from the allocator's code or not.
        c.entry(&entry(112, 1, HookFn::Malloc, 8, 0x800), ALLOCATOR);
        assert!(c.ret(&ret(224, 1, 112, 0x7000)).is_some());
        assert_eq!(c.stats.nested_calls, 0);
    }

    #[test]
    fn operator_new_counts_once() {
        let mut c = Calls::new();
        let new = HookFn::new_op(false);
        assert_eq!(c.entry(&entry(0, 1, new, 40, 0x1000), PROGRAM), None);
        // malloc called by operator new: nested.
        assert_eq!(
            c.entry(&entry(112, 1, HookFn::Malloc, 40, 0xf00), ALLOCATOR),
            None
        );
        let nested = c.ret(&ret(224, 1, 112, 0xabc0)).unwrap();
        assert_eq!(nested.ev, Event::Nested { ptr: 0xabc0 });
        let alloc = c.ret(&ret(272, 1, 0, 0xabc0)).unwrap();
        assert!(matches!(
            alloc.ev,
            Event::Alloc {
                kind: AllocKind::New,
                ptr: 0xabc0,
                size: 40,
                ..
            }
        ));
        assert_eq!(alloc.raw.map(|r| r.pos), Some(0));
        assert_eq!(c.stats.nested_calls, 1);
    }

    #[test]
    fn a_signal_handler_allocating_inside_a_call_is_the_programs() {
        let mut c = Calls::new();
        let new = HookFn::new_op(false);
        c.entry(&entry(0, 1, new, 40, 0x1000), PROGRAM);
        // The handler runs on the same stack, below; its malloc is called by the
        // program's handler, not by operator new.
        c.entry(&entry(112, 1, HookFn::Malloc, 8, 0x800), PROGRAM);
        let handler = c.ret(&ret(224, 1, 112, 0x7000)).unwrap();
        assert!(matches!(
            handler.ev,
            Event::Alloc {
                ptr: 0x7000,
                size: 8,
                ..
            }
        ));
        assert_eq!(c.stats.nested_calls, 0);
    }

    #[test]
    fn free_is_seen_at_entry_and_longjmp_drops_open_calls() {
        let mut c = Calls::new();
        c.entry(&entry(0, 1, HookFn::Malloc, 40, 0x800), PROGRAM);
        // longjmp back up, then free from higher on the stack.
        let free = c
            .entry(&entry(112, 1, HookFn::Free, 0xabc0, 0x1000), PROGRAM)
            .unwrap();
        assert!(matches!(free.ev, Event::Free { ptr: 0xabc0, .. }));
        assert_eq!(c.stats.abandoned_frames, 1);
        // Its return comes no more: unmatched.
        assert_eq!(c.ret(&ret(300, 1, 0, 0x10)), None);
        assert_eq!(c.stats.unmatched_returns, 1);
    }

    #[test]
    fn posix_memalign_reports_what_it_wrote() {
        let mut c = Calls::new();
        let mut e = entry(0, 1, HookFn::PosixMemalign, 0x7ff0, 0x1000);
        e.args[2] = 100;
        c.entry(&e, PROGRAM);
        let out = c
            .ret(&Return {
                out: 0x4000,
                ..ret(200, 1, 0, 0)
            })
            .unwrap();
        assert!(matches!(
            out.ev,
            Event::Alloc {
                ptr: 0x4000,
                size: 100,
                ..
            }
        ));
    }

    #[test]
    fn a_call_in_flight_at_attach_makes_inner_calls_nested() {
        let mut c = Calls::new();
        c.push_in_flight(1, HookFn::new_op(false), 0xfff);
        assert_eq!(
            c.entry(&entry(0, 1, HookFn::Malloc, 8, 0xf00), ALLOCATOR),
            None
        );
        // A later call from above the in-flight one drops it.
        assert!(c
            .entry(&entry(112, 1, HookFn::Free, 0x10, 0x1000), PROGRAM)
            .is_some());
    }

    #[test]
    fn unwinding_forgets_the_threads_calls() {
        let mut c = Calls::new();
        c.entry(&entry(0, 1, HookFn::new_op(false), 8, 0x1000), PROGRAM);
        assert_eq!(c.open_calls(1), 1);
        c.unwind(1);
        assert_eq!(c.open_calls(1), 0);
        assert_eq!(c.stats.abandoned_frames, 1);
    }
}

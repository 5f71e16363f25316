//! The one seam between tracing and analysis: allocation events.
//!
//! The tracer turns breakpoint hits into [`Event`]s; the heap model, reports and (later)
//! the TUI consume them and never see a pid. Stacks are interned: an event carries a
//! [`StackId`], and the raw return addresses live once in the [`StackTable`].

use crate::hooks::HookFn;
use rustc_hash::FxHashMap as HashMap;

/// A kernel thread id in the target.
pub type Tid = i32;

/// Which family allocated a block, so that the matching deallocator can be checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocKind {
    /// malloc, calloc, realloc, the memalign family.
    Malloc,
    /// C++ `operator new`.
    New,
    /// C++ `operator new[]`.
    NewArray,
}

/// Which deallocator freed a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FreeKind {
    /// free (and realloc to size 0).
    Free,
    /// C++ `operator delete`.
    Delete,
    /// C++ `operator delete[]`.
    DeleteArray,
}

impl FreeKind {
    /// The allocation family this deallocator belongs to.
    pub fn matches(self) -> AllocKind {
        match self {
            FreeKind::Free => AllocKind::Malloc,
            FreeKind::Delete => AllocKind::New,
            FreeKind::DeleteArray => AllocKind::NewArray,
        }
    }
}

/// Interned call stack: index into a [`StackTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StackId(pub u32);

/// One allocator call as the program made it (the outermost call only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A successful allocation returned `ptr` for `size` requested bytes.
    Alloc {
        tid: Tid,
        kind: AllocKind,
        ptr: u64,
        size: u64,
        stack: StackId,
        /// The function called (malloc, calloc, `_Znwm`...): a report's allocator
        /// frame, which suppressions written for valgrind expect first.
        func: HookFn,
    },
    /// A deallocation of a non-null pointer, seen at the call's entry (before the
    /// allocator runs, so before the address can be handed out again).
    Free {
        tid: Tid,
        kind: FreeKind,
        ptr: u64,
        stack: StackId,
        /// The call came from the allocator's own object (glibc emptying a thread's cache
        /// at thread exit, for instance), not from the program.
        internal: bool,
        /// The function called (free, `_ZdlPv`...).
        func: HookFn,
    },
    /// realloc/reallocarray of a non-null `old` pointer has started: from now on the
    /// block may be released by the allocator, so it leaves the live table until the
    /// call returns (another thread may be handed the same address meanwhile).
    ReallocStart {
        tid: Tid,
        old: u64,
        /// The realloc call's stack, and whether the allocator made it (as for Free):
        /// a realloc of a pointer that is not live is an invalid free.
        stack: StackId,
        internal: bool,
        /// realloc or reallocarray.
        func: HookFn,
    },
    /// The realloc started on `tid` has returned `new` (0 on failure or on size 0).
    ReallocEnd {
        tid: Tid,
        old: u64,
        new: u64,
        size: u64,
        stack: StackId,
        /// realloc or reallocarray.
        func: HookFn,
    },
    /// The allocator handed out `ptr` inside another hooked call: malloc under
    /// operator new (whose own return gives the same pointer), or the C++ runtime's
    /// exception object made while operator new was failing. Not an allocation of the
    /// program's, but freeing it later is no error.
    Nested { ptr: u64 },
    /// A call that makes, changes or removes a mapping (memory outside malloc).
    Mapping(MapCall),
    /// The process executed a new image: the old heap is gone.
    Exec,
}

/// What a mapping's pages are, as far as the call that made it tells: which file
/// (a memfd, a POSIX shared memory object) is known from `/proc/PID/maps` while the
/// mapping lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapSource {
    /// MAP_ANONYMOUS.
    Anonymous,
    /// A file descriptor's file.
    Fd(i32),
    /// A System V shared memory segment (shmat), by its id.
    Sysv(i32),
}

/// The calls that make descriptors mappings are made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DescKind {
    /// memfd_create.
    Memfd,
    /// shm_open.
    PosixShm,
    /// shm_unlink (no descriptor: the name is gone).
    ShmUnlink,
}

/// One call of the mapping functions (mmap, munmap, mremap, mprotect, shmat, shmdt,
/// memfd_create, shm_open, shm_unlink). `internal`: the call came from the C
/// library's own code (a thread's stack, a locale file), not the program's; it
/// changes what is mapped, but it is not the program's mapping. Calls made inside
/// an allocator call (glibc's mmap'd chunks and arenas) are never events: they are
/// the heap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapCall {
    /// mmap or shmat returned `addr`. `len` is what was asked (0 for shmat: the
    /// segment's size is the kernel's to say).
    Map {
        tid: Tid,
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
        source: MapSource,
        offset: u64,
        stack: StackId,
        func: HookFn,
        internal: bool,
    },
    /// munmap, seen at its entry (before the range can be handed out again).
    Unmap {
        tid: Tid,
        addr: u64,
        len: u64,
        internal: bool,
    },
    /// shmdt of the segment attached at `addr`, at its entry.
    Shmdt { tid: Tid, addr: u64, internal: bool },
    /// mremap of `[old, old + old_len)` has started: as with realloc, the range may
    /// be released (moved) before the call returns.
    RemapStart {
        tid: Tid,
        old: u64,
        old_len: u64,
        internal: bool,
    },
    /// The mremap started on `tid` returned `new` (`u64::MAX`: it failed).
    RemapEnd {
        tid: Tid,
        old: u64,
        old_len: u64,
        new: u64,
        new_len: u64,
        flags: u32,
        stack: StackId,
        internal: bool,
    },
    /// mprotect succeeded.
    Protect {
        tid: Tid,
        addr: u64,
        len: u64,
        prot: u32,
        internal: bool,
    },
    /// memfd_create or shm_open returned `fd`; shm_unlink was called (`fd` -1).
    Descriptor { tid: Tid, fd: i32, kind: DescKind },
}

impl MapCall {
    /// The stack the event carries, for the calls that make a mapping the program
    /// owns from then on.
    pub fn stack_mut(&mut self) -> Option<&mut StackId> {
        match self {
            MapCall::Map {
                stack,
                internal: false,
                ..
            }
            | MapCall::RemapEnd {
                stack,
                internal: false,
                ..
            } => Some(stack),
            _ => None,
        }
    }
}

/// Every distinct stack seen, stored once. A stack is a list of return addresses,
/// innermost (the allocator's caller) first, and the module generation it was taken
/// in: the same addresses before and after a library was unloaded and another mapped
/// in its place are different stacks.
#[derive(Default, Debug)]
pub struct StackTable {
    /// Each stack as `[generation, frames...]`: one allocation, and the interning key.
    stacks: Vec<Box<[u64]>>,
    index: HashMap<Box<[u64]>, StackId>,
    /// Which interned stacks were cut short (depth limit or failed unwind).
    truncated: Vec<bool>,
    /// Reused buffer for building a key.
    key: Vec<u64>,
}

impl StackTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The id of `frames` taken in module generation `generation` (see
    /// [`crate::symbols::Symbolizer::update_modules`]).
    pub fn intern(&mut self, frames: &[u64], truncated: bool, generation: u32) -> StackId {
        self.key.clear();
        self.key.push(u64::from(generation));
        self.key.extend_from_slice(frames);
        if let Some(&id) = self.index.get(&self.key[..]) {
            return id;
        }
        let id = StackId(self.stacks.len() as u32);
        let boxed: Box<[u64]> = self.key[..].into();
        self.stacks.push(boxed.clone());
        self.truncated.push(truncated);
        self.index.insert(boxed, id);
        id
    }

    pub fn get(&self, id: StackId) -> &[u64] {
        self.stacks
            .get(id.0 as usize)
            .map(|b| &b[1..])
            .unwrap_or(&[])
    }

    /// The module generation the stack was taken in.
    pub fn generation(&self, id: StackId) -> u32 {
        self.stacks
            .get(id.0 as usize)
            .map(|b| b[0] as u32)
            .unwrap_or(0)
    }

    pub fn is_truncated(&self, id: StackId) -> bool {
        self.truncated.get(id.0 as usize).copied().unwrap_or(false)
    }

    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_stacks_share_an_id() {
        let mut t = StackTable::new();
        let a = t.intern(&[1, 2, 3], false, 0);
        let b = t.intern(&[1, 2, 4], false, 0);
        let c = t.intern(&[1, 2, 3], false, 0);
        assert_eq!(a, c);
        assert_ne!(a, b);
        assert_eq!(t.get(b), &[1, 2, 4]);
        assert_eq!(t.len(), 2);
        assert!(t.get(StackId(99)).is_empty());
        // The same addresses after a library came and went are another stack.
        let later = t.intern(&[1, 2, 3], false, 1);
        assert_ne!(later, a);
        assert_eq!((t.generation(a), t.generation(later)), (0, 1));
        assert_eq!(t.get(later), t.get(a));
    }

    #[test]
    fn deallocators_know_their_family() {
        assert_eq!(FreeKind::Free.matches(), AllocKind::Malloc);
        assert_eq!(FreeKind::DeleteArray.matches(), AllocKind::NewArray);
    }
}

//! The allocator functions memtrace hooks, and how a call turns into an [`Event`].
//!
//! Pure logic: given a function, its arguments at entry and its return value, say what
//! happened. The tracer supplies registers and memory; this module never sees a pid.
//! The mapping functions (mmap and the rest, [`MAP_FUNCTIONS`]) are hooked the same
//! way; what their calls mean is in [`crate::mappings::calls`].

use crate::event::{AllocKind, Event, FreeKind, StackId, Tid};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookFn {
    Malloc,
    Calloc,
    Realloc,
    Reallocarray,
    PosixMemalign,
    /// memalign and aligned_alloc: (alignment, size). glibc gives both one address.
    Memalign,
    Valloc,
    Pvalloc,
    Free,
    /// Every `operator new` / `new[]` variant: the size is the first argument. The
    /// flags tell the variants apart, so that a report names the one called
    /// (`_ZnwmRKSt9nothrow_t`), as valgrind's stacks do.
    New {
        array: bool,
        nothrow: bool,
        aligned: bool,
    },
    /// Every `operator delete` / `delete[]` variant: the pointer is the first argument.
    Delete {
        array: bool,
        sized: bool,
        aligned: bool,
        nothrow: bool,
    },
    /// mmap and mmap64 (one address in glibc, as is its internal `__mmap`).
    Mmap,
    Munmap,
    Mremap,
    Mprotect,
    MemfdCreate,
    ShmOpen,
    ShmUnlink,
    Shmat,
    Shmdt,
}

impl HookFn {
    /// One of the mapping functions ([`MAP_FUNCTIONS`]), not an allocator.
    pub const fn is_mapping(self) -> bool {
        matches!(
            self,
            HookFn::Mmap
                | HookFn::Munmap
                | HookFn::Mremap
                | HookFn::Mprotect
                | HookFn::MemfdCreate
                | HookFn::ShmOpen
                | HookFn::ShmUnlink
                | HookFn::Shmat
                | HookFn::Shmdt
        )
    }

    /// Plain `operator new(size_t)` or `operator new[](size_t)`.
    pub const fn new_op(array: bool) -> HookFn {
        HookFn::New {
            array,
            nothrow: false,
            aligned: false,
        }
    }

    /// Plain `operator delete(void*)` or `operator delete[](void*)`.
    pub const fn delete_op(array: bool) -> HookFn {
        HookFn::Delete {
            array,
            sized: false,
            aligned: false,
            nothrow: false,
        }
    }
}

/// The C allocator, as exported by glibc's libc.so.6 (and linked into static binaries).
pub const LIBC_FUNCTIONS: &[(&str, HookFn)] = &[
    ("malloc", HookFn::Malloc),
    ("calloc", HookFn::Calloc),
    ("realloc", HookFn::Realloc),
    ("reallocarray", HookFn::Reallocarray),
    ("free", HookFn::Free),
    ("posix_memalign", HookFn::PosixMemalign),
    // One value for both: glibc gives them one address. memalign first, so that
    // `name` says memalign, as valgrind's stacks do for either.
    ("memalign", HookFn::Memalign),
    ("aligned_alloc", HookFn::Memalign),
    ("valloc", HookFn::Valloc),
    ("pvalloc", HookFn::Pvalloc),
];

/// The functions that make, change and remove mappings, as glibc's libc.so.6 exports
/// them (shm_open and shm_unlink are in libc since glibc 2.34). glibc's own malloc
/// calls the same code (`__mmap` is `mmap`): such calls are nested, and heap.
pub const MAP_FUNCTIONS: &[(&str, HookFn)] = &[
    ("mmap", HookFn::Mmap),
    ("mmap64", HookFn::Mmap),
    ("munmap", HookFn::Munmap),
    ("mremap", HookFn::Mremap),
    ("mprotect", HookFn::Mprotect),
    ("memfd_create", HookFn::MemfdCreate),
    ("shm_open", HookFn::ShmOpen),
    ("shm_unlink", HookFn::ShmUnlink),
    ("shmat", HookFn::Shmat),
    ("shmdt", HookFn::Shmdt),
];

/// C++ operator new/delete, as exported by libstdc++ (mangled names, 64-bit size_t).
pub const CXX_FUNCTIONS: &[(&str, HookFn)] = &[
    (
        "_Znwm",
        HookFn::New {
            array: false,
            nothrow: false,
            aligned: false,
        },
    ),
    (
        "_ZnwmRKSt9nothrow_t",
        HookFn::New {
            array: false,
            nothrow: true,
            aligned: false,
        },
    ),
    (
        "_ZnwmSt11align_val_t",
        HookFn::New {
            array: false,
            nothrow: false,
            aligned: true,
        },
    ),
    (
        "_ZnwmSt11align_val_tRKSt9nothrow_t",
        HookFn::New {
            array: false,
            nothrow: true,
            aligned: true,
        },
    ),
    (
        "_Znam",
        HookFn::New {
            array: true,
            nothrow: false,
            aligned: false,
        },
    ),
    (
        "_ZnamRKSt9nothrow_t",
        HookFn::New {
            array: true,
            nothrow: true,
            aligned: false,
        },
    ),
    (
        "_ZnamSt11align_val_t",
        HookFn::New {
            array: true,
            nothrow: false,
            aligned: true,
        },
    ),
    (
        "_ZnamSt11align_val_tRKSt9nothrow_t",
        HookFn::New {
            array: true,
            nothrow: true,
            aligned: true,
        },
    ),
    (
        "_ZdlPv",
        HookFn::Delete {
            array: false,
            sized: false,
            aligned: false,
            nothrow: false,
        },
    ),
    (
        "_ZdlPvm",
        HookFn::Delete {
            array: false,
            sized: true,
            aligned: false,
            nothrow: false,
        },
    ),
    (
        "_ZdlPvRKSt9nothrow_t",
        HookFn::Delete {
            array: false,
            sized: false,
            aligned: false,
            nothrow: true,
        },
    ),
    (
        "_ZdlPvSt11align_val_t",
        HookFn::Delete {
            array: false,
            sized: false,
            aligned: true,
            nothrow: false,
        },
    ),
    (
        "_ZdlPvmSt11align_val_t",
        HookFn::Delete {
            array: false,
            sized: true,
            aligned: true,
            nothrow: false,
        },
    ),
    (
        "_ZdlPvSt11align_val_tRKSt9nothrow_t",
        HookFn::Delete {
            array: false,
            sized: false,
            aligned: true,
            nothrow: true,
        },
    ),
    (
        "_ZdaPv",
        HookFn::Delete {
            array: true,
            sized: false,
            aligned: false,
            nothrow: false,
        },
    ),
    (
        "_ZdaPvm",
        HookFn::Delete {
            array: true,
            sized: true,
            aligned: false,
            nothrow: false,
        },
    ),
    (
        "_ZdaPvRKSt9nothrow_t",
        HookFn::Delete {
            array: true,
            sized: false,
            aligned: false,
            nothrow: true,
        },
    ),
    (
        "_ZdaPvSt11align_val_t",
        HookFn::Delete {
            array: true,
            sized: false,
            aligned: true,
            nothrow: false,
        },
    ),
    (
        "_ZdaPvmSt11align_val_t",
        HookFn::Delete {
            array: true,
            sized: true,
            aligned: true,
            nothrow: false,
        },
    ),
    (
        "_ZdaPvSt11align_val_tRKSt9nothrow_t",
        HookFn::Delete {
            array: true,
            sized: false,
            aligned: true,
            nothrow: true,
        },
    ),
];

/// What the tracer must do at a hooked function's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Recorded now (frees are seen before the allocator can reuse the address).
    pub event: Option<Event>,
    /// Whether the return must be caught: for the return value, and so that calls the
    /// function makes to other hooked functions are known to be nested.
    pub hook_return: bool,
}

impl HookFn {
    /// Every function hooked, once each, in the order of [`HookFn::id`].
    pub fn all() -> &'static [HookFn] {
        static ALL: std::sync::OnceLock<Vec<HookFn>> = std::sync::OnceLock::new();
        ALL.get_or_init(|| {
            let mut v: Vec<HookFn> = Vec::new();
            for &(_, f) in LIBC_FUNCTIONS
                .iter()
                .chain(CXX_FUNCTIONS)
                .chain(MAP_FUNCTIONS)
            {
                if !v.contains(&f) {
                    v.push(f);
                }
            }
            v
        })
    }

    /// The function's number in the records the target writes (never 0).
    pub fn id(self) -> u8 {
        Self::all().iter().position(|&f| f == self).unwrap_or(0) as u8 + 1
    }

    pub fn from_id(id: u8) -> Option<HookFn> {
        Self::all().get((id as usize).checked_sub(1)?).copied()
    }

    /// Whether its return is hooked: for the return value, and so that the calls it
    /// makes to other hooked functions are known to be nested. Not free (nor munmap,
    /// shmdt, shm_unlink): it is seen at its entry, and calls no other hooked function.
    pub fn hooks_return(self) -> bool {
        !matches!(
            self,
            HookFn::Free | HookFn::Munmap | HookFn::Shmdt | HookFn::ShmUnlink
        )
    }

    pub fn name(self) -> &'static str {
        LIBC_FUNCTIONS
            .iter()
            .chain(CXX_FUNCTIONS)
            .chain(MAP_FUNCTIONS)
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// The call's entry. `args` are the six integer arguments; `internal` says the
    /// caller is the allocator's own object.
    pub fn entry(self, tid: Tid, args: [u64; 6], stack: StackId, internal: bool) -> Entry {
        if self.is_mapping() {
            return Entry {
                event: crate::mappings::calls::entry(self, tid, args, internal).map(Event::Mapping),
                hook_return: self.hooks_return(),
            };
        }
        let free = |kind| Event::Free {
            tid,
            kind,
            ptr: args[0],
            stack,
            internal,
            func: self,
        };
        match self {
            // free needs no return hook: it returns nothing, and glibc's free calls no
            // other hooked function. This keeps it at one stop per call.
            HookFn::Free => Entry {
                event: (args[0] != 0).then(|| free(FreeKind::Free)),
                hook_return: false,
            },
            // delete tail-calls free: its return is hooked so that free is seen nested.
            HookFn::Delete { array, .. } => Entry {
                event: (args[0] != 0).then(|| {
                    free(if array {
                        FreeKind::DeleteArray
                    } else {
                        FreeKind::Delete
                    })
                }),
                hook_return: true,
            },
            HookFn::Realloc | HookFn::Reallocarray => Entry {
                event: (args[0] != 0).then_some(Event::ReallocStart {
                    tid,
                    old: args[0],
                    stack,
                    internal,
                    func: self,
                }),
                hook_return: true,
            },
            _ => Entry {
                event: None,
                hook_return: true,
            },
        }
    }

    /// Whether the call's events need its stack: not a free or delete of NULL, which
    /// records nothing (its entry is still needed, for delete's return hook); of the
    /// mapping functions, those that make a mapping.
    pub fn needs_stack(self, args: [u64; 6]) -> bool {
        if self.is_mapping() {
            return crate::mappings::calls::needs_stack(self);
        }
        !(matches!(self, HookFn::Free | HookFn::Delete { .. }) && args[0] == 0)
    }

    /// The bytes an allocation asks for, from its arguments; None for a deallocator
    /// (and for the mapping functions, which allocate no block).
    pub fn requested_size(self, args: [u64; 3]) -> Option<u64> {
        match self {
            HookFn::Malloc | HookFn::Valloc | HookFn::Pvalloc | HookFn::New { .. } => Some(args[0]),
            HookFn::Calloc => Some(args[0].saturating_mul(args[1])),
            HookFn::Memalign | HookFn::Realloc => Some(args[1]),
            HookFn::PosixMemalign => Some(args[2]),
            HookFn::Reallocarray => Some(args[1].saturating_mul(args[2])),
            _ => None,
        }
    }

    /// Whether a call of this function made inside another hooked call has its result
    /// watched (see [`Event::Nested`]): the plain allocators, whose result is the
    /// return value.
    pub fn watched_when_nested(self) -> bool {
        matches!(
            self,
            HookFn::Malloc | HookFn::Calloc | HookFn::Memalign | HookFn::Valloc | HookFn::Pvalloc
        )
    }

    /// The call's return. `ret` is the return value; `out_ptr` is the pointer that
    /// posix_memalign wrote through its first argument (read by the tracer);
    /// `internal` as at the entry.
    pub fn exit(
        self,
        tid: Tid,
        args: [u64; 6],
        ret: u64,
        out_ptr: Option<u64>,
        stack: StackId,
        internal: bool,
    ) -> Option<Event> {
        if self.is_mapping() {
            return crate::mappings::calls::exit(self, tid, args, ret, stack, internal)
                .map(Event::Mapping);
        }
        let alloc = |kind, ptr, size| {
            (ptr != 0).then_some(Event::Alloc {
                tid,
                kind,
                ptr,
                size,
                stack,
                func: self,
            })
        };
        match self {
            HookFn::Malloc | HookFn::Valloc | HookFn::Pvalloc => {
                alloc(AllocKind::Malloc, ret, args[0])
            }
            HookFn::Calloc => alloc(AllocKind::Malloc, ret, args[0].saturating_mul(args[1])),
            HookFn::Memalign => alloc(AllocKind::Malloc, ret, args[1]),
            HookFn::PosixMemalign => {
                // Returns 0 on success, an error number otherwise.
                if ret as u32 == 0 {
                    alloc(AllocKind::Malloc, out_ptr.unwrap_or(0), args[2])
                } else {
                    None
                }
            }
            HookFn::New { array, .. } => alloc(
                if array {
                    AllocKind::NewArray
                } else {
                    AllocKind::New
                },
                ret,
                args[0],
            ),
            HookFn::Realloc => Some(Event::ReallocEnd {
                tid,
                old: args[0],
                new: ret,
                size: args[1],
                stack,
                func: self,
            }),
            HookFn::Reallocarray => Some(Event::ReallocEnd {
                tid,
                old: args[0],
                new: ret,
                size: args[1].saturating_mul(args[2]),
                stack,
                func: self,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const S: StackId = StackId(7);

    #[test]
    fn sizes_come_from_the_right_arguments() {
        let ev = |f: HookFn, args, ret| f.exit(1, args, ret, None, S, false);
        let size = |e: Option<Event>| match e {
            Some(Event::Alloc { size, .. }) => size,
            other => panic!("{other:?}"),
        };
        assert_eq!(size(ev(HookFn::Malloc, [30, 0, 0, 0, 0, 0], 0x10)), 30);
        assert_eq!(size(ev(HookFn::Calloc, [4, 8, 0, 0, 0, 0], 0x10)), 32);
        assert_eq!(size(ev(HookFn::Memalign, [64, 100, 0, 0, 0, 0], 0x40)), 100);
        assert_eq!(size(ev(HookFn::Valloc, [10, 0, 0, 0, 0, 0], 0x1000)), 10);
        assert_eq!(ev(HookFn::Malloc, [30, 0, 0, 0, 0, 0], 0), None);
    }

    #[test]
    fn posix_memalign_reports_the_written_pointer() {
        let f = HookFn::PosixMemalign;
        let ok = f.exit(1, [0x7ff0, 64, 100, 0, 0, 0], 0, Some(0x4000), S, false);
        assert!(matches!(
            ok,
            Some(Event::Alloc {
                ptr: 0x4000,
                size: 100,
                ..
            })
        ));
        // ENOMEM (12): nothing allocated, whatever is in *memptr.
        assert_eq!(
            f.exit(1, [0x7ff0, 64, 100, 0, 0, 0], 12, Some(0x4000), S, false),
            None
        );
    }

    #[test]
    fn frees_are_seen_at_entry_and_only_delete_hooks_its_return() {
        let e = HookFn::Free.entry(3, [0x10, 0, 0, 0, 0, 0], S, false);
        assert!(!e.hook_return);
        assert!(matches!(
            e.event,
            Some(Event::Free {
                kind: FreeKind::Free,
                ptr: 0x10,
                ..
            })
        ));
        assert_eq!(
            HookFn::Free.entry(3, [0, 0, 0, 0, 0, 0], S, false).event,
            None
        );
        let d = HookFn::delete_op(true).entry(3, [0x10, 0, 0, 0, 0, 0], S, false);
        assert!(d.hook_return);
        assert!(matches!(
            d.event,
            Some(Event::Free {
                kind: FreeKind::DeleteArray,
                ..
            })
        ));
    }

    #[test]
    fn only_calls_that_record_something_need_a_stack() {
        assert!(!HookFn::Free.needs_stack([0, 0, 0, 0, 0, 0]));
        assert!(!HookFn::delete_op(true).needs_stack([0, 0, 0, 0, 0, 0]));
        assert!(HookFn::Free.needs_stack([0x10, 0, 0, 0, 0, 0]));
        assert!(
            HookFn::Malloc.needs_stack([0, 0, 0, 0, 0, 0]),
            "malloc(0) allocates"
        );
    }

    #[test]
    fn realloc_brackets_the_call() {
        let e = HookFn::Realloc.entry(2, [0x10, 50, 0, 0, 0, 0], S, false);
        assert_eq!(
            e.event,
            Some(Event::ReallocStart {
                tid: 2,
                old: 0x10,
                stack: S,
                internal: false,
                func: HookFn::Realloc,
            })
        );
        assert_eq!(
            HookFn::Realloc
                .entry(2, [0, 50, 0, 0, 0, 0], S, false)
                .event,
            None
        );
        let x = HookFn::Reallocarray.exit(2, [0x10, 5, 10, 0, 0, 0], 0x20, None, S, false);
        assert!(matches!(
            x,
            Some(Event::ReallocEnd {
                old: 0x10,
                new: 0x20,
                size: 50,
                ..
            })
        ));
    }

    #[test]
    fn ids_round_trip() {
        assert!(HookFn::all().len() < 255);
        for &f in HookFn::all() {
            assert_eq!(HookFn::from_id(f.id()), Some(f));
            assert_eq!(
                f.entry(1, [1, 2, 3, 0, 0, 0], S, false).hook_return,
                f.hooks_return()
            );
        }
        assert_eq!(HookFn::from_id(0), None);
        assert_eq!(HookFn::from_id(200), None);
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(HookFn::Malloc.name(), "malloc");
        assert_eq!(HookFn::new_op(true).name(), "_Znam");
        // Every C++ variant is its own function, named as valgrind's stacks name it
        // (memalign and aligned_alloc share glibc's code, so one value).
        for &(name, f) in CXX_FUNCTIONS.iter().chain(LIBC_FUNCTIONS) {
            if name != "aligned_alloc" {
                assert_eq!(f.name(), name);
            }
        }
    }

    #[test]
    fn events_name_the_function_called() {
        let nothrow = HookFn::New {
            array: false,
            nothrow: true,
            aligned: false,
        };
        match nothrow.exit(1, [8, 0, 0, 0, 0, 0], 0x10, None, S, false) {
            Some(Event::Alloc { func, .. }) => assert_eq!(func.name(), "_ZnwmRKSt9nothrow_t"),
            other => panic!("{other:?}"),
        }
        let sized = HookFn::Delete {
            array: false,
            sized: true,
            aligned: false,
            nothrow: false,
        };
        match sized.entry(1, [0x10, 8, 0, 0, 0, 0], S, false).event {
            Some(Event::Free { func, .. }) => assert_eq!(func.name(), "_ZdlPvm"),
            other => panic!("{other:?}"),
        }
    }
}

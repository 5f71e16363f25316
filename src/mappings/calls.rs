//! What one call of a mapping function means: the [`MapCall`] its entry or return
//! makes, from its six arguments and its return value. Pure, like
//! [`crate::hooks::HookFn::entry`], which hands the mapping functions over to here.

use crate::event::{DescKind, MapCall, MapSource, StackId, Tid};
use crate::hooks::HookFn;

/// What glibc's wrappers return on failure: -1 (MAP_FAILED), or a raw `-errno`.
pub fn failed(ret: u64) -> bool {
    (-4095..0).contains(&(ret as i64))
}

/// Whether the call's event needs its stack: the calls that make a mapping.
pub fn needs_stack(func: HookFn) -> bool {
    matches!(func, HookFn::Mmap | HookFn::Mremap | HookFn::Shmat)
}

/// The event of a call's entry: what must be known before the kernel can hand the
/// range out again (munmap, shmdt, the old range of mremap).
pub fn entry(func: HookFn, tid: Tid, args: [u64; 6], internal: bool) -> Option<MapCall> {
    match func {
        HookFn::Munmap => Some(MapCall::Unmap {
            tid,
            addr: args[0],
            len: args[1],
            internal,
        }),
        HookFn::Shmdt => Some(MapCall::Shmdt {
            tid,
            addr: args[0],
            internal,
        }),
        HookFn::Mremap => Some(MapCall::RemapStart {
            tid,
            old: args[0],
            old_len: args[1],
            internal,
        }),
        HookFn::ShmUnlink => Some(MapCall::Descriptor {
            tid,
            fd: -1,
            kind: DescKind::ShmUnlink,
        }),
        _ => None,
    }
}

/// The event of a call's return.
pub fn exit(
    func: HookFn,
    tid: Tid,
    args: [u64; 6],
    ret: u64,
    stack: StackId,
    internal: bool,
) -> Option<MapCall> {
    match func {
        // mmap(addr, length, prot, flags, fd, offset)
        HookFn::Mmap if !failed(ret) => {
            let flags = args[3] as u32;
            let source = if flags & libc::MAP_ANONYMOUS as u32 != 0 {
                MapSource::Anonymous
            } else {
                MapSource::Fd(args[4] as i32)
            };
            Some(MapCall::Map {
                tid,
                addr: ret,
                len: args[1],
                prot: args[2] as u32,
                flags,
                source,
                offset: args[5],
                stack,
                func,
                internal,
            })
        }
        // shmat(shmid, shmaddr, shmflg): the segment's size is not among them.
        HookFn::Shmat if !failed(ret) => {
            let shmflg = args[2] as i32;
            let mut prot = libc::PROT_READ;
            if shmflg & libc::SHM_RDONLY == 0 {
                prot |= libc::PROT_WRITE;
            }
            if shmflg & libc::SHM_EXEC != 0 {
                prot |= libc::PROT_EXEC;
            }
            Some(MapCall::Map {
                tid,
                addr: ret,
                len: 0,
                prot: prot as u32,
                flags: libc::MAP_SHARED as u32,
                source: MapSource::Sysv(args[0] as i32),
                offset: 0,
                stack,
                func,
                internal,
            })
        }
        // mremap(old, old_size, new_size, flags, new_address)
        HookFn::Mremap => Some(MapCall::RemapEnd {
            tid,
            old: args[0],
            old_len: args[1],
            new: if failed(ret) { u64::MAX } else { ret },
            new_len: args[2],
            flags: args[3] as u32,
            stack,
            internal,
        }),
        // mprotect(addr, len, prot) returns 0 on success.
        HookFn::Mprotect if ret as i32 == 0 => Some(MapCall::Protect {
            tid,
            addr: args[0],
            len: args[1],
            prot: args[2] as u32,
            internal,
        }),
        HookFn::MemfdCreate | HookFn::ShmOpen if (ret as i32) >= 0 => Some(MapCall::Descriptor {
            tid,
            fd: ret as i32,
            kind: if func == HookFn::MemfdCreate {
                DescKind::Memfd
            } else {
                DescKind::PosixShm
            },
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const S: StackId = StackId(3);

    #[test]
    fn mmap_reports_its_backing_and_fails_quietly() {
        let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let m = exit(
            HookFn::Mmap,
            1,
            [0, 8192, 3, anon, u64::MAX, 0],
            0x7000,
            S,
            false,
        );
        assert!(matches!(
            m,
            Some(MapCall::Map {
                addr: 0x7000,
                len: 8192,
                prot: 3,
                source: MapSource::Anonymous,
                ..
            })
        ));
        let shared = libc::MAP_SHARED as u64;
        let f = exit(
            HookFn::Mmap,
            1,
            [0, 4096, 1, shared, 5, 4096],
            0x9000,
            S,
            false,
        );
        assert!(matches!(
            f,
            Some(MapCall::Map {
                source: MapSource::Fd(5),
                offset: 4096,
                ..
            })
        ));
        assert_eq!(
            exit(
                HookFn::Mmap,
                1,
                [0, 4096, 1, shared, 5, 0],
                u64::MAX,
                S,
                false
            ),
            None
        );
        assert!(failed((-12i64) as u64) && !failed(0x7f00_0000_0000));
    }

    #[test]
    fn unmaps_are_seen_at_entry_and_mremap_brackets_the_call() {
        assert!(matches!(
            entry(HookFn::Munmap, 1, [0x7000, 4096, 0, 0, 0, 0], false),
            Some(MapCall::Unmap {
                addr: 0x7000,
                len: 4096,
                ..
            })
        ));
        assert!(matches!(
            entry(HookFn::Mremap, 1, [0x7000, 4096, 8192, 1, 0, 0], false),
            Some(MapCall::RemapStart { old: 0x7000, .. })
        ));
        let failed_remap = exit(
            HookFn::Mremap,
            1,
            [0x7000, 4096, 8192, 1, 0, 0],
            u64::MAX,
            S,
            false,
        );
        assert!(matches!(
            failed_remap,
            Some(MapCall::RemapEnd { new: u64::MAX, .. })
        ));
        assert_eq!(exit(HookFn::Munmap, 1, [0; 6], 0, S, false), None);
        // mprotect counts only when it succeeded.
        assert_eq!(
            exit(
                HookFn::Mprotect,
                1,
                [0x7000, 4096, 1, 0, 0, 0],
                u64::MAX,
                S,
                false
            ),
            None
        );
    }

    #[test]
    fn shmat_maps_the_segment_with_its_flags() {
        let ro = libc::SHM_RDONLY as u64;
        match exit(HookFn::Shmat, 1, [42, 0, ro, 0, 0, 0], 0x5000, S, false) {
            Some(MapCall::Map {
                prot,
                source: MapSource::Sysv(42),
                len: 0,
                ..
            }) => assert_eq!(prot, libc::PROT_READ as u32),
            other => panic!("{other:?}"),
        }
        assert!(needs_stack(HookFn::Shmat) && !needs_stack(HookFn::Shmdt));
    }
}

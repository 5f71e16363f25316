//! One record of the ring, decoded from its header words (see
//! `memtrace_arch::recorder` for the layout). Pure: the bytes come from the caller.

use crate::event::Tid;
use crate::hooks::HookFn;
use memtrace_arch::recorder::*;

/// An allocator call's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub pos: u64,
    pub tid: Tid,
    pub func: HookFn,
    /// The return address was swapped for the return stub: a return record follows.
    pub hooked_return: bool,
    pub args: [u64; 6],
    /// The real return address: the caller.
    pub ret: u64,
    /// The stack pointer at the entry (where the return address was).
    pub sp: u64,
    pub fp: u64,
    /// Bytes of stack copied into the record (its own), from `sp + 8` up.
    pub stack_len: u64,
    /// Bytes of stack the record stands for, from `sp + 8` up: its own, then those
    /// of its chain (see "Stack copies" in `memtrace_arch::recorder`).
    pub full_len: u64,
    /// The record holding the stack just above its own bytes (`NO_RECORD`: none).
    pub prev: u64,
    /// The oldest record its chain reads (its own position when it is whole).
    pub base: u64,
    /// The stack addresses `[lo, hi)` of its chain whose bytes the compare did not
    /// look at (empty: none): they are what the mirror held, maybe not the stack.
    pub skipped: (u64, u64),
}

impl Entry {
    /// Its own bytes are its whole stack copy.
    pub fn is_whole(&self) -> bool {
        self.prev == NO_RECORD
    }

    /// The stack address of the first byte of its copy (and of its chain's): just
    /// above the return address at `sp`.
    pub fn copy_base(&self) -> u64 {
        self.sp.wrapping_add(8)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Return {
    pub pos: u64,
    pub tid: Tid,
    pub entry_pos: u64,
    pub value: u64,
    /// What posix_memalign wrote through its first argument (when it returned 0).
    pub out: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    Entry(Entry),
    Return(Return),
    /// The thread unwinds its stack: its pending calls will not return.
    Unwind {
        pos: u64,
        tid: Tid,
    },
}

impl Record {
    pub fn tid(&self) -> Tid {
        match *self {
            Record::Entry(e) => e.tid,
            Record::Return(r) => r.tid,
            Record::Unwind { tid, .. } => tid,
        }
    }
}

/// Why a committed record could not be read: a bug on one side, or a target that
/// wrote over memtrace's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    #[error("record at {pos} has length {len}")]
    Length { pos: u64, len: u64 },
    #[error("record at {pos} has kind {kind}")]
    Kind { pos: u64, kind: u8 },
    #[error("record at {pos} names function {func}")]
    Function { pos: u64, func: u8 },
}

/// How many bytes of a record's start [`decode`] needs.
pub const HEADER_LEN: usize = ENTRY_STACK as usize;

fn word(h: &[u8], off: u64) -> u64 {
    let at = off as usize;
    h.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

/// The length a record's info word gives (what a reader steps over).
pub fn length(info: u64) -> u64 {
    info & 0xffff_ffff
}

/// Decodes the committed record at `pos` from its first [`HEADER_LEN`] bytes.
pub fn decode(pos: u64, h: &[u8]) -> Result<Record, BadRecord> {
    let info = word(h, REC_INFO);
    let len = length(info);
    let kind = (info >> 32) as u8;
    let func = (info >> 40) as u8;
    let flags = (info >> 48) as u8;
    if len < RETURN_LEN || len % REC_ALIGN != 0 || len > entry_len(MAX_STACK_COPY) {
        return Err(BadRecord::Length { pos, len });
    }
    let tid = word(h, REC_TID) as Tid;
    match kind {
        KIND_ENTRY => {
            let func = HookFn::from_id(func).ok_or(BadRecord::Function { pos, func })?;
            let stack_len = word(h, ENTRY_STACK_LEN);
            let full_len = word(h, ENTRY_FULL_LEN);
            let prev = word(h, ENTRY_PREV);
            let base = word(h, ENTRY_BASE);
            let skipped = unskip(word(h, ENTRY_SKIP));
            let whole = prev == NO_RECORD;
            let sp = word(h, ENTRY_SP);
            if len < ENTRY_STACK
                || entry_len(stack_len) != len
                || full_len > MAX_STACK_COPY
                || full_len < stack_len
                || (whole && full_len != stack_len)
                || (!whole && (prev >= pos || base > prev))
                || (skipped.0 < skipped.1
                    && (skipped.0 < sp.wrapping_add(8)
                        || skipped.1 > sp.wrapping_add(8).wrapping_add(full_len)))
            {
                return Err(BadRecord::Length { pos, len });
            }
            let mut args = [0u64; 6];
            for (n, a) in args.iter_mut().enumerate() {
                *a = word(h, ENTRY_ARGS + 8 * n as u64);
            }
            Ok(Record::Entry(Entry {
                pos,
                tid,
                func,
                hooked_return: flags & ENTRY_FLAG_RETURN != 0,
                args,
                ret: word(h, ENTRY_RET),
                sp,
                fp: word(h, ENTRY_FP),
                stack_len,
                full_len,
                prev,
                // A whole copy is its own chain.
                base: if whole { pos } else { base },
                skipped,
            }))
        }
        // The reader steps over a return or unwind record by their one length: one
        // that says another could not be stepped over right.
        KIND_RETURN | KIND_UNWIND if len != RETURN_LEN => Err(BadRecord::Length { pos, len }),
        KIND_RETURN => Ok(Record::Return(Return {
            pos,
            tid,
            entry_pos: word(h, RETURN_ENTRY_POS),
            value: word(h, RETURN_VALUE),
            out: word(h, RETURN_OUT),
        })),
        KIND_UNWIND => Ok(Record::Unwind { pos, tid }),
        kind => Err(BadRecord::Kind { pos, kind }),
    }
}

/// The header of an entry record (the stack bytes follow it), as memtrace writes
/// one for a call it stopped at.
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_LEN];
    let mut put =
        |off: u64, v: u64| h[off as usize..off as usize + 8].copy_from_slice(&v.to_le_bytes());
    let flags = if e.hooked_return {
        ENTRY_FLAG_RETURN
    } else {
        0
    };
    put(
        REC_INFO,
        info(entry_len(e.stack_len), KIND_ENTRY, e.func.id(), flags),
    );
    put(REC_TID, e.tid as u64);
    for (n, a) in e.args.iter().enumerate() {
        put(ENTRY_ARGS + 8 * n as u64, *a);
    }
    put(ENTRY_RET, e.ret);
    put(ENTRY_SP, e.sp);
    put(ENTRY_FP, e.fp);
    put(ENTRY_STACK_LEN, e.stack_len);
    put(ENTRY_FULL_LEN, e.full_len);
    put(ENTRY_PREV, e.prev);
    put(ENTRY_BASE, e.base);
    if e.skipped.0 < e.skipped.1 {
        put(ENTRY_SKIP, skip(e.skipped.0, e.skipped.1 - e.skipped.0));
    }
    h
}

/// A return record, as memtrace writes one for a call that returned through the
/// trampoline.
pub fn encode_return(r: &Return) -> Vec<u8> {
    let mut h = vec![0u8; RETURN_LEN as usize];
    let mut put =
        |off: u64, v: u64| h[off as usize..off as usize + 8].copy_from_slice(&v.to_le_bytes());
    put(REC_INFO, info(RETURN_LEN, KIND_RETURN, 0, 0));
    put(REC_TID, r.tid as u64);
    put(RETURN_ENTRY_POS, r.entry_pos);
    put(RETURN_VALUE, r.value);
    put(RETURN_OUT, r.out);
    h
}

pub fn encode_unwind(tid: Tid) -> Vec<u8> {
    let mut h = vec![0u8; RETURN_LEN as usize];
    h[REC_INFO as usize..REC_INFO as usize + 8]
        .copy_from_slice(&info(RETURN_LEN, KIND_UNWIND, 0, 0).to_le_bytes());
    h[REC_TID as usize..REC_TID as usize + 8].copy_from_slice(&(tid as u64).to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_and_returns_round_trip() {
        let e = Entry {
            pos: 4096,
            tid: 77,
            func: HookFn::PosixMemalign,
            hooked_return: true,
            args: [1, 2, 3, 4, 5, 6],
            ret: 0x5555_1234,
            sp: 0x7ffc_0000,
            fp: 0x7ffc_0100,
            stack_len: 40,
            full_len: 40,
            prev: NO_RECORD,
            base: 4096,
            skipped: (0, 0),
        };
        let h = encode_entry(&e);
        assert_eq!(decode(4096, &h), Ok(Record::Entry(e)));
        let r = Return {
            pos: 9000,
            tid: 77,
            entry_pos: 4096,
            value: 0,
            out: 0xabc0,
        };
        let mut h = encode_return(&r);
        h.resize(HEADER_LEN, 0);
        assert_eq!(decode(9000, &h), Ok(Record::Return(r)));
        let mut u = encode_unwind(5);
        u.resize(HEADER_LEN, 0);
        assert_eq!(decode(1, &u), Ok(Record::Unwind { pos: 1, tid: 5 }));
    }

    #[test]
    fn garbage_is_refused() {
        let mut h = vec![0u8; HEADER_LEN];
        assert!(matches!(decode(0, &h), Err(BadRecord::Length { .. })));
        h[8..16].copy_from_slice(&info(48, 9, 0, 0).to_le_bytes());
        assert_eq!(decode(0, &h), Err(BadRecord::Kind { pos: 0, kind: 9 }));
        // Returns and unwinds have one length.
        for kind in [KIND_RETURN, KIND_UNWIND] {
            h[8..16].copy_from_slice(&info(RETURN_LEN, kind, 0, 0).to_le_bytes());
            assert!(decode(0, &h).is_ok());
            h[8..16].copy_from_slice(&info(RETURN_LEN + 16, kind, 0, 0).to_le_bytes());
            assert_eq!(
                decode(0, &h),
                Err(BadRecord::Length {
                    pos: 0,
                    len: RETURN_LEN + 16
                })
            );
        }
        h[8..16].copy_from_slice(&info(112, KIND_ENTRY, 99, 0).to_le_bytes());
        assert_eq!(decode(0, &h), Err(BadRecord::Function { pos: 0, func: 99 }));
        // An entry whose stack length disagrees with its record length.
        h[8..16].copy_from_slice(&info(128, KIND_ENTRY, 1, 0).to_le_bytes());
        h[96..104].copy_from_slice(&100u64.to_le_bytes());
        assert!(matches!(decode(0, &h), Err(BadRecord::Length { .. })));
        // A chain that reads a record written after it.
        let e = Entry {
            pos: 256,
            tid: 1,
            func: HookFn::Malloc,
            hooked_return: false,
            args: [0; 6],
            ret: 0,
            sp: 0x1000,
            fp: 0,
            stack_len: 16,
            full_len: 64,
            prev: 128,
            base: 0,
            skipped: (0, 0),
        };
        assert!(decode(256, &encode_entry(&e)).is_ok());
        let later = Entry { prev: 512, ..e };
        assert!(decode(256, &encode_entry(&later)).is_err());
        let short = Entry { full_len: 8, ..e };
        assert!(decode(256, &encode_entry(&short)).is_err());
        // Bytes skipped: within what it stands for (a copy made whole keeps them).
        let skipped = Entry {
            skipped: (0x1018, 0x1040),
            ..e
        };
        assert_eq!(
            decode(256, &encode_entry(&skipped)),
            Ok(Record::Entry(skipped))
        );
        for bad in [(0x1000, 0x1040), (0x1018, 0x1050)] {
            let e = Entry { skipped: bad, ..e };
            assert!(decode(256, &encode_entry(&e)).is_err(), "{bad:x?}");
        }
        let whole = Entry {
            prev: NO_RECORD,
            stack_len: 64,
            base: 256,
            skipped: (0x1018, 0x1040),
            ..e
        };
        assert_eq!(decode(256, &encode_entry(&whole)), Ok(Record::Entry(whole)));
    }
}

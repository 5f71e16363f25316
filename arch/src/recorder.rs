//! The layout of the memory memtrace shares with the target for recording allocator
//! calls without a stop: what the code generated into the target writes, and what
//! memtrace reads. Architecture-neutral: words are little-endian `u64`s at fixed
//! offsets, so the generated code of every architecture and the reader agree.
//!
//! One memfd holds, in this order:
//! - the **control page** (`CTRL_*` offsets): the ring's head and tail, the futex word
//!   writers wait on when the ring is full, flags, the stack copy length;
//! - the **thread table** (`TABLE_*`, `SLOT_*`): one slot per thread, found by hashing
//!   the thread pointer (x86_64: `fs:0`). A slot holds the thread's id, the bounds of
//!   its stack (how far up a stack copy may read) and its *shadow stack*: the real
//!   return address of each hooked call whose return was swapped for the return stub;
//! - the **stack mirrors** (`MIRROR_*`): for some threads, a copy of the top of the
//!   stack as the last record that used it saw it (see "Stack copies" below);
//! - the **ring** (`RING_*`): records, mapped twice back to back so that a record
//!   never wraps.
//!
//! A record is reserved by adding its length to `CTRL_HEAD` atomically: the old value
//! is its *position*, a byte offset that only grows (the record lives at
//! `position & (RING_SIZE - 1)`). The writer fills it and *commits* it by storing
//! `position + 1` in its first word, last (after `position | REC_RESERVED` once its
//! length is written); the reader takes records in position
//! order and releases them by moving `CTRL_TAIL`. A writer that finds no room waits
//! on `CTRL_TAIL_SEQ` (a futex), which the reader bumps each time it moves the tail.

//! ## Stack copies
//! An entry record stands for the stack from its stack pointer up to a *top* (the
//! thread's stack end, or the copy length above the stack pointer), but most of it
//! is usually what the thread's previous call saw already: the same outer frames,
//! byte for byte. So a thread with a mirror compares its stack with the mirror from
//! the top down, 128 bytes at a time (64 without AVX2), and copies only what lies
//! below the first difference (the record's *own* bytes, `[sp + 8, wm)`) into the
//! record and into the mirror. The rest, `[wm, top)`, is found in earlier records:
//! the mirror is made of *layers*, each the own bytes of one record, the newest
//! lowest; the record names the layer that holds `wm` (`ENTRY_PREV`), whose record
//! names the one holding its own upper end, and so on, up to a whole copy
//! (`ENTRY_BASE`, the oldest record the chain reads). A thread copies its whole
//! stack again when its chain starts more than `CHAIN_SPAN` bytes of ring behind,
//! when its layers are full, and when its stack pointer is below what the mirror
//! holds. `SLOT_MIRROR_BUSY` is the stack pointer of the thunk working on the
//! mirror: a call below it (a signal handler's, run in the middle) copies its whole
//! stack and leaves the mirror alone; a call at or above it finds a thunk that
//! longjmp left, and takes the mirror over from a whole copy.
//!
//! ## Skipped ranges
//! Most of a deep stack's unchanged bytes can be one big frame's locals (a shell's
//! state in `main`), which no unwinder reads: it reads return addresses and saved
//! registers. memtrace sets, per thread, a range of such locals (`SLOT_SKIP`); a
//! compare that reaches it with no difference above it steps over the whole rounds
//! inside it, and the record says which bytes it did not compare (`ENTRY_SKIP`):
//! the chain has what the mirror held there, which may not be what the stack holds.
//!
//! The range is only ever the locals of the frame of the `main` the C library's
//! start code calls (from the C library, whose frames reach up to the return from
//! the executable's entry code's call, with no `main` above it), and the compare
//! steps over it only while `main`'s return address is in place: then `main` is
//! still running (its caller calls it once and, once it returns, calls `exit` from
//! another place, writing over that word). `main`'s code must keep its stack pointer
//! a constant distance from its frame at every call and never hand its frame to a
//! tail call, so no callee's frame reaches the range; its caller must make all its calls at one
//! stack pointer and never return (memtrace's `unwind::shape` checks both from their
//! code and CFI). Equal bytes above the range are still needed: they are what the
//! record's chain holds. An unwind can still be led into the range: by a frame
//! pointer (past a signal frame, through code without unwind tables, the unwinder
//! follows %rbp, which `main`'s optimized code may point into its locals), or by a
//! signal frame itself, when a signal arrives in the few instructions where `main`
//! returns and its handler allocates. So the reader checks that no unwind reads a
//! word there; one that would is cut short at that frame, counted, and the thread's
//! range is dropped.

/// Size of the control page.
pub const CTRL_SIZE: u64 = 4096;
/// Next position to reserve (u64, atomically added to by writers).
pub const CTRL_HEAD: u64 = 0;
/// Everything below this position has been read and may be overwritten (u64).
pub const CTRL_TAIL: u64 = 64;
/// Bumped each time the tail moves: what a writer waiting for room sleeps on (u32).
pub const CTRL_TAIL_SEQ: u64 = 72;
/// Writers asleep on `CTRL_TAIL_SEQ` (u32): the reader wakes them when non-zero.
pub const CTRL_WAITERS: u64 = 76;
/// `FLAG_*` bits (u64).
pub const CTRL_FLAGS: u64 = 128;
/// Most stack bytes a record copies (u64), set by memtrace (see the drainer).
pub const CTRL_COPY_LEN: u64 = 136;
/// The ring's address in the target (u64).
pub const CTRL_RING: u64 = 144;
/// The thread table's address in the target (u64).
pub const CTRL_TABLE: u64 = 152;
/// The return stub's address (u64): a call whose return address is already the
/// stub was tail-called by a hooked function.
pub const CTRL_RET_STUB: u64 = 160;
/// A `struct timespec` (two u64): how long a writer sleeps at most before it looks
/// again (at the flags, at the room).
pub const CTRL_WAIT_TIMEOUT: u64 = 176;
/// Times a writer waited for room (u64, atomically incremented).
pub const CTRL_WAITS: u64 = 192;
/// Time stamp counter ticks writers spent waiting (u64, atomically added).
pub const CTRL_WAIT_TICKS: u64 = 200;

/// Record nothing, hook nothing: the generated code runs the original function as
/// if it were not there (a detach under way, memtrace gone).
pub const FLAG_BYPASS: u64 = 1;

/// Thread slots: a power of two.
pub const TABLE_BITS: u32 = 12;
pub const TABLE_SLOTS: u64 = 1 << TABLE_BITS;
/// Slots looked at from the hashed one before a thread counts as unknown.
pub const TABLE_PROBES: u64 = 16;
pub const SLOT_SHIFT: u32 = 10;
pub const SLOT_SIZE: u64 = 1 << SLOT_SHIFT;
pub const TABLE_SIZE: u64 = TABLE_SLOTS * SLOT_SIZE;
/// The multiplier of the thread pointer's hash (Fibonacci hashing).
pub const HASH_MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// The slot's key: the thread pointer (0: free).
pub const SLOT_KEY: u64 = 0;
pub const SLOT_TID: u64 = 8;
/// The thread's stack: a copy never reads at or above `SLOT_HI`, and a stack pointer
/// outside `[SLOT_LO, SLOT_HI)` (a signal stack, a coroutine) takes the slow path.
pub const SLOT_LO: u64 = 16;
pub const SLOT_HI: u64 = 24;
/// `SLOT_FLAG_*` bits.
pub const SLOT_FLAGS: u64 = 32;
/// Frames on the shadow stack.
pub const SLOT_DEPTH: u64 = 40;
/// The lowest stack address the thread's mirror holds (`u64::MAX`: no mirror).
pub const SLOT_MIRROR_FLOOR: u64 = 48;
/// What to add to a stack address for its place in the mirror.
pub const SLOT_MIRROR_DELTA: u64 = 56;
/// What the mirror holds: `[SLOT_MIRROR_LO, SLOT_MIRROR_HI)` (empty: nothing).
pub const SLOT_MIRROR_LO: u64 = 64;
pub const SLOT_MIRROR_HI: u64 = 72;
/// The stack pointer of the thunk reading or writing the mirror (0: none).
pub const SLOT_MIRROR_BUSY: u64 = 80;
/// Layers of the mirror.
pub const SLOT_LAYER_DEPTH: u64 = 88;
/// A range of the stack the compare may step over ([`skip`]-packed; 0: none), set
/// by memtrace (see "Skipped ranges" above), while the word at `SLOT_SKIP_RA_AT`
/// holds `SLOT_SKIP_RA`. The three are read between two reads of `SLOT_SKIP_SEQ`,
/// which memtrace makes odd while it writes them: a thunk that reads an odd or a
/// changed value steps over nothing.
pub const SLOT_SKIP: u64 = 96;
pub const SLOT_SKIP_RA_AT: u64 = 104;
pub const SLOT_SKIP_RA: u64 = 112;
pub const SLOT_SKIP_SEQ: u64 = 120;
/// `MAX_LAYERS` layers of `LAYER_SIZE` bytes, the highest (oldest) first.
pub const SLOT_LAYERS: u64 = 128;
/// A layer: its upper end (the record's `wm`), and its record's position.
pub const LAYER_SIZE: u64 = 16;
pub const LAYER_UPPER: u64 = 0;
pub const LAYER_POS: u64 = 8;
pub const MAX_LAYERS: u64 = 16;
pub const SLOT_FRAMES: u64 = SLOT_LAYERS + MAX_LAYERS * LAYER_SIZE;
pub const FRAME_SIZE: u64 = 32;
/// The real return address of a call whose return goes through the stub.
pub const FRAME_RET: u64 = 0;
/// The stack pointer at the call's entry (where the return address is).
pub const FRAME_SP: u64 = 8;
/// The position of the call's entry record.
pub const FRAME_POS: u64 = 16;
/// posix_memalign: where the result pointer is written (0 for other functions).
pub const FRAME_OUT_PTR: u64 = 24;
pub const MAX_FRAMES: u64 = (SLOT_SIZE - SLOT_FRAMES) / FRAME_SIZE;

/// Every call of this thread takes the slow path (a stop): a vfork child runs on
/// its parent's thread pointer, stack and slot.
pub const SLOT_FLAG_SLOW: u64 = 1;

/// Stack mirrors: how many threads have one, and how much of the top of its stack
/// each holds (a power of two).
pub const MIRRORS: u64 = 256;
pub const MIRROR_SIZE: u64 = 64 << 10;
/// Where the mirrors start in the memfd.
pub const MIRRORS_OFFSET: u64 = CTRL_SIZE + TABLE_SIZE;
/// A thread copies its whole stack when its chain of records starts further back in
/// the ring than this: the reader keeps twice this much below what it read (see
/// `KEEP_BEHIND`), so that a chain is still there when its last record is read.
pub const CHAIN_SPAN: u64 = 1 << 20;
/// How much of the ring, below the oldest record not read yet, is never released.
pub const KEEP_BEHIND: u64 = 2 * CHAIN_SPAN;

/// Ring size: a power of two, a multiple of the page size. Small enough that its
/// first lap costs few page faults (in the program and in memtrace) and much of it
/// stays in the caches: 16 MiB measured 8% faster than 32 on sqlite3's workload,
/// and on the churn. It holds 64 of the largest stack copies, and 8 times
/// `KEEP_BEHIND`. A double free finds its first free's stack only while that copy
/// is less than a lap of the ring old.
pub const RING_SIZE: u64 = 16 << 20;
/// Where the ring starts in the memfd.
pub const RING_OFFSET: u64 = MIRRORS_OFFSET + MIRRORS * MIRROR_SIZE;
/// The memfd's size.
pub const SHARED_SIZE: u64 = RING_OFFSET + RING_SIZE;

/// Every record starts with these two words. The first is `position | REC_RESERVED`
/// once the second (with the length) and the thread are written, then `position + 1` once the whole
/// record is: a reader can step over a record still being written when it knows
/// its length (the writer may have been stopped, or interrupted by a signal).
pub const REC_COMMIT: u64 = 0;
pub const REC_RESERVED: u64 = 1 << 63;
/// `len | kind << 32 | func << 40 | flags << 48`.
pub const REC_INFO: u64 = 8;
pub const REC_TID: u64 = 16;
/// Records are aligned to this.
pub const REC_ALIGN: u64 = 16;

/// An allocator call's entry.
pub const KIND_ENTRY: u8 = 1;
/// Its return, written by the return stub.
pub const KIND_RETURN: u8 = 2;
/// The thread is unwinding its stack (an exception): its pending calls will not
/// return. Written by memtrace.
pub const KIND_UNWIND: u8 = 3;

/// Entry: the first six integer arguments.
pub const ENTRY_ARGS: u64 = 24;
pub const ENTRY_RET: u64 = 72;
/// Entry: the stack pointer at the entry (the return address is there).
pub const ENTRY_SP: u64 = 80;
pub const ENTRY_FP: u64 = 88;
/// Entry: how many bytes of stack follow (its own bytes), copied from `ENTRY_SP + 8`
/// up.
pub const ENTRY_STACK_LEN: u64 = 96;
/// Entry: how many bytes of stack, from `ENTRY_SP + 8` up, the record stands for:
/// its own, then those of the records of its chain.
pub const ENTRY_FULL_LEN: u64 = 104;
/// Entry: the record holding the stack just above its own bytes (`NO_RECORD` when
/// its own bytes are the whole copy).
pub const ENTRY_PREV: u64 = 112;
/// Entry: the oldest record of its chain (its own position when it is whole).
pub const ENTRY_BASE: u64 = 120;
/// Entry: the range of its chain's bytes the compare stepped over ([`skip`]-packed;
/// 0: none): they are what the mirror held, not what the stack did.
pub const ENTRY_SKIP: u64 = 128;
pub const ENTRY_STACK: u64 = 144;
/// Entry flag: the return address was swapped for the stub (a return record follows).
pub const ENTRY_FLAG_RETURN: u8 = 1;
/// `ENTRY_PREV` of a record whose copy is whole.
pub const NO_RECORD: u64 = u64::MAX;

/// Return: the entry record's position.
pub const RETURN_ENTRY_POS: u64 = 24;
pub const RETURN_VALUE: u64 = 32;
/// Return: what posix_memalign wrote through its first argument (when it returned 0).
pub const RETURN_OUT: u64 = 40;
pub const RETURN_LEN: u64 = 48;

/// Most bytes a thunk's code may take (memtrace places the displaced instructions
/// right after).
pub const THUNK_CODE_MAX: u64 = 1920;

/// Most stack bytes a record may copy.
pub const MAX_STACK_COPY: u64 = 256 << 10;

/// The length of an entry record with `stack` bytes of stack.
pub const fn entry_len(stack: u64) -> u64 {
    (ENTRY_STACK + stack + REC_ALIGN - 1) & !(REC_ALIGN - 1)
}

/// Smallest range worth stepping over: two compare rounds of the widest kind.
pub const MIN_SKIP: u64 = 1024;

/// A skipped range `[lo, lo + len)` in one word, so that it is read and written
/// whole: `lo` (below 2^48) in the low 48 bits, `len / 8` in the next 15 (`len` a
/// multiple of 8 below 2^18).
pub const fn skip(lo: u64, len: u64) -> u64 {
    lo | (len >> 3) << 48
}

/// The `[lo, hi)` of a [`skip`]-packed range (empty for 0).
pub const fn unskip(packed: u64) -> (u64, u64) {
    let lo = packed & ((1 << 48) - 1);
    (lo, lo + (((packed >> 48) & 0x7fff) << 3))
}

/// The info word of a record.
pub const fn info(len: u64, kind: u8, func: u8, flags: u8) -> u64 {
    len | (kind as u64) << 32 | (func as u64) << 40 | (flags as u64) << 48
}

/// The slot a thread pointer hashes to.
pub const fn slot_of(thread_pointer: u64) -> u64 {
    thread_pointer.wrapping_mul(HASH_MULTIPLIER) >> (64 - TABLE_BITS)
}

/// Where the code generated for one hooked function finds what it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThunkSpec {
    /// The control page's address in the target.
    pub ctrl: u64,
    /// The function's number in the records (memtrace's own numbering).
    pub func: u8,
    /// Whether the return is hooked (everything but `free`).
    pub hook_return: bool,
    /// Whether the first argument is where the result is written (posix_memalign).
    pub out_ptr_arg: bool,
    /// Where the displaced instructions run (then jump back into the function).
    pub displaced: u64,
}

/// Code generated for one hooked function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thunk {
    pub code: Vec<u8>,
    /// Offset of the breakpoint the slow path stops at: every register, and the stack
    /// pointer, as at the function's entry.
    pub slow_trap: usize,
}

/// The shared return stub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReturnStub {
    pub code: Vec<u8>,
    /// Offset of the breakpoint reached when the thread's shadow stack has no frame
    /// for this return (a bug, or a frame memtrace took away): registers as at the
    /// return, the stack pointer just above the return address's slot.
    pub lost_trap: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    const _: () = assert!(CTRL_WAIT_TICKS + 8 <= CTRL_SIZE);
    const _: () = assert!(MAX_FRAMES >= 16);
    const _: () = assert!(SLOT_LAYER_DEPTH + 8 <= SLOT_LAYERS);
    const _: () = assert!(MIRROR_SIZE.is_power_of_two() && MIRROR_SIZE.is_multiple_of(4096));
    const _: () = assert!(KEEP_BEHIND < RING_SIZE / 4);

    #[test]
    fn layout_fits() {
        assert_eq!(RING_OFFSET % 4096, 0);
        assert_eq!(SLOT_FRAMES + MAX_FRAMES * FRAME_SIZE, SLOT_SIZE);
        assert_eq!(entry_len(0), 144);
        assert_eq!(entry_len(16), 160);
        assert_eq!(entry_len(17), 176);
        const { assert!(SLOT_SKIP_SEQ + 8 <= SLOT_LAYERS) };
        let (lo, len) = (0x7fff_ffff_e008, MAX_STACK_COPY - 8);
        assert_eq!(unskip(skip(lo, len)), (lo, lo + len));
        assert_eq!(unskip(0), (0, 0));
        assert!(entry_len(MAX_STACK_COPY) < RING_SIZE / 4);
        assert!(slot_of(u64::MAX) < TABLE_SLOTS);
        let i = info(48, KIND_RETURN, 7, 1);
        assert_eq!(i & 0xffff_ffff, 48);
        assert_eq!((i >> 32) as u8, KIND_RETURN);
        assert_eq!((i >> 40) as u8, 7);
        assert_eq!((i >> 48) as u8, 1);
    }
}

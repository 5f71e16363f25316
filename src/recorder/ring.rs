//! The ring and the thread table, memtrace's side: taking committed records in
//! position order (stepping over records still being written), releasing them, and
//! writing records of its own (for the calls it stops at).

use super::chain::{self, BrokenChain};
use super::record::{self, BadRecord, Entry, Record, HEADER_LEN};
use crate::event::Tid;
use crate::ptrace::SharedMem;
use crate::unwind::StackPieces;
use memtrace_arch::recorder::*;
use std::collections::BTreeMap;

/// Where memtrace's shared memory is in the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Addrs {
    pub ctrl: u64,
    pub ring: u64,
    pub ret_stub: u64,
}

impl Addrs {
    pub fn table(&self) -> u64 {
        self.ctrl + CTRL_SIZE
    }

    /// Every range of the target that belongs to the recorder's memory, as
    /// `[start, end)`: never a root of the reachability scan (it holds pointers).
    pub fn ranges(&self) -> [(u64, u64); 2] {
        [
            (self.ctrl, self.ctrl + RING_OFFSET),
            (self.ring, self.ring + 2 * RING_SIZE),
        ]
    }
}

/// A frame of a thread's shadow stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowFrame {
    pub ret: u64,
    pub sp: u64,
    pub pos: u64,
    pub out_ptr: u64,
}

/// A record reserved but not committed, stepped over: read when it commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hole {
    pub len: u64,
    pub tid: Tid,
}

/// Counters of the ring itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RingStats {
    pub records: u64,
    pub bytes: u64,
    /// Records stepped over while still being written (read later).
    pub holes: u64,
    /// Records never committed (their thread ended in the middle), given up on.
    pub abandoned: u64,
    /// Records that made no sense (a bug, or memory overwritten by the program).
    pub bad: u64,
}

pub struct Ring {
    mem: SharedMem,
    pub addrs: Addrs,
    /// The next position to look at.
    read: u64,
    /// A record could not be decoded: its length cannot be trusted, nothing after it
    /// can be found. Nothing more is read (or released past it).
    broken: bool,
    /// The head as last read: it is only read again when `read` reaches it (the
    /// writers keep its cache line busy).
    head_seen: u64,
    /// Released up to here (what `CTRL_TAIL` says).
    tail: u64,
    holes: BTreeMap<u64, Hole>,
    /// Stack mirrors no thread has (see "Stack copies" in `memtrace_arch::recorder`).
    free_mirrors: Vec<u64>,
    /// The mirror of each thread pointer that has one.
    mirrors: std::collections::HashMap<u64, u64>,
    /// The thread pointer of each thread registered.
    thread_pointers: std::collections::HashMap<Tid, u64>,
    pub stats: RingStats,
}

/// How long a writer sleeps before it looks at the flags again (a memtrace that
/// died or detached sets them).
const WAIT_TIMEOUT_NS: u64 = 10_000_000;

impl Ring {
    /// Takes over freshly mapped shared memory and fills in its control page.
    pub fn new(mem: SharedMem, addrs: Addrs, copy_len: u64) -> Ring {
        mem.store(CTRL_RING, addrs.ring);
        mem.store(CTRL_TABLE, addrs.table());
        mem.store(CTRL_RET_STUB, addrs.ret_stub);
        mem.store(CTRL_COPY_LEN, copy_len);
        mem.store(CTRL_WAIT_TIMEOUT, 0);
        mem.store(CTRL_WAIT_TIMEOUT + 8, WAIT_TIMEOUT_NS);
        Ring {
            mem,
            addrs,
            read: 0,
            broken: false,
            head_seen: 0,
            tail: 0,
            holes: BTreeMap::new(),
            free_mirrors: (0..MIRRORS).rev().collect(),
            mirrors: Default::default(),
            thread_pointers: Default::default(),
            stats: RingStats::default(),
        }
    }

    pub fn set_flags(&self, flags: u64) {
        self.mem.store(CTRL_FLAGS, flags);
        // Writers asleep for room look at the flags when they wake.
        self.mem.futex_wake_all(CTRL_TAIL_SEQ);
    }

    pub fn copy_len(&self) -> u64 {
        self.mem.load(CTRL_COPY_LEN)
    }

    pub fn set_copy_len(&self, len: u64) {
        self.mem.store(CTRL_COPY_LEN, len.min(MAX_STACK_COPY));
    }

    /// How often, and for how many time stamp counter ticks, writers waited for room.
    pub fn waits(&self) -> (u64, u64) {
        (self.mem.load(CTRL_WAITS), self.mem.load(CTRL_WAIT_TICKS))
    }

    pub fn head(&self) -> u64 {
        self.mem.load(CTRL_HEAD)
    }

    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// The next position to be read: everything below it was read, but for holes.
    pub fn read_pos(&self) -> u64 {
        self.read
    }

    /// Bytes between the tail and the head: read or not, not released.
    pub fn used(&self) -> u64 {
        self.head().saturating_sub(self.tail)
    }

    /// The next committed record in position order, or None when the next one is not
    /// written yet. A record whose writer is still at it (reserved, length known) is
    /// stepped over and given later, once committed.
    pub fn next_record(&mut self) -> Option<Result<Record, BadRecord>> {
        if self.broken {
            // Nothing past the bad record can be found; those stepped over before
            // it are still read as they commit.
            let pos = self.committed_hole()?;
            self.holes.remove(&pos);
            return Some(self.take(pos));
        }
        loop {
            // A record stepped over that has committed since comes first: anything
            // of its thread after it was written after it.
            if let Some(pos) = self.committed_hole() {
                self.holes.remove(&pos);
                return Some(self.take(pos));
            }
            if self.read >= self.head_seen {
                self.head_seen = self.head();
                if self.read >= self.head_seen {
                    return None;
                }
            }
            let pos = self.read;
            let commit = self.mem.ring_load(pos, REC_COMMIT);
            if commit == pos + 1 {
                // A hole may have committed since the look above, and this record be
                // its thread's next one (a return after its entry): seen committed
                // after this one's commit, it is certain to come first.
                if let Some(hole) = self.committed_hole() {
                    self.holes.remove(&hole);
                    return Some(self.take(hole));
                }
                let r = self.take(pos);
                match &r {
                    Ok(_) => {}
                    // Its length cannot be trusted: nothing after it can be found.
                    Err(_) => self.broken = true,
                }
                return Some(r);
            }
            if commit == pos | REC_RESERVED {
                let info = self.mem.ring_load(pos, REC_INFO);
                let len = record::length(info);
                if len < RETURN_LEN || len % REC_ALIGN != 0 || len > entry_len(MAX_STACK_COPY) {
                    return None; // cannot be: wait for the commit
                }
                let tid = self.mem.ring_load(pos, REC_TID) as Tid;
                self.holes.insert(pos, Hole { len, tid });
                self.stats.holes += 1;
                self.read += len;
                continue;
            }
            return None;
        }
    }

    /// The oldest record stepped over that is committed now.
    fn committed_hole(&self) -> Option<u64> {
        self.holes
            .keys()
            .copied()
            .find(|&pos| self.mem.ring_load(pos, REC_COMMIT) == pos + 1)
    }

    fn take(&mut self, pos: u64) -> Result<Record, BadRecord> {
        // The header only: a return record is shorter than an entry's header.
        let info = self.mem.ring_load(pos, REC_INFO);
        // No further than the record's own length (a bad one is refused by
        // `decode`, without a look at its neighbour's bytes).
        let n = (record::length(info) as usize).clamp(RETURN_LEN as usize, HEADER_LEN);
        // Decoded where it lies (a committed record not released is written by
        // nobody): the words past a return record's end read as 0.
        let r = record::decode(pos, self.mem.ring_bytes(pos, 0, n));
        match &r {
            Ok(rec) => {
                let len = match rec {
                    Record::Entry(e) => entry_len(e.stack_len),
                    _ => RETURN_LEN,
                };
                if pos == self.read {
                    self.read += len;
                    if self.read < self.head_seen {
                        self.mem.prefetch(self.read);
                    }
                }
                self.stats.records += 1;
                self.stats.bytes += len;
            }
            Err(_) => self.stats.bad += 1,
        }
        r
    }

    /// The whole committed record at `pos` (not yet released): header and stack copy.
    pub fn record(&self, pos: u64) -> &[u8] {
        let len = record::length(self.mem.ring_load(pos, REC_INFO)).min(entry_len(MAX_STACK_COPY));
        self.mem.ring_bytes(pos, 0, len as usize)
    }

    /// Starts loading the record at `pos` into the cache (it is about to be unwound):
    /// its header and the first `len` bytes of its stack copy.
    pub fn prefetch_record(&self, pos: u64, len: usize) {
        self.mem.prefetch_bytes(pos, record::HEADER_LEN + len);
    }

    /// The committed entry at `pos` and its own stack bytes.
    fn entry_at(&self, pos: u64) -> Option<(Entry, &[u8])> {
        if self.mem.ring_load(pos, REC_COMMIT) != pos + 1 {
            return None;
        }
        let rec = self.record(pos);
        let Ok(Record::Entry(e)) = record::decode(pos, rec.get(..HEADER_LEN)?) else {
            return None;
        };
        let own = rec.get(HEADER_LEN..HEADER_LEN + e.stack_len as usize)?;
        Some((e, own))
    }

    /// The whole stack copy `e` (an entry still in the ring) stands for, into `out`:
    /// its own bytes, then those of its chain.
    pub fn whole_stack(&self, e: &Entry, out: &mut Vec<u8>) -> Result<(), BrokenChain> {
        out.clear();
        self.stack_copy(e)?.write_to(out);
        Ok(())
    }

    /// The whole stack copy `e` (an entry still in the ring) stands for, where it
    /// lies: its own bytes, then those of its chain.
    pub fn stack_copy(&self, e: &Entry) -> Result<StackPieces<'_>, BrokenChain> {
        let rec = self.record(e.pos);
        let own = rec
            .get(HEADER_LEN..HEADER_LEN + e.stack_len as usize)
            .ok_or(BrokenChain::Gone(e.pos))?;
        chain::pieces(e, own, |p| self.entry_at(p))
    }

    /// The entry record at `pos` on its own: a header that says its copy is whole,
    /// then the whole copy. None when it or its chain is gone. The caller checks
    /// that nothing was written over meanwhile (see [`Ring::copy_if_intact`]).
    pub fn materialize(&self, pos: u64) -> Option<(Box<[u8]>, Entry)> {
        let (e, _) = self.entry_at(pos)?;
        let mut stack = Vec::new();
        self.whole_stack(&e, &mut stack).ok()?;
        let whole = Entry {
            stack_len: stack.len() as u64,
            full_len: stack.len() as u64,
            prev: NO_RECORD,
            base: pos,
            ..e
        };
        let mut b = record::encode_entry(&whole);
        b[REC_COMMIT as usize..REC_COMMIT as usize + 8].copy_from_slice(&(pos + 1).to_le_bytes());
        b.extend_from_slice(&stack);
        Some((b.into(), e))
    }

    /// The entry record at `pos`, not released, taken out of the ring: made whole
    /// (its chain is held with it), or as it is if that cannot be.
    pub fn whole_record(&self, pos: u64) -> Box<[u8]> {
        match self.materialize(pos) {
            Some((b, _)) => b,
            None => self.record(pos).into(),
        }
    }

    /// A copy of the entry record at `pos` (made whole), released already, if no
    /// writer has reused its space, or its chain's, since. A writer reuses it only
    /// after reserving past `base + RING_SIZE`: the head read after the copy says
    /// whether any did (its reservation comes before its writes; a copy that saw one
    /// of those writes sees that head). The commit word alone cannot tell: a writer
    /// sets a record's length and thread before its commit word, and a record
    /// starting inside this one never touches it.
    pub fn copy_if_intact(&self, pos: u64) -> Option<Box<[u8]>> {
        let (copy, e) = self.materialize(pos)?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // Not yet released, no writer may reuse it, however far the head has gone
        // (writers reserve before they wait for room).
        let base = e.base.min(pos);
        (base >= self.tail || self.head() <= base + RING_SIZE).then_some(copy)
    }

    /// The records still being written, oldest first.
    pub fn holes(&self) -> impl Iterator<Item = (u64, Hole)> + '_ {
        self.holes.iter().map(|(&p, &h)| (p, h))
    }

    /// Gives up on a record that will never be committed (its writer is gone).
    pub fn abandon(&mut self, pos: u64) {
        if self.holes.remove(&pos).is_some() {
            self.stats.abandoned += 1;
        }
    }

    /// Releases everything below `upto` (at most what was read, never a hole):
    /// writers may reuse that space. Wakes the writers waiting for room.
    pub fn release(&mut self, upto: u64) {
        let mut to = upto.min(self.read);
        if let Some((&hole, _)) = self.holes.iter().next() {
            to = to.min(hole);
        }
        if to <= self.tail {
            return;
        }
        self.tail = to;
        self.mem.store(CTRL_TAIL, to);
        self.mem.bump_u32(CTRL_TAIL_SEQ);
        if self.mem.load_u32(CTRL_WAITERS) != 0 {
            self.mem.futex_wake_all(CTRL_TAIL_SEQ);
        }
    }

    /// Reserves `len` bytes for a record of memtrace's own. The caller must wait for
    /// [`Ring::has_room`] (reading and releasing) before writing it.
    pub fn reserve(&mut self, len: u64) -> u64 {
        self.mem.fetch_add(CTRL_HEAD, len)
    }

    pub fn has_room(&self, pos: u64, len: u64) -> bool {
        (pos + len).saturating_sub(self.tail) <= RING_SIZE
    }

    /// A record could not be read: the recording is over.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Writes and commits a record of memtrace's own at a reserved `pos` with room:
    /// `header` (from [`record::encode_entry`] and the like), then `tail` bytes.
    pub fn write(&mut self, pos: u64, header: &[u8], tail: &[u8]) {
        self.mem.ring_write(pos, 8, &header[8..]);
        self.mem.ring_write(pos, header.len() as u64, tail);
        self.mem.ring_store(pos, REC_COMMIT, pos + 1);
    }

    // --- the thread table -------------------------------------------------------

    fn slot_off(index: u64) -> u64 {
        CTRL_SIZE + index * SLOT_SIZE
    }

    /// The slot of the thread whose thread pointer is `tp`.
    fn find(&self, tp: u64) -> Option<u64> {
        let start = slot_of(tp);
        (0..TABLE_PROBES)
            .map(|i| Self::slot_off((start + i) & (TABLE_SLOTS - 1)))
            .take_while(|&off| self.mem.load(off + SLOT_KEY) != 0)
            .find(|&off| self.mem.load(off + SLOT_KEY) == tp)
    }

    /// Registers a thread: from now on the generated code records its calls. False
    /// when the table has no room near its hash (its calls then take the slow path).
    pub fn register(&mut self, tp: u64, tid: Tid, lo: u64, hi: u64) -> bool {
        if tp == 0 || tp == TOMBSTONE {
            return false;
        }
        let off = match self.find(tp) {
            Some(off) => off,
            None => {
                let start = slot_of(tp);
                let free = (0..TABLE_PROBES)
                    .map(|i| Self::slot_off((start + i) & (TABLE_SLOTS - 1)))
                    .find(|&off| matches!(self.mem.load(off + SLOT_KEY), 0 | TOMBSTONE));
                match free {
                    Some(off) => off,
                    None => return false,
                }
            }
        };
        self.mem.store(off + SLOT_TID, tid as u64);
        self.mem.store(off + SLOT_LO, lo);
        self.mem.store(off + SLOT_HI, hi);
        self.mem.store(off + SLOT_FLAGS, 0);
        self.mem.store(off + SLOT_DEPTH, 0);
        // A stack mirror, empty, if one is free: the first call copies its stack
        // whole.
        let mirror = match self.mirrors.remove(&tp) {
            Some(m) => Some(m),
            None => self.free_mirrors.pop(),
        };
        self.mem.store(off + SLOT_MIRROR_HI, 0);
        self.mem.store(off + SLOT_MIRROR_LO, 0);
        self.mem.store(off + SLOT_MIRROR_BUSY, 0);
        self.mem.store(off + SLOT_LAYER_DEPTH, 0);
        for field in [SLOT_SKIP, SLOT_SKIP_RA_AT, SLOT_SKIP_RA, SLOT_SKIP_SEQ] {
            self.mem.store(off + field, 0);
        }
        match mirror.filter(|_| hi >= MIRROR_SIZE) {
            Some(m) => {
                self.mirrors.insert(tp, m);
                let at = self.addrs.ctrl + MIRRORS_OFFSET + m * MIRROR_SIZE;
                self.mem
                    .store(off + SLOT_MIRROR_DELTA, (at + MIRROR_SIZE).wrapping_sub(hi));
                self.mem.store(off + SLOT_MIRROR_FLOOR, hi - MIRROR_SIZE);
            }
            None => {
                if let Some(m) = mirror {
                    self.free_mirrors.push(m);
                }
                self.mem.store(off + SLOT_MIRROR_FLOOR, u64::MAX);
            }
        }
        // The key last: a thread that finds its slot finds it complete.
        self.mem.store(off + SLOT_KEY, tp);
        self.thread_pointers.retain(|_, &mut t| t != tp);
        self.thread_pointers.insert(tid, tp);
        true
    }

    /// Lets the stack compare of thread `tid` step over `skip.range` while the
    /// word at `skip.ra_at` holds `skip.ra` (see "Skipped ranges" in
    /// `memtrace_arch::recorder`); `None`, or a range too narrow: over nothing.
    /// Returns whether a range is set.
    pub fn set_skip(&self, tid: Tid, skip: Option<crate::unwind::Skip>) -> bool {
        let Some(off) = self.slot_of_thread(tid) else {
            return false;
        };
        let (packed, ra_at, ra) = match skip {
            Some(s) => {
                let (lo, hi) = s.range;
                let len = hi.saturating_sub(lo).min(MAX_STACK_COPY - 8) & !7;
                if len < MIN_SKIP || lo >= 1 << 48 {
                    (0, 0, 0)
                } else {
                    (memtrace_arch::recorder::skip(lo, len), s.ra_at, s.ra)
                }
            }
            None => (0, 0, 0),
        };
        let now = (
            self.mem.load(off + SLOT_SKIP),
            self.mem.load(off + SLOT_SKIP_RA_AT),
            self.mem.load(off + SLOT_SKIP_RA),
        );
        // Stores the thread's cache line pays for: only a change.
        if now != (packed, ra_at, ra) {
            // Only this thread writes the sequence word: odd while the three change.
            let seq = self.mem.load(off + SLOT_SKIP_SEQ);
            self.mem.store(off + SLOT_SKIP_SEQ, seq | 1);
            self.mem.store(off + SLOT_SKIP, packed);
            self.mem.store(off + SLOT_SKIP_RA_AT, ra_at);
            self.mem.store(off + SLOT_SKIP_RA, ra);
            self.mem.store(off + SLOT_SKIP_SEQ, (seq | 1) + 1);
        }
        packed != 0
    }

    /// What [`Ring::set_skip`] set for thread `tid`: the range (empty: none), the
    /// address of the word that must hold the return address, and that address.
    pub fn skip_of(&self, tid: Tid) -> ((u64, u64), u64, u64) {
        self.slot_of_thread(tid)
            .map(|off| {
                (
                    unskip(self.mem.load(off + SLOT_SKIP)),
                    self.mem.load(off + SLOT_SKIP_RA_AT),
                    self.mem.load(off + SLOT_SKIP_RA),
                )
            })
            .unwrap_or(((0, 0), 0, 0))
    }

    /// The slot of thread `tid`, while it is that thread's (a thread pointer is
    /// reused by the next thread given the same stack).
    fn slot_of_thread(&self, tid: Tid) -> Option<u64> {
        let off = self.find(*self.thread_pointers.get(&tid)?)?;
        (self.mem.load(off + SLOT_TID) == tid as u64).then_some(off)
    }

    /// Forgets a thread (it exited). Its slot is a tombstone: later slots of the same
    /// probe chain stay reachable.
    pub fn unregister(&mut self, tp: u64) {
        self.thread_pointers.retain(|_, &mut t| t != tp);
        if let Some(off) = self.find(tp) {
            self.mem.store(off + SLOT_KEY, TOMBSTONE);
        }
        // Its thread runs no more: another may have its mirror (stacks are read
        // from the ring, never from a mirror).
        if let Some(m) = self.mirrors.remove(&tp) {
            self.free_mirrors.push(m);
        }
    }

    pub fn is_registered(&self, tp: u64) -> bool {
        self.find(tp).is_some()
    }

    /// The thread a slot was registered for.
    pub fn owner(&self, tp: u64) -> Option<Tid> {
        self.find(tp)
            .map(|off| self.mem.load(off + SLOT_TID) as Tid)
    }

    /// The stack bounds the thread was registered with.
    pub fn bounds(&self, tp: u64) -> Option<(u64, u64)> {
        let off = self.find(tp)?;
        Some((self.mem.load(off + SLOT_LO), self.mem.load(off + SLOT_HI)))
    }

    /// Makes every call of the thread take the slow path (a vfork child runs on its
    /// slot), or not.
    pub fn set_slow(&mut self, tp: u64, slow: bool) {
        if let Some(off) = self.find(tp) {
            self.mem
                .store(off + SLOT_FLAGS, if slow { SLOT_FLAG_SLOW } else { 0 });
        }
    }

    /// The thread's shadow stack, outermost first.
    pub fn shadow(&self, tp: u64) -> Vec<ShadowFrame> {
        let Some(off) = self.find(tp) else {
            return Vec::new();
        };
        let depth = self.mem.load(off + SLOT_DEPTH).min(MAX_FRAMES);
        (0..depth)
            .map(|i| {
                let f = off + SLOT_FRAMES + i * FRAME_SIZE;
                ShadowFrame {
                    ret: self.mem.load(f + FRAME_RET),
                    sp: self.mem.load(f + FRAME_SP),
                    pos: self.mem.load(f + FRAME_POS),
                    out_ptr: self.mem.load(f + FRAME_OUT_PTR),
                }
            })
            .collect()
    }

    /// Pushes a frame (memtrace swapped the return address of a call it stopped at).
    /// False when the shadow stack is full.
    pub fn push_shadow(&mut self, tp: u64, frame: ShadowFrame) -> bool {
        let Some(off) = self.find(tp) else {
            return false;
        };
        let depth = self.mem.load(off + SLOT_DEPTH);
        if depth >= MAX_FRAMES {
            return false;
        }
        let f = off + SLOT_FRAMES + depth * FRAME_SIZE;
        self.mem.store(f + FRAME_RET, frame.ret);
        self.mem.store(f + FRAME_SP, frame.sp);
        self.mem.store(f + FRAME_POS, frame.pos);
        self.mem.store(f + FRAME_OUT_PTR, frame.out_ptr);
        self.mem.store(off + SLOT_DEPTH, depth + 1);
        true
    }

    /// Keeps the first `depth` frames of the thread's shadow stack.
    pub fn truncate_shadow(&mut self, tp: u64, depth: usize) {
        if let Some(off) = self.find(tp) {
            let now = self.mem.load(off + SLOT_DEPTH);
            self.mem.store(off + SLOT_DEPTH, now.min(depth as u64));
        }
    }
}

/// The key of a slot whose thread is gone.
const TOMBSTONE: u64 = u64::MAX;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::HookFn;
    use crate::recorder::record::{encode_entry, encode_return, Entry, Return};
    use std::os::fd::FromRawFd;

    fn memfd() -> std::fs::File {
        // SAFETY: memfd_create with a static name; the fd is new and ours.
        unsafe {
            let fd = libc::memfd_create(c"ring-test".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0);
            std::fs::File::from_raw_fd(fd)
        }
    }

    /// A ring read by memtrace and a second mapping of it to write as the target does.
    fn ring_and_writer() -> (Ring, SharedMem) {
        let file = memfd();
        let other = file.try_clone().expect("dup");
        let ring = Ring::new(SharedMem::map(file).expect("map"), Addrs::default(), 0);
        (ring, SharedMem::map(other).expect("map"))
    }

    #[test]
    fn a_skipped_range_is_set_only_for_its_own_thread() {
        let (mut ring, writer) = ring_and_writer();
        let hi = 0x7fff_0010_0000;
        assert!(ring.register(0x5000, 7, hi - (1 << 20), hi));
        let slot = |field| writer.load(CTRL_SIZE + slot_of(0x5000) * SLOT_SIZE + field);
        let skip = crate::unwind::Skip {
            range: (hi - 0x4000, hi - 0x2000),
            ra_at: hi - 0x1ff8,
            ra: 0x7f00_1234,
        };
        assert!(ring.set_skip(7, Some(skip)));
        assert_eq!(ring.skip_of(7), (skip.range, skip.ra_at, skip.ra));
        assert_eq!(unskip(slot(SLOT_SKIP)), skip.range);
        // Written under an even sequence number that moved: a thunk that read the
        // three between two equal even values read one setting.
        let seq = slot(SLOT_SKIP_SEQ);
        assert!(seq > 0 && seq % 2 == 0, "{seq}");
        // The same again: nothing written.
        assert!(ring.set_skip(7, Some(skip)));
        assert_eq!(slot(SLOT_SKIP_SEQ), seq);
        // Too narrow: none.
        let narrow = crate::unwind::Skip {
            range: (hi - 0x100, hi),
            ..skip
        };
        assert!(!ring.set_skip(7, Some(narrow)));
        assert_eq!(ring.skip_of(7), ((0, 0), 0, 0));
        assert_eq!(slot(SLOT_SKIP_SEQ), seq + 2);
        assert!(ring.set_skip(7, Some(skip)));
        // A thread given the same thread pointer: the last one's range is not its.
        ring.unregister(0x5000);
        assert!(ring.register(0x5000, 8, hi - (1 << 20), hi));
        assert_eq!(ring.skip_of(8), ((0, 0), 0, 0));
        assert!(!ring.set_skip(7, Some(skip)));
        assert_eq!(slot(SLOT_SKIP), 0);
    }

    /// A return record of `tid` with `value`.
    fn ret(tid: Tid, value: u64) -> Return {
        Return {
            pos: 0,
            tid,
            entry_pos: 0,
            value,
            out: 0,
        }
    }

    /// A free's entry record with `stack` bytes of stack, whole.
    fn free_entry(stack: u64) -> Entry {
        Entry {
            pos: 0,
            tid: 1,
            func: HookFn::Free,
            hooked_return: false,
            args: [0x10, 0, 0, 0, 0, 0],
            ret: 0x5000,
            sp: 0x7000,
            fp: 0,
            stack_len: stack,
            full_len: stack,
            prev: NO_RECORD,
            base: 0,
            skipped: (0, 0),
        }
    }

    /// Writes a record as the generated code does: length and thread, then the
    /// reserved mark, then the rest, then the commit.
    fn write_like_the_target(mem: &SharedMem, header: &[u8], payload: &[u8]) -> u64 {
        let info = u64::from_le_bytes(header[8..16].try_into().expect("info"));
        let len = record::length(info);
        let pos = mem.fetch_add(CTRL_HEAD, len);
        while pos + len - mem.load(CTRL_TAIL) > RING_SIZE {
            std::hint::spin_loop();
        }
        mem.ring_write(pos, 8, &header[8..24]);
        mem.ring_store(pos, REC_COMMIT, pos | REC_RESERVED);
        mem.ring_write(pos, 24, &header[24..]);
        mem.ring_write(pos, header.len() as u64, payload);
        mem.ring_store(pos, REC_COMMIT, pos + 1);
        pos
    }

    /// One thread's entries and returns, each entry with a large stack copy so that
    /// the reader often finds it half written and steps over it: a return must never
    /// be read before its entry, whatever the timing.
    #[test]
    fn a_threads_return_never_comes_before_its_entry() {
        let (mut ring, writer) = ring_and_writer();
        const CALLS: u64 = 100_000;
        const STACK: usize = 8 << 10;
        let t = std::thread::spawn(move || {
            let stack = vec![0u8; STACK];
            for _ in 0..CALLS {
                let e = Entry {
                    pos: 0,
                    tid: 1,
                    func: HookFn::Malloc,
                    hooked_return: true,
                    args: [8, 0, 0, 0, 0, 0],
                    ret: 0x5000,
                    sp: 0x7000,
                    fp: 0,
                    stack_len: STACK as u64,
                    full_len: STACK as u64,
                    prev: NO_RECORD,
                    base: 0,
                    skipped: (0, 0),
                };
                let pos = write_like_the_target(&writer, &encode_entry(&e), &stack);
                let r = Return {
                    pos: 0,
                    tid: 1,
                    entry_pos: pos,
                    value: 0x10,
                    out: 0,
                };
                write_like_the_target(&writer, &encode_return(&r), &[]);
            }
        });
        let (mut entries, mut early) = (0u64, 0u64);
        let mut open = None;
        while entries < CALLS || open.is_some() {
            match ring.next_record() {
                Some(Ok(Record::Entry(e))) => {
                    entries += 1;
                    open = Some(e.pos);
                }
                Some(Ok(Record::Return(r))) => {
                    if open.take() != Some(r.entry_pos) {
                        early += 1;
                    }
                }
                Some(other) => panic!("{other:?}"),
                None => std::hint::spin_loop(),
            }
            let read = ring.read_pos();
            ring.release(read);
        }
        t.join().expect("the writer");
        assert_eq!(early, 0, "returns read before their entry");
        assert!(
            ring.stats.holes > 0,
            "the reader never found a record half written"
        );
    }

    /// A record that cannot be decoded ends the reading: nothing after it is read,
    /// the space before it stays releasable, and nothing past it is ever released
    /// (the tail once became u64::MAX there: every later room check overflowed).
    #[test]
    fn a_bad_record_ends_the_reading_and_nothing_is_released_past_it() {
        let (mut ring, writer) = ring_and_writer();
        let r = ret(1, 0x10);
        let good = write_like_the_target(&writer, &encode_return(&r), &[]);
        let mut bad = encode_return(&r);
        let info = memtrace_arch::recorder::info(RETURN_LEN, 0x7f, 0, 0);
        bad[8..16].copy_from_slice(&info.to_le_bytes());
        let bad_at = write_like_the_target(&writer, &bad, &[]);
        write_like_the_target(&writer, &encode_return(&r), &[]);
        assert!(matches!(ring.next_record(), Some(Ok(Record::Return(_)))));
        assert!(matches!(ring.next_record(), Some(Err(_))));
        assert!(ring.is_broken());
        assert!(ring.next_record().is_none(), "read past a bad record");
        ring.release(u64::MAX);
        assert_eq!(writer.load(CTRL_TAIL), bad_at);
        assert!(bad_at > good);
        assert!(ring.has_room(bad_at, RETURN_LEN));
    }

    /// A record stepped over before a bad one, committed only after it, is still read.
    #[test]
    fn a_record_stepped_over_before_a_bad_one_is_read_when_it_commits() {
        let (mut ring, writer) = ring_and_writer();
        let r = ret(1, 0x10);
        // A writer reserves and marks its record, and is not done yet.
        let header = encode_return(&r);
        let hole = writer.fetch_add(CTRL_HEAD, RETURN_LEN);
        writer.ring_write(hole, 8, &header[8..24]);
        writer.ring_store(hole, REC_COMMIT, hole | REC_RESERVED);
        let mut bad = encode_return(&r);
        let info = memtrace_arch::recorder::info(RETURN_LEN, 0x7f, 0, 0);
        bad[8..16].copy_from_slice(&info.to_le_bytes());
        write_like_the_target(&writer, &bad, &[]);
        assert!(matches!(ring.next_record(), Some(Err(_))));
        assert!(ring.is_broken());
        assert!(ring.next_record().is_none());
        writer.ring_write(hole, 24, &header[24..]);
        writer.ring_store(hole, REC_COMMIT, hole + 1);
        match ring.next_record() {
            Some(Ok(Record::Return(got))) => assert_eq!((got.pos, got.value), (hole, 0x10)),
            other => panic!("the record stepped over: {other:?}"),
        }
        assert!(ring.next_record().is_none());
    }

    /// The first free of a double free is read back from the ring if no writer has
    /// reused its space: a record written over its middle in the next lap (its own
    /// commit word untouched) makes the copy unusable.
    #[test]
    fn a_record_written_over_in_the_next_lap_is_not_intact() {
        let (mut ring, writer) = ring_and_writer();
        let e = free_entry(4096);
        let first = write_like_the_target(&writer, &encode_entry(&e), &[0xaa; 4096]);
        assert!(matches!(ring.next_record(), Some(Ok(Record::Entry(_)))));
        ring.release(ring.read_pos());
        let intact = ring
            .copy_if_intact(first)
            .expect("nothing written over it yet");
        assert_eq!(intact.len() as u64, entry_len(4096));
        // Another writer's record begins 1 KiB into it, one lap later.
        let lap = first + RING_SIZE + 1024;
        let skip = lap - writer.load(CTRL_HEAD);
        writer.fetch_add(CTRL_HEAD, skip);
        let r = ret(2, 0);
        let at = write_like_the_target(&writer, &encode_return(&r), &[]);
        assert_eq!(at, lap);
        assert_eq!(ring.copy_if_intact(first), None);
    }

    /// Writers waiting for room have moved the head a lap past a record that is not
    /// released yet: none of them may write over it, so it is intact.
    #[test]
    fn a_record_not_released_is_intact_however_far_the_head_is() {
        let (mut ring, writer) = ring_and_writer();
        let first = write_like_the_target(&writer, &encode_entry(&free_entry(64)), &[7; 64]);
        assert!(matches!(ring.next_record(), Some(Ok(Record::Entry(_)))));
        writer.fetch_add(CTRL_HEAD, RING_SIZE + 1024);
        assert!(ring.copy_if_intact(first).is_some());
        ring.release(ring.read_pos());
        assert_eq!(ring.copy_if_intact(first), None);
    }

    /// A record that copied only the bottom of its stack is made whole from the
    /// record that holds the rest; once a writer reuses that record's space, a
    /// released copy of it can no longer be had.
    #[test]
    fn a_partial_copy_is_made_whole_from_its_chain_while_the_chain_is_there() {
        let (mut ring, writer) = ring_and_writer();
        // The whole stack, [0x7008, 0x7108), as the first call saw it.
        let first_stack: Vec<u8> = (0..256u32).map(|i| i as u8).collect();
        let first = write_like_the_target(&writer, &encode_entry(&free_entry(256)), &first_stack);
        // The second call, from 0x6ff8 up: only [0x6ff8, 0x7048) changed.
        let own = vec![0xee; 0x50];
        let second = Entry {
            sp: 0x6ff0,
            stack_len: 0x50,
            full_len: 0x110,
            prev: first,
            base: first,
            ..free_entry(0)
        };
        let at = write_like_the_target(&writer, &encode_entry(&second), &own);
        for _ in 0..2 {
            assert!(matches!(ring.next_record(), Some(Ok(Record::Entry(_)))));
        }
        let (whole, e) = ring.materialize(at).expect("its chain is there");
        assert_eq!(e.prev, first);
        let mut want = own.clone();
        want.extend_from_slice(&first_stack[0x40..]);
        assert_eq!(&whole[HEADER_LEN..], &want[..]);
        match record::decode(at, &whole[..HEADER_LEN]) {
            Ok(Record::Entry(w)) => {
                assert!(w.is_whole());
                assert_eq!((w.stack_len, w.full_len), (0x110, 0x110));
            }
            other => panic!("{other:?}"),
        }
        // Both released; a writer a lap later reuses the first one's space only.
        ring.release(ring.read_pos());
        assert!(ring.copy_if_intact(at).is_some());
        let lap = first + RING_SIZE + 16;
        writer.fetch_add(CTRL_HEAD, lap - writer.load(CTRL_HEAD));
        write_like_the_target(&writer, &encode_return(&ret(2, 0)), &[]);
        assert_eq!(ring.copy_if_intact(at), None);
    }
}

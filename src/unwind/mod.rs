//! Unwinding a stopped thread's stack from the outside, with DWARF CFI.
//!
//! At an allocator's entry the tracer knows three things: the return address (the
//! allocator's caller, always the first frame), the stack pointer the caller will have
//! after the return, and the frame pointer. From there [`StackWalker::walk`] unwinds
//! with framehop against a copy of the stack: one read from the stack pointer up, as
//! long as the last walk needed, extended (doubling) only when the unwinder asks for a
//! word beyond it, so a typical stack costs one `process_vm_readv`. framehop uses `.eh_frame` (by
//! `.eh_frame_hdr`), or `.debug_frame` in an object without `.eh_frame`, and falls back
//! to the frame-pointer chain only at a pc that no unwind information covers.
//!
//! This module reads no process: the tracer hands it the object files (opened, read
//! as needed; bytes in tests) and a function that reads the target's memory, so it
//! can be tested on a made-up stack.

mod pieces;
mod reuse;
pub mod shape;

pub use pieces::StackPieces;
pub use reuse::Walked;

use crate::maps::Module;
use framehop::{
    CacheNative, ExplicitModuleSectionInfo, FrameAddress, MayAllocateDuringUnwind,
    UnwindRegsNative, Unwinder, UnwinderNative,
};
use object::{Object, ObjectSection, ObjectSegment};

/// An object's file, read as needed: a program with its debug info can be
/// gigabytes, of which unwinding needs the headers, the unwind sections and a few
/// functions' code.
pub type ObjectFile = object::ReadCache<std::fs::File>;

/// Opens the file of a module's object (None: it cannot be).
pub type OpenFile<'a> = dyn FnMut(&Module) -> Option<std::fs::File> + 'a;

/// The first read of a stack when nothing is known yet: enough for a few dozen
/// ordinary frames. Later walks first read what the last one used, plus a margin:
/// a read costs about 2 us whatever its size up to a few KiB, so one read of the
/// right size is what counts.
const FIRST_READ: usize = 8 << 10;
const MIN_READ: usize = 1 << 10;
const MAX_FIRST_READ: usize = 64 << 10;
/// Never copy more than this (the default stack size limit).
const MAX_COPY: usize = 8 << 20;

/// Reads target memory at an address into the buffer; returns how many bytes were
/// readable from the start (fewer at the end of a mapping).
pub type ReadMemory<'a> = dyn FnMut(u64, &mut [u8]) -> usize + 'a;

/// Where a walk starts: the state of the caller right after the allocator returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// The allocator's return address: the first frame.
    pub return_address: u64,
    /// The stack pointer once the allocator has returned.
    pub sp: u64,
    pub frame_pointer: u64,
    /// Where the stack began: for the main thread, the process's first stack pointer
    /// (the word holding argc); 0 when unknown. See [`Ending::Complete`].
    pub stack_top: u64,
}

/// How a walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The unwind information said this is the outermost frame (`_start`, a thread's
    /// `clone3`), or the frame-pointer chain ended with a zero, or the walk stopped
    /// with the stack pointer at the stack's top: the dynamic loader's entry code
    /// (which runs the constructors of the libraries loaded at start) has no unwind
    /// information, and nothing lies above it.
    Complete,
    /// `depth` frames were taken and there were more.
    DepthLimit,
    /// The unwinder could go no further (an unreadable word, no rule that advances).
    Failed,
}

impl Ending {
    pub fn truncated(self) -> bool {
        self != Ending::Complete
    }
}

/// A module framehop knows, to recognise it in the next module list.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Known {
    path: String,
    base: u64,
    start: u64,
    end: u64,
}

impl Known {
    fn of(m: &Module) -> Known {
        Known {
            path: m.path.clone(),
            base: m.base,
            start: m.start,
            end: m.end,
        }
    }
}

/// framehop's rule cache is direct-mapped on the address modulo 509: an interpreter's
/// few hundred hot pcs collide in it, and every collision is a CFI lookup and parse
/// again. Several caches, chosen by the address divided by 509, make it one cache of
/// 509 x [`RULE_CACHES`] slots.
const RULE_CACHES: usize = 16;

pub(crate) struct Rules(Vec<CacheNative<MayAllocateDuringUnwind>>);

impl Default for Rules {
    fn default() -> Self {
        Rules((0..RULE_CACHES).map(|_| CacheNative::new()).collect())
    }
}

impl Rules {
    /// The cache for frame `frame`'s lookup address.
    pub(crate) fn at(&mut self, frame: FrameAddress) -> &mut CacheNative<MayAllocateDuringUnwind> {
        let i = (frame.address_for_lookup() / 509) as usize % RULE_CACHES;
        &mut self.0[i]
    }
}

pub struct StackWalker {
    unwinder: UnwinderNative<Vec<u8>, MayAllocateDuringUnwind>,
    cache: Rules,
    known: Vec<Known>,
    copy: StackCopy,
    reuse: reuse::Reuse,
    /// The modules as last synced, and what [`StackWalker::steady_range`] learnt of
    /// their functions.
    modules: Vec<Module>,
    shapes: Shapes,
}

impl Default for StackWalker {
    fn default() -> Self {
        StackWalker {
            unwinder: UnwinderNative::new(),
            cache: Rules::default(),
            known: Vec::new(),
            copy: StackCopy::default(),
            reuse: reuse::Reuse::default(),
            modules: Vec::new(),
            shapes: Shapes::default(),
        }
    }
}

impl StackWalker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Brings the unwinder's modules in line with the target's current list:
    /// unloaded ones are removed, new ones added with the unwind sections of the file
    /// `open_file` opens for them (read as needed: its headers and those sections,
    /// not the whole file). A module whose file cannot be opened or parsed is still
    /// added (without unwind data), so its pcs use the frame-pointer chain.
    pub fn sync(&mut self, now: &[Module], open_file: &mut OpenFile<'_>) {
        let current: Vec<Known> = now.iter().map(Known::of).collect();
        let (keep, gone): (Vec<Known>, Vec<Known>) = std::mem::take(&mut self.known)
            .into_iter()
            .partition(|k| current.contains(k));
        for k in gone {
            self.unwinder.remove_module(k.start);
        }
        self.known = keep;
        // Frames unwound before may belong to objects that are gone or moved.
        self.reuse.clear();
        self.modules = now.to_vec();
        self.shapes = Shapes::default();
        for (m, k) in now.iter().zip(current) {
            if self.known.contains(&k) {
                continue;
            }
            let module = match open_file(m) {
                Some(file) => framehop_module(m, &object::ReadCache::new(file)),
                None => framehop_module(m, &[][..]),
            };
            self.unwinder.add_module(module);
            self.known.push(k);
        }
    }

    /// Unwinds from `start`: the return addresses of at most `depth` frames, innermost
    /// (the allocator's caller) first, into `out`.
    pub fn walk(
        &mut self,
        start: Start,
        read: &mut ReadMemory<'_>,
        depth: usize,
        out: &mut Vec<u64>,
    ) -> Ending {
        out.clear();
        let Some(frame) = FrameAddress::from_return_address(start.return_address) else {
            return Ending::Failed;
        };
        self.walk_frames(frame, start, read, depth, out)
    }

    /// Unwinds thread `tid`'s stack from `start`, given as a copy (`stack`, from
    /// `start.sp` up), reusing the frames its last unwind shares with this one (see
    /// `reuse.rs`). The first of `out` is the return address.
    pub fn walk_copy(
        &mut self,
        tid: crate::event::Tid,
        start: Start,
        stack: &[u8],
        depth: usize,
        out: &mut Vec<u64>,
    ) -> Walked {
        let copy = StackPieces::new(start.sp, stack);
        self.walk_copy_unread(tid, start, &copy, (0, 0), depth, out)
    }

    /// As [`StackWalker::walk_copy`], for a copy in pieces (from `start.sp` up) whose
    /// bytes in `unread` (`[lo, hi)`) may not be the stack's: a walk that needs one
    /// stops there, failed.
    pub fn walk_copy_unread(
        &mut self,
        tid: crate::event::Tid,
        start: Start,
        stack: &StackPieces<'_>,
        unread: (u64, u64),
        depth: usize,
        out: &mut Vec<u64>,
    ) -> Walked {
        // The copy's words are read at their stack addresses, the registers start
        // at `start.sp`: the two must be the same place.
        debug_assert_eq!(stack.base(), start.sp);
        let StackWalker {
            unwinder,
            cache,
            reuse,
            ..
        } = self;
        reuse.walk(unwinder, cache, tid, start, stack, unread, depth, out)
    }

    /// What of thread `tid`'s stack, at least `min` bytes, its stack compare may
    /// step over (see "Skipped ranges" in `memtrace_arch::recorder`), from its last
    /// walk from a copy: the locals of `main`'s frame, if `main` keeps a steady frame
    /// and its caller calls it once ([`shape`]). The objects' files are opened with
    /// `open_file`, once per object, and read as needed.
    pub fn steady_range(
        &mut self,
        tid: crate::event::Tid,
        min: u64,
        open_file: &mut OpenFile<'_>,
    ) -> Option<Skip> {
        let StackWalker {
            reuse,
            modules,
            shapes,
            ..
        } = self;
        let reuse::Complete {
            frames, sps, reads, ..
        } = reuse.last_complete(tid)?;
        let n = frames.len();
        for j in n.saturating_sub(OUTER_FRAMES + 1)..n.saturating_sub(1) {
            // Frame j's function and the return address into its caller; its CFA is
            // the caller's stack pointer.
            let (pc, ra, cfa) = (frames[j].wrapping_sub(1), frames[j + 1], sps[j + 1]);
            let outermost = frames[n - 1];
            // (Empty when the caller is the outermost frame itself.)
            let between = frames.get(j + 2..n - 1).unwrap_or(&[]);
            let Some((main, shape)) = shapes.shape(modules, open_file, pc, ra, between, outermost)
            else {
                continue;
            };
            // The outermost main: one that main called (through a pointer, say) could
            // be called again from the same place after a longjmp, and be another
            // function then.
            if frames[j + 1..]
                .iter()
                .any(|&f| main.contains(&f.wrapping_sub(1)))
            {
                continue;
            }
            let (Some(lo), Some(hi), Some(at)) = (
                cfa.checked_sub(shape.calls_below),
                cfa.checked_sub(shape.saves_below),
                cfa.checked_sub(shape.ra_below),
            ) else {
                return None;
            };
            // The return address where the walk read it.
            let read_there = reads.iter().any(|&(a, v)| a == at && v == ra);
            return (hi - lo >= min
                && read_there
                && !reads.iter().any(|&(a, _)| reuse::overlaps(a, (lo, hi))))
            .then_some(Skip {
                range: (lo, hi),
                ra_at: at,
                ra,
            });
        }
        None
    }

    /// Unwinds a thread stopped anywhere (the debugger): `start.return_address` is
    /// its pc, the first entry of `out`, and `sp`, `frame_pointer` are its registers.
    pub fn walk_from_pc(
        &mut self,
        start: Start,
        read: &mut ReadMemory<'_>,
        depth: usize,
        out: &mut Vec<u64>,
    ) -> Ending {
        out.clear();
        let frame = FrameAddress::from_instruction_pointer(start.return_address);
        self.walk_frames(frame, start, read, depth, out)
    }

    fn walk_frames(
        &mut self,
        mut frame: FrameAddress,
        start: Start,
        read: &mut ReadMemory<'_>,
        depth: usize,
        out: &mut Vec<u64>,
    ) -> Ending {
        if depth <= 1 {
            // The caller alone: no stack to read. (Every real stack has more.)
            out.push(frame.address());
            return Ending::DepthLimit;
        }
        let StackWalker {
            unwinder,
            cache,
            copy,
            ..
        } = self;
        copy.start(start.sp, read);
        let mut read_stack = |addr: u64| copy.word(addr, read);
        let mut regs = unwind_regs(start);
        loop {
            if out.len() == depth {
                return Ending::DepthLimit;
            }
            out.push(frame.address());
            match unwinder.unwind_frame(frame, &mut regs, cache.at(frame), &mut read_stack) {
                Ok(Some(ra)) => match FrameAddress::from_return_address(ra) {
                    Some(next) => frame = next,
                    None => return Ending::Complete,
                },
                Ok(None) => return Ending::Complete,
                Err(_) if at_top(regs.sp(), start.stack_top) => return Ending::Complete,
                Err(_) => return Ending::Failed,
            }
        }
    }

    /// Bytes of stack read by the last walk (for the benchmark's notes and tests).
    pub fn last_copy_len(&self) -> usize {
        self.copy.len
    }
}

/// How close to the top of the stack a frame's stack pointer must be to be the
/// outermost frame: the loader's entry aligns the stack down before its one call.
const TOP_SLACK: u64 = 64;

pub(crate) fn at_top(sp: u64, top: u64) -> bool {
    top != 0 && sp.abs_diff(top) <= TOP_SLACK
}

/// The registers besides the pc that a frame is unwound from (with its stack words).
#[cfg(target_arch = "x86_64")]
fn frame_registers(r: &UnwindRegsNative) -> (u64, u64) {
    (r.sp(), r.bp())
}

#[cfg(target_arch = "aarch64")]
fn frame_registers(r: &UnwindRegsNative) -> (u64, u64) {
    (r.sp(), r.fp())
}

#[cfg(target_arch = "x86_64")]
fn unwind_regs(s: Start) -> UnwindRegsNative {
    UnwindRegsNative::new(s.return_address, s.sp, s.frame_pointer)
}

#[cfg(target_arch = "aarch64")]
fn unwind_regs(s: Start) -> UnwindRegsNative {
    // The caller made a call, so its return address is not in lr any more: framehop
    // only reads lr for a leaf frame.
    UnwindRegsNative::new(s.return_address, s.sp, s.frame_pointer)
}

/// How many of a walk's outermost frames [`StackWalker::steady_range`] looks at:
/// `main` is among them (under the C library's start code and `_start`).
const OUTER_FRAMES: usize = 4;

/// A range of a thread's stack its compare may step over while the word at `ra_at`
/// holds `ra`: the locals of `main`'s frame, and where its return address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skip {
    pub range: (u64, u64),
    pub ra_at: u64,
    pub ra: u64,
}

/// What [`StackWalker::steady_range`] learnt of the modules' functions, and the
/// object files it opened for it.
#[derive(Default)]
struct Shapes {
    /// Per object (by its module's start): its file, read as needed; `None` if it
    /// cannot be opened.
    files: rustc_hash::FxHashMap<u64, Option<Box<ObjectFile>>>,
    /// Return addresses whose call is made once.
    once: rustc_hash::FxHashMap<u64, bool>,
    /// Functions with a steady frame, by the range of addresses they cover, and pcs
    /// whose function has none.
    steady: Vec<(std::ops::Range<u64>, shape::FrameShape)>,
    unsteady: rustc_hash::FxHashSet<u64>,
    /// Per object (by its module's start): the address of the `main` its entry
    /// point hands the start code, and the return address of that call.
    mains: rustc_hash::FxHashMap<u64, Option<(u64, u64)>>,
}

/// The object holding `at`, with its bias, opened once (`files`).
fn object_at<'f>(
    files: &'f mut rustc_hash::FxHashMap<u64, Option<Box<ObjectFile>>>,
    modules: &[Module],
    open_file: &mut OpenFile<'_>,
    at: u64,
) -> Option<(&'f ObjectFile, u64)> {
    let m = modules.iter().find(|m| (m.start..m.end).contains(&at))?;
    let data: &ObjectFile = files
        .entry(m.start)
        .or_insert_with(|| open_file(m).map(|f| Box::new(object::ReadCache::new(f))))
        .as_deref()?;
    let bias = object::File::parse(data).ok().map(|o| bias_of(m, &o))?;
    Some((data, bias))
}

impl Shapes {
    /// The addresses and the shape of the frame of the function at `pc`, if it is
    /// `main`, its frame is steady, its caller, returned to at `ra`, is in the C
    /// library (its start code, which calls `main` once and knows what its own
    /// `setjmp` does; not another library that defines `__libc_start_main`) and
    /// calls it once, the frames `between` it and the outermost are in that object
    /// too, and the outermost, returned to at `outermost`, is the return from the
    /// executable's entry code's call into the start code (not a thread's start,
    /// nor a constructor's caller).
    fn shape(
        &mut self,
        modules: &[Module],
        open_file: &mut OpenFile<'_>,
        pc: u64,
        ra: u64,
        between: &[u64],
        outermost: u64,
    ) -> Option<(std::ops::Range<u64>, shape::FrameShape)> {
        let module_of = |at: u64| modules.iter().position(|m| m.contains(at));
        let module = module_of(pc)?;
        let caller = module_of(ra.wrapping_sub(1));
        if Some(module) == caller
            || !caller.is_some_and(|c| modules[c].is_libc())
            || Some(module) != module_of(outermost.wrapping_sub(1))
            || between
                .iter()
                .any(|&f| module_of(f.wrapping_sub(1)) != caller)
        {
            return None;
        }
        let once = match self.once.get(&ra) {
            Some(&once) => once,
            None => {
                let once = object_at(&mut self.files, modules, open_file, ra)
                    .is_some_and(|(data, bias)| shape::called_once(data, bias, ra));
                self.once.insert(ra, once);
                once
            }
        };
        if !once || self.unsteady.contains(&pc) {
            return None;
        }
        let start = modules[module].start;
        let entry_code = |mains: &rustc_hash::FxHashMap<u64, Option<(u64, u64)>>| {
            mains
                .get(&start)
                .copied()
                .flatten()
                .is_some_and(|(_, back)| back == outermost)
        };
        if let Some(found) = self.steady.iter().find(|(r, _)| r.contains(&pc)) {
            return entry_code(&self.mains).then(|| found.clone());
        }
        let Shapes { files, mains, .. } = self;
        let found = object_at(files, modules, open_file, pc).and_then(|(data, bias)| {
            let (range, s) = shape::steady_frame(data, bias, pc)?;
            let main = *mains.entry(start).or_insert_with(|| {
                shape::main_address(data)
                    .map(|(main, back)| (main.wrapping_add(bias), back.wrapping_add(bias)))
            });
            (main.map(|(m, _)| m) == Some(range.start)).then_some((range, s))
        });
        match found {
            Some((range, s)) => {
                self.steady.push((range.clone(), s));
                entry_code(&self.mains).then_some((range, s))
            }
            None => {
                self.unsteady.insert(pc);
                None
            }
        }
    }
}

/// What `m`'s addresses add to its object's: the mapping of file offset 0 holds the
/// lowest PT_LOAD, rounded down to a page (as the hooks compute it; zero for a
/// non-PIE executable).
fn bias_of<'d, R: object::ReadRef<'d>>(m: &Module, obj: &object::File<'d, R>) -> u64 {
    let lowest = obj.segments().map(|s| s.address()).min().unwrap_or(0);
    m.base.wrapping_sub(lowest & !0xfff)
}

/// The framehop module for `m`, from its file (bytes, or read as needed): `.eh_frame`
/// and its index, `.debug_frame` when there is no `.eh_frame`.
fn framehop_module<'d, R: object::ReadRef<'d>>(m: &Module, data: R) -> framehop::Module<Vec<u8>> {
    let mut info = ExplicitModuleSectionInfo::<Vec<u8>>::default();
    let mut bias = m.base;
    if let Ok(obj) = object::File::parse(data) {
        bias = bias_of(m, &obj);
        let section = |name: &str| {
            let s = obj.section_by_name(name)?;
            let bytes = s.data().ok()?.to_vec();
            Some((s.address()..s.address() + s.size(), bytes))
        };
        let range = |name: &str| {
            obj.section_by_name(name)
                .map(|s| s.address()..s.address() + s.size())
        };
        if let Some((svma, bytes)) = section(".eh_frame") {
            info.eh_frame_svma = Some(svma);
            info.eh_frame = Some(bytes);
            if let Some((svma, bytes)) = section(".eh_frame_hdr") {
                info.eh_frame_hdr_svma = Some(svma);
                info.eh_frame_hdr = Some(bytes);
            }
        } else if let Some((_, bytes)) = section(".debug_frame") {
            info.debug_frame = Some(bytes);
        }
        info.text_svma = range(".text");
        info.got_svma = range(".got");
    }
    framehop::Module::new(m.path.clone(), m.start..m.end, bias, info)
}

/// The copy of a stack a walk reads from.
#[derive(Default)]
struct StackCopy {
    /// Target address of `bytes[0]`.
    base: u64,
    bytes: Vec<u8>,
    /// How many bytes of `bytes` hold stack.
    len: usize,
    /// The last read stopped short: there is no more stack to read.
    exhausted: bool,
    /// How far the last walk read into its copy (0: no walk yet).
    used: usize,
}

impl StackCopy {
    fn start(&mut self, sp: u64, read: &mut ReadMemory<'_>) {
        let first = match self.used {
            0 => FIRST_READ,
            used => (used + used / 2).clamp(MIN_READ, MAX_FIRST_READ),
        };
        self.base = sp;
        self.len = 0;
        self.used = 0;
        self.exhausted = false;
        self.extend_to(first, read);
    }

    fn extend_to(&mut self, want: usize, read: &mut ReadMemory<'_>) {
        let want = want.min(MAX_COPY);
        if want <= self.len || self.exhausted {
            return;
        }
        if self.bytes.len() < want {
            self.bytes.resize(want, 0);
        }
        let at = self.base.wrapping_add(self.len as u64);
        let n = read(at, &mut self.bytes[self.len..want]);
        self.len += n.min(want - self.len);
        if self.len < want {
            self.exhausted = true;
        }
    }

    /// The stack word at `addr`; reads further up the stack when needed.
    fn word(&mut self, addr: u64, read: &mut ReadMemory<'_>) -> Result<u64, ()> {
        let off = addr.checked_sub(self.base).ok_or(())? as usize;
        let end = off.checked_add(8).ok_or(())?;
        if end > self.len {
            self.extend_to(end.max(self.len * 2), read);
        }
        let b = self
            .bytes
            .get(off..end)
            .filter(|_| end <= self.len)
            .ok_or(())?;
        self.used = self.used.max(end);
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| ())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up stack of 8-byte words at `base`; counts the reads made of it.
    struct Fake {
        base: u64,
        words: Vec<u64>,
        reads: usize,
        /// Length asked for by the last read.
        asked: usize,
    }

    impl Fake {
        fn read(&mut self, addr: u64, buf: &mut [u8]) -> usize {
            self.reads += 1;
            self.asked = buf.len();
            let bytes: Vec<u8> = self.words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let Some(off) = addr.checked_sub(self.base) else {
                return 0;
            };
            let avail = bytes.len().saturating_sub(off as usize);
            let n = avail.min(buf.len());
            buf[..n].copy_from_slice(&bytes[off as usize..off as usize + n]);
            n
        }
    }

    /// A frame-pointer chain with no modules known: framehop falls back to it.
    /// sp = 0x1000; frame records at 0x1010 and 0x1030, the last saved rbp is 0.
    fn chain() -> Fake {
        let mut words = vec![0u64; 8];
        words[2] = 0x1030; // [0x1010] caller's rbp
        words[3] = 0x6000; // [0x1018] return address
        words[6] = 0; // [0x1030] outermost: rbp 0
        words[7] = 0x7000; // [0x1038]
        Fake {
            base: 0x1000,
            words,
            reads: 0,
            asked: 0,
        }
    }

    fn start() -> Start {
        Start {
            return_address: 0x5000,
            sp: 0x1000,
            frame_pointer: 0x1010,
            stack_top: 0,
        }
    }

    #[test]
    fn the_caller_is_the_first_frame_and_the_chain_follows() {
        let mut w = StackWalker::new();
        let mut fake = chain();
        let mut out = Vec::new();
        let end = w.walk(start(), &mut |a, b| fake.read(a, b), 32, &mut out);
        assert_eq!(out, vec![0x5000, 0x6000, 0x7000]);
        assert_eq!(end, Ending::Complete);
        assert_eq!(fake.reads, 1, "a small stack is read once");
    }

    #[test]
    fn a_second_walk_reads_about_what_the_first_needed() {
        let mut w = StackWalker::new();
        let mut fake = chain();
        let mut out = Vec::new();
        w.walk(start(), &mut |a, b| fake.read(a, b), 32, &mut out);
        assert_eq!(fake.asked, FIRST_READ);
        w.walk(start(), &mut |a, b| fake.read(a, b), 32, &mut out);
        assert_eq!((fake.reads, fake.asked), (2, MIN_READ));
        assert_eq!(out, vec![0x5000, 0x6000, 0x7000]);
    }

    #[test]
    fn depth_one_reads_nothing() {
        let mut w = StackWalker::new();
        let mut fake = chain();
        let mut out = Vec::new();
        let end = w.walk(start(), &mut |a, b| fake.read(a, b), 1, &mut out);
        assert_eq!(
            (out, end, fake.reads),
            (vec![0x5000], Ending::DepthLimit, 0)
        );
    }

    #[test]
    fn depth_cuts_and_says_so() {
        let mut w = StackWalker::new();
        let mut fake = chain();
        let mut out = Vec::new();
        let end = w.walk(start(), &mut |a, b| fake.read(a, b), 2, &mut out);
        assert_eq!(out, vec![0x5000, 0x6000]);
        assert_eq!(end, Ending::DepthLimit);
        // Exactly as deep as the stack: not cut.
        let end = w.walk(start(), &mut |a, b| fake.read(a, b), 3, &mut out);
        assert_eq!((out.len(), end), (3, Ending::Complete));
    }

    #[test]
    fn a_failure_at_the_stack_top_is_the_end() {
        // The chain's second record is garbage (it points down the stack), right at
        // the top of the stack.
        let mut fake = chain();
        fake.words[6] = 0x1008;
        let mut w = StackWalker::new();
        let mut out = Vec::new();
        let end = w.walk(start(), &mut |a, b| fake.read(a, b), 32, &mut out);
        assert_eq!((out.len(), end), (3, Ending::Failed));
        let top = Start {
            stack_top: 0x1040,
            ..start()
        };
        let end = w.walk(top, &mut |a, b| fake.read(a, b), 32, &mut out);
        assert_eq!((out.len(), end), (3, Ending::Complete));
    }

    #[test]
    fn an_unreadable_stack_keeps_the_caller() {
        let mut w = StackWalker::new();
        let mut out = Vec::new();
        let end = w.walk(start(), &mut |_, _| 0, 32, &mut out);
        assert_eq!(out, vec![0x5000]);
        assert_eq!(end, Ending::Failed);
    }

    #[test]
    fn the_copy_grows_only_when_asked_past_its_end() {
        // A frame record far above the first read.
        let far = FIRST_READ as u64 * 3;
        let mut words = vec![0u64; (far as usize + 0x40) / 8];
        words[(far / 8) as usize] = 0; // outermost rbp
        words[(far / 8) as usize + 1] = 0x9000;
        let mut fake = Fake {
            base: 0x10000,
            words,
            reads: 0,
            asked: 0,
        };
        let s = Start {
            return_address: 0x5000,
            sp: 0x10000,
            frame_pointer: 0x10000 + far,
            stack_top: 0,
        };
        let mut w = StackWalker::new();
        let mut out = Vec::new();
        let end = w.walk(s, &mut |a, b| fake.read(a, b), 32, &mut out);
        assert_eq!(out, vec![0x5000, 0x9000]);
        assert_eq!(end, Ending::Complete);
        assert!(fake.reads > 1 && fake.reads <= 3, "{} reads", fake.reads);
        assert!(w.last_copy_len() >= far as usize + 16);
    }

    #[test]
    fn modules_come_and_go() {
        let m = |path: &str, start: u64| Module {
            path: path.into(),
            start,
            end: start + 0x1000,
            base: start,
            inode: 1,
        };
        let mut w = StackWalker::new();
        let mut reads = Vec::new();
        let mut read_file = |m: &Module| -> Option<std::fs::File> {
            reads.push(m.path.clone());
            None
        };
        w.sync(&[m("/a", 0x1000), m("/b", 0x3000)], &mut read_file);
        w.sync(&[m("/b", 0x3000), m("/c", 0x5000)], &mut read_file);
        assert_eq!(reads, ["/a", "/b", "/c"]);
        assert_eq!(w.known.len(), 2);
        assert!(w.known.iter().all(|k| k.path != "/a"));
    }
}

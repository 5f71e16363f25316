//! Recording allocator calls, the tracer's side: the recorder's memory set up in the
//! target, threads registered in its table, hooked functions given their thunks,
//! and the ring read into events (see [`crate::recorder`]).
//!
//! Two ways a call gets into the ring, one way out:
//! - **inline** (the default): the function's entry jumps to its thunk, which writes
//!   the record without stopping the thread;
//! - **at a stop** (`--stops`, and the slow path: a thread not registered yet, a
//!   stack the thunk cannot copy, a site breakpoint armed): the entry is an int3 and
//!   memtrace writes the same record itself.
//!
//! Either way the return address is swapped for the one return stub (its real value on
//! the thread's shadow stack), which writes the return record. The records are read
//! in order by [`Tracer::drain`], on this thread, between stops and whenever the
//! loop has nothing else to do.

use super::scratch::{BpKind, Breakpoint};
use super::{TraceError, Tracer};
use crate::event::{Event, StackId, Tid};
use crate::hooks::HookFn;
use crate::ptrace::{self, SharedMem};
use crate::recorder::defer::{FreeCheck, Heap, Unwind};
use crate::recorder::record::{self, Entry, Return};
use crate::recorder::{Addrs, Caller, Calls, Defer, RawStack, Record, Ring, ShadowFrame};
use crate::unwind::{StackPieces, StackWalker, Start};
use memtrace_arch::recorder::{
    entry_len, KEEP_BEHIND, MAX_STACK_COPY, NO_RECORD, RETURN_LEN, RING_SIZE, THUNK_CODE_MAX,
};
use memtrace_arch::{Arch, Native, Regs, ReturnSlot, ThunkSpec};
use std::time::Instant;

/// Stack bytes a record copies, as perf's DWARF call graphs copy a fixed amount
/// (`--call-graph dwarf`, 8 KiB by default), but sized by what the unwinds need:
/// - never more than the thread's stack holds above the stack pointer, so a
///   shallow stack (most C programs: a few hundred bytes to 2 KiB) costs what it is;
/// - [`FIRST_COPY_LEN`] at first, so that deep frames (a regex engine's, an
///   interpreter's) are whole before anything is known;
/// - then, every [`LEARN_EVERY`] unwinds, twice the most any of them read to reach
///   `--depth` frames or the stack's top (never under [`MIN_COPY_LEN`]);
/// - doubled at once when an unwind runs off the end of a copy that the limit cut.
pub const FIRST_COPY_LEN: u64 = 64 << 10;
pub const MIN_COPY_LEN: u64 = 8 << 10;
pub const LEARN_EVERY: u64 = 1024;
/// Which range of its stack a thread's compare may step over (see "Skipped ranges"
/// in `memtrace_arch::recorder`) is looked at after each of its first
/// `SKIP_LOOKS_FIRST` unwinds, then after one in `SKIP_LOOK_EVERY`.
const SKIP_LOOKS_FIRST: u32 = 64;
const SKIP_LOOK_EVERY: u32 = 32;
/// `skip_looks` of a thread whose compare steps over nothing any more.
const SKIP_NEVER: u32 = u32::MAX;
/// Room for one thunk and its displaced instructions.
const THUNK_ROOM: u64 = THUNK_CODE_MAX + 128;
/// Room for the return stub.
const STUB_ROOM: u64 = 512;
/// Where the displaced instructions go, from the thunk's start.
const DISPLACED_AT: u64 = THUNK_CODE_MAX;
/// Past this much of the ring in use, stack copies are taken out of it.
const PRESSURE: u64 = RING_SIZE / 2;
/// Records read at most before the loop looks for the target's stops again.
const BATCH: usize = 16_384;

/// How much one [`Tracer::drain`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DrainBatch {
    None,
    /// Some, and then the writers' latest.
    Some,
    /// A whole batch: there may be more.
    Full,
}

/// One hooked function whose entry can jump to a thunk.
#[derive(Clone, Debug)]
pub(super) struct Site {
    pub entry: u64,
    /// The entry jump, and the original bytes it covers.
    pub jump: Vec<u8>,
    pub original: Vec<u8>,
    /// Length of the whole instructions the jump displaces.
    pub covered: u64,
    pub thunk: u64,
    pub displaced: u64,
    pub slow_trap: u64,
    pub module_base: u64,
    /// The entry jumps now (else it traps: the breakpoint planted first).
    pub jumping: bool,
}

/// How allocator calls were recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordMode {
    /// By code in the target, without a stop per call (the default).
    #[default]
    Inline,
    /// One ptrace stop per call (`--stops`).
    Stops,
}

/// Counters of the recording, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct RecordStats {
    pub mode: RecordMode,
    /// Allocator calls recorded (entries, nested ones included).
    pub calls: u64,
    /// Records read from the ring.
    pub records: u64,
    pub record_bytes: u64,
    /// Stack bytes the entry records stand for, and those they copied (the rest was
    /// found in earlier records of their thread: "Stack copies" in
    /// `memtrace_arch::recorder`).
    pub stack_bytes: u64,
    pub stack_bytes_copied: u64,
    /// Stack bytes the compare stepped over (a steady frame's locals: "Skipped
    /// ranges" in `memtrace_arch::recorder`), threads given such a range, and
    /// unwinds that needed a word there (cut short there; none is expected).
    pub stack_bytes_skipped: u64,
    pub stack_skip_threads: u64,
    pub stack_skip_misreads: u64,
    /// Stacks whose chain of records was gone when they were needed (truncated).
    pub stack_chains_lost: u64,
    /// Calls that took the slow path (a stop) in inline mode.
    pub slow_path_stops: u64,
    /// Stacks unwound, and those never needed (blocks freed young, frees that were
    /// no error).
    pub stacks_unwound: u64,
    pub stacks_never_needed: u64,
    /// Stack copies taken out of the ring because it filled up.
    pub stacks_evacuated: u64,
    /// Times the program waited for room in the ring, and for how long.
    pub ring_waits: u64,
    pub ring_wait_ns: u64,
    /// Stack bytes a record copied at most, at the end; unwinds that ran off a copy.
    pub stack_copy_len: u64,
    pub stack_copies_short: u64,
    /// Records still being written when read (stepped over, read later), and
    /// records never finished (their thread died in the middle).
    pub records_in_progress: u64,
    pub records_abandoned: u64,
    /// Returns with no open call (calls in flight when memtrace attached).
    pub unmatched_returns: u64,
    /// Hooked functions recorded inline, and those that stay at a stop per call
    /// (their first bytes cannot be moved).
    pub inline_functions: u64,
    pub stop_functions: u64,
}

pub(super) struct Recording {
    pub ring: Ring,
    pub calls: Calls,
    pub defer: Defer,
    pub sites: Vec<Site>,
    /// Entries are to jump to their thunks (else an int3: a stop per call); see
    /// [`Tracer::sync_entries`].
    pub inline: bool,
    /// The return stub's code.
    pub stub: (u64, u64),
    pub stats: RecordStats,
    /// When the ring last had records: the loop looks again soon after.
    pub busy: bool,
    /// Looks at the ring in a row that found nothing (the wait grows with them).
    pub idle_looks: u32,
    /// The time stamp counter and the clock when the recording began: the waits are
    /// timed in ticks, turned into time with the rate seen over the whole trace.
    ticks_origin: (u64, Instant),
    /// What the unwinds since the last look at the copy length needed.
    most_read: u64,
    unwinds: u64,
    /// Recent answers of [`Tracer::caller`], by return address.
    pub callers: Box<[Option<(u64, Caller)>; 256]>,
    /// Thread pointers more than one thread runs on (their calls stop, and return
    /// through the trampoline).
    pub shared_tps: std::collections::HashSet<u64>,
    /// Threads gone, with the head when they went: their open calls are forgotten
    /// once everything reserved before then was read (see [`Tracer::settle_gone`]).
    pub gone: Vec<(Tid, u64)>,
    /// Per thread: its unwinds looked at for a range its compare may step over, or
    /// `SKIP_NEVER` once an unwind needed a word it had stepped over.
    skip_looks: rustc_hash::FxHashMap<Tid, u32>,
    /// Threads ever given a range.
    skip_threads: rustc_hash::FxHashSet<Tid>,
}

impl Recording {
    /// Time stamp counter ticks as nanoseconds, at the rate seen since the recording
    /// began.
    pub fn ticks_to_ns(&self, ticks: u64) -> u64 {
        let (tsc0, t0) = self.ticks_origin;
        let ns = t0.elapsed().as_nanos() as f64;
        let per_ns = ptrace::time_stamp().saturating_sub(tsc0) as f64 / ns.max(1.0);
        if per_ns > 0.0 {
            (ticks as f64 / per_ns) as u64
        } else {
            0
        }
    }

    pub fn is_stub(&self, addr: u64) -> bool {
        self.stub.0 <= addr && addr < self.stub.1
    }

    /// The site whose thunk or displaced code holds `addr`.
    pub fn site_at(&self, addr: u64) -> Option<&Site> {
        self.sites
            .iter()
            .find(|s| s.thunk <= addr && addr < s.thunk + THUNK_ROOM)
    }
}

/// The heap's side of the deferral, over the trace's sink.
struct SinkHeap<'a, 's>(&'a mut (dyn super::Sink + 's));

impl Heap for SinkHeap<'_, '_> {
    fn check_free(&self, ev: &Event) -> FreeCheck {
        self.0.check_free(ev)
    }
    fn freed_tag(&self, ptr: u64) -> Option<u64> {
        self.0.freed_tag(ptr)
    }
    fn amend_freed(&mut self, ptr: u64, a: Option<StackId>, f: Option<StackId>) {
        self.0.amend_freed(ptr, a, f);
    }
    fn event(&mut self, ev: Event) {
        self.0.event(ev);
    }
    fn prefetch(&self, ev: &Event) {
        self.0.prefetch(ev);
    }
}

/// Unwinds raw stacks from their copies.
struct Unwinder<'a> {
    ring: &'a Ring,
    /// The recording's counters.
    counts: &'a mut RecordStats,
    skip_looks: &'a mut rustc_hash::FxHashMap<Tid, u32>,
    skip_threads: &'a mut rustc_hash::FxHashSet<Tid>,
    /// Calls are recorded inline (with `--stops` no compare runs: nothing to set).
    inline: bool,
    walker: &'a mut StackWalker,
    stacks: &'a mut crate::event::StackTable,
    frames: &'a mut Vec<u64>,
    stats: &'a mut super::TraceStats,
    depth: usize,
    generation: u32,
    pid: i32,
    stack_top: u64,
    /// An unwind asked for stack beyond a copy that was cut by the copy length.
    short: bool,
    /// The most bytes of a copy any unwind read since the last look.
    most_read: u64,
    unwinds: u64,
    /// Time stamp counter ticks spent unwinding (the clock costs too much to be read
    /// twice an unwind): turned into time by [`Recording::ticks_to_ns`].
    ticks: u64,
}

impl Unwinder<'_> {
    /// Whether this unwind of thread `tid` is one to look at for a range its
    /// compare may step over.
    fn look_for_skip(&mut self, tid: Tid) -> bool {
        let looks = self.skip_looks.entry(tid).or_insert(0);
        if *looks == SKIP_NEVER {
            return false;
        }
        *looks = looks.saturating_add(1).min(SKIP_NEVER - 1);
        *looks <= SKIP_LOOKS_FIRST || *looks % SKIP_LOOK_EVERY == 0
    }
}

impl Unwind for Unwinder<'_> {
    fn unwind(&mut self, raw: &RawStack) -> StackId {
        let started = ptrace::time_stamp();
        let record: &[u8] = match &raw.owned {
            Some(b) => b,
            None => self.ring.record(raw.pos),
        };
        let entry = match record
            .get(..record::HEADER_LEN)
            .map(|h| record::decode(raw.pos, h))
        {
            Some(Ok(Record::Entry(e))) => e,
            // Cannot be: it was an entry when read. Keep the trace going.
            _ => return self.stacks.intern(&[], true, self.generation),
        };
        let own = record
            .get(record::HEADER_LEN..record::HEADER_LEN + entry.stack_len as usize)
            .unwrap_or(&[]);
        // A copy whose chain was gone: a truncated stack, not one that says the copy
        // length is too short.
        let mut lost = false;
        let base = entry.copy_base();
        let copy = if entry.is_whole() {
            StackPieces::new(base, own)
        } else if raw.owned.is_some() {
            // Taken out of the ring when its chain was gone already.
            lost = true;
            StackPieces::new(base, own)
        } else {
            // Read where it lies: the walk reads a few dozen words of it.
            match self.ring.stack_copy(&entry) {
                Ok(copy) => copy,
                Err(_) => {
                    // Cannot be while the record is held: unwind what it has.
                    lost = true;
                    StackPieces::new(base, own)
                }
            }
        };
        if lost {
            self.counts.stack_chains_lost += 1;
        }
        let start = Start {
            return_address: entry.ret,
            sp: Native::sp_after_return(entry.sp),
            frame_pointer: entry.fp,
            stack_top: if entry.tid == self.pid {
                self.stack_top
            } else {
                0
            },
        };
        let walked = self.walker.walk_copy_unread(
            entry.tid,
            start,
            &copy,
            // A lost chain's copy ends below any range stepped over.
            if lost { (0, 0) } else { entry.skipped },
            self.depth,
            self.frames,
        );
        if walked.misread {
            // An unwind needed a word the compare stepped over (which the choice of
            // range should make impossible): the thread's compare steps over
            // nothing from now on.
            self.counts.stack_skip_misreads += 1;
            self.skip_looks.insert(entry.tid, SKIP_NEVER);
            self.ring.set_skip(entry.tid, None);
        } else if self.inline && !lost && self.look_for_skip(entry.tid) {
            let pid = self.pid;
            let range =
                self.walker
                    .steady_range(entry.tid, memtrace_arch::recorder::MIN_SKIP, &mut |m| {
                        std::fs::File::open(crate::maps::target_path(pid, &m.path)).ok()
                    });
            if self.ring.set_skip(entry.tid, range) && self.skip_threads.insert(entry.tid) {
                self.counts.stack_skip_threads += 1;
            }
        }
        let ending = walked.ending.unwrap_or(crate::unwind::Ending::Failed);
        if walked.ran_off
            && !lost
            && ending == crate::unwind::Ending::Failed
            && entry.full_len >= self.ring.copy_len()
        {
            self.short = true;
        }
        // The furthest a walk read into its copy is what this stack needed.
        self.most_read = self.most_read.max(walked.most as u64);
        self.unwinds += 1;
        self.stats.frames_reused += walked.reused as u64;
        self.ticks += ptrace::time_stamp().saturating_sub(started);
        self.stats.stacks_captured += 1;
        self.stats.frames_captured += self.frames.len() as u64;
        self.stacks
            .intern(self.frames, ending.truncated(), self.generation)
    }

    fn still_there(&mut self, raw: &RawStack) -> Option<Box<[u8]>> {
        self.ring.copy_if_intact(raw.pos)
    }

    fn prefetch(&mut self, raw: &RawStack) {
        // As far up the stack as the walks have been going.
        let len = (self.most_read as usize).clamp(512, 4096);
        self.ring.prefetch_record(raw.pos, len);
    }
}

/// The bounds of the stack `sp` is on: `[lo, hi)`, where `hi` is as high as an
/// unwinder reads. The main thread's stack ends a little above its first stack
/// pointer (argc); a glibc thread's at its thread pointer (its descriptor sits on top
/// of its stack); any other at its mapping's end.
fn stack_bounds(pid: i32, sp: u64, tp: u64, main_top: u64) -> Option<(u64, u64)> {
    let maps = crate::maps::read(pid).ok()?;
    let m = maps.iter().find(|m| m.start <= sp && sp < m.end)?;
    if main_top != 0 && m.start <= main_top && main_top < m.end {
        // It grows down, as far as its size limit allows (the kernel maps nothing
        // there unless told to) and the mapping below it: a stack pointer there is
        // on it. One further down (a coroutine's or a signal stack mmap'd below, even
        // later) is not: copying the main stack's height up from it would run off
        // its end, into whatever lies above it.
        let hi = (main_top + 512).min(m.end);
        let below = maps
            .iter()
            .map(|o| o.end)
            .filter(|&end| end <= m.start)
            .max()
            .unwrap_or(0);
        let limit = stack_limit(pid).unwrap_or(u64::MAX).min(1 << 30);
        return Some((hi.saturating_sub(limit).max(below), hi));
    }
    let hi = if tp > sp && tp <= m.end { tp } else { m.end };
    Some((m.start, hi))
}

/// The soft limit of the process's stack size (`ulimit -s`), None when unlimited.
fn stack_limit(pid: i32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    parse_stack_limit(&limits)
}

fn parse_stack_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max stack size"))?;
    line["Max stack size".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Tracer<'_> {
    /// Maps the recorder's memory into the target (thread `tid` stopped, every other
    /// thread too) and into memtrace, and writes the return stub.
    pub(super) fn setup_recording(&mut self, tid: Tid) -> Result<(), TraceError> {
        let err = |what: &str, r: i64| {
            TraceError::Setup(format!(
                "{what} in the target failed: {}",
                std::io::Error::from_raw_os_error((-r) as i32)
            ))
        };
        let failed = |r: i64| (-4095..0).contains(&r);
        let name = self
            .scratch
            .name()
            .ok_or_else(|| TraceError::Setup("no scratch page".into()))?;
        let fd = self.inject_syscall(
            tid,
            Native::SYS_MEMFD_CREATE,
            [name, libc::MFD_CLOEXEC as u64, 0, 0, 0, 0],
        )?;
        if failed(fd) {
            return Err(err("memfd_create", fd));
        }
        let result = self.map_shared(tid, fd as u64);
        // Closed in the target whatever happened: its mappings keep the file.
        let _ = self.inject_syscall(tid, Native::SYS_CLOSE, [fd as u64, 0, 0, 0, 0, 0]);
        let (mem, addrs) = result?;
        let stub_at = self
            .scratch
            .take(STUB_ROOM, 0)
            .ok_or_else(|| TraceError::Setup("no room for the return stub".into()))?;
        let stub = Native::recorder_return_stub(stub_at, addrs.ctrl)
            .map_err(|e| TraceError::Setup(format!("the return stub: {e}")))?;
        self.mem
            .write(stub_at, &stub.code)
            .map_err(|e| TraceError::Setup(format!("writing the return stub: {e}")))?;
        let addrs = Addrs {
            ret_stub: stub_at,
            ..addrs
        };
        let copy_len = if self.depth <= 1 { 0 } else { FIRST_COPY_LEN };
        let ring = Ring::new(mem, addrs, copy_len);
        if let Some(g) = &self.guardian {
            // First thing restored if memtrace dies: every thunk and stub then lets
            // calls through untouched, and no writer waits for room.
            g.record(
                addrs.ctrl + memtrace_arch::recorder::CTRL_FLAGS,
                &memtrace_arch::recorder::FLAG_BYPASS.to_le_bytes(),
            );
        }
        // At attach, entries start jumping once every thread is stepped out of them.
        let inline = self.inline_wanted && self.mode == super::Mode::Launch && !self.breaks_armed();
        self.rec = Some(super::recording::Recording {
            ring,
            calls: Calls::new(),
            defer: Defer::new(),
            sites: Vec::new(),
            inline,
            stub: (stub_at, stub_at + stub.code.len() as u64),
            stats: RecordStats {
                mode: if self.inline_wanted {
                    RecordMode::Inline
                } else {
                    RecordMode::Stops
                },
                ..RecordStats::default()
            },
            busy: false,
            idle_looks: 0,
            most_read: 0,
            unwinds: 0,
            callers: Box::new([None; 256]),
            shared_tps: std::collections::HashSet::new(),
            gone: Vec::new(),
            skip_looks: Default::default(),
            skip_threads: Default::default(),
            ticks_origin: (ptrace::time_stamp(), Instant::now()),
        });
        Ok(())
    }

    /// Maps the memfd `fd` of the target: in memtrace, and in the target (the control
    /// page and table once, the ring twice back to back), out of forked children.
    fn map_shared(&mut self, tid: Tid, fd: u64) -> Result<(SharedMem, Addrs), TraceError> {
        use memtrace_arch::recorder::RING_OFFSET;
        let setup = |e: std::io::Error| TraceError::Setup(format!("the recorder's memory: {e}"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{}/fd/{fd}", self.pid))
            .map_err(setup)?;
        let mem = SharedMem::map(file).map_err(setup)?;
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let shared = libc::MAP_SHARED as u64;
        let mmap = |t: &mut Self, args: [u64; 6]| -> Result<u64, TraceError> {
            let r = t.inject_syscall(tid, Native::SYS_MMAP, args)?;
            if (-4095..0).contains(&r) {
                return Err(TraceError::Setup(format!(
                    "mmap of the recorder's memory in the target failed: {}",
                    std::io::Error::from_raw_os_error((-r) as i32)
                )));
            }
            Ok(r as u64)
        };
        let ctrl = mmap(self, [0, RING_OFFSET, rw, shared, fd, 0])?;
        let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let ring = mmap(self, [0, 2 * RING_SIZE, 0, anon, u64::MAX, 0])?;
        let fixed = shared | libc::MAP_FIXED as u64;
        for half in [ring, ring + RING_SIZE] {
            mmap(self, [half, RING_SIZE, rw, fixed, fd, RING_OFFSET])?;
        }
        for (at, len) in [(ctrl, RING_OFFSET), (ring, 2 * RING_SIZE)] {
            // A forked child must never write into the parent's ring.
            let _ = self.inject_syscall(
                tid,
                Native::SYS_MADVISE,
                [at, len, libc::MADV_DONTFORK as u64, 0, 0, 0],
            );
        }
        Ok((
            mem,
            Addrs {
                ctrl,
                ring,
                ret_stub: 0,
            },
        ))
    }

    /// Writes the thunk of the hooked function at `addr` (its breakpoint planted
    /// already), whose code is `function`. Returns false when its first bytes cannot
    /// be moved: it stays at a stop per call.
    pub(super) fn add_thunk(
        &mut self,
        tid: Tid,
        addr: u64,
        func: HookFn,
        function: &[u8],
        module_base: u64,
    ) -> bool {
        let Some(rec) = self.rec.as_ref() else {
            return false;
        };
        let ctrl = rec.ring.addrs.ctrl;
        let thunk = match self.scratch.take(THUNK_ROOM, addr) {
            Some(t) => t,
            None => {
                if self
                    .map_scratch(tid, super::scratch::Scratch::hint_near(addr))
                    .is_err()
                {
                    return false;
                }
                match self.scratch.take(THUNK_ROOM, addr) {
                    Some(t) => t,
                    None => return false,
                }
            }
        };
        let displaced = thunk + DISPLACED_AT;
        let made = (|| {
            let jump = Native::entry_jump(addr, thunk)?;
            let moved = Native::relocate_entry(function, addr, displaced).ok()?;
            if moved.code.len() as u64 > THUNK_ROOM - DISPLACED_AT {
                return None;
            }
            let spec = ThunkSpec {
                ctrl,
                func: func.id(),
                hook_return: func.hooks_return(),
                out_ptr_arg: func == HookFn::PosixMemalign,
                displaced,
            };
            let code = Native::recorder_thunk(thunk, &spec).ok()?;
            if code.code.len() as u64 > DISPLACED_AT {
                return None;
            }
            Some((jump, moved, code))
        })();
        let Some((jump, moved, code)) = made else {
            if let Some(r) = self.rec.as_mut() {
                r.stats.stop_functions += 1;
            }
            return false;
        };
        if self.mem.write(thunk, &code.code).is_err()
            || self.mem.write(displaced, &moved.code).is_err()
        {
            return false;
        }
        let slow_trap = thunk + code.slow_trap as u64;
        // The slow path stops as the entry's breakpoint does, then runs the displaced
        // instructions.
        self.bps.insert(
            slow_trap,
            Breakpoint {
                kind: BpKind::Hook(func),
                ool: displaced,
                ool_len: moved.relocated_len as u64,
                resume: addr + moved.original_len as u64,
                original: Vec::new(),
                module_base,
            },
        );
        let original = function[..jump.len()].to_vec();
        if let Some(r) = self.rec.as_mut() {
            r.stats.inline_functions += 1;
            r.sites.push(Site {
                entry: addr,
                jump,
                original,
                covered: moved.original_len as u64,
                thunk,
                displaced,
                slow_trap,
                module_base,
                jumping: false,
            });
        }
        true
    }

    /// Makes every entry jump to its thunk, or trap, as `Recording::inline` says.
    /// A thread whose pc is inside the bytes about to change (past a trapping
    /// entry's first instruction) must not run them: `held` are the threads the
    /// caller holds stopped, stepped past them first; others must not be inside
    /// (code just mapped, or a process of one thread).
    pub(super) fn sync_entries(&mut self, held: &[Tid]) {
        let Some(rec) = self.rec.as_ref() else { return };
        let on = rec.inline;
        let sites: Vec<Site> = rec
            .sites
            .iter()
            .filter(|s| s.jumping != on)
            .cloned()
            .collect();
        if sites.is_empty() {
            return;
        }
        if on {
            for &tid in held {
                self.step_out_of_entries(tid, &sites);
            }
        }
        for s in &sites {
            if on {
                // The guardian restores the entry's breakpoint only while it is one: a
                // jump is left as it is (the bypass flag makes it harmless).
                // The rest first, behind the int3 still at the first byte; then the
                // first byte: every thread sees either the int3 or the whole jump.
                let _ = self.mem.write(s.entry + 1, &s.jump[1..]);
                let _ = self.mem.write(s.entry, &s.jump[..1]);
            } else {
                let _ = self.mem.write(s.entry, Native::BREAKPOINT);
                let _ = self.mem.write(s.entry + 1, &s.original[1..]);
            }
        }
        if let Some(rec) = self.rec.as_mut() {
            for site in rec.sites.iter_mut() {
                site.jumping = on;
            }
        }
    }

    /// Records inline from now on, or with a stop per call (a site breakpoint needs
    /// the stop), if the trace records inline at all. `held` as for `sync_entries`.
    pub(super) fn set_inline(&mut self, on: bool, held: &[Tid]) {
        let on = on && self.inline_wanted;
        if let Some(rec) = self.rec.as_mut() {
            rec.inline = on;
        }
        self.sync_entries(held);
    }

    /// Single-steps a stopped thread out of the first bytes of hooked functions
    /// (past their first instruction, inside what an entry jump overwrites), and out
    /// of the out-of-line slot of their first instruction (which jumps back there).
    fn step_out_of_entries(&mut self, tid: Tid, sites: &[Site]) {
        let slots: Vec<(u64, u64)> = sites
            .iter()
            .filter_map(|s| self.bps.get(s.entry))
            .map(|bp| (bp.ool, bp.ool + Native::MAX_RELOCATED_LEN as u64))
            .collect();
        // Trapped at an entry, its stop not handled yet: it is at the entry, not
        // inside it (the stop handler sends it past the entry jump).
        let trapped = self.deferred.iter().any(
            |s| matches!(*s, ptrace::Stop::Signal { tid: t, signal: libc::SIGTRAP } if t == tid),
        );
        if trapped {
            return;
        }
        // Trapped, and interrupted before its SIGTRAP was taken: its pc is one byte
        // into the entry, and it has not run a byte of it. A single step would only
        // take the signal (which would pass for the step's), and the next one would
        // run the middle of the first instruction. Left there, it takes the SIGTRAP
        // when it is resumed, and the stop handler sends it past the entry jump.
        let one_in = |pc: u64| {
            sites
                .iter()
                .any(|s| pc == s.entry + Native::BREAKPOINT.len() as u64)
        };
        if ptrace::get_regs(tid).is_ok_and(|r| one_in(Native::pc(&r)))
            && super::settle::trap_pending(tid)
        {
            return;
        }
        for _ in 0..16 {
            let Ok(regs) = ptrace::get_regs(tid) else {
                return;
            };
            let pc = Native::pc(&regs);
            let inside = sites
                .iter()
                .any(|s| pc > s.entry && pc < s.entry + s.covered)
                || slots.iter().any(|&(a, b)| a <= pc && pc < b);
            if !inside {
                return;
            }
            if ptrace::single_step(tid, 0).is_err() {
                return;
            }
            match ptrace::wait_tid(tid) {
                Ok(ptrace::Stop::Signal { signal, .. }) if signal != libc::SIGTRAP => {
                    self.held_signals.insert(tid, signal);
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    /// Registers a stopped thread in the recorder's table (its thread pointer and
    /// stack), so that its calls are recorded without a stop.
    pub(super) fn register_thread(&mut self, tid: Tid, regs: &Regs) {
        let tp = Native::thread_pointer(regs);
        if let Some(t) = self.threads.get_mut(&tid) {
            t.tp = tp;
        }
        let main_top = if tid == self.pid {
            self.image.stack_top
        } else {
            0
        };
        if self
            .rec
            .as_ref()
            .is_some_and(|r| r.ring.owner(tp) == Some(tid) || r.shared_tps.contains(&tp))
        {
            return; // known already
        }
        // Threads made with a raw clone() that kept their parent's thread pointer
        // would share one slot and one shadow stack: both take the slow path, and
        // their returns go through the trampoline, per thread.
        let shared = tp != 0
            && self.threads.iter().any(|(&other, t)| {
                other != tid && t.tp == tp && !self.children.contains_key(&other)
            });
        let Some(rec) = self.rec.as_mut() else { return };
        if shared {
            rec.ring.set_slow(tp, true);
            rec.shared_tps.insert(tp);
            return;
        }
        if tp == 0 || rec.ring.is_registered(tp) {
            return;
        }
        if let Some((lo, hi)) = stack_bounds(self.pid, Native::sp(regs), tp, main_top) {
            rec.ring.register(tp, tid, lo, hi);
        }
    }

    /// A thread stopped at its exit and will run no more of the program: its slot is
    /// freed now. The C library may hand its thread pointer (and stack) to a new
    /// thread as soon as the kernel lets it go, possibly before memtrace reaps it,
    /// and that new thread must not be taken for one sharing the old one's.
    pub(super) fn release_thread_slot(&mut self, tid: Tid) {
        let Some(t) = self.threads.get_mut(&tid) else {
            return;
        };
        let tp = std::mem::take(&mut t.tp);
        if let Some(rec) = self.rec.as_mut() {
            if tp != 0 && rec.ring.owner(tp) == Some(tid) {
                rec.ring.unregister(tp);
            }
        }
    }

    /// A thread is gone: its slot too, unless another thread has it by now. Its
    /// records are all reserved, but not all read: another thread may hold an earlier
    /// position it has not begun to write, and reading stops there. So its open calls
    /// are forgotten only once the reading has passed the head as it is now (a return
    /// read after that would find no call, and its block would be lost); see
    /// [`Tracer::settle_gone`].
    pub(super) fn unregister_thread(&mut self, tid: Tid) {
        let tp = self.threads.get(&tid).map_or(0, |t| t.tp);
        if let Some(rec) = self.rec.as_mut() {
            if tp != 0 && rec.ring.owner(tp) == Some(tid) {
                rec.ring.unregister(tp);
            }
            let head = rec.ring.head();
            rec.gone.push((tid, head));
        }
        self.settle_gone();
    }

    /// Forgets the gone threads whose records have all been read: their open calls
    /// are dropped. Their records still being written are given up on at once, for
    /// every gone thread: no one will finish them, and a hole holds the ring's tail
    /// (a writer waiting for room past it would keep the reading from ever passing the
    /// head the thread is waited for at).
    pub(super) fn settle_gone(&mut self) {
        let Some(rec) = self.rec.as_mut() else { return };
        if rec.gone.is_empty() {
            return;
        }
        let holes: Vec<u64> = rec
            .ring
            .holes()
            .filter(|&(p, h)| rec.gone.iter().any(|&(t, head)| t == h.tid && p < head))
            .map(|(p, _)| p)
            .collect();
        for p in holes {
            rec.ring.abandon(p);
        }
        let read = rec.ring.read_pos();
        for &(tid, head) in rec.gone.iter().filter(|&&(_, h)| h <= read) {
            rec.calls.thread_gone(tid, head);
            rec.skip_looks.remove(&tid);
            rec.skip_threads.remove(&tid);
        }
        rec.gone.retain(|&(_, h)| h > read);
    }

    /// An entry of thread `tid` at `pos`: a gone thread of that id whose every record
    /// lies below it is forgotten first (the id is a new thread's).
    fn settle_gone_before(&mut self, tid: Tid, pos: u64) {
        let Some(rec) = self.rec.as_mut() else { return };
        if rec.gone.iter().any(|&(t, h)| t == tid && h <= pos) {
            for &(_, head) in rec.gone.iter().filter(|&&(t, h)| t == tid && h <= pos) {
                rec.calls.thread_gone(tid, head);
            }
            rec.gone.retain(|&(t, h)| !(t == tid && h <= pos));
        }
    }

    /// Where a call whose return address is `ret` was made from. Asked for every
    /// entry: the answers for the last few hundred call sites are kept (the same few
    /// sites make most calls), until the loaded objects change.
    fn caller(&mut self, ret: u64) -> Caller {
        let slot = (ret.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize;
        if let Some(r) = self.rec.as_ref() {
            if let Some((at, c)) = r.callers[slot] {
                if at == ret {
                    return c;
                }
            }
        }
        // A tail call from a hooked function returns through the stub, or through
        // the trampoline when the shadow stack was full: allocator code either way.
        let stub = self.rec.as_ref().is_some_and(|r| r.is_stub(ret))
            || Some(ret) == self.scratch.trampoline();
        let c = Caller {
            allocator: stub || self.image.is_allocator_code(ret),
            internal: self.image.is_internal(ret),
            heap_maps: self.image.maps_for_heap(ret),
        };
        if let Some(r) = self.rec.as_mut() {
            r.callers[slot] = Some((ret, c));
        }
        c
    }

    /// Reads the records committed so far into events (some held back a moment, see
    /// [`crate::recorder::defer`]), at most [`BATCH`] of them; releases what is no
    /// longer needed. Says whether there were none, some, or a full batch.
    pub(super) fn drain(&mut self) -> DrainBatch {
        let mut count = 0;
        let now = self.clock.elapsed().as_nanos() as u64;
        while count < BATCH {
            let next = match self.rec.as_mut() {
                Some(r) => r.ring.next_record(),
                None => return DrainBatch::None,
            };
            let rec = match next {
                None => break,
                Some(Ok(rec)) => rec,
                Some(Err(e)) => {
                    self.recording_broken(&e.to_string());
                    break;
                }
            };
            count += 1;
            self.take_record(rec, now);
        }
        self.settle_gone();
        self.release(false);
        if let Some(r) = self.rec.as_mut() {
            r.busy = count > 0;
            if count > 0 {
                r.idle_looks = 0;
            }
        }
        match count {
            0 => DrainBatch::None,
            BATCH => DrainBatch::Full,
            _ => DrainBatch::Some,
        }
    }

    /// Reads every record committed so far.
    pub(super) fn drain_all(&mut self) {
        while self.drain() == DrainBatch::Full {}
    }

    /// Every record read and every event handed to the heap: before a scan, a report,
    /// a debugger stop, a change of image or of objects.
    pub(super) fn flush(&mut self) {
        self.drain_all();
        self.release(true);
    }

    fn take_record(&mut self, rec: Record, now: u64) {
        let out = match rec {
            Record::Entry(e) => {
                if let Some(r) = self.rec.as_mut() {
                    r.stats.calls += 1;
                    r.stats.stack_bytes += e.full_len;
                    r.stats.stack_bytes_copied += e.stack_len;
                    r.stats.stack_bytes_skipped += e.skipped.1 - e.skipped.0;
                }
                let caller = self.caller(e.ret);
                self.settle_gone_before(e.tid, e.pos);
                let Some(r) = self.rec.as_mut() else { return };
                let mut out = r.calls.entry(&e, caller);
                if !e.is_whole() && e.base < r.ring.tail() {
                    // Its chain starts below what was released (its writer was slow
                    // to reserve): taken out of the ring now, while it is there.
                    // When its chain is gone already, its own bytes are all there is
                    // (the unwind counts it lost): owned either way, so that it pins
                    // nothing below the tail.
                    let copy = r
                        .ring
                        .copy_if_intact(e.pos)
                        .unwrap_or_else(|| r.ring.record(e.pos).into());
                    r.calls.own(e.tid, e.pos, &copy, out.as_mut());
                }
                out
            }
            Record::Return(ret) => {
                let Some(r) = self.rec.as_mut() else { return };
                r.calls.ret(&ret)
            }
            Record::Unwind { tid, .. } => {
                if let Some(r) = self.rec.as_mut() {
                    r.calls.unwind(tid);
                }
                None
            }
        };
        if let (Some(out), Some(r)) = (out, self.rec.as_mut()) {
            r.defer.push(out, now);
        }
    }

    /// Hands the heap the events that are due (all of them with `all`) and releases
    /// the ring below what is still needed.
    fn release(&mut self, all: bool) {
        let Some(rec) = self.rec.as_mut() else { return };
        let inline = rec.stats.mode == RecordMode::Inline;
        let mut unwinder = Unwinder {
            inline,
            ring: &rec.ring,
            counts: &mut rec.stats,
            skip_looks: &mut rec.skip_looks,
            skip_threads: &mut rec.skip_threads,
            walker: &mut self.walker,
            stacks: &mut self.stacks,
            frames: &mut self.frame_buf,
            stats: &mut self.stats,
            depth: self.depth,
            generation: self.generation,
            pid: self.pid,
            stack_top: self.image.stack_top,
            short: false,
            most_read: rec.most_read,
            unwinds: rec.unwinds,
            ticks: 0,
        };
        let mut heap = SinkHeap(&mut *self.sink);
        let now = self.clock.elapsed().as_nanos() as u64;
        if rec.ring.used() > PRESSURE {
            // The ring fills: what holds its oldest half leaves now. The few calls
            // still open there take their copies out of it.
            let limit = rec.ring.head().saturating_sub(PRESSURE / 2);
            rec.defer.relieve(limit, now, &mut unwinder, &mut heap);
            let ring = unwinder.ring;
            for raw in rec.calls.raw_stacks_mut() {
                if raw.owned.is_none() && raw.pin < limit {
                    raw.owned = Some(ring.whole_record(raw.pos));
                    unwinder.counts.stacks_evacuated += 1;
                }
            }
        }
        rec.defer.release(now, all, &mut unwinder, &mut heap);
        // Copies of recent frees the writers have written over since are no use:
        // released, and a lap behind the head.
        let overwritten = rec
            .ring
            .head()
            .saturating_sub(RING_SIZE)
            .min(rec.ring.tail());
        rec.defer.forget_overwritten(overwritten);
        rec.most_read = unwinder.most_read;
        rec.unwinds = unwinder.unwinds;
        let ticks = unwinder.ticks;
        if unwinder.short {
            let len = (rec.ring.copy_len() * 2).min(MAX_STACK_COPY);
            rec.ring.set_copy_len(len);
            rec.stats.stack_copies_short += 1;
        } else if rec.unwinds >= LEARN_EVERY && self.depth > 1 {
            let len = (rec.most_read * 2)
                .next_multiple_of(4096)
                .clamp(MIN_COPY_LEN, MAX_STACK_COPY);
            if len < rec.ring.copy_len() {
                rec.ring.set_copy_len(len);
            }
            rec.most_read = 0;
            rec.unwinds = 0;
        }
        // A record not read yet may read its chain from up to CHAIN_SPAN below
        // itself (a writer slow to reserve, from a little further: see
        // `take_record`).
        let mut upto = rec.ring.read_pos().saturating_sub(KEEP_BEHIND);
        if let Some(p) = rec.defer.oldest_pin() {
            upto = upto.min(p);
        }
        for raw in rec.calls.raw_stacks_mut() {
            if raw.owned.is_none() {
                upto = upto.min(raw.pin);
            }
        }
        rec.ring.release(upto);
        if ticks > 0 {
            self.stats.unwind_ns += rec.ticks_to_ns(ticks);
        }
    }

    /// A record made no sense: stop recording (the program runs on, untouched), say so.
    fn recording_broken(&mut self, why: &str) {
        eprintln!(
            "memtrace: warning: the recording stopped ({why}); the report covers the calls before"
        );
        if let Some(r) = self.rec.as_mut() {
            r.ring.set_flags(memtrace_arch::recorder::FLAG_BYPASS);
        }
    }

    /// Reserves room for a record of memtrace's own, reading the ring until there is.
    fn reserve(&mut self, len: u64) -> Option<u64> {
        if self.rec.as_ref()?.ring.is_broken() {
            return None; // nothing is read any more: no room will come
        }
        let pos = self.rec.as_mut()?.ring.reserve(len);
        for _ in 0..1_000_000 {
            let rec = self.rec.as_ref()?;
            if rec.ring.has_room(pos, len) {
                return Some(pos);
            }
            self.drain_all();
            self.release(true);
            if self.rec.as_ref()?.ring.is_broken() {
                return None; // broken while reading: no room will come
            }
            if let Some(r) = self.rec.as_mut() {
                if !r.ring.has_room(pos, len) {
                    // Copies held for old frees or open calls: out of the ring.
                    let ring = &r.ring;
                    let mut copy = |raw: &RawStack| -> Box<[u8]> { ring.whole_record(raw.pos) };
                    r.defer.evacuate(&mut copy);
                    for raw in r.calls.raw_stacks_mut() {
                        if raw.owned.is_none() {
                            raw.owned = Some(ring.whole_record(raw.pos));
                        }
                    }
                    std::thread::yield_now();
                }
            }
        }
        None
    }

    /// The entry of a hooked call memtrace stopped at (`--stops`, or the slow path):
    /// the record the thunk would have written, and the return hooked through the
    /// stub (or the trampoline, when the shadow stack is full). Returns the entry.
    pub(super) fn record_entry(
        &mut self,
        tid: Tid,
        func: HookFn,
        regs: &mut Regs,
    ) -> Option<Entry> {
        let sp = Native::sp(regs);
        let ret = match Native::return_slot(regs) {
            ReturnSlot::Stack(a) => self.mem.read_u64(a).ok()?,
            ReturnSlot::LinkRegister => Native::link_register(regs),
        };
        self.register_thread(tid, regs);
        let tp = Native::thread_pointer(regs);
        let rec = self.rec.as_ref()?;
        let tail_call = rec.is_stub(ret) || Some(ret) == self.scratch.trampoline();
        let copy_len = rec.ring.copy_len();
        let bounds = rec.ring.bounds(tp);
        let from = Native::sp_after_return(sp);
        let want = match bounds {
            Some((_, hi)) if hi > from => copy_len.min(hi - from),
            Some(_) => 0,
            None => copy_len,
        };
        let mut stack = vec![0u8; want as usize];
        let got = self.mem.read_vm_partial(from, &mut stack).unwrap_or(0);
        stack.truncate(got);
        let hook = func.hooks_return() && !tail_call;
        let mut e = Entry {
            pos: 0,
            tid,
            func,
            hooked_return: hook,
            args: std::array::from_fn(|n| Native::arg(regs, n)),
            ret,
            sp,
            fp: Native::frame_pointer(regs),
            stack_len: stack.len() as u64,
            full_len: stack.len() as u64,
            prev: NO_RECORD,
            base: 0,
            skipped: (0, 0),
        };
        let len = entry_len(e.stack_len);
        let pos = self.reserve(len)?;
        e.pos = pos;
        e.base = pos;
        let header = record::encode_entry(&e);
        let stub = self.rec.as_ref()?.ring.addrs.ret_stub;
        let mut swapped = false;
        if hook {
            let out_ptr = if func == HookFn::PosixMemalign {
                e.args[0]
            } else {
                0
            };
            let frame = ShadowFrame {
                ret,
                sp,
                pos,
                out_ptr,
            };
            let rec = self.rec.as_mut()?;
            let on_shadow = !rec.shared_tps.contains(&tp) && rec.ring.push_shadow(tp, frame);
            let to = if on_shadow {
                Some(stub)
            } else {
                // No slot or a full shadow stack: the trampoline, a stop at the return.
                let t = self.scratch.trampoline();
                if let (Some(_), Some(th)) = (t, self.threads.get_mut(&tid)) {
                    th.frames.push(super::Frame {
                        func,
                        entry_sp: sp,
                        real_ret: ret,
                        pos,
                        out_ptr,
                    });
                }
                t
            };
            if let Some(to) = to {
                swapped = match Native::return_slot(regs) {
                    ReturnSlot::Stack(a) => self.mem.write_u64(a, to).is_ok(),
                    ReturnSlot::LinkRegister => {
                        Native::set_link_register(regs, to);
                        true
                    }
                };
                if !swapped {
                    if on_shadow {
                        if let Some(r) = self.rec.as_mut() {
                            let depth = r.ring.shadow(tp).len();
                            r.ring.truncate_shadow(tp, depth.saturating_sub(1));
                        }
                    } else if let Some(th) = self.threads.get_mut(&tid) {
                        th.frames.pop();
                    }
                }
            }
        }
        let header = if hook && !swapped {
            e.hooked_return = false;
            record::encode_entry(&e)
        } else {
            header
        };
        self.rec.as_mut()?.ring.write(pos, &header, &stack);
        Some(e)
    }

    /// A call returned through the trampoline: its return record.
    pub(super) fn record_trampoline_return(&mut self, tid: Tid, f: &super::Frame, value: u64) {
        let out = if f.func == HookFn::PosixMemalign && value as u32 == 0 {
            self.mem.read_u64(f.out_ptr).unwrap_or(0)
        } else {
            0
        };
        let r = Return {
            pos: 0,
            tid,
            entry_pos: f.pos,
            value,
            out,
        };
        if let Some(pos) = self.reserve(RETURN_LEN) {
            if let Some(rec) = self.rec.as_mut() {
                rec.ring.write(pos, &record::encode_return(&r), &[]);
            }
        }
    }

    /// The thread is about to unwind its stack (an exception): its swapped return
    /// addresses are put back (the unwinder must see the real ones) and its calls
    /// will not return.
    pub(super) fn record_unwind(&mut self, tid: Tid, regs: &mut Regs) {
        let tp = Native::thread_pointer(regs);
        let stub = self.rec.as_ref().map_or(0, |r| r.ring.addrs.ret_stub);
        let shadow = self
            .rec
            .as_ref()
            .map(|r| r.ring.shadow(tp))
            .unwrap_or_default();
        for f in shadow.iter().rev() {
            self.put_back(regs, f.sp, stub, f.ret);
        }
        let tramp = self.scratch.trampoline().unwrap_or(0);
        let frames = self
            .threads
            .get_mut(&tid)
            .map(|t| std::mem::take(&mut t.frames))
            .unwrap_or_default();
        self.stats.abandoned_frames += frames.len() as u64;
        for f in frames.iter().rev() {
            self.put_back(regs, f.entry_sp, tramp, f.real_ret);
        }
        if let Some(r) = self.rec.as_mut() {
            r.ring.truncate_shadow(tp, 0);
        }
        if let Some(pos) = self.reserve(RETURN_LEN) {
            if let Some(rec) = self.rec.as_mut() {
                rec.ring.write(pos, &record::encode_unwind(tid), &[]);
            }
        }
    }

    /// The innermost hooked call of `tid` whose return memtrace holds: its stack
    /// pointer at entry, and its real return address.
    pub(super) fn pending_return(&self, tid: Tid, regs: &Regs) -> Option<(u64, u64)> {
        let tramp = self
            .threads
            .get(&tid)
            .and_then(|t| t.frames.last())
            .map(|f| (f.entry_sp, f.real_ret));
        let tp = Native::thread_pointer(regs);
        let shadow = self
            .rec
            .as_ref()
            .and_then(|r| r.ring.shadow(tp).last().map(|f| (f.sp, f.ret)));
        // The innermost is the one lowest on the stack.
        match (tramp, shadow) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// Every return address memtrace swapped on `tid`'s stack, as (slot, real value).
    pub(super) fn swapped_returns(&self, tid: Tid, regs: &Regs) -> Vec<(u64, u64)> {
        let tp = Native::thread_pointer(regs);
        let mut v: Vec<(u64, u64)> = self
            .rec
            .as_ref()
            .map(|r| r.ring.shadow(tp).iter().map(|f| (f.sp, f.ret)).collect())
            .unwrap_or_default();
        if let Some(t) = self.threads.get(&tid) {
            v.extend(t.frames.iter().map(|f| (f.entry_sp, f.real_ret)));
        }
        v.into_iter()
            .filter_map(|(sp, ret)| match Native::return_slot_at(sp) {
                ReturnSlot::Stack(a) => Some((a, ret)),
                ReturnSlot::LinkRegister => None,
            })
            .collect()
    }

    /// Puts `real` back where a call that entered at `sp` keeps its return address,
    /// if memtrace's `ours` is still there.
    pub(super) fn put_back(&mut self, regs: &mut Regs, sp: u64, ours: u64, real: u64) {
        match Native::return_slot_at(sp) {
            ReturnSlot::Stack(a) => {
                if self.mem.read_u64(a).ok() == Some(ours) {
                    let _ = self.mem.write_u64(a, real);
                }
            }
            ReturnSlot::LinkRegister => {
                if Native::link_register(regs) == ours {
                    Native::set_link_register(regs, real);
                }
            }
        }
    }

    /// The figures of the recording, for the report.
    pub fn record_stats(&self) -> Option<RecordStats> {
        let r = self.rec.as_ref()?;
        let (waits, ticks) = r.ring.waits();
        let mut s = r.stats;
        s.records = r.ring.stats.records;
        s.record_bytes = r.ring.stats.bytes;
        s.stacks_unwound = r.defer.stats.unwound;
        s.stacks_never_needed = r.defer.stats.never_needed;
        s.stacks_evacuated = r.defer.stats.evacuated;
        s.ring_waits = waits;
        s.ring_wait_ns = r.ticks_to_ns(ticks);
        s.stack_copy_len = r.ring.copy_len();
        s.records_in_progress = r.ring.stats.holes;
        s.records_abandoned = r.ring.stats.abandoned;
        s.unmatched_returns = r.calls.stats.unmatched_returns;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every hooked function's thunk fits in its room (one that did not fell back to
    /// a stop per call, silently).
    #[test]
    fn every_thunk_fits_before_its_displaced_code() {
        for func in HookFn::all() {
            let at = 0x7f00_1000_0000;
            let spec = ThunkSpec {
                ctrl: 0x7f00_2000_0000,
                func: func.id(),
                hook_return: func.hooks_return(),
                out_ptr_arg: *func == HookFn::PosixMemalign,
                displaced: at + DISPLACED_AT,
            };
            let code = Native::recorder_thunk(at, &spec).expect("assembles");
            assert!(
                code.code.len() as u64 <= DISPLACED_AT,
                "{func:?}: {} bytes",
                code.code.len()
            );
        }
    }

    #[test]
    fn the_stack_limit_is_the_soft_one_or_none_when_unlimited() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max stack size            8388608              unlimited            bytes     \n";
        assert_eq!(parse_stack_limit(limits), Some(8 << 20));
        let unlimited =
            "Max stack size            unlimited            unlimited            bytes     \n";
        assert_eq!(parse_stack_limit(unlimited), None);
        assert_eq!(parse_stack_limit("Max open files 1024 1024 files\n"), None);
    }
}

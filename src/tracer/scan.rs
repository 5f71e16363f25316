//! The reachability scan, tracer side: stop the threads, gather the roots, and hand
//! the analysis ([`crate::leakcheck`]) a reader over the target's memory.
//!
//! When: at the program's call of `_exit` (after atexit handlers, every thread still
//! there: all are stopped and their registers read), else at the exiting thread's
//! PTRACE_EVENT_EXIT when the whole process ends (a death by signal, a direct
//! exit_group: the other threads are being killed and cannot stop, so only that
//! thread's registers are known), and on demand ([`Tracer::scan_now`]).
//!
//! Roots are memcheck's: every readable and writable mapping and every thread's
//! registers, minus what a native glibc process has that valgrind's does not: the
//! heap itself (`[heap]`, anonymous mappings holding a live block, the heaps of
//! other arenas; their free chunks hold stale pointers), memtrace's own mappings (the
//! ring and the thread table hold recent pointers), and stacks below their stack
//! pointer (stale).

use super::stopall::AllStopped;
use super::Tracer;
use crate::event::Tid;
use crate::leakcheck::{self, Kind, Options, Roots, Segment};
use crate::maps::{self, Mapping};
use crate::progress::{Progress, Unit};
use crate::ptrace;
use memtrace_arch::{Arch, Native};
use serde::Serialize;

/// The x86-64 red zone below the stack pointer, which leaf functions use without
/// moving it; memcheck too treats it as live.
const RED_ZONE: u64 = 128;
/// How long dying threads are waited for, at the exit stop of the thread that ends
/// the process.
const DYING_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);
/// Exit stack pointers remembered for the stacks of threads that have exited.
const EXIT_SPS_KEPT: usize = 4096;

/// When a scan was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanWhen {
    /// At the call of `_exit`, every thread stopped.
    Exit,
    /// At the exiting thread's exit stop: only its registers are known.
    ExitEvent,
    /// Asked for while the program runs.
    OnDemand,
}

/// What a scan cost and covered (the report's `scan` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ScanStats {
    pub when: ScanWhen,
    /// Wall time of the scan, from reading the maps to the last block classified.
    pub ns: u64,
    /// Bytes read: roots and blocks.
    pub bytes_scanned: u64,
    pub roots_bytes: u64,
    pub block_bytes: u64,
    /// Bytes that could not be read (skipped, as memcheck skips unaddressable memory).
    pub unreadable_bytes: u64,
    /// Live blocks classified.
    pub blocks: u64,
    /// Threads whose registers were roots, and threads that could not be stopped
    /// (their whole stack mapping is scanned instead).
    pub threads: u64,
    pub threads_missed: u64,
}

/// One scan's outcome, handed to the [`super::Sink`]: a kind per block.
#[derive(Clone, Debug)]
pub struct Scan {
    /// `(start, size)` in address order, as the sink gave them.
    pub blocks: Vec<(u64, u64)>,
    pub kinds: Vec<Kind>,
    /// For a definitely lost block, the bytes lost only through it (valgrind's
    /// "indirect" part of its loss record).
    pub indirect_bytes: Vec<u64>,
    pub stats: ScanStats,
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read the target's memory map: {0}")]
    Maps(std::io::Error),
    #[error("no thread of the target could be stopped")]
    NoThread,
}

impl Tracer<'_> {
    /// Scans now: stops every thread, classifies every live block (the sink gets the
    /// result through [`super::Sink::classified`]), resumes every thread. For a
    /// `--duration` end, a detach or a TUI key; the scan at `_exit` is this same path
    /// with the exiting thread already stopped (and no resume). Stops that arrived while the threads
    /// were being stopped are kept for the next [`Tracer::run`] (a detach must handle
    /// them first: one may be a breakpoint hit still to be moved past).
    pub fn scan_now(&mut self) -> Result<ScanStats, ScanError> {
        let all = self.stop_all(None);
        let result = self.scan_stopped(&all, ScanWhen::OnDemand);
        self.resume_all(all);
        result
    }

    /// A scan of threads a pause already holds (the live view's `l` while paused).
    pub(super) fn scan_paused(&mut self, all: &AllStopped) -> Result<ScanStats, ScanError> {
        self.scan_stopped(all, ScanWhen::OnDemand)
    }

    /// Why the scan at the program's end could not be made, when it was tried.
    pub fn scan_error(&self) -> Option<&str> {
        self.scan.error.as_deref()
    }

    /// `tid` is at the entry of `_exit`: scan with every thread stopped.
    pub(super) fn scan_at_exit(&mut self, tid: Tid) {
        if self.scan.at_exit || self.children.contains_key(&tid) {
            return; // a vfork child leaving: not our heap
        }
        let all = self.stop_all(Some(tid));
        let result = self.scan_stopped(&all, ScanWhen::Exit);
        // The other threads stay stopped: the exit_group that `_exit` makes kills
        // them where they are, and nothing they would still allocate or free can
        // change the heap the report shows after the scan.
        self.scan_done(result);
    }

    /// `tid` stopped at its exit: remember its stack pointer (its stack below that is
    /// stale from now on), and scan if the whole process is ending and no scan was
    /// made at `_exit`.
    pub(super) fn on_thread_exit(&mut self, tid: Tid) {
        let Ok(regs) = ptrace::get_regs(tid) else {
            return;
        };
        if !self.scan.at_exit
            && !self.children.contains_key(&tid)
            && self.process_ending(tid, &regs)
        {
            // The other threads are being killed. This kernel still stops each at its
            // exit, registers intact, but not every kernel does (a thread with
            // SIGKILL pending may exit without stopping): wait for them briefly.
            let all = self.stop_all_within(Some(tid), DYING_TIMEOUT);
            let result = self.scan_stopped(&all, ScanWhen::ExitEvent);
            self.resume_all(all);
            self.scan_done(result);
            return;
        }
        if self.scan.exit_sps.len() == EXIT_SPS_KEPT {
            self.scan.exit_sps.remove(0);
        }
        self.scan.exit_sps.push(Native::sp(&regs));
    }

    /// `tid` calls exit(): the stack below its stack pointer now is about to hold
    /// exit()'s own frames, laid over the program's old ones.
    pub(super) fn on_exit_call(&mut self, tid: Tid, sp: u64) {
        if !self.children.contains_key(&tid) {
            self.scan.exit_calls.insert(tid, sp);
        }
    }

    /// Where the live part of a stopped thread's stack starts: at its stack pointer,
    /// less the red zone that leaf functions use without moving it. In a thread
    /// inside exit(), at exit()'s call instead: exit's frames lie over old frames of
    /// the program (the functions main called), and the slots exit never writes
    /// still hold their pointers. Natively those are words like any other; valgrind
    /// sees them undefined (memcheck marks a new stack frame undefined until it is
    /// written) and skips them. Skipping exit's frames skips only glibc's pointers to
    /// its own exit handler lists.
    fn live_stack_start(&self, tid: Tid, sp: u64) -> u64 {
        const STACK_LIMIT: u64 = 1 << 30;
        match self.scan.exit_calls.get(&tid) {
            Some(&at) if at > sp && at - sp < STACK_LIMIT => at,
            _ => sp.saturating_sub(RED_ZONE),
        }
    }

    /// A scan before a detach failed: the report says why its leaks are unclassified.
    pub(super) fn scan_failed(&mut self, e: ScanError) {
        self.scan.error = Some(e.to_string());
    }

    fn scan_done(&mut self, result: Result<ScanStats, ScanError>) {
        match result {
            Ok(_) => self.scan.at_exit = true,
            Err(e) => self.scan.error = Some(e.to_string()),
        }
    }

    /// Whether the exit `tid` is stopped at ends the process: it is in exit_group, or
    /// dies of a signal (a fatal signal, SIGKILL included, kills every thread), or
    /// is the last thread. A thread leaving with SYS_exit leaves the others running.
    fn process_ending(&self, tid: Tid, regs: &memtrace_arch::Regs) -> bool {
        let exit_group = Native::syscall_nr(regs) == Some(Native::SYS_EXIT_GROUP);
        // The exit event's message is the wait status: a signal number in its low bits.
        let by_signal = ptrace::event_msg(tid).is_ok_and(|status| status & 0x7f != 0);
        let last = || {
            self.threads.keys().all(|&t| {
                t == tid || !std::path::Path::new(&format!("/proc/{}/task/{t}", self.pid)).exists()
            })
        };
        exit_group || by_signal || last()
    }

    fn scan_stopped(&mut self, all: &AllStopped, when: ScanWhen) -> Result<ScanStats, ScanError> {
        if all.regs.is_empty() {
            return Err(ScanError::NoThread);
        }
        // Every record so far, every event held back: the heap as it is now.
        self.flush();
        let started = std::time::Instant::now();
        let maps = maps::read(self.pid).map_err(ScanError::Maps)?;
        let mut blocks = self.sink.live_blocks();
        self.sink.scan_starting(&self.stacks);
        blocks.sort_unstable();
        let starts: Vec<u64> = all
            .regs
            .iter()
            .map(|(tid, r)| self.live_stack_start(*tid, Native::sp(r)))
            .collect();
        let own = self.own_ranges();
        // The mappings as the kernel has them now, while the process is still there;
        // before the scan, whose reads fault pages in (a memfd's holes too).
        let sps = all.regs.iter().map(|(_, r)| Native::sp(r)).collect();
        self.tell_memory(&own, sps);
        let arenas = self.arena_heaps(&maps);
        let devices = self.devices(&maps);
        let layout = Layout {
            devices: &devices,
            blocks: &blocks,
            stack_starts: &starts,
            exit_sps: &self.scan.exit_sps,
            own: &own,
            arena_heaps: &arenas,
        };
        let roots = Roots {
            regions: self.resident_shared(layout.root_regions(&maps), &maps),
            words: all
                .regs
                .iter()
                .flat_map(|(_, r)| r.words[..Native::REGSET_WORDS].iter().copied())
                .collect(),
        };
        let segments: Vec<Segment> = maps
            .iter()
            .map(|m| Segment {
                start: m.start,
                end: m.end,
                file: m.is_file(),
                read: m.read,
                exec: m.exec,
            })
            .collect();
        let mem = &self.mem;
        // A GiB of heap takes a while to read: say how far it is.
        let to_read = roots.regions.iter().map(|(s, e)| e - s).sum::<u64>()
            + blocks.iter().map(|b| b.1).sum::<u64>();
        let mut progress = Progress::new("scanning the heap", to_read, Unit::Bytes);
        let mut read = |addr: u64, buf: &mut [u8]| {
            progress.add(buf.len() as u64);
            mem.read_vm_partial(addr, buf).unwrap_or(0)
        };
        let found = leakcheck::classify(&blocks, &roots, &segments, Options::default(), &mut read);
        progress.finish();
        let s = found.stats;
        let stats = ScanStats {
            when,
            ns: started.elapsed().as_nanos() as u64,
            bytes_scanned: s.roots_bytes + s.block_bytes,
            roots_bytes: s.roots_bytes,
            block_bytes: s.block_bytes,
            unreadable_bytes: s.unreadable_bytes,
            blocks: blocks.len() as u64,
            threads: all.regs.len() as u64,
            threads_missed: all.missed as u64,
        };
        self.sink.classified(&Scan {
            blocks,
            kinds: found.kinds,
            indirect_bytes: found.indirect_bytes,
            stats,
        });
        Ok(stats)
    }

    /// The start addresses of the writable mappings of character or block devices (a
    /// GPU's memory, a frame buffer): reading them may hang or have effects, and
    /// memcheck skips them too. `/dev/zero` and files on a tmpfs under /dev/shm are
    /// memory like any other.
    fn devices(&self, maps: &[Mapping]) -> Vec<u64> {
        use std::os::unix::fs::FileTypeExt;
        maps.iter()
            .filter(|m| m.write && m.path.starts_with("/dev/") && m.path != "/dev/zero")
            .filter(|m| {
                std::fs::metadata(maps::target_path(self.pid, &m.path)).map_or(true, |md| {
                    md.file_type().is_char_device() || md.file_type().is_block_device()
                })
            })
            .map(|m| m.start)
            .collect()
    }

    /// Of the root regions in shared mappings, the pages the process has in memory
    /// (or swapped out) only: reading an untouched page of a memfd or a shared
    /// memory segment would allocate it in the target (a doublemapper's GiBs), and
    /// it holds nothing the process wrote through this mapping. Private memory
    /// reads as the zero page: read whole.
    fn resident_shared(&self, regions: Vec<(u64, u64)>, maps: &[Mapping]) -> Vec<(u64, u64)> {
        let shared = |s: u64| maps.iter().any(|m| m.shared && m.start <= s && s < m.end);
        let mut out = Vec::with_capacity(regions.len());
        for (s, e) in regions {
            if !shared(s) {
                out.push((s, e));
                continue;
            }
            let (from, to) = (s & !4095, e.next_multiple_of(4096));
            match crate::procmem::read_resident_runs(self.pid, from, to) {
                Ok(runs) => out.extend(runs.into_iter().map(|(a, b)| (a.max(s), b.min(e)))),
                Err(_) => out.push((s, e)),
            }
        }
        out
    }

    /// The start addresses of the mappings that are heaps of glibc arenas other than
    /// the main one (see [`crate::census::ARENA_HEAP_ALIGN`]).
    fn arena_heaps(&self, maps: &[Mapping]) -> Vec<u64> {
        crate::census::arena_heaps(maps, |m| self.mem.read_u64(m.start).ok())
    }
}

/// What decides which mappings are roots, and from where.
struct Layout<'a> {
    /// Live blocks, sorted.
    blocks: &'a [(u64, u64)],
    /// Where the live part of each stopped thread's stack starts.
    stack_starts: &'a [u64],
    /// Stack pointers of exited threads at their exit, oldest first.
    exit_sps: &'a [u64],
    /// memtrace's own mappings in the target.
    own: &'a [(u64, u64)],
    /// Mappings of devices (by start).
    devices: &'a [u64],
    arena_heaps: &'a [u64],
}

impl Layout<'_> {
    fn root_regions(&self, maps: &[Mapping]) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for m in maps.iter().filter(|m| self.is_root(m)) {
            let mut at = self.scan_from(m);
            if m.inode == 0 {
                // glibc's mmap'd chunks (large blocks) are not roots: their free space
                // holds nothing of the program's. Only their pages are left out: the
                // kernel merges neighbouring anonymous mappings, so the program's
                // own mmap'd memory may share the mapping.
                for (s, e) in self.chunk_spans(m) {
                    if s > at {
                        out.push((at, s));
                    }
                    at = at.max(e);
                }
            }
            if at < m.end {
                out.push((at, m.end));
            }
        }
        out
    }

    /// The pages of the live blocks inside an anonymous mapping, in address order: a
    /// block there is an mmap'd chunk (its 16-byte header at the start of a page).
    fn chunk_spans(&self, m: &Mapping) -> impl Iterator<Item = (u64, u64)> + '_ {
        const PAGE: u64 = 4096;
        let (start, end) = (m.start, m.end);
        let i = self.blocks.partition_point(|&(s, _)| s < start);
        self.blocks[i..]
            .iter()
            .take_while(move |&&(s, _)| s < end)
            .map(move |&(s, size)| {
                let from = s.saturating_sub(16) & !(PAGE - 1);
                let to = s.saturating_add(size).next_multiple_of(PAGE);
                (from.max(start), to.min(end))
            })
    }

    fn is_root(&self, m: &Mapping) -> bool {
        let overlaps = |&(s, e): &(u64, u64)| s < m.end && m.start < e;
        m.read
            && m.write
            && m.path != "[heap]"
            && !self.devices.contains(&m.start)
            && !self.own.iter().any(overlaps)
            && !self.arena_heaps.contains(&m.start)
    }

    /// A stack is live from where its stopped thread's live part starts; an exited
    /// thread's stack from where its pointer was at the exit (less the red zone).
    /// Anything else from its start.
    fn scan_from(&self, m: &Mapping) -> u64 {
        let inside = |sp: &&u64| m.start <= **sp && **sp <= m.end;
        let live = self.stack_starts.iter().filter(inside).min().copied();
        let exited = || {
            self.exit_sps
                .iter()
                .rev()
                .find(inside)
                .map(|sp| sp.saturating_sub(RED_ZONE))
        };
        live.or_else(exited).map_or(m.start, |s| s.max(m.start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
555555554000-555555558000 r-xp 00000000 fe:01 100 /src/app
555555558000-555555559000 rw-p 00004000 fe:01 100 /src/app
555555559000-55555557a000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
7f0004000000-7f0008000000 ---p 00000000 00:00 0
7f1000000000-7f1000100000 rw-p 00000000 00:00 0
7f2000000000-7f2000800000 rw-p 00000000 00:00 0
7f3000000000-7f3000001000 r-xp 00000000 00:00 0
7f3000001000-7f3000003000 rw-p 00000000 00:00 0
7f4000000000-7f4000001000 rw-s 00000000 00:05 7 /dev/dri/card0
7ffffffde000-7ffffffff000 rw-p 00000000 00:00 0 [stack]
";

    #[test]
    fn roots_leave_out_heaps_own_mappings_and_dead_stack() {
        let maps = maps::parse_maps(MAPS);
        // A block in an mmap'd chunk; the thread stack at 7f2...; memtrace's stubs.
        let blocks = [(0x555555559010, 32), (0x7f1000000010, 0x80000)];
        let layout = Layout {
            blocks: &blocks,
            stack_starts: &[0x7fffffffe000 - RED_ZONE, 0x7f2000700008 - RED_ZONE],
            exit_sps: &[],
            own: &[(0x7f3000000000, 0x7f3000003000)],
            devices: &[0x7f4000000000],
            arena_heaps: &[0x7f0000000000],
        };
        assert_eq!(
            layout.root_regions(&maps),
            vec![
                (0x555555558000, 0x555555559000),
                // The mmap'd chunk's pages are left out, not the rest of its mapping
                // (the kernel merged it with the program's own mmap'd memory).
                (0x7f1000081000, 0x7f1000100000),
                (0x7f2000700008 - RED_ZONE, 0x7f2000800000),
                (0x7fffffffe000 - RED_ZONE, 0x7ffffffff000),
            ]
        );
        // An exited thread's stack from its last stack pointer; without any, all of it.
        let layout = Layout {
            stack_starts: &[],
            exit_sps: &[0x7f2000100000, 0x7f2000600000],
            ..layout
        };
        let regions = layout.root_regions(&maps);
        assert!(regions.contains(&(0x7f2000600000 - RED_ZONE, 0x7f2000800000)));
        assert!(regions.contains(&(0x7ffffffde000, 0x7ffffffff000)));
    }
}

//! What every trace shares, with or without the live view: how it starts (launch or
//! attach), the options applied to the tracer, and what it leaves for the report.

use crate::cli::Common;
use crate::event::{Event, StackTable};
use crate::heap::Heap;
use crate::mappings::Tracked;
use crate::maps::Module;
use crate::ptrace::Waiter;
use crate::symbols::Symbolizer;
use crate::tracer::{End, ExecImage, Scan, ScanStats, Setup, Sink, TraceStats, Tracer};
use std::ffi::CString;
use std::time::{Duration, Instant};

/// How the trace begins.
#[derive(Clone, Debug)]
pub enum Start {
    /// Run `path` with `argv` under trace.
    Launch { path: CString, argv: Vec<CString> },
    /// Join the running process `pid`.
    Attach { pid: i32 },
}

impl Start {
    pub fn is_attach(&self) -> bool {
        matches!(self, Start::Attach { .. })
    }
}

/// Why a trace could not start: one line for the user, and memtrace's exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartError {
    pub message: String,
    pub code: i32,
}

/// Starts the tracer: launches or attaches, reporting to `sink`.
pub fn start_tracer<'s>(
    start: &Start,
    sink: &'s mut dyn Sink,
    waiter: Waiter,
    common: &Common,
) -> Result<Tracer<'s>, StartError> {
    let setup = Setup {
        stops: common.stops,
        depth: common.depth as usize,
    };
    match start {
        Start::Launch { path, argv } => {
            Tracer::launch(path, argv, sink, waiter, setup).map_err(|e| StartError {
                message: format!("{}: {e}", path.to_string_lossy()),
                code: 1,
            })
        }
        Start::Attach { pid } => {
            let t = Tracer::attach(*pid, sink, waiter, setup).map_err(|e| {
                let (message, code) = crate::attachable::attach_failure(*pid, &e);
                StartError { message, code }
            })?;
            eprintln!(
                "memtrace: attached to {pid} ({} threads); Ctrl-C detaches",
                t.stats.threads_seen
            );
            Ok(t)
        }
    }
}

/// The options every mode shares.
pub fn configure(t: &mut Tracer<'_>, common: &Common, started: Instant) {
    // (`--stop-timeout` is the waiter's: attach waits for threads before this.)
    t.set_poll(Duration::from_micros(common.poll_us));
    t.set_depth(common.depth as usize);
    if let Some(secs) = common.duration {
        t.set_deadline(started + Duration::from_secs_f64(secs));
    }
}

/// What a finished trace leaves for the report.
pub struct Traced {
    pub pid: i32,
    pub end: End,
    /// When the trace ended (see [`TracerEnd::ended_at`]).
    pub ended_at: Instant,
    pub heap: Heap,
    /// The mappings the program made, and the kernel's view of them at the end.
    pub mappings: Tracked,
    pub stacks: StackTable,
    pub trace: TraceStats,
    /// Holds every module seen; None when no object was ever reported.
    pub sym: Option<Symbolizer>,
    /// The reachability scan's figures, when one was made.
    pub scan: Option<ScanStats>,
    /// Why the scan at the end could not be made, when the tracer knows.
    pub scan_error: Option<String>,
    /// `--break-at` specs no allocation ever matched.
    pub unmatched_breaks: Vec<String>,
    /// The images the process went through, the reported one last.
    pub images: Vec<ExecImage>,
    /// What an incomplete detach left (threads that did not stop), in one line.
    pub left_behind: Option<String>,
    /// See [`TracerEnd::status_after_detach`].
    pub status_after_detach: Option<i32>,
}

/// What the tracer itself leaves at the end (the heap stays with the sink).
pub struct TracerEnd {
    pub pid: i32,
    pub end: End,
    /// When the trace ended (the program's end, or the detach), for the ages and
    /// growth of the report: not when the report is written, which with the live
    /// view may be much later.
    pub ended_at: Instant,
    pub stacks: StackTable,
    pub stats: TraceStats,
    pub scan_error: Option<String>,
    pub unmatched_breaks: Vec<String>,
    /// The images the process went through (see [`Tracer::images`]).
    pub images: Vec<ExecImage>,
    /// See [`Tracer::left_behind`].
    pub left_behind: Option<String>,
    /// The launched program's status, when the tracer had to wait for its end (see
    /// [`Tracer::wait_for_left_behind`]).
    pub status_after_detach: Option<i32>,
}

/// Runs a started tracer to its end and takes what it leaves.
pub fn run_to_end(mut t: Tracer<'_>) -> Result<TracerEnd, String> {
    let end = t.run().map_err(|e| e.to_string())?;
    let mut stats = t.stats;
    if let Some(r) = t.record_stats() {
        stats.recording = Some(r);
    }
    let ended_at = Instant::now();
    let status_after_detach = t.wait_for_left_behind();
    Ok(TracerEnd {
        pid: t.pid(),
        end,
        ended_at,
        stacks: std::mem::take(&mut t.stacks),
        stats,
        scan_error: t.scan_error().map(String::from),
        unmatched_breaks: t.armed_breaks(),
        images: std::mem::take(&mut t.images),
        left_behind: t.left_behind().map(String::from),
        status_after_detach,
    })
}

/// The sink of a trace without the live view: the heap, stamped with the time since
/// the trace began, and the symbolizer kept aware of every loaded object.
pub struct Collector {
    pub heap: Heap,
    pub mappings: Tracked,
    /// Made when the first objects are known (files are opened through /proc/PID/root).
    /// Reached through [`Collector::symbolizer`]: it may be away, warming.
    sym: Option<Symbolizer>,
    /// The symbolizer, away in a thread of its own while a scan reads the target:
    /// it loads the debug data of the live blocks' stacks meanwhile.
    warming: Option<std::thread::JoinHandle<Option<Symbolizer>>>,
    pub started: Instant,
    /// `started`'s clock, cheap enough for every event.
    clock: crate::clock::EventClock,
    /// The last reachability scan.
    pub scan: Option<ScanStats>,
    /// The stacks whose objects were handed to the symbolizer to load ahead.
    stacks_seen: usize,
}

impl Collector {
    /// `attached`: the process ran before the trace (its older blocks and
    /// mappings are unknown).
    pub fn new(heap: Heap, attached: bool, started: Instant) -> Collector {
        Collector {
            heap,
            mappings: Tracked::new(attached),
            sym: None,
            warming: None,
            started,
            clock: crate::clock::EventClock::new(started),
            scan: None,
            stacks_seen: 0,
        }
    }

    /// The symbolizer (None until objects were known), back from warming if it was.
    pub fn symbolizer(&mut self) -> &mut Option<Symbolizer> {
        if let Some(thread) = self.warming.take() {
            self.sym = match thread.join() {
                Ok(sym) => sym,
                // A panic there is one of memtrace's own: not to be hidden.
                Err(panic) => std::panic::resume_unwind(panic),
            };
        }
        &mut self.sym
    }

    /// The symbolizer, for the report.
    pub fn take_symbolizer(&mut self) -> Option<Symbolizer> {
        self.symbolizer().take()
    }
}

impl Sink for Collector {
    fn event(&mut self, ev: Event) {
        if ev == Event::Exec {
            if let Some(sym) = self.symbolizer() {
                sym.reset();
            }
            self.scan = None;
        }
        let now = self.clock.now_ns();
        self.heap.set_now(now);
        self.heap.apply(&ev);
        self.mappings.event(&ev, now);
    }
    fn memory(&mut self, m: crate::procmem::ProcMemory) {
        self.mappings.memory(m);
    }
    fn modules(&mut self, pid: i32, modules: &[Module], generation: u32) {
        self.symbolizer()
            .get_or_insert_with(|| Symbolizer::new(pid))
            .update_modules(modules, generation);
    }
    fn tick(&mut self, stacks: &StackTable) {
        // The objects of new stacks' frames are what the report will read: they load
        // meanwhile, when a processor is idle. (Not while the symbolizer is away
        // warming: waiting for it here would hold the process at its exit stop.)
        // (Nor before any object is known: those stacks wait for the next tick.)
        if self.warming.is_some() || self.sym.is_none() {
            return;
        }
        let from = self.stacks_seen;
        self.stacks_seen = stacks.len();
        let Some(sym) = self.symbolizer() else {
            return;
        };
        for id in (from..stacks.len()).map(|i| crate::event::StackId(i as u32)) {
            let generation = stacks.generation(id);
            for &address in stacks.get(id) {
                sym.preload(address, generation);
            }
        }
    }
    fn live_blocks(&mut self) -> Vec<(u64, u64)> {
        self.heap.live_spans()
    }
    fn scan_starting(&mut self, stacks: &StackTable) {
        // The report symbolizes the live blocks' stacks; reading its debug data
        // (inflating, parsing units) takes as long as a scan of a small heap. The
        // target is stopped, so on a machine of two processors or more one is free
        // during the scan: do it there. (On one processor it lengthens the stop by
        // what it does; the report would take that long after it anyway.)
        let Some(sym) = self.symbolizer().take() else {
            return;
        };
        let ids: rustc_hash::FxHashSet<_> = self.heap.live_blocks().map(|(_, b)| b.stack).collect();
        let mut addresses: Vec<(u32, u64)> = ids
            .into_iter()
            .flat_map(|id| {
                let generation = stacks.generation(id);
                stacks.get(id).iter().map(move |&a| (generation, a))
            })
            .collect();
        addresses.sort_unstable();
        addresses.dedup();
        // Handed over once the thread runs: a thread that cannot be made leaves it here.
        let (hand, take) = std::sync::mpsc::channel::<Symbolizer>();
        let thread = std::thread::Builder::new()
            .name("symbols".into())
            .spawn(move || {
                let mut sym = take.recv().ok()?;
                for (generation, address) in addresses {
                    sym.symbolize_in(address, generation);
                }
                Some(sym)
            });
        match thread {
            Ok(t) => match hand.send(sym) {
                Ok(()) => self.warming = Some(t),
                Err(back) => self.sym = Some(back.0),
            },
            Err(_) => self.sym = Some(sym),
        }
    }
    fn classified(&mut self, scan: &Scan) {
        self.heap
            .classify(&scan.blocks, &scan.kinds, &scan.indirect_bytes);
        self.scan = Some(scan.stats);
    }
    fn check_free(&self, ev: &Event) -> crate::recorder::FreeCheck {
        self.heap.check_free(ev)
    }
    fn freed_tag(&self, ptr: u64) -> Option<u64> {
        self.heap.freed_tag(ptr)
    }
    fn prefetch(&self, ev: &Event) {
        self.heap.prefetch(ev);
    }
    fn amend_freed(
        &mut self,
        ptr: u64,
        alloc: Option<crate::event::StackId>,
        free: Option<crate::event::StackId>,
    ) {
        self.heap.amend_freed(ptr, alloc, free);
    }
}

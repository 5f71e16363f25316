//! The tracer: one thread that owns the traced process and turns its stops into events.
//!
//! See `lib.rs` for the path one malloc takes. This module holds the stop loop and
//! what happens to threads and processes (clone, exec, signals; a forked child's
//! copy of the image is cleaned in `fork.rs`). One
//! hooked call's entry and return are in `calls.rs`; the process image (loader
//! rendezvous, which objects get hooks, planting) in `image.rs`; scratch pages and
//! breakpoints in `scratch.rs`; return stubs in `stubs.rs`; injected system calls in
//! `inject.rs`; stopping every thread for a moment in `stopall.rs` (a scan, a pause,
//! a debugger stop) and for good in `settle.rs` (a detach), each wait with a time
//! limit and Ctrl-C (`stopwait.rs`); the reachability scan
//! (when, and which memory is a root) in `scan.rs`; joining a running process in
//! `attach.rs` (calls caught in flight there: `inflight.rs`) and leaving it in
//! `detach.rs`; the commands another thread sends (pause, scan, detach) and the
//! loop's ticks in `control.rs`; site breakpoints and the debugger's hold on a
//! stopped thread in `debug.rs` and `step.rs`.

mod attach;
mod calls;
mod control;
pub mod debug;
mod detach;
mod fork;
mod image;
mod images;
mod inflight;
mod inject;
mod memory;
mod recording;
mod scan;
pub mod scratch;
mod settle;
mod step;
mod stopall;
mod stopwait;

pub use attach::AttachError;
pub use images::ExecImage;
pub use recording::{RecordMode, RecordStats};
pub use scan::{Scan, ScanError, ScanStats, ScanWhen};

use crate::event::{Event, StackId, StackTable, Tid};
use crate::hooks::HookFn;
use crate::maps::Module;
use crate::ptrace::{self, Memory, PtraceEvent, Stop, Waiter, Wake};
use crate::unwind::StackWalker;
use memtrace_arch::{Arch, Native};
use recording::DrainBatch;
use scratch::{BpKind, Breakpoints, Scratch};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::time::Duration;

/// Frames kept per stack unless told otherwise (the contract's `--depth` default).
pub const DEFAULT_DEPTH: usize = 32;

/// Where the tracer's output goes: allocation events and changes of the module list.
pub trait Sink {
    fn event(&mut self, ev: Event);
    /// The loaded objects of process `pid` changed (start, dlopen, dlclose, exec).
    /// `generation` is the module generation from now on: it grows each time an
    /// object is unloaded, and every stack is interned with the generation it was
    /// taken in, so that its addresses are read against the objects of that time.
    fn modules(&mut self, pid: i32, modules: &[Module], generation: u32);
    /// Called after every stop the tracer handled (and when it wakes without one):
    /// a live view sends its snapshots from here. `stacks` holds every stack so far.
    fn tick(&mut self, _stacks: &StackTable) {}
    /// The live blocks, as `(start, size)`, for a reachability scan about to be made.
    fn live_blocks(&mut self) -> Vec<(u64, u64)> {
        Vec::new()
    }
    /// A scan is about to read the target (every thread stopped) for a while: `stacks`
    /// holds every stack so far. Work that can run beside it may start now (it must
    /// not hold the process up: the scan at detach ends with the process let go).
    fn scan_starting(&mut self, _stacks: &StackTable) {}
    /// A reachability scan's outcome: a kind for each block `live_blocks` gave.
    fn classified(&mut self, _scan: &Scan) {}
    /// `ev` will be handed to [`Sink::event`] soon: start loading what it looks up.
    fn prefetch(&self, _ev: &Event) {}
    /// Whether applying `ev` (a free) would be a heap error: only then is its stack
    /// unwound (see [`crate::recorder::defer`]).
    fn check_free(&self, _ev: &Event) -> crate::recorder::FreeCheck {
        crate::recorder::FreeCheck::Fine
    }
    /// The tag of the free the heap remembers for `ptr` (see
    /// [`crate::recorder::defer::Heap::freed_tag`]).
    fn freed_tag(&self, _ptr: u64) -> Option<u64> {
        None
    }
    /// The stacks of a freed block, unwound late (a double free of it came).
    fn amend_freed(&mut self, _ptr: u64, _alloc: Option<StackId>, _free: Option<StackId>) {}
    /// Every thread was held (`paused`), or let go again.
    fn paused(&mut self, _paused: bool, _stacks: &StackTable) {}
    /// The process's memory as the kernel shows it, read while every thread is
    /// stopped (at every scan: at the end of the trace, the last moment the process
    /// is there): what the mappings still live map, and how much is resident.
    fn memory(&mut self, _m: crate::procmem::ProcMemory) {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Exited(i32),
    Signaled(i32),
    /// memtrace let go of the process, which runs on untraced.
    Detached,
}

/// What another thread (the future TUI) may ask of the tracer. Sent with a
/// [`CommandSender`]; a sender that is dropped means detach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Let go of the program: it runs on as if never traced.
    Detach,
    /// Hold every thread (the live view's `p`) until [`Command::Resume`].
    Pause,
    Resume,
    /// Classify the live blocks now (a reachability scan).
    Scan,
    /// Stop at the next allocation from there (the live view's `b`).
    Break(crate::debug::BreakSpec),
    /// Read the process's memory for the sink every second (the live view's
    /// mappings view is shown: [`Sink::memory`]), or no more.
    WatchMemory(bool),
}

/// Sends [`Command`]s to the tracer thread and wakes it. Dropping it detaches.
pub struct CommandSender {
    tx: std::sync::mpsc::Sender<Command>,
    wake: ptrace::WakeHandle,
}

impl CommandSender {
    pub fn send(&self, c: Command) {
        // A tracer that is gone has nothing left to do.
        let _ = self.tx.send(c);
        self.wake.wake();
    }
}

impl Drop for CommandSender {
    fn drop(&mut self) {
        self.wake.wake();
    }
}

/// What must be known before anything is planted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    /// A stop per allocator call (`--stops`), not recording inline.
    pub stops: bool,
    /// Frames kept per stack (`--depth`).
    pub depth: usize,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            stops: false,
            depth: DEFAULT_DEPTH,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Launch,
    Attach,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("waiting for the target failed: {0}")]
    Wait(io::Error),
    #[error("cannot set up tracing of the new program image: {0}")]
    Setup(String),
    #[error("the program did not start under trace: {0}")]
    Start(String),
}

/// Counters about the trace itself (not the heap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TraceStats {
    pub breakpoint_hits: u64,
    /// Returns caught by a stop at the trampoline (a shadow stack full).
    pub return_hits: u64,
    pub nested_calls: u64,
    pub threads_seen: u64,
    pub forks_cleaned: u64,
    pub execs: u64,
    /// Pending return hooks dropped because their frame was unwound some other way
    /// (longjmp, exception).
    pub abandoned_frames: u64,
    /// Threads caught inside a hooked call when memtrace attached.
    pub in_flight_at_attach: u64,
    /// Stacks unwound (only those that matter: see `recording`), the frames they
    /// held, and the time spent unwinding them: the cost of full stacks.
    pub stacks_captured: u64,
    pub frames_captured: u64,
    /// Of those frames, the ones taken from the thread's previous unwind (the same
    /// registers and stack words from there on: see `unwind/reuse.rs`).
    pub frames_reused: u64,
    pub unwind_ns: u64,
    /// How the calls were recorded (inline or at stops), and what it cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordStats>,
}

/// A hooked call returning through the trampoline (its thread's shadow stack was
/// full, or it has no slot): memtrace writes its return record at that stop.
#[derive(Clone, Copy, Debug)]
struct Frame {
    func: HookFn,
    /// Stack pointer at the function's entry.
    entry_sp: u64,
    real_ret: u64,
    /// The entry record's position.
    pos: u64,
    /// posix_memalign's first argument.
    out_ptr: u64,
}

#[derive(Debug, Default)]
struct Thread {
    /// Calls returning through the trampoline.
    frames: Vec<Frame>,
    /// The thread pointer, once known: the key of its slot in the recorder's table.
    tp: u64,
    /// Has had its first (PTRACE_EVENT_STOP) stop: later stop events are group-stops.
    started: bool,
    /// In a group-stop (job control), left there with PTRACE_LISTEN until its next stop.
    listening: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Child {
    /// A forked child that has not yet had its initial stop: clean it then, putting
    /// back these return addresses (the forking thread's pending calls at the fork).
    ForkPending(Vec<fork::Swapped>),
    /// A vfork child: it shares our target's memory (breakpoints included) until it
    /// execs or exits, so it stays traced and its hits just run out of line.
    Vfork,
}

pub struct Tracer<'s> {
    pid: i32,
    sink: &'s mut dyn Sink,
    mem: Memory,
    scratch: Scratch,
    /// The recorder's memory and the records read from it (see `recording.rs`).
    rec: Option<recording::Recording>,
    /// Record inline (entries jump to thunks), not with a stop per call.
    inline_wanted: bool,
    /// The origin of the recorder's times (when records were read).
    clock: std::time::Instant,
    bps: Breakpoints,
    threads: HashMap<Tid, Thread>,
    children: HashMap<Tid, Child>,
    /// Stopped processes that are not our threads, whose fork event has not come yet.
    early_children: HashSet<Tid>,
    /// vfork children, and the thread pointer (slot) of the parent they run on.
    vfork_slots: HashMap<Tid, u64>,
    /// Signals that arrived while a system call was being injected, to deliver later.
    held_signals: HashMap<Tid, i32>,
    image: image::Image,
    walker: StackWalker,
    /// Frames kept per stack (`--depth`).
    depth: usize,
    /// Reused buffer for one stack's return addresses.
    frame_buf: Vec<u64>,
    /// Module generation: one more each time an object is unloaded (see [`Sink`]).
    generation: u32,
    pub stacks: StackTable,
    pub stats: TraceStats,
    /// The images the process went through, the one traced now last.
    pub images: Vec<ExecImage>,
    /// How long to poll for the next stop before sleeping (see `ptrace::Waiter`).
    spin: std::time::Duration,
    waiter: Waiter,
    mode: Mode,
    /// When to end the trace (`--duration`).
    deadline: Option<std::time::Instant>,
    commands: Option<std::sync::mpsc::Receiver<Command>>,
    /// Restores the code if memtrace dies while attached (see `ptrace::Guardian`).
    guardian: Option<ptrace::Guardian>,
    /// Pause, ticks: what the stop loop does besides the target's stops.
    control: control::Control,
    /// Stops that came while every thread was being stopped, to handle next.
    deferred: VecDeque<Stop>,
    /// A terminating signal that came while threads were being stopped: the stop
    /// loop detaches next (see `stopwait.rs`).
    signal: Option<i32>,
    /// What a detach could not do (threads that did not stop), in one line.
    left_behind: Option<String>,
    /// Threads held stopped by `stop_all` until its `resume_all`.
    holding: HashSet<Tid>,
    scan: ScanState,
    /// Site breakpoints and the front end that drives a stop at one (`debug.rs`).
    debug: Option<Box<debug::Session<'s>>>,
}

/// The reachability scans of one process image.
#[derive(Debug, Default)]
struct ScanState {
    /// The scan at the program's end was made (at `_exit` or at the exit stop).
    at_exit: bool,
    /// Why the scan at the end could not be made.
    error: Option<String>,
    /// Stack pointers of exited threads at their exit, oldest first: their stacks
    /// (which glibc keeps for later threads) are stale below that.
    exit_sps: Vec<u64>,
    /// The stack pointer of each thread that called exit(), at the call.
    exit_calls: HashMap<Tid, u64>,
}

impl<'s> Tracer<'s> {
    /// Launches `path` under trace and prepares its image; the program has not run a
    /// single instruction of its own when this returns.
    pub fn launch(
        path: &std::ffi::CString,
        argv: &[std::ffi::CString],
        sink: &'s mut dyn Sink,
        waiter: Waiter,
        setup: Setup,
    ) -> Result<Tracer<'s>, TraceError> {
        let pid = ptrace::spawn_seized(path, argv).map_err(|e| TraceError::Start(e.to_string()))?;
        match ptrace::wait_tid(pid).map_err(TraceError::Wait)? {
            Stop::Event {
                event: PtraceEvent::Exec,
                ..
            } => {}
            other => {
                return Err(TraceError::Start(format!(
                    "unexpected first stop {other:?}"
                )))
            }
        }
        let mem = Memory::open(pid).map_err(|e| TraceError::Setup(e.to_string()))?;
        let mut t = Tracer::new(pid, sink, mem, waiter, Mode::Launch);
        t.apply(setup);
        t.images.push(ExecImage::of(pid));
        t.threads.insert(
            pid,
            Thread {
                started: true,
                ..Thread::default()
            },
        );
        t.stats.threads_seen = 1;
        t.setup_image(pid)?;
        Ok(t)
    }

    fn new(pid: i32, sink: &'s mut dyn Sink, mem: Memory, waiter: Waiter, mode: Mode) -> Self {
        Tracer {
            pid,
            sink,
            mem,
            scratch: Scratch::default(),
            rec: None,
            inline_wanted: true,
            clock: std::time::Instant::now(),
            bps: Breakpoints::default(),
            threads: HashMap::new(),
            children: HashMap::new(),
            early_children: HashSet::new(),
            vfork_slots: HashMap::new(),
            held_signals: HashMap::new(),
            image: image::Image::default(),
            walker: StackWalker::new(),
            depth: DEFAULT_DEPTH,
            frame_buf: Vec::new(),
            generation: 0,
            stacks: StackTable::new(),
            stats: TraceStats::default(),
            images: Vec::new(),
            spin: std::time::Duration::ZERO,
            waiter,
            mode,
            deadline: None,
            commands: None,
            guardian: None,
            control: control::Control::default(),
            deferred: VecDeque::new(),
            signal: None,
            left_behind: None,
            holding: HashSet::new(),
            scan: ScanState::default(),
            debug: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Ends the trace (detaching) at `deadline`.
    pub fn set_deadline(&mut self, deadline: std::time::Instant) {
        self.deadline = Some(deadline);
    }

    /// A sender of commands to this tracer (for a UI thread). Dropping it detaches.
    /// The UI thread must be created after the [`Waiter`] (which blocks SIGCHLD in the
    /// threads created after it), as must every other thread of memtrace.
    pub fn command_sender(&mut self) -> CommandSender {
        let (tx, rx) = std::sync::mpsc::channel();
        self.commands = Some(rx);
        CommandSender {
            tx,
            wake: self.waiter.handle(),
        }
    }

    fn apply(&mut self, setup: Setup) {
        self.inline_wanted = !setup.stops;
        self.set_depth(setup.depth);
    }

    /// Keeps at most `depth` frames per stack (at least one: the allocator's caller).
    pub fn set_depth(&mut self, depth: usize) {
        self.depth = depth.max(1);
        if self.depth == 1 {
            // The caller alone: no stack to copy.
            if let Some(r) = &self.rec {
                r.ring.set_copy_len(0);
            }
        }
    }

    /// Polls for the next stop for `spin` before sleeping. Ignored (no polling) when
    /// memtrace may run on one CPU only: polling there would take the CPU from the
    /// very program whose stop it waits for.
    pub fn set_poll(&mut self, spin: std::time::Duration) {
        self.spin = if ptrace::cpus_allowed() > 1 {
            spin
        } else {
            std::time::Duration::ZERO
        };
    }

    /// Runs the target to its end, or until the trace is ended (deadline, signal,
    /// command), then detaches.
    pub fn run(&mut self) -> Result<End, TraceError> {
        if self.mode == Mode::Launch {
            self.resume(self.pid);
        }
        loop {
            if self.signal.take().is_some() {
                return self.detach();
            }
            // The records written since the last look: with inline recording, the
            // only news of most allocator calls.
            let busy = self.drain();
            // Stops taken out of turn (while every thread was being stopped, or one
            // was stepped) come first; not while paused, when they wait for the resume.
            let deferred = if self.is_paused() {
                None
            } else {
                self.deferred.pop_front()
            };
            let wake = match deferred {
                Some(stop) => Wake::Stop(stop),
                // A full batch: more are waiting; look for stops, but do not sleep.
                None if busy == DrainBatch::Full => match self
                    .waiter
                    .poll_now(self.next_wake())
                    .map_err(TraceError::Wait)?
                {
                    Some(w) => w,
                    None => continue,
                },
                // Caught up with the writers: let records pile up a moment before
                // reading them. A reader that stays on their heels reads every line
                // they are still writing, and each of those comes back to them from
                // this CPU: it slowed a program writing 9 GB/s of records by half.
                None if busy == DrainBatch::Some => {
                    let wake = self.next_wake_or_look_soon();
                    self.waiter
                        .wait(Duration::ZERO, wake)
                        .map_err(TraceError::Wait)?
                }
                None => {
                    let wake = self.next_wake_or_look();
                    self.waiter
                        .wait(self.spin, wake)
                        .map_err(TraceError::Wait)?
                }
            };
            match wake {
                Wake::Stop(stop) => {
                    let ends = matches!(stop, Stop::Exited { .. } | Stop::Killed { .. });
                    if self.is_paused() && !ends {
                        self.deferred.push_back(stop);
                        continue;
                    }
                    if ends {
                        // The last records, and every event held back.
                        self.flush();
                    }
                    let end = self.handle(stop)?;
                    self.sink.tick(&self.stacks);
                    if let Some(end) = end {
                        // The process is gone: nothing for the guardian to restore.
                        if let Some(g) = &self.guardian {
                            g.disarm();
                        }
                        return Ok(end);
                    }
                }
                Wake::Command => {
                    if self.on_commands() {
                        return self.detach();
                    }
                }
                Wake::Deadline => {
                    if self.on_wake_time() {
                        return self.detach();
                    }
                }
                Wake::Signal(_) => return self.detach(),
            }
        }
    }

    fn handle(&mut self, stop: Stop) -> Result<Option<End>, TraceError> {
        if let Some(t) = self.threads.get_mut(&stop.tid()) {
            t.listening = false;
        }
        match stop {
            Stop::Exited { tid, code } => {
                if tid == self.pid {
                    return Ok(Some(End::Exited(code)));
                }
                self.gone(tid);
            }
            Stop::Killed { tid, signal } => {
                if tid == self.pid {
                    return Ok(Some(End::Signaled(signal)));
                }
                self.gone(tid);
            }
            Stop::Signal { tid, signal } => {
                if signal == libc::SIGTRAP {
                    self.on_trap(tid);
                } else {
                    // Not ours: delivered to the target unchanged.
                    let _ = ptrace::cont(tid, signal);
                }
            }
            Stop::Event { tid, event, signal } => self.on_event(tid, event, signal)?,
        }
        Ok(None)
    }

    fn gone(&mut self, tid: Tid) {
        self.drain_all();
        self.unregister_thread(tid);
        self.threads.remove(&tid);
        self.children.remove(&tid);
        self.vfork_done(tid);
        self.early_children.remove(&tid);
        self.held_signals.remove(&tid);
        self.holding.remove(&tid);
    }

    /// Resumes a thread, delivering a signal held back during an injection.
    fn resume(&mut self, tid: Tid) {
        let sig = self.held_signals.remove(&tid).unwrap_or(0);
        // ESRCH: the thread was killed meanwhile (exit_group); its exit is reported next.
        let _ = ptrace::cont(tid, sig);
    }

    fn on_event(&mut self, tid: Tid, event: PtraceEvent, signal: i32) -> Result<(), TraceError> {
        match event {
            PtraceEvent::Clone => {
                if let Ok(new) = ptrace::event_msg(tid) {
                    self.stats.threads_seen += 1;
                    // If its first stop came before this event, it is known and running
                    // already; otherwise that stop is still to come. If it ran its
                    // whole life before this event was read, it is no thread of ours.
                    if self.threads.contains_key(&(new as Tid)) || !stopwait::reaped(new as Tid) {
                        self.threads.entry(new as Tid).or_default();
                    }
                }
                self.resume(tid);
            }
            PtraceEvent::Fork | PtraceEvent::Vfork => {
                if let Ok(child) = ptrace::event_msg(tid) {
                    self.on_fork_event(tid, child as Tid, event == PtraceEvent::Vfork);
                }
                self.resume(tid);
            }
            PtraceEvent::Exec => {
                if self.children.remove(&tid).is_some() {
                    self.vfork_done(tid);
                    // A vfork child became a new program: it no longer shares our memory.
                    let _ = ptrace::detach(tid, 0);
                } else {
                    self.on_exec()?;
                    self.resume(self.pid);
                }
            }
            PtraceEvent::Stop => self.on_stop_event(tid, signal),
            PtraceEvent::Exit => {
                // The thread is about to exit and its memory is still there: read the
                // records so far, and scan if this is the end of the process.
                self.drain_all();
                self.on_thread_exit(tid);
                self.release_thread_slot(tid);
                self.resume(tid);
            }
            _ => self.resume(tid),
        }
        Ok(())
    }

    /// PTRACE_EVENT_STOP: a new thread's or child's first stop, or a group-stop.
    fn on_stop_event(&mut self, tid: Tid, signal: i32) {
        if let Some(kind) = self.children.remove(&tid) {
            self.child_started(tid, kind);
            return;
        }
        match self.threads.get_mut(&tid) {
            Some(t) if !t.started => {
                t.started = true;
                // A new thread: registered before it runs a single instruction.
                if let Ok(regs) = ptrace::get_regs(tid) {
                    self.register_thread(tid, &regs);
                }
                self.resume(tid);
            }
            Some(_) => {
                if matches!(
                    signal,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                ) {
                    // Group-stop: stay stopped (job control works) but keep reporting.
                    if ptrace::listen(tid).is_ok() {
                        if let Some(t) = self.threads.get_mut(&tid) {
                            t.listening = true;
                        }
                    }
                } else {
                    self.resume(tid);
                }
            }
            None => {
                if thread_group_of(tid) == Some(self.pid) {
                    // A new thread whose clone event is still queued.
                    self.threads.insert(
                        tid,
                        Thread {
                            started: true,
                            ..Thread::default()
                        },
                    );
                    if let Ok(regs) = ptrace::get_regs(tid) {
                        self.register_thread(tid, &regs);
                    }
                    self.resume(tid);
                } else {
                    // A fork child whose fork event is still queued: hold it.
                    self.early_children.insert(tid);
                }
            }
        }
    }

    fn on_exec(&mut self) -> Result<(), TraceError> {
        self.stats.execs += 1;
        self.images.push(ExecImage::of(self.pid));
        // The old image's last records (memtrace's mapping of its ring outlives it).
        self.flush();
        self.forget_image();
        self.mem = Memory::open(self.pid).map_err(|e| TraceError::Setup(e.to_string()))?;
        self.sink.event(Event::Exec);
        self.setup_image(self.pid)
    }

    /// After exec: every other thread is gone; the image, its breakpoints and scratch
    /// pages too.
    fn forget_image(&mut self) {
        if let Some(g) = &self.guardian {
            g.clear();
        }
        self.threads.clear();
        self.threads.insert(
            self.pid,
            Thread {
                started: true,
                ..Thread::default()
            },
        );
        self.held_signals.clear();
        self.holding.clear();
        self.scan = ScanState::default();
        self.scratch = Scratch::default();
        self.rec = None;
        self.bps = Breakpoints::default();
        self.image = image::Image::default();
        self.walker = StackWalker::new();
    }

    fn on_trap(&mut self, tid: Tid) {
        let Ok(mut regs) = ptrace::get_regs(tid) else {
            return;
        };
        let at = Native::pc(&regs).wrapping_sub(Native::TRAP_PC_ADJUST);
        if self.scratch.is_trampoline(at) {
            self.on_return(tid, regs);
            return;
        }
        if self.rec.as_ref().is_some_and(|r| r.is_stub(at)) {
            // The return stub found no frame for this return on the shadow stack.
            Native::set_pc(&mut regs, at);
            if self.finish_stub_return(tid, &mut regs) {
                let _ = ptrace::set_regs(tid, &regs);
                self.resume(tid);
            } else {
                eprintln!("memtrace: internal error: thread {tid} returned through the stub with no pending call");
                let _ = ptrace::cont(tid, libc::SIGSEGV);
            }
            return;
        }
        let Some(bp) = self.bps.get(at) else {
            // A SIGTRAP that is not ours (the program's own int3 or raise).
            let _ = ptrace::cont(tid, libc::SIGTRAP);
            return;
        };
        let (kind, ool) = (bp.kind, bp.ool);
        let slow = self
            .rec
            .as_ref()
            .and_then(|r| r.sites.iter().find(|s| s.slow_trap == at))
            .map(|s| s.entry);
        let at = match slow {
            Some(entry) => {
                // A thunk's slow path: registers as at the function's entry, which is
                // where the thread is, as far as anyone can tell.
                if let Some(r) = self.rec.as_mut() {
                    r.stats.slow_path_stops += 1;
                }
                Native::set_pc(&mut regs, entry);
                entry
            }
            None => at,
        };
        self.on_breakpoint(tid, kind, &mut regs);
        if self.debug_stop(tid, at, &regs) {
            return; // a site breakpoint: the debugger session resumed the threads
        }
        // An entry that jumps to its thunk now (it trapped before the switch): its
        // first instruction alone would return into the jump's bytes; the thunk's
        // displaced instructions go past them.
        let ool = self
            .rec
            .as_ref()
            .and_then(|r| r.sites.iter().find(|s| s.entry == at && s.jumping))
            .map_or(ool, |s| s.displaced);
        Native::set_pc(&mut regs, ool);
        let _ = ptrace::set_regs(tid, &regs);
        self.resume(tid);
    }
}

impl Tracer<'_> {
    /// What a hit of one of our breakpoints does (the thread has not moved on yet):
    /// the same whether the thread ran into it or a debugger stepped it there.
    fn on_breakpoint(&mut self, tid: Tid, kind: BpKind, regs: &mut memtrace_arch::Regs) {
        self.stats.breakpoint_hits += 1;
        match kind {
            BpKind::Loader => self.rescan(tid),
            BpKind::Unwind => self.record_unwind(tid, regs),
            BpKind::Hook(f) => self.on_entry(tid, f, regs),
            BpKind::ExitCall => self.on_exit_call(tid, Native::sp(regs)),
            BpKind::Exit => self.scan_at_exit(tid),
        }
    }
}

/// The thread group (process) a thread belongs to, from `/proc/TID/status`.
fn thread_group_of(tid: Tid) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

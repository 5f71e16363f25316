//! A launch with the live view: the tracer on a thread of its own (it owns the
//! process: every ptrace call comes from it), the view on this one (it owns the
//! terminal and the symbolizer). They talk through two channels: updates to the view,
//! requests to the tracer.

use super::app::{App, Mode, Request};
use super::debugger::UiFrontend;
use super::feed::Feed;
use super::run::{self, UiEvent};
use super::snapshot::TargetState;
use crate::cli::Common;
use crate::debug::{BreakSpec, DebugCommand};
use crate::event::{Event, StackTable};
use crate::heap::Heap;
use crate::maps::Module;
use crate::report::signal_name;
use crate::symbols::Symbolizer;
use crate::tracer::{End, Scan, ScanStats, Sink, TraceStats, Tracer};
use std::ffi::CString;
use std::sync::mpsc;

/// What a finished trace leaves for the report.
pub struct Traced {
    pub pid: i32,
    pub end: End,
    pub heap: Heap,
    pub stacks: StackTable,
    pub trace: TraceStats,
    /// Holds every module seen; None when no object was ever reported.
    pub sym: Option<Symbolizer>,
    /// The reachability scan's figures, when one was made.
    pub scan: Option<ScanStats>,
    /// Why the scan at the end could not be made, when the tracer knows.
    pub scan_error: Option<String>,
}

impl Sink for Feed {
    fn event(&mut self, ev: Event) {
        Feed::event(self, &ev);
    }
    fn modules(&mut self, pid: i32, modules: &[Module], generation: u32) {
        Feed::modules(self, pid, modules, generation);
    }
    fn tick(&mut self, stacks: &StackTable) {
        Feed::tick(self, stacks, false);
    }
    fn live_blocks(&mut self) -> Vec<(u64, u64)> {
        self.heap.live_blocks().map(|(p, b)| (p, b.size)).collect()
    }
    fn classified(&mut self, scan: &Scan) {
        self.heap
            .classify(&scan.blocks, &scan.kinds, &scan.indirect_bytes);
        self.scan = Some(scan.stats);
        self.send_leak_check();
    }
}

/// The tracer thread's work: launch, trace to the end.
fn trace(
    path: &CString,
    argv: &[CString],
    feed: &mut Feed,
    pid_tx: &mpsc::Sender<i32>,
    poll: u64,
    depth: usize,
    debugger: (Vec<BreakSpec>, UiFrontend, mpsc::Receiver<BreakSpec>),
) -> Result<(End, StackTable, TraceStats, i32), String> {
    let mut t = Tracer::launch(path, argv, feed).map_err(|e| e.to_string())?;
    let (breaks, frontend, arm_rx) = debugger;
    t.set_debugger(breaks, Box::new(frontend), Some(arm_rx));
    let pid = t.pid();
    let _ = pid_tx.send(pid);
    t.set_poll(std::time::Duration::from_micros(poll));
    t.set_depth(depth);
    let end = t.run().map_err(|e| e.to_string());
    let scan_error = t.scan_error().map(String::from);
    let (stacks, stats) = (std::mem::take(&mut t.stacks), t.stats);
    drop(t);
    feed.scan_error = scan_error;
    Ok((end?, stacks, stats, pid))
}

pub fn end_label(end: End) -> String {
    match end {
        End::Exited(code) => format!("exited with status {code}"),
        End::Signaled(sig) => format!("killed by {}", signal_name(sig)),
    }
}

/// Launches `path` under trace with the live view; returns when the user has quit
/// the view after the trace ended. `breaks` are armed from the start (`--break-at`);
/// more come from the sites table's `b`.
pub fn launch(
    path: &CString,
    argv: &[CString],
    command: &[String],
    common: &Common,
    breaks: Vec<BreakSpec>,
) -> Result<Traced, String> {
    let (ui_tx, ui_rx) = mpsc::channel::<UiEvent>();
    // The debugger's commands (stopped view) and breakpoints (sites table) go to the
    // tracer thread on channels of their own.
    let (debug_tx, debug_rx) = mpsc::channel::<DebugCommand>();
    let (arm_tx, arm_rx) = mpsc::channel::<BreakSpec>();
    let frontend_tx = ui_tx.clone();
    let (pid_tx, pid_rx) = mpsc::channel::<i32>();
    let (path, argv) = (path.clone(), argv.to_vec());
    let (poll, depth) = (common.poll_us, common.depth as usize);
    let feed_tx = ui_tx.clone();
    let tracer = std::thread::spawn(move || {
        let mut feed = Feed::new(feed_tx.clone());
        // Whatever happens to the trace, the view is told it ended (a panic included),
        // or it would wait for an end that never comes.
        let traced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let frontend = UiFrontend {
                updates: frontend_tx,
                commands: debug_rx,
            };
            let debugger = (breaks, frontend, arm_rx);
            trace(&path, &argv, &mut feed, &pid_tx, poll, depth, debugger)
        }));
        let (result, state) = match traced {
            Ok(Ok((end, stacks, stats, pid))) => {
                let state = TargetState::Ended(end_label(end));
                feed.set_state(state.clone(), &stacks);
                (Ok((end, stacks, stats, pid)), state)
            }
            Ok(Err(e)) => (
                Err(e.clone()),
                TargetState::Ended(format!("trace failed: {e}")),
            ),
            Err(_) => {
                let e = "the tracer thread panicked".to_string();
                (Err(e.clone()), TargetState::Ended(e))
            }
        };
        let _ = feed_tx.send(UiEvent::Update(run::Update::Ended(state)));
        result.map(|(end, stacks, stats, pid)| (end, feed, stacks, stats, pid))
    });
    let Ok(pid) = pid_rx.recv() else {
        // The tracer thread ended before the program started: its error says why.
        return match tracer.join() {
            Ok(Err(e)) => Err(e),
            _ => Err("the tracer stopped before the program started".into()),
        };
    };
    let app = App::new(pid, command.join(" "), Mode::Launch);
    let sym = {
        // Dropped before the join below: a tracer waiting for a debugger command then
        // sees the channel closed, and continues.
        let mut requests = |r: Request| match r {
            Request::Debug(c) => {
                let _ = debug_tx.send(c);
            }
            Request::Break(spec) => {
                let _ = arm_tx.send(spec);
            }
            // Signals need no ptrace: any thread may send them. The tracer sees what
            // becomes of the program as for any other signal.
            Request::Kill => {
                let _ = crate::ptrace::kill(pid, libc::SIGKILL);
            }
            Request::Interrupt => {
                let _ = crate::ptrace::kill(pid, libc::SIGINT);
            }
            _ => {}
        };
        run::run(app, ui_rx, ui_tx, &mut requests, None)
    }
    .map_err(|e| format!("terminal: {e}"))?;
    let (end, feed, stacks, trace, pid) = tracer
        .join()
        .map_err(|_| "the tracer thread panicked".to_string())??;
    Ok(Traced {
        pid,
        end,
        heap: feed.heap,
        stacks,
        trace,
        sym,
        scan: feed.scan,
        scan_error: feed.scan_error,
    })
}

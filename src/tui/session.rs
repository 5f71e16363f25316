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
use crate::tracer::{End, Sink, TraceStats, Tracer};
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
    let tracer = std::thread::spawn(
        move || -> Result<(End, Feed, StackTable, TraceStats, i32), String> {
            let mut feed = Feed::new(feed_tx);
            let mut t = Tracer::launch(&path, &argv, &mut feed).map_err(|e| e.to_string())?;
            let frontend = UiFrontend {
                updates: frontend_tx,
                commands: debug_rx,
            };
            t.set_debugger(breaks, Box::new(frontend), Some(arm_rx));
            let pid = t.pid();
            let _ = pid_tx.send(pid);
            t.set_poll(std::time::Duration::from_micros(poll));
            t.set_depth(depth);
            let end = t.run().map_err(|e| e.to_string());
            let (stacks, stats) = (std::mem::take(&mut t.stacks), t.stats);
            drop(t);
            let end = end?;
            feed.ended(TargetState::Ended(end_label(end)), &stacks);
            Ok((end, feed, stacks, stats, pid))
        },
    );
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
            // Killing needs no tracer: the signal comes back to it as the end. (Until
            // the stop loop takes commands, pause, resume and detach do nothing.)
            Request::Kill => {
                let _ = crate::ptrace::kill(pid, libc::SIGKILL);
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
    })
}

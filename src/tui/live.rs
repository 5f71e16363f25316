//! A trace with the live view: the tracer on a thread of its own (it owns the
//! process: every ptrace call comes from it), the view on this one (it owns the
//! terminal and the symbolizer). Updates go to the view through one channel;
//! requests go to the tracer as [`Command`]s, which wake it wherever it waits.

use super::app::{App, Mode, Request};
use super::debugger::UiFrontend;
use super::feed::{Feed, SNAPSHOT_EVERY};
use super::run::{self, UiEvent};
use super::snapshot::TargetState;
use crate::cli::Common;
use crate::debug::{BreakSpec, DebugCommand};
use crate::ptrace::Waiter;
use crate::report::signal_name;
use crate::session::{self, Start, StartError, Traced};
use crate::tracer::{Command, CommandSender, End};
use std::sync::mpsc;
use std::time::Instant;

pub fn end_label(end: End) -> String {
    match end {
        End::Exited(code) => format!("exited with status {code}"),
        End::Signaled(sig) => format!("killed by {}", signal_name(sig)),
        End::Detached => "detached: the program runs on untraced".into(),
    }
}

/// What the tracer thread hands back.
type Outcome = Result<(Feed, session::TracerEnd), StartError>;

/// Traces with the live view; returns when the user has quit the view after the
/// trace ended. `breaks` are armed from the start (`--break-at`); more come from the
/// sites table's `b`.
pub fn run(
    start: Start,
    command: String,
    common: &Common,
    breaks: Vec<BreakSpec>,
    waiter: Waiter,
    started: Instant,
) -> Result<Traced, StartError> {
    let mode = if start.is_attach() {
        Mode::Attach
    } else {
        Mode::Launch
    };
    let (ui_tx, ui_rx) = mpsc::channel::<UiEvent>();
    // The debugger's commands (for the stopped view) go to the tracer thread on a
    // channel of their own: it reads them while the program is stopped.
    let (debug_tx, debug_rx) = mpsc::channel::<DebugCommand>();
    let (ready_tx, ready_rx) = mpsc::channel::<(i32, CommandSender)>();
    let (feed_tx, frontend_tx) = (ui_tx.clone(), ui_tx.clone());
    let common_copy = common.clone();
    let tracer = std::thread::spawn(move || -> Outcome {
        let mut feed = Feed::new(feed_tx.clone(), started);
        if start.is_attach() {
            feed = feed.attached();
        }
        // Whatever happens to the trace, the view is told it ended (a panic included),
        // or it would wait for an end that never comes.
        let traced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let frontend = UiFrontend {
                updates: frontend_tx,
                commands: debug_rx,
            };
            let mut t = session::start_tracer(&start, &mut feed, waiter, &common_copy)?;
            session::configure(&mut t, &common_copy, started);
            t.set_tick(SNAPSHOT_EVERY);
            t.set_debugger(breaks, Box::new(frontend));
            let _ = ready_tx.send((t.pid(), t.command_sender()));
            session::run_to_end(t).map_err(|message| StartError { message, code: 1 })
        }));
        let result = match traced {
            Ok(r) => r,
            Err(_) => Err(StartError {
                message: "the tracer thread panicked".into(),
                code: 1,
            }),
        };
        let state = match &result {
            Ok(end) => TargetState::Ended(end_label(end.end)),
            Err(e) => TargetState::Ended(format!("trace failed: {}", e.message)),
        };
        if let Ok(end) = &result {
            feed.set_state(state.clone(), &end.stacks);
        }
        let _ = feed_tx.send(UiEvent::Update(run::Update::Ended(state)));
        result.map(|end| (feed, end))
    });
    let Ok((pid, commands)) = ready_rx.recv() else {
        // The tracer thread ended before the program was traced: its error says why.
        return match tracer.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(StartError {
                message: "the tracer stopped before the program was traced".into(),
                code: 1,
            }),
        };
    };
    let app = App::new(pid, command, mode);
    let sym = {
        // Dropped before the join below: a tracer waiting for a debugger command then
        // sees the channel closed, and continues; a tracer still tracing sees its
        // command sender gone, and detaches.
        let mut requests = |r: Request| match r {
            Request::Debug(c) => {
                let _ = debug_tx.send(c);
            }
            Request::Break(spec) => commands.send(Command::Break(spec)),
            Request::Pause => commands.send(Command::Pause),
            Request::Resume => commands.send(Command::Resume),
            Request::Scan => commands.send(Command::Scan),
            Request::WatchMemory(on) => commands.send(Command::WatchMemory(on)),
            Request::Detach => commands.send(Command::Detach),
            // Signals need no ptrace: any thread may send them. The tracer sees what
            // becomes of the program as for any other signal.
            Request::Kill => {
                let _ = crate::ptrace::kill(pid, libc::SIGKILL);
            }
            Request::Interrupt => {
                let _ = crate::ptrace::kill(pid, libc::SIGINT);
            }
            Request::Quit => {}
        };
        run::run(app, ui_rx, ui_tx, &mut requests, None)
    }
    .map_err(|e| StartError {
        message: format!("terminal: {e}"),
        code: 1,
    })?;
    let (feed, end) = tracer.join().map_err(|_| StartError {
        message: "the tracer thread panicked".into(),
        code: 1,
    })??;
    Ok(Traced {
        pid: end.pid,
        end: end.end,
        ended_at: end.ended_at,
        heap: feed.heap,
        mappings: feed.mappings,
        stacks: end.stacks,
        trace: end.stats,
        sym,
        scan: feed.scan,
        scan_error: end.scan_error,
        unmatched_breaks: end.unmatched_breaks,
        images: end.images,
        left_behind: end.left_behind,
        status_after_detach: end.status_after_detach,
    })
}

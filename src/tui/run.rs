//! The UI thread: owns the terminal and the symbolizer, takes [`UiEvent`]s from one
//! channel (keys from an input thread, updates from the tracer side) and sends
//! [`Request`]s back. The terminal is restored on every way out, a panic included.

use super::app::{App, Mode, Request};
use super::snapshot::{Snapshot, TargetState};
use super::view;
use crate::maps::Module;
use crate::symbols::Symbolizer;
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the tracer side tells the UI.
#[derive(Clone, Debug)]
pub enum Update {
    Snapshot(Snapshot),
    /// The target's loaded objects changed (for the symbolizer).
    Modules {
        pid: i32,
        modules: Vec<Module>,
        generation: u32,
    },
    /// A new program image (exec): no earlier address means anything.
    Exec,
    /// The trace is over; the last snapshot came before this.
    Ended(TargetState),
    /// The program is stopped in the debugger (at a site breakpoint, or after a
    /// command): what it looks like, and what the last command printed.
    Stopped {
        view: Box<crate::debug::StopView>,
        output: String,
    },
    /// The program runs again; with why, when the session ended without `continue`.
    Resumed(Option<String>),
    /// A reachability scan classified the live blocks (`l`, or at the end).
    LeakCheck(LeakCheck),
    /// The mapping sites and counts, with each snapshot.
    Mappings(super::snapshot::MapSnapshot),
    /// A census of the process's memory, and when it was taken (since the trace
    /// began).
    Census(Box<(std::time::Duration, crate::census::Census)>),
}

/// What a reachability scan found, in valgrind's order: definitely, indirectly,
/// possibly lost, still reachable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeakCheck {
    /// When, since the trace started.
    pub at: std::time::Duration,
    /// (blocks, bytes) of each kind.
    pub kinds: [(u64, u64); 4],
}

/// The one channel the UI loop reads.
#[derive(Debug)]
pub enum UiEvent {
    Input(Event),
    /// The terminal can no longer be read: no key will come.
    InputClosed(String),
    Update(Update),
}

/// How long symbolizing may hold up one turn of the loop: new frames fill in over a
/// few turns instead of freezing the screen.
const SYMBOLIZE_BUDGET: Duration = Duration::from_millis(30);
/// Redraw at least this often (the clock, rates).
const TICK: Duration = Duration::from_millis(250);

/// Restores the terminal when dropped, however the loop ends.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs the view until the user quits (after the trace has ended: the final state
/// stays on screen until `q`); returns the symbolizer, which holds every module seen,
/// for the final report.
pub fn run(
    mut app: App,
    events: Receiver<UiEvent>,
    input: Sender<UiEvent>,
    requests: &mut dyn FnMut(Request),
    mut sym: Option<Symbolizer>,
) -> std::io::Result<Option<Symbolizer>> {
    let mut terminal = ratatui::try_init()?;
    let _guard = TerminalGuard;
    let stop_input = Arc::new(AtomicBool::new(false));
    let input_thread = spawn_input(input, stop_input.clone());
    // The user asked to end the trace (kill, detach): leave once it has ended.
    let mut leaving = false;
    let result = loop {
        app.load_sources();
        if let Err(e) = terminal.draw(|f| view::draw(f, &app)) {
            break Err(e);
        }
        let first = match events.recv_timeout(TICK) {
            Ok(ev) => Some(ev),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break Ok(()),
        };
        let mut quit = false;
        for ev in first.into_iter().chain(events.try_iter()) {
            match ev {
                UiEvent::Input(Event::Key(k)) if k.kind != KeyEventKind::Release => {
                    match app.on_key(k) {
                        Some(Request::Quit) => quit = true,
                        Some(r) => {
                            if app.stopped.is_some() && matches!(r, Request::Detach | Request::Kill)
                            {
                                // The tracer thread waits in the debugger: let it go first.
                                requests(Request::Debug(crate::debug::DebugCommand::Continue));
                            }
                            // q then k or d: the user is done; leave once the trace ends.
                            leaving |= matches!(r, Request::Detach | Request::Kill);
                            requests(r);
                        }
                        None => {}
                    }
                }
                UiEvent::Input(_) => {} // resize and the rest: the next draw adapts
                UiEvent::InputClosed(why) => {
                    // Nobody can press q any more: attach detaches now, launch lets
                    // the program run to its end; the view leaves when the trace ends.
                    app.input_error = Some(why);
                    if app.mode == Mode::Attach && !app.ended() {
                        requests(Request::Detach);
                    }
                    leaving = true;
                    quit |= app.ended();
                }
                UiEvent::Update(u) => quit |= on_update(&mut app, &mut sym, u) && leaving,
            }
        }
        if quit {
            break Ok(());
        }
        symbolize_some(&mut app, &mut sym);
    };
    stop_input.store(true, Ordering::Relaxed);
    let _ = input_thread.join();
    result.map(|()| sym)
}

fn on_update(app: &mut App, sym: &mut Option<Symbolizer>, u: Update) -> bool {
    match u {
        Update::Snapshot(s) => app.apply(s),
        Update::Modules {
            pid,
            modules,
            generation,
        } => sym
            .get_or_insert_with(|| Symbolizer::new(pid))
            .update_modules(&modules, generation),
        Update::Exec => {
            if let Some(s) = sym {
                s.reset();
            }
            app.resolved.clear();
        }
        Update::LeakCheck(check) => app.leak_check = Some(check),
        Update::Mappings(m) => app.apply_mappings(m),
        Update::Census(c) => {
            let (at, census) = *c;
            app.census.update(census, at);
        }
        Update::Ended(state) => {
            app.state = state;
            app.stopped = None;
            return true;
        }
        Update::Stopped { view, output } => app.on_stopped(*view, output),
        Update::Resumed(why) => app.on_resumed(why),
    }
    false
}

fn symbolize_some(app: &mut App, sym: &mut Option<Symbolizer>) {
    let Some(sym) = sym else { return };
    let started = Instant::now();
    let mut changed = false;
    for (generation, address) in app.unresolved(256) {
        let frames = sym.symbolize_in(address, generation);
        app.add_resolved(generation, address, frames);
        changed = true;
        if started.elapsed() > SYMBOLIZE_BUDGET {
            break;
        }
    }
    if changed {
        app.refresh();
    }
}

/// Reads terminal input on its own thread, polling so that it can be told to stop.
fn spawn_input(tx: Sender<UiEvent>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let ev = match event::poll(Duration::from_millis(100)) {
                Ok(true) => event::read(),
                Ok(false) => continue,
                Err(e) => Err(e),
            };
            let ev = match ev {
                Ok(ev) => UiEvent::Input(ev),
                // A signal (the window resized) interrupted the read: read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => UiEvent::InputClosed(e.to_string()),
            };
            let closed = matches!(ev, UiEvent::InputClosed(_));
            if tx.send(ev).is_err() || closed {
                return;
            }
        }
    })
}

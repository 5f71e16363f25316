//! The live view's side of the debugger: the stopped view's keys, arming site
//! breakpoints from the sites table, walking the leaks one by one, and the
//! [`Frontend`] that carries commands from the UI thread to the tracer thread.
//!
//! Keys in the stopped view (they do not clash with the sites table's, which are not
//! active while the program is stopped): `s` step, `n` next, `i` stepi, `I` nexti,
//! `f` finish, `c` continue, `u` / `d` up / down a frame, `a` switch the
//! disassembly between Intel and AT&T syntax, `?` help, `q` quit. In the sites table:
//! `b` stops at the selected site's next allocation (its whole stack must match), `B`
//! at its top frame only (any stack through that line); `]` / `[` move to the
//! next / previous site with its stack and source open: after the program has
//! ended the sites are its leaks, so that is a review of every leak in order.

use super::app::{App, Request};
use super::run::{UiEvent, Update};
use crate::debug::{BreakSpec, DebugCommand, Frontend, StopView};
use ratatui::crossterm::event::{KeyCode, KeyEvent};
use std::sync::mpsc::{Receiver, Sender};

impl App {
    /// A key while the program is stopped in the debugger.
    pub(super) fn stopped_key(&mut self, key: KeyEvent) -> Option<Request> {
        let cmd = match key.code {
            KeyCode::Char('s') => DebugCommand::Step,
            KeyCode::Char('n') => DebugCommand::Next,
            KeyCode::Char('i') | KeyCode::Char('S') => DebugCommand::StepInstruction,
            KeyCode::Char('I') | KeyCode::Char('N') => DebugCommand::NextInstruction,
            KeyCode::Char('f') => DebugCommand::Finish,
            KeyCode::Char('c') => {
                // Back to the live view now: no key may reach a session that is over.
                self.stopped = None;
                DebugCommand::Continue
            }
            KeyCode::Char('u') | KeyCode::Up => DebugCommand::Up,
            KeyCode::Char('d') | KeyCode::Down => DebugCommand::Down,
            KeyCode::Char('a') => DebugCommand::ToggleSyntax,
            KeyCode::Char('?') => {
                self.help = true;
                return None;
            }
            // The program cannot be killed or let go while the tracer thread is in
            // the session: continue first, then ask as in the live view.
            KeyCode::Char('q') => {
                self.stopped = None;
                self.prompt = super::app::Prompt::ConfirmQuit;
                return Some(Request::Debug(DebugCommand::Continue));
            }
            _ => return None,
        };
        Some(Request::Debug(cmd))
    }

    /// `b` / `B`: arm a breakpoint on the selected site. Grouped by top frame, a row
    /// is its top frame: `b` arms that too.
    pub(super) fn arm_break(&mut self, top_frame_only: bool) -> Option<Request> {
        let top_frame_only = top_frame_only || self.grouping == super::sites::Grouping::TopFrame;
        let stack = *self.selected_row()?.stacks.first()?;
        let spec = if top_frame_only {
            let top = self.frames_at(stack, 0).and_then(|f| f.last().cloned());
            match top {
                Some(crate::symbols::Frame {
                    file: Some(file),
                    line: Some(line),
                    ..
                }) => BreakSpec::Line { file, line },
                _ => BreakSpec::ReturnAddress(*self.stacks.get(&stack)?.frames.first()?),
            }
        } else {
            BreakSpec::Stack(stack)
        };
        self.notice = Some(format!(
            "breakpoint armed: the next allocation from {} stops the program",
            spec.label()
        ));
        Some(Request::Break(spec))
    }

    /// `]` / `[`: the next or previous site, its stack and source shown.
    pub(super) fn walk_leaks(&mut self, delta: i64) {
        if self.rows.is_empty() {
            return;
        }
        let was_open = self.detail.is_some();
        self.detail = None;
        if was_open {
            self.move_by(delta);
        }
        self.detail = Some(0);
        self.notice = Some(format!(
            "site {} of {}{}",
            self.selected + 1,
            self.rows.len(),
            if self.ended() {
                " still live at exit"
            } else {
                ""
            }
        ));
    }

    /// The tracer stopped the program, or moved it, and sent what it looks like.
    pub fn on_stopped(&mut self, view: StopView, output: String) {
        self.stopped = Some(Box::new(view));
        self.debug_output = output;
    }

    /// The program runs again; `why` says why the session ended without `continue`.
    pub fn on_resumed(&mut self, why: Option<String>) {
        self.stopped = None;
        if let Some(why) = why {
            self.notice = Some(why);
        }
    }
}

/// The debugger's front end in the TUI: sends each stop to the UI thread and waits
/// for the next command from it. A UI that has gone means continue.
pub struct UiFrontend {
    pub updates: Sender<UiEvent>,
    pub commands: Receiver<DebugCommand>,
}

impl Frontend for UiFrontend {
    fn next(&mut self, view: &StopView, output: &str) -> DebugCommand {
        let stopped = Update::Stopped {
            view: Box::new(view.clone()),
            output: output.to_string(),
        };
        if self.updates.send(UiEvent::Update(stopped)).is_err() {
            return DebugCommand::Continue;
        }
        self.commands.recv().unwrap_or(DebugCommand::Continue)
    }

    fn gone(&mut self, why: &str) {
        let _ = self
            .updates
            .send(UiEvent::Update(Update::Resumed(Some(why.to_string()))));
    }

    fn resumed(&mut self) {
        // Keys pressed while the session was ending are for no one.
        while self.commands.try_recv().is_ok() {}
        let _ = self.updates.send(UiEvent::Update(Update::Resumed(None)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::StackId;
    use crate::heap::{SiteCounts, Totals};
    use crate::symbols::Frame;
    use crate::tui::app::Mode;
    use crate::tui::snapshot::{NewStack, SiteSnapshot, Snapshot, TargetState};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use std::time::Duration;

    /// Two sites: 3 blocks from leak.c:12 (resolved), 1 from an unresolved address.
    fn app(state: TargetState) -> App {
        let mut app = App::new(7, "./leak".into(), Mode::Launch);
        let site = |s, n| SiteSnapshot {
            stack: StackId(s),
            counts: SiteCounts {
                allocs: n,
                live_blocks: n,
                live_bytes: 100 * n,
                ..Default::default()
            },
        };
        app.apply(Snapshot {
            elapsed: Duration::from_secs(1),
            state,
            totals: Totals::default(),
            errors: 0,
            sites: vec![site(0, 3), site(1, 1)],
            new_stacks: vec![
                NewStack {
                    id: StackId(0),
                    generation: 0,
                    frames: vec![0x1000, 0x2000],
                },
                NewStack {
                    id: StackId(1),
                    generation: 0,
                    frames: vec![0xbeef],
                },
            ],
        });
        let frame = Frame {
            address: 0x1000,
            function: Some("make_leak".into()),
            file: Some("/src/leak.c".into()),
            line: Some(12),
            ..Frame::default()
        };
        app.add_resolved(0, 0x1000, vec![frame]);
        app.refresh();
        app
    }

    fn key(app: &mut App, c: char) -> Option<Request> {
        app.on_key(KeyEvent::from(KeyCode::Char(c)))
    }

    fn render(app: &App) -> String {
        let mut t = Terminal::new(TestBackend::new(120, 30)).expect("terminal");
        t.draw(|f| crate::tui::view::draw(f, app)).expect("draw");
        let buf = t.backend().buffer();
        (0..30)
            .map(|y| (0..120).map(|x| buf[(x, y)].symbol()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn b_arms_the_whole_stack_and_capital_b_the_top_frame() {
        let mut a = app(TargetState::Running);
        assert_eq!(
            key(&mut a, 'b'),
            Some(Request::Break(BreakSpec::Stack(StackId(0))))
        );
        assert!(render(&a).contains("breakpoint armed"), "{}", render(&a));
        assert_eq!(
            key(&mut a, 'B'),
            Some(Request::Break(BreakSpec::Line {
                file: "/src/leak.c".into(),
                line: 12
            }))
        );
        // Not resolved yet: the return address stands for the top frame.
        key(&mut a, 'j');
        assert_eq!(
            key(&mut a, 'B'),
            Some(Request::Break(BreakSpec::ReturnAddress(0xbeef)))
        );
        // Grouped by top frame, b arms the top frame.
        key(&mut a, 'k');
        key(&mut a, 't');
        assert!(matches!(
            key(&mut a, 'b'),
            Some(Request::Break(BreakSpec::Line { .. }))
        ));
        // After the end there is nothing to stop.
        let mut ended = app(TargetState::Ended("exited with status 0".into()));
        assert_eq!(key(&mut ended, 'b'), None);
    }

    #[test]
    fn brackets_walk_the_leaks_with_stack_and_source() {
        let mut a = app(TargetState::Ended("exited with status 0".into()));
        key(&mut a, ']');
        assert_eq!((a.selected, a.detail), (0, Some(0)), "opens the first");
        let s = render(&a);
        assert!(s.contains("site 1 of 2 still live at exit"), "{s}");
        assert!(s.contains("#0  0x1000 make_leak leak.c:12"), "{s}");
        key(&mut a, ']');
        assert_eq!((a.selected, a.detail), (1, Some(0)));
        assert!(render(&a).contains("site 2 of 2"));
        key(&mut a, ']');
        assert_eq!(a.selected, 1, "stays at the last");
        key(&mut a, '[');
        assert_eq!((a.selected, a.detail), (0, Some(0)));
    }
}

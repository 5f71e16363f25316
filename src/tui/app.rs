//! The live view's state, and what each key does to it. Drawing is in `view.rs` and
//! never changes this state; the terminal and the tracer are driven elsewhere. A key
//! that concerns the traced program becomes a [`Request`] for the tracer side.

use super::sites::{sort_rows, Grouping, Row, Sites, SortKey, What};
use super::snapshot::{Snapshot, TargetState};
use crate::debug::{BreakSpec, DebugCommand, StopView};
use crate::event::StackId;
use crate::heap::Totals;
use crate::symbols::Frame;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Points of live-bytes history kept for the header's chart.
const HISTORY_POINTS: usize = 240;

/// What the user asked of the traced program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Pause,
    Resume,
    /// Let go of the program (attach: it runs on as before; launch: untraced).
    Detach,
    /// Kill the launched program.
    Kill,
    /// Ctrl-C in launch mode: the program gets SIGINT, as it would from the terminal
    /// without the view (raw mode keeps the terminal from sending it).
    Interrupt,
    /// Leave the view (the trace is over, or the request to end it was made).
    Quit,
    /// A debugger command for the stopped thread (the stopped view's keys).
    Debug(DebugCommand),
    /// Classify the live blocks now: a reachability scan (`l`).
    Scan,
    /// Arm a site breakpoint (`b`, `B` in the sites table).
    Break(BreakSpec),
    /// Read the process's memory every second (the mappings view is shown), or no
    /// more.
    WatchMemory(bool),
}

/// Which table the body shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Heap and mapping sites.
    Sites,
    /// The census of the process's memory (`m`).
    Mappings,
}

/// Whether memtrace started the program or joined it: `q` means different things.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Launch,
    Attach,
}

/// What the bottom line is busy with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prompt {
    None,
    /// Typing a filter.
    Filter(String),
    /// Launch mode, `q` pressed while the program runs: kill it or let it run?
    ConfirmQuit,
}

/// A stack as the tracer sent it.
#[derive(Clone, Debug)]
pub struct StackInfo {
    pub generation: u32,
    pub frames: Vec<u64>,
}

pub struct App {
    pub pid: i32,
    pub command: String,
    pub mode: Mode,
    pub state: TargetState,
    pub elapsed: Duration,
    pub totals: Totals,
    pub frees: u64,
    pub errors: u64,
    /// Live bytes at each snapshot, for the chart.
    pub history: VecDeque<u64>,
    pub stacks: HashMap<StackId, StackInfo>,
    /// Symbolized frames per (generation, return address), filled in as they resolve.
    pub resolved: HashMap<(u32, u64), Vec<Frame>>,
    pub sites: Sites,
    pub grouping: Grouping,
    pub sort: SortKey,
    pub reverse: bool,
    /// Applied filter (lower case); empty: everything.
    pub filter: String,
    pub prompt: Prompt,
    pub selected: usize,
    /// The detail pane is open, with this frame of the selected site's stack selected.
    pub detail: Option<usize>,
    pub help: bool,
    /// Rows as of the last change (recomputed by [`App::refresh`]).
    pub rows: Vec<Row>,
    /// Why the terminal can no longer be read, if it cannot.
    pub input_error: Option<String>,
    /// Source files by path, as lines; None when the file cannot be read.
    pub sources: HashMap<String, Option<Vec<String>>>,
    /// The program is stopped in the debugger: what the stopped view shows.
    pub stopped: Option<Box<StopView>>,
    /// What the last debugger command printed.
    pub debug_output: String,
    /// The last reachability scan's outcome.
    pub leak_check: Option<super::run::LeakCheck>,
    /// A one-line message for the footer (a breakpoint armed, a session ended).
    pub notice: Option<String>,
    pub view: View,
    /// The mapping calls counted, as of the last snapshot.
    pub map_totals: crate::mappings::MapTotals,
    /// The mappings view's censuses.
    pub census: super::census::CensusView,
}

impl App {
    pub fn new(pid: i32, command: String, mode: Mode) -> App {
        App {
            pid,
            command,
            mode,
            state: TargetState::Running,
            elapsed: Duration::ZERO,
            totals: Totals::default(),
            frees: 0,
            errors: 0,
            history: VecDeque::new(),
            stacks: HashMap::new(),
            resolved: HashMap::new(),
            sites: Sites::default(),
            grouping: Grouping::Stack,
            sort: SortKey::LiveBytes,
            reverse: false,
            filter: String::new(),
            prompt: Prompt::None,
            selected: 0,
            detail: None,
            help: false,
            rows: Vec::new(),
            input_error: None,
            sources: HashMap::new(),
            stopped: None,
            leak_check: None,
            debug_output: String::new(),
            notice: None,
            view: View::Sites,
            map_totals: Default::default(),
            census: Default::default(),
        }
    }

    /// The frame selected in the detail pane, if the pane is open.
    pub fn detail_frame(&self) -> Option<Frame> {
        let at = self.detail?;
        let stack = *self.selected_row()?.stacks.first()?;
        self.stack_frames(stack).into_iter().nth(at)
    }

    /// Reads the source file of the frame selected in the detail pane, once, so that
    /// drawing finds it (drawing does no I/O).
    pub fn load_sources(&mut self) {
        let Some(file) = self.detail_frame().and_then(|f| f.file) else {
            return;
        };
        self.sources.entry(file).or_insert_with_key(|file| {
            std::fs::read_to_string(file)
                .ok()
                .map(|t| t.lines().map(|l| l.replace('\t', "    ")).collect())
        });
    }

    pub fn apply(&mut self, snap: Snapshot) {
        if snap.totals.allocs < self.totals.allocs {
            // A new program image (exec): nothing of the old heap is left.
            self.sites.clear();
            self.stacks.clear();
            self.history.clear();
            self.census.clear();
        }
        for s in &snap.new_stacks {
            self.stacks.insert(
                s.id,
                StackInfo {
                    generation: s.generation,
                    frames: s.frames.clone(),
                },
            );
        }
        self.sites.update(&snap);
        self.elapsed = snap.elapsed;
        self.state = snap.state.clone();
        self.totals = snap.totals;
        self.frees = snap.totals.frees;
        self.errors = snap.errors;
        self.history.push_back(snap.totals.live_bytes);
        while self.history.len() > HISTORY_POINTS {
            self.history.pop_front();
        }
        self.refresh();
    }

    /// The mapping sites and counts that came with the last snapshot.
    pub fn apply_mappings(&mut self, m: super::snapshot::MapSnapshot) {
        self.sites
            .update_what(super::sites::What::Map, m.elapsed, &m.sites);
        self.map_totals = m.totals;
        self.refresh();
    }

    /// The frames at a stack's `i`-th return address, if resolved.
    pub fn frames_at(&self, stack: StackId, i: usize) -> Option<&[Frame]> {
        let info = self.stacks.get(&stack)?;
        let a = *info.frames.get(i)?;
        self.resolved.get(&(info.generation, a)).map(Vec::as_slice)
    }

    /// A stack's source-level frames (inlined ones expanded); unresolved addresses
    /// appear as bare frames.
    pub fn stack_frames(&self, stack: StackId) -> Vec<Frame> {
        let Some(info) = self.stacks.get(&stack) else {
            return Vec::new();
        };
        info.frames
            .iter()
            .flat_map(|&a| match self.resolved.get(&(info.generation, a)) {
                Some(f) => f.clone(),
                None => vec![Frame {
                    address: a,
                    ..Frame::default()
                }],
            })
            .collect()
    }

    /// Addresses to symbolize next, most visible first: the top frame of every site,
    /// then the selected site's whole stack.
    pub fn unresolved(&self, limit: usize) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        let want = |g: u32, a: u64, out: &mut Vec<(u32, u64)>| {
            if !self.resolved.contains_key(&(g, a)) && !out.contains(&(g, a)) {
                out.push((g, a));
            }
        };
        if let Some(row) = self.rows.get(self.selected) {
            for s in &row.stacks {
                if let Some(info) = self.stacks.get(s) {
                    for &a in &info.frames {
                        want(info.generation, a, &mut out);
                    }
                }
            }
        }
        for info in self.stacks.values() {
            if out.len() >= limit {
                break;
            }
            if let Some(&a) = info.frames.first() {
                want(info.generation, a, &mut out);
            }
        }
        out.truncate(limit);
        out
    }

    pub fn add_resolved(&mut self, generation: u32, address: u64, frames: Vec<Frame>) {
        self.resolved.insert((generation, address), frames);
    }

    /// Recomputes the rows (after new counts, new symbols, a new sort or filter),
    /// keeping the same site selected where it is still shown.
    pub fn refresh(&mut self) {
        let keep = self
            .rows
            .get(self.selected)
            .and_then(|r| r.stacks.first().copied());
        let top = |s: StackId| self.frames_at(s, 0).and_then(|f| f.first().cloned());
        let top_address = |s: StackId| self.stacks.get(&s).and_then(|i| i.frames.first().copied());
        let matches = |s: StackId| self.matches_filter(s);
        let mut rows = self.sites.rows(self.grouping, &top, &top_address, &matches);
        sort_rows(&mut rows, self.sort, self.reverse);
        self.rows = rows;
        if let Some(k) = keep {
            if let Some(i) = self.rows.iter().position(|r| r.stacks.contains(&k)) {
                self.selected = i;
            }
        }
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
    }

    /// A stack passes the filter when one of its frames' function or file contains it.
    fn matches_filter(&self, stack: StackId) -> bool {
        if self.filter.is_empty() {
            return true;
        }
        self.stack_frames(stack).iter().any(|f| {
            let has = |s: &Option<String>| {
                s.as_ref()
                    .is_some_and(|s| s.to_lowercase().contains(&self.filter))
            };
            has(&f.function) || has(&f.file)
        })
    }

    pub fn selected_row(&self) -> Option<&Row> {
        self.rows.get(self.selected)
    }

    pub fn ended(&self) -> bool {
        matches!(self.state, TargetState::Ended(_) | TargetState::Detached)
    }

    /// Handles one key; returns what the tracer side must do, if anything.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Request> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Some(self.quit_request());
        }
        match std::mem::replace(&mut self.prompt, Prompt::None) {
            Prompt::Filter(text) => return self.filter_key(key, text),
            Prompt::ConfirmQuit => {
                return match key.code {
                    KeyCode::Char('k') => Some(Request::Kill),
                    KeyCode::Char('d') | KeyCode::Char('r') => Some(Request::Detach),
                    _ => None,
                }
            }
            Prompt::None => {}
        }
        if self.help {
            self.help = false;
            return None;
        }
        self.notice = None;
        if self.stopped.is_some() {
            return self.stopped_key(key);
        }
        if self.view == View::Mappings {
            let step = match key.code {
                KeyCode::Up | KeyCode::Char('k') => Some(-1),
                KeyCode::Down | KeyCode::Char('j') => Some(1),
                KeyCode::PageUp => Some(-10),
                KeyCode::PageDown => Some(10),
                _ => None,
            };
            if let Some(d) = step {
                self.census.move_by(d);
                return None;
            }
        }
        match key.code {
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('q') => return self.quit_key(),
            KeyCode::Char('m') => {
                self.view = match self.view {
                    View::Sites => View::Mappings,
                    View::Mappings => View::Sites,
                };
                self.detail = None;
                // Once the program has ended, the census at its end stays.
                if !self.ended() {
                    return Some(Request::WatchMemory(self.view == View::Mappings));
                }
            }
            KeyCode::Esc => self.detail = None,
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
            KeyCode::PageUp => self.move_by(-10),
            KeyCode::PageDown => self.move_by(10),
            KeyCode::Home => self.move_by(i64::MIN / 2),
            KeyCode::End => self.move_by(i64::MAX / 2),
            KeyCode::Enter => {
                self.detail = match self.detail {
                    Some(_) => None,
                    None if !self.rows.is_empty() => Some(0),
                    None => None,
                }
            }
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                self.refresh();
            }
            KeyCode::Char('r') => {
                self.reverse = !self.reverse;
                self.refresh();
            }
            KeyCode::Char('t') => {
                self.grouping = match self.grouping {
                    Grouping::Stack => Grouping::TopFrame,
                    Grouping::TopFrame => Grouping::Stack,
                };
                self.detail = None;
                self.refresh();
            }
            KeyCode::Char('/') => self.prompt = Prompt::Filter(self.filter.clone()),
            KeyCode::Char('b' | 'B') if self.selected_row().map(|r| r.what) == Some(What::Map) => {
                self.notice = Some("b stops at allocations: a mapping site has none".into());
            }
            KeyCode::Char('b') if !self.ended() => return self.arm_break(false),
            KeyCode::Char('B') if !self.ended() => return self.arm_break(true),
            KeyCode::Char(']') => self.walk_leaks(1),
            KeyCode::Char('[') => self.walk_leaks(-1),
            KeyCode::Char('l') if !self.ended() => return Some(Request::Scan),
            KeyCode::Char('p') if !self.ended() => {
                return Some(if self.state == TargetState::Paused {
                    Request::Resume
                } else {
                    Request::Pause
                })
            }
            _ => {}
        }
        None
    }

    fn quit_request(&self) -> Request {
        match (self.ended(), self.mode) {
            (true, _) => Request::Quit,
            (false, Mode::Attach) => Request::Detach,
            (false, Mode::Launch) => Request::Interrupt,
        }
    }

    pub(super) fn quit_key(&mut self) -> Option<Request> {
        if self.ended() {
            return Some(Request::Quit);
        }
        match self.mode {
            Mode::Attach => Some(Request::Detach),
            Mode::Launch => {
                self.prompt = Prompt::ConfirmQuit;
                None
            }
        }
    }

    fn filter_key(&mut self, key: KeyEvent, mut text: String) -> Option<Request> {
        match key.code {
            KeyCode::Enter => {
                self.filter = text.to_lowercase();
                self.selected = 0;
                self.detail = None;
                self.refresh();
            }
            KeyCode::Esc => {
                self.filter.clear();
                self.refresh();
            }
            KeyCode::Backspace => {
                text.pop();
                self.prompt = Prompt::Filter(text);
            }
            KeyCode::Char(c) => {
                text.push(c);
                self.prompt = Prompt::Filter(text);
            }
            _ => self.prompt = Prompt::Filter(text),
        }
        None
    }

    /// Moves the selection: the site in the table, or the frame in the detail pane.
    pub(super) fn move_by(&mut self, delta: i64) {
        let clamp = |at: usize, len: usize| -> usize {
            let to = (at as i64).saturating_add(delta);
            to.clamp(0, len.saturating_sub(1) as i64) as usize
        };
        match self.detail {
            Some(frame) => {
                let len = self
                    .selected_row()
                    .and_then(|r| r.stacks.first())
                    .map_or(0, |&s| self.stack_frames(s).len());
                self.detail = Some(clamp(frame, len));
            }
            None => self.selected = clamp(self.selected, self.rows.len()),
        }
    }
}

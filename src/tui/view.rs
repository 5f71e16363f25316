//! Drawing the live view from an [`App`]: header, sites table, detail pane, help.
//! Reads the state, never changes it.

use super::app::{App, Prompt, View};
use super::sites::{base_name, frame_label, SortKey};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState};
use ratatui::Frame;

/// Below this size the view cannot be laid out; a message says so instead.
pub const MIN_WIDTH: u16 = 50;
pub const MIN_HEIGHT: u16 = 12;
/// Source lines shown above and below the selected frame's line.
const SOURCE_CONTEXT: usize = 6;

pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "terminal too small ({}x{}): memtrace needs {MIN_WIDTH}x{MIN_HEIGHT}",
            area.width, area.height
        );
        f.render_widget(
            Paragraph::new(msg).wrap(ratatui::widgets::Wrap { trim: true }),
            area,
        );
        return;
    }
    let detail = app.detail.is_some();
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(5),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_header(f, app, header);
    if let Some(stopped) = &app.stopped {
        super::stopped::draw(f, stopped, &app.debug_output, body);
    } else if app.view == View::Mappings {
        super::census_view::draw(f, app, body);
    } else if detail {
        let [table, pane] =
            Layout::vertical([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(body);
        draw_table(f, app, table);
        draw_detail(f, app, pane);
    } else {
        draw_table(f, app, body);
    }
    draw_footer(f, app, footer);
    if app.help {
        draw_help(f, area);
    }
}

fn draw_header(f: &mut Frame, app: &App, area: Rect) {
    let state = if app.stopped.is_some() {
        "stopped in the debugger"
    } else {
        app.state.label()
    };
    let title = format!(
        " memtrace · pid {} · {} · {} · {} ",
        app.pid,
        app.command,
        state,
        clock(app.elapsed.as_secs())
    );
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    // The chart sits beside the first two lines; the leak check takes the third whole.
    let [top, check] = Layout::vertical([Constraint::Length(2), Constraint::Min(1)]).areas(inner);
    let [text, chart] =
        Layout::horizontal([Constraint::Min(20), Constraint::Percentage(30)]).areas(top);
    let t = &app.totals;
    let errors = Span::styled(
        format!("errors {}", count(app.errors)),
        if app.errors > 0 {
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        },
    );
    let m = &app.map_totals;
    let mapped = if m.maps > 0 || m.live_mappings > 0 {
        format!(
            " · mapped {} in {} mappings",
            bytes(m.live_bytes),
            count(m.live_mappings)
        )
    } else {
        String::new()
    };
    let lines = vec![
        Line::from(format!(
            "live {} in {} blocks · peak {}{mapped}",
            bytes(t.live_bytes),
            count(t.live_blocks),
            bytes(t.peak_live_bytes)
        )),
        Line::from(vec![
            Span::raw(format!(
                "allocs {} · frees {}{} · ",
                count(t.allocs),
                count(app.frees),
                if t.frees_of_unknown > 0 {
                    // attach: blocks allocated before memtrace came
                    format!(" (+{} of older blocks)", count(t.frees_of_unknown))
                } else {
                    String::new()
                }
            )),
            errors,
        ]),
    ];
    f.render_widget(Paragraph::new(lines), text);
    f.render_widget(Paragraph::new(leak_check_line(app)), check);
    let data: Vec<u64> = app.history.iter().copied().collect();
    f.render_widget(
        Sparkline::default()
            .data(&data)
            .style(Style::new().fg(Color::Cyan)),
        chart,
    );
}

/// The last reachability scan, in valgrind's words, or how to make one.
fn leak_check_line(app: &App) -> Line<'static> {
    let Some(c) = &app.leak_check else {
        return Line::styled(
            "leak kinds: no scan yet (l: scan now)",
            Style::new().add_modifier(Modifier::DIM),
        );
    };
    let names = ["definitely lost", "indirectly", "possibly", "reachable"];
    let parts: Vec<String> = names
        .iter()
        .zip(c.kinds)
        .map(|(n, (blocks, b))| format!("{n} {} ({})", bytes(b), count(blocks)))
        .collect();
    let lost = c.kinds[0].0 > 0;
    Line::styled(
        format!("at {}: {}", clock(c.at.as_secs()), parts.join(" · ")),
        if lost {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        },
    )
}

fn draw_table(f: &mut Frame, app: &App, area: Rect) {
    let head = |k: SortKey| {
        let mark = match (k == app.sort, app.reverse) {
            (true, false) => "▼",
            (true, true) => "▲",
            _ => "",
        };
        Cell::from(format!("{}{mark}", k.title()))
    };
    let mut titles: Vec<Cell> = SortKey::ALL.map(head).into();
    // Heap blocks or mappings: the site's blocks are mappings for `mmap`.
    titles.insert(5, Cell::from("What"));
    let header = Row::new(titles).style(Style::new().add_modifier(Modifier::BOLD));
    let rows = app.rows.iter().map(|r| {
        let growth = if r.growth > 0.0 {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        };
        Row::new(vec![
            Cell::from(bytes(r.live_bytes)),
            Cell::from(count(r.live_blocks)),
            Cell::from(count(r.allocs)),
            Cell::from(format!("{:.1}", r.alloc_rate)),
            Cell::from(rate(r.growth)).style(growth),
            Cell::from(r.what.label()),
            Cell::from(match r.stacks.len() {
                1 => r.label.clone(),
                n => format!("{} ({n} stacks)", r.label),
            }),
        ])
    });
    let widths = [
        Constraint::Length(11),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(11),
        Constraint::Length(4),
        Constraint::Min(10),
    ];
    let title = match (app.filter.is_empty(), app.rows.len()) {
        (true, n) => format!(" {n} sites · {} ", grouping_name(app)),
        (false, n) => format!(
            " {n} sites matching \"{}\" · {} ",
            app.filter,
            grouping_name(app)
        ),
    };
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    let mut state =
        TableState::default().with_selected((!app.rows.is_empty()).then_some(app.selected));
    f.render_stateful_widget(table, area, &mut state);
}

fn grouping_name(app: &App) -> &'static str {
    match app.grouping {
        super::sites::Grouping::Stack => "by stack",
        super::sites::Grouping::TopFrame => "by top frame",
    }
}

fn draw_detail(f: &mut Frame, app: &App, area: Rect) {
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(area);
    let Some(stack) = app.selected_row().and_then(|r| r.stacks.first().copied()) else {
        return;
    };
    let frames = app.stack_frames(stack);
    let at = app.detail.unwrap_or(0).min(frames.len().saturating_sub(1));
    let lines: Vec<Line> = frames
        .iter()
        .enumerate()
        .map(|(i, fr)| {
            let mark = if fr.inlined { " (inlined)" } else { "" };
            let text = format!("#{i:<2} {:#x} {}{mark}", fr.address, frame_label(fr));
            if i == at {
                Line::styled(text, Style::new().add_modifier(Modifier::REVERSED))
            } else {
                Line::from(text)
            }
        })
        .collect();
    // Keep the selected frame in view.
    let visible = left.height.saturating_sub(2) as usize;
    let scroll = at.saturating_sub(visible.saturating_sub(1)) as u16;
    f.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(" Stack "))
            .scroll((scroll, 0)),
        left,
    );
    draw_source(f, app, frames.get(at), right);
}

fn draw_source(f: &mut Frame, app: &App, frame: Option<&crate::symbols::Frame>, area: Rect) {
    let (file, line) = match frame {
        Some(fr) => (fr.file.as_deref(), fr.line),
        None => (None, None),
    };
    let (Some(file), Some(line)) = (file, line) else {
        f.render_widget(
            Paragraph::new("no source line for this frame")
                .block(Block::bordered().title(" Source ")),
            area,
        );
        return;
    };
    let title = format!(" {}:{line} ", base_name(file));
    let Some(Some(text)) = app.sources.get(file) else {
        f.render_widget(
            Paragraph::new(format!("{file} cannot be read")).block(Block::bordered().title(title)),
            area,
        );
        return;
    };
    let line = line as usize;
    let first = line.saturating_sub(SOURCE_CONTEXT).max(1);
    let last = (line + SOURCE_CONTEXT).min(text.len());
    let lines: Vec<Line> = (first..=last)
        .filter_map(|n| {
            let src = text.get(n - 1)?;
            let s = format!("{n:>5} {src}");
            Some(if n == line {
                Line::styled(
                    s,
                    Style::new().add_modifier(Modifier::BOLD).fg(Color::Yellow),
                )
            } else {
                Line::from(s)
            })
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        area,
    );
}

fn draw_footer(f: &mut Frame, app: &App, area: Rect) {
    if let Some(why) = &app.input_error {
        let text =
            format!("the terminal cannot be read ({why}): the view closes when the trace ends");
        f.render_widget(
            Paragraph::new(text).style(Style::new().fg(Color::Red)),
            area,
        );
        return;
    }
    let text = match &app.prompt {
        Prompt::Filter(t) => format!("filter (function or file): {t}_   Enter: apply  Esc: clear"),
        Prompt::ConfirmQuit => {
            "quit: k kill the program · d let it run on untraced · any other key: stay".to_string()
        }
        Prompt::None if app.notice.is_some() => app.notice.clone().unwrap_or_default(),
        Prompt::None if app.stopped.is_some() => {
            "s: step  n: next  i/I: stepi/nexti  f: finish  c: continue  u/d: frame  a: syntax  ?: help  q: quit"
                .to_string()
        }
        Prompt::None => {
            "?: help  ↑↓/jk: move  Enter: stack  s: sort  t: group  /: filter  b/B: break  ]/[: next leak  m: mappings  p: pause  q: quit"
                .to_string()
        }
    };
    f.render_widget(
        Paragraph::new(text).style(Style::new().add_modifier(Modifier::DIM)),
        area,
    );
}

fn draw_help(f: &mut Frame, area: Rect) {
    let lines = [
        "↑ ↓ j k    move (sites, or frames in the stack pane)",
        "PgUp PgDn  move by 10      Home End  first, last",
        "Enter      open / close the selected site's stack and source",
        "s          sort by the next column      r  reverse the order",
        "t          group by whole stack / by top frame only",
        "/          filter by function or file name (Esc clears)",
        "p          pause / resume the program",
        "l          leak kinds now: scan for pointers to every live block",
        "b          stop at the selected site's next allocation (same whole stack)",
        "B          stop at the next allocation from the site's top frame (its line)",
        "] [        next / previous site with its stack and source (after exit: leaks)",
        "m          the mappings view: the process's memory by kind, every second; again: back",
        "stopped:   s step  n next  i stepi  I nexti  f finish  c continue",
        "           u d  frame up / down   a  Intel / AT&T disassembly",
        "q          quit: attach detaches; launch asks: kill or run on",
        "?          this help (any key closes it)",
    ];
    let w = (lines.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u16 + 4).min(area.width);
    let h = (lines.len() as u16 + 2).min(area.height);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines.map(Line::from).to_vec()).block(Block::bordered().title(" keys ")),
        r,
    );
}

/// `1.5 KiB`, `12.0 MiB`; plain bytes below 1 KiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// A growth rate: `+1.2 KiB/s`, `-300 B/s`, `0`.
pub fn rate(v: f64) -> String {
    if v.abs() < 0.5 {
        return "0".into();
    }
    let sign = if v > 0.0 { "+" } else { "-" };
    format!("{sign}{}/s", bytes(v.abs().round() as u64))
}

/// `1,234,567`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn clock(secs: u64) -> String {
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::StackId;
    use crate::heap::{SiteCounts, Totals};
    use crate::symbols::Frame as SymFrame;
    use crate::tui::app::{Mode, Request};
    use crate::tui::snapshot::{NewStack, SiteSnapshot, Snapshot, TargetState};
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyCode, KeyEvent};
    use ratatui::Terminal;
    use std::time::Duration;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::from(c)
    }

    fn frame(address: u64, function: &str, file: &str, line: u32) -> SymFrame {
        SymFrame {
            address,
            function: Some(function.into()),
            file: Some(file.into()),
            line: Some(line),
            ..SymFrame::default()
        }
    }

    /// Three sites: a growing leak in `make_leak`, a cache in `fill_cache`, and one
    /// whose frames are not resolved yet.
    fn sample(source: &str) -> App {
        let mut app = App::new(4242, "./server --port 80".into(), Mode::Attach);
        let stacks = vec![
            NewStack {
                id: StackId(0),
                generation: 0,
                frames: vec![0x1000, 0x2000],
            },
            NewStack {
                id: StackId(1),
                generation: 0,
                frames: vec![0x1100, 0x2000],
            },
            NewStack {
                id: StackId(2),
                generation: 0,
                frames: vec![0xdead],
            },
        ];
        for i in 0..=10u64 {
            let site = |s, allocs, blocks, bytes| SiteSnapshot {
                stack: StackId(s),
                counts: SiteCounts {
                    allocs,
                    live_blocks: blocks,
                    live_bytes: bytes,
                    ..Default::default()
                },
            };
            app.apply(Snapshot {
                elapsed: Duration::from_secs(i),
                state: TargetState::Running,
                totals: Totals {
                    allocs: 100 + i,
                    frees: 40,
                    bytes_allocated: 9000,
                    live_blocks: 60 + i,
                    live_bytes: 5000 + 512 * i,
                    peak_live_bytes: 5000 + 512 * i,
                    ..Totals::default()
                },
                errors: 2,
                sites: vec![
                    site(0, 10 + i, 10 + i, 512 * (10 + i)),
                    site(1, 50, 50, 800),
                    site(2, 3, 3, 30),
                ],
                new_stacks: if i == 0 { stacks.clone() } else { Vec::new() },
            });
        }
        app.add_resolved(0, 0x1000, vec![frame(0x1000, "make_leak", source, 5)]);
        app.add_resolved(
            0,
            0x1100,
            vec![frame(0x1100, "fill_cache", "/src/cache.c", 9)],
        );
        let mut inlined = frame(0x2000, "helper", "/src/util.h", 2);
        inlined.inlined = true;
        app.add_resolved(
            0,
            0x2000,
            vec![inlined, frame(0x2000, "main", "/src/server.c", 30)],
        );
        app.refresh();
        app
    }

    fn render(app: &App, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
        t.draw(|f| draw(f, app)).expect("draw");
        let buf = t.backend().buffer();
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn row_of(screen: &str, needle: &str) -> usize {
        screen
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not on screen:\n{screen}"))
    }

    #[test]
    fn header_and_sites_largest_first() {
        let app = sample("/nonexistent.c");
        let s = render(&app, 100, 20);
        assert!(s.contains("pid 4242"), "{s}");
        assert!(s.contains("./server --port 80"), "{s}");
        assert!(s.contains("running") && s.contains("00:00:10"), "{s}");
        assert!(s.contains("live 9.9 KiB in 70 blocks"), "{s}");
        assert!(s.contains("errors 2"), "{s}");
        assert!(s.contains("3 sites"), "{s}");
        // 10 KiB of the leak, then the cache's 800 B, then 30 B at an unresolved address.
        let leak = row_of(&s, "make_leak nonexistent.c:5");
        let cache = row_of(&s, "fill_cache cache.c:9");
        let raw = row_of(&s, "0xdead");
        assert!(leak < cache && cache < raw, "{s}");
        // The leak grows 512 B/s; the cache does not.
        assert!(s.lines().nth(leak).unwrap().contains("+512 B/s"), "{s}");
        assert!(!s.lines().nth(cache).unwrap().contains('+'), "{s}");
    }

    #[test]
    fn sorting_and_reversing() {
        let mut app = sample("/nonexistent.c");
        app.on_key(key(KeyCode::Char('s'))); // blocks
        let s = render(&app, 100, 20);
        assert!(s.contains("Blocks▼"), "{s}");
        assert!(
            row_of(&s, "fill_cache") < row_of(&s, "make_leak"),
            "50 blocks before 20:\n{s}"
        );
        app.on_key(key(KeyCode::Char('r')));
        let s = render(&app, 100, 20);
        assert!(s.contains("Blocks▲"), "{s}");
        assert!(row_of(&s, "0xdead") < row_of(&s, "make_leak"), "{s}");
    }

    #[test]
    fn filtering_by_function_or_file() {
        let mut app = sample("/nonexistent.c");
        app.on_key(key(KeyCode::Char('/')));
        for c in "CACHE".chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        let typing = render(&app, 100, 20);
        assert!(
            typing.contains("filter (function or file): CACHE_"),
            "{typing}"
        );
        app.on_key(key(KeyCode::Enter));
        let s = render(&app, 100, 20);
        assert!(s.contains("1 sites matching \"cache\""), "{s}");
        assert!(s.contains("fill_cache") && !s.contains("make_leak"), "{s}");
        // A frame deeper in the stack matches too: both resolved sites pass through main.
        app.on_key(key(KeyCode::Char('/')));
        app.on_key(key(KeyCode::Backspace));
        for _ in 0..4 {
            app.on_key(key(KeyCode::Backspace));
        }
        for c in "server.c".chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        app.on_key(key(KeyCode::Enter));
        assert_eq!(app.rows.len(), 2);
        app.on_key(key(KeyCode::Char('/')));
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.rows.len(), 3);
    }

    #[test]
    fn detail_pane_shows_the_stack_and_the_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("leak.c");
        let text: String = (1..=12)
            .map(|i| format!("line {i} of the source\n"))
            .collect();
        std::fs::write(&src, text).expect("write source");
        let mut app = sample(src.to_str().expect("utf-8 path"));
        app.on_key(key(KeyCode::Enter));
        app.load_sources();
        let s = render(&app, 120, 30);
        assert!(s.contains("#0  0x1000 make_leak leak.c:5"), "{s}");
        assert!(s.contains("helper util.h:2 (inlined)"), "{s}");
        assert!(s.contains("main server.c:30"), "{s}");
        assert!(s.contains("leak.c:5 "), "source title:\n{s}");
        assert!(s.contains("    5 line 5 of the source"), "{s}");
        assert!(s.contains("   11 line 11 of the source"), "{s}");
        // Arrows move through the frames; the source follows (util.h is not readable).
        app.on_key(key(KeyCode::Down));
        app.load_sources();
        let s = render(&app, 120, 30);
        assert!(s.contains("/src/util.h cannot be read"), "{s}");
        app.on_key(key(KeyCode::Down));
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.detail, Some(2), "stops at the last frame");
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.detail, None);
    }

    #[test]
    fn frames_fill_in_as_they_resolve() {
        let mut app = sample("/nonexistent.c");
        let wanted = app.unresolved(10);
        assert!(wanted.contains(&(0, 0xdead)), "{wanted:?}");
        app.add_resolved(0, 0xdead, vec![frame(0xdead, "late", "/src/late.c", 7)]);
        app.refresh();
        assert!(render(&app, 100, 20).contains("late late.c:7"));
        assert!(app.unresolved(10).is_empty());
    }

    #[test]
    fn grouping_by_top_frame() {
        let mut app = sample("/nonexistent.c");
        // A fourth stack with the same top frame as the leak, reached another way.
        app.apply(Snapshot {
            elapsed: Duration::from_secs(11),
            state: TargetState::Running,
            totals: app.totals,
            errors: 2,
            sites: vec![SiteSnapshot {
                stack: StackId(3),
                counts: SiteCounts {
                    allocs: 1,
                    live_blocks: 1,
                    live_bytes: 1,
                    ..Default::default()
                },
            }],
            new_stacks: vec![NewStack {
                id: StackId(3),
                generation: 0,
                frames: vec![0x1000, 0x3000],
            }],
        });
        assert_eq!(app.rows.len(), 4);
        app.on_key(key(KeyCode::Char('t')));
        let s = render(&app, 100, 20);
        assert!(s.contains("by top frame"), "{s}");
        assert!(s.contains("make_leak nonexistent.c:5 (2 stacks)"), "{s}");
        assert_eq!(app.rows.len(), 3);
    }

    #[test]
    fn help_overlay_and_keys() {
        let mut app = sample("/nonexistent.c");
        app.on_key(key(KeyCode::Char('?')));
        assert!(render(&app, 100, 24).contains("this help (any key closes it)"));
        assert_eq!(
            app.on_key(key(KeyCode::Char('q'))),
            None,
            "closes help first"
        );
        assert_eq!(app.on_key(key(KeyCode::Char('p'))), Some(Request::Pause));
        assert_eq!(
            app.on_key(key(KeyCode::Char('q'))),
            Some(Request::Detach),
            "attach: q detaches"
        );
        let mut launched = App::new(1, "./a".into(), Mode::Launch);
        assert_eq!(launched.on_key(key(KeyCode::Char('q'))), None);
        assert!(render(&launched, 100, 20).contains("k kill the program"));
        assert_eq!(
            launched.on_key(key(KeyCode::Char('k'))),
            Some(Request::Kill)
        );
        launched.state = TargetState::Ended("exited with status 0".into());
        assert_eq!(
            launched.on_key(key(KeyCode::Char('q'))),
            Some(Request::Quit)
        );
        assert!(render(&launched, 100, 20).contains("exited with status 0"));
    }

    #[test]
    fn tiny_and_resized_terminals() {
        let mut app = sample("/nonexistent.c");
        app.on_key(key(KeyCode::Enter));
        app.help = true;
        for (w, h) in [(1, 1), (10, 3), (49, 30), (200, 11), (0, 0)] {
            let s = render(&app, w, h);
            if w > 20 && h > 1 {
                assert!(s.contains("terminal too small"), "{w}x{h}:\n{s}");
            }
        }
        for (w, h) in [(MIN_WIDTH, MIN_HEIGHT), (300, 80)] {
            assert!(
                render(&app, w, h).contains(" keys "),
                "the help overlay at {w}x{h}"
            );
        }
        app.help = false;
        for (w, h) in [(MIN_WIDTH, MIN_HEIGHT), (300, 80)] {
            let s = render(&app, w, h);
            assert!(
                s.contains("pid 4242") && s.contains("Stack"),
                "{w}x{h}:\n{s}"
            );
        }
    }

    #[test]
    fn leak_check_in_the_header() {
        let mut app = sample("/nonexistent.c");
        assert!(render(&app, 100, 20).contains("no scan yet (l: scan now)"));
        assert_eq!(app.on_key(key(KeyCode::Char('l'))), Some(Request::Scan));
        app.leak_check = Some(crate::tui::run::LeakCheck {
            at: Duration::from_secs(65),
            kinds: [(1, 32), (2, 64), (0, 0), (3, 2048)],
        });
        let s = render(&app, 160, 20);
        assert!(
            s.contains("at 00:01:05: definitely lost 32 B (1) · indirectly 64 B (2) · possibly 0 B (0) · reachable 2.0 KiB (3)"),
            "{s}"
        );
    }

    #[test]
    fn units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(rate(-300.0), "-300 B/s");
        assert_eq!(rate(0.1), "0");
        assert_eq!(clock(3725), "01:02:05");
    }
}

//! Drawing the stopped view: the program held at a site breakpoint or after a step.
//! Source around the current line, disassembly around the pc (current instruction
//! marked, call targets named), registers (changed ones highlighted), the stack, the
//! block being allocated and the thread, and what the last command printed. Reads
//! the [`StopView`], never changes anything.

use crate::debug::view::base_name;
use crate::debug::StopView;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use ratatui::Frame;

pub fn draw(f: &mut Frame, v: &StopView, output: &str, area: Rect) {
    let [top, bottom] = Layout::vertical([Constraint::Min(8), Constraint::Length(5)]).areas(area);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(top);
    let [source, disas] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(left);
    let reg_rows = v.regs.len().div_ceil(2) as u16 + 2;
    let [regs, stack] =
        Layout::vertical([Constraint::Length(reg_rows), Constraint::Min(3)]).areas(right);
    draw_source(f, v, source);
    draw_disas(f, v, disas);
    draw_regs(f, v, regs);
    draw_stack(f, v, stack);
    draw_status(f, v, output, bottom);
}

fn current() -> Style {
    Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
}

fn draw_source(f: &mut Frame, v: &StopView, area: Rect) {
    let Some(src) = &v.source else {
        f.render_widget(
            Paragraph::new("no source line here").block(Block::bordered().title(" Source ")),
            area,
        );
        return;
    };
    let title = format!(" #{} {}:{} ", src.frame, base_name(&src.file), src.line);
    if src.lines.is_empty() {
        f.render_widget(
            Paragraph::new(format!("{} cannot be read", src.file))
                .block(Block::bordered().title(title)),
            area,
        );
        return;
    }
    // Keep the current line in the middle of what fits.
    let visible = area.height.saturating_sub(2) as usize;
    let at = src
        .lines
        .iter()
        .position(|(n, _)| *n == src.line)
        .unwrap_or(0);
    let skip = at.saturating_sub(visible / 2);
    let lines: Vec<Line> = src
        .lines
        .iter()
        .skip(skip)
        .map(|(n, text)| {
            if *n == src.line {
                Line::styled(format!("=>{n:>4} {text}"), current())
            } else {
                Line::from(format!("  {n:>4} {text}"))
            }
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        area,
    );
}

fn draw_disas(f: &mut Frame, v: &StopView, area: Rect) {
    let title = format!(" Disassembly ({:?}, a: switch) ", v.syntax);
    let visible = area.height.saturating_sub(2) as usize;
    let at = v.disas.iter().position(|d| d.current).unwrap_or(0);
    let skip = at.saturating_sub(visible / 2);
    let lines: Vec<Line> = v
        .disas
        .iter()
        .skip(skip)
        .map(|d| {
            let text = format!(
                "{} {:#x}  {:<20} {}",
                if d.current { "=>" } else { "  " },
                d.address,
                d.bytes_hex(),
                d.text
            );
            if d.current {
                Line::styled(text, current())
            } else {
                Line::from(text)
            }
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        area,
    );
}

fn draw_regs(f: &mut Frame, v: &StopView, area: Rect) {
    let cell = |i: usize| -> Vec<Span> {
        let Some(r) = v.regs.get(i) else {
            return Vec::new();
        };
        let style = if r.changed {
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        };
        vec![
            Span::styled(format!("{:>6} ", r.name), style),
            Span::styled(format!("{:#018x}", r.value), style),
            Span::raw("  "),
        ]
    };
    let half = v.regs.len().div_ceil(2);
    let lines: Vec<Line> = (0..half)
        .map(|i| Line::from([cell(i), cell(i + half)].concat()))
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Registers (changed in red) ")),
        area,
    );
}

fn draw_stack(f: &mut Frame, v: &StopView, area: Rect) {
    let lines: Vec<Line> = v
        .frames
        .iter()
        .enumerate()
        .map(|(i, fr)| {
            let text = format!("#{i:<2} {:#x} {}", fr.address, fr.label);
            if i == v.selected {
                Line::styled(text, Style::new().add_modifier(Modifier::REVERSED))
            } else {
                Line::from(text)
            }
        })
        .collect();
    let visible = area.height.saturating_sub(2) as usize;
    let scroll = v.selected.saturating_sub(visible.saturating_sub(1)) as u16;
    f.render_widget(
        Paragraph::new(lines)
            .block(Block::bordered().title(" Stack (u/d: up, down) "))
            .scroll((scroll, 0)),
        area,
    );
}

fn draw_status(f: &mut Frame, v: &StopView, output: &str, area: Rect) {
    let block_line = match &v.block {
        Some(b) => match b.ptr {
            Some(p) => format!("block: {}({}) = {p:#x}", b.function, b.size),
            None => format!(
                "block: {}({}), not returned yet (f: finish)",
                b.function, b.size
            ),
        },
        None => "block: none".into(),
    };
    let mut lines = vec![
        Line::from(format!(
            "{block_line} · thread {} · {} other thread(s) stopped",
            v.tid, v.others_stopped
        )),
        Line::styled(
            format!("at {}", v.location),
            Style::new().add_modifier(Modifier::BOLD),
        ),
    ];
    lines.extend(output.lines().take(1).map(|l| Line::from(l.to_string())));
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Stopped ")),
        area,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debug::view::{DisasLine, FrameLine, RegLine, SourcePane};
    use crate::debug::{Block as Alloc, DebugCommand};
    use crate::tui::app::{App, Mode, Request};
    use memtrace_arch::Syntax;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyCode, KeyEvent};
    use ratatui::Terminal;

    fn sample() -> StopView {
        StopView {
            tid: 4243,
            others_stopped: 3,
            location: "malloc (libc.so.6)".into(),
            frames: vec![
                FrameLine {
                    address: 0x7f00_0000_1000,
                    label: "malloc (libc.so.6)".into(),
                },
                FrameLine {
                    address: 0x5555_0000_1234,
                    label: "make_leak at leak.c:12".into(),
                },
            ],
            selected: 0,
            source: Some(SourcePane {
                frame: 1,
                file: "/src/leak.c".into(),
                line: 12,
                lines: (9..=15).map(|n| (n, format!("source line {n}"))).collect(),
            }),
            disas: vec![
                DisasLine {
                    address: 0x7f00_0000_0ff0,
                    bytes: vec![0xc3],
                    text: "ret".into(),
                    current: false,
                },
                DisasLine {
                    address: 0x7f00_0000_1000,
                    bytes: vec![0x41, 0x54],
                    text: "push r12".into(),
                    current: true,
                },
                DisasLine {
                    address: 0x7f00_0000_1002,
                    bytes: vec![0xe8, 0, 0, 0, 0],
                    text: "call 7F0000001007h <helper>".into(),
                    current: false,
                },
            ],
            syntax: Syntax::Intel,
            regs: vec![
                RegLine {
                    name: "rax",
                    value: 0x10,
                    changed: true,
                },
                RegLine {
                    name: "rbx",
                    value: 0x20,
                    changed: false,
                },
            ],
            block: Some(Alloc {
                function: "malloc".into(),
                size: 30,
                entry: 0x7f00_0000_1000,
                ret: 0x5555_0000_1234,
                ret_sp: 0,
                ptr: None,
            }),
        }
    }

    fn stopped_app() -> App {
        let mut app = App::new(4242, "./leak".into(), Mode::Launch);
        app.on_stopped(sample(), "memtrace: stopped at malloc(30)".into());
        app
    }

    fn render(app: &App, w: u16, h: u16) -> (String, Terminal<TestBackend>) {
        let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
        t.draw(|f| crate::tui::view::draw(f, app)).expect("draw");
        let buf = t.backend().buffer();
        let s = (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n");
        (s, t)
    }

    #[test]
    fn shows_source_disassembly_registers_stack_and_block() {
        let app = stopped_app();
        let (s, t) = render(&app, 140, 40);
        assert!(s.contains("#1 leak.c:12"), "the caller's line:\n{s}");
        assert!(s.contains("=>  12 source line 12"), "{s}");
        assert!(s.contains("=> 0x7f0000001000  41 54"), "{s}");
        assert!(s.contains("push r12"), "{s}");
        assert!(s.contains("<helper>"), "call targets are named:\n{s}");
        assert!(s.contains("Disassembly (Intel"), "{s}");
        assert!(
            s.contains("#1  0x555500001234 make_leak at leak.c:12"),
            "{s}"
        );
        assert!(s.contains("block: malloc(30), not returned yet"), "{s}");
        assert!(s.contains("thread 4243 · 3 other thread(s) stopped"), "{s}");
        assert!(s.contains("memtrace: stopped at malloc(30)"), "{s}");
        // rax changed: drawn in red; rbx did not.
        let buf = t.backend().buffer();
        let find = |needle: &str| {
            s.lines().enumerate().find_map(|(y, l)| {
                l.find(needle)
                    .map(|x| (l[..x].chars().count() as u16, y as u16))
            })
        };
        let (x, y) = find("rax 0x").expect("rax on screen");
        assert_eq!(buf[(x, y)].fg, Color::Red, "{s}");
        let (x, y) = find("rbx 0x").expect("rbx on screen");
        assert_ne!(buf[(x, y)].fg, Color::Red);
    }

    #[test]
    fn keys_become_debugger_commands() {
        let mut app = stopped_app();
        let mut key = |c| app.on_key(KeyEvent::from(KeyCode::Char(c)));
        let cmd = |c| Some(Request::Debug(c));
        assert_eq!(key('s'), cmd(DebugCommand::Step), "s steps here, not sort");
        assert_eq!(key('n'), cmd(DebugCommand::Next));
        assert_eq!(key('i'), cmd(DebugCommand::StepInstruction));
        assert_eq!(key('I'), cmd(DebugCommand::NextInstruction));
        assert_eq!(key('f'), cmd(DebugCommand::Finish));
        assert_eq!(key('u'), cmd(DebugCommand::Up));
        assert_eq!(key('d'), cmd(DebugCommand::Down));
        assert_eq!(key('a'), cmd(DebugCommand::ToggleSyntax));
        assert_eq!(key('c'), cmd(DebugCommand::Continue));
        assert!(
            app.stopped.is_none(),
            "continue leaves the stopped view at once"
        );
        app.on_resumed(None);
        let (s, _) = render(&app, 100, 20);
        assert!(s.contains("sites"), "back to the live view:\n{s}");
    }

    #[test]
    fn after_finish_the_block_has_its_pointer() {
        let mut app = stopped_app();
        let mut v = sample();
        if let Some(b) = v.block.as_mut() {
            b.ptr = Some(0x5555_0000_beef);
        }
        v.syntax = Syntax::Att;
        app.on_stopped(v, "returned 0x55550000beef".into());
        let (s, _) = render(&app, 140, 40);
        assert!(s.contains("block: malloc(30) = 0x55550000beef"), "{s}");
        assert!(s.contains("Disassembly (Att"), "{s}");
        assert!(s.contains("returned 0x55550000beef"), "{s}");
    }

    #[test]
    fn small_terminals_do_not_break_it() {
        let app = stopped_app();
        for (w, h) in [(50, 12), (60, 20), (300, 80)] {
            let (s, _) = render(&app, w, h);
            assert!(
                s.contains("pid 4242") && s.contains("leak.c:12"),
                "{w}x{h}:\n{s}"
            );
        }
    }
}

//! Drawing the mappings view: the last census of the process's memory, one row
//! per kind and name, largest first, with each group's growth. Reads the state,
//! never changes it.

use super::app::App;
use super::view::{bytes, count, rate};
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};
use ratatui::Frame;

pub fn draw(f: &mut Frame, app: &App, area: Rect) {
    let Some((at, c)) = &app.census.last else {
        let text = if app.ended() {
            "no census was taken: the program ended first"
        } else {
            "reading the process's memory..."
        };
        f.render_widget(
            Paragraph::new(text).block(Block::bordered().title(" mappings ")),
            area,
        );
        return;
    };
    let header = Row::new(["Kind", "Count", "Size", "Resident", "Growth/s", "Name"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = app.census.rows().into_iter().map(|r| {
        let g = &r.group;
        let mut name = g.name.clone().unwrap_or_default();
        if let Some(live) = g.live_bytes {
            // The heap line says how much of it live malloc blocks hold.
            let held = format!("{} in live malloc blocks", bytes(live));
            name = if name.is_empty() {
                held
            } else {
                format!("{name} ({held})")
            };
        }
        let growth = if r.growth > 0.0 {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        };
        Row::new(vec![
            Cell::from(g.kind.clone()),
            Cell::from(count(g.count)),
            Cell::from(bytes(g.bytes)),
            Cell::from(bytes(g.rss_bytes)),
            Cell::from(rate(r.growth)).style(growth),
            Cell::from(name),
        ])
    });
    let widths = [
        Constraint::Length(13),
        Constraint::Length(8),
        Constraint::Length(11),
        Constraint::Length(11),
        Constraint::Length(12),
        Constraint::Min(10),
    ];
    let title = format!(
        " mappings at {}s: {} in {} mappings, {} resident · m: sites ",
        at.as_secs(),
        bytes(c.total.bytes),
        count(c.total.count),
        bytes(c.total.rss_bytes)
    );
    let table = Table::new(rows, widths)
        .header(header)
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    let mut state =
        TableState::default().with_selected((!c.groups.is_empty()).then_some(app.census.selected));
    f.render_stateful_widget(table, area, &mut state);
}

#[cfg(test)]
mod tests {
    use crate::census::{Census, Group, Total, SCHEMA};
    use crate::tui::app::{App, Mode, Request, View};
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyCode, KeyEvent};
    use ratatui::Terminal;
    use std::time::Duration;

    fn render(app: &App) -> String {
        let mut t = Terminal::new(TestBackend::new(120, 20)).expect("terminal");
        t.draw(|f| crate::tui::view::draw(f, app)).expect("draw");
        let buf = t.backend().buffer();
        (0..20)
            .map(|y| (0..120).map(|x| buf[(x, y)].symbol()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn m_switches_to_the_census_and_back() {
        let mut app = App::new(7, "./app".into(), Mode::Launch);
        let m = KeyEvent::from(KeyCode::Char('m'));
        assert_eq!(app.on_key(m), Some(Request::WatchMemory(true)));
        assert_eq!(app.view, View::Mappings);
        assert!(render(&app).contains("reading the process's memory"));
        let group = |kind: &str, name: Option<&str>, bytes, live| Group {
            kind: kind.into(),
            name: name.map(String::from),
            count: 2,
            bytes,
            rss_bytes: bytes / 4,
            live_bytes: live,
        };
        for s in 0..3u64 {
            let census = Census {
                schema: SCHEMA.into(),
                pid: 7,
                total: Total {
                    count: 4,
                    bytes: (3 + s) << 20,
                    rss_bytes: 1 << 20,
                },
                groups: vec![
                    group("memfd", Some("doublemapper"), (2 + s) << 20, None),
                    group("heap", None, 1 << 20, Some(300 << 10)),
                ],
            };
            app.census.update(census, Duration::from_secs(s));
        }
        let screen = render(&app);
        assert!(
            screen.contains("mappings at 2s: 5.0 MiB in 4 mappings"),
            "{screen}"
        );
        let memfd = screen.lines().find(|l| l.contains("doublemapper")).unwrap();
        assert!(
            memfd.contains("memfd") && memfd.contains("+1.0 MiB/s"),
            "{screen}"
        );
        assert!(
            screen.contains("300.0 KiB in live malloc blocks"),
            "{screen}"
        );
        assert_eq!(app.on_key(m), Some(Request::WatchMemory(false)));
        assert_eq!(app.view, View::Sites);
    }
}

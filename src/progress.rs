//! A progress line on stderr for long work that prints nothing while it runs (the
//! reachability scan of a large heap, symbolizing a big report), as cargo and git
//! show theirs: only on a terminal, only when the work lasts more than a moment,
//! redrawn a few times a second and erased when done.
//!
//! `MEMTRACE_PROGRESS=always` shows it from the first step whatever stderr is (one line
//! per redraw, and a last one at the end, where stderr is no terminal), `never` hides
//! it. The live view turns it off while it owns the terminal ([`set_quiet`]).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long work runs before its progress shows.
const DELAY: Duration = Duration::from_millis(1000);
/// How often the line is redrawn.
const EVERY: Duration = Duration::from_millis(200);

static QUIET: AtomicBool = AtomicBool::new(false);

/// Turns progress off (while the live view draws on the terminal) or back on.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// What the work counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    /// Things, named in the plural (`stacks`).
    Count(&'static str),
}

pub struct Progress {
    what: String,
    total: u64,
    unit: Unit,
    done: u64,
    started: Instant,
    last: Option<Instant>,
    delay: Duration,
    /// None: not shown.
    out: Option<Box<dyn Write + Send>>,
    /// A terminal: the line is redrawn in place, and erased at the end.
    terminal: bool,
    /// `done` as last drawn.
    drawn: u64,
}

impl Progress {
    /// Progress of `what` (`scanning the heap`) to `total`, on stderr when shown.
    pub fn new(what: &str, total: u64, unit: Unit) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let setting = std::env::var("MEMTRACE_PROGRESS").unwrap_or_default();
        let (shown, delay) = match setting.as_str() {
            "always" => (true, Duration::ZERO),
            "never" => (false, DELAY),
            _ => (terminal && !QUIET.load(Ordering::Relaxed), DELAY),
        };
        let out: Option<Box<dyn Write + Send>> = shown.then(|| Box::new(std::io::stderr()) as _);
        Progress::to(what, total, unit, out, terminal, delay)
    }

    /// Progress written to `out` (None: nowhere), shown after `delay`.
    pub fn to(
        what: &str,
        total: u64,
        unit: Unit,
        out: Option<Box<dyn Write + Send>>,
        terminal: bool,
        delay: Duration,
    ) -> Progress {
        Progress {
            what: what.to_string(),
            total,
            unit,
            done: 0,
            started: Instant::now(),
            last: None,
            delay,
            out,
            terminal,
            drawn: 0,
        }
    }

    /// `n` more done.
    pub fn add(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        if self.out.is_none() {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.started) < self.delay
            || self.last.is_some_and(|l| now.duration_since(l) < EVERY)
        {
            return;
        }
        self.last = Some(now);
        self.draw();
    }

    fn line(&self) -> String {
        let done = self.done.min(self.total);
        let pct = (done as u128 * 100)
            .checked_div(self.total as u128)
            .unwrap_or(100);
        let (done, total) = match self.unit {
            Unit::Bytes => (size(done), size(self.total)),
            Unit::Count(things) => (
                crate::report::text::thousands(done),
                format!("{} {things}", crate::report::text::thousands(self.total)),
            ),
        };
        format!("memtrace: {}: {done} of {total} ({pct}%)", self.what)
    }

    fn draw(&mut self) {
        self.drawn = self.done;
        let line = self.line();
        let terminal = self.terminal;
        if let Some(out) = &mut self.out {
            let _ = if terminal {
                // Back to the line's start, erase it, draw.
                write!(out, "\r\x1b[2K{line}")
            } else {
                writeln!(out, "{line}")
            };
            let _ = out.flush();
        }
    }

    /// The work is done: the line is erased from a terminal; elsewhere a last line
    /// says so, if any was shown.
    pub fn finish(&mut self) {
        if self.last.is_none() {
            self.out = None;
            return;
        }
        self.done = self.total;
        if self.terminal {
            if let Some(out) = &mut self.out {
                let _ = write!(out, "\r\x1b[2K");
                let _ = out.flush();
            }
        } else if self.drawn != self.done {
            self.draw();
        }
        self.out = None;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `1.5 GiB`, `300.0 MiB`, `12 bytes`
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer whose bytes the test reads afterwards.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lock").clone()).expect("UTF-8")
        }
    }

    #[test]
    fn shown_from_the_first_step_with_no_delay() {
        let out = Shared::default();
        let mut p = Progress::to(
            "scanning the heap",
            3 << 30,
            Unit::Bytes,
            Some(Box::new(out.clone())),
            false,
            Duration::ZERO,
        );
        p.add(1 << 30);
        p.finish();
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.first(),
            Some(&"memtrace: scanning the heap: 1.0 GiB of 3.0 GiB (33%)")
        );
        assert_eq!(
            lines.last(),
            Some(&"memtrace: scanning the heap: 3.0 GiB of 3.0 GiB (100%)")
        );
        assert_eq!(lines.len(), 2, "{text}");
        // Drawn complete already: no second last line.
        let out = Shared::default();
        let mut p = Progress::to(
            "x",
            5,
            Unit::Count("things"),
            Some(Box::new(out.clone())),
            false,
            Duration::ZERO,
        );
        p.add(5);
        p.finish();
        assert_eq!(out.text(), "memtrace: x: 5 of 5 things (100%)\n");
    }

    #[test]
    fn a_terminal_line_is_redrawn_and_erased() {
        let out = Shared::default();
        let mut p = Progress::to(
            "symbolizing",
            2000,
            Unit::Count("stacks"),
            Some(Box::new(out.clone())),
            true,
            Duration::ZERO,
        );
        p.add(500);
        drop(p);
        assert_eq!(
            out.text(),
            "\r\x1b[2Kmemtrace: symbolizing: 500 of 2,000 stacks (25%)\r\x1b[2K"
        );
    }

    #[test]
    fn work_shorter_than_the_delay_prints_nothing() {
        let out = Shared::default();
        let mut p = Progress::to(
            "x",
            10,
            Unit::Count("things"),
            Some(Box::new(out.clone())),
            true,
            Duration::from_secs(3600),
        );
        p.add(10);
        p.finish();
        assert_eq!(out.text(), "");
    }

    #[test]
    fn sizes() {
        assert_eq!(size(12), "12 bytes");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(300 << 20), "300.0 MiB");
        // Nothing to do is all done.
        let p = Progress::to("x", 0, Unit::Bytes, None, false, Duration::ZERO);
        assert!(p.line().ends_with("(100%)"), "{}", p.line());
    }
}

//! Batch mode: the debugger driven by a command file, printing plain text.
//!
//! Everything goes to stderr, like the final report: the program's own stdout is
//! left exactly as it would be without memtrace. Each command is echoed as
//! `(memtrace) COMMAND` before its output, so a transcript reads like a gdb session.
//! When the commands run out the program continues. With several breakpoints the file
//! is read on from stop to stop; without a file every stop prints its stack.

use super::{DebugCommand, Frontend, StopView};
use std::collections::VecDeque;
use std::io::Write;

pub struct Batch {
    /// (the line as written, the command).
    commands: VecDeque<(String, DebugCommand)>,
    /// Run at every stop (no command file), rather than read on.
    every_stop: Option<Vec<(String, DebugCommand)>>,
    out: Box<dyn Write + Send>,
}

impl Batch {
    /// Runs `commands` (each with the text it was written as) at the first stop.
    pub fn new(commands: Vec<(String, DebugCommand)>, out: Box<dyn Write + Send>) -> Batch {
        Batch {
            commands: commands.into(),
            every_stop: None,
            out,
        }
    }

    /// Without a command file: every stop shows where it is and the stack, then the
    /// program goes on.
    pub fn stack_at_every_stop(out: Box<dyn Write + Send>) -> Batch {
        let bt = vec![("bt".to_string(), DebugCommand::Backtrace)];
        Batch {
            commands: bt.clone().into(),
            every_stop: Some(bt),
            out,
        }
    }

    /// A command file's commands; blank lines and `#` comments skipped.
    pub fn parse(text: &str) -> Result<Vec<(String, DebugCommand)>, String> {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|(i, l)| {
                DebugCommand::parse(l)
                    .map(|c| (l.trim().to_string(), c))
                    .map_err(|e| format!("line {}: {e}", i + 1))
            })
            .collect()
    }
}

impl Frontend for Batch {
    fn next(&mut self, _view: &StopView, output: &str) -> DebugCommand {
        let _ = self.out.write_all(output.as_bytes());
        let (text, cmd) = self
            .commands
            .pop_front()
            .unwrap_or_else(|| ("continue".into(), DebugCommand::Continue));
        let _ = writeln!(self.out, "(memtrace) {text}");
        let _ = self.out.flush();
        cmd
    }

    fn gone(&mut self, why: &str) {
        let _ = writeln!(self.out, "memtrace: {why}");
        self.commands.clear();
    }

    fn resumed(&mut self) {
        if let Some(each) = &self.every_stop {
            self.commands = each.clone().into();
        }
    }
}

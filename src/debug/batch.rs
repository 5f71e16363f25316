//! Batch mode: the debugger driven by a command file, printing plain text.
//!
//! Everything goes to stderr, like the final report: the program's own stdout is
//! left exactly as it would be without memtrace. Each command is echoed as
//! `(memtrace) COMMAND` before its output, so a transcript reads like a gdb session.
//! When the commands run out the program continues.

use super::{DebugCommand, Frontend, StopView};
use std::collections::VecDeque;
use std::io::Write;

pub struct Batch {
    /// (the line as written, the command).
    commands: VecDeque<(String, DebugCommand)>,
    out: Box<dyn Write + Send>,
}

impl Batch {
    /// Runs `commands` (each with the text it was written as) at the first stop.
    pub fn new(commands: Vec<(String, DebugCommand)>, out: Box<dyn Write + Send>) -> Batch {
        Batch {
            commands: commands.into(),
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

    /// Without a command file: show where it stopped and the stack, then go on.
    pub fn default_commands() -> Vec<(String, DebugCommand)> {
        vec![("bt".into(), DebugCommand::Backtrace)]
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
}

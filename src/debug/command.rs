//! The debugger's commands, as batch files spell them and the TUI's keys send them.

use memtrace_arch::Syntax;

/// One debugger command. Closed and `Copy`: it crosses from the UI thread to the
/// tracer thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebugCommand {
    /// The stack of the stopped thread, the selected frame marked.
    Backtrace,
    Registers,
    /// Instructions around the selected frame's pc.
    Disassemble,
    /// Source lines around the selected frame's line.
    List,
    /// To the next source line, into calls that have line information.
    Step,
    /// To the next source line of this function, over calls.
    Next,
    StepInstruction,
    /// One instruction, over calls.
    NextInstruction,
    /// Run until the selected frame returns; print the return value.
    Finish,
    Up,
    Down,
    /// Leave the debugger: every thread runs on.
    Continue,
    InfoBlock,
    InfoThread,
    SetSyntax(Syntax),
    ToggleSyntax,
}

/// What `parse` does not understand.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown debugger command {0:?} (try: bt regs disas list step next stepi nexti finish up down continue info block, info thread, set syntax att|intel)")]
pub struct UnknownCommand(pub String);

impl DebugCommand {
    /// Parses one line of a command file. gdb's usual short forms are accepted.
    pub fn parse(line: &str) -> Result<DebugCommand, UnknownCommand> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let c = match words[..] {
            ["bt" | "backtrace" | "where"] => DebugCommand::Backtrace,
            ["regs" | "registers"] | ["info", "registers"] => DebugCommand::Registers,
            ["disas" | "disassemble" | "x/i"] => DebugCommand::Disassemble,
            ["list" | "l" | "source"] => DebugCommand::List,
            ["step" | "s"] => DebugCommand::Step,
            ["next" | "n"] => DebugCommand::Next,
            ["stepi" | "si"] => DebugCommand::StepInstruction,
            ["nexti" | "ni"] => DebugCommand::NextInstruction,
            ["finish" | "fin"] => DebugCommand::Finish,
            ["up"] => DebugCommand::Up,
            ["down"] => DebugCommand::Down,
            ["continue" | "c" | "cont"] => DebugCommand::Continue,
            ["info", "block"] => DebugCommand::InfoBlock,
            ["info", "thread" | "threads"] => DebugCommand::InfoThread,
            ["set", "syntax", "att"] => DebugCommand::SetSyntax(Syntax::Att),
            ["set", "syntax", "intel"] => DebugCommand::SetSyntax(Syntax::Intel),
            _ => return Err(UnknownCommand(line.trim().to_string())),
        };
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_long_and_short_forms() {
        assert_eq!(DebugCommand::parse("bt"), Ok(DebugCommand::Backtrace));
        assert_eq!(
            DebugCommand::parse("  si "),
            Ok(DebugCommand::StepInstruction)
        );
        assert_eq!(
            DebugCommand::parse("info block"),
            Ok(DebugCommand::InfoBlock)
        );
        assert_eq!(
            DebugCommand::parse("set syntax att"),
            Ok(DebugCommand::SetSyntax(Syntax::Att))
        );
        assert!(DebugCommand::parse("frobnicate").is_err());
    }
}

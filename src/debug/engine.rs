//! The debugger core: commands in, text and a [`StopView`] out, the target moved
//! through [`Target`]. Line stepping is gdb's: single-step until the pc is at the
//! start of a line-table row of another line; `next` runs calls to their return;
//! `step` goes into a call only where there is line information, and leaves code
//! without it (the allocator, a library) by running it to its return first.

use super::view::{self, DisasLine, FrameLine, RegLine, SourcePane, StopView};
use super::{Block, DebugCommand, DebugError, Lines, Progress, Target};
use memtrace_arch::{Arch, Native, Regs, Syntax};

/// Instructions one `step` or `next` may single-step before it gives up and stops
/// where it is (a loop on one line, code that never reaches another line).
const MAX_STEPS: usize = 200_000;
/// Frames in a backtrace.
const DEPTH: usize = 64;

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still stopped; the text to show.
    Output(String),
    /// The user let the program go on.
    Continue,
    /// The thread is out of the debugger's hands (see [`Progress::Gone`]).
    Gone(String),
}

pub struct Debugger {
    /// The selected frame: 0 is the pc's.
    frame: usize,
    pub syntax: Syntax,
    /// The registers before the last motion, to mark what changed.
    before: Option<Regs>,
    block: Option<Block>,
    stack: Vec<u64>,
    stack_stale: bool,
    /// Other threads stopped meanwhile (for `info thread`).
    others_stopped: usize,
}

impl Debugger {
    /// A session on a stopped thread: `block` is the allocation it stopped in, and
    /// `frame` the frame to select first (1: the allocation's caller).
    pub fn new(block: Option<Block>, frame: usize, others_stopped: usize) -> Debugger {
        Debugger {
            frame,
            syntax: Syntax::Intel,
            before: None,
            block,
            stack: Vec::new(),
            stack_stale: true,
            others_stopped,
        }
    }

    pub fn block(&self) -> Option<&Block> {
        self.block.as_ref()
    }

    fn stack(&mut self, t: &mut dyn Target) -> &[u64] {
        if self.stack_stale {
            self.stack = t.backtrace(DEPTH);
            self.stack_stale = false;
            self.frame = self.frame.min(self.stack.len().saturating_sub(1));
        }
        &self.stack
    }

    /// The text that announces a stop at an allocation.
    pub fn stop_message(&mut self, t: &mut dyn Target, l: &mut dyn Lines) -> String {
        let v = self.view(t, l);
        let what = match &self.block {
            Some(b) => format!("{}({})", b.function, b.size),
            None => "the program".into(),
        };
        let caller = v.frames.get(1).map(|f| f.label.clone()).unwrap_or_default();
        format!(
            "memtrace: stopped at {what} on thread {}, called from {caller}\n{}{}{}",
            v.tid,
            v.frame_text(),
            v.current_insn_text(),
            v.current_line_text()
        )
    }

    pub fn execute(&mut self, cmd: DebugCommand, t: &mut dyn Target, l: &mut dyn Lines) -> Outcome {
        let text = match cmd {
            DebugCommand::Continue => return Outcome::Continue,
            DebugCommand::Backtrace => self.view(t, l).backtrace_text(),
            DebugCommand::Registers => self.view(t, l).registers_text(),
            DebugCommand::Disassemble => self.view(t, l).disas_text(),
            DebugCommand::List => self.view(t, l).source_text(),
            DebugCommand::InfoBlock => self.view(t, l).block_text(),
            DebugCommand::InfoThread => self.view(t, l).thread_text(),
            DebugCommand::Up | DebugCommand::Down => {
                let len = self.stack(t).len();
                self.frame = match cmd {
                    DebugCommand::Up => (self.frame + 1).min(len.saturating_sub(1)),
                    _ => self.frame.saturating_sub(1),
                };
                let v = self.view(t, l);
                v.frame_text() + &v.current_line_text()
            }
            DebugCommand::SetSyntax(s) => {
                self.syntax = s;
                format!("disassembly in {s:?} syntax\n")
            }
            DebugCommand::ToggleSyntax => {
                self.syntax = match self.syntax {
                    Syntax::Intel => Syntax::Att,
                    Syntax::Att => Syntax::Intel,
                };
                format!("disassembly in {:?} syntax\n", self.syntax)
            }
            DebugCommand::Step
            | DebugCommand::Next
            | DebugCommand::StepInstruction
            | DebugCommand::NextInstruction
            | DebugCommand::Finish => return self.motion(cmd, t, l),
        };
        Outcome::Output(text)
    }

    fn motion(&mut self, cmd: DebugCommand, t: &mut dyn Target, l: &mut dyn Lines) -> Outcome {
        let before = t.regs();
        let before_ptr = self.block.as_ref().and_then(|b| b.ptr);
        let result = match cmd {
            DebugCommand::StepInstruction => t.step_instruction(),
            DebugCommand::NextInstruction => next_instruction(t),
            DebugCommand::Step => self.step_line(t, l, false),
            DebugCommand::Next => self.step_line(t, l, true),
            _ => self.finish(t),
        };
        self.before = Some(before);
        if result.as_ref().is_ok_and(|p| *p == Progress::Stopped) {
            self.note_return(t);
        }
        self.stack_stale = true;
        self.frame = 0;
        match result {
            Err(e) => Outcome::Output(format!("error: {e}\n")),
            Ok(Progress::Gone(why)) => Outcome::Gone(why),
            Ok(Progress::Stopped) => {
                let mut out = String::new();
                if cmd == DebugCommand::Finish {
                    let value = Native::return_value(&t.regs());
                    out.push_str(&format!("returned {value:#x}\n"));
                }
                if let Some(Block { ptr: Some(p), .. }) = &self.block {
                    if before_ptr.is_none() {
                        out.push_str(&format!("the block is at {p:#x}\n"));
                    }
                }
                let v = self.view(t, l);
                out.push_str(&v.frame_text());
                out.push_str(&match cmd {
                    DebugCommand::StepInstruction | DebugCommand::NextInstruction => {
                        v.current_insn_text()
                    }
                    _ => v.current_line_text(),
                });
                Outcome::Output(out)
            }
        }
    }

    /// Runs the selected frame to its return.
    fn finish(&mut self, t: &mut dyn Target) -> Result<Progress, DebugError> {
        let frame = self.frame;
        let ret = *self.stack(t).get(frame + 1).ok_or(DebugError::NoReturn)?;
        let sp = Native::sp(&t.regs());
        t.run_to(ret, sp + 1)
    }

    /// After every motion: if the allocator has just returned, its return value is
    /// the block's pointer.
    fn note_return(&mut self, t: &mut dyn Target) {
        let regs = t.regs();
        if let Some(b) = &mut self.block {
            if b.ptr.is_none() && Native::pc(&regs) == b.ret && Native::sp(&regs) == b.ret_sp {
                b.ptr = Some(Native::return_value(&regs));
            }
        }
    }

    fn step_line(
        &mut self,
        t: &mut dyn Target,
        l: &mut dyn Lines,
        over: bool,
    ) -> Result<Progress, DebugError> {
        let mut start = l.row(pc(t));
        if start.is_none() {
            // No line here (the allocator, a library): like gdb, leave the function
            // first, then step to a line of the caller.
            let sp = Native::sp(&t.regs());
            let Some(&ret) = t.backtrace(2).get(1) else {
                return t.step_instruction();
            };
            if let p @ Progress::Gone(_) = t.run_to(ret, sp + 1)? {
                return Ok(p);
            }
            self.note_return(t);
            start = l.row(pc(t));
            // Back exactly at the start of a line (a call that ended its line).
            if start.as_ref().is_some_and(|r| r.start == pc(t)) {
                return Ok(Progress::Stopped);
            }
        }
        let Some(mut start) = start else {
            return Ok(Progress::Stopped);
        };
        for _ in 0..MAX_STEPS {
            let (pc, sp) = (pc(t), Native::sp(&t.regs()));
            let mut code = [0u8; 16];
            let n = t.read(pc, &mut code);
            let p = match Native::call_len(&code[..n], pc) {
                Some(len) if over => t.run_to(pc + len as u64, sp)?,
                Some(len) => {
                    if let p @ Progress::Gone(_) = t.step_instruction()? {
                        return Ok(p);
                    }
                    match l.row(self::pc(t)) {
                        // Into a function with lines: stop at its first line after
                        // the opening one (past the prologue), as gdb does.
                        Some(entry) => {
                            start = entry;
                            continue;
                        }
                        // No lines there: run it to its return.
                        None => t.run_to(pc + len as u64, sp)?,
                    }
                }
                None => t.step_instruction()?,
            };
            if let Progress::Gone(_) = p {
                return Ok(p);
            }
            let now = self::pc(t);
            match l.row(now) {
                Some(r) if r.start == now && (r.line != start.line || r.file != start.file) => {
                    return Ok(Progress::Stopped)
                }
                Some(_) => {}
                // Returned into code without lines (main into the C library): stop.
                None => return Ok(Progress::Stopped),
            }
        }
        Ok(Progress::Stopped)
    }

    /// Everything the stopped view shows.
    pub fn view(&mut self, t: &mut dyn Target, l: &mut dyn Lines) -> StopView {
        let stack = self.stack(t).to_vec();
        let frames: Vec<FrameLine> = stack
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let f = if i == 0 {
                    l.frames_at(a)
                } else {
                    l.frames_at_return(a)
                };
                FrameLine {
                    address: a,
                    label: view::place_label(&f, a),
                }
            })
            .collect();
        let selected = self.frame.min(frames.len().saturating_sub(1));
        let at = stack.get(selected).copied().unwrap_or_else(|| pc(t));
        // The source shown is the selected frame's, or, when that is the allocator's
        // or a library's code, the first caller's in the program: at a stop in malloc
        // the line that matters is the one that called it.
        let source = (selected..stack.len()).find_map(|i| {
            let a = stack[i];
            let (code, sym) = if i == 0 {
                (a, l.frames_at(a))
            } else {
                (a.wrapping_sub(1), l.frames_at_return(a))
            };
            if l.row(code).is_none() && i + 1 < stack.len() {
                return None;
            }
            let (file, line) = sym.iter().find_map(|f| Some((f.file.clone()?, f.line?)))?;
            Some(source_pane(l, i, file, line))
        });
        StopView {
            tid: t.tid(),
            others_stopped: self.others_stopped,
            location: frames
                .get(selected)
                .map(|f| f.label.clone())
                .unwrap_or_default(),
            frames,
            selected,
            source,
            disas: disassemble(t, l, at, selected > 0, self.syntax),
            syntax: self.syntax,
            regs: self.registers(t),
            block: self.block.clone(),
        }
    }

    fn registers(&self, t: &mut dyn Target) -> Vec<RegLine> {
        let before = self.before.map(|r| Native::named_registers(&r));
        Native::named_registers(&t.regs())
            .into_iter()
            .enumerate()
            .map(|(i, (name, value))| RegLine {
                name,
                value,
                changed: before
                    .as_ref()
                    .and_then(|b| b.get(i))
                    .is_some_and(|&(_, v)| v != value),
            })
            .collect()
    }
}

fn pc(t: &dyn Target) -> u64 {
    Native::pc(&t.regs())
}

fn next_instruction(t: &mut dyn Target) -> Result<Progress, DebugError> {
    let (pc, sp) = (pc(t), Native::sp(&t.regs()));
    let mut code = [0u8; 16];
    let n = t.read(pc, &mut code);
    match Native::call_len(&code[..n], pc) {
        Some(len) => t.run_to(pc + len as u64, sp),
        None => t.step_instruction(),
    }
}

/// The name of a call or jump target: its function, or for a PLT stub the function
/// its slot points to now (`malloc@plt`; unnamed while lazy binding has not run).
fn target_name(t: &mut dyn Target, l: &mut dyn Lines, to: u64) -> Option<String> {
    let name = |l: &mut dyn Lines, a: u64| l.frames_at(a).last().and_then(|f| f.function.clone());
    if let Some(n) = name(l, to) {
        return Some(n);
    }
    let mut code = [0u8; 16];
    let n = t.read(to, &mut code);
    let slot = Native::jump_slot(&code[..n], to)?;
    let mut word = [0u8; 8];
    if t.read(slot, &mut word) != 8 {
        return None;
    }
    name(l, u64::from_le_bytes(word)).map(|n| format!("{n}@plt"))
}

fn source_pane(l: &mut dyn Lines, frame: usize, file: String, line: u32) -> SourcePane {
    let first = line.saturating_sub(view::SOURCE_CONTEXT).max(1);
    let lines = match l.source(&file) {
        Some(text) => (first..=line + view::SOURCE_CONTEXT)
            .filter_map(|n| Some((n, text.get(n as usize - 1)?.clone())))
            .collect(),
        None => Vec::new(),
    };
    SourcePane {
        frame,
        file,
        line,
        lines,
    }
}

/// Instructions around `at`. x86 code cannot be decoded backwards, so decoding starts
/// at the first of a few earlier addresses from which it falls exactly on `at`.
/// `caller`: `at` is a return address, and the marked instruction is the call before it.
fn disassemble(
    t: &mut dyn Target,
    l: &mut dyn Lines,
    at: u64,
    caller: bool,
    syntax: Syntax,
) -> Vec<DisasLine> {
    const BACK: u64 = 48;
    let from = at.saturating_sub(BACK);
    let mut code = vec![0u8; (BACK as usize) + 16 * (view::DISAS_AFTER + 1)];
    let n = t.read(from, &mut code);
    code.truncate(n);
    let back = (at - from) as usize;
    let decode_from = |skip: usize| {
        let insns = Native::disassemble(
            &code[skip.min(code.len())..],
            from + skip as u64,
            64,
            syntax,
        );
        insns.iter().any(|i| i.address == at).then_some(insns)
    };
    let insns = (0..back)
        .find_map(decode_from)
        .or_else(|| Some(Native::disassemble(code.get(back..)?, at, 64, syntax)))
        .unwrap_or_default();
    let Some(here) = insns.iter().position(|i| i.address == at) else {
        return Vec::new();
    };
    let current = if caller { here.saturating_sub(1) } else { here };
    let first = current.saturating_sub(view::DISAS_BEFORE);
    insns
        .into_iter()
        .enumerate()
        .skip(first)
        .take(view::DISAS_BEFORE + 1 + view::DISAS_AFTER)
        .map(|(i, insn)| {
            let mut text = insn.text;
            if let Some(name) = insn.branch_target.and_then(|to| target_name(t, l, to)) {
                text.push_str(&format!(" <{name}>"));
            }
            DisasLine {
                address: insn.address,
                bytes: insn.bytes,
                text,
                current: i == current,
            }
        })
        .collect()
}

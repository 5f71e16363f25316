//! The debugger core against a fake target: a few real x86 instructions in fake
//! memory, run by a tiny interpreter (nop, call, ret), with a made-up line table.

use super::*;
use crate::symbols::Row;
use memtrace_arch::{Arch, Native};
use std::collections::HashMap;

/// main:   0x1000 nop (line 1); 0x1001 call callee (line 2); 0x1006 call lib (line 3);
///         0x100b nop (line 4); 0x100c ret (line 4)
/// callee: 0x2000 nop (line 10, its opening line); 0x2001 nop (line 11); 0x2002 ret
/// lib:    0x3000 nop; 0x3001 ret (no line information)
fn program() -> HashMap<u64, u8> {
    let mut mem = HashMap::new();
    let mut put = |at: u64, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            mem.insert(at + i as u64, *b);
        }
    };
    let call = |from: u64, to: u64| {
        let rel = (to as i64 - (from as i64 + 5)) as i32;
        let mut b = vec![0xe8];
        b.extend_from_slice(&rel.to_le_bytes());
        b
    };
    put(0x1000, &[0x90]);
    put(0x1001, &call(0x1001, 0x2000));
    put(0x1006, &call(0x1006, 0x3000));
    put(0x100b, &[0x90, 0xc3]);
    put(0x2000, &[0x90, 0x90, 0xc3]);
    put(0x3000, &[0x90, 0xc3]);
    mem
}

/// (start, end, line) of the fake line table; file "main.c".
const ROWS: &[(u64, u64, u32)] = &[
    (0x1000, 0x1001, 1),
    (0x1001, 0x1006, 2),
    (0x1006, 0x100b, 3),
    (0x100b, 0x100d, 4),
    (0x2000, 0x2001, 10),
    (0x2001, 0x2003, 11),
];

struct Fake {
    mem: HashMap<u64, u8>,
    regs: Regs,
    /// Instructions executed.
    steps: usize,
}

impl Fake {
    fn at(pc: u64) -> Fake {
        let mut regs = Regs::default();
        Native::set_pc(&mut regs, pc);
        let mut f = Fake {
            mem: program(),
            regs,
            steps: 0,
        };
        // The stack: sp at 0x8000, holding a return address that ends the program.
        f.set_sp(0x8000);
        f.write_u64(0x8000, 0xdead);
        f
    }

    fn set_sp(&mut self, sp: u64) {
        // rsp is word 19 of user_regs_struct.
        self.regs.words[19] = sp;
    }

    fn write_u64(&mut self, at: u64, v: u64) {
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            self.mem.insert(at + i as u64, *b);
        }
    }

    fn read_u64(&self, at: u64) -> u64 {
        let b: Vec<u8> = (0..8)
            .map(|i| *self.mem.get(&(at + i)).unwrap_or(&0))
            .collect();
        u64::from_le_bytes(b.try_into().unwrap_or_default())
    }

    fn pc(&self) -> u64 {
        Native::pc(&self.regs)
    }
}

impl Target for Fake {
    fn tid(&self) -> i32 {
        1
    }
    fn regs(&self) -> Regs {
        self.regs
    }
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> usize {
        // Everything is mapped: bytes never written read as zero.
        for (i, b) in buf.iter_mut().enumerate() {
            *b = *self.mem.get(&(addr + i as u64)).unwrap_or(&0);
        }
        buf.len()
    }
    fn step_instruction(&mut self) -> Result<Progress, DebugError> {
        let pc = self.pc();
        if pc == 0xdead {
            return Ok(Progress::Gone("the program ended".into()));
        }
        self.steps += 1;
        let mut code = [0u8; 8];
        let n = self.read(pc, &mut code);
        let sp = Native::sp(&self.regs);
        let next = match code[0] {
            0xc3 => {
                self.set_sp(sp + 8);
                self.read_u64(sp)
            }
            0xe8 => {
                let insn = Native::disassemble(&code[..n], pc, 1, memtrace_arch::Syntax::Intel);
                self.set_sp(sp - 8);
                self.write_u64(sp - 8, pc + 5);
                // The call's result, as a function would leave it.
                self.regs.words[10] = 0x4242;
                insn[0].branch_target.unwrap_or(0)
            }
            _ => pc + Native::insn_len(&code[..n], pc).unwrap_or(1) as u64,
        };
        Native::set_pc(&mut self.regs, next);
        Ok(Progress::Stopped)
    }
    fn run_to(&mut self, addr: u64, min_sp: u64) -> Result<Progress, DebugError> {
        loop {
            if let p @ Progress::Gone(_) = self.step_instruction()? {
                return Ok(p);
            }
            if self.pc() == addr && Native::sp(&self.regs) >= min_sp {
                return Ok(Progress::Stopped);
            }
        }
    }
    fn backtrace(&mut self, depth: usize) -> Vec<u64> {
        // Frame pointers do not exist here: every word from sp up to 0x8000 that
        // holds a code address is a return address.
        let mut out = vec![self.pc()];
        let mut at = Native::sp(&self.regs);
        while at <= 0x8000 && out.len() < depth {
            out.push(self.read_u64(at));
            at += 8;
        }
        out
    }
}

struct FakeLines;

impl Lines for FakeLines {
    fn frames_at(&mut self, pc: u64) -> Vec<Frame> {
        let (function, object) = match pc {
            0x1000..=0x1fff => ("main", "/src/main"),
            0x2000..=0x2fff => ("callee", "/src/main"),
            0x3000..=0x3fff => ("lib", "/lib/libc.so.6"),
            // PLT stubs and the rest have no symbol.
            _ => return Vec::new(),
        };
        let row = self.row(pc);
        vec![Frame {
            address: pc,
            function: Some(function.into()),
            file: row.as_ref().map(|r| r.file.clone()),
            line: row.map(|r| r.line),
            object: Some(object.into()),
            ..Frame::default()
        }]
    }
    fn frames_at_return(&mut self, ret: u64) -> Vec<Frame> {
        let mut f = self.frames_at(ret - 1);
        for frame in &mut f {
            frame.address = ret;
        }
        f
    }
    fn row(&mut self, pc: u64) -> Option<Row> {
        ROWS.iter()
            .find(|&&(s, e, _)| s <= pc && pc < e)
            .map(|&(start, _, line)| Row {
                start,
                file: "/src/main.c".into(),
                line,
            })
    }
    fn source(&mut self, _file: &str) -> Option<&[String]> {
        None
    }
}

fn run(d: &mut Debugger, t: &mut Fake, cmd: DebugCommand) -> String {
    match d.execute(cmd, t, &mut FakeLines) {
        Outcome::Output(s) => s,
        other => panic!("{cmd:?}: {other:?}"),
    }
}

#[test]
fn next_goes_line_by_line_over_calls() {
    let mut t = Fake::at(0x1000);
    let mut d = Debugger::new(None, 0, 0);
    let out = run(&mut d, &mut t, DebugCommand::Next);
    assert_eq!(t.pc(), 0x1001, "{out}");
    assert!(out.contains("main at main.c:2"), "{out}");
    run(&mut d, &mut t, DebugCommand::Next);
    assert_eq!(t.pc(), 0x1006, "over the call to callee");
    run(&mut d, &mut t, DebugCommand::Next);
    assert_eq!(t.pc(), 0x100b, "over the call to lib");
}

#[test]
fn step_enters_functions_with_lines_past_their_opening_line() {
    let mut t = Fake::at(0x1001);
    let mut d = Debugger::new(None, 0, 0);
    let out = run(&mut d, &mut t, DebugCommand::Step);
    assert_eq!(t.pc(), 0x2001, "{out}");
    assert!(out.contains("callee at main.c:11"), "{out}");
    // Out of callee: back in main mid-line 2, on to the start of line 3.
    run(&mut d, &mut t, DebugCommand::Step);
    assert_eq!(t.pc(), 0x1006);
    // lib has no lines: step runs it to its return.
    run(&mut d, &mut t, DebugCommand::Step);
    assert_eq!(t.pc(), 0x100b);
}

#[test]
fn step_from_code_without_lines_leaves_it_first() {
    // Stopped at lib's entry, called from main's line 3: like a stop in malloc.
    let mut t = Fake::at(0x3000);
    t.set_sp(0x7ff8);
    t.write_u64(0x7ff8, 0x100b);
    let mut d = Debugger::new(None, 0, 0);
    run(&mut d, &mut t, DebugCommand::Next);
    assert_eq!(t.pc(), 0x100b);
    assert_eq!(Native::sp(&t.regs), 0x8000);
}

#[test]
fn finish_returns_to_the_caller_and_notes_the_block() {
    let mut t = Fake::at(0x3000);
    t.set_sp(0x7ff8);
    t.write_u64(0x7ff8, 0x100b);
    t.regs.words[10] = 0x5555_0000; // rax, as malloc would return it
    let block = Block {
        function: "malloc".into(),
        size: 30,
        entry: 0x3000,
        ret: 0x100b,
        ret_sp: 0x8000,
        ptr: None,
    };
    let mut d = Debugger::new(Some(block), 0, 2);
    let bt = run(&mut d, &mut t, DebugCommand::Backtrace);
    assert!(bt.starts_with(">#0 "), "frame 0 selected:\n{bt}");
    assert!(
        bt.contains("lib (libc.so.6)") && bt.contains("main at main.c:3"),
        "{bt}"
    );
    let out = run(&mut d, &mut t, DebugCommand::Finish);
    assert_eq!(t.pc(), 0x100b);
    assert!(out.contains("returned 0x55550000"), "{out}");
    assert!(out.contains("the block is at 0x55550000"), "{out}");
    assert_eq!(d.block().and_then(|b| b.ptr), Some(0x5555_0000));
    let info = run(&mut d, &mut t, DebugCommand::InfoBlock);
    assert!(info.contains("malloc(30) returned 0x55550000"), "{info}");
    let thread = run(&mut d, &mut t, DebugCommand::InfoThread);
    assert!(thread.contains("2 other thread(s)"), "{thread}");
}

#[test]
fn frames_registers_and_disassembly() {
    let mut t = Fake::at(0x2001);
    t.set_sp(0x7ff8);
    t.write_u64(0x7ff8, 0x1006);
    let mut d = Debugger::new(None, 0, 0);
    let disas = run(&mut d, &mut t, DebugCommand::Disassemble);
    let current: Vec<&str> = disas.lines().filter(|l| l.starts_with("=>")).collect();
    assert_eq!(current.len(), 1, "{disas}");
    assert!(current[0].contains("0x000000002001") && current[0].ends_with("nop"));
    let up = run(&mut d, &mut t, DebugCommand::Up);
    assert!(up.starts_with("#1 0x1006 main at main.c:2"), "{up}");
    // In the caller's frame the marked instruction is its call, with the callee named.
    let disas = run(&mut d, &mut t, DebugCommand::Disassemble);
    let current = disas
        .lines()
        .find(|l| l.starts_with("=>"))
        .unwrap_or_default();
    assert!(
        current.contains("e8") && current.ends_with("<callee>"),
        "{disas}"
    );
    run(&mut d, &mut t, DebugCommand::Down);
    run(
        &mut d,
        &mut t,
        DebugCommand::SetSyntax(memtrace_arch::Syntax::Att),
    );
    let att = run(&mut d, &mut t, DebugCommand::Disassemble);
    assert!(att.contains("ret"), "{att}");
    // A step changes rip: it is marked in `regs`.
    run(&mut d, &mut t, DebugCommand::StepInstruction);
    let regs = run(&mut d, &mut t, DebugCommand::Registers);
    let rip = regs.lines().find(|l| l.contains("rip")).unwrap_or_default();
    assert!(rip.contains("0x0000000000002002*"), "{regs}");
    assert!(!regs.contains("rbx 0x0000000000000000*"), "{regs}");
}

#[test]
fn the_end_of_the_program_ends_the_session() {
    let mut t = Fake::at(0x100c);
    let mut d = Debugger::new(None, 0, 0);
    run(&mut d, &mut t, DebugCommand::StepInstruction);
    assert_eq!(t.pc(), 0xdead);
    assert!(matches!(
        d.execute(DebugCommand::StepInstruction, &mut t, &mut FakeLines),
        Outcome::Gone(_)
    ));
    assert_eq!(
        d.execute(DebugCommand::Continue, &mut t, &mut FakeLines),
        Outcome::Continue
    );
}

#[test]
fn a_call_through_the_plt_is_named_after_its_target() {
    let mut t = Fake::at(0x5000);
    // 0x5000: call 0x4000; 0x4000: jmp [rip+0x1ffa] (the slot at 0x6000) -> lib.
    for (i, b) in [0xe8u8, 0xfb, 0xef, 0xff, 0xff].iter().enumerate() {
        t.mem.insert(0x5000 + i as u64, *b);
    }
    for (i, b) in [0xffu8, 0x25, 0xfa, 0x1f, 0x00, 0x00].iter().enumerate() {
        t.mem.insert(0x4000 + i as u64, *b);
    }
    t.write_u64(0x6000, 0x3000);
    let mut d = Debugger::new(None, 0, 0);
    let disas = run(&mut d, &mut t, DebugCommand::Disassemble);
    let current = disas
        .lines()
        .find(|l| l.starts_with("=>"))
        .unwrap_or_default();
    assert!(current.ends_with("<lib@plt>"), "{disas}");
}

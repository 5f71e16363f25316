//! The stepping debugger: stop at an allocation site, look, step, continue.
//!
//! The core ([`Debugger`]) is plain safe Rust. It drives a stopped thread through the
//! [`Target`] trait (registers, memory, one instruction, run to an address) and finds
//! lines and names through [`Lines`]; the tracer implements the first
//! (`tracer/step.rs`), a symbolizer the second. Batch mode (`--commands`) and the
//! TUI's stopped view are two front ends of the same core: both send a
//! [`DebugCommand`] and get back text and a [`StopView`].
//!
//! What the user sees is the program, never memtrace: code read through [`Target`]
//! has the original bytes under memtrace's breakpoints, and a step never ends in a
//! scratch page, a return stub or the trampoline (the target maps those back).

pub mod breaks;
pub mod command;
mod engine;
pub mod view;

pub use breaks::BreakSpec;
pub use command::DebugCommand;
pub use engine::{Debugger, Outcome};
pub use view::StopView;

use crate::symbols::{Frame, Row};
use memtrace_arch::Regs;

/// Where a motion of the target (a step, a run to an address) left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Stopped again, on the same thread.
    Stopped,
    /// The thread is gone or out of our hands (it exited, the program ended, it
    /// forked or executed a new program): the session is over. Says what happened.
    Gone(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    #[error("cannot control thread {tid}: {err} (was it killed?)")]
    Ptrace { tid: i32, err: std::io::Error },
    #[error("no return address for this frame: the stack could not be unwound further")]
    NoReturn,
}

/// A thread of the traced program, stopped, as the debugger drives it.
pub trait Target {
    fn tid(&self) -> i32;
    /// The thread's registers (pc is always in the program's code, never in ours).
    fn regs(&self) -> Regs;
    /// Reads code or data from `addr`; returns how many bytes could be read. Bytes
    /// under memtrace's own breakpoints read as the program's original bytes.
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> usize;
    /// Runs one instruction of the program. Allocator hooks on the way still record
    /// the call.
    fn step_instruction(&mut self) -> Result<Progress, DebugError>;
    /// Runs the thread (the others stay stopped) until it reaches `addr` with its
    /// stack pointer at or above `min_sp` (so a recursive call returning to the same
    /// address does not count).
    fn run_to(&mut self, addr: u64, min_sp: u64) -> Result<Progress, DebugError>;
    /// The pc, then the return addresses of the calling frames (the real ones, never
    /// memtrace's return stubs), at most `depth` in all.
    fn backtrace(&mut self, depth: usize) -> Vec<u64>;
}

/// Source-level knowledge about code addresses.
pub trait Lines {
    /// The frames (inlined ones first) at instruction address `pc`.
    fn frames_at(&mut self, pc: u64) -> Vec<Frame>;
    /// The frames at a return address (the call is just before it).
    fn frames_at_return(&mut self, ret: u64) -> Vec<Frame>;
    /// The line-table row of `pc`, where stepping by line may stop; None where there
    /// is no line information, or in code that line stepping skips (the C library,
    /// the loader, libstdc++: the allocator's own code).
    fn row(&mut self, pc: u64) -> Option<Row>;
    /// A source file's lines, if it can be read.
    fn source(&mut self, file: &str) -> Option<&[String]>;
}

/// The allocation the program was stopped in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The allocator function, as the program called it.
    pub function: String,
    pub size: u64,
    /// The allocator's entry, where the thread stopped.
    pub entry: u64,
    /// Where the allocator returns to, and the stack pointer it returns with: the
    /// first stop there has the block's pointer as the return value.
    pub ret: u64,
    pub ret_sp: u64,
    /// The pointer it returned, once `finish` has run it to its return.
    pub ptr: Option<u64>,
}

pub mod batch;
pub mod lines;

/// Who drives a debugger session: batch mode reads commands from a file, the TUI
/// from keys. Called on the tracer thread, with the target stopped.
pub trait Frontend {
    /// The thread is stopped; `output` is what the last command printed (first: the
    /// stop's announcement). Returns the next command; [`DebugCommand::Continue`]
    /// lets the program run on.
    fn next(&mut self, view: &StopView, output: &str) -> DebugCommand;
    /// The session ended without `continue` (the thread exited, the program ended).
    fn gone(&mut self, why: &str);
    /// The program runs again.
    fn resumed(&mut self) {}
}

#[cfg(test)]
mod tests;

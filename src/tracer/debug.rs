//! Site breakpoints in the tracer: the check at an allocator's entry, and the
//! debugger session that runs, on the tracer thread, while the program is stopped.
//!
//! At a hooked allocation's entry `calls.rs` calls `Tracer::check_break` with the
//! stack it has just interned. A match only marks the hit; `on_trap` then asks
//! `Tracer::debug_stop`, which stops every other thread, hands the thread (pc at
//! the allocator's first instruction, its entry bookkeeping done as usual, so the
//! allocation is still recorded) to the [`Debugger`] core and its [`Frontend`], and
//! resumes everything on `continue`. A breakpoint is one-shot: it is disarmed when
//! it hits.

use super::step::Live;
use super::Tracer;
use crate::debug::breaks::Armed;
use crate::debug::lines::SymbolLines;
use crate::debug::{Block, BreakSpec, Debugger, Frontend, Outcome};
use crate::elf::ObjectInfo;
use crate::event::{StackId, Tid};
use crate::hooks::HookFn;
use crate::symbols::Symbolizer;
use memtrace_arch::{Arch, Native, Regs};

/// What the tracer keeps for the debugger.
pub struct Session<'s> {
    armed: Vec<Armed>,
    frontend: Box<dyn Frontend + 's>,
    /// The module list the armed ranges were computed for (see `modules_key`).
    ranges_for: Option<(usize, u32, u64)>,
    hit: Option<Hit>,
    lines: Option<SymbolLines>,
}

#[derive(Clone, Copy, Debug)]
struct Hit {
    tid: Tid,
    func: HookFn,
    args: [u64; 3],
}

impl<'s> Tracer<'s> {
    /// Arms site breakpoints; `frontend` drives the program when one hits. More come
    /// while the program runs as [`super::Command::Break`].
    pub fn set_debugger(&mut self, breaks: Vec<BreakSpec>, frontend: Box<dyn Frontend + 's>) {
        self.debug = Some(Box::new(Session {
            armed: breaks.into_iter().map(Armed::new).collect(),
            frontend,
            ranges_for: None,
            hit: None,
            lines: None,
        }));
        if self.breaks_armed() {
            // Every allocation needs a stop while one is armed. Called before the
            // program runs (a launch stopped at its exec, an attach whose threads are
            // all between memtrace's bytes): no thread is inside a changing entry.
            self.set_inline(false, &[]);
        }
    }

    /// Arms one more site breakpoint (the live view's `b`), for the next allocation.
    pub(super) fn arm_break(&mut self, spec: BreakSpec) {
        if let Some(s) = self.debug.as_mut() {
            s.armed.push(Armed::new(spec));
            s.ranges_for = None;
        }
        // Entries trap from now on (the command is handled between stops: no thread
        // is inside memtrace's bytes at an entry that traps already).
        self.set_inline(false, &[]);
    }

    /// Whether a site breakpoint is armed: every allocation then needs a stop.
    pub(super) fn breaks_armed(&self) -> bool {
        self.debug.as_ref().is_some_and(|s| !s.armed.is_empty())
    }

    /// The breakpoints that are still armed (never hit), as the user wrote them.
    pub fn armed_breaks(&self) -> Vec<String> {
        self.debug
            .as_ref()
            .map(|s| s.armed.iter().map(|a| a.spec.label()).collect())
            .unwrap_or_default()
    }

    /// At an allocation's entry: does it stop here? Cheap unless objects were loaded
    /// since the last call (then the armed source and function breakpoints are
    /// resolved to code ranges again).
    pub(super) fn check_break(
        &mut self,
        tid: Tid,
        func: HookFn,
        args: [u64; 3],
        stack: StackId,
        ret: u64,
    ) {
        let Some(s) = self.debug.as_mut() else { return };
        if s.armed.is_empty() || func.requested_size(args).is_none() {
            return;
        }
        if s.armed.iter().any(Armed::needs_ranges) {
            let (was, now) = (s.ranges_for, self.modules_key());
            if was != Some(now) {
                self.resolve_breaks();
            }
            if let Some(s) = self.debug.as_mut() {
                s.ranges_for = Some(now);
            }
        }
        let Some(s) = self.debug.as_mut() else { return };
        if let Some(i) = s.armed.iter().position(|a| a.matches(stack, ret)) {
            s.armed.remove(i);
            s.hit = Some(Hit { tid, func, args });
        }
    }

    /// Tells one module list from another (a dlopen, a dlclose, an exec) for the cost
    /// of a pass over a dozen entries.
    fn modules_key(&self) -> (usize, u32, u64) {
        let modules = self.image.modules();
        let mix = modules
            .iter()
            .fold(0u64, |h, m| h.rotate_left(7) ^ m.base ^ m.end);
        (modules.len(), self.generation, mix)
    }

    /// The symbolizer of the debugger, in step with the loaded objects.
    fn debug_lines(&mut self) -> Option<&mut SymbolLines> {
        let (pid, generation) = (self.pid, self.generation);
        let modules = self.image.modules().to_vec();
        let s = self.debug.as_mut()?;
        let lines = s
            .lines
            .get_or_insert_with(|| SymbolLines::new(Symbolizer::new(pid)));
        lines.sym.update_modules(&modules, generation);
        Some(lines)
    }

    /// Computes the code ranges of the armed source-line and function breakpoints.
    fn resolve_breaks(&mut self) {
        let modules = self.image.modules().to_vec();
        let mut objects: Vec<(u64, Option<ObjectInfo>)> = Vec::new();
        let specs: Vec<BreakSpec> = match &self.debug {
            Some(s) => s.armed.iter().map(|a| a.spec.clone()).collect(),
            None => return,
        };
        let mut ranges = Vec::with_capacity(specs.len());
        for spec in &specs {
            let r = match spec {
                BreakSpec::Line { file, line } => match self.debug_lines() {
                    Some(l) => l.sym.line_ranges(file, *line, &|path| {
                        !crate::debug::lines::is_system_object(path)
                    }),
                    None => Vec::new(),
                },
                BreakSpec::Function(name) => {
                    if objects.is_empty() {
                        objects = modules
                            .iter()
                            .map(|m| {
                                let info = self.object_info(m);
                                let bias = info
                                    .as_ref()
                                    .map_or(0, |i| m.base.wrapping_sub(i.first_vaddr));
                                (bias, info)
                            })
                            .collect();
                    }
                    objects
                        .iter()
                        .filter_map(|(bias, info)| Some((*bias, info.as_ref()?.function(name)?)))
                        .map(|(bias, f)| (bias + f.address, bias + f.address + f.size.max(1)))
                        .collect()
                }
                BreakSpec::Stack(_) | BreakSpec::ReturnAddress(_) => Vec::new(),
            };
            ranges.push(r);
        }
        if let Some(s) = self.debug.as_mut() {
            for (a, r) in s.armed.iter_mut().zip(ranges) {
                a.ranges = r;
            }
        }
    }

    /// After a hook's entry on `tid` at `at` (`regs` as trapped): if it hit a site
    /// breakpoint, runs the debugger session and returns true (every thread has been
    /// resumed then, or handed back to the stop loop).
    pub(super) fn debug_stop(&mut self, tid: Tid, at: u64, regs: &Regs) -> bool {
        let hit = match self.debug.as_mut() {
            Some(s) if s.hit.is_some_and(|h| h.tid == tid) => s.hit.take(),
            _ => None,
        };
        let Some(hit) = hit else { return false };
        self.debug_lines();
        let Some(mut session) = self.debug.take() else {
            return false;
        };
        // The live view shows the sites as of this stop.
        self.sink.tick(&self.stacks);
        // Every other thread holds still while this one is examined.
        let others = self.stop_all(Some(tid));
        let held = others.regs.len().saturating_sub(1) + others.missed;
        let mut regs = *regs;
        Native::set_pc(&mut regs, at);
        let _ = crate::ptrace::set_regs(tid, &regs);
        // The call's pending frame (just pushed by its entry) knows where it returns.
        let sp = Native::sp(&regs);
        let (ret, ret_sp) = match self.pending_return(tid, &regs) {
            Some((entry_sp, real)) if entry_sp == sp => (real, Native::sp_after_return(sp)),
            _ => (0, 0),
        };
        // `operator new(unsigned long)` shows as `operator new(40)`: its size.
        let name = crate::symbols::demangle(hit.func.name());
        let block = Block {
            function: name.split('(').next().unwrap_or(&name).to_string(),
            size: hit.func.requested_size(hit.args).unwrap_or(0),
            entry: at,
            ret,
            ret_sp,
            ptr: None,
        };
        let mut dbg = Debugger::new(Some(block), 0, held);
        let mut live = Live {
            t: self,
            tid,
            regs,
            entered: Some(at),
        };
        // Whether the thread runs on at the end (a thread the session lost is handed
        // back to the stop loop instead).
        let mut run_on = true;
        let Session {
            frontend, lines, ..
        } = &mut *session;
        if let Some(lines) = lines.as_mut() {
            let mut output = dbg.stop_message(&mut live, lines);
            let gone = loop {
                let view = dbg.view(&mut live, lines);
                let cmd = frontend.next(&view, &output);
                let outcome = dbg.execute(cmd, &mut live, lines);
                // Allocations made while stepping are recorded: show them.
                live.t.sink.tick(&live.t.stacks);
                match outcome {
                    Outcome::Output(text) => output = text,
                    Outcome::Continue => break None,
                    Outcome::Gone(why) => break Some(why),
                }
            };
            match gone {
                None => live.prepare_resume(),
                Some(why) => {
                    frontend.gone(&why);
                    run_on = false;
                }
            }
        } else {
            live.prepare_resume();
        }
        frontend.resumed();
        self.debug = Some(session);
        if !self.breaks_armed() {
            // No site breakpoint left: back to recording without a stop per call,
            // while every thread is still held.
            let held: Vec<Tid> = others.regs.iter().map(|(t, _)| *t).collect();
            self.set_inline(true, &held);
        }
        if run_on {
            self.resume(tid);
        }
        self.resume_all(others);
        true
    }
}

//! Making the target run a system call for us (to map scratch pages).
//!
//! The thread is pointed at a `syscall; int3` stub in a scratch page, so no code that
//! other threads might run is touched. Before the first scratch page exists (at exec,
//! when the process has a single thread) the stub is written over the code at the
//! thread's pc for the duration of the call.

use super::{TraceError, Tracer};
use crate::event::Tid;
use crate::ptrace::{self, Stop};
use memtrace_arch::{Arch, Native};

impl Tracer<'_> {
    /// Runs system call `nr` in thread `tid` (stopped) and returns its result.
    pub(super) fn inject_syscall(
        &mut self,
        tid: Tid,
        nr: u64,
        args: [u64; 6],
    ) -> Result<i64, TraceError> {
        let err = |what: &str, e: std::io::Error| TraceError::Setup(format!("{what}: {e}"));
        let saved = ptrace::get_regs(tid).map_err(|e| err("reading registers", e))?;
        if Native::syscall_nr(&saved).is_some()
            && Native::syscall_result(&saved) == -(libc::ENOSYS as i64)
        {
            // Stopped inside a system call still running (a fork or exit event):
            // the injected one would take its place. Callers settle such a thread
            // first; this is the last guard.
            return Err(TraceError::Setup(
                "the thread is inside a system call".to_string(),
            ));
        }
        let (stub, patched) = match self.scratch.syscall_stub() {
            Some(stub) => (stub, None),
            None => {
                let pc = Native::pc(&saved);
                let mut orig = vec![0u8; Native::SYSCALL_THEN_BREAK.len()];
                self.mem
                    .read(pc, &mut orig)
                    .map_err(|e| err("reading code", e))?;
                // Other threads may run this code after a memtrace that died here.
                if let Some(g) = &self.guardian {
                    g.record(pc, &orig);
                }
                self.mem
                    .write(pc, Native::SYSCALL_THEN_BREAK)
                    .map_err(|e| err("writing code", e))?;
                (pc, Some(orig))
            }
        };
        let mut r = saved;
        Native::set_syscall(&mut r, nr, args);
        Native::set_pc(&mut r, stub);
        let ran = self.run_until_trap(tid, &r);
        if let Some(orig) = patched {
            let _ = self.mem.write(stub, &orig);
            if let Some(g) = &self.guardian {
                g.withdraw(stub);
            }
        }
        let after = ran?;
        ptrace::set_regs(tid, &saved).map_err(|e| err("restoring registers", e))?;
        Ok(Native::syscall_result(&after))
    }

    fn run_until_trap(
        &mut self,
        tid: Tid,
        regs: &memtrace_arch::Regs,
    ) -> Result<memtrace_arch::Regs, TraceError> {
        let err = |e: std::io::Error| TraceError::Setup(format!("injected system call: {e}"));
        ptrace::set_regs(tid, regs).map_err(err)?;
        ptrace::cont(tid, 0).map_err(err)?;
        loop {
            match ptrace::wait_tid(tid).map_err(err)? {
                Stop::Signal {
                    signal: libc::SIGTRAP,
                    ..
                } => return ptrace::get_regs(tid).map_err(err),
                Stop::Signal { signal, .. } => {
                    // A signal for the program arrived meanwhile: hold it, deliver later.
                    self.held_signals.insert(tid, signal);
                    ptrace::cont(tid, 0).map_err(err)?;
                }
                Stop::Event { .. } => ptrace::cont(tid, 0).map_err(err)?,
                Stop::Exited { .. } | Stop::Killed { .. } => {
                    return Err(TraceError::Setup(
                        "the program ended during an injected system call".into(),
                    ))
                }
            }
        }
    }

    /// A thread stopped at an event inside a system call (the exec stop inside
    /// `execve`, a clone, fork or vfork-done stop) is still in that call: registers
    /// set now are partly overwritten by its return (an injected call would run with
    /// the new thread's id for its number, and the program's fork would return that
    /// call's -ENOSYS). Runs the thread into a breakpoint placed at its own pc (so no
    /// instruction of the program runs) to get a clean stop, the call returned.
    pub(super) fn settle_in_place(&mut self, tid: Tid) -> Result<(), TraceError> {
        let err = |e: std::io::Error| {
            TraceError::Setup(format!("letting a system call return before another: {e}"))
        };
        let regs = ptrace::get_regs(tid).map_err(err)?;
        let pc = Native::pc(&regs);
        let mut orig = vec![0u8; Native::BREAKPOINT.len()];
        self.mem.read(pc, &mut orig).map_err(err)?;
        // Other threads may run this code after a memtrace that died here.
        if let Some(g) = &self.guardian {
            g.record(pc, &orig);
        }
        self.mem.write(pc, Native::BREAKPOINT).map_err(err)?;
        let ran = self.run_until_trap(tid, &regs);
        self.mem.write(pc, &orig).map_err(err)?;
        if let Some(g) = &self.guardian {
            g.withdraw(pc);
        }
        let mut r = ran?;
        Native::set_pc(&mut r, pc);
        ptrace::set_regs(tid, &r).map_err(err)
    }

    /// Maps a new scratch region (readable, executable) near `hint` and fills in its
    /// header. Returns its address.
    pub(super) fn map_scratch(&mut self, tid: Tid, hint: u64) -> Result<u64, TraceError> {
        let prot = (libc::PROT_READ | libc::PROT_EXEC) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let size = super::scratch::REGION_SIZE;
        let addr = self.inject_syscall(
            tid,
            Native::SYS_MMAP,
            [hint, size, prot, flags, u64::MAX, 0],
        )?;
        if (-4095..0).contains(&addr) {
            return Err(TraceError::Setup(format!(
                "mmap of a scratch page in the target failed: {}",
                std::io::Error::from_raw_os_error(-addr as i32)
            )));
        }
        let addr = addr as u64;
        self.mem
            .write(addr, &super::scratch::region_header())
            .map_err(|e| TraceError::Setup(format!("writing the scratch page: {e}")))?;
        self.scratch.add_region(addr);
        Ok(addr)
    }
}

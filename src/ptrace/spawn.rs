//! Starting a program under trace.
//!
//! fork; the child waits on a pipe until the parent has seized it (PTRACE_SEIZE, so
//! group-stops and new threads are reported the modern way), then execs. The exec
//! itself is the first thing the tracer sees (PTRACE_EVENT_EXEC), before the dynamic
//! loader has run a single instruction. A second, close-on-exec pipe carries the exec
//! error back, so "not found" and "permission denied" are reported, not guessed.

use super::{check, TRACE_OPTIONS};
use std::ffi::CString;
use std::io;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create a process: {0}")]
    Fork(io::Error),
    #[error("cannot trace the new process: {0}")]
    Seize(io::Error),
    #[error("cannot execute: {0}")]
    Exec(io::Error),
}

/// Forks, seizes the child and lets it exec `path` with `argv` (the current
/// environment). Returns the child's pid; the caller must next wait for its
/// PTRACE_EVENT_EXEC stop.
pub fn spawn_seized(path: &CString, argv: &[CString]) -> Result<i32, SpawnError> {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let go = pipe().map_err(SpawnError::Fork)?;
    let err = match pipe() {
        Ok(p) => p,
        Err(e) => {
            close_pair(go);
            return Err(SpawnError::Fork(e));
        }
    };

    // The program starts with memtrace's original signal mask, not with the signals
    // memtrace blocks to read them through a signalfd.
    let mask: *const libc::sigset_t = super::wake::original_mask()
        .map(|m| m as *const libc::sigset_t)
        .unwrap_or(std::ptr::null());
    // SAFETY: after fork the child calls only async-signal-safe functions (read,
    // close, sigprocmask, execv, write, _exit) on data prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        let e = io::Error::last_os_error();
        close_pair(go);
        close_pair(err);
        return Err(SpawnError::Fork(e));
    }
    if pid == 0 {
        // SAFETY: child side, see above.
        unsafe {
            libc::close(go[1]);
            libc::close(err[0]);
            let mut b = 0u8;
            // Wait until the parent has seized us (or has gone: read returns 0).
            while libc::read(go[0], (&mut b as *mut u8).cast(), 1) == -1 {}
            if !mask.is_null() {
                libc::sigprocmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
            }
            libc::execv(path.as_ptr(), argv_ptrs.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(err[1], (&errno as *const i32).cast(), 4);
            libc::_exit(127);
        }
    }

    // SAFETY: closing our copies of the child's pipe ends.
    unsafe {
        libc::close(go[0]);
        libc::close(err[1]);
    }
    // SAFETY: PTRACE_SEIZE takes the options as `data`; no pointers.
    let seized =
        check(unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0usize, TRACE_OPTIONS as usize) });
    if let Err(e) = seized {
        // SAFETY: kill and reap the child we could not trace.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::close(go[1]);
            libc::close(err[0]);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(SpawnError::Seize(e));
    }
    let one = 1u8;
    // SAFETY: writes one byte from a valid local, then closes.
    unsafe {
        libc::write(go[1], (&one as *const u8).cast(), 1);
        libc::close(go[1]);
    }
    let mut errno = 0i32;
    // EOF (0 bytes) means exec succeeded: the close-on-exec pipe was closed by it.
    let n = loop {
        // SAFETY: reads at most 4 bytes into a valid local.
        let n = unsafe { libc::read(err[0], (&mut errno as *mut i32).cast(), 4) };
        if n == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break n;
    };
    // SAFETY: closing our read end.
    unsafe { libc::close(err[0]) };
    if n == 4 {
        // The child exits 127 without exec: reap it (it is traced, so wait all stops).
        reap(pid);
        return Err(SpawnError::Exec(io::Error::from_raw_os_error(errno)));
    }
    Ok(pid)
}

fn pipe() -> io::Result<[i32; 2]> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as libc::c_long)?;
    Ok(fds)
}

fn close_pair(p: [i32; 2]) {
    // SAFETY: closing fds we own.
    unsafe {
        libc::close(p[0]);
        libc::close(p[1]);
    }
}

fn reap(pid: i32) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes to a valid local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == -1 {
            return;
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return;
        }
        // A stop of the traced child on its way out: let it go on.
        // SAFETY: no pointers.
        unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0usize, 0usize) };
    }
}

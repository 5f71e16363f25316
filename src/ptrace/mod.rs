//! The only place with `unsafe`, ptrace, wait and raw system calls.
//!
//! It moves bytes and registers and reports why a thread stopped; it never interprets
//! what it moves. Everything above it is safe Rust.
//!
//! Signals are plain `i32` here, not `nix::sys::signal::Signal`: a target may receive
//! real-time signals (glibc itself uses 32 and 33 for thread cancellation and setxid),
//! which that enum cannot represent.

mod guardian;
mod shared;
mod spawn;
mod wake;

pub use guardian::Guardian;
pub use shared::SharedMem;
pub use spawn::{spawn_seized, SpawnError};
pub use wake::{wait_nohang, Waiter, Wake, WakeHandle, STOP_TIMEOUT};

use memtrace_arch::{Arch, Native, Regs};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

pub type Tid = i32;

/// Why `waitpid` returned for one thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The thread (or, for the thread-group leader, the process) exited with `code`.
    Exited { tid: Tid, code: i32 },
    /// Killed by `signal`.
    Killed { tid: Tid, signal: i32 },
    /// A signal is about to be delivered (a breakpoint trap is SIGTRAP here).
    Signal { tid: Tid, signal: i32 },
    /// A ptrace event stop (`PTRACE_EVENT_*`), with the stop signal.
    Event {
        tid: Tid,
        event: PtraceEvent,
        signal: i32,
    },
}

impl Stop {
    /// The thread the stop is about.
    pub fn tid(&self) -> Tid {
        match *self {
            Stop::Exited { tid, .. }
            | Stop::Killed { tid, .. }
            | Stop::Signal { tid, .. }
            | Stop::Event { tid, .. } => tid,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtraceEvent {
    Clone,
    Fork,
    Vfork,
    VforkDone,
    Exec,
    Exit,
    /// Group stop, the first stop of a new seized thread, or PTRACE_INTERRUPT.
    Stop,
    Other(i32),
}

impl PtraceEvent {
    fn from_raw(e: i32) -> Self {
        match e {
            libc::PTRACE_EVENT_CLONE => PtraceEvent::Clone,
            libc::PTRACE_EVENT_FORK => PtraceEvent::Fork,
            libc::PTRACE_EVENT_VFORK => PtraceEvent::Vfork,
            libc::PTRACE_EVENT_VFORK_DONE => PtraceEvent::VforkDone,
            libc::PTRACE_EVENT_EXEC => PtraceEvent::Exec,
            libc::PTRACE_EVENT_EXIT => PtraceEvent::Exit,
            libc::PTRACE_EVENT_STOP => PtraceEvent::Stop,
            other => PtraceEvent::Other(other),
        }
    }
}

/// The options every traced process gets: follow threads, see forks (to clean the
/// child's copy of our breakpoints) and execs, stop threads before they exit (while
/// their memory can still be read).
pub const ATTACH_OPTIONS: i32 = libc::PTRACE_O_TRACECLONE
    | libc::PTRACE_O_TRACEFORK
    | libc::PTRACE_O_TRACEVFORK
    | libc::PTRACE_O_TRACEEXEC
    | libc::PTRACE_O_TRACESYSGOOD
    | libc::PTRACE_O_TRACEEXIT;

/// A launched target also dies with memtrace (EXITKILL): it never outlives its tracer
/// with breakpoints planted. An attached one must never be killed because memtrace
/// died, so it does not get this option.
pub const TRACE_OPTIONS: i32 = ATTACH_OPTIONS | libc::PTRACE_O_EXITKILL;

/// Starts tracing a running thread without stopping it (PTRACE_SEIZE).
pub fn seize(tid: Tid, options: i32) -> io::Result<()> {
    // SAFETY: PTRACE_SEIZE takes the options as `data`; no pointers.
    check(unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0usize, options as usize) }).map(|_| ())
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn decode(tid: Tid, status: i32) -> Option<Stop> {
    if libc::WIFEXITED(status) {
        return Some(Stop::Exited {
            tid,
            code: libc::WEXITSTATUS(status),
        });
    }
    if libc::WIFSIGNALED(status) {
        return Some(Stop::Killed {
            tid,
            signal: libc::WTERMSIG(status),
        });
    }
    if libc::WIFSTOPPED(status) {
        let signal = libc::WSTOPSIG(status);
        let event = status >> 16;
        return Some(if event != 0 {
            Stop::Event {
                tid,
                event: PtraceEvent::from_raw(event),
                signal,
            }
        } else {
            Stop::Signal { tid, signal }
        });
    }
    None
}

/// Resumes a stopped thread, delivering `signal` (0 for none).
pub fn cont(tid: Tid, signal: i32) -> io::Result<()> {
    // SAFETY: PTRACE_CONT takes no pointers; `data` is the signal number.
    check(unsafe { libc::ptrace(libc::PTRACE_CONT, tid, 0usize, signal as usize) }).map(|_| ())
}

/// Keeps a thread in group-stop while still getting its events (PTRACE_SEIZE only).
pub fn listen(tid: Tid) -> io::Result<()> {
    // SAFETY: no pointers.
    check(unsafe { libc::ptrace(libc::PTRACE_LISTEN, tid, 0usize, 0usize) }).map(|_| ())
}

pub fn detach(tid: Tid, signal: i32) -> io::Result<()> {
    // SAFETY: no pointers.
    check(unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0usize, signal as usize) }).map(|_| ())
}

pub fn interrupt(tid: Tid) -> io::Result<()> {
    // SAFETY: no pointers.
    check(unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0usize, 0usize) }).map(|_| ())
}

/// Runs one instruction.
pub fn single_step(tid: Tid, signal: i32) -> io::Result<()> {
    // SAFETY: no pointers.
    check(unsafe { libc::ptrace(libc::PTRACE_SINGLESTEP, tid, 0usize, signal as usize) })
        .map(|_| ())
}

/// The message of the last ptrace event (new thread id, exit status, ...).
pub fn event_msg(tid: Tid) -> io::Result<u64> {
    let mut msg: libc::c_ulong = 0;
    // SAFETY: the kernel writes one c_ulong to `msg`.
    check(unsafe { libc::ptrace(libc::PTRACE_GETEVENTMSG, tid, 0usize, &mut msg) })?;
    Ok(msg as u64)
}

/// The signal's `si_code`, to tell a breakpoint trap (SI_KERNEL) from a sent SIGTRAP.
pub fn siginfo_code(tid: Tid) -> io::Result<i32> {
    // SAFETY: siginfo_t is plain data; the kernel fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes one siginfo_t to `info`.
    check(unsafe { libc::ptrace(libc::PTRACE_GETSIGINFO, tid, 0usize, &mut info) })?;
    Ok(info.si_code)
}

/// Reads the general-purpose registers (the `NT_PRSTATUS` set, architecture-neutral).
pub fn get_regs(tid: Tid) -> io::Result<Regs> {
    let mut regs = Regs::default();
    let mut iov = libc::iovec {
        iov_base: regs.words.as_mut_ptr().cast(),
        iov_len: Native::REGSET_WORDS * 8,
    };
    // SAFETY: the iovec points at `regs.words`, which holds at least REGSET_WORDS words;
    // the kernel writes at most iov_len bytes.
    check(unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            tid,
            libc::NT_PRSTATUS as usize,
            &mut iov,
        )
    })?;
    Ok(regs)
}

pub fn set_regs(tid: Tid, regs: &Regs) -> io::Result<()> {
    let mut words = regs.words;
    let mut iov = libc::iovec {
        iov_base: words.as_mut_ptr().cast(),
        iov_len: Native::REGSET_WORDS * 8,
    };
    // SAFETY: the kernel reads iov_len bytes from `words`, which is large enough.
    check(unsafe {
        libc::ptrace(
            libc::PTRACE_SETREGSET,
            tid,
            libc::NT_PRSTATUS as usize,
            &mut iov,
        )
    })
    .map(|_| ())
}

/// How many CPUs this process may run on.
pub fn cpus_allowed() -> usize {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .count(),
        Err(_) => 1,
    }
}

/// Asks the CPU to start loading the cache line at `p` (memtrace's own memory, about
/// to be read: a hash table slot).
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks the kernel to back the pages of `[addr, addr + len)` (memtrace's own memory,
/// not touched yet) with huge pages where it can: a hash table of hundreds of
/// thousands of blocks, probed at random, otherwise costs a TLB miss on most probes
/// (a page walk, long under a hypervisor). A hint: where the kernel refuses
/// (transparent huge pages off, an old kernel), nothing changes.
pub fn advise_huge_pages(addr: *const u8, len: usize) {
    let from = (addr as usize).next_multiple_of(4096);
    let to = (addr as usize).saturating_add(len) & !4095;
    if to <= from {
        return;
    }
    // SAFETY: MADV_HUGEPAGE changes how pages are backed, never their contents or
    // whether they are mapped; the range, rounded inwards, is inside the caller's.
    unsafe {
        libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE);
    }
}

/// Puts the calling thread in the SCHED_IDLE class: it runs only on a processor that
/// nothing else wants, so background work never slows the target or the reader.
/// False when the kernel refuses (the thread then runs as before).
pub fn run_this_thread_when_idle() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler only reads `param`; pid 0 is the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
}

/// The CPU's time stamp counter, what the recording code in the target times its
/// waits with; where there is none, nanoseconds since a moment of this process (a
/// counter all the same, at one tick a nanosecond).
pub fn time_stamp() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc reads a counter; it has no preconditions on x86_64.
        unsafe { std::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }
}

/// The calling thread's id: what `/proc/TID/status` shows as `TracerPid` of the
/// threads it traces (the tracer is a thread, not a process).
pub fn gettid() -> Tid {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Sends `signal` to one thread of `pid`.
pub fn tgkill(pid: i32, tid: Tid, signal: i32) -> io::Result<()> {
    // SAFETY: plain system call with integer arguments.
    check(unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) }).map(|_| ())
}

pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: plain system call with integer arguments.
    check(unsafe { libc::kill(pid, signal) } as libc::c_long).map(|_| ())
}

/// A process's memory, through `/proc/PID/mem`: reads and writes of any length in one
/// system call, and writes that ignore page protections (so breakpoints can be planted
/// in read-only code) the way PTRACE_POKEDATA does. Valid until the process execs.
///
/// Writable memory (stacks, memtrace's stub data) also goes through
/// `process_vm_readv`/`process_vm_writev`, which move several ranges in one system call
/// without touching the file position machinery.
pub struct Memory {
    file: File,
    pid: i32,
}

impl Memory {
    pub fn open(pid: i32) -> io::Result<Memory> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))?;
        Ok(Memory { file, pid })
    }

    /// The open file's descriptor (for the guardian to inherit).
    pub fn raw_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.file.as_raw_fd()
    }

    /// Writes several ranges of writable memory at once (page protections apply).
    pub fn write_vectored(&self, parts: &[(u64, &[u8])]) -> io::Result<()> {
        let local: Vec<libc::iovec> = parts
            .iter()
            .map(|(_, b)| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let remote: Vec<libc::iovec> = parts
            .iter()
            .map(|(a, b)| libc::iovec {
                iov_base: *a as usize as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        let total: usize = parts.iter().map(|(_, b)| b.len()).sum();
        // SAFETY: the local iovecs point into the borrowed slices, valid for the call;
        // the kernel only reads from them. Remote addresses are checked by the kernel.
        let n = unsafe {
            libc::process_vm_writev(
                self.pid,
                local.as_ptr(),
                local.len() as libc::c_ulong,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        match n {
            -1 => Err(io::Error::last_os_error()),
            n if n as usize == total => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "partial write",
            )),
        }
    }

    /// Reads readable memory with `process_vm_readv`.
    pub fn read_vm(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as usize as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` covers `buf`, which the kernel may fill entirely.
        let n = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        match n {
            -1 => Err(io::Error::last_os_error()),
            n if n as usize == buf.len() => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "partial read")),
        }
    }

    /// Reads as much of `buf` as is mapped from `addr` on, with `process_vm_readv`:
    /// the count stops at the first page that cannot be read (a stack's end). The
    /// remote range is split at page boundaries because a partial transfer never
    /// splits an iovec element.
    pub fn read_vm_partial(&self, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
        const PAGE: u64 = 4096;
        // IOV_MAX is 1024: reads longer than that many pages are cut there.
        const MAX_PARTS: usize = 1024;
        let mut remote = Vec::with_capacity(buf.len() / PAGE as usize + 2);
        let (mut at, end) = (addr, addr.saturating_add(buf.len() as u64));
        while at < end && remote.len() < MAX_PARTS {
            let next = ((at / PAGE) + 1).saturating_mul(PAGE).min(end);
            remote.push(libc::iovec {
                iov_base: at as usize as *mut libc::c_void,
                iov_len: (next - at) as usize,
            });
            at = next;
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: (at - addr) as usize,
        };
        // SAFETY: `local` covers at most `buf`, which the kernel may fill; the remote
        // iovecs describe the target's memory and are checked by the kernel.
        let n = unsafe {
            libc::process_vm_readv(
                self.pid,
                &local,
                1,
                remote.as_ptr(),
                remote.len() as libc::c_ulong,
                0,
            )
        };
        if n == -1 {
            let e = io::Error::last_os_error();
            // EFAULT: not even the first page is mapped.
            return if e.raw_os_error() == Some(libc::EFAULT) {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }

    /// Reads as much as can be read from `addr` (stops at an unmapped page).
    pub fn read_partial(&self, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read_at(buf, addr)
    }

    pub fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, addr)
    }

    pub fn write_u64(&self, addr: u64, v: u64) -> io::Result<()> {
        self.write(addr, &v.to_le_bytes())
    }
}

/// Installs a handler for SIGINT and SIGQUIT that does nothing, so that Ctrl-C on the
/// terminal reaches the launched program (same process group) without killing
/// memtrace before it can write the report. A handler, unlike SIG_IGN, is reset by
/// exec, so the program starts with default dispositions.
pub fn survive_terminal_signals() {
    extern "C" fn nothing(_: libc::c_int) {}
    for sig in [libc::SIGINT, libc::SIGQUIT] {
        // SAFETY: sigaction with a zeroed struct and a valid extern "C" handler that
        // touches nothing.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = nothing as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Waits for process `pid` to end, after a detach: any stop of a thread still traced
/// (one the detach could not stop) lets that thread go, with the signal it stopped
/// for. Returns the end of `pid`.
pub fn wait_exit_letting_go(pid: i32) -> io::Result<Stop> {
    loop {
        match wait_tid(-1)? {
            stop @ (Stop::Exited { tid, .. } | Stop::Killed { tid, .. }) if tid == pid => {
                return Ok(stop)
            }
            Stop::Exited { .. } | Stop::Killed { .. } => {}
            Stop::Signal { tid, signal } => {
                let _ = detach(tid, signal);
            }
            Stop::Event { tid, .. } => {
                let _ = detach(tid, 0);
            }
        }
    }
}

/// Waits for one specific thread (used while a system call is injected into it).
pub fn wait_tid(tid: Tid) -> io::Result<Stop> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`, a valid local.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if let Some(stop) = decode(r, status) {
            return Ok(stop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_statuses() {
        assert_eq!(decode(5, 3 << 8), Some(Stop::Exited { tid: 5, code: 3 }));
        assert_eq!(decode(5, 11), Some(Stop::Killed { tid: 5, signal: 11 }));
        assert_eq!(
            decode(5, (5 << 8) | 0x7f),
            Some(Stop::Signal { tid: 5, signal: 5 })
        );
        // Real-time signal 34: representable here (not with nix's Signal).
        assert_eq!(
            decode(5, (34 << 8) | 0x7f),
            Some(Stop::Signal { tid: 5, signal: 34 })
        );
        let clone = (libc::PTRACE_EVENT_CLONE << 16) | (libc::SIGTRAP << 8) | 0x7f;
        assert_eq!(
            decode(5, clone),
            Some(Stop::Event {
                tid: 5,
                event: PtraceEvent::Clone,
                signal: libc::SIGTRAP
            })
        );
    }
}

//! The guardian: a small process that restores an attached target's code if memtrace
//! dies without detaching (SIGKILL, a crash).
//!
//! When its tracer dies the kernel detaches the target's threads and they run on, but
//! every int3 memtrace planted is still there: the next malloc would kill the target
//! with SIGTRAP. So at attach memtrace forks a guardian (a process, not a thread: it
//! must outlive memtrace) that shares one anonymous `MAP_SHARED` page range with it:
//! the list of planted breakpoints and their original bytes, updated as they are
//! planted. The guardian blocks reading a pipe whose only write end memtrace holds;
//! the read returns the moment memtrace dies (the kernel closes the pipe), and unless
//! memtrace had detached cleanly, the guardian writes the original bytes back through
//! the target's `/proc/PID/mem`, opened by memtrace while it was the tracer.
//!
//! What it cannot undo: a thread stopped at one of memtrace's breakpoints at that
//! moment (the kernel resumes it with its SIGTRAP pending, its pc one byte into the
//! patched instruction; only the tracer could have cancelled the signal), a thread
//! that reaches a breakpoint before the guardian has written, and a posix_memalign
//! call in flight (it returns into the trampoline's int3). With threads that
//! allocate all the time one of these is nearly certain (`tests/guardian.rs`). Calls
//! returning through stubs, and threads in an out-of-line slot, go on: those pages
//! stay mapped.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Breakpoints the guardian can restore.
const SLOTS: usize = 1024;
const MAX_BYTES: usize = 16;

const ARMED: u32 = 1;
const DISARMED: u32 = 2;

#[repr(C)]
struct Entry {
    addr: AtomicU64,
    /// 0: unused or withdrawn; else the number of original bytes.
    len: AtomicU32,
    /// The byte that must be at `addr` for the restore to be made (a breakpoint's),
    /// or [`ALWAYS`].
    expect: AtomicU32,
    bytes: [u8; MAX_BYTES],
}

/// An entry restored whatever is there now.
const ALWAYS: u32 = 0x100;

#[repr(C)]
struct Shared {
    state: AtomicU32,
    count: AtomicU32,
    entries: [Entry; SLOTS],
}

pub struct Guardian {
    shared: *mut Shared,
    /// The write end: closed (by drop, or by the kernel when memtrace dies) it wakes
    /// the guardian.
    pipe: Option<OwnedFd>,
    pid: i32,
}

impl Guardian {
    /// Forks the guardian of `target`, whose memory is open as `mem_fd`. memtrace may
    /// have other threads (the live view's): the child works only on what is made
    /// before the fork.
    pub fn start(target: i32, mem_fd: i32) -> io::Result<Guardian> {
        let size = std::mem::size_of::<Shared>();
        // SAFETY: a fresh anonymous shared mapping, zero-filled (an all-zero Shared is
        // valid: atomics at 0, no entries).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let shared = p.cast::<Shared>();
        let mut fds = [0i32; 2];
        // SAFETY: pipe writes two fds (not close-on-exec matters not: no exec here).
        if unsafe { libc::pipe(fds.as_mut_ptr()) } == -1 {
            let e = io::Error::last_os_error();
            // SAFETY: unmapping what we mapped above.
            unsafe { libc::munmap(p, size) };
            return Err(e);
        }
        // Made before the fork: with the live view memtrace has other threads, and a
        // lock one of them held at the fork stays held in the child. (glibc's malloc
        // resets its own locks in a forked child, so the child's one message is safe.)
        let path = format!("/proc/{target}/mem\0");
        // SAFETY: the child below works on data prepared here, with system calls.
        let pid = unsafe { libc::fork() };
        if pid == -1 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: child side: close the write end (or EOF never comes), leave
            // memtrace's process group (a signal to it must not reach us), wait.
            unsafe {
                libc::close(fds[1]);
                libc::setpgid(0, 0);
                // The dying tracer wakes the target's threads as it detaches them;
                // the guardian must write before they reach a breakpoint. A real-time
                // priority runs it the moment the pipe closes (where permitted: root).
                let param = libc::sched_param { sched_priority: 1 };
                libc::sched_setscheduler(0, libc::SCHED_FIFO, &param);
                // Opened now, while memtrace traces the process: one system call less
                // in the race.
                let own = libc::open(path.as_ptr().cast(), libc::O_RDWR);
                guard(
                    &*shared,
                    fds[0],
                    target,
                    &path,
                    if own >= 0 { own } else { mem_fd },
                );
                libc::_exit(0);
            }
        }
        // SAFETY: our copy of the read end is not needed; the write end is ours.
        unsafe { libc::close(fds[0]) };
        // SAFETY: fds[1] is a valid fd we own from here on.
        let pipe = unsafe { OwnedFd::from_raw_fd(fds[1]) };
        let g = Guardian {
            shared,
            pipe: Some(pipe),
            pid,
        };
        g.shared().state.store(ARMED, Ordering::Release);
        Ok(g)
    }

    fn shared(&self) -> &Shared {
        // SAFETY: mapped for the life of `self`, and only accessed through atomics or
        // bytes published by them.
        unsafe { &*self.shared }
    }

    /// Bytes memtrace wrote at `addr` over `original` (restored whatever is there).
    pub fn record(&self, addr: u64, original: &[u8]) {
        self.record_if(addr, original, ALWAYS);
    }

    /// A breakpoint planted at `addr` over `original`, restored only if `trap` (the
    /// breakpoint's first byte) is still there: the entry of a hooked function may be
    /// a jump to its recording code by then, which must not be torn by a partial
    /// write while the threads run (the recorder's bypass flag makes it harmless).
    pub fn record_trap(&self, addr: u64, original: &[u8], trap: u8) {
        self.record_if(addr, original, trap as u32);
    }

    fn record_if(&self, addr: u64, original: &[u8], expect: u32) {
        let s = self.shared();
        let i = s.count.load(Ordering::Relaxed) as usize;
        if i >= SLOTS || original.len() > MAX_BYTES {
            return;
        }
        let e = &s.entries[i];
        // SAFETY: entry i is not yet published (count <= i), so the guardian does not
        // read its bytes; we are its only writer.
        unsafe {
            let bytes = std::ptr::addr_of!(e.bytes) as *mut u8;
            std::ptr::copy_nonoverlapping(original.as_ptr(), bytes, original.len());
        }
        e.addr.store(addr, Ordering::Relaxed);
        e.expect.store(expect, Ordering::Relaxed);
        e.len.store(original.len() as u32, Ordering::Relaxed);
        s.count.store(i as u32 + 1, Ordering::Release);
    }

    /// The code at `addr` is gone (its library was unloaded): never write there.
    pub fn withdraw(&self, addr: u64) {
        let s = self.shared();
        let n = s.count.load(Ordering::Acquire) as usize;
        for e in &s.entries[..n.min(SLOTS)] {
            if e.addr.load(Ordering::Relaxed) == addr {
                e.len.store(0, Ordering::Release);
            }
        }
    }

    /// The process executed a new image: nothing recorded so far exists in it.
    pub fn clear(&self) {
        let s = self.shared();
        let n = s.count.load(Ordering::Acquire) as usize;
        for e in &s.entries[..n.min(SLOTS)] {
            e.len.store(0, Ordering::Release);
        }
    }

    /// memtrace detached cleanly: nothing is left to restore.
    pub fn disarm(&self) {
        self.shared().state.store(DISARMED, Ordering::Release);
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        self.pipe = None;
        // SAFETY: reaping our own child; the mapping is ours to unmap.
        unsafe {
            libc::waitpid(self.pid, std::ptr::null_mut(), libc::__WALL);
            libc::munmap(self.shared.cast(), std::mem::size_of::<Shared>());
        }
    }
}

/// The guardian's whole life: wait for memtrace to go, restore if it did not detach.
fn guard(s: &Shared, pipe: i32, target: i32, path: &str, mem_fd: i32) {
    let mut b = 0u8;
    loop {
        // SAFETY: reads one byte into a valid local.
        let n = unsafe { libc::read(pipe, (&mut b as *mut u8).cast(), 1) };
        if n == 0 || (n == -1 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)) {
            break;
        }
    }
    if s.state.load(Ordering::Acquire) != ARMED {
        return;
    }

    // A memory file opened before stops working if the process has executed a new
    // image since: then a fresh one is opened, where permissions allow.
    let mut fresh = -1;
    let n = s.count.load(Ordering::Acquire) as usize;
    // `gone`: places whose write found no memory: the process had died meanwhile (a
    // thread at a breakpoint resumed with its SIGTRAP), nothing is left to restore.
    let (mut restored, mut wanted, mut gone) = (0, 0, 0);
    for e in &s.entries[..n.min(SLOTS)] {
        let len = e.len.load(Ordering::Acquire) as usize;
        if len == 0 {
            continue;
        }
        wanted += 1;
        let addr = e.addr.load(Ordering::Relaxed);
        let expect = e.expect.load(Ordering::Relaxed);
        if expect != ALWAYS {
            let mut now = 0u8;
            // SAFETY: reads one byte of the target's memory file into a valid local.
            let n = unsafe { libc::pread(mem_fd, (&mut now as *mut u8).cast(), 1, addr as i64) };
            if n == 1 && now as u32 != expect {
                // Not our breakpoint any more (an entry jump): nothing to undo here.
                restored += 1;
                continue;
            }
        }
        let write = |fd: i32| {
            // SAFETY: writes `len` bytes of the entry to the target's memory file.
            unsafe { libc::pwrite(fd, e.bytes.as_ptr().cast(), len, addr as i64) }
        };
        match write(mem_fd) {
            w if w == len as isize => {
                restored += 1;
                continue;
            }
            // The kernel writes nothing into a memory that is no more (no mm).
            0 => {
                gone += 1;
                continue;
            }
            _ => {}
        }
        if fresh < 0 {
            // SAFETY: a NUL-terminated path.
            fresh = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDWR) };
        }
        if fresh >= 0 && write(fresh) == len as isize {
            restored += 1;
        }
    }
    if wanted == 0 {
        return;
    }
    let died = if gone > 0 {
        format!("; the process died meanwhile, its memory gone under the other {gone}")
    } else {
        String::new()
    };
    let msg = format!(
        "memtrace: memtrace ended without detaching from {target}; its guardian restored {restored} of {wanted} patched places{died}\n"
    );
    // SAFETY: writes a valid buffer to stderr.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

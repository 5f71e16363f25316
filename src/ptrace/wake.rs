//! Waiting for the next stop in a way that a signal, a deadline or a command can
//! interrupt, without ever losing a wake-up.
//!
//! SIGCHLD (which the kernel sends the tracer for every tracee stop) and, in attach
//! mode, SIGINT/SIGTERM/SIGHUP are blocked in memtrace and read through a
//! `signalfd`; commands (from a future UI thread) arrive with a write to an
//! `eventfd`. The wait polls `waitpid(WNOHANG)` first (the fast path: a target that
//! allocates stops again within microseconds), then drains the signalfd, checks
//! `waitpid` once more and only then sleeps in `poll` on both descriptors. A SIGCHLD
//! that comes after that last check leaves the signalfd readable, so `poll` returns.

use super::{check, decode, Stop};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Why [`Waiter::wait`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    Stop(Stop),
    /// A terminating signal (SIGINT, SIGTERM, SIGHUP) was sent to memtrace.
    Signal(i32),
    /// The wake handle was used (a command is waiting, or its sender is gone).
    Command,
    /// The deadline passed.
    Deadline,
}

/// The signal mask memtrace started with, for launched programs to start with.
static ORIGINAL_MASK: OnceLock<libc::sigset_t> = OnceLock::new();

/// The mask a launched program must start with (memtrace's own, before blocking).
pub(super) fn original_mask() -> Option<&'static libc::sigset_t> {
    ORIGINAL_MASK.get()
}

/// Lets another thread wake the tracer (see [`Waiter::handle`]).
#[derive(Clone, Debug)]
pub struct WakeHandle {
    fd: Arc<OwnedFd>,
}

impl WakeHandle {
    pub fn wake(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a valid local to an eventfd we own.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

pub struct Waiter {
    sigfd: OwnedFd,
    event: WakeHandle,
    /// Whether SIGINT/SIGTERM/SIGHUP end the trace (attach) or are left alone (launch).
    terminal: bool,
    /// When the fast path last looked at signals and the deadline.
    next_check: Instant,
    /// How long a thread may take to stop (see [`Waiter::stop_timeout`]).
    stop_timeout: Duration,
}

/// How long a thread may take to stop, unless told otherwise.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a target that stops all the time still gets signals and the deadline
/// looked at (the fast path skips them otherwise).
const CHECK_EVERY: Duration = Duration::from_millis(5);

const TERMINAL: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

impl Waiter {
    /// Blocks SIGCHLD (and, with `terminal`, SIGINT/SIGTERM/SIGHUP) in the calling
    /// thread and every thread it creates later: call it before any thread exists.
    pub fn new(terminal: bool) -> io::Result<Waiter> {
        let mut signals = vec![libc::SIGCHLD];
        if terminal {
            signals.extend(TERMINAL);
        }
        let set = sigset(&signals);
        // SAFETY: sigset_t is plain data; pthread_sigmask fills `old`.
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid sigset pointers.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        let _ = ORIGINAL_MASK.set(old);
        // SAFETY: signalfd with a valid set; returns a new fd or -1.
        let fd = check(
            unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) }
                as libc::c_long,
        )?;
        // SAFETY: the fd was just created and is ours.
        let sigfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: eventfd returns a new fd or -1.
        let efd = check(
            unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) } as libc::c_long,
        )?;
        // SAFETY: the fd was just created and is ours.
        let event = unsafe { OwnedFd::from_raw_fd(efd as i32) };
        Ok(Waiter {
            sigfd,
            event: WakeHandle {
                fd: Arc::new(event),
            },
            terminal,
            next_check: Instant::now(),
            stop_timeout: STOP_TIMEOUT,
        })
    }

    /// Gives up on a thread that has not stopped after `d` (see [`Waiter::stop_timeout`]).
    pub fn set_stop_timeout(&mut self, d: Duration) {
        self.stop_timeout = d;
    }

    /// How long the tracer waits for a thread to stop (to attach, scan, pause or
    /// detach) before it goes on without it: a thread in uninterruptible sleep (a hung
    /// NFS or FUSE file, a vfork) does not stop until the kernel lets it go.
    pub fn stop_timeout(&self) -> Duration {
        self.stop_timeout
    }

    /// A handle that wakes this waiter from any thread.
    pub fn handle(&self) -> WakeHandle {
        self.event.clone()
    }

    /// What is ready now, without waiting: a stop, or (looked at every few
    /// milliseconds) a signal, a command, the deadline. For a loop that has other
    /// work (records to read) while the target runs.
    pub fn poll_now(&mut self, deadline: Option<Instant>) -> io::Result<Option<Wake>> {
        let now = Instant::now();
        if now >= self.next_check {
            self.next_check = now + CHECK_EVERY;
            if let Some(w) = self.pending(deadline, now)? {
                return Ok(Some(w));
            }
        }
        Ok(wait_nohang()?.map(Wake::Stop))
    }

    /// The next stop of any tracee, or whatever comes first: a terminating signal (in
    /// terminal mode), a wake-up, the deadline.
    ///
    /// For `spin` it polls (WNOHANG) before sleeping. A traced program that allocates
    /// stops again within microseconds; a tracer asleep must then be woken, which on a
    /// VM costs an inter-processor interrupt into an idle (halted) vCPU: tens of
    /// microseconds per stop. Polling for a short window avoids that, and bounds the
    /// CPU memtrace burns when the program computes instead of allocating.
    pub fn wait(&mut self, spin: Duration, deadline: Option<Instant>) -> io::Result<Wake> {
        let now = Instant::now();
        if now >= self.next_check {
            self.next_check = now + CHECK_EVERY;
            if let Some(w) = self.pending(deadline, now)? {
                return Ok(w);
            }
        }
        let until = now + spin;
        loop {
            if let Some(stop) = wait_nohang()? {
                return Ok(Wake::Stop(stop));
            }
            if Instant::now() >= until {
                break;
            }
            std::hint::spin_loop();
        }
        // The loop above ended with a waitpid that found nothing. A SIGCHLD sent since
        // keeps the signalfd readable (until drained), so poll returns at once and the
        // next waitpid sees that stop: no wake-up is lost. A stop that wakes us costs
        // poll, one read of the signalfd and one waitpid.
        loop {
            // To the microsecond (the recorder's reader waits a fraction of a
            // millisecond between looks at the ring); rounded up, so the deadline
            // has passed when ppoll returns.
            let timeout = deadline.map(|d| {
                let left = d.saturating_duration_since(Instant::now()) + Duration::from_micros(1);
                libc::timespec {
                    tv_sec: left.as_secs().min(i32::MAX as u64) as libc::time_t,
                    tv_nsec: left.subsec_nanos() as libc::c_long,
                }
            });
            let mut fds = [
                libc::pollfd {
                    fd: self.sigfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.event.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ts = timeout
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: `fds` is a valid array of two pollfds; `ts` is null or points to
            // a timespec that outlives the call; no signal mask is changed.
            let r = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, ts, std::ptr::null()) };
            if r == -1 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(e);
                }
            }
            // Drained before waitpid looks: the stop of any SIGCHLD drained is ready.
            if fds[0].revents != 0 {
                if let Some(s) = self.drain_signals() {
                    return Ok(Wake::Signal(s));
                }
            }
            if fds[1].revents != 0 && self.read_event() {
                return Ok(Wake::Command);
            }
            if let Some(stop) = wait_nohang()? {
                return Ok(Wake::Stop(stop));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Wake::Deadline);
            }
        }
    }

    /// The next stop of any tracee before `deadline`, for a wait on particular threads
    /// (stopping them all): [`Wake::Stop`], [`Wake::Deadline`], or [`Wake::Signal`]
    /// when a terminating signal comes first (in terminal mode), so that Ctrl-C ends a
    /// wait for a thread that does not stop. Commands are left for [`Waiter::wait`].
    pub fn wait_stop(&mut self, deadline: Instant) -> io::Result<Wake> {
        loop {
            // Drained before waitpid looks, as in `wait`: no SIGCHLD is lost.
            if let Some(s) = self.drain_signals() {
                return Ok(Wake::Signal(s));
            }
            if let Some(stop) = wait_nohang()? {
                return Ok(Wake::Stop(stop));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Wake::Deadline);
            }
            let mut fd = libc::pollfd {
                fd: self.sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let timeout = left.as_millis().min(i32::MAX as u128) as i32 + 1;
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut fd, 1, timeout) } == -1 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(e);
                }
            }
        }
    }

    /// A terminating signal, a wake-up or a passed deadline, if any; SIGCHLDs are
    /// drained (their stops are read with waitpid).
    fn pending(&mut self, deadline: Option<Instant>, now: Instant) -> io::Result<Option<Wake>> {
        if let Some(s) = self.drain_signals() {
            return Ok(Some(Wake::Signal(s)));
        }
        if self.read_event() {
            return Ok(Some(Wake::Command));
        }
        if deadline.is_some_and(|d| now >= d) {
            return Ok(Some(Wake::Deadline));
        }
        Ok(None)
    }

    /// Empties the signalfd; the last terminating signal in it, if any.
    fn drain_signals(&mut self) -> Option<i32> {
        let mut signal = None;
        loop {
            // SAFETY: signalfd_siginfo is plain data.
            let mut infos: [libc::signalfd_siginfo; 8] = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of_val(&infos);
            // SAFETY: reads at most `size` bytes into `infos`, whole records only.
            let n = unsafe { libc::read(self.sigfd.as_raw_fd(), infos.as_mut_ptr().cast(), size) };
            if n <= 0 {
                break;
            }
            let count = n as usize / std::mem::size_of::<libc::signalfd_siginfo>();
            for info in &infos[..count] {
                let signo = info.ssi_signo as i32;
                if self.terminal && TERMINAL.contains(&signo) {
                    signal = Some(signo);
                }
            }
            if n as usize != size {
                break;
            }
        }
        signal
    }

    /// Whether the wake handle was used since the last look (resets the eventfd).
    fn read_event(&mut self) -> bool {
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into a valid local from the non-blocking eventfd.
        let n = unsafe {
            libc::read(
                self.event.fd.as_raw_fd(),
                (&mut count as *mut u64).cast(),
                8,
            )
        };
        n == 8
    }
}

/// One `waitpid(-1, WNOHANG | __WALL)`: a stop if one is ready.
pub fn wait_nohang() -> io::Result<Option<Stop>> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`, a valid local.
        let tid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL | libc::WNOHANG) };
        match tid {
            0 => return Ok(None),
            -1 => {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    _ => return Err(e),
                }
            }
            _ => {
                if let Some(stop) = decode(tid, status) {
                    return Ok(Some(stop));
                }
            }
        }
    }
}

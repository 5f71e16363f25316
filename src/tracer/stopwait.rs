//! Waiting for threads to stop, with a time limit and Ctrl-C.
//!
//! A thread may not stop for a long time, or ever: one in uninterruptible sleep (a
//! read from a hung NFS or FUSE mount, the parent of a `vfork` whose child has not
//! yet exec'd) does not even take PTRACE_INTERRUPT until the kernel lets it go. Every
//! wait for threads to stop (attach, a scan, a pause, a debugger stop, a detach) goes
//! through [`StopWait`]: it gives up after the waiter's stop timeout without a
//! stop of a thread waited for, says after a second which threads it waits for (and
//! in what state), and ends at once on a terminating signal (Ctrl-C in attach mode),
//! which the stop loop then takes as the request to detach it is.

use super::Tracer;
use crate::event::Tid;
use crate::ptrace::{Stop, Wake};
use std::collections::HashSet;
use std::io;
use std::time::{Duration, Instant};

/// When memtrace says which threads it is still waiting for.
const TELL_AFTER: Duration = Duration::from_secs(1);

/// One wait for a set of threads to stop.
pub(super) struct StopWait {
    limit: Duration,
    deadline: Instant,
    tell_at: Option<Instant>,
    /// A terminating signal ended the wait.
    pub interrupted: bool,
}

impl StopWait {
    /// Gives up `limit` after the last stop of a thread waited for.
    pub fn new(limit: Duration) -> StopWait {
        let now = Instant::now();
        StopWait {
            limit,
            deadline: now + limit,
            // Only a wait long enough to be noticed is told about.
            tell_at: (limit > TELL_AFTER).then(|| now + TELL_AFTER),
            interrupted: false,
        }
    }

    /// A thread waited for has stopped: the time limit starts again (a process with
    /// thousands of threads is not given up on because it has many).
    pub fn progress(&mut self) {
        self.deadline = Instant::now() + self.limit;
    }
}

impl Tracer<'_> {
    /// The next stop of any tracee while the threads of `waiting` have not all
    /// stopped; None when the wait is over without one: the time limit passed, or a
    /// terminating signal came (kept in `self.signal`, for the stop loop to detach).
    pub(super) fn next_stop(
        &mut self,
        wait: &mut StopWait,
        waiting: &HashSet<Tid>,
    ) -> io::Result<Option<Stop>> {
        loop {
            let until = match wait.tell_at {
                Some(t) => t.min(wait.deadline),
                None => wait.deadline,
            };
            match self.waiter.wait_stop(until)? {
                Wake::Stop(stop) => return Ok(Some(stop)),
                Wake::Signal(s) => {
                    self.signal = Some(s);
                    wait.interrupted = true;
                    return Ok(None);
                }
                _ => {}
            }
            let now = Instant::now();
            if now >= wait.deadline {
                return Ok(None);
            }
            if wait.tell_at.is_some_and(|t| now >= t) {
                wait.tell_at = None;
                eprintln!(
                    "memtrace: {} not stopped after {} s; waiting up to {} s (Ctrl-C: stop waiting)",
                    describe(waiting),
                    TELL_AFTER.as_secs(),
                    wait.limit.as_secs_f64()
                );
            }
        }
    }
}

/// `thread 12 (state D (disk sleep)) has`, or `threads 12 (...), 13 (...) have`.
fn describe(tids: &HashSet<Tid>) -> String {
    let sorted = threads(tids);
    let verb = if tids.len() == 1 { "has" } else { "have" };
    format!("{sorted} {verb}")
}

/// `thread 12 (state D (disk sleep))`, or `threads 12 (...), 13 (...)`, in order.
pub(super) fn threads(tids: &HashSet<Tid>) -> String {
    let mut sorted: Vec<Tid> = tids.iter().copied().collect();
    sorted.sort_unstable();
    let each: Vec<String> = sorted
        .iter()
        .map(|&t| match state(t) {
            Some(s) => format!("{t} (state {s})"),
            None => t.to_string(),
        })
        .collect();
    let word = if sorted.len() == 1 {
        "thread"
    } else {
        "threads"
    };
    format!("{word} {}", each.join(", "))
}

/// True when the thread is gone or dead, its exit not yet reaped (`Z`, `X`): the
/// kernel refuses to trace it (EPERM), and it runs no more code.
pub(super) fn dead(tid: Tid) -> bool {
    state(tid).is_none_or(|s| s.starts_with('Z') || s.starts_with('X'))
}

/// True when the thread is no more, its exit reaped already: a clone event can name
/// a thread that ran its whole short life before its parent's event was read.
pub(super) fn reaped(tid: Tid) -> bool {
    state(tid).is_none()
}

/// The state `/proc/TID/status` gives (`D (disk sleep)`).
fn state(tid: Tid) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("State:"))
        .map(|v| v.trim().to_string())
}

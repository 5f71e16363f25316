//! memtrace killed with SIGKILL while attached: the kernel lets the threads go with
//! memtrace's int3 bytes still in place, and its guardian process writes the original
//! bytes back (README, "If memtrace is killed"). What that can and cannot save:
//!
//! - A thread that is neither at nor reaching a breakpoint while memtrace dies and
//!   the guardian writes (blocked in the kernel, or computing elsewhere) survives,
//!   every time: tested with four busy threads paused on a futex at the kill.
//! - With `--stops`, a thread stopped at a breakpoint when memtrace dies is resumed
//!   by the kernel with its SIGTRAP, one byte into the patched instruction: the
//!   process dies of SIGTRAP, and no one outside the process can prevent it. With
//!   threads that allocate all the time this is the usual end: tested as exactly
//!   that.
//! - Recording inline (the default), allocator calls never stop: the guardian's first
//!   write sets the recorder's bypass flag, after which every thunk and the return
//!   stub let calls through. A busy process survives every time: tested three times
//!   in a row.

mod common;

use common::attach::{patched_code, wait_tracer, Background};
use common::{build_fixture, Exit, Target, DEBUG};
use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};

/// `memtrace attach --no-tui PID`, once it has said it is attached (killed during its
/// setup it could leave a thread inside an injected system call: see the README).
fn attached(pid: i32, mode: &[&str]) -> (Child, std::io::BufReader<std::process::ChildStderr>) {
    let mut memtrace = Command::new(common::process::memtrace_binary())
        .args(["attach", "--no-tui"])
        .args(mode)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run memtrace: {e}"));
    let mut stderr = std::io::BufReader::new(memtrace.stderr.take().expect("stderr"));
    let mut said = String::new();
    while !said.contains("attached to") {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("memtrace ended before it attached: {said}");
        }
        said.push_str(&line);
    }
    (memtrace, stderr)
}

/// Kills memtrace and returns what its guardian said: the guardian holds memtrace's
/// stderr until it is done, so this returns once the bytes are back.
fn kill(mut memtrace: Child, mut stderr: std::io::BufReader<std::process::ChildStderr>) -> String {
    let _ = memtrace.kill();
    let _ = memtrace.wait();
    let mut said = String::new();
    let _ = stderr.read_to_string(&mut said);
    said
}

/// The guardian's "restored N of M": every patched place, and at least one.
fn assert_restored_all(said: &str) {
    let counts = said
        .lines()
        .find_map(|l| l.split_once("its guardian restored "))
        .map(|(_, n)| n.split_whitespace().collect::<Vec<_>>());
    let all = counts.is_some_and(|w| w.len() > 2 && w[0] == w[2] && w[0] != "0");
    assert!(all, "the guardian did not restore everything: {said}");
}

/// Four threads allocated as fast as they could under memtrace; they wait on a
/// futex when it is killed; released after the guardian is done, they allocate on.
/// Every time: one attempt, no retry.
#[test]
fn threads_away_from_breakpoints_survive_a_killed_memtrace() {
    for mode in [&[][..], &["--stops"][..]] {
        away_from_breakpoints(mode);
    }
}

fn away_from_breakpoints(mode: &[&str]) {
    let (bg, mut stdin) =
        Background::start_piped(&Target::new(build_fixture("attach_pause", DEBUG)));
    let pid = bg.pid();
    bg.wait_threads(5);
    let (memtrace, stderr) = attached(pid, mode);
    stdin.write_all(b"p").expect("pause the fixture");
    let until = std::time::Instant::now() + common::process::MEMTRACE_LIMIT;
    while !bg.stdout_so_far().contains("paused") {
        assert!(
            std::time::Instant::now() < until,
            "the fixture never paused"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let said = kill(memtrace, stderr);
    assert_restored_all(&said);
    wait_tracer(pid, false);
    if mode.contains(&"--stops") {
        assert_eq!(patched_code(pid), Vec::<String>::new(), "code left patched");
    } else {
        // Recording inline the entries stay jumps into memtrace's pages, which let
        // every call through once the bypass flag is set: what the process runs on.
        assert!(!patched_code(pid).is_empty(), "no entry jump left");
    }
    stdin.write_all(b"g").expect("let the fixture go");
    drop(stdin);
    let finished = bg.finish();
    assert_eq!(
        finished.exit,
        Exit::Code(7),
        "{finished:?}; the guardian said {said}"
    );
    assert_eq!(
        finished
            .stdout
            .matches("every block held what was written")
            .count(),
        4,
        "{}",
        finished.stdout
    );
}

/// Killed with `--stops` while four threads allocate as fast as they can: the
/// guardian restores every patched place, and the process either runs on to its own
/// end, output as without memtrace, or dies of SIGTRAP (a thread was at a
/// breakpoint) — nothing else: no other signal, no corruption, no hang.
#[test]
fn a_killed_memtrace_leaves_a_busy_process_whole_or_dead_of_sigtrap() {
    let target = busy();
    let untraced = Background::start(&target).finish();
    let (finished, said) = kill_while_busy(&target, &["--stops"]);
    match finished.exit {
        Exit::Code(_) => assert_eq!(finished, untraced, "the guardian said {said}"),
        Exit::Signal(s) => assert_eq!(s, libc::SIGTRAP, "died of signal {s}: {finished:?}"),
    }
}

/// Recording inline, the same busy process survives memtrace's death every time,
/// its output that of a run without memtrace.
#[test]
fn recording_inline_a_busy_process_survives_a_killed_memtrace() {
    let target = busy();
    let untraced = Background::start(&target).finish();
    for attempt in 1..=3 {
        let (finished, said) = kill_while_busy(&target, &[]);
        assert_eq!(
            finished, untraced,
            "attempt {attempt}: the guardian said {said}"
        );
    }
}

/// Four threads allocating as fast as they can for 3 seconds.
fn busy() -> Target {
    Target::new(build_fixture("attach_loop", DEBUG))
        .arg("4")
        .arg("3")
}

fn kill_while_busy(target: &Target, mode: &[&str]) -> (common::attach::Finished, String) {
    let bg = Background::start(target);
    let pid = bg.pid();
    bg.wait_threads(5);
    let (memtrace, stderr) = attached(pid, mode);
    let said = kill(memtrace, stderr);
    let finished = bg.finish();
    if finished.exit == Exit::Signal(libc::SIGTRAP) {
        // Died of a thread at a breakpoint: the guardian may have found its memory
        // gone before it was done, and says so.
        assert_restored_or_gone(&said);
    } else {
        assert_restored_all(&said);
    }
    (finished, said)
}

/// The guardian's "restored N of M", where the places not restored were those it
/// found with the process's memory gone.
fn assert_restored_or_gone(said: &str) {
    let Some((_, rest)) = said
        .lines()
        .find_map(|l| l.split_once("its guardian restored "))
    else {
        panic!("the guardian said nothing: {said}");
    };
    let w: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| w.get(i).and_then(|v| v.parse::<u64>().ok());
    let gone = rest
        .rsplit_once("gone under the other ")
        .and_then(|(_, g)| g.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        n(0).is_some() && n(0).zip(n(2)).is_some_and(|(r, m)| r + gone == m),
        "the guardian did not restore everything: {said}"
    );
}

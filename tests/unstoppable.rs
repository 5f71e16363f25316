//! A thread that cannot be stopped: one in uninterruptible sleep (a hung NFS or FUSE
//! file; here, the parent of a vfork whose child waits on stdin) takes no
//! PTRACE_INTERRUPT until the kernel lets it go. memtrace attaches without it, gives
//! up on it after the stop timeout (or at Ctrl-C) whenever it stops every thread, and
//! its detach says what it left: the original code is back, its pages stay mapped,
//! the thread is let go when memtrace exits, memtrace exits 1. The process lives on
//! and, once its thread is free, runs to its own end.

mod common;

use common::attach::{anonymous_code, patched_code, Background};
use common::process::{memtrace_binary, MEMTRACE_LIMIT};
use common::{build_fixture, Exit, Target, DEBUG};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The fixture, with its thread held inside vfork. Returns it, its stdin (a byte
/// there lets the thread go) and the held thread's id.
fn held_thread() -> (Background, std::process::ChildStdin, i32) {
    let (bg, stdin) = Background::start_piped(&Target::new(build_fixture("vfork_wait", DEBUG)));
    let out = wait_for(
        || {
            let out = bg.stdout_so_far();
            out.contains("vforked").then_some(out)
        },
        "the fixture's vfork",
    );
    let tid = out
        .lines()
        .find_map(|l| l.strip_prefix("thread "))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no thread id in {out:?}"));
    (bg, stdin, tid)
}

/// Polls `f` until it gives something; panics after a generous limit (a hang).
fn wait_for<T>(mut f: impl FnMut() -> Option<T>, what: &str) -> T {
    let until = Instant::now() + MEMTRACE_LIMIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "{what} never came");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `memtrace attach` in the background, its stderr in a file.
struct Memtrace {
    child: Child,
    stderr: tempfile::NamedTempFile,
    json: tempfile::TempDir,
}

impl Memtrace {
    fn attach(options: &[&str], pid: i32) -> Memtrace {
        let pid = pid.to_string();
        let mut args = vec!["attach", "--no-tui"];
        args.extend(options);
        Memtrace::start(&args, &[&pid], Stdio::null())
    }

    /// `memtrace ARGS --json <tmp> REST`.
    fn start(args: &[&str], rest: &[&str], stdin: Stdio) -> Memtrace {
        let stderr = tempfile::NamedTempFile::new().expect("a temporary file");
        let json = tempfile::tempdir().expect("a temporary directory");
        let child = Command::new(memtrace_binary())
            .args(args)
            .arg("--json")
            .arg(json.path().join("report.json"))
            .args(rest)
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(stderr.reopen().expect("reopen"))
            .spawn()
            .expect("memtrace starts");
        Memtrace {
            child,
            stderr,
            json,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    fn interrupt(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
    }

    fn exited(&mut self) -> Option<Exit> {
        self.child
            .try_wait()
            .expect("wait for memtrace")
            .map(Exit::from_status)
    }

    fn report(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.json.path().join("report.json"))
            .unwrap_or_else(|e| panic!("no report ({e}); stderr:\n{}", self.stderr()));
        serde_json::from_str(&text).expect("JSON")
    }
}

impl Drop for Memtrace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// After memtrace: it said what it left in one line, exited 1, and left no
/// breakpoint; the process is alive; freed, its thread runs on and the process ends
/// with its own status (not killed by a SIGTRAP of a breakpoint left behind).
fn check_left_behind(
    mut m: Memtrace,
    exit: Exit,
    bg: Background,
    mut stdin: std::process::ChildStdin,
    tid: i32,
) {
    let stderr = m.stderr();
    assert_eq!(exit, Exit::Code(1), "stderr:\n{stderr}");
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("the detach is incomplete"))
        .collect();
    assert_eq!(said.len(), 1, "stderr:\n{stderr}");
    assert!(said[0].contains(&format!("thread {tid} ")), "{}", said[0]);
    assert_eq!(crate::common::report::end(&m.report()).0, "detached");
    let pid = bg.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(patched_code(pid), Vec::<String>::new(), "code left patched");
    // The pages stay, as said.
    assert!(!anonymous_code(pid).is_empty());
    let _ = m.child.wait();
    stdin.write_all(b"x").expect("write to the fixture");
    drop(stdin);
    assert_eq!(bg.finish().exit, Exit::Code(7));
}

/// With the default stop timeout: attach goes on without the thread, the scan
/// before the detach and the detach give up on it, memtrace exits 1.
#[test]
fn a_thread_that_cannot_stop_is_left_and_the_process_lives() {
    let (bg, stdin, tid) = held_thread();
    let mut m = Memtrace::attach(&[], bg.pid());
    wait_for(
        || m.stderr().contains("Ctrl-C detaches").then_some(()),
        "the attach",
    );
    assert!(
        m.stderr().contains(&format!("thread {tid} ")),
        "the attach does not name the thread it went on without:\n{}",
        m.stderr()
    );
    m.interrupt();
    let exit = wait_for(|| m.exited(), "memtrace's end");
    check_left_behind(m, exit, bg, stdin, tid);
}

/// With a stop timeout longer than any test: only Ctrl-C ends each wait for the
/// thread (at attach, for the scan, for the detach), each time memtrace says it is
/// waiting.
#[test]
fn ctrl_c_ends_each_wait_for_a_thread_that_cannot_stop() {
    let (bg, stdin, tid) = held_thread();
    let mut m = Memtrace::attach(&["--stop-timeout", "100000"], bg.pid());
    let mut told = 0;
    let exit = wait_for(
        || {
            if let Some(exit) = m.exited() {
                return Some(exit);
            }
            let waits = m.stderr().matches("has not stopped after").count();
            if waits > told {
                told = waits;
                m.interrupt();
            }
            None
        },
        "memtrace's end",
    );
    assert!(told >= 2, "memtrace waited {told} times:\n{}", m.stderr());
    check_left_behind(m, exit, bg, stdin, tid);
}

/// `memtrace launch --duration`: the launched program's held thread cannot be let go
/// at the detach, and a launched program dies with its tracer (EXITKILL): memtrace
/// waits, lets the thread go at its first stop, and exits with the program's status.
#[test]
fn a_launched_programs_thread_that_cannot_stop_is_let_go_when_it_does() {
    let fixture = build_fixture("vfork_wait", DEBUG);
    let fixture = fixture.to_string_lossy();
    let mut m = Memtrace::start(
        &["launch", "--no-tui", "--duration", "1"],
        &["--", &fixture],
        Stdio::piped(),
    );
    let mut stdin = m.child.stdin.take().expect("a pipe");
    let memtrace = m.child.id() as i32;
    // The program (memtrace's child) detached, its held thread still traced.
    let (pid, held) = wait_for(
        || {
            let pid = children(memtrace).into_iter().next()?;
            let tracers = tracers(pid);
            let main = tracers.iter().find(|(t, _)| *t == pid)?.1;
            let held = tracers.iter().find(|(_, tracer)| *tracer != 0)?.0;
            (main == 0).then_some((pid, held))
        },
        "the detach",
    );
    assert_ne!(held, pid);
    stdin.write_all(b"x").expect("write to the program");
    drop(stdin);
    let exit = wait_for(|| m.exited(), "memtrace's end");
    let text = m.stderr();
    assert_eq!(exit, Exit::Code(7), "stderr:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("the detach is incomplete")
                && l.contains(&format!("thread {held} "))),
        "stderr:\n{text}"
    );
}

/// The children of process `pid`.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Each thread of `pid` with its tracer's pid (0: none).
fn tracers(pid: i32) -> Vec<(i32, i32)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(|tid: i32| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
            let tracer = status
                .lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))?
                .trim()
                .parse()
                .ok()?;
            Some((tid, tracer))
        })
        .collect()
}

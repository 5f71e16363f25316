//! Running a fixture natively in the background, for `memtrace attach` to trace, with
//! a watchdog: a fixture still alive after its limit is killed and the test fails.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::{memtrace_binary, run_with_watchdog, Exit, Target, MEMTRACE_LIMIT};
use super::run_dir;

/// How long a background fixture may live.
pub const FIXTURE_LIMIT: Duration = Duration::from_secs(90);

/// A fixture running in the background, its stdout going to a file.
pub struct Background {
    child: Child,
    started: Instant,
    stdout: tempfile::NamedTempFile,
    done: Option<mpsc::Sender<()>>,
    watchdog: Option<std::thread::JoinHandle<bool>>,
}

/// What a background fixture left behind.
#[derive(Debug, PartialEq, Eq)]
pub struct Finished {
    pub exit: Exit,
    pub stdout: String,
}

impl Background {
    pub fn start(target: &Target) -> Background {
        Background::start_with_stdin(target, Stdio::null())
    }

    /// Started with its stdin on a pipe, whose writing end is returned.
    pub fn start_piped(target: &Target) -> (Background, std::process::ChildStdin) {
        let mut bg = Background::start_with_stdin(target, Stdio::piped());
        let stdin = bg
            .child
            .stdin
            .take()
            .unwrap_or_else(|| panic!("no pipe to the fixture's stdin"));
        (bg, stdin)
    }

    /// What the fixture has written to stdout so far.
    pub fn stdout_so_far(&self) -> String {
        std::fs::read_to_string(self.stdout.path()).unwrap_or_default()
    }

    /// Waits (a minute at most) until the fixture has written `text` to stdout.
    pub fn wait_for_output(&self, text: &str) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !self.stdout_so_far().contains(text) {
            assert!(
                std::time::Instant::now() < until,
                "the process never wrote {text:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn start_with_stdin(target: &Target, stdin: Stdio) -> Background {
        let stdout = tempfile::NamedTempFile::new()
            .unwrap_or_else(|e| panic!("cannot create a temporary file: {e}"));
        let out = stdout
            .reopen()
            .unwrap_or_else(|e| panic!("cannot reopen a temporary file: {e}"));
        let mut command = Command::new(&target.program);
        command
            .args(&target.args)
            .current_dir(run_dir())
            .stdin(stdin)
            .stdout(Stdio::from(out))
            .stderr(Stdio::null())
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", target.display()));
        let pid = child.id() as i32;
        // Until it has executed the fixture, the child is a copy of the test process.
        let exe = std::fs::canonicalize(&target.program).unwrap_or_default();
        let until = Instant::now() + Duration::from_secs(20);
        while std::fs::read_link(format!("/proc/{pid}/exe")).ok() != Some(exe.clone()) {
            assert!(Instant::now() < until, "{} never started", target.display());
            std::thread::sleep(Duration::from_millis(1));
        }
        // Then the loader maps libc (a static fixture never does: wait a little only).
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until
            && !std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .unwrap_or_default()
                .contains("/libc.so")
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (done, finished) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || match finished.recv_timeout(FIXTURE_LIMIT) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                true
            }
            _ => false,
        });
        Background {
            child,
            started: Instant::now(),
            stdout,
            done: Some(done),
            watchdog: Some(watchdog),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Whether the process still runs, or how it ended (for a failure's message: a
    /// fixture that ended early ran out of time, or was killed).
    pub fn state(&mut self) -> String {
        let ran = self.started.elapsed();
        match self.child.try_wait() {
            Ok(None) => format!("still running after {ran:?}"),
            Ok(Some(status)) => format!("ended ({status}) within {ran:?} of its start"),
            Err(e) => format!("unknown ({e})"),
        }
    }

    /// Waits until the process has `n` threads (its workers started).
    pub fn wait_threads(&self, n: usize) {
        let until = Instant::now() + Duration::from_secs(20);
        let dir = format!("/proc/{}/task", self.pid());
        while std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0) < n {
            assert!(Instant::now() < until, "the fixture never had {n} threads");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the end; panics if the watchdog had to kill it.
    pub fn finish(mut self) -> Finished {
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("cannot wait for the fixture: {e}"));
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
        let killed = self
            .watchdog
            .take()
            .map(|w| w.join().unwrap_or(false))
            .unwrap_or(false);
        assert!(
            !killed,
            "the fixture did not finish within {FIXTURE_LIMIT:?}"
        );
        let mut stdout = String::new();
        let _ = File::open(self.stdout.path()).and_then(|mut f| f.read_to_string(&mut stdout));
        Finished {
            exit: Exit::from_status(status),
            stdout,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // A test that failed early must not leave its fixture behind.
        if self.done.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until process `pid` is traced (or no longer traced).
pub fn wait_tracer(pid: i32, traced: bool) {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let tracer = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .map(|v| v.trim() != "0");
        if tracer == Some(traced) {
            return;
        }
        assert!(
            tracer.is_some() && std::time::Instant::now() < until,
            "process {pid} never became {}traced",
            if traced { "" } else { "un" }
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One `memtrace attach` run.
#[derive(Debug)]
pub struct AttachRun {
    pub exit: Exit,
    pub stderr: String,
    pub json: Option<Value>,
}

impl AttachRun {
    pub fn report(&self) -> &Value {
        self.json.as_ref().unwrap_or_else(|| {
            panic!(
                "memtrace wrote no JSON report; exit {:?}; stderr:\n{}",
                self.exit, self.stderr
            )
        })
    }
}

/// The memtrace command line `memtrace attach --no-tui --json <tmp> OPTIONS PID`.
pub fn attach_command(options: &[&str], pid: i32, json: &Path) -> Command {
    let mut command = Command::new(memtrace_binary());
    command
        .arg("attach")
        .arg("--no-tui")
        .arg("--json")
        .arg(json)
        .args(options)
        .arg(pid.to_string());
    command
}

/// Runs `memtrace attach` with a watchdog and reads its report.
pub fn run_attach(options: &[&str], pid: i32) -> AttachRun {
    run_attach_command(|json| attach_command(options, pid, json))
}

/// Runs the memtrace command `make` builds (given the JSON path) with a watchdog.
pub fn run_attach_command(make: impl FnOnce(&Path) -> Command) -> AttachRun {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a directory: {e}"));
    let json = dir.path().join("report.json");
    let output = run_with_watchdog(make(&json), MEMTRACE_LIMIT, "memtrace attach");
    let json = std::fs::read_to_string(&json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    AttachRun {
        exit: output.exit,
        stderr: output.stderr,
        json,
    }
}

/// Anonymous executable mappings of a process (memtrace's scratch and stub pages
/// are such mappings; a plain C program has none).
pub fn anonymous_code(pid: i32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 5 && f[1].contains('x')
        })
        .map(str::to_string)
        .collect()
}

/// The executable mappings of files whose bytes in the process differ from the
/// file's (a breakpoint left behind): `path @ address` for each.
pub fn patched_code(pid: i32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let Ok(mem) = File::open(format!("/proc/{pid}/mem")) else {
        return vec![format!(
            "cannot open the memory of {pid}: {}",
            std::io::Error::last_os_error()
        )];
    };
    let mut differ = Vec::new();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || !f[1].contains('x') || !f[5].starts_with('/') {
            continue;
        }
        let (Some((start, end)), Ok(offset)) = (
            f[0].split_once('-').and_then(|(a, b)| {
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            }),
            u64::from_str_radix(f[2], 16),
        ) else {
            continue;
        };
        let Ok(file) = File::open(f[5]) else { continue };
        let len = (end - start) as usize;
        let (mut in_process, mut in_file) = (vec![0u8; len], vec![0u8; len]);
        use std::os::unix::fs::FileExt;
        let Ok(n) = file.read_at(&mut in_file, offset) else {
            continue;
        };
        if let Err(e) = mem.read_exact_at(&mut in_process[..n], start) {
            differ.push(format!("{} (unreadable at {start:#x}+{n:#x}: {e})", f[5]));
            continue;
        }
        if let Some(i) = (0..n).find(|&i| in_process[i] != in_file[i]) {
            differ.push(format!("{} @ {:#x}", f[5], start + i as u64));
        }
    }
    differ
}

//! Running programs: natively, under memtrace, under valgrind. Every run has a
//! watchdog: a run that outlives its limit is killed with its whole process group and
//! the test fails, so a hang never blocks CI.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::run_dir;

/// How long memtrace may take on one fixture before the test fails.
pub const MEMTRACE_LIMIT: Duration = Duration::from_secs(60);
/// How long valgrind or a native run may take.
pub const OTHER_LIMIT: Duration = Duration::from_secs(180);

/// How a process ended, comparable across native runs, memtrace and valgrind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn from_status(status: ExitStatus) -> Exit {
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(signal)) => Exit::Signal(signal),
            (None, None) => panic!("a process ended neither by exit nor by signal: {status:?}"),
        }
    }

    /// The status a shell (and memtrace) reports for this end: 128+N for signal N.
    pub fn shell_code(self) -> i32 {
        match self {
            Exit::Code(code) => code,
            Exit::Signal(signal) => 128 + signal,
        }
    }
}

/// A program and its arguments, by absolute path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl Target {
    pub fn new(program: impl Into<PathBuf>) -> Target {
        Target {
            program: program.into(),
            args: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Target {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// For messages: the command line.
    pub fn display(&self) -> String {
        let mut line = self.program.display().to_string();
        for arg in &self.args {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        line
    }
}

/// What a run left behind.
#[derive(Debug)]
pub struct Output {
    pub exit: Exit,
    pub stderr: String,
    /// What the program wrote to stdout, when captured ([`run_with_watchdog_stdout`]);
    /// empty otherwise.
    pub stdout: String,
    pub elapsed: Duration,
}

/// Runs `command` in [`run_dir`] with stdin and stdout on /dev/null and stderr
/// captured, in a process group of its own; kills the group and panics after `limit`.
pub fn run_with_watchdog(command: Command, limit: Duration, what: &str) -> Output {
    run_watched(command, limit, what, false)
}

/// [`run_with_watchdog`], with stdout captured too (into a file, as on every side of
/// a comparison: glibc sizes stdout's buffer by what stdout is).
pub fn run_with_watchdog_stdout(command: Command, limit: Duration, what: &str) -> Output {
    run_watched(command, limit, what, true)
}

fn read_back(mut file: File) -> String {
    let mut bytes = Vec::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn run_watched(mut command: Command, limit: Duration, what: &str, capture: bool) -> Output {
    let stdout_file = capture.then(|| {
        tempfile::tempfile().unwrap_or_else(|e| panic!("cannot create a temporary file: {e}"))
    });
    let stdout = match &stdout_file {
        Some(f) => Stdio::from(
            f.try_clone()
                .unwrap_or_else(|e| panic!("cannot duplicate a file descriptor: {e}")),
        ),
        None => Stdio::null(),
    };
    let mut stderr_file =
        tempfile::tempfile().unwrap_or_else(|e| panic!("cannot create a temporary file: {e}"));
    let stderr_for_child = stderr_file
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot duplicate a file descriptor: {e}"));
    command
        .current_dir(run_dir())
        .stdin(Stdio::null())
        // The same on every side: glibc sizes stdout's buffer by what stdout is.
        .stdout(stdout)
        .stderr(Stdio::from(stderr_for_child))
        .process_group(0);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let group = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));

    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || match finished.recv_timeout(limit) {
        Err(mpsc::RecvTimeoutError::Timeout) => {
            // The whole group: memtrace and the program it traces.
            let _ = killpg(group, Signal::SIGKILL);
            true
        }
        _ => false,
    });
    let status = child
        .wait()
        .unwrap_or_else(|e| panic!("cannot wait for {what}: {e}"));
    let _ = done.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    let elapsed = started.elapsed();

    let mut stderr = String::new();
    let _ = stderr_file.seek(SeekFrom::Start(0));
    let mut bytes = Vec::new();
    let _ = stderr_file.read_to_end(&mut bytes);
    stderr.push_str(&String::from_utf8_lossy(&bytes));
    if timed_out {
        panic!("{what} did not finish within {limit:?} and was killed; stderr so far:\n{stderr}");
    }
    Output {
        exit: Exit::from_status(status),
        stderr,
        stdout: stdout_file.map(read_back).unwrap_or_default(),
        elapsed,
    }
}

/// Runs the target natively, as the tests run it under memtrace and valgrind.
pub fn run_native(target: &Target) -> Output {
    let mut command = Command::new(&target.program);
    command.args(&target.args);
    run_with_watchdog(
        command,
        OTHER_LIMIT,
        &format!("native {}", target.display()),
    )
}

/// One memtrace run.
#[derive(Debug)]
pub struct Run {
    pub exit: Exit,
    /// memtrace's exit status as a shell sees it.
    pub status: i32,
    pub stderr: String,
    /// The JSON report; `Value::Null` when memtrace wrote none.
    pub json: Value,
    /// Why `json` is null: no file, or a file that is not JSON.
    pub json_error: Option<String>,
    pub elapsed: Duration,
}

impl Run {
    /// The non-empty lines memtrace printed on stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }

    /// The JSON report, or a panic saying why there is none.
    pub fn report(&self) -> &Value {
        if let Some(error) = &self.json_error {
            panic!(
                "memtrace wrote no usable JSON report ({error}); exit {:?}; stderr:\n{}",
                self.exit, self.stderr
            );
        }
        &self.json
    }
}

/// The memtrace binary under test.
pub fn memtrace_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_memtrace"))
}

/// `memtrace launch --no-tui --json <tmp> -- PROGRAM ARGS...`, in both recording
/// modes (see [`run_memtrace_opts`]).
pub fn run_memtrace(target: &Target) -> Run {
    run_memtrace_opts(&[], target)
}

/// `memtrace launch --no-tui --json <tmp> OPTIONS -- PROGRAM ARGS...`, run twice:
/// recording inline (the default) and with `--stops`. Both must end the same way
/// and, unless the trace is cut by time (`--duration`), give the same report
/// ([`super::report::comparable`]). Returns the default run.
pub fn run_memtrace_opts(options: &[&str], target: &Target) -> Run {
    run_memtrace_env(&[], options, target)
}

/// `memtrace launch --no-tui --json <tmp> -- PROGRAM ARGS...` once, recording inline:
/// for a run repeated to catch a race.
pub fn run_memtrace_inline(target: &Target) -> Run {
    run_once(&[], &[], target)
}

/// [`run_memtrace_opts`] with these variables set in memtrace's environment (which
/// the program inherits), PATH for one.
pub fn run_memtrace_env(env: &[(&str, OsString)], options: &[&str], target: &Target) -> Run {
    if options.contains(&"--stops") {
        return run_once(env, options, target);
    }
    // --stops first: files the options name (--pprof PATH...) are then the inline
    // run's, as its report is.
    let mut with_stops = options.to_vec();
    with_stops.push("--stops");
    // Both runs at the same addresses: what the C library does can depend on where
    // the kernel puts a mapping (glibc trims a new arena's 128 MiB reservation with
    // one munmap or two, as it falls), and the reports count those calls.
    let stops = run_at(env, &with_stops, target, Layout::Fixed);
    let inline = run_at(env, options, target, Layout::Fixed);
    let what = format!("{} {}", options.join(" "), target.display());
    assert_eq!(
        inline.exit, stops.exit,
        "{what}: inline and --stops runs end differently\ninline stderr:\n{}\n--stops stderr:\n{}",
        inline.stderr, stops.stderr
    );
    let timed = options.contains(&"--duration");
    if !timed && inline.json_error.is_none() {
        let (a, b) = (
            super::report::comparable(stops.report()),
            super::report::comparable(inline.report()),
        );
        assert_eq!(
            a, b,
            "{what}: the --stops report (left) and the inline one (right) differ\ninline stderr:\n{}\n--stops stderr:\n{}",
            inline.stderr, stops.stderr
        );
    }
    inline
}

/// One run of `memtrace launch --no-tui --json <tmp> OPTIONS -- PROGRAM ARGS...`.
pub fn run_memtrace_once(options: &[&str], target: &Target) -> Run {
    run_once(&[], options, target)
}

/// Where a run's mappings go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Wherever the kernel puts them (address space layout randomization).
    Random,
    /// The same place every run: memtrace runs with address space randomization
    /// off (`setarch -R`), and the program inherits it, as gdb runs a program.
    Fixed,
}

fn run_once(env: &[(&str, OsString)], options: &[&str], target: &Target) -> Run {
    run_at(env, options, target, Layout::Random)
}

fn run_at(env: &[(&str, OsString)], options: &[&str], target: &Target, layout: Layout) -> Run {
    let dir =
        tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
    let json_path = dir.path().join("report.json");
    let mut command = match layout {
        Layout::Random => Command::new(memtrace_binary()),
        Layout::Fixed => {
            let mut c = Command::new(memtrace_binary());
            // SAFETY: personality(2) is a plain system call, safe between fork and
            // exec. Where it is refused (a seccomp filter), the run is randomized.
            unsafe {
                c.pre_exec(|| {
                    let current = libc::personality(0xffff_ffff);
                    if current != -1 {
                        libc::personality(
                            current as libc::c_ulong | libc::ADDR_NO_RANDOMIZE as libc::c_ulong,
                        );
                    }
                    Ok(())
                });
            }
            c
        }
    };
    command
        .arg("launch")
        .arg("--no-tui")
        .arg("--json")
        .arg(&json_path)
        .args(options)
        .arg("--")
        .arg(&target.program)
        .args(&target.args)
        .envs(env.iter().map(|(k, v)| (k, v)));
    let output = run_with_watchdog(
        command,
        MEMTRACE_LIMIT,
        &format!("memtrace on {}", target.display()),
    );
    let (json, json_error) = match std::fs::read_to_string(&json_path) {
        Err(e) => (
            Value::Null,
            Some(format!("cannot read {}: {e}", json_path.display())),
        ),
        Ok(text) => match serde_json::from_str(&text) {
            Ok(value) => (value, None),
            Err(e) => (Value::Null, Some(format!("not JSON: {e}"))),
        },
    };
    Run {
        exit: output.exit,
        status: output.exit.shell_code(),
        stderr: output.stderr,
        json,
        json_error,
        elapsed: output.elapsed,
    }
}

/// Reads a file that a run may not have written.
pub fn read_optional(path: &Path) -> Option<String> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    Some(text)
}

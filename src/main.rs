//! The `memtrace` command: parse, trace, report, exit with the right status.

use clap::Parser;
use memtrace::attachable;
use memtrace::cli::{AttachArgs, Cli, Command, Common, LaunchArgs};
use memtrace::elf;
use memtrace::event::Event;
use memtrace::heap::Heap;
use memtrace::maps::Module;
use memtrace::ptrace::{self, Stop, Waiter};
use memtrace::report::{self, End, Target, Timing};
use memtrace::symbols::Symbolizer;
use memtrace::tracer::{self, AttachError, Sink, Tracer};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

/// Feeds the heap model and keeps the symbolizer aware of every loaded object.
struct Collector {
    heap: Heap,
    /// Made when the first objects are known (files are opened through /proc/PID/root).
    sym: Option<Symbolizer>,
    /// When the trace began: every event is stamped with the time since.
    started: Instant,
}

impl Sink for Collector {
    fn event(&mut self, ev: Event) {
        if ev == Event::Exec {
            if let Some(sym) = &mut self.sym {
                sym.reset();
            }
        }
        self.heap.set_now(self.started.elapsed().as_nanos() as u64);
        self.heap.apply(&ev);
    }
    fn modules(&mut self, pid: i32, modules: &[Module], generation: u32) {
        self.sym
            .get_or_insert_with(|| Symbolizer::new(pid))
            .update_modules(modules, generation);
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Launch(args) => launch(args),
        Command::Attach(args) => attach(args),
    };
    std::process::exit(code);
}

/// What a finished trace hands to the report.
struct Traced {
    pid: i32,
    end: tracer::End,
    stacks: memtrace::event::StackTable,
    stats: tracer::TraceStats,
}

/// Applies the options every mode shares, runs the trace and takes what it leaves.
fn run(mut t: Tracer<'_>, common: &Common, started: Instant) -> Result<Traced, tracer::TraceError> {
    t.set_poll(Duration::from_micros(common.poll_us));
    t.set_depth(common.depth as usize);
    if let Some(secs) = common.duration {
        t.set_deadline(started + Duration::from_secs_f64(secs));
    }
    let end = t.run()?;
    Ok(Traced {
        pid: t.pid(),
        end,
        stacks: std::mem::take(&mut t.stacks),
        stats: t.stats,
    })
}

fn launch(args: LaunchArgs) -> i32 {
    let name = &args.command[0];
    let program = match elf::check_program(name) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("memtrace: {e}");
            return e.exit_code();
        }
    };
    let Some(cargs) = c_strings(&args.command) else {
        eprintln!("memtrace: an argument contains a NUL byte");
        return 2;
    };
    let Ok(path) = CString::new(program.path.as_os_str().as_bytes()) else {
        eprintln!("memtrace: the program path contains a NUL byte");
        return 2;
    };
    // Ctrl-C goes to the program (same process group); memtrace stays to report.
    ptrace::survive_terminal_signals();
    let waiter = match Waiter::new(false) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("memtrace: cannot set up waiting for the program: {e}");
            return 1;
        }
    };
    let started = Instant::now();
    let mut collector = Collector {
        heap: Heap::new(),
        sym: None,
        started,
    };
    let traced = match Tracer::launch(&path, &cargs, &mut collector, waiter)
        .and_then(|t| run(t, &args.common, started))
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("memtrace: {name}: {e}");
            return 1;
        }
    };
    let end = traced.end;
    let status = match end {
        tracer::End::Exited(code) => code,
        tracer::End::Signaled(sig) => 128 + sig,
        tracer::End::Detached => 0,
    };
    let target = Target {
        pid: traced.pid,
        argv: args.command.clone(),
        mode: "launch".into(),
    };
    let code = match finish(&mut collector, traced, target, &args.common, started) {
        Ok(report) => report,
        Err(code) => return code,
    };
    if end != tracer::End::Detached {
        return report::exit_code(&code, status, args.common.error_exitcode);
    }
    // Detached (--duration): the program runs on untraced, and memtrace, still its
    // parent, waits for it so that a shell sees the program's own status.
    let status = match ptrace::wait_tid(code.target.pid) {
        Ok(Stop::Exited { code, .. }) => code,
        Ok(Stop::Killed { signal, .. }) => 128 + signal,
        _ => 1,
    };
    report::exit_code(&code, status, args.common.error_exitcode)
}

fn attach(args: AttachArgs) -> i32 {
    let pid = args.pid;
    if let Err(r) = attachable::check(pid) {
        eprintln!("memtrace: {r}");
        return r.exit_code();
    }
    let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    // SIGINT, SIGTERM and SIGHUP now mean: detach and report.
    let waiter = match Waiter::new(true) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("memtrace: cannot set up waiting for the process: {e}");
            return 1;
        }
    };
    let started = Instant::now();
    let mut collector = Collector {
        heap: Heap::attached(),
        sym: None,
        started,
    };
    let traced = match Tracer::attach(pid, &mut collector, waiter) {
        Ok(t) => {
            eprintln!(
                "memtrace: attached to {pid} ({} threads); Ctrl-C detaches",
                t.stats.threads_seen
            );
            run(t, &args.common, started).map_err(AttachError::from)
        }
        Err(e) => Err(e),
    };
    let traced = match traced {
        Ok(t) => t,
        Err(AttachError::Seize { err, .. }) if err.raw_os_error() == Some(libc::EPERM) => {
            let r = attachable::permission_denied(pid);
            eprintln!("memtrace: {r}");
            return r.exit_code();
        }
        Err(AttachError::Seize { err, .. }) if err.raw_os_error() == Some(libc::ESRCH) => {
            let r = attachable::Refusal::NoSuchProcess(pid);
            eprintln!("memtrace: {r}");
            return r.exit_code();
        }
        Err(e) => {
            eprintln!("memtrace: {pid}: {e}");
            return 1;
        }
    };
    let target = Target {
        pid,
        argv,
        mode: "attach".into(),
    };
    match finish(&mut collector, traced, target, &args.common, started) {
        // The process's own status is its parent's business: memtrace succeeded.
        Ok(report) => report::exit_code(&report, 0, args.common.error_exitcode),
        Err(code) => code,
    }
}

/// Builds, prints and writes the report. Err: the exit status for a failure.
fn finish(
    collector: &mut Collector,
    traced: Traced,
    target: Target,
    common: &Common,
    started: Instant,
) -> Result<report::Report, i32> {
    let report_end = match traced.end {
        tracer::End::Exited(code) => End::exited(code),
        tracer::End::Signaled(sig) => End::signaled(sig),
        tracer::End::Detached => End::detached(),
    };
    let timing = Timing {
        duration_ns: started.elapsed().as_nanos() as u64,
        min_age_ns: common.min_age.map(|s| (s * 1e9) as u64),
    };
    let pid = traced.pid;
    let sym = collector.sym.get_or_insert_with(|| Symbolizer::new(pid));
    let mut report = report::build(
        target,
        report_end,
        &collector.heap,
        &traced.stacks,
        sym,
        timing,
    );
    report.trace = Some(traced.stats);
    eprint!("{}", report::text::render_text(&report));
    if let Some(path) = &common.json {
        if let Err(e) = report::json::write_json(&report, path) {
            eprintln!("memtrace: cannot write {}: {e}", path.display());
            return Err(1);
        }
    }
    Ok(report)
}

fn c_strings(args: &[String]) -> Option<Vec<CString>> {
    args.iter()
        .map(|a| CString::new(a.as_bytes()).ok())
        .collect()
}

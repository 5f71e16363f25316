//! The `memtrace` command: parse, trace, report, exit with the right status.

use clap::Parser;
use memtrace::attachable;
use memtrace::cli::{AttachArgs, Cli, Command, Common, LaunchArgs};
use memtrace::debug::batch::Batch;
use memtrace::debug::BreakSpec;
use memtrace::heap::Heap;
use memtrace::launchable;
use memtrace::offline;
use memtrace::progress;
use memtrace::ptrace::{self, Stop, Waiter};
use memtrace::report::{self, End, Target, Timing};
use memtrace::session::{self, Collector, Start, StartError, Traced};
use memtrace::suppress::{self, Suppressions};
use memtrace::symbols::Symbolizer;
use memtrace::tracer;
use memtrace::tui;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Launch(args) => launch(args),
        Command::Attach(args) => attach(args),
        Command::Report(args) => offline::report(&args),
        Command::Maps(args) => memtrace::census::command::run(args.pid, args.json),
        Command::Completions { shell } => offline::completions(shell),
        Command::Manpage { dir } => offline::manpage(dir.as_deref()),
    };
    std::process::exit(code);
}

/// The suppression files, read before anything is traced: a mistake in one is one
/// line and exit status 2.
fn load_suppressions(common: &Common) -> Result<Suppressions, i32> {
    Suppressions::load(&common.findings.suppressions).map_err(|e| {
        eprintln!("memtrace: {e}");
        2
    })
}

fn launch(args: LaunchArgs) -> i32 {
    let supps = match load_suppressions(&args.common) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let name = &args.command[0];
    let program = match launchable::check_program(name) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("memtrace: {e}");
            return e.exit_code();
        }
    };
    let Some(argv) = c_strings(&args.command) else {
        eprintln!("memtrace: an argument contains a NUL byte");
        return 2;
    };
    let Ok(path) = CString::new(program.path.as_os_str().as_bytes()) else {
        eprintln!("memtrace: the program path contains a NUL byte");
        return 2;
    };
    let breaks = match parse_breaks(&args.break_at) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("memtrace: {e}");
            return 2;
        }
    };
    // Ctrl-C goes to the program (same process group); memtrace stays to report.
    ptrace::survive_terminal_signals();
    let waiter = match Waiter::new(false) {
        Ok(mut w) => {
            w.set_stop_timeout(Duration::from_secs_f64(args.common.stop_timeout));
            w
        }
        Err(e) => {
            eprintln!("memtrace: cannot set up waiting for the program: {e}");
            return 1;
        }
    };
    let started = Instant::now();
    let start = Start::Launch { path, argv };
    // A command file means batch mode, terminal or not.
    let traced = if use_tui(&args.common) && args.commands.is_none() {
        let command = args.command.join(" ");
        // The view owns the terminal: no progress lines under it.
        progress::set_quiet(true);
        let t = tui::live::run(start, command, &args.common, breaks, waiter, started);
        progress::set_quiet(false);
        t
    } else {
        batch_debugger(breaks, &args).and_then(|debugger| {
            trace_plain(start, Heap::new(), &args.common, debugger, waiter, started)
        })
    };
    let traced = match traced {
        Ok(t) => t,
        Err(e) => {
            eprintln!("memtrace: {}", e.message);
            return e.code;
        }
    };
    let end = traced.end;
    let left_behind = traced.left_behind.clone();
    let status_after_detach = traced.status_after_detach;
    let target = Target {
        pid: traced.pid,
        argv: args.command.clone(),
        mode: "launch".into(),
        images: Vec::new(),
    };
    let report = match finish(traced, target, &args.common, &supps, started) {
        Ok(r) => r,
        Err(code) => return code,
    };
    if let Some(line) = &left_behind {
        eprintln!("memtrace: {line}");
    }
    let status = match end {
        tracer::End::Exited(code) => code,
        tracer::End::Signaled(sig) => 128 + sig,
        // Detached (--duration, or the live view's q): the program runs on untraced,
        // and memtrace, still its parent, waits for it so that a shell sees the
        // program's own status. A thread the detach could not stop is still traced
        // (and would die with memtrace): it is let go at its first stop, by the
        // tracing thread, which then waited for the end itself.
        tracer::End::Detached => match status_after_detach {
            Some(status) => status,
            None => match ptrace::wait_tid(report.target.pid) {
                Ok(Stop::Exited { code, .. }) => code,
                Ok(Stop::Killed { signal, .. }) => 128 + signal,
                _ => 1,
            },
        },
    };
    report::exit_code_for(
        &report,
        status,
        args.common.error_exitcode,
        &args.common.findings.errors_for_leak_kinds.0,
    )
}

fn attach(args: AttachArgs) -> i32 {
    let pid = args.pid;
    let supps = match load_suppressions(&args.common) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Err(r) = attachable::check(pid) {
        eprintln!("memtrace: {r}");
        return r.exit_code();
    }
    let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<String>>()
        })
        .unwrap_or_default();
    // SIGINT, SIGTERM and SIGHUP now mean: detach and report.
    let waiter = match Waiter::new(true) {
        Ok(mut w) => {
            w.set_stop_timeout(Duration::from_secs_f64(args.common.stop_timeout));
            w
        }
        Err(e) => {
            eprintln!("memtrace: cannot set up waiting for the process: {e}");
            return 1;
        }
    };
    let started = Instant::now();
    let start = Start::Attach { pid };
    let traced = if use_tui(&args.common) {
        progress::set_quiet(true);
        let t = tui::live::run(
            start,
            argv.join(" "),
            &args.common,
            Vec::new(),
            waiter,
            started,
        );
        progress::set_quiet(false);
        t
    } else {
        trace_plain(start, Heap::attached(), &args.common, None, waiter, started)
    };
    let traced = match traced {
        Ok(t) => t,
        Err(e) => {
            eprintln!("memtrace: {}", e.message);
            return e.code;
        }
    };
    let target = Target {
        pid,
        argv,
        mode: "attach".into(),
        images: Vec::new(),
    };
    let left_behind = traced.left_behind.clone();
    let code = match finish(traced, target, &args.common, &supps, started) {
        // The process's own status is its parent's business: memtrace succeeded.
        Ok(report) => report::exit_code_for(
            &report,
            0,
            args.common.error_exitcode,
            &args.common.findings.errors_for_leak_kinds.0,
        ),
        Err(code) => code,
    };
    match left_behind {
        // The process runs on, but memtrace did not leave it as it found it.
        Some(line) => {
            eprintln!("memtrace: {line}");
            1
        }
        None => code,
    }
}

/// The live view runs when memtrace talks to a person: stdin and stdout terminals.
fn use_tui(common: &Common) -> bool {
    use std::io::IsTerminal;
    !common.no_tui && std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

fn parse_breaks(specs: &[String]) -> Result<Vec<BreakSpec>, String> {
    specs.iter().map(|s| BreakSpec::parse(s)).collect()
}

/// The batch front end that drives `--break-at`, if there is any.
fn batch_debugger(
    breaks: Vec<BreakSpec>,
    args: &LaunchArgs,
) -> Result<Option<(Vec<BreakSpec>, Batch)>, StartError> {
    if breaks.is_empty() {
        return Ok(None);
    }
    let out = Box::new(std::io::stderr());
    let batch = match &args.commands {
        Some(path) => {
            let fail = |message| StartError { message, code: 2 };
            let text = std::fs::read_to_string(path)
                .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
            let commands =
                Batch::parse(&text).map_err(|e| fail(format!("{}: {e}", path.display())))?;
            Batch::new(commands, out)
        }
        None => Batch::stack_at_every_stop(out),
    };
    Ok(Some((breaks, batch)))
}

/// Traces without the live view.
fn trace_plain(
    start: Start,
    heap: Heap,
    common: &Common,
    debugger: Option<(Vec<BreakSpec>, Batch)>,
    waiter: Waiter,
    started: Instant,
) -> Result<Traced, StartError> {
    let mut collector = Collector::new(heap, start.is_attach(), started);
    let end = {
        let mut t = session::start_tracer(&start, &mut collector, waiter, common)?;
        session::configure(&mut t, common, started);
        // Ticks let the collector have the symbolizer load objects while the program
        // runs (see `Collector::tick`).
        t.set_tick(Duration::from_millis(100));
        if let Some((specs, batch)) = debugger {
            t.set_debugger(specs, Box::new(batch));
        }
        session::run_to_end(t).map_err(|message| StartError { message, code: 1 })?
    };
    let sym = collector.take_symbolizer();
    Ok(Traced {
        pid: end.pid,
        end: end.end,
        ended_at: end.ended_at,
        heap: collector.heap,
        mappings: collector.mappings,
        stacks: end.stacks,
        trace: end.stats,
        sym,
        scan: collector.scan,
        scan_error: end.scan_error,
        unmatched_breaks: end.unmatched_breaks,
        images: end.images,
        left_behind: end.left_behind,
        status_after_detach: end.status_after_detach,
    })
}

/// Builds, prints and writes the report. Err: the exit status for a failure.
fn finish(
    traced: Traced,
    mut target: Target,
    common: &Common,
    supps: &Suppressions,
    started: Instant,
) -> Result<report::Report, i32> {
    for spec in &traced.unmatched_breaks {
        eprintln!("memtrace: breakpoint {spec} never hit: no allocation was made from there");
    }
    let report_end = match traced.end {
        tracer::End::Exited(code) => End::exited(code),
        tracer::End::Signaled(sig) => End::signaled(sig),
        tracer::End::Detached => End::detached(),
    };
    let timing = Timing {
        duration_ns: traced.ended_at.duration_since(started).as_nanos() as u64,
        min_age_ns: common.min_age.map(|s| (s * 1e9) as u64),
    };
    let pid = traced.pid;
    target.images = traced.images;
    let mut heap = traced.heap;
    heap.end_of_trace();
    let mut sym = traced.sym.unwrap_or_else(|| Symbolizer::new(pid));
    let mut report = report::build(target, report_end, &heap, &traced.stacks, &mut sym, timing);
    let mut mappings = traced.mappings;
    mappings.model.end_of_trace();
    (report.mappings, report.mapping_totals) = {
        let (list, totals) = report::mappings::build(&mappings, &traced.stacks, &mut sym);
        (list, Some(totals))
    };
    report.trace = Some(traced.trace);
    report.scan = traced.scan;
    if report.scan.is_none() && !report.leaks.is_empty() {
        report.scan_missing = Some(traced.scan_error.unwrap_or_else(|| {
            "the program ended without an exit stop (killed by SIGKILL?)".into()
        }));
    }
    suppress::apply::apply(&mut report, supps);
    let outputs = common.outputs();
    eprint!(
        "{}",
        report::text::render_text_with(&report, outputs.gen_suppressions)
    );
    if let Err(failures) = report::render::write_outputs(&report, &outputs) {
        for e in failures {
            eprintln!("memtrace: {e}");
        }
        return Err(1);
    }
    Ok(report)
}

fn c_strings(args: &[String]) -> Option<Vec<CString>> {
    args.iter()
        .map(|a| CString::new(a.as_bytes()).ok())
        .collect()
}

//! The `memtrace` command: parse, trace, report, exit with the right status.

use clap::Parser;
use memtrace::cli::{Cli, Command, LaunchArgs};
use memtrace::debug::batch::Batch;
use memtrace::debug::BreakSpec;
use memtrace::event::Event;
use memtrace::heap::Heap;
use memtrace::maps::Module;
use memtrace::report::{self, End, Target};
use memtrace::symbols::Symbolizer;
use memtrace::tracer::{self, Scan, ScanStats, Sink, Tracer};
use memtrace::tui::session::{self, Traced};
use memtrace::{elf, ptrace};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

/// Feeds the heap model and keeps the symbolizer aware of every loaded object.
struct Collector {
    heap: Heap,
    /// Made when the first objects are known (files are opened through /proc/PID/root).
    sym: Option<Symbolizer>,
    /// The last reachability scan.
    scan: Option<ScanStats>,
}

impl Sink for Collector {
    fn event(&mut self, ev: Event) {
        if ev == Event::Exec {
            if let Some(sym) = &mut self.sym {
                sym.reset();
            }
            self.scan = None;
        }
        self.heap.apply(&ev);
    }
    fn modules(&mut self, pid: i32, modules: &[Module], generation: u32) {
        self.sym
            .get_or_insert_with(|| Symbolizer::new(pid))
            .update_modules(modules, generation);
    }
    fn live_blocks(&mut self) -> Vec<(u64, u64)> {
        self.heap.live_blocks().map(|(p, b)| (p, b.size)).collect()
    }
    fn classified(&mut self, scan: &Scan) {
        self.heap
            .classify(&scan.blocks, &scan.kinds, &scan.indirect_bytes);
        self.scan = Some(scan.stats);
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Launch(args) => launch(args),
    };
    std::process::exit(code);
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
    // A command file means batch mode, terminal or not.
    let traced = if use_tui(&args.common) && args.commands.is_none() {
        let breaks = match args.break_at.iter().map(|s| BreakSpec::parse(s)).collect() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("memtrace: {e}");
                return 2;
            }
        };
        session::launch(&path, &cargs, &args.command, &args.common, breaks)
    } else {
        trace_plain(&path, &cargs, &args)
    };
    let traced = match traced {
        Ok(t) => t,
        Err(e) => {
            eprintln!("memtrace: {name}: {e}");
            return 1;
        }
    };
    finish(traced, &args)
}

/// The live view runs when memtrace talks to a person: stdin and stdout terminals.
fn use_tui(common: &memtrace::cli::Common) -> bool {
    use std::io::IsTerminal;
    !common.no_tui && std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// The `--break-at` specs and the batch front end that drives them, if any.
fn batch_debugger(args: &LaunchArgs) -> Result<Option<(Vec<BreakSpec>, Batch)>, String> {
    if args.break_at.is_empty() {
        return Ok(None);
    }
    let specs = args
        .break_at
        .iter()
        .map(|s| BreakSpec::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let out = Box::new(std::io::stderr());
    let batch = match &args.commands {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let commands = Batch::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            Batch::new(commands, out)
        }
        None => Batch::stack_at_every_stop(out),
    };
    Ok(Some((specs, batch)))
}

fn trace_plain(path: &CString, argv: &[CString], args: &LaunchArgs) -> Result<Traced, String> {
    let mut collector = Collector {
        heap: Heap::new(),
        sym: None,
        scan: None,
    };
    let debugger = batch_debugger(args)?;
    let mut t = Tracer::launch(path, argv, &mut collector).map_err(|e| e.to_string())?;
    if let Some((specs, batch)) = debugger {
        t.set_debugger(specs, Box::new(batch), None);
    }
    let pid = t.pid();
    t.set_poll(std::time::Duration::from_micros(args.common.poll_us));
    t.set_depth(args.common.depth as usize);
    let end = t.run().map_err(|e| e.to_string())?;
    let scan_error = t.scan_error().map(String::from);
    for spec in t.armed_breaks() {
        eprintln!("memtrace: --break-at {spec}: no allocation was made from there");
    }
    let (stacks, trace) = (std::mem::take(&mut t.stacks), t.stats);
    drop(t);
    Ok(Traced {
        pid,
        end,
        heap: collector.heap,
        stacks,
        trace,
        sym: collector.sym,
        scan: collector.scan,
        scan_error,
    })
}

fn finish(traced: Traced, args: &LaunchArgs) -> i32 {
    let Traced {
        pid,
        end,
        heap,
        stacks,
        trace,
        sym,
        scan,
        scan_error,
    } = traced;
    let (report_end, status) = match end {
        tracer::End::Exited(code) => (End::exited(code), code),
        tracer::End::Signaled(sig) => (End::signaled(sig), 128 + sig),
    };
    let target = Target {
        pid,
        argv: args.command.clone(),
        mode: "launch".into(),
    };
    let mut sym = sym.unwrap_or_else(|| Symbolizer::new(pid));
    let mut report = report::build(target, report_end, &heap, &stacks, &mut sym);
    report.trace = Some(trace);
    report.scan = scan;
    if report.scan.is_none() && !report.leaks.is_empty() {
        report.scan_missing = Some(scan_error.unwrap_or_else(|| {
            "the program ended without an exit stop (killed by SIGKILL?)".into()
        }));
    }
    eprint!("{}", report::text::render_text(&report));
    if let Some(path) = &args.common.json {
        if let Err(e) = report::json::write_json(&report, path) {
            eprintln!("memtrace: cannot write {}: {e}", path.display());
            return 1;
        }
    }
    report::exit_code(&report, status, args.common.error_exitcode)
}

fn c_strings(args: &[String]) -> Option<Vec<CString>> {
    args.iter()
        .map(|a| CString::new(a.as_bytes()).ok())
        .collect()
}

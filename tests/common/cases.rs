//! The deterministic fixture runs, and the checks made on them.
//!
//! A [`Case`] is a fixture built with some flags and run with some arguments. Two
//! checks run on each: [`check_fixture`] (the fixture itself: its native exit status
//! and valgrind's loss records agree with its markers; needs no memtrace) and
//! [`check_memtrace`] (memtrace's report agrees with valgrind and with the markers).

use std::ffi::OsString;
use std::path::PathBuf;

use nix::sys::signal::Signal;

use super::basename;
use super::build::{build_fixture, build_shared, fixture_source, DEBUG, OPTIMIZED};
use super::errors::compare_errors;
use super::markers::{markers, Marker};
use super::process::{run_memtrace, run_native, Exit, Run, Target};
use super::report::{self, Leak};
use super::stacks::compare_stacks;
use super::valgrind::{run_valgrind_with, Lost, Valgrind};

/// A fixture, its build flags, its arguments, and the sources whose markers apply.
#[derive(Clone, Debug)]
pub struct Case {
    pub fixture: &'static str,
    pub flags: &'static [&'static str],
    pub args: Vec<OsString>,
    /// Sources whose `LEAK:` markers are expected, and whose every leak must be marked.
    pub sources: Vec<PathBuf>,
    /// Extra valgrind options (`--trace-children=yes` to follow an exec).
    pub valgrind_extra: Vec<&'static str>,
    /// Why memtrace's leak kinds cannot equal valgrind's LEAK SUMMARY on this case
    /// (None: they must).
    pub kinds_differ: Option<&'static str>,
}

impl Case {
    pub fn new(fixture: &'static str, flags: &'static [&'static str]) -> Case {
        Case {
            fixture,
            flags,
            args: Vec::new(),
            sources: vec![fixture_source(fixture)],
            valgrind_extra: Vec::new(),
            kinds_differ: None,
        }
    }

    /// memtrace's kinds are not compared with valgrind's, for this reason.
    pub fn kinds_differ(mut self, reason: &'static str) -> Case {
        self.kinds_differ = Some(reason);
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Case {
        self.args.push(arg.into());
        self
    }

    /// A header of fixtures/ (NAME.h) whose markers apply to this run.
    pub fn header(mut self, name: &str) -> Case {
        self.sources
            .push(super::fixtures_dir().join(format!("{name}.h")));
        self
    }

    /// Another fixture source (a library's) whose markers apply to this run.
    pub fn source(mut self, name: &str) -> Case {
        self.sources.push(fixture_source(name));
        self
    }

    pub fn valgrind_arg(mut self, arg: &'static str) -> Case {
        self.valgrind_extra.push(arg);
        self
    }

    /// Builds the fixture and returns what to run.
    pub fn target(&self) -> Target {
        let mut target = Target::new(build_fixture(self.fixture, self.flags));
        target.args.extend(self.args.iter().cloned());
        target
    }

    pub fn markers(&self) -> Vec<Marker> {
        self.sources.iter().flat_map(|s| markers(s)).collect()
    }

    fn source_names(&self) -> Vec<String> {
        self.sources
            .iter()
            .map(|s| {
                s.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    pub fn valgrind(&self) -> Valgrind {
        run_valgrind_with(&self.valgrind_extra, &self.target())
    }
}

// The cases. Each is a function so that a test names exactly what it runs.

pub fn leak() -> Case {
    Case::new("leak", DEBUG)
}
pub fn noleak() -> Case {
    Case::new("noleak", DEBUG)
}
/// A clean program that exits 5.
pub fn noleak_status5() -> Case {
    Case::new("noleak", DEBUG).arg("5")
}
pub fn alloc_family() -> Case {
    Case::new("alloc_family", DEBUG)
}
pub fn realloc_chain() -> Case {
    Case::new("realloc_chain", DEBUG)
}
pub fn cxx_new() -> Case {
    Case::new("cxx_new", DEBUG)
}
pub fn threads() -> Case {
    Case::new("threads", DEBUG)
}
/// 4 churning threads: glibc's thread-exit cache frees must not count.
pub fn churn_threads() -> Case {
    Case::new("churn", DEBUG).arg("20000").arg("4")
}
/// thread_reuse.c: threads made one after another on the stack and thread pointer
/// of the one just joined.
pub fn thread_reuse() -> Case {
    Case::new("thread_reuse", DEBUG)
}
/// thread_waves.c: threads ending while others churn (records still unread at an
/// end).
pub fn thread_waves() -> Case {
    Case::new("thread_waves", DEBUG)
}
/// coroutine.c: the main thread allocates on a small stack mmap'd below its own.
pub fn coroutine() -> Case {
    Case::new("coroutine", DEBUG)
}
pub fn dlopen() -> Case {
    dlopen_with(DEBUG)
}
fn dlopen_with(flags: &'static [&'static str]) -> Case {
    Case::new("dlopen_main", flags)
        .arg(build_shared("plugin", flags))
        .arg(build_shared("plugin_cxx", flags))
        .source("plugin")
        .source("plugin_cxx")
}
pub fn ctor() -> Case {
    Case::new("ctor_main", DEBUG).source("ctor_lib")
}
pub fn fork() -> Case {
    Case::new("fork", DEBUG)
}
/// deep_churn.c: calls from deep stacks of large frames (records the reader often
/// finds half written).
pub fn deep_churn() -> Case {
    Case::new("deep_churn", DEBUG)
}
/// vfork.c: children that run on the parent's memory and slot; only the parent's
/// calls count.
pub fn vfork() -> Case {
    Case::new("vfork", DEBUG)
}
/// exec.c leaks, then execs the leak fixture: only leak.c's markers may show, and
/// valgrind follows the exec to report on the new image.
pub fn exec() -> Case {
    Case::new("exec", DEBUG)
        .arg(build_fixture("leak", DEBUG))
        .source("leak")
        .valgrind_arg("--trace-children=yes")
}
pub fn signal_segv() -> Case {
    Case::new("signal", DEBUG).arg("segv")
}
pub fn signal_raise() -> Case {
    Case::new("signal", DEBUG).arg("raise")
}
pub fn signal_term() -> Case {
    Case::new("signal", DEBUG).arg("term")
}
pub fn signal_abort() -> Case {
    Case::new("signal", DEBUG).arg("abort")
}
pub fn exit3() -> Case {
    Case::new("exit3", DEBUG)
}
pub fn many_leaks() -> Case {
    Case::new("many_leaks", DEBUG)
}
pub fn kinds() -> Case {
    Case::new("kinds", DEBUG)
}
/// Three leak sites in three functions (flamegraphs and profiles are read back).
pub fn three_leaks() -> Case {
    Case::new("three_leaks", DEBUG)
}
/// Blocks of zero bytes (malloc(0)) left live, and nothing else of the program's.
pub fn zero_leak() -> Case {
    Case::new("zero_leak", DEBUG)
}
/// A leak of its own, and the C library's regex cache that Debian's suppressions hide.
pub fn rpmatch() -> Case {
    Case::new("rpmatch", DEBUG)
}
/// No leak of its own: only the C library's and the loader's blocks are live.
pub fn libc_only() -> Case {
    Case::new("libc_only", DEBUG)
}
/// A cycle with no root, a cache held by a global, a pointer into a cached block, and
/// a lost 40-byte block allocated last (glibc's top chunk header is inside it).
pub fn reach() -> Case {
    Case::new("reach", DEBUG)
}
pub fn reach_o2() -> Case {
    Case::new("reach", OPTIMIZED)
}
/// The only pointers to two blocks are in a register and on the stack of threads
/// asleep while main exits.
pub fn sleeper() -> Case {
    Case::new("sleeper", DEBUG)
}
pub fn mmap_root() -> Case {
    Case::new("mmap_root", DEBUG)
}
/// Large blocks glibc maps itself, grown by mremap inside realloc, and a thread's
/// arena: heap, never mappings.
pub fn map_bigmalloc() -> Case {
    Case::new("map_bigmalloc", DEBUG)
}
pub fn sleeper_o2() -> Case {
    Case::new("sleeper", OPTIMIZED)
}
/// The same, ended by a direct exit_group system call (no exit(), no _exit).
pub fn sleeper_exit_group() -> Case {
    Case::new("sleeper", DEBUG).arg("exit_group")
}
/// Interior pointers that memcheck's heuristics take for start pointers (new[],
/// multiple inheritance, length64), and one that no heuristic takes.
pub fn heuristics() -> Case {
    Case::new("heuristics", DEBUG)
}
pub fn heuristics_o2() -> Case {
    Case::new("heuristics", OPTIMIZED)
}
/// 16 MiB of 4 KiB list nodes: one list held by a global, one whose head is lost.
pub fn bigheap() -> Case {
    // memtrace's kinds are checked against the markers all the same.
    Case::new("bigheap", DEBUG).kinds_differ(
        "under the test harness valgrind finds, in some runs and not others, an interior \
         pointer into the middle of the lost list (1,672 of its 2,047 nodes then come out \
         possibly lost); run from a shell it never does, and memtrace's native scan never \
         does",
    )
}
pub fn signals_handled() -> Case {
    Case::new("signals_handled", DEBUG)
}
/// Every mismatched allocator/deallocator pair; runs on natively.
pub fn mismatch() -> Case {
    Case::new("mismatch", DEBUG)
}
pub fn mismatch_o2() -> Case {
    Case::new("mismatch", OPTIMIZED)
}
/// Addresses handed out again and again, and no error.
pub fn reuse() -> Case {
    Case::new("reuse", DEBUG)
}
/// One bad free (glibc aborts natively): `double`, `stack`, `interior` or `global`.
pub fn bad_free(which: &str) -> Case {
    Case::new("heap_errors", DEBUG).arg(which)
}

/// big_frames.c: allocations under main's and a thread's big steady frames, whose
/// locals the stack compare steps over, with other frames coming and going below.
pub fn big_frames() -> Case {
    Case::new("big_frames", OPTIMIZED)
}
/// main_again.c: main called again through a pointer by main, and another
/// function called in its place after a longjmp.
pub fn main_again() -> Case {
    Case::new("main_again", OPTIMIZED).header("main_again")
}

/// main_in_thread.c: the same, main called by a thread's start routine in a
/// library.
pub fn main_in_thread() -> Case {
    Case::new("main_in_thread", OPTIMIZED)
        .source("main_in_thread_lib")
        .header("main_again")
}

/// main_in_ctor.c: the same, main called by a library function the executable
/// lists among its constructors.
pub fn main_in_ctor() -> Case {
    Case::new("main_in_ctor", OPTIMIZED)
        .source("main_in_ctor_lib")
        .header("main_again")
}

/// alt_stack_in_main.c: a signal handler on an alternate stack inside main's locals.
pub fn alt_stack_in_main() -> Case {
    Case::new("alt_stack_in_main", OPTIMIZED)
}

/// Whole stacks: a 50-deep recursion and an inlined helper (run with `--depth 64`).
pub fn stacks() -> Case {
    Case::new("stacks", DEBUG)
}
pub fn stacks_o2() -> Case {
    Case::new("stacks", OPTIMIZED)
}
/// C++ names in stacks: a template, a class template's member, a lambda.
pub fn stacks_cxx() -> Case {
    Case::new("stacks_cxx", DEBUG)
}
pub fn stacks_cxx_o2() -> Case {
    Case::new("stacks_cxx", OPTIMIZED)
}
pub fn leak_o2() -> Case {
    Case::new("leak", OPTIMIZED)
}
pub fn alloc_family_o2() -> Case {
    Case::new("alloc_family", OPTIMIZED)
}
pub fn realloc_chain_o2() -> Case {
    Case::new("realloc_chain", OPTIMIZED)
}
pub fn cxx_new_o2() -> Case {
    Case::new("cxx_new", OPTIMIZED)
}
pub fn threads_o2() -> Case {
    Case::new("threads", OPTIMIZED)
}
pub fn many_leaks_o2() -> Case {
    Case::new("many_leaks", OPTIMIZED)
}
pub fn dlopen_o2() -> Case {
    dlopen_with(OPTIMIZED)
}

/// Blocks live at exit attributed to one source line: a valgrind loss record or a
/// memtrace leak entry, reduced to what markers speak of.
#[derive(Clone, Debug)]
pub struct Site {
    pub file: Option<String>,
    pub line: Option<u32>,
    pub kind: String,
    pub blocks: u64,
    pub bytes: u64,
    /// The first frame, for messages.
    pub describe: String,
}

/// valgrind's loss records as sites, at the allocator's caller.
pub fn valgrind_sites(valgrind: &Valgrind) -> Vec<Site> {
    valgrind
        .records
        .iter()
        .map(|record| {
            let caller = record.caller();
            Site {
                file: caller
                    .and_then(|f| f.file.as_deref())
                    .map(|f| basename(f).to_string()),
                line: caller.and_then(|f| f.line),
                kind: record.kind.clone(),
                blocks: record.blocks,
                bytes: record.bytes,
                describe: caller
                    .map(|f| format!("{f:?}"))
                    .unwrap_or_else(|| "no frame".into()),
            }
        })
        .collect()
}

/// memtrace's leak entries as sites, at their first frame.
pub fn report_sites(leaks: &[Leak]) -> Vec<Site> {
    leaks
        .iter()
        .map(|leak| {
            let first = leak.stack.first();
            Site {
                file: first
                    .and_then(|f| f.file.as_deref())
                    .map(|f| basename(f).to_string()),
                line: first
                    .and_then(|f| f.line)
                    .and_then(|l| u32::try_from(l).ok()),
                kind: leak.kind.clone(),
                blocks: leak.blocks,
                bytes: leak.bytes,
                describe: first
                    .map(|f| f.short())
                    .unwrap_or_else(|| "empty stack".into()),
            }
        })
        .collect()
}

/// Every marker is matched exactly (the sites at its line add up to its blocks and
/// bytes, and have its kind where both say one), and every site in one of `sources`
/// is at a marker.
pub fn check_sites(sites: &[Site], markers: &[Marker], sources: &[String]) -> Result<(), String> {
    let mut problems = Vec::new();
    for marker in markers {
        let at: Vec<&Site> = sites
            .iter()
            .filter(|s| {
                s.file.as_deref() == Some(marker.file.as_str()) && s.line == Some(marker.line)
            })
            .collect();
        let blocks: u64 = at.iter().map(|s| s.blocks).sum();
        let bytes: u64 = at.iter().map(|s| s.bytes).sum();
        if (blocks, bytes) != (marker.blocks, marker.bytes) {
            problems.push(format!(
                "{}:{}: marker says {} blocks, {} bytes; found {blocks} blocks, {bytes} bytes",
                marker.file, marker.line, marker.blocks, marker.bytes
            ));
        }
        if let Some(kind) = &marker.kind {
            for site in at
                .iter()
                .filter(|s| s.kind != "unclassified" && &s.kind != kind)
            {
                problems.push(format!(
                    "{}:{}: marker says {kind}, found {}",
                    marker.file, marker.line, site.kind
                ));
            }
        }
    }
    for site in sites {
        let in_sources = site.file.as_ref().is_some_and(|f| sources.contains(f));
        let marked = markers
            .iter()
            .any(|m| site.file.as_deref() == Some(m.file.as_str()) && site.line == Some(m.line));
        if in_sources && !marked {
            problems.push(format!(
                "an unmarked leak of {} blocks, {} bytes at {}",
                site.blocks, site.bytes, site.describe
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// The signal's name, as the report spells it ("SIGSEGV").
pub fn signal_name(number: i32) -> String {
    Signal::try_from(number)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {number}"))
}

/// The fixture alone: it builds, its native exit equals valgrind's, and valgrind's
/// loss records match its markers. Needs no memtrace.
pub fn check_fixture(case: &Case) {
    let target = case.target();
    let native = run_native(&target);
    let valgrind = case.valgrind();
    assert_eq!(
        Some(native.exit),
        valgrind.exit,
        "{}: native and valgrind runs end differently; native stderr:\n{}",
        target.display(),
        native.stderr
    );
    let lost = [
        valgrind.definite,
        valgrind.indirect,
        valgrind.possible,
        valgrind.reachable,
    ];
    assert_eq!(
        (valgrind.live_blocks, valgrind.live_bytes),
        (
            lost.iter().map(|l| l.blocks).sum(),
            lost.iter().map(|l| l.bytes).sum()
        ),
        "{}: valgrind's LEAK SUMMARY does not add up to its live blocks",
        target.display()
    );
    let mut sites = valgrind_sites(&valgrind);
    if case.kinds_differ.is_some() {
        // valgrind's kinds are not the oracle here: its sites only, of any kind.
        for site in &mut sites {
            site.kind = "unclassified".into();
        }
    }
    if let Err(problems) = check_sites(&sites, &case.markers(), &case.source_names()) {
        panic!(
            "{}: the markers disagree with valgrind:\n{problems}\n\nvalgrind log:\n{}",
            target.display(),
            valgrind.log
        );
    }
}

/// memtrace on the case: its exit status is the program's, its report has the
/// contract's shape, its totals equal valgrind's HEAP SUMMARY, and its leak sites
/// match the markers. Returns the run for further checks.
pub fn check_memtrace(case: &Case) -> Run {
    let target = case.target();
    let native = run_native(&target);
    let valgrind = case.valgrind();
    let run = run_memtrace(&target);
    check_run(case, &run, native.exit);
    let report = run.report();
    assert_eq!(
        report::totals(report),
        valgrind.totals(),
        "{}: memtrace's totals (left) differ from valgrind's HEAP SUMMARY (right)\nmemtrace stderr:\n{}",
        target.display(),
        run.stderr
    );
    if let Err(problems) = compare_errors(&report::errors(report), &valgrind.errors) {
        panic!(
            "{}: memtrace's heap errors differ from valgrind's:\n{problems}\nmemtrace stderr:\n{}",
            target.display(),
            run.stderr
        );
    }
    if case.kinds_differ.is_none() {
        compare_kinds(case, &report::leaks(report), &valgrind, &run.stderr);
    }
    let mut leaks = report::leaks(report);
    if case.kinds_differ.is_some() {
        // Stacks are still compared; each leak against valgrind's records of any kind.
        for leak in &mut leaks {
            leak.kind = "unclassified".into();
        }
    }
    let leaks = merge_layout_dependent(leaks);
    if let Err(problems) = compare_stacks(&leaks, &valgrind.records) {
        panic!(
            "{}: memtrace's leak stacks differ from valgrind's:\n{problems}",
            target.display()
        );
    }
    run
}

/// memtrace's leaks by kind, in valgrind's LEAK SUMMARY order (definite, indirect,
/// possible, reachable), and what is left unclassified.
pub fn kind_totals(leaks: &[Leak]) -> ([Lost; 4], Lost) {
    let mut kinds = [Lost::default(); 4];
    let mut unclassified = Lost::default();
    for leak in leaks {
        let slot = match leak.kind.as_str() {
            "definite" => &mut kinds[0],
            "indirect" => &mut kinds[1],
            "possible" => &mut kinds[2],
            "reachable" => &mut kinds[3],
            _ => &mut unclassified,
        };
        slot.blocks += leak.blocks;
        slot.bytes += leak.bytes;
    }
    (kinds, unclassified)
}

/// Allocation sites whose blocks a native run and valgrind may classify differently
/// for a reason of heap layout alone: a function in the block's stack, and why.
pub const LAYOUT_DEPENDENT: &[(&str, &str)] = &[(
    "_dlfo_mappings_segment_allocate",
    "ld.so keeps this block's address rounded up to 64 bytes (dl-find_object.c), so its \
     only pointer is the block's start when malloc's address happens to be aligned (still \
     reachable) and points inside it when not (possibly lost); glibc's and valgrind's \
     allocators place it differently, and glibc's placement moves with the lengths of \
     the paths the program has handled",
)];

fn layout_dependent<'a>(mut functions: impl Iterator<Item = &'a str>) -> bool {
    functions.any(|f| LAYOUT_DEPENDENT.iter().any(|(name, _)| *name == f))
}

fn leak_is_layout_dependent(leak: &Leak) -> bool {
    layout_dependent(leak.stack.iter().filter_map(|f| f.function.as_deref()))
}

/// Layout-dependent leaks with one stack become one unclassified leak: compared with
/// valgrind's records of that stack whatever the kind on either side.
fn merge_layout_dependent(leaks: Vec<Leak>) -> Vec<Leak> {
    let mut out: Vec<Leak> = Vec::new();
    for leak in leaks {
        if !leak_is_layout_dependent(&leak) {
            out.push(leak);
            continue;
        }
        match out
            .iter_mut()
            .find(|l| l.kind == "unclassified" && l.stack == leak.stack)
        {
            Some(l) => {
                l.blocks += leak.blocks;
                l.bytes += leak.bytes;
            }
            None => out.push(Leak {
                kind: "unclassified".into(),
                ..leak
            }),
        }
    }
    out
}

/// Every leak is classified, and the kinds add up to valgrind's LEAK SUMMARY. Blocks
/// of the [`LAYOUT_DEPENDENT`] sites are set apart on both sides: the same blocks and
/// bytes, each possibly lost or still reachable.
pub fn compare_kinds(case: &Case, leaks: &[Leak], valgrind: &Valgrind, stderr: &str) {
    let (ours_apart, leaks): (Vec<Leak>, Vec<Leak>) =
        leaks.iter().cloned().partition(leak_is_layout_dependent);
    let (kinds, unclassified) = kind_totals(&leaks);
    let apart = |kind: &str, blocks: u64, bytes: u64, total: &mut Lost| {
        assert!(
            kind == "possible" || kind == "reachable",
            "{}: a layout-dependent block is {kind}",
            case.target().display()
        );
        total.blocks += blocks;
        total.bytes += bytes;
    };
    let (mut ours, mut theirs) = (Lost::default(), Lost::default());
    for l in &ours_apart {
        apart(&l.kind, l.blocks, l.bytes, &mut ours);
    }
    let (mut possible, mut reachable) = (valgrind.possible, valgrind.reachable);
    for r in &valgrind.records {
        if layout_dependent(r.frames.iter().map(|f| f.function.as_str())) {
            apart(&r.kind, r.blocks, r.bytes, &mut theirs);
            let total = if r.kind == "possible" {
                &mut possible
            } else {
                &mut reachable
            };
            total.blocks -= r.blocks;
            total.bytes -= r.bytes;
        }
    }
    assert_eq!(
        ours,
        theirs,
        "{}: memtrace's layout-dependent blocks (left) differ from valgrind's",
        case.target().display()
    );
    let expected = [valgrind.definite, valgrind.indirect, possible, reachable];
    assert!(
        unclassified == Lost::default() && kinds == expected,
        "{}: memtrace's leak kinds (definite, indirect, possible, reachable) differ from \
         valgrind's LEAK SUMMARY\n memtrace: {kinds:?} (unclassified: {unclassified:?})\n \
         valgrind: {expected:?}\nmemtrace stderr:\n{stderr}\nvalgrind log:\n{}",
        case.target().display(),
        valgrind.log
    );
    // What each definitely lost block took with it: valgrind's "(N direct, M indirect)".
    let ours: u64 = leaks
        .iter()
        .filter(|l| l.kind == "definite")
        .map(|l| l.indirect_bytes)
        .sum();
    let theirs: u64 = valgrind
        .records
        .iter()
        .filter(|r| r.kind == "definite")
        .map(|r| r.indirect_bytes)
        .sum();
    assert_eq!(
        ours,
        theirs,
        "{}: indirect bytes of memtrace's definite leaks (left) differ from valgrind's",
        case.target().display()
    );
}

/// The checks that need no oracle: exit status, shape, end, markers.
pub fn check_run(case: &Case, run: &Run, native: Exit) {
    let target = case.target();
    assert_eq!(
        run.status,
        native.shell_code(),
        "{}: memtrace's exit status is not the program's; stderr:\n{}",
        target.display(),
        run.stderr
    );
    let report = run.report();
    report::check_shape(report);
    let (how, code, signal) = report::end(report);
    match native {
        Exit::Code(expected) => {
            assert_eq!(
                (how.as_str(), code),
                ("exited", Some(i64::from(expected))),
                "end of {}",
                target.display()
            )
        }
        Exit::Signal(number) => assert_eq!(
            (how.as_str(), signal),
            ("signaled", Some(signal_name(number))),
            "end of {}",
            target.display()
        ),
    }
    let leaks = report::leaks(report);
    if let Err(problems) = check_sites(&report_sites(&leaks), &case.markers(), &case.source_names())
    {
        panic!(
            "{}: memtrace's leaks disagree with the markers:\n{problems}\n\nleaks:\n{}",
            target.display(),
            serde_json::to_string_pretty(&report["leaks"]).unwrap_or_default()
        );
    }
}

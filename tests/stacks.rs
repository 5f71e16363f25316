//! Whole call stacks: unwinding through frames with and without frame pointers,
//! inlined frames, C++ names, stripped objects, `--depth`, and a library that is
//! unloaded before the report. valgrind (with `--num-callers=64`) is the oracle for
//! every frame; the `FRAME:` markers say which frames the fixture's own code adds.

#[macro_use]
mod common;

use common::cases::{self, check_fixture, check_run, Case};
use common::markers::frame_markers;
use common::stacks::{check_frames, compare_names, compare_names_where, compare_stacks};
use common::{
    basename, build_fixture, build_shared, build_stripped, report, run_memtrace_opts, run_native,
    Target, DEBUG,
};

/// Deeper than any fixture's stack: nothing is cut.
const ALL_FRAMES: &[&str] = &["--depth", "64"];

/// memtrace on the case with every frame kept: exit, markers, totals and every
/// frame against valgrind, frames against the `FRAME:` markers, no stack cut short.
fn check_whole_stacks(case: &Case, sources: &[&str]) -> Vec<common::Leak> {
    check_whole_stacks_run(case, sources).0
}

/// [`check_whole_stacks`], with the run.
fn check_whole_stacks_run(case: &Case, sources: &[&str]) -> (Vec<common::Leak>, common::Run) {
    check_fixture(case);
    let target = case.target();
    let native = run_native(&target);
    let run = run_memtrace_opts(ALL_FRAMES, &target);
    check_run(case, &run, native.exit);
    let report = run.report();
    let valgrind = case.valgrind();
    assert_eq!(report::totals(report), valgrind.totals());
    let leaks = report::leaks(report);
    let markers: Vec<_> = case.sources.iter().flat_map(|s| frame_markers(s)).collect();
    check_frames(&leaks, &markers)
        .unwrap_or_else(|e| panic!("{}: frames against the markers:\n{e}", target.display()));
    compare_stacks(&leaks, &valgrind.records)
        .unwrap_or_else(|e| panic!("{}: stacks against valgrind:\n{e}", target.display()));
    compare_names(&leaks, &valgrind.records, sources)
        .unwrap_or_else(|e| panic!("{}: names against valgrind:\n{e}", target.display()));
    assert_eq!(
        report["stats"]["truncated_stacks"],
        0,
        "{}: a stack was cut short; stderr:\n{}",
        target.display(),
        run.stderr
    );
    (leaks, run)
}

/// memtrace on a program that is no fixture case: its exit is the program's and its
/// totals are valgrind's.
fn run_beside_valgrind(options: &[&str], target: &Target) -> (common::Run, common::Valgrind) {
    let native = run_native(target);
    let run = run_memtrace_opts(options, target);
    assert_eq!(
        run.status,
        native.exit.shell_code(),
        "{}: stderr:\n{}",
        target.display(),
        run.stderr
    );
    let valgrind = common::run_valgrind(target);
    assert_eq!(
        report::totals(run.report()),
        valgrind.totals(),
        "{}",
        target.display()
    );
    (run, valgrind)
}

/// The leak whose first frame is at `file:line` of the marker on that source line.
fn leak_at<'a>(leaks: &'a [common::Leak], file: &str, line: u32) -> &'a common::Leak {
    leaks
        .iter()
        .find(|l| {
            l.stack.first().is_some_and(|f| {
                f.file.as_deref().map(basename) == Some(file) && f.line == Some(u64::from(line))
            })
        })
        .unwrap_or_else(|| panic!("no leak at {file}:{line}: {leaks:#?}"))
}

#[test]
fn deep_recursion_with_frame_pointers() {
    check_whole_stacks(&cases::stacks(), &["stacks.c"]);
}

/// The stack compare steps over the locals of main's big frame once an unwind has
/// found them (the run says how many bytes it stepped over, and for how many
/// threads: main's only, not a start routine's); other frames come and go below it,
/// and after main returns an exit handler's frames allocate where its locals were.
/// Every stack is whole and valgrind's, in both modes (the run compares them), and
/// no unwind needed a word that was stepped over.
#[test]
fn stacks_under_a_frame_the_compare_steps_over() {
    let (_, run) = check_whole_stacks_run(&cases::big_frames(), &["big_frames.c"]);
    let recording = &run.report()["trace"]["recording"];
    let skipped = recording["stack_bytes_skipped"].as_u64();
    assert!(
        skipped.is_some_and(|b| b > 0),
        "nothing stepped over: {recording}"
    );
    assert_eq!(
        recording["stack_skip_threads"].as_u64(),
        Some(1),
        "main's frame: {recording}"
    );
    assert_eq!(
        recording["stack_skip_misreads"].as_u64(),
        Some(0),
        "{recording}"
    );
}

/// A main called by main, by a thread's start routine in a library, or by a
/// library function run as a constructor (through a pointer), is not the start
/// code's: its locals are never stepped over, so
/// `other`, called from the same place after a longjmp, gets a whole stack, in
/// both modes, with no word needed that was stepped over.
#[test]
fn a_main_called_again_is_not_the_start_codes() {
    for (case, sources) in [
        (cases::main_again(), &["main_again.c", "main_again.h"][..]),
        (
            cases::main_in_thread(),
            &["main_in_thread.c", "main_in_thread_lib.c", "main_again.h"][..],
        ),
        (
            cases::main_in_ctor(),
            &["main_in_ctor.c", "main_in_ctor_lib.c", "main_again.h"][..],
        ),
    ] {
        let (_, run) = check_whole_stacks_run(&case, sources);
        let recording = &run.report()["trace"]["recording"];
        assert_eq!(
            recording["stack_skip_misreads"].as_u64(),
            Some(0),
            "{}: {recording}",
            case.fixture
        );
    }
}

/// A signal handler whose alternate stack lies in main's locals, which the compare
/// steps over: its own calls step over nothing (the range is not above their
/// stack), the program ends as it does untraced, and both modes agree.
#[test]
fn a_handler_on_a_stack_inside_mains_locals() {
    let case = cases::alt_stack_in_main();
    let target = case.target();
    let native = run_native(&target);
    let run = run_memtrace_opts(&[], &target);
    assert_eq!(run.exit, native.exit, "{}", run.stderr);
    let recording = &run.report()["trace"]["recording"];
    assert!(
        recording["stack_bytes_skipped"].as_u64() > Some(0),
        "main's locals were never stepped over: {recording}"
    );
    assert_eq!(
        recording["stack_skip_misreads"].as_u64(),
        Some(0),
        "{recording}"
    );
}

/// -O2 -fomit-frame-pointer: %rbp is an ordinary register; only the CFI unwinds.
#[test]
fn deep_recursion_without_frame_pointers() {
    check_whole_stacks(&cases::stacks_o2(), &["stacks.c"]);
}

/// The inlined helper is a frame of its own, at the same address as its caller's.
#[test]
fn inlined_frames_are_expanded() {
    for case in [cases::stacks(), cases::stacks_o2()] {
        let leaks = check_whole_stacks(&case, &["stacks.c"]);
        let marker = case
            .markers()
            .into_iter()
            .find(|m| m.bytes == 6)
            .expect("the inlined helper's LEAK marker");
        let leak = leak_at(&leaks, "stacks.c", marker.line);
        let (inner, outer) = (&leak.stack[0], &leak.stack[1]);
        assert_eq!(inner.function.as_deref(), Some("copy_name"), "{leaks:#?}");
        assert_eq!(outer.function.as_deref(), Some("remember"), "{leaks:#?}");
        assert_eq!(
            inner.address, outer.address,
            "an inlined frame shares the address"
        );
    }
}

/// Templates, a class template's member in a namespace, a lambda: demangled, and
/// spelled as valgrind spells them.
#[test]
fn cxx_names_are_demangled() {
    for case in [cases::stacks_cxx(), cases::stacks_cxx_o2()] {
        let leaks = check_whole_stacks(&case, &["stacks_cxx.cc"]);
        let names: Vec<&str> = leaks
            .iter()
            .filter_map(|l| l.stack.first()?.function.as_deref())
            .collect();
        for expected in [
            "Widget* make_one<Widget>()",
            "store::Shelf<long>::stock(unsigned long)",
            "main::{lambda(unsigned long)#1}::operator()(unsigned long) const",
        ] {
            // -O2 may specialise a function: `... [clone .isra.0]`, as valgrind says too.
            assert!(
                names.iter().any(|n| n.starts_with(expected)),
                "{expected} not in {names:?}"
            );
        }
    }
}

/// `--depth N` keeps N frames and counts the stack as cut; the default is 32.
#[test]
fn depth_cuts_stacks_and_counts_them() {
    let case = cases::stacks();
    let target = case.target();
    let marker = case
        .markers()
        .into_iter()
        .find(|m| m.bytes == 48)
        .expect("the deep LEAK marker");
    for (options, kept) in [
        (&["--depth", "10"][..], 10),
        (&[][..], 32),
        (&["--depth", "1"][..], 1),
    ] {
        let run = run_memtrace_opts(options, &target);
        assert_eq!(run.status, 0, "stderr:\n{}", run.stderr);
        let leaks = report::leaks(run.report());
        let deep = leak_at(&leaks, "stacks.c", marker.line);
        // Inlined frames are expanded after the cut; the deep stack has none.
        assert_eq!(deep.stack.len(), kept, "{options:?}: {:#?}", deep.stack);
        assert!(
            run.report()["stats"]["truncated_stacks"].as_u64() >= Some(1),
            "{options:?}: the cut is not counted: {}",
            run.report()["stats"]
        );
        assert!(
            run.stderr.contains("cut short"),
            "{options:?}: the text report does not say so:\n{}",
            run.stderr
        );
    }
}

/// A stripped executable: no names or lines in it, but its frames are there (its
/// `.eh_frame` survives stripping) and the stack goes on into libc.
#[test]
fn stripped_executable_has_addresses_and_objects() {
    let program = build_stripped("stacks", DEBUG);
    let target = Target::new(&program);
    let (run, valgrind) = run_beside_valgrind(ALL_FRAMES, &target);
    let leaks = report::leaks(run.report());
    compare_stacks(&leaks, &valgrind.records)
        .unwrap_or_else(|e| panic!("stacks against valgrind:\n{e}"));
    let path = program.to_string_lossy();
    let deep = leaks
        .iter()
        .find(|l| l.bytes == 48)
        .unwrap_or_else(|| panic!("no 48-byte leak: {leaks:#?}"));
    // descend, 50 recursive calls, main: all in the stripped object, nameless.
    let own: Vec<_> = deep
        .stack
        .iter()
        .take_while(|f| f.object.as_deref() == Some(&*path))
        .collect();
    assert_eq!(own.len(), 52, "{:#?}", deep.stack);
    assert!(own.iter().all(|f| f.function.is_none() && f.file.is_none()));
    assert!(
        deep.stack
            .iter()
            .any(|f| f.function.as_deref() == Some("__libc_start_call_main")),
        "{:#?}",
        deep.stack
    );
}

/// A library that leaks and is then unloaded with dlclose keeps its frames named;
/// a copy of it, loaded next at the same place, has frames of its own.
#[test]
fn unloaded_library_keeps_its_frames() {
    let program = build_fixture("dlopen_main", DEBUG);
    let plugin = build_shared("plugin", DEBUG);
    let copy = plugin.with_file_name("plugin_copy.so");
    std::fs::copy(&plugin, &copy).expect("copy plugin.so");
    let target = Target::new(&program).arg("--close").arg(&plugin).arg(&copy);
    let (run, _) = run_beside_valgrind(&[], &target);
    let report = run.report();
    let marker = common::markers(&common::build::fixture_source("plugin"))
        .into_iter()
        .next()
        .expect("plugin.c's LEAK marker");
    let leaks = report::leaks(report);
    let in_plugin: Vec<_> = leaks
        .iter()
        .filter(|l| {
            l.stack.first().is_some_and(|f| {
                f.file.as_deref().map(basename) == Some("plugin.c")
                    && f.line == Some(u64::from(marker.line))
            })
        })
        .collect();
    assert_eq!(in_plugin.len(), 2, "one leak per library: {leaks:#?}");
    let mut objects: Vec<&str> = in_plugin
        .iter()
        .map(|l| l.stack[0].object.as_deref().map(basename).unwrap_or("?"))
        .collect();
    objects.sort();
    assert_eq!(objects, ["plugin.so", "plugin_copy.so"]);
    for leak in &in_plugin {
        assert_eq!(leak.stack[0].function.as_deref(), Some("plugin_leak"));
        assert_eq!((leak.blocks, leak.bytes), (marker.blocks, marker.bytes));
    }
    // Whether the copy really took the first one's place is up to the kernel; when it
    // did, the two leaks have the same addresses and only the generation parts them.
    if in_plugin[0].stack[0].address == in_plugin[1].stack[0].address {
        eprintln!("plugin_copy.so was mapped where plugin.so had been");
    }
}

/// An optimized library (no frame pointers) that leaks and is unloaded at once: the
/// leak's stack, held back to be unwound later, is unwound with the library's unwind
/// tables, taken before they are dropped: plugin_leak, then main. (Unwound after,
/// the walk fell back on frame pointers at plugin_leak and skipped main.)
#[test]
fn a_library_unloaded_at_once_is_unwound_with_its_own_tables() {
    let program = build_fixture("dlopen_main", DEBUG);
    let plugin = build_shared("plugin", common::OPTIMIZED);
    let target = Target::new(&program).arg("--close").arg(&plugin);
    let (run, _) = run_beside_valgrind(&[], &target);
    let marker = common::markers(&common::build::fixture_source("plugin"))
        .into_iter()
        .next()
        .expect("plugin.c's LEAK marker");
    let leaks = report::leaks(run.report());
    let leak = leak_at(&leaks, "plugin.c", marker.line);
    let functions: Vec<Option<&str>> = leak
        .stack
        .iter()
        .take(2)
        .map(|f| f.function.as_deref())
        .collect();
    assert_eq!(
        functions,
        [Some("plugin_leak"), Some("main")],
        "{:#?}",
        leak.stack
    );
}

/// glibc's functions have several names at one address (`strdup`, `__strdup`,
/// `__GI___strdup`); its DWARF and its debug file's symbol table name the internal
/// one. Every frame in libc and the loader is named as valgrind names it: the public
/// name.
#[test]
fn glibc_frames_have_their_public_names() {
    let target = Target::new(build_fixture("libc_names", DEBUG));
    let (run, valgrind) = run_beside_valgrind(ALL_FRAMES, &target);
    let mut leaks = report::leaks(run.report());
    // The stacks are what is compared here; the loader's blocks are the kinds'
    // business of other tests (their kinds depend on the heap's layout).
    for leak in &mut leaks {
        leak.kind = "unclassified".into();
    }
    compare_stacks(&leaks, &valgrind.records)
        .unwrap_or_else(|e| panic!("stacks against valgrind:\n{e}"));
    let in_glibc = |f: &common::Frame| {
        f.object
            .as_deref()
            .map(basename)
            .is_some_and(|o| o.starts_with("libc.so") || o.starts_with("ld-linux"))
    };
    let compared = compare_names_where(&leaks, &valgrind.records, in_glibc)
        .unwrap_or_else(|e| panic!("names in glibc against valgrind:\n{e}"));
    let names: Vec<&str> = leaks
        .iter()
        .flat_map(|l| &l.stack)
        .filter_map(|f| f.function.as_deref())
        .collect();
    for expected in [
        "strdup",
        "getdelim",
        "_dl_catch_exception",
        "_dl_allocate_tls",
    ] {
        assert!(
            names.contains(&expected),
            "no frame of {expected}: {names:?}"
        );
    }
    assert!(compared >= 4, "only {compared} frames compared");
}

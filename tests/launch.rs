//! `memtrace launch` on real processes, checked against valgrind memcheck and the
//! `LEAK:` markers in the fixture sources.
//!
//! `fixture::*` checks the fixtures themselves (native exit = valgrind's, valgrind's
//! loss records = the markers) and needs no memtrace; `memtrace::*` checks memtrace's
//! exit status, report shape, totals (= valgrind's HEAP SUMMARY) and leak sites (=
//! the markers) on the same runs. valgrind runs once per case and test process.

#[macro_use]
mod common;

use common::cases::{self, check_memtrace, check_run, Case};
use common::markers::expected_totals;
use common::{
    basename, build_fixture, report, run_memtrace, run_memtrace_inline, run_native, Exit, DEBUG,
};

mod fixture {
    use crate::common::cases::check_fixture;
    case_tests!(check_fixture);
}

mod memtrace {
    use crate::common::cases::check_memtrace;
    case_tests!(check_memtrace);
}

/// The dlopen'ed libraries' leaks are named in their own objects, like a native module
/// loaded by a Python or .NET process.
#[test]
fn dlopen_leaks_are_in_the_plugin_objects() {
    let run = check_memtrace(&cases::dlopen());
    let leaks = report::leaks(run.report());
    for (source, object) in [
        ("plugin.c", "plugin.so"),
        ("plugin_cxx.cc", "plugin_cxx.so"),
    ] {
        let leak = leaks
            .iter()
            .find(|l| {
                l.stack
                    .first()
                    .and_then(|f| f.file.as_deref())
                    .map(basename)
                    == Some(source)
            })
            .unwrap_or_else(|| panic!("no leak whose first frame is in {source}: {leaks:#?}"));
        let first = &leak.stack[0];
        assert_eq!(
            first.function.as_deref(),
            Some("plugin_leak"),
            "{}",
            first.short()
        );
        assert_eq!(
            first.object.as_deref().map(basename),
            Some(object),
            "the first frame's object: {}",
            first.short()
        );
    }
}

/// The forked child runs untraced and unharmed: the parent exits non-zero if the child
/// died (e.g. of an inherited breakpoint).
#[test]
fn fork_child_survives() {
    let run = check_memtrace(&cases::fork());
    assert_eq!(run.exit, Exit::Code(0), "stderr:\n{}", run.stderr);
    assert!(
        !run.stderr.contains("fork: the child"),
        "stderr:\n{}",
        run.stderr
    );
}

/// After exec the report covers the new image only: nothing of exec.c's heap is left.
#[test]
fn exec_reports_only_the_new_image() {
    let run = check_memtrace(&cases::exec());
    for leak in report::leaks(run.report()) {
        for frame in &leak.stack {
            assert_ne!(
                frame.file.as_deref().map(basename),
                Some("exec.c"),
                "a frame of the old image: {}",
                frame.short()
            );
        }
    }
}

/// Death by signal: `end.how` is "signaled" with the signal's name, and memtrace exits
/// 128+N like a shell.
#[test]
fn death_by_signal_is_reported() {
    for (case, signal, name) in [
        (cases::signal_segv(), libc::SIGSEGV, "SIGSEGV"),
        (cases::signal_term(), libc::SIGTERM, "SIGTERM"),
        (cases::signal_abort(), libc::SIGABRT, "SIGABRT"),
    ] {
        let target = case.target();
        let run = run_memtrace(&target);
        assert_eq!(
            run.status,
            128 + signal,
            "{}: stderr:\n{}",
            target.display(),
            run.stderr
        );
        let (how, code, reported) = report::end(run.report());
        assert_eq!(
            (how.as_str(), code, reported.as_deref()),
            ("signaled", None, Some(name))
        );
    }
}

/// `_exit(3)`: no return from main, no atexit handlers, and exit status 3.
#[test]
fn underscore_exit_status() {
    let target = cases::exit3().target();
    assert_eq!(
        run_native(&target).exit,
        Exit::Code(3),
        "the fixture itself"
    );
    let run = run_memtrace(&target);
    assert_eq!(run.status, 3, "stderr:\n{}", run.stderr);
    assert_eq!(report::end(run.report()).0, "exited");
}

/// pvalloc: valgrind 3.19 aborts on it, so its totals are written in its source.
#[test]
fn pvalloc_matches_its_written_totals() {
    let case = Case::new("pvalloc", DEBUG);
    let target = case.target();
    let native = run_native(&target);
    assert_eq!(
        native.exit,
        Exit::Code(0),
        "the fixture itself: {}",
        native.stderr
    );
    let run = run_memtrace(&target);
    check_run(&case, &run, native.exit);
    let expected = expected_totals(&case.sources[0]).expect("pvalloc.c has EXPECT-TOTALS");
    assert_eq!(report::totals(run.report()), expected);
}

/// A static binary with symbols is traced through the allocator symbols in its own
/// symbol table. valgrind cannot intercept malloc in a static binary (it reports 0
/// allocs), so only the markers and the report's own consistency are checked.
#[test]
fn static_binary_with_symbols_is_traced() {
    let flags: &'static [&'static str] = &["-g", "-O0", "-static"];
    let case = Case::new("leak", flags);
    let target = case.target();
    let native = run_native(&target);
    let run = run_memtrace(&target);
    check_run(&case, &run, native.exit);
    let totals = report::totals(run.report());
    assert_eq!(
        totals.allocs - totals.frees,
        totals.live_blocks,
        "{totals:?}"
    );
    let markers = case.markers();
    assert!(
        totals.live_blocks >= markers.iter().map(|m| m.blocks).sum(),
        "{totals:?}"
    );
    assert!(totals.frees >= 1, "leak.c frees one block: {totals:?}");
    // Its allocator lives in the executable: the scan at its _exit happens all the same.
    assert_eq!(
        run.report()["scan"]["when"],
        "exit",
        "stderr:\n{}",
        run.stderr
    );
    let leaks = report::leaks(run.report());
    assert!(leaks.iter().all(|l| l.kind != "unclassified"), "{leaks:#?}");
}

/// The fixture build used by several tests exists and is executable.
#[test]
fn fixtures_build() {
    for name in ["leak", "noleak", "exit3"] {
        let path = build_fixture(name, DEBUG);
        assert!(path.is_absolute() && path.exists(), "{}", path.display());
    }
}

/// std::bad_alloc thrown by operator new is caught as it is natively: the unwinder must
/// not meet memtrace's swapped return address. valgrind cannot be the oracle (its
/// operator new aborts instead of throwing): native exit status and markers are.
#[test]
fn exceptions_from_operator_new_are_caught() {
    let case = Case::new("bad_alloc", DEBUG);
    let target = case.target();
    let native = run_native(&target);
    assert_eq!(native.exit, Exit::Code(0), "the fixture itself");
    let run = run_memtrace(&target);
    check_run(&case, &run, native.exit);
    // The exception objects made while operator new was failing are freed by the
    // C++ runtime: its business, not a bad free of the program's.
    let errors = report::errors(run.report());
    assert!(errors.is_empty(), "{errors:#?}");
}

/// A signal handler that allocates while operator new is open on its thread (in its
/// new_handler): the handler's blocks are the program's, leaked at its line, in both
/// recording modes. Taken for nested calls (as any call made inside an open hooked
/// call once was), they would be missing from the report.
#[test]
fn a_signal_handler_allocating_inside_a_hooked_call_is_the_programs() {
    let case = Case::new("handler_alloc", DEBUG);
    let target = case.target();
    let native = run_native(&target);
    assert_eq!(native.exit, Exit::Code(0), "the fixture itself");
    let run = run_memtrace(&target);
    check_run(&case, &run, native.exit);
    let handler: Vec<_> = report::leaks(run.report())
        .into_iter()
        .filter(|l| {
            l.stack
                .first()
                .and_then(|f| f.function.as_deref())
                .is_some_and(|f| f.starts_with("on_usr1"))
        })
        .collect();
    assert_eq!(handler.len(), 1, "{handler:#?}");
    assert_eq!((handler[0].blocks, handler[0].bytes), (3, 99));
}

/// At thread exit glibc frees the chunks of the thread's cache, which the program freed
/// already. Those calls are glibc's own: counted apart (`stats.internal_frees`), never
/// as frees of the program nor as frees of pointers that are not live (the future
/// double frees).
#[test]
fn glibc_thread_exit_frees_are_its_own() {
    let run = check_memtrace(&cases::threads());
    let stats = &run.report()["stats"];
    let internal = stats["internal_frees"]
        .as_u64()
        .expect("stats.internal_frees");
    let not_live = stats["frees_not_live"]
        .as_u64()
        .expect("stats.frees_not_live");
    assert!(
        internal > 0,
        "threads.c: no thread-exit frees seen: {stats}"
    );
    assert_eq!(
        not_live, 0,
        "glibc's own frees counted as the program's: {stats}"
    );
}

/// A thread made right after another was joined gets its stack and thread pointer,
/// often before memtrace has reaped the old one. Its calls are its own: all recorded
/// (valgrind's totals), inline, without a stop each. Once the old thread's slot went
/// to the new one, its calls were counted as the dead thread's and most were lost;
/// taken for a thread sharing a slot, every call stopped.
#[test]
fn a_thread_on_a_joined_threads_stack_is_recorded_as_itself() {
    let run = check_memtrace(&cases::thread_reuse());
    let trace = &run.report()["trace"];
    let calls = trace["recording"]["calls"]
        .as_u64()
        .expect("recording.calls");
    let stops = trace["breakpoint_hits"].as_u64().expect("breakpoint_hits");
    assert!(calls > 40_000, "{trace}");
    assert!(stops < 100, "inline calls stopped: {trace}");
}

/// Threads that end while others are writing records: when a thread's end is seen,
/// another thread may hold a position ahead of the ending thread's last records that
/// it has not begun to write, and reading stops there. The ending thread's open calls
/// were forgotten at once, so the return read later found none: the allocation and its
/// free were lost (one run in ten of four threads, most runs of this fixture). Every
/// call counts; the race is timing-dependent, so the inline run is made three times.
#[test]
fn a_thread_ending_while_others_write_loses_none_of_its_calls() {
    let case = cases::thread_waves();
    check_memtrace(&case);
    let valgrind = case.valgrind();
    for _ in 0..2 {
        let run = run_memtrace_inline(&case.target());
        let report = run.report();
        let unmatched = &report["trace"]["recording"]["unmatched_returns"];
        assert_eq!(unmatched.as_u64(), Some(0), "stderr:\n{}", run.stderr);
        assert_eq!(
            report::totals(report),
            valgrind.totals(),
            "memtrace's totals (left), valgrind's (right); stderr:\n{}",
            run.stderr
        );
    }
}

/// The main thread allocates on a coroutine's stack mmap'd below its own (after the
/// thread was registered), with a guard page above it: the program runs as it does
/// natively, and the report is valgrind's. Taking that stack for part of the main
/// one, recording inline copied the main stack's height up from it, into the guard
/// page: the program died of SIGSEGV.
#[test]
fn allocating_on_a_coroutine_stack_below_the_main_one() {
    let case = cases::coroutine();
    let target = case.target();
    let native = run_native(&target);
    assert_eq!(native.exit, Exit::Code(0), "the fixture itself");
    let run = run_memtrace(&target);
    // Exit status, markers (the leak at its line, its kind).
    check_run(&case, &run, native.exit);
    // valgrind's totals; not its stacks: it walks on past the end of the context
    // (glibc's __start_context), where memtrace stops as the CFI says.
    assert_eq!(report::totals(run.report()), case.valgrind().totals());
}

/// The scan is made at `_exit` (every thread stopped) when the program exits, at the
/// exit stop of the thread that ends the process when it dies of a signal or calls
/// exit_group itself (the dying threads still stop at their exits on this kernel);
/// the report says which, and what the scan read.
#[test]
fn the_scan_says_when_it_was_made() {
    for (case, when, threads) in [
        (cases::sleeper(), "exit", 3),
        (cases::exit3(), "exit", 1),
        (cases::signal_segv(), "exit_event", 1),
        (cases::sleeper_exit_group(), "exit_event", 3),
    ] {
        let target = case.target();
        let run = run_memtrace(&target);
        let scan = &run.report()["scan"];
        assert_eq!(scan["when"], when, "{}: {scan}", target.display());
        assert_eq!(scan["threads"], threads, "{}: {scan}", target.display());
        assert_eq!(scan["threads_missed"], 0, "{}: {scan}", target.display());
        let read = scan["bytes_scanned"].as_u64().unwrap_or(0);
        assert!(read > 0, "{}: {scan}", target.display());
        assert!(run.report().get("scan_missing").is_none());
    }
}

/// deep_churn's calls come from under 21 frames of 700 bytes each that stay the same
/// from one call to the next: each record copies only the part of the stack that
/// changed since the thread's last call, and finds the rest in earlier records. The
/// stacks put back together that way are whole: every leak's, down to the thread's
/// start function (valgrind, the oracle, is compared with by `check_memtrace`).
#[test]
fn records_copy_only_the_stack_that_changed() {
    let case = cases::deep_churn();
    let run = check_memtrace(&case);
    let recording = &run.report()["trace"]["recording"];
    let field = |name: &str| {
        recording[name]
            .as_u64()
            .unwrap_or_else(|| panic!("recording.{name}: {recording}"))
    };
    let (stands_for, copied) = (field("stack_bytes"), field("stack_bytes_copied"));
    assert!(
        copied * 4 < stands_for,
        "records copied most of their stacks: {recording}"
    );
    assert_eq!(field("stack_chains_lost"), 0, "{recording}");
    let leaks = report::leaks(run.report());
    let kept = leaks
        .iter()
        .find(|l| {
            l.stack
                .iter()
                .any(|f| f.function.as_deref() == Some("churn"))
        })
        .unwrap_or_else(|| panic!("no leak from churn: {leaks:?}"));
    let names: Vec<&str> = kept
        .stack
        .iter()
        .filter_map(|f| f.function.as_deref())
        .collect();
    // LEVELS + 1 calls of descend, then run: 23 frames under malloc and churn.
    assert_eq!(
        names.iter().filter(|&&n| n == "descend").count(),
        21,
        "{names:?}"
    );
    assert!(names.contains(&"run"), "the stack stops short: {names:?}");
}

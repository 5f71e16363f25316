//! Heap errors (double, invalid and mismatched frees), seen at the free's entry,
//! before glibc aborts the program: compared with valgrind's errors, with the
//! `BAD-FREE:` markers, and with what the program does natively (which memtrace must
//! not change). The mismatch and reuse fixtures run as ordinary cases in
//! `launch.rs`, where every fixture's errors are compared with valgrind's.

#[macro_use]
mod common;

use common::cases::{self, Case};
use common::errors::compare_errors;
use common::markers::bad_free_markers;
use common::{basename, report, run_memtrace, run_memtrace_opts, run_native, Exit};

/// glibc aborts at the bad free; memtrace reports it (and the leaks so far) and ends
/// as the program did.
fn check_bad_free(case: &Case) -> common::Run {
    let target = case.target();
    let native = run_native(&target);
    assert_eq!(
        native.exit,
        Exit::Signal(libc::SIGABRT),
        "{}: glibc should abort natively",
        target.display()
    );
    let run = run_memtrace(&target);
    assert_eq!(
        run.status,
        native.exit.shell_code(),
        "stderr:\n{}",
        run.stderr
    );
    let report = run.report();
    report::check_shape(report);
    assert_eq!(
        report::end(report),
        ("signaled".to_string(), None, Some("SIGABRT".to_string()))
    );
    let errors = report::errors(report);
    let valgrind = case.valgrind();
    compare_errors(&errors, &valgrind.errors).unwrap_or_else(|e| {
        panic!(
            "{}: errors against valgrind:\n{e}\n{}",
            target.display(),
            run.stderr
        )
    });
    // valgrind counts a bad free as a free, and runs on past it to the program's
    // end; here nothing happens after the bad free, so only that count differs.
    let mut expected = valgrind.totals();
    expected.frees -= errors.iter().map(|e| e.count).sum::<u64>();
    assert_eq!(report::totals(report), expected, "{}", target.display());
    let markers = bad_free_markers(&case.sources[0]);
    for e in &errors {
        let first = e.stack.first().expect("an error's stack");
        let at = markers.iter().find(|m| {
            Some(m.file.as_str()) == first.file.as_deref().map(basename)
                && Some(u64::from(m.line)) == first.line
        });
        assert_eq!(
            at.map(|m| m.kind.as_str()),
            Some(e.kind.as_str()),
            "an error at no BAD-FREE marker of its kind: {e:#?}"
        );
        assert_eq!(e.count, 1);
    }
    assert_eq!(errors.len(), 1, "{errors:#?}");
    run
}

/// p1..p4 allocated, p1 and p2 freed, p3 leaked, p4 freed twice: the error has all
/// three stacks, and the leak is still reported.
#[test]
fn double_free() {
    let case = cases::bad_free("double");
    let run = check_bad_free(&case);
    let e = &report::errors(run.report())[0];
    assert_eq!(e.kind, "double_free");
    assert!(!e.first_free_stack.is_empty() && !e.alloc_stack.is_empty());
    // The first free went through a helper: its whole stack is there.
    let functions: Vec<_> = e
        .first_free_stack
        .iter()
        .map(|f| f.function.as_deref().unwrap_or("?"))
        .collect();
    assert_eq!(&functions[..2], ["release", "main"], "{e:#?}");
    let leaks = report::leaks(run.report());
    assert_eq!(leaks.len(), 1, "p3 leaks: {leaks:#?}");
    let text = &run.stderr;
    for expected in [
        "Invalid free() / delete / delete[] / realloc()",
        "is 0 bytes inside a block of size 64 free'd",
        "Block was alloc'd at",
        "ERROR SUMMARY: 1 errors from 1 contexts",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    // The errors come before the leaks, as in valgrind.
    assert!(text.find("Invalid free()") < text.find("HEAP SUMMARY"));
}

#[test]
fn free_of_a_stack_address() {
    let run = check_bad_free(&cases::bad_free("stack"));
    let e = &report::errors(run.report())[0];
    assert!(
        e.alloc_stack.is_empty() && e.first_free_stack.is_empty(),
        "{e:#?}"
    );
}

#[test]
fn free_of_a_global_address() {
    check_bad_free(&cases::bad_free("global"));
}

/// A pointer into a block: which block, at which offset.
#[test]
fn free_of_an_interior_pointer() {
    let run = check_bad_free(&cases::bad_free("interior"));
    let e = &report::errors(run.report())[0];
    assert_eq!(
        e.description,
        "is 8 bytes inside a block of size 48 alloc'd"
    );
    assert!(!e.alloc_stack.is_empty());
}

/// `--error-exitcode` counts heap errors, also when there is no leak.
#[test]
fn error_exitcode_counts_errors() {
    let case = cases::mismatch();
    let target = case.target();
    assert_eq!(run_native(&target).exit, Exit::Code(0));
    let run = run_memtrace_opts(&["--error-exitcode", "7"], &target);
    assert_eq!(run.status, 7, "stderr:\n{}", run.stderr);
    let errors = report::errors(run.report());
    assert_eq!(errors.len(), 6, "one per mismatched pair: {errors:#?}");
    // A clean program keeps its status.
    let run = run_memtrace_opts(&["--error-exitcode", "7"], &cases::reuse().target());
    assert_eq!(run.status, 0, "stderr:\n{}", run.stderr);
}

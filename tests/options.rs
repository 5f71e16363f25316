//! Options of `memtrace launch`: `--error-exitcode`, `--depth` (see also `stacks.rs`).

mod common;

use common::cases::{self, check_sites, report_sites};
use common::{report, run_memtrace_opts, run_native, Exit};

#[test]
fn error_exitcode_on_a_leak() {
    let target = cases::leak().target();
    let run = run_memtrace_opts(&["--error-exitcode", "9"], &target);
    assert_eq!(run.status, 9, "stderr:\n{}", run.stderr);
}

#[test]
fn error_exitcode_on_a_clean_program_keeps_its_status() {
    for case in [cases::noleak(), cases::noleak_status5()] {
        let target = case.target();
        let native = run_native(&target).exit;
        assert!(matches!(native, Exit::Code(_)), "{native:?}");
        let run = run_memtrace_opts(&["--error-exitcode", "9"], &target);
        assert_eq!(
            run.status,
            native.shell_code(),
            "{}: stderr:\n{}",
            target.display(),
            run.stderr
        );
        assert_eq!(report::totals(run.report()).live_blocks, 0);
    }
}

/// `--depth 1` and `2` keep the allocator's caller, so leak sites stay where the
/// markers say. How `--depth` cuts longer stacks is tested in `stacks.rs`.
#[test]
fn depth_is_accepted() {
    for depth in [1usize, 2] {
        let case = cases::kinds();
        let target = case.target();
        let run = run_memtrace_opts(&["--depth", &depth.to_string()], &target);
        assert_eq!(run.status, 0, "stderr:\n{}", run.stderr);
        let leaks = report::leaks(run.report());
        assert!(!leaks.is_empty());
        let sources = vec!["kinds.c".to_string()];
        check_sites(&report_sites(&leaks), &case.markers(), &sources)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// `--error-exitcode` counts definite leaks: a program that leaves only reachable
/// and possibly lost blocks (sleeper.c) keeps its own status.
#[test]
fn error_exitcode_ignores_reachable_and_possible() {
    let case = cases::sleeper();
    let target = case.target();
    let run = run_memtrace_opts(&["--error-exitcode", "9"], &target);
    assert_eq!(run.status, 0, "stderr:\n{}", run.stderr);
    let kinds: Vec<String> = report::leaks(run.report())
        .into_iter()
        .map(|l| l.kind)
        .collect();
    assert!(!kinds.is_empty());
    assert!(
        kinds.iter().all(|k| k == "reachable" || k == "possible"),
        "{kinds:?}"
    );
}

/// Long silent work (the scan, symbolizing) shows progress on stderr: on a terminal
/// after a moment, or from the first step with MEMTRACE_PROGRESS=always; never when
/// stderr is no terminal and nothing is asked.
#[test]
fn progress_of_the_scan_and_of_symbolizing() {
    let target = cases::bigheap().target();
    let run = |setting: Option<&str>| {
        let mut command = std::process::Command::new(common::process::memtrace_binary());
        command
            .args(["launch", "--no-tui", "--"])
            .arg(&target.program)
            .args(&target.args);
        if let Some(s) = setting {
            command.env("MEMTRACE_PROGRESS", s);
        } else {
            command.env_remove("MEMTRACE_PROGRESS");
        }
        common::process::run_with_watchdog(
            command,
            common::process::MEMTRACE_LIMIT,
            "memtrace with progress",
        )
    };
    let shown = run(Some("always"));
    assert_eq!(shown.exit.shell_code(), 0, "{}", shown.stderr);
    let lines: Vec<&str> = shown.stderr.lines().collect();
    for what in ["scanning the heap", "symbolizing the report"] {
        let prefix = format!("memtrace: {what}: ");
        let of: Vec<&&str> = lines.iter().filter(|l| l.starts_with(&prefix)).collect();
        assert!(!of.is_empty(), "no {what} progress:\n{}", shown.stderr);
        assert!(of.last().is_some_and(|l| l.ends_with("(100%)")), "{of:?}");
    }
    // The report itself is still whole.
    assert!(shown.stderr.contains("HEAP SUMMARY:"), "{}", shown.stderr);
    let quiet = run(None);
    assert!(
        !quiet.stderr.contains("memtrace: scanning the heap"),
        "{}",
        quiet.stderr
    );
}

//! Suppressions in valgrind's format, on real programs and with real suppression
//! files: Debian's own (debian.supp, valgrind's default.supp), a hand-written one with
//! wildcards, and the ones memtrace generates. Each file is given to valgrind too, and
//! what it hides there is what memtrace hides.

mod common;

use std::path::{Path, PathBuf};

use common::cases::{self, Case};
use common::valgrind::Lost;
use common::{basename, manifest_dir, report, run_memtrace_opts, run_native, run_valgrind_with};
use memtrace::suppress::{glob, Kind, Suppressions};
use serde_json::Value;

/// The suppression files Debian's valgrind package installs (valgrind reads the
/// default one on every run).
const DEBIAN_SUPP: &str = "/usr/lib/valgrind/debian.supp";
const DEFAULT_SUPP: &str = "/usr/libexec/valgrind/default.supp";

/// What memtrace's report says its suppressions hid: (blocks, bytes) of the leaks.
fn hidden(report: &Value) -> Lost {
    let mut lost = Lost::default();
    for s in report["suppressed"].as_array().into_iter().flatten() {
        lost.blocks += s["blocks"].as_u64().unwrap_or(0);
        lost.bytes += s["bytes"].as_u64().unwrap_or(0);
    }
    lost
}

fn write_supp(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the suppressions");
    path
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn debians_files_load_whole() {
    for file in [DEBIAN_SUPP, DEFAULT_SUPP] {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let entries = text.lines().filter(|l| l.trim() == "{").count();
        let s = Suppressions::load(&[PathBuf::from(file)]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.list.len(), entries, "{file}");
        assert!(
            s.list.iter().any(|s| matches!(s.kind, Kind::Leak(_))),
            "{file}"
        );
    }
}

/// rpmatch keeps its compiled regexes: Debian suppresses them (`...` then
/// `fun:rpmatch`). memtrace hides the blocks valgrind hides, and keeps the leak of
/// the program's own.
#[test]
fn debians_rpmatch_suppression_hides_what_valgrind_hides() {
    let case = cases::rpmatch();
    let target = case.target();
    let run = run_memtrace_opts(
        &[
            "--suppressions",
            DEBIAN_SUPP,
            "--suppressions",
            DEFAULT_SUPP,
        ],
        &target,
    );
    assert_eq!(
        run.status,
        run_native(&target).exit.shell_code(),
        "{}",
        run.stderr
    );
    let report = run.report();
    let valgrind = run_valgrind_with(&[&format!("--suppressions={DEBIAN_SUPP}")], &target);
    assert!(valgrind.suppressed.blocks > 0, "{}", valgrind.log);
    assert_eq!(hidden(report), valgrind.suppressed, "{}", run.stderr);
    let names: Vec<&str> = report["suppressed"]
        .as_array()
        .expect("suppressed")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["rpmatch bug#350347"]);
    // What is left: the program's own leak, at its marker, and nothing of rpmatch's.
    let leaks = report::leaks(report);
    let markers = case.markers();
    assert_eq!(leaks.len(), markers.len(), "{leaks:#?}");
    let first = &leaks[0].stack[0];
    assert_eq!(
        (first.file.as_deref().map(basename), first.line),
        (
            Some(markers[0].file.as_str()),
            Some(u64::from(markers[0].line))
        )
    );
    let left = report::totals(report).live_bytes - hidden(report).bytes;
    assert_eq!(left, markers[0].bytes);
}

/// The function each marker's leak is allocated in, from an unsuppressed run.
fn marker_functions(case: &Case) -> Vec<(common::Marker, String)> {
    let run = run_memtrace_opts(&[], &case.target());
    let leaks = report::leaks(run.report());
    case.markers()
        .into_iter()
        .map(|m| {
            let leak = leaks
                .iter()
                .find(|l| l.stack[0].line == Some(u64::from(m.line)))
                .unwrap_or_else(|| panic!("no leak at {}:{}", m.file, m.line));
            let f = leak.stack[0].function.clone().expect("a function");
            (m, f)
        })
        .collect()
}

/// `fun:?alloc` then `fun:leak_*s`: leak_lists (malloc) and leak_names (calloc) are
/// hidden, leak_table is not; valgrind, given the same file, agrees.
#[test]
fn a_wildcard_suppression_hides_exactly_the_leaks_it_matches() {
    let case = cases::three_leaks();
    let target = case.target();
    let dir = tempfile::tempdir().expect("tempdir");
    let supp = write_supp(
        dir.path(),
        "w.supp",
        "{\n   lists and names\n   Memcheck:Leak\n   match-leak-kinds: definite\n   fun:?alloc\n   fun:leak_*s\n}\n",
    );
    let sites = marker_functions(&case);
    let (hidden_sites, kept_sites): (Vec<_>, Vec<_>) =
        sites.iter().partition(|(_, f)| glob::matches("leak_*s", f));
    assert!(!hidden_sites.is_empty() && !kept_sites.is_empty());
    let run = run_memtrace_opts(&["--suppressions", path_str(&supp)], &target);
    let report = run.report();
    let want = Lost {
        blocks: hidden_sites.iter().map(|(m, _)| m.blocks).sum(),
        bytes: hidden_sites.iter().map(|(m, _)| m.bytes).sum(),
    };
    assert_eq!(hidden(report), want, "{}", run.stderr);
    assert_eq!(report["suppressed"][0]["count"], hidden_sites.len());
    let mut left: Vec<u64> = report::leaks(report)
        .iter()
        .map(|l| l.stack[0].line.unwrap_or(0))
        .collect();
    left.sort_unstable();
    let mut kept: Vec<u64> = kept_sites.iter().map(|(m, _)| u64::from(m.line)).collect();
    kept.sort_unstable();
    assert_eq!(left, kept);
    let valgrind = run_valgrind_with(&[&format!("--suppressions={}", supp.display())], &target);
    assert_eq!(valgrind.suppressed, want, "{}", valgrind.log);
    // The same file, but only for reachable leaks: nothing of these definite ones.
    let reachable = write_supp(
        dir.path(),
        "r.supp",
        "{\n   r\n   Memcheck:Leak\n   match-leak-kinds: reachable\n   fun:?alloc\n   fun:leak_*s\n}\n",
    );
    let run = run_memtrace_opts(&["--suppressions", path_str(&reachable)], &target);
    assert_eq!(hidden(run.report()), Lost::default());
}

/// What the C library and the loader keep fails `--errors-for-leak-kinds=all`;
/// examples/libc.supp hides it, for memtrace as for valgrind, and the program's own
/// status comes back.
#[test]
fn libc_suppressions_let_error_exitcode_pass_on_a_program_without_leaks() {
    let target = cases::libc_only().target();
    let native = run_native(&target).exit.shell_code();
    let strict = ["--errors-for-leak-kinds=all", "--error-exitcode", "9"];
    let run = run_memtrace_opts(&strict, &target);
    assert_eq!(run.status, 9, "{}", run.stderr);
    assert!(!report::leaks(run.report()).is_empty());
    let supp = manifest_dir().join("examples/libc.supp");
    let with = [&strict[..], &["--suppressions", path_str(&supp)]].concat();
    let run = run_memtrace_opts(&with, &target);
    assert_eq!(run.status, native, "{}", run.stderr);
    let report = run.report();
    assert!(report::leaks(report).is_empty(), "{}", run.stderr);
    assert_eq!(
        hidden(report).bytes,
        report::totals(report).live_bytes,
        "every live block is the C library's or the loader's"
    );
    // valgrind agrees, on the same file and options.
    let vg = |extra: &[&str]| {
        let base = ["--errors-for-leak-kinds=all", "--error-exitcode=9"];
        run_valgrind_with(&[&base[..], extra].concat(), &target)
    };
    let without = vg(&[]);
    assert_eq!(
        without.exit.map(|e| e.shell_code()),
        Some(9),
        "{}",
        without.log
    );
    let supp_arg = format!("--suppressions={}", supp.display());
    let with = vg(&[&supp_arg]);
    assert_eq!(
        with.exit.map(|e| e.shell_code()),
        Some(native),
        "{}",
        with.log
    );
    assert_eq!(with.suppressed, hidden(report), "{}", with.log);
}

/// The suppressions of `--gen-suppressions`, pasted into a file, hide every finding,
/// for memtrace and for valgrind.
#[test]
fn generated_suppressions_hide_every_finding_in_both_tools() {
    let case = cases::three_leaks();
    let target = case.target();
    let run = run_memtrace_opts(&["--gen-suppressions=all"], &target);
    // The suppressions are the lines outside memtrace's `==PID==` ones.
    let text: String = run
        .stderr
        .lines()
        .filter(|l| !l.starts_with("=="))
        .map(|l| format!("{l}\n"))
        .collect();
    let entries = text.lines().filter(|l| *l == "{").count();
    assert_eq!(entries, report::leaks(run.report()).len(), "{}", run.stderr);
    let dir = tempfile::tempdir().expect("tempdir");
    let supp = write_supp(dir.path(), "gen.supp", &text);
    let run = run_memtrace_opts(
        &["--suppressions", path_str(&supp), "--error-exitcode", "9"],
        &target,
    );
    assert_eq!(run.status, 0, "{}", run.stderr);
    let report = run.report();
    assert!(report::leaks(report).is_empty(), "{}", run.stderr);
    let totals = report::totals(report);
    let all = Lost {
        blocks: totals.live_blocks,
        bytes: totals.live_bytes,
    };
    assert_eq!(hidden(report), all);
    let valgrind = run_valgrind_with(&[&format!("--suppressions={}", supp.display())], &target);
    assert_eq!(valgrind.suppressed, all, "{}", valgrind.log);
    assert_eq!(valgrind.definite, Lost::default(), "{}", valgrind.log);
}

/// `Memcheck:Free` hides heap errors: the mismatch fixture's six errors fail
/// `--error-exitcode` until a suppression hides them; valgrind counts them the same.
#[test]
fn free_suppressions_hide_heap_errors() {
    let target = cases::mismatch().target();
    let native = run_native(&target).exit.shell_code();
    let run = run_memtrace_opts(&["--error-exitcode", "9"], &target);
    assert_eq!(run.status, 9, "{}", run.stderr);
    let errors: u64 = report::errors(run.report()).iter().map(|e| e.count).sum();
    assert!(errors > 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let supp = write_supp(
        dir.path(),
        "f.supp",
        "{\n   bad frees in main\n   Memcheck:Free\n   fun:*\n   fun:main\n}\n",
    );
    let run = run_memtrace_opts(
        &["--error-exitcode", "9", "--suppressions", path_str(&supp)],
        &target,
    );
    assert_eq!(run.status, native, "{}", run.stderr);
    let report = run.report();
    assert!(report::errors(report).is_empty());
    assert_eq!(report["suppressed"][0]["count"], errors);
    let valgrind = run_valgrind_with(&[&format!("--suppressions={}", supp.display())], &target);
    assert!(valgrind.errors.is_empty(), "{}", valgrind.log);
    let summary = valgrind
        .log
        .lines()
        .find(|l| l.contains("ERROR SUMMARY:"))
        .expect("an error summary");
    assert!(
        summary.contains(&format!("(suppressed: {errors} from {errors})")),
        "{summary}"
    );
}

/// A mistake in a suppressions file is one line, before anything runs.
#[test]
fn a_bad_suppressions_file_is_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let supp = write_supp(
        dir.path(),
        "bad.supp",
        "{\n   x\n   Memcheck:Leak\n   fn:malloc\n}\n",
    );
    let run = run_memtrace_opts(
        &["--suppressions", path_str(&supp)],
        &cases::leak().target(),
    );
    assert_eq!(run.status, 2, "{}", run.stderr);
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0].starts_with(&format!("memtrace: {}:4: expected a frame", supp.display())),
        "{}",
        lines[0]
    );
}

//! Launching a `#!` script: the kernel runs its interpreter, memtrace follows each
//! exec, and the report is the one of the program the script ends up running, with
//! the images the process went through. A version manager's shim (found on PATH,
//! `#!/usr/bin/env bash`, `exec "$real" "$@"`) and a script run by another script
//! give the fixture's own report. A chain that ends in a program memtrace cannot
//! trace is refused in one line that names the chain.

mod common;

use common::cases::{self, check_run, Case};
use common::{crafted, report, run_memtrace, run_memtrace_env, run_native, Crafted, Run, Target};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Writes an executable script `name` in `dir`.
fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
    path
}

fn scratch_dir() -> tempfile::TempDir {
    let base = common::work_dir();
    std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("cannot create {base:?}: {e}"));
    tempfile::tempdir_in(base).unwrap_or_else(|e| panic!("cannot create a directory: {e}"))
}

/// The shim of a version manager, reduced to what matters: found on PATH, run by
/// bash through env, it execs the real program with its own arguments.
fn shim_text(real: &Path) -> String {
    format!(
        "#!/usr/bin/env bash\nset -e\nreal='{}'\nexec \"$real\" \"$@\"\n",
        real.display()
    )
}

/// `run` (memtrace on something that ends up running `case`'s fixture) reports what
/// memtrace on the fixture itself would: its exit status, its leaks (the markers),
/// valgrind's totals; and its last image is the fixture.
fn check_reports_the_fixture(case: &Case, run: &Run) -> Vec<String> {
    let fixture = case.target();
    let native = run_native(&fixture);
    check_run(case, run, native.exit);
    assert_eq!(
        report::totals(run.report()),
        case.valgrind().totals(),
        "memtrace's totals (left) differ from valgrind's on {}\nstderr:\n{}",
        fixture.display(),
        run.stderr
    );
    let images: Vec<String> = run.report()["target"]["images"]
        .as_array()
        .unwrap_or_else(|| panic!("no target.images in the report:\n{}", run.report()))
        .iter()
        .map(|i| i["exe"].as_str().unwrap_or_default().to_string())
        .collect();
    let real = std::fs::canonicalize(&fixture.program).expect("the fixture exists");
    assert_eq!(
        images.last().map(PathBuf::from),
        Some(real),
        "the last image is not the fixture: {images:?}"
    );
    assert!(
        run.stderr
            .contains(&format!("the process ran {} images", images.len())),
        "the text report does not name the images:\n{}",
        run.stderr
    );
    images
}

fn real_path(p: &str) -> String {
    std::fs::canonicalize(p)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// `#!/bin/sh` that execs the fixture: sh's image, then the fixture's.
#[test]
fn a_script_that_execs_a_fixture_gives_its_report() {
    let dir = scratch_dir();
    let case = cases::leak();
    let fixture = case.target().program;
    let s = script(
        dir.path(),
        "run-leak.sh",
        &format!("#!/bin/sh\nexec '{}' \"$@\"\n", fixture.display()),
    );
    let run = run_memtrace(&Target::new(&s));
    let images = check_reports_the_fixture(&case, &run);
    assert_eq!(images.len(), 2, "{images:?}");
    assert_eq!(images[0], real_path("/bin/sh"));
}

/// Launched by name, as `memtrace launch -- python3 x.py` with a pyenv shim: PATH
/// finds the shim, env finds bash, bash execs the real program with the arguments
/// (the fixture exits with the status it is given).
#[test]
fn a_shim_on_path_gives_the_real_programs_report() {
    let dir = scratch_dir();
    let case = cases::noleak_status5();
    script(
        dir.path(),
        "memtrace-test-shim",
        &shim_text(&case.target().program),
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut with_dir = OsString::from(dir.path());
    with_dir.push(":");
    with_dir.push(path);
    let target = Target::new("memtrace-test-shim").arg("5");
    let run = run_memtrace_env(&[("PATH", with_dir)], &[], &target);
    let images = check_reports_the_fixture(&case, &run);
    assert_eq!(
        images[..images.len() - 1],
        [real_path("/usr/bin/env"), real_path("/usr/bin/bash")],
        "{images:?}"
    );
}

/// A script whose interpreter is itself a script (the kernel runs the inner one's
/// interpreter with both paths): nested `#!` lines are followed too.
#[test]
fn a_script_run_by_a_script_gives_the_fixtures_report() {
    let dir = scratch_dir();
    let case = cases::leak();
    let shim = script(dir.path(), "shim", &shim_text(&case.target().program));
    let outer = script(
        dir.path(),
        "outer",
        &format!("#!{}\nthis line is never read\n", shim.display()),
    );
    let run = run_memtrace(&Target::new(&outer));
    check_reports_the_fixture(&case, &run);
}

fn assert_refused(run: &Run, status: i32, words: &[&str]) {
    let lines = run.stderr_lines();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{}", run.stderr);
    assert_eq!(run.status, status, "stderr:\n{}", run.stderr);
    for w in words {
        assert!(lines[0].contains(w), "{w:?} not in: {}", lines[0]);
    }
}

/// The kernel would fail the exec: one line naming the missing interpreter.
#[test]
fn a_missing_interpreter_is_one_line() {
    let dir = scratch_dir();
    let s = script(dir.path(), "bad", "#!/no/such/interpreter -x\n");
    let run = run_memtrace(&Target::new(&s));
    assert_refused(&run, 126, &["bad interpreter", "/no/such/interpreter"]);
}

/// The chain ends in a 32-bit program: refused as that program would be, the chain
/// named.
#[test]
fn a_script_run_by_a_32_bit_program_is_refused() {
    let dir = scratch_dir();
    let elf32 = crafted(Crafted::Elf32);
    let s = script(dir.path(), "old", &format!("#!{}\n", elf32.display()));
    let run = run_memtrace(&Target::new(&s));
    assert_refused(&run, 126, &["32-bit", &elf32.display().to_string()]);
}

/// `#!/usr/bin/env NAME` with no NAME on PATH: env would say "not found", so does
/// memtrace, with a shell's 127.
#[test]
fn env_of_an_unknown_program_is_not_found() {
    let dir = scratch_dir();
    let s = script(
        dir.path(),
        "envbad",
        "#!/usr/bin/env memtrace-test-no-such-interpreter\n",
    );
    let run = run_memtrace(&Target::new(&s));
    assert_refused(
        &run,
        127,
        &[
            "/usr/bin/env",
            "memtrace-test-no-such-interpreter",
            "not found",
        ],
    );
}

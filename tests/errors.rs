//! Programs memtrace cannot trace: each gets one clear line on stderr and a non-zero
//! exit status (127 for a program not found, as a shell does).

mod common;

use common::{
    build_stripped, crafted, run_dir, run_memtrace, run_native, Crafted, Exit, Run, Target,
};

fn assert_one_line(run: &Run, what: &str) {
    let lines = run.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "{what}: expected one line on stderr, got:\n{}",
        run.stderr
    );
}

#[test]
fn program_not_found_exits_127() {
    let run = run_memtrace(&Target::new(run_dir().join("no-such-program")));
    assert_eq!(run.status, 127, "stderr:\n{}", run.stderr);
    assert_one_line(&run, "not found");
}

#[test]
fn program_not_on_path_exits_127() {
    let run = run_memtrace(&Target::new("memtrace-test-no-such-program-on-path"));
    assert_eq!(run.status, 127, "stderr:\n{}", run.stderr);
    assert_one_line(&run, "not on PATH");
}

#[test]
fn not_executable_fails() {
    let run = run_memtrace(&Target::new(crafted(Crafted::NotExecutable)));
    assert_ne!(run.status, 0, "stderr:\n{}", run.stderr);
    assert_one_line(&run, "not executable");
}

#[test]
fn a_directory_fails() {
    let run = run_memtrace(&Target::new(run_dir()));
    assert_ne!(run.status, 0, "stderr:\n{}", run.stderr);
    assert_one_line(&run, "a directory");
}

#[test]
fn not_elf_fails() {
    let run = run_memtrace(&Target::new(crafted(Crafted::NotElf)));
    assert_ne!(run.status, 0, "stderr:\n{}", run.stderr);
    assert_one_line(&run, "not ELF");
}

/// A real i386 program that exits 0 when run natively (where the kernel has IA-32
/// emulation): memtrace must refuse it, not pass its status through.
#[test]
fn elf32_fails() {
    let target = Target::new(crafted(Crafted::Elf32));
    let run = run_memtrace(&target);
    assert_ne!(run.status, 0, "stderr:\n{}", run.stderr);
    assert_one_line(&run, "32-bit");
}

/// A static binary without symbols: there is no allocator to find.
#[test]
fn static_stripped_fails() {
    let target = Target::new(build_stripped("leak", &["-g", "-O0", "-static"]));
    // The binary itself is fine: it runs natively.
    assert_eq!(run_native(&target).exit, Exit::Code(0));
    let run = run_memtrace(&target);
    assert_ne!(run.status, 0, "stderr:\n{}", run.stderr);
    assert_one_line(&run, "static and stripped");
}

/// A dynamic binary that is stripped still has its dynamic symbols and libc's: it is
/// traced, not refused.
#[test]
fn dynamic_stripped_is_traced() {
    let built = build_stripped("leak", common::DEBUG);
    let run = run_memtrace(&Target::new(&built));
    assert_eq!(run.status, 0, "stderr:\n{}", run.stderr);
    let totals = common::report::totals(run.report());
    assert!(totals.live_blocks >= 1, "{totals:?}");
}

//! The harness shared by the integration tests.
//!
//! - [`build`]: compiles `fixtures/` with the system `cc`/`c++`, once per test process.
//! - [`markers`]: reads the `LEAK:` expectations written in the fixture sources.
//! - [`process`]: runs a program (natively, under memtrace, under valgrind) with a
//!   watchdog, stdin and stdout on /dev/null and the same cwd on every side.
//! - [`valgrind`]: runs valgrind memcheck, the oracle, and parses its report.
//! - [`report`]: reads memtrace's JSON report.
//! - [`cases`]: the deterministic fixture runs and the checks made on them.
//!
//! Every expectation comes from a fixture's markers or from valgrind; no leak count or
//! size is written in Rust.

// Each test binary uses a different part of the harness.
#![allow(dead_code, unused_imports, unused_macros)]

/// Defines one `#[test]` per deterministic case (see [`cases`]), each calling
/// `$check(&case)`. Use it inside a module: `mod memtrace { case_tests!(check); }`.
macro_rules! case_tests {
    ($check:path) => {
        case_tests!(@each $check;
            leak noleak noleak_status5 alloc_family realloc_chain cxx_new threads
            churn_threads deep_churn dlopen ctor fork vfork exec signal_segv signal_raise signal_term
            signal_abort exit3 many_leaks kinds leak_o2 alloc_family_o2 realloc_chain_o2
            cxx_new_o2 threads_o2 many_leaks_o2 dlopen_o2 signals_handled mismatch
            mismatch_o2 reuse reach reach_o2 sleeper sleeper_o2 sleeper_exit_group mmap_root map_bigmalloc bigheap
            heuristics heuristics_o2 three_leaks zero_leak rpmatch libc_only);
    };
    (@each $check:path; $($case:ident)*) => {
        $(
            #[test]
            fn $case() {
                $check(&crate::common::cases::$case());
            }
        )*
    };
}

pub mod attach;
pub mod build;
pub mod cases;
pub mod errors;
pub mod mappings;
pub mod markers;
pub mod process;
pub mod report;
pub mod stacks;
pub mod valgrind;

pub use build::{build_fixture, build_shared, build_stripped, crafted, Crafted, DEBUG, OPTIMIZED};
pub use markers::{markers, parse_markers, Marker};
pub use process::{
    run_memtrace, run_memtrace_env, run_memtrace_inline, run_memtrace_opts, run_native, Exit, Run,
    Target,
};
pub use report::{Frame, Leak, Totals};
pub use valgrind::{parse_valgrind, run_valgrind, run_valgrind_with, Valgrind};

use std::path::{Path, PathBuf};

/// The package root (where `fixtures/` is).
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `fixtures/` in the source tree.
pub fn fixtures_dir() -> PathBuf {
    manifest_dir().join("fixtures")
}

/// `target/fixtures/`: where the fixtures are built, and where they run.
pub fn work_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`; its parent is the target directory.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("fixtures")
}

/// The directory every program runs in, memtrace, valgrind and native alike: the same
/// cwd on every side of a comparison, and a place where a stray core file harms nothing.
pub fn run_dir() -> PathBuf {
    let dir = work_dir().join("run");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// The file name of a path, as a string ("" when it has none).
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

//! The stepping debugger in batch mode (`--break-at SPEC --commands FILE`), on
//! `fixtures/step.c`. Every line number comes from the fixture's markers (`BREAK:`,
//! `NEXT:`, `STEPI:`, `STEP:`, `CALL:`, `LEAK:`); every run has a watchdog.
//!
//! The transcript is read the way a person reads it: the stop's announcement, then
//! one section per command, each starting with the echoed `(memtrace) COMMAND`; a
//! `#0 ADDRESS LABEL` line says where the thread is, `=> ADDRESS: BYTES  TEXT` is the
//! current instruction.

mod common;

use common::build::fixture_source;
use common::markers::{marker_line, markers};
use common::process::{memtrace_binary, run_with_watchdog_stdout, Output, MEMTRACE_LIMIT};
use common::{basename, build_fixture, report, Exit, DEBUG};
use std::path::PathBuf;
use std::process::Command;

fn line(tag: &str, name: &str) -> u32 {
    marker_line(&fixture_source("step"), tag, name)
}

fn threads_line(tag: &str) -> u32 {
    marker_line(&fixture_source("step_threads"), tag, "worker")
}

struct Session {
    out: Output,
    json: serde_json::Value,
}

impl Session {
    /// `memtrace launch --no-tui --break-at SPEC --commands FILE` on the fixture.
    fn run(spec: &str, commands: &[&str]) -> Session {
        Session::run_on("step", Some(spec), commands)
    }

    /// The same on fixture `name`; without a spec, no debugger at all.
    fn run_on(name: &str, spec: Option<&str>, commands: &[&str]) -> Session {
        let exe = build_fixture(name, DEBUG);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("commands");
        std::fs::write(&file, commands.join("\n")).expect("write the command file");
        let json = dir.path().join("report.json");
        let mut c = Command::new(memtrace_binary());
        c.args(["launch", "--no-tui"]);
        if let Some(spec) = spec {
            c.args(["--break-at", spec, "--commands"]).arg(&file);
        }
        c.arg("--json").arg(&json).arg("--").arg(&exe);
        let out = run_with_watchdog_stdout(c, MEMTRACE_LIMIT, "memtrace --break-at");
        let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
            panic!("no report ({e}); stderr:\n{}", out.stderr);
        });
        let json = serde_json::from_str(&text).expect("the report is JSON");
        Session { out, json }
    }

    /// The output of the `n`-th command (0-based) whose echo is `(memtrace) cmd`;
    /// `None` for the announcement of the stop.
    fn section(&self, cmd: Option<&str>, n: usize) -> String {
        let mut parts = self.out.stderr.split("(memtrace) ");
        let first = parts.next().unwrap_or_default();
        let Some(cmd) = cmd else {
            return first.to_string();
        };
        parts
            .filter(|p| p.lines().next() == Some(cmd))
            .nth(n)
            .map(|p| p.lines().skip(1).collect::<Vec<_>>().join("\n"))
            .unwrap_or_else(|| panic!("no output #{n} of {cmd:?}; stderr:\n{}", self.out.stderr))
    }
}

/// The `#0 ADDRESS LABEL` line of a section: (address, label).
fn location(section: &str) -> (u64, String) {
    let l = section
        .lines()
        .find(|l| l.starts_with("#0 "))
        .unwrap_or_else(|| panic!("no #0 line in:\n{section}"));
    let mut words = l.splitn(3, ' ').skip(1);
    let addr = hex(words.next().unwrap_or_default());
    (addr, words.next().unwrap_or_default().to_string())
}

/// The current instruction `=> ADDRESS:  BYTES  TEXT` of a section: (address, bytes).
fn current_insn(section: &str) -> (u64, Vec<u8>) {
    let l = section
        .lines()
        .find(|l| l.starts_with("=> "))
        .unwrap_or_else(|| panic!("no current instruction in:\n{section}"));
    let rest = &l[3..];
    let (addr, rest) = rest.split_once(':').expect("ADDRESS:");
    // Bytes are two hex digits each, then the instruction text after a wide gap.
    let bytes = rest
        .split_whitespace()
        .take_while(|w| w.len() == 2 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .map(|w| u8::from_str_radix(w, 16).expect("a byte"))
        .collect();
    (hex(addr.trim()), bytes)
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("{s:?} is not a hex address"))
}

fn at_line(label: &str, n: u32) -> bool {
    label.ends_with(&format!("step.c:{n}"))
}

#[test]
fn stops_at_the_marked_line_and_next_reaches_the_following_one() {
    let brk = line("BREAK", "main");
    let s = Session::run(&format!("step.c:{brk}"), &["bt", "next", "continue"]);
    let stop = s.section(None, 0);
    assert!(
        stop.contains(&format!("called from main at step.c:{brk}")),
        "{stop}"
    );
    let bt = s.section(Some("bt"), 0);
    let caller = bt.lines().nth(1).unwrap_or_default();
    assert!(
        caller.starts_with(" #1") && at_line(caller, brk),
        "frame 1 is the caller:\n{bt}"
    );
    let (_, after) = location(&s.section(Some("next"), 0));
    assert!(at_line(&after, line("NEXT", "main")), "next: {after}");
}

#[test]
fn a_function_breakpoint_stops_in_that_function() {
    let s = Session::run("make", &["continue"]);
    let stop = s.section(None, 0);
    let brk = line("BREAK", "make");
    assert!(
        stop.contains(&format!("called from make at step.c:{brk}")),
        "{stop}"
    );
}

#[test]
fn finish_returns_the_block_pointer() {
    let s = Session::run(
        &format!("step.c:{}", line("BREAK", "make")),
        &["finish", "info block", "continue"],
    );
    let fin = s.section(Some("finish"), 0);
    let returned = fin
        .lines()
        .find_map(|l| l.strip_prefix("returned "))
        .map(hex)
        .unwrap_or_else(|| panic!("no return value:\n{fin}"));
    // The fixture prints the pointer make() returned, which is malloc's.
    let printed = s
        .out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("step fixture: lost "))
        .map(hex)
        .expect("the fixture's pointer line");
    assert_eq!(returned, printed, "{fin}");
    let block = s.section(Some("info block"), 0);
    assert!(
        block.contains(&format!("malloc(48) returned {printed:#x}")),
        "{block}"
    );
    // The allocation is still recorded: its leak is in the report, at the BREAK line,
    // and its block is the one `finish` returned.
    let brk = line("BREAK", "make") as u64;
    let leak = s.json["leaks"]
        .as_array()
        .and_then(|leaks| {
            leaks
                .iter()
                .find(|l| l["bytes"] == 48 && l["blocks"] == 1 && l["stack"][0]["line"] == brk)
        })
        .unwrap_or_else(|| panic!("no 48-byte leak at line {brk}: {:#}", s.json));
    let reported = leak["oldest_block"].as_str().map(hex);
    assert_eq!(reported, Some(returned), "{leak:#}");
}

#[test]
fn stepi_advances_by_the_decoded_instruction_length() {
    let s = Session::run(
        &format!("step.c:{}", line("BREAK", "main")),
        &["disas", "stepi", "stepi", "continue"],
    );
    let (pc, bytes) = current_insn(&s.section(Some("disas"), 0));
    // Stopped at malloc's first instruction: its real bytes (FACTS.md: `41 54` push
    // r12 in glibc 2.36), never memtrace's int3.
    assert_eq!(bytes, [0x41, 0x54], "malloc's original first instruction");
    let after = s.section(Some("stepi"), 0);
    let (next, next_bytes) = current_insn(&after);
    assert_eq!(next, pc + bytes.len() as u64, "{after}");
    assert_eq!(location(&after).0, next);
    let (third, _) = current_insn(&s.section(Some("stepi"), 1));
    assert_eq!(third, next + next_bytes.len() as u64);
}

#[test]
fn stepping_into_a_hooked_malloc_shows_its_code_and_records_the_call() {
    let s = Session::run(
        &format!("step.c:{}", line("BREAK", "main")),
        &[
            "next", "next", "stepi", "stepi", "stepi", "stepi", "stepi", "stepi", "continue",
        ],
    );
    let (_, at) = location(&s.section(Some("next"), 1));
    assert!(at_line(&at, line("STEPI", "main")), "{at}");
    let entered = (0..6)
        .map(|i| s.section(Some("stepi"), i))
        .find(|sec| location(sec).1.contains("malloc"))
        .unwrap_or_else(|| panic!("no stepi reached malloc:\n{}", s.out.stderr));
    let (_, bytes) = current_insn(&entered);
    assert_eq!(bytes, [0x41, 0x54], "{entered}");
    // The malloc entered by stepping was recorded: its block leaks, at the STEPI line.
    let marker = markers(&fixture_source("step"))
        .into_iter()
        .find(|m| m.line == line("STEPI", "main"))
        .expect("a LEAK marker on the STEPI line");
    let leaks = report::leaks(&s.json);
    assert!(
        leaks.iter().any(|l| l.bytes == marker.bytes
            && l.stack.first().and_then(|f| f.line) == Some(marker.line as u64)
            && l.stack
                .first()
                .and_then(|f| f.file.as_deref())
                .map(basename)
                == Some(marker.file.as_str())),
        "{leaks:#?}"
    );
}

#[test]
fn step_goes_into_a_function_with_lines() {
    let s = Session::run(
        &format!("step.c:{}", line("BREAK", "main")),
        &["next", "next", "next", "next", "step", "continue"],
    );
    let (_, at) = location(&s.section(Some("next"), 3));
    assert!(at_line(&at, line("CALL", "make")), "{at}");
    let (_, into) = location(&s.section(Some("step"), 0));
    assert!(
        into.starts_with("make at") && at_line(&into, line("STEP", "make")),
        "{into}"
    );
}

#[test]
fn continue_leaves_the_programs_output_and_status_alone() {
    let exe: PathBuf = build_fixture("step", DEBUG);
    let native = run_with_watchdog_stdout(Command::new(&exe), MEMTRACE_LIMIT, "native step");
    assert_eq!(native.exit, Exit::Code(3), "the fixture's own status");
    let s = Session::run(
        &format!("step.c:{}", line("BREAK", "main")),
        &["step", "next", "stepi", "finish", "continue"],
    );
    assert_eq!(s.out.stdout, native.stdout);
    assert_eq!(s.out.exit, native.exit, "stderr:\n{}", s.out.stderr);
    // `finish` from main ran over malloc, free and printf: each call still recorded,
    // as in a run without the debugger.
    let plain = Session::run_on("step", None, &[]);
    assert_eq!(
        report::totals(&s.json),
        report::totals(&plain.json),
        "stderr:\n{}",
        s.out.stderr
    );
}

#[test]
fn a_stop_in_one_thread_holds_them_all_and_they_all_run_on() {
    let spec = format!("step_threads.c:{}", threads_line("BREAK"));
    let s = Session::run_on(
        "step_threads",
        Some(&spec),
        &["info thread", "next", "next", "next", "continue"],
    );
    let info = s.section(Some("info thread"), 0);
    let others: usize = info
        .split("; ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no thread count: {info}"));
    // main waits in pthread_join at least.
    assert!(others >= 1, "{info}");
    let (_, at) = location(&s.section(Some("next"), 0));
    assert!(
        at.ends_with(&format!("step_threads.c:{}", threads_line("NEXT"))),
        "{at}"
    );
    // The stepped thread read the others' progress on two lines, one `next` apart:
    // they did not move meanwhile.
    assert!(
        s.out.stderr.contains("step_threads: others progressed 0\n"),
        "stderr:\n{}",
        s.out.stderr
    );
    // Nothing was lost while the threads were held: the totals and the output are
    // those of a run without the debugger.
    let plain = Session::run_on("step_threads", None, &[]);
    assert_eq!(s.out.stdout, plain.out.stdout);
    assert_eq!(s.out.exit, Exit::Code(0), "stderr:\n{}", s.out.stderr);
    assert_eq!(
        report::totals(&s.json),
        report::totals(&plain.json),
        "stderr:\n{}",
        s.out.stderr
    );
}

#[test]
fn stepping_out_of_malloc_returns_to_the_caller_never_into_memtrace_pages() {
    // malloc's return address was swapped for a return stub at the stop: single-steps
    // out of it must land at the real return address, the stub run through unseen.
    let mut commands = vec!["bt"];
    commands.extend(std::iter::repeat_n("stepi", 400));
    commands.extend(["info block", "continue"]);
    let s = Session::run("make", &commands);
    let bt = s.section(Some("bt"), 0);
    let caller = bt
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .map(hex)
        .unwrap_or_else(|| panic!("no frame 1:\n{bt}"));
    let mut back = None;
    for i in 0..400 {
        let (pc, label) = location(&s.section(Some("stepi"), i));
        if label.starts_with("make at") {
            back = Some(pc);
            break;
        }
        // memtrace's pages are anonymous: a pc there would have no name at all.
        assert!(
            !label.starts_with("0x"),
            "stepi {i} is in unnamed code: {label}"
        );
    }
    assert_eq!(back, Some(caller), "malloc returns to its caller");
    let printed = s
        .out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("step fixture: lost "))
        .expect("the fixture's pointer line");
    let block = s.section(Some("info block"), 0);
    assert!(block.contains(&format!("returned {printed}")), "{block}");
}

#[test]
fn break_at_alone_prints_the_stop_and_its_stack_and_goes_on() {
    let exe = build_fixture("step", DEBUG);
    let brk = line("BREAK", "main");
    let run = |spec: &str| {
        let mut c = Command::new(memtrace_binary());
        c.args(["launch", "--no-tui", "--break-at", spec, "--"])
            .arg(&exe);
        run_with_watchdog_stdout(c, MEMTRACE_LIMIT, "memtrace --break-at")
    };
    let out = run(&format!("step.c:{brk}"));
    assert!(
        out.stderr
            .contains(&format!("called from main at step.c:{brk}")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("(memtrace) bt\n"), "{}", out.stderr);
    assert!(
        out.stderr.contains("(memtrace) continue\n"),
        "{}",
        out.stderr
    );
    assert_eq!(out.exit, Exit::Code(3));
    // A line that allocates nothing: said so at the end, the program unharmed.
    let out = run("step.c:1");
    assert!(
        out.stderr
            .contains("breakpoint step.c:1 never hit: no allocation was made from there"),
        "{}",
        out.stderr
    );
    assert_eq!(out.exit, Exit::Code(3));
}

#[test]
fn a_line_in_a_library_loaded_later_is_found_when_it_loads() {
    let exe = build_fixture("dlopen_main", DEBUG);
    let plugin = common::build_shared("plugin", DEBUG);
    let marker = markers(&fixture_source("plugin"))
        .into_iter()
        .next()
        .expect("plugin.c has a LEAK marker");
    let mut c = Command::new(memtrace_binary());
    c.args(["launch", "--no-tui", "--break-at"])
        .arg(format!("{}:{}", marker.file, marker.line))
        .arg("--")
        .arg(&exe)
        .arg(&plugin);
    let out = run_with_watchdog_stdout(c, MEMTRACE_LIMIT, "memtrace --break-at plugin.c");
    let want = format!("called from plugin_leak at {}:{}", marker.file, marker.line);
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    assert_eq!(out.exit, Exit::Code(0), "{}", out.stderr);
}

#[test]
fn a_cxx_new_site_stops_in_operator_new_with_its_size() {
    let exe = build_fixture("cxx_new", DEBUG);
    let marker = markers(&fixture_source("cxx_new"))
        .into_iter()
        .next()
        .expect("cxx_new.cc has LEAK markers");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("commands");
    std::fs::write(&file, "finish\ncontinue\n").expect("write the command file");
    let mut c = Command::new(memtrace_binary());
    c.args(["launch", "--no-tui", "--break-at"])
        .arg(format!("{}:{}", marker.file, marker.line))
        .arg("--commands")
        .arg(&file)
        .arg("--")
        .arg(&exe);
    let out = run_with_watchdog_stdout(c, MEMTRACE_LIMIT, "memtrace --break-at cxx_new.cc");
    let size = marker.bytes / marker.blocks;
    let want = format!("stopped at operator new({size})");
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    assert!(out.stderr.contains("the block is at 0x"), "{}", out.stderr);
    let native = run_with_watchdog_stdout(Command::new(&exe), MEMTRACE_LIMIT, "native cxx_new");
    assert_eq!(out.exit, native.exit, "{}", out.stderr);
}

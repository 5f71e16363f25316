//! valgrind memcheck, the oracle: running it and reading its HEAP SUMMARY, LEAK
//! SUMMARY and loss records.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use super::process::{read_optional, run_with_watchdog, Exit, Target, OTHER_LIMIT};
use super::report::Totals;

/// Blocks and bytes of one leak kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lost {
    pub blocks: u64,
    pub bytes: u64,
}

/// One frame of a valgrind stack: `0x...: function (file:line)` or `(in object)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VgFrame {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub object: Option<String>,
}

impl VgFrame {
    /// A frame of valgrind's own allocator replacement (its malloc, operator new...).
    pub fn is_valgrind_allocator(&self) -> bool {
        self.object
            .as_deref()
            .is_some_and(|o| o.contains("/vgpreload_"))
            || self.file.as_deref() == Some("vg_replace_malloc.c")
    }
}

/// One loss record: the blocks left live by one allocation stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LossRecord {
    /// `definite`, `indirect`, `possible` or `reachable` (the contract's names).
    pub kind: String,
    pub blocks: u64,
    /// The record's own bytes (for a definite record with children, the direct part).
    pub bytes: u64,
    /// Bytes of the blocks only this record's blocks point to.
    pub indirect_bytes: u64,
    pub frames: Vec<VgFrame>,
}

impl LossRecord {
    /// The allocator's caller: the first frame that is not valgrind's replacement.
    pub fn caller(&self) -> Option<&VgFrame> {
        self.frames.iter().find(|f| !f.is_valgrind_allocator())
    }
}

/// One bad-free error valgrind printed (an error context: repeats are not printed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VgError {
    /// `double_free`, `invalid_free` or `mismatched_free`.
    pub kind: String,
    /// The bad call.
    pub stack: Vec<VgFrame>,
    /// `Address 0x... is 0 bytes inside a block of size 10 free'd`
    pub address_line: String,
    /// The stack printed right after the address line: the first free of a double
    /// free, else the block's allocation.
    pub told: Vec<VgFrame>,
    /// After `Block was alloc'd at`.
    pub alloc: Vec<VgFrame>,
}

impl VgError {
    /// The first frame of `frames` that is not valgrind's own.
    pub fn caller(frames: &[VgFrame]) -> Option<&VgFrame> {
        frames.iter().find(|f| !f.is_valgrind_allocator())
    }
}

/// What valgrind said about one process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Valgrind {
    /// The pid whose report this is: the first process in the log.
    pub pid: u32,
    pub allocs: u64,
    pub frees: u64,
    pub bytes_allocated: u64,
    pub live_blocks: u64,
    pub live_bytes: u64,
    pub definite: Lost,
    pub indirect: Lost,
    pub possible: Lost,
    pub reachable: Lost,
    pub suppressed: Lost,
    pub records: Vec<LossRecord>,
    /// The bad frees it printed (invalid, double, mismatched), in order.
    pub errors: Vec<VgError>,
    /// How valgrind (and so the program) ended; `None` for a parsed text.
    pub exit: Option<Exit>,
    /// The log, for failure messages.
    pub log: String,
}

impl Valgrind {
    pub fn totals(&self) -> Totals {
        Totals {
            allocs: self.allocs,
            frees: self.frees,
            bytes_allocated: self.bytes_allocated,
            live_blocks: self.live_blocks,
            live_bytes: self.live_bytes,
        }
    }
}

/// `1,453,480` -> 1453480
fn number(text: &str) -> Result<u64, String> {
    text.trim()
        .replace(',', "")
        .parse()
        .map_err(|_| format!("not a number: {text:?}"))
}

/// Splits `==1234== rest` into (1234, "rest"); None for a line of the program's own.
fn split_prefix(line: &str) -> Option<(u32, &str)> {
    let rest = line.strip_prefix("==")?;
    let end = rest.find("==")?;
    let pid = rest[..end].parse().ok()?;
    let body = &rest[end + 2..];
    Some((pid, body.strip_prefix(' ').unwrap_or(body)))
}

/// `N bytes in M blocks` -> (bytes, blocks)
fn bytes_in_blocks(text: &str) -> Result<Lost, String> {
    let (bytes, rest) = text
        .split_once(" bytes in ")
        .ok_or_else(|| format!("expected 'N bytes in M blocks': {text:?}"))?;
    let blocks = rest
        .trim()
        .strip_suffix("blocks")
        .ok_or_else(|| format!("expected 'M blocks': {text:?}"))?;
    Ok(Lost {
        bytes: number(bytes)?,
        blocks: number(blocks)?,
    })
}

fn kind_name(words: &str) -> Option<&'static str> {
    match words {
        "definitely lost" => Some("definite"),
        "indirectly lost" => Some("indirect"),
        "possibly lost" => Some("possible"),
        "still reachable" => Some("reachable"),
        _ => None,
    }
}

/// `96 (32 direct, 64 indirect) bytes in 1 blocks are definitely lost in loss record 5 of 5`
fn parse_record_header(body: &str) -> Result<Option<LossRecord>, String> {
    let Some((amounts, kind_part)) = body.split_once(" blocks are ") else {
        return Ok(None);
    };
    let Some((kind_words, _)) = kind_part.split_once(" in loss record ") else {
        return Ok(None);
    };
    let kind = kind_name(kind_words).ok_or_else(|| format!("unknown leak kind in {body:?}"))?;
    let (bytes_part, blocks) = amounts
        .split_once(" bytes in ")
        .ok_or_else(|| format!("bad loss record header {body:?}"))?;
    let (bytes, indirect_bytes) = match bytes_part.split_once(" (") {
        None => (number(bytes_part)?, 0),
        Some((_total, detail)) => {
            let detail = detail.trim_end_matches(')');
            let (direct, indirect) = detail
                .split_once(" direct, ")
                .ok_or_else(|| format!("bad direct/indirect part in {body:?}"))?;
            (
                number(direct)?,
                number(indirect.trim_end_matches(" indirect"))?,
            )
        }
    };
    Ok(Some(LossRecord {
        kind: kind.to_string(),
        blocks: number(blocks)?,
        bytes,
        indirect_bytes,
        frames: Vec::new(),
    }))
}

/// `at 0x48417B4: malloc (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)`
/// `by 0x109174: main (leak.c:12)` or `by 0x401AB9F: ???`
fn parse_frame(body: &str) -> Option<VgFrame> {
    let body = body.trim_start();
    let rest = body
        .strip_prefix("at ")
        .or_else(|| body.strip_prefix("by "))?;
    let (_address, what) = rest.split_once(": ")?;
    let mut frame = VgFrame::default();
    // Function names hold spaces and parentheses ("operator new(unsigned long)"): the
    // location is the last parenthesized group, when the line ends with one.
    match what.rfind(" (").filter(|_| what.ends_with(')')) {
        None => frame.function = what.to_string(),
        Some(open) => {
            frame.function = what[..open].to_string();
            let location = &what[open + 2..what.len() - 1];
            if let Some(object) = location.strip_prefix("in ") {
                frame.object = Some(object.to_string());
            } else if let Some((file, line)) = location.rsplit_once(':') {
                frame.file = Some(file.to_string());
                frame.line = line.parse().ok();
            } else {
                frame.function = what.to_string();
            }
        }
    }
    Some(frame)
}

/// Parses a valgrind log. Only the first process's lines count: a forked child's
/// valgrind writes its own summary into the same log. When the log holds several
/// heap summaries for that pid (an exec followed with --trace-children), the last wins.
pub fn parse_valgrind(log: &str) -> Result<Valgrind, String> {
    let mut result = Valgrind {
        log: log.to_string(),
        ..Valgrind::default()
    };
    let mut main_pid = None;
    let mut heap_summary_seen = false;
    let mut current: Option<LossRecord> = None;
    // Errors seen since the last heap summary, and the one being read with the
    // stack its next frame lines go to (0 call, 1 told, 2 alloc).
    let mut errors: Vec<VgError> = Vec::new();
    let mut error: Option<(VgError, usize)> = None;
    let mut lines = Vec::new();
    for line in log.lines() {
        let Some((pid, body)) = split_prefix(line) else {
            continue;
        };
        if *main_pid.get_or_insert(pid) == pid {
            lines.push(body);
        }
    }
    result.pid = main_pid.ok_or("no valgrind lines in the log")?;

    for body in lines {
        if body.trim().is_empty() {
            if let Some(record) = current.take() {
                result.records.push(record);
            }
            if let Some((e, _)) = error.take() {
                errors.push(e);
            }
            continue;
        }
        if let Some((e, part)) = error.as_mut() {
            let trimmed = body.trim();
            if let Some(frame) = parse_frame(body) {
                match part {
                    0 => e.stack.push(frame),
                    1 => e.told.push(frame),
                    _ => e.alloc.push(frame),
                }
            } else if trimmed.starts_with("Address ") {
                e.address_line = trimmed.to_string();
                if e.kind == "invalid_free" && trimmed.ends_with(" free'd") {
                    e.kind = "double_free".into();
                }
                *part = 1;
            } else if trimmed == "Block was alloc'd at" {
                *part = 2;
            }
            continue;
        }
        let error_kind = match body.trim() {
            "Invalid free() / delete / delete[] / realloc()" => Some("invalid_free"),
            "Mismatched free() / delete / delete []" => Some("mismatched_free"),
            _ => None,
        };
        if let Some(kind) = error_kind {
            error = Some((
                VgError {
                    kind: kind.into(),
                    ..VgError::default()
                },
                0,
            ));
            continue;
        }
        if let Some(record) = current.as_mut() {
            if let Some(frame) = parse_frame(body) {
                record.frames.push(frame);
                continue;
            }
            result.records.push(current.take().expect("a record"));
        }
        let trimmed = body.trim();
        if trimmed == "HEAP SUMMARY:" {
            // A later summary (after an exec) replaces an earlier one.
            heap_summary_seen = true;
            let log = std::mem::take(&mut result.log);
            let pid = result.pid;
            result = Valgrind {
                log,
                pid,
                errors: std::mem::take(&mut errors),
                ..Valgrind::default()
            };
        } else if let Some(rest) = trimmed.strip_prefix("in use at exit:") {
            let live = bytes_in_blocks(rest)?;
            result.live_blocks = live.blocks;
            result.live_bytes = live.bytes;
        } else if let Some(rest) = trimmed.strip_prefix("total heap usage:") {
            // `14,012 allocs, 14,004 frees, 1,453,480 bytes allocated`
            let parts: Vec<&str> = rest.split(", ").collect();
            let [allocs, frees, bytes] = parts[..] else {
                return Err(format!("bad 'total heap usage' line: {trimmed:?}"));
            };
            result.allocs = number(allocs.trim().trim_end_matches(" allocs"))?;
            result.frees = number(frees.trim().trim_end_matches(" frees"))?;
            result.bytes_allocated = number(bytes.trim().trim_end_matches(" bytes allocated"))?;
        } else if let Some((kind, amounts)) = trimmed.split_once(": ") {
            let slot = match kind {
                "definitely lost" => &mut result.definite,
                "indirectly lost" => &mut result.indirect,
                "possibly lost" => &mut result.possible,
                "still reachable" => &mut result.reachable,
                "suppressed" => &mut result.suppressed,
                _ => continue,
            };
            *slot = bytes_in_blocks(amounts)?;
        } else if let Some(record) = parse_record_header(trimmed)? {
            current = Some(record);
        }
    }
    if let Some(record) = current.take() {
        result.records.push(record);
    }
    if !heap_summary_seen {
        return Err(format!("no HEAP SUMMARY for pid {} in the log", result.pid));
    }
    // "All heap blocks were freed -- no leaks are possible" leaves everything at 0.
    Ok(result)
}

/// The valgrind binary: Debian's `valgrind` is a shell wrapper that sets
/// LD_LIBRARY_PATH and GLIBCXX_FORCE_NEW; `valgrind.bin` runs the program with the
/// environment memtrace and native runs see.
pub fn valgrind_binary() -> &'static str {
    if Path::new("/usr/bin/valgrind.bin").exists() {
        "/usr/bin/valgrind.bin"
    } else {
        "valgrind"
    }
}

/// Runs the target under memcheck, once per process for each (extra arguments,
/// target) pair, and returns what it said.
pub fn run_valgrind(target: &Target) -> Valgrind {
    run_valgrind_with(&[], target)
}

/// Like [`run_valgrind`], with extra valgrind options (e.g. `--trace-children=yes`).
pub fn run_valgrind_with(extra: &[&str], target: &Target) -> Valgrind {
    type Cell = Arc<OnceLock<Valgrind>>;
    type Runs = Mutex<HashMap<(Vec<String>, Target), Cell>>;
    static RUNS: OnceLock<Runs> = OnceLock::new();
    let key = (
        extra.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        target.clone(),
    );
    let cell = RUNS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(key)
        .or_default()
        .clone();
    cell.get_or_init(|| valgrind_once(extra, target)).clone()
}

fn valgrind_once(extra: &[&str], target: &Target) -> Valgrind {
    let dir =
        tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
    let log_path = dir.path().join("valgrind.log");
    let mut command = Command::new(valgrind_binary());
    command
        .arg("--leak-check=full")
        .arg("--show-leak-kinds=all")
        // A real process never frees glibc's and libstdc++'s own blocks at exit.
        .arg("--run-libc-freeres=no")
        .arg("--run-cxx-freeres=no")
        // Whole stacks, named down to _start, to compare with memtrace's.
        .arg("--num-callers=64")
        .arg("--show-below-main=yes")
        .arg(format!("--log-file={}", log_path.display()))
        .args(extra)
        .arg(&target.program)
        .args(&target.args);
    let output = run_with_watchdog(
        command,
        OTHER_LIMIT,
        &format!("valgrind on {}", target.display()),
    );
    let log = read_optional(&log_path).unwrap_or_default();
    let mut parsed = parse_valgrind(&log).unwrap_or_else(|e| {
        panic!(
            "cannot read valgrind's report on {}: {e}\nlog:\n{log}\nstderr:\n{}",
            target.display(),
            output.stderr
        )
    });
    parsed.exit = Some(output.exit);
    parsed
}
